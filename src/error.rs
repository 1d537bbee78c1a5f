//! Kiln's error type, grouped by who is at fault: the user's input (SQL,
//! paths, options), the environment's resources (stores, devices, files), or
//! Kiln itself. Every message that leaves Kiln goes through
//! [`KilnError::one_line`], which also strips credentials.

use datafusion::error::DataFusionError;

/// The result type of the `kiln` crate.
pub type Result<T, E = KilnError> = std::result::Result<T, E>;

/// Everything that can go wrong in a Kiln session or command.
#[derive(Debug, thiserror::Error)]
pub enum KilnError {
    // --- the user's input ---
    /// A command-line or API argument that makes no sense.
    #[error("{0}")]
    Usage(String),

    /// A statement nested beyond `kiln.max_expression_depth`.
    #[error(
        "the statement nests expressions or set operations more than {limit} deep (reached {depth}); \
         write long chains as IN (...) lists or tables, or raise SET kiln.max_expression_depth"
    )]
    TooDeep { depth: usize, limit: usize },

    /// A file named in a query whose extension names no format.
    #[error("{0}")]
    UnknownFormat(String),

    /// A SQL script with no statement in it.
    #[error("no SQL statement given")]
    EmptySql,

    // --- resources ---
    /// A local file Kiln was asked to read or write.
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Writing Parquet failed.
    #[error("writing Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),

    // --- from the layers below ---
    /// Planning or executing a query.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// Object stores and execution.
    #[error(transparent)]
    Engine(#[from] kiln_engine::EngineError),

    /// Devices and kernels.
    #[error(transparent)]
    Kernel(#[from] kiln_kernels::KernelError),

    /// Object-store operations outside DataFusion (datagen uploads).
    #[error("{location}: {source}")]
    ObjectStore {
        location: String,
        #[source]
        source: object_store::Error,
    },

    /// Reading or writing a Delta table.
    #[error("{location}: Delta: {source}")]
    Delta {
        location: String,
        #[source]
        source: deltalake::DeltaTableError,
    },

    /// A cluster's scheduler did not accept a connection.
    #[error("cannot reach the Kiln scheduler at {url}: {reason}")]
    SchedulerUnreachable { url: String, reason: String },

    /// A cluster role could not listen on its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// Ballista's scheduler or executor failed.
    #[error("cluster: {0}")]
    Cluster(#[from] ballista_core::error::BallistaError),

    /// A `--table NAME=LOCATION` could not be registered.
    #[error("--table {name}: {source}")]
    Table {
        name: String,
        #[source]
        source: Box<KilnError>,
    },

    /// A statement of a multi-statement script failed.
    #[error("statement {index} of {total}: {source}")]
    Statement {
        index: usize,
        total: usize,
        #[source]
        source: Box<KilnError>,
    },

    /// A statement of a job that does not plan: nothing of the job ran.
    #[error("the job was not run: statement {index} of {total}: {source}")]
    JobStatement {
        index: usize,
        total: usize,
        #[source]
        source: Box<KilnError>,
    },

    /// A job whose statement `index` does not parse: nothing of it ran.
    #[error("the job was not run: statement {index} of {total} (from line {line}): {source}")]
    JobSyntax {
        index: usize,
        total: usize,
        line: u64,
        #[source]
        source: Box<KilnError>,
    },

    /// The statement ran past `kiln.statement_timeout` and was cancelled.
    #[error("cancelled after {}: the statement ran past kiln.statement_timeout", humantime(*.0))]
    Timeout(std::time::Duration),

    /// Ctrl-C cancelled the statement.
    #[error("cancelled (Ctrl-C)")]
    Cancelled,

    /// `kiln drift --fail-on-drift`: the data drifted (exit code
    /// [`EXIT_DRIFT`]).
    #[error(
        "drift: {drifted} of {compared} columns drifted (share {share:.2} >= {limit:.2}): {columns}"
    )]
    Drifted {
        drifted: usize,
        compared: usize,
        share: f64,
        limit: f64,
        columns: String,
    },

    // --- Kiln itself ---
    /// A panic in Kiln or a library it uses, caught at the statement.
    #[error("internal error: {0} (a bug in Kiln or a library it uses; please report it)")]
    Panic(String),

    /// A broken invariant or a crashed worker task.
    #[error("internal error: {0}")]
    Internal(String),

    /// Arrow formatting of results.
    #[error("formatting results: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

impl KilnError {
    /// The message on one line, without credentials, for a terminal or a log.
    pub fn one_line(&self) -> String {
        let text = match self {
            KilnError::DataFusion(e) => describe_datafusion(e),
            KilnError::Statement {
                index,
                total,
                source,
            } => format!("statement {index} of {total}: {}", source.one_line()),
            KilnError::Table { name, source } => format!("--table {name}: {}", source.one_line()),
            KilnError::JobStatement {
                index,
                total,
                source,
            } => format!(
                "the job was not run: statement {index} of {total}: {}",
                source.one_line()
            ),
            KilnError::JobSyntax {
                index,
                total,
                line,
                source,
            } => format!(
                "the job was not run: statement {index} of {total} (from line {line}): {}",
                source.one_line()
            ),
            other => other.to_string(),
        };
        finish_line(text)
    }
}

/// The one-line message of a DataFusion error, as [`KilnError::one_line`]
/// gives it.
pub(crate) fn datafusion_one_line(e: &DataFusionError) -> String {
    finish_line(describe_datafusion(e))
}

/// A message made one line for a terminal: a cluster task's failure as its
/// message, a hint where AWS credentials are missing, no credentials.
fn finish_line(text: String) -> String {
    let text = cluster_task_failure(&text).unwrap_or(text);
    // The last link of the AWS credential chain is the instance
    // metadata endpoint; its refusal says nothing to a user without one.
    let text = if text.contains("169.254.169.254") {
        format!(
            "{text} (no AWS credentials found: set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or OPTIONS ('aws.access_key_id' ...); \
             instance metadata is not available here)"
        )
    } else {
        text
    };
    let flat = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    kiln_engine::io::redact(&flat)
}

impl KilnError {
    /// The process's exit code for this error: 2 for a bad command line,
    /// 130 for Ctrl-C (as a shell reports an interrupted command),
    /// [`EXIT_RETRYABLE`] (75, sysexits' `EX_TEMPFAIL`) for a failure of the
    /// environment that running again may not meet ([`Self::is_retryable`]),
    /// 3 when `kiln drift --fail-on-drift` found drift ([`EXIT_DRIFT`]),
    /// 1 for everything else that went wrong while running (the SQL, the
    /// data, a missing table or file: running again fails the same way).
    pub fn exit_code(&self) -> u8 {
        match self {
            e if e.is_usage() => 2,
            KilnError::Cancelled => 130,
            KilnError::Drifted { .. } => EXIT_DRIFT,
            KilnError::Statement { source, .. } if matches!(**source, KilnError::Cancelled) => 130,
            e if e.is_retryable() => EXIT_RETRYABLE,
            _ => 1,
        }
    }

    /// Whether running again may succeed: the failure came from the
    /// environment — a store or the network (unreachable, timed out,
    /// throttled, failing with a server error), a local I/O error other
    /// than a missing or forbidden file, a device (out of memory after every
    /// fallback, a driver error), a cluster's scheduler or executors, memory
    /// exhausted — not from the job or its data. What Kiln found wrong in a
    /// file (a lying Parquet footer or metadata) is not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            KilnError::File { source, .. } => io_retryable(source),
            KilnError::DataFusion(e) => datafusion_retryable(e),
            KilnError::Engine(e) => engine_retryable(e),
            KilnError::Kernel(e) => e.is_transient(),
            KilnError::ObjectStore { source, .. } => store_retryable(source),
            KilnError::Delta { source, .. } => delta_retryable(source),
            KilnError::SchedulerUnreachable { .. } => true,
            KilnError::Cluster(e) => match e {
                ballista_core::error::BallistaError::DataFusionError(e) => datafusion_retryable(e),
                ballista_core::error::BallistaError::NotImplemented(_)
                | ballista_core::error::BallistaError::Internal(_) => false,
                _ => true,
            },
            KilnError::Table { source, .. }
            | KilnError::Statement { source, .. }
            | KilnError::JobStatement { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// Whether the error is a closed standard output (the reader, such as
    /// `head`, has what it wanted): a normal end, not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        let io_kind = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
        match self {
            KilnError::File { source, .. } => io_kind(source),
            KilnError::Arrow(datafusion::arrow::error::ArrowError::IoError(_, e)) => io_kind(e),
            KilnError::DataFusion(DataFusionError::ArrowError(e, _)) => {
                matches!(&**e, datafusion::arrow::error::ArrowError::IoError(_, e) if io_kind(e))
            }
            KilnError::DataFusion(DataFusionError::IoError(e)) => io_kind(e),
            KilnError::Statement { source, .. } => source.is_broken_pipe(),
            _ => false,
        }
    }

    /// Whether the user's input (rather than the environment) is at fault.
    pub fn is_usage(&self) -> bool {
        match self {
            KilnError::Usage(_) | KilnError::EmptySql => true,
            KilnError::Statement { source, .. }
            | KilnError::JobStatement { source, .. }
            | KilnError::JobSyntax { source, .. } => source.is_usage(),
            _ => false,
        }
    }
}

/// A Delta error that may pass: its store's, an I/O error of the kinds
/// that pass, or a commit that lost to other writers every time it tried.
fn delta_retryable(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::DeltaTableError as D;
    use deltalake::kernel::transaction::TransactionError as T;
    match e {
        D::ObjectStore { source }
        | D::Transaction {
            source: T::ObjectStore { source },
        } => store_retryable(source),
        D::Io { source } => io_retryable(source),
        D::Transaction {
            source: T::CommitConflict(_) | T::MaxCommitAttempts(_) | T::VersionAlreadyExists(_),
        }
        | D::VersionAlreadyExists(_) => true,
        _ => false,
    }
}

/// The exit code of a failure that running again may not meet.
pub const EXIT_RETRYABLE: u8 = 75;

/// The exit code of `kiln drift --fail-on-drift` when the data drifted: a
/// pipeline can tell a drift (3) from a run that failed (1).
pub const EXIT_DRIFT: u8 = 3;

/// Whether an I/O error is of the kinds that pass: the network (refused,
/// reset, timed out, unreachable), an interrupted call, a busy resource or a
/// full disk. A missing, forbidden or malformed file fails again.
fn io_retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        TimedOut
            | ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
            | Interrupted
            | WouldBlock
            | ResourceBusy
            | StorageFull
            | QuotaExceeded
            | OutOfMemory
    )
}

