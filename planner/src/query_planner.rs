//! `KilnQueryPlanner`: DataFusion's physical planner with Kiln's extension
//! planner, and EXPLAIN annotated with each operator's placement.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::common::format::ExplainFormat;
use datafusion::common::plan_datafusion_err;
use datafusion::execution::SessionState;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::UserDefinedLogicalNode;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::explain::ExplainExec;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::lowering::explain::annotate_explain;
use crate::lowering::{PlacementLog, PlacementRecord, Reason};
use crate::vector_search::KnnJoinNode;
use crate::vector_topk::VectorTopKNode;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct KilnQueryPlanner;

#[async_trait]
impl QueryPlanner for KilnQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let planner =
            DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(KilnExtensionPlanner)]);
        let plan = planner.create_physical_plan(logical_plan, session).await?;
        if let LogicalPlan::Explain(e) = logical_plan
            && e.explain_format == ExplainFormat::Indent
            && e.logical_optimization_succeeded
            && let Some(explain) = plan.downcast_ref::<ExplainExec>()
        {
            // ExplainExec holds only text: plan the statement again to know
            // each operator, and annotate the final physical plan with where
            // it runs. A statement that fails to plan keeps DataFusion's
            // own explanation of the failure.
            // The placement rule records where each operator runs, and why,
            // in the log this planning carries.
            let log = PlacementLog::default();
            let mut state = session
                .as_any()
                .downcast_ref::<SessionState>()
                .ok_or_else(|| plan_datafusion_err!("EXPLAIN needs a DataFusion SessionState"))?
                .clone();
            state
                .config_mut()
                .options_mut()
                .extensions
                .insert(log.clone());
            if let Ok(physical) = planner.create_physical_plan(&e.plan, &state).await {
                let record = log.take().unwrap_or_else(|| {
                    PlacementRecord::whole(Reason::Operator(
                        "no placement rule in this session".into(),
                    ))
                });
                return Ok(Arc::new(annotate_explain(
                    explain,
                    &physical,
                    session.config_options(),
                    &record,
                )?));
            }
        }
        Ok(plan)
    }
}

/// Plans Kiln's logical nodes into its operators.
#[derive(Debug, Default)]
pub struct KilnExtensionPlanner;

#[async_trait]
impl ExtensionPlanner for KilnExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let state = session
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| {
                plan_datafusion_err!("Kiln's operators need a DataFusion SessionState")
            })?;
        if let Some(node) = node
            .as_any()
            .downcast_ref::<crate::asof_join::AsofJoinNode>()
        {
            let probe_rows = kiln_engine::options::KilnOptions::of(state).asof_probe_rows;
            return node.plan(physical_inputs, probe_rows).map(Some);
        }
        if let Some(node) = node.as_any().downcast_ref::<KnnJoinNode>() {
            return node.plan(physical_inputs, state).map(Some);
        }
        if let Some(node) = node.as_any().downcast_ref::<VectorTopKNode>() {
            return node.plan(logical_inputs, physical_inputs, state).map(Some);
        }
        Ok(None)
    }
}
