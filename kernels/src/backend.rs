//! The backend abstraction: one trait that every backend implements
//! ([`BackendDevice`], in `backend_device.rs`), and one enum ([`Device`],
//! with [`Buffer`] and [`Queries`]) that callers hold and that dispatches
//! each operation once, so that no caller needs a `cfg`, a generic parameter
//! or a backend's own type to run on CUDA, wgpu or the CPU.

use std::sync::Arc;

use crate::codegen::numbering::{KeyProgram, Numbering};
use crate::codegen::{ColumnData, FusedOutput, GroupFold, Program};
use crate::cpu_backend::CpuDevice;
use crate::cuda_backend::{CudaBuffer, CudaDevice, CudaQueries};
use crate::device::{AbsentBackend, BackendKind, DeviceInfo, DeviceRequest, Discovery};
use crate::error::{KernelError, Result};
use crate::memory::MemoryBudget;
use crate::ops::select::{Candidate, TileKeys};
use crate::wgpu_backend::{WgpuBuffer, WgpuDevice, WgpuQueries};

pub use crate::backend_device::BackendDevice;

/// An open device of any backend. Cheap to clone.
#[derive(Clone)]
pub enum Device {
    Cpu(Arc<CpuDevice>),
    Wgpu(Arc<WgpuDevice>),
    Cuda(Arc<CudaDevice>),
}

/// A buffer on some device; it can only be used with the device that made it.
#[derive(Debug)]
pub enum Buffer {
    Cpu(Vec<f32>),
    Wgpu(WgpuBuffer),
    Cuda(CudaBuffer),
}

impl Buffer {
    pub fn backend(&self) -> BackendKind {
        match self {
            Buffer::Cpu(_) => BackendKind::Cpu,
            Buffer::Wgpu(_) => BackendKind::Wgpu,
            Buffer::Cuda(_) => BackendKind::Cuda,
        }
    }

    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::Cpu(v) => v.len(),
            Buffer::Wgpu(b) => b.len(),
            Buffer::Cuda(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A search's queries, uploaded once to the device that will score them.
#[derive(Debug)]
pub enum Queries {
    Cpu(()),
    Wgpu(WgpuQueries),
    Cuda(CudaQueries),
}

impl Queries {
    pub fn backend(&self) -> BackendKind {
        match self {
            Queries::Cpu(_) => BackendKind::Cpu,
            Queries::Wgpu(_) => BackendKind::Wgpu,
            Queries::Cuda(_) => BackendKind::Cuda,
        }
    }
}

/// Runs `$body` with `$d` bound to whichever backend `$device` is.
macro_rules! dispatch {
    ($device:expr, $d:ident => $body:expr) => {
        match $device {
            Device::Cpu($d) => $body,
            Device::Wgpu($d) => $body,
            Device::Cuda($d) => $body,
        }
    };
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({} {})", self.info().id(), self.info().name)
    }
}

/// Unwraps the buffers of one kernel's operands for backend `$variant`, or
/// reports the first operand that lives elsewhere.
macro_rules! operands {
    ($kernel:literal, $variant:ident, $($buf:ident),+) => {
        ($(match $buf {
            Buffer::$variant(b) => b,
            other => {
                return Err(KernelError::WrongDevice {
                    kernel: $kernel,
                    expected: BackendKind::$variant,
                    found: other.backend(),
                })
            }
        }),+)
    };
}

impl Device {
    /// Opens the device `request` names among the devices of this machine.
    pub fn open(request: DeviceRequest) -> Result<Device> {
        let discovery = discover();
        Device::open_info(request.resolve(&discovery)?)
    }

    /// Opens a device that discovery found.
    pub fn open_info(info: &DeviceInfo) -> Result<Device> {
        Ok(match info.backend {
            BackendKind::Cpu => Device::Cpu(Arc::new(CpuDevice::new(info.clone())?)),
            BackendKind::Wgpu => Device::Wgpu(Arc::new(WgpuDevice::open(info)?)),
            BackendKind::Cuda => Device::Cuda(Arc::new(CudaDevice::open(info)?)),
        })
    }

    /// The host CPU; always available (an error only for a bad
    /// `KILN_INJECT_OOM`).
    pub fn cpu() -> Result<Device> {
        Ok(Device::Cpu(Arc::new(CpuDevice::new(
            crate::cpu_backend::info(),
        )?)))
    }

    /// This device's memory budget: every allocation on it reserves here.
    pub fn memory(&self) -> &Arc<MemoryBudget> {
        dispatch!(self, d => d.memory())
    }

    pub fn info(&self) -> &DeviceInfo {
        dispatch!(self, d => d.info())
    }

    pub fn backend(&self) -> BackendKind {
        self.info().backend
    }

    pub fn upload(&self, data: &[f32]) -> Result<Buffer> {
        Ok(match self {
            Device::Cpu(d) => Buffer::Cpu(d.upload(data)?),
            Device::Wgpu(d) => Buffer::Wgpu(d.upload(data)?),
            Device::Cuda(d) => Buffer::Cuda(d.upload(data)?),
        })
    }

    pub fn download(&self, buffer: &Buffer) -> Result<Vec<f32>> {
        match self {
            Device::Cpu(d) => d.download(operands!("download", Cpu, buffer)),
            Device::Wgpu(d) => d.download(operands!("download", Wgpu, buffer)),
            Device::Cuda(d) => d.download(operands!("download", Cuda, buffer)),
        }
    }

