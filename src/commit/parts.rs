//! A job's `COPY` to a directory, run in parts that are each checkpointed,
//! so that a job killed inside an output and resumed (`kiln run --resume`)
//! skips the parts already done (issue 16, §3).
//!
//! This applies when the output's rows are computed row by row from files:
//! the physical plan is one file scan under filters, projections (`embed()`
//! among them, and GPU stages of filters and projections), repartitions and
//! coalesces — no aggregate, join, sort, limit, window or union, whose rows
//! depend on other rows. The output is then the union of the plan run over
//! each slice of its input, and each slice can run, and be remembered, on
//! its own.
//!
//! The slices are the scan's files (or the byte ranges DataFusion cut them
//! into), a Parquet file longer than `kiln.job_part_size` cut further into
//! byte ranges: a row group is read by the range holding its first page,
//! so each row group belongs to exactly one slice. The slices run in parts
//! of `target_partitions`, each part one execution of the plan (planned
//! once, so that `now()` and the like have one value in every part) with a
//! slice a partition. A part's files are written to the output's staging
//! directory, then a record naming them — the checkpoint — is written
//! under `_kiln_parts/` there. A job's staging directory is named after its
//! fingerprint and step (`.kiln-staging-j<fingerprint>-<step>-<name>/`,
//! beside the output, so in object storage when the output is), and a
//! resumed run finds it: it keeps the files of the recorded parts, deletes
//! any others (those of a part killed before its record), and runs the
//! parts left. The division must be the same (`_kiln_parts/division.json`:
//! the slices and their files' versions): another `target_partitions` or
//! `kiln.job_part_size` divides the input otherwise, and the output starts
//! over, with a note. Once every part is recorded the records are deleted
//! and the directory is committed as any output ([`super::copy`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::listing::{FileRange, PartitionedFile};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::{Distribution, ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use kiln_engine::io::committed::JobMark;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use super::{row_count, store_err};
use crate::error::{KilnError, Result};

/// The directory of the records, in the staging directory.
pub(crate) const RECORDS: &str = "_kiln_parts";
const DIVISION: &str = "division.json";

/// How a job's output is divided into parts: what a resumed run must find
/// to keep the parts done.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Division {
    fingerprint: String,
    step: usize,
    parts: usize,
    /// blake3 of every slice (file, version, byte range) and the parts'
    /// width.
    slices: String,
}

/// A part done: its rows and the files it wrote (relative to the staging
/// directory).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PartRecord {
    part: usize,
    rows: u64,
    files: Vec<String>,
}

/// What a job's output run in parts did.
pub(crate) struct PartsRun {
    /// Rows of every part, those of resumed parts included.
    pub rows: u64,
    /// The plans that ran (one a part run now; their metrics).
    pub plans: Vec<Arc<dyn ExecutionPlan>>,
    pub parts: usize,
    /// Parts a killed run had done, skipped.
    pub resumed: usize,
    /// Why parts an earlier run did were not kept, if they were not.
    pub note: Option<String>,
}

/// An output's staging directory: its store, its prefix there, and its
/// path when the store is a local disk.
pub(crate) struct StagingDir<'a> {
    pub store: &'a Arc<dyn ObjectStore>,
    pub prefix: &'a Path,
    pub local: Option<&'a std::path::Path>,
}

/// The operators through which each output row comes from one input row.
const ROW_WISE: &[&str] = &[
    "DataSinkExec",
    "DataSourceExec",
    "ProjectionExec",
    "FilterExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "RepartitionExec",
    // Merging sorted partitions: the rows are those of its input (the
    // order of a directory's files is not defined).
    "SortPreservingMergeExec",
    "CooperativeExec",
    "EmbedExec",
    // Kiln's guard above a Parquet scan (`kiln_engine::exec::DecodeGuardExec`).
    "DecodeGuardExec",
];

/// The slices of the input of `plan`, when its rows are computed row by
/// row from one file scan; `None` otherwise.
pub(crate) fn slices(
    plan: &Arc<dyn ExecutionPlan>,
    part_bytes: u64,
) -> Option<Vec<PartitionedFile>> {
    let mut scans = Vec::new();
    let mut row_wise = true;
    walk(plan, &mut |node| {
        let name = node.name();
        if node.fetch().is_some() {
            // A limit.
            row_wise = false;
        } else if let Some(stage) = node.downcast_ref::<kiln_engine::exec::GpuStageExec>() {
            // A stage of filters and projections; not one that aggregates
            // or sorts at its top.
            row_wise &= stage.plan().aggregate.is_none() && stage.plan().topk.is_none();
        } else if !ROW_WISE.contains(&name) {
            row_wise = false;
        }
        if let Some(exec) = node.downcast_ref::<DataSourceExec>() {
            match exec.data_source().downcast_ref::<FileScanConfig>() {
                Some(config) if config.limit.is_none() => scans.push(config.clone()),
                _ => row_wise = false,
            }
        }
    });
    let [scan] = scans.as_slice() else {
        return None;
    };
    if !row_wise {
        return None;
    }
    let parquet = scan.file_source().file_type() == "parquet";
    let mut slices = Vec::new();
    for file in scan.file_groups.iter().flat_map(|g| g.files().iter()) {
        let (start, end) = match &file.range {
            Some(range) => (range.start, range.end),
            None => (0, file.object_meta.size as i64),
        };
        let step = i64::try_from(part_bytes).unwrap_or(i64::MAX);
        if !parquet || end - start <= step {
            slices.push(file.clone());
            continue;
        }
        let mut at = start;
        while at < end {
            let to = at.saturating_add(step).min(end);
            let mut slice = file.clone();
            slice.range = Some(FileRange { start: at, end: to });
            slices.push(slice);
            at = to;
        }
    }
    Some(slices)
}

