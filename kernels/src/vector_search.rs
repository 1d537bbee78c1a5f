//! Exact top-k vector search: a batch of queries scored against the corpus one
//! tile at a time as a GEMM (`queries × tileᵀ`), a running top-k per query
//! merged across tiles, and never the full queries × corpus score matrix.
//!
//! Ranking uses a per-metric key computed from the GEMM (`q·c` for dot,
//! `q̂·c / |c|` for cosine, `2 q·c − |c|²` for L2, all "higher is closer");
//! the hits that survive are rescored exactly in f64 ([`exact_score`]) so that
//! every device reports the same numbers as the SQL scoring functions. Ties
//! break by id, which callers assign in corpus input order.
//!
//! The CPU path scores up to [`FUSED_MAX_QUERIES`] queries with its own fused
//! dot/norm loop over rayon, sub-tile by sub-tile so each sub-tile is still in
//! cache when it is selected from, and more queries with the `gemm` crate.
//! The wgpu path runs `shaders/gemm.wgsl` and the per-chunk selection of
//! `shaders/topk.wgsl` on the device; the CUDA path a cuBLAS SGEMM and
//! `cuda/topk.cu` (written and compiled, not yet run on a GPU). Both merge
//! the (few) candidates on the host.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rayon::prelude::*;

use crate::backend::{Device, Queries};
use crate::error::{KernelError, Result};
use crate::memory::{OomCounts, split_and_retry};
use crate::ops::vector::{Metric, exact_score, finite_norm2};

pub use crate::ops::select::DEVICE_TOPK_MAX_K;
use crate::ops::select::{Candidate, TileKeys, closer, merge_lists, select_into, select_row};

/// One search result: the corpus row's id and its exact score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub id: u64,
    pub score: f32,
}

/// Corpus rows per CPU sub-tile: big enough for an efficient GEMM, small
/// enough that the sub-tile stays in cache while it is scored and selected.
const CPU_SUBTILE_ROWS: usize = 512;
/// Corpus rows per sub-tile of the AVX-512 scoring GEMM: packed (384 KiB at
/// D = 384) it stays in L2 while every query block passes over it.
const SCORE_GEMM_SUBTILE_ROWS: usize = 256;
/// Corpus rows per multi-threaded GEMM on the CPU's many-query path.
const GEMM_BLOCK_ROWS: usize = 16_384;
/// Up to this many queries the CPU scores with its own fused loop (FMA, blocks
/// of 8 queries held in L1 against a streaming sub-tile, the norms in the
/// same pass); beyond, the packed AVX-512 GEMM ([`crate::ops::score_gemm`])
/// wins (measured with benches/vector_topk.py). One query is bound by memory
/// bandwidth.
const FUSED_MAX_QUERIES: usize = 16;

/// Max-heap entry whose top is the *farthest* kept candidate.
struct Kept {
    cand: Candidate,
    /// The row's vector, copied once the merge of its tile is done.
    vector: Option<Box<[f32]>>,
}

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Kept {}
impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Kept {
    fn cmp(&self, other: &Self) -> Ordering {
        closer(&self.cand, &other.cand)
    }
}

/// A running exact top-k search of a query batch over a streamed corpus.
pub struct VectorSearch {
    device: Device,
    metric: Metric,
    dim: usize,
    k: usize,
    /// The queries as given (for exact rescoring).
    raw: Vec<f32>,
    /// The queries the GEMM uses: unit length for cosine.
    prepared: Vec<f32>,
    /// Queries with no defined score against anything (zero vector, cosine).
    dead: Vec<bool>,
    kept: Vec<BinaryHeap<Kept>>,
    /// The queries uploaded once to a GPU; `None` on the CPU, and where they
    /// did not fit the device (every tile is scored on the CPU then).
    queries: Option<Queries>,
    /// The queries did not fit the device.
    queries_on_host: bool,
    oom: OomCounts,
    rows_seen: u64,
}

/// `Some` allocation, or `None` when the device has no memory for it.
fn fits<T>(allocated: Result<T>) -> Result<Option<T>> {
    match allocated {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.is_out_of_memory() => Ok(None),
        Err(e) => Err(e),
    }
}

