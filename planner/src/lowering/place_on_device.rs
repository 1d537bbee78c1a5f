//! `PlaceOnDevice`: the physical optimizer rule that lowers chains of
//! filters, projections, aggregates and top-k sorts into fused GPU stages
//! ([`GpuStageExec`]).
//!
//! Bottom-up, each operator either joins the stage below it, starts a new
//! stage over its input, or stays on the CPU with every reason that applies
//! ([`Refusal::Cpu`]); a DataFusion error met on the way fails the query.
//! A second pass, top-down, applies the cost model and the device's checks,
//! returns stages that would not pay for their data movement to the CPU,
//! and records each operator's [`Placement`] at its position in the result:
//! the record EXPLAIN reads ([`PlacementLog`]).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, plan_datafusion_err};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, InputOrderMode};
use kiln_engine::exec::device_columns::device_ty;
use kiln_engine::exec::group_keys::key_type_supported;
use kiln_engine::exec::{
    GpuStageExec, SingleSplit, StageAggregate, StageGroupBy, StageOutput, StagePlan, StageTopK,
};
use kiln_kernels::codegen::numbering::KeyProgram;
use kiln_kernels::codegen::{
    BinOp, BlockTopK, Expr, MAX_GROUPS, MAX_TOPK, Program, Reduce, ReduceOp, Ty, Value,
};
use kiln_kernels::{BackendKind, Device, DeviceInfo};

use super::cost_model::{estimate, estimated_rows, worth_it};
use super::expr::{Source, Translator};
use super::placement::{Placement, PlacementLog, PlacementRecord, Position, Reason, Refusal};
use crate::KilnOptions;

/// The device and switches one planning run lowers with.
pub struct LoweringContext {
    pub info: DeviceInfo,
    pub device: Device,
    pub filter: bool,
    pub projection: bool,
    pub aggregate: bool,
    pub sort: bool,
    pub min_rows: usize,
    pub batch_rows: usize,
    pub max_groups: usize,
    pub group_atomics: bool,
    pub group_numbering: bool,
}

