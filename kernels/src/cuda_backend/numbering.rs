//! GROUP BY key numbering on CUDA (see [`crate::codegen::numbering`]): a
//! hash table of row indices built in rounds on the schedule both GPU
//! backends share. Written and compiled, not yet run on a GPU.

use std::sync::Arc;

use cudarc::driver::{CudaModule, CudaSlice, LaunchConfig, PushKernelArg};

use super::{BLOCK, CudaDevice, MAX_BLOCKS, compile_ptx};
use crate::error::{KernelError, Result};

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
