//! `kiln executor`: Ballista's executor, started as a library, owning one
//! device. Kiln's options, functions, object stores and codecs are
//! installed; every stage it is given is lowered onto its device here
//! (embeddings gathered, operators placed) before it runs, so the
//! scheduler's plan is device-neutral and a cluster may mix GPU and CPU
//! executors.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use std::collections::HashSet;

use ballista_core::JobId;
use ballista_core::execution_plans::ShuffleReaderExec;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::serde::protobuf::{
    RuntimeStatsReport, ShuffleWritePartition, TaskColumnStats, WindowStateReport,
};
use ballista_core::serde::scheduler::PartitionLocation;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result as DfResult, internal_err};
use datafusion::config::ConfigOptions;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::physical_plan::metrics::{Count, Metric, MetricValue, MetricsSet};
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, ReplaceChildrenOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use kiln_engine::exec::{TopKMode, VectorTopKExec};
use kiln_kernels::DeviceRequest;

use super::codec::{KilnLogicalCodec, KilnPhysicalCodec};
use super::{ClusterUrl, free_port, node_config, runtime};
use crate::error::{KilnError, Result};

/// How an executor is started; see `kiln executor --help`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port` or `df://host:port`.
    pub scheduler: ClusterUrl,
    /// The device this executor owns.
    pub device: DeviceRequest,
    /// Where shuffle files are written; default: a temporary directory.
    pub work_dir: Option<PathBuf>,
    /// Interface to listen on.
    pub bind_host: String,
    /// The host the scheduler and other executors reach this one by;
    /// default: the address its connection to the scheduler comes from.
    pub external_host: Option<String>,
    /// Arrow Flight port (shuffle reads); default: a free port.
    pub port: Option<u16>,
    /// gRPC port (tasks from the scheduler); default: a free port.
    pub grpc_port: Option<u16>,
    /// Tasks run at once; default: the number of cores.
    pub slots: Option<usize>,
    /// Seconds between heartbeats to the scheduler.
    pub heartbeat_secs: u64,
}

