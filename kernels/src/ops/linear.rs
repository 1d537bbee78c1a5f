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
            // Transpose in bands of 16 rows: each read of `t` is one cache
            // line and the band's 16 output rows are written in order.
            for r0 in (0..rows).step_by(16) {
                let r1 = (r0 + 16).min(rows);
                for j in 0..n {
                    let b = bias.map_or(0.0, |b| b[j]);
                    let src = &t[j * rows + r0..j * rows + r1];
                    for (i, v) in src.iter().enumerate() {
                        o[(r0 + i) * n + j] = v + b;
                    }
                }
            }
        });
    out
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
