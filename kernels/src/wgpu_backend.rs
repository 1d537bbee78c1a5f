//! The wgpu backend: any Vulkan, Metal or DX12 adapter, Mesa's lavapipe included.
//!
//! Shaders are WGSL files under `shaders/`, compiled into pipelines once per
//! device and kept in [`WgpuDevice`]. Every operation runs inside wgpu error
//! scopes, so a validation or out-of-memory error becomes a [`KernelError`]
//! instead of wgpu's default panic.

use std::num::NonZeroU64;
use std::sync::{Arc, Mutex, OnceLock};

use wgpu::util::DeviceExt;

use crate::backend::BackendDevice;
use crate::device::{BackendKind, DeviceInfo, DeviceType};
use crate::error::{KernelError, Result};

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
    buffer: wgpu::Buffer,
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
    fma: OnceLock<wgpu::ComputePipeline>,
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
        let (device, queue) =
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("kiln"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                ..Default::default()
            }))?;
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
            fma: OnceLock::new(),
            uncaptured,
        })
    }

    /// Runs `f` inside validation and out-of-memory error scopes and turns
    /// whatever they caught into an error.
    fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let validation = pollster::block_on(validation.pop());
        let oom = pollster::block_on(oom.pop());
        if let Some(e) = validation.or(oom) {
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

    fn fma_pipeline(&self) -> &wgpu::ComputePipeline {
        self.fma.get_or_init(|| {
            let module = self
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("fma.wgsl"),
                    source: wgpu::ShaderSource::Wgsl(FMA_WGSL.into()),
                });
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some("fma_f32"),
                    layout: None,
                    module: &module,
                    entry_point: Some("fma_f32"),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })
    }

    /// Elements per dispatch: the largest binding the device allows, kept a
    /// multiple of the storage offset alignment.
    fn chunk_elems(&self) -> usize {
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment).max(4);
        let bytes = self.limits.max_storage_buffer_binding_size;
        ((bytes / align * align) / 4).max(1) as usize
    }
}

fn binding(buffer: &wgpu::Buffer, offset_elems: usize, len: usize) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: offset_elems as u64 * 4,
        size: NonZeroU64::new(len as u64 * 4),
    })
}

impl BackendDevice for WgpuDevice {
    type Buffer = WgpuBuffer;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn upload(&self, data: &[f32]) -> Result<WgpuBuffer> {
        self.check_size(data.len())?;
        self.scoped("upload", || {
            let contents: &[u8] = if data.is_empty() {
                &[0u8; 4]
            } else {
                bytemuck::cast_slice(data)
            };
            let buffer = self
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("kiln upload"),
                    contents,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_SRC
                        | wgpu::BufferUsages::COPY_DST,
                });
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
            let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln download"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
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
            let out = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln fma out"),
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let pipeline = self.fma_pipeline();
            let layout = pipeline.get_bind_group_layout(0);
            let mut encoder = self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("fma") });
            let chunk = self.chunk_elems();
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let params = self
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some("fma params"),
                        contents: bytemuck::bytes_of(&[len as u32, 0, 0, 0]),
                        usage: wgpu::BufferUsages::UNIFORM,
                    });
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