fn walk(plan: &Arc<dyn ExecutionPlan>, visit: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    visit(plan);
    for child in plan.children() {
        walk(child, visit);
    }
}

/// `plan` with its file scan reading `slices`, one a partition.
fn over_slices(
    plan: &Arc<dyn ExecutionPlan>,
    slices: &[PartitionedFile],
) -> Result<Arc<dyn ExecutionPlan>> {
    let rewritten = Arc::clone(plan).transform_up(|node| {
        let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        else {
            return Ok(Transformed::no(node));
        };
        let mut config = config.clone();
        config.file_groups = slices
            .iter()
            .map(|slice| FileGroup::new(vec![slice.clone()]))
            .collect();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        Ok(Transformed::yes(scan))
    })?;
    // An operator that reads one partition (the writer: DataFusion put no
    // merge before it when the scan had one) gets one again, whatever the
    // number of slices.
    let merged = rewritten.data.transform_up(|node| {
        let wanted = node.input_distribution_requirements().into_per_child();
        let children = node.children();
        let needs_merge = |i: usize, child: &Arc<dyn ExecutionPlan>| {
            matches!(wanted.get(i), Some(Distribution::SinglePartition))
                && child.properties().partitioning.partition_count() > 1
        };
        if !children.iter().enumerate().any(|(i, c)| needs_merge(i, c)) {
            return Ok(Transformed::no(node));
        }
        let children = children
            .into_iter()
            .enumerate()
            .map(|(i, child)| match needs_merge(i, child) {
                true => Arc::new(CoalescePartitionsExec::new(Arc::clone(child)))
                    as Arc<dyn ExecutionPlan>,
                false => Arc::clone(child),
            })
            .collect();
        Ok(Transformed::yes(replace_children_if_necessary(
            Arc::clone(&node),
            children,
        )?))
    })?;
    Ok(merged.data)
}

/// blake3 of the slices (each file's location, size, version and byte
/// range) and of the parts' width.
fn division_hash(slices: &[PartitionedFile], width: usize) -> String {
    let mut hash = blake3::Hasher::new();
    hash.update(&width.to_le_bytes());
    for slice in slices {
        let meta = &slice.object_meta;
        hash.update(meta.location.as_ref().as_bytes());
        hash.update(&meta.size.to_le_bytes());
        hash.update(meta.e_tag.as_deref().unwrap_or("").as_bytes());
        hash.update(&meta.last_modified.timestamp_micros().to_le_bytes());
        let (start, end) = slice.range.as_ref().map_or((0, -1), |r| (r.start, r.end));
        hash.update(&start.to_le_bytes());
        hash.update(&end.to_le_bytes());
    }
    hash.finalize().to_hex().to_string()
}

