//! Jobs (issue 16 §1): a script planned whole before it runs, as a DAG;
//! a view read by several outputs computed once; `kiln run`, `kiln explain
//! JOB.sql`, the report.

use std::path::{Path, PathBuf};

use datafusion::arrow::util::pretty::pretty_format_batches;
use kiln::Session;
use kiln::job::{Job, StepKind};

use crate::common::*;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/tiny-bert")
}

/// A job whose two outputs (and a table) read one `embed()` view.
fn shared_embed_job(people: &Path, out: &Path) -> String {
    format!(
        "CREATE VIEW e AS SELECT id, name, embed(name, '{model}') AS v FROM '{people}';\n\
         COPY (SELECT id, v FROM e WHERE id <= 2) TO '{out}/first.parquet';\n\
         COPY (SELECT id, name, v FROM e) TO '{out}/all/' STORED AS PARQUET;\n\
         SELECT count(*) AS n FROM e;\n",
        model = tiny().display(),
        people = s(people),
        out = s(out),
    )
}

/// The rows at `location` by id: ids, names (when there) and embeddings.
async fn rows(session: &Session, location: &str) -> Vec<(i64, Vec<f32>)> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Float32Type, Int64Type};
    let batches = session
        .sql(&format!("SELECT id, v FROM '{location}' ORDER BY id"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for batch in batches {
        let ids = batch.column(0).as_primitive::<Int64Type>();
        let vectors = batch.column(1).as_fixed_size_list();
        for i in 0..batch.num_rows() {
            let v = vectors.value(i);
            out.push((
                ids.value(i),
                v.as_primitive::<Float32Type>().values().to_vec(),
            ));
        }
        assert_eq!(vectors.null_count(), 0);
    }
    out
}

#[tokio::test]
async fn a_view_read_by_two_outputs_is_embedded_once() {
    let dir = tempdir();
    let people = dir.path().join("people.parquet");
    write_people(&people);
    let shared = dir.path().join("shared");
    let session = Session::new().unwrap();
    let job = Job::plan(&session, &shared_embed_job(&people, &shared))
        .await
        .unwrap();
    assert!(job.steps[0].is_shared(), "{:?}", job.steps[0]);
    assert_eq!(job.steps[0].read_by, vec![2, 3, 4]);
    assert_eq!(job.steps[1].after, vec![1]);
    assert_eq!(job.outputs().count(), 2);
    let report = job.run(&session).await.unwrap();
    assert_eq!(report.status, "succeeded");
    // Four rows in people: the encoder ran once a row, for all readers.
    assert_eq!(report.embedded_rows, 4, "{}", report.to_json());
    assert!(report.steps[0].materialized);
    assert_eq!(report.steps[0].embedded_rows, 4);
    assert_eq!(report.steps[1].rows, Some(2));
    assert_eq!(report.steps[2].rows, Some(4));
    assert!(report.steps[2].files.unwrap() >= 1 && report.steps[2].bytes.unwrap() > 0);

    // The same statements run one by one, in a session of their own: the
    // outputs are equal, and each reader embedded again.
    let separate = dir.path().join("separate");
    let other = Session::new().unwrap();
    other
        .run_script(&shared_embed_job(&people, &separate))
        .await
        .unwrap();
    // Equal up to float rounding: a batch's padding length (its longest
    // text) changes the encoder's matrix shapes, so the same text embedded
    // beside others can differ in its last bits (as in sentence-transformers).
    for name in ["first.parquet", "all/"] {
        let a = rows(&session, &format!("{}/{name}", s(&shared))).await;
        let b = rows(&session, &format!("{}/{name}", s(&separate))).await;
        assert_eq!(a.len(), b.len(), "{name}");
        assert_eq!(a.len(), if name == "all/" { 4 } else { 2 });
        for ((id_a, v_a), (id_b, v_b)) in a.iter().zip(&b) {
            assert_eq!(id_a, id_b, "{name}");
            let diff = v_a
                .iter()
                .zip(v_b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "{name}: row {id_a} differs by {diff}");
        }
    }
}

#[tokio::test]
async fn later_statements_plan_against_what_earlier_ones_create() {
    let dir = tempdir();
    let out = s(&dir.path().join("out"));
    let sql = format!(
        "COPY (SELECT i, i % 3 AS k FROM generate_series(1, 30) t(i)) TO '{out}/' STORED AS PARQUET;\n\
         CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{out}/';\n\
         CREATE TABLE m AS SELECT k, count(*) AS n FROM t GROUP BY k;\n\
         INSERT INTO m VALUES (9, 1);\n\
         SELECT sum(n) AS total FROM m;\n"
    );
    let session = Session::new().unwrap();
    let job = Job::plan(&session, &sql).await.unwrap();
    // Nothing ran while planning, and nothing of it shows in the session.
    assert!(!dir.path().join("out").exists());
    assert!(session.sql("SELECT * FROM t").await.is_err());
    assert_eq!(job.steps[1].after, vec![1]);
    assert_eq!(job.steps[2].after, vec![2]);
    assert_eq!(job.steps[3].after, vec![3]);
    assert!(matches!(job.steps[3].kind, StepKind::Insert { .. }));
    let mut total = None;
    for step in &job.steps {
        let outcome = job.run_step(&session, step.index).await.unwrap();
        if let Some((_, batches)) = outcome.rows {
            total = Some(pretty_format_batches(&batches).unwrap().to_string());
        }
    }
    assert!(total.unwrap().contains("| 31    |"));
}

#[test]
fn a_job_that_does_not_plan_runs_nothing_and_names_the_statement() {
    let dir = tempdir();
    let written = s(&dir.path().join("x.parquet"));
    let job = dir.path().join("job.sql");
    // A syntax error in the fifth statement.
    std::fs::write(
        &job,
        format!(
            "SELECT 1;\n-- a comment; with a semicolon\nSELECT 2;\n\
             COPY (SELECT 1 AS a) TO '{written}';\nSELECT ';' AS x;\nSELEC 4;\nSELECT 5;\n"
        ),
    )
    .unwrap();
    let report = s(&dir.path().join("report.json"));
    let r = run(kiln().args(["run", &s(&job), "--report", &report]));
    assert_one_line_error(&r, &["the job was not run", "statement 5 of 6", "line 6"]);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(!Path::new(&written).exists());
    // An error while planning the third (after a COPY): nothing written.
    std::fs::write(
        &job,
        format!("SELECT 1;\nCOPY (SELECT 1 AS a) TO '{written}';\nSELECT nope FROM '{written}';\n"),
    )
    .unwrap();
    let r = run(kiln().args(["run", &s(&job)]));
    assert_one_line_error(&r, &["the job was not run: statement 3 of 3", "nope"]);
    assert!(!Path::new(&written).exists());
}

#[test]
fn kiln_run_reports_and_explain_shows_the_dag() {
    let dir = tempdir();
    let people = dir.path().join("people.parquet");
    write_people(&people);
    let out = dir.path().join("out");
    let job = dir.path().join("job.sql");
    std::fs::write(&job, shared_embed_job(&people, &out)).unwrap();

    let text = ok(&["explain", &s(&job)]);
    assert!(text.starts_with("job: 4 statements, 2 outputs"), "{text}");
    assert!(
        text.contains("view e  -- reads") && text.contains("read by 2, 3, 4: computed once"),
        "{text}"
    );
    assert!(text.contains("after 1"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["explain", &s(&job), "--format", "json"])).unwrap();
    assert_eq!(json["outputs"], serde_json::json!([2, 3]));
    assert_eq!(json["steps"][0]["kind"], "view");
    assert_eq!(json["steps"][2]["after"], serde_json::json!([1]));
    assert!(!out.exists(), "explain runs nothing");

    let report = dir.path().join("report.json");
    let stdout = ok(&["run", &s(&job), "--report", &s(&report), "--format", "csv"]);
    assert_eq!(stdout, "n\n4\n");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["embedded_rows"], 4);
    assert_eq!(report["steps"][1]["kind"], "copy");
    assert_eq!(report["steps"][1]["rows"], 2);
    assert_eq!(report["steps"][1]["files"], 1);

    // A job that fails while running still leaves its report.
    std::fs::write(
        &job,
        "SELECT 1 AS a;\nSELECT 1 / (SELECT 0) AS boom FROM generate_series(1, 3);\n",
    )
    .unwrap();
    let failed = dir.path().join("failed.json");
    let r = run(kiln().args(["run", &s(&job), "--report", &s(&failed)]));
    assert_one_line_error(&r, &["statement 2 of 2", "Divide by zero"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&failed).unwrap()).unwrap();
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"]
            .as_str()
            .unwrap()
            .contains("statement 2 of 2")
    );
    assert_eq!(report["steps"].as_array().unwrap().len(), 1);
}