/// The first I/O error in `e`'s chain of sources.
fn io_source<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        next = e.source();
    }
    None
}

fn store_retryable(e: &object_store::Error) -> bool {
    use kiln_engine::io::parquet_footer::{BadFooter, BadMetadata, RangeBeyondObject};
    match e {
        // Network, timeouts, throttling and server errors come as Generic,
        // as do Kiln's own verdicts on a file, which are not.
        object_store::Error::Generic { store, source } => {
            let verdict = source.is::<BadFooter>()
                || source.is::<BadMetadata>()
                || source.is::<RangeBeyondObject>();
            if verdict {
                return false;
            }
            // The local store reports every I/O error but a missing file
            // as Generic: its kind decides.
            if *store == "LocalFileSystem" {
                return io_source(source.as_ref()).is_some_and(io_retryable);
            }
            http_status(source.as_ref()).is_none_or(|s| s >= 500 || s == 408 || s == 429)
        }
        object_store::Error::JoinError { .. } => true,
        _ => false,
    }
}

/// The HTTP status a store's request failed with, if it got one.
/// object_store 0.13 keeps its request error type private (`client::retry`
/// is not public), so the status is read from the message it writes:
/// "Server returned non-2xx status code: 404 Not Found". A 4xx other than
/// 408 and 429 (a missing bucket, a refused request) fails again the same
/// way; no status (the connection failed) or a 5xx may not.
fn http_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    const MARK: &str = "status code: ";
    let mut next = Some(e);
    while let Some(e) = next {
        let text = e.to_string();
        if let Some(at) = text.find(MARK) {
            let digits: String = text[at + MARK.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(status) = digits.parse() {
                return Some(status);
            }
        }
        next = e.source();
    }
    None
}

