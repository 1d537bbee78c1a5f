//! WGSL generation: one compute module per [`Program`].
//!
//! The module has three entry points over blocks of [`BLOCK`] rows:
//! `count` evaluates the predicate and stores each block's number of kept
//! rows, `scan` turns the counts into output offsets (one workgroup), and
//! `emit` evaluates the predicate again, ranks kept rows inside the block with
//! a workgroup prefix sum and writes every output expression, its validity
//! and the row's input index at the compacted position — stream compaction on
//! the device, one pass over the inputs per entry point. Without a predicate
//! (or a per-block top-k, which ranks rows in both `count` and `emit`) only
//! `emit` runs and every row is kept in place. A program of reductions has
//! one `reduce` entry point instead, folding per group over tiles of rows
//! (see [`super::emit::Body::reduce_kernel`]).
//!
//! Memory layout (all 32-bit words): `data` holds the input columns — values
//! (64-bit values as two words, low first; booleans one word) and Arrow
//! validity bitmaps — at word offsets listed in `params`; `outw` receives the
//! outputs likewise, validity as one word per row. `params[0]` is the row count,
//! then for input `c` its value and validity offsets at `2 + 2c` and `3 + 2c`
//! (validity `0xffffffff` when the column has no NULLs), then for output `o`
//! its value and validity offsets, then the row-index region's offset. For
//! reductions `params[1]` is the group count and the regions hold per
//! workgroup and group a partial and its count, then the group's rows, then
//! the workgroup count.

use std::fmt::Write as _;

use super::emit::{Body, Dialect, body};
use super::ir::Program;

/// Rows per workgroup; the generated `@workgroup_size`.
pub const BLOCK: u32 = 256;

/// Where the output regions are described in `params`.
pub fn meta_output_base(program: &Program) -> usize {
    2 + 2 * program.inputs.len()
}

/// Generates the module, or says which part of the program this backend
/// cannot compute exactly.
pub fn generate(program: &Program) -> Result<String, String> {
    let out_base = meta_output_base(program);
    let code = body(program, Dialect::Wgsl, out_base)?;
    if !program.reduce.is_empty() {
        return Ok(reduce_module(program, &code, out_base));
    }
    let index_off = out_base + 2 * program.outputs.len();
    let compacts = program.compacts();
    let emit_stmts = &code.emit_stmts;
    let mut src = head(program, &code);
    let rank = match &program.topk {
        Some(t) => {
            src.push_str(&code.sort_key_fn(Dialect::Wgsl, t));
            src.push_str("var<workgroup> wg_khi: array<u32, 256>;\nvar<workgroup> wg_klo: array<u64, 256>;\n");
            code.block_rank(Dialect::Wgsl, t.k)
        }
        None => String::new(),
    };
    let _ = write!(
        src,
        "
fn emit_row(row: u32, pos: u32) {{
{emit_stmts}    outw[params[{index_off}u] + pos] = row;
}}

@compute @workgroup_size({BLOCK})
fn count(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {{
    let block = wg.x + wg.y * nwg.x;
    let row = block * {BLOCK}u + lid;
    var kept = false;
    if (row < params[0]) {{ kept = keep(row); }}
{rank}    if (lid == 0u) {{ atomicStore(&wg_count, 0u); }}
    workgroupBarrier();
    if (kept) {{ atomicAdd(&wg_count, 1u); }}
    workgroupBarrier();
    if (lid == 0u && block < nblocks()) {{ blocks[block] = atomicLoad(&wg_count); }}
}}

{scan}
@compute @workgroup_size({BLOCK})
fn emit(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let block = wg.x + wg.y * nwg.x;
    let row = block * {BLOCK}u + lid;
    var kept = false;
    if (row < params[0]) {{ kept = {kept}; }}
{rank}    // Inclusive Hillis-Steele scan of the kept flags inside the block.
    wg_scan[lid] = select(0u, 1u, kept);
    workgroupBarrier();
    for (var d = 1u; d < {BLOCK}u; d = d << 1u) {{
        var add = 0u;
        if (lid >= d) {{ add = wg_scan[lid - d]; }}
        workgroupBarrier();
        wg_scan[lid] += add;
        workgroupBarrier();
    }}
    if (kept && block < nblocks()) {{
        let base = {base};
        emit_row(row, base + wg_scan[lid] - 1u);
    }}
}}
",
        scan = scan_entry("scan", "nblocks()", ""),
        kept = if program.predicate.is_some() {
            "keep(row)"
        } else {
            "true"
        },
        base = if compacts {
            "blocks[nblocks() + block]"
        } else {
            "block * 256u"
        },
    );
    Ok(src)
}