impl LoweringContext {
    /// The context of a session, or the reason nothing is lowered (the
    /// device is the CPU, or the GPU is switched off).
    pub fn from_config(config: &ConfigOptions) -> Result<std::result::Result<Self, Reason>> {
        let options = config
            .extensions
            .get::<KilnOptions>()
            .cloned()
            .unwrap_or_default();
        if !options.gpu_transforms {
            return Ok(Err(Reason::Switch("kiln.gpu_transforms")));
        }
        let info = kiln_engine::device::session_info(config)
            .map_err(|e| plan_datafusion_err!("kiln.device: {e}"))?;
        if options.gpu_max_groups == 0 || options.gpu_max_groups > MAX_GROUPS {
            return Err(plan_datafusion_err!(
                "kiln.gpu_max_groups must be between 1 and {MAX_GROUPS}, not {}",
                options.gpu_max_groups
            ));
        }
        if info.backend == BackendKind::Cpu {
            return Ok(Err(Reason::NotAGpu(info.id().to_string())));
        }
        let device = kiln_engine::device::open_for_session(&info, config)?;
        Ok(Ok(LoweringContext {
            info,
            device,
            filter: options.gpu_filter,
            projection: options.gpu_projection,
            aggregate: options.gpu_aggregate,
            sort: options.gpu_sort,
            min_rows: options.gpu_min_rows,
            batch_rows: options.gpu_batch_rows,
            max_groups: options.gpu_max_groups,
            group_atomics: options.gpu_group_atomics,
            group_numbering: options.gpu_group_numbering,
        }))
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PlaceOnDevice;

impl PhysicalOptimizerRule for PlaceOnDevice {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let log = config.extensions.get::<PlacementLog>();
        let ctx = match LoweringContext::from_config(config)? {
            Ok(ctx) => ctx,
            Err(reason) => {
                if let Some(log) = log {
                    log.put(PlacementRecord::whole(reason));
                }
                return Ok(plan);
            }
        };
        let split = split_filters(plan, &ctx)?;
        // Every operator left on the CPU, with its reasons. The nodes are
        // held, so an address is never another node's while the rule runs.
        let mut refused = Refused::new();
        let staged = split
            .transform_up(|node| {
                Ok(match lower(&node, &ctx) {
                    Ok(stage) => Transformed::yes(stage),
                    Err(Refusal::Cpu(reasons)) => {
                        refused.insert(address(&node), (Arc::clone(&node), reasons));
                        Transformed::no(node)
                    }
                    Err(Refusal::Failed(e)) => return Err(e),
                })
            })?
            .data;
        let mut record = PlacementRecord::default();
        let placed = place(staged, &ctx, &refused, &mut Vec::new(), &mut record)?;
        if let Some(log) = log {
            log.put(record);
        }
        Ok(placed)
    }

    fn name(&self) -> &str {
        "kiln_place_on_device"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The operators the first pass left on the CPU, by address.
type Refused = HashMap<usize, (Arc<dyn ExecutionPlan>, Vec<Reason>)>;

fn address(node: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(node) as *const () as usize
}

/// The second pass, top-down from `node` (at `at`): each stage kept, or
/// returned to the CPU where the cost model or the device refuses it, and
/// every operator's placement recorded at its position in the result.
fn place(
    node: Arc<dyn ExecutionPlan>,
    ctx: &LoweringContext,
    refused: &Refused,
    at: &mut Position,
    record: &mut PlacementRecord,
) -> Result<Arc<dyn ExecutionPlan>> {
    let Some(stage) = node.downcast_ref::<GpuStageExec>() else {
        if let Some((_, reasons)) = refused.get(&address(&node)) {
            record.insert(at.clone(), node.as_ref(), Placement::Cpu(reasons.clone()));
        }
        let mut children = Vec::new();
        for (i, child) in node.children().into_iter().enumerate() {
            at.push(i);
            children.push(place(Arc::clone(child), ctx, refused, at, record)?);
            at.pop();
        }
        return replace_children_if_necessary(node, children);
    };
    let keep = worth_it(stage, ctx.min_rows).and_then(|()| {
        ctx.device
            .fused_support(&stage.plan().program)
            .map_err(Reason::Device)
    });
    if let Err(reason) = keep {
        // The operators the stage replaced (the first over its input), back
        // on the CPU: the last at the stage's position, each over the next.
        let ops = &stage.plan().original_ops;
        let depth = at.len();
        for op in ops.iter().rev() {
            record.insert(
                at.clone(),
                op.as_ref(),
                Placement::Cpu(vec![reason.clone()]),
            );
            at.push(0);
        }
        let mut plan = place(Arc::clone(stage.input()), ctx, refused, at, record)?;
        at.truncate(depth);
        for op in ops {
            plan = replace_children_if_necessary(Arc::clone(op), vec![plan])?;
        }
        return Ok(plan);
    }
    record.insert(
        at.clone(),
        stage,
        Placement::Gpu(stage.device().id().to_string()),
    );
    at.push(0);
    let input = place(Arc::clone(stage.input()), ctx, refused, at, record)?;
    at.pop();
    let stage = match with_group_support(stage, ctx) {
        Some(supported) => supported,
        None => Arc::clone(&node),
    };
    replace_children_if_necessary(stage, vec![input])
}

/// A stage grouping by keys with the atomic fold and the key numbering
/// compiled now too, where they differ from what lowering assumed (a
/// device that cannot leaves batches of many groups to the CPU, and the
/// keys to the host); `None` where nothing changes.
fn with_group_support(
    stage: &GpuStageExec,
    ctx: &LoweringContext,
) -> Option<Arc<dyn ExecutionPlan>> {
    let group_by = stage.plan().group_by.as_ref()?;
    let atomics = match &group_by.atomics {
        Ok(()) => ctx.device.atomic_fold_support(&stage.plan().program),
        Err(reason) => Err(reason.clone()),
    };
    let numbering = match &group_by.device_keys {
        Ok(keys) => ctx.device.numbering_support(keys).map(|()| keys.clone()),
        Err(reason) => Err(reason.clone()),
    };
    if atomics == group_by.atomics && numbering.is_ok() == group_by.device_keys.is_ok() {
        return None;
    }
    Some(Arc::new(stage.with_group_support(atomics, numbering)))
}

/// Splits each filter whose predicate mixes conjuncts the GPU computes with
/// conjuncts it cannot (a string comparison, LIKE) into a CPU filter of the
/// latter over a filter of the former, which the staging pass then lowers:
/// the device discards rows before the CPU looks at their strings.
/// `A AND B` keeps the rows where both are TRUE, in either order; only a
/// filter large enough for the cost model is split.
fn split_filters(
    plan: Arc<dyn ExecutionPlan>,
    ctx: &LoweringContext,
) -> Result<Arc<dyn ExecutionPlan>> {
    if !ctx.filter {
        return Ok(plan);
    }
    Ok(plan
        .transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let input = Arc::clone(filter.input());
            let too_small = estimated_rows(&input).is_some_and(|rows| rows < ctx.min_rows);
            if filter.fetch().is_some() || too_small {
                return Ok(Transformed::no(node));
            }
            let schema = input.schema();
            let columns: Vec<Source> = (0..schema.fields().len()).map(Source::Input).collect();
            let translator = Translator {
                schema: &schema,
                columns: &columns,
                inputs: &schema,
            };
            let (gpu, cpu): (Vec<_>, Vec<_>) = split_conjunction(filter.predicate())
                .into_iter()
                .map(Arc::clone)
                .partition(|c| translator.translate(c).is_ok());
            if gpu.is_empty() || cpu.is_empty() {
                return Ok(Transformed::no(node));
            }
            let inner = FilterExecBuilder::new(conjunction(gpu), input)
                .with_default_selectivity(filter.default_selectivity())
                .build()?;
            let outer = FilterExecBuilder::new(conjunction(cpu), Arc::new(inner))
                .apply_projection(filter.projection().as_ref().map(|p| p.to_vec()))?
                .with_default_selectivity(filter.default_selectivity())
                .build()?;
            Ok(Transformed::yes(Arc::new(outer) as Arc<dyn ExecutionPlan>))
        })?
        .data)
}

/// A stage under construction.
struct Chain {
    input: Arc<dyn ExecutionPlan>,
    columns: Vec<Source>,
    /// Each column as a DataFusion expression over the stage's input (what
    /// the host evaluates for a computed GROUP BY key).
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    predicate: Option<Expr>,
    predicate_text: Vec<String>,
    ops: Vec<Arc<dyn ExecutionPlan>>,
}

impl Chain {
    fn over(input: Arc<dyn ExecutionPlan>) -> Chain {
        let schema = input.schema();
        let n = schema.fields().len();
        Chain {
            exprs: schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| Arc::new(Column::new(f.name(), i)) as Arc<dyn PhysicalExpr>)
                .collect(),
            input,
            columns: (0..n).map(Source::Input).collect(),
            predicate: None,
            predicate_text: Vec::new(),
            ops: Vec::new(),
        }
    }

