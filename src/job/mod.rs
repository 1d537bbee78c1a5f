//! Jobs: a SQL script planned whole, as a DAG of outputs, before any of it
//! runs (issue 16, §1).
//!
//! [`Job::plan`] parses every statement and plans each one in order against
//! a private copy of the session's catalog, where what the script creates
//! exists as it will when the job runs: views and external tables are
//! created there; a table made by `CREATE TABLE ... AS` and a location a
//! `COPY` writes are stood in for by empty tables of their schema, so a
//! later statement that reads them plans. A statement that does not parse
//! or plan stops the job before anything runs, named by its number (and,
//! for a syntax error, its line). Nothing of the planning is visible in the
//! session.
//!
//! The plan is a DAG: each step lists what it reads and the earlier steps
//! it waits for (those that create what it reads), the Kiln operators its
//! physical plan puts on a device, and for a view, the steps that read it.
//! A view read by two or more steps is computed once when the job runs:
//! after its `CREATE VIEW`, it is replaced in the session by its rows,
//! written as Parquet in the job's work directory (under `TMPDIR`, removed
//! with the job) and read from there, so an `embed()` under it runs once
//! per row, not once per reader, and a view larger than memory is shared.
//! (It is a table from then on: a later `DROP VIEW` of it fails.)
//! Steps run in script order, which respects every dependency; consecutive
//! `COPY` steps independent of each other (none reads or writes where
//! another writes) run together, up to `kiln.job_concurrent_outputs`
//! ([`Job::wave_from`]).
//!
//! [`Job::run_step`] runs one step and returns what it did
//! ([`StepReport`]: rows, files and bytes written, time, rows embedded);
//! [`Job::run`] runs them all. `kiln run` and `kiln explain JOB.sql` are
//! the command line's forms.

mod dag;
mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::CatalogProviderList;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use datafusion::prelude::{DataFrame, SessionContext};
use datafusion::sql::parser::Statement;

pub use report::{JobReport, StepReport};

use crate::error::{KilnError, Result};
use crate::session::Session;

/// What a step of a job does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StepKind {
    /// A query: its rows are the step's result.
    Query,
    /// `COPY ... TO target`; `delta`: `STORED AS DELTA`.
    Copy {
        target: String,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        delta: bool,
    },
    /// `CREATE TABLE name AS ...` (held in memory).
    CreateTable { name: String },
    /// `INSERT INTO table ...`; `location`, when the table is a directory.
    Insert {
        table: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<String>,
    },
    /// `CREATE VIEW name AS ...`.
    View { name: String },
    /// `CREATE EXTERNAL TABLE name ... LOCATION location`.
    ExternalTable { name: String, location: String },
    /// `SET`, `DROP`, and other statements that change the session.
    Other,
}

impl StepKind {
    /// Whether the step writes data somewhere (an output of the job).
    pub fn is_output(&self) -> bool {
        matches!(
            self,
            StepKind::Copy { .. } | StepKind::CreateTable { .. } | StepKind::Insert { .. }
        )
    }

    /// What the step does, in a few words ("copy to s3://out/a/").
    pub fn describe(&self) -> String {
        match self {
            StepKind::Query => "query".to_string(),
            StepKind::Copy {
                target,
                delta: false,
            } => format!("copy to {target}"),
            StepKind::Copy {
                target,
                delta: true,
            } => format!("copy to {target} (Delta)"),
            StepKind::CreateTable { name } => format!("table {name} (in memory)"),
            StepKind::Insert { table, .. } => format!("insert into {table}"),
            StepKind::View { name } => format!("view {name}"),
            StepKind::ExternalTable { name, location } => {
                format!("external table {name} at {location}")
            }
            StepKind::Other => "statement".to_string(),
        }
    }

