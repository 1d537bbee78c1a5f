//! `EmbedExec`: appends the embedding of a text expression to every row of
//! its input, gathering rows across input batches into device batches.
//!
//! `embed(text)` in a projection is planned as this operator (the planner's
//! `GatherEmbeddings` rule), not called once per DataFusion batch: a scan's
//! batches may be small (a small row group, a selective filter), and the
//! encoder's batches are best built from many rows, grouped by length so
//! that padding and launches are few. The operator reads input batches until
//! it holds `kiln.embed_batch_rows` rows (or the input ends), embeds their
//! texts in one call on the session's device, and emits them as one batch
//! with the embedding column appended. Row order is kept: output row `i` is
//! input row `i`.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ColumnStatistics, DataFusionError, Result, Statistics, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, RecordOutput,
};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream,
};
use kiln_kernels::Device;

use crate::functions::embed::{embed_array, embedding_type, session_device};
use crate::model::{EmbeddingModel, shared_model};

/// See the module documentation.
#[derive(Debug)]
pub struct EmbedExec {
    input: Arc<dyn ExecutionPlan>,
    text: Arc<dyn PhysicalExpr>,
    model_name: String,
    model: Arc<EmbeddingModel>,
    batch_rows: usize,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl EmbedExec {
    /// Appends column `output` = the embedding of `text` (an expression over
    /// `input`) by the model `model_name`, `batch_rows` rows at a time.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        text: Arc<dyn PhysicalExpr>,
        model_name: String,
        output: &str,
        batch_rows: usize,
    ) -> Result<Self> {
        let model =
            shared_model(&model_name).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let input_schema = input.schema();
        let mut fields: Vec<_> = input_schema.fields().iter().cloned().collect();
        fields.push(Arc::new(Field::new(
            output,
            embedding_type(model.dim()),
            true,
        )));
        let schema = Arc::new(Schema::new_with_metadata(
            fields,
            input_schema.metadata().clone(),
        ));
        let cache = Arc::new(properties(&input, schema));
        Ok(EmbedExec {
            input,
            text,
            model_name,
            model,
            batch_rows: batch_rows.max(1),
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    pub fn text(&self) -> &Arc<dyn PhysicalExpr> {
        &self.text
    }

    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }
}

/// The input's partitioning and orderings, over the wider schema (existing
/// columns keep their indices).
fn properties(input: &Arc<dyn ExecutionPlan>, schema: SchemaRef) -> PlanProperties {
    let input = input.properties();
    let mut eq = EquivalenceProperties::new(schema);
    if let Some(ordering) = input.output_ordering() {
        eq.add_ordering(ordering.iter().cloned());
    }
    PlanProperties::new(
        eq,
        input.output_partitioning().clone(),
        input.emission_type,
        input.boundedness,
    )
}

impl DisplayAs for EmbedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let schema = self.schema();
        let output = schema
            .fields()
            .last()
            .map(|f| f.name().as_str())
            .unwrap_or("");
        write!(
            f,
            "EmbedExec: {output}=embed({}, '{}'), dim={}, batch_rows={}",
            self.text,
            self.model_name,
            self.model.dim(),
            self.batch_rows
        )
    }
}

impl ExecutionPlan for EmbedExec {
    fn name(&self) -> &'static str {
        "EmbedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        f(&self.text)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("EmbedExec takes exactly one child");
        };
        let cache = Arc::new(properties(&input, self.schema()));
        Ok(Arc::new(EmbedExec {
            input,
            text: Arc::clone(&self.text),
            model_name: self.model_name.clone(),
            model: Arc::clone(&self.model),
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
        let device = session_device(context.session_config().options())?;
        let input = self.input.execute(partition, context)?;
        let state = EmbedState {
            input,
            input_schema: self.input.schema(),
            schema: self.schema(),
            text: Arc::clone(&self.text),
            model: Arc::clone(&self.model),
            device,
            batch_rows: self.batch_rows,
            metrics: EmbedMetrics::new(&self.metrics, partition),
            done: false,
        };
        let schema = self.schema();
        let stream = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            let pending = match state.gather().await {
                Ok(pending) => pending,
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), Some(state)));
                }
            };
            if pending.is_empty() {
                return None;
            }
            // The forward pass runs off the async workers.
            match super::off_async(state, move |s| s.embed(&pending)).await {
                Ok((mut state, out)) => {
                    if out.is_err() {
                        state.done = true;
                    }
                    Some((out, Some(state)))
                }
                Err(e) => Some((Err(e), None)),
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

    /// The input's rows, one more column of unknown statistics.
    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        let Some(first) = input_stats.first() else {
            return internal_err!("EmbedExec: no input statistics");
        };
        let mut stats = first.as_ref().clone();
        stats
            .column_statistics
            .push(ColumnStatistics::new_unknown());
        stats.total_byte_size = datafusion::common::stats::Precision::Absent;
        Ok(Arc::new(stats))
    }
}

struct EmbedMetrics {
    baseline: BaselineMetrics,
    embedded_rows: Count,
    tokens: Count,
    truncated_rows: Count,
    embed_batches: Count,
    oom: super::OomMetrics,
}

impl EmbedMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        EmbedMetrics {
            baseline: BaselineMetrics::new(metrics, partition),
            embedded_rows: MetricBuilder::new(metrics).counter("embedded_rows", partition),
            tokens: MetricBuilder::new(metrics).counter("tokens", partition),
            truncated_rows: MetricBuilder::new(metrics).counter("truncated_rows", partition),
            embed_batches: MetricBuilder::new(metrics).counter("embed_batches", partition),
            oom: super::OomMetrics::new(metrics, partition),
        }
    }
}

struct EmbedState {
    input: SendableRecordBatchStream,
    input_schema: SchemaRef,
    schema: SchemaRef,
    text: Arc<dyn PhysicalExpr>,
    model: Arc<EmbeddingModel>,
    device: Device,
    batch_rows: usize,
    metrics: EmbedMetrics,
    done: bool,
}

impl EmbedState {
    /// Input batches up to `batch_rows` rows (one batch may overshoot);
    /// empty at the end.
    async fn gather(&mut self) -> Result<Vec<RecordBatch>> {
        super::gather_rows(&mut self.input, self.batch_rows, &mut self.done).await
    }

    fn embed(&self, pending: &[RecordBatch]) -> Result<RecordBatch> {
        let _timer = self.metrics.baseline.elapsed_compute().timer();
        let batch = match pending {
            [one] => one.clone(),
            _ => concat_batches(&self.input_schema, pending)?,
        };
        let texts = self.text.evaluate(&batch)?.into_array(batch.num_rows())?;
        let (embedded, counted) = embed_array(&self.model, &self.device, &texts)?;
        self.metrics.embedded_rows.add(counted.rows());
        self.metrics.tokens.add(counted.tokens);
        self.metrics.truncated_rows.add(counted.truncated);
        self.metrics.embed_batches.add(1);
        self.metrics.oom.add(counted.oom);
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        columns.push(embedded);
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(out.record_output(&self.metrics.baseline))
    }
}
