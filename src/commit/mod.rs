//! Output commit for `COPY` and [`Session::write_parquet`]: a write either
//! replaces what was at its target, whole, or leaves it untouched.
//!
//! The rows are written to a staging location beside the target (a hidden
//! sibling, `.kiln-staging-<id>-<name>`), and only once every row is written
//! is the staging location promoted to the target: a file by one rename; a
//! directory, on a local disk, by two renames (the old directory aside, the
//! new one in place), on an object store object by object. A failure, a
//! timeout or Ctrl-C before that deletes the staging location, so the
//! previous output stays as it was and no partial output appears.
//!
//! A directory output is committed with a manifest: `_SUCCESS`, naming the
//! files of the commit (`kiln_engine::io::committed`), which readers
//! through Kiln follow. On a local disk the manifest moves in with the
//! directory (one rename); on an object store the new files are moved in
//! beside the old (their names are unique), the manifest is written — the
//! moment readers switch —, and the old files are deleted. Either way a
//! reader sees the previous commit or the new one, never a mix; other
//! engines see the files plus a `_SUCCESS` marker, as Hadoop committers
//! leave. A write killed before its commit leaves a hidden staging sibling,
//! deleted by the next write to the same target.
//!
//! A `COPY` replaces its target (Spark's and Delta's `overwrite`); to add
//! files to a directory, `INSERT INTO` a table over it.
//!
//! Written files carry the Arrow types other engines write and read:
//! `Utf8View` and `BinaryView` columns (DataFusion's in-memory form of
//! strings) are written as `Utf8` and `Binary`, so a directory holding
//! Kiln's files and pyarrow's or Spark's reads as one table.

mod parts;

pub(crate) use parts::clear as delete_under;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;
use kiln_engine::io::KilnObjectStoreRegistry;
use kiln_engine::io::committed::{JobMark, Manifest, ManifestFile, SUCCESS, relative_path};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{KilnError, Result};

/// What a committed `COPY` wrote.
pub(crate) struct Written {
    /// Its `count` column.
    pub batches: Vec<RecordBatch>,
    /// The plans that ran (one, or one a part run), with their operators'
    /// metrics.
    pub plans: Vec<Arc<dyn ExecutionPlan>>,
    /// A job's output run in parts ([`parts`]): how many, and how many a
    /// killed run had done (skipped).
    pub parts: Option<(usize, usize)>,
    /// Why the parts a killed run did were not kept, if they were not.
    pub note: Option<String>,
}

impl Written {
    fn whole(batches: Vec<RecordBatch>, plan: Arc<dyn ExecutionPlan>) -> Self {
        Written {
            batches,
            plans: vec![plan],
            parts: None,
            note: None,
        }
    }
}

/// A write by a step of a job.
pub(crate) struct JobWrite {
    /// The job and step, recorded in the commit.
    pub mark: JobMark,
    /// A resumed run (`kiln run --resume`): parts of the output a killed
    /// run did are kept.
    pub resume: bool,
    /// The job's work directory, if it has one: files there are new at
    /// each run, so an output read from them is not resumed by parts.
    pub work_dir: Option<PathBuf>,
}

/// Runs `frame` to the end, keeping the plan that ran (its operators'
/// metrics: rows embedded, device batches).
pub(crate) async fn run_frame(frame: DataFrame) -> Result<Written, DataFusionError> {
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let batches = collect(Arc::clone(&plan), task).await?;
    Ok(Written::whole(batches, plan))
}