    /// What the step makes that later steps may read.
    fn creates(&self) -> Option<&str> {
        match self {
            StepKind::Copy { target, .. } => Some(target),
            StepKind::CreateTable { name }
            | StepKind::View { name }
            | StepKind::ExternalTable { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// One statement of a job, planned.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// 1-based, in script order.
    pub index: usize,
    /// The statement, as parsed.
    pub sql: String,
    #[serde(flatten)]
    pub kind: StepKind,
    /// The tables, views and locations it reads.
    pub reads: Vec<String>,
    /// The locations it reads, through tables and views (normalized).
    #[serde(skip)]
    read_locations: Vec<String>,
    /// The earlier steps that create what it reads.
    pub after: Vec<usize>,
    /// For a view: the later steps that read it. Two or more: it is
    /// computed once, when the job runs, and its rows shared.
    pub read_by: Vec<usize>,
    /// Kiln's operators its physical plan places on a device (empty: all
    /// on the CPU).
    pub device_operators: Vec<String>,
    /// Already committed by this same job (its fingerprint and step): a
    /// resumed run skips it ([`Job::check_resume`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub committed: bool,
    /// What it writes or returns and its column lineage, when the job was
    /// planned with [`Job::plan_with_lineage`] and it writes or returns
    /// rows; the error when its lineage could not be traced.
    #[serde(skip)]
    pub lineage: Option<Arc<Result<crate::lineage::StatementLineage>>>,
    #[serde(skip)]
    source: Source,
}

/// What a step runs: a statement of the job's SQL, or the plan of a
/// DataFrame written by [`Job::write_parquet`].
#[derive(Debug, Clone)]
enum Source {
    Sql(Statement),
    Frame(LogicalPlan),
}

impl Step {
    /// The step's logical plan, in `session` as it is when the step runs.
    async fn plan(&self, session: &Session) -> Result<LogicalPlan> {
        match &self.source {
            Source::Sql(statement) => session.plan_statement(statement.clone()).await,
            Source::Frame(plan) => Ok(plan.clone()),
        }
    }

    /// Whether the step is a view that the job computes once and shares.
    pub fn is_shared(&self) -> bool {
        matches!(self.kind, StepKind::View { .. }) && self.read_by.len() >= 2
    }
}

/// A SQL script planned as a DAG of steps.
#[derive(Debug, Clone)]
pub struct Job {
    pub steps: Vec<Step>,
    /// The session's device request (`auto`, `cpu`, `wgpu`, `cuda:1`, ...).
    pub device: String,
    /// `kiln.job_concurrent_outputs` when the job was planned (after its
    /// own `SET`s): the waves [`Job::explain`] shows. (When it runs, each
    /// wave takes the value then.)
    pub concurrent_outputs: usize,
    /// blake3 of the job's statements (and of its DataFrame writes' plans)
    /// and of the versions (size, etag or modification time) of every file
    /// it reads that it does not write: what a resumed run must match.
    pub fingerprint: String,
    /// Where shared views' rows are written while the job runs: a private
    /// directory under the system's temporary directory (`TMPDIR`), made
    /// by the first shared view and removed when the `Job` is dropped (the
    /// session's table of a shared view reads from it until then).
    work: Arc<std::sync::OnceLock<tempfile::TempDir>>,
    /// A resumed run ([`Job::check_resume`]): besides committed outputs,
    /// the parts of an output a killed run checkpointed are kept.
    resume: bool,
    /// The job's state location ([`Job::set_state`]), as a URL without
    /// its trailing `/`.
    state: Option<String>,
}

/// The rows and report of one step.
#[derive(Debug)]
pub struct StepOutcome {
    pub report: StepReport,
    /// A query's rows (with their schema); `None` for other steps.
    pub rows: Option<(SchemaRef, Vec<RecordBatch>)>,
}

impl Job {
    /// Parses and plans every statement of `sql` (see the module's doc);
    /// runs nothing.
    pub async fn plan(session: &Session, sql: &str) -> Result<Job> {
        Self::plan_traced(session, sql, None).await
    }

    /// [`Job::plan`], also tracing the column lineage of every statement
    /// that writes or returns rows (into [`Step::lineage`]): datasets
    /// without a location are named in `namespace`, a query's rows
    /// `JOB.stepN`.
    pub async fn plan_with_lineage(
        session: &Session,
        sql: &str,
        namespace: &str,
        job: &str,
    ) -> Result<Job> {
        Self::plan_traced(session, sql, Some((namespace, job))).await
    }

    async fn plan_traced(
        session: &Session,
        sql: &str,
        lineage: Option<(&str, &str)>,
    ) -> Result<Job> {
        let statements = dag::parse_naming_statement(session, sql)?;
        let total = statements.len();
        let scratch = scratch_context(session).await?;
        let mut fingerprint = blake3::Hasher::new();
        let mut made: HashMap<String, usize> = HashMap::new();
        let mut views = std::collections::HashSet::new();
        let mut locations: HashMap<String, String> = HashMap::new();
        let mut steps: Vec<Step> = Vec::with_capacity(total);
        for (i, statement) in statements.into_iter().enumerate() {
            let index = i + 1;
            let failed = |source: KilnError| KilnError::JobStatement {
                index,
                total,
                source: Box::new(source),
            };
            let (step, inputs) = plan_step(
                session, &scratch, index, statement, &made, &views, &locations, lineage,
            )
            .await
            .map_err(failed)?;
            if let StepKind::ExternalTable { name, location } = &step.kind {
                locations.insert(name.clone(), location.clone());
            }
            fingerprint.update(step.sql.as_bytes());
            fingerprint.update(b"\n");
            for input in inputs {
                fingerprint.update(input.as_bytes());
                fingerprint.update(b"\n");
            }
            if let Some(name) = step.kind.creates() {
                made.insert(name.to_string(), index);
            }
            if let StepKind::Copy { target, .. } = &step.kind {
                made.insert(normalized(target), index);
            }
            if let StepKind::View { name } = &step.kind {
                views.insert(name.clone());
            }
            steps.push(step);
        }
        dag::link_readers(&mut steps);
        // As the job's own SETs leave it: what EXPLAIN shows.
        let concurrent_outputs =
            kiln_engine::options::KilnOptions::of(&scratch.state()).job_concurrent_outputs;
        Ok(Job {
            steps,
            concurrent_outputs,
            device: session.device().to_string(),
            fingerprint: fingerprint.finalize().to_hex().to_string(),
            work: Default::default(),
            resume: false,
            state: None,
        })
    }

    /// Adds an output to the job: `frame` written as Parquet at `location`
    /// (a directory; a location naming a file, `x.parquet`, is written as
    /// one file, committed whole but not resumed), after the steps before it — as a `COPY (...) TO
    /// 'location' STORED AS PARQUET` would be, committed with a manifest,
    /// resumable, run in parts when its rows are computed row by row from
    /// files. The frame reads what the session holds when it was built
    /// (not views the job creates, which do not exist yet); a step of the
    /// job that writes a location it reads runs before it. The job's
    /// fingerprint covers the frame's plan and the versions of the files
    /// it reads. Returns the step's number.
    pub async fn write_parquet(
        &mut self,
        session: &Session,
        frame: DataFrame,
        location: &str,
    ) -> Result<usize> {
        let plan = parquet_copy(frame.into_unoptimized_plan(), location)?;
        let index = self.steps.len() + 1;
        let views: std::collections::HashSet<String> = self
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::View { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        let reads = dag::reads(&plan, &|name| views.contains(name));
        let read_locations = dag::read_locations(&plan);
        let after: Vec<usize> = self
            .steps
            .iter()
            .filter(|s| {
                let made = s.kind.creates();
                reads.iter().any(|r| made == Some(r.as_str()))
                    || matches!(&s.kind, StepKind::Copy { target, .. }
                        if read_locations.iter().any(|l| overlaps(l, &normalized(target))))
            })
            .map(|s| s.index)
            .collect();
        let written: std::collections::HashSet<String> = self
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Copy { target, .. } => Some(normalized(target)),
                _ => None,
            })
            .collect();
        let inputs = dag::input_versions(session.context(), &plan, &|url| {
            written.contains(&normalized(url))
        })
        .await?;
        let device_operators = dag::device_operators(session.context(), &plan).await?;
        let described = plan.display_indent().to_string();
        let mut fingerprint = blake3::Hasher::new();
        fingerprint.update(self.fingerprint.as_bytes());
        fingerprint.update(described.as_bytes());
        for input in inputs {
            fingerprint.update(input.as_bytes());
            fingerprint.update(b"\n");
        }
        self.fingerprint = fingerprint.finalize().to_hex().to_string();
        self.steps.push(Step {
            index,
            sql: format!("-- a DataFrame, written to {location}\n{described}"),
            kind: StepKind::Copy {
                target: location.to_string(),
                delta: false,
            },
            reads,
            read_locations,
            after,
            read_by: Vec::new(),
            device_operators,
            committed: false,
            lineage: None,
            source: Source::Frame(plan),
        });
        dag::link_readers(&mut self.steps);
        Ok(index)
    }

    /// Keeps the job's state at `location` (a directory, or a prefix in
    /// object storage): shared views' rows are written there as committed
    /// outputs, checkpointed in parts, under the job's fingerprint
    /// (`<location>/<fingerprint>/view-<step>-<name>/`), instead of in a
    /// temporary directory. A resumed run ([`Job::check_resume`]) — on this
    /// machine or another — reads a shared view this job committed there
    /// rather than computing it again, and goes on from the parts done of
    /// one it had not finished. [`Job::remove_state`] deletes it — `kiln
    /// run` does when the job succeeds; a library caller does when it no
    /// longer reads the session's tables of the shared views (they read
    /// from there).
    pub fn set_state(&mut self, location: &str) -> Result<()> {
        let url = datafusion::datasource::listing::ListingTableUrl::parse(location)?;
        self.state = Some(url.as_str().trim_end_matches('/').to_string());
        Ok(())
    }

    /// Where this job's state lives: its fingerprint's directory under the
    /// state location.
    fn state_dir(&self) -> Option<String> {
        let state = self.state.as_ref()?;
        Some(format!(
            "{state}/{}",
            self.fingerprint.get(..16).unwrap_or(&self.fingerprint)
        ))
    }

    /// Where a shared view's rows are kept, when the job has a state
    /// location.
    fn view_location(&self, step: &Step) -> Option<String> {
        let StepKind::View { name } = &step.kind else {
            return None;
        };
        if !step.is_shared() {
            return None;
        }
        Some(format!(
            "{}/view-{}-{}/",
            self.state_dir()?,
            step.index,
            file_name_of(name)
        ))
    }

    /// Deletes what the job kept at its state location (nothing without
    /// one).
    pub async fn remove_state(&self, session: &Session) -> Result<()> {
        let Some(dir) = self.state_dir() else {
            return Ok(());
        };
        let url = datafusion::datasource::listing::ListingTableUrl::parse(format!("{dir}/"))?;
        let local: &url::Url = url.as_ref();
        if local.scheme() == "file"
            && let Ok(path) = local.to_file_path()
        {
            return match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(KilnError::File {
                    path: path.display().to_string(),
                    source: e,
                }),
                _ => Ok(()),
            };
        }
        let store = session
            .registry()
            .unfiltered_store(url.object_store().as_ref())?;
        crate::commit::delete_under(&store, url.prefix()).await
    }

    /// The job's work directory ([`Job::work`]), made on first use.
    fn work_dir(&self) -> Result<&std::path::Path> {
        if self.work.get().is_none() {
            let dir = tempfile::Builder::new()
                .prefix("kiln-job-")
                .tempdir()
                .map_err(|source| KilnError::File {
                    path: std::env::temp_dir().display().to_string(),
                    source,
                })?;
            // Another thread may have made one first: either serves.
            let _ = self.work.set(dir);
        }
        self.work
            .get()
            .map(|d| d.path())
            .ok_or_else(|| KilnError::Internal("the job's work directory".into()))
    }

    /// For a resumed run: marks the steps whose output this same job (same
    /// fingerprint, same step) already committed, so they are skipped, and
    /// returns a note for each output that will be computed again although
    /// something is there: written by another job or from other inputs, or
    /// a single file (single-file outputs carry no manifest to resume by).
    pub async fn check_resume(&mut self, session: &Session) -> Result<Vec<String>> {
        self.resume = true;
        let mut notes = Vec::new();
        // Shared views this job committed at its state location.
        let views: Vec<(usize, String)> = self
            .steps
            .iter()
            .filter_map(|s| Some((s.index, self.view_location(s)?)))
            .collect();
        for (index, location) in views {
            let mine = kiln_engine::io::committed::JobMark {
                fingerprint: self.fingerprint.clone(),
                step: index,
            };
            let (_, _, manifest) = manifest_at(session, &location).await?;
            if manifest_records(&manifest, &mine)
                && let Some(step) = self.steps.get_mut(index - 1)
            {
                step.committed = true;
            }
        }
        // Directories an earlier step of this run rewrites: what was added
        // to them before is gone, so their inserts run again too.
        let mut rewritten = std::collections::HashSet::new();
        for step in &mut self.steps {
            let (target, copy) = match &step.kind {
                StepKind::Copy { target, .. } => (target.clone(), true),
                StepKind::Insert {
                    location: Some(location),
                    ..
                } => (location.clone(), false),
                _ => continue,
            };
            if is_delta_step(session, step).await {
                // Steps into one table commit in order: the newest commit's
                // step says which of this job's are done.
                let commit = crate::delta::last_commit(session.registry(), &target).await?;
                match commit.and_then(|c| c.job) {
                    Some(job) if job.fingerprint == self.fingerprint && job.step >= step.index => {
                        step.committed = true;
                    }
                    Some(_) if copy => notes.push(format!(
                        "step {}: the newest version of the Delta table {target} was written \
                         by another job, or from other inputs: computing it again",
                        step.index
                    )),
                    _ => {}
                }
                continue;
            }
            if !copy && rewritten.contains(&normalized(&target)) {
                continue;
            }
            let (url, store, manifest) = manifest_at(session, &target).await?;
            let mine = kiln_engine::io::committed::JobMark {
                fingerprint: self.fingerprint.clone(),
                step: step.index,
            };
            if copy
                && !manifest_records(&manifest, &mine)
                && crate::commit::other_job_staging(session.registry(), &target, &mine).await?
            {
                notes.push(format!(
                    "step {}: the parts of {target} a killed run did are of another version \
                     of the job (its statements or the files it reads changed): starting it over",
                    step.index
                ));
            }
            match manifest {
                Some(m) if m.job_steps.contains(&mine) => step.committed = true,
                Some(m) if copy && !m.job_steps.is_empty() => notes.push(format!(
                    "step {}: {target} was written by another job, or from other inputs \
                     (the job's statements or the files it reads changed since): computing it again",
                    step.index
                )),
                Some(_) if copy => notes.push(format!(
                    "step {}: {target} was not written by a job: computing it again",
                    step.index
                )),
                None if copy
                    && !url.is_collection()
                    && object_store::ObjectStoreExt::head(store.as_ref(), url.prefix())
                        .await
                        .is_ok() =>
                {
                    notes.push(format!(
                        "step {}: {target} is a single file, which carries no record of the \
                         job that wrote it: computing it again",
                        step.index
                    ));
                }
                _ => {}
            }
            if copy && !step.committed {
                rewritten.insert(normalized(&target));
            }
        }
        Ok(notes)
    }

    /// Runs step `index` (1-based) in `session`: the steps before it must
    /// have run. A shared view is replaced by its rows after it is
    /// created.
    pub async fn run_step(&self, session: &Session, index: usize) -> Result<StepOutcome> {
        let step = self
            .steps
            .get(index.wrapping_sub(1))
            .ok_or_else(|| KilnError::Internal(format!("the job has no step {index}")))?;
        // Its start time first: started_at + seconds is never past the end.
        let mut report = StepReport::new(step);
        let started = Instant::now();
        if step.committed {
            return self.resumed(session, step, report).await;
        }
        let plan = step.plan(session).await?;
        let mut rows = None;
        let mark = kiln_engine::io::committed::JobMark {
            fingerprint: self.fingerprint.clone(),
            step: index,
        };
        // A shared view all of whose readers are committed outputs is not
        // computed: nothing will read it.
        let readers_done = step
            .read_by
            .iter()
            .all(|r| self.steps.get(r - 1).is_some_and(|s| s.committed));
        match plan {
            LogicalPlan::Copy(copy) => {
                let job = crate::commit::JobWrite {
                    mark,
                    resume: self.resume,
                    work_dir: self.work.get().map(|d| d.path().to_path_buf()),
                };
                let written = session.copy_for_job(copy, job).await?;
                report.rows = Some(crate::commit::row_count(&written.batches));
                report.count_embeds(&written.plans);
                report.record_parts(&written);
                match &step.kind {
                    StepKind::Copy {
                        target,
                        delta: true,
                    } => report.delta_commit(session, target, index).await?,
                    StepKind::Copy { target, .. } => {
                        let (files, bytes) = report::written_files(session, target).await?;
                        report.files = Some(files);
                        report.bytes = Some(bytes);
                    }
                    _ => {}
                }
            }
            LogicalPlan::Ddl(DdlStatement::CreateView(view))
                if step.is_shared() && !readers_done =>
            {
                let name = view.name.clone();
                session
                    .context()
                    .execute_logical_plan(LogicalPlan::Ddl(DdlStatement::CreateView(view)))
                    .await?;
                let written = match self.view_location(step) {
                    Some(location) => {
                        self.materialize_in_state(session, name, &location, mark)
                            .await?
                    }
                    None => materialize(session.context(), name, self.work_dir()?).await?,
                };
                report.rows = Some(crate::commit::row_count(&written.batches));
                report.count_embeds(&written.plans);
                report.record_parts(&written);
                report.materialized = true;
            }
            plan @ LogicalPlan::Dml(_) if matches!(step.kind, StepKind::Insert { .. }) => {
                let written = session.insert(plan, Some(mark)).await?;
                report.rows = Some(crate::commit::row_count(&written.batches));
                if let StepKind::Insert {
                    location: Some(target),
                    ..
                } = &step.kind
                    && is_delta_step(session, step).await
                {
                    report.delta_commit(session, target, index).await?;
                }
                report.count_embeds(&written.plans);
            }
            plan if step.kind == StepKind::Query => {
                let frame = session.context().execute_logical_plan(plan).await?;
                let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
                let written = crate::commit::run_frame(frame).await?;
                report.count_embeds(&written.plans);
                let batches = written.batches;
                report.rows = Some(batches.iter().map(|b| b.num_rows() as u64).sum());
                rows = Some((schema, batches));
            }
            plan => {
                session
                    .context()
                    .execute_logical_plan(plan)
                    .await?
                    .collect()
                    .await?;
            }
        }
        report.seconds = started.elapsed().as_secs_f64();
        crate::fault::kill_at("kill-after-step", index);
        Ok(StepOutcome { report, rows })
    }

    /// A step this job already committed: what its manifest says.
    async fn resumed(
        &self,
        session: &Session,
        step: &Step,
        mut report: StepReport,
    ) -> Result<StepOutcome> {
        report.resumed = true;
        if is_delta_step(session, step).await
            && let StepKind::Copy { target, .. }
            | StepKind::Insert {
                location: Some(target),
                ..
            } = &step.kind
        {
            report.delta_commit(session, target, step.index).await?;
        } else if let StepKind::Copy { target, .. } = &step.kind
            && let (_, _, Some(manifest)) = manifest_at(session, target).await?
        {
            report.rows = Some(manifest.rows);
            report.files = Some(manifest.files.len() as u64);
            report.bytes = Some(manifest.files.iter().map(|f| f.bytes).sum());
        } else if matches!(step.kind, StepKind::View { .. })
            && let Some(location) = self.view_location(step)
        {
            // Its rows, kept at the state location: the view is created,
            // then replaced by them, as when it was computed.
            let plan = step.plan(session).await?;
            let LogicalPlan::Ddl(DdlStatement::CreateView(view)) = &plan else {
                return Err(KilnError::Internal(format!(
                    "step {} is no CREATE VIEW",
                    step.index
                )));
            };
            let name = view.name.clone();
            session.context().execute_logical_plan(plan).await?;
            let (_, _, manifest) = manifest_at(session, &location).await?;
            let rows = manifest.map_or(0, |m| m.rows);
            replace_with_table(session.context(), name, &location, rows).await?;
            report.rows = Some(rows);
            report.materialized = true;
        }
        Ok(StepOutcome { report, rows: None })
    }

    /// Writes shared view `name`'s rows to `location` at the job's state
    /// location, as a job's output (committed, checkpointed in parts), and
    /// replaces the view by them.
    async fn materialize_in_state(
        &self,
        session: &Session,
        name: TableReference,
        location: &str,
        mark: kiln_engine::io::committed::JobMark,
    ) -> Result<crate::commit::Written> {
        let ctx = session.context();
        let frame = ctx.table(name.clone()).await?;
        let LogicalPlan::Copy(copy) = parquet_copy(frame.into_unoptimized_plan(), location)? else {
            return Err(KilnError::Internal("a shared view's COPY".into()));
        };
        let job = crate::commit::JobWrite {
            mark,
            resume: self.resume,
            work_dir: None,
        };
        let written = session.copy_for_job(copy, job).await?;
        let rows = crate::commit::row_count(&written.batches);
        replace_with_table(ctx, name, location, rows).await?;
        Ok(written)
    }

    /// The steps that run together from step `start` on: `start` alone,
    /// or, when it is a `COPY`, it and the `COPY` steps right after it that
    /// are independent of it and of each other — none waits for another,
    /// writes where another writes, or writes what another reads — up to
    /// `limit` (`kiln.job_concurrent_outputs`) of them.
    pub fn wave_from(&self, start: usize, limit: usize) -> Vec<usize> {
        let Some(first) = self.steps.get(start.wrapping_sub(1)) else {
            return Vec::new();
        };
        let mut wave = vec![first];
        if matches!(first.kind, StepKind::Copy { .. }) {
            for step in &self.steps[start..] {
                if wave.len() >= limit || !wave.iter().all(|m| independent(m, step)) {
                    break;
                }
                wave.push(step);
            }
        }
        wave.iter().map(|s| s.index).collect()
    }

    /// Runs steps `wave` ([`Job::wave_from`]) at once, each to its end;
    /// their outcomes in order.
    pub async fn run_wave(&self, session: &Session, wave: &[usize]) -> Vec<Result<StepOutcome>> {
        futures::future::join_all(wave.iter().map(|&index| self.run_step(session, index))).await
    }

    /// Runs every step in order, independent outputs together
    /// ([`Job::wave_from`]); the first failure ends the job once the steps
    /// running beside it end (the error names the step).
    pub async fn run(&self, session: &Session) -> Result<JobReport> {
        let mut report = JobReport::new(self);
        let total = self.steps.len();
        let mut next = 1;
        while next <= total {
            let wave = self.wave_from(next, session.kiln_options().job_concurrent_outputs);
            next += wave.len().max(1);
            let mut failed = None;
            for (index, outcome) in wave.iter().zip(self.run_wave(session, &wave).await) {
                match outcome {
                    Ok(outcome) => report.push(outcome.report),
                    Err(source) => {
                        failed.get_or_insert(KilnError::Statement {
                            index: *index,
                            total,
                            source: Box::new(source),
                        });
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        report.finish(None);
        Ok(report)
    }

    /// The outputs: steps that write.
    pub fn outputs(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.kind.is_output())
    }

    /// The DAG for a person: a line a step, with what it reads, what it
    /// waits for, what reads it and where it runs.
    pub fn explain(&self) -> String {
        let mut out = format!(
            "job: {} statements, {} outputs, device {}\n",
            self.steps.len(),
            self.outputs().count(),
            self.device
        );
        let mut waves = Vec::new();
        let mut next = 1;
        while next <= self.steps.len() {
            let wave = self.wave_from(next, self.concurrent_outputs);
            next += wave.len().max(1);
            waves.push(wave);
        }
        for step in &self.steps {
            let what = match &step.kind {
                StepKind::Other => step.sql.chars().take(60).collect(),
                kind => kind.describe(),
            };
            let mut notes = Vec::new();
            if !step.reads.is_empty() {
                notes.push(format!("reads {}", step.reads.join(", ")));
            }
            if !step.after.is_empty() {
                notes.push(format!("after {}", numbers(&step.after)));
            }
            if matches!(step.kind, StepKind::View { .. }) {
                match step.read_by.len() {
                    0 => notes.push("read by no later step".to_string()),
                    1 => notes.push(format!("read by {}", numbers(&step.read_by))),
                    _ => notes.push(format!(
                        "read by {}: computed once, its rows shared",
                        numbers(&step.read_by)
                    )),
                }
            }
            if let Some(wave) = waves
                .iter()
                .find(|w| w.len() > 1 && w.contains(&step.index))
            {
                let beside: Vec<usize> =
                    wave.iter().copied().filter(|i| *i != step.index).collect();
                notes.push(format!("runs beside {}", numbers(&beside)));
            }
            let runs = step.kind.is_output() || step.kind == StepKind::Query;
            if runs && step.device_operators.is_empty() {
                notes.push("all on the CPU".to_string());
            } else if runs {
                notes.push(format!("on a device: {}", step.device_operators.join(", ")));
            }
            out.push_str(&format!("{:>3}  {what}", step.index));
            if !notes.is_empty() {
                out.push_str(&format!("  -- {}", notes.join("; ")));
            }
            out.push('\n');
        }
        out
    }

    /// The DAG as JSON, ending with a newline.
    pub fn explain_json(&self) -> String {
        let value = serde_json::json!({
            "device": self.device,
            "statements": self.steps.len(),
            "outputs": self.outputs().map(|s| s.index).collect::<Vec<_>>(),
            "steps": self.steps,
        });
        let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Whether `COPY` step `later` may run beside `earlier`: it does not wait
/// for it, and neither writes where the other writes or reads.
fn independent(earlier: &Step, later: &Step) -> bool {
    let (StepKind::Copy { target: a, .. }, StepKind::Copy { target: b, .. }) =
        (&earlier.kind, &later.kind)
    else {
        return false;
    };
    let (a, b) = (normalized(a), normalized(b));
    !later.after.contains(&earlier.index)
        && !overlaps(&a, &b)
        && !earlier.read_locations.iter().any(|r| overlaps(r, &b))
        && !later.read_locations.iter().any(|r| overlaps(r, &a))
}

/// Whether two normalized locations are one, or one is inside the other.
fn overlaps(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| {
        x.strip_prefix(y.trim_end_matches('/'))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    inside(a, b) || inside(b, a)
}

fn numbers(indices: &[usize]) -> String {
    indices
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans one statement in the job's planning context, and makes what it
/// creates exist there for the statements after it.
#[allow(clippy::too_many_arguments)]
async fn plan_step(
    session: &Session,
    scratch: &SessionContext,
    index: usize,
    statement: Statement,
    made: &HashMap<String, usize>,
    views: &std::collections::HashSet<String>,
    locations: &HashMap<String, String>,
    lineage: Option<(&str, &str)>,
) -> Result<(Step, Vec<String>)> {
    let sql = statement.to_string();
    let plan = session
        .plan_statement_in(scratch, statement.clone())
        .await?;
    // An external table's location; a COPY target of an earlier step,
    // read through the stand-in named after it.
    let location_of = |table: &str| {
        locations.get(table).cloned().or_else(|| {
            let location = normalized(table);
            made.contains_key(&location).then_some(location)
        })
    };
    let lineage = lineage.and_then(|(namespace, job)| {
        crate::lineage::statement_lineage(
            &scratch.state(),
            &plan,
            &sql,
            (namespace, job, index),
            &location_of,
        )
        .map(Arc::new)
    });
    let inputs = dag::input_versions(scratch, &plan, &|_| false).await?;
    let reads = dag::reads(&plan, &|name| views.contains(name));
    let mut after = {
        let mut after: Vec<usize> = reads.iter().filter_map(|r| made.get(r).copied()).collect();
        after.sort_unstable();
        after.dedup();
        after
    };
    // An empty table that takes inserts, as the real one will.
    let stand_in = |name: &str, schema: SchemaRef| -> Result<()> {
        let table = MemTable::try_new(schema, vec![Vec::new()])?;
        scratch.deregister_table(TableReference::bare(name))?;
        scratch.register_table(TableReference::bare(name), Arc::new(table))?;
        Ok(())
    };
    let mut device_operators = Vec::new();
    let kind = match &plan {
        LogicalPlan::Copy(copy) => {
            // A Delta COPY runs its input on Kiln's plan ([`crate::delta`]).
            let runs = match crate::delta::is_delta_copy(copy) {
                true => copy.input.as_ref(),
                false => &plan,
            };
            device_operators = dag::device_operators(scratch, runs).await?;
            let target = copy.output_url.clone();
            let schema = Arc::new(copy.input.schema().as_arrow().clone());
            stand_in(&target, Arc::clone(&schema))?;
            // Also as the location an external table over it names, in
            // whatever form (`out`, `out/`, `file:///.../out/`).
            stand_in(&normalized(&target), schema)?;
            StepKind::Copy {
                target,
                delta: crate::delta::is_delta_copy(copy),
            }
        }
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
            device_operators = dag::device_operators(scratch, &create.input).await?;
            let name = create.name.to_string();
            stand_in(&name, Arc::new(create.input.schema().as_arrow().clone()))?;
            StepKind::CreateTable { name }
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(view)) => {
            let name = view.name.to_string();
            scratch.execute_logical_plan(plan.clone()).await?;
            StepKind::View { name }
        }
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(create)) => {
            let name = create.name.to_string();
            let location = create.locations.first().cloned().unwrap_or_default();
            // Over what an earlier COPY of the job writes: not there yet.
            let written_by = made.get(&normalized(&location)).copied();
            match scratch
                .table_provider(TableReference::bare(normalized(&location)))
                .await
            {
                Ok(written) if written_by.is_some() => {
                    stand_in(&name, written.schema())?;
                    after.extend(written_by);
                }
                _ => {
                    scratch.execute_logical_plan(plan.clone()).await?;
                }
            }
            StepKind::ExternalTable { name, location }
        }
        LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_)) => {
            device_operators = dag::device_operators(scratch, &plan).await?;
            // It writes into a table the job made: after that.
            if let Some(&made_by) = made.get(dml.table_name.table()) {
                after.push(made_by);
                after.sort_unstable();
                after.dedup();
            }
            let table = dml.table_name.to_string();
            let location = insert_location(&dml.target)
                .or_else(|| locations.get(dml.table_name.table()).cloned());
            StepKind::Insert { table, location }
        }
        LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) | LogicalPlan::Dml(_) => {
            scratch.execute_logical_plan(plan.clone()).await?;
            StepKind::Other
        }
        _ => {
            device_operators = dag::device_operators(scratch, &plan).await?;
            StepKind::Query
        }
    };
    let step = Step {
        index,
        sql,
        kind,
        reads,
        read_locations: dag::read_locations(&plan),
        after,
        read_by: Vec::new(),
        device_operators,
        committed: false,
        lineage,
        source: Source::Sql(statement),
    };
    Ok((step, inputs))
}

/// Whether `manifest` records step `mark`.
fn manifest_records(
    manifest: &Option<kiln_engine::io::committed::Manifest>,
    mark: &kiln_engine::io::committed::JobMark,
) -> bool {
    manifest
        .as_ref()
        .is_some_and(|m| m.job_steps.contains(mark))
}

/// The store of `target` (a directory output), and the manifest Kiln
/// committed there, if any.
async fn manifest_at(
    session: &Session,
    target: &str,
) -> Result<(
    datafusion::datasource::listing::ListingTableUrl,
    Arc<dyn object_store::ObjectStore>,
    Option<kiln_engine::io::committed::Manifest>,
)> {
    let url = datafusion::datasource::listing::ListingTableUrl::parse(target)?;
    let store = session
        .context()
        .runtime_env()
        .object_store(url.object_store())?;
    let manifest = kiln_engine::io::committed::Manifest::read(store.as_ref(), url.prefix()).await;
    Ok((url, store, manifest))
}

/// Whether a step writes a Delta table: a `COPY ... STORED AS DELTA`, or
/// an `INSERT` into a location that holds one.
async fn is_delta_step(session: &Session, step: &Step) -> bool {
    match &step.kind {
        StepKind::Copy { delta, .. } => *delta,
        StepKind::Insert {
            location: Some(location),
            ..
        } => crate::delta::is_table(session.registry(), location).await,
        _ => false,
    }
}

/// The directory an `INSERT` writes into, when its table is one (a
/// directory of files, or a Delta table).
fn insert_location(target: &Arc<dyn datafusion::logical_expr::TableSource>) -> Option<String> {
    match crate::lineage::table_locations(target).as_slice() {
        [location] => Some(location.clone()),
        _ => None,
    }
}

/// Where `location` is, as a comparable string (`out` and `out/`,
/// `/data/out/` and `file:///data/out/` are one).
fn normalized(location: &str) -> String {
    match datafusion::datasource::listing::ListingTableUrl::parse(location) {
        Ok(url) => format!("{}{}", url.object_store().as_str(), url.prefix()),
        Err(_) => location.to_string(),
    }
}

/// A private copy of the session's catalogs (the tables themselves are
/// shared, not copied) with its settings, to plan a job in.
async fn scratch_context(session: &Session) -> Result<SessionContext> {
    use datafusion::catalog::{
        CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, MemorySchemaProvider,
        SchemaProvider,
    };
    let state = session.context().state();
    let list = Arc::new(MemoryCatalogProviderList::new());
    for catalog_name in state.catalog_list().catalog_names() {
        let Some(catalog) = state.catalog_list().catalog(&catalog_name) else {
            continue;
        };
        let copy = Arc::new(MemoryCatalogProvider::new());
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else {
                continue;
            };
            let tables = Arc::new(MemorySchemaProvider::new());
            for table in schema.table_names() {
                if let Some(provider) = schema.table(&table).await? {
                    tables.register_table(table, provider)?;
                }
            }
            copy.register_schema(&schema_name, tables)?;
        }
        list.register_catalog(catalog_name, copy);
    }
    Ok(crate::session::over_catalogs(
        state,
        Some(list as Arc<dyn CatalogProviderList>),
    ))
}

/// Replaces view `name` in `ctx` by its rows, written as Parquet in `dir`
/// (the job's work directory: a reader streams them from disk, and memory
/// holds batches, not the view).
async fn materialize(
    ctx: &SessionContext,
    name: TableReference,
    dir: &std::path::Path,
) -> Result<crate::commit::Written> {
    let frame = ctx.table(name.clone()).await?;
    let location = format!(
        "{}/",
        dir.join(format!(
            "view-{}-{}",
            file_name_of(name.table()),
            blake3::hash(name.to_string().as_bytes()).to_hex()[..8].to_owned()
        ))
        .display()
    );
    let copy = parquet_copy(frame.into_unoptimized_plan(), &location)?;
    let written = crate::commit::run_frame(DataFrame::new(ctx.state(), copy)).await?;
    let rows = crate::commit::row_count(&written.batches);
    replace_with_table(ctx, name, &location, rows).await?;
    Ok(written)
}

/// `COPY (plan) TO 'location' STORED AS PARQUET`.
fn parquet_copy(plan: LogicalPlan, location: &str) -> Result<LogicalPlan> {
    use datafusion::datasource::file_format::format_as_file_type;
    use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
    Ok(datafusion::logical_expr::LogicalPlanBuilder::copy_to(
        plan,
        location.to_string(),
        format_as_file_type(Arc::new(ParquetFormatFactory::new())),
        HashMap::new(),
        vec![],
    )?
    .build()?)
}

/// Replaces view `name` in `ctx` by the table of its `rows` rows written
/// at `location`.
async fn replace_with_table(
    ctx: &SessionContext,
    name: TableReference,
    location: &str,
    rows: u64,
) -> Result<()> {
    let schema: SchemaRef = Arc::new(ctx.table(name.clone()).await?.schema().as_arrow().clone());
    ctx.deregister_table(name.clone())?;
    if rows == 0 {
        // No file to read a schema from.
        ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![vec![]])?))?;
    } else {
        ctx.register_parquet(name, location, Default::default())
            .await?;
    }
    Ok(())
}

/// `name` with what is not a letter or digit replaced by `_`.
fn file_name_of(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}
