//! Regression tests of the hardening classes: nothing a user types or
//! points Kiln at crashes it, loses a file or leaves partial output, and
//! errors and exit codes say what happened.

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::{col, lit};
use kiln::{DeviceRequest, Session};

use crate::common::*;

fn sql(args: &[&str]) -> Run {
    run(kiln().env("KILN_DEVICE", "cpu").arg("sql").args(args))
}

fn vectors(dir: &std::path::Path) -> String {
    let path = dir.join("vecs.parquet");
    ok(&[
        "sql",
        "-c",
        &format!(
            "COPY (SELECT i AS id, [CAST(i AS FLOAT), 1.0, 2.0] AS v \
             FROM generate_series(1, 1000) t(i)) TO '{}'",
            s(&path)
        ),
    ]);
    s(&path)
}

/// A k far beyond the rows (the user's number) reserves nothing: the
/// result is every row, as for any k at least the row count.
#[test]
fn a_huge_k_is_bounded_by_the_rows() {
    let dir = tempdir();
    let path = vectors(dir.path());
    let table = format!("CREATE EXTERNAL TABLE vecs STORED AS PARQUET LOCATION '{path}';");
    for (query, rows) in [
        (
            "SELECT count(*) FROM vector_search('vecs', 'v', [1.0, 2.0, 3.0], 1000000000)",
            "1000",
        ),
        (
            "SELECT count(*) FROM (SELECT id FROM vecs \
             ORDER BY cosine_similarity(v, [1.0, 2.0, 3.0]) DESC LIMIT 1000000000)",
            "1000",
        ),
        (
            "SELECT count(*) FROM knn_join('vecs', 'v', 'vecs', 'v', 1000000000)",
            "1000000",
        ),
    ] {
        let r = sql(&["--format", "csv", "-c", &format!("{table} {query}")]);
        assert_eq!(r.code, 0, "{query}: {}", r.stderr);
        assert_eq!(r.stdout, format!("count(*)\n{rows}\n"), "{query}");
    }
}

/// A statement deeper than kiln.max_expression_depth is refused with one
/// line naming the setting; below it, a statement too deep for a main
/// thread's stack (which aborted Kiln before) plans on Kiln's own.
#[test]
fn deep_statements_are_refused_or_planned_never_a_crash() {
    let sum = format!("SELECT {}", vec!["1"; 2001].join(" + "));
    let r = sql(&["-c", &sum]);
    assert_one_line_error(&r, &["more than 2000 deep", "kiln.max_expression_depth"]);
    assert_eq!(r.code, 1);
    let union = vec!["SELECT 1"; 40].join(" UNION ALL ");
    let r = sql(&[
        "-c",
        &format!("SET kiln.max_expression_depth = 30; {union}"),
    ]);
    assert_one_line_error(&r, &["more than 30 deep"]);
    let ors = (0..40).map(|i| format!("x = {i}")).collect::<Vec<_>>();
    let r = sql(&[
        "-c",
        &format!(
            "SET kiln.max_expression_depth = 30; SELECT * FROM (VALUES (1)) t(x) WHERE {}",
            ors.join(" OR ")
        ),
    ]);
    assert_one_line_error(&r, &["more than 30 deep"]);

    // 5,000 levels overflowed the 8 MiB main stack (abort); now the
    // statement plans as deep as the bad column at its bottom.
    let deep = format!(
        "SET kiln.max_expression_depth = 100000; SELECT nope{}",
        "+1".repeat(5000)
    );
    let r = sql(&["-c", &deep]);
    assert_one_line_error(&r, &["nope"]);
    // And a deep expression that is fine runs (within the default limit).
    let r = sql(&[
        "--format",
        "csv",
        "-c",
        &format!("SELECT {} AS n", vec!["1"; 300].join("+")),
    ]);
    assert_eq!(r.stdout, "n\n300\n", "{}", r.stderr);
}

