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

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet, RecordOutput};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use kiln_kernels::DeviceInfo;
use kiln_kernels::codegen::Program;
use kiln_kernels::codegen::numbering::KeyProgram;

use super::stage_aggregate::StageAggregate;
use crate::device::open_for_session;

mod cpu;
mod launch;

use cpu::cpu_step;
pub use cpu::run_on_cpu;
use launch::{StageMetrics, StageState};

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
        // The stage keeps its input's partitions: a new input with another
        // number of them (a job's part over other slices) changes its own.
        let mut cache = Arc::clone(&self.cache);
        let partitions = input.properties().partitioning.partition_count();
        if cache.partitioning.partition_count() != partitions {
            Arc::make_mut(&mut cache).partitioning = input.properties().partitioning.clone();
        }
        Ok(Arc::new(GpuStageExec {
            input,
            plan: Arc::clone(&self.plan),
            cpu_steps: Arc::clone(&self.cpu_steps),
            device: self.device.clone(),
            batch_rows: self.batch_rows,
            cache,
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
