//! Column-level lineage of a logical plan: for every output column, the
//! input columns (dataset, field) it is computed from and how, and the input
//! columns that decide which rows there are (filters, join keys, grouping,
//! sorting). The vocabulary is OpenLineage's column-lineage facet (1-2-0):
//! direct uses are IDENTITY, TRANSFORMATION or AGGREGATION; indirect ones
//! JOIN, GROUP_BY, FILTER, SORT, WINDOW or CONDITIONAL.
//!
//! The walk runs bottom-up over the optimized plan and keeps, for each node,
//! the dependencies of each output column by position. Column references
//! resolve to positions through the node's input schema, qualifiers
//! included, so aliases, self-joins and CTEs cannot mix up columns; a
//! reference that does not resolve is an error, never a guess by name.
//! Views and table functions are inlined by the planner, so their lineage
//! is that of what they read; a scan whose source still carries a plan (a
//! view registered from a DataFrame) is walked through.
//!
//! Composition along a path keeps the strongest direct use (identity <
//! transformation < aggregation): `sum(price * qty)` makes `price` an
//! aggregation. An indirect use stays indirect through later expressions,
//! and a column used in a filter, join, grouping or sort is that kind of
//! dependency of the whole output, whatever it was computed from. Casts
//! (explicit or added by type coercion) keep a value's identity.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, TableReference, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::expr::{AggregateFunction, Case, WindowFunction};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{
    Distinct, Expr, JoinType, LogicalPlan, TableSource, WindowFunctionDefinition,
};

use crate::asof_join::AsofJoinNode;
use crate::vector_search::KnnJoinNode;
use crate::vector_topk::VectorTopKNode;

/// A dataset as OpenLineage names it: a namespace (`file`, `s3://bucket`,
/// or a lineage namespace for tables without a location) and a name (a
/// path, a key, a table name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dataset {
    pub namespace: String,
    pub name: String,
}

impl Dataset {
    /// The dataset of a location, by OpenLineage's naming conventions: a
    /// local path is namespace `file` with its absolute path as the name;
    /// `scheme://authority/path` is namespace `scheme://authority` with the
    /// path (no leading `/`) as the name. A trailing `/` is dropped.
    pub fn of_location(location: &str) -> Dataset {
        let trimmed = location.trim_end_matches('/');
        if let Some(path) = trimmed.strip_prefix("file://") {
            return Dataset {
                namespace: "file".into(),
                name: path.to_string(),
            };
        }
        if let Some((scheme, rest)) = trimmed.split_once("://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            return Dataset {
                namespace: format!("{scheme}://{authority}"),
                name: path.to_string(),
            };
        }
        let path = std::path::Path::new(trimmed);
        let absolute = match path.is_absolute() {
            true => path.to_path_buf(),
            false => std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf()),
        };
        Dataset {
            namespace: "file".into(),
            name: absolute.display().to_string(),
        }
    }

    /// Whether `name` (a table's name in a plan) is a location rather than
    /// a name: the job planner names its own outputs after their locations.
    pub fn is_location(name: &str) -> bool {
        name.contains('/') || name.contains("://")
    }
}

/// One column of an input dataset.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputField {
    pub dataset: Dataset,
    pub field: String,
}

/// How an input column is used (OpenLineage's transformation subtypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transform {
    /// The value itself, perhaps renamed or cast.
    Identity,
    /// A value computed from it, row by row.
    Transformation,
    /// A value aggregated from it over rows.
    Aggregation,
    /// It decides which rows join.
    Join,
    /// The output's rows are groups of it.
    GroupBy,
    /// It decides which rows are kept.
    Filter,
    /// It orders the rows (and, with a limit, decides which are kept).
    Sort,
    /// It partitions or orders a window function's rows.
    Window,
    /// It decides which branch of a conditional a value comes from.
    Conditional,
}

impl Transform {
    /// DIRECT (the value flows into the output) or not.
    pub fn is_direct(self) -> bool {
        matches!(
            self,
            Transform::Identity | Transform::Transformation | Transform::Aggregation
        )
    }