/// The fewest corpus rows split-and-retry cuts a tile to before it scores
/// the rest of an out-of-memory tile on the CPU.
pub const OOM_FLOOR_ROWS: usize = 256;

impl std::fmt::Debug for VectorSearch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorSearch")
            .field("device", &self.device)
            .field("metric", &self.metric)
            .field("dim", &self.dim)
            .field("k", &self.k)
            .field("queries", &self.dead.len())
            .finish()
    }
}

impl VectorSearch {
    /// Starts a search of `queries` (row-major, `dim` wide) for their `k`
    /// closest corpus rows under `metric`, on `device`. A query with a NaN or
    /// infinite component is an error; a zero query under cosine finds
    /// nothing (its similarity is undefined).
    pub fn new(
        device: &Device,
        metric: Metric,
        dim: usize,
        queries: &[f32],
        k: usize,
    ) -> Result<VectorSearch> {
        if dim == 0 {
            return Err(KernelError::InvalidInput {
                kernel: "vector search",
                detail: "vectors have dimension 0".into(),
            });
        }
        if !queries.len().is_multiple_of(dim) {
            return Err(KernelError::LengthMismatch {
                kernel: "vector search",
                detail: format!(
                    "{} query values are not a multiple of dim {dim}",
                    queries.len()
                ),
            });
        }
        let nq = queries.len() / dim;
        let mut prepared = queries.to_vec();
        let mut dead = vec![false; nq];
        for (i, q) in prepared.chunks_exact_mut(dim).enumerate() {
            let Some(n2) = finite_norm2(q) else {
                return Err(KernelError::NonFinite {
                    what: format!("query {i}"),
                });
            };
            if metric == Metric::Cosine {
                if n2 == 0.0 {
                    dead[i] = true;
                } else {
                    let inv = 1.0 / n2.sqrt();
                    q.iter_mut().for_each(|x| *x = (f64::from(*x) * inv) as f32);
                }
            }
        }
        // Queries that do not fit the device leave every tile to the CPU.
        let on_gpu = !matches!(device, Device::Cpu(_)) && nq > 0 && k > 0;
        let uploaded = match on_gpu {
            true => fits(device.upload_queries(&prepared, dim))?,
            false => None,
        };
        // Each tile then counts as a piece run on the CPU (`push`).
        let queries_on_host = on_gpu && uploaded.is_none();
        let oom = OomCounts::default();
        Ok(VectorSearch {
            device: device.clone(),
            metric,
            dim,
            k,
            raw: queries.to_vec(),
            prepared,
            dead,
            // Heaps grow with the rows pushed: k is the user's number and may
            // be far beyond the corpus, so nothing is reserved from it.
            kept: (0..nq).map(|_| BinaryHeap::new()).collect(),
            queries: uploaded,
            queries_on_host,
            oom,
            rows_seen: 0,
        })
    }

