//! Kiln's additions to DataFusion's lazy `DataFrame`.

use datafusion::common::Column;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, ScalarUDF, UserDefinedLogicalNode};
use datafusion::prelude::{DataFrame, lit};
use kiln_engine::functions::{ChunkUdf, EmbedUdf, MaskPiiUdf};
use kiln_engine::model::DEFAULT_MODEL;
use kiln_kernels::ops::vector::Metric;
use kiln_planner::asof_join::AsofOptions;
use kiln_planner::vector_search::{knn_join_node, vector_search_node};

pub use kiln_planner::near_duplicates::Dedup;

use crate::error::{KilnError, Result};

/// Methods Kiln adds to `DataFrame`.
pub trait KilnDataFrameExt: Sized {
    /// Adds column `output`: the embedding of text column `column` by
    /// `model` (a name or a directory; default all-MiniLM-L6-v2), as
    /// `FixedSizeList<Float32, dim>`. NULL text gives NULL.
    fn embed(self, column: &str, model: Option<&str>, output: &str) -> Result<Self>;

    /// One row per chunk of text column `column` (SQL `chunk_text`): the
    /// other columns, then `chunk`, `chunk_start`, `chunk_end` (character
    /// offsets into the text) and `chunk_tokens`; the text column itself is
    /// dropped. Chunks hold at most `max_tokens` tokens of `model`'s
    /// tokenizer (default all-MiniLM-L6-v2), the last `overlap` of each
    /// repeated by the next. NULL and empty texts give no rows.
    fn chunk(
        self,
        column: &str,
        max_tokens: usize,
        overlap: usize,
        model: Option<&str>,
    ) -> Result<Self>;

    /// [`chunk`](Self::chunk) with a budget of characters (SQL
    /// `chunk_text(text, max_chars => N, overlap_chars => M)`): chunks of at
    /// most `max_chars` characters, the last `overlap` repeated by the next;
    /// the size column is `chunk_chars`.
    fn chunk_chars(self, column: &str, max_chars: usize, overlap: usize) -> Result<Self>;

    /// The pairs of rows whose text columns are near-duplicates (SQL
    /// `near_duplicates`): `id_a`, `id_b` (values of column `key`,
    /// `id_a < id_b`) and `similarity`, their texts' estimated Jaccard
    /// similarity, at least `threshold` (in (0, 1]). MinHash with 128
    /// permutations over 5-word shingles; [`Dedup`] sets others.
    fn near_duplicates(self, key: &str, text: &str, dedup: &Dedup) -> Result<Self>;

    /// The rows, near-duplicates dropped: of each cluster of rows whose
    /// texts are near-duplicates (connected by pairs of
    /// [`near_duplicates`](Self::near_duplicates)), the row with the least
    /// key is kept; rows without a key or text are kept.
    fn drop_near_duplicates(self, key: &str, text: &str, dedup: &Dedup) -> Result<Self>;

    /// Text column `column` with personal data and secrets masked in place
    /// (SQL `mask_pii`): `types` a comma-separated list of kinds (`None`:
    /// all), `mode` `"redact"`, `"mask"` or `"hash"` (`None`: redact; hash
    /// needs `kiln.pii_salt`).
    fn mask_pii(self, column: &str, types: Option<&str>, mode: Option<&str>) -> Result<Self>;

    /// The profile of these rows (SQL `profile`): one row per column with
    /// its counts, approximate distinct count, min/max, mean, standard
    /// deviation and quantiles (numeric), length statistics (text), norm
    /// statistics (vectors) and its `top` most frequent values. Computed
    /// when the frame runs.
    fn profile(self, top: usize) -> Result<Self>;

    /// How `current` drifted from these rows, the reference (SQL `drift`):
    /// one row per column (`columns`, or all when empty) with the test
    /// Evidently chooses for it, the statistic, p-value or distance, the
    /// threshold, the verdict and PSI. Computed when the frame runs.
    fn drift(self, current: DataFrame, columns: &[&str]) -> Result<Self>;

    /// Where each column of these rows comes from: per output column, the
    /// input columns (dataset, column) it is computed from and how
    /// (identity, transformation, aggregation; conditional, window), and
    /// what decides the rows (filter, join, group by, sort), traced on the
    /// optimized plan (see [`crate::lineage`]). Runs nothing.
    fn lineage(&self) -> Result<kiln_planner::lineage::Lineage>;

