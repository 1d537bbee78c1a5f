//! The many-query scoring GEMM of vector search on AVX-512 CPUs:
//! `out[q·rows + t] = query_q · row_t` for a corpus sub-tile.
//!
//! The sub-tile is packed into panels of 16 rows stored dimension-major
//! (`panel[d][16]`), so one 512-bit load holds component `d` of 16 rows; the
//! microkernel keeps a 2-panel × 12-query block of accumulators (24 zmm
//! registers) and per component does 2 loads, 12 broadcasts and 24 FMAs, with
//! no horizontal reductions. Results land query-major, which is the layout the
//! top-k selection scans. Where AVX-512 is missing the caller uses the `gemm`
//! crate instead.

/// Rows per panel: one zmm register of f32.
const PANEL: usize = 16;
/// Queries per microkernel call.
const QUERY_BLOCK: usize = 12;

/// Whether this CPU runs [`scores`] (AVX-512F with FMA, and
/// [`crate::ops::simd_level`] allows it).
pub fn available() -> bool {
    crate::ops::simd_level() == crate::ops::SimdLevel::Avx512
}

/// The scores of every query against every row of `tile`, query-major, or
/// `None` when this CPU has no AVX-512.
pub fn scores(queries: &[f32], tile: &[f32], dim: usize) -> Option<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    {
        if dim > 0 && available() {
            // SAFETY: available() reports AVX-512F and FMA only where the
            // CPU has them.
            return Some(unsafe { avx512::scores(queries, tile, dim) });
        }
    }
    let _ = (queries, tile, dim);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    use super::{PANEL, QUERY_BLOCK};

    /// Packs `rows` rows into panels of 16, dimension-major, zero-padded to an
    /// even number of panels (the microkernel takes them in pairs).
    fn pack(tile: &[f32], rows: usize, dim: usize) -> (Vec<f32>, usize) {
        let panels = rows.div_ceil(PANEL).next_multiple_of(2);
        let mut packed = vec![0f32; panels * dim * PANEL];
        for (t, row) in tile.chunks_exact(dim).enumerate() {
            let (p, r) = (t / PANEL, t % PANEL);
            let panel = &mut packed[p * dim * PANEL..(p + 1) * dim * PANEL];
            for (d, v) in row.iter().enumerate() {
                panel[d * PANEL + r] = *v;
            }
        }
        (packed, panels)
    }

    /// One block: panels `p` and `p + 1` against `NQ` queries starting at
    /// `q0`, written to `out` (query-major, `rows` wide).
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    fn micro<const NQ: usize>(
        packed: &[f32],
        p: usize,
        queries: &[f32],
        q0: usize,
        dim: usize,
        rows: usize,
        out: &mut [f32],
    ) {
        let mut a0: [__m512; NQ] = [_mm512_setzero_ps(); NQ];
        let mut a1: [__m512; NQ] = [_mm512_setzero_ps(); NQ];
        let base0 = p * dim * PANEL;
        let base1 = (p + 1) * dim * PANEL;
        assert!(base1 + dim * PANEL <= packed.len() && (q0 + NQ) * dim <= queries.len());
        let pk = packed.as_ptr();
        let qp = queries.as_ptr();
        for d in 0..dim {
            // SAFETY: base1 + dim·16 ≤ packed.len() and (q0 + NQ)·dim ≤
            // queries.len() (asserted above), so every read is in bounds.
            let (v0, v1) = unsafe {
                (
                    _mm512_loadu_ps(pk.add(base0 + d * PANEL)),
                    _mm512_loadu_ps(pk.add(base1 + d * PANEL)),
                )
            };
            for j in 0..NQ {
                // SAFETY: as above.
                let b = _mm512_set1_ps(unsafe { *qp.add((q0 + j) * dim + d) });
                a0[j] = _mm512_fmadd_ps(v0, b, a0[j]);
                a1[j] = _mm512_fmadd_ps(v1, b, a1[j]);
            }
        }
        for (panel, acc) in [(p, &a0), (p + 1, &a1)] {
            let t0 = panel * PANEL;
            if t0 >= rows {
                continue;
            }
            let n = PANEL.min(rows - t0);
            for (j, v) in acc.iter().enumerate() {
                let dst = &mut out[(q0 + j) * rows + t0..(q0 + j) * rows + t0 + n];
                if n == PANEL {
                    // SAFETY: dst holds exactly 16 f32s.
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *v) };
                } else {
                    let mut tmp = [0f32; PANEL];
                    // SAFETY: tmp holds exactly 16 f32s.
                    unsafe { _mm512_storeu_ps(tmp.as_mut_ptr(), *v) };
                    dst.copy_from_slice(&tmp[..n]);
                }
            }
        }
    }

    /// Dispatches a remainder block of `n` (< 12) queries to its microkernel.
    macro_rules! micro_n {
        ($n:expr, $($args:expr),*) => {
            match $n {
                1 => micro::<1>($($args),*),
                2 => micro::<2>($($args),*),
                3 => micro::<3>($($args),*),
                4 => micro::<4>($($args),*),
                5 => micro::<5>($($args),*),
                6 => micro::<6>($($args),*),
                7 => micro::<7>($($args),*),
                8 => micro::<8>($($args),*),
                9 => micro::<9>($($args),*),
                10 => micro::<10>($($args),*),
                11 => micro::<11>($($args),*),
                _ => micro::<QUERY_BLOCK>($($args),*),
            }
        };
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn scores(queries: &[f32], tile: &[f32], dim: usize) -> Vec<f32> {
        let nq = queries.len() / dim;
        let rows = tile.len() / dim;
        let mut out = vec![0f32; nq * rows];
        if nq == 0 || rows == 0 {
            return out;
        }
        let (packed, panels) = pack(tile, rows, dim);
        // Query blocks outside: 12 queries (18 KiB at D = 384) stay in L1
        // while the packed sub-tile streams from L2.
        let mut q0 = 0;
        while q0 < nq {
            let n = QUERY_BLOCK.min(nq - q0);
            for p in (0..panels).step_by(2) {
                micro_n!(n, &packed, p, queries, q0, dim, rows, &mut out);
            }
            q0 += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_where_avx512_exists() {
        for (nq, rows, dim) in [(1, 1, 1), (13, 37, 5), (25, 64, 384), (12, 17, 3)] {
            let q: Vec<f32> = (0..nq * dim).map(|i| (i as f32 * 0.37).sin()).collect();
            let t: Vec<f32> = (0..rows * dim).map(|i| (i as f32 * 0.11).cos()).collect();
            let Some(got) = scores(&q, &t, dim) else {
                return;
            };
            for qi in 0..nq {
                for r in 0..rows {
                    let want: f32 = (0..dim).map(|d| q[qi * dim + d] * t[r * dim + d]).sum();
                    let g = got[qi * rows + r];
                    assert!((g - want).abs() < 1e-3, "q{qi} r{r}: {g} vs {want}");
                }
            }
        }
    }
}
