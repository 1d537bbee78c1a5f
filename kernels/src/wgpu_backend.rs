//! The wgpu backend: any Vulkan, Metal or DX12 adapter, Mesa's lavapipe included.
//!
//! Shaders are WGSL files under `shaders/`, compiled into pipelines once per
//! device and kept in [`WgpuDevice`]. Every operation runs inside wgpu error
//! scopes, so a validation or out-of-memory error becomes a [`KernelError`]
//! instead of wgpu's default panic.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, OnceLock};

use wgpu::util::DeviceExt;

use crate::backend_device::BackendDevice;
use crate::codegen::numbering::{KeyProgram, Numbering};
use crate::codegen::{ColumnData, FusedOutput, GroupFold, Program};
use crate::device::{BackendKind, DeviceInfo, DeviceType};
use crate::error::{KernelError, Result};
use crate::memory::{Held, MemoryBudget};
use crate::ops::select::{Candidate, TileKeys};

mod encoder;
mod fused;
mod numbering;
mod search;

pub use search::WgpuQueries;

/// Backends wgpu may use. GL is left out: it duplicates Vulkan adapters and
/// has no compute shaders on many drivers.
const BACKENDS: wgpu::Backends = wgpu::Backends::VULKAN
    .union(wgpu::Backends::METAL)
    .union(wgpu::Backends::DX12);

/// Threads per workgroup of the element-wise shaders; matches `@workgroup_size`.
const WORKGROUP_SIZE: u32 = 256;
/// The most workgroups one dispatch dimension may have (WebGPU's limit).
const MAX_WORKGROUPS: u32 = 65_535;

const FMA_WGSL: &str = include_str!("../../shaders/fma.wgsl");
const GEMM_WGSL: &str = include_str!("../../shaders/gemm.wgsl");
const TOPK_WGSL: &str = include_str!("../../shaders/topk.wgsl");
const LAYER_NORM_WGSL: &str = include_str!("../../shaders/layer_norm.wgsl");
const GELU_WGSL: &str = include_str!("../../shaders/gelu.wgsl");
const ATTENTION_WGSL: &str = include_str!("../../shaders/attention.wgsl");
/// The widest head `attention.wgsl` holds in its private accumulator.
const ATTENTION_MAX_HEAD_DIM: usize = 128;

/// Output block of one `gemm.wgsl` workgroup, per side.
const GEMM_TILE: u32 = 64;
/// Threads per workgroup of `topk.wgsl`.
const TOPK_WORKGROUP: u32 = 64;
/// Most corpus rows scored per dispatch.
const MAX_TILE_ROWS: usize = 16_384;

/// The adapters of this process, enumerated once: wgpu instances are costly
/// and an adapter's index must mean the same adapter for the whole run.
fn adapters() -> &'static [wgpu::Adapter] {
    static ADAPTERS: OnceLock<Vec<wgpu::Adapter>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = BACKENDS;
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(BACKENDS))
    })
}

