//! CUDA C generation for fused programs, compiled at run time by NVRTC.
//!
//! The module mirrors [`super::wgsl`]: the same memory layout ([`super::Layout`]),
//! the same three kernels over blocks of [`BLOCK`] rows (`kiln_count`,
//! `kiln_scan`, `kiln_emit`) and the same per-row code ([`super::emit`] in its
//! CUDA dialect). Unlike Vulkan, CUDA has IEEE `exp`, `log`, `pow` and `fmod`
//! in double precision, so programs WGSL refuses compile here.

use std::fmt::Write as _;

use super::emit::{Body, Dialect, body};
use super::ir::Program;
use super::wgsl::{BLOCK, meta_output_base};

/// Generates the CUDA C source of `program`, or says why it cannot.
pub fn generate(program: &Program) -> Result<String, String> {
    let out_base = meta_output_base(program);
    let code = body(program, Dialect::Cuda, out_base)?;
    if !program.reduce.is_empty() {
        return Ok(reduce_module(program, &code, out_base));
    }
    let index_off = out_base + 2 * program.outputs.len();
    let compacts = program.compacts();
    let emit_stmts = &code.emit_stmts;
    let mut src = head(program, &code);
    let (rank, rank_shared) = match &program.topk {
        Some(t) => {
            src.push_str(&code.sort_key_fn(Dialect::Cuda, t));
            (
                code.block_rank(Dialect::Cuda, t.k),
                "    __shared__ u32 wg_khi[256];\n    __shared__ u64 wg_klo[256];\n",
            )
        }
        None => (String::new(), ""),
    };
    let _ = write!(
        src,
        "
__device__ void emit_row(KILN_ARGS, u32 row, u32 pos) {{
{emit_stmts}    outw[params[{index_off}] + pos] = row;
}}

extern \"C\" __global__ void kiln_count(KILN_ARGS) {{
    __shared__ u32 wg_count;
{rank_shared}    const u32 block = blockIdx.x + blockIdx.y * gridDim.x;
    const u32 lid = threadIdx.x;
    const u32 row = block * {BLOCK}u + lid;
    bool kept = false;
    if (row < params[0]) {{ kept = keep(KILN_PASS, row); }}
{rank}    if (lid == 0) {{ wg_count = 0; }}
    __syncthreads();
    if (kept) {{ atomicAdd(&wg_count, 1u); }}
    __syncthreads();
    if (lid == 0 && block < nblocks(params)) {{ blocks[block] = wg_count; }}
}}

{scan}
extern \"C\" __global__ void kiln_emit(KILN_ARGS) {{
    __shared__ u32 wg_scan[{BLOCK}];
{rank_shared}    const u32 block = blockIdx.x + blockIdx.y * gridDim.x;
    const u32 lid = threadIdx.x;
    const u32 row = block * {BLOCK}u + lid;
    bool kept = false;
    if (row < params[0]) {{ kept = {kept}; }}
{rank}    wg_scan[lid] = kept ? 1u : 0u;
    __syncthreads();
    for (u32 d = 1; d < {BLOCK}u; d <<= 1) {{
        const u32 add = lid >= d ? wg_scan[lid - d] : 0u;
        __syncthreads();
        wg_scan[lid] += add;
        __syncthreads();
    }}
    if (kept && block < nblocks(params)) {{
        const u32 base = {base};
        emit_row(KILN_PASS, row, base + wg_scan[lid] - 1u);
    }}
}}
",
        scan = scan_entry("kiln_scan", "nblocks(params)", ""),
        kept = if program.predicate.is_some() {
            "keep(KILN_PASS, row)"
        } else {
            "true"
        },
        base = if compacts {
            "blocks[nblocks(params) + block]"
        } else {
            "block * 256u"
        },
    );
    Ok(src)
}

/// The CUDA form of [`super::wgsl::scan_entry`].
pub(super) fn scan_entry(name: &str, blocks_expr: &str, on_total: &str) -> String {
    format!(
        "
extern \"C\" __global__ void {name}(KILN_ARGS) {{
    __shared__ u32 wg_scan[{BLOCK}];
    const u32 lid = threadIdx.x;
    const u32 nb = {blocks_expr};
    const u32 per = (nb + {BLOCK}u - 1u) / {BLOCK}u;
    const u32 lo = min(lid * per, nb);
    const u32 hi = min(lo + per, nb);
    u32 sum = 0;
    for (u32 b = lo; b < hi; b++) {{ sum += blocks[b]; }}
    wg_scan[lid] = sum;
    __syncthreads();
    if (lid == 0) {{
        u32 acc = 0;
        for (u32 t = 0; t < {BLOCK}u; t++) {{ const u32 s = wg_scan[t]; wg_scan[t] = acc; acc += s; }}
        blocks[2u * nb] = acc;
{on_total}    }}
    __syncthreads();
    u32 acc = wg_scan[lid];
    for (u32 b = lo; b < hi; b++) {{ blocks[nb + b] = acc; acc += blocks[b]; }}
}}
"
    )
}

