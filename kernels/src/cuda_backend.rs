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

/// The operations live beside their kernels (the fused and numbering
/// launches below, `search.rs`, `encoder.rs`); this is where the backend
/// offers them to [`crate::Device`].
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

impl CudaDevice {
    /// The compiled module of a generated fused program, by fingerprint.
    fn fused_module(
        &self,
        program: &crate::codegen::Program,
        fold: crate::codegen::GroupFold,
    ) -> Result<Arc<CudaModule>> {
        let key = (program.fingerprint(), fold);
        let mut cache = self
            .fused
            .lock()
            .map_err(|_| KernelError::Internal("CUDA fused module cache poisoned".into()))?;
        if let Some(m) = cache.get(&key) {
            return Ok(Arc::clone(m));
        }
        let source = match fold {
            crate::codegen::GroupFold::Atomics => crate::codegen::cuda::generate_atomic(program),
            crate::codegen::GroupFold::Tiles => crate::codegen::cuda::generate(program),
        }
        .map_err(|detail| KernelError::InvalidInput {
            kernel: "fused",
            detail,
        })?;
        let name = format!("fused_{:016x}_{fold:?}.cu", key.0);
        let ptx = compile_ptx(&name, &source, Some(self.arch))?;
        let module = self.ctx.load_module(ptx)?;
        cache.insert(key, Arc::clone(&module));
        Ok(module)
    }

    /// Whether `program` compiles for this device (compiled once, cached).
    pub fn fused_support(
        &self,
        program: &crate::codegen::Program,
    ) -> std::result::Result<(), String> {
        self.fold_support(program, crate::codegen::GroupFold::Tiles)
    }

    /// [`Self::fused_support`] for the module of one grouped fold.
    pub fn fold_support(
        &self,
        program: &crate::codegen::Program,
        fold: crate::codegen::GroupFold,
    ) -> std::result::Result<(), String> {
        self.fused_module(program, fold)
            .map(|_| ())
            .map_err(KernelError::into_reason)
    }