fn engine_retryable(e: &kiln_engine::EngineError) -> bool {
    match e {
        kiln_engine::EngineError::File { source, .. } => io_retryable(source),
        kiln_engine::EngineError::ObjectStore { source, .. } => store_retryable(source),
        kiln_engine::EngineError::Kernel(e) => e.is_transient(),
        _ => false,
    }
}

fn external_retryable(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<object_store::Error>() {
        return store_retryable(e);
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        return io_retryable(e);
    }
    if let Some(e) = e.downcast_ref::<DataFusionError>() {
        return datafusion_retryable(e);
    }
    if let Some(e) = e.downcast_ref::<kiln_kernels::KernelError>() {
        return e.is_transient();
    }
    if let Some(e) = e.downcast_ref::<kiln_engine::EngineError>() {
        return engine_retryable(e);
    }
    if let Some(e) = e.downcast_ref::<KilnError>() {
        return e.is_retryable();
    }
    false
}

fn datafusion_retryable(e: &DataFusionError) -> bool {
    use datafusion::arrow::error::ArrowError;
    use datafusion::parquet::errors::ParquetError;
    match e {
        DataFusionError::ObjectStore(e) => store_retryable(e),
        DataFusionError::IoError(e) => io_retryable(e),
        DataFusionError::ResourcesExhausted(_) => true,
        DataFusionError::External(e) => external_retryable(e.as_ref()),
        DataFusionError::Context(_, e) | DataFusionError::Diagnostic(_, e) => {
            datafusion_retryable(e)
        }
        DataFusionError::Shared(e) => datafusion_retryable(e),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::IoError(_, e) => io_retryable(e),
            ArrowError::ExternalError(e) => external_retryable(e.as_ref()),
            _ => false,
        },
        DataFusionError::ParquetError(e) => match e.as_ref() {
            ParquetError::External(e) => external_retryable(e.as_ref()),
            _ => false,
        },
        DataFusionError::Collection(errors) => errors.iter().any(datafusion_retryable),
        _ => false,
    }
}

