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

    /// The process's exit code for this error: 2 for a bad command line,
    /// 130 for Ctrl-C (as a shell reports an interrupted command), 1 for
    /// everything that went wrong while running.
    pub fn exit_code(&self) -> u8 {
        match self {
            e if e.is_usage() => 2,
            KilnError::Cancelled => 130,
            KilnError::Statement { source, .. } if matches!(**source, KilnError::Cancelled) => 130,
            _ => 1,
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
