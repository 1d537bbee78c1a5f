//! bf16 dense layers on CPUs with AVX512_BF16 (Intel Cooper Lake and
//! Sapphire Rapids on, AMD Zen 4 on): weights rounded to bfloat16 once,
//! each activation row rounded when the layer runs, products summed in f32
//! by `vdpbf16ps` (two bf16 products per f32 lane), the bias added in f32.
//!
//! The weights are packed like the int8 layers' ([`crate::ops::quant`]):
//! panels of 16 output channels, here 2 inputs per 32-bit lane
//! (`[block][pair][panel][j][0..2]`), the 4 panels of a 64-channel block
//! interleaved by pair; a 6-row × 64-channel microkernel keeps 24 zmm
//! accumulators. Where the CPU lacks AVX512_BF16 there is no bf16 path:
//! [`available`] is false and the encoder refuses the mode.

use rayon::prelude::*;

/// Output channels per panel: one zmm register of f32 lanes.
const PANEL: usize = 16;
/// Inputs per 32-bit lane of `vdpbf16ps`.
const PAIR: usize = 2;
/// Values of one panel's pair: 16 channels × 2 inputs.
const PANEL_PAIR: usize = PANEL * PAIR;
/// Panels per microkernel block (64 channels).
const BLOCK_PANELS: usize = 4;
/// Rows per rayon task.
const ROWS_PER_TASK: usize = 64;

/// Whether this CPU runs [`Bf16Linear::forward`]: AVX512_BF16 (with
/// AVX-512F), within `KILN_CPU_SIMD`.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::ops::simd_level() == crate::ops::SimdLevel::Avx512
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `v` rounded to bfloat16 (to nearest, ties to even), as its bits.
#[inline(always)]
pub fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// A dense layer `[n × k]` with bfloat16 weights.
#[derive(Debug, Clone)]
pub struct Bf16Linear {
    n: usize,
    k: usize,
    /// Pairs of inputs (k rounded up).
    pairs: usize,
    /// Panels of 16 channels (n rounded up to whole 4-panel blocks).
    panels: usize,
    /// `panels × pairs × 32` bf16 values (see [`at`]), zero beyond n and k.
    packed: Vec<u16>,
    /// The bias (zeros when the layer has none), padded to the panels.
    bias: Vec<f32>,
}

/// Where panel `p`'s 32 values of pair `g` start in the packed weights.
#[inline(always)]
fn at(pairs: usize, p: usize, g: usize) -> usize {
    let (block, q) = (p / BLOCK_PANELS, p % BLOCK_PANELS);
    ((block * pairs + g) * BLOCK_PANELS + q) * PANEL_PAIR
}

