//! Launching generated fused kernels ([`crate::codegen::wgsl`]) on wgpu.
//!
//! One launch uploads the stage's input columns into one buffer, runs
//! `count` → `scan` → `emit` (or `emit` alone without a predicate) in one
//! submission, reads back the kept-row count and the fallback flag, then only
//! the kept rows of every output region.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::{WgpuDevice, grid};
use crate::codegen::ir::Program;
use crate::codegen::wgsl;
use crate::codegen::{ColumnData, FusedOutput, GroupFold, Layout, empty_output, max_launch_rows};
use crate::error::{KernelError, Result};
use crate::memory::Held;

/// The pipelines of one generated module.
pub(super) struct FusedPipelines {
    pub(super) layout: wgpu::BindGroupLayout,
    /// `count`, `scan`, `emit` for a program of rows; `reduce` alone for a
    /// program of reductions; `scatter` (and `scatter_lo`) for its atomic
    /// grouped fold.
    pub(super) passes: Vec<wgpu::ComputePipeline>,
}

/// The buffers of one launch a caller reads (see
/// [`WgpuDevice::launch_buffers`]); the bind group holds the inputs alive.
pub(super) struct LaunchBuffers {
    pub outw: Held<wgpu::Buffer>,
    pub blocks: Held<wgpu::Buffer>,
    pub flag: wgpu::Buffer,
    pub group: wgpu::BindGroup,
    /// The inputs and parameters the group binds, reserved until the launch
    /// is done with them.
    pub inputs: [Held<wgpu::Buffer>; 2],
}

/// Compiled fused modules by program fingerprint and grouped fold.
pub(super) type FusedCache = Mutex<HashMap<(u64, GroupFold), Arc<FusedPipelines>>>;

impl WgpuDevice {
    /// Why this device cannot run `program`, if it cannot: WGSL generation
    /// refused an expression, the adapter lacks 64-bit shader types, or the
    /// shader compiler rejected the module. Compiles and caches the kernel.
    pub fn fused_support(&self, program: &Program) -> std::result::Result<(), String> {
        self.fold_support(program, GroupFold::Tiles)
    }

    /// [`Self::fused_support`] for the module of one grouped fold.
    pub fn fold_support(
        &self,
        program: &Program,
        fold: GroupFold,
    ) -> std::result::Result<(), String> {
        self.fused_pipelines(program, fold)
            .map(|_| ())
            .map_err(KernelError::into_reason)
    }

    /// Whether the generator and the adapter's features take `program`,
    /// without compiling it.
    pub fn fused_check(&self, program: &Program) -> std::result::Result<(), String> {
        self.feature_support(program)?;
        wgsl::generate(program).map(|_| ())
    }

    fn feature_support(&self, program: &Program) -> std::result::Result<(), String> {
        let (ints, floats) = program.uses_64bit();
        let features = self.device.features();
        if ints && !features.contains(wgpu::Features::SHADER_INT64) {
            return Err(format!(
                "{} has no 64-bit integers in shaders (SHADER_INT64)",
                self.info.name
            ));
        }
        if floats && !features.contains(wgpu::Features::SHADER_F64) {
            return Err(format!(
                "{} has no 64-bit floats in shaders (SHADER_F64)",
                self.info.name
            ));
        }
        Ok(())
    }

    /// The most rows one [`Self::run_fused`] launch takes: inputs and outputs
    /// must each fit one storage binding.
    pub fn fused_max_rows(&self, program: &Program) -> usize {
        let binding = (self.limits.max_storage_buffer_binding_size as usize).min(1 << 30);
        max_launch_rows(program, binding)
    }

