//! Shared fixtures: running the `kiln` binary, a small Parquet table with
//! known rows, TPC-H data at a tiny scale, and an S3-compatible server
//! (moto) on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// A `kiln` command with a clean environment for credentials: no AWS/GCP/Azure
/// variables leak in from the machine running the tests.
pub fn kiln() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AWS_") || key.starts_with("GOOGLE_") || key.starts_with("AZURE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("KILN_DEVICE");
    cmd.stdin(Stdio::null());
    cmd
}

pub fn run(cmd: &mut Command) -> Run {
    let started = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn kiln");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Runs `kiln ARGS` and expects success; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let r = run(kiln().args(args));
    assert_eq!(r.code, 0, "kiln {args:?} failed: {}", r.stderr);
    r.stdout
}

/// Asserts a failed run: non-zero exit and exactly one line on stderr, with
/// no panic or backtrace, containing every one of `needles`.
pub fn assert_one_line_error(r: &Run, needles: &[&str]) {
    assert_ne!(r.code, 0, "expected failure; stdout: {}", r.stdout);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one stderr line, got: {:?}",
        r.stderr
    );
    let line = lines[0];
    assert!(line.starts_with("error: "), "{line}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE", "internal error"] {
        assert!(!line.contains(bad), "{line}");
    }
    for needle in needles {
        assert!(line.contains(needle), "'{needle}' missing from: {line}");
    }
}

/// A temporary directory for one test.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Writes the `people` table with known rows (one NULL score) to `path`:
///
/// | id | name  | score |
/// |----|-------|-------|
/// | 1  | ada   | 1.5   |
/// | 2  | grace | NULL  |
/// | 3  | linus | -2.25 |
/// | 4  | 陈    | 10    |
pub fn write_people(path: &Path) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("score", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(StringArray::from(vec!["ada", "grace", "linus", "陈"])),
            Arc::new(Float64Array::from(vec![
                Some(1.5),
                None,
                Some(-2.25),
                Some(10.0),
            ])),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// TPC-H at scale 0.01, generated once per test process by `kiln datagen`.
pub fn tpch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempdir();
        ok(&[
            "datagen",
            "tpch",
            "--scale",
            "0.01",
            "--output",
            dir.path().to_str().unwrap(),
        ]);
        dir
    })
    .path()
}

/// `--table name=DIR/name` for each TPC-H table named.
pub fn tpch_tables(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| {
            [
                "--table".to_string(),
                format!("{n}={}", tpch().join(n).display()),
            ]
        })
        .collect()
}

/// An S3-compatible server (moto) on loopback, shared by the tests of this
/// process. It exits by itself when the test process does.
pub struct S3Server {
    pub endpoint: String,
    _child: Mutex<Child>,
}

pub const ACCESS_KEY: &str = "AKIAKILNTESTKEY00001";
pub const SECRET_KEY: &str = "kiln/test+Secret/0123456789abcdefKILN";

impl S3Server {
    /// The environment a client needs to use this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let addr = self.endpoint.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).expect("connect to moto");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
            "create bucket {bucket}: {response}"
        );
    }
}

/// The shared S3 server, or `None` (the test skips) when moto is not
/// installed and `KILN_TEST_REQUIRE_S3` is not set.
pub fn s3() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let started = start_moto();
            if started.is_none() {
                assert!(
                    std::env::var("KILN_TEST_REQUIRE_S3").is_err(),
                    "KILN_TEST_REQUIRE_S3 is set but moto's server could not start \
                     (pip install 'moto[server]')"
                );
                eprintln!("skipping S3 tests: moto's server is not installed");
            }
            started
        })
        .as_ref()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts moto's standalone server on a free loopback port, with a watchdog
