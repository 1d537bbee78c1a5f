//! Exact vector search on CUDA: scores of a query batch against a corpus
//! tile as one cuBLAS SGEMM, then `cuda/topk.cu` keeps each query's best keys
//! per chunk of columns on the device, so only candidates come back. The
//! host side (ranking keys, thresholds, merging, exact rescoring) is shared
//! with the other devices in [`crate::vector_search`].
//!
//! Written against cudarc's cuBLAS and compiled here, but not yet run on a
//! GPU: unverified until a session with an NVIDIA device runs the kernels
//! crate's tests.

use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaModule, CudaSlice, LaunchConfig, PushKernelArg};

use super::{CudaDevice, compile_ptx};
use crate::error::{KernelError, Result};
use crate::memory::Held;
use crate::ops::select::{Candidate, SelectShape, TileKeys, candidates_from_words, select_row};

/// Threads per block of the selection kernel.
const SELECT_BLOCK: u32 = 128;
/// Corpus rows per call, at most.
const MAX_TILE_ROWS: usize = 65_536;
/// Score-matrix elements per call, at most (256 MiB of f32).
const MAX_SCORES: usize = 64 << 20;

/// Whether cuBLAS can be loaded (the CUDA vector search needs it).
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// A search's queries on the device, uploaded once.
#[derive(Debug)]
pub struct CudaQueries {
    slice: Held<CudaSlice<f32>>,
    rows: usize,
    dim: usize,
}

impl CudaDevice {
    /// Uploads a search's prepared queries (row-major, `dim` wide) once.
    pub fn upload_queries(&self, prepared: &[f32], dim: usize) -> Result<CudaQueries> {
        Ok(CudaQueries {
            slice: self.held_htod(prepared, "search queries")?,
            rows: prepared.len() / dim.max(1),
            dim,
        })
    }

    /// The most corpus rows one [`Self::score_and_select`] call takes.
    pub fn max_tile_rows(&self, dim: usize, queries: usize) -> usize {
        (MAX_SCORES / dim.max(1))
            .min(MAX_SCORES / queries.max(1))
            .min(MAX_TILE_ROWS)
    }

    pub(super) fn blas(&self) -> Result<Arc<CudaBlas>> {
        let mut slot = self
            .blas
            .lock()
            .map_err(|_| KernelError::Internal("cuBLAS handle poisoned".into()))?;
        if let Some(b) = slot.as_ref() {
            return Ok(Arc::clone(b));
        }
        if !cublas_present() {
            return Err(KernelError::DeviceNotFound {
                backend: crate::device::BackendKind::Cuda,
                reason: "libcublas not found on the loader path".into(),
            });
        }
        let blas = Arc::new(
            CudaBlas::new(Arc::clone(&self.stream))
                .map_err(|e| self.blas_error("cuBLAS handle", e))?,
        );
        *slot = Some(Arc::clone(&blas));
        Ok(blas)
    }

    /// The selection kernel for keeping `k` keys per chunk, compiled once.
    fn topk_module(&self, k: u32) -> Result<Arc<CudaModule>> {
        let mut cache = self
            .topk
            .lock()
            .map_err(|_| KernelError::Internal("CUDA top-k cache poisoned".into()))?;
        if let Some(m) = cache.get(&k) {
            return Ok(Arc::clone(m));
        }
        let source = format!("#define KILN_K {k}\n{}", include_str!("../cuda/topk.cu"));
        let ptx = compile_ptx("topk.cu", &source, Some(self.arch))?;
        let module = self.ctx.load_module(ptx)?;
        cache.insert(k, Arc::clone(&module));
        Ok(module)
    }

    /// Scores `tile` (rows of `dim` values) against the queries with cuBLAS,
    /// then selects each query's best keys per chunk of columns on the
    /// device (or, for a k beyond [`crate::ops::select::DEVICE_TOPK_MAX_K`], on the host from the
    /// downloaded scores): the candidates at or above each query's
    /// threshold.
    pub(crate) fn score_and_select(
        &self,
        queries: &CudaQueries,
        tile: &[f32],
        ids: &[u64],
        keys: &TileKeys,
        k: usize,
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        let (nq, dim) = (queries.rows, queries.dim);
        let rows = tile.len() / dim.max(1);
        if rows == 0 || nq == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        // The tile, its scores and the selection's buffers, reserved together.
        let shape = SelectShape::new(k, rows);
        // Candidates, a scale and a shift per corpus row, a threshold per query.
        let select_words = shape.map_or(0, |s| nq * s.words_per_query() + 2 * rows + nq);
        let _launch = self.reserve(
            ((tile.len() + nq * rows + select_words) * 4) as u64,
            "vector search tile",
        )?;
        let tile_dev = self.stream.clone_htod(tile)?;
        let mut scores = self.stream.alloc_zeros::<f32>(nq * rows)?;
        // Row-major scores[q][r] = queries[q] · tile[r] is, column-major, the
        // rows × nq matrix tileᵀ-as-stored (dim × rows, transposed) times
        // queries-as-stored (dim × nq).
        let config = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: rows as i32,
            n: nq as i32,
            k: dim as i32,
            alpha: 1.0f32,
            lda: dim as i32,
            ldb: dim as i32,
            beta: 0.0f32,
            ldc: rows as i32,
        };
        let blas = self.blas()?;
        // SAFETY: `tile_dev` holds rows × dim values (lda = dim, op T),
        // `queries.slice` nq × dim (ldb = dim, op N) and `scores` rows × nq
        // (ldc = rows), the shapes the configuration names.
        unsafe { blas.gemm(config, &tile_dev, &*queries.slice, &mut scores) }
            .map_err(|e| self.blas_error("cuBLAS SGEMM", e))?;
        let Some(shape) = shape else {
            let scores = self.stream.clone_dtoh(&scores)?;
            return Ok(scores
                .chunks(rows)
                .zip(thresholds)
                .map(|(row, t)| select_row(row, keys, ids, 0, k, *t))
                .collect());
        };
        let SelectShape {
            k: kk,
            chunk,
            chunks,
        } = shape;
        let out_len = nq * shape.words_per_query();
        let scale = self.stream.clone_htod(&keys.scale)?;
        let shift = self.stream.clone_htod(&keys.shift)?;
        let threshold = self.stream.clone_htod(thresholds)?;
        let mut cands = self.stream.alloc_zeros::<u32>(out_len)?;
        let function = self.topk_module(kk)?.load_function("kiln_topk_select")?;
        let threads = nq as u64 * u64::from(chunks);
        let launch_config = LaunchConfig {
            grid_dim: (threads.div_ceil(u64::from(SELECT_BLOCK)) as u32, 1, 1),
            block_dim: (SELECT_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (nq32, rows32) = (nq as u32, rows as u32);
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&scores)
            .arg(&scale)
            .arg(&shift)
            .arg(&threshold)
            .arg(&mut cands)
            .arg(&nq32)
            .arg(&rows32)
            .arg(&chunk)
            .arg(&chunks);
        // SAFETY: kiln_topk_select takes (const float* scores, const float*
        // scale, const float* shift, const float* threshold, unsigned* cands,
        // unsigned queries, unsigned cols, unsigned chunk, unsigned chunks),
        // as pushed; scores holds queries × cols values, scale and shift cols,
        // threshold queries, cands queries × chunks × K × 2 words, and the
        // kernel returns for thread indices past queries × chunks.
        unsafe { launch.launch(launch_config) }?;
        let words = self.stream.clone_dtoh(&cands)?;
        Ok(candidates_from_words(
            &words,
            nq,
            shape.words_per_query(),
            ids,
        ))
    }
}
