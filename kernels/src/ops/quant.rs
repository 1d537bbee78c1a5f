//! Int8 dense layers by dynamic quantization, as ONNX Runtime's
//! `quantize_dynamic` and PyTorch's dynamic quantization do them: the
//! weights quantized once, symmetrically per output channel to int8; each
//! input row (a token) quantized when the layer runs, asymmetrically to
//! uint8 over its own range (so the one-sided output of a GELU keeps all 256
//! levels); the products summed exactly in int32; the bias added in f32.
//!
//! `x[i][k] ≈ sx[i]·ax[i][k] + lo[i]` with `ax ∈ 0..=255`,
//! `sx = (max − min) / 255`, `lo = min` over the row; `w[j][k] ≈
//! sw[j]·qw[j][k]` with `qw ∈ −127..=127`, `sw = max|w[j]| / 127`; then
//! `out[i][j] = sx[i]·sw[j]·Σₖ ax[i][k]·qw[j][k] + lo[i]·sw[j]·Σₖ qw[j][k] + b[j]`.
//!
//! **Kernels.** The weights are packed once into panels of 16 output
//! channels, 4 inputs at a time (`[g][j][0..4]`: the layout of an AVX-512
//! VNNI `vpdpbusd` operand, which multiplies unsigned activation bytes by
//! signed weight bytes, one 32-bit lane per channel), the 4 panels of a
//! 64-channel block interleaved by group so the microkernel reads one
//! contiguous stream (`[block][g][panel][j][0..4]`). Where the CPU has AVX-512 VNNI (and [`simd_level`] allows
//! AVX-512) a register-blocked microkernel (6 rows × 64 channels, 24 zmm
//! accumulators) runs; elsewhere a portable loop over the same layout,
//! compiled for AVX2 or the baseline target at run time. Every kernel sums
//! the same integers and scales them with the same f32 operations, so their
//! results are identical bit for bit.
//!
//! [`simd_level`]: crate::ops::simd_level

use rayon::prelude::*;

/// Output channels per packed panel: one zmm register of int32 lanes.
const PANEL: usize = 16;
/// Inputs summed per 32-bit lane by one `vpdpbusd`.
const GROUP: usize = 4;
/// Bytes of one panel's group: 16 channels × 4 inputs.
const PANEL_GROUP: usize = PANEL * GROUP;
/// Panels per VNNI microkernel block (64 channels).
const BLOCK_PANELS: usize = 4;
/// Rows per rayon task.
const ROWS_PER_TASK: usize = 64;

/// The int8 kernels, slowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Int8Kernel {
    /// The portable loop for the baseline target.
    Baseline,
    /// The portable loop compiled for AVX2 with FMA.
    Avx2,
    /// AVX-512 VNNI (`vpdpbusd`), 6 × 64 register blocks.
    Avx512Vnni,
    /// Intel AMX tiles (`tdpbusd`), 32 × 32 blocks.
    Amx,
}

impl Int8Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Amx => "amx-int8",
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Baseline => "baseline",
        }
    }
}

/// The kernel [`QuantizedLinear::forward`] runs on this CPU, within
/// `KILN_CPU_SIMD` (see [`crate::ops::simd_level`]; its value `avx512-vnni`
/// also leaves AMX out).
pub fn int8_kernel() -> Int8Kernel {
    static KERNEL: std::sync::OnceLock<Int8Kernel> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(detect)
}

fn detect() -> Int8Kernel {
    match crate::ops::simd_level() {
        #[cfg(target_arch = "x86_64")]
        crate::ops::SimdLevel::Avx512
            if std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni") =>
        {
            #[cfg(target_os = "linux")]
            if std::env::var("KILN_CPU_SIMD").as_deref() != Ok("avx512-vnni") && amx::available() {
                return Int8Kernel::Amx;
            }
            Int8Kernel::Avx512Vnni
        }
        crate::ops::SimdLevel::Avx512 | crate::ops::SimdLevel::Avx2 => Int8Kernel::Avx2,
        crate::ops::SimdLevel::Baseline => Int8Kernel::Baseline,
    }
}