/// Runs a `COPY` plan through the commit protocol. `registry` gives the
/// unfiltered stores the commit lists with (readers' listings hide what is
/// not committed; the commit must see it to move and clean it).
pub(crate) async fn copy(
    ctx: &SessionContext,
    registry: &KilnObjectStoreRegistry,
    mut copy: CopyTo,
    job: Option<JobWrite>,
) -> Result<Written> {
    let mark = job.as_ref().map(|j| j.mark.clone());
    if crate::delta::is_delta_copy(&copy) {
        let input = standard_types(Arc::unwrap_or_clone(Arc::clone(&copy.input)))?;
        return delta_written(ctx, crate::delta::copy(ctx, registry, copy, input, mark)).await;
    }
    if crate::delta::is_table(registry, &copy.output_url).await {
        return Err(KilnError::Usage(format!(
            "{}: a Delta table is there; write it with COPY ... STORED AS DELTA \
             (a Parquet COPY would replace the table and its history)",
            copy.output_url
        )));
    }
    let target = ListingTableUrl::parse(&copy.output_url)?;
    let single_file = match copy.options.get("single_file_output").map(|v| v.trim()) {
        Some("true") => true,
        Some("false") => false,
        // DataFusion's automatic rule, decided here so that the staging
        // name's shape cannot change it.
        _ => {
            copy.partition_by.is_empty()
                && !target.is_collection()
                && target.file_extension().is_some()
        }
    };
    copy.options
        .insert("single_file_output".into(), single_file.to_string());
    // A job's directory output stages under a name of its own (its
    // fingerprint and step), which a resumed run finds.
    let job = job.filter(|_| !single_file);
    let staging = staging_url(target.as_str(), single_file, job.as_ref().map(|j| &j.mark))?;
    copy.output_url = staging.as_str().to_string();
    copy.input = Arc::new(standard_types(Arc::unwrap_or_clone(copy.input))?);
    let store_url = target.object_store();
    let store = registry.unfiltered_store(store_url.as_ref())?;
    let resumed_staging = job
        .as_ref()
        .filter(|j| j.resume)
        .and_then(|_| staging.prefix().filename().map(str::to_string));
    clean_leftovers(&store, &target, resumed_staging.as_deref()).await;
    let mut staged = Staged {
        store: Arc::clone(&store),
        url: staging,
        single_file,
        // A job's staging stays when the job fails or is stopped, for a
        // resumed run to go on from (the next write to the target deletes
        // it otherwise).
        done: job.is_some(),
    };
    let frame = DataFrame::new(ctx.state(), LogicalPlan::Copy(copy));
    let written = match &job {
        Some(job) => run_job_copy(ctx, frame, &store, &staged.url, job).await,
        None => run_frame(frame).await.map_err(KilnError::from),
    };
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            if job.is_none() {
                staged.discard().await;
            }
            return Err(e);
        }
    };
    let rows = row_count(&written.batches);
    if let Some(mark) = &mark {
        crate::fault::kill_at("kill-before-commit", mark.step);
    }
    if written.parts.is_some() {
        parts::forget(&store, staged.url.prefix()).await?;
        if let Some(dir) = Staged::local_path(&staged.url) {
            // The records' directory, empty now, is not part of the output.
            let _ = std::fs::remove_dir(dir.join(parts::RECORDS));
        }
    }
    if let Err(e) = staged.promote(&target, rows, mark).await {
        staged.discard().await;
        return Err(e);
    }
    forget_listings(ctx);
    Ok(written)
}

/// Runs a job's `COPY` into its staging directory: in parts when its rows
/// are computed row by row from files ([`parts`]), else whole.
async fn run_job_copy(
    ctx: &SessionContext,
    frame: DataFrame,
    store: &Arc<dyn ObjectStore>,
    staging: &ListingTableUrl,
    job: &JobWrite,
) -> Result<Written> {
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    let work_dir = match &job.work_dir {
        Some(dir) => Some(
            Path::from_absolute_path(dir.canonicalize().unwrap_or_else(|_| dir.clone())).map_err(
                |source| KilnError::ObjectStore {
                    location: dir.display().to_string(),
                    source: source.into(),
                },
            )?,
        ),
        None => None,
    };
    let local = Staged::local_path(staging);
    let dir = parts::StagingDir {
        store,
        prefix: staging.prefix(),
        local: local.as_deref(),
    };
    let run = parts::run(ctx, &plan, dir, &job.mark, job.resume, work_dir.as_ref()).await?;
    if let Some(run) = run {
        return Ok(Written {
            batches: vec![count_batch(run.rows)?],
            plans: run.plans,
            parts: Some((run.parts, run.resumed)),
            note: run.note,
        });
    }
    // Whole: what a resumed run's staging holds is not kept.
    parts::clear(store, staging.prefix()).await?;
    let batches = collect(Arc::clone(&plan), task).await?;
    Ok(Written::whole(batches, plan))
}