    fn of_stage(stage: &GpuStageExec) -> Chain {
        let plan = stage.plan();
        Chain {
            input: Arc::clone(stage.input()),
            columns: plan
                .outputs
                .iter()
                .map(|o| match o {
                    StageOutput::Input(i) => Source::Input(*i),
                    StageOutput::Device(k) => Source::Computed(plan.program.outputs[*k].clone()),
                })
                .collect(),
            exprs: plan.output_exprs.clone(),
            predicate: plan.program.predicate.clone(),
            predicate_text: plan.predicate.iter().cloned().collect(),
            ops: plan.original_ops.clone(),
        }
    }
}

/// Lowers `op` (with its already-lowered child) into a stage, or says why it
/// stays on the CPU.
pub fn lower(
    op: &Arc<dyn ExecutionPlan>,
    ctx: &LoweringContext,
) -> std::result::Result<Arc<dyn ExecutionPlan>, Refusal> {
    let any = op;
    let is_filter = any.is::<FilterExec>();
    let is_projection = any.is::<ProjectionExec>();
    let aggregate = any.downcast_ref::<AggregateExec>();
    let sort = any.downcast_ref::<SortExec>();
    if !is_filter && !is_projection && aggregate.is_none() && sort.is_none() {
        return Err(Refusal::operator(no_kernel(op.as_ref())));
    }
    if let Some(sort) = sort {
        if !ctx.sort {
            return Err(Reason::Switch("kiln.gpu_sort").into());
        }
        match sort.fetch() {
            None => {
                return Err(Refusal::operator(
                    "a sort without LIMIT stays on the CPU (the GPU runs ORDER BY ... LIMIT k)",
                ));
            }
            Some(k) if k == 0 || k > MAX_TOPK as usize => {
                return Err(Refusal::operator(format!(
                    "LIMIT {k}: the GPU's top-k keeps 1 to {MAX_TOPK} rows"
                )));
            }
            Some(_) => {}
        }
    }
    if aggregate.is_some() && !ctx.aggregate {
        return Err(Reason::Switch("kiln.gpu_aggregate").into());
    }
    if is_filter && !ctx.filter {
        return Err(Reason::Switch("kiln.gpu_filter").into());
    }
    if is_projection && !ctx.projection {
        return Err(Reason::Switch("kiln.gpu_projection").into());
    }
    let child = op
        .children()
        .first()
        .map(|c| Arc::clone(*c))
        .ok_or_else(|| plan_datafusion_err!("{} has no input", op.name()))?;
    let mut chain = match child.downcast_ref::<GpuStageExec>() {
        // A stage that ends in an aggregate emits states, and one that ends
        // in a top-k its first rows: what follows them starts a new stage.
        Some(stage) if stage.plan().aggregate.is_none() && stage.plan().topk.is_none() => {
            Chain::of_stage(stage)
        }
        _ => Chain::over(child),
    };
    let op_schema = op.children()[0].schema();
    let stage_inputs = chain.input.schema();
    // The operator's expressions are over its input: the chain's columns
    // before this operator.
    let input_columns = chain.columns.clone();
    let translator = Translator {
        schema: &op_schema,
        columns: &input_columns,
        inputs: &stage_inputs,
    };
    if let Some(filter) = any.downcast_ref::<FilterExec>() {
        if filter.fetch().is_some() {
            return Err(Refusal::operator(
                "a filter with a row limit (fetch) stays on the CPU",
            ));
        }
        let p = translator.translate(filter.predicate()).map_err(|first| {
            // Every conjunct's reason, not the first only.
            let mut reasons = Vec::new();
            for c in split_conjunction(filter.predicate()) {
                if let Err(reason) = translator.translate(c) {
                    push_new(&mut reasons, Reason::Expression(reason));
                }
            }
            if reasons.is_empty() {
                reasons.push(Reason::Expression(first));
            }
            Refusal::Cpu(reasons)
        })?;
        if p.ty() != Ty::Bool {
            return Err(Refusal::expression(format!(
                "predicate {} is not boolean",
                filter.predicate()
            )));
        }
        chain.predicate = Some(match chain.predicate.take() {
            Some(q) => Expr::binary(BinOp::And, q, p),
            None => p,
        });
        chain.predicate_text.push(filter.predicate().to_string());
        if let Some(projection) = filter.projection() {
            chain.columns = projection
                .iter()
                .map(|i| chain.columns[*i].clone())
                .collect();
            chain.exprs = projection
                .iter()
                .map(|i| Arc::clone(&chain.exprs[*i]))
                .collect();
        }
    } else if let Some(projection) = any.downcast_ref::<ProjectionExec>() {
        let mut columns = Vec::with_capacity(projection.expr().len());
        let mut exprs = Vec::with_capacity(projection.expr().len());
        // Every expression's reason, not the first only: EXPLAIN shows all
        // that keep the projection on the CPU.
        let mut reasons = Vec::new();
        for p in projection.expr() {
            columns.push(match p.expr.downcast_ref::<Column>() {
                Some(c) => chain.columns[c.index()].clone(),
                None => match translator.translate(&p.expr) {
                    Ok(e) => Source::Computed(e),
                    Err(reason) => {
                        push_new(&mut reasons, Reason::Expression(reason));
                        continue;
                    }
                },
            });
            exprs.push(over_stage_input(&p.expr, &chain.exprs)?);
        }
        if !reasons.is_empty() {
            return Err(Refusal::Cpu(reasons));
        }
        chain.columns = columns;
        chain.exprs = exprs;
    }
    let mut topk = None;
    if let Some(sort) = sort {
        let first = &sort.expr()[0];
        let key = translator
            .translate(&first.expr)
            .map_err(Refusal::expression)?;
        let fetch = sort.fetch().unwrap_or(0);
        topk = Some((
            BlockTopK {
                key,
                descending: first.options.descending,
                nulls_first: first.options.nulls_first,
                k: fetch as u32,
            },
            StageTopK {
                ordering: sort.expr().clone(),
                fetch,
            },
        ));
    }
    let mut reductions = Vec::new();
    let mut stage_aggregate = None;
    let mut group_by = None;
    // Inputs a merge takes as another type (unsigned counts as signed).
    let mut retyped = Vec::new();
    if let Some(agg) = aggregate {
        let (merge, single) = match agg.mode() {
            AggregateMode::Partial => (false, false),
            AggregateMode::Final | AggregateMode::FinalPartitioned => (true, false),
            AggregateMode::Single | AggregateMode::SinglePartitioned => (false, true),
            AggregateMode::PartialReduce => {
                return Err(Refusal::operator(
                    "PartialReduce aggregates stay on the CPU",
                ));
            }
        };
        if merge && !chain.ops.is_empty() {
            return Err(Refusal::operator(
                "a final aggregate merges states straight from its input",
            ));
        }
        if !matches!(agg.input_order_mode(), InputOrderMode::Linear)
            || agg.properties().output_ordering().is_some()
        {
            // The stage emits groups in no particular order.
            return Err(Refusal::operator(
                "an aggregate over sorted input (its output keeps the order) stays on the CPU",
            ));
        }
        // Every reason that keeps the aggregate on the CPU: its form, each
        // key, each function and argument.
        let mut reasons = Vec::new();
        if agg.limit_options().is_some() {
            reasons.push(Reason::Operator(
                "a partial aggregate with a row limit stays on the CPU".into(),
            ));
        }
        if agg.filter_expr().iter().any(Option::is_some) {
            reasons.push(Reason::Operator(
                "aggregate FILTER clauses have no GPU kernel".into(),
            ));
        }
        if !agg.group_expr().is_empty() {
            match group_keys(agg, &chain.exprs, ctx) {
                Ok(mut keys) => {
                    match device_keys(agg, &translator, &stage_inputs, ctx) {
                        Ok((program, views)) => {
                            keys.device_keys = Ok(program);
                            keys.key_views = views;
                        }
                        Err(reason) => keys.device_keys = Err(reason),
                    }
                    group_by = Some(keys);
                }
                Err(Refusal::Cpu(keys)) => reasons.extend(keys),
                Err(failed) => return Err(failed),
            }
        }
        if agg.aggr_expr().is_empty() {
            // GROUP BY without aggregates (SELECT DISTINCT): one count of
            // the kept rows tells which groups occur.
            reductions.push(Reduce {
                op: ReduceOp::Count,
                arg: Expr::lit(Value::Bool(true), Ty::Bool),
            });
        }
        let mut functions = match StageAggregate::try_new(agg.aggr_expr())? {
            Ok(functions) => functions,
            Err(why) => {
                reasons.extend(why.into_iter().map(Reason::Expression));
                return Err(Refusal::Cpu(reasons));
            }
        };
        if merge {
            // The input holds the group keys, then every aggregate's state
            // columns in order; each merges with its own reduction.
            let first = agg.group_expr().expr().len();
            for (i, op) in functions.merge_reductions().into_iter().enumerate() {
                let name = stage_inputs.field(first + i).name();
                let mut arg = match translator.input_column(first + i) {
                    Ok(arg) => arg,
                    Err(why) => {
                        reasons.push(Reason::Expression(format!("merging {name}: {why}")));
                        continue;
                    }
                };
                if arg.ty() == Ty::U64 {
                    // avg's count state: merged as i64 (a batch with a
                    // count past 2^63 goes to the CPU).
                    arg = Expr::column(first + i, Ty::I64);
                    retyped.push((first + i, Ty::I64));
                }
                let r = Reduce { op, arg };
                match r.supported() {
                    Ok(()) => reductions.push(r),
                    Err(why) => reasons.push(Reason::Expression(format!("merging {name}: {why}"))),
                }
            }
            functions.merge = true;
        } else {
            for (f, kind) in agg.aggr_expr().iter().zip(&functions.kinds) {
                let arg = match translator.translate(&f.expressions()[0]) {
                    Ok(arg) => arg,
                    Err(why) => {
                        push_new(&mut reasons, Reason::Expression(why));
                        continue;
                    }
                };
                let r = Reduce {
                    op: kind.reduce_op(),
                    arg,
                };
                match r.supported() {
                    Ok(()) => reductions.push(r),
                    Err(why) => reasons.push(Reason::Expression(format!("{}: {why}", f.name()))),
                }
            }
        }
        if !reasons.is_empty() {
            return Err(Refusal::Cpu(reasons));
        }
        if single {
            functions.single = Some(split_single(agg)?);
        }
        stage_aggregate = Some(functions);
        chain.columns.clear();
        chain.exprs.clear();
    }
    chain.ops.push(Arc::clone(op));
    let mut plan = stage_plan(
        chain.columns,
        chain.exprs,
        chain.predicate,
        chain.predicate_text,
        chain.ops.clone(),
        &stage_inputs,
    );
    plan.program.reduce = reductions;
    for (index, ty) in retyped {
        plan.program.inputs[index] = ty;
    }
    plan.aggregate = stage_aggregate;
    if let Some((kernel, stage)) = topk {
        plan.program.topk = Some(kernel);
        plan.topk = Some(stage);
    }
    if let Some(mut g) = group_by {
        // The host computes each row's group index: the program's last input.
        plan.program.group = Some(Expr::column(plan.program.inputs.len(), Ty::U32));
        plan.program.inputs.push(Ty::U32);
        g.atomics = if ctx.group_atomics {
            ctx.device.atomic_fold_check(&plan.program)
        } else {
            Err("kiln.gpu_group_atomics is off".into())
        };
        plan.group_by = Some(g);
    }
    ctx.device
        .fused_check(&plan.program)
        .map_err(|why| Refusal::from(Reason::Device(why)))?;
    let (rows, bytes) = estimate(&chain.input, op, &plan.program);
    plan.est_rows = rows;
    plan.est_bytes_moved = bytes;
    let stage = GpuStageExec::new(
        chain.input,
        plan,
        ctx.info.clone(),
        ctx.batch_rows,
        Arc::clone(op.properties()),
    )?;
    Ok(Arc::new(stage))
}