/// A Parquet footer whose length field points before the file's start
/// made the parquet crate panic (a subtraction overflow in its metadata
/// decoder). Kiln's stores check every Parquet footer they hand out: one
/// line naming the file and what is wrong with it, exit 1 — no panic, in the
/// CLI or through the library, for a file or a directory holding it.
#[test]
fn a_lying_parquet_footer_is_an_error_not_a_crash() {
    let dir = tempdir();
    let good = dir.path().join("good.parquet");
    write_people(&good);
    let mut bytes = std::fs::read(&good).unwrap();
    let n = bytes.len();
    bytes[n - 8..n - 4].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    let bad = dir.path().join("bad.parquet");
    std::fs::write(&bad, &bytes).unwrap();
    for args in [
        vec![
            "-c".to_string(),
            format!("SELECT count(*) FROM '{}'", s(&bad)),
        ],
        vec![
            "--table".to_string(),
            format!("t={}", s(&bad)),
            "-c".to_string(),
            "SELECT 1".to_string(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = sql(&args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        assert!(
            lines[0].contains("bad.parquet' is not a valid Parquet file: its footer gives 2147483647 bytes of metadata"),
            "{}",
            lines[0]
        );
        assert!(!r.stderr.contains("internal error"), "{}", r.stderr);
    }
    // The library (no CLI panic net): an error, for the file and for a
    // directory holding it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let session = kiln::Session::builder()
            .device("cpu".parse::<kiln::DeviceRequest>().unwrap())
            .build()
            .unwrap();
        for location in [s(&bad), format!("{}/", s(dir.path()))] {
            let result = async {
                let frame = session
                    .sql(&format!("SELECT count(*) FROM '{location}'"))
                    .await?;
                frame.collect().await.map_err(kiln::KilnError::from)
            }
            .await;
            let err = result.expect_err(&location).to_string();
            assert!(
                err.contains("is not a valid Parquet file"),
                "{location}: {err}"
            );
        }
    });
}

/// Metadata whose offsets lie — a column chunk at a negative offset, a page
/// of the offset index outside its column chunk, a range of terabytes — made
/// the parquet crate panic or the process abort (found by the Parquet fuzz target; the crashers are committed).
/// Kiln checks the metadata of every file a scan opens against the file's
/// size: an error naming the file, the row group and the column.
#[test]
fn parquet_metadata_with_lying_offsets_is_an_error_not_a_crash() {
    let crashers =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parquet");
    let dir = tempdir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, says) in [
        (
            "column-chunk-negative-start",
            "its data is said to be 80 bytes at offset -179",
        ),
        (
            "page-beyond-column-chunk",
            "its offset index puts a page of 247 bytes at offset 1134",
        ),
        (
            "page-index-offset-before-chunk",
            "outside the column's bytes 690..770",
        ),
        // Metadata whose offsets ask for 48 TB: the local store allocated
        // the range before reading, and the process aborted.
        (
            "metadata-range-of-terabytes",
            "asked for bytes 1381..48530143926982 of an object of 2044 bytes",
        ),
        // What the footer declares, used by schema inference and DataFusion's
        // statistics before any scan: each was a panic in arrow-ipc,
        // parquet or DataFusion.
        ("arrow-schema-field-without-type", "ARROW:schema"),
        ("arrow-schema-type-none", "ARROW:schema"),
        (
            "arrow-schema-unknown-float-precision",
            "a float precision Arrow does not know",
        ),
        (
            "sorting-column-index-out-of-range",
            "is said to be sorted by column",
        ),
        ("statistics-row-count-overflow", "rows"),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        std::fs::copy(crashers.join(name), &path).unwrap();
        let err = rt.block_on(async {
            let session = Session::builder()
                .device("cpu".parse::<DeviceRequest>().unwrap())
                .build()
                .unwrap();
            let frame = session
                .sql(&format!("SELECT * FROM '{}'", s(&path)))
                .await?;
            frame.collect().await.map_err(kiln::KilnError::from)
        });
        let err = err.expect_err(name).to_string();
        let named = if name == "metadata-range-of-terabytes" {
            format!("'{}': asked for", s(&path))
        } else if name.starts_with("arrow-schema") {
            format!(
                "'{}' is not a valid Parquet file: its embedded Arrow schema",
                s(&path)
            )
        } else {
            format!("'{}' is not a valid Parquet file: row group", s(&path))
        };
        assert!(err.contains(&named) && err.contains(says), "{name}: {err}");
    }
    // Page locations when DataFusion's metadata cache does not hold the page
    // index and a predicate asks for page pruning: the reader loads and
    // checks the index before DataFusion would load it on its own.
    for (name, column) in [
        ("page-beyond-column-chunk", "i"),
        ("page-index-offset-before-chunk", "id"),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        let err = rt.block_on(async {
            let session = Session::builder()
                .device("cpu".parse::<DeviceRequest>().unwrap())
                .build()
                .unwrap();
            session
                .sql("SET datafusion.runtime.metadata_cache_limit = '0K'")
                .await?;
            let frame = session
                .sql(&format!("SELECT * FROM '{}' WHERE {column} > 3", s(&path)))
                .await?;
            frame.collect().await.map_err(kiln::KilnError::from)
        });
        let err = err.expect_err(name).to_string();
        assert!(
            err.contains("its offset index puts a page"),
            "{name}: {err}"
        );
    }
}

