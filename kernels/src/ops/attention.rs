//! Multi-head self-attention over ragged batches: sequences are laid end to
//! end (no padding), `offsets[s]..offsets[s+1]` being sequence `s`'s rows, so
//! no work is spent on pad tokens and no mask is needed.

use rayon::prelude::*;

use crate::ops::activation::exp_nonpositive;
use crate::ops::madd;

/// `softmax(Q·Kᵀ/√d)·V` per sequence and head. `q`, `k`, `v` and the result
/// are `[tokens × heads·head_dim]`; head `h` owns columns `h·d..(h+1)·d`.
pub fn attention_ragged(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    offsets: &[usize],
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let hidden = heads * head_dim;
    let tokens = offsets.last().copied().unwrap_or(0);
    assert_eq!(q.len(), tokens * hidden);
    assert_eq!(k.len(), tokens * hidden);
    assert_eq!(v.len(), tokens * hidden);
    let per_sequence: Vec<Vec<f32>> = offsets
        .par_windows(2)
        .map(|w| attend(q, k, v, w[0], w[1], heads, head_dim))
        .collect();
    per_sequence.concat()
}

/// One sequence's attention, every head: rows `start..end`. Per head, the
/// keys are transposed (`head_dim × len`, padded with zeros to whole
/// vectors of 16 keys) so the scores of two queries at a time are built in
/// register accumulators (panels of 64 keys, then of 16) — vector lanes run over keys, with no horizontal
/// sums — then a softmax with a vectorized exp, and the weighted sum of the
/// values, 16 dimensions at a time in registers.
#[inline(always)]
fn attend_body<const FMA: bool>(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    start: usize,
    end: usize,
    heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    let hidden = heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let len = end - start;
    let mut out = vec![0f32; len * hidden];
    // Whole 16-key vectors; panels of 64 keys, then of 16 for the rest (a
    // short sequence padded to 64 would waste most of its score work).
    let padded = len.div_ceil(16) * 16;
    let mut scores = vec![0f32; 2 * padded];
    let mut kt = vec![0f32; head_dim * padded];
    for h in 0..heads {
        let col = h * head_dim;
        // Contiguous stores, strided loads: the cheaper way round.
        for d in 0..head_dim {
            let row = &mut kt[d * padded..][..len];
            for (j, x) in row.iter_mut().enumerate() {
                *x = k[(start + j) * hidden + col + d];
            }
        }
        for i0 in (0..len).step_by(2) {
            let pair = (len - i0).min(2);
            let q0 = &q[(start + i0) * hidden + col..][..head_dim];
            let q1 = &q[(start + i0 + pair - 1) * hidden + col..][..head_dim];
            let mut panel = 0;
            while panel + 64 <= padded {
                score_panel::<FMA, 4>(q0, q1, scale, &kt, padded, panel, &mut scores);
                panel += 64;
            }
            while panel < padded {
                score_panel::<FMA, 1>(q0, q1, scale, &kt, padded, panel, &mut scores);
                panel += 16;
            }
            for p in 0..pair {
                let s = &mut scores[p * padded..][..len];
                softmax_inplace::<FMA>(s);
                let oi = &mut out[(i0 + p) * hidden + col..][..head_dim];
                weighted_values::<FMA>(s, v, start * hidden + col, hidden, oi);
            }
        }
    }
    out
}

/// The scaled scores of queries `q0` and `q1` against keys
/// `panel..panel + 16·U` (`kt` is `head_dim × padded`, key-minor), in
/// `2·U` sixteen-lane accumulators, written to `scores` (two rows of
/// `padded`).
#[inline(always)]
fn score_panel<const FMA: bool, const U: usize>(
    q0: &[f32],
    q1: &[f32],
    scale: f32,
    kt: &[f32],
    padded: usize,
    panel: usize,
    scores: &mut [f32],
) {
    let mut acc0 = [[0f32; 16]; U];
    let mut acc1 = [[0f32; 16]; U];
    for d in 0..q0.len() {
        let (a0, a1) = (q0[d] * scale, q1[d] * scale);
        let row = &kt[d * padded + panel..][..16 * U];
        // One 16-lane vector operation per inner loop.
        for (u, acc) in acc0.iter_mut().enumerate() {
            for l in 0..16 {
                acc[l] = madd::<FMA>(a0, row[16 * u + l], acc[l]);
            }
        }
        for (u, acc) in acc1.iter_mut().enumerate() {
            for l in 0..16 {
                acc[l] = madd::<FMA>(a1, row[16 * u + l], acc[l]);
            }
        }
    }
    for (p, a) in [acc0, acc1].iter().enumerate() {
        for (u, lanes) in a.iter().enumerate() {
            scores[p * padded + panel + 16 * u..][..16].copy_from_slice(lanes);
        }
    }
}

