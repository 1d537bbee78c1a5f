//! Near-duplicate detection as table functions, planned as ordinary
//! DataFusion plans (so they stream, repartition and run on a cluster like
//! any join):
//!
//! - `near_duplicates(table, key, text, threshold [, num_perm [, ngram [,
//!   unit]]])`: the pairs `(id_a, id_b, similarity)`, `id_a < id_b`, whose
//!   texts' estimated Jaccard similarity (MinHash, `num_perm` permutations,
//!   default 128; shingles of `ngram` units, default 5 words) is at least
//!   `threshold`. Candidates come from LSH banding (bands and rows chosen
//!   as datasketch's `MinHashLSH` chooses them); every candidate is checked
//!   against the threshold, so no pair below it is reported, and a pair
//!   above it is missed only when no band of its signatures agrees (the
//!   false-negative rate of the banding).
//! - `near_duplicate_clusters(table, key, text, threshold [, …])`: every
//!   row's key and `cluster_id`, the least key of its connected component
//!   in the graph of those pairs (a row without near-duplicates is its own
//!   cluster): `WHERE key = cluster_id` keeps one row of each cluster.
//! - `semantic_duplicates(table, key, vectors, threshold [, k])`: the pairs
//!   whose vectors' cosine similarity is at least `threshold`, by the exact
//!   kNN join of the table with itself (each row's `k` nearest, default 10:
//!   a row with more near-duplicates than that keeps its k nearest).
//!
//! Rows whose key or text is NULL, and texts without words, are no one's
//! near-duplicates. Keys should be unique: rows sharing a key are one node.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, JoinType, Result, ScalarValue, plan_err};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionState;
use datafusion::functions::core::expr_fn::{coalesce, get_field};
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::{
    AggregateUDF, Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast, lit, when,
};
use kiln_engine::functions::minhash::DEFAULT_NGRAM;
use kiln_engine::functions::{
    ConnectedComponentsUdaf, MinHashBandsUdf, MinHashSimilarityUdf, MinHashUdf,
};
use kiln_engine::text::minhash::{MAX_PERM, Unit, optimal_bands};
use kiln_kernels::ops::vector::Metric;

use crate::vector_search::{
    KnnJoinNode, PlannedTable, constant, fixed_dim, name_arg, session_state, table, vector_column,
};

/// The default number of permutations (datasketch's).
pub const DEFAULT_NUM_PERM: usize = 128;

/// The default `k` of `semantic_duplicates`.
pub const DEFAULT_SEMANTIC_K: usize = 10;

/// How texts are compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dedup {
    pub threshold: f64,
    pub num_perm: usize,
    pub ngram: usize,
    pub unit: Unit,
}

impl Dedup {
    /// Defaults for everything but the threshold, which must be in (0, 1].
    pub fn new(threshold: f64) -> Result<Dedup> {
        check_threshold(threshold, "near_duplicates")?;
        Ok(Dedup {
            threshold,
            num_perm: DEFAULT_NUM_PERM,
            ngram: DEFAULT_NGRAM,
            unit: Unit::Word,
        })
    }
}

fn check_threshold(threshold: f64, func: &str) -> Result<()> {
    if !(threshold > 0.0 && threshold <= 1.0) {
        return plan_err!("{func}: threshold must be in (0, 1], not {threshold}");
    }
    Ok(())
}

// Names inside the plans (not seen in the output).
const KEY: &str = "__kiln_key";
const SIG: &str = "__kiln_signature";
const BAND: &str = "__kiln_band";
const COMPONENTS: &str = "__kiln_components";
const NODE: &str = "__kiln_node";
const COMPONENT: &str = "__kiln_component";

