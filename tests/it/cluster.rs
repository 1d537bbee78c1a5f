//! Kiln on a cluster: a scheduler and executors started as child processes
//! on loopback (free ports, separate work dirs, short heartbeats), checked
//! against the same statements run locally.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    Array, FixedSizeListArray, Float32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

use crate::common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scheduler and executors on loopback; all killed when dropped.
pub struct Cluster {
    pub url: String,
    scheduler: Child,
    executors: Vec<Child>,
    _work: tempfile::TempDir,
}

impl Cluster {
    /// One executor per entry of `devices`, each with `env` set.
    pub fn start(devices: &[&str], env: &[(&str, &str)]) -> Cluster {
        let work = tempdir();
        let port = free_port();
        let url = format!("df://127.0.0.1:{port}");
        let mut scheduler = kiln()
            .args(["scheduler", "--bind", &format!("127.0.0.1:{port}")])
            .args(["--executor-timeout", "4", "--exit-with-parent"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn scheduler");
        wait_for_port(port, &mut scheduler, "the scheduler");
        let mut executors = Vec::new();
        for (i, device) in devices.iter().enumerate() {
            // Executors pull tasks: the Flight port (shuffle reads) is the
            // one they serve.
            let flight = free_port();
            let mut cmd = kiln();
            cmd.args(["--device", device, "executor", "--scheduler", &url])
                .args(["--bind-host", "127.0.0.1", "--port", &flight.to_string()])
                .args(["--slots", "2", "--heartbeat", "1", "--exit-with-parent"])
                .arg("--work-dir")
                .arg(work.path().join(format!("executor-{i}")))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn executor");
            wait_for_port(flight, &mut child, "an executor");
            executors.push(child);
        }
        // Registration comes with the first poll for work; give it a moment.
        std::thread::sleep(Duration::from_millis(500));
        Cluster {
            url,
            scheduler,
            executors,
            _work: work,
        }
    }

    /// SIGKILL, as a machine that dies.
    pub fn kill_executor(&mut self, i: usize) {
        self.executors[i].kill().unwrap();
        self.executors[i].wait().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The cluster the comparison tests share: two CPU executors.
fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(&["cpu", "cpu"], &[]))
}

/// `kiln sql --format csv -f script` locally, or on the cluster at `url`.
fn sql_csv(script: &Path, cluster: Option<&str>) -> Run {
    let mut cmd = kiln();
    if let Some(url) = cluster {
        cmd.args(["--cluster", url]);
    }
    run(cmd.args(["sql", "--format", "csv", "-f"]).arg(script))
}

/// Whether two CSV outputs hold the same rows, floats equal to a relative
/// 1e-9 (a cluster adds partial sums in another order).
fn same_rows(a: &str, b: &str) -> bool {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    la.len() == lb.len()
        && la.iter().zip(&lb).all(|(x, y)| {
            let (cx, cy): (Vec<&str>, Vec<&str>) = (x.split(',').collect(), y.split(',').collect());
            cx.len() == cy.len()
                && cx.iter().zip(&cy).all(|(p, q)| {
                    p == q
                        || match (p.parse::<f64>(), q.parse::<f64>()) {
                            (Ok(u), Ok(v)) => (u - v).abs() <= 1e-9 * u.abs().max(v.abs()).max(1.0),
                            _ => false,
                        }
                })
        })
}

fn tpch_ddl() -> String {
    [
        "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
    ]
    .iter()
    .map(|t| {
        format!(
            "CREATE EXTERNAL TABLE {t} STORED AS PARQUET LOCATION '{}/';\n",
            tpch().join(t).display()
        )
    })
    .collect()
}

fn tpch_query(i: usize) -> String {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("benches/tpch/queries/q{i}.sql"));
    std::fs::read_to_string(path).unwrap()
}

/// Settings of the local runs: the partitioning decides the input order
/// (and so the order of ties) of a scan, so both sides use the same.
const LOCAL_SETTINGS: &str = "SET datafusion.execution.target_partitions = 3;\n";

/// Settings for cluster runs: a few partitions (tasks) per stage, and every
/// shuffle read through Arrow Flight, as if each partition lived on another
/// executor.
const CLUSTER_SETTINGS: &str = "SET datafusion.execution.target_partitions = 3;\n\
     SET ballista.shuffle.force_remote_read = true;\n";

/// Writes `body` as a script for a local run and one for a cluster run,
/// each after its settings.
fn scripts(dir: &Path, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let local = dir.join(format!("{name}-local.sql"));
    let remote = dir.join(format!("{name}-cluster.sql"));
    std::fs::write(&local, format!("{LOCAL_SETTINGS}{body}")).unwrap();
    std::fs::write(&remote, format!("{CLUSTER_SETTINGS}{body}")).unwrap();
    (local, remote)
}

/// Runs TPC-H query `i` locally and on `url`; fails the test on a difference.
fn compare_tpch(i: usize, url: &str, dir: &Path) {
    let (local, remote) = scripts(
        dir,
        &format!("q{i}"),
        &format!("{}{}", tpch_ddl(), tpch_query(i)),
    );
    let want = sql_csv(&local, None);
    assert_eq!(want.code, 0, "q{i} locally: {}", want.stderr);
    let got = sql_csv(&remote, Some(url));
    assert_eq!(got.code, 0, "q{i} on the cluster: {}", got.stderr);
    assert!(
        want.stdout.lines().count() > 1 || i == 15 || i == 20,
        "q{i} printed no rows"
    );
    assert!(
        same_rows(&want.stdout, &got.stdout),
        "q{i} differs on the cluster:\nlocal:\n{}\ncluster:\n{}",
        want.stdout,
        got.stdout
    );
}

#[test]
fn tpch_queries_give_the_same_results_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    for i in 1..=22 {
        compare_tpch(i, &cluster.url, dir.path());
    }
}