/// Page data no metadata check can see — a dictionary-encoded page without
/// its dictionary, a run-length integer longer than ten bytes (found by the
/// Parquet fuzz target) — makes the parquet crate panic while it decodes.
/// Every Parquet scan runs under a guard (`DecodeGuardExec`): the panic is
/// an error naming the file, through the library with one partition (where
/// the panic used to reach the caller) or several, and one line with exit
/// 1 in the CLI. A directory names the files its partition read.
#[test]
fn parquet_page_data_that_panics_the_decoder_is_an_error() {
    let crashers =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/parquet");
    let dir = tempdir();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, site) in [
        (
            "dictionary-page-missing",
            "parquet-59.3.2/src/column/reader/decoder.rs",
        ),
        (
            "page-vlq-integer-too-long",
            "parquet-59.3.2/src/util/bit_util.rs",
        ),
    ] {
        let path = dir.path().join(format!("{name}.parquet"));
        std::fs::copy(crashers.join(name), &path).unwrap();
        let says = format!(
            "'{}' is not a valid Parquet file: its page data cannot be decoded",
            s(&path)
        );
        for partitions in [1, 4] {
            let err = rt.block_on(async {
                let session = Session::builder()
                    .device("cpu".parse::<DeviceRequest>().unwrap())
                    .target_partitions(partitions)
                    .build()
                    .unwrap();
                let frame = session
                    .sql(&format!("SELECT * FROM '{}'", s(&path)))
                    .await?;
                frame.collect().await.map_err(kiln::KilnError::from)
            });
            let err = err.expect_err(name).to_string();
            assert!(
                err.contains(&says) && err.contains(site),
                "{name}, {partitions} partitions: {err}"
            );
        }
        let r = sql(&["-c", &format!("SELECT * FROM '{}'", s(&path))]);
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: {}", r.stderr);
        assert!(lines[0].starts_with("error: "), "{}", lines[0]);
        assert!(lines[0].contains(&says), "{}", lines[0]);
        assert!(!r.stderr.contains("internal error"), "{}", r.stderr);
    }
    // Two bad files in one directory, one partition: both named.
    let both = dir.path().join("both");
    std::fs::create_dir(&both).unwrap();
    for copy in ["a", "b"] {
        std::fs::copy(
            crashers.join("dictionary-page-missing"),
            both.join(format!("{copy}.parquet")),
        )
        .unwrap();
    }
    let err = rt.block_on(async {
        let session = Session::builder()
            .device("cpu".parse::<DeviceRequest>().unwrap())
            .target_partitions(1)
            .build()
            .unwrap();
        let frame = session
            .sql(&format!("SELECT * FROM '{}/'", s(&both)))
            .await?;
        frame.collect().await.map_err(kiln::KilnError::from)
    });
    let err = err.expect_err("a directory").to_string();
    assert!(
        err.contains(&format!(
            "one of '{0}/a.parquet', '{0}/b.parquet' is not a valid Parquet file: its page data",
            s(&both)
        )),
        "{err}"
    );
}