/// A dense layer `[n × k]` quantized to int8 per output channel.
#[derive(Debug, Clone)]
pub struct QuantizedLinear {
    n: usize,
    k: usize,
    /// Groups of 4 inputs (k rounded up).
    groups: usize,
    /// Panels of 16 channels (n rounded up to whole 4-panel blocks).
    panels: usize,
    /// `panels × groups × 64` bytes (see [`at`]), zero beyond `n` and `k`.
    packed: Vec<i8>,
    /// Each channel's scale, `max|w[j]| / 127`.
    scale: Vec<f32>,
    /// `sw[j] · Σₖ qw[j][k]`: what a row's minimum adds per unit.
    wsum: Vec<f32>,
    /// The bias (zeros when the layer has none), padded to the panels.
    bias: Vec<f32>,
    /// The f32 weights by input, `[k × n]`: the outlier columns' products.
    columns: Vec<f32>,
}

impl QuantizedLinear {
    /// Quantizes `w` (`[n × k]` row-major, a PyTorch `Linear` weight) and
    /// keeps `bias`.
    ///
    /// # Panics
    /// When the slice lengths do not match the dimensions (a caller bug).
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> QuantizedLinear {
        assert_eq!(w.len(), n * k, "quantize: w is not {n}x{k}");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "quantize: bias is not {n}");
        }
        // Whole AMX tiles of inputs (64); zeros beyond k add nothing.
        let groups = k.div_ceil(GROUP).next_multiple_of(16).max(16);
        let panels = n
            .div_ceil(PANEL)
            .next_multiple_of(BLOCK_PANELS)
            .max(BLOCK_PANELS);
        let mut packed = vec![0i8; panels * groups * PANEL_GROUP];
        let mut scale = vec![0f32; panels * PANEL];
        let mut wsum = vec![0f32; panels * PANEL];
        let mut padded_bias = vec![0f32; panels * PANEL];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = max / 127.0;
            let inv = if max > 0.0 { 127.0 / max } else { 0.0 };
            let (p, c) = (j / PANEL, j % PANEL);
            let mut sum = 0i32;
            for (kk, v) in row.iter().enumerate() {
                let q = round(v * inv).clamp(-127.0, 127.0) as i8;
                sum += i32::from(q);
                let (g, t) = (kk / GROUP, kk % GROUP);
                packed[at(groups, p, g) + c * GROUP + t] = q;
            }
            scale[j] = s;
            wsum[j] = s * sum as f32;
            padded_bias[j] = bias.map_or(0.0, |b| b[j]);
        }
        QuantizedLinear {
            n,
            k,
            groups,
            panels,
            packed,
            scale,
            wsum,
            columns: (0..k * n).map(|i| w[(i % n) * k + i / n]).collect(),
            bias: padded_bias,
        }
    }

    /// Output channels.
    pub fn outputs(&self) -> usize {
        self.n
    }

    /// Inputs per row.
    pub fn inputs(&self) -> usize {
        self.k
    }

    /// Bytes held (packed weights, per-channel terms, the f32 columns).
    pub fn bytes(&self) -> usize {
        self.packed.len() + 12 * self.scale.len() + 4 * self.columns.len()
    }

    /// `x[m × k] · wᵀ + b` through the int8 kernel of this CPU.
    ///
    /// # Panics
    /// When `x` does not hold `m × k` values (a caller bug).
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        self.forward_with(x, m, int8_kernel())
    }

    /// [`QuantizedLinear::forward`] through `kernel`, or this CPU's best if
    /// it has not that one (the portable loop runs at this process's SIMD
    /// level whether `Baseline` or `Avx2` is asked).
    pub fn forward_with(&self, x: &[f32], m: usize, kernel: Int8Kernel) -> Vec<f32> {
        let kernel = kernel.min(int8_kernel());
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "int8 linear: x is not {m}x{k}");
        let mut out = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return out;
        }
        out.par_chunks_mut(ROWS_PER_TASK * n)
            .zip(x.par_chunks(ROWS_PER_TASK * k.max(1)))
            .for_each(|(o, xs)| {
                let rows = o.len() / n;
                let outliers = outlier_columns(xs, k);
                let inliers;
                let quantized = if outliers.is_empty() {
                    xs
                } else {
                    let mut copy = xs.to_vec();
                    for row in copy.chunks_exact_mut(k) {
                        for &c in &outliers {
                            row[c] = 0.0;
                        }
                    }
                    inliers = copy;
                    &inliers[..]
                };
                // AMX reads whole 32-row blocks: padding rows are zeros.
                let padded = match kernel {
                    Int8Kernel::Amx => rows.next_multiple_of(64),
                    _ => rows,
                };
                let mut qx = vec![0u8; padded * self.groups * GROUP];
                let mut sx = vec![[0f32; 2]; rows];
                quantize_rows(quantized, k, self.groups * GROUP, &mut qx, &mut sx);
                self.run(kernel, &qx, &sx, rows, o);
                if !outliers.is_empty() {
                    add_columns(self, xs, &outliers, o);
                }
            });
        out
    }

    /// `kernel` at most [`int8_kernel`] (the caller's `min`).
    fn run(&self, kernel: Int8Kernel, qx: &[u8], sx: &[[f32; 2]], rows: usize, out: &mut [f32]) {
        match kernel {
            #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
            // SAFETY: int8_kernel() reports AMX only where the CPU has it
            // (with AVX-512) and Linux granted it; `qx` holds whole 32-row
            // blocks (padded by the caller), `groups` is a multiple of 16.
            Int8Kernel::Amx => unsafe { amx::run(self, qx, sx, rows, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: int8_kernel() reports AVX-512 VNNI (and BW) only where
            // the CPU has them; the buffers' sizes are the layer's.
            Int8Kernel::Avx512Vnni => unsafe { vnni::run(self, qx, sx, rows, out) },
            _ => portable_rows(self, qx, sx, rows, out),
        }
    }

    /// The f32 epilogue shared by every kernel: the integer sum of a row
    /// (scale and minimum `[sx, lo]`) and channel `j` to its output value.
    #[inline(always)]
    fn finish(&self, sum: i32, [sx, lo]: [f32; 2], j: usize) -> f32 {
        (sum as f32 * (sx * self.scale[j]) + lo * self.wsum[j]) + self.bias[j]
    }
}

/// Where panel `p`'s 64 bytes of group `g` start in the packed weights.
#[inline(always)]
fn at(groups: usize, p: usize, g: usize) -> usize {
    let (block, q) = (p / BLOCK_PANELS, p % BLOCK_PANELS);
    ((block * groups + g) * BLOCK_PANELS + q) * PANEL_GROUP
}

/// Inputs whose magnitude passes this in any row of a block are outliers
/// (the few hidden dimensions of a transformer that carry values far beyond
/// the rest): multiplied in f32 instead, as LLM.int8() decomposes them, so
/// they do not stretch every row's quantization range.
pub const OUTLIER: f32 = 6.0;

/// The columns of `x` (`k` wide) holding an outlier.
fn outlier_columns(x: &[f32], k: usize) -> Vec<usize> {
    let mut max = vec![0f32; k];
    for row in x.chunks_exact(k.max(1)) {
        for (m, v) in max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    (0..k).filter(|&c| max[c] > OUTLIER).collect()
}

/// `out[r][j] += Σ_{c ∈ columns} x[r][c]·w[j][c]` in f32, in column order
/// (a multiply and an add each, so every SIMD level gives the same bits).
#[inline(always)]
fn add_columns_body<const FMA: bool>(
    layer: &QuantizedLinear,
    x: &[f32],
    columns: &[usize],
    out: &mut [f32],
) {
    let (n, k) = (layer.n, layer.k);
    for (row, o) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for &c in columns {
            let v = row[c];
            let w = &layer.columns[c * n..(c + 1) * n];
            for j in 0..n {
                o[j] += v * w[j];
            }
        }
    }
}

crate::ops::dispatch!(add_columns, add_columns_body, (layer: &QuantizedLinear, x: &[f32], columns: &[usize], out: &mut [f32]) -> ());

/// 1.5·2²³: adding it rounds an f32 of magnitude below 2²² to an integer
/// (half to even) without a rounding instruction.
const ROUND: f32 = 12_582_912.0;

/// Round half to even in f32 (|v| < 2²²).
#[inline(always)]
fn round(v: f32) -> f32 {
    (v + ROUND) - ROUND
}

/// Quantizes each row of `x` (`k` wide) into `qx` (`kp` wide, padding left
/// at 0) with its scale and minimum in `sx`.
#[inline(always)]
fn quantize_body<const FMA: bool>(
    x: &[f32],
    k: usize,
    kp: usize,
    qx: &mut [u8],
    sx: &mut [[f32; 2]],
) {
    for ((row, q), s) in x
        .chunks_exact(k.max(1))
        .zip(qx.chunks_exact_mut(kp))
        .zip(sx)
    {
        // 16 lanes of comparisons (f32::min's NaN rule keeps a single
        // chain scalar); a NaN input is not an extreme.
        let (mut los, mut his) = ([f32::INFINITY; 16], [f32::NEG_INFINITY; 16]);
        let chunks = row.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..16 {
                los[i] = if c[i] < los[i] { c[i] } else { los[i] };
                his[i] = if c[i] > his[i] { c[i] } else { his[i] };
            }
        }
        for (i, v) in rest.iter().enumerate() {
            los[i] = if *v < los[i] { *v } else { los[i] };
            his[i] = if *v > his[i] { *v } else { his[i] };
        }
        let (mut lo, mut hi) = (los[0], his[0]);
        for i in 1..16 {
            lo = if los[i] < lo { los[i] } else { lo };
            hi = if his[i] > hi { his[i] } else { hi };
        }
        let range = hi - lo;
        let inv = if range > 0.0 { 255.0 / range } else { 0.0 };
        *s = [range / 255.0, lo];
        for (d, v) in q.iter_mut().zip(row) {
            // Rounded by the 1.5·2²³ addition, the integer is the low
            // mantissa bits: no float-to-int conversion (which keeps the loop
            // from vectorizing).
            let t = ((v - lo) * inv).clamp(0.0, 255.0) + ROUND;
            *d = (t.to_bits() & 0xff) as u8;
        }
    }
}