    pub fn queries(&self) -> usize {
        self.dead.len()
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The ids some query currently keeps: the rows whose data a caller
    /// must hold on to for the final result.
    pub fn kept_ids(&self) -> std::collections::HashSet<u64> {
        self.kept
            .iter()
            .flat_map(|heap| heap.iter().map(|k| k.cand.id))
            .collect()
    }

    /// Corpus rows pushed so far.
    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// What running out of device memory has cost so far: tiles split and
    /// retried, pieces scored on the CPU.
    pub fn oom_counts(&self) -> OomCounts {
        self.oom
    }

    /// Scores one corpus tile (`ids.len()` rows of `dim` values) and merges
    /// it into every query's running top-k. Ties go to the smaller id; ids
    /// must be unique and increase within a tile, but tiles may come in any
    /// order. A corpus row with a NaN or infinite component is an error
    /// naming its id.
    pub fn push(&mut self, tile: &[f32], ids: &[u64]) -> Result<()> {
        if tile.len() != ids.len() * self.dim {
            return Err(KernelError::LengthMismatch {
                kernel: "vector search",
                detail: format!(
                    "{} tile values for {} rows of dim {}",
                    tile.len(),
                    ids.len(),
                    self.dim
                ),
            });
        }
        self.rows_seen += ids.len() as u64;
        if ids.is_empty() || self.k == 0 || self.dead.iter().all(|d| *d) {
            return Ok(());
        }
        let device = self.device.clone();
        let chunk_rows = device
            .max_tile_rows(self.dim, self.queries())
            .clamp(1, ids.len().max(1));
        let dim = self.dim;
        for (tile, ids) in tile.chunks(chunk_rows * dim).zip(ids.chunks(chunk_rows)) {
            if self.queries_on_host {
                let cands = self.cpu_select(tile, ids)?;
                self.oom.cpu_fallbacks += 1;
                merge_into(&mut self.kept, &self.dead, dim, self.k, tile, ids, cands);
                continue;
            }
            // A tile that runs out of device memory is halved and retried;
            // what still does not fit is scored on the CPU.
            let mut oom = OomCounts::default();
            let pieces = split_and_retry(
                ids.len(),
                OOM_FLOOR_ROWS,
                &mut oom,
                |r| self.device_select(&tile[r.start * dim..r.end * dim], &ids[r]),
                |r| self.cpu_select(&tile[r.start * dim..r.end * dim], &ids[r]),
                KernelError::is_out_of_memory,
            );
            self.oom.add(oom);
            for (r, cands) in pieces? {
                let (tile, ids) = (&tile[r.start * dim..r.end * dim], &ids[r]);
                merge_into(&mut self.kept, &self.dead, dim, self.k, tile, ids, cands);
            }
        }
        Ok(())
    }

    /// Each query's candidates in one tile, selected on the search's device.
    /// On the CPU device the score matrix's bytes are reserved in its budget
    /// too, so a limit or an injected failure applies there as well.
    fn device_select(&self, tile: &[f32], ids: &[u64]) -> Result<Vec<Vec<Candidate>>> {
        match (&self.device, &self.queries) {
            (Device::Cpu(_), _) => {
                let bytes = (ids.len() * self.queries() * 4) as u64;
                let _scores = self.device.memory().reserve(bytes, "vector search tile")?;
                self.cpu_select(tile, ids)
            }
            (device, Some(queries)) => {
                let keys = self.tile_keys(tile, ids)?;
                device.score_and_select(queries, tile, ids, &keys, self.k, &self.thresholds())
            }
            (_, None) => Err(KernelError::Internal(
                "vector search: queries not on the device".into(),
            )),
        }
    }

    /// The closest `k` (or fewer) hits of each query, closest first; ties in
    /// score go to the smaller id.
    pub fn finish(self) -> Vec<Vec<Hit>> {
        let metric = self.metric;
        let dim = self.dim;
        let raw = self.raw;
        self.kept
            .into_par_iter()
            .enumerate()
            .map(|(qi, heap)| {
                let q = &raw[qi * dim..(qi + 1) * dim];
                let mut hits: Vec<Hit> = heap
                    .into_iter()
                    .filter_map(|kept| {
                        exact_score(metric, q, kept.vector.as_deref()?).map(|score| Hit {
                            id: kept.cand.id,
                            score,
                        })
                    })
                    .collect();
                hits.sort_by(|a, b| {
                    let by_score = if metric.higher_is_closer() {
                        b.score.total_cmp(&a.score)
                    } else {
                        a.score.total_cmp(&b.score)
                    };
                    by_score.then(a.id.cmp(&b.id))
                });
                hits
            })
            .collect()
    }

    /// Each query's current admission threshold: the key of its farthest
    /// kept candidate once it holds k, else -inf.
    fn thresholds(&self) -> Vec<f32> {
        self.kept
            .iter()
            .zip(&self.dead)
            .map(|(heap, dead)| match heap.peek() {
                _ if *dead => f32::INFINITY,
                Some(top) if heap.len() >= self.k => top.cand.key,
                _ => f32::NEG_INFINITY,
            })
            .collect()
    }

    /// Checks every row of the tile for NaN/infinite components and derives
    /// the score-to-key transform of each row, in parallel.
    fn tile_keys(&self, tile: &[f32], ids: &[u64]) -> Result<TileKeys> {
        let parts: Vec<TileKeys> = tile
            .par_chunks(CPU_SUBTILE_ROWS * self.dim)
            .zip(ids.par_chunks(CPU_SUBTILE_ROWS))
            .map(|(sub, sub_ids)| {
                self.keys_from_norms(sub, sub_ids, simd::row_norms2(sub, self.dim))
            })
            .collect::<Result<_>>()?;
        let mut keys = TileKeys {
            scale: Vec::with_capacity(ids.len()),
            shift: Vec::with_capacity(ids.len()),
        };
        for part in parts {
            keys.scale.extend(part.scale);
            keys.shift.extend(part.shift);
        }
        Ok(keys)
    }

    /// The CPU path: per sub-tile, scores and a bounded selection per query.
    /// Returns each query's candidates (at most k per sub-tile).
    fn cpu_select(&self, tile: &[f32], ids: &[u64]) -> Result<Vec<Vec<Candidate>>> {
        let dim = self.dim;
        let nq = self.queries();
        let k = self.k;
        let thresholds = self.thresholds();
        let many = nq > FUSED_MAX_QUERIES;
        if many && !crate::ops::score_gemm::available() {
            return self.cpu_select_gemm(tile, ids, &thresholds);
        }
        let subtile = if many {
            SCORE_GEMM_SUBTILE_ROWS
        } else {
            CPU_SUBTILE_ROWS
        };
        // Each rayon worker carries its own running top-k per query across
        // the sub-tiles it takes, so its admission bar rises as it goes and
        // only about k candidates per query and worker reach the merge.
        let empty = || -> Vec<Vec<Candidate>> { vec![Vec::new(); nq] };
        tile.par_chunks(subtile * dim)
            .zip(ids.par_chunks(subtile))
            .enumerate()
            .try_fold(empty, |mut best, (s, (sub, sub_ids))| {
                let rows = sub_ids.len();
                let (scores, norms) = if many {
                    let norms = simd::row_norms2(sub, dim);
                    let scores = crate::ops::score_gemm::scores(&self.prepared, sub, dim)
                        .ok_or_else(|| KernelError::Internal("AVX-512 vanished".into()))?;
                    (scores, norms)
                } else {
                    simd::fused_scores(&self.prepared, sub, dim)
                };
                let keys = self.keys_from_norms(sub, sub_ids, norms)?;
                let base = (s * subtile) as u32;
                for (qi, list) in best.iter_mut().enumerate() {
                    select_into(
                        list,
                        &scores[qi * rows..(qi + 1) * rows],
                        &keys,
                        sub_ids,
                        base,
                        k,
                        thresholds[qi],
                    );
                }
                Ok(best)
            })
            .try_reduce(empty, |a, b| {
                Ok(a.into_iter()
                    .zip(b)
                    .map(|(x, y)| merge_lists(x, y, k))
                    .collect())
            })
    }

    /// The CPU path for many queries: one multi-threaded GEMM per block of
    /// corpus rows (the `gemm` crate packs the queries once per block), then
    /// the selection in parallel over queries.
    fn cpu_select_gemm(
        &self,
        tile: &[f32],
        ids: &[u64],
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        let (dim, nq, k) = (self.dim, self.queries(), self.k);
        let mut out: Vec<Vec<Candidate>> = vec![Vec::new(); nq];
        for (b, (block, block_ids)) in tile
            .chunks(GEMM_BLOCK_ROWS * dim)
            .zip(ids.chunks(GEMM_BLOCK_ROWS))
            .enumerate()
        {
            let rows = block_ids.len();
            let keys = self.tile_keys(block, block_ids)?;
            let scores = crate::ops::linear::linear(&self.prepared, nq, dim, block, rows, None);
            let base = (b * GEMM_BLOCK_ROWS) as u32;
            out.par_iter_mut().enumerate().for_each(|(qi, cands)| {
                cands.extend(select_row(
                    &scores[qi * rows..(qi + 1) * rows],
                    &keys,
                    block_ids,
                    base,
                    k,
                    thresholds[qi],
                ));
            });
        }
        Ok(out)
    }

    /// The keys of a tile's rows given their squared norms (in f32); a
    /// non-finite norm is an error naming the row, unless f64 shows the row
    /// is merely large.
    fn keys_from_norms(&self, tile: &[f32], ids: &[u64], norms: Vec<f32>) -> Result<TileKeys> {
        let mut scale = Vec::with_capacity(ids.len());
        let mut shift = Vec::with_capacity(ids.len());
        for ((row, id), n2) in tile.chunks_exact(self.dim).zip(ids).zip(norms) {
            if !n2.is_finite() {
                // Recheck in f64: a large but finite vector may overflow f32.
                finite_norm2(row).ok_or_else(|| KernelError::NonFinite {
                    what: format!("corpus row {id}"),
                })?;
            }
            let (a, b) = match self.metric {
                Metric::Dot => (1.0, 0.0),
                Metric::Cosine if n2 == 0.0 => (0.0, f32::NEG_INFINITY),
                Metric::Cosine => (1.0 / n2.sqrt(), 0.0),
                Metric::L2 => (2.0, -n2),
            };
            scale.push(a);
            shift.push(b);
        }
        Ok(TileKeys { scale, shift })
    }
}

/// Merges candidates into the running top-k, copying the vectors of those
/// admitted (for exact rescoring at the end). On borrowed parts, so the wgpu
/// path can merge while it holds its queries.
fn merge_into(
    kept: &mut [BinaryHeap<Kept>],
    dead: &[bool],
    dim: usize,
    k: usize,
    tile: &[f32],
    ids: &[u64],
    cands: Vec<Vec<Candidate>>,
) {
    kept.par_iter_mut()
        .zip(cands)
        .zip(dead.par_iter())
        .for_each(|((heap, cands), dead)| {
            if *dead {
                return;
            }
            for cand in cands {
                if cand.key == f32::NEG_INFINITY {
                    continue;
                }
                debug_assert_eq!(ids[cand.row as usize], cand.id);
                if heap.len() >= k {
                    let worst = heap.peek().map(|t| t.cand);
                    match worst {
                        Some(w) if closer(&cand, &w) == Ordering::Less => {
                            heap.pop();
                        }
                        _ => continue,
                    }
                }
                heap.push(Kept { cand, vector: None });
            }
            // Copy the vectors of this tile's survivors only, once the heap
            // has settled: most candidates are evicted before then.
            if heap.iter().any(|e| e.vector.is_none()) {
                let mut entries = std::mem::take(heap).into_vec();
                for e in entries.iter_mut().filter(|e| e.vector.is_none()) {
                    let row = e.cand.row as usize;
                    e.vector = Some(tile[row * dim..(row + 1) * dim].into());
                }
                *heap = BinaryHeap::from(entries);
            }
        });
}

/// The CPU's inner loops, compiled for AVX-512 and AVX2 as well as the
/// baseline and chosen at run time: a portable binary still scans the corpus
/// at full vector width.
mod simd {
    use crate::ops::{dot, madd};

