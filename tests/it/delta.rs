//! Delta Lake tables (issue 16, §2): `COPY ... STORED AS DELTA` (overwrite
//! and append), reading by path and by `CREATE EXTERNAL TABLE ... STORED AS
//! DELTA`, time travel by version and by time, `INSERT INTO`, and the
//! errors of each.

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use kiln::Session;

async fn ints(session: &Session, sql: &str) -> Vec<i64> {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

async fn error(session: &Session, sql: &str) -> String {
    crate::common::sql_error(session, sql).await
}

fn log_versions(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn copy_stored_as_delta_overwrites_appends_and_travels_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("events");
    let loc = table.display().to_string();
    let session = Session::new().unwrap();
    // Version 0: created by its first write.
    session
        .sql(&format!(
            "COPY (SELECT i AS id, 'a' || i AS name FROM generate_series(1, 10) t(i)) \
             TO '{loc}' STORED AS DELTA"
        ))
        .await
        .unwrap();
    assert_eq!(log_versions(&table).len(), 1);
    let sum = format!("SELECT sum(id) FROM '{loc}'");
    assert_eq!(ints(&session, &sum).await, vec![55]);
    // Version 1: appended.
    session
        .sql(&format!(
            "COPY (SELECT i AS id, 'b' || i AS name FROM generate_series(11, 12) t(i)) \
             TO '{loc}' STORED AS DELTA OPTIONS ('mode' 'append')"
        ))
        .await
        .unwrap();
    assert_eq!(ints(&session, &sum).await, vec![78]);
    // Version 2: overwritten, with another schema.
    session
        .sql(&format!(
            "COPY (SELECT 7::BIGINT AS other) TO '{loc}' STORED AS DELTA"
        ))
        .await
        .unwrap();
    assert_eq!(log_versions(&table).len(), 3);
    assert_eq!(
        ints(&session, &format!("SELECT other FROM '{loc}'")).await,
        vec![7]
    );
    // Time travel by version, in the name (Delta's `@v` form) and as a
    // table option.
    assert_eq!(
        ints(&session, &format!("SELECT sum(id) FROM '{loc}@v0'")).await,
        vec![55]
    );
    assert_eq!(
        ints(&session, &format!("SELECT count(*) FROM '{loc}@v1'")).await,
        vec![12]
    );
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE first STORED AS DELTA LOCATION '{loc}' \
             OPTIONS ('version' '0')"
        ))
        .await
        .unwrap();
    assert_eq!(ints(&session, "SELECT count(*) FROM first").await, vec![10]);
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE latest STORED AS DELTA LOCATION '{loc}'"
        ))
        .await
        .unwrap();
    assert_eq!(ints(&session, "SELECT other FROM latest").await, vec![7]);
    // By time: a time before the first commit has no version; now is the
    // latest.
    let e = error(
        &session,
        &format!("SELECT * FROM '{loc}@20000101000000000'"),
    )
    .await;
    assert!(
        e.contains("no version of the Delta table existed at 2000-01-01"),
        "{e}"
    );
    let now = chrono::Utc::now().format("%Y%m%d%H%M%S%3f").to_string();
    assert_eq!(
        ints(&session, &format!("SELECT other FROM '{loc}@{now}'")).await,
        vec![7]
    );
}

