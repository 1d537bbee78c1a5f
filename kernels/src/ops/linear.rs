//! Dense layers: `out = x · Wᵀ + b`, the GEMM at the heart of the encoder.

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// `out[m×n] = x[m×k] · w[n×k]ᵀ + bias[n]`, all row-major, `w` laid out as a
/// PyTorch `Linear` weight (`[out_features, in_features]`).
///
/// # Panics
/// When the slice lengths do not match the dimensions (a caller bug).
pub fn linear(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: x is not {m}x{k}");
    assert_eq!(w.len(), n * k, "linear: w is not {n}x{k}");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "linear: bias is not {n}");
    }
    if m >= PACKED_MIN && n >= PACKED_MIN && crate::ops::score_gemm::available() {
        return linear_packed(x, m, k, w, n, bias);
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    gemm_nt(x, m, k, w, n, bias, parallelism)
}

/// Below this many rows or outputs the packed kernel's panels are mostly
/// padding; the `gemm` crate takes those.
const PACKED_MIN: usize = 16;
/// Rows of `x` per rayon task in [`linear_packed`].
const PACKED_ROWS: usize = 128;

/// [`linear`] on the AVX-512 scoring kernel ([`crate::ops::score_gemm`]):
/// `w`'s rows play the queries and `x`'s rows the corpus, block by block over
/// rayon; each block comes back output-major and is transposed (with the bias
/// added) into `out`.
fn linear_packed(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(PACKED_ROWS * n)
        .zip(x.par_chunks(PACKED_ROWS * k))
        .for_each(|(o, xs)| {
            let rows = xs.len() / k;
            let Some(t) = crate::ops::score_gemm::scores(w, xs, k) else {
                // Unreachable: the caller checked availability.
                o.copy_from_slice(&gemm_nt(xs, rows, k, w, n, bias, Parallelism::None));
                return;
            };
            transpose_add_bias(&t, rows, n, bias, o);
        });
    out
}

