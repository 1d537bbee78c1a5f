//! The partial aggregate at the top of a GPU stage: `sum`, `count`, `min`,
//! `max` and `avg`, with or without GROUP BY, folded on the device (one
//! reduction per aggregate and group) and emitted in DataFusion's
//! partial-state layout, so the `AggregateExec` in final mode above the
//! stage merges it unchanged. (A batch the device flags is aggregated by
//! the replaced `AggregateExec` itself: see `GpuStageExec`.)

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Float64Array, Int32Array, Int64Array, RecordBatch,
    RecordBatchOptions, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Result, internal_err};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::ExecutionPlan;
use kiln_kernels::codegen::{ReduceOp, Reduced};

/// Which aggregate function one reduction serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    Sum,
    Count,
    Min,
    Max,
    Avg,
}

impl AggKind {
    /// The device reduction that computes this aggregate's state.
    pub fn reduce_op(self) -> ReduceOp {
        match self {
            AggKind::Sum | AggKind::Avg => ReduceOp::Sum,
            AggKind::Count => ReduceOp::Count,
            AggKind::Min => ReduceOp::Min,
            AggKind::Max => ReduceOp::Max,
        }
    }
}

/// The aggregates of a stage, in the replaced `AggregateExec`'s order.
/// Folding rows (a partial aggregate), reduction `i` of the stage's program
/// computes aggregate `i`; merging states (a final aggregate), each state
/// column has its reduction, in the input's order (see
/// [`StageAggregate::merge_reductions`]).
#[derive(Debug, Clone)]
pub struct StageAggregate {
    pub kinds: Vec<AggKind>,
    pub functions: Vec<Arc<AggregateFunctionExpr>>,
    /// The stage merges partial states (a final aggregate's input) into
    /// states, which the replaced final aggregate then finishes on the host.
    pub merge: bool,
    /// For a single-step aggregate (partial and final in one operator): the
    /// partial aggregate that folds a batch on the CPU into the states the
    /// launches emit, and the final aggregate that finishes them on the
    /// host (its input a placeholder for the states).
    pub single: Option<SingleSplit>,
}

/// A single-step `AggregateExec` split into its partial and final halves,
/// as DataFusion's planner splits one.
#[derive(Debug, Clone)]
pub struct SingleSplit {
    pub partial: Arc<dyn ExecutionPlan>,
    pub finish: Arc<dyn ExecutionPlan>,
}

fn state_type_ok(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Int32
            | DataType::Int64
            | DataType::UInt64
            | DataType::Float64
            | DataType::Date32
            | DataType::Decimal128(_, _)
    )
}

impl StageAggregate {
    /// The stage form of `functions`, or why they stay on the CPU (every
    /// function's reason, not the first only).
    pub fn try_new(
        functions: &[Arc<AggregateFunctionExpr>],
    ) -> Result<std::result::Result<Self, Vec<String>>> {
        let mut kinds = Vec::with_capacity(functions.len());
        let mut reasons = Vec::new();
        for f in functions {
            let name = f.fun().name();
            let kind = match name {
                "sum" => AggKind::Sum,
                "count" => AggKind::Count,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                "avg" => AggKind::Avg,
                _ => {
                    reasons.push(format!("aggregate {name} has no GPU kernel"));
                    continue;
                }
            };
            if f.is_distinct() || !f.order_bys().is_empty() || f.expressions().len() != 1 {
                reasons.push(format!(
                    "{} (DISTINCT, ORDER BY or several arguments)",
                    f.name()
                ));
                continue;
            }
            let fields = f.state_fields()?;
            if let Some(bad) = fields.iter().find(|s| !state_type_ok(s.data_type())) {
                reasons.push(format!("{}: state of type {}", f.name(), bad.data_type()));
                continue;
            }
            kinds.push(kind);
        }
        if !reasons.is_empty() {
            return Ok(Err(reasons));
        }
        Ok(Ok(StageAggregate {
            kinds,
            functions: functions.to_vec(),
            merge: false,
            single: None,
        }))
    }

