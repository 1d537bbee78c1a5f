//! The logical as-of (point-in-time) join and how it is planned: for each
//! left row, the latest right row with equal keys at or before its time
//! (see the engine's [`AsofJoinExec`]).

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::compute::can_cast_types;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::common::{
    Column, DFSchema, DFSchemaRef, Result, TableReference, plan_datafusion_err, plan_err,
};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, LogicalPlanBuilder, UserDefinedLogicalNodeCore, cast,
};
use datafusion::physical_plan::ExecutionPlan;
use kiln_engine::exec::asof_join::is_time_type;
use kiln_engine::exec::{AsofJoinExec, AsofSpec, Tolerance};

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
    let float = matches!(
        t,
        DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    );
    Ok(match (tolerance, t) {
        (AsofTolerance::Units(n), _) if n < 0 => {
            return plan_err!("as-of join: the tolerance must not be negative, got {n}");
        }
        (AsofTolerance::Value(v), _) if !(v >= 0.0) => {
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
            schema,
        }),
    }))
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
            )
        };
        key(self).partial_cmp(&key(other))
    }
}

impl AsofJoinNode {
    /// The engine's operator over the planned inputs (left, right).
    pub fn plan(&self, inputs: &[Arc<dyn ExecutionPlan>]) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right] = inputs else {
            return plan_err!("AsofJoin takes two inputs, got {}", inputs.len());
        };
        let spec = AsofSpec {
            left_keys: self.left_keys.clone(),
            right_keys: self.right_keys.clone(),
            left_time: self.left_time,
            right_time: self.right_time,
            strict: self.strict,
            tolerance: self.tolerance.map(|(float, v)| {
                if float {
                    Tolerance::Float(f64::from_bits(v as u64))
                } else {
                    Tolerance::Int(v)
                }
            }),
            keep_unmatched: self.keep_unmatched,
            right_output: self.right_output.clone(),
        };
        let schema = Arc::new(self.schema.as_arrow().clone());
        Ok(Arc::new(AsofJoinExec::try_new(
            Arc::clone(left),
            Arc::clone(right),
            spec,
            schema,
        )?))
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
        let schema = output_schema(&left, &right, &self.right_output)?;
        Ok(AsofJoinNode {
            left,
            right,
            schema,
            ..self.clone()
        })
    }
}
