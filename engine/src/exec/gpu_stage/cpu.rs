//! A stage's filters and projections evaluated on the CPU, as DataFusion's
//! own operators would: the per-batch fallback of a GPU stage.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::{Result, internal_err};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;

use super::CpuStep;

pub(super) fn cpu_step(op: &dyn ExecutionPlan) -> Result<CpuStep> {
    let any = op;
    if let Some(f) = any.downcast_ref::<FilterExec>() {
        if f.fetch().is_some() {
            return internal_err!("GpuStageExec cannot replace a FilterExec with a fetch");
        }
        return Ok(CpuStep::Filter {
            predicate: Arc::clone(f.predicate()),
            projection: f.projection().as_ref().map(|p| p.to_vec()),
        });
    }
    if let Some(p) = any.downcast_ref::<ProjectionExec>() {
        return Ok(CpuStep::Project {
            exprs: p
                .expr()
                .iter()
                .map(|e| (Arc::clone(&e.expr), e.alias.clone()))
                .collect(),
        });
    }
    internal_err!("GpuStageExec cannot replace {}", op.name())
}

/// Evaluates a stage's filters and projections on the CPU, as DataFusion's
/// own operators would.
pub fn run_on_cpu(steps: &[CpuStep], batch: RecordBatch) -> Result<RecordBatch> {
    let mut batch = batch;
    for step in steps {
        batch = match step {
            CpuStep::Filter {
                predicate,
                projection,
            } => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let Some(mask) = mask.as_boolean_opt() else {
                    return internal_err!("GpuStageExec: filter predicate is not boolean");
                };
                let kept = filter_record_batch(&batch, mask)?;
                match projection {
                    Some(p) => kept.project(p)?,
                    None => kept,
                }
            }
            CpuStep::Project { exprs } => {
                let rows = batch.num_rows();
                let mut fields = Vec::with_capacity(exprs.len());
                let mut columns = Vec::with_capacity(exprs.len());
                for (expr, name) in exprs {
                    let array = expr.evaluate(&batch)?.into_array(rows)?;
                    fields.push(Field::new(name, array.data_type().clone(), true));
                    columns.push(array);
                }
                RecordBatch::try_new_with_options(
                    Arc::new(Schema::new(fields)),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )?
            }
        };
    }
    Ok(batch)
}
