//! The per-row code of a fused kernel, written once for both target
//! languages: [`Dialect::Wgsl`] and [`Dialect::Cuda`] differ only in
//! spelling (types, casts, bit reinterpretation, wrapping arithmetic), which
//! the methods of [`Dialect`] (`dialect.rs`) supply.
//!
//! Expressions become straight-line statements computing a value and a
//! validity flag ([`super::expr_code`]); this file assembles them into a
//! program's predicate, outputs, reductions, sort key and GROUP BY keys,
//! and the reduce, atomic-fold and top-k kernels around them. Both languages' module
//! templates (in [`super::wgsl`] and [`super::cuda`]) provide the helpers
//! used here: `data`/`params`/`outw`, `ld64`, `st64`, `is_valid`, `raise`,
//! `key32`, `key64`.

use std::fmt::Write as _;

pub use super::dialect::Dialect;
use super::expr_code::Gen;
use super::ir::{Expr, Program, ReduceOp, Ty, Value};

/// Statements and result names of a program's predicate and outputs.
pub struct Body {
    /// Statements computing the predicate, then its TRUE-and-valid test.
    pub pred_stmts: String,
    pub pred: String,
    /// Statements computing every output and storing it at `pos`.
    pub emit_stmts: String,
    /// Per reduction of the program, its argument (see
    /// [`Body::reduce_kernel`]).
    pub reduce: Vec<ReduceCode>,
    /// The group index of a grouped program (its `op` is unused).
    pub group: Option<ReduceCode>,
    /// How the dialect's module calls the predicate for `row`.
    pub keep_call: String,
    /// For a program with a top-k: statements computing the sort key, then
    /// its order key (a `u64`) and validity.
    pub sort_key: Option<(String, String, String)>,
}

/// The per-row part of one reduction.
pub struct ReduceCode {
    pub op: ReduceOp,
    pub float: bool,
    /// Statements computing the argument, then its value (widened to the
    /// fold type) and validity.
    pub stmts: String,
    pub value: String,
    pub valid: String,
}

impl Body {
    /// The `sort_key(row)` function of a program with a top-k: the row's
    /// place in the ORDER BY as (`hi`, `lo`) compared lexicographically —
    /// `hi` 0 for NULLs first, 1 for values, 2 for NULLs last; `lo` the
    /// value's order key, negated for DESC.
    pub fn sort_key_fn(&self, d: Dialect, topk: &super::ir::BlockTopK) -> String {
        let Some((stmts, key, valid)) = &self.sort_key else {
            return String::new();
        };
        let null_hi = if topk.nulls_first { 0 } else { 2 };
        let zero = d.u64_lit(0);
        match d {
            Dialect::Wgsl => format!(
                "struct SortKey {{ hi: u32, lo: u64 }}

fn sort_key(row: u32) -> SortKey {{
{stmts}    if (!({valid})) {{ return SortKey({null_hi}u, {zero}); }}
    return SortKey(1u, {key});
}}
"
            ),
            Dialect::Cuda => format!(
                "struct SortKey {{ u32 hi; u64 lo; }};

__device__ SortKey sort_key(KILN_ARGS, u32 row) {{
    SortKey s;
{stmts}    if (!({valid})) {{ s.hi = {null_hi}u; s.lo = {zero}; return s; }}
    s.hi = 1u;
    s.lo = {key};
    return s;
}}
"
            ),
        }
    }

    /// After `kept` is set in a `count` or `emit` kernel with a top-k: ranks
    /// the kept rows of the block by sort key in shared memory (`wg_khi`,
    /// `wg_klo`) and keeps only those with fewer than `k` rows strictly
    /// before them.
    pub fn block_rank(&self, d: Dialect, k: u32) -> String {
        if self.sort_key.is_none() {
            return String::new();
        }
        let (decl, call, barrier, lo_t, j_loop) = match d {
            Dialect::Wgsl => (
                format!("var key = SortKey(3u, {});", d.u64_lit(0)),
                "sort_key(row)",
                "workgroupBarrier();",
                "u64",
                "for (var j = 0u; j < 256u; j++)",
            ),
            Dialect::Cuda => (
                format!("SortKey key; key.hi = 3u; key.lo = {};", d.u64_lit(0)),
                "sort_key(KILN_PASS, row)",
                "__syncthreads();",
                "u64",
                "for (u32 j = 0; j < 256u; j++)",
            ),
        };
        let _ = lo_t;
        format!(
            "    {decl}
    if (kept) {{ key = {call}; }}
    wg_khi[lid] = key.hi;
    wg_klo[lid] = key.lo;
    {barrier}
    {rank}
    {j_loop} {{
        {h}
        {l}
        if (h < key.hi || (h == key.hi && l < key.lo)) {{ rank = rank + 1u; }}
    }}
    kept = kept && rank < {k}u;
",
            rank = d.var("rank", Ty::U32, "0u").trim(),
            h = d.let_("h", Ty::U32, "wg_khi[j]").trim(),
            l = d.let_("l", Ty::U64, "wg_klo[j]").trim(),
        )
    }

