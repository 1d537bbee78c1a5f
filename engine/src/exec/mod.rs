//! Kiln's physical operators, one per file.

pub mod corpus;
pub mod device_columns;
pub mod embed;
pub mod gpu_stage;
pub mod group_keys;
pub mod knn_join;
pub mod stage_aggregate;
pub mod vector_topk;

pub use corpus::{SearchSpec, tile_rows_for_budget};
pub use embed::EmbedExec;
pub use gpu_stage::{CpuStep, GpuStageExec, StageGroupBy, StageOutput, StagePlan, StageTopK};
pub use knn_join::{KnnJoinExec, knn_join_schema};
pub use stage_aggregate::{AggKind, StageAggregate};
pub use vector_topk::{Unscored, VectorTopKExec};
