//! EXPLAIN with placement: DataFusion's physical plan text, each operator's
//! line followed by where it runs and, on the CPU, why.
//!
//! [`annotate`] renders a plan with the placements the rule recorded for it
//! ([`PlacementRecord`]); [`annotate_explain`] rewrites the physical plan of
//! an `ExplainExec` DataFusion built, so `EXPLAIN` in SQL and `kiln explain`
//! show it without a separate command.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::display::{PlanType, StringifiedPlan};
use datafusion::physical_plan::explain::ExplainExec;
use datafusion::physical_plan::{ExecutionPlan, displayable};
use kiln_engine::exec::{DecodeGuardExec, EmbedExec, GpuStageExec, KnnJoinExec, VectorTopKExec};
use kiln_engine::functions::embed::{session_device, session_precision};
use kiln_kernels::BackendKind;

use super::placement::{PlacementRecord, Position, positions};

/// The device `node` runs on, when it is one of Kiln's operators placed on
/// a device (a GPU stage, the encoder, vector search, a k-NN join); `None`
/// for an operator on the CPU.
pub fn device_of(node: &Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Option<String> {
    let on = |info: &kiln_kernels::DeviceInfo| {
        (info.backend != BackendKind::Cpu).then(|| info.id().to_string())
    };
    if let Some(stage) = node.downcast_ref::<GpuStageExec>() {
        return on(stage.device());
    }
    if let Some(search) = node.downcast_ref::<VectorTopKExec>() {
        return on(search.device());
    }
    if let Some(join) = node.downcast_ref::<KnnJoinExec>() {
        return on(join.device());
    }
    if node.is::<EmbedExec>() {
        return session_device(config).ok().and_then(|d| on(d.info()));
    }
    None
}

/// The plan's indented text with a placement note on every operator line:
/// Kiln's device operators say the device they hold, every other operator
/// what `record` (the placement rule's, for this plan) says of it.
/// The guards above Parquet scans ([`DecodeGuardExec`]: one on every scan,
/// placed last, changing nothing of what runs where) are left out; EXPLAIN
/// VERBOSE and EXPLAIN ANALYZE show them.
pub fn annotate(
    plan: &Arc<dyn ExecutionPlan>,
    config: &ConfigOptions,
    record: &PlacementRecord,
) -> Result<String> {
    let text = displayable(plan.as_ref()).indent(false).to_string();
    let nodes = positions(plan);
    let mut guarded = Vec::new();
    collect(plan, 0, &mut guarded);
    let lines: Vec<&str> = text.lines().collect();
    let note = |at: &Position, node: &Arc<dyn ExecutionPlan>| -> Result<String> {
        if let Some(stage) = node.downcast_ref::<GpuStageExec>() {
            return Ok(format!("on {}", stage.device().id()));
        }
        if node.is::<EmbedExec>() {
            // The encoder runs on the session's device, at the session's
            // precision.
            let device = match session_device(config) {
                Ok(d) => d,
                Err(e) => return Ok(format!("device: {e}")),
            };
            let precision = match session_precision(config, device.info()) {
                Ok(p) => format!("{p} dense layers"),
                Err(e) => format!("precision: {e}"),
            };
            return Ok(if device.info().backend == BackendKind::Cpu {
                format!("cpu: the encoder runs on the CPU, {precision}")
            } else {
                format!("on {}, {precision}", device.info().id())
            });
        }
        let searcher = node
            .downcast_ref::<VectorTopKExec>()
            .map(VectorTopKExec::device)
            .or_else(|| node.downcast_ref::<KnnJoinExec>().map(KnnJoinExec::device));
        if let Some(device) = searcher {
            return Ok(if device.backend == BackendKind::Cpu {
                "cpu: the vector search runs on the CPU".to_string()
            } else {
                format!("on {}", device.id())
            });
        }
        Ok(record.get(at, node.as_ref())?.to_string())
    };
    let mut out = String::new();
    if lines.len() == nodes.len() {
        for (line, ((at, node), (_, guards))) in lines.iter().zip(nodes.iter().zip(&guarded)) {
            if node.is::<DecodeGuardExec>() {
                continue;
            }
            // A guarded scan is printed one step in per guard: back.
            let line = line.get(2 * guards..).unwrap_or(line);
            out.push_str(&format!("{line}  -- {}\n", note(at, node)?));
        }
    } else {
        // A node printed over several lines: list the placements after.
        out.push_str(&text);
        out.push_str("Placement:\n");
        for (at, node) in nodes.iter().filter(|(_, n)| !n.is::<DecodeGuardExec>()) {
            out.push_str(&format!("  {}: {}\n", node.name(), note(at, node)?));
        }
    }
    Ok(out)
}

/// Every node of `plan` in pre-order (as the indented text prints them),
/// with the number of guards above it.
fn collect(
    plan: &Arc<dyn ExecutionPlan>,
    guards: usize,
    out: &mut Vec<(Arc<dyn ExecutionPlan>, usize)>,
) {
    out.push((Arc::clone(plan), guards));
    let guards = guards + usize::from(plan.is::<DecodeGuardExec>());
    for child in plan.children() {
        collect(child, guards, out);
    }
}

/// `explain` with its final physical plan replaced by the annotated text of
/// `physical` (the same plan, planned again by the caller, whose placement
/// rule wrote `record`).
pub fn annotate_explain(
    explain: &ExplainExec,
    physical: &Arc<dyn ExecutionPlan>,
    config: &ConfigOptions,
    record: &PlacementRecord,
) -> Result<ExplainExec> {
    let annotated = Arc::new(annotate(physical, config, record)?);
    let plans = explain
        .stringified_plans()
        .iter()
        .map(|p| {
            if p.plan_type == PlanType::FinalPhysicalPlan {
                StringifiedPlan {
                    plan_type: p.plan_type.clone(),
                    plan: Arc::clone(&annotated),
                }
            } else {
                p.clone()
            }
        })
        .collect();
    Ok(ExplainExec::new(explain.schema(), plans, explain.verbose()))
}