/// Drops the session's cached directory listings: DataFusion keeps them
/// for the session's life by default, so a table read before a commit
/// would go on listing the files it replaced.
fn forget_listings(ctx: &SessionContext) {
    if let Some(cache) = ctx.runtime_env().cache_manager.get_list_files_cache() {
        cache.clear();
    }
}

/// A Delta write's result, as a `COPY`'s or an `INSERT`'s: its rows'
/// `count` and the plan that ran.
async fn delta_written(
    ctx: &SessionContext,
    write: impl std::future::Future<Output = Result<(u64, Arc<dyn ExecutionPlan>)>>,
) -> Result<Written> {
    let (rows, plan) = write.await?;
    forget_listings(ctx);
    Ok(Written::whole(vec![count_batch(rows)?], plan))
}

/// A `COPY`'s or an `INSERT`'s result: one row, its `count`.
fn count_batch(rows: u64) -> Result<RecordBatch> {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(datafusion::arrow::array::UInt64Array::from(vec![
            rows,
        ]))],
    )?)
}

/// The sum of a `COPY`'s or an `INSERT`'s `count` column.
pub(crate) fn row_count(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .filter_map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .map(|a| a.values().iter().sum::<u64>())
        })
        .sum()
}

/// Runs an `INSERT INTO` plan. Into a directory Kiln committed (one with a
/// manifest), the files the insert adds join the manifest once every row is
/// written — until then readers through Kiln do not see them, and a failed
/// insert leaves its partial files invisible (the next commit to the
/// directory deletes them). Into anything else (a table in memory, a
/// directory of another writer), as DataFusion inserts.
pub(crate) async fn insert(
    ctx: &SessionContext,
    registry: &KilnObjectStoreRegistry,
    plan: LogicalPlan,
    mark: Option<JobMark>,
) -> Result<Written> {
    if let LogicalPlan::Dml(dml) = &plan
        && let Ok(provider) = datafusion::datasource::source_as_provider(&dml.target)
        && let Some(delta) = provider.downcast_ref::<crate::delta::DeltaProvider>()
    {
        use datafusion::logical_expr::dml::InsertOp;
        let overwrite = match dml.op {
            datafusion::logical_expr::WriteOp::Insert(InsertOp::Append) => false,
            datafusion::logical_expr::WriteOp::Insert(InsertOp::Overwrite) => true,
            _ => {
                return Err(KilnError::Usage(format!(
                    "{}: a Delta table takes INSERT INTO and INSERT OVERWRITE",
                    dml.table_name
                )));
            }
        };
        let input = standard_types(Arc::unwrap_or_clone(Arc::clone(&dml.input)))?;
        let write = crate::delta::insert(ctx, registry, &delta.location, overwrite, input, mark);
        return delta_written(ctx, write).await;
    }
    let committed = match &plan {
        LogicalPlan::Dml(dml) => committed_directory(registry, &dml.target).await?,
        _ => None,
    };
    let before = match &committed {
        Some((store, dir, _)) => Some(list_paths(store, dir).await?),
        None => None,
    };
    let written = run_frame(DataFrame::new(ctx.state(), plan)).await?;
    let batches = &written.batches;
    if let (Some((store, dir, mut manifest)), Some(before)) = (committed, before) {
        let after: Vec<ObjectMeta> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(store_err(&dir))?;
        for meta in after {
            if before.contains(&meta.location)
                || kiln_engine::io::committed::is_hidden(Some(&dir), &meta.location)
            {
                continue;
            }
            let Some(path) = relative_path(&dir, &meta.location) else {
                continue;
            };
            manifest.files.push(ManifestFile {
                path,
                bytes: meta.size,
            });
        }
        manifest.rows += row_count(batches);
        manifest.job_steps.extend(mark);
        let marker = dir.clone().join(SUCCESS);
        store
            .put(&marker, manifest.to_json().into())
            .await
            .map_err(store_err(&marker))?;
    }
    forget_listings(ctx);
    Ok(written)
}

