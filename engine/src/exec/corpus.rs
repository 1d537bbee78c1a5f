//! One exact search pass over a corpus plan, shared by [`super::VectorTopKExec`]
//! and [`super::KnnJoinExec`]: every partition of the corpus is streamed,
//! its vectors coalesced into device-sized tiles and pushed through a
//! [`VectorSearch`]; only the rows some query still keeps are held on to, so
//! a corpus larger than host or device memory is searched in bounded memory.
//!
//! Row ids are `partition << 40 | row within partition`: the corpus's input
//! order, which is how ties break, whatever order partitions deliver in.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{interleave, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, MetricBuilder, Time};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::StreamExt;
use kiln_kernels::Device;
use kiln_kernels::ops::vector::Metric;
use kiln_kernels::vector_search::{Hit, VectorSearch};

use crate::functions::vector::vectors;

/// Bits of a row id that count rows within one partition.
const PARTITION_SHIFT: u32 = 40;

/// Corpus rows per tile such that a tile's vectors and its score matrix
/// (`queries × rows`) fit `budget_bytes` of device memory.
pub fn tile_rows_for_budget(budget_bytes: u64, dim: usize, queries: usize) -> usize {
    let per_row = 4 * (dim as u64 + queries.max(1) as u64) + 8;
    (budget_bytes / per_row).clamp(1, 1 << 20) as usize
}

/// What one pass searches for.
#[derive(Debug, Clone)]
pub struct SearchSpec {
    /// The vector column's index in the corpus schema, and its name.
    pub column: usize,
    pub column_name: String,
    pub dim: usize,
    pub metric: Metric,
    pub k: usize,
    /// Device memory one tile (its vectors and its score matrix) may use.
    pub budget_bytes: u64,
    /// How many rows without a score (NULL vectors; zero vectors under
    /// cosine) to keep, first in input order, for `NULLS FIRST/LAST`.
    pub keep_unscored: usize,
}

impl SearchSpec {
    /// Corpus rows per tile for a pass of `queries` queries.
    pub fn tile_rows(&self, queries: usize) -> usize {
        tile_rows_for_budget(self.budget_bytes, self.dim.max(1), queries)
    }
}

/// The metrics of a search operator.
#[derive(Debug, Clone)]
pub struct SearchMetrics {
    pub corpus_rows: Count,
    pub tiles: Count,
    pub search_time: Time,
    oom: super::OomMetrics,
}

impl SearchMetrics {
    pub fn new(set: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        SearchMetrics {
            corpus_rows: MetricBuilder::new(set).counter("corpus_rows", partition),
            tiles: MetricBuilder::new(set).counter("tiles", partition),
            search_time: MetricBuilder::new(set).subset_time("search_time", partition),
            oom: super::OomMetrics::new(set, partition),
        }
    }
}

/// The result of a pass.
pub struct SearchOutcome {
    /// Per query, its hits, closest first.
    pub hits: Vec<Vec<Hit>>,
    /// Ids of rows without a score, ascending, at most `keep_unscored`.
    pub unscored: Vec<u64>,
    /// The corpus rows of every hit and unscored id.
    pub rows: RetainedRows,
}

/// Corpus rows held for the output, looked up by id.
pub struct RetainedRows {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    index: HashMap<u64, (usize, usize)>,
}

impl RetainedRows {
    fn new(schema: SchemaRef) -> Self {
        RetainedRows {
            schema,
            batches: Vec::new(),
            index: HashMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// Keeps the rows of `batch` (given as `(row, id)`) whose id is in `keep`.
    fn retain(
        &mut self,
        batch: &RecordBatch,
        rows: &[(u32, u64)],
        keep: &HashSet<u64>,
    ) -> Result<()> {
        let chosen: Vec<(u32, u64)> = rows
            .iter()
            .filter(|(_, id)| keep.contains(id) && !self.index.contains_key(id))
            .copied()
            .collect();
        if chosen.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from_iter_values(chosen.iter().map(|(r, _)| *r));
        let taken = take_record_batch(batch, &indices)?;
        let b = self.batches.len();
        for (i, (_, id)) in chosen.iter().enumerate() {
            self.index.insert(*id, (b, i));
        }
        self.batches.push(taken);
        Ok(())
    }

    /// Drops every row whose id is not in `keep`.
    fn compact(&mut self, keep: &HashSet<u64>) -> Result<()> {
        let mut ids: Vec<u64> = self
            .index
            .keys()
            .filter(|id| keep.contains(id))
            .copied()
            .collect();
        ids.sort_unstable();
        let batch = self.gather(&ids)?;
        self.batches = vec![batch];
        self.index = ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, (0, i)))
            .collect();
        Ok(())
    }