    /// The as-of (point-in-time) join of these rows (events) with `right`
    /// (features): for each row, the latest `right` row with equal keys
    /// `by` (left name, right name) whose time `on.1` is at or before the
    /// row's `on.0` — never a later one. Every column of these rows, then
    /// `right`'s but its keys (a name taken suffixed `_right`). A sort-merge
    /// join over key partitions: sorts spill, so neither side need fit in
    /// memory. NULL keys and times never match.
    fn asof_join(
        self,
        right: DataFrame,
        by: &[(&str, &str)],
        on: (&str, &str),
        options: AsofOptions,
    ) -> Result<Self>;

    /// The `k` rows closest to `query` by the vector column `column` (SQL
    /// `vector_search`): all columns and `score`, closest first; rows
    /// without a vector are skipped. Exact, ties by input order.
    fn vector_search(self, column: &str, query: &[f32], k: usize, metric: Metric) -> Result<Self>;

    /// For every row, its `k` nearest rows of `corpus` by the vector columns
    /// `column` and `corpus_column` (SQL `knn_join`): this frame's columns,
    /// the corpus's (clashing names prefixed `corpus_`), `rank` and `score`.
    fn knn_join(
        self,
        column: &str,
        corpus: DataFrame,
        corpus_column: &str,
        k: usize,
        metric: Metric,
    ) -> Result<Self>;
}

/// The columns [`KilnDataFrameExt::chunk`] adds, and the struct fields they
/// come from (the size last).
const CHUNK_COLUMNS: [(&str, &str); 4] = [
    ("chunk", "chunk"),
    ("start", "chunk_start"),
    ("end", "chunk_end"),
    ("tokens", "chunk_tokens"),
];

/// The size column of [`KilnDataFrameExt::chunk_chars`].
const CHAR_SIZE_COLUMN: (&str, &str) = ("chars", "chunk_chars");

/// A row per chunk: `frame`'s columns but `column`, then the fields of
/// `call`'s chunk structs as `columns` name them.
fn unnest_chunks(
    frame: DataFrame,
    column: &str,
    call: Expr,
    columns: &[(&str, &str)],
) -> Result<DataFrame> {
    use datafusion::functions::core::expr_fn::get_field;
    const CHUNKS: &str = "__kiln_chunks";
    let others: Vec<Expr> = frame
        .schema()
        .iter()
        .filter(|(_, f)| f.name() != column)
        .map(|(q, f)| Expr::Column(Column::from((q, f))))
        .collect();
    for (_, name) in columns {
        if frame.schema().field_with_unqualified_name(name).is_ok() && *name != column {
            return Err(KilnError::Usage(format!(
                "the input already has a column '{name}', which chunking adds"
            )));
        }
    }
    let unnested = frame
        .select(others.into_iter().chain([call.alias(CHUNKS)]))?
        .unnest_columns(&[CHUNKS])?;
    let kept: Vec<Expr> = unnested
        .schema()
        .iter()
        .filter(|(_, f)| f.name() != CHUNKS)
        .map(|(q, f)| Expr::Column(Column::from((q, f))))
        .collect();
    let chunks = Expr::Column(Column::from_name(CHUNKS));
    let added = columns
        .iter()
        .map(|(field, name)| get_field(chunks.clone(), *field).alias(*name));
    Ok(unnested.select(kept.into_iter().chain(added))?)
}

/// `plan` as a frame of `state`.
fn extension(
    state: datafusion::execution::SessionState,
    node: impl UserDefinedLogicalNode + 'static,
) -> DataFrame {
    let plan = LogicalPlan::Extension(Extension {
        node: std::sync::Arc::new(node),
    });
    DataFrame::new(state, plan)
}

impl KilnDataFrameExt for DataFrame {
    fn embed(self, column: &str, model: Option<&str>, output: &str) -> Result<DataFrame> {
        let udf = ScalarUDF::from(EmbedUdf::new());
        let call = udf.call(vec![
            // The name exactly as given: no identifier parsing or case folding.
            Expr::Column(Column::from_name(column)),
            lit(model.unwrap_or(DEFAULT_MODEL)),
        ]);
        Ok(self.with_column(output, call)?)
    }

    fn chunk(
        self,
        column: &str,
        max_tokens: usize,
        overlap: usize,
        model: Option<&str>,
    ) -> Result<DataFrame> {
        let call = ScalarUDF::from(ChunkUdf::new()).call(vec![
            Expr::Column(Column::from_name(column)),
            lit(max_tokens as i64),
            lit(overlap as i64),
            lit(model.unwrap_or(DEFAULT_MODEL)),
        ]);
        unnest_chunks(self, column, call, &CHUNK_COLUMNS)
    }

