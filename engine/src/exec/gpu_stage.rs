//! `GpuStageExec`: a chain of filters and projections run as one fused kernel
//! on a GPU.
//!
//! The planner's lowering rule replaces a maximal chain of supported
//! `FilterExec`/`ProjectionExec` operators with one stage. The stage gathers
//! its input into device-sized batches, uploads the columns its expressions
//! read, runs the generated kernel (predicate, stream compaction and every
//! computed output in one launch) and downloads only the kept rows. Columns
//! passed through unchanged never travel: they are gathered on the host with
//! the kept-row indices the kernel returns.
//!
//! Results never depend on where the stage ran: when the kernel flags a batch
//! it cannot compute as the CPU would (an integer division by zero, a decimal
//! overflow, a decimal beyond 64 bits), that batch is evaluated with the
//! original DataFusion expressions instead, and the metrics count it.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take, take_record_batch,
};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};
use datafusion::physical_plan::collect;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput, Time,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use kiln_kernels::codegen::numbering::KeyProgram;
use kiln_kernels::codegen::{
    ColumnData, FusedOutput, GroupFold, MAX_GROUPS, OutColumn, Program, Reduced, Ty,
};
use kiln_kernels::memory::{OomCounts, split_and_retry};
use kiln_kernels::{Device, DeviceInfo, KernelError};

use super::device_columns::{HostColumn, from_device, inline_view_words, to_device};
use super::gather_rows;
use super::group_keys::{GroupIndex, group_index};
use super::stage_aggregate::StageAggregate;
use crate::device::open_for_session;

/// Where one output column of a stage comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutput {
    /// Output `k` of the fused program, computed on the device.
    Device(usize),
    /// Input column `i`, passed through (gathered on the host).
    Input(usize),
}

/// One operator of the chain, kept to evaluate a batch on the CPU exactly as
/// DataFusion would have.
#[derive(Debug, Clone)]
pub enum CpuStep {
    Filter {
        predicate: Arc<dyn PhysicalExpr>,
        projection: Option<Vec<usize>>,
    },
    Project {
        exprs: Vec<(Arc<dyn PhysicalExpr>, String)>,
    },
}

/// What the lowering rule decided for one stage.
#[derive(Debug, Clone)]
pub struct StagePlan {
    pub program: Program,
    pub outputs: Vec<StageOutput>,
    /// The `FilterExec`/`ProjectionExec` operators the stage replaces, bottom
    /// first, each still over its original input: what EXPLAIN names, what
    /// a batch the device cannot compute is evaluated with, and what the
    /// planner puts back if it undoes the stage.
    pub original_ops: Vec<Arc<dyn ExecutionPlan>>,
    /// The predicate as DataFusion displays it, for EXPLAIN.
    pub predicate: Option<String>,
    /// Each output column as a DataFusion expression over the stage's
    /// input: how a stage built on top of this one computes its keys.
    pub output_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// A partial aggregate at the top of the stage (the last of
    /// `original_ops`): the program's reductions compute it and the stage
    /// emits a row of partial state per group and launch (one group without
    /// GROUP BY).
    pub aggregate: Option<StageAggregate>,
    /// The aggregate's GROUP BY, when it has one: the program's last input
    /// is then each row's group index, computed on the host per batch.
    pub group_by: Option<StageGroupBy>,
    /// A sort with a limit at the top of the stage (the last of
    /// `original_ops`): the kernel keeps each block's candidates for the
    /// first rows by the first sort key, and the host keeps the first
    /// `fetch` rows of the candidates by the whole ordering.
    pub topk: Option<StageTopK>,
    /// The cost model's estimates, for EXPLAIN.
    pub est_rows: Option<usize>,
    pub est_bytes_moved: Option<u64>,
}

/// The ORDER BY ... LIMIT of a stage.
#[derive(Debug, Clone)]
pub struct StageTopK {
    pub ordering: LexOrdering,
    pub fetch: usize,
}