    /// The rows of `ids`, in that order (an id may repeat).
    pub fn gather(&self, ids: &[u64]) -> Result<RecordBatch> {
        let indices: Vec<(usize, usize)> = ids
            .iter()
            .map(|id| {
                self.index.get(id).copied().ok_or_else(|| {
                    DataFusionError::Internal(format!("vector search: row {id} was not retained"))
                })
            })
            .collect::<Result<_>>()?;
        let columns: Vec<ArrayRef> = (0..self.schema.fields().len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    self.batches.iter().map(|b| b.column(c).as_ref()).collect();
                if arrays.is_empty() {
                    Ok(datafusion::arrow::array::new_empty_array(
                        self.schema.field(c).data_type(),
                    ))
                } else {
                    interleave(&arrays, &indices)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(ids.len())),
        )?)
    }
}

/// Corpus batches waiting to be pushed as one tile.
#[derive(Default)]
struct Tile {
    values: Vec<f32>,
    ids: Vec<u64>,
    /// Each batch with its `(row, id)` pairs of scored rows.
    batches: Vec<(RecordBatch, Vec<(u32, u64)>)>,
}

/// `context` with file-scan work stealing off. Row ids, and so the order
/// of ties, come from the partition a row was read in; with stealing, a
/// partition that runs out of files reads its siblings' files, and which
/// partition reads a file would depend on timing (and, on a cluster, differ
/// from a local run).
fn in_plan_order(context: &Arc<TaskContext>) -> Arc<TaskContext> {
    if !context
        .session_config()
        .options()
        .execution
        .enable_file_stream_work_stealing
    {
        return Arc::clone(context);
    }
    let config = context.session_config().clone().set_bool(
        "datafusion.execution.enable_file_stream_work_stealing",
        false,
    );
    Arc::new(TaskContext::new(
        context.task_id(),
        context.session_id(),
        config,
        context.scalar_functions().clone(),
        context.higher_order_functions().clone(),
        context.aggregate_functions().clone(),
        context.window_functions().clone(),
        context.runtime_env(),
    ))
}

/// The input below a `CoalescePartitionsExec`, else `plan` itself. Kiln's
/// search operators read every partition of the corpus in one pass, so
/// they ask for a single partition (on a Ballista cluster, that makes the
/// corpus a stage of its own whose whole output each search task reads),
/// and read the partitions under the merge one by one, in their order:
/// ids (and ties) follow partitions, not the order a merge interleaves them.
pub fn unmerged(plan: &Arc<dyn ExecutionPlan>) -> &Arc<dyn ExecutionPlan> {
    match plan.downcast_ref::<CoalescePartitionsExec>() {
        Some(merge) => merge.input(),
        None => plan,
    }
}

/// Which partition of a corpus one search reads.
#[derive(Debug, Clone, Copy)]
pub struct OnePartition {
    /// The partition of the corpus plan to execute.
    pub partition: usize,
    /// Its number in the whole input, for row ids: on a cluster a task runs
    /// a plan cut down to its own partitions, numbered from 0 there.
    pub global: usize,
}