crate::ops::dispatch!(quantize_rows, quantize_body, (x: &[f32], k: usize, kp: usize, qx: &mut [u8], sx: &mut [[f32; 2]]) -> ());

/// The portable kernel: per row and panel, 64 lanes (16 channels × 4
/// inputs) of exact int32 products, summed by channel at the end.
#[inline(always)]
fn portable_body<const FMA: bool>(
    layer: &QuantizedLinear,
    qx: &[u8],
    sx: &[[f32; 2]],
    rows: usize,
    out: &mut [f32],
) {
    let (n, groups) = (layer.n, layer.groups);
    let kp = groups * GROUP;
    for r in 0..rows {
        let a = &qx[r * kp..(r + 1) * kp];
        for p in 0..n.div_ceil(PANEL) {
            let mut lanes = [0i32; PANEL_GROUP];
            for (g, a4) in a.chunks_exact(GROUP).enumerate() {
                let w = &layer.packed[at(groups, p, g)..][..PANEL_GROUP];
                for c in 0..PANEL {
                    for t in 0..GROUP {
                        lanes[c * GROUP + t] += i32::from(a4[t]) * i32::from(w[c * GROUP + t]);
                    }
                }
            }
            for c in 0..PANEL.min(n - p * PANEL) {
                let j = p * PANEL + c;
                let mut sum = 0i32;
                for t in 0..GROUP {
                    sum += lanes[c * GROUP + t];
                }
                out[r * n + j] = layer.finish(sum, sx[r], j);
            }
        }
    }
}

