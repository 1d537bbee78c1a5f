//! Generated fused relational programs on CUDA (see [`crate::codegen`]):
//! compiled by NVRTC once per program and fold, launched with the same
//! layout and passes as on wgpu. Written and compiled, not yet run on a GPU.

use std::sync::Arc;

use cudarc::driver::{CudaModule, LaunchConfig, PushKernelArg};

use super::{BLOCK, CudaDevice, MAX_BLOCKS, compile_ptx};
use crate::error::{KernelError, Result};

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
