//! Numbering GROUP BY keys on wgpu (see [`crate::codegen::numbering`]).

use std::sync::Arc;

use super::fused::{FusedPipelines, LaunchBuffers};
use super::{WgpuDevice, grid};
use crate::codegen::numbering::{
    self, ENTRIES, KeyProgram, Next, Numbering, Schedule, StepGrid, WorkLayout, step_grid,
};
use crate::codegen::{ColumnData, place_inputs};
use crate::error::{KernelError, Result};

impl WgpuDevice {
    fn numbering_pipelines(&self, program: &KeyProgram) -> Result<Arc<FusedPipelines>> {
        let key = program.fingerprint();
        let mut cache = self
            .numbering
            .lock()
            .map_err(|_| KernelError::Internal("wgpu: numbering cache poisoned".into()))?;
        if let Some(p) = cache.get(&key) {
            return Ok(Arc::clone(p));
        }
        let invalid = |detail: String| KernelError::InvalidInput {
            kernel: "numbering",
            detail,
        };
        let features = self.device.features();
        if !features.contains(wgpu::Features::SHADER_INT64) {
            return Err(invalid(format!(
                "{} has no 64-bit integers in shaders (SHADER_INT64)",
                self.info.name
            )));
        }
        if program.uses_f64() && !features.contains(wgpu::Features::SHADER_F64) {
            return Err(invalid(format!(
                "{} has no 64-bit floats in shaders (SHADER_F64)",
                self.info.name
            )));
        }
        let source = numbering::wgsl(program).map_err(invalid)?;
        let built = Arc::new(self.module_pipelines(&source, &ENTRIES)?);
        cache.insert(key, Arc::clone(&built));
        Ok(built)
    }

    /// Whether this device numbers `program`'s keys (compiled once, cached).
    pub fn numbering_support(&self, program: &KeyProgram) -> std::result::Result<(), String> {
        self.numbering_pipelines(program)
            .map(|_| ())
            .map_err(KernelError::into_reason)
    }

    /// Numbers the keys of `rows` rows of `inputs` (`None` for a column no
    /// key reads); `needs_cpu` when a key flags a row or the table would
    /// not fit one storage binding.
    pub fn number_groups(
        &self,
        program: &KeyProgram,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<Numbering> {
        let pipelines = self.numbering_pipelines(program)?;
        let (mut params, placed, data_words) =
            place_inputs(&program.inputs, &program.used_inputs(), rows, inputs)?;
        let work = WorkLayout::new(rows);
        params[1] = work.slots as u32;
        params.extend(work.params());
        let mut out = Numbering::default();
        if rows == 0 {
            return Ok(out);
        }
        let limit = self.limits.max_storage_buffer_binding_size as usize / 4;
        if work.words > limit || data_words > limit {
            // The table would not fit one binding: the host numbers.
            out.needs_cpu = true;
            return Ok(out);
        }
        let (rx, ry) = grid(rows.div_ceil(256) as u64);
        let (sx, sy) = grid(work.slot_blocks() as u64);
        let mut schedule = Schedule::default();
        self.scoped("numbering kernels", || {
            let LaunchBuffers {
                outw,
                flag,
                group,
                blocks: _blocks,
                inputs: _inputs,
            } = self.launch_buffers(
                &pipelines,
                (data_words, &placed),
                &params,
                work.words,
                2 * work.slot_blocks() + 1,
            )?;
            // Runs `steps` in one submission and reads back the `(at, words)`
            // ranges of `outw`, one after another, then the flag (last).
            let submit = |steps: &[(usize, (u32, u32))], ranges: &[(usize, usize)]| {
                let mut encoder =
                    self.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("numbering"),
                        });
                if !steps.is_empty() {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("numbering"),
                        timestamp_writes: None,
                    });
                    pass.set_bind_group(0, &group, &[]);
                    for &(step, (x, y)) in steps {
                        pass.set_pipeline(&pipelines.passes[step]);
                        pass.dispatch_workgroups(x, y, 1);
                    }
                }
                let words: usize = ranges.iter().map(|r| r.1).sum();
                let staging = self.new_buffer(
                    "numbering read-back",
                    ((words + 1) * 4) as u64,
                    wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                )?;
                let mut to = 0;
                for &(at, len) in ranges.iter().filter(|r| r.1 > 0) {
                    encoder.copy_buffer_to_buffer(
                        &outw,
                        (at * 4) as u64,
                        &staging,
                        (to * 4) as u64,
                        (len * 4) as u64,
                    );
                    to += len;
                }
                encoder.copy_buffer_to_buffer(&flag, 0, &staging, (words * 4) as u64, 4);
                self.queue.submit([encoder.finish()]);
                self.map_words(&staging)
            };
            let grid_of = |step: usize| match step_grid(step) {
                StepGrid::Rows => (rx, ry),
                StepGrid::Slots => (sx, sy),
                StepGrid::OneBlock | StepGrid::OneThread => (1, 1),
            };
            let dispatches = |steps: &[usize]| -> Vec<(usize, (u32, u32))> {
                steps.iter().map(|&step| (step, grid_of(step))).collect()
            };
            let mut steps = Schedule::first();
            loop {
                let back = submit(&dispatches(&steps), &[(work.counters, 1)])?;
                match schedule.after_check(back[1] != 0, back[0]) {
                    Next::MoreRounds => steps = Schedule::rounds(),
                    Next::Finish => break,
                    Next::Cpu => {
                        out.needs_cpu = true;
                        return Ok(());
                    }
                }
            }
            // The group count and every row's group in one read-back, then
            // the groups' first rows.
            let mut back = submit(
                &dispatches(&Schedule::FINISH),
                &[(work.counters + 1, 1), (work.gid, rows)],
            )?;
            let groups = back[0] as usize;
            out.gid = back.split_off(1);
            out.gid.truncate(rows);
            out.first_row = submit(&[], &[(work.first, groups)])?;
            out.first_row.pop();
            Ok(())
        })?;
        out.bytes_up = ((data_words + params.len()) * 4) as u64;
        out.bytes_down = if out.needs_cpu {
            schedule.bytes_checked()
        } else {
            schedule.bytes_down(out.gid.len(), out.first_row.len())
        };
        Ok(out)
    }
}
