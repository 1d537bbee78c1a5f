//! The logical as-of (point-in-time) join and how it is planned: for each
//! left row, the latest right row with equal keys at or before its time
//! (see the engine's [`AsofJoinExec`]).

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::compute::can_cast_types;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult};
use datafusion::common::{
    Column, DFSchema, DFSchemaRef, Result, TableReference, plan_datafusion_err, plan_err,
};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Extension, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
    ScalarFunctionArgs, ScalarUDFImpl, Signature, UserDefinedLogicalNodeCore, Volatility, cast,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_plan::ExecutionPlan;
use kiln_engine::exec::asof_join::{float_time, is_time_type};
use kiln_engine::exec::{AsofJoinExec, AsofSpec, AsofStrategy, Tolerance};

/// How far back a feature row may lie behind an event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AsofTolerance {
    /// In the time column's own units (integers; days of a date; a
    /// timestamp's unit).
    Units(i64),
    /// For numeric times.
    Value(f64),
    /// For dates and timestamps.
    Duration(Duration),
}

/// The options of an as-of join.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsofOptions {
    /// Match only feature rows strictly before the event (`>` rather than
    /// `>=`; Polars' `allow_exact_matches=False`).
    pub strict: bool,
    pub tolerance: Option<AsofTolerance>,
    /// Keep events without a match, with NULL features (a left join, as
    /// pandas' `merge_asof`, Polars' `join_asof`, DuckDB's `ASOF LEFT
    /// JOIN`); else drop them (DuckDB's `ASOF JOIN`).
    pub keep_unmatched: bool,
}

impl Default for AsofOptions {
    fn default() -> Self {
        AsofOptions {
            strict: false,
            tolerance: None,
            keep_unmatched: true,
        }
    }
}

/// The logical as-of join.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsofJoinNode {
    left: LogicalPlan,
    right: LogicalPlan,
    left_keys: Vec<usize>,
    right_keys: Vec<usize>,
    left_time: usize,
    right_time: usize,
    strict: bool,
    /// (is a float, the value or the float's bits).
    tolerance: Option<(bool, i64)>,
    keep_unmatched: bool,
    right_output: Vec<usize>,
    /// SQL's naming (every column keeps its table's qualifier, as a join's
    /// do) rather than a DataFrame's (right names made unique).
    sql: bool,
    schema: DFSchemaRef,
}

fn index_of(plan: &LogicalPlan, name: &str, side: &str) -> Result<usize> {
    plan.schema()
        .index_of_column(&Column::from_name(name))
        .or_else(|_| {
            plan.schema()
                .index_of_column(&Column::from_qualified_name(name))
        })
        .map_err(|_| {
            let names: Vec<String> = plan
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            plan_datafusion_err!(
                "as-of join: the {side} side has no column '{name}' (it has {})",
                names.join(", ")
            )
        })
}

/// The tolerance in the units the engine compares `t` in.
fn tolerance_for(t: &DataType, tolerance: AsofTolerance) -> Result<Tolerance> {
    let float = float_time(t);
    Ok(match (tolerance, t) {
        (AsofTolerance::Units(n), _) if n < 0 => {
            return plan_err!("as-of join: the tolerance must not be negative, got {n}");
        }
        (AsofTolerance::Value(v), _) if v.is_nan() || v < 0.0 => {
            return plan_err!("as-of join: the tolerance must not be negative, got {v}");
        }
        (AsofTolerance::Units(n), _) if float => Tolerance::Float(n as f64),
        (AsofTolerance::Units(n), _) => Tolerance::Int(n),
        (AsofTolerance::Value(v), _) if float => Tolerance::Float(v),
        (AsofTolerance::Value(v), _) if v.fract() == 0.0 && v < 9.2e18 => Tolerance::Int(v as i64),
        (AsofTolerance::Value(v), _) => Tolerance::Float(v),
        (AsofTolerance::Duration(d), DataType::Timestamp(unit, _)) => Tolerance::Int(match unit {
            TimeUnit::Second => d.as_secs() as i64,
            TimeUnit::Millisecond => d.as_millis() as i64,
            TimeUnit::Microsecond => d.as_micros() as i64,
            TimeUnit::Nanosecond => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        }),
        (AsofTolerance::Duration(d), DataType::Date32) => {
            Tolerance::Int((d.as_secs() / 86_400) as i64)
        }
        (AsofTolerance::Duration(d), DataType::Date64) => Tolerance::Int(d.as_millis() as i64),
        (AsofTolerance::Duration(_), other) => {
            return plan_err!(
                "as-of join: a duration tolerance needs a date or timestamp time column, not {other}"
            );
        }
    })
}

