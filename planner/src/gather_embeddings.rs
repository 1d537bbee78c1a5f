//! `GatherEmbeddings`: the physical optimizer rule that plans `embed(text)`
//! in a projection as an [`EmbedExec`] below it.
//!
//! The scalar function embeds whatever batch DataFusion hands it; the
//! operator gathers rows across input batches into device batches of
//! `kiln.embed_batch_rows` first. Each distinct `embed(...)` call of a
//! projection (whose text is not a constant) becomes one `EmbedExec`
//! appending a column `__kiln_embed_K`; the projection then reads that
//! column where it called the function. Calls elsewhere (a filter, an
//! aggregate's argument) keep the function.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use kiln_engine::exec::EmbedExec;
use kiln_engine::functions::embed::model_name;

use crate::KilnOptions;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct GatherEmbeddings;

/// One `embed` call: the call itself, its text argument and its model.
struct Call {
    call: Arc<dyn PhysicalExpr>,
    text: Arc<dyn PhysicalExpr>,
    model: String,
}

/// The call's text and model when `e` is an `embed(...)` whose text is
/// computed per row and whose model is a constant.
fn embed_call(e: &Arc<dyn PhysicalExpr>) -> Option<(Arc<dyn PhysicalExpr>, String)> {
    let f = e.downcast_ref::<ScalarFunctionExpr>()?;
    if f.name() != "embed" {
        return None;
    }
    let text = f.args().first()?;
    if text.downcast_ref::<Literal>().is_some() {
        return None;
    }
    let model = match f.args().get(1) {
        None => model_name(None).ok()?,
        Some(m) => model_name(Some(m.downcast_ref::<Literal>()?.value())).ok()?,
    };
    Some((Arc::clone(text), model))
}

impl PhysicalOptimizerRule for GatherEmbeddings {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batch_rows = config
            .extensions
            .get::<KilnOptions>()
            .map_or(KilnOptions::default().embed_batch_rows, |o| {
                o.embed_batch_rows
            });
        Ok(plan
            .transform_up(|node| {
                let Some(projection) = node.downcast_ref::<ProjectionExec>() else {
                    return Ok(Transformed::no(node));
                };
                let mut calls: Vec<Call> = Vec::new();
                for p in projection.expr() {
                    p.expr.apply(|x| {
                        if let Some((text, model)) = embed_call(x)
                            && !calls.iter().any(|c| c.call.as_ref() == x.as_ref())
                        {
                            calls.push(Call {
                                call: Arc::clone(x),
                                text,
                                model,
                            });
                        }
                        Ok(TreeNodeRecursion::Continue)
                    })?;
                }
                if calls.is_empty() {
                    return Ok(Transformed::no(node));
                }
                let mut input = Arc::clone(projection.input());
                let width = input.schema().fields().len();
                for (k, c) in calls.iter().enumerate() {
                    input = Arc::new(EmbedExec::try_new(
                        input,
                        Arc::clone(&c.text),
                        c.model.clone(),
                        &format!("__kiln_embed_{k}"),
                        batch_rows,
                    )?);
                }
                let exprs = projection
                    .expr()
                    .iter()
                    .map(|p| {
                        let expr = Arc::clone(&p.expr)
                            .transform_down(|x| {
                                Ok(
                                    match calls.iter().position(|c| c.call.as_ref() == x.as_ref()) {
                                        Some(k) => Transformed::new(
                                            Arc::new(Column::new(
                                                &format!("__kiln_embed_{k}"),
                                                width + k,
                                            ))
                                                as Arc<dyn PhysicalExpr>,
                                            true,
                                            TreeNodeRecursion::Jump,
                                        ),
                                        None => Transformed::no(x),
                                    },
                                )
                            })?
                            .data;
                        Ok(ProjectionExpr {
                            expr,
                            alias: p.alias.clone(),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Transformed::yes(
                    Arc::new(ProjectionExec::try_new(exprs, input)?) as Arc<dyn ExecutionPlan>,
                ))
            })?
            .data)
    }

    fn name(&self) -> &str {
        "kiln_gather_embeddings"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