/// The GROUP BY of a stage's partial aggregate.
#[derive(Debug, Clone)]
pub struct StageGroupBy {
    /// The keys, in the aggregate's order, as expressions over the stage's
    /// input (a column, or a key computed on the host).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The keys' output names, for EXPLAIN.
    pub names: Vec<String>,
    /// A batch with at most this many distinct key combinations is folded
    /// per tile ([`GroupFold::Tiles`], at most [`MAX_GROUPS`]); a batch
    /// with more with per-group atomics, or on the CPU where `atomics`
    /// says why not.
    pub max_groups: usize,
    /// Whether the device folds batches of more groups with atomics
    /// ([`GroupFold::Atomics`]), or why not.
    pub atomics: std::result::Result<(), String>,
    /// The keys as the device numbers them (see
    /// [`kiln_kernels::codegen::numbering`]), or why the host numbers them.
    /// The program's inputs are the stage's, then two 64-bit words per
    /// column of `key_views`.
    pub device_keys: std::result::Result<KeyProgram, String>,
    /// Stage input columns of strings or binaries (views) the device numbers
    /// by their inline views' words (see
    /// [`super::device_columns::inline_view_words`]).
    pub key_views: Vec<usize>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct GpuStageExec {
    input: Arc<dyn ExecutionPlan>,
    plan: Arc<StagePlan>,
    cpu_steps: Arc<Vec<CpuStep>>,
    device: DeviceInfo,
    batch_rows: usize,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl GpuStageExec {
    /// `properties` are those of the chain's top operator, whose output the
    /// stage reproduces.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        plan: StagePlan,
        device: DeviceInfo,
        batch_rows: usize,
        properties: Arc<PlanProperties>,
    ) -> Result<Self> {
        let mut ops = plan.original_ops.as_slice();
        if plan.aggregate.is_some() || plan.topk.is_some() {
            // The aggregate or sort at the top is the stage's own, not a
            // step of the CPU evaluation of a batch.
            ops = &ops[..ops.len().saturating_sub(1)];
        }
        let cpu_steps = ops
            .iter()
            .map(|op| cpu_step(op.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(GpuStageExec {
            input,
            plan: Arc::new(plan),
            cpu_steps: Arc::new(cpu_steps),
            device,
            batch_rows: batch_rows.max(1),
            cache: properties,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn plan(&self) -> &StagePlan {
        &self.plan
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// This stage with what the device turned out to support of its GROUP
    /// BY: the atomic fold, the numbering of its keys.
    pub fn with_group_support(
        &self,
        atomics: std::result::Result<(), String>,
        device_keys: std::result::Result<KeyProgram, String>,
    ) -> GpuStageExec {
        let mut plan = StagePlan::clone(&self.plan);
        if let Some(g) = &mut plan.group_by {
            g.atomics = atomics;
            g.device_keys = device_keys;
        }
        GpuStageExec {
            input: Arc::clone(&self.input),
            plan: Arc::new(plan),
            cpu_steps: Arc::clone(&self.cpu_steps),
            device: self.device.clone(),
            batch_rows: self.batch_rows,
            cache: Arc::clone(&self.cache),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for GpuStageExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let plan = &self.plan;
        let computed = plan
            .outputs
            .iter()
            .filter(|o| matches!(o, StageOutput::Device(_)))
            .count();
        write!(
            f,
            "GpuStageExec: device={}, ops=[{}], kernel=fused_{:016x}",
            self.device.id(),
            plan.original_ops
                .iter()
                .map(|op| op.name())
                .collect::<Vec<_>>()
                .join(", "),
            plan.program.fingerprint()
        )?;
        if let Some(p) = &plan.predicate {
            write!(f, ", predicate={p}")?;
        }
        if let Some(t) = &plan.topk {
            write!(f, ", topk=[{}], fetch={}", t.ordering, t.fetch)?;
        }
        if let Some(g) = &plan.group_by {
            write!(
                f,
                ", group_by=[{}], numbering={}, tile_groups={}, more_groups={}",
                g.names.join(", "),
                match &g.device_keys {
                    Ok(_) => "device".to_string(),
                    Err(reason) => format!("host ({reason})"),
                },
                g.max_groups,
                match &g.atomics {
                    Ok(()) => "atomics".to_string(),
                    Err(reason) => format!("cpu ({reason})"),
                }
            )?;
        }
        match &plan.aggregate {
            Some(agg) => write!(
                f,
                ", aggregate=[{}]{}, batch_rows={}",
                agg.functions
                    .iter()
                    .map(|a| a.name().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if agg.merge {
                    ", mode=final (states merged on the device, finished on the host)"
                } else if agg.single.is_some() {
                    ", mode=single (rows folded into states on the device, finished on the host)"
                } else {
                    ""
                },
                self.batch_rows
            )?,
            None => write!(
                f,
                ", computed={computed}, passed_through={}, batch_rows={}",
                plan.outputs.len() - computed,
                self.batch_rows
            )?,
        }
        if let Some(rows) = plan.est_rows {
            write!(f, ", est_rows={rows}")?;
        }
        if let Some(bytes) = plan.est_bytes_moved {
            write!(f, ", est_bytes_moved={bytes}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for GpuStageExec {
    fn name(&self) -> &'static str {
        "GpuStageExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("GpuStageExec takes exactly one child");
        };
        Ok(Arc::new(GpuStageExec {
            input,
            plan: Arc::clone(&self.plan),
            cpu_steps: Arc::clone(&self.cpu_steps),
            device: self.device.clone(),
            batch_rows: self.batch_rows,
            cache: Arc::clone(&self.cache),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let device = open_for_session(&self.device, context.session_config().options())?;
        let schema = self.schema();
        let launch_rows = self
            .batch_rows
            .min(device.fused_max_rows(&self.plan.program))
            .max(1);
        let state = StageState {
            input,
            input_schema: self.input.schema(),
            schema: Arc::clone(&schema),
            plan: Arc::clone(&self.plan),
            cpu_steps: Arc::clone(&self.cpu_steps),
            device,
            launch_rows,
            metrics: StageMetrics::new(&self.metrics, partition),
            done: false,
            too_many_groups: 0,
        };
        if state.finishes() {
            // A final aggregate: the launches merge the partition's states
            // on the device, the replaced aggregate finishes them; a
            // single-step one: the launches fold rows into states, its
            // final half finishes them.
            // The states wait for the end of the partition in memory the
            // session's pool accounts for: past its limit the query fails
            // with DataFusion's "resources exhausted" error.
            let reservation = MemoryConsumer::new(format!("GpuStageExec[{partition}]"))
                .register(context.memory_pool());
            let stream = futures::stream::once(async move {
                let mut state = state;
                let mut merged = Vec::new();
                loop {
                    let pending = state.gather().await?;
                    if pending.is_empty() {
                        break;
                    }
                    let (back, states) = state.run_aggregate(&pending, &context).await?;
                    state = back;
                    reservation.try_grow(states.get_array_memory_size())?;
                    merged.push(states);
                }
                let time = state.metrics.finish_time.clone();
                let timer = time.timer();
                let out = state.finish_merged(merged, &context).await?;
                timer.done();
                reservation.free();
                Ok::<_, DataFusionError>(futures::stream::iter(out.into_iter().map(Ok)))
            })
            .try_flatten();
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)));
        }
        if self.plan.topk.is_some() {
            // The partition's first rows, kept across launches.
            let stream = futures::stream::once(async move {
                let mut state = state;
                let mut best: Option<RecordBatch> = None;
                loop {
                    let pending = state.gather().await?;
                    if pending.is_empty() {
                        break;
                    }
                    // Launches (and their waits) off the async workers.
                    let (back, candidates) =
                        super::off_async(state, move |s| s.compute(&pending)).await?;
                    state = back;
                    best = Some(state.keep_first(best, candidates?)?);
                }
                let out = best.unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&state.schema)));
                Ok(out.record_output(&state.metrics.baseline))
            });
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)));
        }
        // Rows, or (with an aggregate) one batch of partial states per launch:
        // groups repeat across launches, and the final aggregate merges them.
        let stream = futures::stream::unfold(Some(state), move |state| {
            let context = Arc::clone(&context);
            async move {
                let mut state = state?;
                let pending = match state.gather().await {
                    Ok(pending) => pending,
                    Err(e) => {
                        state.done = true;
                        return Some((Err(e), Some(state)));
                    }
                };
                // gather() stops short of a launch's rows only at the end.
                if pending.is_empty() {
                    return None;
                }
                if state.plan.aggregate.is_some() {
                    return match state.run_aggregate(&pending, &context).await {
                        Ok((state, out)) => Some((Ok(out), Some(state))),
                        Err(e) => Some((Err(e), None)),
                    };
                }
                // Launches (and their waits) off the async workers.
                match super::off_async(state, move |s| s.run(&pending)).await {
                    Ok((state, out)) => Some((out, Some(state))),
                    Err(e) => Some((Err(e), None)),
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    /// The replaced operators' own estimates, chained bottom to top over the
    /// stage's input: what the chain would have reported, so planning above
    /// a stage (and the cost model) keeps its row counts.
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let Some(first) = input_stats.first() else {
            return internal_err!("GpuStageExec: no input statistics");
        };
        let mut stats = Arc::clone(first);
        for op in &self.plan.original_ops {
            stats = op.statistics_from_inputs(&[stats], args)?;
        }
        Ok(stats)
    }
}

struct StageMetrics {
    baseline: BaselineMetrics,
    bytes_to_device: Count,
    bytes_from_device: Count,
    device_batches: Count,
    cpu_batches: Count,
    /// Device batches of a grouped stage folded with atomics.
    atomic_batches: Count,
    /// Device batches whose keys the device numbered.
    numbered_batches: Count,
    device_time: Time,
    kernel_time: Time,
    /// A final or single-step aggregate's finish on the host.
    finish_time: Time,
    oom: super::OomMetrics,
}

impl StageMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        StageMetrics {
            baseline: BaselineMetrics::new(metrics, partition),
            bytes_to_device: MetricBuilder::new(metrics).counter("bytes_to_device", partition),
            bytes_from_device: MetricBuilder::new(metrics).counter("bytes_from_device", partition),
            device_batches: MetricBuilder::new(metrics).counter("device_batches", partition),
            cpu_batches: MetricBuilder::new(metrics).counter("cpu_fallback_batches", partition),
            atomic_batches: MetricBuilder::new(metrics).counter("atomic_fold_batches", partition),
            numbered_batches: MetricBuilder::new(metrics)
                .counter("device_numbered_batches", partition),
            device_time: MetricBuilder::new(metrics).subset_time("device_time", partition),
            kernel_time: MetricBuilder::new(metrics).subset_time("kernel_time", partition),
            finish_time: MetricBuilder::new(metrics).subset_time("host_finish_time", partition),
            oom: super::OomMetrics::new(metrics, partition),
        }
    }
}

struct StageState {
    input: SendableRecordBatchStream,
    input_schema: SchemaRef,
    schema: SchemaRef,
    plan: Arc<StagePlan>,
    cpu_steps: Arc<Vec<CpuStep>>,
    device: Device,
    launch_rows: usize,
    metrics: StageMetrics,
    done: bool,
    /// Consecutive device batches of a grouped stage with too many key
    /// combinations; past [`GIVE_UP_AFTER`] the partition's remaining
    /// batches go straight to the CPU (high-cardinality keys).
    too_many_groups: usize,
}

/// See [`StageState::too_many_groups`].
const GIVE_UP_AFTER: usize = 2;

/// The fewest rows split-and-retry cuts a launch to before it runs the rest
/// of an out-of-memory launch on the CPU.
const OOM_FLOOR_ROWS: usize = 1024;

/// Whether `e` is the device running out of memory (its budget or its
/// driver), which a smaller launch may avoid.
fn out_of_memory(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::External(inner) => inner
            .downcast_ref::<KernelError>()
            .is_some_and(KernelError::is_out_of_memory),
        _ => false,
    }
}

impl StageState {
    /// The next input batches, up to one launch's rows; empty at the end.
    async fn gather(&mut self) -> Result<Vec<RecordBatch>> {
        gather_rows(&mut self.input, self.launch_rows, &mut self.done).await
    }

    /// `pending` cut into slices of at most one launch's rows. A single
    /// input batch is sliced in place, not copied.
    fn slices(&self, pending: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        let batch = match pending {
            [one] => one.clone(),
            _ => concat_batches(&self.input_schema, pending)?,
        };
        let rows = batch.num_rows();
        Ok((0..rows)
            .step_by(self.launch_rows)
            .map(|start| batch.slice(start, self.launch_rows.min(rows - start)))
            .collect())
    }

    /// Runs the program on the device: `None` when the batch needs the CPU.
    /// A grouped program's last input is `groups`' row indices.
    fn launch_device(
        &self,
        batch: &RecordBatch,
        groups: Option<(&GroupIndex, GroupFold)>,
    ) -> Result<Option<FusedOutput>> {
        let plan = &self.plan;
        let Some(host) = host_columns(batch, &plan.program.inputs, &plan.program.used_inputs())?
        else {
            return Ok(None);
        };
        let mut inputs: Vec<_> = host
            .iter()
            .map(|h| h.as_ref().map(HostColumn::data))
            .collect();
        if let Some((index, _)) = groups {
            inputs.push(Some(ColumnData {
                ty: Ty::U32,
                values: bytemuck::cast_slice(&index.gid),
                validity: None,
            }));
        }
        let out = {
            let _t = self.metrics.device_time.timer();
            self.device
                .run_grouped(
                    &plan.program,
                    batch.num_rows(),
                    groups.map_or(1, |(g, _)| g.groups),
                    groups.map_or(GroupFold::Tiles, |(_, fold)| fold),
                    &inputs,
                )
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        if let Some(ns) = out.kernel_ns {
            self.metrics
                .kernel_time
                .add_duration(std::time::Duration::from_nanos(ns));
        }
        self.metrics.bytes_to_device.add(out.bytes_up as usize);
        self.metrics.bytes_from_device.add(out.bytes_down as usize);
        if out.needs_cpu {
            return Ok(None);
        }
        self.metrics.device_batches.add(1);
        Ok(Some(out))
    }

    /// The partial states of `pending`'s groups (one group without GROUP
    /// BY), one launch at a time. Each launch runs off the async workers
    /// (the state goes to the blocking pool and back, hence `self` by
    /// value); the CPU fallback's plan runs on them as any plan does.
    async fn run_aggregate(
        mut self,
        pending: &[RecordBatch],
        context: &Arc<TaskContext>,
    ) -> Result<(Self, RecordBatch)> {
        let mut parts = Vec::new();
        for part in self.slices(pending)? {
            let pieces = if self.too_many_groups >= GIVE_UP_AFTER {
                vec![(0..part.num_rows(), None)]
            } else {
                let launched = part.clone();
                let (back, out) = super::off_async(self, move |s| {
                    let time = s.metrics.baseline.elapsed_compute().clone();
                    let _timer = time.timer();
                    s.launch_aggregate_split(&launched)
                })
                .await?;
                self = back;
                out?
            };
            for (rows, on_device) in pieces {
                let piece = part.slice(rows.start, rows.len());
                match on_device {
                    Some(states) => parts.push(states),
                    // States to merge stay as they are, for the final aggregate.
                    None if self.merges() => {
                        self.metrics.cpu_batches.add(1);
                        parts.push(piece);
                    }
                    None => {
                        self.metrics.cpu_batches.add(1);
                        let plan = self.aggregate_on_cpu(piece)?;
                        parts.extend(collect(plan, Arc::clone(context)).await?);
                    }
                }
            }
        }
        let out = concat_batches(&self.states_schema(), &parts)?;
        if self.finishes() {
            return Ok((self, out));
        }
        let out = out.record_output(&self.metrics.baseline);
        Ok((self, out))
    }

    /// Whether the stage merges partial states (a final aggregate).
    fn merges(&self) -> bool {
        self.plan.aggregate.as_ref().is_some_and(|a| a.merge)
    }

    /// Whether the stage's states are finished on the host at the end of
    /// the partition (a final or single-step aggregate).
    fn finishes(&self) -> bool {
        self.plan
            .aggregate
            .as_ref()
            .is_some_and(|a| a.merge || a.single.is_some())
    }

    /// The schema of the states a launch emits: the stage's output (a
    /// partial aggregate), a final aggregate's input (states merged, still
    /// states), or a single-step aggregate's partial half's output.
    fn states_schema(&self) -> SchemaRef {
        match &self.plan.aggregate {
            Some(a) if a.merge => Arc::clone(&self.input_schema),
            Some(a) => match &a.single {
                Some(split) => split.partial.schema(),
                None => Arc::clone(&self.schema),
            },
            None => Arc::clone(&self.schema),
        }
    }

    /// A final or single-step aggregate's result: its final aggregate over
    /// the states the launches emitted (and the batches left to the CPU).
    // `&mut self`: the future holds the state across an await, and the
    // state is `Send`, not `Sync`.
    async fn finish_merged(
        &mut self,
        states: Vec<RecordBatch>,
        context: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let single = self.plan.aggregate.as_ref().and_then(|a| a.single.as_ref());
        let Some(aggregate) = single.map(|s| &s.finish).or(self.plan.original_ops.last()) else {
            return internal_err!("GpuStageExec: aggregate stage without its aggregate");
        };
        let source = MemorySourceConfig::try_new_exec(&[states], self.states_schema(), None)?;
        let plan = Arc::clone(aggregate).replace_children(
            vec![source],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        let out = collect(plan, Arc::clone(context)).await?;
        Ok(out
            .into_iter()
            .map(|b| b.record_output(&self.metrics.baseline))
            .collect())
    }

    /// [`Self::launch_aggregate`] with split-and-retry: a launch that runs
    /// out of device memory is halved and its halves launched, down to
    /// [`OOM_FLOOR_ROWS`]; each piece's states, or `None` for a piece the
    /// CPU aggregates.
    fn launch_aggregate_split(
        &mut self,
        batch: &RecordBatch,
    ) -> Result<Vec<(std::ops::Range<usize>, Option<RecordBatch>)>> {
        let mut oom = OomCounts::default();
        let pieces = split_and_retry(
            batch.num_rows(),
            OOM_FLOOR_ROWS,
            &mut oom,
            |r| self.launch_aggregate(&batch.slice(r.start, r.len())),
            |_| Ok(None),
            out_of_memory,
        );
        self.metrics.oom.add(oom);
        pieces
    }

    /// One launch of an aggregate stage: `None` when the batch has more key
    /// combinations than the stage folds or the device flags it. A batch
    /// with more groups than the tile fold takes is folded with atomics
    /// where the device has them for the program.
    fn launch_aggregate(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let plan = Arc::clone(&self.plan);
        let Some(agg) = &plan.aggregate else {
            return internal_err!("GpuStageExec: aggregate launch without an aggregate");
        };
        let (keys, index) = match &plan.group_by {
            None => (None, None),
            Some(group_by) => {
                let tile_groups = group_by.max_groups.clamp(1, MAX_GROUPS);
                // With atomics every batch can be numbered: at most one
                // group per row.
                let limit = match group_by.atomics {
                    Ok(()) => batch.num_rows().max(tile_groups),
                    Err(_) => tile_groups,
                };
                let numbered = match &group_by.device_keys {
                    Ok(program) => self.number_on_device(program, batch)?,
                    Err(_) => None,
                };
                let (keys, index) = match numbered {
                    // The host evaluates the keys of each group's first row
                    // only, after the launch.
                    Some(index) if index.groups <= limit => (None, index),
                    Some(_) => {
                        self.too_many_groups += 1;
                        return Ok(None);
                    }
                    None => {
                        // Keys are evaluated over every row, also those the
                        // stage's filter drops; an error there (a division by
                        // zero DataFusion would not have met) sends the batch
                        // to the CPU path, which filters first.
                        let Ok(keys) = group_by
                            .keys
                            .iter()
                            .map(|k| k.evaluate(batch)?.into_array(batch.num_rows()))
                            .collect::<Result<Vec<ArrayRef>>>()
                        else {
                            return Ok(None);
                        };
                        let Some(index) = group_index(&keys, limit) else {
                            self.too_many_groups += 1;
                            return Ok(None);
                        };
                        (Some(keys), index)
                    }
                };
                self.too_many_groups = 0;
                let fold = if index.groups <= tile_groups {
                    GroupFold::Tiles
                } else {
                    GroupFold::Atomics
                };
                (keys, Some((index, fold)))
            }
        };
        let Some(out) = self.launch_device(batch, index.as_ref().map(|(i, f)| (i, *f)))? else {
            return Ok(None);
        };
        if matches!(index, Some((_, GroupFold::Atomics))) {
            self.metrics.atomic_batches.add(1);
        }
        let groups = index.as_ref().map_or(1, |(i, _)| i.groups);
        let present: Vec<usize> = (0..groups)
            .filter(|&g| out.group_rows.get(g).is_some_and(|n| *n > 0))
            .collect();
        let key_columns = match (&index, &plan.group_by) {
            (Some((index, _)), Some(group_by)) => {
                let first = UInt32Array::from(
                    present
                        .iter()
                        .map(|&g| index.first_row[g])
                        .collect::<Vec<_>>(),
                );
                match keys {
                    Some(keys) => keys
                        .iter()
                        .map(|k| take(k.as_ref(), &first, None))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                    None => {
                        let rows = key_rows(batch, &group_by.keys, &first)?;
                        group_by
                            .keys
                            .iter()
                            .map(|k| k.evaluate(&rows)?.into_array(rows.num_rows()))
                            .collect::<Result<Vec<ArrayRef>>>()?
                    }
                }
            }
            _ => Vec::new(),
        };
        let per_group = plan.program.reduce.len();
        let states: Vec<&[Reduced]> = present
            .iter()
            .filter_map(|&g| out.reduced.get(g * per_group..(g + 1) * per_group))
            .collect();
        agg.finish_groups(key_columns, &states, &self.states_schema())
            .map(Some)
    }

    /// The batch's group index from the device's numbering of its keys:
    /// `None` when a key column does not convert or the device flags the
    /// batch (the host numbers it then).
    fn number_on_device(
        &self,
        program: &KeyProgram,
        batch: &RecordBatch,
    ) -> Result<Option<GroupIndex>> {
        let Some(mut host) = host_columns(batch, &program.inputs, &program.used_inputs())? else {
            return Ok(None);
        };
        let views = self.plan.group_by.iter().flat_map(|g| &g.key_views);
        for &column in views {
            // A value past 12 bytes: the host numbers the batch.
            let Some(words) = batch
                .columns()
                .get(column)
                .and_then(|c| inline_view_words(c.as_ref()))
            else {
                return Ok(None);
            };
            host.extend(words.map(Some));
        }
        let inputs: Vec<_> = host
            .iter()
            .map(|h| h.as_ref().map(HostColumn::data))
            .collect();
        let out = {
            let _t = self.metrics.device_time.timer();
            self.device
                .number_groups(program, batch.num_rows(), &inputs)
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        self.metrics.bytes_to_device.add(out.bytes_up as usize);
        self.metrics.bytes_from_device.add(out.bytes_down as usize);
        if out.needs_cpu {
            return Ok(None);
        }
        self.metrics.numbered_batches.add(1);
        Ok(Some(GroupIndex {
            groups: out.groups().max(1),
            gid: out.gid,
            first_row: out.first_row,
        }))
    }

    /// The plan that aggregates a batch of an aggregate stage on the CPU: the
    /// replaced `AggregateExec` itself over the batch after the stage's
    /// filters and projections.
    fn aggregate_on_cpu(&self, batch: RecordBatch) -> Result<Arc<dyn ExecutionPlan>> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let rows = run_on_cpu(&self.cpu_steps, batch)?;
        let single = self.plan.aggregate.as_ref().and_then(|a| a.single.as_ref());
        let Some(aggregate) = single.map(|s| &s.partial).or(self.plan.original_ops.last()) else {
            return internal_err!("GpuStageExec: aggregate stage without its aggregate");
        };
        let schema = aggregate.children()[0].schema();
        let rows = RecordBatch::try_new_with_options(
            Arc::clone(&schema),
            rows.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
        )?;
        let source = MemorySourceConfig::try_new_exec(&[vec![rows]], schema, None)?;
        Arc::clone(aggregate).replace_children(
            vec![source],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn run(&self, pending: &[RecordBatch]) -> Result<RecordBatch> {
        let out = self.compute(pending)?;
        Ok(out.record_output(&self.metrics.baseline))
    }

    /// The stage's rows of `pending` (for a top-k, its candidates).
    fn compute(&self, pending: &[RecordBatch]) -> Result<RecordBatch> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let mut parts = Vec::new();
        for part in self.slices(pending)? {
            // A launch that runs out of device memory is halved and its
            // halves launched, down to OOM_FLOOR_ROWS; the rest runs on the
            // CPU.
            let mut oom = OomCounts::default();
            let pieces = split_and_retry(
                part.num_rows(),
                OOM_FLOOR_ROWS,
                &mut oom,
                |r| self.launch(&part.slice(r.start, r.len())),
                |r| self.on_cpu(&part.slice(r.start, r.len())),
                out_of_memory,
            );
            self.metrics.oom.add(oom);
            parts.extend(pieces?.into_iter().map(|(_, rows)| rows));
        }
        Ok(if parts.len() == 1 {
            parts
                .pop()
                .unwrap_or_else(|| RecordBatch::new_empty(Arc::clone(&self.schema)))
        } else {
            concat_batches(&self.schema, &parts)?
        })
    }

    /// The first `fetch` rows of `best` and `candidates` together, by the
    /// stage's whole ordering, as DataFusion's sort orders them.
    fn keep_first(
        &self,
        best: Option<RecordBatch>,
        candidates: RecordBatch,
    ) -> Result<RecordBatch> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let Some(topk) = &self.plan.topk else {
            return internal_err!("GpuStageExec: top-k without an ordering");
        };
        let batch = match best {
            Some(best) => concat_batches(&self.schema, &[best, candidates])?,
            None => candidates,
        };
        let columns = topk
            .ordering
            .iter()
            .map(|e| {
                Ok(SortColumn {
                    values: e.expr.evaluate(&batch)?.into_array(batch.num_rows())?,
                    options: Some(e.options),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let first = lexsort_to_indices(&columns, Some(topk.fetch))?;
        Ok(take_record_batch(&batch, &first)?)
    }

    fn launch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let plan = &self.plan;
        let Some(out) = self.launch_device(batch, None)? else {
            return self.on_cpu(batch);
        };
        let rows = out.rows();
        let indices = plan
            .program
            .compacts()
            .then(|| UInt32Array::from(out.indices));
        // Each kernel output feeds one column: move it, don't copy it.
        let mut computed: Vec<Option<OutColumn>> = out.columns.into_iter().map(Some).collect();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(plan.outputs.len());
        for (field, output) in self.schema.fields().iter().zip(&plan.outputs) {
            columns.push(match output {
                StageOutput::Device(k) => {
                    let Some(column) = computed.get_mut(*k).and_then(Option::take) else {
                        return internal_err!(
                            "GpuStageExec: kernel output {k} used twice or missing"
                        );
                    };
                    from_device(column, field.data_type())?
                }
                StageOutput::Input(i) => match &indices {
                    Some(idx) => take(batch.column(*i), idx, None)?,
                    None => Arc::clone(batch.column(*i)),
                },
            });
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }

    fn on_cpu(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.metrics.cpu_batches.add(1);
        let out = run_on_cpu(&self.cpu_steps, batch.clone())?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            out.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(out.num_rows())),
        )?)
    }
}

/// The CPU evaluation of one replaced operator.
/// The `rows` of `batch` the GROUP BY `keys` are evaluated over: the
/// columns they read taken, the others all NULL (the schema made nullable
/// to allow it), so a group's keys cost no copy of the columns they do not
/// read — a batch of many groups would otherwise copy every input column.
fn key_rows(
    batch: &RecordBatch,
    keys: &[Arc<dyn PhysicalExpr>],
    rows: &UInt32Array,
) -> Result<RecordBatch> {
    let read: std::collections::HashSet<usize> = keys
        .iter()
        .flat_map(collect_columns)
        .map(|c| c.index())
        .collect();
    let schema = Schema::new(
        batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    );
    let columns = batch
        .columns()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if read.contains(&i) {
                Ok(take(c.as_ref(), rows, None)?)
            } else {
                Ok(new_null_array(c.data_type(), rows.len()))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::new(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows.len())),
    )?)
}

/// The columns of `batch` a launch reads (`used`), in the device layout of
/// the program's input types: `None` when one does not convert (a decimal
/// beyond 64 bits, a count past 2^63), and the batch takes the CPU path.
fn host_columns(
    batch: &RecordBatch,
    types: &[Ty],
    used: &[bool],
) -> Result<Option<Vec<Option<HostColumn>>>> {
    let mut host = Vec::with_capacity(used.len());
    for ((column, used), want) in batch.columns().iter().zip(used).zip(types) {
        if !used {
            host.push(None);
            continue;
        }
        match to_device(column.as_ref())?.and_then(|h| h.as_input(*want)) {
            Some(h) => host.push(Some(h)),
            None => return Ok(None),
        }
    }
    Ok(Some(host))
}

fn cpu_step(op: &dyn ExecutionPlan) -> Result<CpuStep> {
    let any = op;
    if let Some(f) = any.downcast_ref::<FilterExec>() {
        if f.fetch().is_some() {
            return internal_err!("GpuStageExec cannot replace a FilterExec with a fetch");
        }
        return Ok(CpuStep::Filter {
            predicate: Arc::clone(f.predicate()),
            projection: f.projection().as_ref().map(|p| p.to_vec()),
        });
    }
    if let Some(p) = any.downcast_ref::<ProjectionExec>() {
        return Ok(CpuStep::Project {
            exprs: p
                .expr()
                .iter()
                .map(|e| (Arc::clone(&e.expr), e.alias.clone()))
                .collect(),
        });
    }
    internal_err!("GpuStageExec cannot replace {}", op.name())
}

/// Evaluates a stage's filters and projections on the CPU, as DataFusion's
/// own operators would.
pub fn run_on_cpu(steps: &[CpuStep], batch: RecordBatch) -> Result<RecordBatch> {
    let mut batch = batch;
    for step in steps {
        batch = match step {
            CpuStep::Filter {
                predicate,
                projection,
            } => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let Some(mask) = mask.as_boolean_opt() else {
                    return internal_err!("GpuStageExec: filter predicate is not boolean");
                };
                let kept = filter_record_batch(&batch, mask)?;
                match projection {
                    Some(p) => kept.project(p)?,
                    None => kept,
                }
            }
            CpuStep::Project { exprs } => {
                let rows = batch.num_rows();
                let mut fields = Vec::with_capacity(exprs.len());
                let mut columns = Vec::with_capacity(exprs.len());
                for (expr, name) in exprs {
                    let array = expr.evaluate(&batch)?.into_array(rows)?;
                    fields.push(Field::new(name, array.data_type().clone(), true));
                    columns.push(array);
                }
                RecordBatch::try_new_with_options(
                    Arc::new(Schema::new(fields)),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )?
            }
        };
    }
    Ok(batch)
}