/// The store, directory and manifest of `target` when it is a table over
/// one directory that Kiln committed.
async fn committed_directory(
    registry: &KilnObjectStoreRegistry,
    target: &Arc<dyn datafusion::logical_expr::TableSource>,
) -> Result<Option<(Arc<dyn ObjectStore>, Path, Manifest)>> {
    use datafusion::datasource::listing::ListingTable;
    let Ok(provider) = datafusion::datasource::source_as_provider(target) else {
        return Ok(None);
    };
    let Some(table) = provider.downcast_ref::<ListingTable>() else {
        return Ok(None);
    };
    // A directory named with or without its trailing '/': a manifest
    // under it is what counts.
    let [url] = table.table_paths().as_slice() else {
        return Ok(None);
    };
    let store_url = url.object_store();
    let store = registry.unfiltered_store(store_url.as_ref())?;
    let dir = url.prefix().clone();
    Ok(Manifest::read(store.as_ref(), &dir)
        .await
        .map(|manifest| (store, dir, manifest)))
}

async fn list_paths(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
) -> Result<std::collections::HashSet<Path>> {
    store
        .list(Some(dir))
        .map_ok(|m| m.location)
        .try_collect()
        .await
        .map_err(store_err(dir))
}

/// The start of a staging sibling's name.
const STAGING: &str = ".kiln-staging-";

/// Whether `name` is a staging sibling (or a replaced output set aside) of
/// an output named `output`, from this or an earlier, killed process.
fn is_leftover(name: &str, output: &str) -> bool {
    let Some(rest) = name.strip_prefix(STAGING) else {
        return false;
    };
    // <pid>-<n>-<output>, or <pid>-<n>-<output>-replaced; a job's:
    // j<fingerprint>-<step>-<output>.
    let mut parts = rest.splitn(3, '-');
    let (Some(pid), Some(n), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let job = pid
        .strip_prefix('j')
        .is_some_and(|fp| !fp.is_empty() && fp.chars().all(|c| c.is_ascii_hexdigit()));
    let numbers =
        (job || pid.chars().all(|c| c.is_ascii_digit())) && n.chars().all(|c| c.is_ascii_digit());
    numbers && (tail == output || tail.strip_suffix("-replaced") == Some(output))
}

/// Deletes what a killed write to `target` left beside it: staging
/// siblings and outputs set aside, which readers do not see (hidden) but
/// which take space — but `keep`, the staging a resumed job goes on
/// from. (Two writers to one target at once are not supported: the second
/// would delete the first's staging.)
async fn clean_leftovers(
    store: &Arc<dyn ObjectStore>,
    target: &ListingTableUrl,
    keep: Option<&str>,
) {
    for leftover in leftovers(store, target).await {
        if Some(leftover.name.as_str()) == keep {
            continue;
        }
        match leftover.at {
            Sibling::Local(path) => remove_local(&path),
            Sibling::Store(prefix) => {
                let objects: Vec<Path> = store
                    .list(Some(&prefix))
                    .map_ok(|m| m.location)
                    .try_collect()
                    .await
                    .unwrap_or_default();
                // Best effort: what cannot be deleted now stays hidden.
                for object in objects.into_iter().chain(std::iter::once(prefix)) {
                    let _ = store.delete(&object).await;
                }
            }
        }
    }
}

/// A staging sibling, or an output set aside, beside a target.
struct Leftover {
    name: String,
    at: Sibling,
}

enum Sibling {
    Local(PathBuf),
    Store(Path),
}

/// What killed writes to `target` left beside it (none when its parent
/// cannot be listed).
async fn leftovers(store: &Arc<dyn ObjectStore>, target: &ListingTableUrl) -> Vec<Leftover> {
    if let Some(path) = Staged::local_path(target) {
        // The name as the file system has it (a URL encodes spaces).
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Vec::new();
        };
        let name = name.to_string_lossy();
        let Ok(entries) = std::fs::read_dir(parent) else {
            return Vec::new();
        };
        return entries
            .flatten()
            .filter_map(|entry| {
                let found = entry.file_name().to_string_lossy().into_owned();
                is_leftover(&found, &name).then(|| Leftover {
                    name: found,
                    at: Sibling::Local(entry.path()),
                })
            })
            .collect();
    }
    let prefix = target.prefix();
    // The name as the store has it.
    let Some(name) = prefix.filename() else {
        return Vec::new();
    };
    let parent: Path = prefix
        .parts()
        .take(prefix.parts().count().saturating_sub(1))
        .collect();
    let Ok(listed) = store.list_with_delimiter(Some(&parent)).await else {
        return Vec::new();
    };
    listed
        .common_prefixes
        .into_iter()
        .chain(listed.objects.into_iter().map(|m| m.location))
        .filter_map(|p| {
            let found = p.filename().filter(|n| is_leftover(n, name))?.to_string();
            Some(Leftover {
                name: found,
                at: Sibling::Store(p),
            })
        })
        .collect()
}

