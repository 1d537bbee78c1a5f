//! Drift: has a table's data changed from a reference?
//!
//! `drift(reference, current [, column ...])` (a table function; each
//! side a table name or a location) and [`drift`] give one row per column:
//! the test Evidently's data drift chooses for it, its statistic and
//! p-value or distance, the threshold, the verdict, and the population
//! stability index (PSI).
//!
//! The choice, as Evidently makes it (after dropping NULLs, NaN and
//! infinities): when the reference has at most 1,000 values, numeric
//! columns with more than 5 distinct values get the two-sample
//! Kolmogorov–Smirnov test, and the others (and categorical columns) a
//! chi-squared test, or a two-proportion Z-test when there are at most 2
//! values — all at 0.95 confidence; past 1,000 values, numeric columns get
//! the Wasserstein distance normed by the reference's standard deviation,
//! and categorical ones (and numeric ones with at most 5 values) the
//! Jensen–Shannon distance, both with threshold 0.1. Columns of vectors
//! (embeddings) get a domain classifier (drift when its ROC AUC passes
//! 0.55) and the distance between the two centroids.
//!
//! Each column is one grouped pass per side (value, count): the tests are
//! computed from those counts exactly, with the same arithmetic as scipy.

pub mod embedding;
pub mod stats;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Result, plan_err};
use datafusion::datasource::TableType;
use datafusion::execution::SessionState;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, col, lit};
use futures::StreamExt;
use kiln_engine::functions::is_vector_type;

use crate::profile::{cell_i64, source_plan};
use crate::vector_search::{name_arg, session_state};
use embedding::Vectors;
use stats::Tested;

/// A reference with at most this many values gets statistical tests
/// (p-values); a larger one gets distances.
pub const SMALL_REFERENCE: u64 = 1000;
/// The p-value under which a test finds drift (0.95 confidence).
pub const P_THRESHOLD: f64 = 0.05;
/// The distance (Wasserstein normed, Jensen–Shannon) from which a column
/// drifts, and the PSI from which PSI calls it drifted.
pub const DISTANCE_THRESHOLD: f64 = 0.1;
/// The domain classifier's ROC AUC above which an embedding column drifts.
pub const AUC_THRESHOLD: f64 = 0.55;
/// The centroid distance Evidently's `distance()` method calls drift.
pub const CENTROID_THRESHOLD: f64 = 0.2;
/// The share of drifted columns from which the data set has drifted.
pub const DRIFT_SHARE: f64 = 0.5;
/// How many vectors of each side the domain classifier sees at most.
pub const CLASSIFIER_SAMPLE: usize = 5000;

/// What kind of test a column gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Numeric { integer: bool },
    Categorical,
    Vector,
}

impl Kind {
    fn of(t: &DataType) -> Option<Kind> {
        if is_vector_type(t) {
            Some(Kind::Vector)
        } else if t.is_numeric() {
            Some(Kind::Numeric {
                integer: t.is_integer(),
            })
        } else if matches!(
            t,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean
        ) || matches!(t, DataType::Dictionary(_, v) if matches!(**v, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
        {
            Some(Kind::Categorical)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Numeric { .. } => "numeric",
            Kind::Categorical => "categorical",
            Kind::Vector => "vector",
        }
    }
}

/// The drift of one column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDrift {
    pub column: String,
    pub kind: &'static str,
    /// Values compared (NULL, NaN and infinite values left out).
    pub reference_values: u64,
    pub current_values: u64,
    /// `ks`, `chisquare`, `z`, `wasserstein`, `jensenshannon` or
    /// `domain_classifier`.
    pub test: &'static str,
    /// The test's statistic: KS's D, chi², z, the normed Wasserstein or
    /// Jensen–Shannon distance, the classifier's ROC AUC.
    pub statistic: f64,
    pub p_value: Option<f64>,
    /// What the threshold is compared with: the p-value or the statistic.
    pub drift_score: f64,
    pub threshold: f64,
    pub drifted: bool,
    pub psi: Option<f64>,
    pub centroid_distance: Option<f64>,
}

/// The schema of `drift(...)`.
pub fn drift_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("column", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("reference_values", DataType::Int64, false),
        Field::new("current_values", DataType::Int64, false),
        Field::new("test", DataType::Utf8, false),
        Field::new("statistic", DataType::Float64, true),
        Field::new("p_value", DataType::Float64, true),
        Field::new("drift_score", DataType::Float64, true),
        Field::new("threshold", DataType::Float64, false),
        Field::new("drifted", DataType::Boolean, false),
        Field::new("psi", DataType::Float64, true),
        Field::new("centroid_distance", DataType::Float64, true),
    ]))
}

