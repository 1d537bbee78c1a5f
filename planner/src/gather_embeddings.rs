//! `GatherEmbeddings`: the physical optimizer rule that plans `embed(text)`
//! in a projection or a filter as an [`EmbedExec`] below it.
//!
//! The scalar function embeds whatever batch DataFusion hands it; the
//! operator gathers rows across input batches into device batches of
//! `kiln.embed_batch_rows` first. Each distinct `embed(...)` call of a
//! projection or filter predicate (whose text is not a constant) becomes
//! one `EmbedExec` appending a column `__kiln_embed_K`; the projection or
//! predicate then reads that column where it called the function (a
//! filter's own projection drops the column again; the conjuncts of the
//! filter that embed nothing run first, below, so only the rows they keep
//! are embedded; a filter with a row limit is left as it is). So
//! `embed()` in a
//! `WHERE` is batched, placed on the device, counted and served by the
//! embedding cache as in a `SELECT` list. Calls elsewhere (an aggregate's
//! argument, a sort key, a join condition) keep the scalar function, which
//! embeds each batch DataFusion hands it, without the cache.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
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

/// Whether `e` calls `embed(...)` on a text computed per row.
fn calls_embed(e: &Arc<dyn PhysicalExpr>) -> bool {
    let mut found = false;
    let _ = e.apply(|x| {
        found |= embed_call(x).is_some();
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// The distinct `embed(...)` calls of `exprs` as `EmbedExec`s over `input`
/// (appending `__kiln_embed_K` columns), and `exprs` reading those columns
/// where they called the function; `None` when they call none.
#[expect(clippy::type_complexity)]
fn lift(
    exprs: &[Arc<dyn PhysicalExpr>],
    input: &Arc<dyn ExecutionPlan>,
    batch_rows: usize,
) -> Result<Option<(Arc<dyn ExecutionPlan>, Vec<Arc<dyn PhysicalExpr>>)>> {
    let mut calls: Vec<Call> = Vec::new();
    for e in exprs {
        e.apply(|x| {
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
        return Ok(None);
    }
    let mut input = Arc::clone(input);
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
    let exprs = exprs
        .iter()
        .map(|e| {
            Ok(Arc::clone(e)
                .transform_down(|x| {
                    Ok(
                        match calls.iter().position(|c| c.call.as_ref() == x.as_ref()) {
                            Some(k) => Transformed::new(
                                Arc::new(Column::new(&format!("__kiln_embed_{k}"), width + k))
                                    as Arc<dyn PhysicalExpr>,
                                true,
                                TreeNodeRecursion::Jump,
                            ),
                            None => Transformed::no(x),
                        },
                    )
                })?
                .data)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((input, exprs)))
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
                if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
                    let exprs: Vec<_> = projection
                        .expr()
                        .iter()
                        .map(|p| Arc::clone(&p.expr))
                        .collect();
                    let Some((input, exprs)) = lift(&exprs, projection.input(), batch_rows)? else {
                        return Ok(Transformed::no(node));
                    };
                    let exprs = projection
                        .expr()
                        .iter()
                        .zip(exprs)
                        .map(|(p, expr)| ProjectionExpr {
                            expr,
                            alias: p.alias.clone(),
                        })
                        .collect::<Vec<_>>();
                    return Ok(Transformed::yes(
                        Arc::new(ProjectionExec::try_new(exprs, input)?) as Arc<dyn ExecutionPlan>,
                    ));
                }
                if let Some(filter) = node.downcast_ref::<FilterExec>()
                    && filter.fetch().is_none()
                {
                    // The conjuncts that embed nothing filter first, so
                    // that only the rows they keep are embedded.
                    let (embedding, plain): (Vec<_>, Vec<_>) =
                        split_conjunction(filter.predicate())
                            .into_iter()
                            .map(Arc::clone)
                            .partition(calls_embed);
                    if embedding.is_empty() {
                        return Ok(Transformed::no(node));
                    }
                    let mut below = Arc::clone(filter.input());
                    if !plain.is_empty() {
                        below = Arc::new(
                            FilterExecBuilder::new(conjunction(plain), below)
                                .with_default_selectivity(filter.default_selectivity())
                                .with_batch_size(filter.batch_size())
                                .build()?,
                        );
                    }
                    let predicate = [conjunction(embedding)];
                    let Some((input, mut predicate)) = lift(&predicate, &below, batch_rows)? else {
                        return Ok(Transformed::no(node));
                    };
                    // The filter's own projection drops the embeddings it
                    // tested: its output is what it was.
                    let width = filter.input().schema().fields().len();
                    let projection: Vec<usize> = match filter.projection() {
                        Some(p) => p.iter().copied().collect(),
                        None => (0..width).collect(),
                    };
                    let rebuilt = FilterExecBuilder::new(predicate.remove(0), input)
                        .apply_projection(Some(projection))?
                        .with_default_selectivity(filter.default_selectivity())
                        .with_batch_size(filter.batch_size())
                        .with_fetch(filter.fetch())
                        .build()?;
                    return Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>));
                }
                Ok(Transformed::no(node))
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
