//! The table functions of vector search:
//!
//! - `vector_search(table, column, query, k [, metric])`: the k rows of
//!   `table` closest to the constant vector `query`, with all their columns
//!   and `score`, closest first.
//! - `knn_join(query_table, query_column, corpus_table, corpus_column, k
//!   [, metric])`: for every query row its k nearest corpus rows: the query's
//!   columns, the corpus's (clashing names prefixed `corpus_`), `rank`, `score`.
//!
//! `metric` is 'cosine' (the default), 'dot' or 'l2'. Tables are named by a
//! string or a bare identifier; `query` may be any constant expression, such
//! as an array literal or `embed('text')`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{
    Column, DFSchema, DFSchemaRef, Result, ScalarValue, TableReference, plan_datafusion_err,
    plan_err,
};
use datafusion::datasource::TableType;
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::{
    Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNode, UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use kiln_engine::exec::{KnnJoinExec, SearchSpec, Unscored, knn_join_schema};
use kiln_engine::functions::{first_vector, is_vector_type};
use kiln_kernels::ops::vector::Metric;

use crate::options::SearchOptions;
use crate::vector_topk::VectorTopKNode;

/// `vector_search(table, column, query, k [, metric])`.
#[derive(Debug, Default)]
pub struct VectorSearchFunction;

/// `knn_join(query_table, query_column, corpus_table, corpus_column, k [, metric])`.
#[derive(Debug, Default)]
pub struct KnnJoinFunction;

pub(crate) fn session_state(session: &dyn Session) -> Result<&SessionState> {
    session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| plan_datafusion_err!("vector search needs a DataFusion SessionState"))
}

/// A table or column name: a string literal or a bare identifier.
pub(crate) fn name_arg(expr: &Expr, func: &str, what: &str) -> Result<String> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => {
            Ok(s.clone())
        }
        Expr::Literal(ScalarValue::Utf8View(Some(s)), _) => Ok(s.clone()),
        Expr::Column(c) => Ok(c.flat_name()),
        other => plan_err!("{func}: {what} must be a name, got {other}"),
    }
}

/// Evaluates a constant expression (`[0.1, 0.2]`, `embed('text')`, `10`).
pub(crate) fn constant(
    state: &SessionState,
    expr: &Expr,
    func: &str,
    what: &str,
) -> Result<ScalarValue> {
    let empty = DFSchema::empty();
    let physical = state
        .create_physical_expr(expr.clone(), &empty)
        .map_err(|e| e.context(format!("{func}: {what} must be a constant expression")))?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let value = physical.evaluate(&one_row)?.into_array(1)?;
    ScalarValue::try_from_array(&value, 0)
}

fn query_vector(state: &SessionState, expr: &Expr, func: &str) -> Result<Vec<f32>> {
    let value = constant(state, expr, func, "the query")?;
    let array = value.to_array_of_size(1)?;
    if !is_vector_type(array.data_type()) {
        return plan_err!(
            "{func}: the query must be a vector (a list of floats), got {}",
            array.data_type()
        );
    }
    match first_vector(&array, func)? {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => plan_err!("{func}: the query vector is empty"),
        None => plan_err!("{func}: the query vector is NULL"),
    }
}

fn k_arg(state: &SessionState, expr: &Expr, func: &str) -> Result<usize> {
    match constant(state, expr, func, "k")? {
        ScalarValue::Int8(Some(k)) if k >= 0 => Ok(k as usize),
        ScalarValue::Int16(Some(k)) if k >= 0 => Ok(k as usize),
        ScalarValue::Int32(Some(k)) if k >= 0 => Ok(k as usize),
        ScalarValue::Int64(Some(k)) if k >= 0 => Ok(k as usize),
        ScalarValue::UInt8(Some(k)) => Ok(k as usize),
        ScalarValue::UInt16(Some(k)) => Ok(k as usize),
        ScalarValue::UInt32(Some(k)) => Ok(k as usize),
        ScalarValue::UInt64(Some(k)) => Ok(k as usize),
        other => plan_err!(
            "{func}: k must be a non-negative integer, got {}",
            describe_value(&other)
        ),
    }
}

