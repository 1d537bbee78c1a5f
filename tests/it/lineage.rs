//! Column-level lineage and its OpenLineage events: `kiln lineage` against
//! hand-written lineage of the 22 TPC-H queries (lineage_tpch.txt) and of
//! tricky statements (views, reused aliases, correlated subqueries, unions,
//! windows, CASE, hashes, CTEs, self-joins, writes, embed(), knn_join,
//! vector top-k, as-of joins); the events of `kiln run` and `kiln sql`
//! (to a file, to an HTTP endpoint, an endpoint that is down); and every
//! event against the OpenLineage Python client's own model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::common::*;

const EXPECTED_TPCH: &str = include_str!("lineage_tpch.txt");
const CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/lineage_check.py");

fn queries() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/tpch/queries")
}

/// The TPC-H table a column belongs to, by its prefix.
fn table_of(column: &str) -> &'static str {
    for (prefix, table) in [
        ("ps_", "partsupp"),
        ("l_", "lineitem"),
        ("o_", "orders"),
        ("c_", "customer"),
        ("p_", "part"),
        ("s_", "supplier"),
        ("n_", "nation"),
        ("r_", "region"),
    ] {
        if column.starts_with(prefix) {
            return table;
        }
    }
    panic!("{column} is no TPC-H column")
}

fn letter(subtype: &str) -> &'static str {
    match subtype {
        "IDENTITY" => "I",
        "TRANSFORMATION" => "T",
        "AGGREGATION" => "A",
        "CONDITIONAL" => "C",
        "WINDOW" => "W",
        "FILTER" => "F",
        "JOIN" => "J",
        "GROUP_BY" => "G",
        "SORT" => "S",
        other => panic!("unknown subtype {other}"),
    }
}

/// `field/USE` for each use of each input field, sorted; `qualify` names
/// an input `dataset-name-tail.field` (for inputs that are not TPC-H).
fn uses(fields: &Value, qualify: bool) -> Vec<String> {
    let mut out = Vec::new();
    for input in fields.as_array().unwrap() {
        let field = input["field"].as_str().unwrap();
        let name = input["name"].as_str().unwrap();
        let shown = match qualify {
            true => format!("{}.{field}", name.rsplit('/').next().unwrap()),
            false => field.to_string(),
        };
        for t in input["transformations"].as_array().unwrap() {
            let kind = t["type"].as_str().unwrap();
            let subtype = t["subtype"].as_str().unwrap();
            let direct = matches!(subtype, "IDENTITY" | "TRANSFORMATION" | "AGGREGATION");
            assert_eq!(kind, if direct { "DIRECT" } else { "INDIRECT" }, "{t}");
            let masked = if t["masking"].as_bool().unwrap() {
                "*"
            } else {
                ""
            };
            out.push(format!("{shown}/{}{masked}", letter(subtype)));
        }
    }
    out.sort();
    out
}

/// An event's lineage in the notation of lineage_tpch.txt.
fn notation(event: &Value, qualify: bool) -> String {
    let output = &event["outputs"][0];
    let lineage = &output["facets"]["columnLineage"];
    let mut lines = Vec::new();
    for field in output["facets"]["schema"]["fields"].as_array().unwrap() {
        let name = field["name"].as_str().unwrap();
        let used = uses(&lineage["fields"][name]["inputFields"], qualify);
        lines.push(format!("{name}: {}", used.join(" ")).trim_end().to_string());
    }
    let rows = format!("rows: {}", uses(&lineage["dataset"], qualify).join(" "));
    lines.push(rows.trim_end().to_string());
    lines.join("\n")
}

/// The blocks of an expectations file: `# name` then lines, comments
/// (`--`) and blank lines skipped, each line's uses sorted.
fn expectations(text: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with("--") || line.trim().is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("# ") {
            blocks.push((name.to_string(), Vec::new()));
            continue;
        }
        let (column, used) = line.rsplit_once(':').unwrap();
        let mut used: Vec<&str> = used.split_whitespace().collect();
        used.sort();
        let line = format!("{column}: {}", used.join(" "));
        blocks
            .last_mut()
            .unwrap()
            .1
            .push(line.trim_end().to_string());
    }
    blocks
        .into_iter()
        .map(|(name, lines)| (name, lines.join("\n")))
        .collect()
}

