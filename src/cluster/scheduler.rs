//! `kiln scheduler`: Ballista's scheduler, started as a library with Kiln's
//! session — Kiln's options, functions, object stores, logical rules and
//! codecs — so it plans Kiln's statements into stages. It places nothing on
//! a device: executors do that with their own device.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use kiln_kernels::{BackendKind, DeviceRequest};

use super::codec::{KilnLogicalCodec, KilnPhysicalCodec};
use super::{node_config, runtime};
use crate::error::{KilnError, Result};

/// How a scheduler is started; see `kiln scheduler --help`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen on; port 0 picks a free one.
    pub bind: String,
    /// The host executors and clients reach this scheduler by; default:
    /// the bind host, or this machine's name when binding every interface.
    pub external_host: Option<String>,
    /// Seconds without a heartbeat after which an executor is taken for
    /// dead and its tasks (and the shuffle output it held) are run again.
    pub executor_timeout_secs: u64,
}

/// The scheduler's session for each client session: Kiln's logical
/// planning and functions over the client's options.
fn scheduler_session(config: SessionConfig) -> datafusion::common::Result<SessionState> {
    let state = kiln_planner::install_logical(
        SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime()?),
    )
    .build();
    let ctx = SessionContext::new_with_state(state);
    kiln_planner::register_functions(&ctx);
    Ok(ctx.state())
}

/// This machine's name, for a scheduler bound to every interface.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Runs a scheduler until the process is stopped. `ready` is called with
/// the address it listens on once it accepts connections.
pub async fn run(options: SchedulerOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    // The scheduler plans; it runs no kernel. Resolving every session's
    // kiln.device to the CPU here keeps a client's `cuda` from failing on a
    // scheduler without one.
    kiln_engine::device::pin_process_device(DeviceRequest::Backend(BackendKind::Cpu, None))?;
    let listener = tokio::net::TcpListener::bind(&options.bind)
        .await
        .map_err(|source| KilnError::Bind {
            addr: options.bind.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| KilnError::Bind {
        addr: options.bind.clone(),
        source,
    })?;
    let external_host = options.external_host.clone().unwrap_or_else(|| {
        if addr.ip().is_unspecified() {
            host_name()
        } else {
            addr.ip().to_string()
        }
    });
    let timeout = options.executor_timeout_secs.max(1);
    let config = SchedulerConfig {
        bind_host: addr.ip().to_string(),
        bind_port: addr.port(),
        external_host,
        executor_timeout_seconds: timeout,
        scheduling_policy: super::SCHEDULING,
        expire_dead_executor_interval_seconds: (timeout / 3).clamp(1, 15),
        override_config_producer: Some(Arc::new(|| {
            node_config(DeviceRequest::Backend(BackendKind::Cpu, None))
        })),
        override_session_builder: Some(Arc::new(scheduler_session)),
        override_logical_codec: Some(Arc::new(KilnLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(KilnPhysicalCodec::default())),
        ..Default::default()
    };
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config).await?;
    ready(addr);
    start_grpc_service_with_listener(listener, scheduler).await?;
    Ok(())
}
