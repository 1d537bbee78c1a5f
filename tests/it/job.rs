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
    // The shared view is a table of the session from then on.
    session.sql("DROP TABLE e").await.unwrap();

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

/// The job of `sql` and a DataFrame over what its step 1 writes, rows
/// `filter`, written as its step 2.
async fn frame_job(session: &Session, sql: &str, out: &Path, filter: &str) -> (Job, usize) {
    let mut job = Job::plan(session, sql).await.unwrap();
    let frame = session
        .sql(&format!(
            "SELECT id, upper(name) AS n FROM '{}/some/' WHERE {filter}",
            s(out)
        ))
        .await
        .unwrap();
    let index = job
        .write_parquet(session, frame, &format!("{}/frame/", s(out)))
        .await
        .unwrap();
    (job, index)
}

/// A DataFrame written as an output of a job (`Job::write_parquet`): a
/// step of the DAG after the SQL that writes what it reads, committed with
/// the job's mark, so that the same job resumed skips it; a frame over
/// other rows is another job.
#[tokio::test]
async fn a_dataframe_write_is_an_output_of_the_job() {
    let dir = tempdir();
    let people = dir.path().join("people.parquet");
    write_people(&people);
    let out = dir.path().join("out");
    let sql = format!(
        "COPY (SELECT id, name FROM '{people}' WHERE id > 1) TO '{out}/some/' STORED AS PARQUET;",
        people = s(&people),
        out = s(&out),
    );
    let session = Session::new().unwrap();
    let plan = |session, filter| frame_job(session, &sql, &out, filter);
    // Step 1 once, so that the frame has a table to read.
    Job::plan(&session, &sql)
        .await
        .unwrap()
        .run(&session)
        .await
        .unwrap();
    let (job, index) = plan(&session, "id < 4").await;
    assert_eq!(index, 2);
    assert_eq!(job.steps[1].after, vec![1], "{}", job.explain());
    assert!(
        matches!(&job.steps[1].kind, StepKind::Copy { target, .. } if target.ends_with("/frame/"))
    );
    assert!(job.explain().contains("copy to"), "{}", job.explain());
    let report = job.run(&session).await.unwrap();
    assert_eq!(report.steps[1].rows, Some(2));
    let batches = session
        .sql(&format!(
            "SELECT id, n FROM '{}/frame/' ORDER BY id",
            s(&out)
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = pretty_format_batches(&batches).unwrap().to_string();
    assert!(text.contains("GRACE") && text.contains("LINUS"), "{text}");
    assert!(!text.contains("ADA"), "{text}");

    // The same job, resumed: both outputs are this job's, skipped.
    let (mut again, _) = plan(&session, "id < 4").await;
    assert_eq!(again.fingerprint, job.fingerprint);
    again.check_resume(&session).await.unwrap();
    assert!(again.steps.iter().all(|s| s.committed));
    // Another frame: another job, its outputs computed again.
    let (mut other, _) = plan(&session, "id < 3").await;
    assert_ne!(other.fingerprint, job.fingerprint);
    let notes = other.check_resume(&session).await.unwrap();
    assert!(!other.steps[1].committed);
    assert!(notes.iter().any(|n| n.contains("another job")), "{notes:?}");
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
    // Its report says so.
    let not_run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(not_run["status"], "failed");
    assert!(
        not_run["error"]
            .as_str()
            .unwrap()
            .contains("statement 5 of 6")
    );
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

/// A job of three outputs (two local directories, one on the loopback S3
/// server when it runs) killed at chosen points, then resumed: every output
/// a reader sees is absent or complete after each kill, `--resume` skips
/// what this job committed, and the outputs end equal to an uninterrupted
/// run's. Changing an input invalidates what was committed, with a note.
#[test]
fn a_killed_job_leaves_whole_outputs_and_resumes_where_it_stopped() {
    let dir = tempdir();
    let people = dir.path().join("people.parquet");
    write_people(&people);
    let server = s3();
    let remote = match server {
        Some(server) => {
            server.create_bucket("kiln-jobs");
            "s3://kiln-jobs/run".to_string()
        }
        None => s(&dir.path().join("remote")),
    };
    let job_for = |root: &str, remote: &str| {
        format!(
            "SET kiln.job_concurrent_outputs = 1;\n\
             CREATE VIEW e AS SELECT id, name, embed(name, '{model}') AS v FROM '{people}';\n\
             COPY (SELECT id, v FROM e) TO '{root}/a/' STORED AS PARQUET;\n\
             COPY (SELECT id, name FROM e WHERE id > 1) TO '{remote}/b/' STORED AS PARQUET;\n\
             COPY (SELECT count(*) AS n, sum(id) AS ids FROM e) TO '{root}/c/' STORED AS DELTA;\n",
            model = tiny().display(),
            people = s(&people),
        )
    };
    let kiln_job = || kiln_s3(server);
    let run_job = |job: &Path, fault: Option<&str>, resume: bool, report: &Path| {
        let mut cmd = kiln_job();
        cmd.args(["run", &s(job), "--report", &s(report)]);
        if resume {
            cmd.arg("--resume");
        }
        if let Some(fault) = fault {
            cmd.env("KILN_FAULT", fault);
        }
        run(&mut cmd)
    };
    let read_report = |report: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
    };
    // What an output holds, as CSV lines sorted (the reader is Kiln).
    let contents = |location: &str| {
        csv_of(
            kiln_job(),
            &format!("SELECT * FROM '{location}' ORDER BY 1"),
        )
    };

    // The uninterrupted run.
    let reference = s(&dir.path().join("reference"));
    let ref_job = dir.path().join("reference.sql");
    std::fs::write(
        &ref_job,
        job_for(&reference, &format!("{remote}-reference")),
    )
    .unwrap();
    let r = run_job(&ref_job, None, false, &dir.path().join("ref.json"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = [
        contents(&format!("{reference}/a/")).unwrap(),
        contents(&format!("{remote}-reference/b/")).unwrap(),
        contents(&format!("{reference}/c/")).unwrap(),
    ];

    let root = s(&dir.path().join("out"));
    let job = dir.path().join("job.sql");
    std::fs::write(&job, job_for(&root, &remote)).unwrap();
    let outputs = [
        format!("{root}/a/"),
        format!("{remote}/b/"),
        format!("{root}/c/"),
    ];
    let report = dir.path().join("report.json");

    // Killed with the first output's rows staged, before its commit.
    let r = run_job(&job, Some("kill-before-commit:3"), false, &report);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("KILN_FAULT"), "{}", r.stderr);
    assert!(
        outputs.iter().all(|o| contents(o).is_none()),
        "an output appeared"
    );
    let staged = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".kiln-staging-")
        })
        .count();
    assert_eq!(staged, 1, "the killed write's staging");

    // Resumed, and killed again once the second output is committed.
    let r = run_job(&job, Some("kill-after-step:4"), true, &report);
    assert_ne!(r.code, 0);
    assert_eq!(contents(&outputs[0]).as_ref(), Some(&want[0]));
    assert_eq!(contents(&outputs[1]).as_ref(), Some(&want[1]));
    assert!(contents(&outputs[2]).is_none());

    // Resumed, and killed again with the Delta output's files written,
    // before its first commit: no version, so no table a reader sees.
    let r = run_job(&job, Some("kill-before-commit:5"), true, &report);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("KILN_FAULT"), "{}", r.stderr);
    assert!(contents(&outputs[2]).is_none(), "the Delta output appeared");

    // Resumed to the end: the two committed outputs are skipped.
    let r = run_job(&job, None, true, &report);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("resuming: 2 of 3 outputs already committed"),
        "{}",
        r.stderr
    );
    let done = read_report(&report);
    assert_eq!(done["resumed_steps"], 2);
    assert_eq!(done["steps"][2]["resumed"], true);
    assert_eq!(done["steps"][3]["resumed"], true);
    assert_eq!(done["steps"][4]["resumed"], false);
    assert_eq!(done["steps"][4]["delta"], true);
    assert_eq!(done["steps"][4]["version"], 0);
    assert_eq!(done["steps"][4]["rows"], 1);
    assert!(done["steps"][4]["files"].as_u64().unwrap() >= 1);
    for (output, want) in outputs.iter().zip(&want) {
        assert_eq!(contents(output).as_ref(), Some(want), "{output}");
    }
    let leftovers = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(leftovers, 0, "staging of the killed write remains");

    // Nothing left to do: nothing is embedded again.
    let r = run_job(&job, None, true, &report);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let done = read_report(&report);
    assert_eq!(done["resumed_steps"], 3);
    assert_eq!(done["embedded_rows"], 0);

    // A changed input: everything is computed again, and the run says why.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_people(&people);
    let r = run_job(&job, None, true, &report);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("other inputs"), "{}", r.stderr);
    let done = read_report(&report);
    assert_eq!(done["resumed_steps"], 0);
    assert_eq!(done["embedded_rows"], 4);
}