/// thread that ends it when this test process goes away.
fn start_moto() -> Option<S3Server> {
    let python = std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let port = free_port();
    let script = format!(
        "import os, sys, threading, time\n\
         parent = {parent}\n\
         def watch():\n\
         \x20   while True:\n\
         \x20       try:\n\
         \x20           os.kill(parent, 0)\n\
         \x20       except OSError:\n\
         \x20           os._exit(0)\n\
         \x20       time.sleep(0.5)\n\
         threading.Thread(target=watch, daemon=True).start()\n\
         from moto.server import main\n\
         main(['-H', '127.0.0.1', '-p', '{port}'])\n",
        parent = std::process::id()
    );
    let child = Command::new(python)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // exited: moto is not installed
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(S3Server {
                endpoint: format!("http://127.0.0.1:{port}"),
                _child: Mutex::new(child),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    None
}

/// A path as a string, for command lines.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The GPU backend the GPU tests run on: `KILN_TEST_GPU` — `wgpu` (the
/// default; lavapipe in CI) or `cuda` (an NVIDIA GPU: the whole SQL, vector
/// and embedding suite on CUDA, as the first-GPU check runs it).
pub fn test_gpu() -> &'static str {
    match std::env::var("KILN_TEST_GPU").as_deref() {
        Err(_) | Ok("") | Ok("wgpu") => "wgpu",
        Ok("cuda") => "cuda",
        Ok(other) => panic!("KILN_TEST_GPU: '{other}' is neither wgpu nor cuda"),
    }
}

/// `SET kiln.device` to the test GPU ([`test_gpu`]).
pub fn set_gpu() -> String {
    format!("SET kiln.device = '{}'", test_gpu())
}

/// Whether the test GPU ([`test_gpu`]) is present; fails the test instead
/// when KILN_TEST_REQUIRE names its backend (as CI does for wgpu) and none
/// is.
pub fn has_gpu() -> bool {
    use kiln_kernels::testing::required_backends;
    use kiln_kernels::{BackendKind, discover};
    let kind = match test_gpu() {
        "cuda" => BackendKind::Cuda,
        _ => BackendKind::Wgpu,
    };
    if discover().of(kind).next().is_some() {
        return true;
    }
    assert!(
        !required_backends().contains(&kind),
        "KILN_TEST_REQUIRE names {}, but no such device was found",
        test_gpu()
    );
    eprintln!("skipping: no {} device", test_gpu());
    false
}

/// Under `KILN_INJECT_OOM` (the out-of-memory suite, `oom.rs`, re-runs
/// tests so) prints how many device allocations failed on purpose in this
/// process, for the parent to check that the injection took effect.
pub fn report_injection() {
    if std::env::var_os("KILN_INJECT_OOM").is_some() {
        eprintln!(
            "kiln-injected-oom={}",
            kiln_kernels::memory::totals().injected
        );
    }
}

/// A `kiln` command with the loopback S3 server's credentials and endpoint
/// when it runs.
pub fn kiln_s3(server: Option<&S3Server>) -> Command {
    let mut cmd = kiln();
    if let Some(server) = server {
        for (k, v) in server.env() {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The rows of `sql` as CSV, run by `cmd` (`kiln sql`); `None` when it
/// fails (a location that does not read, for instance).
pub fn csv_of(mut cmd: Command, sql: &str) -> Option<String> {
    let r = run(cmd.args(["sql", "--format", "csv", "-c", sql]));
    (r.code == 0).then_some(r.stdout)
}

/// Each `(sql, want)`: the statement fails with a one-line error
/// containing `want`.
pub async fn expect_sql_errors(session: &kiln::Session, cases: &[(&str, &str)]) {
    for (sql, want) in cases {
        let e = sql_error(session, sql).await;
        assert!(e.contains(want), "{sql}: {e}");
    }
}

/// The one-line error of `sql` in `session` (planning or running it).
pub async fn sql_error(session: &kiln::Session, sql: &str) -> String {
    let result = match session.sql(sql).await {
        Ok(frame) => frame
            .collect()
            .await
            .map(|_| ())
            .map_err(kiln::KilnError::from),
        Err(e) => Err(e),
    };
    let text = result.expect_err(sql).one_line();
    assert!(!text.contains('\n'), "{text}");
    text
}

/// The test Python (`KILN_TEST_PYTHON`, else `python3`) when it can
/// `import {modules}`; else None — a skip, or a failure where the run sets
/// `require` (scripts/test sets them all).
pub fn python_with(modules: &str, require: &str) -> Option<String> {
    let python = std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var(require).is_err(),
            "{require} is set but {python} cannot import {modules}"
        );
        eprintln!("skipping: {python} cannot import {modules}");
        return None;
    }
    Some(python)
}
