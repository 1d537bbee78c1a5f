//! Data profiles: per column of a table, what its values look like.
//!
//! `profile(source [, top])` (a table function; `source` a table name or a
//! location) and [`profile`] give one row per column: row and NULL counts,
//! an approximate distinct count (HyperLogLog), min and max, and by kind —
//! numeric: mean, standard deviation and approximate quantiles (t-digest);
//! text: length statistics; vectors (lists of floats, as embeddings are):
//! dimension, norm statistics, zero vectors, exact duplicates and the
//! centroid (component-wise mean) — and, for every non-vector
//! column, its `top` most frequent values (default 20) with their counts.
//!
//! The statistics are DataFusion aggregates of one pass over the input
//! (partial and final states, so they run in parallel and on a cluster);
//! the most frequent values are one grouped pass per column.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Array, Int64Builder, ListArray, RecordBatch,
    StringArray, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, Fields, Float64Type, Int64Type, Schema, SchemaRef,
};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, ScalarValue, TableReference, plan_datafusion_err, plan_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableType, provider_as_source};
use datafusion::execution::SessionState;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, col, lit};
use kiln_engine::functions::is_vector_type;

use crate::vector_search::{name_arg, session_state};

/// The quantiles a profile gives of numeric columns.
pub const QUANTILES: [(f64, &str); 5] = [
    (0.01, "p01"),
    (0.25, "p25"),
    (0.5, "p50"),
    (0.75, "p75"),
    (0.99, "p99"),
];

/// How many most frequent values a profile lists by default.
pub const DEFAULT_TOP: usize = 20;

/// The relative standard error of `distinct_approx`: DataFusion's
/// HyperLogLog has 2^14 registers, 1.04 / sqrt(16384).
pub const DISTINCT_ERROR: f64 = 0.0081;

/// What kind of statistics a column gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Numeric,
    Text,
    Vector,
    Other,
}

impl Kind {
    fn of(t: &DataType) -> Kind {
        if is_vector_type(t) {
            Kind::Vector
        } else if t.is_numeric() {
            Kind::Numeric
        } else if matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            Kind::Text
        } else {
            Kind::Other
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Numeric => "numeric",
            Kind::Text => "text",
            Kind::Vector => "vector",
            Kind::Other => "other",
        }
    }
}

fn top_fields() -> Fields {
    Fields::from(vec![
        Field::new("value", DataType::Utf8, true),
        Field::new("count", DataType::Int64, false),
    ])
}

fn top_item() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(top_fields()), true))
}

/// The `top_values` column: per profiled column its list of (value,
/// count), NULL where none was computed.
fn top_values_array(lists: Vec<Option<Vec<(String, i64)>>>) -> Result<ArrayRef> {
    let lengths = lists.iter().map(|l| l.as_ref().map_or(0, Vec::len));
    let offsets = OffsetBuffer::from_lengths(lengths);
    let nulls = NullBuffer::from(lists.iter().map(Option::is_some).collect::<Vec<_>>());
    let (values, counts): (Vec<String>, Vec<i64>) = lists.into_iter().flatten().flatten().unzip();
    let entries = StructArray::try_new(
        top_fields(),
        vec![
            Arc::new(StringArray::from(values)),
            Arc::new(Int64Array::from(counts)),
        ],
        None,
    )?;
    Ok(Arc::new(ListArray::try_new(
        top_item(),
        offsets,
        Arc::new(entries),
        Some(nulls),
    )?))
}

