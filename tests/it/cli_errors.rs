//! Every kind of bad input ends in one line on stderr and a non-zero exit.

use crate::common::*;

fn sql(args: &[&str]) -> Run {
    run(kiln().arg("sql").args(args))
}

#[test]
fn missing_file() {
    let r = sql(&["-c", "SELECT * FROM '/nonexistent/kiln/data.parquet'"]);
    assert_one_line_error(&r, &["/nonexistent/kiln/data.parquet"]);
    assert_eq!(r.code, 1, "not retryable: {}", r.stderr);
    let r = sql(&["--table", "t=/nonexistent/kiln/dir/", "-c", "SELECT 1"]);
    assert_one_line_error(&r, &["--table t", "/nonexistent/kiln/dir"]);
    assert_eq!(r.code, 1, "not retryable: {}", r.stderr);
    let r = sql(&["-f", "/nonexistent/job.sql"]);
    assert_one_line_error(&r, &["/nonexistent/job.sql", "No such file"]);
    assert_eq!(r.code, 1, "not retryable: {}", r.stderr);
}

#[test]
fn corrupt_and_non_parquet_files() {
    let dir = tempdir();
    let text = dir.path().join("notes.parquet");
    std::fs::write(&text, "this is not parquet\n".repeat(10)).unwrap();
    let r = sql(&["-c", &format!("SELECT * FROM '{}'", s(&text))]);
    assert_one_line_error(&r, &["Parquet", "footer"]);
    assert_eq!(r.code, 1, "not retryable: {}", r.stderr);

    // A real Parquet file cut short: the footer is gone.
    let good = dir.path().join("good.parquet");
    write_people(&good);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let r = sql(&["-c", &format!("SELECT * FROM '{}'", s(&cut))]);
    assert_one_line_error(&r, &["Parquet"]);
    assert_eq!(r.code, 1, "not retryable: {}", r.stderr);
}

#[test]
fn bad_sql_unknown_table_unknown_column() {
    let r = sql(&["-c", "SELEC 1"]);
    assert_one_line_error(&r, &["SELEC"]);
    let r = sql(&["-c", "SELECT * FROM no_such_table"]);
    assert_one_line_error(&r, &["no_such_table", "not found"]);
    let dir = tempdir();
    let p = dir.path().join("p.parquet");
    write_people(&p);
    let r = sql(&["-c", &format!("SELECT no_such_column FROM '{}'", s(&p))]);
    assert_one_line_error(&r, &["no_such_column"]);
    let r = sql(&["-c", "  -- only a comment\n"]);
    assert_one_line_error(&r, &["no SQL statement"]);
}

#[test]
fn statements_after_a_failure_do_not_run() {
    let dir = tempdir();
    let out = dir.path().join("never");
    let r = sql(&[
        "-c",
        &format!(
            "SELECT * FROM missing_table; COPY (SELECT 1 AS x) TO '{}/' STORED AS PARQUET",
            s(&out)
        ),
    ]);
    assert_one_line_error(&r, &["statement 1 of 2", "missing_table"]);
    assert!(!out.exists(), "a statement after the failing one ran");
}

#[test]
fn unknown_device() {
    let r = run(kiln().args(["--device", "tpu", "sql", "-c", "SELECT 1"]));
    assert_one_line_error(&r, &["unknown device 'tpu'"]);
    assert_eq!(r.code, 2);
    let r = run(kiln().env("KILN_DEVICE", "cuda:x").args(["devices"]));
    assert_one_line_error(&r, &["KILN_DEVICE", "unknown device 'cuda:x'"]);
    if !kiln_kernels::cuda_backend::driver_present() {
        let r = run(kiln().args(["--device", "cuda", "sql", "-c", "SELECT 1"]));
        assert_one_line_error(&r, &["cuda device not available", "libcuda"]);
    }
}

#[test]
fn bad_command_lines() {
    let r = run(kiln().args(["sql", "--format", "xml", "-c", "SELECT 1"]));
    assert_one_line_error(&r, &["xml"]);
    assert_eq!(r.code, 2);
    let r = run(kiln().args(["sql", "--table", "nonsense", "-c", "SELECT 1"]));
    assert_one_line_error(&r, &["NAME=LOCATION", "nonsense"]);
    let r = run(kiln().args(["datagen", "tpch", "--scale", "-1", "--output", "/tmp/x"]));
    assert_one_line_error(&r, &["scale factor"]);
    let r = run(kiln().args(["sql", "-c", "SELECT 1", "--table"]));
    assert_one_line_error(&r, &[]);
}

#[test]
fn unsupported_scheme() {
    let r = sql(&["-c", "SELECT * FROM 'ftp://host/data.parquet'"]);
    assert_one_line_error(&r, &["ftp"]);
}