    /// The statements of a `reduce` kernel, after the dialect's wrapper has
    /// declared `wgi` (the workgroup's index) and `lid` (the thread's) and
    /// the shared arrays `red_i`/`red_f` (i64/f64), `red_n` (non-NULL
    /// counts), `wg_gn_a` (atomic per-group row counts) and `wg_gn`.
    ///
    /// Workgroup `wgi` takes tiles of [`super::wgsl::BLOCK`] rows `wgi`,
    /// `wgi + nw`, ... (`params[meta_out + 2R + 1]` workgroups). Per tile
    /// every thread evaluates its row's predicate, group and reduction
    /// arguments once; the tile's rows are counted per group; then for each
    /// group present in the tile each reduction is folded over the tile as a
    /// tree in shared memory, and thread `g` adds the result to its private
    /// running results of group `g`. At the end thread `g` stores them at
    /// slot `wgi * groups + g` of every output region listed in `params`
    /// from `meta_out`: per reduction a 64-bit value and a non-NULL count,
    /// then the group's kept rows. `params[1]` is the group count.
    pub fn reduce_kernel(&self, d: Dialect, meta_out: usize) -> String {
        let u = |i: usize| d.index(i);
        let nred = self.reduce.len();
        let (barrier, uniform_load, atomic_zero, atomic_read, atomic_add) = match d {
            Dialect::Wgsl => (
                "workgroupBarrier();",
                "workgroupUniformLoad(&wg_gn[g])",
                "atomicStore(&wg_gn_a[lid], 0u);",
                "atomicLoad(&wg_gn_a[lid])",
                "atomicAdd(&wg_gn_a[gid], 1u);",
            ),
            Dialect::Cuda => (
                "__syncthreads();",
                "wg_gn[g]",
                "wg_gn_a[lid] = 0u;",
                "wg_gn_a[lid]",
                "atomicAdd(&wg_gn_a[gid], 1u);",
            ),
        };
        let (tile_loop, group_loop) = match d {
            Dialect::Wgsl => (
                "for (var tile = wgi; tile < nblocks(); tile += nw)",
                "for (var g = 0u; g < ng; g++)",
            ),
            Dialect::Cuda => (
                "for (u32 tile = wgi; tile < nblocks(params); tile += nw)",
                "for (u32 g = 0; g < ng; g++)",
            ),
        };
        let no_group = d.literal(Value::UInt(u64::from(u32::MAX)), Ty::U32);
        let (one, zero) = (d.literal(Value::Int(1), Ty::U32), d.zero(Ty::U32));
        let fold_t = |c: &ReduceCode| if c.float { Ty::F64 } else { Ty::I64 };
        let identity = |c: &ReduceCode| {
            let t = fold_t(c);
            match c.op {
                ReduceOp::Min => d.literal(Value::Int(i64::MAX), t),
                ReduceOp::Max => d.literal(Value::Int(i64::MIN), t),
                _ if c.float => d.literal(Value::Float(0.0), t),
                _ => d.zero(t),
            }
        };
        // `into = into (op) x`, raising on a 64-bit integer sum's overflow.
        let combine = |c: &ReduceCode, into: &str, x: &str| -> String {
            match (c.op, c.float) {
                (ReduceOp::Sum, true) => format!("{into} = {into} + {x};"),
                (ReduceOp::Sum, false) => format!(
                    "{{ {} if ((({into} ^ sum) & ({x} ^ sum)) < {}) {{ raise(); }} {into} = sum; }}",
                    d.let_("sum", Ty::I64, &d.wrapping("+", Ty::I64, into, x))
                        .trim(),
                    d.zero(Ty::I64)
                ),
                (ReduceOp::Min, _) => {
                    format!("{into} = {};", d.select(into, x, &format!("{x} < {into}")))
                }
                (ReduceOp::Max, _) => {
                    format!("{into} = {};", d.select(into, x, &format!("{x} > {into}")))
                }
                (ReduceOp::Count, _) => String::new(),
            }
        };
        let mut out = String::new();
        out.push_str(&d.let_("ng", Ty::U32, "params[1]"));
        out.push_str(&d.let_(
            "nw",
            Ty::U32,
            &format!("params[{}]", u(meta_out + 2 * nred + 1)),
        ));
        out.push_str(&d.var("rows_acc", Ty::U32, &zero));
        for (r, c) in self.reduce.iter().enumerate() {
            out.push_str(&d.var(&format!("racc{r}"), fold_t(c), &identity(c)));
            out.push_str(&d.var(&format!("rcnt{r}"), Ty::U32, &zero));
        }
        let _ = writeln!(out, "    {tile_loop} {{");
        let _ = writeln!(
            out,
            "    {}",
            d.let_("row", Ty::U32, &format!("tile * {} + lid", u(256)))
                .trim()
        );
        let _ = writeln!(out, "    {}", d.var("kept", Ty::Bool, "false").trim());
        let _ = writeln!(
            out,
            "    if (row < params[0]) {{ kept = {}; }}",
            self.keep_call
        );
        let _ = writeln!(out, "    {}", d.var("gid", Ty::U32, &no_group).trim());
        for (r, c) in self.reduce.iter().enumerate() {
            let _ = writeln!(
                out,
                "    {}",
                d.var(&format!("rv{r}"), fold_t(c), &identity(c)).trim()
            );
            let _ = writeln!(
                out,
                "    {}",
                d.var(&format!("rok{r}"), Ty::Bool, "false").trim()
            );
        }
        out.push_str(
            "    if (kept) {
",
        );
        match &self.group {
            Some(g) => {
                out.push_str(&g.stmts);
                let _ = writeln!(out, "    gid = {};", g.value);
                let _ = writeln!(
                    out,
                    "    if (!({}) || gid >= ng) {{ raise(); gid = {no_group}; }}",
                    g.valid
                );
            }
            None => {
                let _ = writeln!(out, "    gid = {zero};");
            }
        }
        for (r, c) in self.reduce.iter().enumerate() {
            out.push_str(&c.stmts);
            let _ = writeln!(
                out,
                "    rv{r} = {};
    rok{r} = {};",
                c.value, c.valid
            );
        }
        out.push_str(
            "    }
",
        );
        let _ = write!(
            out,
            "    {atomic_zero}
    {barrier}
    if (gid != {no_group}) {{ {atomic_add} }}
    {barrier}
    wg_gn[lid] = {atomic_read};
    rows_acc = rows_acc + wg_gn[lid];
    {group_loop} {{
    {barrier}
    if ({uniform_load} == {zero}) {{ continue; }}
"
        );
        for (r, c) in self.reduce.iter().enumerate() {
            let (array, t) = if c.float {
                ("red_f", Ty::F64)
            } else {
                ("red_i", Ty::I64)
            };
            let mine = format!("rok{r} && gid == g");
            let _ = write!(
                out,
                "    {array}[lid] = {sel};
    red_n[lid] = {cnt};
    {barrier}
    for ({s_decl}; s > {zero}; s = s >> {one}) {{
        if (lid < s) {{
{a}{b}            {fold}
            red_n[lid] = red_n[lid] + red_n[lid + s];
        }}
        {barrier}
    }}
    if (lid == g) {{
{x}        {acc_fold}
        rcnt{r} = rcnt{r} + red_n[0];
    }}
    {barrier}
",
                sel = d.select(&identity(c), &format!("rv{r}"), &mine),
                cnt = d.select(&zero, &one, &mine),
                s_decl = match d {
                    Dialect::Wgsl => "var s = 128u".to_string(),
                    Dialect::Cuda => "u32 s = 128".to_string(),
                },
                a = d.let_("a", t, &format!("{array}[lid]")),
                b = d.let_("b", t, &format!("{array}[lid + s]")),
                fold = if c.op == ReduceOp::Count {
                    String::new()
                } else {
                    format!(
                        "{{ {} {} {array}[lid] = fa; }}",
                        d.var("fa", t, "a").trim(),
                        combine(c, "fa", "b")
                    )
                },
                x = d.let_("x", t, &format!("{array}[0]")),
                acc_fold = combine(c, &format!("racc{r}"), "x"),
            );
        }
        let _ = write!(
            out,
            "    }}
    {barrier}
    }}
    if (lid < ng && wgi < nw) {{
{slot}",
            slot = d.let_("slot", Ty::U32, "wgi * ng + lid"),
        );
        for (r, c) in self.reduce.iter().enumerate() {
            let _ = writeln!(
                out,
                "        st64(params[{}], slot, {});
        outw[params[{}] + slot] = rcnt{r};",
                u(meta_out + 2 * r),
                d.to_bits64(fold_t(c), &format!("racc{r}")),
                u(meta_out + 2 * r + 1)
            );
        }
        let _ = writeln!(
            out,
            "        outw[params[{}] + slot] = rows_acc;
    }}",
            u(meta_out + 2 * nred)
        );
        out
    }
}

