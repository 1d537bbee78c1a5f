//! Kiln on an Apache DataFusion Ballista cluster.
//!
//! Ballista schedules; Kiln adds what its nodes need to run Kiln's plans:
//! the `kiln.*` options registered on every node (so a client's `SET
//! kiln.x` reaches the executors), Kiln's functions and object stores,
//! codecs for Kiln's logical nodes and operators ([`codec`]), and device
//! placement on the executors ([`executor`]): the scheduler plans
//! device-neutral stages, and each executor lowers the stage it runs onto
//! its own device, so one plan runs on a mix of GPU and CPU executors and no
//! GPU program crosses the wire.
//!
//! - [`scheduler`]: `kiln scheduler`, Ballista's scheduler with Kiln's session.
//! - [`executor`]: `kiln executor`, Ballista's executor owning one device.
//! - [`local`]: `kiln cluster local`, a scheduler and executors on this machine.
//! - [`ClusterUrl`] and [`client_state`]: what a [`crate::Session`] on a
//!   cluster is built from.

pub mod codec;
pub mod executor;
pub mod local;
pub mod scheduler;

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;
use kiln_engine::io::KilnObjectStoreRegistry;
use kiln_kernels::DeviceRequest;

use crate::error::{KilnError, Result};

/// How tasks reach executors: executors poll the scheduler for work. In
/// Ballista 55.0.0 push scheduling can leave a job waiting forever after an
/// executor is lost (the rolled-back stages' tasks are never offered
/// again); executors that ask for work find them.
pub const SCHEDULING: ballista_core::config::TaskSchedulingPolicy =
    ballista_core::config::TaskSchedulingPolicy::PullStaged;

/// The port a scheduler listens on unless told otherwise (Ballista's).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// How long a client or executor waits for a scheduler to answer a
/// connection before it gives up with an error.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A scheduler's address as users write it: `df://host:port` (the port
/// defaults to 50050).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUrl {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for ClusterUrl {
    type Err = KilnError;

    fn from_str(text: &str) -> Result<Self> {
        let bad = || {
            KilnError::Usage(format!(
                "a cluster address looks like df://host:{DEFAULT_SCHEDULER_PORT}, not '{text}'"
            ))
        };
        let rest = text.trim().strip_prefix("df://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, port.parse::<u16>().map_err(|_| bad())?),
            None => (rest, DEFAULT_SCHEDULER_PORT),
        };
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(bad());
        }
        Ok(ClusterUrl {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for ClusterUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "df://{}:{}", self.host, self.port)
    }
}

impl ClusterUrl {
    /// Fails, within [`CONNECT_TIMEOUT`], unless something accepts
    /// connections at the scheduler's address. Ballista itself connects only
    /// when the first query runs, and then reports a refused connection as
    /// a transport error dump; a session checks first.
    pub fn check_reachable(&self) -> Result<()> {
        let unreachable = |reason: String| KilnError::SchedulerUnreachable {
            url: self.to_string(),
            reason,
        };
        let addrs: Vec<_> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?
            .collect();
        let mut last = "the host has no address".to_string();
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(last))
    }
}

/// The session configuration every node of a Kiln cluster, and a client
/// of one, starts from: Ballista's (its options registered, so `ballista.*`
/// keys survive), Kiln's options, and Kiln's codecs.
///
/// File-scan work stealing is off: DataFusion's scans let a partition that
/// runs out of files read its siblings' files, which in one process keeps
/// every partition busy; a Ballista task runs one partition of a stage and
/// its siblings run as other tasks, so a task would read the files of
/// partitions that other tasks read too (and ties in vector search, which
/// break by input order, would follow whichever task stole first).
/// DataFusion's own documentation of the option says as much; Ballista
/// 55.0.0 leaves it on.
pub fn node_config(device: DeviceRequest) -> SessionConfig {
    kiln_planner::with_kiln_options(SessionConfig::new_with_ballista(), device)
        .set_bool(WORK_STEALING, false)
        .set_bool(ADAPTIVE_PLANNER, false)
        .with_ballista_logical_extension_codec(Arc::new(codec::KilnLogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(codec::KilnPhysicalCodec::default()))
}

/// Ballista's adaptive planner, off on Kiln clusters: in Ballista 55.0.0 it
/// cannot recover from a lost executor (the rerun stage's outputs are not
/// found, "Can't find active stage to update stage outputs", and the job
/// hangs), which the static planner does. `SET
/// ballista.planner.adaptive.enabled = true` turns it back on for a session.
pub const ADAPTIVE_PLANNER: &str = "ballista.planner.adaptive.enabled";

/// The option that lets file scans rebalance files between partitions.
pub const WORK_STEALING: &str = "datafusion.execution.enable_file_stream_work_stealing";

/// A runtime whose object stores are Kiln's (S3, GCS, Azure, HTTP, with
/// credentials from the node's environment), as in a local session.
pub fn runtime() -> datafusion::common::Result<Arc<RuntimeEnv>> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(KilnObjectStoreRegistry::new()))
        .build_arc()
}