/// The module of a program with reductions: one `kiln_reduce` kernel that
/// evaluates the predicate and folds every reduction per group over tiles
/// of rows (see [`Body::reduce_kernel`]).
fn reduce_module(program: &Program, code: &Body, out_base: usize) -> String {
    let mut src = head(program, code);
    let _ = write!(
        src,
        "
extern \"C\" __global__ void kiln_reduce(KILN_ARGS) {{
    __shared__ long long red_i[{BLOCK}];
    __shared__ double red_f[{BLOCK}];
    __shared__ u32 red_n[{BLOCK}];
    __shared__ u32 wg_gn_a[{BLOCK}];
    __shared__ u32 wg_gn[{BLOCK}];
    const u32 wgi = blockIdx.x;
    const u32 lid = threadIdx.x;
{body}}}
",
        body = code.reduce_kernel(Dialect::Cuda, out_base),
    );
    src
}

/// The module of a grouped program folded with atomics: `kiln_scatter`, and
/// `kiln_scatter_lo` after it for minima and maxima (see
/// [`Body::atomic_kernel`]). Float sums add with CUDA's f64 `atomicAdd`.
pub fn generate_atomic(program: &Program) -> Result<String, String> {
    program.atomic_fold_check()?;
    let out_base = meta_output_base(program);
    let code = body(program, Dialect::Cuda, out_base)?;
    let mut src = head(program, &code);
    for (entry, lo_pass) in [("kiln_scatter", false), ("kiln_scatter_lo", true)] {
        if lo_pass && !program.atomic_lo_pass() {
            continue;
        }
        let _ = write!(
            src,
            "
extern \"C\" __global__ void {entry}(KILN_ARGS) {{
    const u32 row = (blockIdx.x + blockIdx.y * gridDim.x) * {BLOCK}u + threadIdx.x;
    if (row >= params[0]) {{ return; }}
{body}}}
",
            body = code.atomic_kernel(Dialect::Cuda, out_base, lo_pass),
        );
    }
    Ok(src)
}

/// What every module starts with: its origin, the helpers, the kernels'
/// argument list and the predicate as `keep(..., row)`.
fn head(program: &Program, code: &Body) -> String {
    format!(
        "// Generated by kiln-kernels codegen from program {:016x}.\n{}
__device__ bool keep(KILN_ARGS, u32 row) {{
{}    return {};
}}
",
        program.fingerprint(),
        head_text(),
        code.pred_stmts,
        code.pred
    )
}

/// The helpers and the kernels' argument list every module starts with.
pub(super) fn head_text() -> String {
    format!(
        "{PRELUDE}
#define KILN_ARGS const u32* __restrict__ data, const u32* __restrict__ params, \\
    u32* __restrict__ outw, u32* __restrict__ blocks, u32* __restrict__ flag
#define KILN_PASS data, params, outw, blocks, flag
#define add96(i, a0, a1, a2) kiln_add96(outw, (i), (a0), (a1), (a2))
"
    )
}

const PRELUDE: &str = r#"
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ u32 nblocks(const u32* params) { return (params[0] + 255u) / 256u; }

// Helpers the per-row code calls by the names the WGSL module uses; they
// read the kernel's own arguments.
#define ld64(off, row) kiln_ld64(data, (off), (row))
#define st64(off, pos, v) kiln_st64(outw, (off), (pos), (v))
#define is_valid(off, row) kiln_is_valid(data, (off), (row))
// Tells the host this batch needs the CPU (see the WGSL module).
#define raise() atomicOr(flag, 1u)

__device__ __forceinline__ u64 kiln_ld64(const u32* data, u32 off, u32 row) {
    const u32 i = off + 2u * row;
    return (u64)data[i] | ((u64)data[i + 1u] << 32);
}

__device__ __forceinline__ void kiln_st64(u32* outw, u32 off, u32 pos, u64 v) {
    const u32 i = off + 2u * pos;
    outw[i] = (u32)v;
    outw[i + 1u] = (u32)(v >> 32);
}

// Adds the 96-bit two's complement (a0, a1, a2), low word first, to the
// accumulator at word i (see the WGSL module's add96).
__device__ __forceinline__ void kiln_add96(u32* outw, u32 i, u32 a0, u32 a1, u32 a2) {
    u32 c1 = 0u;
    if (a0 != 0u) {
        const u32 o = atomicAdd(&outw[i], a0);
        if (o + a0 < o) { c1 = 1u; }
    }
    const u32 b1 = a1 + c1;
    u32 c2 = b1 < a1 ? 1u : 0u;
    if (b1 != 0u) {
        const u32 o = atomicAdd(&outw[i + 1u], b1);
        if (o + b1 < o) { c2 += 1u; }
    }
    const u32 b2 = a2 + c2;
    if (b2 != 0u) { atomicAdd(&outw[i + 2u], b2); }
}

__device__ __forceinline__ bool kiln_is_valid(const u32* data, u32 off, u32 row) {
    if (off == 0xffffffffu) { return true; }
    return ((data[off + (row >> 5)] >> (row & 31u)) & 1u) == 1u;
}

// IEEE 754 totalOrder keys, as Arrow compares floats.
__device__ __forceinline__ int key32(float x) {
    const int b = __float_as_int(x);
    return b ^ ((b >> 31) & 0x7fffffff);
}
__device__ __forceinline__ long long key64(double x) {
    const long long b = __double_as_longlong(x);
    return b ^ ((b >> 63) & 0x7fffffffffffffffLL);
}
"#;
