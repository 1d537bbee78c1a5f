//! `KnnJoinExec`: for every row of a query plan, its k nearest rows of a
//! corpus plan. Queries are gathered into batches of `query_batch` rows and
//! each batch is one streamed pass over the corpus (one GEMM per query batch
//! × corpus tile), so a pass serves many queries; the output of a pass is
//! emitted before the next begins.
//!
//! Output: the query's columns, the corpus's columns (a name that clashes
//! with a query column is prefixed `corpus_`), `rank` (1..k) and `score`.
//! Output partition p joins the queries of input partition p (so the
//! queries' partitions run in parallel, on a cluster as separate tasks,
//! each streaming the whole corpus); query rows keep their order within a
//! partition; a query with a NULL vector (or a zero
//! vector under cosine) has no matches and yields no rows, as in an inner join.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float32Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, exec_err, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{Distribution, EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    Partitioning, PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::StreamExt;
use kiln_kernels::{Device, DeviceInfo};

use super::corpus::{SearchMetrics, SearchSpec, search_corpus};
use crate::device::open_for_session;
use crate::functions::vector::vectors;

/// The k nearest corpus rows of every query row.
#[derive(Debug)]
pub struct KnnJoinExec {
    queries: Arc<dyn ExecutionPlan>,
    query_column: usize,
    corpus: Arc<dyn ExecutionPlan>,
    /// `column` indexes the corpus schema.
    spec: SearchSpec,
    /// Queries per pass over the corpus.
    query_batch: usize,
    device: DeviceInfo,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

/// The output schema: query fields, corpus fields (clashing names prefixed
/// `corpus_`), `rank`, `score`.
pub fn knn_join_schema(queries: &Schema, corpus: &Schema) -> SchemaRef {
    let mut taken: HashSet<String> = queries.fields().iter().map(|f| f.name().clone()).collect();
    let mut fields: Vec<Arc<Field>> = queries.fields().iter().cloned().collect();
    for f in corpus.fields() {
        let mut name = f.name().clone();
        while taken.contains(&name) {
            name = format!("corpus_{name}");
        }
        taken.insert(name.clone());
        fields.push(Arc::new(f.as_ref().clone().with_name(name)));
    }
    for extra in ["rank", "score"] {
        let mut name = extra.to_string();
        while taken.contains(&name) {
            name = format!("knn_{name}");
        }
        taken.insert(name.clone());
        let t = if extra == "rank" {
            DataType::UInt32
        } else {
            DataType::Float32
        };
        fields.push(Arc::new(Field::new(name, t, false)));
    }
    Arc::new(Schema::new(fields))
}

impl KnnJoinExec {
    pub fn try_new(
        queries: Arc<dyn ExecutionPlan>,
        query_column: usize,
        corpus: Arc<dyn ExecutionPlan>,
        spec: SearchSpec,
        query_batch: usize,
        device: DeviceInfo,
    ) -> Result<Self> {
        let schema = knn_join_schema(&queries.schema(), &corpus.schema());
        let partitions = queries.output_partitioning().partition_count().max(1);
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(KnnJoinExec {
            queries,
            query_column,
            corpus,
            spec,
            query_batch: query_batch.max(1),
            device,
            schema,
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The search; `column` indexes the corpus schema.
    pub fn spec(&self) -> &SearchSpec {
        &self.spec
    }

    /// The vector column of the queries.
    pub fn query_column(&self) -> usize {
        self.query_column
    }

    /// Queries per pass over the corpus.
    pub fn query_batch(&self) -> usize {
        self.query_batch
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }
}

impl DisplayAs for KnnJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "KnnJoinExec: query_column={}, corpus_column={}, metric={}, k={}, dim={}, device={}, query_batch={}, tile_rows={}",
            self.queries.schema().field(self.query_column).name(),
            self.spec.column_name,
            self.spec.metric,
            self.spec.k,
            self.spec.dim,
            self.device.id(),
            self.query_batch,
            self.spec.tile_rows(self.query_batch)
        )
    }
}

/// State carried between passes.
struct Passes {
    queries: futures::stream::BoxStream<'static, Result<RecordBatch>>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    done: bool,
}

impl ExecutionPlan for KnnJoinExec {
    fn name(&self) -> &'static str {
        "KnnJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    /// The inputs are read in order, partition after partition: ties break
    /// by that order, so no repartitioning may be put below (a round-robin
    /// exchange would deal rows out in an order that differs between runs,
    /// and between a local run and a cluster).
    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false; 2]
    }

    /// Each partition of the queries is joined against the whole corpus
    /// (through a merge, read partition by partition): on a cluster the
    /// queries' partitions are separate tasks, each streaming the corpus.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![
            Distribution::UnspecifiedDistribution,
            Distribution::SinglePartition,
        ]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.queries, &self.corpus]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [queries, corpus]: [Arc<dyn ExecutionPlan>; 2] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("KnnJoinExec takes two children".into()))?;
        Ok(Arc::new(KnnJoinExec::try_new(
            queries,
            self.query_column,
            corpus,
            self.spec.clone(),
            self.query_batch,
            self.device.clone(),
        )?))
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
            return internal_err!("KnnJoinExec has {partitions} partitions, asked for {partition}");
        }
        // Output partition p joins query partition p, in its row order.
        let queries = if self.queries.output_partitioning().partition_count() == 0 {
            futures::stream::empty().boxed()
        } else {
            self.queries
                .execute(partition, Arc::clone(&context))?
                .boxed()
        };
        let pass = Arc::new(Pass {
            corpus: Arc::clone(&self.corpus),
            context,
            spec: self.spec.clone(),
            query_column: self.query_column,
            device: self.device.clone(),
            schema: Arc::clone(&self.schema),
            search_metrics: SearchMetrics::new(&self.metrics, partition),
            baseline: BaselineMetrics::new(&self.metrics, partition),
        });
        let query_batch = self.query_batch;
        let state = Passes {
            queries,
            pending: Vec::new(),
            pending_rows: 0,
            done: false,
        };
        let stream = futures::stream::try_unfold(state, move |mut state| {
            let pass = Arc::clone(&pass);
            async move {
                loop {
                    if state.done && state.pending.is_empty() {
                        return Ok(None);
                    }
                    if !state.done && state.pending_rows < query_batch {
                        match state.queries.next().await {
                            Some(batch) => {
                                let batch = batch?;
                                state.pending_rows += batch.num_rows();
                                state.pending.push(batch);
                            }
                            None => state.done = true,
                        }
                        continue;
                    }
                    // Split off exactly one pass's worth of queries.
                    let all = concat_batches(&pass.queries_schema(&state), &state.pending)?;
                    let n = all.num_rows().min(query_batch);
                    let now = all.slice(0, n);
                    let rest = all.slice(n, all.num_rows() - n);
                    state.pending_rows = rest.num_rows();
                    state.pending = if rest.num_rows() > 0 {
                        vec![rest]
                    } else {
                        Vec::new()
                    };
                    if n == 0 {
                        continue;
                    }
                    let out = pass.run(&now).await?;
                    return Ok(Some((out, state)));
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Everything one pass over the corpus needs.
struct Pass {
    corpus: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
    spec: SearchSpec,
    query_column: usize,
    device: DeviceInfo,
    schema: SchemaRef,
    search_metrics: SearchMetrics,
    baseline: BaselineMetrics,
}

impl Pass {
    fn queries_schema(&self, state: &Passes) -> SchemaRef {
        state
            .pending
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| {
                let n = self.schema.fields().len() - self.corpus.schema().fields().len() - 2;
                Arc::new(Schema::new(self.schema.fields()[..n].to_vec()))
            })
    }

    fn device(&self) -> Result<Device> {
        open_for_session(&self.device, self.context.session_config().options())
    }

    /// Searches the corpus for the queries of `batch` and joins the results.
    async fn run(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let name = batch.schema().field(self.query_column).name().clone();
        let v = vectors(batch.column(self.query_column), false, &name)?;
        // With variable-length lists on both sides the first query sets the
        // dimension; every other vector must agree.
        let mut spec = self.spec.clone();
        if spec.dim == 0 {
            spec.dim = (0..batch.num_rows())
                .find_map(|r| v.row(r).map(<[f32]>::len))
                .unwrap_or(1);
        }
        let dim = spec.dim;
        let mut values = Vec::new();
        let mut rows = Vec::new();
        for row in 0..batch.num_rows() {
            if let Some(x) = v.row(row) {
                if x.len() != dim {
                    return exec_err!(
                        "knn_join: query column '{name}' has a vector of {} components, the corpus column '{}' has {dim}",
                        x.len(),
                        self.spec.column_name
                    );
                }
                values.extend_from_slice(x);
                rows.push(row as u32);
            }
        }
        let device = self.device()?;
        let outcome = search_corpus(
            &self.corpus,
            None,
            &self.context,
            &spec,
            &device,
            &values,
            &self.search_metrics,
        )
        .await?;
        let _timer = self.baseline.elapsed_compute().timer();
        let mut query_rows = Vec::new();
        let mut corpus_ids = Vec::new();
        let mut ranks = Vec::new();
        let mut scores = Vec::new();
        for (row, hits) in rows.iter().zip(&outcome.hits) {
            for (rank, hit) in hits.iter().enumerate() {
                query_rows.push(*row);
                corpus_ids.push(hit.id);
                ranks.push(rank as u32 + 1);
                scores.push(hit.score);
            }
        }
        let indices = UInt32Array::from(query_rows);
        let mut columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .map(|c| take(c.as_ref(), &indices, None))
            .collect::<Result<_, _>>()?;
        columns.extend(outcome.rows.gather(&corpus_ids)?.columns().iter().cloned());
        columns.push(Arc::new(UInt32Array::from(ranks)));
        columns.push(Arc::new(Float32Array::from(scores)));
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.baseline.record_output(out.num_rows());
        Ok(out)
    }
}