impl Body {
    /// The statements of an atomic grouped fold (see
    /// [`super::GroupFold::Atomics`]), after the dialect's wrapper has
    /// declared `row` and returned for rows past `params[0]`.
    ///
    /// One thread per row: a kept row with a valid group `gid` (below
    /// `params[1]`; else the batch is flagged) adds 1 to its group's row
    /// count and, per reduction with a non-NULL argument, 1 to the
    /// reduction's count and its value to the group's accumulator, all with
    /// 32-bit atomics on `outw`, which the host zeroed. Integer and decimal
    /// sums are 96-bit two's complement over three words (`add96` carries
    /// between them), exact for any 2^32 values of 64 bits. Minima and
    /// maxima keep the largest 64-bit order key (the value's bits with the
    /// sign flipped; complemented for a minimum) in two words: this pass
    /// raises the high word, and a second pass (`lo_pass`), which runs after
    /// it, raises the low word only for values whose high word won. Float
    /// sums (CUDA only) add into an f64 with the hardware's atomic add.
    pub fn atomic_kernel(&self, d: Dialect, meta_out: usize, lo_pass: bool) -> String {
        let u = |i: usize| d.index(i);
        let nred = self.reduce.len();
        let mut out = String::new();
        let _ = writeln!(out, "    if (!({})) {{ return; }}", self.keep_call);
        let Some(g) = &self.group else {
            return "    raise();\n".into();
        };
        out.push_str(&g.stmts);
        out.push_str(&d.let_("gid", Ty::U32, &g.value));
        let _ = writeln!(
            out,
            "    if (!({}) || gid >= params[1]) {{ {}return; }}",
            g.valid,
            if lo_pass { "" } else { "raise(); " }
        );
        if !lo_pass {
            let _ = writeln!(
                out,
                "    atomicAdd(&outw[params[{}] + gid], 1u);",
                u(meta_out + 2 * nred)
            );
        }
        for (r, c) in self.reduce.iter().enumerate() {
            let min_max = matches!(c.op, ReduceOp::Min | ReduceOp::Max);
            if lo_pass && !min_max {
                continue;
            }
            out.push_str(&c.stmts);
            let _ = writeln!(out, "    if ({}) {{", c.valid);
            let values = format!("params[{}]", u(meta_out + 2 * r));
            if !lo_pass {
                let _ = writeln!(
                    out,
                    "        atomicAdd(&outw[params[{}] + gid], 1u);",
                    u(meta_out + 2 * r + 1)
                );
            }
            let t = if c.float { Ty::F64 } else { Ty::I64 };
            out.push_str(&d.let_(&format!("av{r}"), t, &c.value));
            let v = format!("av{r}");
            match (c.op, c.float) {
                (ReduceOp::Count, _) => {}
                (ReduceOp::Sum, true) => {
                    // Only CUDA generates float sums (see `super::wgsl`).
                    let _ = writeln!(
                        out,
                        "        atomicAdd((double*)&outw[{values} + 2u * gid], {v});"
                    );
                }
                (ReduceOp::Sum, false) => {
                    out.push_str(&d.let_(&format!("ab{r}"), Ty::U64, &d.to_bits64(Ty::I64, &v)));
                    let lo = d.convert(Ty::U32, &format!("ab{r}"));
                    let hi = d.convert(Ty::U32, &format!("(ab{r} >> {})", d.index(32)));
                    let ext = d.select("0u", "0xffffffffu", &format!("{v} < {}", d.zero(Ty::I64)));
                    let _ = writeln!(
                        out,
                        "        add96({values} + 3u * gid, {lo}, {hi}, {ext});"
                    );
                }
                (ReduceOp::Min | ReduceOp::Max, _) => {
                    let mut key = d.order_key(Ty::I64, &v);
                    if c.op == ReduceOp::Min {
                        key = format!("(~{key})");
                    }
                    out.push_str(&d.let_(&format!("ak{r}"), Ty::U64, &key));
                    let hi = d.convert(Ty::U32, &format!("(ak{r} >> {})", d.index(32)));
                    let at = format!("{values} + 2u * gid");
                    if lo_pass {
                        let current = match d {
                            Dialect::Wgsl => format!("atomicLoad(&outw[{at} + 1u])"),
                            Dialect::Cuda => format!("((volatile u32*)outw)[{at} + 1u]"),
                        };
                        let _ = writeln!(
                            out,
                            "        if ({hi} == {current}) {{ atomicMax(&outw[{at}], {}); }}",
                            d.convert(Ty::U32, &format!("ak{r}"))
                        );
                    } else {
                        let _ = writeln!(out, "        atomicMax(&outw[{at} + 1u], {hi});");
                    }
                }
            }
            out.push_str("    }\n");
        }
        out
    }
}

