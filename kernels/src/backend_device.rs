//! The trait every backend implements. It owns every device operation Kiln
//! has — buffers, fused relational programs, GROUP BY key numbering, vector
//! search's scoring and selection — so that [`crate::Device`] dispatches
//! each once and no caller reaches into a concrete backend. (The encoder's
//! layer operations are the engine's `EncoderOps`, implemented over the
//! same backends.)
//!
//! Knows no backend itself: the backends depend on it, and `backend.rs`
//! (the [`crate::Device`] enum) on them, with no circle.

use std::sync::Arc;

use crate::codegen::numbering::{KeyProgram, Numbering};
use crate::codegen::{ColumnData, FusedOutput, GroupFold, Program};
use crate::device::DeviceInfo;
use crate::error::Result;
use crate::memory::MemoryBudget;
use crate::ops::select::{Candidate, TileKeys};

/// Why the CPU has no fused kernels: DataFusion runs relational work there.
pub const CPU_RUNS_DATAFUSION: &str = "the CPU runs DataFusion's own operators";

/// What every backend provides. See the module documentation.
pub trait BackendDevice {
    /// A buffer of f32 values in this backend's memory.
    type Buffer;
    /// A search's queries, uploaded once.
    type Queries;

    /// What discovery said about this device.
    fn info(&self) -> &DeviceInfo;

    /// The device's memory budget: every allocation reserves here first.
    fn memory(&self) -> &Arc<MemoryBudget>;

    /// Copies host data into a new device buffer.
    fn upload(&self, data: &[f32]) -> Result<Self::Buffer>;

    /// Copies a device buffer back to the host.
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<f32>>;

    /// `out[i] = a[i] * b[i] + c[i]`, computed on the device.
    fn fma(&self, a: &Self::Buffer, b: &Self::Buffer, c: &Self::Buffer) -> Result<Self::Buffer>;

    // --- fused relational programs (see `crate::codegen`) ---

    /// Whether the code generator and the device's features take `program`,
    /// without compiling it.
    fn fused_check(&self, program: &Program) -> std::result::Result<(), String>;

    /// Whether the module of `program` with `fold` compiles here (compiled
    /// once and cached).
    fn fold_support(&self, program: &Program, fold: GroupFold) -> std::result::Result<(), String>;

    /// Whether `program` has a [`GroupFold::Atomics`] module here, without
    /// compiling it.
    fn atomic_fold_check(&self, program: &Program) -> std::result::Result<(), String>;

    /// The most rows one [`BackendDevice::run_fused`] launch takes.
    fn fused_max_rows(&self, program: &Program) -> usize;

    /// Runs `program` over `rows` rows of `inputs`, its reductions folded
    /// into `groups` groups with `fold`.
    fn run_fused(
        &self,
        program: &Program,
        rows: usize,
        groups: usize,
        fold: GroupFold,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<FusedOutput>;

    /// Why this device cannot number `program`'s keys, if it cannot
    /// (compiles and caches the module).
    fn numbering_support(&self, program: &KeyProgram) -> std::result::Result<(), String>;

    /// Numbers the GROUP BY keys of `rows` rows.
    fn number_groups(
        &self,
        program: &KeyProgram,
        rows: usize,
        inputs: &[Option<ColumnData<'_>>],
    ) -> Result<Numbering>;

    // --- vector search (see `crate::vector_search`) ---

    /// Uploads a search's prepared queries (row-major, `dim` wide) once.
    fn upload_queries(&self, prepared: &[f32], dim: usize) -> Result<Self::Queries>;

    /// The most corpus rows one [`BackendDevice::score_and_select`] takes.
    fn max_tile_rows(&self, dim: usize, queries: usize) -> usize;

    /// Scores `tile` against the queries and selects each query's
    /// candidates at or above its threshold (at most k per selection chunk).
    fn score_and_select(
        &self,
        queries: &Self::Queries,
        tile: &[f32],
        ids: &[u64],
        keys: &TileKeys,
        k: usize,
        thresholds: &[f32],
    ) -> Result<Vec<Vec<Candidate>>>;
}