#[tokio::test]
async fn copy_reports_its_rows_and_insert_appends() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let session = Session::new().unwrap();
    let batches = session
        .sql(&format!(
            "COPY (SELECT i AS id, i % 2 AS odd FROM generate_series(1, 5) t(i)) TO '{loc}' \
             STORED AS DELTA PARTITIONED BY (odd)"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let count = batches[0]
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
        .value(0);
    assert_eq!(count, 5);
    session
        .sql(&format!(
            "CREATE EXTERNAL TABLE t STORED AS DELTA LOCATION '{loc}'"
        ))
        .await
        .unwrap();
    session
        .sql("INSERT INTO t VALUES (6, 0), (7, 1)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // The table named in the session sees its own insert.
    assert_eq!(ints(&session, "SELECT count(*) FROM t").await, vec![7]);
    let fresh = Session::new().unwrap();
    assert_eq!(
        ints(
            &fresh,
            &format!("SELECT CAST(sum(CAST(id AS BIGINT)) AS BIGINT) FROM '{loc}'")
        )
        .await,
        vec![28]
    );
    session
        .sql("INSERT OVERWRITE t VALUES (1, 1)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(ints(&session, "SELECT count(*) FROM t").await, vec![1]);
    assert_eq!(
        ints(&fresh, &format!("SELECT count(*) FROM '{loc}@v1'")).await,
        vec![7]
    );
}

#[tokio::test]
async fn delta_mistakes_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().join("t").display().to_string();
    let plain = dir.path().join("plain").display().to_string();
    let session = Session::new().unwrap();
    session
        .sql(&format!("COPY (SELECT 1 AS x) TO '{loc}' STORED AS DELTA"))
        .await
        .unwrap();
    session
        .sql(&format!(
            "COPY (SELECT 1 AS x) TO '{plain}/' STORED AS PARQUET"
        ))
        .await
        .unwrap();
    let e = error(
        &session,
        &format!("COPY (SELECT 1 AS x) TO '{loc}' STORED AS DELTA OPTIONS ('mode' 'upsert')"),
    )
    .await;
    assert!(e.contains("'mode' is overwrite, append"), "{e}");
    let e = error(
        &session,
        &format!("COPY (SELECT 1 AS x) TO '{loc}' STORED AS DELTA OPTIONS ('compression' 'zstd')"),
    )
    .await;
    assert!(e.contains("unknown option 'compression'"), "{e}");
    // Appending rows of another schema.
    let e = error(
        &session,
        &format!("COPY (SELECT 'x' AS y) TO '{loc}' STORED AS DELTA OPTIONS ('mode' 'append')"),
    )
    .await;
    assert!(e.contains(&loc), "{e}");
    // A Parquet COPY over a Delta table would lose its log.
    let e = error(
        &session,
        &format!("COPY (SELECT 1 AS x) TO '{loc}/' STORED AS PARQUET"),
    )
    .await;
    assert!(e.contains("a Delta table is there"), "{e}");
    // A version of what is not a Delta table; a version that does not exist.
    let e = error(&session, &format!("SELECT * FROM '{plain}@v1'")).await;
    assert!(e.contains("is not one"), "{e}");
    let e = error(&session, &format!("SELECT * FROM '{loc}@v9'")).await;
    assert!(e.contains("Delta"), "{e}");
    let e = error(
        &session,
        &format!(
            "CREATE EXTERNAL TABLE b STORED AS DELTA LOCATION '{loc}' OPTIONS ('version' 'x')"
        ),
    )
    .await;
    assert!(e.contains("'version' must be a version number"), "{e}");
    let e = error(
        &session,
        &format!("CREATE EXTERNAL TABLE b (x INT) STORED AS DELTA LOCATION '{loc}'"),
    )
    .await;
    assert!(e.contains("come from its log"), "{e}");
    let e = error(
        &session,
        &format!("COPY (SELECT 1 AS x) TO '{loc}' STORED AS DELTA PARTITIONED BY (x)"),
    )
    .await;
    assert!(e.contains("PARTITIONED BY names every column"), "{e}");
    let e = error(
        &session,
        &format!("CREATE EXTERNAL TABLE b STORED AS DELTA LOCATION '{plain}'"),
    )
    .await;
    assert!(e.contains("plain"), "{e}");
    // A version clause DataFusion would ignore is refused.
    session
        .sql("SET datafusion.sql_parser.dialect = 'databricks'")
        .await
        .unwrap();
    let e = error(&session, "SELECT * FROM t VERSION AS OF 3").await;
    assert!(e.contains("version clauses are not supported"), "{e}");
}

/// On S3 (moto on loopback) commits are conditional puts of the log entry:
/// two writers appending at once both land, one version each, no row
/// lost; the table reads back from a fresh session and by version.
#[tokio::test]
async fn concurrent_appends_to_a_table_on_s3_both_commit() {
    let Some(server) = crate::common::s3() else {
        return;
    };
    server.create_bucket("kiln-delta");
    let options: Vec<(String, String)> = [
        ("aws.access_key_id", crate::common::ACCESS_KEY.to_string()),
        (
            "aws.secret_access_key",
            crate::common::SECRET_KEY.to_string(),
        ),
        ("aws.region", "us-east-1".to_string()),
        ("aws.endpoint", server.endpoint.clone()),
        ("aws.allow_http", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let loc = "s3://kiln-delta/tables/events";
    let session = || {
        let session = Session::new().unwrap();
        session.configure_store(loc, &options).unwrap();
        session
    };
    let (a, b) = (session(), session());
    a.sql(&format!(
        "COPY (SELECT i AS id FROM generate_series(1, 100) t(i)) TO '{loc}' STORED AS DELTA"
    ))
    .await
    .unwrap();
    let append = |from: i64| {
        format!(
            "COPY (SELECT i AS id FROM generate_series({from}, {}) t(i)) TO '{loc}' \
             STORED AS DELTA OPTIONS ('mode' 'append')",
            from + 99
        )
    };
    let (sa, sb) = (append(101), append(201));
    let (ra, rb) = tokio::join!(a.sql(&sa), b.sql(&sb));
    ra.unwrap();
    rb.unwrap();
    let fresh = session();
    assert_eq!(
        ints(&fresh, &format!("SELECT count(*) FROM '{loc}'")).await,
        vec![300]
    );
    assert_eq!(
        ints(&fresh, &format!("SELECT count(DISTINCT id) FROM '{loc}'")).await,
        vec![300]
    );
    assert_eq!(
        ints(&fresh, &format!("SELECT count(*) FROM '{loc}@v0'")).await,
        vec![100]
    );
    assert_eq!(
        ints(&fresh, &format!("SELECT count(*) FROM '{loc}@v2'")).await,
        vec![300]
    );
    let e = error(&fresh, &format!("SELECT count(*) FROM '{loc}@v3'")).await;
    assert!(e.contains("has no version 3 (its newest is 2)"), "{e}");
}

/// Another Delta implementation reads what Kiln writes and Kiln reads what
/// it writes: the `deltalake` Python package (delta-rs's own bindings, but
/// its own writer defaults and protocol versions). `scripts/test` installs
/// it and sets `KILN_TEST_REQUIRE_DELTA_PY`; elsewhere the test skips when
/// the package is missing.
#[tokio::test]
async fn python_deltalake_reads_kiln_tables_and_kiln_reads_its() {
    let Some(python) =
        crate::common::python_with("deltalake, pyarrow", "KILN_TEST_REQUIRE_DELTA_PY")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours").display().to_string();
    let theirs = dir.path().join("theirs").display().to_string();
    let session = Session::new().unwrap();
    session
        .sql(&format!(
            "COPY (SELECT i AS id, 'n' || i AS name FROM generate_series(1, 50) t(i)) \
             TO '{ours}' STORED AS DELTA"
        ))
        .await
        .unwrap();
    session
        .sql(&format!(
            "COPY (SELECT i AS id, 'm' || i AS name FROM generate_series(51, 60) t(i)) \
             TO '{ours}' STORED AS DELTA OPTIONS ('mode' 'append')"
        ))
        .await
        .unwrap();
    let script = format!(
        "import deltalake, pyarrow as pa, pyarrow.compute as pc\n\
         t = deltalake.DeltaTable('{ours}')\n\
         d = t.to_pyarrow_table()\n\
         print(t.version(), d.num_rows, pc.sum(d['id']).as_py(), \
               deltalake.DeltaTable('{ours}', version=0).to_pyarrow_table().num_rows)\n\
         deltalake.write_deltalake('{theirs}', pa.table({{'k': pa.array([1, 2, 3], pa.int64())}}))\n\
         deltalake.write_deltalake('{theirs}', pa.table({{'k': pa.array([4], pa.int64())}}), mode='append')\n"
    );
    let out = std::process::Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 60 1830 50");
    assert_eq!(
        ints(&session, &format!("SELECT sum(k) FROM '{theirs}'")).await,
        vec![10]
    );
    assert_eq!(
        ints(&session, &format!("SELECT sum(k) FROM '{theirs}@v0'")).await,
        vec![6]
    );
}

/// `EXPLAIN` of a Delta `COPY` shows the physical plan that will run (its
/// input, placed), under the Delta writer; `EXPLAIN ANALYZE` refuses to
/// write it, in one line.
#[tokio::test]
async fn explain_of_a_delta_copy_shows_its_physical_plan() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("t");
    let session = Session::new().unwrap();
    let sql = format!(
        "EXPLAIN COPY (SELECT * FROM (VALUES (1), (2)) v(x) WHERE x > 1) TO '{}' STORED AS DELTA",
        table.display()
    );
    let batches = session.sql(&sql).await.unwrap().collect().await.unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("physical_plan "), "{text}");
    assert!(!text.contains("physical_plan_error"), "{text}");
    assert!(text.contains("DeltaSink(location="), "{text}");
    assert!(text.contains("FilterExec"), "{text}");
    let e = error(&session, &sql.replace("EXPLAIN", "EXPLAIN ANALYZE")).await;
    assert!(e.contains("Delta tables are written by COPY"), "{e}");
    assert!(!table.exists(), "EXPLAIN wrote the table");
}
