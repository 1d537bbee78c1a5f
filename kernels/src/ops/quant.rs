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
/// Rows per VNNI microkernel block.
const BLOCK_ROWS: usize = 6;
/// Rows per rayon task.
const ROWS_PER_TASK: usize = 64;

/// The int8 kernel this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpbusd`), 6 × 64 register blocks.
    Avx512Vnni,
    /// The portable loop compiled for AVX2 with FMA.
    Avx2,
    /// The portable loop for the baseline target.
    Baseline,
}

impl Int8Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Int8Kernel::Avx512Vnni => "avx512-vnni",
            Int8Kernel::Avx2 => "avx2",
            Int8Kernel::Baseline => "baseline",
        }
    }
}

/// The kernel [`QuantizedLinear::forward`] runs on this CPU, within
/// `KILN_CPU_SIMD` (see [`crate::ops::simd_level`]).
pub fn int8_kernel() -> Int8Kernel {
    match crate::ops::simd_level() {
        #[cfg(target_arch = "x86_64")]
        crate::ops::SimdLevel::Avx512
            if std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni") =>
        {
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
        let groups = k.div_ceil(GROUP).max(1);
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
        self.forward_with(x, m, int8_kernel() == Int8Kernel::Avx512Vnni)
    }

    /// [`QuantizedLinear::forward`] through the VNNI kernel where `vnni` (and
    /// the CPU has it), else the portable loop at this process's SIMD level.
    fn forward_with(&self, x: &[f32], m: usize, vnni: bool) -> Vec<f32> {
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
                let mut qx = vec![0u8; rows * self.groups * GROUP];
                let mut sx = vec![[0f32; 2]; rows];
                quantize_rows(quantized, k, self.groups * GROUP, &mut qx, &mut sx);
                self.run(vnni, &qx, &sx, rows, o);
                if !outliers.is_empty() {
                    add_columns(self, xs, &outliers, o);
                }
            });
        out
    }

    fn run(&self, vnni: bool, qx: &[u8], sx: &[[f32; 2]], rows: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if vnni && int8_kernel() == Int8Kernel::Avx512Vnni {
            // SAFETY: int8_kernel() reports AVX-512 VNNI (and BW) only where
            // the CPU has them; the buffers' sizes are the layer's.
            unsafe { vnni::run(self, qx, sx, rows, out) };
            return;
        }
        let _ = vnni;
        portable_rows(self, qx, sx, rows, out);
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

/// Round half to even in f32 without a rounding instruction (|v| < 2²²).
#[inline(always)]
fn round(v: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
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
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for v in row {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        let range = hi - lo;
        let inv = if range > 0.0 { 255.0 / range } else { 0.0 };
        *s = [range / 255.0, lo];
        for (d, v) in q.iter_mut().zip(row) {
            *d = round((v - lo) * inv).clamp(0.0, 255.0) as u8;
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
        _mm512_add_ps, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32, _mm512_loadu_epi32,
        _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_mul_ps, _mm512_set1_epi32, _mm512_set1_ps,
        _mm512_setzero_si512, _mm512_storeu_ps,
    };

    use super::{BLOCK_PANELS, BLOCK_ROWS, GROUP, PANEL, PANEL_GROUP, QuantizedLinear};

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
            let mut r0 = 0;
            while r0 < rows {
                let mr = BLOCK_ROWS.min(rows - r0);
                // SAFETY: as the caller promised; the block lies inside.
                unsafe {
                    match mr {
                        1 => block::<1>(layer, qx, sx, r0, pb, out),
                        2 => block::<2>(layer, qx, sx, r0, pb, out),
                        3 => block::<3>(layer, qx, sx, r0, pb, out),
                        4 => block::<4>(layer, qx, sx, r0, pb, out),
                        5 => block::<5>(layer, qx, sx, r0, pb, out),
                        _ => block::<BLOCK_ROWS>(layer, qx, sx, r0, pb, out),
                    }
                }
                r0 += mr;
            }
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
        let n = layer.n;
        for (r, row) in acc.iter().enumerate() {
            let [scale_x, low] = sx[r0 + r];
            let (s, lo) = (_mm512_set1_ps(scale_x), _mm512_set1_ps(low));
            for (q, x) in row.iter().enumerate() {
                let j0 = (pb + q) * PANEL;
                if j0 >= n {
                    break;
                }
                // SAFETY: j0 + 16 ≤ panels × 16, the padded lengths.
                let (wsum, scale, bias) = unsafe {
                    (
                        _mm512_loadu_ps(layer.wsum.as_ptr().add(j0)),
                        _mm512_loadu_ps(layer.scale.as_ptr().add(j0)),
                        _mm512_loadu_ps(layer.bias.as_ptr().add(j0)),
                    )
                };
                // As `QuantizedLinear::finish`, operation for operation.
                let sum = _mm512_cvtepi32_ps(*x);
                let v = _mm512_add_ps(
                    _mm512_add_ps(
                        _mm512_mul_ps(sum, _mm512_mul_ps(s, scale)),
                        _mm512_mul_ps(lo, wsum),
                    ),
                    bias,
                );
                let dst = &mut out[(r0 + r) * n + j0..];
                let lanes = PANEL.min(n - j0);
                // SAFETY: `dst` holds at least `lanes` values; the masked
                // store writes only those.
                unsafe {
                    if lanes == PANEL {
                        _mm512_storeu_ps(dst.as_mut_ptr(), v);
                    } else {
                        _mm512_mask_storeu_ps(dst.as_mut_ptr(), (1u16 << lanes) - 1, v);
                    }
                }
            }
        }
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

    /// The VNNI kernel (where this CPU has it) gives the portable loop's
    /// bits, and they equal the quantized product computed in f64 from the
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
            let base = layer.forward_with(&x, m, false);
            let got = layer.forward(&x, m);
            assert!(
                got.iter()
                    .zip(&base)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{:?} differs from the portable loop at {m}x{k}x{n}",
                int8_kernel()
            );
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
        assert_eq!(got, layer.forward_with(&x, m, false));
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