/// `out[r][j] = t[j][r] + bias[j]` (`t` output-major, `rows` wide): full
/// 16 × 16 blocks transposed in AVX-512 registers where the CPU has it, the
/// ragged edges (and other CPUs) element by element.
fn transpose_add_bias(t: &[f32], rows: usize, n: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(t.len(), rows * n);
    assert_eq!(out.len(), rows * n);
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
    let (full_rows, full_n) = (rows / 16 * 16, n / 16 * 16);
    #[cfg(target_arch = "x86_64")]
    let done = if crate::ops::simd_level() == crate::ops::SimdLevel::Avx512 {
        // SAFETY: simd_level() reports AVX-512F only where the CPU has it;
        // the blocks lie inside `t` and `out`, whose lengths are asserted.
        unsafe { transpose16::blocks(t, rows, n, bias, out) };
        true
    } else {
        false
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    let element = |out: &mut [f32], r: usize, j: usize| {
        out[r * n + j] = t[j * rows + r] + bias.map_or(0.0, |b| b[j]);
    };
    if done {
        for r in 0..rows {
            let js = if r < full_rows { full_n..n } else { 0..n };
            for j in js {
                element(out, r, j);
            }
        }
    } else {
        for r0 in (0..rows).step_by(16) {
            for j in 0..n {
                for r in r0..(r0 + 16).min(rows) {
                    element(out, r, j);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod transpose16 {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_castpd_ps, _mm512_castps_pd, _mm512_loadu_ps,
        _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_storeu_ps, _mm512_unpackhi_pd,
        _mm512_unpackhi_ps, _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };

    /// Every full 16 × 16 block: 16 rows of `t` (16 outputs, 16 input rows
    /// each) loaded, transposed with unpacks and 128-bit lane shuffles, the
    /// bias added, 16 rows of `out` stored.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `t` and `out` must hold `rows × n` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn blocks(
        t: &[f32],
        rows: usize,
        n: usize,
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) {
        for r0 in (0..rows / 16 * 16).step_by(16) {
            for j0 in (0..n / 16 * 16).step_by(16) {
                let mut x = [_mm512_setzero_ps(); 16];
                for (j, v) in x.iter_mut().enumerate() {
                    let src = &t[(j0 + j) * rows + r0..][..16];
                    // SAFETY: `src` holds 16 values.
                    *v = unsafe { _mm512_loadu_ps(src.as_ptr()) };
                }
                let y = transpose(x);
                let b = match bias {
                    // SAFETY: `b[j0..j0 + 16]` is inside the bias.
                    Some(b) => unsafe { _mm512_loadu_ps(b[j0..j0 + 16].as_ptr()) },
                    None => _mm512_setzero_ps(),
                };
                for (i, v) in y.iter().enumerate() {
                    let dst = &mut out[(r0 + i) * n + j0..][..16];
                    // SAFETY: `dst` holds 16 values.
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), _mm512_add_ps(*v, b)) };
                }
            }
        }
    }

    /// Rows `r` of a 16 × 16 matrix to its columns.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose(r: [__m512; 16]) -> [__m512; 16] {
        // Pairs of rows interleaved, then pairs of pairs: in 128-bit lane k,
        // u[4g + c] holds column 4k + c of rows 4g..4g+3.
        let mut t = [_mm512_setzero_ps(); 16];
        for p in 0..8 {
            t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
            t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let (a0, a1, b0, b1) = (
                _mm512_castps_pd(t[4 * g]),
                _mm512_castps_pd(t[4 * g + 1]),
                _mm512_castps_pd(t[4 * g + 2]),
                _mm512_castps_pd(t[4 * g + 3]),
            );
            u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
            u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
            u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
            u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
        }
        // Lanes 0 and 2, and 1 and 3, of row groups 0|1 and 2|3 ...
        let mut v = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            v[c] = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            v[4 + c] = _mm512_shuffle_f32x4::<0xdd>(u[c], u[4 + c]);
            v[8 + c] = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            v[12 + c] = _mm512_shuffle_f32x4::<0xdd>(u[8 + c], u[12 + c]);
        }
        // ... then gathered into whole columns.
        let mut out = [_mm512_setzero_ps(); 16];
        for c in 0..4 {
            out[c] = _mm512_shuffle_f32x4::<0x88>(v[c], v[8 + c]);
            out[8 + c] = _mm512_shuffle_f32x4::<0xdd>(v[c], v[8 + c]);
            out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v[4 + c], v[12 + c]);
            out[12 + c] = _mm512_shuffle_f32x4::<0xdd>(v[4 + c], v[12 + c]);
        }
        out
    }
}

fn gemm_nt(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    parallelism: Parallelism,
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "linear: x is not {m}x{k}");
    assert_eq!(w.len(), n * k, "linear: w is not {n}x{k}");
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let read_dst = match bias {
        Some(b) => {
            assert_eq!(b.len(), n, "linear: bias is not {n}");
            for row in out.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
            true
        }
        None => false,
    };
    // SAFETY: the pointers cover m×k (x), k×n viewed through w's n×k storage
    // with column stride k and row stride 1, and m×n (out), as asserted
    // above; out does not alias the inputs.
    unsafe {
        gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    out
}

/// A dense layer with its weights packed once for [`PackedLinear::forward`]:
/// on AVX-512 CPUs into panels of 16 output channels, input-major (one zmm
/// load holds input `t` of 16 channels), the 4 panels of a 64-channel block
/// interleaved by input, for a 6-row × 64-channel microkernel (24 zmm
/// accumulators, 4 loads and 6 broadcasts per 24 FMAs) whose results land
/// row-major with the bias added: no output transpose. Elsewhere the
/// weights stay as given and [`linear`] runs.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    n: usize,
    k: usize,
    layout: Layout,
    /// The bias (zeros when the layer has none), padded to whole panels.
    bias: Vec<f32>,
}

#[derive(Debug, Clone)]
enum Layout {
    /// `[block][t][panel][16]`, zero beyond `n`; blocks of 4 panels.
    Panels { panels: usize, packed: Vec<f32> },
    /// The PyTorch layout, `[n × k]`.
    Rows(Vec<f32>),
}