/// The GROUP BY keys as the device numbers them, and the stage input
/// columns of string keys it numbers by their inline views (two 64-bit key
/// words each, inputs after the stage's), or why the host numbers them.
fn device_keys(
    agg: &AggregateExec,
    translator: &Translator<'_>,
    stage_inputs: &datafusion::arrow::datatypes::Schema,
    ctx: &LoweringContext,
) -> std::result::Result<(KeyProgram, Vec<usize>), String> {
    if !ctx.group_numbering {
        return Err("kiln.gpu_group_numbering is off".into());
    }
    let mut inputs: Vec<Ty> = stage_inputs
        .fields()
        .iter()
        .map(|f| device_ty(f.data_type()).unwrap_or(Ty::U32))
        .collect();
    let mut keys = Vec::new();
    let mut views = Vec::new();
    for (expr, name) in agg.group_expr().expr() {
        match translator.translate(expr) {
            Ok(key) if key.ty().is_float() => return Err(format!("{name} is a float")),
            Ok(key) => keys.push(key),
            Err(reason) => {
                // A string or binary column: numbered by its views' words
                // (a batch with a value past 12 bytes goes to the host).
                let column = expr
                    .downcast_ref::<Column>()
                    .and_then(|c| translator.columns.get(c.index()))
                    .and_then(|source| match source {
                        Source::Input(i) => Some(*i),
                        Source::Computed(_) => None,
                    })
                    .filter(|i| {
                        matches!(
                            stage_inputs.field(*i).data_type(),
                            DataType::Utf8View | DataType::BinaryView
                        )
                    })
                    .ok_or(format!("{name}: {reason}"))?;
                views.push(column);
                for _ in 0..2 {
                    keys.push(Expr::column(inputs.len(), Ty::U64));
                    inputs.push(Ty::U64);
                }
            }
        }
    }
    let program = KeyProgram { inputs, keys };
    program.check()?;
    Ok((program, views))
}