    /// Four queries against one row at once: the row is read once and the
    /// four independent accumulator chains keep the FMA units busy.
    #[inline(always)]
    fn dot4<const FMA: bool>(q: [&[f32]; 4], b: &[f32]) -> [f32; 4] {
        let (mut a0, mut a1, mut a2, mut a3) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
        let rows = q[0]
            .chunks_exact(16)
            .zip(q[1].chunks_exact(16))
            .zip(q[2].chunks_exact(16))
            .zip(q[3].chunks_exact(16))
            .zip(b.chunks_exact(16));
        for ((((x0, x1), x2), x3), y) in rows {
            for i in 0..16 {
                a0[i] = madd::<FMA>(x0[i], y[i], a0[i]);
                a1[i] = madd::<FMA>(x1[i], y[i], a1[i]);
                a2[i] = madd::<FMA>(x2[i], y[i], a2[i]);
                a3[i] = madd::<FMA>(x3[i], y[i], a3[i]);
            }
        }
        let tail = b.len() / 16 * 16;
        let mut out = [a0, a1, a2, a3].map(|a| a.iter().sum::<f32>());
        for (j, o) in out.iter_mut().enumerate() {
            for i in tail..b.len() {
                *o = madd::<FMA>(q[j][i], b[i], *o);
            }
        }
        out
    }