    fn chunk_chars(self, column: &str, max_chars: usize, overlap: usize) -> Result<DataFrame> {
        let call = ScalarUDF::from(ChunkUdf::chars()).call(vec![
            Expr::Column(Column::from_name(column)),
            lit(max_chars as i64),
            lit(overlap as i64),
        ]);
        let mut columns = CHUNK_COLUMNS;
        columns[3] = CHAR_SIZE_COLUMN;
        unnest_chunks(self, column, call, &columns)
    }

    fn near_duplicates(self, key: &str, text: &str, dedup: &Dedup) -> Result<DataFrame> {
        let (state, plan) = self.into_parts();
        let plan = kiln_planner::near_duplicates::near_duplicate_pairs(plan, key, text, dedup)?;
        Ok(DataFrame::new(state, plan))
    }

    fn drop_near_duplicates(self, key: &str, text: &str, dedup: &Dedup) -> Result<DataFrame> {
        let (state, plan) = self.into_parts();
        let plan = kiln_planner::near_duplicates::drop_near_duplicates(plan, key, text, dedup)?;
        Ok(DataFrame::new(state, plan))
    }

    fn mask_pii(self, column: &str, types: Option<&str>, mode: Option<&str>) -> Result<DataFrame> {
        let call = ScalarUDF::from(MaskPiiUdf::new()).call(vec![
            Expr::Column(Column::from_name(column)),
            lit(types.unwrap_or("all")),
            lit(mode.unwrap_or("redact")),
        ]);
        let columns: Vec<Expr> = self
            .schema()
            .iter()
            .map(|(q, f)| {
                if f.name() == column {
                    call.clone().alias(column)
                } else {
                    Expr::Column(Column::from((q, f)))
                }
            })
            .collect();
        if self.schema().field_with_unqualified_name(column).is_err() {
            return Err(KilnError::Usage(format!("mask_pii: no column '{column}'")));
        }
        Ok(self.select(columns)?)
    }

    fn profile(self, top: usize) -> Result<Self> {
        let (state, plan) = self.into_parts();
        let table = kiln_planner::profile::ProfileTable::new(plan, top);
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            "profile",
            datafusion::datasource::provider_as_source(std::sync::Arc::new(table)),
            None,
        )?
        .build()?;
        Ok(DataFrame::new(state, plan))
    }

    fn asof_join(
        self,
        right: DataFrame,
        by: &[(&str, &str)],
        on: (&str, &str),
        options: AsofOptions,
    ) -> Result<Self> {
        let (state, left) = self.into_parts();
        let (_, right) = right.into_parts();
        let plan = kiln_planner::asof_join::asof_join_plan(left, right, by, on, options)?;
        Ok(DataFrame::new(state, plan))
    }

    fn lineage(&self) -> Result<kiln_planner::lineage::Lineage> {
        let (state, plan) = self.clone().into_parts();
        crate::lineage::plan_lineage(&state, &plan, crate::lineage::DEFAULT_NAMESPACE)
    }

    fn drift(self, current: DataFrame, columns: &[&str]) -> Result<Self> {
        let (state, reference) = self.into_parts();
        let (_, current) = current.into_parts();
        let columns = columns.iter().map(|c| c.to_string()).collect();
        let table = kiln_planner::drift::DriftTable::new(reference, current, columns);
        let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
            "drift",
            datafusion::datasource::provider_as_source(std::sync::Arc::new(table)),
            None,
        )?
        .build()?;
        Ok(DataFrame::new(state, plan))
    }

    fn vector_search(self, column: &str, query: &[f32], k: usize, metric: Metric) -> Result<Self> {
        let (state, plan) = self.into_parts();
        let node = vector_search_node(plan, "the frame", column, query, k, metric)?;
        Ok(extension(state, node))
    }

    fn knn_join(
        self,
        column: &str,
        corpus: DataFrame,
        corpus_column: &str,
        k: usize,
        metric: Metric,
    ) -> Result<Self> {
        let (state, queries) = self.into_parts();
        let node = knn_join_node(
            (queries, "the query frame", column),
            (
                corpus.into_unoptimized_plan(),
                "the corpus frame",
                corpus_column,
            ),
            k,
            metric,
        )?;
        Ok(extension(state, node))
    }
}
