//! `kiln sql` over local Parquet: formats, scripts, tables, paths, COPY.

use std::io::Write;
use std::process::Stdio;

use crate::common::*;

fn people() -> (tempfile::TempDir, String) {
    let dir = tempdir();
    let path = dir.path().join("people.parquet");
    write_people(&path);
    let p = s(&path);
    (dir, p)
}

#[test]
fn csv_over_a_registered_table() {
    let (_dir, path) = people();
    let out = ok(&[
        "sql",
        "--format",
        "csv",
        "--table",
        &format!("people={path}"),
        "-c",
        "SELECT id, name, score * 2 AS doubled FROM people WHERE id > 1 ORDER BY id",
    ]);
    assert_eq!(out, "id,name,doubled\n2,grace,\n3,linus,-4.5\n4,陈,20.0\n");
}

#[test]
fn json_is_one_object_per_row_with_explicit_nulls() {
    let (_dir, path) = people();
    let out = ok(&[
        "sql",
        "--format",
        "json",
        "-c",
        &format!("SELECT id, score FROM '{path}' WHERE id <= 2 ORDER BY id"),
    ]);
    assert_eq!(out, "{\"id\":1,\"score\":1.5}\n{\"id\":2,\"score\":null}\n");
}

#[test]
fn table_format_is_aligned() {
    let (_dir, path) = people();
    let out = ok(&[
        "sql",
        "-c",
        &format!("SELECT name FROM '{path}' WHERE id = 1"),
    ]);
    assert_eq!(out, "+------+\n| name |\n+------+\n| ada  |\n+------+\n");
}

#[test]
fn a_script_runs_in_order_and_prints_each_result() {
    let (dir, path) = people();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "-- a job of several statements\n\
             CREATE EXTERNAL TABLE p STORED AS PARQUET LOCATION '{path}';\n\
             CREATE VIEW top AS SELECT * FROM p WHERE score > 0;\n\
             SELECT count(*) AS n FROM top;\n\
             SET datafusion.execution.batch_size = 2;\n\
             SELECT name FROM top ORDER BY name;\n"
        ),
    )
    .unwrap();
    let out = ok(&["sql", "--format", "csv", "-f", &s(&script)]);
    assert_eq!(out, "n\n2\nname\nada\n陈\n");
}

#[test]
fn an_empty_result_still_has_its_header() {
    let (_dir, path) = people();
    let out = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT id, name FROM '{path}' WHERE id > 100"),
    ]);
    assert_eq!(out, "id,name\n");
}

#[test]
fn piped_stdin_is_a_script() {
    let (_dir, path) = people();
    let mut child = kiln()
        .args(["sql", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    write!(
        child.stdin.take().unwrap(),
        "SELECT max(id) AS m FROM '{path}';\nSELECT 'x;y' AS s;\n"
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "m\n4\ns\nx;y\n");
}

#[test]
fn copy_to_a_local_directory_reads_back_identically() {
    let (dir, path) = people();
    let out_dir = dir.path().join("copied");
    let out = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!(
            "COPY (SELECT * FROM '{path}') TO '{}/' STORED AS PARQUET PARTITIONED BY (name)",
            s(&out_dir)
        ),
    ]);
    assert_eq!(out, "count\n4\n");
    assert!(out_dir.join("name=ada").is_dir(), "hive partition missing");
    let script = format!(
        "CREATE EXTERNAL TABLE c STORED AS PARQUET LOCATION '{}/';\n\
         SELECT id, name, score FROM c ORDER BY id;",
        s(&out_dir)
    );
    let back = ok(&["sql", "--format", "csv", "-c", &script]);
    let orig = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!("SELECT id, name, score FROM '{path}' ORDER BY id"),
    ]);
    assert_eq!(back, orig);
}

#[test]
fn tpch_row_counts_match_the_specification() {
    // TPC-H fixes the row counts per scale factor; at SF 0.01 these are
    // dbgen's counts.
    let tables = [
        "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
    ];
    let mut args: Vec<String> = vec!["sql".into(), "--format".into(), "csv".into()];
    args.extend(tpch_tables(&tables));
    let query = tables
        .iter()
        .map(|t| format!("SELECT '{t}' AS t, count(*) AS n FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
        + " ORDER BY n";
    args.extend(["-c".to_string(), query]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&argv);
    assert_eq!(
        out,
        "t,n\nregion,5\nnation,25\nsupplier,100\ncustomer,1500\npart,2000\npartsupp,8000\norders,15000\nlineitem,60175\n"
    );
}

#[test]
fn datagen_is_deterministic() {
    let dir = tempdir();
    ok(&[
        "datagen",
        "tpch",
        "--scale",
        "0.01",
        "--output",
        &s(dir.path()),
    ]);
    for table in ["nation", "orders"] {
        let a = std::fs::read(dir.path().join(table).join("part-000.parquet")).unwrap();
        let b = std::fs::read(tpch().join(table).join("part-000.parquet")).unwrap();
        assert!(a == b, "{table}: two runs wrote different bytes");
    }
}