    #[inline(always)]
    fn row_norms2_body<const FMA: bool>(tile: &[f32], dim: usize) -> Vec<f32> {
        // A plain loop, not map/collect: std's iterator plumbing is compiled
        // outside this function, without its target features, and would call
        // a software fmaf per element.
        let mut out = Vec::with_capacity(tile.len() / dim);
        for r in tile.chunks_exact(dim) {
            out.push(dot::<FMA>(r, r));
        }
        out
    }

    /// `out[q·rows + t] = query_q · row_t` and each row's `|row|²`, reading
    /// each corpus row from memory once.
    #[inline(always)]
    fn fused_scores_body<const FMA: bool>(
        queries: &[f32],
        tile: &[f32],
        dim: usize,
    ) -> (Vec<f32>, Vec<f32>) {
        let nq = queries.len() / dim;
        let rows = tile.len() / dim;
        let mut out = vec![0f32; nq * rows];
        let mut norms = Vec::with_capacity(rows);
        let qs: Vec<&[f32]> = queries.chunks_exact(dim).collect();
        // Blocks of 8 queries stay in L1 while the sub-tile (in L2) streams
        // past them; more at once would spill L1.
        for (b, block) in qs.chunks(8).enumerate() {
            let q0 = b * 8;
            for (t, row) in tile.chunks_exact(dim).enumerate() {
                if b == 0 {
                    norms.push(dot::<FMA>(row, row));
                }
                let mut qi = 0;
                while qi + 4 <= block.len() {
                    let d = dot4::<FMA>(
                        [block[qi], block[qi + 1], block[qi + 2], block[qi + 3]],
                        row,
                    );
                    for (j, v) in d.into_iter().enumerate() {
                        out[(q0 + qi + j) * rows + t] = v;
                    }
                    qi += 4;
                }
                for (j, q) in block.iter().enumerate().skip(qi) {
                    out[(q0 + j) * rows + t] = dot::<FMA>(q, row);
                }
            }
        }
        if qs.is_empty() {
            for row in tile.chunks_exact(dim) {
                norms.push(dot::<FMA>(row, row));
            }
        }
        (out, norms)
    }

