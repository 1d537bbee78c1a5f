//! Multi-head self-attention over ragged batches: sequences are laid end to
//! end (no padding), `offsets[s]..offsets[s+1]` being sequence `s`'s rows, so
//! no work is spent on pad tokens and no mask is needed.

use rayon::prelude::*;

use crate::ops::{dot, madd};

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

/// One sequence's attention, every head: rows `start..end`.
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
    let mut scores = vec![0f32; len];
    for h in 0..heads {
        let col = h * head_dim;
        for i in 0..len {
            let qi = &q[(start + i) * hidden + col..][..head_dim];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate() {
                let kj = &k[(start + j) * hidden + col..][..head_dim];
                *s = dot::<FMA>(qi, kj) * scale;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            let oi = &mut out[i * hidden + col..][..head_dim];
            for (j, &p) in scores.iter().enumerate() {
                let vj = &v[(start + j) * hidden + col..][..head_dim];
                let p = p * inv;
                for (o, x) in oi.iter_mut().zip(vj) {
                    *o = madd::<FMA>(p, *x, *o);
                }
            }
        }
    }
    out
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