/// Lists the wgpu adapters, or says why there are none.
pub fn discover() -> std::result::Result<Vec<DeviceInfo>, String> {
    let found: Vec<DeviceInfo> = adapters()
        .iter()
        .enumerate()
        .map(|(index, adapter)| {
            let info = adapter.get_info();
            let limits = adapter.limits();
            let device_type = match info.device_type {
                wgpu::DeviceType::DiscreteGpu => DeviceType::DiscreteGpu,
                wgpu::DeviceType::IntegratedGpu => DeviceType::IntegratedGpu,
                wgpu::DeviceType::VirtualGpu => DeviceType::VirtualGpu,
                wgpu::DeviceType::Cpu => DeviceType::Cpu,
                wgpu::DeviceType::Other => DeviceType::Other,
            };
            let driver = [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            DeviceInfo {
                backend: BackendKind::Wgpu,
                index,
                name: info.name.clone(),
                device_type,
                memory_bytes: None,
                details: format!(
                    "{:?}; driver {}; max buffer {} MiB",
                    info.backend,
                    if driver.is_empty() {
                        "unknown"
                    } else {
                        &driver
                    },
                    limits.max_buffer_size / (1024 * 1024)
                ),
            }
        })
        .collect();
    if found.is_empty() {
        Err("no Vulkan, Metal or DX12 adapter found (no GPU driver installed; on Linux \
             Mesa's lavapipe provides a software Vulkan adapter: apt-get install mesa-vulkan-drivers)"
            .to_string())
    } else {
        Ok(found)
    }
}

/// A buffer in wgpu device memory. wgpu forbids empty bindings, so an empty
/// buffer still owns 4 bytes; `len` is the element count that matters.
#[derive(Debug)]
pub struct WgpuBuffer {
    buffer: Held<wgpu::Buffer>,
    len: usize,
}

impl WgpuBuffer {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An open wgpu device with its queue and the pipelines built on it so far.
pub struct WgpuDevice {
    info: DeviceInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    limits: wgpu::Limits,
    /// Every buffer this device allocates reserves its bytes here first.
    memory: Arc<MemoryBudget>,
    fma: OnceLock<wgpu::ComputePipeline>,
    gemm: OnceLock<wgpu::ComputePipeline>,
    layer_norm: OnceLock<wgpu::ComputePipeline>,
    gelu: OnceLock<wgpu::ComputePipeline>,
    attention: OnceLock<wgpu::ComputePipeline>,
    /// `topk.wgsl` pipelines by their K.
    topk: Mutex<HashMap<u32, wgpu::ComputePipeline>>,
    /// Generated fused relational kernels by program fingerprint.
    fused: fused::FusedCache,
    /// Compiled numbering modules by key-program fingerprint.
    numbering: Mutex<HashMap<u64, Arc<fused::FusedPipelines>>>,
    /// Errors that escaped every scope; reported by the next operation.
    uncaptured: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for WgpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuDevice")
            .field("info", &self.info)
            .finish()
    }
}

impl WgpuDevice {
    /// Opens the adapter that discovery listed as `info`.
    pub fn open(info: &DeviceInfo) -> Result<Self> {
        let adapter = adapters()
            .get(info.index)
            .ok_or_else(|| KernelError::DeviceNotFound {
                backend: BackendKind::Wgpu,
                reason: format!("no adapter wgpu:{}", info.index),
            })?;
        // Ask for everything the adapter offers: batch kernels want the
        // largest buffers and bindings the hardware allows.
        let limits = adapter.limits();
        // 64-bit shader types, where the adapter has them, let relational
        // kernels compute on Int64, Float64 and decimal columns.
        // Timestamps around compute passes time fused kernels for EXPLAIN
        // ANALYZE.
        let features = adapter.features()
            & (wgpu::Features::SHADER_INT64
                | wgpu::Features::SHADER_F64
                | wgpu::Features::TIMESTAMP_QUERY);
        let (device, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("kiln"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            }))?;
        // wgpu reports no memory size: no limit unless the session sets one.
        let memory = MemoryBudget::new(info.id(), None)?;
        let uncaptured = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&uncaptured);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = slot.lock() {
                slot.get_or_insert_with(|| e.to_string());
            }
        }));
        Ok(WgpuDevice {
            info: info.clone(),
            device,
            queue,
            limits,
            memory,
            fma: OnceLock::new(),
            gemm: OnceLock::new(),
            layer_norm: OnceLock::new(),
            gelu: OnceLock::new(),
            attention: OnceLock::new(),
            topk: Mutex::new(HashMap::new()),
            fused: Mutex::new(HashMap::new()),
            numbering: Mutex::new(HashMap::new()),
            uncaptured,
        })
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns
    /// whatever they caught into an error: the driver's out-of-memory into
    /// [`KernelError::OutOfMemory`], which callers retry smaller.
    fn scoped<T>(&self, what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        // Out of memory first: using the buffer the driver could not make
        // is a validation error too, which would hide it.
        if let Some(e) = oom {
            return Err(KernelError::OutOfMemory {
                device: self.info.id(),
                what,
                requested: 0,
                detail: format!("the driver: {e}"),
            });
        }
        if let Some(e) = validation {
            return Err(KernelError::WgpuRuntime(format!("{what}: {e}")));
        }
        if let Some(e) = self.uncaptured.lock().ok().and_then(|mut s| s.take()) {
            return Err(KernelError::WgpuRuntime(format!("{what}: {e}")));
        }
        out
    }

    fn check_size(&self, len: usize) -> Result<u64> {
        let bytes = (len as u64) * 4;
        if bytes > self.limits.max_buffer_size {
            return Err(KernelError::BufferTooLarge {
                backend: BackendKind::Wgpu,
                requested: bytes,
                limit: self.limits.max_buffer_size,
            });
        }
        Ok(bytes.max(4))
    }

    fn build_pipeline(&self, label: &str, source: &str, entry: &str) -> wgpu::ComputePipeline {
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        self.device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
    }

    fn fma_pipeline(&self) -> &wgpu::ComputePipeline {
        self.fma
            .get_or_init(|| self.build_pipeline("fma.wgsl", FMA_WGSL, "fma_f32"))
    }

    fn gemm_pipeline(&self) -> &wgpu::ComputePipeline {
        self.gemm
            .get_or_init(|| self.build_pipeline("gemm.wgsl", GEMM_WGSL, "gemm_nt"))
    }

    /// A buffer holding `contents`, its bytes reserved in the budget.
    fn init_buffer(
        &self,
        label: &'static str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<Held<wgpu::Buffer>> {
        let bytes = contents.len().max(4) as u64;
        let reservation = self.memory.reserve(bytes, label)?;
        let buffer = self.created(label, bytes, || self.small_buffer(label, contents, usage))?;
        Ok(Held::new(buffer, reservation))
    }

    /// A buffer of a few parameter words (or an unused binding's
    /// placeholder): too small to count in the budget.
    fn small_buffer(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> wgpu::Buffer {
        let contents: &[u8] = if contents.is_empty() {
            &[0u8; 4]
        } else {
            contents
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            })
    }

    /// A zeroed storage buffer of `elems` words, reserved in the budget.
    fn storage_buffer(&self, label: &'static str, elems: usize) -> Result<Held<wgpu::Buffer>> {
        let size = self.check_size(elems)?;
        self.new_buffer(
            label,
            size,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// A buffer of `size` bytes with `usage` (a read-back's staging buffer),
    /// reserved in the budget.
    pub(crate) fn new_buffer(
        &self,
        label: &'static str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<Held<wgpu::Buffer>> {
        let reservation = self.memory.reserve(size, label)?;
        let buffer = self.created(label, size, || {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        })?;
        Ok(Held::new(buffer, reservation))
    }

    /// Makes a buffer inside its own out-of-memory scope, so that the
    /// driver's refusal is a [`KernelError::OutOfMemory`] wherever the
    /// buffer is made (inside another operation's scope or not).
    fn created<T>(&self, what: &'static str, bytes: u64, make: impl FnOnce() -> T) -> Result<T> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let made = make();
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(KernelError::OutOfMemory {
                device: self.info.id(),
                what,
                requested: bytes,
                detail: format!("the driver: {e}"),
            }),
            None => Ok(made),
        }
    }

    /// Binds `resources` (bindings 0, 1, ...) and dispatches one pass.
    fn run_pass(
        &self,
        label: &str,
        pipeline: &wgpu::ComputePipeline,
        resources: &[wgpu::BindingResource<'_>],
        (x, y): (u32, u32),
    ) {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: resource.clone(),
            })
            .collect();
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout: &layout,
            entries: &entries,
        });
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes: None,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
        self.queue.submit([encoder.finish()]);
    }

    /// Records `c[m×n] = a[m×k] · b[n×k]ᵀ (+ bias)` into `encoder`.
    fn encode_gemm_nt(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        c: &wgpu::Buffer,
        bias: Option<&wgpu::Buffer>,
        [m, n, k]: [u32; 3],
    ) {
        let flags = u32::from(bias.is_some());
        let dummy;
        let bias = match bias {
            Some(b) => b,
            None => {
                dummy = self.small_buffer("no bias", &[], wgpu::BufferUsages::STORAGE);
                &dummy
            }
        };
        let params = self.small_buffer(
            "gemm params",
            bytemuck::bytes_of(&[m, n, k, flags]),
            wgpu::BufferUsages::UNIFORM,
        );
        let pipeline = self.gemm_pipeline();
        let layout = pipeline.get_bind_group_layout(0);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("gemm"),
            layout: &layout,
            entries: &[
                (0, a.as_entire_binding()),
                (1, b.as_entire_binding()),
                (2, c.as_entire_binding()),
                (3, bias.as_entire_binding()),
                (4, params.as_entire_binding()),
            ]
            .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }),
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("gemm"),
            timestamp_writes: None,
        });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(n.div_ceil(GEMM_TILE), m.div_ceil(GEMM_TILE), 1);
    }

    /// Elements per dispatch: the largest binding the device allows, kept a
    /// multiple of the storage offset alignment.
    fn chunk_elems(&self) -> usize {
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment).max(4);
        let bytes = self.limits.max_storage_buffer_binding_size;
        ((bytes / align * align) / 4).max(1) as usize
    }
}

