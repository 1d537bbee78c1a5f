//! The as-of join (`DataFrame::asof_join`) against DuckDB's ASOF JOIN and
//! pandas' `merge_asof` on random data with ties, NULL keys and times,
//! and unsorted input (tests/it/asof_reference.py).

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use kiln::{AsofOptions, AsofTolerance, KilnDataFrameExt, Session};
use serde_json::Value;

use crate::common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/asof_reference.py");

fn reference(dir: &std::path::Path) -> Option<Value> {
    let python = python_with("duckdb, pandas, pyarrow", "KILN_TEST_REQUIRE_PYTHON")?;
    let out = Command::new(&python).arg(SCRIPT).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
    Some(serde_json::from_str(&text).unwrap())
}

/// (case, events and features files, keys, times, options)
type Case<'a> = (
    &'a str,
    (&'a str, &'a str),
    Vec<(&'a str, &'a str)>,
    (&'a str, &'a str),
    AsofOptions,
);

/// (keys, times, options, the error expected)
type BadCase<'a> = (
    &'a [(&'a str, &'a str)],
    (&'a str, &'a str),
    AsofOptions,
    &'a str,
);

/// event id -> matched feature value, from a frame with `id` and `v`.
async fn matches(frame: kiln::DataFrame) -> HashMap<i64, Option<i64>> {
    let mut out = HashMap::new();
    for batch in frame.collect().await.unwrap() {
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let vs = batch
            .column_by_name("v")
            .unwrap()
            .as_primitive::<Int64Type>();
        for r in 0..batch.num_rows() {
            let v = (!vs.is_null(r)).then(|| vs.value(r));
            assert!(
                out.insert(ids.value(r), v).is_none(),
                "event {} twice",
                ids.value(r)
            );
        }
    }
    out
}

fn expected(reference: &Value, case: &str) -> HashMap<i64, Option<i64>> {
    reference[case]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, v)| (id.parse().unwrap(), v.as_i64()))
        .collect()
}

#[tokio::test]
async fn asof_join_agrees_with_duckdb_and_pandas() {
    let dir = tempdir();
    let Some(reference) = reference(dir.path()) else {
        return;
    };
    // Both strategies: the sort-merge (kiln.asof_probe_rows = 0) and the
    // probe of an in-memory index of the features (these few rows).
    for (strategy, probe_rows) in [("merge", 0), ("probe", 10_000_000)] {
        agrees(dir.path(), &reference, strategy, probe_rows).await;
    }
}

async fn agrees(dir: &std::path::Path, reference: &Value, strategy: &str, probe_rows: usize) {
    // Several partitions, so that the key partitioning is exercised.
    let session = Session::builder()
        .device("cpu".parse().unwrap())
        .target_partitions(4)
        .build()
        .unwrap();
    session
        .sql(&format!("SET kiln.asof_probe_rows = {probe_rows}"))
        .await
        .unwrap();
    let read = |name: &str| {
        let path = s(&dir.join(format!("{name}.parquet")));
        let session = &session;
        async move { session.read_parquet(&path).await.unwrap() }
    };
    let keys = [("k", "fk")];
    // (case, events and features files, keys, times, options)
    let cases: Vec<Case> = vec![
        (
            "duckdb_asof_join",
            ("events", "features"),
            keys.to_vec(),
            ("ts", "fts"),
            AsofOptions {
                keep_unmatched: false,
                ..AsofOptions::default()
            },
        ),
        (
            "duckdb_asof_left_join",
            ("events", "features"),
            keys.to_vec(),
            ("ts", "fts"),
            AsofOptions::default(),
        ),
        (
            "duckdb_strict",
            ("events", "features"),
            keys.to_vec(),
            ("ts", "fts"),
            AsofOptions {
                strict: true,
                ..AsofOptions::default()
            },
        ),
        (
            "duckdb_no_keys",
            ("events", "features_by_time"),
            vec![],
            ("ts", "fts"),
            AsofOptions::default(),
        ),
        (
            "duckdb_timestamps",
            ("events", "features"),
            keys.to_vec(),
            ("ts_at", "fts_at"),
            AsofOptions {
                keep_unmatched: false,
                ..AsofOptions::default()
            },
        ),
        (
            "pandas",
            ("events_clean", "features_clean"),
            keys.to_vec(),
            ("ts", "fts"),
            AsofOptions::default(),
        ),
        (
            "pandas_tolerance",
            ("events_clean", "features_clean"),
            keys.to_vec(),
            ("ts", "fts"),
            AsofOptions {
                tolerance: Some(AsofTolerance::Units(50)),
                ..AsofOptions::default()
            },
        ),
        (
            "pandas_strict",
            ("events_clean", "features_clean"),
            keys.to_vec(),
            ("ts", "fts"),
            AsofOptions {
                strict: true,
                ..AsofOptions::default()
            },
        ),
        (
            "pandas_timestamp_tolerance",
            ("events_clean", "features_clean"),
            keys.to_vec(),
            ("ts_at", "fts_at"),
            AsofOptions {
                tolerance: Some(AsofTolerance::Duration(Duration::from_secs(90))),
                ..AsofOptions::default()
            },
        ),
    ];
    for (case, (events, features), by, on, options) in cases {
        let events = read(events).await;
        let features = read(features).await;
        let joined = events.asof_join(features, &by, on, options).unwrap();
        let plan = joined
            .clone()
            .explain(false, false)
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = kiln::cli::output::plan_text(plan).unwrap();
        assert_eq!(
            text.contains("AsofJoinExec: probe"),
            strategy == "probe",
            "{case}, {strategy}: {text}"
        );
        let got = matches(joined).await;
        let want = expected(reference, case);
        let case = format!("{case} ({strategy})");
        assert_eq!(got.len(), want.len(), "{case}: rows");
        let wrong: Vec<_> = want
            .iter()
            .filter(|(id, v)| got.get(id) != Some(v))
            .take(5)
            .map(|(id, v)| format!("event {id}: want {v:?}, got {:?}", got.get(id)))
            .collect();
        assert!(wrong.is_empty(), "{case}: {}", wrong.join("; "));
    }
}