fn events(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Checks the events in `path` against the OpenLineage client's model.
fn check_with_client(path: &Path, expected_events: usize) {
    let Some(python) = python_with("openlineage.client, attr", "KILN_TEST_REQUIRE_OPENLINEAGE")
    else {
        return;
    };
    let out = std::process::Command::new(python)
        .arg(CHECK)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        expected_events.to_string()
    );
}

#[test]
fn the_22_tpch_queries_have_the_hand_written_lineage() {
    let expected = expectations(EXPECTED_TPCH);
    assert_eq!(expected.len(), 22);
    let dir = tempdir();
    let all = dir.path().join("events.jsonl");
    let mut failures = Vec::new();
    let mut lines = String::new();
    for (name, want) in &expected {
        let query = queries().join(format!("{name}.sql"));
        let mut args = vec!["lineage".to_string(), s(&query)];
        args.extend(tpch_tables(&[
            "lineitem", "orders", "customer", "part", "partsupp", "supplier", "nation", "region",
        ]));
        let r = run(kiln().args(&args));
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        let events = events(&r.stdout);
        assert_eq!(events.len(), 1, "{name}: {}", r.stdout);
        let event = &events[0];
        assert_eq!(event["job"]["name"], format!("{name}.step1"));
        let sql = event["job"]["facets"]["sql"]["query"].as_str().unwrap();
        assert!(sql.to_lowercase().contains("select"), "{sql}");
        // Every input field is a column of its TPC-H table's files.
        let lineage = &event["outputs"][0]["facets"]["columnLineage"];
        let mut inputs: Vec<&Value> = lineage["dataset"].as_array().unwrap().iter().collect();
        for field in lineage["fields"].as_object().unwrap().values() {
            inputs.extend(field["inputFields"].as_array().unwrap());
        }
        for input in inputs {
            let field = input["field"].as_str().unwrap();
            assert_eq!(input["namespace"], "file");
            let dataset = input["name"].as_str().unwrap();
            assert!(
                dataset.ends_with(&format!("/{}", table_of(field))),
                "{name}: {field} from {dataset}"
            );
            assert!(
                event["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|i| i["name"] == dataset),
                "{name}: {dataset} is not among the inputs"
            );
        }
        let got = notation(event, false);
        if got != *want {
            failures.push(format!("{name}:\nexpected\n{want}\ngot\n{got}"));
        }
        lines.push_str(&r.stdout);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    std::fs::write(&all, lines).unwrap();
    check_with_client(&all, 22);
}

const TRICKY: &str = "\
CREATE VIEW v AS SELECT l_orderkey AS b, l_quantity AS l_orderkey FROM lineitem;
SELECT * FROM v;
SELECT x + 1 AS x FROM (SELECT l_quantity AS x FROM lineitem);
SELECT o_orderkey, (SELECT max(l_quantity) FROM lineitem WHERE l_orderkey = o_orderkey) AS m FROM orders;
SELECT n_name AS name FROM nation UNION ALL SELECT r_name FROM region;
SELECT l_orderkey, row_number() OVER (PARTITION BY l_suppkey ORDER BY l_shipdate) AS rn,
       sum(l_quantity) OVER (PARTITION BY l_suppkey) AS total FROM lineitem;
SELECT md5(c_name) AS h, CASE WHEN c_acctbal > 0 THEN c_phone ELSE 'none' END AS p FROM customer;
WITH big AS (SELECT o_custkey, o_totalprice FROM orders WHERE o_totalprice > 1000)
SELECT c.c_name, b.o_totalprice FROM customer c JOIN big b ON c.c_custkey = b.o_custkey;
SELECT a.n_name AS a_name, b.n_name AS b_name FROM nation a JOIN nation b ON a.n_regionkey = b.n_nationkey;
COPY (SELECT l_orderkey, l_quantity * 2 AS q2 FROM lineitem WHERE l_tax > 0) TO 'OUT/' STORED AS PARQUET;
CREATE EXTERNAL TABLE written STORED AS PARQUET LOCATION 'OUT/';
CREATE TABLE t2 AS SELECT q2 FROM written;
INSERT INTO t2 SELECT l_quantity FROM lineitem;
SELECT DISTINCT o_orderstatus FROM orders;
SELECT count(*) AS n, count(DISTINCT o_custkey) AS customers FROM orders WHERE o_orderstatus = 'F' HAVING count(*) > 1;
";

/// Written by hand, as lineage_tpch.txt.
const TRICKY_EXPECTED: &str = "\
-- SELECT * of a view whose aliases swap names: by position, not by name.
# step2
b: lineitem.l_orderkey/I
l_orderkey: lineitem.l_quantity/I
rows:
-- An alias reused for a computed value.
# step3
x: lineitem.l_quantity/T
rows:
-- A correlated scalar subquery: joined on its correlation column.
# step4
o_orderkey: orders.o_orderkey/I
m: lineitem.l_quantity/A
rows: lineitem.l_orderkey/G lineitem.l_orderkey/J orders.o_orderkey/J
# step5
name: nation.n_name/I region.r_name/I
rows:
# step6
l_orderkey: lineitem.l_orderkey/I
rn: lineitem.l_shipdate/W lineitem.l_suppkey/W
total: lineitem.l_quantity/A lineitem.l_suppkey/W
rows:
# step7
h: customer.c_name/T*
p: customer.c_acctbal/C customer.c_phone/T
rows:
# step8
c_name: customer.c_name/I
o_totalprice: orders.o_totalprice/I
rows: customer.c_custkey/J orders.o_custkey/J orders.o_totalprice/F
-- A self-join: one input field per column, whichever alias reads it.
# step9
a_name: nation.n_name/I
b_name: nation.n_name/I
rows: nation.n_nationkey/J nation.n_regionkey/J
# step10
l_orderkey: lineitem.l_orderkey/I
q2: lineitem.l_quantity/T
rows: lineitem.l_tax/F
-- Reads what step 10 wrote, through an external table over it.
# step12
q2: OUT.q2/I
rows:
# step13
q2: lineitem.l_quantity/I
rows:
# step14
o_orderstatus: orders.o_orderstatus/I
rows: orders.o_orderstatus/G
-- count(*) reads no column; count(DISTINCT x) masks x (beside another
-- aggregate it stays one, not a grouping as in TPC-H q16);
-- HAVING count(*) filters on no column.
# step15
n:
customers: orders.o_custkey/A*
rows: orders.o_orderstatus/F
";

#[test]
fn tricky_statements_have_the_hand_written_lineage() {
    let dir = tempdir();
    let out = dir.path().join("OUT");
    let job = dir.path().join("tricky.sql");
    std::fs::write(&job, TRICKY.replace("OUT/", &format!("{}/", s(&out)))).unwrap();
    let mut args = vec!["lineage".to_string(), s(&job)];
    args.extend(tpch_tables(&[
        "lineitem", "orders", "customer", "nation", "region",
    ]));
    let r = run(kiln().args(&args).current_dir(dir.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events = events(&r.stdout);
    let mut failures = Vec::new();
    let expected = expectations(TRICKY_EXPECTED);
    // One event per statement that writes or returns rows: not the view,
    // not the external table.
    assert_eq!(events.len(), expected.len(), "{}", r.stdout);
    for (event, (name, want)) in events.iter().zip(&expected) {
        assert_eq!(event["job"]["name"], format!("tricky.{name}"));
        let got = notation(event, true);
        if got != *want {
            failures.push(format!("{name}:\nexpected\n{want}\ngot\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Outputs: a query's rows are JOB.stepN in the namespace; a COPY its
    // location; a table its name.
    let output = |i: usize| &events[i]["outputs"][0];
    assert_eq!(output(0)["namespace"], "kiln");
    assert_eq!(output(0)["name"], "tricky.step2");
    assert_eq!(output(8)["namespace"], "file");
    assert_eq!(output(8)["name"], s(&out));
    assert_eq!(output(9)["name"], "t2");
    assert_eq!(events[9]["inputs"][0]["name"], s(&out));
    let file = dir.path().join("events.jsonl");
    std::fs::write(&file, &r.stdout).unwrap();
    check_with_client(&file, events.len());
}

#[test]
fn kiln_operators_have_lineage() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/tiny-bert");
    let dir = tempdir();
    let job = dir.path().join("vectors.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE docs AS SELECT * FROM (VALUES (1, 'a river', [1.0, 0.0]), (2, 'a hill', [0.0, 1.0])) AS t(id, body, v);
CREATE TABLE queries AS SELECT * FROM (VALUES (10, [1.0, 0.1])) AS t(qid, v);
SELECT id, embed(body, '{}') AS e FROM docs;
SELECT qid, id, rank, score FROM knn_join('queries', 'v', 'docs', 'v', 1);
SELECT id FROM docs ORDER BY cosine_distance(v, [1.0, 0.0]) LIMIT 1;
CREATE TABLE events AS SELECT * FROM (VALUES (1, 5, 'x')) AS t(k, ts, e);
CREATE TABLE features AS SELECT * FROM (VALUES (1, 3, 0.5)) AS t(fk, fts, f);
SELECT e.e, f.f FROM events e ASOF JOIN features f ON e.k = f.fk AND e.ts >= f.fts;",
            s(&model)
        ),
    )
    .unwrap();
    let r = run(kiln().args(["lineage", &s(&job)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let events = events(&r.stdout);
    let by_step = |step: &str| {
        let event = events
            .iter()
            .find(|e| e["job"]["name"] == format!("vectors.{step}"))
            .unwrap_or_else(|| panic!("no {step}"));
        notation(event, true)
    };
    // Tables made from VALUES have no input columns.
    assert_eq!(by_step("step1"), "id:\nbody:\nv:\nrows:");
    assert_eq!(by_step("step3"), "id: docs.id/I\ne: docs.body/T\nrows:");
    assert_eq!(
        by_step("step4"),
        "qid: queries.qid/I\nid: docs.id/I\nrank: docs.v/T queries.v/T\n\
         score: docs.v/T queries.v/T\nrows: docs.v/J queries.v/J"
    );
    // ORDER BY a distance LIMIT k: Kiln's vector top-k sorts by the vector.
    assert_eq!(by_step("step5"), "id: docs.id/I\nrows: docs.v/S");
    assert_eq!(
        by_step("step8"),
        "e: events.e/I\nf: features.f/I\n\
         rows: events.k/J events.ts/J features.fk/J features.fts/J"
    );
}

#[tokio::test]
async fn a_dataframe_has_lineage() {
    use kiln::KilnDataFrameExt;
    use kiln_planner::lineage::{Transform, Use};
    let dir = tempdir();
    let people = dir.path().join("people.parquet");
    write_people(&people);
    let session = kiln::Session::new().unwrap();
    let frame = session
        .read_parquet(&s(&people))
        .await
        .unwrap()
        .filter(datafusion::prelude::col("score").gt(datafusion::prelude::lit(0.0)))
        .unwrap()
        .select(vec![
            datafusion::prelude::col("id"),
            (datafusion::prelude::col("score") * datafusion::prelude::lit(2.0)).alias("double"),
        ])
        .unwrap();
    let lineage = frame.lineage().unwrap();
    let only = |deps: &kiln_planner::lineage::Deps| -> Vec<(String, Vec<Use>)> {
        deps.iter()
            .map(|(f, uses)| {
                assert!(f.dataset.name.ends_with("people.parquet"), "{f:?}");
                assert_eq!(f.dataset.namespace, "file");
                (f.field.clone(), uses.iter().copied().collect())
            })
            .collect()
    };
    let names: Vec<&str> = lineage.columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["id", "double"]);
    assert_eq!(
        only(&lineage.columns[0].1),
        [("id".to_string(), vec![Use::of(Transform::Identity)])]
    );
    assert_eq!(
        only(&lineage.columns[1].1),
        [(
            "score".to_string(),
            vec![Use::of(Transform::Transformation)]
        )]
    );
    assert_eq!(
        only(&lineage.dataset),
        [("score".to_string(), vec![Use::of(Transform::Filter)])]
    );
    assert_eq!(lineage.inputs.len(), 1);
}

/// What a run reported, in order: (eventType, job name).
fn sequence(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["eventType"].as_str().unwrap().to_string(),
                e["job"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const JOB: &str = "\
CREATE VIEW paid AS SELECT id, name, score FROM people WHERE score > 0;
COPY (SELECT id, upper(name) AS name FROM paid) TO 'OUT/' STORED AS PARQUET;
SELECT count(*) AS n FROM paid;
";

fn job_dir() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempdir();
    write_people(&dir.path().join("people.parquet"));
    let out = dir.path().join("out");
    let job = dir.path().join("nightly.sql");
    std::fs::write(&job, JOB.replace("OUT/", &format!("{}/", s(&out)))).unwrap();
    (dir, job, out)
}

fn people_table(dir: &Path) -> String {
    format!("people={}", s(&dir.join("people.parquet")))
}

#[test]
fn a_job_run_reports_its_run_and_each_statement() {
    let (dir, job, out) = job_dir();
    let file = dir.path().join("lineage.jsonl");
    let r = run(kiln().args([
        "run",
        &s(&job),
        "--table",
        &people_table(dir.path()),
        "--lineage",
        &s(&file),
        "--lineage-namespace",
        "etl",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.is_empty() || !r.stderr.contains("warning"),
        "{}",
        r.stderr
    );
    let events = events(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(
        sequence(&events),
        pairs(&[
            ("START", "nightly"),
            ("START", "nightly.step2"),
            ("COMPLETE", "nightly.step2"),
            ("START", "nightly.step3"),
            ("COMPLETE", "nightly.step3"),
            ("COMPLETE", "nightly"),
        ])
    );
    let job_run = events[0]["run"]["runId"].as_str().unwrap();
    for event in &events {
        assert_eq!(event["job"]["namespace"], "etl");
        assert!(event["eventTime"].as_str().unwrap().ends_with('Z'));
    }
    for event in &events[1..5] {
        let parent = &event["run"]["facets"]["parent"];
        assert_eq!(parent["run"]["runId"], job_run);
        assert_eq!(parent["job"]["name"], "nightly");
        assert_ne!(event["run"]["runId"], job_run);
    }
    // START and COMPLETE of a statement are one run.
    assert_eq!(events[1]["run"]["runId"], events[2]["run"]["runId"]);
    let copy = &events[2]["outputs"][0];
    assert_eq!(copy["namespace"], "file");
    assert_eq!(copy["name"], s(&out));
    let statistics = &copy["outputFacets"]["outputStatistics"];
    let rows = statistics["rowCount"].as_u64().unwrap();
    assert!(rows > 0 && statistics["fileCount"].as_u64().unwrap() >= 1);
    assert_eq!(
        notation(&events[2], true),
        "id: people.parquet.id/I\nname: people.parquet.name/T\nrows: people.parquet.score/F"
    );
    // The view is inlined where it is read: the query's count filters on
    // the view's condition.
    assert_eq!(
        notation(&events[4], true),
        "n:\nrows: people.parquet.score/F"
    );
    assert_eq!(events[3]["outputs"][0]["name"], "nightly.step3");
    check_with_client(&file, events.len());
}

#[test]
fn a_failing_statement_reports_fail_with_its_error() {
    let dir = tempdir();
    write_people(&dir.path().join("people.parquet"));
    let job = dir.path().join("broken.sql");
    std::fs::write(
        &job,
        "SELECT id FROM people;\nSELECT CAST(name AS INT) AS n FROM people;\n",
    )
    .unwrap();
    let file = dir.path().join("lineage.jsonl");
    let r = run(kiln().args([
        "run",
        &s(&job),
        "--table",
        &people_table(dir.path()),
        "--lineage",
        &s(&file),
    ]));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let events = events(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(
        sequence(&events),
        pairs(&[
            ("START", "broken"),
            ("START", "broken.step1"),
            ("COMPLETE", "broken.step1"),
            ("START", "broken.step2"),
            ("FAIL", "broken.step2"),
            ("FAIL", "broken"),
        ])
    );
    for event in &events[4..] {
        let message = event["run"]["facets"]["errorMessage"]["message"]
            .as_str()
            .unwrap();
        assert!(message.contains("Cannot cast"), "{message}");
    }
    check_with_client(&file, events.len());
}

/// A minimal OpenLineage endpoint on loopback: answers every POST with
/// `status`, recording (path, authorization, body).
struct Endpoint {
    url: String,
    received: Arc<Mutex<Vec<(String, String, String)>>>,
}

fn endpoint(status: u16) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    let (mut length, mut authorization) = (0usize, String::new());
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').unwrap();
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap(),
                            "authorization" => authorization = value.trim().to_string(),
                            _ => {}
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    log.lock().unwrap().push((
                        path,
                        authorization,
                        String::from_utf8(body).unwrap(),
                    ));
                    let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Endpoint { url, received }
}

#[test]
fn events_are_posted_to_an_openlineage_endpoint() {
    let (dir, job, _) = job_dir();
    let server = endpoint(201);
    let r = run(kiln()
        .args(["run", &s(&job), "--table", &people_table(dir.path())])
        .env("OPENLINEAGE_URL", &server.url)
        .env("OPENLINEAGE_API_KEY", "secret-key")
        .current_dir(dir.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    let received = server.received.lock().unwrap().clone();
    assert_eq!(received.len(), 6);
    for (path, authorization, _) in &received {
        assert_eq!(path, "/api/v1/lineage");
        assert_eq!(authorization, "Bearer secret-key");
    }
    let posted: Vec<Value> = received
        .iter()
        .map(|(_, _, body)| serde_json::from_str(body).unwrap())
        .collect();
    assert_eq!(posted[0]["eventType"], "START");
    assert_eq!(posted[5]["eventType"], "COMPLETE");
    // Nothing went to a file.
    assert!(!dir.path().join("kiln-lineage.jsonl").exists());

    // kiln sql -f: the script is a run, each statement that writes or
    // returns rows a child run; a path of its own is kept as given.
    let server = endpoint(200);
    let r = run(kiln().args([
        "sql",
        "-f",
        &s(&job),
        "--table",
        &people_table(dir.path()),
        "--lineage-url",
        &format!("{}/custom/lineage", server.url),
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let received = server.received.lock().unwrap().clone();
    let posted: Vec<Value> = received
        .iter()
        .map(|(_, _, body)| serde_json::from_str(body).unwrap())
        .collect();
    assert!(received.iter().all(|(path, ..)| path == "/custom/lineage"));
    assert_eq!(
        sequence(&posted),
        pairs(&[
            ("START", "nightly"),
            ("START", "nightly.step2"),
            ("COMPLETE", "nightly.step2"),
            ("START", "nightly.step3"),
            ("COMPLETE", "nightly.step3"),
            ("COMPLETE", "nightly"),
        ])
    );
}

#[test]
fn an_endpoint_that_is_down_does_not_fail_the_job() {
    // Nothing listens on a port just released.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let failing = endpoint(500);
    for (url, file) in [
        (closed.as_str(), None),
        (failing.url.as_str(), Some("mine.jsonl")),
    ] {
        let (dir, job, out) = job_dir();
        let mut cmd = kiln();
        cmd.args([
            "run",
            &s(&job),
            "--table",
            &people_table(dir.path()),
            "--lineage-url",
            url,
        ])
        .current_dir(dir.path());
        if let Some(file) = file {
            cmd.args(["--lineage", file]);
        }
        let r = run(&mut cmd);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(out.exists(), "the job's output was not written");
        let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("warning")).collect();
        assert_eq!(warnings.len(), 1, "{}", r.stderr);
        let written = file.unwrap_or("kiln-lineage.jsonl");
        assert!(warnings[0].contains(url), "{}", warnings[0]);
        assert!(warnings[0].contains(written), "{}", warnings[0]);
        // Every event is in the file, the one that failed to post first.
        let events = events(&std::fs::read_to_string(dir.path().join(written)).unwrap());
        assert_eq!(events.len(), 6, "{url}");
        assert_eq!(events[0]["eventType"], "START");
        assert_eq!(events[5]["eventType"], "COMPLETE");
    }
    // The failing endpoint was tried once, not once per event.
    assert_eq!(failing.received.lock().unwrap().len(), 1);
}

#[test]
fn lineage_errors_are_one_line() {
    let dir = tempdir();
    let r = run(kiln().args(["lineage", &s(&dir.path().join("missing.sql"))]));
    assert_one_line_error(&r, &["missing.sql"]);
    let job = dir.path().join("bad.sql");
    std::fs::write(&job, "SELECT 1 AS a;\nSELECT nope FROM nowhere;\n").unwrap();
    let r = run(kiln().args(["lineage", &s(&job)]));
    assert_one_line_error(&r, &["statement 2 of 2", "nowhere"]);
    let r = run(kiln().args(["run", &s(&job), "--lineage-url", "ftp://host/x"]));
    assert_one_line_error(&r, &["--lineage-url", "http"]);
    assert_eq!(r.code, 2);
    // A job that neither writes nor returns rows: no events, a note.
    std::fs::write(&job, "CREATE VIEW v AS SELECT 1 AS a;\n").unwrap();
    let r = run(kiln().args(["lineage", &s(&job)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("no lineage"), "{}", r.stderr);
}