crate::ops::dispatch!(portable_rows, portable_body, (layer: &QuantizedLinear, qx: &[u8], sx: &[[f32; 2]], rows: usize, out: &mut [f32]) -> ());

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::{
        __m512i, _mm512_add_ps, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_loadu_epi32,
        _mm512_loadu_ps, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_si512,
    };

    use super::{BLOCK_PANELS, GROUP, PANEL, PANEL_GROUP, QuantizedLinear};

    /// Every row block against every 4-panel block.
    ///
    /// # Safety
    /// The CPU must have AVX-512F, BW and VNNI; `qx` must hold `rows` rows
    /// of `layer.groups × 4` bytes, `sx` `rows` scales, `out` `rows × n`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn run(
        layer: &QuantizedLinear,
        qx: &[u8],
        sx: &[[f32; 2]],
        rows: usize,
        out: &mut [f32],
    ) {
        let kp = layer.groups * GROUP;
        assert!(qx.len() >= rows * kp && sx.len() >= rows && out.len() >= rows * layer.n);
        for pb in (0..layer.panels).step_by(BLOCK_PANELS) {
            if pb * PANEL >= layer.n {
                break;
            }
            // SAFETY: as the caller promised; every block lies inside.
            unsafe { crate::ops::row_blocks!(rows, r0, block(layer, qx, sx, r0, pb, out)) };
        }
    }

    /// Rows `r0..r0 + MR` against panels `pb..pb + 4`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn block<const MR: usize>(
        layer: &QuantizedLinear,
        qx: &[u8],
        sx: &[[f32; 2]],
        r0: usize,
        pb: usize,
        out: &mut [f32],
    ) {
        let groups = layer.groups;
        let kp = groups * GROUP;
        let base = super::at(groups, pb, 0);
        let mut acc = [[_mm512_setzero_si512(); BLOCK_PANELS]; MR];
        let w = layer.packed.as_ptr();
        let a = qx.as_ptr();
        for g in 0..groups {
            let mut wv = [_mm512_setzero_si512(); BLOCK_PANELS];
            for (q, v) in wv.iter_mut().enumerate() {
                // SAFETY: panel pb + q < panels and group g < groups: 64
                // bytes inside `packed` (a block's groups are contiguous).
                *v = unsafe {
                    _mm512_loadu_epi32(w.add(base + (g * BLOCK_PANELS + q) * PANEL_GROUP).cast())
                };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r0 + r < rows, group g < groups: 4 bytes inside `qx`.
                let four = unsafe {
                    a.add((r0 + r) * kp + g * GROUP)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let b = _mm512_set1_epi32(four);
                for (q, x) in row.iter_mut().enumerate() {
                    *x = _mm512_dpbusd_epi32(*x, b, wv[q]);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, x) in row.iter().enumerate() {
                // SAFETY: as the caller promised.
                unsafe { finish16(layer, *x, sx[r0 + r], r0 + r, (pb + q) * PANEL, out) };
            }
        }
    }

    /// Channels `j0..j0 + 16` of row `r` from their integer sums, stored
    /// into `out` (those below `n`): [`QuantizedLinear::finish`] 16 at a time,
    /// operation for operation.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `out` must hold row `r` (`n` wide).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn finish16(
        layer: &QuantizedLinear,
        sums: __m512i,
        [scale_x, low]: [f32; 2],
        r: usize,
        j0: usize,
        out: &mut [f32],
    ) {
        let n = layer.n;
        if j0 >= n {
            return;
        }
        // SAFETY: j0 + 16 ≤ panels × 16, the padded lengths.
        let (wsum, scale, bias) = unsafe {
            (
                _mm512_loadu_ps(layer.wsum.as_ptr().add(j0)),
                _mm512_loadu_ps(layer.scale.as_ptr().add(j0)),
                _mm512_loadu_ps(layer.bias.as_ptr().add(j0)),
            )
        };
        let (s, lo) = (_mm512_set1_ps(scale_x), _mm512_set1_ps(low));
        let v = _mm512_add_ps(
            _mm512_add_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_mul_ps(s, scale)),
                _mm512_mul_ps(lo, wsum),
            ),
            bias,
        );
        let dst = &mut out[r * n + j0..(r + 1) * n];
        let lanes = PANEL.min(n - j0);
        // SAFETY: the CPU has AVX-512F (this function's feature).
        unsafe { crate::ops::store16(dst, v, lanes) };
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    //! Intel AMX (`tdpbusd`): 16 × 16 int32 tiles, each instruction 16,384
    //! multiply-adds of unsigned activation bytes by signed weight bytes. The
    //! packed weights are already AMX's B layout (a tile row is one group's
    //! 16 channels × 4 inputs); the tile instructions are written in inline
    //! assembly (Rust's AMX intrinsics are not stable).

    use std::arch::asm;
    use std::arch::x86_64::_mm512_loadu_epi32;
    use std::sync::OnceLock;

    use super::{BLOCK_PANELS, GROUP, PANEL, PANEL_GROUP, QuantizedLinear};

    /// Rows per tile.
    pub(super) const TILE_ROWS: usize = 16;
    /// Groups (of 4 inputs) per tile: 64 bytes a row.
    pub(super) const TILE_GROUPS: usize = 16;

    /// Whether this CPU has AMX-INT8 and Linux lets this process use it
    /// (asked once: `arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`).
    pub(super) fn available() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            // CPUID leaf 7: EDX bit 24 AMX-TILE, bit 25 AMX-INT8.
            let leaf = std::arch::x86_64::__cpuid_count(7, 0);
            if leaf.edx & (3 << 24) != 3 << 24 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a plain system call with integer arguments.
            unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                ) == 0
            }
        })
    }

    /// The tile configuration: palette 1, every tile used 16 rows × 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Every 32-row block against every 2-panel block: tiles 0–3 the four
    /// 16 × 16 accumulators, 4–5 two row tiles of activations, 6–7 two
    /// panel tiles of weights.
    ///
    /// # Safety
    /// [`available`] must be true and the CPU must have AVX-512F; `qx` must
    /// hold `rows` rounded up to 32 rows of `layer.groups × 4` bytes
    /// (`groups` a multiple of 16), `sx` `rows` entries, `out` `rows × n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run(
        layer: &QuantizedLinear,
        qx: &[u8],
        sx: &[[f32; 2]],
        rows: usize,
        out: &mut [f32],
    ) {
        let groups = layer.groups;
        let kp = groups * GROUP;
        let padded = rows.next_multiple_of(2 * TILE_ROWS);
        assert!(groups.is_multiple_of(TILE_GROUPS) && qx.len() >= padded * kp);
        assert!(sx.len() >= rows && out.len() >= rows * layer.n);
        let config = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
            rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut c = [[0i32; PANEL * TILE_ROWS]; 4];
        let panel_stride = BLOCK_PANELS * PANEL_GROUP;
        // SAFETY: AMX is available (the caller checked) and the
        // configuration is valid for palette 1.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack)) };
        for p in (0..layer.n.div_ceil(PANEL)).step_by(2) {
            for r0 in (0..rows).step_by(2 * TILE_ROWS) {
                let a0 = qx[r0 * kp..].as_ptr();
                let a1 = qx[(r0 + TILE_ROWS) * kp..].as_ptr();
                // SAFETY: every tile load reads 16 rows of 64 bytes inside
                // `qx` (rows r0..r0 + 32 of the padded buffer) or inside
                // `packed` (groups g..g + 16 of panels p and p + 1, 256
                // bytes apart by group, as `at` lays them out); the stores
                // write 16 rows of 64 bytes into `c`.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack)
                    );
                    for g in (0..groups).step_by(TILE_GROUPS) {
                        let b0 = layer.packed.as_ptr().add(super::at(groups, p, g));
                        let b1 = layer.packed.as_ptr().add(super::at(groups, p + 1, g));
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}*1]",
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tileloadd tmm6, [{b0} + {sb}*1]",
                            "tileloadd tmm7, [{b1} + {sb}*1]",
                            "tdpbusd tmm0, tmm4, tmm6",
                            "tdpbusd tmm1, tmm4, tmm7",
                            "tdpbusd tmm2, tmm5, tmm6",
                            "tdpbusd tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(g * GROUP),
                            a1 = in(reg) a1.add(g * GROUP),
                            b0 = in(reg) b0,
                            b1 = in(reg) b1,
                            sa = in(reg) kp,
                            sb = in(reg) panel_stride,
                            options(nostack)
                        );
                    }
                    asm!(
                        "tilestored [{c0} + {s}*1], tmm0",
                        "tilestored [{c1} + {s}*1], tmm1",
                        "tilestored [{c2} + {s}*1], tmm2",
                        "tilestored [{c3} + {s}*1], tmm3",
                        c0 = in(reg) c[0].as_mut_ptr(),
                        c1 = in(reg) c[1].as_mut_ptr(),
                        c2 = in(reg) c[2].as_mut_ptr(),
                        c3 = in(reg) c[3].as_mut_ptr(),
                        s = in(reg) 64usize,
                        options(nostack)
                    );
                }
                for (t, tile) in c.iter().enumerate() {
                    let (rb, q) = (t / 2, t % 2);
                    for i in 0..TILE_ROWS {
                        let r = r0 + rb * TILE_ROWS + i;
                        if r >= rows {
                            break;
                        }
                        // SAFETY: row i of the tile is 16 int32s.
                        let sums = unsafe { _mm512_loadu_epi32(tile[i * PANEL..].as_ptr()) };
                        // SAFETY: row r < rows is inside `out`.
                        unsafe {
                            super::vnni::finish16(layer, sums, sx[r], r, (p + q) * PANEL, out)
                        };
                    }
                }
            }
        }
        // SAFETY: releases the tile state this function configured.
        unsafe { asm!("tilerelease", options(nostack)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        // Below OUTLIER: every input goes through int8.
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.37).sin() * (1.0 + (i % 5) as f32))
            .collect()
    }

    /// The VNNI and AMX kernels (where this CPU has them) give the portable
    /// loop's bits, and they equal the quantized product computed in f64 from the
    /// definition.
    #[test]
    fn kernels_agree_with_the_definition() {
        for (m, k, n) in [
            (1, 1, 1),
            (7, 5, 3),
            (13, 37, 45),
            (70, 384, 130),
            (6, 1536, 64),
        ] {
            let x = data(m * k, 1.0);
            let w = data(n * k, 2.0);
            let b = data(n, 3.0);
            let layer = QuantizedLinear::new(&w, n, k, Some(&b));
            let base = layer.forward_with(&x, m, Int8Kernel::Baseline);
            eprintln!("{m}x{k}x{n}: {:?} against the portable loop", int8_kernel());
            for kernel in [Int8Kernel::Avx512Vnni, Int8Kernel::Amx] {
                let got = layer.forward_with(&x, m, kernel);
                assert!(
                    got.iter()
                        .zip(&base)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernel:?} (at most {:?}) differs from the portable loop at {m}x{k}x{n}",
                    int8_kernel()
                );
            }
            // The weights symmetric, the rows asymmetric, in f32 as the
            // kernels compute them; the sums in f64.
            let qw = |v: &[f32]| {
                let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
                let inv = 127.0 / max;
                let q: Vec<f64> = v
                    .iter()
                    .map(|x| f64::from((x * inv).round_ties_even()))
                    .collect();
                (q, f64::from(max / 127.0))
            };
            let qa = |v: &[f32]| {
                let lo = v.iter().fold(f32::INFINITY, |a, x| a.min(*x));
                let hi = v.iter().fold(f32::NEG_INFINITY, |a, x| a.max(*x));
                let inv = if hi > lo { 255.0 / (hi - lo) } else { 0.0 };
                let q: Vec<f64> = v
                    .iter()
                    .map(|x| f64::from(((x - lo) * inv).round_ties_even()))
                    .collect();
                (q, f64::from((hi - lo) / 255.0), f64::from(lo))
            };
            for i in 0..m {
                let (ax, sx, lo) = qa(&x[i * k..(i + 1) * k]);
                for j in 0..n {
                    let (qw, sw) = qw(&w[j * k..(j + 1) * k]);
                    let dot: f64 = ax.iter().zip(&qw).map(|(a, b)| a * b).sum();
                    let wsum: f64 = qw.iter().sum();
                    let want = dot * sx * sw + lo * sw * wsum + f64::from(b[j]);
                    let got = f64::from(base[i * n + j]);
                    let scale = (sx * sw * 255.0 * 127.0 * k as f64).max(1.0);
                    assert!(
                        (got - want).abs() <= 1e-5 * scale,
                        "{i},{j}: {got} vs {want}"
                    );
                    // And near the f32 product: int8's error is a few
                    // parts in a thousand of the operands' scale.
                    let exact: f64 = (0..k)
                        .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
                        .sum::<f64>()
                        + f64::from(b[j]);
                    let bound = 0.02 * sx * sw * 255.0 * 127.0 * (k as f64).sqrt();
                    assert!(
                        (got - exact).abs() <= bound.max(1e-6),
                        "{i},{j}: {got} vs exact {exact}"
                    );
                }
            }
        }
    }

    /// An outlier column is multiplied in f32: the rows' other inputs keep
    /// their resolution, and the result is as close to f32 as without it.
    #[test]
    fn outlier_columns_stay_exact() {
        let (m, k, n) = (70, 96, 40);
        let mut x = data(m * k, 1.0);
        let w = data(n * k, 2.0);
        let layer = QuantizedLinear::new(&w, n, k, None);
        let plain = layer.forward(&x, m);
        let exact = |x: &[f32]| -> Vec<f64> {
            (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    (0..k)
                        .map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t]))
                        .sum()
                })
                .collect()
        };
        let err = |got: &[f32], want: &[f64]| {
            got.iter()
                .zip(want)
                .map(|(g, w)| (f64::from(*g) - w).abs())
                .fold(0.0, f64::max)
        };
        let before = err(&plain, &exact(&x));
        for i in 0..m {
            x[i * k + 17] = 300.0 * if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        let got = layer.forward(&x, m);
        assert_eq!(got, layer.forward_with(&x, m, Int8Kernel::Baseline));
        let after = err(&got, &exact(&x));
        assert!(
            after < 2.0 * before + 1e-3,
            "outlier error {after} vs {before} without"
        );
    }

    #[test]
    fn zero_rows_and_weights_give_the_bias() {
        let layer = QuantizedLinear::new(&[0.0; 6], 2, 3, Some(&[1.5, -2.0]));
        let out = layer.forward(&[0.0; 9], 3);
        assert_eq!(out, vec![1.5, -2.0, 1.5, -2.0, 1.5, -2.0]);
        assert!(layer.forward(&[], 0).is_empty());
    }
}