/// The GROUP BY keys of a numbering module (see [`super::numbering`]):
/// `keys_at(row)` evaluates every key of a row into a `Keys` struct (each
/// key's bits widened to 64, zero when NULL, and its validity),
/// `keys_eq(a, b)` compares two rows' keys (NULLs equal, as GROUP BY takes
/// them) and `keys_hash(k)` mixes them into 32 bits.
pub fn key_functions(keys: &[Expr], inputs: &[Ty], d: Dialect) -> Result<String, String> {
    let mut g = Gen::new(d);
    let mut fields = Vec::new();
    for e in keys {
        let t = e.check(inputs)?;
        let (v, n) = g.expr(e)?;
        let bits = match t {
            Ty::Bool => d.select(&d.u64_lit(0), &d.u64_lit(1), &v),
            Ty::I32 => d.to_bits64(Ty::I64, &d.sext(&v)),
            Ty::U32 => d.convert(Ty::U64, &v),
            Ty::I64 | Ty::Decimal { .. } => d.to_bits64(Ty::I64, &v),
            Ty::U64 => v,
            Ty::F32 | Ty::F64 => return Err(format!("GROUP BY key of type {t}")),
        };
        fields.push((d.select(&d.u64_lit(0), &bits, &n), n));
    }
    let stmts = std::mem::take(&mut g.body);
    let n = fields.len();
    let mut out = String::new();
    out.push_str("struct Keys {\n");
    for i in 0..n {
        match d {
            Dialect::Wgsl => {
                let _ = writeln!(out, "    b{i}: u64,\n    v{i}: bool,");
            }
            Dialect::Cuda => {
                let _ = writeln!(out, "    u64 b{i};\n    bool v{i};");
            }
        }
    }
    out.push_str(match d {
        Dialect::Wgsl => "}\n\n",
        Dialect::Cuda => "};\n\n",
    });
    let _ = write!(
        out,
        "{} {{\n{stmts}",
        match d {
            Dialect::Wgsl => "fn keys_at(row: u32) -> Keys",
            Dialect::Cuda => "__device__ Keys keys_at(KILN_ARGS, u32 row)",
        }
    );
    out.push_str(match d {
        Dialect::Wgsl => "    var k: Keys;\n",
        Dialect::Cuda => "    Keys k;\n",
    });
    for (i, (bits, valid)) in fields.iter().enumerate() {
        let _ = writeln!(out, "    k.b{i} = {bits};\n    k.v{i} = {valid};");
    }
    out.push_str("    return k;\n}\n\n");
    let eq: Vec<String> = (0..n)
        .map(|i| format!("a.v{i} == b.v{i} && a.b{i} == b.b{i}"))
        .collect();
    let eq = if eq.is_empty() {
        "true".to_string()
    } else {
        eq.join(" && ")
    };
    let (eq_sig, hash_sig, h_var, shift) = match d {
        Dialect::Wgsl => (
            "fn keys_eq(a: Keys, b: Keys) -> bool",
            "fn keys_hash(k: Keys) -> u32",
            format!("var h: u64 = {};", d.u64_lit(0x9e37_79b9_7f4a_7c15)),
            "u",
        ),
        Dialect::Cuda => (
            "__device__ bool keys_eq(const Keys& a, const Keys& b)",
            "__device__ u32 keys_hash(const Keys& k)",
            format!("u64 h = {};", d.u64_lit(0x9e37_79b9_7f4a_7c15)),
            "",
        ),
    };
    let _ = writeln!(out, "{eq_sig} {{\n    return {eq};\n}}\n");
    let _ = writeln!(out, "{hash_sig} {{\n    {h_var}");
    for i in 0..n {
        // A NULL key mixes in a constant of its own, not its zero bits.
        let _ = writeln!(
            out,
            "    h = (h ^ k.b{i} ^ {}) * {};\n    h = h ^ (h >> 29{shift});",
            d.select(
                &d.u64_lit(0x5bd1_e995_5bd1_e995),
                &d.u64_lit(0),
                &format!("k.v{i}")
            ),
            d.u64_lit(0xff51_afd7_ed55_8ccd),
        );
    }
    let _ = writeln!(
        out,
        "    h = h ^ (h >> 32{shift});\n    return {};\n}}",
        d.convert(Ty::U32, "h")
    );
    Ok(out)
}