/// Output channels per panel: one zmm register.
const PANEL: usize = 16;
/// Panels per microkernel block.
const BLOCK_PANELS: usize = 4;
/// Rows of `x` per rayon task in [`PackedLinear::forward`].
const TASK_ROWS: usize = 96;

impl PackedLinear {
    /// Packs `w` (`[n × k]` row-major, a PyTorch `Linear` weight) for this
    /// CPU and keeps `bias`.
    ///
    /// # Panics
    /// When the slice lengths do not match the dimensions (a caller bug).
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> PackedLinear {
        assert_eq!(w.len(), n * k, "linear: w is not {n}x{k}");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "linear: bias is not {n}");
        }
        let panels = n
            .div_ceil(PANEL)
            .next_multiple_of(BLOCK_PANELS)
            .max(BLOCK_PANELS);
        let mut padded_bias = vec![0f32; panels * PANEL];
        if let Some(b) = bias {
            padded_bias[..n].copy_from_slice(b);
        }
        let layout = if crate::ops::score_gemm::available() && k > 0 {
            let mut packed = vec![0f32; panels * PANEL * k];
            for (j, row) in w.chunks_exact(k).enumerate() {
                let (p, c) = (j / PANEL, j % PANEL);
                for (t, v) in row.iter().enumerate() {
                    packed[panel_at(k, p, t) + c] = *v;
                }
            }
            Layout::Panels { panels, packed }
        } else {
            Layout::Rows(w.to_vec())
        };
        PackedLinear {
            n,
            k,
            layout,
            bias: padded_bias,
        }
    }

    /// `x[m × k] · wᵀ + b`.
    ///
    /// # Panics
    /// When `x` does not hold `m × k` values (a caller bug).
    pub fn forward(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "linear: x is not {m}x{k}");
        match &self.layout {
            Layout::Rows(w) => linear(x, m, k, w, n, Some(&self.bias[..n])),
            #[cfg(target_arch = "x86_64")]
            Layout::Panels { panels, packed } => {
                let mut out = vec![0f32; m * n];
                if m == 0 || n == 0 {
                    return out;
                }
                out.par_chunks_mut(TASK_ROWS * n)
                    .zip(x.par_chunks(TASK_ROWS * k))
                    .for_each(|(o, xs)| {
                        // SAFETY: Panels exist only where AVX-512F and FMA
                        // do (checked when packing); the sizes are the
                        // layer's.
                        unsafe { panels16::run(self, *panels, packed, xs, o) };
                    });
                out
            }
            #[cfg(not(target_arch = "x86_64"))]
            Layout::Panels { .. } => unreachable!("panels are packed on x86_64 only"),
        }
    }
}

/// Where panel `p`'s 16 values of input `t` start in the packed weights.
#[inline(always)]
fn panel_at(k: usize, p: usize, t: usize) -> usize {
    let (block, q) = (p / BLOCK_PANELS, p % BLOCK_PANELS);
    ((block * k + t) * BLOCK_PANELS + q) * PANEL
}