/// The schema of a profile: one row per column of the input.
pub fn profile_schema() -> SchemaRef {
    let f64_field = |name: &str| Field::new(name, DataType::Float64, true);
    let i64_field = |name: &str| Field::new(name, DataType::Int64, true);
    let mut fields = vec![
        Field::new("column", DataType::Utf8, false),
        Field::new("data_type", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("nulls", DataType::Int64, false),
        i64_field("distinct_approx"),
        Field::new("min", DataType::Utf8, true),
        Field::new("max", DataType::Utf8, true),
        f64_field("mean"),
        f64_field("stddev"),
    ];
    fields.extend(QUANTILES.iter().map(|(_, name)| f64_field(name)));
    fields.extend([
        i64_field("min_length"),
        f64_field("mean_length"),
        i64_field("max_length"),
        i64_field("dimension"),
        f64_field("norm_min"),
        f64_field("norm_mean"),
        f64_field("norm_max"),
        i64_field("zero_vectors"),
        i64_field("duplicate_vectors"),
        Field::new(
            "centroid",
            DataType::new_list(DataType::Float64, true),
            true,
        ),
        Field::new("top_values", DataType::List(top_item()), true),
    ]);
    Arc::new(Schema::new(fields))
}

/// A column name quoted for SQL text.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether DataFusion's `approx_distinct` takes the type as it is (else
/// the values are counted as text).
fn hashable(t: &DataType) -> bool {
    t.is_integer()
        || matches!(
            t,
            DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Utf8View
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::BinaryView
        )
}

/// The aggregates of column `i` (named `c{i}_...`), as SQL text.
fn aggregates(i: usize, name: &str, data_type: &DataType, kind: Kind) -> Vec<(String, String)> {
    let c = quoted(name);
    let d = format!("CAST({c} AS DOUBLE)");
    let mut out = vec![(format!("c{i}_count"), format!("count({c})"))];
    if kind != Kind::Vector {
        let distinct = if hashable(data_type) {
            format!("approx_distinct({c})")
        } else {
            format!("approx_distinct(CAST({c} AS VARCHAR))")
        };
        out.push((format!("c{i}_distinct"), distinct));
        out.push((format!("c{i}_min"), format!("CAST(min({c}) AS VARCHAR)")));
        out.push((format!("c{i}_max"), format!("CAST(max({c}) AS VARCHAR)")));
    }
    match kind {
        Kind::Numeric => {
            out.push((format!("c{i}_mean"), format!("avg({d})")));
            out.push((format!("c{i}_stddev"), format!("stddev({d})")));
            for (q, qname) in QUANTILES {
                out.push((
                    format!("c{i}_{qname}"),
                    format!("approx_percentile_cont({q}) WITHIN GROUP (ORDER BY {d})"),
                ));
            }
        }
        Kind::Text => {
            let len = format!("character_length({c})");
            out.push((format!("c{i}_minlen"), format!("min({len})")));
            out.push((
                format!("c{i}_meanlen"),
                format!("avg(CAST({len} AS DOUBLE))"),
            ));
            out.push((format!("c{i}_maxlen"), format!("max({len})")));
        }
        Kind::Vector => {
            let norm = format!("sqrt(CAST(dot_product({c}, {c}) AS DOUBLE))");
            out.push((format!("c{i}_dim"), format!("max(array_length({c}))")));
            out.push((format!("c{i}_nmin"), format!("min({norm})")));
            out.push((format!("c{i}_nmean"), format!("avg({norm})")));
            out.push((format!("c{i}_nmax"), format!("max({norm})")));
            out.push((
                format!("c{i}_zero"),
                format!("sum(CASE WHEN dot_product({c}, {c}) = 0 THEN 1 ELSE 0 END)"),
            ));
            // Exact: each distinct vector once.
            out.push((
                format!("c{i}_dup"),
                format!("count({c}) - count(DISTINCT {c})"),
            ));
            out.push((format!("c{i}_centroid"), format!("vector_mean({c})")));
        }
        Kind::Other => {}
    }
    out
}

/// Cell `row` of column `name` as f64 (None: no such column, or NULL).
pub fn cell_f64(batch: &RecordBatch, name: &str, row: usize) -> Result<Option<f64>> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let array = cast(array, &DataType::Float64)?;
    let values = array.as_primitive::<Float64Type>();
    Ok((!values.is_null(row)).then(|| values.value(row)))
}

/// Cell `row` of column `name` as i64 (None: no such column, or NULL).
pub fn cell_i64(batch: &RecordBatch, name: &str, row: usize) -> Result<Option<i64>> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let array = cast(array, &DataType::Int64)?;
    let values = array.as_primitive::<Int64Type>();
    Ok((!values.is_null(row)).then(|| values.value(row)))
}