/// A duration as a person writes it: 250ms, 2s, 1.5s.
fn humantime(d: std::time::Duration) -> String {
    if d < std::time::Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let secs = format!("{:.3}", d.as_secs_f64());
    format!("{}s", secs.trim_end_matches('0').trim_end_matches('.'))
}

/// DataFusion's message, with its wrapper prefixes ("External error: ",
/// "Context(...)") peeled off where they add nothing for a user.
/// A cluster job that failed because one of its tasks did, as Ballista
/// reports it to the client — `Job J failed: Job failed due to stage S
/// failed: Task failed due to runtime execution error:
/// DataFusionError(Execution("<message>"))`, the message escaped as Rust's
/// `Debug` writes a string (Kiln's executors put the task's one-line error
/// there) — as that message with the job and stage after it.
fn cluster_task_failure(text: &str) -> Option<String> {
    const TASK: &str = "Task failed due to runtime execution error: DataFusionError(Execution(\"";
    let start = text.find(TASK)? + TASK.len();
    let quoted = text[start..].trim_end().strip_suffix("\"))")?;
    let mut message = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            message.push(c);
            continue;
        }
        match chars.next()? {
            'n' => message.push(' '),
            't' => message.push('\t'),
            'r' => {}
            'u' => {
                let code: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                message.push(char::from_u32(u32::from_str_radix(&code, 16).ok()?)?);
            }
            other => message.push(other),
        }
    }
    let job = text
        .split("Job ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    let stage = text
        .split("due to stage ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    Some(match (job, stage) {
        (Some(job), Some(stage)) => format!("{message} (cluster job {job}, stage {stage})"),
        _ => message,
    })
}

fn describe_datafusion(e: &DataFusionError) -> String {
    match e {
        DataFusionError::External(inner) => inner.to_string(),
        DataFusionError::Context(ctx, inner) => format!("{ctx}: {}", describe_datafusion(inner)),
        DataFusionError::Shared(inner) => describe_datafusion(inner),
        DataFusionError::ObjectStore(inner) => inner.to_string(),
        DataFusionError::Diagnostic(_, inner) => describe_datafusion(inner),
        // The parquet crate's own message already starts "Parquet error: ".
        DataFusionError::ParquetError(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_task_failure_reads_as_the_task_error() {
        let text = "Execution error: Job 038HR6ZK0E000 failed: Job failed due to stage 1 failed: \
            Task failed due to runtime execution error: DataFusionError(Execution(\
            \"'/tmp/a \\\"b\\\".parquet' is not valid: \\u{e9}t\\u{e9}\\nnext\"))\n";
        assert_eq!(
            cluster_task_failure(text).as_deref(),
            Some(
                "'/tmp/a \"b\".parquet' is not valid: été next (cluster job 038HR6ZK0E000, stage 1)"
            )
        );
        assert_eq!(
            cluster_task_failure("Execution error: division by zero"),
            None
        );
        let e = KilnError::DataFusion(DataFusionError::Execution(text.to_string()));
        assert!(
            e.one_line()
                .starts_with("'/tmp/a \"b\".parquet' is not valid")
        );
    }
}