    /// OpenLineage's `type`: DIRECT or INDIRECT.
    pub fn kind(self) -> &'static str {
        match self.is_direct() {
            true => "DIRECT",
            false => "INDIRECT",
        }
    }

    /// OpenLineage's `subtype`.
    pub fn subtype(self) -> &'static str {
        match self {
            Transform::Identity => "IDENTITY",
            Transform::Transformation => "TRANSFORMATION",
            Transform::Aggregation => "AGGREGATION",
            Transform::Join => "JOIN",
            Transform::GroupBy => "GROUP_BY",
            Transform::Filter => "FILTER",
            Transform::Sort => "SORT",
            Transform::Window => "WINDOW",
            Transform::Conditional => "CONDITIONAL",
        }
    }
}

/// One use of an input column: how, and whether the value is masked on
/// the way (hashed, or only counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Use {
    pub transform: Transform,
    pub masking: bool,
}

impl Use {
    const IDENTITY: Use = Use::of(Transform::Identity);

    pub const fn of(transform: Transform) -> Use {
        Use {
            transform,
            masking: false,
        }
    }

    /// `inner` (how a column feeds an expression's input) seen through
    /// `self` (how that input feeds the output).
    fn then(self, inner: Use) -> Use {
        match (self.transform.is_direct(), inner.transform.is_direct()) {
            // A filter, join, grouping or sort on a value depends on
            // everything the value came from, in that way.
            (false, _) => self,
            (true, false) => inner,
            (true, true) => Use {
                transform: self.transform.max(inner.transform),
                masking: self.masking || inner.masking,
            },
        }
    }

    /// The use of a function's arguments when the function is used so.
    fn computed(self) -> Use {
        self.then(Use::of(Transform::Transformation))
    }
}

/// The input columns one output depends on, each with its uses.
pub type Deps = BTreeMap<InputField, BTreeSet<Use>>;

fn merge(into: &mut Deps, from: &Deps, through: Use) {
    for (field, uses) in from {
        let entry = into.entry(field.clone()).or_default();
        entry.extend(uses.iter().map(|u| through.then(*u)));
    }
}

/// The column-level lineage of a plan.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// Each output column, in the plan's order: its name and what it is
    /// computed from (empty for a constant).
    pub columns: Vec<(String, Deps)>,
    /// What decides the output's rows: filters, join keys, grouping, sorts.
    pub dataset: Deps,
    /// The datasets the plan reads, with their schemas, in the order first
    /// met.
    pub inputs: Vec<(Dataset, SchemaRef)>,
}

impl Lineage {
    /// What output column `column` is computed from.
    pub fn uses_of(&self, column: &str) -> Option<&Deps> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, deps)| deps)
    }
}

/// The dataset a scan reads: given the table's name in the plan and its
/// source.
pub type Resolve<'a> = dyn Fn(&TableReference, &Arc<dyn TableSource>) -> Dataset + 'a;

/// The lineage of `plan`'s output. A plan that writes (COPY, INSERT,
/// CREATE TABLE AS, CREATE VIEW) has the lineage of what it writes.
pub fn column_lineage(plan: &LogicalPlan, resolve: &Resolve<'_>) -> Result<Lineage> {
    let plan = written(plan).unwrap_or(plan);
    let mut walker = Walker {
        resolve,
        inputs: Vec::new(),
    };
    let flow = walker.plan(plan, &[])?;
    let mut columns: Vec<(String, Deps)> = Vec::with_capacity(flow.columns.len());
    for (field, deps) in plan.schema().fields().iter().zip(flow.columns) {
        // Two outputs of one name (a query's `a.x, b.x`) are one field of
        // the output dataset.
        match columns.iter_mut().find(|(name, _)| name == field.name()) {
            Some((_, existing)) => merge(existing, &deps, Use::IDENTITY),
            None => columns.push((field.name().clone(), deps)),
        }
    }
    Ok(Lineage {
        columns,
        dataset: flow.dataset,
        inputs: walker.inputs,
    })
}

/// What a writing statement writes.
pub fn written(plan: &LogicalPlan) -> Option<&LogicalPlan> {
    use datafusion::logical_expr::DdlStatement;
    match plan {
        LogicalPlan::Copy(copy) => Some(copy.input.as_ref()),
        LogicalPlan::Dml(dml) => Some(dml.input.as_ref()),
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => Some(create.input.as_ref()),
        LogicalPlan::Ddl(DdlStatement::CreateView(view)) => Some(view.input.as_ref()),
        _ => None,
    }
}

