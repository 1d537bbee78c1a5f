//! Device discovery and selection.
//!
//! [`crate::discover`] lists every device Kiln can use and, for each backend
//! that has none, the reason. It never panics: a machine without libcuda, without a
//! Vulkan loader or without any GPU is an ordinary answer, not an error.
//! [`DeviceRequest`] is what a user asks for (`--device`, `KILN_DEVICE`), and
//! [`DeviceRequest::resolve`] turns it into one device of a [`Discovery`].

use std::fmt;
use std::str::FromStr;

use crate::error::{KernelError, Result};

pub use crate::backend_kind::BackendKind;

/// What kind of hardware a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    DiscreteGpu,
    IntegratedGpu,
    VirtualGpu,
    /// A software rasterizer such as Mesa's lavapipe, or the host CPU itself.
    Cpu,
    Other,
}

impl DeviceType {
    pub fn name(self) -> &'static str {
        match self {
            DeviceType::DiscreteGpu => "discrete-gpu",
            DeviceType::IntegratedGpu => "integrated-gpu",
            DeviceType::VirtualGpu => "virtual-gpu",
            DeviceType::Cpu => "cpu",
            DeviceType::Other => "other",
        }
    }

    /// Whether this is real GPU hardware (what `auto` is allowed to pick).
    pub fn is_hardware_gpu(self) -> bool {
        matches!(self, DeviceType::DiscreteGpu | DeviceType::IntegratedGpu)
    }
}

impl fmt::Display for DeviceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One device found on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub backend: BackendKind,
    /// Index among the devices of the same backend (`cuda:0`, `wgpu:1`, ...).
    pub index: usize,
    pub name: String,
    pub device_type: DeviceType,
    /// Total device memory in bytes, where the backend reports it (wgpu does not).
    pub memory_bytes: Option<u64>,
    /// Extra facts worth showing: driver, compute capability, API, cores.
    pub details: String,
}

impl DeviceInfo {
    /// `backend:index`, e.g. `wgpu:0`; the form `--device` accepts.
    pub fn id(&self) -> String {
        format!("{}:{}", self.backend, self.index)
    }
}

/// A backend with no usable device, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsentBackend {
    pub backend: BackendKind,
    pub reason: String,
}

/// Everything [`discover`] found.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub devices: Vec<DeviceInfo>,
    pub absent: Vec<AbsentBackend>,
}

impl Discovery {
    /// The devices of one backend, in index order.
    pub fn of(&self, backend: BackendKind) -> impl Iterator<Item = &DeviceInfo> {
        self.devices.iter().filter(move |d| d.backend == backend)
    }

    /// Why `backend` has no device, if it has none.
    pub fn absence(&self, backend: BackendKind) -> Option<&str> {
        self.absent
            .iter()
            .find(|a| a.backend == backend)
            .map(|a| a.reason.as_str())
    }

    fn not_found(&self, backend: BackendKind) -> KernelError {
        KernelError::DeviceNotFound {
            backend,
            reason: self
                .absence(backend)
                .unwrap_or("no device of this backend")
                .to_string(),
        }
    }
}

/// What the user asked for: `auto`, a backend, or a backend and an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// CUDA if present, else a hardware wgpu GPU, else the CPU. Never a
    /// software adapter such as lavapipe: that one must be asked for by name.
    #[default]
    Auto,
    Backend(BackendKind, Option<usize>),
}

impl DeviceRequest {
    /// Reads `KILN_DEVICE`; `auto` when it is unset or empty.
    pub fn from_env() -> Result<Self> {
        match std::env::var("KILN_DEVICE") {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(DeviceRequest::Auto),
        }
    }