fn named(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

fn qualified(relation: &str, name: &str) -> Expr {
    Expr::Column(Column::new(Some(relation), name))
}

/// The column of `plan` named `name` (unqualified, exactly as written):
/// its expression, type and index.
fn column_of(
    plan: &LogicalPlan,
    name: &str,
    func: &str,
    what: &str,
) -> Result<(Expr, DataType, usize)> {
    let found = plan
        .schema()
        .iter()
        .enumerate()
        .find(|(_, (_, field))| field.name() == name);
    if let Some((index, (qualifier, field))) = found {
        return Ok((
            Expr::Column(Column::new(qualifier.cloned(), name)),
            field.data_type().clone(),
            index,
        ));
    }
    let names: Vec<&str> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    plan_err!(
        "{func}: no {what} column '{name}' (columns: {})",
        names.join(", ")
    )
}

/// A key as its values: a dictionary-encoded key (a Hive partition
/// column) cast to its value type.
fn plain(key: Expr, key_type: &DataType) -> Expr {
    match key_type {
        DataType::Dictionary(_, values) => cast(key, values.as_ref().clone()),
        _ => key,
    }
}

/// The rows of `input` with a key and a text, as `(KEY, SIG)`, a row per
/// LSH band with `BAND` added.
fn banded(input: LogicalPlan, key: &str, text: &str, dedup: &Dedup) -> Result<LogicalPlan> {
    const F: &str = "near_duplicates";
    let (key, key_type, _) = column_of(&input, key, F, "key")?;
    let key = plain(key, &key_type);
    let (text, text_type, _) = column_of(&input, text, F, "text")?;
    if !matches!(
        text_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return plan_err!("{F}: the text column must be a string, not {text_type}");
    }
    if dedup.num_perm == 0 || dedup.num_perm > MAX_PERM {
        return plan_err!(
            "{F}: num_perm must be between 1 and {MAX_PERM}, not {}",
            dedup.num_perm
        );
    }
    let (bands, rows) = optimal_bands(dedup.threshold, dedup.num_perm);
    let unit = match dedup.unit {
        Unit::Word => "word",
        Unit::Char => "char",
    };
    let signature = ScalarUDF::from(MinHashUdf::new()).call(vec![
        text.clone(),
        lit(dedup.num_perm as i64),
        lit(dedup.ngram as i64),
        lit(unit),
    ]);
    let band = ScalarUDF::from(MinHashBandsUdf::new()).call(vec![
        named(SIG),
        lit(bands as i64),
        lit(rows as i64),
    ]);
    LogicalPlanBuilder::from(input)
        .filter(key.clone().is_not_null().and(text.is_not_null()))?
        .project(vec![key.alias(KEY), signature.alias(SIG)])?
        .project(vec![named(KEY), named(SIG), band.alias(BAND)])?
        .unnest_column(BAND)?
        .build()
}

/// The pairs `(id_a, id_b, similarity)` of [`module docs`](self).
pub fn near_duplicate_pairs(
    input: LogicalPlan,
    key: &str,
    text: &str,
    dedup: &Dedup,
) -> Result<LogicalPlan> {
    check_threshold(dedup.threshold, "near_duplicates")?;
    let banded = banded(input, key, text, dedup)?;
    let right = LogicalPlanBuilder::from(banded.clone())
        .alias("b")?
        .build()?;
    let similarity = ScalarUDF::from(MinHashSimilarityUdf::new())
        .call(vec![qualified("a", SIG), qualified("b", SIG)]);
    LogicalPlanBuilder::from(banded)
        .alias("a")?
        .join(
            right,
            JoinType::Inner,
            (
                vec![Column::new(Some("a"), BAND)],
                vec![Column::new(Some("b"), BAND)],
            ),
            Some(qualified("a", KEY).lt(qualified("b", KEY))),
        )?
        .project(vec![
            qualified("a", KEY).alias("id_a"),
            qualified("b", KEY).alias("id_b"),
            similarity.alias("similarity"),
        ])?
        .filter(named("similarity").gt_eq(lit(dedup.threshold)))?
        // A pair is found once per band its signatures share.
        .aggregate(
            vec![named("id_a"), named("id_b")],
            vec![max(named("similarity")).alias("similarity")],
        )?
        .build()
}

/// Every keyed row's key and its cluster (see the [module docs](self));
/// the cluster column is `cluster_id` (`near_duplicate_cluster_id` when
/// the key is itself named `cluster_id`).
pub fn near_duplicate_clusters(
    input: LogicalPlan,
    key: &str,
    text: &str,
    dedup: &Dedup,
) -> Result<LogicalPlan> {
    let pairs = near_duplicate_pairs(input.clone(), key, text, dedup)?;
    clusters_of(input, key, pairs)
}

/// Every keyed row of `input` with the least key of its component in the
/// graph of `pairs` (`id_a`, `id_b`).
fn clusters_of(input: LogicalPlan, key: &str, pairs: LogicalPlan) -> Result<LogicalPlan> {
    let components =
        AggregateUDF::from(ConnectedComponentsUdaf::new()).call(vec![named("id_a"), named("id_b")]);
    let components = LogicalPlanBuilder::from(pairs)
        .aggregate(Vec::<Expr>::new(), vec![components.alias(COMPONENTS)])?
        .unnest_column(COMPONENTS)?
        .project(vec![
            get_field(named(COMPONENTS), "node").alias(NODE),
            get_field(named(COMPONENTS), "component").alias(COMPONENT),
        ])?
        .build()?;
    let (key_expr, key_type, _) = column_of(&input, key, "near_duplicate_clusters", "key")?;
    let key_expr = plain(key_expr, &key_type);
    let cluster = if key == "cluster_id" {
        "near_duplicate_cluster_id"
    } else {
        "cluster_id"
    };
    LogicalPlanBuilder::from(input)
        .filter(key_expr.clone().is_not_null())?
        .project(vec![key_expr.alias(KEY)])?
        .join(
            components,
            JoinType::Left,
            (vec![Column::from_name(KEY)], vec![Column::from_name(NODE)]),
            None,
        )?
        .project(vec![
            named(KEY).alias(key),
            coalesce(vec![named(COMPONENT), named(KEY)]).alias(cluster),
        ])?
        .build()
}

/// The rows of `input` but those whose cluster is another row's key: one
/// row of each cluster of near-duplicates (its least key), and every row
/// without a key or text.
pub fn drop_near_duplicates(
    input: LogicalPlan,
    key: &str,
    text: &str,
    dedup: &Dedup,
) -> Result<LogicalPlan> {
    let clusters = near_duplicate_clusters(input.clone(), key, text, dedup)?;
    let cluster = clusters.schema().field(1).name().clone();
    let dropped = LogicalPlanBuilder::from(clusters)
        .filter(named(key).not_eq(named(&cluster)))?
        .project(vec![named(key).alias(KEY)])?
        .build()?;
    let (key_column, _, _) = column_of(&input, key, "drop_near_duplicates", "key")?;
    let Expr::Column(key_column) = key_column else {
        return plan_err!("drop_near_duplicates: the key must be a column");
    };
    LogicalPlanBuilder::from(input)
        .join(
            dropped,
            JoinType::LeftAnti,
            (vec![key_column], vec![Column::from_name(KEY)]),
            None,
        )?
        .build()
}

/// The pairs whose vectors' cosine similarity is at least `threshold`,
/// from the exact kNN join of `input` with itself.
pub fn semantic_duplicate_pairs(
    input: LogicalPlan,
    table_name: &str,
    key: &str,
    vectors: &str,
    threshold: f64,
    k: usize,
) -> Result<LogicalPlan> {
    const F: &str = "semantic_duplicates";
    check_threshold(threshold, F)?;
    if k == 0 {
        return plan_err!("{F}: k must be at least 1");
    }
    let schema = input.schema().as_arrow().clone();
    let (vector_index, field) = vector_column(&schema, table_name, vectors, F)?;
    let (_, _, key_index) = column_of(&input, key, F, "key")?;
    let width = schema.fields().len();
    let node = KnnJoinNode::try_new(
        input.clone(),
        vector_index,
        input,
        vector_index,
        fixed_dim(&field).unwrap_or(0),
        Metric::Cosine,
        // Each row finds itself first.
        k + 1,
    )?;
    let plan = LogicalPlan::Extension(datafusion::logical_expr::Extension {
        node: Arc::new(node),
    });
    let column = |i: usize| Expr::Column(Column::from(plan.schema().qualified_field(i)));
    let (query_key, corpus_key) = (column(key_index), column(width + key_index));
    let score = column(plan.schema().fields().len() - 1);
    LogicalPlanBuilder::from(plan.clone())
        .filter(
            query_key
                .clone()
                .not_eq(corpus_key.clone())
                .and(score.clone().gt_eq(lit(threshold as f32))),
        )?
        .project(vec![
            when(query_key.clone().lt(corpus_key.clone()), query_key.clone())
                .otherwise(corpus_key.clone())?
                .alias("id_a"),
            when(query_key.clone().lt(corpus_key.clone()), corpus_key)
                .otherwise(query_key)?
                .alias("id_b"),
            cast(score, DataType::Float64).alias("similarity"),
        ])?
        // Found from both ends when each is among the other's nearest.
        .aggregate(
            vec![named("id_a"), named("id_b")],
            vec![max(named("similarity")).alias("similarity")],
        )?
        .build()
}

/// Argument `i` as a constant positive integer (an integer literal, not a
/// float or a string).
fn int_arg(
    state: &SessionState,
    exprs: &[Expr],
    i: usize,
    func: &str,
    what: &str,
) -> Result<Option<usize>> {
    let Some(expr) = exprs.get(i) else {
        return Ok(None);
    };
    let value = constant(state, expr, func, what)?;
    if value.data_type().is_integer()
        && let Ok(ScalarValue::Int64(Some(v))) = value.cast_to(&DataType::Int64)
        && v >= 1
    {
        return Ok(Some(v as usize));
    }
    plan_err!("{func}: {what} must be a positive integer, got {value}")
}

fn threshold_arg(state: &SessionState, expr: &Expr, func: &str) -> Result<f64> {
    let value = constant(state, expr, func, "the threshold")?;
    match value.cast_to(&DataType::Float64) {
        Ok(ScalarValue::Float64(Some(t))) => {
            check_threshold(t, func)?;
            Ok(t)
        }
        _ => plan_err!("{func}: threshold must be a number in (0, 1], got {value}"),
    }
}

fn arity(exprs: &[Expr], func: &str, signature: &str, min: usize, max: usize) -> Result<()> {
    if exprs.len() < min || exprs.len() > max {
        return plan_err!("{func} takes {signature}, got {} arguments", exprs.len());
    }
    Ok(())
}

/// The table scanned, and the arguments of a MinHash table function.
fn minhash_args(
    args: &TableFunctionArgs,
    func: &str,
) -> Result<(LogicalPlan, String, String, Dedup)> {
    let exprs = args.exprs();
    arity(
        exprs,
        func,
        "(table, key, text, threshold [, num_perm [, ngram [, unit]]])",
        4,
        7,
    )?;
    let state = session_state(args.session())?;
    let table_name = name_arg(&exprs[0], func, "the table")?;
    let provider = table(state, &table_name, func)?;
    let key = name_arg(&exprs[1], func, "the key column")?;
    let text = name_arg(&exprs[2], func, "the text column")?;
    let mut dedup = Dedup::new(threshold_arg(state, &exprs[3], func)?)?;
    if let Some(n) = int_arg(state, exprs, 4, func, "num_perm")? {
        dedup.num_perm = n;
    }
    if let Some(n) = int_arg(state, exprs, 5, func, "ngram")? {
        dedup.ngram = n;
    }
    if let Some(expr) = exprs.get(6) {
        let unit = name_arg(expr, func, "the unit")?;
        dedup.unit = match Unit::parse(&unit) {
            Some(u) => u,
            None => return plan_err!("{func}: unit must be 'word' or 'char', not '{unit}'"),
        };
    }
    let input = LogicalPlanBuilder::scan(table_name.as_str(), provider_as_source(provider), None)?
        .build()?;
    Ok((input, key, text, dedup))
}

/// `near_duplicates(table, key, text, threshold [, num_perm [, ngram [, unit]]])`.
#[derive(Debug, Default)]
pub struct NearDuplicatesFunction;

impl TableFunctionImpl for NearDuplicatesFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (input, key, text, dedup) = minhash_args(&args, "near_duplicates")?;
        Ok(PlannedTable::from_plan(near_duplicate_pairs(
            input, &key, &text, &dedup,
        )?))
    }
}

