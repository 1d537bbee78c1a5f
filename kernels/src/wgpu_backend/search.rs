//! Vector search on wgpu: a tile's scores by `shaders/gemm.wgsl` (the
//! queries uploaded once), each query's best candidates per chunk of columns
//! by `shaders/topk.wgsl`, read back as (key, row) words.

use super::{MAX_TILE_ROWS, TOPK_WGSL, TOPK_WORKGROUP, WgpuBuffer, WgpuDevice, grid};
use crate::backend_device::BackendDevice;
use crate::error::{KernelError, Result};
use crate::ops::select::{Candidate, SelectShape, TileKeys, candidates_from_words, select_row};

/// A search's queries, uploaded once to the device.
#[derive(Debug)]
pub struct WgpuQueries {
    buffer: WgpuBuffer,
    rows: usize,
    dim: usize,
}

impl WgpuDevice {
    pub(super) fn topk_pipeline(&self, k: u32) -> Result<wgpu::ComputePipeline> {
        let mut cache = self
            .topk
            .lock()
            .map_err(|_| KernelError::Internal("wgpu: top-k pipeline cache poisoned".into()))?;
        Ok(cache
            .entry(k)
            .or_insert_with(|| {
                let source = TOPK_WGSL.replace("__K__", &k.to_string());
                self.build_pipeline("topk.wgsl", &source, "topk_select")
            })
            .clone())
    }

    /// Uploads a search's prepared queries (row-major, `dim` wide) once.
    pub fn upload_queries(&self, prepared: &[f32], dim: usize) -> Result<WgpuQueries> {
        let rows = prepared.len() / dim.max(1);
        let buffer = self.upload(prepared)?;
        Ok(WgpuQueries { buffer, rows, dim })
    }

    /// The most corpus rows one [`Self::score_and_select`] call may take: its
    /// tile and its score matrix must each fit one storage binding.
    pub fn max_tile_rows(&self, dim: usize, queries: usize) -> usize {
        let binding = self.chunk_elems();
        (binding / dim.max(1))
            .min(binding / queries.max(1))
            .min(MAX_TILE_ROWS)
    }

    /// Scores `tile` against the queries with `gemm.wgsl`, then selects each
    /// query's best k keys per chunk of columns with `topk.wgsl` (or, for a k
    /// beyond [`crate::ops::select::DEVICE_TOPK_MAX_K`], on the host from the downloaded scores).
    pub(crate) fn score_and_select(
        &self,
        queries: &WgpuQueries,
        tile: &[f32],
        ids: &[u64],
        keys: &TileKeys,
        k: usize,
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        let (nq, dim) = (queries.rows, queries.dim);
        let rows = tile.len() / dim;
        let scores = self.storage_buffer("kiln scores", nq * rows)?;
        let shape = SelectShape::new(k, rows);
        let out_len = shape.map_or(0, |s| nq * s.words_per_query());
        // The launch's inputs, kept (and reserved) until its results are
        // read back: the GPU works on them after the submission returns.
        let (out, _inputs) = self.scoped("vector search", || {
            let mut inputs = Vec::new();
            let tile_buf = self.init_buffer(
                "kiln corpus tile",
                bytemuck::cast_slice(tile),
                wgpu::BufferUsages::STORAGE,
            )?;
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("vector search"),
                });
            self.encode_gemm_nt(
                &mut encoder,
                &queries.buffer.buffer,
                &tile_buf,
                &scores,
                None,
                [nq as u32, rows as u32, dim as u32],
            );
            let out = match shape {
                Some(SelectShape {
                    k: kk,
                    chunk,
                    chunks,
                }) => {
                    let out = self.storage_buffer("kiln top-k candidates", out_len)?;
                    let usage = wgpu::BufferUsages::STORAGE;
                    let scale = self.init_buffer(
                        "kiln key scale",
                        bytemuck::cast_slice(&keys.scale),
                        usage,
                    )?;
                    let shift = self.init_buffer(
                        "kiln key shift",
                        bytemuck::cast_slice(&keys.shift),
                        usage,
                    )?;
                    let threshold = self.init_buffer(
                        "kiln thresholds",
                        bytemuck::cast_slice(thresholds),
                        usage,
                    )?;
                    let params = self.small_buffer(
                        "top-k params",
                        bytemuck::bytes_of(&[nq as u32, rows as u32, chunk, chunks]),
                        wgpu::BufferUsages::UNIFORM,
                    );
                    let pipeline = self.topk_pipeline(kk)?;
                    let layout = pipeline.get_bind_group_layout(0);
                    let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                        label: Some("topk"),
                        layout: &layout,
                        entries: &[
                            (0, scores.as_entire_binding()),
                            (1, scale.as_entire_binding()),
                            (2, shift.as_entire_binding()),
                            (3, threshold.as_entire_binding()),
                            (4, out.as_entire_binding()),
                            (5, params.as_entire_binding()),
                        ]
                        .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }),
                    });
                    let threads = nq as u64 * u64::from(chunks);
                    let groups = threads.div_ceil(u64::from(TOPK_WORKGROUP));
                    let (x, y) = grid(groups);
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("topk"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&pipeline);
                    pass.set_bind_group(0, &group, &[]);
                    pass.dispatch_workgroups(x, y, 1);
                    drop(pass);
                    inputs.extend([scale, shift, threshold]);
                    Some(out)
                }
                None => None,
            };
            self.queue.submit([encoder.finish()]);
            inputs.push(tile_buf);
            Ok((out, inputs))
        })?;
        match (out, shape) {
            (Some(out), Some(shape)) => {
                let words = self.download(&WgpuBuffer {
                    buffer: out,
                    len: out_len,
                })?;
                let words: Vec<u32> = words.iter().map(|w| w.to_bits()).collect();
                Ok(candidates_from_words(
                    &words,
                    nq,
                    shape.words_per_query(),
                    ids,
                ))
            }
            _ => {
                let scores = self.download(&WgpuBuffer {
                    buffer: scores,
                    len: nq * rows,
                })?;
                Ok(scores
                    .chunks(rows.max(1))
                    .zip(thresholds)
                    .map(|(row, t)| select_row(row, keys, ids, 0, k, *t))
                    .collect())
            }
        }
    }
}
