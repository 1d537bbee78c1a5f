//! The partial aggregate at the top of a GPU stage: `sum`, `count`, `min`,
//! `max` and `avg` without GROUP BY, folded on the device (one reduction per
//! aggregate) and emitted in DataFusion's partial-state layout, so the
//! `AggregateExec` in final mode above the stage merges it unchanged.
//!
//! A batch the device flags is aggregated on the CPU by DataFusion's own
//! accumulators, and their state is merged with the device's partials.

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

    /// Empty running results, one per aggregate.
    pub fn start(&self) -> Vec<Reduced> {
        vec![Reduced::default(); self.kinds.len()]
    }

    /// Folds device partials into `acc`.
    pub fn merge(&self, acc: &mut [Reduced], partials: &[Reduced]) {
        for ((a, p), k) in acc.iter_mut().zip(partials).zip(&self.kinds) {
            a.merge(k.reduce_op(), p);
        }
    }

    /// Aggregates `batch` (the stage's rows after its filters and
    /// projections) with DataFusion's accumulators and folds their state
    /// into `acc`.
    pub fn merge_on_cpu(&self, acc: &mut [Reduced], batch: &RecordBatch) -> Result<()> {
        for ((f, kind), a) in self.functions.iter().zip(&self.kinds).zip(acc.iter_mut()) {
            let mut accumulator = f.create_accumulator()?;
            let args = f
                .expressions()
                .iter()
                .map(|e| e.evaluate(batch)?.into_array(batch.num_rows()))
                .collect::<Result<Vec<_>>>()?;
            accumulator.update_batch(&args)?;
            let state = accumulator.state()?;
            a.merge(kind.reduce_op(), &from_state(*kind, &state)?);
        }
        Ok(())
    }

    /// The one-row partial-state batch of `acc`, in `schema` (the replaced
    /// `AggregateExec`'s output).
    pub fn finish(&self, acc: &[Reduced], schema: &SchemaRef) -> Result<RecordBatch> {
        self.finish_groups(Vec::new(), &[acc], schema)
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

fn int_of(v: &ScalarValue) -> Result<Option<i128>> {
    Ok(match v {
        ScalarValue::Int32(x) | ScalarValue::Date32(x) => x.map(i128::from),
        ScalarValue::Int64(x) => x.map(i128::from),
        ScalarValue::UInt64(x) => x.map(i128::from),
        ScalarValue::Decimal128(x, _, _) => *x,
        other => return internal_err!("GpuStageExec: unexpected aggregate state {other:?}"),
    })
}

/// A DataFusion accumulator's state as a device partial.
fn from_state(kind: AggKind, state: &[ScalarValue]) -> Result<Reduced> {
    let value = |v: &ScalarValue| -> Result<(Option<i128>, Option<f64>)> {
        Ok(match v {
            ScalarValue::Float64(f) => (None, *f),
            other => (int_of(other)?, None),
        })
    };
    Ok(match (kind, state) {
        (AggKind::Count, [n]) => Reduced {
            nonnull: int_of(n)?.unwrap_or(0) as u64,
            int: None,
            float: None,
        },
        (AggKind::Avg, [n, sum]) => {
            let (int, float) = value(sum)?;
            Reduced {
                nonnull: int_of(n)?.unwrap_or(0) as u64,
                int,
                float,
            }
        }
        (AggKind::Sum | AggKind::Min | AggKind::Max, [v]) => {
            let (int, float) = value(v)?;
            Reduced {
                nonnull: u64::from(int.is_some() || float.is_some()),
                int,
                float,
            }
        }
        (kind, state) => {
            return internal_err!("GpuStageExec: {kind:?} state of {} values", state.len());
        }
    })
}