/// A one-workgroup entry point `name` that turns the per-block counts in
/// `blocks[0..nb]` (`nb` the expression `blocks_expr`) into exclusive
/// offsets at `blocks[nb..2nb]` and their total at `blocks[2nb]`, running
/// `on_total` (statements that see the total as `acc`) once.
pub(super) fn scan_entry(name: &str, blocks_expr: &str, on_total: &str) -> String {
    format!(
        "
@compute @workgroup_size({BLOCK})
fn {name}(@builtin(local_invocation_index) lid: u32) {{
    let nb = {blocks_expr};
    let per = (nb + {BLOCK}u - 1u) / {BLOCK}u;
    let lo = min(lid * per, nb);
    let hi = min(lo + per, nb);
    var sum = 0u;
    for (var b = lo; b < hi; b++) {{ sum += blocks[b]; }}
    wg_scan[lid] = sum;
    workgroupBarrier();
    if (lid == 0u) {{
        var acc = 0u;
        for (var t = 0u; t < {BLOCK}u; t++) {{ let s = wg_scan[t]; wg_scan[t] = acc; acc += s; }}
        blocks[2u * nb] = acc;
{on_total}    }}
    workgroupBarrier();
    var acc = wg_scan[lid];
    for (var b = lo; b < hi; b++) {{ blocks[nb + b] = acc; acc += blocks[b]; }}
}}
"
    )
}