/// Cell `row` of column `name` as text (None: no such column, or NULL).
pub fn cell_text(batch: &RecordBatch, name: &str, row: usize) -> Result<Option<String>> {
    let Some(array) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let array = cast(array, &DataType::Utf8)?;
    let values = array.as_string::<i32>();
    Ok((!values.is_null(row)).then(|| values.value(row).to_string()))
}

/// The statistics row (one row), read by name.
struct Row<'a> {
    batch: &'a RecordBatch,
}

impl Row<'_> {
    fn f64(&self, name: &str) -> Result<Option<f64>> {
        cell_f64(self.batch, name, 0)
    }

    fn i64(&self, name: &str) -> Result<Option<i64>> {
        cell_i64(self.batch, name, 0)
    }

    fn text(&self, name: &str) -> Result<Option<String>> {
        cell_text(self.batch, name, 0)
    }
}

/// The `top` most frequent non-NULL values of column `name`, most frequent
/// first (ties by value).
async fn top_values(frame: &DataFrame, name: &str, top: usize) -> Result<Vec<(String, i64)>> {
    let column = Expr::Column(datafusion::common::Column::from_name(name));
    // Names no input column has (a column may well be called `n`).
    const COUNT: &str = "__kiln_profile_count";
    const VALUE: &str = "__kiln_profile_value";
    let grouped = frame
        .clone()
        .filter(column.clone().is_not_null())?
        .aggregate(vec![column.clone()], vec![count(lit(1)).alias(COUNT)])?
        // Ties by value, in the column's own order (2 before 10).
        .sort(vec![
            col(COUNT).sort(false, false),
            column.clone().sort(true, false),
        ])?
        .limit(0, Some(top))?
        .select(vec![
            datafusion::logical_expr::cast(column, DataType::Utf8).alias(VALUE),
            col(COUNT),
        ])?;
    let mut out = Vec::new();
    for batch in grouped.collect().await? {
        for r in 0..batch.num_rows() {
            if let (Some(value), Some(n)) =
                (cell_text(&batch, VALUE, r)?, cell_i64(&batch, COUNT, r)?)
            {
                out.push((value, n));
            }
        }
    }
    Ok(out)
}

