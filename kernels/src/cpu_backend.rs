//! The CPU backend: host memory and rayon. Always present.

use rayon::prelude::*;

use crate::backend_device::{BackendDevice, CPU_RUNS_DATAFUSION};
use crate::codegen::numbering::{KeyProgram, Numbering};
use crate::codegen::{ColumnData, FusedOutput, GroupFold, Program, max_launch_rows};
use crate::device::{BackendKind, DeviceInfo, DeviceType};
use crate::error::KernelError;
use crate::error::Result;
use crate::memory::MemoryBudget;
use crate::ops::select::{Candidate, TileKeys};
use std::sync::Arc;

/// Elements per rayon task: large enough that scheduling costs nothing.
const CHUNK: usize = 64 * 1024;

/// The host CPU as a Kiln device.
#[derive(Debug)]
pub struct CpuDevice {
    info: DeviceInfo,
    /// Kiln's own kernels (the encoder, vector search) reserve their working
    /// memory here too. No limit by default: host memory is DataFusion's
    /// pool's to manage; the budget is there so a limit or injected
    /// failures (`KILN_INJECT_OOM`) apply to every device alike.
    memory: Arc<MemoryBudget>,
}

impl CpuDevice {
    pub fn new(info: DeviceInfo) -> Result<Self> {
        let memory = MemoryBudget::new(info.id(), None)?;
        Ok(CpuDevice { info, memory })
    }
}

/// Describes the host CPU: model name, threads and memory.
pub fn info() -> DeviceInfo {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    DeviceInfo {
        backend: BackendKind::Cpu,
        index: 0,
        name,
        device_type: DeviceType::Cpu,
        memory_bytes,
        details: format!("{threads} threads, {}", std::env::consts::ARCH),
    }
}

impl BackendDevice for CpuDevice {
    type Buffer = Vec<f32>;
    /// The CPU's search scores in `VectorSearch`'s host path (every
    /// device's fallback too): nothing to upload.
    type Queries = ();

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }

    fn download(&self, buffer: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buffer.clone())
    }

    fn fma(&self, a: &Vec<f32>, b: &Vec<f32>, c: &Vec<f32>) -> Result<Vec<f32>> {
        let mut out = vec![0.0f32; a.len()];
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK))
            .zip(b.par_chunks(CHUNK).zip(c.par_chunks(CHUNK)))
            .for_each(|((out, a), (b, c))| {
                for i in 0..out.len() {
                    out[i] = a[i].mul_add(b[i], c[i]);
                }
            });
        Ok(out)
    }

    fn fused_check(&self, _: &Program) -> std::result::Result<(), String> {
        Err(CPU_RUNS_DATAFUSION.into())
    }

    fn fold_support(&self, _: &Program, _: GroupFold) -> std::result::Result<(), String> {
        Err(CPU_RUNS_DATAFUSION.into())
    }

    fn atomic_fold_check(&self, _: &Program) -> std::result::Result<(), String> {
        Err(CPU_RUNS_DATAFUSION.into())
    }

    fn fused_max_rows(&self, program: &Program) -> usize {
        max_launch_rows(program, u32::MAX as usize * 4)
    }

    fn run_fused(
        &self,
        _: &Program,
        _: usize,
        _: usize,
        _: GroupFold,
        _: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput> {
        Err(KernelError::InvalidInput {
            kernel: "fused",
            detail: CPU_RUNS_DATAFUSION.into(),
        })
    }

    fn numbering_support(&self, _: &KeyProgram) -> std::result::Result<(), String> {
        Err("the CPU numbers keys on the host".into())
    }

    fn number_groups(
        &self,
        _: &KeyProgram,
        _: usize,
        _: &[Option<ColumnData<'_>>],
    ) -> Result<Numbering> {
        Err(KernelError::InvalidInput {
            kernel: "numbering",
            detail: "the CPU numbers keys on the host".into(),
        })
    }

    fn upload_queries(&self, _: &[f32], _: usize) -> Result<()> {
        Ok(())
    }

    fn max_tile_rows(&self, _: usize, _: usize) -> usize {
        usize::MAX
    }

    fn score_and_select(
        &self,
        _: &(),
        _: &[f32],
        _: &[u64],
        _: &TileKeys,
        _: usize,
        _: &[f32],
    ) -> Result<Vec<Vec<Candidate>>> {
        Err(KernelError::InvalidInput {
            kernel: "vector search",
            detail: "the CPU's search runs in VectorSearch's host path".into(),
        })
    }
}
