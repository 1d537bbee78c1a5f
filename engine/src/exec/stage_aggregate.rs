//! The partial aggregate at the top of a GPU stage: `sum`, `count`, `min`,
//! `max` and `avg`, with or without GROUP BY, folded on the device (one
//! reduction per aggregate and group) and emitted in DataFusion's
//! partial-state layout, so the `AggregateExec` in final mode above the
//! stage merges it unchanged. (A batch the device flags is aggregated by
//! the replaced `AggregateExec` itself: see `GpuStageExec`.)

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion::common::{Result, ScalarValue, internal_err};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
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

/// The aggregates of a stage, in the replaced `AggregateExec`'s order;
/// reduction `i` of the stage's program computes aggregate `i`.
#[derive(Debug, Clone)]
pub struct StageAggregate {
    pub kinds: Vec<AggKind>,
    pub functions: Vec<Arc<AggregateFunctionExpr>>,
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
    /// The stage form of `functions`, or why one of them stays on the CPU.
    pub fn try_new(functions: &[Arc<AggregateFunctionExpr>]) -> std::result::Result<Self, String> {
        let mut kinds = Vec::with_capacity(functions.len());
        for f in functions {
            let name = f.fun().name();
            let kind = match name {
                "sum" => AggKind::Sum,
                "count" => AggKind::Count,
                "min" => AggKind::Min,
                "max" => AggKind::Max,
                "avg" => AggKind::Avg,
                _ => return Err(format!("aggregate {name} has no GPU kernel")),
            };
            if f.is_distinct() || !f.order_bys().is_empty() || f.expressions().len() != 1 {
                return Err(format!(
                    "{} (DISTINCT, ORDER BY or several arguments)",
                    f.name()
                ));
            }
            let fields = f.state_fields().map_err(|e| e.to_string())?;
            if let Some(bad) = fields.iter().find(|s| !state_type_ok(s.data_type())) {
                return Err(format!("{}: state of type {}", f.name(), bad.data_type()));
            }
            kinds.push(kind);
        }
        Ok(StageAggregate {
            kinds,
            functions: functions.to_vec(),
        })
    }

    /// The partial-state batch of a grouped aggregate: the group key
    /// columns, then per group (row) the state of each aggregate's running
    /// results in `accs`.
    pub fn finish_groups(
        &self,
        keys: Vec<ArrayRef>,
        accs: &[&[Reduced]],
        schema: &SchemaRef,
    ) -> Result<RecordBatch> {
        let fields = schema.fields();
        let state_fields = &fields[keys.len().min(fields.len())..];
        let mut states: Vec<Vec<ScalarValue>> =
            vec![Vec::with_capacity(accs.len()); state_fields.len()];
        for acc in accs {
            let row = self.state_row(acc, state_fields)?;
            if row.len() != state_fields.len() {
                return internal_err!(
                    "GpuStageExec: {} state columns for a schema of {}",
                    row.len(),
                    state_fields.len()
                );
            }
            for (column, value) in states.iter_mut().zip(row) {
                column.push(value);
            }
        }
        let mut columns = keys;
        for (values, field) in states.into_iter().zip(state_fields) {
            columns.push(if values.is_empty() {
                datafusion::arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            });
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

    /// One group's aggregate states, in the order of `fields`.
    fn state_row(&self, acc: &[Reduced], fields: &[FieldRef]) -> Result<Vec<ScalarValue>> {
        let mut row = Vec::with_capacity(fields.len());
        for (kind, r) in self.kinds.iter().zip(acc) {
            let value = |dt: &DataType| -> Result<ScalarValue> {
                let present = r.nonnull > 0;
                Ok(match dt {
                    DataType::Float64 => ScalarValue::Float64(r.float.filter(|_| present)),
                    dt => to_scalar(dt, r.int.filter(|_| present))?,
                })
            };
            let field_type = |i: usize| -> Result<&DataType> {
                match fields.get(i) {
                    Some(f) => Ok(f.data_type()),
                    None => internal_err!("GpuStageExec: more aggregate states than fields"),
                }
            };
            match kind {
                AggKind::Count => row.push(ScalarValue::Int64(Some(r.nonnull as i64))),
                AggKind::Avg => {
                    row.push(ScalarValue::UInt64(Some(r.nonnull)));
                    row.push(value(field_type(row.len())?)?);
                }
                _ => row.push(value(field_type(row.len())?)?),
            }
        }
        Ok(row)
    }
}

fn to_scalar(dt: &DataType, v: Option<i128>) -> Result<ScalarValue> {
    Ok(match dt {
        // Integer sums wrap to 64 bits as DataFusion's do.
        DataType::Int64 => ScalarValue::Int64(v.map(|v| v as i64)),
        DataType::Int32 => ScalarValue::Int32(v.map(|v| v as i32)),
        DataType::Date32 => ScalarValue::Date32(v.map(|v| v as i32)),
        DataType::UInt64 => ScalarValue::UInt64(v.map(|v| v as u64)),
        DataType::Decimal128(p, s) => ScalarValue::Decimal128(v, *p, *s),
        other => return internal_err!("GpuStageExec: no aggregate state of type {other}"),
    })
}