/// The rows of `drift(...)` as one batch.
pub fn drift_batch(rows: &[ColumnDrift]) -> Result<RecordBatch> {
    let f64s = |f: fn(&ColumnDrift) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(rows.iter().map(f).collect::<Vec<_>>()))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.column.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.reference_values as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.current_values as i64),
        )),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.test))),
        f64s(|r| finite(r.statistic)),
        f64s(|r| r.p_value.and_then(finite)),
        f64s(|r| finite(r.drift_score)),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.threshold),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.drifted).collect::<Vec<_>>(),
        )),
        f64s(|r| r.psi.and_then(finite)),
        f64s(|r| r.centroid_distance),
    ];
    Ok(RecordBatch::try_new(drift_schema(), columns)?)
}

/// NaN as NULL (a statistic that is not a number: a z-test where every
/// value is the same); infinities stay.
fn finite(x: f64) -> Option<f64> {
    (!x.is_nan()).then_some(x)
}

/// The columns the two sides are compared on: `columns` if named (each
/// must be on both sides, of one kind), else every column of the
/// reference, which must be the current's columns too. Columns of types
/// no test takes (dates, binary, structs) are left out unless named.
fn compared_columns(
    reference: &Schema,
    current: &Schema,
    columns: &[String],
) -> Result<Vec<(String, Kind)>> {
    let named = !columns.is_empty();
    let wanted: Vec<String> = if named {
        columns.to_vec()
    } else {
        reference
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    let missing_ref: Vec<&str> = wanted
        .iter()
        .filter(|c| reference.field_with_name(c).is_err())
        .map(String::as_str)
        .collect();
    let missing_cur: Vec<&str> = wanted
        .iter()
        .filter(|c| current.field_with_name(c).is_err())
        .map(String::as_str)
        .collect();
    let only_cur: Vec<&str> = if named {
        vec![]
    } else {
        current
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .filter(|c| reference.field_with_name(c).is_err())
            .collect()
    };
    let mut problems = Vec::new();
    if !missing_ref.is_empty() {
        problems.push(format!(
            "missing from the reference: {}",
            missing_ref.join(", ")
        ));
    }
    if !missing_cur.is_empty() {
        problems.push(format!(
            "missing from the current data: {}",
            missing_cur.join(", ")
        ));
    }
    if !only_cur.is_empty() {
        problems.push(format!(
            "only in the current data: {} (name the columns to compare to leave them out)",
            only_cur.join(", ")
        ));
    }
    let mut out = Vec::new();
    for name in &wanted {
        let (Ok(r), Ok(c)) = (
            reference.field_with_name(name),
            current.field_with_name(name),
        ) else {
            continue;
        };
        match (Kind::of(r.data_type()), Kind::of(c.data_type())) {
            (Some(a), Some(b)) if a.name() == b.name() => out.push((name.clone(), a)),
            (Some(_), Some(_)) => problems.push(format!(
                "column '{name}' is {} in the reference but {} in the current data",
                r.data_type(),
                c.data_type()
            )),
            _ if named => problems.push(format!(
                "column '{name}' is {}: drift compares numbers, text, booleans and vectors",
                r.data_type()
            )),
            _ => {}
        }
    }
    if !problems.is_empty() {
        return plan_err!(
            "drift: the two sides do not have the same columns: {}",
            problems.join("; ")
        );
    }
    if out.is_empty() {
        return plan_err!("drift: no column to compare (numbers, text, booleans or vectors)");
    }
    Ok(out)
}

/// A side's values of one column.
enum Values {
    Numbers(Vec<(f64, u64)>),
    Labels(Vec<(String, u64)>),
    Vectors(Vectors),
}

impl Values {
    fn count(&self) -> u64 {
        match self {
            Values::Numbers(v) => v.iter().map(|x| x.1).sum(),
            Values::Labels(v) => v.iter().map(|x| x.1).sum(),
            Values::Vectors(v) => v.seen,
        }
    }
}

const COUNT: &str = "__kiln_drift_count";
const VALUE: &str = "__kiln_drift_value";

fn column_expr(name: &str) -> Expr {
    Expr::Column(datafusion::common::Column::from_name(name))
}

/// The distinct values of column `name` with their counts (one grouped
/// pass), or for vectors their centroid and a sample (one scan).
async fn values(frame: &DataFrame, name: &str, kind: Kind, seed: u64) -> Result<Values> {
    let column = column_expr(name);
    let frame = frame.clone().filter(column.clone().is_not_null())?;
    if kind == Kind::Vector {
        let mut vectors = Vectors::new(CLASSIFIER_SAMPLE, seed);
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Float64, true)));
        let mut stream = frame.select(vec![column])?.execute_stream().await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let array = cast(batch.column(0), &list)?;
            let lists = array.as_list::<i32>();
            // The components of the whole batch once (a NULL component as
            // NaN), each row a slice of them.
            let values = lists.values().as_primitive::<Float64Type>();
            let filled: Vec<f64>;
            let components: &[f64] = if values.null_count() == 0 {
                values.values()
            } else {
                filled = values.iter().map(|x| x.unwrap_or(f64::NAN)).collect();
                &filled
            };
            let offsets = lists.value_offsets();
            for i in 0..lists.len() {
                if lists.is_null(i) {
                    continue;
                }
                let v = &components[offsets[i] as usize..offsets[i + 1] as usize];
                if let Err(d) = vectors.push(v) {
                    return plan_err!(
                        "drift: column '{name}' holds vectors of {d} and of {} values",
                        v.len()
                    );
                }
            }
        }
        return Ok(Values::Vectors(vectors));
    }
    let target = match kind {
        Kind::Numeric { .. } => DataType::Float64,
        _ => DataType::Utf8,
    };
    let grouped = frame
        .aggregate(vec![column.clone()], vec![count(lit(1)).alias(COUNT)])?
        .select(vec![
            datafusion::logical_expr::cast(column, target).alias(VALUE),
            col(COUNT),
        ])?;
    let batches = grouped.collect().await?;
    match kind {
        Kind::Numeric { .. } => {
            let mut out = Vec::new();
            for batch in &batches {
                let values = batch.column(0).as_primitive::<Float64Type>();
                for r in 0..batch.num_rows() {
                    let (Some(n), false) = (cell_i64(batch, COUNT, r)?, values.is_null(r)) else {
                        continue;
                    };
                    let v = values.value(r);
                    if v.is_finite() {
                        out.push((v, n as u64));
                    }
                }
            }
            out.sort_by(|a, b| a.0.total_cmp(&b.0));
            // -0.0 and 0.0 are one value, as are integers past 2^53 that
            // convert to one double.
            out.dedup_by(|b, a| {
                if a.0 == b.0 {
                    a.1 += b.1;
                    true
                } else {
                    false
                }
            });
            Ok(Values::Numbers(out))
        }
        _ => {
            let mut out = Vec::new();
            for batch in &batches {
                let values = batch.column(0).as_string::<i32>();
                for r in 0..batch.num_rows() {
                    if let (Some(n), false) = (cell_i64(batch, COUNT, r)?, values.is_null(r)) {
                        out.push((values.value(r).to_string(), n as u64));
                    }
                }
            }
            out.sort();
            Ok(Values::Labels(out))
        }
    }
}

