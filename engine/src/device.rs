//! The devices Kiln's operators run on, opened once per process and shared:
//! opening a wgpu device or a CUDA context is costly, and every operator of
//! every query on the same device should reuse it.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use datafusion::common::DataFusionError;
use datafusion::common::config::ConfigOptions;
use kiln_kernels::{
    BackendKind, Device, DeviceInfo, DeviceRequest, Discovery, KernelError, discover,
};

use crate::model::precision::Precision;
use crate::options::KilnOptions;

/// The device a cluster role pinned this process to, if any.
static PINNED: OnceLock<DeviceRequest> = OnceLock::new();

/// Pins this process to one device: from now on every `kiln.device` this
/// process reads resolves to `request`, whatever the session says. A Kiln
/// executor owns one device (`kiln executor --device`) and runs tasks of
/// sessions planned elsewhere, whose options name the client's device; a
/// scheduler pins the CPU, as it plans but runs no kernels. Fails if the
/// process is already pinned to another device.
pub fn pin_process_device(request: DeviceRequest) -> Result<(), KernelError> {
    let pinned = *PINNED.get_or_init(|| request);
    if pinned != request {
        return Err(KernelError::Internal(format!(
            "this process is pinned to {pinned}, not {request}"
        )));
    }
    Ok(())
}

/// The device a session's `kiln.device` value asks for in this process:
/// the pinned device where a cluster role pinned one, else the value parsed.
pub fn requested(option: &str) -> Result<DeviceRequest, KernelError> {
    match PINNED.get() {
        Some(pinned) => Ok(*pinned),
        None => option.parse(),
    }
}

/// The device a session's options ask for (`kiln.device`; the default,
/// `auto`, for a session without Kiln's options), resolved on this machine
/// without opening it: the one place Kiln reads the option for planning,
/// operators and cluster codecs alike. A pinned process answers with its
/// own device ([`requested`]).
pub fn session_info(options: &ConfigOptions) -> Result<DeviceInfo, KernelError> {
    let value = match options.extensions.get::<KilnOptions>() {
        Some(kiln) => requested(&kiln.device)?,
        None => requested(&KilnOptions::default().device)?,
    };
    resolve(value)
}

/// The device Kiln's own kernels (embeddings, vector search) run on for a
/// session: [`session_info`] through [`kernel_device`].
pub fn session_kernel_info(options: &ConfigOptions) -> Result<DeviceInfo, KernelError> {
    session_info(options).map(kernel_device)
}

/// [`session_kernel_info`], opened (once per process) with the session's
/// memory limit.
pub fn session_kernel_device(options: &ConfigOptions) -> Result<Device, DataFusionError> {
    let info = session_kernel_info(options).map_err(|e| DataFusionError::External(Box::new(e)))?;
    open_for_session(&info, options)
}

/// The encoder precision the session's `kiln.embed_precision` resolves to
/// on `device` (see [`Precision::resolve`]): a mode the device cannot run
/// is an error naming why.
pub fn session_precision(
    options: &ConfigOptions,
    device: &DeviceInfo,
) -> Result<Precision, DataFusionError> {
    let requested = match options.extensions.get::<KilnOptions>() {
        Some(kiln) => kiln.embed_precision()?,
        None => Precision::default(),
    };
    requested
        .resolve(device)
        .map_err(|e| DataFusionError::External(Box::new(e)))
}

/// The open device for `info` (see [`open_shared`]), its memory budget
/// limited as the session's `kiln.device_memory_limit` says.
pub fn open_for_session(
    info: &DeviceInfo,
    options: &ConfigOptions,
) -> Result<Device, DataFusionError> {
    let device = open_shared(info).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let limit = match options.extensions.get::<KilnOptions>() {
        Some(kiln) => kiln.device_memory_limit(info)?,
        None => KilnOptions::default().device_memory_limit(info)?,
    };
    device.memory().set_limit(limit);
    Ok(device)
}

/// The device `request` resolves to on this machine, without opening it
/// (for plans and EXPLAIN).
pub fn resolve(request: DeviceRequest) -> Result<DeviceInfo, KernelError> {
    request.resolve(discovered()).cloned()
}

/// The machine's devices, discovered once per process: planning resolves
/// `kiln.device` for every statement, and discovery probes the drivers.
pub fn discovered() -> &'static Discovery {
    static FOUND: OnceLock<Discovery> = OnceLock::new();
    FOUND.get_or_init(discover)
}

/// The device Kiln's own kernels (embeddings, vector search) actually run
/// on when `info` is asked for: itself, except CUDA without cuBLAS (its
/// encoder and search need it), which runs them on the CPU. Plans, EXPLAIN
/// and summaries name this device, never one that does not do the work.
pub fn kernel_device(info: DeviceInfo) -> DeviceInfo {
    match info.backend {
        BackendKind::Cuda if !kiln_kernels::cuda_backend::cublas_present() => {
            kiln_kernels::cpu_backend::info()
        }
        _ => info,
    }
}

/// The open device for `info`, opened on first use.
pub fn open_shared(info: &DeviceInfo) -> Result<Device, KernelError> {
    static OPEN: OnceLock<Mutex<HashMap<String, Device>>> = OnceLock::new();
    let open = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
    let mut open = open
        .lock()
        .map_err(|_| KernelError::Internal("device cache poisoned".into()))?;
    if let Some(device) = open.get(&info.id()) {
        return Ok(device.clone());
    }
    let device = Device::open_info(info)?;
    open.insert(info.id(), device.clone());
    Ok(device)
}