/// Generates the per-row code of `program` in `dialect`; `meta_out` is the
/// `params` index of the first output's value offset.
pub fn body(program: &Program, dialect: Dialect, meta_out: usize) -> Result<Body, String> {
    program.check()?;
    let mut g = Gen::new(dialect);
    let u = |i: usize| dialect.index(i);
    let pred = match &program.predicate {
        Some(p) => {
            let (v, n) = g.expr(p)?;
            format!("{v} && {n}")
        }
        None => "true".to_string(),
    };
    let pred_stmts = std::mem::take(&mut g.body);
    let mut emit_stmts = String::new();
    for (o, e) in program.outputs.iter().enumerate() {
        let (v, n) = g.expr(e)?;
        let voff = format!("params[{}]", u(meta_out + 2 * o));
        let noff = format!("params[{}]", u(meta_out + 2 * o + 1));
        emit_stmts.push_str(&std::mem::take(&mut g.body));
        let one = dialect.literal(Value::Int(1), Ty::U32);
        let zero = dialect.zero(Ty::U32);
        let t = e.ty();
        let store = match t {
            Ty::Bool => format!(
                "    outw[{voff} + pos] = {};\n",
                dialect.select(&zero, &one, &v)
            ),
            _ if t.width() == 4 => {
                format!("    outw[{voff} + pos] = {};\n", dialect.to_bits32(t, &v))
            }
            _ => format!("    st64({voff}, pos, {});\n", dialect.to_bits64(t, &v)),
        };
        emit_stmts.push_str(&store);
        let _ = writeln!(
            emit_stmts,
            "    outw[{noff} + pos] = {};",
            dialect.select(&zero, &one, &n)
        );
    }
    let mut reduce = Vec::new();
    for r in &program.reduce {
        let (v, n) = g.expr(&r.arg)?;
        let t = r.arg.ty();
        let value = match (r.op, r.is_float(), t) {
            (ReduceOp::Count, _, _) => dialect.zero(Ty::I64),
            (_, true, Ty::F64) | (_, false, Ty::I64 | Ty::Decimal { .. }) => v,
            (_, true, _) => dialect.convert(Ty::F64, &v),
            (_, false, _) => dialect.sext(&v),
        };
        reduce.push(ReduceCode {
            op: r.op,
            float: r.is_float(),
            stmts: std::mem::take(&mut g.body),
            value,
            valid: n,
        });
    }
    let sort_key = match &program.topk {
        Some(t) => {
            let (v, n) = g.expr(&t.key)?;
            let mut key = dialect.order_key(t.key.ty(), &v);
            if t.descending {
                key = format!("(~{key})");
            }
            Some((std::mem::take(&mut g.body), key, n))
        }
        None => None,
    };
    let group = match &program.group {
        Some(e) => {
            let (v, n) = g.expr(e)?;
            Some(ReduceCode {
                op: ReduceOp::Count,
                float: false,
                stmts: std::mem::take(&mut g.body),
                value: v,
                valid: n,
            })
        }
        None => None,
    };
    Ok(Body {
        pred_stmts,
        pred,
        emit_stmts,
        reduce,
        group,
        keep_call: match dialect {
            Dialect::Wgsl => "keep(row)".into(),
            Dialect::Cuda => "keep(KILN_PASS, row)".into(),
        },
        sort_key,
    })
}