/// The state of a client session on the cluster at `url` (`config` from
/// [`node_config`]): Kiln's logical rules and functions, with queries
/// planned and run by the cluster.
pub fn client_state(
    url: &ClusterUrl,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<datafusion::execution::SessionState> {
    let state = kiln_planner::install(
        SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime),
    )
    .build();
    let local = Arc::clone(state.query_planner());
    let state = state.upgrade_for_ballista(format!("http://{}:{}", url.host, url.port))?;
    let planner = Arc::new(ClientPlanner {
        inner: Arc::clone(state.query_planner()),
        local,
    });
    Ok(SessionStateBuilder::new_from_existing(state)
        .with_query_planner(planner)
        .build())
}

/// A cluster client's query planner: Ballista's, after computing here the
/// tables whose rows are the result of queries of their own (`profile()`,
/// `drift()`; a table provider holding plans, which no codec carries). Their
/// queries — the scans and aggregates — run on the cluster through this same
/// planner; their few result rows travel to it as VALUES. A plan that reads
/// only rows already in this process (in-memory tables: results the client
/// holds, tables registered from Arrow data) runs here, with Kiln's local
/// planner: nothing to distribute, and no codec carries such a table.
#[derive(Debug)]
struct ClientPlanner {
    inner: Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync>,
    local: Arc<dyn datafusion::execution::context::QueryPlanner + Send + Sync>,
}

#[async_trait::async_trait]
impl datafusion::execution::context::QueryPlanner for ClientPlanner {
    async fn create_physical_plan(
        &self,
        plan: &datafusion::logical_expr::LogicalPlan,
        state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let plan = computed_tables_inlined(plan, state).await?;
        match reads_only_memory(&plan) {
            true => self.local.create_physical_plan(&plan, state).await,
            false => self.inner.create_physical_plan(&plan, state).await,
        }
    }
}

/// Whether every table `plan` reads (one at least) is in memory here.
fn reads_only_memory(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::LogicalPlan;
    let (mut memory, mut other) = (0, 0);
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let in_memory =
                datafusion::datasource::source_as_provider(&scan.source).is_ok_and(|p| {
                    p.downcast_ref::<datafusion::datasource::MemTable>()
                        .is_some()
                });
            match in_memory {
                true => memory += 1,
                false => other += 1,
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    memory > 0 && other == 0
}

/// Whether a table's rows are computed by queries of its own.
fn is_computed(source: &Arc<dyn datafusion::logical_expr::TableSource>) -> bool {
    datafusion::datasource::source_as_provider(source).is_ok_and(|p| {
        p.downcast_ref::<kiln_planner::profile::ProfileTable>()
            .is_some()
            || p.downcast_ref::<kiln_planner::drift::DriftTable>()
                .is_some()
    })
}

/// `plan` with each scan of a computed table replaced by its rows.
async fn computed_tables_inlined(
    plan: &datafusion::logical_expr::LogicalPlan,
    state: &dyn datafusion::catalog::Session,
) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    let mut scans = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && is_computed(&scan.source)
        {
            scans.push(scan.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if scans.is_empty() {
        return Ok(plan.clone());
    }
    let mut computed = Vec::with_capacity(scans.len());
    for scan in &scans {
        computed.push(rows_of(scan, state).await?);
    }
    let inlined = plan.clone().transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else {
            return Ok(Transformed::no(node));
        };
        match scans.iter().position(|s| s == scan) {
            Some(i) => Ok(Transformed::yes(computed[i].clone())),
            None => Ok(Transformed::no(node)),
        }
    })?;
    Ok(inlined.data)
}