    crate::ops::dispatch!(row_norms2, row_norms2_body, (tile: &[f32], dim: usize) -> Vec<f32>);
    crate::ops::dispatch!(fused_scores, fused_scores_body, (queries: &[f32], tile: &[f32], dim: usize) -> (Vec<f32>, Vec<f32>));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_row_keeps_best_with_id_ties() {
        let scores = [1.0, 3.0, 3.0, 2.0, 3.0];
        let keys = TileKeys {
            scale: vec![1.0; 5],
            shift: vec![0.0; 5],
        };
        let ids = [10, 11, 12, 13, 14];
        let got: Vec<u64> = select_row(&scores, &keys, &ids, 0, 2, f32::NEG_INFINITY)
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(got, vec![11, 12]);
        assert!(select_row(&scores, &keys, &ids, 0, 0, f32::NEG_INFINITY).is_empty());
    }

    #[test]
    fn fused_scores_match_sequential() {
        let q: Vec<f32> = (0..74).map(|i| i as f32 * 0.5).collect();
        let tile: Vec<f32> = (0..111).map(|i| 1.0 - i as f32 * 0.25).collect();
        let (got, norms) = simd::fused_scores(&q, &tile, 37);
        assert_eq!(norms.len(), 3);
        for qi in 0..2 {
            for t in 0..3 {
                let want: f64 = (0..37)
                    .map(|j| f64::from(q[qi * 37 + j]) * f64::from(tile[t * 37 + j]))
                    .sum();
                assert!((f64::from(got[qi * 3 + t]) - want).abs() < 1e-2, "{qi},{t}");
            }
        }
        let norms = simd::row_norms2(&tile, 37);
        assert_eq!(norms.len(), 3);
    }
}
