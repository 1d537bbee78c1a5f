//! Selecting a query's best candidates from a tile's scores: the types and
//! helpers the host and every device's selection kernel share (candidates,
//! ranking keys, the selection kernels' shape and output words). Knows no
//! backend, so the backends and the search that drives them both use it.

use std::cmp::Ordering;

/// A candidate for a query's top-k: its ranking key and corpus id.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub key: f32,
    pub id: u64,
    /// Row within the tile it came from.
    pub row: u32,
}

/// Orders candidates from closest to farthest: higher key, then lower id.
pub(crate) fn closer(a: &Candidate, b: &Candidate) -> Ordering {
    b.key.total_cmp(&a.key).then(a.id.cmp(&b.id))
}

/// Per-column transform of GEMM scores into ranking keys: `key = s·scale + shift`.
/// A column with no defined score (a zero vector under cosine) gets
/// `shift = -inf`, so it never beats a real candidate and is dropped on merge.
pub struct TileKeys {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
}

/// The largest k a device's selection kernel keeps; beyond, scores come
/// back and the host selects.
pub const DEVICE_TOPK_MAX_K: usize = 128;

/// How a device's selection kernel splits a tile: each thread keeps the
/// best `k` (the asked k rounded up to a power of two, at least 8) of a
/// chunk of `chunk` columns; `chunks` chunks per query.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SelectShape {
    pub k: u32,
    pub chunk: u32,
    pub chunks: u32,
}

impl SelectShape {
    /// The shape for keeping `k` of `cols` columns, or `None` past
    /// [`DEVICE_TOPK_MAX_K`].
    pub fn new(k: usize, cols: usize) -> Option<SelectShape> {
        (k <= DEVICE_TOPK_MAX_K).then(|| {
            let k = (k as u32).next_power_of_two().max(8);
            let chunk = (8 * k).max(256);
            SelectShape {
                k,
                chunk,
                chunks: (cols as u32).div_ceil(chunk),
            }
        })
    }

    /// Words of candidates per query: (key, column) pairs.
    pub fn words_per_query(&self) -> usize {
        self.chunks as usize * self.k as usize * 2
    }
}

/// The candidates a device's selection kernel wrote: per query `per_query`
/// words of (key bits, tile row) pairs, row `u32::MAX` for an empty slot.
pub(crate) fn candidates_from_words(
    words: &[u32],
    queries: usize,
    per_query: usize,
    ids: &[u64],
) -> Vec<Vec<Candidate>> {
    (0..queries)
        .map(|q| {
            words[q * per_query..(q + 1) * per_query]
                .chunks_exact(2)
                .filter(|pair| pair[1] != u32::MAX)
                .map(|pair| Candidate {
                    key: f32::from_bits(pair[0]),
                    id: ids[pair[1] as usize],
                    row: pair[1],
                })
                .collect()
        })
        .collect()
}

/// The best `k` of one query's scores over a tile, as candidates, keeping
/// only those at or above `threshold`.
pub(crate) fn select_row(
    scores: &[f32],
    keys: &TileKeys,
    ids: &[u64],
    base_row: u32,
    k: usize,
    threshold: f32,
) -> Vec<Candidate> {
    let mut best = Vec::with_capacity(k.min(scores.len()) + 1);
    select_into(&mut best, scores, keys, ids, base_row, k, threshold);
    best
}

/// Merges the best of one query's scores over a tile into `best` (sorted
/// closest first, at most `k`), keeping only keys at or above `threshold`
/// and `best`'s own k-th key.
pub(crate) fn select_into(
    best: &mut Vec<Candidate>,
    scores: &[f32],
    keys: &TileKeys,
    ids: &[u64],
    base_row: u32,
    k: usize,
    threshold: f32,
) {
    if k == 0 {
        return;
    }
    // A small sorted buffer (closest first) beats a heap for the small k of
    // search; most scores fail the bar.
    let mut floor = if best.len() == k {
        threshold.max(best[k - 1].key)
    } else {
        threshold
    };
    let consider = |best: &mut Vec<Candidate>, floor: &mut f32, t: usize| {
        let key = scores[t] * keys.scale[t] + keys.shift[t];
        // An equal key is still a candidate: a tile pushed later may carry
        // smaller ids (partitions arrive in any order); the merge decides.
        if !matches!(
            key.partial_cmp(floor),
            Some(Ordering::Greater | Ordering::Equal)
        ) || key == f32::NEG_INFINITY
        {
            return;
        }
        let cand = Candidate {
            key,
            id: ids[t],
            row: base_row + t as u32,
        };
        let pos = best.partition_point(|c| closer(c, &cand) == Ordering::Less);
        if pos >= k {
            return;
        }
        best.insert(pos, cand);
        if best.len() > k {
            best.pop();
        }
        if best.len() == k {
            *floor = floor.max(best[k - 1].key);
        }
    };
    // Test 16 keys at a time with a branch-free (vectorizable) pass and look
    // at single keys only in a chunk where one clears the bar.
    const LANES: usize = 16;
    let n = scores.len();
    let mut t = 0;
    while t + LANES <= n {
        let (s, a, b) = (
            &scores[t..t + LANES],
            &keys.scale[t..t + LANES],
            &keys.shift[t..t + LANES],
        );
        let mut any = false;
        for i in 0..LANES {
            any |= s[i] * a[i] + b[i] >= floor;
        }
        if any {
            for u in t..t + LANES {
                consider(best, &mut floor, u);
            }
        }
        t += LANES;
    }
    for u in t..n {
        consider(best, &mut floor, u);
    }
}

/// The closest `k` of two sorted candidate lists.
pub(crate) fn merge_lists(a: Vec<Candidate>, b: Vec<Candidate>, k: usize) -> Vec<Candidate> {
    let mut out = Vec::with_capacity(k.min(a.len() + b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < k {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if closer(x, y) != Ordering::Greater => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}