/// Runs an executor until the process is stopped. Fails at once, with one
/// line, when its device cannot be opened or the scheduler cannot be
/// reached.
pub async fn run(options: ExecutorOptions, ready: impl FnOnce(&str)) -> Result<()> {
    let info = options
        .device
        .resolve(kiln_engine::device::discovered())?
        .clone();
    kiln_engine::device::open_shared(&info)?;
    kiln_engine::device::pin_process_device(options.device)?;
    options.scheduler.check_reachable()?;
    if let Some(dir) = &options.work_dir {
        std::fs::create_dir_all(dir).map_err(|source| KilnError::File {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let port = match options.port {
        Some(p) => p,
        None => free_port(&options.bind_host)?,
    };
    let grpc_port = match options.grpc_port {
        Some(p) => p,
        None => free_port(&options.bind_host)?,
    };
    let device = options.device;
    let registry = {
        let ctx = SessionContext::new_with_state(
            SessionStateBuilder::new().with_default_features().build(),
        );
        kiln_planner::register_functions(&ctx);
        BallistaFunctionRegistry::from(&ctx.state())
    };
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind_host.clone(),
        external_host: options.external_host.clone(),
        port,
        grpc_port,
        scheduler_host: options.scheduler.host.clone(),
        scheduler_port: options.scheduler.port,
        scheduler_connect_timeout_seconds: 0,
        task_scheduling_policy: super::SCHEDULING,
        work_dir: options.work_dir.as_ref().map(|d| d.display().to_string()),
        executor_heartbeat_interval_seconds: options.heartbeat_secs.max(1),
        override_config_producer: Some(Arc::new(move || node_config(device))),
        override_runtime_producer: Some(Arc::new(|_: &SessionConfig| runtime())),
        override_function_registry: Some(Arc::new(registry)),
        override_logical_codec: Some(Arc::new(KilnLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(KilnPhysicalCodec::default())),
        override_execution_engine: Some(Arc::new(KilnExecutionEngine::default())),
        ..Default::default()
    };
    if let Some(slots) = options.slots {
        config.vcores = slots.max(1);
    }
    let device_id = kiln_engine::device::kernel_device(info).id();
    let host = options.external_host.clone().unwrap_or_else(|| {
        match options.bind_host.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.is_unspecified() => super::scheduler::host_name(),
            _ => options.bind_host.clone(),
        }
    });
    let _ = TASK_LABEL.set(format!("tasks_on_{device_id}_at_{host}:{port}"));
    ready(&format!(
        "kiln executor {} on {device_id}: flight port {port}, grpc port {grpc_port}, scheduler {}",
        config.executor_id, options.scheduler
    ));
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}

/// The name of the metric that counts this executor's tasks in a stage:
/// `tasks_on_<device>_at_<host:port>`.
static TASK_LABEL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Ballista's execution engine, with each stage lowered onto this
/// executor's device first.
#[derive(Default)]
pub struct KilnExecutionEngine {
    inner: DefaultExecutionEngine,
}

/// `reader` reading each map partition of its input stage once: where a
/// partition is listed more than once, the location added last.
///
/// Ballista 55.0.0 can list a map partition twice after an executor is
/// lost: when a stage it had rerun is rolled back and run again whole, the
/// next stage keeps the locations of the first run's tasks on surviving
/// executors and gains the new run's, and reads those partitions twice (a
/// wrong result, seen as doubled TPC-H Q3 revenues after an executor was
/// killed). Locations are appended as tasks finish, so the last one of a
/// map partition is from its latest run.
fn read_each_map_partition_once(
    reader: &ShuffleReaderExec,
) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
    let mut changed = false;
    let partition: Vec<Vec<PartitionLocation>> = reader
        .partition
        .iter()
        .map(|locations| {
            let mut seen = HashSet::new();
            let mut kept: Vec<PartitionLocation> = locations
                .iter()
                .rev()
                .filter(|l| seen.insert(l.map_partition_id))
                .cloned()
                .collect();
            kept.reverse();
            changed |= kept.len() != locations.len();
            kept
        })
        .collect();
    if !changed {
        return Ok(None);
    }
    log::warn!(
        "stage {}: a map partition was listed more than once; reading each once (its latest run)",
        reader.stage_id
    );
    Ok(Some(Arc::new(ShuffleReaderExec::try_new(
        reader.stage_id,
        partition,
        reader.schema(),
        reader.properties().output_partitioning().clone(),
    )?)))
}

/// `stage` (a shuffle writer over the stage's operators) with each map
/// partition read once and Kiln's device rules applied to the operators.
pub fn lower_stage(
    stage: &Arc<dyn ExecutionPlan>,
    global_partitions: &[usize],
    options: &ConfigOptions,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let stage = &Arc::clone(stage)
        .transform_up(|node| {
            if let Some(reader) = node.downcast_ref::<ShuffleReaderExec>() {
                return Ok(match read_each_map_partition_once(reader)? {
                    Some(new) => Transformed::yes(new),
                    None => Transformed::no(node),
                });
            }
            // A partial vector top-k heads its stage (a merge follows it),
            // so its partitions are the task's: number its row ids by their
            // place in the whole input, as a local run does.
            if let Some(topk) = node.downcast_ref::<VectorTopKExec>()
                && topk.mode() == TopKMode::Partial
                && topk.properties().output_partitioning().partition_count()
                    == global_partitions.len()
            {
                let numbered = topk.with_global_partitions(global_partitions.to_vec())?;
                return Ok(Transformed::yes(
                    Arc::new(numbered) as Arc<dyn ExecutionPlan>
                ));
            }
            Ok(Transformed::no(node))
        })?
        .data;
    let [child] = stage.children()[..] else {
        return internal_err!(
            "a stage's writer has one input, {} has {}",
            stage.name(),
            stage.children().len()
        );
    };
    let mut lowered = Arc::clone(child);
    for rule in kiln_planner::physical_rules() {
        lowered = rule.optimize(lowered, options)?;
    }
    if Arc::ptr_eq(&lowered, child) {
        return Ok(Arc::clone(stage));
    }
    Arc::clone(stage).replace_children(
        vec![lowered],
        ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
    )
}

impl ExecutionEngine for KilnExecutionEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        let slot = task_slot(format!("{}/{stage_id}/{task_id}", job_id.as_str()));
        let lowered = lower_stage(&plan, &global_output_partition_ids, config.options())?;
        let (mut planned, mut lowered_names) = (Vec::new(), Vec::new());
        metric_names(&plan, &mut planned);
        metric_names(&lowered, &mut lowered_names);
        let inner = self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            lowered,
            work_dir,
            config,
        )?;
        Ok(Arc::new(LoweredStage {
            inner,
            planned,
            lowered: lowered_names,
            slot,
        }))
    }
}