/// `plan` with the columns at `casts` cast to the given types (names kept).
fn with_casts(plan: LogicalPlan, casts: &[(usize, DataType)]) -> Result<LogicalPlan> {
    if casts.is_empty() {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            let column = Expr::Column(Column::new(q.cloned(), f.name()));
            match casts.iter().find(|(c, _)| *c == i) {
                Some((_, t)) => cast(column, t.clone()).alias_qualified(q.cloned(), f.name()),
                None => column,
            }
        })
        .collect();
    LogicalPlanBuilder::from(plan).project(exprs)?.build()
}

/// The as-of join of `left` (events) and `right` (features): keys `by`
/// (left name, right name) and times `on` (left, right). The output: every
/// left column, then the right's columns but its keys, a right name that a
/// left column has taken suffixed `_right`.
pub fn asof_join_plan(
    left: LogicalPlan,
    right: LogicalPlan,
    by: &[(&str, &str)],
    on: (&str, &str),
    options: AsofOptions,
) -> Result<LogicalPlan> {
    let left_keys = by
        .iter()
        .map(|(l, _)| index_of(&left, l, "left"))
        .collect::<Result<Vec<_>>>()?;
    let right_keys = by
        .iter()
        .map(|(_, r)| index_of(&right, r, "right"))
        .collect::<Result<Vec<_>>>()?;
    let left_time = index_of(&left, on.0, "left")?;
    let right_time = index_of(&right, on.1, "right")?;
    let lt = left.schema().field(left_time).data_type().clone();
    let rt = right.schema().field(right_time).data_type().clone();
    for (t, name) in [(&lt, on.0), (&rt, on.1)] {
        if !is_time_type(t) {
            return plan_err!(
                "as-of join: the time column '{name}' is {t}; it must be a number, a date or a timestamp"
            );
        }
    }
    // The right side's keys and time in the left's types: both sides are
    // hash-partitioned on the keys, so equal keys must hash alike.
    let mut casts = Vec::new();
    for ((l, r), (ln, rn)) in left_keys.iter().zip(&right_keys).zip(by) {
        let (a, b) = (
            left.schema().field(*l).data_type(),
            right.schema().field(*r).data_type(),
        );
        if a != b {
            if !can_cast_types(b, a) {
                return plan_err!(
                    "as-of join: key '{ln}' is {a} but '{rn}' is {b}, which does not convert"
                );
            }
            casts.push((*r, a.clone()));
        }
    }
    if lt != rt {
        if !can_cast_types(&rt, &lt) {
            return plan_err!(
                "as-of join: time '{}' is {lt} but '{}' is {rt}, which does not convert",
                on.0,
                on.1
            );
        }
        casts.push((right_time, lt.clone()));
    }
    let right = with_casts(right, &casts)?;
    let tolerance = options
        .tolerance
        .map(|t| tolerance_for(&lt, t))
        .transpose()?
        .map(|t| match t {
            Tolerance::Int(n) => (false, n),
            Tolerance::Float(f) => (true, f.to_bits() as i64),
        });
    let right_output: Vec<usize> = (0..right.schema().fields().len())
        .filter(|i| !right_keys.contains(i))
        .collect();
    let schema = output_schema(&left, &right, &right_output)?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(AsofJoinNode {
            left,
            right,
            left_keys,
            right_keys,
            left_time,
            right_time,
            strict: options.strict,
            tolerance,
            keep_unmatched: options.keep_unmatched,
            right_output,
            sql: false,
            schema,
        }),
    }))
}