/// A constant as an error shows it: a string quoted and called one (so
/// that '3' does not read as the integer 3), NULL, or the value and its type.
fn describe_value(value: &ScalarValue) -> String {
    match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => {
            format!("the string '{s}'")
        }
        v if v.is_null() => "NULL".to_string(),
        v => format!("{v} ({})", v.data_type()),
    }
}

pub(crate) fn metric_arg(exprs: &[Expr], index: usize, func: &str) -> Result<Metric> {
    match exprs.get(index) {
        None => Ok(Metric::Cosine),
        Some(Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _)) => s
            .parse()
            .map_err(|e: String| plan_datafusion_err!("{func}: {e}")),
        Some(other) => plan_err!("{func}: metric must be 'cosine', 'dot' or 'l2', got {other}"),
    }
}

/// Looks a table up in the session's catalog.
pub(crate) fn table(
    state: &SessionState,
    name: &str,
    func: &str,
) -> Result<Arc<dyn TableProvider>> {
    let reference = TableReference::from(name);
    let schema = state.schema_for_ref(reference.clone())?;
    // Catalog lookups are async; the built-in providers answer at once.
    futures::executor::block_on(schema.table(reference.table()))?
        .ok_or_else(|| plan_datafusion_err!("{func}: table '{name}' not found"))
}

/// The index and field of a vector column, or a plan error naming it.
pub(crate) fn vector_column(
    schema: &Schema,
    table: &str,
    column: &str,
    func: &str,
) -> Result<(usize, Field)> {
    let (index, field) = schema.column_with_name(column).ok_or_else(|| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        plan_datafusion_err!(
            "{func}: table '{table}' has no column '{column}' (columns: {})",
            names.join(", ")
        )
    })?;
    if !is_vector_type(field.data_type()) {
        return plan_err!(
            "{func}: column '{column}' of '{table}' must be a vector (a list of floats), got {}",
            field.data_type()
        );
    }
    Ok((index, field.clone()))
}

pub(crate) fn fixed_dim(field: &Field) -> Option<usize> {
    match field.data_type() {
        DataType::FixedSizeList(_, d) => Some(*d as usize),
        _ => None,
    }
}

fn check_arity(exprs: &[Expr], func: &str, signature: &str, min: usize) -> Result<()> {
    if exprs.len() < min || exprs.len() > min + 1 {
        return plan_err!("{func} takes {signature}, got {} arguments", exprs.len());
    }
    Ok(())
}

/// A name not in `taken`: `base`, else `prefix` + `base` repeated.
pub(crate) fn unique_name(schema: &Schema, base: &str, prefix: &str) -> String {
    let mut name = base.to_string();
    while schema.column_with_name(&name).is_some() {
        name = format!("{prefix}{name}");
    }
    name
}

impl TableFunctionImpl for VectorSearchFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const F: &str = "vector_search";
        let exprs = args.exprs();
        check_arity(exprs, F, "(table, column, query, k [, metric])", 4)?;
        let state = session_state(args.session())?;
        let table_name = name_arg(&exprs[0], F, "the table")?;
        let corpus = table(state, &table_name, F)?;
        let column = name_arg(&exprs[1], F, "the column")?;
        let query = query_vector(state, &exprs[2], F)?;
        let k = k_arg(state, &exprs[3], F)?;
        let metric = metric_arg(exprs, 4, F)?;
        // Checked now, so a bad option fails the statement that names it.
        SearchOptions::from_state(state)?;
        let input = LogicalPlanBuilder::scan(
            TableReference::from(table_name.as_str()),
            provider_as_source(corpus),
            None,
        )?
        .build()?;
        let node = vector_search_node(input, &table_name, &column, &query, k, metric)?;
        Ok(PlannedTable::of(node))
    }
}