/// `s` ← softmax(`s`), with [`exp_nonpositive`] over `s − max`.
#[inline(always)]
fn softmax_inplace<const FMA: bool>(s: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = s.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for x in lanes.iter().chain(rest) {
        max = if *x > max { *x } else { max };
    }
    for x in s.iter_mut() {
        *x = exp_nonpositive::<FMA>(*x - max);
    }
    let mut sums = [0f32; 16];
    let chunks = s.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..16 {
            sums[l] += c[l];
        }
    }
    let mut sum = 0f32;
    for x in sums.iter().chain(rest) {
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in s.iter_mut() {
        *x *= inv;
    }
}

/// `out[d] = Σ_j p[j]·v[base + j·stride + d]`, 16 dimensions at a time in
/// four accumulators (keys j ≡ 0..3 mod 4) that stay in registers:
/// accumulating into `out` itself would chain every key through a store and
/// a load.
#[inline(always)]
fn weighted_values<const FMA: bool>(
    p: &[f32],
    v: &[f32],
    base: usize,
    stride: usize,
    out: &mut [f32],
) {
    let len = p.len();
    let width = out.len();
    let mut d0 = 0;
    while d0 + 16 <= width {
        let mut acc = [[0f32; 16]; 4];
        let mut j = 0;
        while j + 4 <= len {
            for (u, a) in acc.iter_mut().enumerate() {
                let vj = &v[base + (j + u) * stride + d0..][..16];
                let w = p[j + u];
                for l in 0..16 {
                    a[l] = madd::<FMA>(w, vj[l], a[l]);
                }
            }
            j += 4;
        }
        while j < len {
            let vj = &v[base + j * stride + d0..][..16];
            for l in 0..16 {
                acc[0][l] = madd::<FMA>(p[j], vj[l], acc[0][l]);
            }
            j += 1;
        }
        for l in 0..16 {
            out[d0 + l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        }
        d0 += 16;
    }
    for d in d0..width {
        let mut a = 0f32;
        for j in 0..len {
            a = madd::<FMA>(p[j], v[base + j * stride + d], a);
        }
        out[d] = a;
    }
}

crate::ops::dispatch!(
    attend,
    attend_body,
    (q: &[f32], k: &[f32], v: &[f32], start: usize, end: usize, heads: usize, head_dim: usize) -> Vec<f32>
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_token_attends_to_itself() {
        let q = vec![1.0, 2.0, 3.0, 4.0];
        let v = vec![5.0, 6.0, 7.0, 8.0];
        let out = attention_ragged(&q, &q, &v, &[0, 1], 2, 2);
        assert_eq!(out, v);
    }

    /// softmax(Q·Kᵀ/√d)·V in f64, the obvious way.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        offsets: &[usize],
        heads: usize,
        head_dim: usize,
    ) -> Vec<f64> {
        let hidden = heads * head_dim;
        let mut out = vec![0f64; q.len()];
        for w in offsets.windows(2) {
            for h in 0..heads {
                let col = h * head_dim;
                for i in w[0]..w[1] {
                    let scores: Vec<f64> = (w[0]..w[1])
                        .map(|j| {
                            (0..head_dim)
                                .map(|d| {
                                    f64::from(q[i * hidden + col + d])
                                        * f64::from(k[j * hidden + col + d])
                                })
                                .sum::<f64>()
                                / (head_dim as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (j, p) in (w[0]..w[1]).zip(&e) {
                        for d in 0..head_dim {
                            out[i * hidden + col + d] +=
                                p / sum * f64::from(v[j * hidden + col + d]);
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn ragged_batches_match_a_plain_f64_softmax() {
        // Lengths around the 64-key panels and the two-query pairs; head
        // widths with and without a remainder past 16 lanes.
        let lens = [1usize, 2, 3, 63, 64, 65, 130];
        for (heads, head_dim) in [(12, 32), (3, 20), (2, 64)] {
            let hidden = heads * head_dim;
            let mut offsets = vec![0];
            for l in lens {
                offsets.push(offsets.last().unwrap() + l);
            }
            let tokens = *offsets.last().unwrap();
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            };
            let q: Vec<f32> = (0..tokens * hidden).map(|_| next()).collect();
            let k: Vec<f32> = (0..tokens * hidden).map(|_| next()).collect();
            let v: Vec<f32> = (0..tokens * hidden).map(|_| next()).collect();
            let got = attention_ragged(&q, &k, &v, &offsets, heads, head_dim);
            let want = reference(&q, &k, &v, &offsets, heads, head_dim);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*g) - w).abs() <= 2e-5,
                    "heads {heads} dim {head_dim} value {i}: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn sequences_do_not_see_each_other() {
        // Two sequences of two tokens, one head of width 1.
        let q = vec![1.0, 1.0, 1.0, 1.0];
        let k = vec![0.0, 0.0, 0.0, 0.0];
        let v = vec![1.0, 3.0, 10.0, 30.0];
        let out = attention_ragged(&q, &k, &v, &[0, 2, 4], 1, 1);
        assert_eq!(out, vec![2.0, 2.0, 20.0, 20.0]);
    }
}