    /// `out[i] = a[i] * b[i] + c[i]` on this device.
    pub fn fma(&self, a: &Buffer, b: &Buffer, c: &Buffer) -> Result<Buffer> {
        if a.len() != b.len() || a.len() != c.len() {
            return Err(KernelError::LengthMismatch {
                kernel: "fma",
                detail: format!("a: {}, b: {}, c: {}", a.len(), b.len(), c.len()),
            });
        }
        Ok(match self {
            Device::Cpu(d) => {
                let (a, b, c) = operands!("fma", Cpu, a, b, c);
                Buffer::Cpu(d.fma(a, b, c)?)
            }
            Device::Wgpu(d) => {
                let (a, b, c) = operands!("fma", Wgpu, a, b, c);
                Buffer::Wgpu(d.fma(a, b, c)?)
            }
            Device::Cuda(d) => {
                let (a, b, c) = operands!("fma", Cuda, a, b, c);
                Buffer::Cuda(d.fma(a, b, c)?)
            }
        })
    }

    /// Why this device cannot run `program` as one fused kernel, if it
    /// cannot (compiles and caches the kernel).
    pub fn fused_support(&self, program: &Program) -> Result<(), String> {
        self.fold_support(program, GroupFold::Tiles)
    }

    /// Whether the module of `program` with `fold` compiles here.
    pub fn fold_support(&self, program: &Program, fold: GroupFold) -> Result<(), String> {
        dispatch!(self, d => d.fold_support(program, fold))
    }

    /// Like [`Device::fused_support`] without compiling: whether the code
    /// generator and the device's features take `program`.
    pub fn fused_check(&self, program: &Program) -> Result<(), String> {
        dispatch!(self, d => d.fused_check(program))
    }

    /// The most rows one [`Device::run_fused`] launch takes.
    pub fn fused_max_rows(&self, program: &Program) -> usize {
        dispatch!(self, d => d.fused_max_rows(program))
    }

    /// Runs `program` over `rows` rows of `inputs` on this device.
    pub fn run_fused(
        &self,
        program: &Program,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput> {
        self.run_grouped(program, rows, 1, GroupFold::Tiles, inputs)
    }

    /// Why this device has no [`GroupFold::Atomics`] for `program`, without
    /// compiling it.
    pub fn atomic_fold_check(&self, program: &Program) -> Result<(), String> {
        dispatch!(self, d => d.atomic_fold_check(program))
    }

    /// Like [`Device::atomic_fold_check`], compiling (and caching) the kernel.
    pub fn atomic_fold_support(&self, program: &Program) -> Result<(), String> {
        self.fold_support(program, GroupFold::Atomics)
    }

    /// Why this device cannot number `program`'s keys, if it cannot
    /// (compiles and caches the module).
    pub fn numbering_support(&self, program: &KeyProgram) -> Result<(), String> {
        dispatch!(self, d => d.numbering_support(program))
    }

    /// Numbers the GROUP BY keys of `rows` rows on the device (see
    /// [`crate::codegen::numbering`]).
    pub fn number_groups(
        &self,
        program: &KeyProgram,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<Numbering> {
        dispatch!(self, d => d.number_groups(program, rows, inputs))
    }

    /// Runs a grouped program of reductions whose group key takes values
    /// below `groups` (at most [`crate::codegen::MAX_GROUPS`] with
    /// [`GroupFold::Tiles`]): [`FusedOutput::reduced`] holds every reduction
    /// of every group.
    pub fn run_grouped(
        &self,
        program: &Program,
        rows: usize,
        groups: usize,
        fold: GroupFold,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput> {
        dispatch!(self, d => d.run_fused(program, rows, groups, fold, inputs))
    }

    /// Uploads a search's prepared queries (row-major, `dim` wide) once.
    pub fn upload_queries(&self, prepared: &[f32], dim: usize) -> Result<Queries> {
        Ok(match self {
            Device::Cpu(d) => Queries::Cpu(d.upload_queries(prepared, dim)?),
            Device::Wgpu(d) => Queries::Wgpu(d.upload_queries(prepared, dim)?),
            Device::Cuda(d) => Queries::Cuda(d.upload_queries(prepared, dim)?),
        })
    }

    /// The most corpus rows one [`Device::score_and_select`] takes.
    pub fn max_tile_rows(&self, dim: usize, queries: usize) -> usize {
        dispatch!(self, d => d.max_tile_rows(dim, queries))
    }

    /// Scores `tile` against `queries` on this device and selects each
    /// query's candidates at or above its threshold.
    pub fn score_and_select(
        &self,
        queries: &Queries,
        tile: &[f32],
        ids: &[u64],
        keys: &TileKeys,
        k: usize,
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        let wrong = |found: BackendKind| KernelError::WrongDevice {
            kernel: "vector search",
            expected: self.backend(),
            found,
        };
        match (self, queries) {
            (Device::Cpu(d), Queries::Cpu(q)) => {
                d.score_and_select(q, tile, ids, keys, k, thresholds)
            }
            (Device::Wgpu(d), Queries::Wgpu(q)) => {
                d.score_and_select(q, tile, ids, keys, k, thresholds)
            }
            (Device::Cuda(d), Queries::Cuda(q)) => {
                d.score_and_select(q, tile, ids, keys, k, thresholds)
            }
            (_, other) => Err(wrong(other.backend())),
        }
    }
}

/// Finds every device of every backend. Never panics.
pub fn discover() -> Discovery {
    let mut discovery = Discovery::default();
    for (backend, found) in [
        (BackendKind::Cuda, crate::cuda_backend::discover()),
        (BackendKind::Wgpu, crate::wgpu_backend::discover()),
    ] {
        match found {
            Ok(devices) if !devices.is_empty() => discovery.devices.extend(devices),
            Ok(_) => discovery.absent.push(AbsentBackend {
                backend,
                reason: "no device found".to_string(),
            }),
            Err(reason) => discovery.absent.push(AbsentBackend { backend, reason }),
        }
    }
    discovery.devices.push(crate::cpu_backend::info());
    discovery
}