/// The output columns of a node and what decides its rows.
struct Flow {
    columns: Vec<Deps>,
    dataset: Deps,
}

impl Flow {
    fn none(width: usize) -> Flow {
        Flow {
            columns: vec![Deps::new(); width],
            dataset: Deps::new(),
        }
    }
}

/// The columns an expression can refer to: its node's input, and the
/// inputs of the nodes whose subqueries hold it (for outer references).
#[derive(Clone, Copy)]
struct Frame<'a> {
    schema: &'a DFSchema,
    columns: &'a [Deps],
}

struct Walker<'r, 'a> {
    resolve: &'r Resolve<'a>,
    inputs: Vec<(Dataset, SchemaRef)>,
}

impl Walker<'_, '_> {
    fn plan(&mut self, plan: &LogicalPlan, outer: &[Frame]) -> Result<Flow> {
        let width = plan.schema().fields().len();
        let flow = match plan {
            LogicalPlan::TableScan(scan) => self.scan(
                &scan.table_name,
                &scan.source,
                scan.projection.as_deref(),
                &scan.filters,
            )?,
            LogicalPlan::Projection(projection) => {
                let input = self.plan(&projection.input, outer)?;
                let columns = self.exprs(&projection.expr, &input, &projection.input, outer)?;
                Flow {
                    columns,
                    dataset: input.dataset,
                }
            }
            LogicalPlan::Filter(filter) => {
                let mut input = self.plan(&filter.input, outer)?;
                let used = self.expr_deps(
                    &filter.predicate,
                    Use::of(Transform::Filter),
                    &input,
                    &filter.input,
                    outer,
                )?;
                merge(&mut input.dataset, &used, Use::IDENTITY);
                input
            }
            LogicalPlan::Window(window) => {
                let mut input = self.plan(&window.input, outer)?;
                let computed = self.exprs(&window.window_expr, &input, &window.input, outer)?;
                input.columns.extend(computed);
                input
            }
            LogicalPlan::Aggregate(aggregate) => {
                let input = self.plan(&aggregate.input, outer)?;
                let groups = grouping_set_to_exprlist(&aggregate.group_expr)?;
                let mut columns = Vec::with_capacity(width);
                let mut dataset = input.dataset.clone();
                for group in &groups {
                    columns.push(self.expr_deps(
                        group,
                        Use::IDENTITY,
                        &input,
                        &aggregate.input,
                        outer,
                    )?);
                    let keys = self.expr_deps(
                        group,
                        Use::of(Transform::GroupBy),
                        &input,
                        &aggregate.input,
                        outer,
                    )?;
                    merge(&mut dataset, &keys, Use::IDENTITY);
                }
                // A grouping set's id column: which keys each row groups by.
                while columns.len() + aggregate.aggr_expr.len() < width {
                    columns.push(Deps::new());
                }
                columns.extend(self.exprs(
                    &aggregate.aggr_expr,
                    &input,
                    &aggregate.input,
                    outer,
                )?);
                Flow { columns, dataset }
            }
            LogicalPlan::Sort(sort) => {
                let mut input = self.plan(&sort.input, outer)?;
                for key in &sort.expr {
                    let used = self.expr_deps(
                        &key.expr,
                        Use::of(Transform::Sort),
                        &input,
                        &sort.input,
                        outer,
                    )?;
                    merge(&mut input.dataset, &used, Use::IDENTITY);
                }
                input
            }
            LogicalPlan::Join(join) => {
                let left = self.plan(&join.left, outer)?;
                let right = self.plan(&join.right, outer)?;
                let mut dataset = left.dataset.clone();
                merge(&mut dataset, &right.dataset, Use::IDENTITY);
                let key = Use::of(Transform::Join);
                let mut keys = Deps::new();
                for (l, r) in &join.on {
                    keys.extend_uses(self.expr_deps(l, key, &left, &join.left, outer)?);
                    keys.extend_uses(self.expr_deps(r, key, &right, &join.right, outer)?);
                }
                let both = Flow {
                    columns: left.columns.iter().chain(&right.columns).cloned().collect(),
                    dataset: Deps::new(),
                };
                let both_schema = join.left.schema().join(join.right.schema())?;
                if let Some(filter) = &join.filter {
                    keys.extend_uses(self.expr_deps_in(filter, key, &both, &both_schema, outer)?);
                }
                merge(&mut dataset, &keys, Use::IDENTITY);
                let columns = match join.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti => left.columns,
                    JoinType::RightSemi | JoinType::RightAnti => right.columns,
                    JoinType::LeftMark => {
                        let mut columns = left.columns;
                        columns.push(marked(&keys));
                        columns
                    }
                    JoinType::RightMark => {
                        let mut columns = right.columns;
                        columns.push(marked(&keys));
                        columns
                    }
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                        both.columns
                    }
                };
                Flow { columns, dataset }
            }
            LogicalPlan::Union(union) => {
                let mut flow = Flow::none(width);
                for input in &union.inputs {
                    let branch = self.plan(input, outer)?;
                    for (into, from) in flow.columns.iter_mut().zip(&branch.columns) {
                        merge(into, from, Use::IDENTITY);
                    }
                    merge(&mut flow.dataset, &branch.dataset, Use::IDENTITY);
                }
                flow
            }
            LogicalPlan::Distinct(Distinct::All(input)) => {
                let mut flow = self.plan(input, outer)?;
                let mut keys = Deps::new();
                for column in &flow.columns {
                    merge(&mut keys, column, Use::of(Transform::GroupBy));
                }
                merge(&mut flow.dataset, &keys, Use::IDENTITY);
                flow
            }
            LogicalPlan::Distinct(Distinct::On(on)) => {
                let input = self.plan(&on.input, outer)?;
                let mut dataset = input.dataset.clone();
                for key in &on.on_expr {
                    let used =
                        self.expr_deps(key, Use::of(Transform::GroupBy), &input, &on.input, outer)?;
                    merge(&mut dataset, &used, Use::IDENTITY);
                }
                for key in on.sort_expr.iter().flatten() {
                    let used = self.expr_deps(
                        &key.expr,
                        Use::of(Transform::Sort),
                        &input,
                        &on.input,
                        outer,
                    )?;
                    merge(&mut dataset, &used, Use::IDENTITY);
                }
                let columns = self.exprs(&on.select_expr, &input, &on.input, outer)?;
                Flow { columns, dataset }
            }
            LogicalPlan::Unnest(unnest) => {
                let input = self.plan(&unnest.input, outer)?;
                let unnested: BTreeSet<usize> = unnest
                    .list_type_columns
                    .iter()
                    .map(|(i, _)| *i)
                    .chain(unnest.struct_type_columns.iter().copied())
                    .collect();
                let mut columns = Vec::with_capacity(width);
                for &i in &unnest.dependency_indices {
                    let through = match unnested.contains(&i) {
                        true => Use::of(Transform::Transformation),
                        false => Use::IDENTITY,
                    };
                    let mut deps = Deps::new();
                    if let Some(from) = input.columns.get(i) {
                        merge(&mut deps, from, through);
                    }
                    columns.push(deps);
                }
                Flow {
                    columns,
                    dataset: input.dataset,
                }
            }
            LogicalPlan::RecursiveQuery(recursive) => {
                // The recursive term reads the work table (the rows so far),
                // which is no dataset: its columns come from the static term
                // and from what the recursive term joins in.
                let mut flow = self.plan(&recursive.static_term, outer)?;
                let more = self.plan(&recursive.recursive_term, outer)?;
                for (into, from) in flow.columns.iter_mut().zip(&more.columns) {
                    merge(into, from, Use::IDENTITY);
                }
                merge(&mut flow.dataset, &more.dataset, Use::IDENTITY);
                flow
            }
            LogicalPlan::Extension(extension) => self.extension(plan, extension, outer)?,
            LogicalPlan::Subquery(subquery) => self.plan(&subquery.subquery, outer)?,
            LogicalPlan::SubqueryAlias(alias) => self.plan(&alias.input, outer)?,
            LogicalPlan::Limit(limit) => self.plan(&limit.input, outer)?,
            LogicalPlan::Repartition(repartition) => self.plan(&repartition.input, outer)?,
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Flow::none(width),
            LogicalPlan::Copy(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
            | LogicalPlan::DescribeTable(_) => match written(plan) {
                Some(input) => self.plan(input, outer)?,
                None => Flow::none(width),
            },
        };
        if flow.columns.len() != width {
            return plan_err!(
                "lineage: {} has {width} columns but {} were traced",
                plan.display(),
                flow.columns.len()
            );
        }
        Ok(flow)
    }

    fn scan(
        &mut self,
        table: &TableReference,
        source: &Arc<dyn TableSource>,
        projection: Option<&[usize]>,
        filters: &[Expr],
    ) -> Result<Flow> {
        let schema = source.schema();
        // A source that is a plan (a view): what it reads.
        let all = match source.get_logical_plan() {
            Some(view) => self.plan(&view, &[])?,
            None => {
                let dataset = (self.resolve)(table, source);
                if !self.inputs.iter().any(|(d, _)| *d == dataset) {
                    self.inputs.push((dataset.clone(), Arc::clone(&schema)));
                }
                Flow {
                    columns: schema
                        .fields()
                        .iter()
                        .map(|f| {
                            let field = InputField {
                                dataset: dataset.clone(),
                                field: f.name().clone(),
                            };
                            Deps::from([(field, BTreeSet::from([Use::IDENTITY]))])
                        })
                        .collect(),
                    dataset: Deps::new(),
                }
            }
        };
        let mut dataset = all.dataset;
        // Filters pushed into the scan name the source's columns.
        for filter in filters {
            for column in filter.column_refs() {
                let Ok(i) = schema.index_of(&column.name) else {
                    return plan_err!(
                        "lineage: the filter of the scan of {table} names {column}, which it lacks"
                    );
                };
                merge(&mut dataset, &all.columns[i], Use::of(Transform::Filter));
            }
        }
        let columns = match projection {
            Some(indices) => indices.iter().map(|&i| all.columns[i].clone()).collect(),
            None => all.columns,
        };
        Ok(Flow { columns, dataset })
    }

    /// Kiln's own logical nodes; any other extension keeps the columns it
    /// passes through (found by qualified name in an input) and computes
    /// the rest from all its inputs.
    fn extension(
        &mut self,
        plan: &LogicalPlan,
        extension: &datafusion::logical_expr::Extension,
        outer: &[Frame],
    ) -> Result<Flow> {
        let node = extension.node.as_any();
        let inputs: Vec<&LogicalPlan> = extension.node.inputs();
        let mut flows = Vec::with_capacity(inputs.len());
        for input in &inputs {
            flows.push(self.plan(input, outer)?);
        }
        let mut dataset = Deps::new();
        for flow in &flows {
            merge(&mut dataset, &flow.dataset, Use::IDENTITY);
        }
        let column = |flow: &Flow, i: usize| -> Result<Deps> {
            match flow.columns.get(i) {
                Some(deps) => Ok(deps.clone()),
                None => plan_err!("lineage: {} has no column {i}", plan.display()),
            }
        };
        let join = Use::of(Transform::Join);
        let computed = Use::of(Transform::Transformation);
        if let (Some(asof), [left, right]) = (node.downcast_ref::<AsofJoinNode>(), &flows[..]) {
            let (spec, _) = asof.spec();
            for (i, side) in spec
                .left_keys
                .iter()
                .chain([&spec.left_time])
                .map(|&i| (i, left))
                .chain(
                    spec.right_keys
                        .iter()
                        .chain([&spec.right_time])
                        .map(|&i| (i, right)),
                )
            {
                merge(&mut dataset, &column(side, i)?, join);
            }
            let mut columns = left.columns.clone();
            for &i in &spec.right_output {
                columns.push(column(right, i)?);
            }
            return Ok(Flow { columns, dataset });
        }
        if let (Some(knn), [queries, corpus]) = (node.downcast_ref::<KnnJoinNode>(), &flows[..]) {
            let query = column(queries, knn.query_index())?;
            let vector = column(corpus, knn.corpus_index())?;
            merge(&mut dataset, &query, join);
            merge(&mut dataset, &vector, join);
            let mut scored = Deps::new();
            merge(&mut scored, &query, computed);
            merge(&mut scored, &vector, computed);
            let mut columns: Vec<Deps> = queries
                .columns
                .iter()
                .chain(&corpus.columns)
                .cloned()
                .collect();
            // rank and score.
            columns.push(scored.clone());
            columns.push(scored);
            return Ok(Flow { columns, dataset });
        }
        if let (Some(topk), [input]) = (node.downcast_ref::<VectorTopKNode>(), &flows[..]) {
            let i = topk.input().schema().index_of_column(topk.column())?;
            let vector = column(input, i)?;
            merge(&mut dataset, &vector, Use::of(Transform::Sort));
            let mut columns = input.columns.clone();
            if topk.score().is_some() {
                let mut scored = Deps::new();
                merge(&mut scored, &vector, computed);
                columns.push(scored);
            }
            return Ok(Flow { columns, dataset });
        }
        let mut columns = Vec::new();
        for (qualifier, field) in plan.schema().iter() {
            let column = Column::new(qualifier.cloned(), field.name());
            let passed = inputs.iter().zip(&flows).find_map(|(input, flow)| {
                let i = input.schema().maybe_index_of_column(&column)?;
                flow.columns.get(i).cloned()
            });
            columns.push(match passed {
                Some(deps) => deps,
                None => {
                    let mut all = Deps::new();
                    for flow in &flows {
                        for deps in &flow.columns {
                            merge(&mut all, deps, computed);
                        }
                    }
                    all
                }
            });
        }
        Ok(Flow { columns, dataset })
    }

    /// The dependencies of each of `exprs`, evaluated over `input`.
    fn exprs(
        &mut self,
        exprs: &[Expr],
        input: &Flow,
        input_plan: &LogicalPlan,
        outer: &[Frame],
    ) -> Result<Vec<Deps>> {
        exprs
            .iter()
            .map(|e| self.expr_deps(e, Use::IDENTITY, input, input_plan, outer))
            .collect()
    }

    fn expr_deps(
        &mut self,
        expr: &Expr,
        role: Use,
        input: &Flow,
        input_plan: &LogicalPlan,
        outer: &[Frame],
    ) -> Result<Deps> {
        self.expr_deps_in(expr, role, input, input_plan.schema(), outer)
    }

    fn expr_deps_in(
        &mut self,
        expr: &Expr,
        role: Use,
        input: &Flow,
        schema: &DFSchema,
        outer: &[Frame],
    ) -> Result<Deps> {
        let mut scope: Vec<Frame> = outer.to_vec();
        scope.push(Frame {
            schema,
            columns: &input.columns,
        });
        let mut deps = Deps::new();
        self.expr(expr, role, &scope, &mut deps)?;
        Ok(deps)
    }

    /// Adds to `out` what `expr` reads, used as `role`. The last frame of
    /// `scope` is the expression's own input.
    fn expr(&mut self, expr: &Expr, role: Use, scope: &[Frame], out: &mut Deps) -> Result<()> {
        let Some(own) = scope.last() else {
            return plan_err!("lineage: an expression without an input");
        };
        let conditional = role.then(Use::of(Transform::Conditional));
        match expr {
            Expr::Column(column) => {
                let Some(i) = own.schema.maybe_index_of_column(column) else {
                    return plan_err!("lineage: column {column} is not in its input");
                };
                merge(out, &own.columns[i], role);
            }
            Expr::OuterReferenceColumn(_, column) => {
                let found = scope[..scope.len() - 1].iter().rev().find_map(|frame| {
                    let i = frame.schema.maybe_index_of_column(column)?;
                    Some(&frame.columns[i])
                });
                let Some(deps) = found else {
                    return plan_err!(
                        "lineage: outer column {column} is not in any enclosing input"
                    );
                };
                merge(out, deps, role);
            }
            Expr::Alias(alias) => self.expr(&alias.expr, role, scope, out)?,
            Expr::Cast(cast) => self.expr(&cast.expr, role, scope, out)?,
            Expr::TryCast(cast) => self.expr(&cast.expr, role, scope, out)?,
            Expr::Case(Case {
                expr: operand,
                when_then_expr,
                else_expr,
            }) => {
                if let Some(operand) = operand {
                    self.expr(operand, conditional, scope, out)?;
                }
                for (when, then) in when_then_expr {
                    self.expr(when, conditional, scope, out)?;
                    self.expr(then, role.computed(), scope, out)?;
                }
                if let Some(otherwise) = else_expr {
                    self.expr(otherwise, role.computed(), scope, out)?;
                }
            }
            Expr::AggregateFunction(AggregateFunction { func, params }) => {
                let aggregated = role.then(Use {
                    transform: Transform::Aggregation,
                    masking: masks(func.name()),
                });
                for arg in &params.args {
                    self.expr(arg, aggregated, scope, out)?;
                }
                if let Some(filter) = &params.filter {
                    self.expr(filter, conditional, scope, out)?;
                }
                for key in &params.order_by {
                    self.expr(&key.expr, role.then(Use::of(Transform::Sort)), scope, out)?;
                }
            }
            Expr::WindowFunction(window) => {
                let WindowFunction { fun, params } = window.as_ref();
                let through = match fun {
                    WindowFunctionDefinition::AggregateUDF(f) => Use {
                        transform: Transform::Aggregation,
                        masking: masks(f.name()),
                    },
                    WindowFunctionDefinition::WindowUDF(_) => Use::of(Transform::Transformation),
                };
                for arg in &params.args {
                    self.expr(arg, role.then(through), scope, out)?;
                }
                let windowed = role.then(Use::of(Transform::Window));
                for key in &params.partition_by {
                    self.expr(key, windowed, scope, out)?;
                }
                for key in &params.order_by {
                    self.expr(&key.expr, windowed, scope, out)?;
                }
                if let Some(filter) = &params.filter {
                    self.expr(filter, conditional, scope, out)?;
                }
            }
            Expr::ScalarFunction(function) => {
                let through = Use {
                    transform: Transform::Transformation,
                    masking: masks(function.name()),
                };
                for arg in &function.args {
                    self.expr(arg, role.then(through), scope, out)?;
                }
            }
            // A subquery left in an expression (DataFusion evaluates an
            // uncorrelated scalar subquery once): its value is used as the
            // expression uses it; what decides its own rows keeps its kind
            // (its joins stay joins, its filters filters).
            Expr::ScalarSubquery(subquery) => {
                let flow = self.plan(&subquery.subquery, scope)?;
                for column in &flow.columns {
                    merge(out, column, role);
                }
                merge(out, &flow.dataset, Use::IDENTITY);
            }
            Expr::Exists(exists) => {
                let flow = self.plan(&exists.subquery.subquery, scope)?;
                merge(out, &flow.dataset, Use::IDENTITY);
            }
            Expr::InSubquery(within) => {
                self.expr(&within.expr, role.computed(), scope, out)?;
                let flow = self.plan(&within.subquery.subquery, scope)?;
                for column in &flow.columns {
                    merge(out, column, role.computed());
                }
                merge(out, &flow.dataset, Use::IDENTITY);
            }
            Expr::SetComparison(compared) => {
                self.expr(&compared.expr, role.computed(), scope, out)?;
                let flow = self.plan(&compared.subquery.subquery, scope)?;
                for column in &flow.columns {
                    merge(out, column, role.computed());
                }
                merge(out, &flow.dataset, Use::IDENTITY);
            }
            // Anything else computes its value from its operands.
            other => {
                let mut failed = None;
                other.apply_children(|child| {
                    if let Err(e) = self.expr(child, role.computed(), scope, out) {
                        failed = Some(e);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
                if let Some(e) = failed {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// A mark join's flag: whether a row found a match, computed from the keys.
fn marked(keys: &Deps) -> Deps {
    let mut mark = Deps::new();
    for (field, _) in keys.iter() {
        mark.entry(field.clone())
            .or_default()
            .insert(Use::of(Transform::Transformation));
    }
    mark
}

trait ExtendUses {
    fn extend_uses(&mut self, other: Deps);
}

impl ExtendUses for Deps {
    fn extend_uses(&mut self, other: Deps) {
        for (field, uses) in other {
            self.entry(field).or_default().extend(uses);
        }
    }
}

/// Functions whose result hides the values it is computed from: hashes,
/// and counts (OpenLineage's `masking`).
fn masks(function: &str) -> bool {
    matches!(
        function.to_ascii_lowercase().as_str(),
        "md5" | "sha224" | "sha256" | "sha384" | "sha512" | "digest" | "count" | "approx_distinct"
    )
}
