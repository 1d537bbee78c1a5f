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
    DFSchema, Result, ScalarValue, TableReference, plan_datafusion_err, plan_err,
};
use datafusion::datasource::TableType;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use kiln_engine::exec::{KnnJoinExec, SearchSpec, Unscored, VectorTopKExec, knn_join_schema};
use kiln_engine::functions::{first_vector, is_vector_type};
use kiln_kernels::ops::vector::Metric;

use crate::options::SearchOptions;

/// `vector_search(table, column, query, k [, metric])`.
#[derive(Debug, Default)]
pub struct VectorSearchFunction;

/// `knn_join(query_table, query_column, corpus_table, corpus_column, k [, metric])`.
#[derive(Debug, Default)]
pub struct KnnJoinFunction;

fn session_state(session: &dyn Session) -> Result<&SessionState> {
    session
        .as_any()
        .downcast_ref::<SessionState>()
        .ok_or_else(|| plan_datafusion_err!("vector search needs a DataFusion SessionState"))
}

/// A table or column name: a string literal or a bare identifier.
fn name_arg(expr: &Expr, func: &str, what: &str) -> Result<String> {
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
fn constant(state: &SessionState, expr: &Expr, func: &str, what: &str) -> Result<ScalarValue> {
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
        other => plan_err!("{func}: k must be a non-negative integer, got {other}"),
    }
}

fn metric_arg(exprs: &[Expr], index: usize, func: &str) -> Result<Metric> {
    match exprs.get(index) {
        None => Ok(Metric::Cosine),
        Some(Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _)) => s
            .parse()
            .map_err(|e: String| plan_datafusion_err!("{func}: {e}")),
        Some(other) => plan_err!("{func}: metric must be 'cosine', 'dot' or 'l2', got {other}"),
    }
}

/// Looks a table up in the session's catalog.
fn table(state: &SessionState, name: &str, func: &str) -> Result<Arc<dyn TableProvider>> {
    let reference = TableReference::from(name);
    let schema = state.schema_for_ref(reference.clone())?;
    // Catalog lookups are async; the built-in providers answer at once.
    futures::executor::block_on(schema.table(reference.table()))?
        .ok_or_else(|| plan_datafusion_err!("{func}: table '{name}' not found"))
}

/// The index and field of a vector column, or a plan error naming it.
fn vector_column(schema: &Schema, table: &str, column: &str, func: &str) -> Result<(usize, Field)> {
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

fn fixed_dim(field: &Field) -> Option<usize> {
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
fn unique_name(schema: &Schema, base: &str, prefix: &str) -> String {
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
        let (index, field) = vector_column(&corpus.schema(), &table_name, &column, F)?;
        let query = query_vector(state, &exprs[2], F)?;
        if let Some(d) = fixed_dim(&field)
            && d != query.len()
        {
            return plan_err!(
                "{F}: dimension mismatch: column '{column}' has {d} components, the query {}",
                query.len()
            );
        }
        let k = k_arg(state, &exprs[3], F)?;
        let metric = metric_arg(exprs, 4, F)?;
        let options = SearchOptions::from_state(state)?;
        let corpus_schema = corpus.schema();
        let mut fields: Vec<Arc<Field>> = corpus_schema.fields().iter().cloned().collect();
        let score = unique_name(&corpus_schema, "score", "vector_");
        fields.push(Arc::new(Field::new(&score, DataType::Float32, true)));
        Ok(Arc::new(VectorSearchTable {
            corpus,
            spec: SearchSpec {
                column: index,
                column_name: column,
                dim: query.len(),
                metric,
                k,
                budget_bytes: options.budget_bytes,
                keep_unscored: 0,
            },
            query,
            score,
            options,
            schema: Arc::new(Schema::new(fields)),
        }))
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
        let (query_index, query_field) =
            vector_column(&queries.schema(), &query_table, &query_column, F)?;
        let corpus_table = name_arg(&exprs[2], F, "the corpus table")?;
        let corpus = table(state, &corpus_table, F)?;
        let corpus_column = name_arg(&exprs[3], F, "the corpus column")?;
        let (corpus_index, corpus_field) =
            vector_column(&corpus.schema(), &corpus_table, &corpus_column, F)?;
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
        let k = k_arg(state, &exprs[4], F)?;
        let metric = metric_arg(exprs, 5, F)?;
        let options = SearchOptions::from_state(state)?;
        let schema = knn_join_schema(&queries.schema(), &corpus.schema());
        Ok(Arc::new(KnnJoinTable {
            queries,
            query_index,
            corpus,
            spec: SearchSpec {
                column: corpus_index,
                column_name: corpus_column,
                dim,
                metric,
                k,
                budget_bytes: options.budget_bytes,
                keep_unscored: 0,
            },
            options,
            schema,
        }))
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
                Arc::new(Column::new(&name, i)) as Arc<dyn PhysicalExpr>,
                name,
            )
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

#[derive(Debug)]
struct VectorSearchTable {
    corpus: Arc<dyn TableProvider>,
    spec: SearchSpec,
    query: Vec<f32>,
    score: String,
    options: SearchOptions,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for VectorSearchTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = self.corpus.scan(state, None, &[], None).await?;
        let exec = VectorTopKExec::try_new(
            input,
            self.spec.clone(),
            self.query.clone(),
            Unscored::Skip,
            Some(self.score.clone()),
            self.options.device.clone(),
        )?;
        project(Arc::new(exec), projection)
    }
}

#[derive(Debug)]
struct KnnJoinTable {
    queries: Arc<dyn TableProvider>,
    query_index: usize,
    corpus: Arc<dyn TableProvider>,
    spec: SearchSpec,
    options: SearchOptions,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for KnnJoinTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let queries = self.queries.scan(state, None, &[], None).await?;
        let corpus = self.corpus.scan(state, None, &[], None).await?;
        let exec = KnnJoinExec::try_new(
            queries,
            self.query_index,
            corpus,
            self.spec.clone(),
            self.options.query_batch,
            self.options.device.clone(),
        )?;
        project(Arc::new(exec), projection)
    }
}
