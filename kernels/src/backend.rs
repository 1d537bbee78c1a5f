//! The backend abstraction: one trait that every backend implements, and one
//! enum ([`Device`], [`Buffer`]) that callers hold, so that no caller needs a
//! `cfg` or a generic parameter to run on CUDA, wgpu or the CPU.

use std::sync::Arc;

use crate::cpu_backend::CpuDevice;
use crate::cuda_backend::{CudaBuffer, CudaDevice};
use crate::device::{BackendKind, DeviceInfo, DeviceRequest, discover};
use crate::error::{KernelError, Result};
use crate::memory::MemoryBudget;
use crate::wgpu_backend::{WgpuBuffer, WgpuDevice};

/// What every backend provides. Buffers are f32 vectors for now; typed columns
/// (Arrow layouts with validity) join them with the transforms work.
pub trait BackendDevice {
    /// A buffer in this backend's memory.
    type Buffer;

    /// What discovery said about this device.
    fn info(&self) -> &DeviceInfo;

    /// Copies host data into a new device buffer.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;

    /// Copies a device buffer back to the host.
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<f32>>;

    /// `out[i] = a[i] * b[i] + c[i]`, computed on the device.
    fn fma(&self, a: &Self::Buffer, b: &Self::Buffer, c: &Self::Buffer) -> Result<Self::Buffer>;
}

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
        match self {
            Device::Cpu(d) => d.memory(),
            Device::Wgpu(d) => d.memory(),
            Device::Cuda(d) => d.memory(),
        }
    }

    pub fn info(&self) -> &DeviceInfo {
        match self {
            Device::Cpu(d) => d.info(),
            Device::Wgpu(d) => d.info(),
            Device::Cuda(d) => d.info(),
        }
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
}
