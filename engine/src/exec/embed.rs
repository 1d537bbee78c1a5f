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
//!
//! With `kiln.embed_cache` set, the operator reads the cache once per query
//! ([`crate::model::embed_cache`]), takes the vectors of the texts it holds
//! from there and gives the encoder only the others (each distinct text
//! once); what the encoder computes joins the cache, written out every
//! `FLUSH_ROWS` new entries and when a partition ends. Metrics
//! `embed_cache_hits` (rows served without the encoder), `embed_cache_misses`
//! (texts embedded) and `embed_cache_rejected` (cache files or rows refused
//! as foreign or corrupt).

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

use datafusion::datasource::listing::ListingTableUrl;

use crate::functions::embed::{
    embed_array_cached, embedding_type, session_device, session_precision,
};
use crate::model::embed_cache::{EmbedCache, FLUSH_ROWS, model_key};
use crate::model::precision::Precision;
use crate::model::{EmbeddingModel, shared_model};
use crate::options::KilnOptions;

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
    /// The embedding cache (`kiln.embed_cache`), read by the first
    /// partition that runs.
    embed_cache: Arc<tokio::sync::OnceCell<Arc<EmbedCache>>>,
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
            embed_cache: Default::default(),
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
            // The same query's cache, read once: a plan rewritten for each
            // part of a job's output shares it.
            embed_cache: Arc::clone(&self.embed_cache),
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
        let precision = session_precision(context.session_config().options(), device.info())?;
        let cache = CacheSpec::of(&context, &self.model, &device, precision, &self.embed_cache)?;
        let input = self.input.execute(partition, context)?;
        let state = EmbedState {
            input,
            input_schema: self.input.schema(),
            schema: self.schema(),
            text: Arc::clone(&self.text),
            model: Arc::clone(&self.model),
            device,
            precision,
            batch_rows: self.batch_rows,
            metrics: EmbedMetrics::new(&self.metrics, partition),
            done: false,
            cache_spec: cache,
            cache: None,
            partition,
        };
        let schema = self.schema();
        let stream = futures::stream::unfold(Some(state), |state| async move {
            let mut state = state?;
            if let Err(e) = state.open_cache().await {
                return Some((Err(e), None));
            }
            let pending = match state.gather().await {
                Ok(pending) => pending,
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), Some(state)));
                }
            };
            if pending.is_empty() {
                // The end: what this partition computed goes to the cache.
                return match state.flush_cache(0).await {
                    Ok(()) => None,
                    Err(e) => Some((Err(e), None)),
                };
            }
            // The forward pass runs off the async workers.
            match super::off_async(state, move |s| s.embed(&pending)).await {
                Ok((mut state, out)) => {
                    if out.is_err() {
                        state.done = true;
                    } else if let Err(e) = state.flush_cache(FLUSH_ROWS).await {
                        return Some((Err(e), None));
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
    cache_hits: Count,
    cache_misses: Count,
    cache_rejected: Count,
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
            cache_hits: MetricBuilder::new(metrics).counter("embed_cache_hits", partition),
            cache_misses: MetricBuilder::new(metrics).counter("embed_cache_misses", partition),
            cache_rejected: MetricBuilder::new(metrics).counter("embed_cache_rejected", partition),
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
    precision: Precision,
    batch_rows: usize,
    metrics: EmbedMetrics,
    done: bool,
    /// Where the embedding cache is, until it is opened.
    cache_spec: Option<CacheSpec>,
    cache: Option<Arc<EmbedCache>>,
    partition: usize,
}

/// The embedding cache a query asked for (`kiln.embed_cache`), not yet
/// read.
struct CacheSpec {
    store: Arc<dyn object_store::ObjectStore>,
    /// Shared by the operator's partitions: read once per query.
    cell: Arc<tokio::sync::OnceCell<Arc<EmbedCache>>>,
    root: object_store::path::Path,
    identity: String,
    dim: usize,
}

impl CacheSpec {
    fn of(
        context: &TaskContext,
        model: &EmbeddingModel,
        device: &Device,
        precision: Precision,
        cell: &Arc<tokio::sync::OnceCell<Arc<EmbedCache>>>,
    ) -> Result<Option<Self>> {
        let options = context.session_config().options();
        let location = options
            .extensions
            .get::<KilnOptions>()
            .map(|o| o.embed_cache.trim().to_string())
            .unwrap_or_default();
        if location.is_empty() {
            return Ok(None);
        }
        let mut location = location;
        if !location.ends_with('/') {
            location.push('/');
        }
        let url = ListingTableUrl::parse(&location)?;
        let store = context.runtime_env().object_store(url.object_store())?;
        let info = device.info();
        // f32 keeps the key it always had; another precision computes other
        // vectors and has its own entries.
        let mut computed_on = format!("{}/{}", info.backend, info.name);
        if precision != Precision::F32 {
            computed_on.push_str(&format!("/{precision}"));
        }
        let identity = model_key(model, &computed_on)?;
        Ok(Some(CacheSpec {
            store,
            cell: Arc::clone(cell),
            root: url.prefix().clone(),
            identity,
            dim: model.dim(),
        }))
    }
}

impl EmbedState {
    /// Reads the embedding cache, if the query has one, on first use.
    async fn open_cache(&mut self) -> Result<()> {
        let Some(spec) = self.cache_spec.take() else {
            return Ok(());
        };
        let cache = spec
            .cell
            .get_or_try_init(|| async {
                EmbedCache::open(spec.store, &spec.root, &spec.identity, spec.dim)
                    .await
                    .map(Arc::new)
            })
            .await?;
        if self.partition == 0 {
            self.metrics.cache_rejected.add(cache.rejected() as usize);
        }
        self.cache = Some(Arc::clone(cache));
        Ok(())
    }

    /// Writes the cache's new entries once they are `at_least` rows.
    fn flush_cache(&self, at_least: usize) -> impl Future<Output = Result<()>> + Send + use<> {
        let cache = self.cache.clone();
        async move {
            match cache {
                Some(cache) if cache.pending_rows() >= at_least.max(1) => cache.flush().await,
                _ => Ok(()),
            }
        }
    }

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
        let (embedded, counted, cache) = embed_array_cached(
            &self.model,
            &self.device,
            self.precision,
            &texts,
            self.cache.as_deref(),
        )?;
        self.metrics.cache_hits.add(cache.hits as usize);
        self.metrics.cache_misses.add(cache.misses as usize);
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