/// `near_duplicate_clusters(table, key, text, threshold [, num_perm [, ngram [, unit]]])`.
#[derive(Debug, Default)]
pub struct NearDuplicateClustersFunction;

impl TableFunctionImpl for NearDuplicateClustersFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let (input, key, text, dedup) = minhash_args(&args, "near_duplicate_clusters")?;
        Ok(PlannedTable::from_plan(near_duplicate_clusters(
            input, &key, &text, &dedup,
        )?))
    }
}

/// `semantic_duplicates(table, key, vectors, threshold [, k])`.
#[derive(Debug, Default)]
pub struct SemanticDuplicatesFunction;

impl TableFunctionImpl for SemanticDuplicatesFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        const F: &str = "semantic_duplicates";
        let exprs = args.exprs();
        arity(exprs, F, "(table, key, vectors, threshold [, k])", 4, 5)?;
        let state = session_state(args.session())?;
        let table_name = name_arg(&exprs[0], F, "the table")?;
        let provider = table(state, &table_name, F)?;
        let key = name_arg(&exprs[1], F, "the key column")?;
        let vectors = name_arg(&exprs[2], F, "the vector column")?;
        let threshold = threshold_arg(state, &exprs[3], F)?;
        let k = int_arg(state, exprs, 4, F, "k")?.unwrap_or(DEFAULT_SEMANTIC_K);
        let input =
            LogicalPlanBuilder::scan(table_name.as_str(), provider_as_source(provider), None)?
                .build()?;
        Ok(PlannedTable::from_plan(semantic_duplicate_pairs(
            input,
            &table_name,
            &key,
            &vectors,
            threshold,
            k,
        )?))
    }
}