/// Whether beside `target` lies the staging of step `mark.step` of another
/// version of the job (other statements or inputs): parts a killed run
/// did, which a resumed run of this version does not keep.
pub(crate) async fn other_job_staging(
    registry: &KilnObjectStoreRegistry,
    target: &str,
    mark: &JobMark,
) -> Result<bool> {
    let url = ListingTableUrl::parse(target)?;
    let store = registry.unfiltered_store(url.object_store().as_ref())?;
    let mine = job_staging_id(mark);
    Ok(leftovers(&store, &url).await.iter().any(|l| {
        let rest = l.name.strip_prefix(STAGING).unwrap_or_default();
        let mut parts = rest.splitn(3, '-');
        let (Some(id), Some(step)) = (parts.next(), parts.next()) else {
            return false;
        };
        id.starts_with('j') && step == mark.step.to_string() && format!("{id}-{step}") != mine
    }))
}

/// The id in a job step's staging name: `j<fingerprint, 16 digits>-<step>`.
fn job_staging_id(mark: &JobMark) -> String {
    format!(
        "j{}-{}",
        mark.fingerprint.get(..16).unwrap_or(&mark.fingerprint),
        mark.step
    )
}

/// The hidden sibling of `target` the rows are first written to: named
/// after the process and a counter, or for a job's step, after the job's
/// fingerprint and the step (found again by a resumed run).
fn staging_url(target: &str, single_file: bool, job: Option<&JobMark>) -> Result<ListingTableUrl> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let trimmed = target.trim_end_matches('/');
    let (parent, name) = trimmed
        .rsplit_once('/')
        .filter(|(_, name)| !name.is_empty())
        .ok_or_else(|| KilnError::Usage(format!("cannot write to the root of {target}")))?;
    let id = match job {
        Some(mark) => job_staging_id(mark),
        None => format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ),
    };
    let slash = if single_file { "" } else { "/" };
    Ok(ListingTableUrl::parse(format!(
        "{parent}/{STAGING}{id}-{name}{slash}"
    ))?)
}

/// `plan` with its `Utf8View`/`BinaryView` columns cast to `Utf8`/`Binary`.
fn standard_types(plan: LogicalPlan) -> Result<LogicalPlan> {
    let schema = plan.schema();
    let views = schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView));
    if !views {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = schema
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(datafusion::common::Column::from((qualifier, field)));
            match field.data_type() {
                DataType::Utf8View => cast(column, DataType::Utf8).alias(field.name()),
                DataType::BinaryView => cast(column, DataType::Binary).alias(field.name()),
                _ => column,
            }
        })
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Rows written to a staging location, not yet at their target. Dropped
/// before [`Staged::promote`] (a cancelled statement), it deletes them.
struct Staged {
    store: Arc<dyn ObjectStore>,
    url: ListingTableUrl,
    single_file: bool,
    done: bool,
}

