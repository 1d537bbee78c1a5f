//! `VectorTopKExec`: the k corpus rows closest to one constant query vector,
//! by a tiled GEMM and a running top-k on the selected device. It replaces
//! `ORDER BY cosine_similarity(v, <query>) DESC LIMIT k` (and the dot / L2
//! forms) and serves `vector_search(...)`: the table is never sorted.
//!
//! Over a partitioned input it runs in two steps, as an aggregate does: a
//! [`TopKMode::Partial`] operator keeps the k closest rows of each input
//! partition (in parallel, and on a cluster in separate tasks), tagged with
//! their score and their row id in the whole input, and a
//! [`TopKMode::Final`] one above a merge keeps the k closest of those by
//! score, ties by row id — the same rows, in the same order, as one pass
//! over every partition ([`TopKMode::Single`]).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, RecordBatch, RecordBatchOptions, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::datatypes::{Float32Type, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::Distribution;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;
use kiln_kernels::DeviceInfo;

use super::corpus::{OnePartition, SearchMetrics, SearchSpec, search_corpus, unmerged};
use crate::device::open_for_session;

/// Where rows without a score (NULL vectors, zero vectors under cosine) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub enum Unscored {
    /// Before every scored row (SQL `NULLS FIRST`).
    First,
    /// After every scored row (SQL `NULLS LAST`).
    Last,
    /// Nowhere: they are not results (`vector_search`).
    Skip,
}

/// Which step of a top-k an operator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopKMode {
    /// One pass over every input partition.
    Single,
    /// Per input partition, its k closest rows (and unscored rows, as
    /// `Unscored` asks), with [`ROW_ID`] and [`SCORE`] columns appended.
    Partial,
    /// The k closest of a partial step's rows, by score and then row id.
    Final,
}

/// The row id column of a partial top-k's output: the row's position in
/// the whole input (`partition << 40 | row`), which orders ties.
pub const ROW_ID: &str = "__kiln_topk_row_id";
/// The score column of a partial top-k's output (NULL: no score).
pub const SCORE: &str = "__kiln_topk_score";

/// The k rows of `input` closest to `query`.
#[derive(Debug)]
pub struct VectorTopKExec {
    input: Arc<dyn ExecutionPlan>,
    mode: TopKMode,
    spec: SearchSpec,
    query: Vec<f32>,
    unscored: Unscored,
    /// Name of an appended score column, if any.
    score: Option<String>,
    /// A partial step's partitions' numbers in the whole input (row ids
    /// count from them); `None`: their own indices.
    global_partitions: Option<Vec<usize>>,
    device: DeviceInfo,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl VectorTopKExec {
    /// One pass over every partition of `input` ([`TopKMode::Single`]).
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        spec: SearchSpec,
        query: Vec<f32>,
        unscored: Unscored,
        score: Option<String>,
        device: DeviceInfo,
    ) -> Result<Self> {
        Self::with_mode(
            input,
            TopKMode::Single,
            spec,
            query,
            unscored,
            score,
            device,
        )
    }

    /// The top-k of `input` planned for its partitioning: one operator for
    /// one partition, else a partial step per partition, a merge and a
    /// final step.
    pub fn plan(
        input: Arc<dyn ExecutionPlan>,
        spec: SearchSpec,
        query: Vec<f32>,
        unscored: Unscored,
        score: Option<String>,
        device: DeviceInfo,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if input.output_partitioning().partition_count() <= 1 {
            return Ok(Arc::new(Self::try_new(
                input, spec, query, unscored, score, device,
            )?));
        }
        let partial = Self::with_mode(
            input,
            TopKMode::Partial,
            spec.clone(),
            query.clone(),
            unscored,
            None,
            device.clone(),
        )?;
        let merged = Arc::new(CoalescePartitionsExec::new(Arc::new(partial)));
        Ok(Arc::new(Self::with_mode(
            merged,
            TopKMode::Final,
            spec,
            query,
            unscored,
            score,
            device,
        )?))
    }

