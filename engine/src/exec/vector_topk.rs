//! `VectorTopKExec`: the k corpus rows closest to one constant query vector,
//! by a tiled GEMM and a running top-k on the selected device. It replaces
//! `ORDER BY cosine_similarity(v, <query>) DESC LIMIT k` (and the dot / L2
//! forms) and serves `vector_search(...)`: the table is never sorted.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use kiln_kernels::DeviceInfo;

use super::corpus::{SearchMetrics, SearchSpec, search_corpus};
use crate::device::open_shared;

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

/// The k rows of `input` closest to `query`.
#[derive(Debug)]
pub struct VectorTopKExec {
    input: Arc<dyn ExecutionPlan>,
    spec: SearchSpec,
    query: Vec<f32>,
    unscored: Unscored,
    /// Name of an appended score column, if any.
    score: Option<String>,
    device: DeviceInfo,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl VectorTopKExec {
    /// `spec.keep_unscored` is derived from `unscored` and `spec.k`.
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        mut spec: SearchSpec,
        query: Vec<f32>,
        unscored: Unscored,
        score: Option<String>,
        device: DeviceInfo,
    ) -> Result<Self> {
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
        let schema = match &score {
            Some(name) => {
                let mut fields: Vec<Arc<Field>> = input_schema.fields().iter().cloned().collect();
                fields.push(Arc::new(Field::new(name, DataType::Float32, true)));
                Arc::new(Schema::new_with_metadata(
                    fields,
                    input_schema.metadata().clone(),
                ))
            }
            None => input_schema,
        };
        let cache = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(VectorTopKExec {
            input,
            spec,
            query,
            unscored,
            score,
            device,
            schema,
            cache,
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn spec(&self) -> &SearchSpec {
        &self.spec
    }

    pub fn query(&self) -> &[f32] {
        &self.query
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }
}

impl DisplayAs for VectorTopKExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorTopKExec: column={}, metric={}, k={}, dim={}, device={}, tile_rows={}",
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
        Ok(Arc::new(VectorTopKExec::try_new(
            input,
            self.spec.clone(),
            self.query.clone(),
            self.unscored,
            self.score.clone(),
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
        if partition != 0 {
            return internal_err!("VectorTopKExec has one partition, asked for {partition}");
        }
        let input = Arc::clone(&self.input);
        let spec = self.spec.clone();
        let query = self.query.clone();
        let unscored = self.unscored;
        let with_score = self.score.is_some();
        let device = self.device.clone();
        let schema = Arc::clone(&self.schema);
        let search_metrics = SearchMetrics::new(&self.metrics, partition);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let out_schema = Arc::clone(&schema);
        let once = futures::stream::once(async move {
            let device =
                open_shared(&device).map_err(|e| DataFusionError::External(Box::new(e)))?;
            let outcome =
                search_corpus(&input, &context, &spec, &device, &query, &search_metrics).await?;
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
            if with_score {
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