/// A failed task's error as the scheduler will pass it on. Ballista sends
/// a task's error to the scheduler as text, formatted with `Debug` (the
/// nested variants of every wrapper, the messages escaped); an error it
/// treats apart — a shuffle fetch failure (it reruns the map stage), an I/O
/// error (it retries the task) — goes as it is, and any other becomes an
/// execution error carrying its one-line message, so the user reads what a
/// local run would print.
fn readable_task_error(e: DataFusionError) -> DataFusionError {
    if ballista_handles(&e) {
        return e;
    }
    DataFusionError::Execution(task_message(&e))
}

/// The one-line message of the error under Ballista's wrappers.
fn task_message(e: &DataFusionError) -> String {
    use ballista_core::error::BallistaError;
    let root = e.find_root();
    if let DataFusionError::External(inner) = root
        && let Some(BallistaError::DataFusionError(wrapped)) = inner.downcast_ref::<BallistaError>()
    {
        return task_message(wrapped);
    }
    crate::error::datafusion_one_line(root)
}

/// Whether Ballista treats `e` apart: a shuffle fetch failure or an I/O
/// error, found as its own `BallistaError::find_fetch_failed` and
/// `is_retryable_io` find them (through the Ballista errors its shuffle
/// operators wrap DataFusion's in).
fn ballista_handles(e: &DataFusionError) -> bool {
    use ballista_core::error::BallistaError;
    match e.find_root() {
        DataFusionError::IoError(_) => true,
        DataFusionError::External(inner) => match inner.downcast_ref::<BallistaError>() {
            Some(BallistaError::FetchFailed(..) | BallistaError::IoError(_)) => true,
            Some(BallistaError::DataFusionError(e)) => ballista_handles(e),
            _ => false,
        },
        _ => false,
    }
}

/// A stage as lowered on this executor, reporting its metrics in the shape
/// of the stage the scheduler planned: the scheduler merges the metrics of
/// a stage's tasks position by position, and tasks on executors with other
/// devices run other shapes.
struct LoweredStage {
    inner: Arc<dyn QueryStageExecutor>,
    /// The operators with metrics, in Ballista's order (pre-order), of the
    /// planned stage and of the one that runs.
    planned: Vec<String>,
    lowered: Vec<String>,
    /// Held while the task runs; see [`task_slot`].
    slot: Arc<tokio::sync::Mutex<()>>,
}

/// The lock of one (job, stage, task id) in this process.
///
/// Ballista names a task's shuffle files by job, stage and task id, and
/// numbers a stage's tasks from 0 again when it reruns the stage after an
/// executor was lost; in pull scheduling it cannot cancel the tasks of the
/// earlier attempt that still run on surviving executors. Such a stale task
/// and the rerun's task of the same id write the same files, and if the
/// stale one writes last the next stage reads another partition's rows (a
/// wrong result, seen as doubled TPC-H Q3 revenues after an executor was
/// killed). Running them one after the other, the rerun's last, leaves the
/// files the scheduler expects.
fn task_slot(key: String) -> Arc<tokio::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, Weak};
    static SLOTS: OnceLock<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut slots = SLOTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    slots.retain(|_, slot| slot.strong_count() > 0);
    if let Some(slot) = slots.get(&key).and_then(Weak::upgrade) {
        return slot;
    }
    let slot = Arc::new(tokio::sync::Mutex::new(()));
    slots.insert(key, Arc::downgrade(&slot));
    slot
}

impl fmt::Debug for LoweredStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.inner, f)
    }
}

impl fmt::Display for LoweredStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

/// The names of the operators of `plan` that report metrics, in pre-order.
fn metric_names(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
    if plan.metrics().is_some() {
        out.push(plan.name().to_string());
    }
    for child in plan.children() {
        metric_names(child, out);
    }
}