impl Bf16Linear {
    /// Rounds `w` (`[n × k]` row-major, a PyTorch `Linear` weight) to
    /// bfloat16 and keeps `bias`.
    ///
    /// # Panics
    /// When the slice lengths do not match the dimensions (a caller bug).
    pub fn new(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Bf16Linear {
        assert_eq!(w.len(), n * k, "bf16: w is not {n}x{k}");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bf16: bias is not {n}");
        }
        let pairs = k.div_ceil(PAIR).max(1);
        let panels = n
            .div_ceil(PANEL)
            .next_multiple_of(BLOCK_PANELS)
            .max(BLOCK_PANELS);
        let mut packed = vec![0u16; panels * pairs * PANEL_PAIR];
        let mut padded_bias = vec![0f32; panels * PANEL];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let (p, c) = (j / PANEL, j % PANEL);
            for (kk, v) in row.iter().enumerate() {
                let (g, t) = (kk / PAIR, kk % PAIR);
                packed[at(pairs, p, g) + c * PAIR + t] = to_bf16(*v);
            }
            padded_bias[j] = bias.map_or(0.0, |b| b[j]);
        }
        Bf16Linear {
            n,
            k,
            pairs,
            panels,
            packed,
            bias: padded_bias,
        }
    }

    /// `x[m × k] · wᵀ + b` with bf16 operands and f32 sums, or `None` where
    /// the CPU has no AVX512_BF16 ([`available`]).
    ///
    /// # Panics
    /// When `x` does not hold `m × k` values (a caller bug).
    pub fn forward(&self, x: &[f32], m: usize) -> Option<Vec<f32>> {
        let (n, k) = (self.n, self.k);
        assert_eq!(x.len(), m * k, "bf16 linear: x is not {m}x{k}");
        if !available() {
            return None;
        }
        let mut out = vec![0f32; m * n];
        if m == 0 || n == 0 {
            return Some(out);
        }
        let kp = self.pairs * PAIR;
        out.par_chunks_mut(ROWS_PER_TASK * n)
            .zip(x.par_chunks(ROWS_PER_TASK * k.max(1)))
            .for_each(|(o, xs)| {
                let rows = o.len() / n;
                let mut bx = vec![0u16; rows * kp];
                for (row, b) in xs.chunks_exact(k.max(1)).zip(bx.chunks_exact_mut(kp)) {
                    for (d, v) in b.iter_mut().zip(row) {
                        *d = to_bf16(*v);
                    }
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: available() reports AVX512_BF16 and AVX-512F only
                // where the CPU has them; the buffers are the layer's sizes.
                unsafe {
                    avx512::run(self, &bx, rows, o)
                };
            });
        Some(out)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, __m512bh, __m512i, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_epi32,
        _mm512_loadu_ps, _mm512_set1_epi32, _mm512_setzero_ps,
    };

    use super::{BLOCK_PANELS, Bf16Linear, PAIR, PANEL, PANEL_PAIR};

    /// # Safety
    /// The CPU must have AVX-512F and AVX512_BF16; `bx` must hold `rows`
    /// rows of `pairs × 2` values, `out` `rows × n`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn run(layer: &Bf16Linear, bx: &[u16], rows: usize, out: &mut [f32]) {
        let kp = layer.pairs * PAIR;
        assert!(bx.len() >= rows * kp && out.len() >= rows * layer.n);
        for pb in (0..layer.panels).step_by(BLOCK_PANELS) {
            if pb * PANEL >= layer.n {
                break;
            }
            // SAFETY: as the caller promised; every block lies inside.
            unsafe { crate::ops::row_blocks!(rows, r0, block(layer, bx, r0, pb, out)) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn block<const MR: usize>(
        layer: &Bf16Linear,
        bx: &[u16],
        r0: usize,
        pb: usize,
        out: &mut [f32],
    ) {
        let pairs = layer.pairs;
        let kp = pairs * PAIR;
        let base = super::at(pairs, pb, 0);
        let mut acc: [[__m512; BLOCK_PANELS]; MR] = [[_mm512_setzero_ps(); BLOCK_PANELS]; MR];
        let w = layer.packed.as_ptr();
        let a = bx.as_ptr();
        for g in 0..pairs {
            let mut wv: [__m512bh; BLOCK_PANELS] = [bh(_mm512_set1_epi32(0)); BLOCK_PANELS];
            for (q, v) in wv.iter_mut().enumerate() {
                // SAFETY: panel pb + q < panels and pair g < pairs: 32
                // values inside `packed` (a block's pairs are contiguous).
                *v = bh(unsafe {
                    _mm512_loadu_epi32(w.add(base + (g * BLOCK_PANELS + q) * PANEL_PAIR).cast())
                });
            }
            for (r, row) in acc.iter_mut().enumerate() {
                // SAFETY: row r0 + r < rows, pair g < pairs: 2 values inside `bx`.
                let two = unsafe {
                    a.add((r0 + r) * kp + g * PAIR)
                        .cast::<i32>()
                        .read_unaligned()
                };
                let b = bh(_mm512_set1_epi32(two));
                for (q, x) in row.iter_mut().enumerate() {
                    *x = _mm512_dpbf16_ps(*x, b, wv[q]);
                }
            }
        }
        let n = layer.n;
        for (r, row) in acc.iter().enumerate() {
            for (q, x) in row.iter().enumerate() {
                let j0 = (pb + q) * PANEL;
                if j0 >= n {
                    break;
                }
                // SAFETY: j0 + 16 ≤ panels × 16, the bias's padded length.
                let v = _mm512_add_ps(*x, unsafe { _mm512_loadu_ps(layer.bias.as_ptr().add(j0)) });
                let dst = &mut out[(r0 + r) * n + j0..(r0 + r + 1) * n];
                let lanes = PANEL.min(n - j0);
                // SAFETY: the CPU has AVX-512F (this function's feature).
                unsafe { crate::ops::store16(dst, v, lanes) };
            }
        }
    }

    /// 32 bf16 values from their bits.
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 512 bits of plain data.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: f32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 + seed) * 0.37).sin() * (1.0 + (i % 5) as f32))
            .collect()
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (down).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(to_bf16(-2.5), 0xc020);
    }

    /// Against the product of the rounded operands computed in f64: the
    /// only difference is f32 summation.
    #[test]
    fn matches_the_rounded_product() {
        for (m, k, n) in [(1, 1, 1), (7, 5, 3), (13, 37, 45), (70, 384, 130)] {
            let x = data(m * k, 1.0);
            let w = data(n * k, 2.0);
            let b = data(n, 3.0);
            let layer = Bf16Linear::new(&w, n, k, Some(&b));
            let Some(got) = layer.forward(&x, m) else {
                assert!(!available());
                return;
            };
            let up = |v: f32| f64::from(f32::from_bits(u32::from(to_bf16(v)) << 16));
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k).map(|t| up(x[i * k + t]) * up(w[j * k + t])).sum();
                    let mag: f64 = (0..k)
                        .map(|t| (up(x[i * k + t]) * up(w[j * k + t])).abs())
                        .sum();
                    let want = dot + f64::from(b[j]);
                    let g = f64::from(got[i * n + j]);
                    assert!(
                        (g - want).abs() <= 1e-5 * (mag + 1.0),
                        "{i},{j}: {g} vs {want}"
                    );
                }
            }
        }
    }
}
