//! `kiln cluster local`: a scheduler and executors on this machine, as
//! child processes of this one — one executor per GPU where there are GPUs
//! (a multi-GPU box is a cluster of one machine), else two on the CPU.
//! It prints the cluster's address, runs until interrupted, and takes its
//! children with it when it goes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_kernels::{BackendKind, DeviceRequest, DeviceType, Discovery};

use super::{ClusterUrl, free_port};
use crate::error::{KilnError, Result};

/// How a local cluster is started; see `kiln cluster local --help`.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Executors to start; default: one per GPU, or 2 without a GPU.
    pub executors: Option<usize>,
    /// The scheduler's port; 0 picks a free one.
    pub port: u16,
    /// Every executor's device instead of one GPU each.
    pub device: Option<DeviceRequest>,
    /// Parent of the executors' work directories; default: a temporary one.
    pub work_dir: Option<PathBuf>,
    /// Tasks each executor runs at once.
    pub slots: Option<usize>,
    /// Seconds between executor heartbeats.
    pub heartbeat_secs: u64,
    /// Seconds of silence after which the scheduler takes an executor for dead.
    pub executor_timeout_secs: u64,
}

/// The devices of the executors: the one asked for, else one GPU each
/// (CUDA first, then hardware wgpu adapters), the CPU for the rest.
pub fn executor_devices(
    discovery: &Discovery,
    count: Option<usize>,
    device: Option<DeviceRequest>,
) -> Vec<DeviceRequest> {
    let gpus: Vec<DeviceRequest> = match device {
        Some(d) if d != DeviceRequest::Auto => vec![d; count.unwrap_or(2)],
        _ => discovery
            .of(BackendKind::Cuda)
            .chain(
                discovery
                    .of(BackendKind::Wgpu)
                    .filter(|d| d.device_type != DeviceType::Cpu),
            )
            .map(|d| DeviceRequest::Backend(d.backend, Some(d.index)))
            .collect(),
    };
    let count = count.unwrap_or(if gpus.is_empty() { 2 } else { gpus.len() });
    (0..count)
        .map(|i| {
            gpus.get(i)
                .copied()
                .unwrap_or(DeviceRequest::Backend(BackendKind::Cpu, None))
        })
        .collect()
}

/// The children; killed when dropped, the executors before the scheduler
/// (an executor that outlives its scheduler logs its failed polls).
struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(what: String, args: &[String], children: &mut Children) -> Result<()> {
    let exe = std::env::current_exe().map_err(|source| KilnError::File {
        path: "the kiln executable".into(),
        source,
    })?;
    let child = Command::new(exe)
        .args(args)
        .arg("--exit-with-parent")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| KilnError::File {
            path: format!("starting {what}"),
            source,
        })?;
    children.0.push((what, child));
    Ok(())
}

/// Waits until `port` on loopback accepts connections, or a child exits.
fn wait_for(port: u16, children: &mut Children, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        check_children(children)?;
        if Instant::now() > deadline {
            return Err(KilnError::Internal(format!(
                "the local cluster did not open port {port} within {}s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_children(children: &mut Children) -> Result<()> {
    for (what, child) in &mut children.0 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(KilnError::Usage(format!(
                "the local cluster's {what} exited ({status}); its error is above"
            )));
        }
    }
    Ok(())
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// Starts the cluster, calls `ready` with its address and the executors'
/// devices, and runs until interrupted (Ctrl-C, SIGTERM) or a member exits.
pub async fn run(
    options: LocalOptions,
    ready: impl FnOnce(&ClusterUrl, &[DeviceRequest]),
) -> Result<()> {
    let devices = executor_devices(
        kiln_engine::device::discovered(),
        options.executors,
        options.device,
    );
    if devices.is_empty() {
        return Err(KilnError::Usage(
            "a cluster needs at least one executor".into(),
        ));
    }
    let port = match options.port {
        0 => free_port("127.0.0.1")?,
        p => p,
    };
    let temp;
    let work = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|source| KilnError::File {
                path: "a temporary work directory".into(),
                source,
            })?;
            temp.path().to_path_buf()
        }
    };
    let mut children = Children(Vec::new());
    spawn(
        "scheduler".into(),
        &[
            "scheduler".into(),
            "--bind".into(),
            format!("127.0.0.1:{port}"),
            "--executor-timeout".into(),
            options.executor_timeout_secs.to_string(),
        ],
        &mut children,
    )?;
    wait_for(port, &mut children, Duration::from_secs(30))?;
    let url = ClusterUrl {
        host: "127.0.0.1".into(),
        port,
    };
    // Executors pull their tasks; the port they serve is Arrow Flight's.
    let mut flight_ports = Vec::new();
    for (i, device) in devices.iter().enumerate() {
        let flight_port = free_port("127.0.0.1")?;
        let mut args = vec![
            "executor".to_string(),
            "--scheduler".into(),
            url.to_string(),
            "--device".into(),
            device.to_string(),
            "--work-dir".into(),
            path_arg(&work.join(format!("executor-{i}"))),
            "--port".into(),
            flight_port.to_string(),
            "--heartbeat".into(),
            options.heartbeat_secs.to_string(),
        ];
        if let Some(slots) = options.slots {
            args.extend(["--slots".into(), slots.to_string()]);
        }
        spawn(format!("executor {i} ({device})"), &args, &mut children)?;
        flight_ports.push(flight_port);
    }
    for p in flight_ports {
        wait_for(p, &mut children, Duration::from_secs(60))?;
    }
    ready(&url, &devices);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| KilnError::File {
            path: "the SIGTERM handler".into(),
            source,
        })?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => check_children(&mut children)?,
        }
    }
}

/// Ends this process when its parent goes (`--exit-with-parent`): the
/// members of a local cluster do not outlive the command that started them.
pub fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_default_to_two_cpu_executors_without_a_gpu() {
        let cpu_only = Discovery {
            devices: vec![kiln_kernels::cpu_backend::info()],
            absent: vec![],
        };
        let cpu = DeviceRequest::Backend(BackendKind::Cpu, None);
        assert_eq!(executor_devices(&cpu_only, None, None), vec![cpu, cpu]);
        assert_eq!(executor_devices(&cpu_only, Some(3), None).len(), 3);
        let wgpu = DeviceRequest::Backend(BackendKind::Wgpu, Some(0));
        assert_eq!(executor_devices(&cpu_only, Some(1), Some(wgpu)), vec![wgpu]);
    }
}