impl TableFunctionImpl for KnnJoinFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const F: &str = "knn_join";
        let exprs = args.exprs();
        check_arity(
            exprs,
            F,
            "(query_table, query_column, corpus_table, corpus_column, k [, metric])",
            5,
        )?;
        let state = session_state(args.session())?;
        let query_table = name_arg(&exprs[0], F, "the query table")?;
        let queries = table(state, &query_table, F)?;
        let query_column = name_arg(&exprs[1], F, "the query column")?;
        let corpus_table = name_arg(&exprs[2], F, "the corpus table")?;
        let corpus = table(state, &corpus_table, F)?;
        let corpus_column = name_arg(&exprs[3], F, "the corpus column")?;
        let k = k_arg(state, &exprs[4], F)?;
        let metric = metric_arg(exprs, 5, F)?;
        SearchOptions::from_state(state)?;
        let scan = |name: &str, provider| -> Result<LogicalPlan> {
            LogicalPlanBuilder::scan(name, provider_as_source(provider), None)?.build()
        };
        let node = knn_join_node(
            (scan(&query_table, queries)?, &query_table, &query_column),
            (scan(&corpus_table, corpus)?, &corpus_table, &corpus_column),
            k,
            metric,
        )?;
        Ok(PlannedTable::of(node))
    }
}

/// `vector_search` over any plan: the `k` rows of `input` whose vector
/// column `column` is closest to `query` by `metric`, with a `score`
/// column (prefixed `vector_` while the name is taken), closest first.
/// `name` names the input in errors.
pub fn vector_search_node(
    input: LogicalPlan,
    name: &str,
    column: &str,
    query: &[f32],
    k: usize,
    metric: Metric,
) -> Result<VectorTopKNode> {
    const F: &str = "vector_search";
    let (index, field) = vector_column(input.schema().as_arrow(), name, column, F)?;
    if query.is_empty() {
        return plan_err!("{F}: the query vector is empty");
    }
    if let Some(d) = fixed_dim(&field)
        && d != query.len()
    {
        return plan_err!(
            "{F}: dimension mismatch: column '{column}' has {d} components, the query {}",
            query.len()
        );
    }
    let score = unique_name(input.schema().as_arrow(), "score", "vector_");
    let (qualifier, field) = input.schema().qualified_field(index);
    let column = Column::new(qualifier.cloned(), field.name());
    VectorTopKNode::try_new(input, column, query, metric, k, Unscored::Skip, Some(score))
}

/// `knn_join` over any two plans, each given with its name (for errors)
/// and vector column: for every row of the queries its `k` nearest rows of
/// the corpus by `metric`.
pub fn knn_join_node(
    (queries, query_name, query_column): (LogicalPlan, &str, &str),
    (corpus, corpus_name, corpus_column): (LogicalPlan, &str, &str),
    k: usize,
    metric: Metric,
) -> Result<KnnJoinNode> {
    const F: &str = "knn_join";
    let (query_index, query_field) =
        vector_column(queries.schema().as_arrow(), query_name, query_column, F)?;
    let (corpus_index, corpus_field) =
        vector_column(corpus.schema().as_arrow(), corpus_name, corpus_column, F)?;
    let dim = match (fixed_dim(&query_field), fixed_dim(&corpus_field)) {
        (Some(a), Some(b)) if a != b => {
            return plan_err!(
                "{F}: dimension mismatch: query column '{query_column}' has {a} components, corpus column '{corpus_column}' has {b}"
            );
        }
        (Some(d), _) | (_, Some(d)) => d,
        // Variable-length lists on both sides: the first query decides.
        (None, None) => 0,
    };
    KnnJoinNode::try_new(queries, query_index, corpus, corpus_index, dim, metric, k)
}

/// The logical kNN join: for every row of `queries`, its `k` nearest rows
/// of `corpus` by the vector columns `query_index` and `corpus_index`.
/// Planned as the engine's `KnnJoinExec`; its search options (device,
/// memory budget, queries per pass) are read when it is planned, so on a
/// cluster they are the options of the node that plans it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KnnJoinNode {
    queries: LogicalPlan,
    query_index: usize,
    corpus: LogicalPlan,
    corpus_index: usize,
    /// Components per vector; 0 when both columns are variable-length
    /// lists (the first query decides).
    dim: usize,
    metric: Metric,
    k: usize,
    schema: DFSchemaRef,
}

impl PartialOrd for KnnJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let key = |n: &Self| {
            (
                n.queries.clone(),
                n.query_index,
                n.corpus.clone(),
                n.corpus_index,
                n.dim,
                n.metric,
                n.k,
            )
        };
        key(self).partial_cmp(&key(other))
    }
}