/// The profile of `input` (see the module's docs): one row per column.
pub async fn profile(state: &SessionState, input: LogicalPlan, top: usize) -> Result<RecordBatch> {
    let frame = DataFrame::new(state.clone(), input);
    let schema = frame.schema().clone();
    let kinds: Vec<Kind> = schema
        .fields()
        .iter()
        .map(|f| Kind::of(f.data_type()))
        .collect();
    let mut exprs = vec![count(lit(1)).alias("__kiln_profile_rows")];
    for (i, (field, kind)) in schema.fields().iter().zip(&kinds).enumerate() {
        for (alias, sql) in aggregates(i, field.name(), field.data_type(), *kind) {
            exprs.push(frame.parse_sql_expr(&sql)?.alias(alias));
        }
    }
    let stats = frame.clone().aggregate(vec![], exprs)?.collect().await?;
    let stats = datafusion::arrow::compute::concat_batches(
        &stats
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::new(Schema::empty())),
        &stats,
    )?;
    if stats.num_rows() != 1 {
        return plan_err!(
            "profile: the statistics query gave {} rows",
            stats.num_rows()
        );
    }
    let row = Row { batch: &stats };
    let rows = row.i64("__kiln_profile_rows")?.unwrap_or(0);

    let out_schema = profile_schema();
    let mut column = StringBuilder::new();
    let mut data_type = StringBuilder::new();
    let mut kind_b = StringBuilder::new();
    let mut rows_b = Int64Builder::new();
    let mut nulls = Int64Builder::new();
    let mut distinct = Int64Builder::new();
    let mut min = StringBuilder::new();
    let mut max = StringBuilder::new();
    let mut f64s: Vec<Float64Builder> = (0..2 + QUANTILES.len())
        .map(|_| Float64Builder::new())
        .collect();
    let mut min_len = Int64Builder::new();
    let mut mean_len = Float64Builder::new();
    let mut max_len = Int64Builder::new();
    let mut dimension = Int64Builder::new();
    let mut norms: Vec<Float64Builder> = (0..3).map(|_| Float64Builder::new()).collect();
    let mut zero = Int64Builder::new();
    let mut duplicates = Int64Builder::new();
    let mut centroids: Vec<Option<ArrayRef>> = Vec::with_capacity(kinds.len());
    let mut tops = Vec::with_capacity(kinds.len());

    for (i, (field, kind)) in schema.fields().iter().zip(&kinds).enumerate() {
        let p = |suffix: &str| format!("c{i}_{suffix}");
        column.append_value(field.name());
        data_type.append_value(field.data_type().to_string());
        kind_b.append_value(kind.name());
        rows_b.append_value(rows);
        nulls.append_value(rows - row.i64(&p("count"))?.unwrap_or(0));
        distinct.append_option(row.i64(&p("distinct"))?);
        min.append_option(row.text(&p("min"))?);
        max.append_option(row.text(&p("max"))?);
        f64s[0].append_option(row.f64(&p("mean"))?);
        f64s[1].append_option(row.f64(&p("stddev"))?);
        for (q, (_, qname)) in QUANTILES.iter().enumerate() {
            f64s[2 + q].append_option(row.f64(&p(qname))?);
        }
        min_len.append_option(row.i64(&p("minlen"))?);
        mean_len.append_option(row.f64(&p("meanlen"))?);
        max_len.append_option(row.i64(&p("maxlen"))?);
        dimension.append_option(row.i64(&p("dim"))?);
        norms[0].append_option(row.f64(&p("nmin"))?);
        norms[1].append_option(row.f64(&p("nmean"))?);
        norms[2].append_option(row.f64(&p("nmax"))?);
        zero.append_option(match kind {
            Kind::Vector => Some(row.i64(&p("zero"))?.unwrap_or(0)),
            _ => None,
        });
        duplicates.append_option(match kind {
            Kind::Vector => Some(row.i64(&p("dup"))?.unwrap_or(0)),
            _ => None,
        });
        centroids.push(match (kind, stats.column_by_name(&p("centroid"))) {
            (Kind::Vector, Some(c)) if c.is_valid(0) => Some(c.as_list::<i32>().value(0)),
            _ => None,
        });
        tops.push(if *kind == Kind::Vector || top == 0 {
            None
        } else {
            Some(top_values(&frame, field.name(), top).await?)
        });
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(column.finish()),
        Arc::new(data_type.finish()),
        Arc::new(kind_b.finish()),
        Arc::new(rows_b.finish()),
        Arc::new(nulls.finish()),
        Arc::new(distinct.finish()),
        Arc::new(min.finish()),
        Arc::new(max.finish()),
    ];
    columns.extend(f64s.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.push(Arc::new(min_len.finish()));
    columns.push(Arc::new(mean_len.finish()));
    columns.push(Arc::new(max_len.finish()));
    columns.push(Arc::new(dimension.finish()));
    columns.extend(norms.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.push(Arc::new(zero.finish()));
    columns.push(Arc::new(duplicates.finish()));
    columns.push(centroid_array(centroids)?);
    columns.push(top_values_array(tops)?);
    Ok(RecordBatch::try_new(out_schema, columns)?)
}

/// The centroids as a list column (NULL for columns without one).
fn centroid_array(centroids: Vec<Option<ArrayRef>>) -> Result<ArrayRef> {
    let lengths: Vec<usize> = centroids
        .iter()
        .map(|c| c.as_ref().map_or(0, |c| c.len()))
        .collect();
    let valid: Vec<bool> = centroids.iter().map(Option::is_some).collect();
    let parts: Vec<ArrayRef> = centroids.into_iter().flatten().collect();
    let values = match parts.is_empty() {
        true => datafusion::arrow::array::new_empty_array(&DataType::Float64),
        false => {
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            datafusion::arrow::compute::concat(&refs)?
        }
    };
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float64, true)),
        OffsetBuffer::from_lengths(lengths),
        values,
        Some(NullBuffer::from(valid)),
    )?))
}