/// Runs the physical plan `plan` of a job's `COPY` (writing into the
/// staging directory `staging` of `store`) in parts, as the module's doc
/// says; `None` when its rows are not computed row by row from files (it
/// is then run whole by the caller), or when it reads files under
/// `volatile` (the job's work directory, whose files are new at each run).
/// With `resume`, parts a killed run of the same job and step recorded are
/// kept; without, anything staged is deleted first.
pub(crate) async fn run(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    dir: StagingDir<'_>,
    mark: &JobMark,
    resume: bool,
    volatile: Option<&Path>,
) -> Result<Option<PartsRun>> {
    let StagingDir {
        store,
        prefix: staging,
        local,
    } = dir;
    let options = kiln_engine::options::KilnOptions::of(&ctx.state());
    let Some(slices) = slices(plan, options.job_part_bytes()?) else {
        return Ok(None);
    };
    if let Some(volatile) = volatile
        && slices
            .iter()
            .any(|s| s.object_meta.location.prefix_match(volatile).is_some())
    {
        return Ok(None);
    }
    let width = ctx.state().config().target_partitions().max(1);
    let parts: Vec<&[PartitionedFile]> = slices.chunks(width).collect();
    let division = Division {
        fingerprint: mark.fingerprint.clone(),
        step: mark.step,
        parts: parts.len(),
        slices: division_hash(&slices, width),
    };
    let records = staging.clone().join(RECORDS);
    let mut done: BTreeMap<usize, PartRecord> = BTreeMap::new();
    let mut note = None;
    let mut kept_division = false;
    if resume {
        match read_json::<Division>(store.as_ref(), &records.clone().join(DIVISION)).await? {
            Some(found) if found == division => {
                kept_division = true;
                for meta in list(store.as_ref(), &records).await? {
                    if meta.location.filename() == Some(DIVISION) {
                        continue;
                    }
                    if let Some(record) =
                        read_json::<PartRecord>(store.as_ref(), &meta.location).await?
                        && record.part < parts.len()
                    {
                        done.insert(record.part, record);
                    }
                }
            }
            Some(_) => {
                note = Some(format!(
                    "the {} parts a killed run did divided the input otherwise \
                     (target_partitions or kiln.job_part_size changed): the output starts over",
                    list(store.as_ref(), &records)
                        .await?
                        .len()
                        .saturating_sub(1)
                ));
            }
            None => {}
        }
    }
    // Everything staged that no record keeps: a part killed before its
    // record, an earlier division, a run without --resume.
    let mut staged: HashSet<String> = done
        .values()
        .flat_map(|r| r.files.iter().cloned())
        .chain(done.keys().map(|part| record_name(*part)))
        .chain(kept_division.then(|| format!("{RECORDS}/{DIVISION}")))
        .collect();
    if let Some(dir) = local {
        // A local store writes through hidden `<name>#<n>` files, which it
        // does not list: those of a killed part are deleted here.
        remove_partial_local_files(dir);
    }
    for meta in list(store.as_ref(), staging).await? {
        if !relative(staging, &meta.location).is_some_and(|r| staged.contains(&r)) {
            store
                .delete(&meta.location)
                .await
                .map_err(store_err(&meta.location))?;
        }
    }
    let division_path = records.clone().join(DIVISION);
    store
        .put(&division_path, json(&division)?.into())
        .await
        .map_err(store_err(&division_path))?;
    staged.insert(format!("{RECORDS}/{DIVISION}"));

    let task = ctx.task_ctx();
    let mut rows: u64 = done.values().map(|r| r.rows).sum();
    let mut plans = Vec::new();
    for (part, part_slices) in parts.iter().enumerate() {
        if done.contains_key(&part) {
            continue;
        }
        let plan = over_slices(plan, part_slices)?;
        let batches = collect(Arc::clone(&plan), Arc::clone(&task)).await?;
        let part_rows = row_count(&batches);
        plans.push(plan);
        crate::fault::kill_at("kill-in-part", format!("{}/{}", mark.step, part + 1));
        let mut files = Vec::new();
        for meta in list(store.as_ref(), staging).await? {
            if let Some(path) = relative(staging, &meta.location)
                && staged.insert(path.clone())
            {
                files.push(path);
            }
        }
        let record = PartRecord {
            part,
            rows: part_rows,
            files,
        };
        let path = records.clone().join(record_file(part));
        store
            .put(&path, json(&record)?.into())
            .await
            .map_err(store_err(&path))?;
        staged.insert(record_name(part));
        rows += part_rows;
        crate::fault::kill_at("kill-after-part", format!("{}/{}", mark.step, part + 1));
        crate::fault::pause_after_part().await;
    }
    Ok(Some(PartsRun {
        rows,
        plans,
        parts: parts.len(),
        resumed: done.len(),
        note,
    }))
}

fn record_file(part: usize) -> String {
    format!("part-{part:06}.json")
}

/// A part's record, relative to the staging directory.
fn record_name(part: usize) -> String {
    format!("{RECORDS}/{}", record_file(part))
}

/// `location` relative to the staging directory `staging`.
fn relative(staging: &Path, location: &Path) -> Option<String> {
    kiln_engine::io::committed::relative_path(staging, location)
}

/// Deletes the records of the parts (before the commit, so that the
/// directory committed holds the rows' files only).
pub(crate) async fn forget(store: &Arc<dyn ObjectStore>, staging: &Path) -> Result<()> {
    clear(store, &staging.clone().join(RECORDS)).await
}

/// Deletes every object under `staging` (a resumed run's staging kept
/// for parts, when the output is not run in parts; a job's state).
pub(crate) async fn clear(store: &Arc<dyn ObjectStore>, staging: &Path) -> Result<()> {
    for meta in list(store.as_ref(), staging).await? {
        store
            .delete(&meta.location)
            .await
            .map_err(store_err(&meta.location))?;
    }
    Ok(())
}

/// The objects under `prefix` (none when it does not exist).
async fn list(store: &dyn ObjectStore, prefix: &Path) -> Result<Vec<ObjectMeta>> {
    match store.list(Some(prefix)).try_collect().await {
        Ok(found) => Ok(found),
        Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(store_err(prefix)(e)),
    }
}

/// Deletes the local store's unfinished writes (`<name>#<n>`) under `dir`.
fn remove_partial_local_files(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_partial_local_files(&path);
        } else if entry.file_name().to_string_lossy().contains('#') {
            // Best effort: what stays is hidden from every listing.
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The record at `path`: `None` when there is none, or when it does not
/// parse (a record is written whole, so that is another writer's file:
/// not a part done); a store that cannot be read is an error, not "none".
async fn read_json<T: serde::de::DeserializeOwned>(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<T>> {
    let bytes = match store.get(path).await {
        Ok(found) => found.bytes().await.map_err(store_err(path))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err(path)(e)),
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| KilnError::Internal(format!("a part record: {e}")))
}
