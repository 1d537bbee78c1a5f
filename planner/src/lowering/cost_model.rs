//! The cost model of GPU placement: the rows and bytes a stage would move,
//! from DataFusion's statistics, and whether its work pays for moving them
//! (`kiln.gpu_min_rows`, projections of cheap expressions).

use std::sync::Arc;

use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use kiln_engine::exec::GpuStageExec;
use kiln_kernels::codegen::{Expr, Program};

use super::placement::Reason;

/// The rows DataFusion's statistics expect `plan` to produce, if any.
pub fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()
        .and_then(|s| s.num_rows.get_value().copied())
}

/// Estimated input rows and bytes moved host↔device, from the plan's
/// statistics (None where DataFusion has none).
pub fn estimate(
    input: &Arc<dyn ExecutionPlan>,
    top: &Arc<dyn ExecutionPlan>,
    program: &Program,
) -> (Option<usize>, Option<u64>) {
    let Some(rows_in) = estimated_rows(input) else {
        return (None, None);
    };
    let rows_out = estimated_rows(top).unwrap_or(rows_in);
    let used = program.used_inputs();
    let in_bytes: f64 = program
        .inputs
        .iter()
        .zip(&used)
        .filter(|(_, u)| **u)
        .map(|(t, _)| t.width() as f64 + 0.125)
        .sum();
    let out_bytes: f64 = program
        .outputs
        .iter()
        .map(|e| e.ty().width() as f64 + 4.0)
        .sum::<f64>()
        + if program.compacts() { 4.0 } else { 0.0 };
    let bytes = rows_in as f64 * in_bytes + rows_out as f64 * out_bytes;
    (Some(rows_in), Some(bytes as u64))
}

/// The cost model: whether a stage's GPU work pays for moving its data.
pub fn worth_it(stage: &GpuStageExec, min_rows: usize) -> std::result::Result<(), Reason> {
    let plan = stage.plan();
    let program = &plan.program;
    if let Some(rows) = plan.est_rows
        && rows < min_rows
    {
        return Err(Reason::CostModel(format!(
            "~{rows} input rows, below kiln.gpu_min_rows = {min_rows}"
        )));
    }
    let filters = program.compacts() || !program.reduce.is_empty();
    if !filters && program.outputs.is_empty() {
        return Err(Reason::Operator(
            "only selects or renames columns: nothing to compute".into(),
        ));
    }
    if !filters {
        let ops: usize = program.outputs.iter().map(operations).sum();
        if ops <= program.outputs.len() {
            return Err(Reason::CostModel(format!(
                "a projection of {} cheap expression(s) would move ~{} bytes for about one operation per value",
                program.outputs.len(),
                plan.est_bytes_moved
                    .map_or("unknown".into(), |b| b.to_string())
            )));
        }
    }
    Ok(())
}

/// Operator nodes of an expression (leaves are free).
fn operations(e: &Expr) -> usize {
    let mut n = 0;
    e.visit(&mut |x| {
        if !matches!(x, Expr::Column { .. } | Expr::Literal { .. }) {
            n += 1;
        }
    });
    n
}