impl KnnJoinNode {
    pub fn try_new(
        queries: LogicalPlan,
        query_index: usize,
        corpus: LogicalPlan,
        corpus_index: usize,
        dim: usize,
        metric: Metric,
        k: usize,
    ) -> Result<Self> {
        for (plan, index, what) in [
            (&queries, query_index, "query"),
            (&corpus, corpus_index, "corpus"),
        ] {
            if index >= plan.schema().fields().len() {
                return plan_err!("knn_join: {what} column {index} is out of range");
            }
        }
        let schema = knn_join_schema(queries.schema().as_arrow(), corpus.schema().as_arrow());
        let schema = Arc::new(DFSchema::try_from(Arc::unwrap_or_clone(schema))?);
        Ok(KnnJoinNode {
            queries,
            query_index,
            corpus,
            corpus_index,
            dim,
            metric,
            k,
            schema,
        })
    }

    pub fn query_index(&self) -> usize {
        self.query_index
    }

    pub fn corpus_index(&self) -> usize {
        self.corpus_index
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The physical operator over the planned inputs (queries, corpus).
    pub fn plan(
        &self,
        inputs: &[Arc<dyn ExecutionPlan>],
        state: &SessionState,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [queries, corpus] = inputs else {
            return plan_err!("KnnJoin takes two inputs, got {}", inputs.len());
        };
        let options = SearchOptions::from_state(state)?;
        let corpus_schema = corpus.schema();
        let spec = SearchSpec {
            column: self.corpus_index,
            column_name: corpus_schema.field(self.corpus_index).name().clone(),
            dim: self.dim,
            metric: self.metric,
            k: self.k,
            budget_bytes: options.budget_bytes,
            keep_unscored: 0,
        };
        Ok(Arc::new(KnnJoinExec::try_new(
            Arc::clone(queries),
            self.query_index,
            Arc::clone(corpus),
            spec,
            options.query_batch,
            options.device,
        )?))
    }
}

impl UserDefinedLogicalNodeCore for KnnJoinNode {
    fn name(&self) -> &str {
        "KnnJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.queries, &self.corpus]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "KnnJoin: query_column={}, corpus_column={}, metric={}, k={}, dim={}",
            self.queries.schema().field(self.query_index).name(),
            self.corpus.schema().field(self.corpus_index).name(),
            self.metric,
            self.k,
            self.dim
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [queries, corpus]: [LogicalPlan; 2] = inputs
            .try_into()
            .map_err(|_| plan_datafusion_err!("KnnJoin takes two inputs"))?;
        KnnJoinNode::try_new(
            queries,
            self.query_index,
            corpus,
            self.corpus_index,
            self.dim,
            self.metric,
            self.k,
        )
    }
}

/// What a table function returns: a logical plan of Kiln's nodes, which the
/// SQL planner inlines where the function is called (as it inlines a view).
/// Planning through logical nodes rather than a custom table provider lets
/// a statement travel to a cluster's scheduler as a plan, with the tables it
/// reads as ordinary scans.
#[derive(Debug)]
pub(crate) struct PlannedTable {
    plan: LogicalPlan,
    schema: SchemaRef,
}

impl PlannedTable {
    /// The table of one of Kiln's logical nodes.
    pub(crate) fn of(node: impl UserDefinedLogicalNode + 'static) -> Arc<dyn TableProvider> {
        Self::from_plan(LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        }))
    }

    /// The table of a logical plan.
    pub(crate) fn from_plan(plan: LogicalPlan) -> Arc<dyn TableProvider> {
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Arc::new(PlannedTable { plan, schema })
    }
}

#[async_trait]
impl TableProvider for PlannedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        Some(std::borrow::Cow::Borrowed(&self.plan))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = state.create_physical_plan(&self.plan).await?;
        project(plan, projection)
    }
}

/// Narrows a plan to `projection`, if one was asked for.
fn project(
    plan: Arc<dyn ExecutionPlan>,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(projection) = projection else {
        return Ok(plan);
    };
    let schema = plan.schema();
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
        .iter()
        .map(|&i| {
            let name = schema.field(i).name().clone();
            (
                Arc::new(ColumnExpr::new(&name, i)) as Arc<dyn PhysicalExpr>,
                name,
            )
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}