/// A small corpus of 8-dimensional vectors in quarter steps (exact dot
/// products, so ties are real ties), 3 files of 300 rows, the third a copy
/// of the first; 12 queries.
fn vectors(dir: &Path) {
    let mut state = 11u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 17) as f32 / 4.0 - 2.0
    };
    let batch = |ids: std::ops::Range<i64>, values: Vec<f32>| {
        let item = Arc::new(Field::new_list_field(DataType::Float32, false));
        let v = FixedSizeListArray::try_new(item, 8, Arc::new(Float32Array::from(values)), None)
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", v.data_type().clone(), true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from_iter_values(ids)), Arc::new(v)],
        )
        .unwrap()
    };
    let write = |path: PathBuf, b: RecordBatch| {
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), b.schema(), None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    };
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    for f in 0..3i64 {
        let values: Vec<f32> = (0..300 * 8).map(|_| next()).collect();
        write(
            dir.join(format!("corpus/part-{f}.parquet")),
            batch(f * 300..(f + 1) * 300, values),
        );
    }
    let values: Vec<f32> = (0..12 * 8).map(|_| next()).collect();
    write(dir.join("queries.parquet"), batch(0..12, values));
}

#[test]
fn vector_search_and_knn_join_give_the_same_results_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    vectors(dir.path());
    let ddl = format!(
        "CREATE EXTERNAL TABLE corpus STORED AS PARQUET LOCATION '{}/';\n\
         CREATE EXTERNAL TABLE queries STORED AS PARQUET LOCATION '{}';\n",
        dir.path().join("corpus").display(),
        dir.path().join("queries.parquet").display()
    );
    let statements = [
        "SELECT id, corpus_id, rank, score FROM knn_join('queries', 'v', 'corpus', 'v', 5) ORDER BY id, rank",
        "SELECT id, corpus_id, rank FROM knn_join(queries, v, corpus, v, 3, 'l2') ORDER BY id, rank",
        "SELECT id, score FROM vector_search('corpus', 'v', [1.0, 0.5, 0, 0, -1, 0, 0.25, 2], 7)",
        "SELECT id FROM corpus ORDER BY cosine_similarity(v, [1.0, 0.5, 0, 0, -1, 0, 0.25, 2]) DESC LIMIT 9",
    ];
    for (n, statement) in statements.iter().enumerate() {
        let (local, remote) = scripts(dir.path(), &format!("s{n}"), &format!("{ddl}{statement};"));
        let want = sql_csv(&local, None);
        assert_eq!(want.code, 0, "{statement} locally: {}", want.stderr);
        let got = sql_csv(&remote, Some(&cluster.url));
        assert_eq!(got.code, 0, "{statement} on the cluster: {}", got.stderr);
        assert!(want.stdout.lines().count() > 5, "{}", want.stdout);
        assert_eq!(want.stdout, got.stdout, "{statement}");
    }
}

