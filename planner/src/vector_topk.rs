//! The vector top-k rewrite: `ORDER BY cosine_similarity(col, <constant>)
//! DESC LIMIT k` — and `dot_product(..) DESC`, `l2_distance(..) ASC`, the
//! arguments in either order, the score in the ORDER BY or aliased in the
//! SELECT list — becomes one [`VectorTopKNode`], planned as the engine's
//! `VectorTopKExec`: a tiled GEMM with a running top-k that never sorts the
//! table. NULL scores keep their SQL place (`NULLS FIRST` is the default for
//! `DESC`). `SET kiln.vector_topk = false` turns the rewrite off.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchema, DFSchemaRef, Result, ScalarValue, plan_datafusion_err};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::{ScalarFunction, Sort as SortExpr};
use datafusion::logical_expr::logical_plan::{Extension, Projection, Sort};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_plan::ExecutionPlan;
use kiln_engine::exec::{SearchSpec, Unscored, VectorTopKExec};
use kiln_engine::functions::first_vector;
use kiln_kernels::ops::vector::Metric;

use crate::options::{KilnOptions, SearchOptions};

/// The logical vector top-k: the `k` rows of `input` closest to `query` in
/// `column`, closest first; the input's schema, plus a score column when
/// `score` names one (`vector_search`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VectorTopKNode {
    input: LogicalPlan,
    column: Column,
    /// The query's f32 bit patterns (f32 is neither Eq nor Hash).
    query_bits: Vec<u32>,
    metric: Metric,
    k: usize,
    unscored: Unscored,
    score: Option<String>,
    schema: DFSchemaRef,
}

impl PartialOrd for VectorTopKNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let key = |n: &Self| {
            (
                n.input.clone(),
                n.column.clone(),
                n.query_bits.clone(),
                n.metric,
                n.k,
                n.unscored,
                n.score.clone(),
            )
        };
        key(self).partial_cmp(&key(other))
    }
}

impl VectorTopKNode {
    /// `column` must name a column of `input`; `score`, if given, is the
    /// name of an appended Float32 score column.
    pub fn try_new(
        input: LogicalPlan,
        column: Column,
        query: &[f32],
        metric: Metric,
        k: usize,
        unscored: Unscored,
        score: Option<String>,
    ) -> Result<Self> {
        input.schema().index_of_column(&column)?;
        let schema = match &score {
            None => Arc::clone(input.schema()),
            Some(name) => {
                let extra = DFSchema::try_from(Schema::new(vec![Field::new(
                    name,
                    DataType::Float32,
                    true,
                )]))?;
                Arc::new(input.schema().join(&extra)?)
            }
        };
        Ok(VectorTopKNode {
            input,
            column,
            query_bits: query.iter().map(|v| v.to_bits()).collect(),
            metric,
            k,
            unscored,
            score,
            schema,
        })
    }

    pub fn query(&self) -> Vec<f32> {
        self.query_bits.iter().map(|b| f32::from_bits(*b)).collect()
    }

    pub fn input(&self) -> &LogicalPlan {
        &self.input
    }

    pub fn column(&self) -> &Column {
        &self.column
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn unscored(&self) -> Unscored {
        self.unscored
    }

    pub fn score(&self) -> Option<&str> {
        self.score.as_deref()
    }
}

impl UserDefinedLogicalNodeCore for VectorTopKNode {
    fn name(&self) -> &str {
        "VectorTopK"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![Expr::Column(self.column.clone())]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "VectorTopK: column={}, metric={}, k={}, dim={}, unscored={}",
            self.column.flat_name(),
            self.metric,
            self.k,
            self.query_bits.len(),
            match self.unscored {
                Unscored::First => "first",
                Unscored::Last => "last",
                Unscored::Skip => "skip",
            }
        )?;
        match &self.score {
            Some(score) => write!(f, ", score={score}"),
            None => Ok(()),
        }
    }

    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let column = match exprs.first() {
            Some(Expr::Column(c)) => c.clone(),
            _ => self.column.clone(),
        };
        let input = inputs
            .pop()
            .ok_or_else(|| plan_datafusion_err!("VectorTopK takes one input"))?;
        VectorTopKNode::try_new(
            input,
            column,
            &self.query(),
            self.metric,
            self.k,
            self.unscored,
            self.score.clone(),
        )
    }
}

/// The optimizer rule that introduces [`VectorTopKNode`].
#[derive(Debug, Default)]
pub struct VectorTopKRule;