/// A failed COPY leaves the previous output as it was and no new file or
/// staging debris; a COPY that succeeds replaces the output whole.
#[test]
fn a_failed_write_leaves_the_previous_output_untouched() {
    let dir = tempdir();
    let file = s(&dir.path().join("out.parquet"));
    let out_dir = s(&dir.path().join("outdir"));
    ok(&["sql", "-c", &format!("COPY (SELECT 1 AS a) TO '{file}'")]);
    ok(&[
        "sql",
        "-c",
        &format!("COPY (SELECT 7 AS a) TO '{out_dir}/' STORED AS PARQUET"),
    ]);
    let failing = "SELECT i, 10 / (i - 5) AS d FROM generate_series(1, 10) t(i)";
    let r = sql(&["-c", &format!("COPY ({failing}) TO '{file}'")]);
    assert_one_line_error(&r, &["Divide by zero"]);
    let r = sql(&[
        "-c",
        &format!("COPY ({failing}) TO '{out_dir}/' STORED AS PARQUET"),
    ]);
    assert_one_line_error(&r, &["Divide by zero"]);
    // A type CSV cannot hold: no 0-byte file that reads as 0 rows.
    let csv = dir.path().join("x.csv");
    let r = sql(&["-c", &format!("COPY (SELECT [1, 2] AS l) TO '{}'", s(&csv))]);
    assert_one_line_error(&r, &["CSV"]);
    assert!(!csv.exists());

    let read = |q: &str| ok(&["sql", "--format", "csv", "-c", q]);
    assert_eq!(read(&format!("SELECT a FROM '{file}'")), "a\n1\n");
    assert_eq!(read(&format!("SELECT a FROM '{out_dir}/'")), "a\n7\n");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("kiln-staging")),
        "{names:?}"
    );

    // COPY replaces (it used to add files, doubling the count); INSERT
    // INTO a table over the directory adds.
    for _ in 0..2 {
        ok(&[
            "sql",
            "-c",
            &format!(
                "COPY (SELECT * FROM generate_series(1, 10) t(i)) TO '{out_dir}/' STORED AS PARQUET"
            ),
        ]);
    }
    assert_eq!(
        read(&format!("SELECT count(*) AS n FROM '{out_dir}/'")),
        "n\n10\n"
    );
    let appended = read(&format!(
        "CREATE EXTERNAL TABLE t (i BIGINT) STORED AS PARQUET LOCATION '{out_dir}/'; \
         INSERT INTO t VALUES (11); SELECT count(*) AS n FROM t"
    ));
    assert!(appended.ends_with("n\n11\n"), "{appended}");
}

/// The library's write goes through the same commit: a failing frame
/// leaves the file that was there.
#[tokio::test]
async fn session_write_parquet_commits_or_leaves_nothing() {
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let out = s(&dir.path().join("scores.parquet"));
    let session = Session::builder()
        .device("cpu".parse::<DeviceRequest>().unwrap())
        .build()
        .unwrap();
    let rows = session
        .write_parquet(session.read_parquet(&s(&input)).await.unwrap(), &out, None)
        .await
        .unwrap();
    assert_eq!(rows, 4);
    let failing = session
        .read_parquet(&s(&input))
        .await
        .unwrap()
        .select(vec![(lit(1) / (col("id") - lit(3))).alias("x")])
        .unwrap();
    assert!(session.write_parquet(failing, &out, None).await.is_err());
    let back = session
        .read_parquet(&out)
        .await
        .unwrap()
        .count()
        .await
        .unwrap();
    assert_eq!(back, 4);
}