#[cfg(target_arch = "x86_64")]
mod panels16 {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
    };

    use super::{BLOCK_PANELS, PANEL, PackedLinear};

    /// Every row block of `x` against every 4-panel block.
    ///
    /// # Safety
    /// The CPU must have AVX-512F and FMA; `x` holds whole rows of `k`,
    /// `out` as many rows of `n`, `packed` `panels × 16 × k` values.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn run(
        layer: &PackedLinear,
        panels: usize,
        packed: &[f32],
        x: &[f32],
        out: &mut [f32],
    ) {
        let (n, k) = (layer.n, layer.k);
        let rows = x.len() / k;
        assert!(packed.len() >= panels * PANEL * k && out.len() >= rows * n);
        for pb in (0..panels).step_by(BLOCK_PANELS) {
            if pb * PANEL >= n {
                break;
            }
            // SAFETY: as the caller promised; every block lies inside.
            unsafe { crate::ops::row_blocks!(rows, r0, block(layer, packed, x, r0, pb, out)) };
        }
    }

    /// Rows `r0..r0 + MR` against panels `pb..pb + 4`.
    #[target_feature(enable = "avx512f,fma")]
    unsafe fn block<const MR: usize>(
        layer: &PackedLinear,
        packed: &[f32],
        x: &[f32],
        r0: usize,
        pb: usize,
        out: &mut [f32],
    ) {
        let (n, k) = (layer.n, layer.k);
        let base = super::panel_at(k, pb, 0);
        let mut acc: [[__m512; BLOCK_PANELS]; MR] = [[_mm512_setzero_ps(); BLOCK_PANELS]; MR];
        let w = packed.as_ptr();
        let a = x.as_ptr();
        for t in 0..k {
            let mut wv = [_mm512_setzero_ps(); BLOCK_PANELS];
            for (q, v) in wv.iter_mut().enumerate() {
                // SAFETY: panel pb + q < panels, input t < k: 16 values
                // inside `packed` (a block's inputs are contiguous).
                *v = unsafe { _mm512_loadu_ps(w.add(base + (t * BLOCK_PANELS + q) * PANEL)) };
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r0 + r < rows, input t < k: inside `x`.
                let b = _mm512_set1_ps(unsafe { *a.add((r0 + r) * k + t) });
                for (q, v) in row.iter_mut().enumerate() {
                    *v = _mm512_fmadd_ps(wv[q], b, *v);
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            for (q, v) in row.iter().enumerate() {
                let j0 = (pb + q) * PANEL;
                if j0 >= n {
                    break;
                }
                // SAFETY: j0 + 16 ≤ panels × 16, the bias's padded length.
                let v = _mm512_add_ps(*v, unsafe { _mm512_loadu_ps(layer.bias.as_ptr().add(j0)) });
                let dst = &mut out[(r0 + r) * n + j0..(r0 + r + 1) * n];
                let lanes = PANEL.min(n - j0);
                // SAFETY: the CPU has AVX-512F (this function's feature).
                unsafe { crate::ops::store16(dst, v, lanes) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_matches_naive() {
        // Large enough for the packed path (where the CPU has AVX-512), with
        // ragged edges in every dimension.
        let (m, k, n) = (131, 37, 45);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let out = linear(&x, m, k, &w, n, Some(&b));
        for i in 0..m {
            for j in 0..n {
                let want: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-4, "{i},{j}");
            }
        }
    }

    #[test]
    fn packed_layer_matches_naive() {
        for (m, k, n) in [(1, 1, 1), (131, 37, 45), (7, 384, 1536), (200, 96, 70)] {
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            for bias in [None, Some(&b[..])] {
                let out = PackedLinear::new(&w, n, k, bias).forward(&x, m);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = bias.map_or(0.0, |b| b[j])
                            + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                        let got = out[i * n + j];
                        let tol = 1e-5 * (k as f32) * want.abs().max(1.0);
                        assert!(
                            (got - want).abs() < tol,
                            "{m}x{k}x{n} {i},{j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn transposes_with_and_without_bias() {
        for (rows, n) in [(16, 16), (128, 48), (37, 53), (3, 5), (128, 1536)] {
            let t: Vec<f32> = (0..rows * n).map(|i| i as f32).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
            for b in [None, Some(&bias[..])] {
                let mut out = vec![f32::NAN; rows * n];
                transpose_add_bias(&t, rows, n, b, &mut out);
                for r in 0..rows {
                    for j in 0..n {
                        let want = t[j * rows + r] + b.map_or(0.0, |b| b[j]);
                        assert_eq!(out[r * n + j], want, "{rows}x{n} at {r},{j}");
                    }
                }
            }
        }
    }

    #[test]
    fn matches_naive() {
        let (m, k, n) = (5, 7, 3);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let b = [0.5, -1.0, 2.0];
        let out = linear(&x, m, k, &w, n, Some(&b));
        for i in 0..m {
            for j in 0..n {
                let want: f32 = b[j] + (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum::<f32>();
                assert!((out[i * n + j] - want).abs() < 1e-5, "{i},{j}");
            }
        }
    }
}