/// The rows of `source`, a table name or a location (a path or URL, one
/// name, dots and all), as a scan; `function` names the caller in errors.
pub fn source_plan(state: &SessionState, source: &str, function: &str) -> Result<LogicalPlan> {
    const FILES: [&str; 6] = [".parquet", ".csv", ".json", ".ndjson", ".arrow", ".avro"];
    let is_file = FILES
        .iter()
        .any(|ext| source.to_ascii_lowercase().ends_with(ext));
    let reference = if source.contains('/') || source.contains(':') || is_file {
        TableReference::bare(source)
    } else {
        TableReference::from(source)
    };
    let schema = state.schema_for_ref(reference.clone())?;
    // Catalog lookups are async; the built-in providers (and the URL tables
    // that read a location) answer at once.
    let provider =
        futures::executor::block_on(schema.table(reference.table()))?.ok_or_else(|| {
            plan_datafusion_err!("{function}: no table or readable location named '{source}'")
        })?;
    LogicalPlanBuilder::scan(reference, provider_as_source(provider), None)?.build()
}

/// The counts of numeric column `name` of `input` in `bins` equal bins
/// from `lo` to `hi` (the last bin closed), NULLs left out.
pub async fn histogram(
    state: &SessionState,
    input: LogicalPlan,
    name: &str,
    (lo, hi): (f64, f64),
    bins: usize,
) -> Result<Vec<i64>> {
    let mut counts = vec![0i64; bins.max(1)];
    if !(lo.is_finite() && hi.is_finite()) || bins == 0 {
        return Ok(counts);
    }
    let frame = DataFrame::new(state.clone(), input);
    let c = quoted(name);
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let last = bins - 1;
    let bin = frame.parse_sql_expr(&format!(
        "least(greatest(CAST(floor((CAST({c} AS DOUBLE) - ({lo:e})) / ({width:e})) AS BIGINT), 0), {last})"
    ))?;
    const BIN: &str = "__kiln_profile_bin";
    const COUNT: &str = "__kiln_profile_count";
    let grouped = frame
        .filter(frame_column(name).is_not_null())?
        .aggregate(vec![bin.alias(BIN)], vec![count(lit(1)).alias(COUNT)])?;
    for batch in grouped.collect().await? {
        for r in 0..batch.num_rows() {
            if let (Some(b), Some(n)) = (cell_i64(&batch, BIN, r)?, cell_i64(&batch, COUNT, r)?)
                && let Some(slot) = counts.get_mut(b as usize)
            {
                *slot += n;
            }
        }
    }
    Ok(counts)
}

fn frame_column(name: &str) -> Expr {
    Expr::Column(datafusion::common::Column::from_name(name))
}

/// `profile(source [, top])`.
#[derive(Debug, Default)]
pub struct ProfileFunction;

impl TableFunctionImpl for ProfileFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const F: &str = "profile";
        let exprs = args.exprs();
        if exprs.is_empty() || exprs.len() > 2 {
            return plan_err!(
                "{F} takes (table_or_location [, top]), got {} arguments",
                exprs.len()
            );
        }
        let state = session_state(args.session())?;
        let source = name_arg(&exprs[0], F, "the table or location")?;
        let top = match exprs.get(1) {
            None => DEFAULT_TOP,
            Some(Expr::Literal(ScalarValue::Int64(Some(n)), _)) if *n >= 0 => *n as usize,
            Some(other) => {
                return plan_err!("{F}: top must be a non-negative integer, got {other}");
            }
        };
        let input = source_plan(state, &source, F)?;
        Ok(Arc::new(ProfileTable { input, top }))
    }
}

/// The profile of a plan, computed when the statement runs.
#[derive(Debug)]
pub struct ProfileTable {
    input: LogicalPlan,
    top: usize,
}

impl ProfileTable {
    /// The profile of `input` as a table (for DataFrames).
    pub fn new(input: LogicalPlan, top: usize) -> Self {
        ProfileTable { input, top }
    }
}

#[async_trait]
impl TableProvider for ProfileTable {
    fn schema(&self) -> SchemaRef {
        profile_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = session_state(session)?;
        let batch = profile(state, self.input.clone(), self.top).await?;
        batch_exec(batch, projection)
    }
}

/// A computed batch as a scan (what the table functions that compute
/// their rows when the statement runs return).
pub(crate) fn batch_exec(
    batch: RecordBatch,
    projection: Option<&Vec<usize>>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = batch.schema();
    Ok(MemorySourceConfig::try_new_exec(
        &[vec![batch]],
        schema,
        projection.cloned(),
    )?)
}