/// Files Kiln writes carry Utf8, not DataFusion's in-memory Utf8View, so a
/// directory of Kiln's and another writer's files reads as one table.
#[test]
fn written_files_carry_standard_types_and_mix_with_other_writers() {
    let dir = tempdir();
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    let kiln_file = mixed.join("kiln.parquet");
    ok(&[
        "sql",
        "-c",
        &format!(
            "COPY (SELECT 5 AS id, 'zed' AS name, 0.5 AS score) TO '{}'",
            s(&kiln_file)
        ),
    ]);
    let file = std::fs::File::open(&kiln_file).unwrap();
    let meta =
        parquet::arrow::arrow_reader::ArrowReaderMetadata::load(&file, Default::default()).unwrap();
    let name = meta.schema().field_with_name("name").unwrap();
    assert_eq!(
        name.data_type(),
        &datafusion::arrow::datatypes::DataType::Utf8
    );
    // Another writer's file (arrow-rs, as pyarrow and Spark: Utf8).
    write_people(&mixed.join("people.parquet"));
    let out = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT count(*) AS n, max(name) AS m FROM '{}/'", s(&mixed)),
    ]);
    assert_eq!(out, "n,m\n5,陈\n");
}

/// One string column written as Utf8View (older Kiln files, DataFusion),
/// LargeUtf8 (Polars) and Utf8 (pyarrow, Spark) in one partitioned
/// directory: it reads as one table by location, as a created table, with
/// `--table` and through the library; a column whose types really differ
/// is still an error naming it.
#[test]
fn a_directory_of_writers_that_disagree_on_string_types_reads_as_one_table() {
    use datafusion::arrow::array::{ArrayRef, LargeStringArray, RecordBatch, StringViewArray};
    let dir = tempdir();
    let mixed = dir.path().join("mixed");
    let write = |sub: &str, file: &str, name: ArrayRef| {
        let at = mixed.join(sub);
        std::fs::create_dir_all(&at).unwrap();
        let id: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(vec![7]));
        let batch = RecordBatch::try_from_iter([("id", id), ("name", name)]).unwrap();
        let out = std::fs::File::create(at.join(file)).unwrap();
        let mut writer = parquet::arrow::ArrowWriter::try_new(out, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    };
    write(
        "year=2024",
        "view.parquet",
        Arc::new(StringViewArray::from(vec!["zed"])),
    );
    write(
        "year=2025",
        "large.parquet",
        Arc::new(LargeStringArray::from(vec!["amy"])),
    );
    write_people(&mixed.join("year=2025/people.parquet"));
    let m = format!("{}/", s(&mixed));
    let query = |from: &str| {
        format!(
            "SELECT count(*) AS n, min(name) AS lo, max(name) AS hi, count(DISTINCT year) AS y FROM {from}"
        )
    };
    let expected = "n,lo,hi,y\n6,ada,陈,2\n";
    assert_eq!(
        ok(&["sql", "--format", "csv", "-c", &query(&format!("'{m}'"))]),
        expected
    );
    let created = format!(
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{m}'; {}",
        query("t")
    );
    assert_eq!(ok(&["sql", "--format", "csv", "-c", &created]), expected);
    let table = format!("t={m}");
    assert_eq!(
        ok(&[
            "sql",
            "--format",
            "csv",
            "--table",
            &table,
            "-c",
            &query("t")
        ]),
        expected
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(async {
        let session = Session::builder()
            .device("cpu".parse::<DeviceRequest>().unwrap())
            .build()
            .unwrap();
        let frame = session.read_parquet(&m).await.unwrap();
        frame.count().await.unwrap()
    });
    assert_eq!(rows, 6);
    // A column that is an integer in one file and a string in another.
    write(
        "year=2026",
        "other.parquet",
        Arc::new(datafusion::arrow::array::Int64Array::from(vec![1])),
    );
    let r = run(kiln().args(["sql", "-c", &query(&format!("'{m}'"))]));
    assert_one_line_error(&r, &["field 'name'", "Int64"]);
}

#[test]
fn embed_refuses_to_write_into_its_input() {
    let dir = tempdir();
    let input = dir.path().join("in");
    std::fs::create_dir(&input).unwrap();
    write_people(&input.join("p.parquet"));
    let i = format!("{}/", s(&input));
    for out in [i.clone(), s(&input), format!("{i}sub/")] {
        let r = run(kiln().args(["embed", &i, &out, "--column", "name"]));
        assert_one_line_error(&r, &["the input"]);
        assert_eq!(r.code, 2);
    }
    assert_eq!(std::fs::read_dir(&input).unwrap().count(), 1);
}

/// Options are checked by the SET that gives them.
#[test]
fn bad_settings_are_refused_when_set() {
    for (set, needle) in [
        (
            "SET kiln.vector_memory_budget = 'abc'",
            "kiln.vector_memory_budget",
        ),
        (
            "SET kiln.vector_memory_budget = '99999999999999999999TiB'",
            "1PiB",
        ),
        ("SET kiln.gpu_batch_rows = 0", "kiln.gpu_batch_rows"),
        (
            "SET kiln.statement_timeout = 'soon'",
            "kiln.statement_timeout",
        ),
    ] {
        let r = sql(&["-c", &format!("{set}; SELECT 1")]);
        assert_one_line_error(&r, &["statement 1 of 2", needle]);
    }
    let r = sql(&["--timeout", "soon", "-c", "SELECT 1"]);
    assert_one_line_error(&r, &["--timeout", "soon"]);
    assert_eq!(r.code, 2);
}

/// A statement that never ends is cancelled by the timeout; Ctrl-C stops a
/// script with exit 130 and one line.
#[test]
fn timeouts_and_ctrl_c_cancel_cleanly() {
    let forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
                   SELECT count(*) FROM r";
    let r = sql(&["--timeout", "1s", "-c", forever]);
    assert_one_line_error(&r, &["cancelled after 1s", "kiln.statement_timeout"]);
    assert!(r.elapsed < Duration::from_secs(30), "{:?}", r.elapsed);
    let r = sql(&[
        "-c",
        &format!("SET kiln.statement_timeout = '500ms'; {forever}"),
    ]);
    assert_one_line_error(&r, &["statement 2 of 2", "cancelled after 500ms"]);

    let child = kiln()
        .env("KILN_DEVICE", "cpu")
        .args(["sql", "-c", forever])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert_eq!(stderr.trim(), "error: cancelled (Ctrl-C)");
}

/// Command-line details: missing arguments are named, SQL starting with
/// '-' is SQL, a closed pipe is a normal end, EXPLAIN ANALYZE reads as a
/// plan and `--table` failures are data errors (exit 1).
#[test]
fn command_line_errors_and_exit_codes() {
    let r = run(kiln().args(["embed", "in", "out"]));
    assert_one_line_error(&r, &["--column"]);
    assert_eq!(r.code, 2);
    let r = run(kiln().args(["datagen", "tpch", "--scale", "0.001"]));
    assert_one_line_error(&r, &["--output"]);
    let out = ok(&["sql", "--format", "csv", "-c", "-- a note\nSELECT 1 AS x"]);
    assert_eq!(out, "x\n1\n");

    let r = sql(&["--table", "t=/nonexistent/kiln.parquet", "-c", "SELECT 1"]);
    assert_one_line_error(&r, &["--table t"]);
    assert_eq!(r.code, 1);

    for args in [
        vec!["explain", "-c", "EXPLAIN ANALYZE SELECT 1"],
        vec!["explain", "--analyze", "-c", "SELECT 1"],
        vec!["sql", "-c", "EXPLAIN ANALYZE SELECT 1"],
    ] {
        let out = ok(&args);
        assert!(
            out.starts_with("== Plan with Metrics =="),
            "{args:?}: {out}"
        );
        assert!(out.contains("output_rows=1"), "{out}");
    }

    // `kiln sql ... | head -1`: the reader leaves early.
    let mut child = kiln()
        .args([
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT * FROM generate_series(1, 5000000)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// `FROM '<path>'` names the real cause when the path cannot be read,
/// rather than "table not found".
#[test]
fn unreadable_locations_name_their_cause() {
    let dir = tempdir();
    let missing = s(&dir.path().join("missing.parquet"));
    let r = sql(&["-c", &format!("SELECT * FROM '{missing}'")]);
    assert_one_line_error(&r, &[&missing, "No such file"]);
    let missing_dir = format!("{}/", s(&dir.path().join("nodir")));
    let r = sql(&["-c", &format!("SELECT * FROM '{missing_dir}'")]);
    assert_one_line_error(&r, &["nodir", "No such file"]);
    let notes = dir.path().join("notes.xyz");
    std::fs::write(&notes, "x\n").unwrap();
    let r = sql(&["-c", &format!("SELECT * FROM '{}'", s(&notes))]);
    assert_one_line_error(&r, &["notes.xyz", "extension", "STORED AS"]);
    assert_eq!(r.code, 1);
    let a = dir.path().join("loop_a.parquet");
    let b = dir.path().join("loop_b.parquet");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let r = sql(&["-c", &format!("SELECT * FROM '{}'", s(&a))]);
    assert_one_line_error(&r, &["loop_a.parquet", "symbolic links"]);
}

/// An http:// endpoint allows plain HTTP by itself (it failed with
/// "builder error"), and S3 without credentials says so.
#[test]
fn s3_endpoints_and_missing_credentials() {
    for var in ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"] {
        let r = run(kiln()
            .env(var, "http://127.0.0.1:1")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "y")
            .args(["sql", "-c", "SELECT * FROM 's3://bucket/x.parquet'"]));
        assert_one_line_error(&r, &["127.0.0.1:1"]);
        assert!(!r.stderr.contains("builder error"), "{var}: {}", r.stderr);
    }
    // No credentials anywhere: the chain ends at the instance metadata
    // endpoint, whose refusal is explained.
    let r = run(kiln().args(["sql", "-c", "SELECT * FROM 's3://bucket/x.parquet'"]));
    assert_one_line_error(&r, &["s3://bucket/x.parquet"]);
    if r.stderr.contains("169.254.169.254") {
        assert!(
            r.stderr.contains("no AWS credentials found"),
            "{}",
            r.stderr
        );
    }
}

/// Output: list columns print in CSV, long table cells are cut (and
/// `--max-width 0` keeps them), `kiln devices` lists the devices even when
/// KILN_DEVICE names one that is not there, k given as a string says so.
#[test]
fn output_of_lists_long_cells_and_devices() {
    let out = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        "SELECT 1 AS id, [0.5, 1.5] AS v",
    ]);
    assert_eq!(out, "id,v\n1,\"[0.5, 1.5]\"\n");
    let out = ok(&["sql", "-c", "SELECT repeat('x', 300) AS t"]);
    assert!(out.contains(&format!("{}…", "x".repeat(99))), "{out}");
    assert!(!out.contains(&"x".repeat(101)), "{out}");
    let out = ok(&[
        "sql",
        "--max-width",
        "0",
        "-c",
        "SELECT repeat('x', 300) AS t",
    ]);
    assert!(out.contains(&"x".repeat(300)), "{out}");

    let r = run(kiln().env("KILN_DEVICE", "wgpu:9").arg("devices"));
    assert!(r.stdout.starts_with("DEVICE"), "{}", r.stdout);
    assert!(r.stdout.contains("cpu:0"), "{}", r.stdout);
    assert_one_line_error(&r, &["wgpu:9"]);
    let json = ok(&["devices", "--format", "json"]);
    assert!(json.ends_with("}\n"), "{json:?}");

    let dir = tempdir();
    let path = vectors(dir.path());
    let r = sql(&[
        "-c",
        &format!(
            "CREATE EXTERNAL TABLE vecs STORED AS PARQUET LOCATION '{path}'; \
             SELECT * FROM vector_search('vecs', 'v', [1.0, 2.0, 3.0], '3')"
        ),
    ]);
    assert_one_line_error(&r, &["k must be a non-negative integer", "the string '3'"]);
}