    /// `spec.keep_unscored` is derived from `unscored` and `spec.k`. A
    /// final step's input has the partial step's schema.
    pub fn with_mode(
        input: Arc<dyn ExecutionPlan>,
        mode: TopKMode,
        mut spec: SearchSpec,
        query: Vec<f32>,
        unscored: Unscored,
        score: Option<String>,
        device: DeviceInfo,
    ) -> Result<Self> {
        if mode == TopKMode::Partial && score.is_some() {
            return internal_err!("a partial vector top-k appends its own score column");
        }
        if query.len() != spec.dim {
            return internal_err!(
                "VectorTopKExec: query has {} components, spec says {}",
                query.len(),
                spec.dim
            );
        }
        spec.keep_unscored = if unscored == Unscored::Skip {
            0
        } else {
            spec.k
        };
        let input_schema = input.schema();
        // The rows' own columns: a final step's input without the partial
        // step's two.
        let mut fields: Vec<Arc<Field>> = input_schema.fields().iter().cloned().collect();
        if mode == TopKMode::Final {
            let n = fields.len();
            if n < 2 || fields[n - 2].name() != ROW_ID || fields[n - 1].name() != SCORE {
                return internal_err!("a final vector top-k needs a partial step's rows");
            }
            fields.truncate(n - 2);
        }
        match (mode, &score) {
            (TopKMode::Partial, _) => {
                fields.push(Arc::new(Field::new(ROW_ID, DataType::UInt64, false)));
                fields.push(Arc::new(Field::new(SCORE, DataType::Float32, true)));
            }
            (_, Some(name)) => fields.push(Arc::new(Field::new(name, DataType::Float32, true))),
            (_, None) => {}
        }
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        ));
        let partitions = match mode {
            TopKMode::Partial => input.output_partitioning().partition_count(),
            TopKMode::Single | TopKMode::Final => 1,
        };
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(VectorTopKExec {
            input,
            mode,
            spec,
            query,
            unscored,
            score,
            global_partitions: None,
            device,
            schema,
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// This partial step running as partitions `global` of the whole input
    /// (a cluster task runs a plan cut down to its own partitions, numbered
    /// from 0 there); row ids, and so the order of ties, count from them.
    pub fn with_global_partitions(&self, global: Vec<usize>) -> Result<Self> {
        let partitions = self.cache.output_partitioning().partition_count();
        if self.mode != TopKMode::Partial || global.len() != partitions {
            return internal_err!(
                "global partition numbers ({}) are for a partial vector top-k of as many partitions ({partitions})",
                global.len()
            );
        }
        let mut exec = self.over(Arc::clone(&self.input))?;
        exec.global_partitions = Some(global);
        Ok(exec)
    }

    /// This operator, as it is, over another input.
    fn over(&self, input: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let mut exec = Self::with_mode(
            input,
            self.mode,
            self.spec.clone(),
            self.query.clone(),
            self.unscored,
            self.score.clone(),
            self.device.clone(),
        )?;
        exec.global_partitions = self.global_partitions.clone();
        Ok(exec)
    }

    pub fn spec(&self) -> &SearchSpec {
        &self.spec
    }

    pub fn mode(&self) -> TopKMode {
        self.mode
    }

    pub fn query(&self) -> &[f32] {
        &self.query
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    pub fn unscored(&self) -> Unscored {
        self.unscored
    }

    /// The name of the appended score column, if any.
    pub fn score(&self) -> Option<&str> {
        self.score.as_deref()
    }
}

impl DisplayAs for VectorTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorTopKExec: {}column={}, metric={}, k={}, dim={}, device={}, tile_rows={}",
            match self.mode {
                TopKMode::Single => "",
                TopKMode::Partial => "mode=partial, ",
                TopKMode::Final => "mode=final, ",
            },
            self.spec.column_name,
            self.spec.metric,
            self.spec.k,
            self.spec.dim,
            self.device.id(),
            self.spec.tile_rows(1)
        )?;
        match self.unscored {
            Unscored::First => write!(f, ", unscored=first"),
            Unscored::Last => write!(f, ", unscored=last"),
            Unscored::Skip => Ok(()),
        }
    }
}