/// A similarity call's parts: the column, the constant query, the metric.
fn similarity_call(expr: &Expr) -> Option<(Column, Vec<f32>, Metric)> {
    let Expr::ScalarFunction(ScalarFunction { func, args }) = expr.clone().unalias_nested().data
    else {
        return None;
    };
    let metric = match func.name() {
        "cosine_similarity" => Metric::Cosine,
        "dot_product" => Metric::Dot,
        "l2_distance" => Metric::L2,
        _ => return None,
    };
    let (column, constant) = match &args[..] {
        [Expr::Column(c), Expr::Literal(v, _)] | [Expr::Literal(v, _), Expr::Column(c)] => (c, v),
        _ => return None,
    };
    let query = constant_vector(constant)?;
    Some((column.clone(), query, metric))
}

fn constant_vector(value: &ScalarValue) -> Option<Vec<f32>> {
    let array = value.to_array_of_size(1).ok()?;
    first_vector(&array, "query")
        .ok()
        .flatten()
        .filter(|v| !v.is_empty())
}

/// Whether the sort direction asks for the closest rows first.
fn closest_first(metric: Metric, sort: &SortExpr) -> bool {
    sort.asc != metric.higher_is_closer()
}

impl VectorTopKRule {
    fn node(
        input: LogicalPlan,
        (column, query, metric): (Column, Vec<f32>, Metric),
        k: usize,
        nulls_first: bool,
    ) -> Result<LogicalPlan> {
        let unscored = if nulls_first {
            Unscored::First
        } else {
            Unscored::Last
        };
        let node = VectorTopKNode::try_new(input, column, &query, metric, k, unscored, None)?;
        Ok(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }))
    }

    /// The rewrite of one `Sort`, if it matches.
    fn rewrite_sort(sort: &Sort) -> Result<Option<LogicalPlan>> {
        let (Some(k), [sort_expr]) = (sort.fetch, &sort.expr[..]) else {
            return Ok(None);
        };
        // ORDER BY similarity(col, const) directly.
        if let Some(call) = similarity_call(&sort_expr.expr) {
            if !closest_first(call.2, sort_expr) {
                return Ok(None);
            }
            let input = Arc::unwrap_or_clone(Arc::clone(&sort.input));
            return Ok(Some(Self::node(input, call, k, sort_expr.nulls_first)?));
        }
        // ORDER BY an alias of the SELECT list: the top-k goes below the
        // projection, which then scores only the k rows.
        let (Expr::Column(c), LogicalPlan::Projection(projection)) =
            (&sort_expr.expr, sort.input.as_ref())
        else {
            return Ok(None);
        };
        let position = (0..projection.schema.fields().len()).find(|&i| {
            let (qualifier, field) = projection.schema.qualified_field(i);
            field.name() == &c.name && (c.relation.is_none() || c.relation.as_ref() == qualifier)
        });
        let Some(call) = position.and_then(|i| similarity_call(&projection.expr[i])) else {
            return Ok(None);
        };
        if !closest_first(call.2, sort_expr)
            || projection.input.schema().index_of_column(&call.0).is_err()
        {
            return Ok(None);
        }
        let inner = Arc::unwrap_or_clone(Arc::clone(&projection.input));
        let topk = Self::node(inner, call, k, sort_expr.nulls_first)?;
        Ok(Some(LogicalPlan::Projection(Projection::try_new(
            projection.expr.clone(),
            Arc::new(topk),
        )?)))
    }
}

impl OptimizerRule for VectorTopKRule {
    fn name(&self) -> &str {
        "kiln_vector_topk"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let enabled = config
            .options()
            .extensions
            .get::<KilnOptions>()
            .is_none_or(|o| o.vector_topk);
        if !enabled {
            return Ok(Transformed::no(plan));
        }
        let LogicalPlan::Sort(sort) = &plan else {
            return Ok(Transformed::no(plan));
        };
        match Self::rewrite_sort(sort)? {
            Some(new) => Ok(Transformed::yes(new)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

impl VectorTopKNode {
    /// The operator this node plans into: [`VectorTopKExec`] over the
    /// physical input.
    pub fn plan(
        &self,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        state: &SessionState,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let options = SearchOptions::from_state(state)?;
        let (Some(logical), Some(physical)) = (logical_inputs.first(), physical_inputs.first())
        else {
            return Err(plan_datafusion_err!("VectorTopK takes one input"));
        };
        let column = logical.schema().index_of_column(&self.column)?;
        let query = self.query();
        let spec = SearchSpec {
            column,
            column_name: self.column.name.clone(),
            dim: query.len(),
            metric: self.metric,
            k: self.k,
            budget_bytes: options.budget_bytes,
            keep_unscored: 0,
        };
        VectorTopKExec::plan(
            Arc::clone(physical),
            spec,
            query,
            self.unscored,
            self.score.clone(),
            options.device,
        )
    }
}