/// An empty file named as a table is an error (it read as 0 rows); a
/// partitioned directory keeps its partition columns under `--table`;
/// `.ndjson` reads as JSON.
#[test]
fn empty_files_partitions_and_ndjson() {
    let dir = tempdir();
    let empty = s(&dir.path().join("empty.parquet"));
    std::fs::write(&empty, b"").unwrap();
    let r = sql(&["-c", &format!("SELECT count(*) FROM '{empty}'")]);
    assert_one_line_error(&r, &["empty.parquet", "empty (0 bytes)"]);
    let r = sql(&["--table", &format!("e={empty}"), "-c", "SELECT 1"]);
    assert_one_line_error(&r, &["--table e", "empty (0 bytes)"]);

    let parts = s(&dir.path().join("parts"));
    ok(&[
        "sql",
        "-c",
        &format!(
            "COPY (SELECT i, i % 2 AS p FROM generate_series(1, 10) t(i)) TO '{parts}/' \
             STORED AS PARQUET PARTITIONED BY (p)"
        ),
    ]);
    for location in [parts.clone(), format!("{parts}/")] {
        let out = ok(&[
            "sql",
            "--format",
            "csv",
            "--table",
            &format!("t={location}"),
            "-c",
            "SELECT p, count(*) AS n FROM t GROUP BY p ORDER BY p",
        ]);
        assert_eq!(out, "p,n\n0,5\n1,5\n", "{location}");
    }

    let events = dir.path().join("events.ndjson");
    std::fs::write(
        &events,
        "{\"a\": 1, \"b\": \"x\"}\n{\"a\": 2, \"b\": \"y\"}\n",
    )
    .unwrap();
    let out = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT sum(a) AS s, max(b) AS m FROM '{}'", s(&events)),
    ]);
    assert_eq!(out, "s,m\n3,y\n");
}