/// `metrics` (one set per operator of `lowered`) in the shape of `planned`:
/// the operators before and after the part the lowering replaced keep
/// their own; the replaced operators take the replacing ones' metrics,
/// merged onto the first of them (a GPU stage's metrics show on the top
/// operator it replaced), the others report none.
fn reshape_metrics<S: PartialEq>(
    planned: &[S],
    lowered: &[S],
    metrics: Vec<MetricsSet>,
) -> Vec<MetricsSet> {
    if planned == lowered || metrics.len() != lowered.len() {
        return metrics;
    }
    let prefix = planned
        .iter()
        .zip(lowered)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = planned[prefix..]
        .iter()
        .rev()
        .zip(lowered[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let mut metrics = metrics.into_iter();
    let mut out: Vec<MetricsSet> = metrics.by_ref().take(prefix).collect();
    let mut middle = MetricsSet::new();
    for set in metrics.by_ref().take(lowered.len() - prefix - suffix) {
        for m in set.iter() {
            middle.push(Arc::clone(m));
        }
    }
    let replaced = planned.len() - prefix - suffix;
    if replaced > 0 {
        out.push(middle);
        out.extend((1..replaced).map(|_| MetricsSet::new()));
    }
    out.extend(metrics);
    out
}

#[async_trait]
impl QueryStageExecutor for LoweredStage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<Vec<ShuffleWritePartition>> {
        let _running = self.slot.lock().await;
        inject::before_task().await?;
        self.inner
            .execute_query_stage(task_id, context)
            .await
            .map_err(readable_task_error)
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        let mut metrics = reshape_metrics(
            &self.planned,
            &self.lowered,
            self.inner.collect_plan_metrics(),
        );
        // The stage's writer counts the tasks each executor (and device)
        // ran, so the stage's line in EXPLAIN ANALYZE says where it ran.
        if let (Some(writer), Some(label)) = (metrics.first_mut(), TASK_LABEL.get()) {
            let count = Count::new();
            count.add(1);
            writer.push(Arc::new(Metric::new(
                MetricValue::Count {
                    name: label.clone().into(),
                    count,
                },
                None,
            )));
        }
        metrics
    }

    fn collect_runtime_stats_reports(&self) -> Vec<RuntimeStatsReport> {
        self.inner.collect_runtime_stats_reports()
    }

    fn collect_window_state_reports(&self) -> DfResult<Vec<WindowStateReport>> {
        self.inner.collect_window_state_reports()
    }

    fn collect_column_stats(&self) -> Vec<TaskColumnStats> {
        self.inner.collect_column_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &'static str, n: usize) -> MetricsSet {
        let mut s = MetricsSet::new();
        let count = Count::new();
        count.add(n);
        s.push(Arc::new(Metric::new(
            MetricValue::Count {
                name: name.into(),
                count,
            },
            Some(0),
        )));
        s
    }

    fn counts(sets: &[MetricsSet]) -> Vec<Vec<String>> {
        sets.iter()
            .map(|s| s.iter().map(|m| m.value().name().to_string()).collect())
            .collect()
    }

    #[test]
    fn a_gpu_stage_reports_on_the_operators_it_replaced() {
        let planned = [
            "W",
            "Repartition",
            "Aggregate",
            "Projection",
            "Filter",
            "Scan",
        ];
        let lowered = ["W", "Repartition", "GpuStage", "Scan"];
        let metrics = vec![set("w", 1), set("r", 2), set("gpu", 3), set("scan", 4)];
        let out = reshape_metrics(&planned, &lowered, metrics);
        assert_eq!(
            counts(&out),
            vec![
                vec!["w".to_string()],
                vec!["r".to_string()],
                vec!["gpu".to_string()],
                vec![],
                vec![],
                vec!["scan".to_string()],
            ]
        );
    }

    #[test]
    fn an_unchanged_stage_keeps_its_metrics() {
        let names = ["W", "Scan"];
        let out = reshape_metrics(&names, &names, vec![set("w", 1), set("s", 2)]);
        assert_eq!(out.len(), 2);
    }
}

/// Faults injected into an executor's tasks, for tests of the cluster's
/// recovery (read once per process from the environment):
///
/// - `KILN_INJECT_TASK_DELAY_MS=N`: every task waits N ms before it runs,
///   so a test can kill an executor while a query is surely running.
/// - `KILN_INJECT_DEVICE_ERRORS=N`: the first N tasks fail as a device
///   fault does, with a retryable I/O error, which Ballista runs again.
pub mod inject {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use datafusion::common::{DataFusionError, Result};

    fn setting(name: &str) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Applies the injected faults to one task.
    pub async fn before_task() -> Result<()> {
        static DELAY: OnceLock<u64> = OnceLock::new();
        static ERRORS: OnceLock<AtomicU64> = OnceLock::new();
        let delay = *DELAY.get_or_init(|| setting("KILN_INJECT_TASK_DELAY_MS"));
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let errors = ERRORS.get_or_init(|| AtomicU64::new(setting("KILN_INJECT_DEVICE_ERRORS")));
        let left = errors.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if left.is_ok() {
            return Err(DataFusionError::IoError(std::io::Error::other(
                "injected device error (KILN_INJECT_DEVICE_ERRORS)",
            )));
        }
        Ok(())
    }
}