#[tokio::test]
async fn asof_join_plans_a_sort_merge_and_names_bad_input() {
    let session = Session::new().unwrap();
    let events = session
        .sql(
            "SELECT i AS id, i % 3 AS k, CAST(i AS BIGINT) AS ts FROM generate_series(1, 100) t(i)",
        )
        .await
        .unwrap();
    let features = session
        .sql("SELECT CAST(i % 3 AS INT) AS k, i * 2 AS ts, i AS v FROM generate_series(1, 50) t(i)")
        .await
        .unwrap();
    let joined = events
        .clone()
        .asof_join(
            features.clone(),
            &[("k", "k")],
            ("ts", "ts"),
            AsofOptions::default(),
        )
        .unwrap();
    // The right's time column is kept, renamed; its key is dropped.
    let names: Vec<String> = joined
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "k", "ts", "ts_right", "v"]);
    let plan = joined
        .clone()
        .explain(false, false)
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = kiln::cli::output::plan_text(plan).unwrap();
    assert!(
        text.contains("AsofJoinExec: on=[k = k], ts >= ts"),
        "{text}"
    );
    assert!(text.contains("SortExec"), "{text}");
    assert_eq!(
        joined
            .collect()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        100
    );
    let cases: [BadCase; 4] = [
        (
            &[("nope", "k")],
            ("ts", "ts"),
            AsofOptions::default(),
            "the left side has no column 'nope'",
        ),
        (
            &[("k", "k")],
            ("ts", "v2"),
            AsofOptions::default(),
            "the right side has no column 'v2'",
        ),
        (
            &[("k", "k")],
            ("ts", "ts"),
            AsofOptions {
                tolerance: Some(AsofTolerance::Duration(Duration::from_secs(5))),
                ..AsofOptions::default()
            },
            "a duration tolerance needs a date or timestamp time column",
        ),
        (
            &[("k", "k")],
            ("ts", "ts"),
            AsofOptions {
                tolerance: Some(AsofTolerance::Units(-1)),
                ..AsofOptions::default()
            },
            "the tolerance must not be negative",
        ),
    ];
    for (by, on, options, needle) in cases {
        let e = events
            .clone()
            .asof_join(features.clone(), by, on, options)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}

