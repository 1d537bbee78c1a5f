//! Errors of the device layer, grouped by who is at fault: the caller's request,
//! the machine's resources, or Kiln itself.

use crate::backend_kind::BackendKind;

/// The result type of this crate.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Everything that can go wrong in the device layer.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    // --- the caller's request ---
    /// A device specification that does not parse (`--device`, `KILN_DEVICE`).
    #[error("unknown device '{0}': expected auto, cpu, wgpu, wgpu:N, cuda or cuda:N")]
    UnknownDevice(String),

    /// Operands of one kernel launch do not have the same length.
    #[error("{kernel}: operand lengths differ ({detail})")]
    LengthMismatch {
        kernel: &'static str,
        detail: String,
    },

    /// A kernel's input that no launch can accept (a zero dimension, ...).
    #[error("{kernel}: {detail}")]
    InvalidInput {
        kernel: &'static str,
        detail: String,
    },

    /// A vector with a NaN or infinite component, which has no score.
    #[error("{what} has a NaN or infinite component")]
    NonFinite { what: String },

    /// A buffer of one device was handed to a kernel on another.
    #[error("{kernel}: buffer lives on {found}, kernel runs on {expected}")]
    WrongDevice {
        kernel: &'static str,
        expected: BackendKind,
        found: BackendKind,
    },

    /// A setting (an environment variable) whose value does not parse.
    #[error("{name}='{value}': expected {expected}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        expected: &'static str,
    },

    // --- the machine's resources ---
    /// A device allocation that does not fit the device's memory budget (or
    /// failed on purpose, `KILN_INJECT_OOM`). Callers split the batch and
    /// retry, then run it on the CPU (see [`crate::memory`]).
    #[error("{device}: out of device memory for {what} ({requested} bytes): {detail}")]
    OutOfMemory {
        device: String,
        what: &'static str,
        requested: u64,
        detail: String,
    },

    /// The requested backend is not available on this machine.
    #[error("{backend} device not available: {reason}")]
    DeviceNotFound {
        backend: BackendKind,
        reason: String,
    },

    /// A buffer larger than the device accepts.
    #[error("{backend}: buffer of {requested} bytes exceeds the device limit of {limit} bytes")]
    BufferTooLarge {
        backend: BackendKind,
        requested: u64,
        limit: u64,
    },

    /// The CUDA driver reported an error.
    #[error("CUDA driver error: {0}")]
    Cuda(#[from] cudarc::driver::DriverError),

    /// wgpu refused to open a device on an adapter.
    #[error("wgpu: cannot open device: {0}")]
    WgpuRequestDevice(#[from] wgpu::RequestDeviceError),

    /// wgpu failed while waiting for or mapping a buffer.
    #[error("wgpu: {0}")]
    WgpuRuntime(String),

    // --- Kiln itself ---
    /// NVRTC rejected one of Kiln's CUDA sources; `log` is NVRTC's own log.
    #[error("NVRTC failed to compile {kernel}: {log}")]
    CudaCompile { kernel: String, log: String },

    /// A broken invariant inside Kiln.
    #[error("internal error: {0}")]
    Internal(String),

    /// NVRTC (libnvrtc) could not be loaded.
    #[error("NVRTC is not available: {0}")]
    NvrtcMissing(String),
}

impl KernelError {
    /// Whether the device ran out of memory: its budget refused an
    /// allocation, or its driver did. Such an error is retried smaller.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            KernelError::OutOfMemory { .. } => true,
            KernelError::Cuda(e) => e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
            _ => false,
        }
    }

    /// Whether the device itself failed (out of memory after every
    /// fallback, a driver error, a lost or busy adapter) rather than Kiln's
    /// input or settings: running again, or on another machine, may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KernelError::OutOfMemory { .. }
                | KernelError::Cuda(_)
                | KernelError::WgpuRequestDevice(_)
                | KernelError::WgpuRuntime(_)
        )
    }

    /// The error as a reason for EXPLAIN: a refused kernel input gives just
    /// its detail ("decimal division"), anything else its whole message.
    pub fn into_reason(self) -> String {
        match self {
            KernelError::InvalidInput { detail, .. } => detail,
            other => other.to_string(),
        }
    }
}