/// The prompt on a terminal (`script` gives it one): multi-line statements,
/// help, history, Ctrl-C cancelling the running statement and the prompt
/// going on, and a warning when Ctrl-D drops an unfinished statement. Lines
/// are typed one at a time, as a person does (a line editor drops what is
/// typed ahead of its prompt).
#[test]
fn the_interactive_prompt() {
    let dir = tempdir();
    let history = dir.path().join("history");
    let typed = [
        "SELECT 1 AS one;",
        "SELECT",
        " 2 AS two;",
        "\\?",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r;",
        "\\003",
        "SELECT 4 AS four;",
        "SELECT 5",
        "\\004",
    ];
    let feed: String = typed
        .iter()
        .map(|line| {
            let line = if line.starts_with("\\0") {
                format!("printf '{line}'")
            } else {
                format!("printf '%s\\n' '{line}'")
            };
            format!("sleep 1.5; {line}; ")
        })
        .collect();
    let script = format!(
        "({feed} sleep 1) | script -qec '{} sql' /dev/null",
        env!("CARGO_BIN_EXE_kiln")
    );
    let r = run(std::process::Command::new("sh")
        .args(["-c", &script])
        .env("KILN_HISTORY", &history)
        .env("KILN_DEVICE", "cpu")
        .env("NODEVICE_SELECT", "1"));
    let out: String = {
        // The terminal's escape sequences and carriage returns aside.
        let mut text = String::new();
        let mut chars = r.stdout.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.next();
                while chars.next_if(|c| !c.is_ascii_alphabetic()).is_some() {}
                chars.next();
            } else if c != '\r' {
                text.push(c);
            }
        }
        text
    };
    for expected in [
        "| one |",
        "  ..>  2 AS two;",
        "| two |",
        "Statements end with ';'",
        "cancelled (Ctrl-C)",
        "| four |",
        "warning: the unfinished statement was not run (end it with ';'): SELECT 5",
    ] {
        assert!(out.contains(expected), "'{expected}' missing from:\n{out}");
    }
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT 4 AS four;"), "{saved}");
}