    /// Runs a generated fused program (see [`crate::codegen`]): the same
    /// layout and passes as the wgpu launch. Not yet run on a GPU.
    pub fn run_fused(
        &self,
        program: &crate::codegen::Program,
        rows: usize,
        groups: usize,
        fold: crate::codegen::GroupFold,
        inputs: &[Option<crate::codegen::ColumnData<'_>>],
    ) -> Result<crate::codegen::FusedOutput> {
        use crate::codegen::{FusedOutput, GroupFold, Layout, empty_output};
        let module = self.fused_module(program, fold)?;
        let layout = Layout::new(program, rows, groups, fold, inputs)?;
        if rows == 0 {
            return Ok(empty_output(program, groups));
        }
        let mut out = FusedOutput::default();
        let nblocks = layout.blocks();
        // The launch's buffers, reserved together for its duration.
        let _launch = self.reserve(
            ((layout.data_words + layout.params.len() + layout.out_words.max(1) + 2 * nblocks + 2)
                * 4) as u64,
            "fused launch",
        )?;
        let data = self.stream.clone_htod(&layout.data())?;
        let params = self.stream.clone_htod(&layout.params)?;
        let mut outw = self.stream.alloc_zeros::<u32>(layout.out_words.max(1))?;
        let mut blocks = self.stream.alloc_zeros::<u32>(2 * nblocks + 1)?;
        let mut flag = self.stream.alloc_zeros::<u32>(1)?;
        let x = (nblocks as u64).min(u64::from(MAX_BLOCKS)) as u32;
        let y = (nblocks as u64).div_ceil(u64::from(x.max(1))) as u32;
        let grid = LaunchConfig {
            grid_dim: (x.max(1), y.max(1), 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let single = LaunchConfig {
            grid_dim: (1, 1, 1),
            ..grid
        };
        // A program of reductions runs fewer workgroups, each over several
        // blocks in turn (at most 16384: one grid dimension).
        let reduce_grid = LaunchConfig {
            grid_dim: (layout.workgroups().max(1) as u32, 1, 1),
            ..grid
        };
        let has_predicate = program.compacts();
        let lo_pass = program.atomic_lo_pass();
        let passes: &[(&str, LaunchConfig)] = if fold == GroupFold::Atomics {
            &[("kiln_scatter", grid), ("kiln_scatter_lo", grid)][..1 + usize::from(lo_pass)]
        } else if !program.reduce.is_empty() {
            &[("kiln_reduce", reduce_grid)]
        } else if has_predicate {
            &[
                ("kiln_count", grid),
                ("kiln_scan", single),
                ("kiln_emit", grid),
            ]
        } else {
            &[("kiln_emit", grid)]
        };
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let started = self.stream.record_event(timing)?;
        for (entry, config) in passes {
            let function = module.load_function(entry)?;
            let mut launch = self.stream.launch_builder(&function);
            launch
                .arg(&data)
                .arg(&params)
                .arg(&mut outw)
                .arg(&mut blocks)
                .arg(&mut flag);
            // SAFETY: every generated kernel takes (const u32* data, const u32*
            // params, u32* outw, u32* blocks, u32* flag), matching the pushed
            // arguments; the buffers are sized by `layout` as the generated
            // code indexes them (inputs and outputs by `params`, 2·blocks+1
            // block counters, one flag word), and the grid covers `nblocks`.
            unsafe { launch.launch(*config) }?;
        }
        let ended = self.stream.record_event(timing)?;
        let head = self
            .stream
            .clone_dtoh(&blocks.slice(2 * nblocks..2 * nblocks + 1))?;
        out.kernel_ns = Some((f64::from(started.elapsed_ms(&ended)?) * 1e6) as u64);
        let flagged = self.stream.clone_dtoh(&flag)?;
        out.bytes_up = ((layout.data_words + layout.params.len()) * 4) as u64;
        out.bytes_down = 8;
        if flagged.first().copied().unwrap_or(0) != 0 {
            out.needs_cpu = true;
            return Ok(out);
        }
        let kept = if has_predicate {
            head.first().copied().unwrap_or(0) as usize
        } else {
            rows
        };
        let mut words = Vec::new();
        for (at, len) in layout.kept_ranges(kept) {
            if len > 0 {
                words.extend(self.stream.clone_dtoh(&outw.slice(at..at + len))?);
            }
        }
        layout.read_back(program, kept, &words, &mut out);
        Ok(out)
    }
}

impl CudaDevice {
    fn numbering_module(
        &self,
        program: &crate::codegen::numbering::KeyProgram,
    ) -> Result<Arc<CudaModule>> {
        let key = program.fingerprint();
        let mut cache = self
            .numbering
            .lock()
            .map_err(|_| KernelError::Internal("CUDA numbering cache poisoned".into()))?;
        if let Some(m) = cache.get(&key) {
            return Ok(Arc::clone(m));
        }
        let source = crate::codegen::numbering::cuda(program).map_err(|detail| {
            KernelError::InvalidInput {
                kernel: "numbering",
                detail,
            }
        })?;
        let ptx = compile_ptx(
            &format!("numbering_{key:016x}.cu"),
            &source,
            Some(self.arch),
        )?;
        let module = self.ctx.load_module(ptx)?;
        cache.insert(key, Arc::clone(&module));
        Ok(module)
    }

    /// Whether this device numbers `program`'s keys (compiled once, cached).
    pub fn numbering_support(
        &self,
        program: &crate::codegen::numbering::KeyProgram,
    ) -> std::result::Result<(), String> {
        self.numbering_module(program)
            .map(|_| ())
            .map_err(KernelError::into_reason)
    }

    /// Numbers GROUP BY keys on the device: the rounds and passes of the
    /// wgpu launch (see [`crate::codegen::numbering`]). Not yet run on a GPU.
    pub fn number_groups(
        &self,
        program: &crate::codegen::numbering::KeyProgram,
        rows: usize,
        inputs: &[Option<crate::codegen::ColumnData<'_>>],
    ) -> Result<crate::codegen::numbering::Numbering> {
        use crate::codegen::numbering::{Numbering, WorkLayout};
        let module = self.numbering_module(program)?;
        let (mut params, placed, data_words) =
            crate::codegen::place_inputs(&program.inputs, &program.used_inputs(), rows, inputs)?;
        let work = WorkLayout::new(rows);
        params[1] = work.slots as u32;
        params.extend(work.params());
        let mut out = Numbering::default();
        if rows == 0 {
            return Ok(out);
        }
        let mut host = vec![0u32; data_words.max(1)];
        for (at, bytes) in &placed {
            let words: &[u32] = bytemuck::cast_slice(bytes);
            host[*at..*at + words.len()].copy_from_slice(words);
        }
        // The launch's buffers, reserved together for its duration.
        let _launch = self.reserve(
            ((host.len() + params.len() + work.words + 2 * work.slot_blocks() + 2) * 4) as u64,
            "numbering launch",
        )?;
        let data = self.stream.clone_htod(&host)?;
        let meta = self.stream.clone_htod(&params)?;
        let mut outw = self.stream.alloc_zeros::<u32>(work.words)?;
        let mut blocks = self.stream.alloc_zeros::<u32>(2 * work.slot_blocks() + 1)?;
        let mut flag = self.stream.alloc_zeros::<u32>(1)?;
        let config = |blocks: usize| {
            let x = (blocks as u64).clamp(1, u64::from(MAX_BLOCKS)) as u32;
            let y = (blocks as u64).div_ceil(u64::from(x)).max(1) as u32;
            LaunchConfig {
                grid_dim: (x, y, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            }
        };
        let over_rows = config(rows.div_ceil(BLOCK as usize));
        let over_slots = config(work.slot_blocks());
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        let single = LaunchConfig {
            grid_dim: (1, 1, 1),
            ..over_rows
        };
        use crate::codegen::numbering::{Next, Schedule, StepGrid, step_grid};
        let grid = |step: usize| match step_grid(step) {
            StepGrid::Rows => over_rows,
            StepGrid::Slots => over_slots,
            StepGrid::OneBlock => single,
            StepGrid::OneThread => one,
        };
        let mut buffers = NumberingBuffers {
            data: &data,
            meta: &meta,
            outw: &mut outw,
            blocks: &mut blocks,
            flag: &mut flag,
        };
        let mut schedule = Schedule::default();
        let mut steps = Schedule::first();
        loop {
            for step in steps {
                self.numbering_step(&module, step, grid(step), &mut buffers)?;
            }
            let flagged = self.stream.clone_dtoh(&*buffers.flag)?;
            let unplaced = self
                .stream
                .clone_dtoh(&buffers.outw.slice(work.counters..work.counters + 1))?;
            match schedule.after_check(
                flagged.first().copied().unwrap_or(0) != 0,
                unplaced.first().copied().unwrap_or(0),
            ) {
                Next::MoreRounds => steps = Schedule::rounds(),
                Next::Finish => break,
                Next::Cpu => {
                    out.needs_cpu = true;
                    out.bytes_up = ((data_words + params.len()) * 4) as u64;
                    out.bytes_down = schedule.bytes_checked();
                    return Ok(out);
                }
            }
        }
        for step in Schedule::FINISH {
            self.numbering_step(&module, step, grid(step), &mut buffers)?;
        }
        let outw = &*buffers.outw;
        let groups = self
            .stream
            .clone_dtoh(&outw.slice(work.counters + 1..work.counters + 2))?
            .first()
            .copied()
            .unwrap_or(0) as usize;
        out.first_row = self
            .stream
            .clone_dtoh(&outw.slice(work.first..work.first + groups))?;
        out.gid = self
            .stream
            .clone_dtoh(&outw.slice(work.gid..work.gid + rows))?;
        out.bytes_up = ((data_words + params.len()) * 4) as u64;
        out.bytes_down = schedule.bytes_down(rows, groups);
        Ok(out)
    }

    fn numbering_step(
        &self,
        module: &Arc<CudaModule>,
        step: usize,
        config: LaunchConfig,
        b: &mut NumberingBuffers<'_>,
    ) -> Result<()> {
        let function = module.load_function(&format!(
            "kiln_{}",
            crate::codegen::numbering::ENTRIES[step]
        ))?;
        let mut launch = self.stream.launch_builder(&function);
        launch
            .arg(b.data)
            .arg(b.meta)
            .arg(&mut *b.outw)
            .arg(&mut *b.blocks)
            .arg(&mut *b.flag);
        // SAFETY: every numbering kernel takes (const u32* data, const u32*
        // params, u32* outw, u32* blocks, u32* flag) as pushed; `outw` holds
        // the work words `WorkLayout` lays out, `blocks` 2·slot blocks + 1
        // words, and the kernels index rows below params[0] and slots below
        // params[1] only.
        unsafe { launch.launch(config) }?;
        Ok(())
    }
}

/// The buffers of a numbering launch on CUDA.
struct NumberingBuffers<'a> {
    data: &'a CudaSlice<u32>,
    meta: &'a CudaSlice<u32>,
    outw: &'a mut CudaSlice<u32>,
    blocks: &'a mut CudaSlice<u32>,
    flag: &'a mut CudaSlice<u32>,
}