impl ExecutionPlan for VectorTopKExec {
    fn name(&self) -> &'static str {
        "VectorTopKExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    /// The inputs are read in order, partition after partition: ties break
    /// by that order, so no repartitioning may be put below (a round-robin
    /// exchange would deal rows out in an order that differs between runs,
    /// and between a local run and a cluster).
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; 1]
    }

    /// A single pass and a final step read their whole input in one task
    /// (through a merge, which they read partition by partition); a
    /// partial step reads its own partition.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.mode {
            TopKMode::Partial => vec![Distribution::UnspecifiedDistribution],
            TopKMode::Single | TopKMode::Final => vec![Distribution::SinglePartition],
        }
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
            return internal_err!("VectorTopKExec takes exactly one child");
        };
        Ok(Arc::new(self.over(input)?))
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
        let partitions = self.properties().output_partitioning().partition_count();
        if partition >= partitions {
            return internal_err!(
                "VectorTopKExec has {partitions} partitions, asked for {partition}"
            );
        }
        let input = Arc::clone(&self.input);
        let mode = self.mode;
        let spec = self.spec.clone();
        let query = self.query.clone();
        let unscored = self.unscored;
        let with_score = self.score.is_some();
        let device = self.device.clone();
        let schema = Arc::clone(&self.schema);
        let search_metrics = SearchMetrics::new(&self.metrics, partition);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let out_schema = Arc::clone(&schema);
        let global = self.global_partitions.clone();
        let once = futures::stream::once(async move {
            if mode == TopKMode::Final {
                let batch =
                    merge_partials(&input, &context, &spec, unscored, with_score, out_schema)
                        .await?;
                baseline.record_output(batch.num_rows());
                return Ok(batch);
            }
            let device = open_for_session(&device, context.session_config().options())?;
            let only = (mode == TopKMode::Partial).then(|| OnePartition {
                partition,
                global: global.map_or(partition, |g| g[partition]),
            });
            let outcome = search_corpus(
                &input,
                only,
                &context,
                &spec,
                &device,
                &query,
                &search_metrics,
            )
            .await?;
            let _timer = baseline.elapsed_compute().timer();
            let hits = outcome.hits.into_iter().next().unwrap_or_default();
            let scored = hits.iter().map(|h| (h.id, Some(h.score)));
            let nulls = outcome.unscored.iter().map(|id| (*id, None));
            let order: Vec<(u64, Option<f32>)> = match unscored {
                Unscored::First => nulls.chain(scored).take(spec.k).collect(),
                Unscored::Last | Unscored::Skip => scored.chain(nulls).take(spec.k).collect(),
            };
            let ids: Vec<u64> = order.iter().map(|(id, _)| *id).collect();
            let rows = outcome.rows.gather(&ids)?;
            let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
            if mode == TopKMode::Partial {
                columns.push(Arc::new(UInt64Array::from(ids)));
            }
            if with_score || mode == TopKMode::Partial {
                columns.push(Arc::new(Float32Array::from_iter(
                    order.iter().map(|(_, s)| *s),
                )));
            }
            let batch = RecordBatch::try_new(out_schema, columns)?;
            baseline.record_output(batch.num_rows());
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, once)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A final step: the k closest rows of the partial steps' output (every
/// partition of `input`, below its merge), by score and then row id, with
/// unscored rows placed as `unscored` says.
async fn merge_partials(
    input: &Arc<dyn ExecutionPlan>,
    context: &Arc<TaskContext>,
    spec: &SearchSpec,
    unscored: Unscored,
    with_score: bool,
    schema: SchemaRef,
) -> Result<RecordBatch> {
    let input = unmerged(input);
    let mut batches = Vec::new();
    for p in 0..input.output_partitioning().partition_count() {
        let mut stream = input.execute(p, Arc::clone(context))?;
        while let Some(batch) = stream.next().await {
            batches.push(batch?);
        }
    }
    let all = concat_batches(&input.schema(), &batches)?;
    let n = all.num_columns();
    let ids = all.column(n - 2).as_primitive::<UInt64Type>();
    let scores = all.column(n - 1).as_primitive::<Float32Type>();
    let closer = |a: f32, b: f32| {
        if spec.metric.higher_is_closer() {
            b.total_cmp(&a)
        } else {
            a.total_cmp(&b)
        }
    };
    let mut scored: Vec<usize> = (0..all.num_rows())
        .filter(|&i| scores.is_valid(i))
        .collect();
    scored.sort_by(|&a, &b| {
        closer(scores.value(a), scores.value(b)).then(ids.value(a).cmp(&ids.value(b)))
    });
    let mut nulls: Vec<usize> = (0..all.num_rows()).filter(|&i| scores.is_null(i)).collect();
    nulls.sort_by_key(|&i| ids.value(i));
    let order: Vec<usize> = match unscored {
        Unscored::First => nulls.into_iter().chain(scored).take(spec.k).collect(),
        Unscored::Last => scored.into_iter().chain(nulls).take(spec.k).collect(),
        Unscored::Skip => scored.into_iter().take(spec.k).collect(),
    };
    let indices = UInt32Array::from_iter_values(order.iter().map(|&i| i as u32));
    let keep = if with_score { n - 1 } else { n - 2 };
    let mut columns = Vec::with_capacity(keep);
    for c in (0..n - 2).chain(with_score.then_some(n - 1)) {
        columns.push(take(all.column(c), &indices, None)?);
    }
    Ok(RecordBatch::try_new_with_options(
        schema,
        columns,
        &RecordBatchOptions::new().with_row_count(Some(order.len())),
    )?)
}