/// The drift of `current` from `reference` on `columns` (all columns when
/// empty); see the module's docs.
pub async fn drift(
    state: &SessionState,
    reference: LogicalPlan,
    current: LogicalPlan,
    columns: &[String],
) -> Result<Vec<ColumnDrift>> {
    let reference = DataFrame::new(state.clone(), reference);
    let current = DataFrame::new(state.clone(), current);
    let compared = compared_columns(
        reference.schema().as_arrow(),
        current.schema().as_arrow(),
        columns,
    )?;
    let mut out = Vec::with_capacity(compared.len());
    for (i, (name, kind)) in compared.iter().enumerate() {
        let seed = 0x6b69_6c6e ^ i as u64;
        let r = values(&reference, name, *kind, seed).await?;
        let c = values(&current, name, *kind, seed.rotate_left(17)).await?;
        if r.count() == 0 {
            return plan_err!(
                "drift: column '{name}' has no values in the reference (every row NULL, NaN or \
                 infinite, or no rows): nothing to compare against"
            );
        }
        if c.count() == 0 {
            return plan_err!(
                "drift: column '{name}' has no values in the current data (every row NULL, NaN \
                 or infinite, or no rows)"
            );
        }
        out.push(column_drift(name, *kind, r, c)?);
    }
    Ok(out)
}

