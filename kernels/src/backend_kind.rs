//! The backends Kiln runs kernels on, by name: what devices, errors and
//! plans say a thing runs on. Depends on nothing else in the crate (errors
//! name backends, and devices return errors).

use std::fmt;

/// The backends Kiln can run kernels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BackendKind {
    /// NVIDIA GPUs through the CUDA driver (cudarc, NVRTC).
    Cuda,
    /// Any Vulkan, Metal or DX12 adapter through wgpu.
    Wgpu,
    /// The host CPU (rayon).
    Cpu,
}

impl BackendKind {
    /// The lower-case name used on the command line and in EXPLAIN.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cpu => "cpu",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