    /// Picks the device this request names among those discovered.
    pub fn resolve<'a>(&self, discovery: &'a Discovery) -> Result<&'a DeviceInfo> {
        match *self {
            DeviceRequest::Auto => discovery
                .of(BackendKind::Cuda)
                .next()
                .or_else(|| {
                    discovery
                        .of(BackendKind::Wgpu)
                        .find(|d| d.device_type == DeviceType::DiscreteGpu)
                })
                .or_else(|| {
                    discovery
                        .of(BackendKind::Wgpu)
                        .find(|d| d.device_type.is_hardware_gpu())
                })
                .or_else(|| discovery.of(BackendKind::Cpu).next())
                .ok_or_else(|| discovery.not_found(BackendKind::Cpu)),
            DeviceRequest::Backend(backend, None) => {
                // Among several adapters of one backend, prefer real hardware.
                let mut candidates: Vec<&DeviceInfo> = discovery.of(backend).collect();
                candidates.sort_by_key(|d| match d.device_type {
                    DeviceType::DiscreteGpu => 0,
                    DeviceType::IntegratedGpu => 1,
                    DeviceType::VirtualGpu => 2,
                    DeviceType::Other => 3,
                    DeviceType::Cpu => 4,
                });
                candidates
                    .first()
                    .copied()
                    .ok_or_else(|| discovery.not_found(backend))
            }
            DeviceRequest::Backend(backend, Some(index)) => discovery
                .of(backend)
                .find(|d| d.index == index)
                .ok_or_else(|| {
                    let count = discovery.of(backend).count();
                    if count == 0 {
                        discovery.not_found(backend)
                    } else {
                        KernelError::DeviceNotFound {
                            backend,
                            reason: format!(
                                "no device {backend}:{index}; this machine has {count} ({backend}:0..{backend}:{})",
                                count - 1
                            ),
                        }
                    }
                }),
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = KernelError;

    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim().to_ascii_lowercase();
        let (name, index) = match spec.split_once(':') {
            Some((name, index)) => {
                let index = index
                    .parse::<usize>()
                    .map_err(|_| KernelError::UnknownDevice(s.to_string()))?;
                (name, Some(index))
            }
            None => (spec.as_str(), None),
        };
        let backend = match name {
            "auto" if index.is_none() => return Ok(DeviceRequest::Auto),
            "cuda" | "gpu" => BackendKind::Cuda,
            "wgpu" | "vulkan" => BackendKind::Wgpu,
            "cpu" => BackendKind::Cpu,
            _ => return Err(KernelError::UnknownDevice(s.to_string())),
        };
        Ok(DeviceRequest::Backend(backend, index))
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRequest::Auto => f.write_str("auto"),
            DeviceRequest::Backend(b, None) => write!(f, "{b}"),
            DeviceRequest::Backend(b, Some(i)) => write!(f, "{b}:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(backend: BackendKind, index: usize, device_type: DeviceType) -> DeviceInfo {
        DeviceInfo {
            backend,
            index,
            name: format!("{backend}{index}"),
            device_type,
            memory_bytes: None,
            details: String::new(),
        }
    }

    fn lavapipe_only() -> Discovery {
        Discovery {
            devices: vec![
                dev(BackendKind::Wgpu, 0, DeviceType::Cpu),
                dev(BackendKind::Cpu, 0, DeviceType::Cpu),
            ],
            absent: vec![AbsentBackend {
                backend: BackendKind::Cuda,
                reason: "libcuda not found".into(),
            }],
        }
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            "auto".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Auto
        );
        assert_eq!(
            "CUDA:1".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Backend(BackendKind::Cuda, Some(1))
        );
        assert_eq!(
            "wgpu".parse::<DeviceRequest>().unwrap(),
            DeviceRequest::Backend(BackendKind::Wgpu, None)
        );
        for bad in ["tpu", "cuda:x", "auto:0", ""] {
            let err = bad.parse::<DeviceRequest>().unwrap_err();
            assert!(err.to_string().contains("unknown device"), "{bad}: {err}");
        }
    }

    #[test]
    fn auto_never_picks_lavapipe() {
        let d = lavapipe_only();
        assert_eq!(
            DeviceRequest::Auto.resolve(&d).unwrap().backend,
            BackendKind::Cpu
        );
        let wgpu = DeviceRequest::Backend(BackendKind::Wgpu, None);
        assert_eq!(wgpu.resolve(&d).unwrap().device_type, DeviceType::Cpu);
    }

    #[test]
    fn auto_prefers_cuda_then_hardware_wgpu() {
        let mut d = lavapipe_only();
        d.devices
            .push(dev(BackendKind::Wgpu, 1, DeviceType::IntegratedGpu));
        assert_eq!(DeviceRequest::Auto.resolve(&d).unwrap().id(), "wgpu:1");
        let wgpu = DeviceRequest::Backend(BackendKind::Wgpu, None);
        assert_eq!(wgpu.resolve(&d).unwrap().id(), "wgpu:1");
        d.devices
            .push(dev(BackendKind::Cuda, 0, DeviceType::DiscreteGpu));
        assert_eq!(DeviceRequest::Auto.resolve(&d).unwrap().id(), "cuda:0");
    }

    #[test]
    fn missing_backend_says_why() {
        let d = lavapipe_only();
        let err = DeviceRequest::Backend(BackendKind::Cuda, None)
            .resolve(&d)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "cuda device not available: libcuda not found");
        let err = DeviceRequest::Backend(BackendKind::Wgpu, Some(3))
            .resolve(&d)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no device wgpu:3"), "{err}");
    }
}
