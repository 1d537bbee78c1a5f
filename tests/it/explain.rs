//! `kiln explain`: the plan of the last statement.

use crate::common::*;

#[test]
fn explains_a_query_over_a_registered_table() {
    let mut args: Vec<String> = vec!["explain".into()];
    args.extend(tpch_tables(&["lineitem"]));
    args.extend([
        "-c".to_string(),
        "SELECT l_returnflag, sum(l_quantity) FROM lineitem WHERE l_discount > 0.05 GROUP BY 1"
            .to_string(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(&argv);
    assert!(out.contains("== logical_plan =="), "{out}");
    assert!(out.contains("== physical_plan =="), "{out}");
    assert!(out.contains("AggregateExec"), "{out}");
    assert!(out.contains("DataSourceExec"), "{out}");
}

#[test]
fn a_script_runs_its_earlier_statements_first() {
    let dir = tempdir();
    let p = dir.path().join("p.parquet");
    write_people(&p);
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE EXTERNAL TABLE people STORED AS PARQUET LOCATION '{}';\n\
             SELECT name FROM people WHERE id = 3;\n",
            s(&p)
        ),
    )
    .unwrap();
    let out = ok(&["explain", "-f", &s(&script)]);
    assert!(out.contains("people"), "{out}");
    assert!(
        out.contains("id@0 = 3") || out.contains("id = Int64(3)"),
        "{out}"
    );
}

#[test]
fn explain_of_ddl_is_an_error() {
    let r = run(kiln().args(["explain", "-c", "CREATE VIEW v AS SELECT 1"]));
    assert_one_line_error(&r, &["explain needs a query"]);
}