/// Input for a job run in parts: a file of 240 rows in row groups of 20
/// (cut into byte ranges by a small `kiln.job_part_size`) and two of 10.
fn write_docs(dir: &Path) -> u64 {
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    std::fs::create_dir_all(dir).unwrap();
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
    ]));
    let mut total = 0;
    for (file, (first, rows)) in [
        ("big", (0, 240)),
        ("small-a", (1000, 10)),
        ("small-b", (2000, 10)),
    ] {
        let ids: Vec<i64> = (first..first + rows).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("document number {i}")).collect();
        let batch = RecordBatch::try_new(
            std::sync::Arc::clone(&schema),
            vec![
                std::sync::Arc::new(Int64Array::from(ids)),
                std::sync::Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(20))
            .build();
        let out = std::fs::File::create(dir.join(format!("{file}.parquet"))).unwrap();
        let mut writer =
            ArrowWriter::try_new(out, std::sync::Arc::clone(&schema), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        total += rows as u64;
    }
    total
}

/// A job killed inside an output (after two of its parts were
/// checkpointed; then again inside a part, its files written but not yet
/// recorded) and resumed: the resumed run skips the parts done, embeds only
/// the rows of the others, and ends with exactly the rows an uninterrupted
/// run writes — none lost, none twice. Locally and, when it runs, on the
/// loopback S3 server (checkpoint and all).
#[test]
fn a_job_killed_inside_an_output_resumes_from_its_checkpointed_parts() {
    let dir = tempdir();
    let docs = dir.path().join("docs");
    let total = write_docs(&docs);
    let server = s3();
    let mut roots = vec![s(&dir.path().join("out"))];
    if let Some(server) = server {
        server.create_bucket("kiln-parts");
        roots.push("s3://kiln-parts/run".to_string());
    }
    let kiln_job = || kiln_s3(server);
    for root in roots {
        let job_for = |out: &str| {
            format!(
                "SET datafusion.execution.target_partitions = 2;\n\
                 SET kiln.job_part_size = '1KiB';\n\
                 COPY (SELECT id, embed(name, '{model}') AS v FROM '{docs}' WHERE id % 7 <> 3) \
                 TO '{out}' STORED AS PARQUET;\n",
                model = tiny().display(),
                docs = s(&docs),
            )
        };
        let run_job = |job: &Path, fault: Option<&str>, resume: bool| {
            let report = dir.path().join("report.json");
            let mut cmd = kiln_job();
            cmd.args(["run", &s(job), "--report", &s(&report)]);
            if resume {
                cmd.arg("--resume");
            }
            if let Some(fault) = fault {
                cmd.env("KILN_FAULT", fault);
            }
            let r = run(&mut cmd);
            let report: Option<serde_json::Value> = std::fs::read_to_string(&report)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let _ = std::fs::remove_file(dir.path().join("report.json"));
            (r, report)
        };
        let contents = |location: &str| {
            csv_of(
                kiln_job(),
                &format!("SELECT id, v FROM '{location}' ORDER BY id"),
            )
        };
        let kept: u64 = (0..240)
            .chain(1000..1010)
            .chain(2000..2010)
            .filter(|i| i % 7 != 3)
            .count() as u64;
        assert!(total > kept);

        // The uninterrupted run.
        let reference = format!("{root}/reference/");
        let ref_job = dir.path().join("reference.sql");
        std::fs::write(&ref_job, job_for(&reference)).unwrap();
        let (r, report) = run_job(&ref_job, None, false);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let report = report.unwrap();
        let step = &report["steps"][2];
        let parts = step["parts"].as_u64().unwrap();
        assert!(parts >= 4, "{step}");
        assert_eq!(step["resumed_parts"], 0);
        assert_eq!(step["rows"], kept);
        assert_eq!(report["embedded_rows"], kept);
        let want = contents(&reference).unwrap();
        assert_eq!(want.lines().count() as u64, kept + 1);

        let out = format!("{root}/e/");
        let job = dir.path().join("job.sql");
        std::fs::write(&job, job_for(&out)).unwrap();
        // Killed once two parts are checkpointed.
        let (r, _) = run_job(&job, Some("kill-after-part:3/2"), false);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("KILN_FAULT"), "{}", r.stderr);
        assert!(contents(&out).is_none(), "a partial output appeared");
        // Resumed, and killed inside the third part: its files written,
        // not recorded.
        let (r, _) = run_job(&job, Some("kill-in-part:3/3"), true);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("KILN_FAULT"), "{}", r.stderr);
        assert!(contents(&out).is_none(), "a partial output appeared");
        // Where it is local, the checkpoint can be read: the rows of the
        // two parts done.
        let local_out = dir.path().join("out");
        let done_rows: Option<u64> = (!root.starts_with("s3://")).then(|| {
            let staging = std::fs::read_dir(&local_out)
                .unwrap()
                .flatten()
                .find(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".kiln-staging-j")
                })
                .expect("the job's staging")
                .path();
            (0..2)
                .map(|part| {
                    let record = staging.join(format!("_kiln_parts/part-{part:06}.json"));
                    let record: serde_json::Value =
                        serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
                    record["rows"].as_u64().unwrap()
                })
                .sum()
        });

        // Resumed to the end.
        let (r, report) = run_job(&job, None, true);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let report = report.unwrap();
        let step = &report["steps"][2];
        assert_eq!(step["parts"].as_u64(), Some(parts), "{step}");
        assert_eq!(step["resumed_parts"], 2, "{step}");
        assert_eq!(report["resumed_parts"], 2);
        assert_eq!(step["rows"], kept);
        let embedded = report["embedded_rows"].as_u64().unwrap();
        assert!(
            embedded > 0 && embedded < kept,
            "embedded {embedded} of {kept}"
        );
        if let Some(done_rows) = done_rows {
            assert!(done_rows > 0);
            assert_eq!(embedded, kept - done_rows);
        }
        assert_eq!(contents(&out).as_ref(), Some(&want));
        if !root.starts_with("s3://") {
            let hidden: Vec<String> = std::fs::read_dir(&local_out)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            assert!(hidden.is_empty(), "{hidden:?}");
            let inside: Vec<String> = std::fs::read_dir(local_out.join("e"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('_') && n != "_SUCCESS")
                .collect();
            assert!(inside.is_empty(), "{inside:?}");
        }

        // Killed again after a part, then the job changes (its filter):
        // the parts done are of another version, and the run says so.
        let (r, _) = run_job(&job, Some("kill-after-part:3/1"), false);
        assert_ne!(r.code, 0);
        std::fs::write(&job, job_for(&out).replace("<> 3", "<> 4")).unwrap();
        let (r, report) = run_job(&job, None, true);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stderr.contains("another version of the job"),
            "{}",
            r.stderr
        );
        assert_eq!(report.unwrap()["resumed_parts"], 0);
    }
}

