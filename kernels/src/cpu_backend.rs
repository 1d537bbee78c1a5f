//! The CPU backend: host memory and rayon. Always present.

use rayon::prelude::*;

use crate::backend::BackendDevice;
use crate::device::{BackendKind, DeviceInfo, DeviceType};
use crate::error::Result;
use crate::memory::MemoryBudget;
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

    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
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

    fn info(&self) -> &DeviceInfo {
        &self.info
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
}