    /// The reduction that merges each state column of the aggregates, in
    /// order: sums and counts add, minima and maxima fold as themselves;
    /// `avg`'s state is a count and a sum.
    pub fn merge_reductions(&self) -> Vec<ReduceOp> {
        self.kinds
            .iter()
            .flat_map(|kind| match kind {
                AggKind::Sum | AggKind::Count => vec![ReduceOp::Sum],
                AggKind::Avg => vec![ReduceOp::Sum, ReduceOp::Sum],
                AggKind::Min => vec![ReduceOp::Min],
                AggKind::Max => vec![ReduceOp::Max],
            })
            .collect()
    }

    /// The partial-state batch of a grouped aggregate: the group key
    /// columns, then per group (row) the state of each aggregate's running
    /// results in `accs`, built column by column.
    pub fn finish_groups(
        &self,
        keys: Vec<ArrayRef>,
        accs: &[&[Reduced]],
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let fields = schema.fields();
        let state_fields = &fields[keys.len().min(fields.len())..];
        let field_type = |i: usize| -> Result<&DataType> {
            match state_fields.get(i) {
                Some(f) => Ok(f.data_type()),
                None => internal_err!("GpuStageExec: more aggregate states than fields"),
            }
        };
        let mut columns = keys;
        let first_state = columns.len();
        let reduced = |r: usize| {
            accs.iter()
                .map(move |acc| acc.get(r).copied().unwrap_or_default())
        };
        // A count state: the kept values folded (or, merging, the sum of
        // the counts merged).
        let count = |r: usize| {
            reduced(r).map(move |x| {
                if self.merge {
                    x.int.filter(|_| x.nonnull > 0).map(|n| n as u64)
                } else {
                    Some(x.nonnull)
                }
            })
        };
        let mut r = 0;
        for kind in &self.kinds {
            match kind {
                AggKind::Count => {
                    columns.push(Arc::new(
                        count(r)
                            .map(|n| n.unwrap_or(0) as i64)
                            .collect::<Int64Array>(),
                    ));
                }
                AggKind::Avg => {
                    // A group without values has a NULL count, as in
                    // DataFusion's own partial state: the final avg takes a
                    // non-NULL count as a group with values and divides.
                    columns.push(Arc::new(
                        count(r)
                            .map(|n| n.filter(|n| *n > 0))
                            .collect::<UInt64Array>(),
                    ));
                    if self.merge {
                        r += 1;
                    }
                    let dt = field_type(columns.len() - first_state)?;
                    columns.push(state_column(dt, reduced(r))?);
                }
                _ => {
                    let dt = field_type(columns.len() - first_state)?;
                    columns.push(state_column(dt, reduced(r))?);
                }
            }
            r += 1;
        }
        if columns.len() != fields.len() {
            return internal_err!(
                "GpuStageExec: {} columns for a schema of {}",
                columns.len(),
                fields.len()
            );
        }
        // Casts align nullability-free types exactly with the schema.
        let columns = columns
            .into_iter()
            .zip(fields.iter())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c)
                } else {
                    Ok(datafusion::arrow::compute::cast(&c, f.data_type())?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(accs.len())),
        )?)
    }
}

/// One aggregate's value state (a sum, minimum or maximum) over the groups
/// as a column of type `dt`; NULL where the group folded no value.
fn state_column(dt: &DataType, values: impl Iterator<Item = Reduced>) -> Result<ArrayRef> {
    let int = |r: Reduced| r.int.filter(|_| r.nonnull > 0);
    Ok(match dt {
        DataType::Float64 => Arc::new(
            values
                .map(|r| r.float.filter(|_| r.nonnull > 0))
                .collect::<Float64Array>(),
        ),
        // Integer sums wrap to 64 bits as DataFusion's do.
        DataType::Int64 => Arc::new(
            values
                .map(|r| int(r).map(|v| v as i64))
                .collect::<Int64Array>(),
        ),
        DataType::Int32 => Arc::new(
            values
                .map(|r| int(r).map(|v| v as i32))
                .collect::<Int32Array>(),
        ),
        DataType::Date32 => Arc::new(
            values
                .map(|r| int(r).map(|v| v as i32))
                .collect::<Date32Array>(),
        ),
        DataType::UInt64 => Arc::new(
            values
                .map(|r| int(r).map(|v| v as u64))
                .collect::<UInt64Array>(),
        ),
        DataType::Decimal128(p, s) => Arc::new(
            values
                .map(int)
                .collect::<Decimal128Array>()
                .with_precision_and_scale(*p, *s)?,
        ),
        other => return internal_err!("GpuStageExec: no aggregate state of type {other}"),
    })
}