/// A single-step aggregate's partial and final halves, built as
/// DataFusion's planner builds them.
fn split_single(agg: &AggregateExec) -> std::result::Result<SingleSplit, Refusal> {
    let partial = AggregateExec::try_new(
        AggregateMode::Partial,
        agg.group_expr().clone(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        Arc::clone(agg.input()),
        agg.input_schema(),
    )?;
    // The final half's input stands for the states; the stage replaces it.
    let states = Arc::new(EmptyExec::new(partial.schema()));
    let finish = AggregateExec::try_new(
        AggregateMode::Final,
        agg.group_expr().as_final(),
        agg.aggr_expr().to_vec(),
        agg.filter_expr().to_vec(),
        states,
        agg.input_schema(),
    )?;
    if finish.schema().fields() != agg.schema().fields() {
        return Err(
            plan_datafusion_err!("splitting the aggregate changed its output schema").into(),
        );
    }
    Ok(SingleSplit {
        partial: Arc::new(partial),
        finish: Arc::new(finish),
    })
}

/// The GROUP BY of a partial aggregate as a stage runs it: each key as an
/// expression over the stage's input (`columns`: the aggregate's input
/// columns so), which the host evaluates and numbers per batch, or the
/// reason it stays on the CPU.
fn group_keys(
    agg: &AggregateExec,
    columns: &[Arc<dyn PhysicalExpr>],
    ctx: &LoweringContext,
) -> std::result::Result<StageGroupBy, Refusal> {
    let group = agg.group_expr();
    if !group.is_single() {
        return Err(Refusal::operator(
            "GROUPING SETS, CUBE and ROLLUP stay on the CPU",
        ));
    }
    let input_schema = agg.input().schema();
    let mut keys = Vec::new();
    let mut names = Vec::new();
    let mut reasons = Vec::new();
    for (expr, name) in group.expr() {
        let dt = expr.data_type(&input_schema)?;
        if !key_type_supported(&dt) {
            reasons.push(Reason::Expression(format!(
                "GROUP BY {name} of type {dt} has no GPU kernel"
            )));
            continue;
        }
        keys.push(over_stage_input(expr, columns)?);
        names.push(name.clone());
    }
    if !reasons.is_empty() {
        return Err(Refusal::Cpu(reasons));
    }
    Ok(StageGroupBy {
        keys,
        names,
        max_groups: ctx.max_groups,
        atomics: Ok(()),
        device_keys: Err(String::new()),
        key_views: Vec::new(),
    })
}

/// `expr` (over an operator's input, whose columns are `columns` over the
/// stage's input) as an expression over the stage's input.
fn over_stage_input(
    expr: &Arc<dyn PhysicalExpr>,
    columns: &[Arc<dyn PhysicalExpr>],
) -> Result<Arc<dyn PhysicalExpr>> {
    Arc::clone(expr)
        .transform_up(|e| {
            Ok(match e.downcast_ref::<Column>() {
                Some(c) => match columns.get(c.index()) {
                    Some(x) => Transformed::yes(Arc::clone(x)),
                    None => {
                        return Err(plan_datafusion_err!(
                            "column {} beyond the operator's input",
                            c.index()
                        ));
                    }
                },
                None => Transformed::no(e),
            })
        })
        .map(|t| t.data)
}

fn stage_plan(
    columns: Vec<Source>,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    predicate: Option<Expr>,
    predicate_text: Vec<String>,
    ops: Vec<Arc<dyn ExecutionPlan>>,
    stage_inputs: &datafusion::arrow::datatypes::Schema,
) -> StagePlan {
    let mut outputs = Vec::with_capacity(columns.len());
    let mut computed = Vec::new();
    for source in columns {
        outputs.push(match source {
            Source::Input(i) | Source::Computed(Expr::Column { index: i, .. }) => {
                StageOutput::Input(i)
            }
            Source::Computed(x) => {
                computed.push(x);
                StageOutput::Device(computed.len() - 1)
            }
        });
    }
    // Columns no expression reads may have any type; they are never uploaded.
    let inputs = stage_inputs
        .fields()
        .iter()
        .map(|f| device_ty(f.data_type()).unwrap_or(Ty::U32))
        .collect();
    StagePlan {
        program: Program {
            inputs,
            predicate,
            outputs: computed,
            reduce: Vec::new(),
            group: None,
            topk: None,
        },
        outputs,
        original_ops: ops,
        predicate: (!predicate_text.is_empty()).then(|| predicate_text.join(" AND ")),
        output_exprs: exprs,
        aggregate: None,
        group_by: None,
        topk: None,
        est_rows: None,
        est_bytes_moved: None,
    }
}

/// Why an operator other than a filter or projection runs on the CPU.
pub fn no_kernel(op: &dyn ExecutionPlan) -> String {
    match op.name() {
        "DataSourceExec" => "scan and decode run on the CPU".into(),
        "RepartitionExec" | "CoalescePartitionsExec" | "CoalesceBatchesExec" => {
            "moves batches between partitions".into()
        }
        name => format!("no GPU kernel for {name} yet"),
    }
}

/// `reason` added to `reasons` unless it is there already.
fn push_new(reasons: &mut Vec<Reason>, reason: Reason) {
    if !reasons.contains(&reason) {
        reasons.push(reason);
    }
}