/// The module of a program with reductions: one `reduce` entry point that
/// evaluates the predicate and folds every reduction per group over tiles
/// of rows (see [`Body::reduce_kernel`]).
fn reduce_module(program: &Program, code: &Body, out_base: usize) -> String {
    let mut src = head(program, code);
    // Only the fold types the program uses: f64 needs SHADER_F64.
    if code.reduce.iter().any(|r| !r.float) {
        src.push_str("var<workgroup> red_i: array<i64, 256>;\n");
    }
    if code.reduce.iter().any(|r| r.float) {
        src.push_str("var<workgroup> red_f: array<f64, 256>;\n");
    }
    let _ = write!(
        src,
        "var<workgroup> red_n: array<u32, 256>;
var<workgroup> wg_gn_a: array<atomic<u32>, 256>;
var<workgroup> wg_gn: array<u32, 256>;

@compute @workgroup_size({BLOCK})
fn reduce(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {{
    let wgi = wg.x;
{body}}}
",
        body = code.reduce_kernel(Dialect::Wgsl, out_base),
    );
    src
}

/// What every module starts with: its origin, the bindings and helpers, and
/// the predicate as `keep(row)`.
fn head(program: &Program, code: &Body) -> String {
    head_with(program, code, OUTPUTS)
}

/// [`head`] with `outputs` declaring `outw` and its helpers.
fn head_with(program: &Program, code: &Body, outputs: &str) -> String {
    // naga takes 64-bit types when the device was opened with the
    // SHADER_F64 / SHADER_INT64 features; no `enable` directive is needed.
    format!(
        "// Generated by kiln-kernels codegen from program {:016x}.\n{PRELUDE}{outputs}
fn keep(row: u32) -> bool {{
{}    return {};
}}
",
        program.fingerprint(),
        code.pred_stmts,
        code.pred
    )
}

/// The module of a grouped program folded with atomics (see
/// [`super::GroupFold::Atomics`]): `scatter`, one thread per row, and for
/// a program with minima or maxima `scatter_lo` after it (see
/// [`Body::atomic_kernel`]). Float sums are refused: WGSL has no 64-bit
/// (or float) atomics.
pub fn generate_atomic(program: &Program) -> Result<String, String> {
    atomic_refusal(program)?;
    let out_base = meta_output_base(program);
    let code = body(program, Dialect::Wgsl, out_base)?;
    let mut src = head_with(program, &code, ATOMIC_OUTPUTS);
    for (entry, lo_pass) in [("scatter", false), ("scatter_lo", true)] {
        if lo_pass && !program.atomic_lo_pass() {
            continue;
        }
        let _ = write!(
            src,
            "
@compute @workgroup_size({BLOCK})
fn {entry}(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {{
    let row = (wg.x + wg.y * nwg.x) * {BLOCK}u + lid;
    if (row >= params[0]) {{ return; }}
{body}}}
",
            body = code.atomic_kernel(Dialect::Wgsl, out_base, lo_pass),
        );
    }
    Ok(src)
}

fn atomic_refusal(program: &Program) -> Result<(), String> {
    program.atomic_fold_check()?;
    if program.reduce.iter().any(|r| r.is_float()) {
        return Err(
            "a float sum over more groups than the tile fold takes needs float atomics, \
             which WGSL lacks"
                .into(),
        );
    }
    Ok(())
}

pub(super) const PRELUDE: &str = "
@group(0) @binding(0) var<storage, read> data: array<u32>;
@group(0) @binding(1) var<storage, read> params: array<u32>;
@group(0) @binding(3) var<storage, read_write> blocks: array<u32>;
@group(0) @binding(4) var<storage, read_write> flag: array<atomic<u32>>;

var<workgroup> wg_count: atomic<u32>;
var<workgroup> wg_scan: array<u32, 256>;

fn nblocks() -> u32 { return (params[0] + 255u) / 256u; }

fn ld64(off: u32, row: u32) -> u64 {
    let i = off + 2u * row;
    return u64(data[i]) | (u64(data[i + 1u]) << 32u);
}

fn is_valid(off: u32, row: u32) -> bool {
    if (off == 0xffffffffu) { return true; }
    return ((data[off + (row >> 5u)] >> (row & 31u)) & 1u) == 1u;
}

// Tells the host this batch needs the CPU: the device would not reproduce
// the CPU's answer (an integer division by zero, a decimal overflow, ...).
fn raise() { atomicOr(&flag[0], 1u); }

// IEEE 754 totalOrder keys, as Arrow compares floats.
fn key32(x: f32) -> i32 { let b = bitcast<i32>(x); return b ^ ((b >> 31u) & 0x7fffffff); }
fn key64(x: f64) -> i64 {
    let b = bitcast<i64>(x);
    return b ^ ((b >> 63u) & bitcast<i64>((u64(0x7fffffffu) << 32u) | u64(0xffffffffu)));
}

// f64 trunc, floor and ceil on the bits: Mesa's lavapipe (22.3, Debian 12)
// returns an f64 of magnitude past 2^31 unchanged from the built-in trunc
// (so round(-134903388952.5) came back as itself), and folds a conversion
// to i64 and back into that same trunc. Clearing the fraction's bits is
// exact; from 2^52 on every f64 is an integer (NaN and infinities too).
fn trunc64(x: f64) -> f64 {
    let b = bitcast<u64>(x);
    let e = i32((b >> 52u) & u64(0x7ffu)) - 1023;
    if (e >= 52) { return x; }
    if (e < 0) { return bitcast<f64>(b & (u64(0x80000000u) << 32u)); }
    let fraction = (u64(1u) << u32(52 - e)) - u64(1u);
    return bitcast<f64>(b & ~fraction);
}
fn floor64(x: f64) -> f64 {
    let t = trunc64(x);
    return select(t, t - bitcast<f64>(u64(0x3ff00000u) << 32u), x < t);
}
fn ceil64(x: f64) -> f64 {
    let t = trunc64(x);
    return select(t, t + bitcast<f64>(u64(0x3ff00000u) << 32u), x > t);
}
";

/// `outw` of the modules that store rows or per-workgroup partials.
const OUTPUTS: &str = "
@group(0) @binding(2) var<storage, read_write> outw: array<u32>;

fn st64(off: u32, pos: u32, v: u64) {
    let i = off + 2u * pos;
    outw[i] = u32(v);
    outw[i + 1u] = u32(v >> 32u);
}
";

/// `outw` of the atomic grouped fold: accumulators updated in place.
const ATOMIC_OUTPUTS: &str = "
@group(0) @binding(2) var<storage, read_write> outw: array<atomic<u32>>;

// Adds the 96-bit two's complement (a0, a1, a2), low word first, to the
// accumulator at word i. Every word's additions commute, and each thread
// that wraps a word around carries one into the next, so the sum is exact.
fn add96(i: u32, a0: u32, a1: u32, a2: u32) {
    var c1 = 0u;
    if (a0 != 0u) {
        let o = atomicAdd(&outw[i], a0);
        if (o + a0 < o) { c1 = 1u; }
    }
    let b1 = a1 + c1;
    var c2 = select(0u, 1u, b1 < a1);
    if (b1 != 0u) {
        let o = atomicAdd(&outw[i + 1u], b1);
        if (o + b1 < o) { c2 += 1u; }
    }
    let b2 = a2 + c2;
    if (b2 != 0u) { atomicAdd(&outw[i + 2u], b2); }
}
";