/// A computed table's rows, as the plan of its scan: VALUES (no rows: an
/// empty relation) under the table's name, projected and limited as the
/// scan was.
async fn rows_of(
    scan: &datafusion::logical_expr::TableScan,
    state: &dyn datafusion::catalog::Session,
) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::common::{DFSchema, ScalarValue};
    use datafusion::logical_expr::{EmptyRelation, Expr, LogicalPlan, LogicalPlanBuilder};
    let provider = datafusion::datasource::source_as_provider(&scan.source)?;
    let exec = provider
        .scan(state, scan.projection.as_ref(), &[], scan.fetch)
        .await?;
    let schema = exec.schema();
    let batches = datafusion::physical_plan::collect(exec, state.task_ctx()).await?;
    let mut rows: Vec<Vec<Expr>> = Vec::new();
    for batch in &batches {
        for r in 0..batch.num_rows() {
            let row = batch
                .columns()
                .iter()
                .map(|c| Ok(Expr::Literal(ScalarValue::try_from_array(c, r)?, None)))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            rows.push(row);
        }
    }
    if let Some(fetch) = scan.fetch {
        rows.truncate(fetch);
    }
    let unqualified = Arc::new(DFSchema::try_from(schema.as_ref().clone())?);
    let values = match rows.is_empty() {
        true => LogicalPlanBuilder::from(LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: false,
            schema: unqualified,
        })),
        // VALUES names its columns column1, column2, ... (also where the
        // cluster decodes it): named after the table's columns on top.
        false => {
            let values = LogicalPlanBuilder::values_with_schema(rows, &unqualified)?.build()?;
            let named: Vec<Expr> = values
                .schema()
                .columns()
                .into_iter()
                .zip(schema.fields())
                .map(|(column, field)| Expr::Column(column).alias(field.name()))
                .collect();
            LogicalPlanBuilder::from(values).project(named)?
        }
    };
    values.alias(scan.table_name.clone())?.build()
}

/// Sends the log lines of a cluster role (Ballista's scheduler and
/// executor log through the `log` crate) to stderr, at the level named by
/// `KILN_LOG` (`error`, `warn`, `info`, `debug`, `trace`; default `warn`).
pub fn init_logging() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::max_level()
        }

        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                eprintln!(
                    "[{} {}] {}",
                    record.level(),
                    record.target(),
                    kiln_engine::io::redact(&record.args().to_string())
                );
            }
        }

        fn flush(&self) {}
    }
    let level = std::env::var("KILN_LOG")
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Warn);
    static LOGGER: Stderr = Stderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// A free TCP port on `host`, for a role started without one. The port is
/// released before the role binds it; a clash is reported by the role.
pub fn free_port(host: &str) -> Result<u16> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| KilnError::File {
            path: format!("a free port on {host}"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: ClusterUrl = "df://sched-host:50060".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("sched-host", 50060));
        let u: ClusterUrl = "df://10.0.0.1".parse().unwrap();
        assert_eq!(u.port, DEFAULT_SCHEDULER_PORT);
        assert_eq!(u.to_string(), "df://10.0.0.1:50050");
        for bad in ["sched:50050", "df://", "df://h:x", "df://h:0", "http://h:1"] {
            let e = bad.parse::<ClusterUrl>().unwrap_err();
            assert!(e.is_usage(), "{bad}: {e}");
        }
    }

    #[test]
    fn unreachable_scheduler_is_one_error_quickly() {
        let port = free_port("127.0.0.1").unwrap();
        let url: ClusterUrl = format!("df://127.0.0.1:{port}").parse().unwrap();
        let started = std::time::Instant::now();
        let e = url.check_reachable().unwrap_err();
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
        assert!(e.to_string().contains(&url.to_string()), "{e}");
    }
}