#[test]
fn an_embedding_job_gives_the_same_values_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    let texts: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "document {i} about {} rivers",
                ["quiet", "wide", "frozen", "old"][i % 4]
            )
        })
        .collect();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    for part in 0..2 {
        let rows = &texts[part * 100..(part + 1) * 100];
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("body", DataType::Utf8, false),
        ]));
        let b = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (part * 100) as i64..((part + 1) * 100) as i64,
                )),
                Arc::new(StringArray::from_iter_values(rows)),
            ],
        )
        .unwrap();
        let path = dir.path().join(format!("docs/part-{part}.parquet"));
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
    }
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/tiny-bert");
    let input = s(&dir.path().join("docs"));
    let embed = |out: &str, cluster: Option<&str>| {
        let mut cmd = kiln();
        if let Some(url) = cluster {
            cmd.args(["--cluster", url]);
        }
        let r = run(cmd
            .args(["embed", &input, out, "--column", "body", "--model"])
            .arg(&model));
        assert_eq!(r.code, 0, "embed: {}", r.stderr);
        assert!(r.stdout.contains("embedded 200 rows"), "{}", r.stdout);
        r.stdout
    };
    let local_out = s(&dir.path().join("local"));
    let cluster_out = s(&dir.path().join("cluster"));
    embed(&local_out, None);
    let summary = embed(&cluster_out, Some(&cluster.url));
    assert!(
        summary.contains(&format!("on the cluster at {}", cluster.url)),
        "{summary}"
    );
    // Every value equal within f32 rounding (batches differ between runs).
    let check = dir.path().join("check.sql");
    std::fs::write(
        &check,
        format!(
            "CREATE EXTERNAL TABLE a STORED AS PARQUET LOCATION '{local_out}/';\n\
             CREATE EXTERNAL TABLE b STORED AS PARQUET LOCATION '{cluster_out}/';\n\
             SELECT count(*) AS n, max(abs(a.embedding[k] - b.embedding[k])) AS worst \
             FROM a JOIN b ON a.id = b.id AND a.body = b.body \
             CROSS JOIN (SELECT unnest(range(1, 33)) AS k) ks;"
        ),
    )
    .unwrap();
    let r = sql_csv(&check, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r.stdout.lines().nth(1).unwrap().to_string();
    let (n, worst) = line.split_once(',').unwrap();
    assert_eq!(n, (200 * 32).to_string(), "{line}");
    assert!(worst.parse::<f64>().unwrap() < 1e-5, "{line}");
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_with_limit(mut child: Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the query did not finish within {}s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn queries_survive_an_executor_killed_mid_query() {
    // Tasks wait 700 ms each, so a query is surely running when one
    // executor dies; the scheduler gives up on it after 4 s of silence and
    // runs its work (and the shuffle output it held) on the other.
    let dir = tempdir();
    for (i, kill_after_ms) in [(3, 1500), (3, 2600), (9, 2000)] {
        let mut cluster = Cluster::start(&["cpu", "cpu"], &[("KILN_INJECT_TASK_DELAY_MS", "700")]);
        let script = dir.path().join(format!("q{i}.sql"));
        std::fs::write(
            &script,
            format!("{LOCAL_SETTINGS}{}{}", tpch_ddl(), tpch_query(i)),
        )
        .unwrap();
        let want = sql_csv(&script, None);
        assert_eq!(want.code, 0, "{}", want.stderr);
        let mut child = kiln()
            .args(["--cluster", &cluster.url, "sql", "--format", "csv", "-f"])
            .arg(&script)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        assert!(
            child.try_wait().unwrap().is_none(),
            "q{i} finished before the executor was killed; the test proves nothing"
        );
        cluster.kill_executor(1);
        let out = wait_with_limit(child, Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "q{i} failed after the kill: {stderr}");
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(
            same_rows(&want.stdout, &got),
            "q{i} after a kill at {kill_after_ms} ms:\nlocal:\n{}\ncluster:\n{got}",
            want.stdout
        );
    }
}

#[test]
fn injected_device_errors_are_retried_with_the_same_result() {
    let cluster = Cluster::start(&["cpu"], &[("KILN_INJECT_DEVICE_ERRORS", "2")]);
    let dir = tempdir();
    let (local, remote) = scripts(
        dir.path(),
        "q1",
        &format!("{}{}", tpch_ddl(), tpch_query(1)),
    );
    let want = sql_csv(&local, None);
    let got = sql_csv(&remote, Some(&cluster.url));
    assert_eq!(got.code, 0, "{}", got.stderr);
    assert!(
        same_rows(&want.stdout, &got.stdout),
        "{}\n{}",
        want.stdout,
        got.stdout
    );
}

#[test]
fn a_gpu_executor_and_a_cpu_executor_run_a_lowered_query() {
    if !has_gpu() {
        return;
    }
    let cluster = Cluster::start(&[test_gpu(), "cpu"], &[]);
    let dir = tempdir();
    // Small thresholds so the GPU executor lowers the scan's stage.
    let settings = "SET kiln.gpu_min_rows = 0;\n";
    for i in [1, 6] {
        let body = format!("{settings}{}{}", tpch_ddl(), tpch_query(i));
        let (local, remote) = scripts(dir.path(), &format!("q{i}"), &body);
        let want = sql_csv(&local, None);
        let got = sql_csv(&remote, Some(&cluster.url));
        assert_eq!(got.code, 0, "q{i}: {}", got.stderr);
        assert!(
            same_rows(&want.stdout, &got.stdout),
            "q{i}\n{}\n{}",
            want.stdout,
            got.stdout
        );
    }
    // The GPU executor ran device stages: EXPLAIN ANALYZE's merged metrics
    // count device batches.
    let analyze = dir.path().join("analyze.sql");
    std::fs::write(
        &analyze,
        format!(
            "{CLUSTER_SETTINGS}{settings}{}EXPLAIN ANALYZE {}",
            tpch_ddl(),
            tpch_query(6)
        ),
    )
    .unwrap();
    // Each stage says which executors, on which devices, ran its tasks.
    // Executors pull tasks, so one run may give every task to one of them
    // (seen on a loaded 2-core machine): run it until both have taken
    // part, a few times at most.
    let gpu_tasks = format!("tasks_on_{}:0_at_127.0.0.1:", test_gpu());
    let cpu_tasks = "tasks_on_cpu:0_at_127.0.0.1:";
    let mut seen = String::new();
    for _ in 0..6 {
        let r = sql_csv(&analyze, Some(&cluster.url));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stdout.contains("device_batches="), "{}", r.stdout);
        seen.push_str(&r.stdout);
        if seen.contains(&gpu_tasks) && seen.contains(cpu_tasks) {
            break;
        }
    }
    assert!(seen.contains(&gpu_tasks), "{seen}");
    assert!(seen.contains(cpu_tasks), "{seen}");
}

#[test]
fn an_unreachable_scheduler_is_one_line_within_seconds() {
    let url = format!("df://127.0.0.1:{}", free_port());
    let r = run(kiln().args(["--cluster", &url, "sql", "-c", "SELECT 1"]));
    assert_one_line_error(&r, &["cannot reach the Kiln scheduler", &url]);
    assert!(r.elapsed < Duration::from_secs(30));
    let r = run(kiln().args(["executor", "--scheduler", &url]));
    assert_one_line_error(&r, &["cannot reach the Kiln scheduler", &url]);
    let r = run(kiln().args(["--cluster", "sched:50050", "sql", "-c", "SELECT 1"]));
    assert_one_line_error(&r, &["df://host:50050"]);
    assert_eq!(r.code, 2);
}

#[test]
fn an_executor_refuses_a_device_it_cannot_open() {
    let r = run(kiln().args([
        "--device",
        "cuda:7",
        "executor",
        "--scheduler",
        "127.0.0.1:1",
    ]));
    assert_one_line_error(&r, &["cuda"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_session_api_runs_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    let people = dir.path().join("people.parquet");
    write_people(&people);
    let session = kiln::Session::builder()
        .cluster(&cluster.url)
        .build()
        .unwrap();
    assert_eq!(
        session.cluster().map(|u| u.to_string()).as_deref(),
        Some(cluster.url.as_str())
    );
    session
        .register_parquet("people", &s(&people))
        .await
        .unwrap();
    // A kiln.* option set on the client reaches the executors.
    session
        .sql("SET kiln.gpu_transforms = false")
        .await
        .unwrap();
    let batches = session
        .sql("SELECT count(*) AS n, sum(id) AS s FROM people WHERE score IS NOT NULL")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("| 3 | 8 |"), "{text}");
}

#[test]
fn cluster_local_starts_a_working_cluster_and_stops_with_its_children() {
    let mut child = kiln()
        .args([
            "cluster",
            "local",
            "--port",
            "0",
            "--executors",
            "2",
            "--heartbeat",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut url).unwrap();
    let url = url.trim().to_string();
    assert!(url.starts_with("df://127.0.0.1:"), "{url}");
    let out = ok(&[
        "--cluster",
        &url,
        "sql",
        "--format",
        "csv",
        "-c",
        "SELECT 40 + 2 AS x",
    ]);
    assert_eq!(out, "x\n42\n");
    // SIGTERM ends it, and its scheduler with it.
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let status = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "kiln cluster local did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the scheduler outlived kiln cluster local"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// On executors, Parquet scans are checked as in a local session: a scan
/// decoded from the scheduler's plan (no reader factory) gets Kiln's
/// checked readers, and runs under the decode guard, so page data that
/// makes the parquet crate panic (a fuzz-found crasher) and a page index
/// pointing outside its column chunk fail the query with one line naming
/// the file, exit 1; the executors live on and answer the next query.
#[test]
fn corrupt_parquet_files_fail_on_a_cluster_as_they_do_locally() {
    let cluster = shared();
    let dir = tempdir();
    let crashers = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parquet");
    for (name, query, says) in [
        (
            "dictionary-page-missing",
            "SELECT * FROM '{}'",
            "is not a valid Parquet file: its page data cannot be decoded",
        ),
        (
            "page-vlq-integer-too-long",
            "SELECT * FROM '{}'",
            "is not a valid Parquet file: its page data cannot be decoded",
        ),
        (
            "page-beyond-column-chunk",
            "SELECT * FROM '{}' WHERE i > 3",
            "its offset index puts a page of 247 bytes at offset 1134",
        ),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        std::fs::copy(crashers.join(name), &path).unwrap();
        let script = dir.path().join(format!("{name}.sql"));
        std::fs::write(&script, query.replace("{}", &s(&path))).unwrap();
        let r = sql_csv(&script, Some(&cluster.url));
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains(&s(&path)) && first.contains(says),
            "{name}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("internal error"), "{}", r.stderr);
    }
    let good = dir.path().join("good.parquet");
    write_people(&good);
    let script = dir.path().join("after.sql");
    std::fs::write(&script, format!("SELECT sum(id) AS s FROM '{}'", s(&good))).unwrap();
    let r = sql_csv(&script, Some(&cluster.url));
    assert_eq!((r.code, r.stdout.as_str()), (0, "s\n10\n"), "{}", r.stderr);
}

/// Text preparation on a cluster: near-duplicate pairs and clusters, PII
/// masking and detection, MinHash and character chunks give the same rows
/// as in one process, over a table of three files.
#[test]
fn text_preparation_gives_the_same_results_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("docs")).unwrap();
    for f in 0..3 {
        let setup = dir.path().join(format!("make{f}.sql"));
        std::fs::write(
            &setup,
            format!(
                "COPY (SELECT i AS id, 'alpha beta gamma delta epsilon zeta eta theta iota \
                 kappa lambda mu nu xi omicron pi rho sigma tau upsilon phi chi psi omega one \
                 two three four five six ' || (i % 25) || ' seven eight nine ten. Write to user' \
                 || i || '@example.com or call +1 415 555 ' || (1000 + i) || '.' AS body \
                 FROM generate_series({}, {}) t(i)) TO '{}'",
                f * 100,
                f * 100 + 99,
                dir.path().join(format!("docs/part-{f}.parquet")).display()
            ),
        )
        .unwrap();
        let r = sql_csv(&setup, None);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let ddl = format!(
        "CREATE EXTERNAL TABLE docs STORED AS PARQUET LOCATION '{}/';\n",
        dir.path().join("docs").display()
    );
    let statements = [
        "SELECT id_a, id_b, similarity FROM near_duplicates('docs', 'id', 'body', 0.7) \
         ORDER BY id_a, id_b",
        "SELECT id, cluster_id FROM near_duplicate_clusters('docs', 'id', 'body', 0.7) ORDER BY id",
        "SELECT id, mask_pii(body, 'email,phone', 'mask') AS m FROM docs ORDER BY id",
        "SELECT id, f['type'] AS t, f['start'] AS s FROM \
         (SELECT id, unnest(detect_pii(body)) AS f FROM docs) ORDER BY id, s",
        "SELECT id, c['start'] AS s, c['chunk'] AS chunk FROM \
         (SELECT id, unnest(chunk_text(body, max_chars => 40, overlap_chars => 10)) AS c FROM docs) \
         ORDER BY id, s",
        "SELECT a.id, b.id, minhash_similarity(minhash(a.body, 64), minhash(b.body, 64)) AS s \
         FROM docs a JOIN docs b ON a.id + 25 = b.id ORDER BY a.id",
    ];
    for (n, statement) in statements.iter().enumerate() {
        let (local, remote) = scripts(dir.path(), &format!("t{n}"), &format!("{ddl}{statement};"));
        let want = sql_csv(&local, None);
        assert_eq!(want.code, 0, "{statement} locally: {}", want.stderr);
        let got = sql_csv(&remote, Some(&cluster.url));
        assert_eq!(got.code, 0, "{statement} on the cluster: {}", got.stderr);
        assert!(
            want.stdout.lines().count() > 20,
            "{statement}: {}",
            want.stdout
        );
        assert!(
            same_rows(&want.stdout, &got.stdout),
            "{statement} differs on the cluster:\nlocal:\n{}\ncluster:\n{}",
            want.stdout,
            got.stdout
        );
    }
}

#[test]
fn as_of_joins_give_the_same_results_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    // Events and prices over 5 tickers, times with ties, written as files
    // of several row groups so that the scans split.
    let setup = format!(
        "COPY (SELECT i AS id, i % 5 AS ticker, (i * 37) % 1000 AS ts FROM generate_series(1, 4000) t(i)) \
         TO '{}/events.parquet';\n\
         COPY (SELECT i % 5 AS ticker, (i * 91) % 1000 AS ts, CAST(i AS DOUBLE) / 8 AS price \
         FROM generate_series(1, 900) t(i) WHERE i % 7 <> 0) TO '{}/prices.parquet';\n\
         COPY (SELECT i % 5 AS ticker, (i * 91) % 1000 AS ts, max(CAST(i AS DOUBLE) / 8) AS price \
         FROM generate_series(1, 900) t(i) WHERE i % 7 <> 0 GROUP BY 1, 2) TO '{}/unique_prices.parquet';\n",
        s(dir.path()),
        s(dir.path()),
        s(dir.path())
    );
    let written = run(kiln().args(["sql", "-c", &setup]));
    assert_eq!(written.code, 0, "{}", written.stderr);
    let ddl = format!(
        "CREATE EXTERNAL TABLE events STORED AS PARQUET LOCATION '{0}/events.parquet';\n\
         CREATE EXTERNAL TABLE prices STORED AS PARQUET LOCATION '{0}/prices.parquet';\n\
         CREATE EXTERNAL TABLE unique_prices STORED AS PARQUET LOCATION '{0}/unique_prices.parquet';\n",
        s(dir.path())
    );
    let statements = [
        // Each event's latest price; ties among prices at one (ticker,
        // time) broken by the highest price, so both runs agree.
        "SELECT e.id, max(p.price) AS price FROM events e ASOF LEFT JOIN \
         (SELECT ticker, ts, max(price) AS price FROM prices GROUP BY ticker, ts) p \
         ON e.ticker = p.ticker AND e.ts >= p.ts GROUP BY e.id ORDER BY e.id",
        "SELECT e.id, p.price FROM events e ASOF JOIN \
         (SELECT ticker, ts, max(price) AS price FROM prices GROUP BY ticker, ts) p \
         MATCH_CONDITION (e.ts > p.ts) ON e.ticker = p.ticker ORDER BY e.id",
        // A file of counted rows: the probe strategy, its index built on
        // each executor.
        "SELECT e.id, p.price FROM events e ASOF LEFT JOIN unique_prices p \
         ON e.ticker = p.ticker AND e.ts >= p.ts ORDER BY e.id",
    ];
    for (n, statement) in statements.iter().enumerate() {
        let (local, remote) = scripts(dir.path(), &format!("a{n}"), &format!("{ddl}{statement};"));
        let want = sql_csv(&local, None);
        assert_eq!(want.code, 0, "{statement} locally: {}", want.stderr);
        let got = sql_csv(&remote, Some(&cluster.url));
        assert_eq!(got.code, 0, "{statement} on the cluster: {}", got.stderr);
        assert!(want.stdout.lines().count() > 3000, "{}", want.stdout.len());
        assert_eq!(want.stdout, got.stdout, "{statement}");
    }
}

#[test]
fn profile_and_drift_give_the_same_results_on_a_cluster() {
    let cluster = shared();
    let dir = tempdir();
    // 50 distinct values per numeric column: the t-digest quantiles are
    // exact, whatever order the partial digests merge in.
    let setup = format!(
        "COPY (SELECT i AS id, CAST(i % 50 AS DOUBLE) AS x, 'k' || (i % 7) AS k FROM generate_series(1, 3000) t(i)) \
         TO '{0}/ref.parquet';\n\
         COPY (SELECT i AS id, CAST(i % 50 AS DOUBLE) + 4 AS x, 'k' || (i % 5) AS k FROM generate_series(1, 2000) t(i)) \
         TO '{0}/cur.parquet';\n",
        s(dir.path())
    );
    let written = run(kiln().args(["sql", "-c", &setup]));
    assert_eq!(written.code, 0, "{}", written.stderr);
    let ddl = format!(
        "CREATE EXTERNAL TABLE ref STORED AS PARQUET LOCATION '{0}/ref.parquet';\n\
         CREATE EXTERNAL TABLE cur STORED AS PARQUET LOCATION '{0}/cur.parquet';\n",
        s(dir.path())
    );
    // Strings are Utf8 on a cluster (Ballista's sessions do not force view
    // types), Utf8View locally: the profile's data_type differs, the rest
    // is the same.
    let statements = [
        "SELECT * EXCLUDE (data_type) FROM profile('ref')",
        "SELECT * FROM drift('ref', 'cur')",
        // A computed table inside a larger query, and filtered.
        "SELECT d.column, d.drifted, p.rows FROM drift('ref', 'cur') d \
         JOIN profile('cur') p ON d.column = p.column WHERE d.column <> 'id' ORDER BY d.column",
    ];
    for (n, statement) in statements.iter().enumerate() {
        let (local, remote) = scripts(dir.path(), &format!("p{n}"), &format!("{ddl}{statement};"));
        let want = sql_csv(&local, None);
        assert_eq!(want.code, 0, "{statement} locally: {}", want.stderr);
        let got = sql_csv(&remote, Some(&cluster.url));
        assert_eq!(got.code, 0, "{statement} on the cluster: {}", got.stderr);
        assert!(want.stdout.lines().count() >= 3, "{}", want.stdout);
        assert!(
            same_rows(&want.stdout, &got.stdout),
            "{statement} differs on the cluster:\nlocal:\n{}\ncluster:\n{}",
            want.stdout,
            got.stdout
        );
    }
    // The commands, likewise.
    let table = |name: &str| format!("{name}={}/{name}.parquet", s(dir.path()));
    for args in [
        vec![
            "profile",
            "ref",
            "--table",
            &table("ref"),
            "--format",
            "csv",
        ],
        vec![
            "drift",
            "ref",
            "cur",
            "--table",
            &table("ref"),
            "--table",
            &table("cur"),
            "--format",
            "csv",
        ],
    ] {
        // Without the profile's data_type (the second field).
        let rows = |out: &str| -> String {
            out.lines()
                .map(|l| match args[0] {
                    "profile" => {
                        let mut fields = l.splitn(3, ',');
                        let column = fields.next().unwrap_or_default();
                        format!("{column},{}\n", fields.nth(1).unwrap_or_default())
                    }
                    _ => format!("{l}\n"),
                })
                .collect()
        };
        let want = run(kiln().args(&args));
        assert_eq!(want.code, 0, "{args:?}: {}", want.stderr);
        let got = run(kiln().args(["--cluster", &cluster.url]).args(&args));
        assert_eq!(got.code, 0, "{args:?} on the cluster: {}", got.stderr);
        let (want, got) = (rows(&want.stdout), rows(&got.stdout));
        assert!(want.lines().count() >= 3, "{want}");
        assert!(same_rows(&want, &got), "{args:?}:\n{want}\n{got}");
    }
}