/// Searches every partition of `corpus` (or only partition `only`) for `queries` (row-major, `dim`
/// wide) on `device`.
#[allow(clippy::too_many_arguments)]
pub async fn search_corpus(
    corpus: &Arc<dyn ExecutionPlan>,
    only: Option<OnePartition>,
    context: &Arc<TaskContext>,
    spec: &SearchSpec,
    device: &Device,
    queries: &[f32],
    metrics: &SearchMetrics,
) -> Result<SearchOutcome> {
    let mut search = VectorSearch::new(device, spec.metric, spec.dim, queries, spec.k)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    // A scan keeps state across executions (DataFusion's file scans share a
    // work queue between partitions): each pass runs a fresh copy.
    let corpus = reset_plan_states(Arc::clone(unmerged(corpus)))?;
    let context = &in_plan_order(context);
    let partitions = corpus.output_partitioning().partition_count();
    // (partition executed, its number for row ids)
    let chosen: Vec<(usize, usize)> = match only {
        Some(one) => vec![(one.partition, one.global)],
        None => (0..partitions).map(|p| (p, p)).collect(),
    };
    let numbers = chosen.iter().map(|(_, g)| *g + 1).max().unwrap_or(0);
    let streams = chosen
        .into_iter()
        .map(|(p, global)| {
            let stream = corpus.execute(p, Arc::clone(context))?;
            Ok(stream.map(move |batch| batch.map(|b| (global, b))).boxed())
        })
        .collect::<Result<Vec<_>>>()?;
    let mut merged = futures::stream::select_all(streams);
    let mut offsets = vec![0u64; numbers];
    let mut rows = RetainedRows::new(corpus.schema());
    let mut unscored: BTreeSet<u64> = BTreeSet::new();
    let mut tile = Tile::default();
    let tile_rows = spec.tile_rows(queries.len() / spec.dim.max(1));
    while let Some(next) = merged.next().await {
        let (partition, batch) = next?;
        let base = ((partition as u64) << PARTITION_SHIFT) + offsets[partition];
        offsets[partition] += batch.num_rows() as u64;
        metrics.corpus_rows.add(batch.num_rows());
        let mut scored = Vec::with_capacity(batch.num_rows());
        let mut unscored_rows = Vec::new();
        {
            let column = batch.column(spec.column);
            let v = vectors(column, false, &spec.column_name)?;
            for row in 0..batch.num_rows() {
                let id = base + row as u64;
                match v.row(row) {
                    Some(x) if x.len() != spec.dim => {
                        return exec_err!(
                            "vector search: column '{}' has a vector of {} components (row {} of input partition {}), the query has {}",
                            spec.column_name,
                            x.len(),
                            id - ((partition as u64) << PARTITION_SHIFT) + 1,
                            partition + 1,
                            spec.dim
                        );
                    }
                    Some(x) if !(spec.metric == Metric::Cosine && x.iter().all(|c| *c == 0.0)) => {
                        tile.values.extend_from_slice(x);
                        tile.ids.push(id);
                        scored.push((row as u32, id));
                    }
                    _ => unscored_rows.push((row as u32, id)),
                }
            }
        }
        if spec.keep_unscored > 0 && !unscored_rows.is_empty() {
            for (_, id) in &unscored_rows {
                unscored.insert(*id);
                if unscored.len() > spec.keep_unscored {
                    unscored.pop_last();
                }
            }
            let keep: HashSet<u64> = unscored.iter().copied().collect();
            rows.retain(&batch, &unscored_rows, &keep)?;
        }
        tile.batches.push((batch, scored));
        if tile.ids.len() >= tile_rows {
            search = push_tile(
                search,
                std::mem::take(&mut tile),
                tile_rows,
                &mut rows,
                &unscored,
                metrics,
            )
            .await?;
        }
    }
    if !tile.batches.is_empty() {
        search = push_tile(search, tile, tile_rows, &mut rows, &unscored, metrics).await?;
    }
    metrics.oom.add(search.oom_counts());
    Ok(SearchOutcome {
        hits: search.finish(),
        unscored: unscored.into_iter().collect(),
        rows,
    })
}

/// Scores `tile` into `search` — on tokio's blocking pool, as device
/// launches and their waits (or the CPU's scoring) must not hold an async
/// worker — then keeps the rows some query still holds.
async fn push_tile(
    search: VectorSearch,
    tile: Tile,
    tile_rows: usize,
    rows: &mut RetainedRows,
    unscored: &BTreeSet<u64>,
    metrics: &SearchMetrics,
) -> Result<VectorSearch> {
    let (time, tiles) = (metrics.search_time.clone(), metrics.tiles.clone());
    let (search, (tile, pushed)) = super::off_async(search, move |search| {
        let dim = tile.values.len() / tile.ids.len().max(1);
        let mut pushed = Ok(());
        for (values, ids) in tile
            .values
            .chunks(tile_rows * dim.max(1))
            .zip(tile.ids.chunks(tile_rows))
        {
            let _timer = time.timer();
            pushed = search.push(values, ids);
            if pushed.is_err() {
                break;
            }
            tiles.add(1);
        }
        (tile, pushed)
    })
    .await?;
    pushed.map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut keep = search.kept_ids();
    keep.extend(unscored.iter().copied());
    for (batch, scored) in &tile.batches {
        rows.retain(batch, scored, &keep)?;
    }
    // Rows pushed out of every query's top-k are dead weight: drop them once
    // they outnumber the live ones.
    if rows.len() > 2 * keep.len() + 4096 {
        rows.compact(&keep)?;
    }
    Ok(search)
}