#[tokio::test]
async fn asof_join_in_sql_as_duckdb_and_snowflake_spell_it() {
    let dir = tempdir();
    let Some(reference) = reference(dir.path()) else {
        return;
    };
    let session = Session::builder()
        .device("cpu".parse().unwrap())
        .target_partitions(3)
        .build()
        .unwrap();
    for name in ["events", "features", "features_by_time"] {
        let path = s(&dir.path().join(format!("{name}.parquet")));
        session.register_parquet(name, &path).await.unwrap();
    }
    // DuckDB's statements, verbatim.
    let statements = reference["sql"].as_object().unwrap();
    for (case, sql) in statements {
        let frame = session.sql(sql.as_str().unwrap()).await.unwrap();
        let got = matches(frame).await;
        assert_eq!(got, expected(&reference, case), "{case}: {sql}");
    }
    // Keys of different types (INT against BIGINT) meet in the left's.
    let cast = "SELECT e.id, f.v FROM events e ASOF JOIN \
                (SELECT CAST(fk AS INT) AS fk, fts, v FROM features) f \
                ON e.k = f.fk AND e.ts >= f.fts";
    let got = matches(session.sql(cast).await.unwrap()).await;
    assert_eq!(got, expected(&reference, "duckdb_asof_join"), "{cast}");
    // Snowflake's: an outer join; the condition either way round.
    let left_join = expected(&reference, "duckdb_asof_left_join");
    for sql in [
        "SELECT e.id, f.v FROM events e ASOF JOIN features f MATCH_CONDITION (e.ts >= f.fts) ON e.k = f.fk",
        "SELECT e.id, f.v FROM events e ASOF JOIN features f MATCH_CONDITION (f.fts <= e.ts) ON f.fk = e.k",
    ] {
        let got = matches(session.sql(sql).await.unwrap()).await;
        assert_eq!(got, left_join, "{sql}");
    }
    // SELECT * gives both sides' columns; the plan is the sort-merge join.
    let frame = session
        .sql("SELECT * FROM events e ASOF LEFT JOIN features f ON e.k = f.fk AND e.ts >= f.fts")
        .await
        .unwrap();
    let names: Vec<String> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        ["id", "k", "ts", "ts_at", "fk", "fts", "v", "fts_at"]
    );
    let plan = session
        .sql("EXPLAIN SELECT * FROM events e ASOF JOIN features f ON e.k = f.fk AND e.ts >= f.fts")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = kiln::cli::output::plan_text(plan).unwrap();
    // Parquet counts the features' rows: few enough to probe, the events
    // neither sorted nor repartitioned.
    assert!(
        text.contains("AsofJoinExec: probe, on=[k = fk], ts >= fts"),
        "{text}"
    );
    assert!(!text.contains("SortExec"), "{text}");
    assert!(
        !text.contains("NestedLoopJoinExec") && !text.contains("HashJoinExec"),
        "{text}"
    );
    // Bad input names what is wrong.
    for (sql, needle) in [
        (
            "SELECT * FROM events e ASOF JOIN features f ON e.k = f.fk",
            "ON needs exactly one inequality",
        ),
        (
            "SELECT * FROM events e ASOF JOIN features f ON e.k = f.fk AND e.ts <= f.fts",
            "looks forward",
        ),
        (
            "SELECT * FROM events e ASOF JOIN features f ON e.k = f.fk AND e.ts >= f.fts AND f.v > 3",
            "exactly one inequality",
        ),
        (
            "SELECT * FROM events e ASOF JOIN features f ON e.k + 1 = f.fk AND e.ts >= f.fts",
            "is neither",
        ),
    ] {
        let e = sql_error(&session, sql).await;
        assert!(e.contains(needle), "{sql}: {e}");
    }
}

/// Keys that are not one integer (two keys, one of them text) take the
/// probe's row-format path: it gives the merge's rows (the merge is
/// checked against DuckDB and pandas above).
#[tokio::test]
async fn the_probe_and_the_merge_agree_on_text_and_compound_keys() {
    let dir = tempdir();
    let setup = Session::new().unwrap();
    setup
        .sql(&format!(
            "COPY (SELECT i AS id, 'k' || (i % 7) AS a, i % 3 AS b, (i * 37) % 500 AS ts \
             FROM generate_series(1, 3000) t(i)) TO '{}/events.parquet'",
            s(dir.path())
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    // One feature row per (a, b, ts): no ties, so both strategies must
    // pick the same row.
    setup
        .sql(&format!(
            "COPY (SELECT a, b, ts, max(v) AS v FROM (SELECT 'k' || (i % 7) AS a, i % 3 AS b, \
             (i * 91) % 500 AS ts, i AS v FROM generate_series(1, 900) t(i)) GROUP BY a, b, ts) \
             TO '{}/features.parquet'",
            s(dir.path())
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut results = Vec::new();
    for probe_rows in [0, 10_000_000] {
        let session = Session::builder().target_partitions(3).build().unwrap();
        session
            .sql(&format!("SET kiln.asof_probe_rows = {probe_rows}"))
            .await
            .unwrap();
        for name in ["events", "features"] {
            let path = s(&dir.path().join(format!("{name}.parquet")));
            session.register_parquet(name, &path).await.unwrap();
        }
        let sql = "SELECT e.id, f.v FROM events e ASOF LEFT JOIN features f \
                   ON e.a = f.a AND e.b = f.b AND e.ts >= f.ts ORDER BY e.id";
        let plan = session
            .sql(&format!("EXPLAIN {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = kiln::cli::output::plan_text(plan).unwrap();
        assert_eq!(
            text.contains("AsofJoinExec: probe"),
            probe_rows > 0,
            "{text}"
        );
        let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
        let rows: Vec<(i64, Option<i64>)> = batches
            .iter()
            .flat_map(|b| {
                let id = b.column(0).as_primitive::<Int64Type>().clone();
                let v = b.column(1).as_primitive::<Int64Type>().clone();
                (0..b.num_rows())
                    .map(move |r| (id.value(r), v.is_valid(r).then(|| v.value(r))))
                    .collect::<Vec<_>>()
            })
            .collect();
        results.push(rows);
    }
    assert_eq!(results[0].len(), 3000);
    assert!(results[0].iter().filter(|(_, v)| v.is_some()).count() > 2000);
    assert_eq!(results[0], results[1]);
}
