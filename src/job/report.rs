//! What a job did, for a person and for an orchestrator (`kiln run
//! --report out.json`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::physical_plan::ExecutionPlan;
use futures::TryStreamExt;
use object_store::ObjectStore;

use super::{Job, Step, StepKind};
use crate::error::{KilnError, Result};
use crate::session::Session;

/// One step's record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    /// 1-based.
    pub index: usize,
    #[serde(flatten)]
    pub kind: StepKind,
    /// Rows written (outputs), returned (queries) or held (a shared view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Files at a `COPY`'s target after its commit (a Delta output: the
    /// files its commit added).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// The table version a Delta output's commit made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Unix time the step started, in seconds (steps of a wave start
    /// together).
    pub started_at: f64,
    /// Wall time of the step.
    pub seconds: f64,
    /// Rows the encoder embedded in this step (`embed()`).
    pub embedded_rows: u64,
    /// Rows whose embedding came from the embedding cache
    /// (`kiln.embed_cache`), and texts it did not hold (embedded).
    pub embed_cache_hits: u64,
    pub embed_cache_misses: u64,
    /// A view computed once and shared by the steps that read it.
    pub materialized: bool,
    /// Skipped: a resumed run found it committed by this same job.
    pub resumed: bool,
    /// An output run in parts, each checkpointed: how many
    /// (`kiln.job_part_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<u64>,
    /// Of those, the parts a killed run had done, skipped (`--resume`).
    pub resumed_parts: u64,
    /// What the step noticed (why a killed run's parts were not kept).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Kiln's operators placed on a device (from the job's plan).
    pub device_operators: Vec<String>,
}

impl StepReport {
    pub(super) fn new(step: &Step) -> Self {
        StepReport {
            index: step.index,
            kind: step.kind.clone(),
            rows: None,
            files: None,
            bytes: None,
            version: None,
            started_at: now(),
            seconds: 0.0,
            embedded_rows: 0,
            embed_cache_hits: 0,
            embed_cache_misses: 0,
            materialized: false,
            resumed: false,
            parts: None,
            resumed_parts: 0,
            notes: Vec::new(),
            device_operators: step.device_operators.clone(),
        }
    }
}

/// A job's record: every step that ran, and how the job ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobReport {
    /// `succeeded` or `failed`.
    pub status: &'static str,
    /// The failure, on one line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The session's device request.
    pub device: String,
    /// Statements in the job.
    pub statements: usize,
    /// The job's fingerprint ([`Job::fingerprint`]).
    pub fingerprint: String,
    /// Steps skipped because this job had committed them (`--resume`).
    pub resumed_steps: usize,
    /// Parts of outputs skipped because a killed run of this job had done
    /// them (`--resume`).
    pub resumed_parts: u64,
    /// Unix time the job started, in seconds.
    pub started_at: f64,
    /// Wall time until the job ended.
    pub seconds: f64,
    /// Rows embedded by every step.
    pub embedded_rows: u64,
    /// Embedding cache hits and misses of every step.
    pub embed_cache_hits: u64,
    pub embed_cache_misses: u64,
    pub steps: Vec<StepReport>,
}

impl JobReport {
    pub fn new(job: &Job) -> Self {
        JobReport {
            status: "running",
            error: None,
            device: job.device.clone(),
            statements: job.steps.len(),
            fingerprint: job.fingerprint.clone(),
            resumed_steps: 0,
            resumed_parts: 0,
            started_at: now(),
            seconds: 0.0,
            embedded_rows: 0,
            embed_cache_hits: 0,
            embed_cache_misses: 0,
            steps: Vec::new(),
        }
    }

    /// The record of a job that did not run: it did not parse or plan, or
    /// its resume check failed.
    pub fn not_run(device: &str, error: &KilnError) -> Self {
        let mut report = JobReport {
            status: "running",
            error: None,
            device: device.to_string(),
            statements: 0,
            fingerprint: String::new(),
            resumed_steps: 0,
            resumed_parts: 0,
            started_at: now(),
            seconds: 0.0,
            embedded_rows: 0,
            embed_cache_hits: 0,
            embed_cache_misses: 0,
            steps: Vec::new(),
        };
        report.finish(Some(error));
        report
    }

    /// Records a step that ran.
    pub fn push(&mut self, step: StepReport) {
        self.embedded_rows += step.embedded_rows;
        self.embed_cache_hits += step.embed_cache_hits;
        self.embed_cache_misses += step.embed_cache_misses;
        self.resumed_steps += usize::from(step.resumed);
        self.resumed_parts += step.resumed_parts;
        self.steps.push(step);
    }

    /// Ends the record: succeeded, or failed with `error`.
    pub fn finish(&mut self, error: Option<&KilnError>) {
        self.status = if error.is_some() {
            "failed"
        } else {
            "succeeded"
        };
        self.error = error.map(KilnError::one_line);
        self.seconds = now() - self.started_at;
    }

    /// The record as pretty JSON, ending with a newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            // Serializing plain data cannot fail; say so if it does.
            format!("{{\"status\": \"failed\", \"error\": \"report: {e}\"}}")
        });
        text.push('\n');
        text
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The number and bytes of the files at `target` (a file, or a directory or
/// prefix), in its store.
impl StepReport {
    /// The encoder's counts from the operators of `plans`, the plans that
    /// ran.
    pub(super) fn count_embeds(&mut self, plans: &[Arc<dyn ExecutionPlan>]) {
        let sum = |name| {
            plans
                .iter()
                .map(|plan| super::dag::metric_sum(plan, name))
                .sum()
        };
        self.embedded_rows = sum("embedded_rows");
        self.embed_cache_hits = sum("embed_cache_hits");
        self.embed_cache_misses = sum("embed_cache_misses");
    }

    /// The parts of an output run in parts, and why a killed run's were
    /// not kept.
    pub(super) fn record_parts(&mut self, written: &crate::commit::Written) {
        if let Some((parts, resumed)) = written.parts {
            self.parts = Some(parts as u64);
            self.resumed_parts = resumed as u64;
        }
        self.notes.extend(written.note.clone());
    }

    /// Rows, files, bytes and version of step `index`'s commit to the Delta
    /// table at `target`, when it is the table's newest.
    pub(super) async fn delta_commit(
        &mut self,
        session: &Session,
        target: &str,
        index: usize,
    ) -> Result<()> {
        let Some(commit) = crate::delta::last_commit(session.registry(), target).await? else {
            return Ok(());
        };
        if commit.job.as_ref().is_some_and(|j| j.step == index) {
            self.rows = commit.rows.or(self.rows);
            self.files = Some(commit.files);
            self.bytes = Some(commit.bytes);
            self.version = Some(commit.version);
        }
        Ok(())
    }
}

pub(super) async fn written_files(session: &Session, target: &str) -> Result<(u64, u64)> {
    let url = ListingTableUrl::parse(target)?;
    let store = session
        .context()
        .runtime_env()
        .object_store(url.object_store())?;
    let store_err = |source| KilnError::ObjectStore {
        location: target.to_string(),
        source,
    };
    if !url.is_collection()
        && let Ok(meta) = object_store::ObjectStoreExt::head(store.as_ref(), url.prefix()).await
    {
        return Ok((1, meta.size));
    }
    // A directory or prefix (named with or without its trailing '/').
    let files: Vec<_> = store
        .list(Some(url.prefix()))
        .try_collect()
        .await
        .map_err(store_err)?;
    Ok((
        files.len() as u64,
        files.iter().map(|f| f.size).sum::<u64>(),
    ))
}
