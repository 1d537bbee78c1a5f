//! Kiln's physical operators, one per file.

pub mod asof_join;
mod asof_probe;
pub mod corpus;
pub mod decode_guard;
pub mod device_columns;
pub mod embed;
pub mod gpu_stage;
pub mod group_keys;
pub mod knn_join;
pub mod stage_aggregate;
pub mod vector_topk;

pub use asof_join::{AsofJoinExec, AsofSpec, AsofStrategy, Tolerance};
pub use corpus::{SearchSpec, tile_rows_for_budget};
pub use decode_guard::DecodeGuardExec;
pub use embed::EmbedExec;
pub use gpu_stage::{CpuStep, GpuStageExec, StageGroupBy, StageOutput, StagePlan, StageTopK};
pub use knn_join::{KnnJoinExec, knn_join_schema};
pub use stage_aggregate::{AggKind, SingleSplit, StageAggregate};
pub use vector_topk::{TopKMode, Unscored, VectorTopKExec};

/// What running out of device memory cost an operator, as EXPLAIN ANALYZE
/// shows it: `oom_retries` (device runs of a piece after an out-of-memory),
/// `oom_splits` (pieces halved) and `oom_cpu_fallbacks` (pieces run on the
/// CPU). See [`kiln_kernels::memory`].
#[derive(Debug, Clone)]
pub(crate) struct OomMetrics {
    retries: datafusion::physical_plan::metrics::Count,
    splits: datafusion::physical_plan::metrics::Count,
    cpu_fallbacks: datafusion::physical_plan::metrics::Count,
}

impl OomMetrics {
    pub(crate) fn new(
        metrics: &datafusion::physical_plan::metrics::ExecutionPlanMetricsSet,
        partition: usize,
    ) -> Self {
        use datafusion::physical_plan::metrics::MetricBuilder;
        OomMetrics {
            retries: MetricBuilder::new(metrics).counter("oom_retries", partition),
            splits: MetricBuilder::new(metrics).counter("oom_splits", partition),
            cpu_fallbacks: MetricBuilder::new(metrics).counter("oom_cpu_fallbacks", partition),
        }
    }

    pub(crate) fn add(&self, counts: kiln_kernels::memory::OomCounts) {
        self.retries.add(counts.retries as usize);
        self.splits.add(counts.splits as usize);
        self.cpu_fallbacks.add(counts.cpu_fallbacks as usize);
    }
}

/// The next input batches of `input`, up to `rows` rows (the last batch may
/// overshoot), empty batches skipped; empty once the input is done (`done`
/// is set then, and after an error, which is returned).
pub(crate) async fn gather_rows(
    input: &mut datafusion::physical_plan::SendableRecordBatchStream,
    rows: usize,
    done: &mut bool,
) -> datafusion::common::Result<Vec<datafusion::arrow::array::RecordBatch>> {
    use futures::StreamExt;
    let mut pending = Vec::new();
    let mut gathered = 0;
    while gathered < rows && !*done {
        match input.next().await {
            Some(Ok(batch)) if batch.num_rows() == 0 => {}
            Some(Ok(batch)) => {
                gathered += batch.num_rows();
                pending.push(batch);
            }
            Some(Err(e)) => {
                *done = true;
                return Err(e);
            }
            None => *done = true,
        }
    }
    Ok(pending)
}

/// Runs `work` on `state` on tokio's blocking pool — device launches and
/// their waits, the encoder's forward pass — so it does not hold the async
/// worker that polls the stream (issue 15), and gives the state back. Without
/// a tokio runtime (a stream polled by some other executor) it runs in
/// place. A panic in `work` goes on unwinding in the caller, as it would have
/// in place.
pub(crate) async fn off_async<S, T>(
    state: S,
    work: impl FnOnce(&mut S) -> T + Send + 'static,
) -> datafusion::common::Result<(S, T)>
where
    S: Send + 'static,
    T: Send + 'static,
{
    let run = move || {
        let mut state = state;
        let out = work(&mut state);
        (state, out)
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(run());
    };
    match runtime.spawn_blocking(run).await {
        Ok(done) => Ok(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(datafusion::common::DataFusionError::External(Box::new(e))),
    }
}