    fn fused_pipelines(&self, program: &Program, fold: GroupFold) -> Result<Arc<FusedPipelines>> {
        let key = (program.fingerprint(), fold);
        let mut cache = self
            .fused
            .lock()
            .map_err(|_| KernelError::Internal("wgpu: fused pipeline cache poisoned".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(Arc::clone(p));
        }
        self.feature_support(program)
            .map_err(|detail| KernelError::InvalidInput {
                kernel: "fused",
                detail,
            })?;
        let source = match fold {
            GroupFold::Atomics => wgsl::generate_atomic(program),
            GroupFold::Tiles => wgsl::generate(program),
        }
        .map_err(|detail| KernelError::InvalidInput {
            kernel: "fused",
            detail,
        })?;
        let entries: Vec<&str> = if program.reduce.is_empty() {
            vec!["count", "scan", "emit"]
        } else if fold == GroupFold::Atomics {
            let mut entries = vec!["scatter"];
            if program.atomic_lo_pass() {
                entries.push("scatter_lo");
            }
            entries
        } else {
            vec!["reduce"]
        };
        let built = self.module_pipelines(&source, &entries)?;
        let built = Arc::new(built);
        cache.insert(key, Arc::clone(&built));
        Ok(built)
    }

    /// Compiles a generated module and one pipeline per entry point, over
    /// the bind group every generated module declares: `data` and `params`
    /// read-only, `outw`, `blocks` and `flag` read-write.
    pub(super) fn module_pipelines(
        &self,
        source: &str,
        entries: &[&str],
    ) -> Result<FusedPipelines> {
        self.scoped("compile fused kernel", || {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("fused"),
                    source: wgpu::ShaderSource::Wgsl(source.into()),
                });
            let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            };
            let layout = self
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("fused"),
                    entries: &[
                        storage(0, true),
                        storage(1, true),
                        storage(2, false),
                        storage(3, false),
                        storage(4, false),
                    ],
                });
            let pipeline_layout =
                self.device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some("fused"),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
            let passes = entries
                .iter()
                .map(|entry| {
                    self.device
                        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                            label: Some(entry),
                            layout: Some(&pipeline_layout),
                            module: &module,
                            entry_point: Some(entry),
                            compilation_options: Default::default(),
                            cache: None,
                        })
                })
                .collect();
            Ok(FusedPipelines { passes, layout })
        })
    }

    /// Runs `program` over `rows` rows of `inputs` (`None` for an input no
    /// expression reads) whose group key, if any, is below `groups`. At
    /// most [`Self::fused_max_rows`] rows.
    pub fn run_fused(
        &self,
        program: &Program,
        rows: usize,
        groups: usize,
        fold: GroupFold,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput> {
        if rows > self.fused_max_rows(program) {
            return Err(KernelError::InvalidInput {
                kernel: "fused",
                detail: format!(
                    "{rows} rows exceed the launch limit of {}",
                    self.fused_max_rows(program)
                ),
            });
        }
        let pipelines = self.fused_pipelines(program, fold)?;
        let layout = Layout::new(program, rows, groups, fold, inputs)?;
        if rows == 0 {
            return Ok(empty_output(program, groups));
        }
        let mut out = FusedOutput::default();
        let (words, out_words, nblocks) = (layout.data_words, layout.out_words, layout.blocks());
        let (meta, placed) = (&layout.params, &layout.placed);

        let total = self.scoped("fused kernel", || {
            let LaunchBuffers {
                outw,
                blocks,
                flag,
                group,
                inputs: _inputs,
            } = self.launch_buffers(
                &pipelines,
                (words, placed),
                meta,
                out_words,
                2 * nblocks + 1,
            )?;
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("fused"),
                });
            let (x, y) = grid(nblocks as u64);
            let (rx, ry) = grid(layout.workgroups() as u64);
            let timestamps = self
                .device
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY)
                .then(|| {
                    self.device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("fused time"),
                        ty: wgpu::QueryType::Timestamp,
                        count: 2,
                    })
                });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fused"),
                    timestamp_writes: timestamps.as_ref().map(|query_set| {
                        wgpu::ComputePassTimestampWrites {
                            query_set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }
                    }),
                });
                pass.set_bind_group(0, &group, &[]);
                let passes: &[(usize, (u32, u32))] = if fold == GroupFold::Atomics {
                    &[(0, (x, y)), (1, (x, y))][..pipelines.passes.len()]
                } else if !program.reduce.is_empty() {
                    &[(0, (rx, ry))]
                } else if program.compacts() {
                    &[(0, (x, y)), (1, (1, 1)), (2, (x, y))]
                } else {
                    &[(2, (x, y))]
                };
                for &(p, (gx, gy)) in passes {
                    pass.set_pipeline(&pipelines.passes[p]);
                    pass.dispatch_workgroups(gx, gy, 1);
                }
            }
            let small = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("fused count"),
                size: 24,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            encoder.copy_buffer_to_buffer(&blocks, (2 * nblocks * 4) as u64, &small, 0, 4);
            encoder.copy_buffer_to_buffer(&flag, 0, &small, 4, 4);
            if let Some(query_set) = &timestamps {
                let resolved = self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("fused time"),
                    size: 16,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                encoder.resolve_query_set(query_set, 0..2, &resolved, 0);
                encoder.copy_buffer_to_buffer(&resolved, 0, &small, 8, 16);
            }
            self.queue.submit([encoder.finish()]);
            let head = self.map_words(&small)?;
            Ok((head, outw))
        })?;
        let (head, outw) = total;
        let (count, flag) = (head[0], head[1]);
        if self
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
            && let [_, _, b0, b1, e0, e1, ..] = head[..]
        {
            let ticks = (u64::from(e0) | u64::from(e1) << 32)
                .saturating_sub(u64::from(b0) | u64::from(b1) << 32);
            out.kernel_ns =
                Some((ticks as f64 * f64::from(self.queue.get_timestamp_period())) as u64);
        }
        out.bytes_up = (words * 4 + meta.len() * 4) as u64;
        out.bytes_down = 8;
        if flag != 0 {
            out.needs_cpu = true;
            return Ok(out);
        }
        let kept = if program.compacts() {
            count as usize
        } else {
            rows
        };

        // Read back the kept prefix of every region in one copy.
        let copies = layout.kept_ranges(kept);
        let all: usize = copies.iter().map(|c| c.1).sum();
        let words_back = self.scoped("fused read-back", || {
            let staging = self.new_buffer(
                "fused read-back",
                (all.max(1) * 4) as u64,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?;
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            let mut at = 0usize;
            for &(src, len) in &copies {
                if len > 0 {
                    encoder.copy_buffer_to_buffer(
                        &outw,
                        (src * 4) as u64,
                        &staging,
                        (at * 4) as u64,
                        (len * 4) as u64,
                    );
                }
                at += len;
            }
            self.queue.submit([encoder.finish()]);
            self.map_words(&staging)
        })?;
        layout.read_back(program, kept, &words_back, &mut out);
        Ok(out)
    }

    /// The buffers and bind group of one launch of a generated module:
    /// `data` holding the placed inputs, `params`, `outw` and `blocks`
    /// zeroed, and the fallback flag.
    pub(super) fn launch_buffers(
        &self,
        pipelines: &FusedPipelines,
        (data_words, placed): (usize, &[(usize, &[u8])]),
        params: &[u32],
        out_words: usize,
        block_words: usize,
    ) -> Result<LaunchBuffers> {
        let data = self.storage_buffer("fused inputs", data_words.max(1))?;
        for (at, bytes) in placed {
            self.queue.write_buffer(&data, (*at * 4) as u64, bytes);
        }
        let meta = self.init_buffer(
            "fused params",
            bytemuck::cast_slice(params),
            wgpu::BufferUsages::STORAGE,
        )?;
        let outw = self.storage_buffer("fused outputs", out_words)?;
        let blocks = self.storage_buffer("fused blocks", block_words)?;
        let flag = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("fused flag"),
                contents: bytemuck::bytes_of(&0u32),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("fused"),
            layout: &pipelines.layout,
            entries: &[&*data, &*meta, &*outw, &*blocks, &flag]
                .into_iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect::<Vec<_>>(),
        });
        Ok(LaunchBuffers {
            outw,
            blocks,
            flag,
            group,
            inputs: [data, meta],
        })
    }

    /// Maps a `MAP_READ` buffer and copies its words out.
    pub(super) fn map_words(&self, buffer: &wgpu::Buffer) -> Result<Vec<u32>> {
        let slice = buffer.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::WgpuRuntime(format!("read-back: {e}")))?;
        rx.recv()
            .map_err(|_| KernelError::WgpuRuntime("read-back: map callback dropped".into()))?
            .map_err(|e| KernelError::WgpuRuntime(format!("read-back: {e}")))?;
        let words = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| KernelError::WgpuRuntime(format!("read-back: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, u32>(&view)
        };
        buffer.unmap();
        Ok(words)
    }
}