/// The test, statistic and verdict of one column (see the module's docs).
fn column_drift(name: &str, kind: Kind, r: Values, c: Values) -> Result<ColumnDrift> {
    let (n1, n2) = (r.count(), c.count());
    let small = n1 <= SMALL_REFERENCE;
    let base = |test, statistic, p_value: Option<f64>, threshold, drifted, psi| ColumnDrift {
        column: name.to_string(),
        kind: kind.name(),
        reference_values: n1,
        current_values: n2,
        test,
        statistic,
        p_value,
        drift_score: p_value.unwrap_or(statistic),
        threshold,
        drifted,
        psi,
        centroid_distance: None,
    };
    let p_test = |test, t: Tested, strict: bool| {
        let drifted = if strict {
            t.p_value < P_THRESHOLD
        } else {
            t.p_value <= P_THRESHOLD
        };
        (test, t.statistic, Some(t.p_value), P_THRESHOLD, drifted)
    };
    match (r, c) {
        (Values::Vectors(r), Values::Vectors(c)) => {
            if r.dimension != c.dimension {
                return plan_err!(
                    "drift: column '{name}' holds vectors of {} values in the reference but {} in \
                     the current data",
                    r.dimension.unwrap_or(0),
                    c.dimension.unwrap_or(0)
                );
            }
            let auc = embedding::domain_classifier_auc(&r.sample, &c.sample, 42);
            let mut row = base(
                "domain_classifier",
                auc,
                None,
                AUC_THRESHOLD,
                auc > AUC_THRESHOLD,
                None,
            );
            row.centroid_distance = Some(embedding::euclidean(&r.centroid(), &c.centroid()));
            Ok(row)
        }
        (Values::Numbers(a), Values::Numbers(b)) => {
            let (ca, cb) = stats::aligned(&a, &b, |x, y| x.total_cmp(y));
            let distinct = ca.len();
            let integer = matches!(kind, Kind::Numeric { integer: true });
            // Evidently's bins: Sturges' when the reference has more than
            // 20 values, else one per value (counted once, for PSI and JS).
            let histograms = (a.len() > 20).then(|| {
                let edges = stats::sturges_edges(&a, &b, integer);
                (stats::histogram(&a, &edges), stats::histogram(&b, &edges))
            });
            let (x, y) = histograms.as_ref().map_or((&ca, &cb), |(x, y)| (x, y));
            let binned = |fill: bool| shares_of(x, n1, y, n2, fill);
            let (rp, cp) = binned(true);
            let psi = stats::psi(&rp, &cp);
            let (test, statistic, p, threshold, drifted) = if small {
                if distinct > 5 {
                    p_test("ks", stats::ks_2samp(&a, &b), false)
                } else if distinct > 2 {
                    p_test("chisquare", chi(&ca, n1, &cb, n2), true)
                } else {
                    p_test("z", z(&ca, n1, &cb, n2), true)
                }
            } else if distinct <= 5 {
                let (rp, cp) = binned(false);
                let js = stats::jensen_shannon(&rp, &cp);
                ("jensenshannon", js, None, DISTANCE_THRESHOLD, js >= 0.1)
            } else {
                let norm = stats::std_dev(&a).max(0.001);
                let w = stats::wasserstein(&a, &b) / norm;
                ("wasserstein", w, None, DISTANCE_THRESHOLD, w >= 0.1)
            };
            Ok(base(test, statistic, p, threshold, drifted, Some(psi)))
        }
        (Values::Labels(a), Values::Labels(b)) => {
            let (ca, cb) = stats::aligned(&a, &b, |x, y| x.cmp(y));
            let (rp, cp) = shares_of(&ca, n1, &cb, n2, true);
            let psi = stats::psi(&rp, &cp);
            let (test, statistic, p, threshold, drifted) = if small {
                if ca.len() > 2 {
                    p_test("chisquare", chi(&ca, n1, &cb, n2), true)
                } else {
                    p_test("z", z(&ca, n1, &cb, n2), true)
                }
            } else {
                let (rp, cp) = shares_of(&ca, n1, &cb, n2, false);
                let js = stats::jensen_shannon(&rp, &cp);
                ("jensenshannon", js, None, DISTANCE_THRESHOLD, js >= 0.1)
            };
            Ok(base(test, statistic, p, threshold, drifted, Some(psi)))
        }
        _ => plan_err!("drift: column '{name}' was read as two different kinds"),
    }
}