/// The as-of join a SQL join became ([`AsofJoinRule`]): `keys` and `time`
/// index the two inputs; every column of both sides in the output, with
/// their qualifiers, as `schema` (the join's) has them. Keys or times of
/// different types are compared in the left's type, through converted
/// copies appended to the right side.
fn sql_node(
    left: LogicalPlan,
    right: LogicalPlan,
    keys: &[(usize, usize)],
    time: (usize, usize),
    options: AsofOptions,
    schema: DFSchemaRef,
) -> Result<LogicalPlan> {
    for (plan, t) in [(&left, time.0), (&right, time.1)] {
        let f = plan.schema().field(t);
        if !is_time_type(f.data_type()) {
            return plan_err!(
                "ASOF JOIN: the time {} is {}; it must be a number, a date or a timestamp",
                f.name(),
                f.data_type()
            );
        }
    }
    let width = right.schema().fields().len();
    let mut copies: Vec<(usize, DataType)> = Vec::new();
    let mut convert = |l: usize, r: usize, what: &str| -> Result<usize> {
        let (a, b) = (
            left.schema().field(l).data_type(),
            right.schema().field(r).data_type(),
        );
        if a == b {
            return Ok(r);
        }
        if !can_cast_types(b, a) {
            return plan_err!(
                "ASOF JOIN: {what} {} is {a} but {} is {b}, which does not convert",
                left.schema().field(l).name(),
                right.schema().field(r).name()
            );
        }
        copies.push((r, a.clone()));
        Ok(width + copies.len() - 1)
    };
    let mut right_keys = Vec::with_capacity(keys.len());
    for (l, r) in keys {
        right_keys.push(convert(*l, *r, "key")?);
    }
    let right_time = convert(time.0, time.1, "time")?;
    let right = if copies.is_empty() {
        right
    } else {
        let mut exprs: Vec<Expr> = right
            .schema()
            .iter()
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect();
        for (n, (r, t)) in copies.iter().enumerate() {
            let (q, f) = right.schema().qualified_field(*r);
            exprs.push(
                cast(Expr::Column(Column::new(q.cloned(), f.name())), t.clone())
                    .alias(format!("__kiln_asof_key_{n}")),
            );
        }
        LogicalPlanBuilder::from(right).project(exprs)?.build()?
    };
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(AsofJoinNode {
            left,
            right,
            left_keys: keys.iter().map(|(l, _)| *l).collect(),
            right_keys,
            left_time: time.0,
            right_time,
            strict: options.strict,
            tolerance: None,
            keep_unmatched: options.keep_unmatched,
            right_output: (0..width).collect(),
            sql: true,
            schema,
        }),
    }))
}

/// The output of an as-of join from SQL: the left's fields and the
/// right's (those of `right_output`), qualified as the inputs have them;
/// the right's nullable when unmatched rows are kept.
fn sql_schema(
    left: &LogicalPlan,
    right: &LogicalPlan,
    right_output: &[usize],
    keep_unmatched: bool,
) -> Result<DFSchemaRef> {
    let mut fields: Vec<(Option<TableReference>, Arc<Field>)> = left
        .schema()
        .iter()
        .map(|(q, f)| (q.cloned(), Arc::clone(f)))
        .collect();
    for i in right_output {
        let (q, f) = right.schema().qualified_field(*i);
        let f = if keep_unmatched {
            Arc::new(f.as_ref().clone().with_nullable(true))
        } else {
            Arc::clone(f)
        };
        fields.push((q.cloned(), f));
    }
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        left.schema().metadata().clone(),
    )?))
}

fn output_schema(
    left: &LogicalPlan,
    right: &LogicalPlan,
    right_output: &[usize],
) -> Result<DFSchemaRef> {
    let mut taken: std::collections::HashSet<String> = left
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut fields: Vec<(Option<TableReference>, Arc<Field>)> = left
        .schema()
        .iter()
        .map(|(q, f)| (q.cloned(), Arc::clone(f)))
        .collect();
    for i in right_output {
        let f = right.schema().field(*i);
        let mut name = f.name().clone();
        while taken.contains(&name) {
            name = format!("{name}_right");
        }
        taken.insert(name.clone());
        fields.push((
            None,
            Arc::new(f.as_ref().clone().with_name(name).with_nullable(true)),
        ));
    }
    Ok(Arc::new(DFSchema::new_with_metadata(
        fields,
        left.schema().metadata().clone(),
    )?))
}

impl PartialOrd for AsofJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        let key = |n: &Self| {
            (
                n.left.clone(),
                n.right.clone(),
                n.left_keys.clone(),
                n.right_keys.clone(),
                n.left_time,
                n.right_time,
                n.strict,
                n.tolerance,
                n.keep_unmatched,
                n.right_output.clone(),
                n.sql,
            )
        };
        key(self).partial_cmp(&key(other))
    }
}

impl AsofJoinNode {
    /// What the node joins on (the engine's spec), and whether it names
    /// its output as SQL does (for codecs).
    pub fn spec(&self) -> (AsofSpec, bool) {
        let spec = AsofSpec {
            left_keys: self.left_keys.clone(),
            right_keys: self.right_keys.clone(),
            left_time: self.left_time,
            right_time: self.right_time,
            strict: self.strict,
            tolerance: self.tolerance(),
            keep_unmatched: self.keep_unmatched,
            right_output: self.right_output.clone(),
        };
        (spec, self.sql)
    }