/// Splits a workgroup count over x and y so neither exceeds WebGPU's limit.
fn grid(groups: u64) -> (u32, u32) {
    let x = groups.min(u64::from(MAX_WORKGROUPS));
    (x.max(1) as u32, groups.div_ceil(x.max(1)).max(1) as u32)
}

fn binding(buffer: &wgpu::Buffer, offset_elems: usize, len: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: offset_elems as u64 * 4,
        size: NonZeroU64::new(len as u64 * 4),
    })
}

/// The operations live beside their kernels, in the same files as on CUDA
/// (`fused.rs`, `numbering.rs`, `search.rs`, `encoder.rs`); this is where
/// the backend offers them to [`crate::Device`].
impl BackendDevice for WgpuDevice {
    type Buffer = WgpuBuffer;
    type Queries = WgpuQueries;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    fn fused_check(&self, program: &Program) -> std::result::Result<(), String> {
        WgpuDevice::fused_check(self, program)
    }

    fn fold_support(&self, program: &Program, fold: GroupFold) -> std::result::Result<(), String> {
        WgpuDevice::fold_support(self, program, fold)
    }

    fn atomic_fold_check(&self, program: &Program) -> std::result::Result<(), String> {
        WgpuDevice::fused_check(self, program)
            .and_then(|()| crate::codegen::wgsl::generate_atomic(program).map(|_| ()))
    }