fn shares_of(a: &[u64], n1: u64, b: &[u64], n2: u64, fill: bool) -> (Vec<f64>, Vec<f64>) {
    let (mut x, mut y) = (stats::shares(a, n1), stats::shares(b, n2));
    if fill {
        stats::fill_zeros(&mut x);
        stats::fill_zeros(&mut y);
    }
    (x, y)
}

/// Evidently's chi-squared test: the current counts against the
/// reference's scaled to the current's size.
fn chi(ca: &[u64], n1: u64, cb: &[u64], n2: u64) -> Tested {
    let k = n2 as f64 / n1 as f64;
    let expected: Vec<f64> = ca.iter().map(|c| *c as f64 * k).collect();
    let observed: Vec<f64> = cb.iter().map(|c| *c as f64).collect();
    stats::chisquare(&observed, &expected)
}

/// Evidently's Z-test: the share of values other than the first (in
/// order) on each side; no drift when both sides hold one same value.
fn z(ca: &[u64], n1: u64, cb: &[u64], n2: u64) -> Tested {
    if ca.len() == 1 {
        return Tested {
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    stats::proportions_z(n1 - ca[0], n1, n2 - cb[0], n2)
}

/// A table or location argument of `drift`, or a column name after them.
fn text_arg(expr: &Expr, what: &str) -> Result<String> {
    name_arg(expr, "drift", what)
}

/// `drift(reference, current [, column ...])`.
#[derive(Debug, Default)]
pub struct DriftFunction;

impl TableFunctionImpl for DriftFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        if exprs.len() < 2 {
            return plan_err!(
                "drift takes (reference, current [, column ...]), got {} arguments",
                exprs.len()
            );
        }
        let state = session_state(args.session())?;
        let reference = source_plan(state, &text_arg(&exprs[0], "the reference")?, "drift")?;
        let current = source_plan(state, &text_arg(&exprs[1], "the current table")?, "drift")?;
        let columns = exprs[2..]
            .iter()
            .map(|e| text_arg(e, "a column"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(DriftTable::new(reference, current, columns)))
    }
}

/// The drift of one plan from another, computed when the statement runs.
#[derive(Debug)]
pub struct DriftTable {
    reference: LogicalPlan,
    current: LogicalPlan,
    columns: Vec<String>,
}

impl DriftTable {
    /// The drift of `current` from `reference` as a table (for DataFrames).
    pub fn new(reference: LogicalPlan, current: LogicalPlan, columns: Vec<String>) -> Self {
        DriftTable {
            reference,
            current,
            columns,
        }
    }
}

#[async_trait]
impl TableProvider for DriftTable {
    fn schema(&self) -> SchemaRef {
        drift_schema()
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
        let rows = drift(
            state,
            self.reference.clone(),
            self.current.clone(),
            &self.columns,
        )
        .await?;
        crate::profile::batch_exec(drift_batch(&rows)?, projection)
    }
}