    /// The node of `spec` over `left` and `right`, its schema computed
    /// (named as SQL does with `sql`).
    pub fn from_spec(
        left: LogicalPlan,
        right: LogicalPlan,
        spec: AsofSpec,
        sql: bool,
    ) -> Result<Self> {
        let (lw, rw) = (left.schema().fields().len(), right.schema().fields().len());
        if spec.left_keys.len() != spec.right_keys.len()
            || spec
                .left_keys
                .iter()
                .chain([&spec.left_time])
                .any(|i| *i >= lw)
            || spec
                .right_keys
                .iter()
                .chain([&spec.right_time])
                .chain(&spec.right_output)
                .any(|i| *i >= rw)
        {
            return plan_err!("AsofJoin: columns out of range of its inputs");
        }
        let schema = if sql {
            sql_schema(&left, &right, &spec.right_output, spec.keep_unmatched)?
        } else {
            output_schema(&left, &right, &spec.right_output)?
        };
        Ok(AsofJoinNode {
            left,
            right,
            left_keys: spec.left_keys,
            right_keys: spec.right_keys,
            left_time: spec.left_time,
            right_time: spec.right_time,
            strict: spec.strict,
            tolerance: spec.tolerance.map(|t| match t {
                Tolerance::Int(n) => (false, n),
                Tolerance::Float(f) => (true, f.to_bits() as i64),
            }),
            keep_unmatched: spec.keep_unmatched,
            right_output: spec.right_output,
            sql,
            schema,
        })
    }

    fn tolerance(&self) -> Option<Tolerance> {
        self.tolerance.map(|(float, v)| {
            if float {
                Tolerance::Float(f64::from_bits(v as u64))
            } else {
                Tolerance::Int(v)
            }
        })
    }

    /// The engine's operator over the planned inputs (left, right): it
    /// probes an in-memory index of the right side when its statistics
    /// count at most `probe_rows` rows (`kiln.asof_probe_rows`), else sorts
    /// and merges both sides.
    pub fn plan(
        &self,
        inputs: &[Arc<dyn ExecutionPlan>],
        probe_rows: usize,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right] = inputs else {
            return plan_err!("AsofJoin takes two inputs, got {}", inputs.len());
        };
        let (spec, _) = self.spec();
        let schema = Arc::new(self.schema.as_arrow().clone());
        use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
        let rows = StatisticsContext::new()
            .compute(right.as_ref(), &StatisticsArgs::new())?
            .num_rows;
        let strategy = match rows.get_value() {
            Some(&n) if probe_rows > 0 && n <= probe_rows => AsofStrategy::Probe,
            _ => AsofStrategy::Merge,
        };
        Ok(Arc::new(
            AsofJoinExec::try_new(Arc::clone(left), Arc::clone(right), spec, schema)?
                .with_strategy(strategy),
        ))
    }
}

impl UserDefinedLogicalNodeCore for AsofJoinNode {
    fn name(&self) -> &str {
        "AsofJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let (ls, rs) = (self.left.schema(), self.right.schema());
        let keys: Vec<String> = self
            .left_keys
            .iter()
            .zip(&self.right_keys)
            .map(|(l, r)| format!("{} = {}", ls.field(*l).name(), rs.field(*r).name()))
            .collect();
        write!(
            f,
            "AsofJoin: on=[{}], {} {} {}, keep_unmatched={}",
            keys.join(", "),
            ls.field(self.left_time).name(),
            if self.strict { ">" } else { ">=" },
            rs.field(self.right_time).name(),
            self.keep_unmatched
        )
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> Result<Self> {
        let [left, right]: [LogicalPlan; 2] = inputs
            .try_into()
            .map_err(|_| plan_datafusion_err!("AsofJoin takes two inputs"))?;
        let schema = if self.sql {
            sql_schema(&left, &right, &self.right_output, self.keep_unmatched)?
        } else {
            output_schema(&left, &right, &self.right_output)?
        };
        Ok(AsofJoinNode {
            left,
            right,
            schema,
            ..self.clone()
        })
    }
}

// ------------------------------------------------------------------ SQL

/// The marker of an as-of join's time condition in SQL:
/// `__kiln_asof(left_time, right_time, '>=')` among a join's `ON`
/// conjuncts (and, with one text argument, DuckDB's form before it is
/// rewritten). [`AsofJoinRule`] replaces the join; the function itself
/// never runs.
pub const ASOF_MARKER: &str = "__kiln_asof";
/// DuckDB's `ASOF JOIN`: events without a match dropped.
pub const DUCKDB_INNER: &str = "duckdb_inner";
/// DuckDB's `ASOF LEFT JOIN`: events without a match kept.
pub const DUCKDB_LEFT: &str = "duckdb_left";

/// The marker function (see [`ASOF_MARKER`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct AsofMarker {
    signature: Signature,
}

