//! The CUDA backend: NVIDIA GPUs through cudarc's dynamic loading.
//!
//! Nothing of CUDA is needed to build Kiln. At run time libcuda is looked for
//! first and its absence is an ordinary "not found" with the reason; kernels
//! are CUDA C under `kernels/src/cuda/`, compiled by NVRTC (libnvrtc, loaded the
//! same way) for the device's own architecture and cached per device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

mod encoder;
mod fused;
mod numbering;
mod search;

pub use encoder::{CudaDense, CudaTensor, MAX_HEAD_DIM};
pub use search::{CudaQueries, cublas_present};

use crate::backend_device::BackendDevice;
use crate::codegen::numbering::{KeyProgram, Numbering};
use crate::codegen::{ColumnData, FusedOutput, GroupFold, Program, max_launch_rows};
use crate::device::{BackendKind, DeviceInfo, DeviceType};
use crate::error::{KernelError, Result};
use crate::memory::{Held, MemoryBudget, Reservation};
use crate::ops::select::{Candidate, TileKeys};

/// Every CUDA source of Kiln, by file name. Tests compile each through NVRTC.
pub const SOURCES: &[(&str, &str)] = &[
    ("fma.cu", include_str!("cuda/fma.cu")),
    ("topk.cu", include_str!("cuda/topk.cu")),
    ("encoder.cu", include_str!("cuda/encoder.cu")),
];