/// A job's output over one file cut into more slices than the scan had
/// partitions (no merge before the writer in DataFusion's plan, and no
/// work stealing between the scan's partitions): every row is written,
/// once.
#[test]
fn parts_of_one_file_keep_every_row() {
    let dir = tempdir();
    let docs = dir.path().join("docs");
    write_docs(&docs);
    let out = dir.path().join("out");
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "SET datafusion.execution.target_partitions = 4;\n\
             SET datafusion.execution.enable_file_stream_work_stealing = false;\n\
             SET kiln.job_part_size = '1KiB';\n\
             COPY (SELECT id, name FROM '{big}') TO '{out}/' STORED AS PARQUET;\n",
            big = s(&docs.join("big.parquet")),
            out = s(&out),
        ),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let r = run(kiln().args(["run", &s(&job), "--report", &s(&report)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(
        report["steps"][3]["parts"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert_eq!(report["steps"][3]["rows"], 240);
    let r = run(kiln().args([
        "sql",
        "--format",
        "csv",
        "-c",
        &format!(
            "SELECT count(*) AS n, count(DISTINCT id) AS ids, sum(id) AS total FROM '{}/'",
            s(&out)
        ),
    ]));
    assert_eq!(
        r.stdout.trim(),
        "n,ids,total\n240,240,28680",
        "{}",
        r.stderr
    );
}

/// A job killed with a real SIGKILL from outside while it writes an output
/// (two of its parts checkpointed), then resumed: the parts done are
/// skipped, and the output is exactly an uninterrupted run's.
#[test]
fn a_job_sigkilled_mid_output_resumes_from_its_parts() {
    let dir = tempdir();
    let docs = dir.path().join("docs");
    write_docs(&docs);
    let out = dir.path().join("out");
    let job_for = |target: &str| {
        format!(
            "SET datafusion.execution.target_partitions = 2;\n\
             SET kiln.job_part_size = '1KiB';\n\
             COPY (SELECT id, embed(name, '{model}') AS v FROM '{docs}') TO '{target}' \
             STORED AS PARQUET;\n",
            model = tiny().display(),
            docs = s(&docs),
        )
    };
    let reference = dir.path().join("reference.sql");
    std::fs::write(&reference, job_for(&format!("{}/reference/", s(&out)))).unwrap();
    let r = run(kiln().args(["run", &s(&reference)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let job = dir.path().join("job.sql");
    std::fs::write(&job, job_for(&format!("{}/e/", s(&out)))).unwrap();

    let mut child = kiln()
        .args(["run", &s(&job)])
        .env("KILN_FAULT", "slow-parts:400")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the second part's record, then SIGKILL.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let second = loop {
        let found = std::fs::read_dir(&out).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("_kiln_parts/part-000001.json"))
                .find(|p| p.exists())
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no part was checkpointed"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the job ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(second.exists());
    let read = |location: String| {
        csv_of(
            kiln(),
            &format!("SELECT id, v FROM '{location}' ORDER BY id"),
        )
    };
    assert!(
        read(format!("{}/e/", s(&out))).is_none(),
        "a partial output appeared"
    );

    let report = dir.path().join("report.json");
    let r = run(kiln().args(["run", &s(&job), "--resume", "--report", &s(&report)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let resumed = report["resumed_parts"].as_u64().unwrap();
    assert!(resumed >= 2, "{report}");
    assert!(report["embedded_rows"].as_u64().unwrap() < 260, "{report}");
    assert_eq!(report["steps"][2]["rows"], 260);
    assert_eq!(
        read(format!("{}/e/", s(&out))),
        read(format!("{}/reference/", s(&out)))
    );
}

/// A job whose two outputs share an `embed()` view, with its state at a
/// location (`--state`, a directory or the loopback S3 server): killed
/// while the view's rows are written, the resumed run goes on from the
/// view's parts done; killed after an output, the resumed run reads the
/// view's committed rows and embeds nothing. Outputs equal an
/// uninterrupted run's; the state is deleted when the job succeeds.
#[test]
fn a_job_with_a_state_location_resumes_its_shared_view() {
    let dir = tempdir();
    let docs = dir.path().join("docs");
    write_docs(&docs);
    let server = s3();
    let mut states = vec![s(&dir.path().join("state"))];
    if let Some(server) = server {
        server.create_bucket("kiln-state");
        states.push("s3://kiln-state/jobs".to_string());
    }
    let kiln_job = || kiln_s3(server);
    let job_for = |out: &str| {
        format!(
            "SET datafusion.execution.target_partitions = 2;\n\
             SET kiln.job_part_size = '1KiB';\n\
             SET kiln.job_concurrent_outputs = 1;\n\
             CREATE VIEW e AS SELECT id, embed(name, '{model}') AS v FROM '{docs}';\n\
             COPY (SELECT id, v FROM e) TO '{out}/a/' STORED AS PARQUET;\n\
             COPY (SELECT id FROM e WHERE id % 2 = 0) TO '{out}/b/' STORED AS PARQUET;\n",
            model = tiny().display(),
            docs = s(&docs),
        )
    };
    let report_path = dir.path().join("report.json");
    let run_job = |job: &Path, state: Option<&str>, fault: Option<&str>, resume: bool| {
        let _ = std::fs::remove_file(&report_path);
        let mut cmd = kiln_job();
        cmd.args(["run", &s(job), "--report", &s(&report_path)]);
        if let Some(state) = state {
            cmd.args(["--state", state]);
        }
        if resume {
            cmd.arg("--resume");
        }
        if let Some(fault) = fault {
            cmd.env("KILN_FAULT", fault);
        }
        let r = run(&mut cmd);
        let report: Option<serde_json::Value> = std::fs::read_to_string(&report_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        (r, report)
    };
    let contents = |location: &str| {
        csv_of(
            kiln_job(),
            &format!("SELECT * FROM '{location}' ORDER BY 1"),
        )
    };
    let reference = s(&dir.path().join("reference"));
    let ref_job = dir.path().join("reference.sql");
    std::fs::write(&ref_job, job_for(&reference)).unwrap();
    let (r, report) = run_job(&ref_job, None, None, false);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let total = report.unwrap()["embedded_rows"].as_u64().unwrap();
    assert_eq!(total, 260);
    let want = [
        contents(&format!("{reference}/a/")).unwrap(),
        contents(&format!("{reference}/b/")).unwrap(),
    ];

    for (i, state) in states.iter().enumerate() {
        let out = s(&dir.path().join(format!("out-{i}")));
        let job = dir.path().join(format!("job-{i}.sql"));
        std::fs::write(&job, job_for(&out)).unwrap();
        let outputs = [format!("{out}/a/"), format!("{out}/b/")];
        // Whether the shared view's rows are kept at the state location
        // (its directory, under the job's fingerprint, reads as a table).
        let state_kept = |fingerprint: &str| -> bool {
            let view = format!("{state}/{}/view-4-e/", &fingerprint[..16]);
            run(kiln_job().args(["sql", "-c", &format!("SELECT count(*) FROM '{view}'")])).code == 0
        };

        // Killed with two parts of the view's rows written.
        let (r, _) = run_job(&job, Some(state), Some("kill-after-part:4/2"), false);
        assert_ne!(r.code, 0);
        assert!(r.stderr.contains("KILN_FAULT"), "{}", r.stderr);
        assert!(outputs.iter().all(|o| contents(o).is_none()));
        // Resumed: the view goes on from its parts done.
        let (r, report) = run_job(&job, Some(state), None, true);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let report = report.unwrap();
        let view = &report["steps"][3];
        assert_eq!(view["materialized"], true, "{view}");
        assert_eq!(view["resumed_parts"], 2, "{view}");
        let embedded = report["embedded_rows"].as_u64().unwrap();
        assert!(embedded > 0 && embedded < total, "{embedded}");
        for (output, want) in outputs.iter().zip(&want) {
            assert_eq!(contents(output).as_ref(), Some(want), "{output}");
        }
        let fingerprint = report["fingerprint"].as_str().unwrap().to_string();
        assert!(!state_kept(&fingerprint), "the state outlived the job");

        // Killed after the first output (the second output removed, so
        // that the resumed run has it to write); resumed: the view's rows
        // are read from the state, nothing is embedded.
        std::fs::remove_dir_all(dir.path().join(format!("out-{i}/b"))).unwrap();
        let (r, _) = run_job(&job, Some(state), Some("kill-after-step:5"), false);
        assert_ne!(r.code, 0);
        assert!(state_kept(&fingerprint), "no state kept");
        let (r, report) = run_job(&job, Some(state), None, true);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let report = report.unwrap();
        assert_eq!(report["steps"][3]["resumed"], true);
        assert_eq!(report["steps"][4]["resumed"], true);
        assert_eq!(report["steps"][5]["resumed"], false);
        assert_eq!(report["steps"][5]["rows"], 130);
        assert_eq!(report["embedded_rows"], 0);
        for (output, want) in outputs.iter().zip(&want) {
            assert_eq!(contents(output).as_ref(), Some(want), "{output}");
        }
        assert!(!state_kept(&fingerprint), "the state outlived the job");
    }
}

/// Independent outputs run together: two `COPY` steps over one input run
/// as one wave (EXPLAIN says so, and each starts before the other ends);
/// a `COPY` reading what the one before it writes waits for it; with
/// `kiln.job_concurrent_outputs = 1` every step runs alone.
#[test]
fn independent_outputs_run_together() {
    let dir = tempdir();
    let docs = dir.path().join("docs");
    write_docs(&docs);
    let out = dir.path().join("out");
    let job = dir.path().join("job.sql");
    let write = |limit: usize| {
        std::fs::write(
            &job,
            format!(
                "SET kiln.job_concurrent_outputs = {limit};\n\
                 COPY (SELECT id, upper(name) AS n FROM '{docs}') TO '{out}/a/' STORED AS PARQUET;\n\
                 COPY (SELECT id FROM '{docs}' WHERE id % 2 = 0) TO '{out}/b/' STORED AS PARQUET;\n\
                 COPY (SELECT count(*) AS n FROM '{out}/b/') TO '{out}/c/' STORED AS PARQUET;\n",
                docs = s(&docs),
                out = s(&out),
            ),
        )
        .unwrap();
    };
    write(4);
    let r = run(kiln().args(["explain", &s(&job)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("runs beside 3"), "{}", r.stdout);
    assert!(r.stdout.contains("runs beside 2"), "{}", r.stdout);
    let step4 = r
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with('4'))
        .unwrap();
    assert!(!step4.contains("runs beside"), "{step4}");

    let report_path = dir.path().join("report.json");
    let r = run(kiln().args(["run", &s(&job), "--report", &s(&report_path)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let start = |i: usize| steps[i]["started_at"].as_f64().unwrap();
    let end = |i: usize| start(i) + steps[i]["seconds"].as_f64().unwrap();
    assert!(start(2) < end(1) && start(1) < end(2), "{report}");
    assert!(
        start(3) >= end(2),
        "step 4 did not wait for step 3: {report}"
    );
    assert_eq!(steps[1]["rows"], 260);
    assert_eq!(steps[2]["rows"], 130);
    let r = run(kiln().args([
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT n FROM '{}/c/'", s(&out)),
    ]));
    assert_eq!(r.stdout.trim(), "n\n130");

    // A step reading through a table what the step before it writes
    // waits for it.
    let through = dir.path().join("through.sql");
    std::fs::write(
        &through,
        format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{out}/b/';\n\
             COPY (SELECT id FROM '{docs}' WHERE id % 3 = 0) TO '{out}/b/' STORED AS PARQUET;\n\
             COPY (SELECT count(*) AS n FROM t) TO '{out}/d/' STORED AS PARQUET;\n",
            docs = s(&docs),
            out = s(&out),
        ),
    )
    .unwrap();
    let r = run(kiln().args(["explain", &s(&through)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stdout.contains("runs beside"), "{}", r.stdout);

    write(1);
    let r = run(kiln().args(["explain", &s(&job)]));
    assert!(!r.stdout.contains("runs beside"), "{}", r.stdout);
    let r = run(kiln().args(["run", &s(&job), "--report", &s(&report_path)]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    let start = |i: usize| steps[i]["started_at"].as_f64().unwrap();
    let end = |i: usize| start(i) + steps[i]["seconds"].as_f64().unwrap();
    assert!(start(2) >= end(1), "{report}");
}

/// The orchestrator examples: every file compiles (Airflow and Dagster
/// themselves import where installed: `KILN_TEST_DAGSTER`/`KILN_TEST_AIRFLOW`
/// name a Python that has them), and the helper they share maps Kiln's exit
/// codes for real: a report on success, a failure not to retry for bad
/// SQL, a retryable one (75) for an unreachable store.
#[test]
fn orchestrator_examples_compile_and_map_exit_codes() {
    let python = std::env::var("KILN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/orchestrators");
    let files = ["kiln_job.py", "airflow_dag.py", "dagster_assets.py"];
    let mut cmd = std::process::Command::new(&python);
    cmd.args(["-m", "py_compile"])
        .current_dir(&examples)
        .args(files);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (var, module) in [
        ("KILN_TEST_DAGSTER", "dagster_assets"),
        ("KILN_TEST_AIRFLOW", "airflow_dag"),
    ] {
        if let Ok(python) = std::env::var(var) {
            let r = run(std::process::Command::new(python)
                .args(["-c", &format!("import {module}")])
                .current_dir(&examples));
            assert_eq!(r.code, 0, "import {module}: {}", r.stderr);
        }
    }

    let dir = tempdir();
    let report = s(&dir.path().join("report.json"));
    let outcome = |sql: &str, env: &[(&str, String)]| -> Run {
        let job = dir.path().join("job.sql");
        std::fs::write(&job, sql).unwrap();
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(examples.join("kiln_job.py"))
            .args([s(&job), report.clone()])
            .env("KILN", env!("CARGO_BIN_EXE_kiln"))
            .env_remove("KILN_DEVICE");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let out = s(&dir.path().join("out"));
    let r = outcome(
        &format!("COPY (SELECT 1 AS a) TO '{out}/' STORED AS PARQUET;"),
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let outputs: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(outputs[0]["rows"], 1);
    assert_eq!(outputs[0]["files"], 1);

    let r = outcome("SELECT nope FROM (SELECT 1 AS a);", &[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("failed: error: the job was not run"),
        "{}",
        r.stdout
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = outcome(
        "SELECT count(*) FROM 's3://bucket/data.parquet';",
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ],
    );
    assert_eq!(r.code, 75, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("retryable: error:"), "{}", r.stdout);
}

/// An `INSERT INTO` a directory the job wrote is recorded in its manifest:
/// a resumed run skips it once done (no row twice), runs it when the job was
/// killed before it, and runs it again when its directory is rewritten.
#[test]
fn resumed_inserts_add_their_rows_once() {
    resumed_inserts("PARQUET");
}

/// The same into a Delta table: the insert's commit carries the job's mark.
#[test]
fn resumed_inserts_into_delta_add_their_rows_once() {
    resumed_inserts("DELTA");
}

fn resumed_inserts(format: &str) {
    let dir = tempdir();
    let out = s(&dir.path().join("out"));
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "COPY (SELECT i FROM generate_series(1, 10) t(i)) TO '{out}/' STORED AS {format};\n\
             CREATE EXTERNAL TABLE t STORED AS {format} LOCATION '{out}';\n\
             INSERT INTO t VALUES (100), (101);\n\
             SELECT count(*) AS n FROM t;\n"
        ),
    )
    .unwrap();
    let report = dir.path().join("report.json");
    let run_job = |fault: Option<&str>| {
        let mut cmd = kiln();
        cmd.args([
            "run",
            &s(&job),
            "--resume",
            "--format",
            "csv",
            "--report",
            &s(&report),
        ]);
        if let Some(fault) = fault {
            cmd.env("KILN_FAULT", fault);
        }
        run(&mut cmd)
    };
    let resumed = || -> serde_json::Value {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        r["resumed_steps"].clone()
    };
    // Killed after the COPY: the resumed run skips it and inserts once.
    let r = run_job(Some("kill-after-step:1"));
    assert_ne!(r.code, 0);
    let r = run_job(None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "n\n12\n");
    assert_eq!(resumed(), 1);
    // Everything done: nothing runs twice.
    let r = run_job(None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "n\n12\n");
    assert_eq!(resumed(), 2);
    // Without --resume the COPY rewrites the directory, and the insert adds
    // to the new one.
    let r = run(kiln().args(["run", &s(&job), "--format", "csv"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "n\n12\n");
}