impl Staged {
    fn local_path(url: &ListingTableUrl) -> Option<PathBuf> {
        let url: &url::Url = url.as_ref();
        (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten()
    }

    /// Moves the staged rows (`rows` of them) to `target`, replacing what
    /// was there. A directory gets its manifest (`_SUCCESS`, naming the
    /// files of this commit: [`Manifest`]).
    async fn promote(
        &mut self,
        target: &ListingTableUrl,
        rows: u64,
        mark: Option<JobMark>,
    ) -> Result<()> {
        let local = (Self::local_path(&self.url), Self::local_path(target));
        if self.single_file {
            match local {
                (Some(from), Some(to)) => promote_local(&from, &to, true)?,
                _ => self.promote_in_store(target, None).await?,
            }
            self.done = true;
            return Ok(());
        }
        let from = self.url.prefix();
        let staged = self.list(from).await.map_err(store_err(from))?;
        let files = staged
            .iter()
            .filter_map(|meta| {
                Some(ManifestFile {
                    path: relative_path(from, &meta.location)?,
                    bytes: meta.size,
                })
            })
            .collect();
        let mut manifest = Manifest::new(rows, files);
        manifest.job_steps = mark.into_iter().collect();
        match local {
            (Some(from), Some(to)) => {
                // In the staged directory, so one rename publishes both.
                std::fs::create_dir_all(&from).map_err(io_err(&from))?;
                let marker = from.join(SUCCESS);
                std::fs::write(&marker, manifest.to_json()).map_err(io_err(&marker))?;
                promote_local(&from, &to, false)?
            }
            _ => self.promote_in_store(target, Some(&manifest)).await?,
        }
        self.done = true;
        Ok(())
    }

    /// On a store: the new files moved in beside the old (their names are
    /// unique to this write), then the manifest naming them written — the
    /// moment readers switch to them —, then every other object under the
    /// target deleted (the previous commit's, and any a killed commit left).
    async fn promote_in_store(
        &self,
        target: &ListingTableUrl,
        manifest: Option<&Manifest>,
    ) -> Result<()> {
        let from = self.url.prefix();
        let to = target.prefix();
        let Some(manifest) = manifest else {
            return self.store.rename(from, to).await.map_err(store_err(to));
        };
        if Manifest::read(self.store.as_ref(), to).await.is_none() {
            // No manifest yet (a first write, another writer's directory):
            // readers list everything. One naming what they see now keeps
            // them off the files about to move in. (Its row count is not
            // known: 0. The commit's own manifest replaces it.)
            let current = self.list(to).await.map_err(store_err(to))?;
            let files = current
                .into_iter()
                .filter(|m| !kiln_engine::io::committed::is_hidden(Some(to), &m.location))
                .filter_map(|m| {
                    Some(ManifestFile {
                        path: relative_path(to, &m.location)?,
                        bytes: m.size,
                    })
                })
                .collect();
            let marker = to.clone().join(SUCCESS);
            self.store
                .put(&marker, Manifest::new(0, files).to_json().into())
                .await
                .map_err(store_err(&marker))?;
        }
        let staged = self.list(from).await.map_err(store_err(from))?;
        let mut written = std::collections::HashSet::new();
        for meta in staged {
            let dest = meta
                .location
                .prefix_match(from)
                .into_iter()
                .flatten()
                .fold(to.clone(), |dir, part| dir.join(part));
            self.store
                .rename(&meta.location, &dest)
                .await
                .map_err(store_err(&dest))?;
            written.insert(dest);
        }
        let marker = to.clone().join(SUCCESS);
        self.store
            .put(&marker, manifest.to_json().into())
            .await
            .map_err(store_err(&marker))?;
        written.insert(marker);
        let old = self.list(to).await.map_err(store_err(to))?;
        for meta in old.into_iter().filter(|m| !written.contains(&m.location)) {
            self.store
                .delete(&meta.location)
                .await
                .map_err(store_err(&meta.location))?;
        }
        Ok(())
    }

    /// The objects under `prefix`.
    async fn list(&self, prefix: &Path) -> object_store::Result<Vec<ObjectMeta>> {
        if let Some(dir) = Self::local_path(&self.url).filter(|_| prefix == self.url.prefix()) {
            // The staged directory on a local disk: an empty result writes
            // no file, and no directory either.
            if !dir.exists() {
                return Ok(Vec::new());
            }
        }
        self.store.list(Some(prefix)).try_collect().await
    }

    /// Deletes whatever was staged.
    async fn discard(&mut self) {
        self.done = true;
        if let Some(path) = Self::local_path(&self.url) {
            remove_local(&path);
            return;
        }
        let prefix = self.url.prefix().clone();
        let objects = self.list(&prefix).await.unwrap_or_default();
        for meta in objects {
            // Best effort: what cannot be deleted now is hidden and named as
            // staging, and the next write to the target deletes it.
            let _ = self.store.delete(&meta.location).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(path) = Self::local_path(&self.url) {
            remove_local(&path);
        } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let rest = Staged {
                store: Arc::clone(&self.store),
                url: self.url.clone(),
                single_file: self.single_file,
                done: true,
            };
            handle.spawn(async move {
                let mut rest = rest;
                rest.discard().await
            });
        }
    }
}

fn remove_local(path: &std::path::Path) {
    // Best effort, as above.
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

fn store_err(location: &Path) -> impl FnOnce(object_store::Error) -> KilnError {
    let location = location.to_string();
    move |source| KilnError::ObjectStore { location, source }
}

fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> KilnError {
    let path = path.display().to_string();
    move |source| KilnError::File { path, source }
}

/// Local promotion: renames, so a reader sees the old output or the new.
fn promote_local(from: &std::path::Path, to: &std::path::Path, single_file: bool) -> Result<()> {
    let io = io_err;
    if single_file {
        return std::fs::rename(from, to).map_err(io(to));
    }
    // A query with no rows writes no file: the target becomes empty.
    std::fs::create_dir_all(from).map_err(io(from))?;
    if !to.exists() {
        return std::fs::rename(from, to).map_err(io(to));
    }
    let aside = from.with_file_name(format!(
        "{}-replaced",
        from.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::rename(to, &aside).map_err(io(to))?;
    if let Err(e) = std::fs::rename(from, to) {
        // Put the old output back: nothing changed.
        let _ = std::fs::rename(&aside, to);
        return Err(io(to)(e));
    }
    remove_local(&aside);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_a_hidden_sibling() {
        let file = staging_url("file:///data/out.parquet", true, None).unwrap();
        assert!(file.as_str().starts_with("file:///data/.kiln-staging-"));
        assert!(file.as_str().ends_with("-out.parquet"));
        let dir = staging_url("s3://bucket/out/", false, None).unwrap();
        assert!(dir.as_str().starts_with("s3://bucket/.kiln-staging-"));
        assert!(dir.as_str().ends_with("-out/"));
        let mark = JobMark {
            fingerprint: "0123456789abcdef0123".into(),
            step: 3,
        };
        let job = staging_url("s3://bucket/out/", false, Some(&mark)).unwrap();
        assert_eq!(
            job.as_str(),
            "s3://bucket/.kiln-staging-j0123456789abcdef-3-out/"
        );
        let name = job.prefix().filename().unwrap();
        assert!(is_leftover(name, "out"));
        assert!(!is_leftover(name, "other"));
        assert!(!is_leftover(".kiln-staging-jxyz-3-out", "out"));
    }
}