const BLOCK: u32 = 256;
/// Grid cap for grid-stride kernels: enough blocks to fill any current GPU.
const MAX_BLOCKS: u32 = 65_535;

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; no CUDA call.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Lists the CUDA devices, or says why there are none.
pub fn discover() -> std::result::Result<Vec<DeviceInfo>, String> {
    if !driver_present() {
        return Err(
            "libcuda not found (no NVIDIA driver on this machine, or libcuda.so.1 \
                    is not on the loader path)"
                .to_string(),
        );
    }
    let count = CudaContext::device_count()
        .map_err(|e| format!("the CUDA driver is installed but failed to initialize: {e}"))?;
    let mut devices = Vec::new();
    for index in 0..count.max(0) as usize {
        let ctx = CudaContext::new(index).map_err(|e| format!("cuda:{index}: {e}"))?;
        let name = ctx.name().map_err(|e| format!("cuda:{index}: {e}"))?;
        let memory = ctx.total_mem().map_err(|e| format!("cuda:{index}: {e}"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| format!("cuda:{index}: {e}"))?;
        devices.push(DeviceInfo {
            backend: BackendKind::Cuda,
            index,
            name,
            device_type: DeviceType::DiscreteGpu,
            memory_bytes: Some(memory as u64),
            details: format!("compute capability {major}.{minor}"),
        });
    }
    Ok(devices)
}

/// Compiles one CUDA source to PTX with NVRTC. `arch` is the compute
/// capability to target (`None`: NVRTC's default). A compile error carries
/// NVRTC's log.
pub fn compile_ptx(kernel: &str, source: &str, arch: Option<(i32, i32)>) -> Result<Ptx> {
    if !nvrtc_present() {
        return Err(KernelError::NvrtcMissing(
            "libnvrtc not found on the loader path (pip install nvidia-cuda-nvrtc and add its \
             lib directory to LD_LIBRARY_PATH)"
                .to_string(),
        ));
    }
    if source.contains('\0') {
        return Err(KernelError::CudaCompile {
            kernel: kernel.to_string(),
            log: "source contains a NUL byte".to_string(),
        });
    }
    let mut options = vec!["--std=c++17".to_string()];
    if let Some((major, minor)) = arch {
        options.push(format!("--gpu-architecture=compute_{major}{minor}"));
    }
    let opts = CompileOptions {
        name: Some(kernel.to_string()),
        options,
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| KernelError::CudaCompile {
        kernel: kernel.to_string(),
        log: match e {
            CompileError::CompileError { nvrtc, log, .. } => {
                format!("{nvrtc:?}: {}", log.to_string_lossy().trim())
            }
            other => format!("{other:?}"),
        },
    })
}

/// A buffer in CUDA device memory. CUDA cannot allocate zero bytes, so an
/// empty buffer holds no allocation.
#[derive(Debug)]
pub struct CudaBuffer {
    slice: Option<Held<CudaSlice<f32>>>,
}

impl CudaBuffer {
    pub fn len(&self) -> usize {
        self.slice.as_ref().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open CUDA device: its context, a stream and the modules loaded so far.
pub struct CudaDevice {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: (i32, i32),
    /// Every allocation on this device reserves its bytes here first.
    memory: Arc<MemoryBudget>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// Generated fused relational kernels by program fingerprint.
    fused: Mutex<HashMap<(u64, crate::codegen::GroupFold), Arc<CudaModule>>>,
    /// Generated numbering modules by key-program fingerprint.
    numbering: Mutex<HashMap<u64, Arc<CudaModule>>>,
    /// Vector-search selection kernels by K.
    topk: Mutex<HashMap<u32, Arc<CudaModule>>>,
    /// The cuBLAS handle, created on first use.
    blas: Mutex<Option<Arc<cudarc::cublas::CudaBlas>>>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("info", &self.info)
            .finish()
    }
}

impl CudaDevice {
    pub fn open(info: &DeviceInfo) -> Result<Self> {
        if !driver_present() {
            return Err(KernelError::DeviceNotFound {
                backend: BackendKind::Cuda,
                reason: "libcuda not found".to_string(),
            });
        }
        let ctx = CudaContext::new(info.index)?;
        let arch = ctx.compute_capability()?;
        let stream = ctx.default_stream();
        let memory = MemoryBudget::new(info.id(), MemoryBudget::default_limit(info.memory_bytes))?;
        Ok(CudaDevice {
            info: info.clone(),
            ctx,
            stream,
            arch,
            memory,
            modules: Mutex::new(HashMap::new()),
            fused: Mutex::new(HashMap::new()),
            numbering: Mutex::new(HashMap::new()),
            topk: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    /// Reserves `bytes` for `what` in the budget.
    fn reserve(&self, bytes: u64, what: &'static str) -> Result<Reservation> {
        self.memory.reserve(bytes, what)
    }

    /// A cuBLAS failure as an error: its failed allocations are the device
    /// running out of memory (retried smaller), anything else internal.
    pub(crate) fn blas_error(
        &self,
        what: &'static str,
        e: cudarc::cublas::result::CublasError,
    ) -> KernelError {
        if e.0 == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED {
            KernelError::OutOfMemory {
                device: self.info.id(),
                what,
                requested: 0,
                detail: "cuBLAS could not allocate".into(),
            }
        } else {
            KernelError::Internal(format!("{what}: {e:?}"))
        }
    }

    /// A copy of `data` on the device, with its reservation.
    pub(crate) fn held_htod<T: DeviceRepr>(
        &self,
        data: &[T],
        what: &'static str,
    ) -> Result<Held<CudaSlice<T>>> {
        let reservation = self.reserve(std::mem::size_of_val(data) as u64, what)?;
        Ok(Held::new(self.stream.clone_htod(data)?, reservation))
    }

    /// `n` zeroed values on the device, with their reservation.
    pub(crate) fn held_zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        what: &'static str,
    ) -> Result<Held<CudaSlice<T>>> {
        let reservation = self.reserve((n * std::mem::size_of::<T>()) as u64, what)?;
        Ok(Held::new(self.stream.alloc_zeros::<T>(n)?, reservation))
    }

    /// The module compiled from `SOURCES[file]`, compiled and loaded once.
    fn module(&self, file: &'static str) -> Result<Arc<CudaModule>> {
        let mut modules = self
            .modules
            .lock()
            .map_err(|_| KernelError::Internal("CUDA module cache poisoned".into()))?;
        if let Some(m) = modules.get(file) {
            return Ok(Arc::clone(m));
        }
        let source = SOURCES
            .iter()
            .find(|(name, _)| *name == file)
            .map(|(_, src)| *src)
            .ok_or_else(|| KernelError::CudaCompile {
                kernel: file.to_string(),
                log: "no such CUDA source".to_string(),
            })?;
        let ptx = compile_ptx(file, source, Some(self.arch))?;
        let module = self.ctx.load_module(ptx)?;
        modules.insert(file, Arc::clone(&module));
        Ok(module)
    }
}

/// The operations live beside their kernels, in the same files as on wgpu
/// (`fused.rs`, `numbering.rs`, `search.rs`, `encoder.rs`); this is where
/// the backend offers them to [`crate::Device`].
impl BackendDevice for CudaDevice {
    type Buffer = CudaBuffer;
    type Queries = search::CudaQueries;

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    fn fused_check(&self, program: &Program) -> std::result::Result<(), String> {
        crate::codegen::cuda::generate(program).map(|_| ())
    }

    fn fold_support(&self, program: &Program, fold: GroupFold) -> std::result::Result<(), String> {
        CudaDevice::fold_support(self, program, fold)
    }

    fn atomic_fold_check(&self, program: &Program) -> std::result::Result<(), String> {
        crate::codegen::cuda::generate_atomic(program).map(|_| ())
    }

    fn fused_max_rows(&self, program: &Program) -> usize {
        // `params` holds u32 word offsets: a buffer of at most 2^32 words.
        max_launch_rows(program, u32::MAX as usize * 4)
    }

    fn run_fused(
        &self,
        program: &Program,
        rows: usize,
        groups: usize,
        fold: GroupFold,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput> {
        CudaDevice::run_fused(self, program, rows, groups, fold, inputs)
    }

    fn numbering_support(&self, program: &KeyProgram) -> std::result::Result<(), String> {
        CudaDevice::numbering_support(self, program)
    }

    fn number_groups(
        &self,
        program: &KeyProgram,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<Numbering> {
        CudaDevice::number_groups(self, program, rows, inputs)
    }

    fn upload_queries(&self, prepared: &[f32], dim: usize) -> Result<search::CudaQueries> {
        CudaDevice::upload_queries(self, prepared, dim)
    }

    fn max_tile_rows(&self, dim: usize, queries: usize) -> usize {
        CudaDevice::max_tile_rows(self, dim, queries)
    }

    fn score_and_select(
        &self,
        queries: &search::CudaQueries,
        tile: &[f32],
        ids: &[u64],
        keys: &TileKeys,
        k: usize,
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        CudaDevice::score_and_select(self, queries, tile, ids, keys, k, thresholds)
    }

    fn upload(&self, data: &[f32]) -> Result<CudaBuffer> {
        if data.is_empty() {
            return Ok(CudaBuffer { slice: None });
        }
        Ok(CudaBuffer {
            slice: Some(self.held_htod(data, "upload")?),
        })
    }

    fn download(&self, buffer: &CudaBuffer) -> Result<Vec<f32>> {
        match &buffer.slice {
            None => Ok(Vec::new()),
            Some(slice) => Ok(self.stream.clone_dtoh(&**slice)?),
        }
    }

    fn fma(&self, a: &CudaBuffer, b: &CudaBuffer, c: &CudaBuffer) -> Result<CudaBuffer> {
        let (Some(a), Some(b), Some(c)) = (&a.slice, &b.slice, &c.slice) else {
            return Ok(CudaBuffer { slice: None });
        };
        let n = a.len();
        let function = self.module("fma.cu")?.load_function("fma_f32")?;
        let mut out = self.held_zeros::<f32>(n, "fma out")?;
        let blocks = (n as u64)
            .div_ceil(u64::from(BLOCK))
            .min(u64::from(MAX_BLOCKS)) as u32;
        let config = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let len = n as u64;
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(&**a)
            .arg(&**b)
            .arg(&**c)
            .arg(&mut *out)
            .arg(&len);
        // SAFETY: fma_f32 takes (const float*, const float*, const float*,
        // float*, unsigned long long), matching the arguments pushed above; all
        // four buffers hold `n` elements and the kernel touches indices < n only.
        unsafe { launch.launch(config) }?;
        Ok(CudaBuffer { slice: Some(out) })
    }
}