impl Default for AsofMarker {
    fn default() -> Self {
        AsofMarker {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for AsofMarker {
    fn name(&self) -> &str {
        ASOF_MARKER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        plan_err!(
            "{ASOF_MARKER} marks the time condition of an ASOF JOIN and cannot be called: \
             write FROM e ASOF JOIN f ON e.k = f.k AND e.ts >= f.ts"
        )
    }
}

/// Turns a join whose `ON` holds the [`ASOF_MARKER`] into the as-of join
/// (an analyzer rule: before any optimizer rule moves its conditions).
#[derive(Debug, Default)]
pub struct AsofJoinRule;

impl AnalyzerRule for AsofJoinRule {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(rewrite_join).data()
    }

    fn name(&self) -> &str {
        "kiln_asof_join"
    }
}

fn marker_args(e: &Expr) -> Option<&[Expr]> {
    match e {
        Expr::ScalarFunction(f) if f.name() == ASOF_MARKER => Some(&f.args),
        _ => None,
    }
}

fn rewrite_join(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Join(join) = &plan else {
        return Ok(Transformed::no(plan));
    };
    let Some(filter) = &join.filter else {
        return Ok(Transformed::no(plan));
    };
    let conjuncts = split_conjunction(filter);
    let Some(at) = conjuncts.iter().position(|e| marker_args(e).is_some()) else {
        return Ok(Transformed::no(plan));
    };
    let keep_unmatched = match join.join_type {
        JoinType::Left => true,
        JoinType::Inner => false,
        other => return plan_err!("ASOF JOIN: cannot be a {other} join"),
    };
    let (left, right) = (join.left.as_ref(), join.right.as_ref());
    let side = |e: &Expr| -> Option<(bool, usize)> {
        let Expr::Column(c) = e else {
            return None;
        };
        if let Ok(i) = left.schema().index_of_column(c) {
            return Some((true, i));
        }
        right.schema().index_of_column(c).ok().map(|i| (false, i))
    };
    let args = marker_args(conjuncts[at]).unwrap_or_default();
    let [a, b, Expr::Literal(op, _)] = args else {
        return plan_err!("ASOF JOIN: a malformed time condition");
    };
    let op = op.to_string();
    let (strict, left_time, right_time) = match (side(a), side(b)) {
        (Some((true, l)), Some((false, r))) => match op.as_str() {
            ">=" => (false, l, r),
            ">" => (true, l, r),
            _ => return backward_only(a, &op, b),
        },
        (Some((false, r)), Some((true, l))) => match op.as_str() {
            "<=" => (false, l, r),
            "<" => (true, l, r),
            _ => return backward_only(a, &op, b),
        },
        _ => {
            return plan_err!(
                "ASOF JOIN: the time condition {a} {op} {b} must compare a column of each side"
            );
        }
    };
    let mut keys: Vec<(usize, usize)> = Vec::new();
    for (l, r) in &join.on {
        match (side(l), side(r)) {
            (Some((true, li)), Some((false, ri))) => keys.push((li, ri)),
            _ => return plan_err!("ASOF JOIN: the keys must be columns, got {l} = {r}"),
        }
    }
    for (i, e) in conjuncts.iter().enumerate() {
        if i == at {
            continue;
        }
        let key = match e {
            Expr::BinaryExpr(b) if b.op == Operator::Eq => match (side(&b.left), side(&b.right)) {
                (Some((true, l)), Some((false, r))) => Some((l, r)),
                (Some((false, r)), Some((true, l))) => Some((l, r)),
                _ => None,
            },
            _ => None,
        };
        match key {
            Some(k) => keys.push(k),
            None => {
                return plan_err!(
                    "ASOF JOIN: ON takes equality keys (e.k = f.k) and one time condition; \
                     {e} is neither (filter in WHERE instead)"
                );
            }
        }
    }
    let options = AsofOptions {
        strict,
        tolerance: None,
        keep_unmatched,
    };
    let node = sql_node(
        left.clone(),
        right.clone(),
        &keys,
        (left_time, right_time),
        options,
        Arc::clone(&join.schema),
    )?;
    Ok(Transformed::yes(node))
}

fn backward_only(a: &Expr, op: &str, b: &Expr) -> Result<Transformed<LogicalPlan>> {
    plan_err!(
        "ASOF JOIN: {a} {op} {b} looks forward; Kiln takes the latest right row at or before the \
         left row's time (left.ts >= right.ts, or > for strictly before)"
    )
}