    fn fused_max_rows(&self, program: &Program) -> usize {
        WgpuDevice::fused_max_rows(self, program)
    }

    fn run_fused(
        &self,
        program: &Program,
        rows: usize,
        groups: usize,
        fold: GroupFold,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput> {
        WgpuDevice::run_fused(self, program, rows, groups, fold, inputs)
    }

    fn numbering_support(&self, program: &KeyProgram) -> std::result::Result<(), String> {
        WgpuDevice::numbering_support(self, program)
    }

    fn number_groups(
        &self,
        program: &KeyProgram,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<Numbering> {
        WgpuDevice::number_groups(self, program, rows, inputs)
    }

    fn upload_queries(&self, prepared: &[f32], dim: usize) -> Result<WgpuQueries> {
        WgpuDevice::upload_queries(self, prepared, dim)
    }

    fn max_tile_rows(&self, dim: usize, queries: usize) -> usize {
        WgpuDevice::max_tile_rows(self, dim, queries)
    }

    fn score_and_select(
        &self,
        queries: &WgpuQueries,
        tile: &[f32],
        ids: &[u64],
        keys: &TileKeys,
        k: usize,
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        WgpuDevice::score_and_select(self, queries, tile, ids, keys, k, thresholds)
    }

    fn upload(&self, data: &[f32]) -> Result<WgpuBuffer> {
        self.check_size(data.len())?;
        self.scoped("upload", || {
            let buffer = self.init_buffer(
                "kiln upload",
                bytemuck::cast_slice(data),
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            )?;
            Ok(WgpuBuffer {
                buffer,
                len: data.len(),
            })
        })
    }

    fn download(&self, src: &WgpuBuffer) -> Result<Vec<f32>> {
        if src.len == 0 {
            return Ok(Vec::new());
        }
        let bytes = src.len as u64 * 4;
        let staging = self.scoped("download", || {
            let staging = self.new_buffer(
                "kiln download",
                bytes,
                wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            )?;
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            encoder.copy_buffer_to_buffer(&src.buffer, 0, &staging, 0, bytes);
            self.queue.submit([encoder.finish()]);
            Ok(staging)
        })?;
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| KernelError::WgpuRuntime(format!("download: {e}")))?;
        rx.recv()
            .map_err(|_| KernelError::WgpuRuntime("download: map callback dropped".into()))?
            .map_err(|e| KernelError::WgpuRuntime(format!("download: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| KernelError::WgpuRuntime(format!("download: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, f32>(&view)
        };
        staging.unmap();
        Ok(out)
    }

    fn fma(&self, a: &WgpuBuffer, b: &WgpuBuffer, c: &WgpuBuffer) -> Result<WgpuBuffer> {
        let n = a.len;
        let size = self.check_size(n)?;
        self.scoped("fma", || {
            let out = self.new_buffer(
                "kiln fma out",
                size,
                wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            )?;
            let pipeline = self.fma_pipeline();
            let layout = pipeline.get_bind_group_layout(0);
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("fma") });
            let chunk = self.chunk_elems();
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let params = self.small_buffer(
                    "fma params",
                    bytemuck::bytes_of(&[len as u32, 0, 0, 0]),
                    wgpu::BufferUsages::UNIFORM,
                );
                let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("fma"),
                    layout: &layout,
                    entries: &[
                        (0, binding(&a.buffer, start, len)),
                        (1, binding(&b.buffer, start, len)),
                        (2, binding(&c.buffer, start, len)),
                        (3, binding(&out, start, len)),
                        (4, params.as_entire_binding()),
                    ]
                    .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource }),
                });
                let groups = (len as u64)
                    .div_ceil(u64::from(WORKGROUP_SIZE))
                    .min(u64::from(MAX_WORKGROUPS)) as u32;
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("fma"),
                    timestamp_writes: None,
                });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &group, &[]);
                pass.dispatch_workgroups(groups, 1, 1);
                drop(pass);
                start += len;
            }
            self.queue.submit([encoder.finish()]);
            Ok(WgpuBuffer {
                buffer: out,
                len: n,
            })
        })
    }
}
