//! `profile(...)`, `kiln profile` and `DataFrame::profile`: every figure
//! checked against the exact aggregate (or, for the approximate ones,
//! against its stated error).

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use kiln::{KilnDataFrameExt, Session};

use crate::common::*;

async fn one_row(session: &Session, sql: &str) -> RecordBatch {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn f64_at(batch: &RecordBatch, name: &str, row: usize) -> Option<f64> {
    kiln_planner::profile::cell_f64(batch, name, row).unwrap()
}

fn text_at(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    kiln_planner::profile::cell_text(batch, name, row).unwrap()
}

#[tokio::test]
async fn profile_agrees_with_exact_aggregates() {
    let session = Session::builder()
        .device("cpu".parse().unwrap())
        .build()
        .unwrap();
    let lineitem = format!("{}/lineitem", s(tpch()));
    session
        .register_parquet("lineitem", &lineitem)
        .await
        .unwrap();
    let profile = one_row(&session, "SELECT * FROM profile('lineitem', 5)").await;
    let table = session.context().table("lineitem").await.unwrap();
    let schema = table.schema().as_arrow().clone();
    assert_eq!(profile.num_rows(), schema.fields().len());
    for (row, field) in schema.fields().iter().enumerate() {
        let c = format!("\"{}\"", field.name());
        assert_eq!(text_at(&profile, "column", row).unwrap(), *field.name());
        let exact = one_row(
            &session,
            &format!(
                "SELECT count(*) AS rows, count(*) - count({c}) AS nulls, count(DISTINCT {c}) AS d, \
                 CAST(min({c}) AS VARCHAR) AS mn, CAST(max({c}) AS VARCHAR) AS mx FROM lineitem"
            ),
        )
        .await;
        for (name, exact_name) in [("rows", "rows"), ("nulls", "nulls")] {
            assert_eq!(
                f64_at(&profile, name, row),
                f64_at(&exact, exact_name, 0),
                "{c} {name}"
            );
        }
        assert_eq!(
            text_at(&profile, "min", row),
            text_at(&exact, "mn", 0),
            "{c} min"
        );
        assert_eq!(
            text_at(&profile, "max", row),
            text_at(&exact, "mx", 0),
            "{c} max"
        );
        // HyperLogLog: within 4 standard errors (0.81% each) of the truth.
        let d = f64_at(&exact, "d", 0).unwrap();
        let approx = f64_at(&profile, "distinct_approx", row).unwrap();
        assert!(
            (approx - d).abs() <= (d * 0.0324).max(1.0),
            "{c}: {approx} vs {d} distinct"
        );
        let kind = text_at(&profile, "kind", row).unwrap();
        if kind == "numeric" {
            let exact = one_row(
                &session,
                &format!(
                    "SELECT avg(CAST({c} AS DOUBLE)) AS mean, stddev(CAST({c} AS DOUBLE)) AS sd FROM lineitem"
                ),
            )
            .await;
            for (name, exact_name) in [("mean", "mean"), ("stddev", "sd")] {
                let (a, b) = (
                    f64_at(&profile, name, row).unwrap(),
                    f64_at(&exact, exact_name, 0).unwrap(),
                );
                assert!(
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                    "{c} {name}: {a} vs {b}"
                );
            }
            // t-digest: each quantile's rank within 2 points of the truth.
            for (q, name) in kiln_planner::profile::QUANTILES {
                let value = f64_at(&profile, name, row).unwrap();
                // Interpolation in f64 may land a hair off a discrete value.
                let slack = 1e-9 * value.abs().max(1.0);
                let (lo, hi) = (value - slack, value + slack);
                let rank = one_row(
                    &session,
                    &format!(
                        "SELECT avg(CASE WHEN CAST({c} AS DOUBLE) < {lo} THEN 1.0 ELSE 0.0 END) AS below, \
                         avg(CASE WHEN CAST({c} AS DOUBLE) <= {hi} THEN 1.0 ELSE 0.0 END) AS at FROM lineitem"
                    ),
                )
                .await;
                let (below, at) = (
                    f64_at(&rank, "below", 0).unwrap(),
                    f64_at(&rank, "at", 0).unwrap(),
                );
                assert!(
                    below - 0.02 <= q && q <= at + 0.02,
                    "{c} {name} = {value}: ranks {below}..{at}"
                );
            }
        } else if kind == "text" {
            let exact = one_row(
                &session,
                &format!(
                    "SELECT min(character_length({c})) AS a, avg(CAST(character_length({c}) AS DOUBLE)) AS b, \
                     max(character_length({c})) AS m FROM lineitem"
                ),
            )
            .await;
            assert_eq!(f64_at(&profile, "min_length", row), f64_at(&exact, "a", 0));
            assert_eq!(f64_at(&profile, "max_length", row), f64_at(&exact, "m", 0));
            let (a, b) = (
                f64_at(&profile, "mean_length", row).unwrap(),
                f64_at(&exact, "b", 0).unwrap(),
            );
            assert!((a - b).abs() < 1e-9 * b, "{c} mean length {a} vs {b}");
        }
    }
    // The most frequent values, exactly as a GROUP BY counts them.
    let flags = schema.index_of("l_returnflag").unwrap();
    let tops = profile
        .column_by_name("top_values")
        .unwrap()
        .as_list::<i32>()
        .value(flags);
    let tops = tops.as_struct();
    let got: Vec<(String, i64)> = (0..tops.len())
        .map(|i| {
            (
                tops.column(0).as_string::<i32>().value(i).to_string(),
                tops.column(1).as_primitive::<Int64Type>().value(i),
            )
        })
        .collect();
    let exact = one_row(
        &session,
        "SELECT l_returnflag AS v, count(*) AS n FROM lineitem GROUP BY 1 ORDER BY n DESC, v",
    )
    .await;
    let want: Vec<(String, i64)> = (0..exact.num_rows())
        .map(|i| {
            (
                text_at(&exact, "v", i).unwrap(),
                f64_at(&exact, "n", i).unwrap() as i64,
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn a_frame_profiles_its_own_rows() {
    let session = Session::builder()
        .device("cpu".parse().unwrap())
        .build()
        .unwrap();
    let frame = session
        .sql("SELECT * FROM (VALUES (1, 'a'), (2, NULL), (2, 'ccc')) AS t(x, s) WHERE x > 0")
        .await
        .unwrap();
    let batches = frame.profile(2).unwrap().collect().await.unwrap();
    let p = &batches[0];
    assert_eq!(p.num_rows(), 2);
    assert_eq!(text_at(p, "column", 1).as_deref(), Some("s"));
    assert_eq!(f64_at(p, "nulls", 1), Some(1.0));
    assert_eq!(f64_at(p, "mean", 0), Some(5.0 / 3.0));
    assert_eq!(f64_at(p, "max_length", 1), Some(3.0));
}

#[tokio::test]
async fn vector_columns_get_exact_duplicates_and_their_centroid() {
    let session = Session::builder()
        .device("cpu".parse().unwrap())
        .target_partitions(3)
        .build()
        .unwrap();
    // 3,000 vectors of 4 components from 700 distinct ones (so exact
    // duplicates), some NULL, over several partitions.
    let vectors: Vec<Option<[f32; 4]>> = (0..3000u32)
        .map(|i| {
            let j = (i * 7919) % 700;
            (i % 13 != 0).then(|| [j as f32, (j % 11) as f32 * 0.5, -(j as f32) / 3.0, 1.0])
        })
        .collect();
    let present: Vec<[f32; 4]> = vectors.iter().flatten().copied().collect();
    let mut distinct: Vec<[u32; 4]> = present.iter().map(|v| v.map(f32::to_bits)).collect();
    distinct.sort();
    distinct.dedup();
    let want_duplicates = (present.len() - distinct.len()) as f64;
    let want_centroid: Vec<f64> = (0..4)
        .map(|k| present.iter().map(|v| v[k] as f64).sum::<f64>() / present.len() as f64)
        .collect();
    let values: Vec<String> = vectors
        .iter()
        .map(|v| match v {
            Some(v) => format!(
                "(arrow_cast([{}, {}, {}, {}], 'FixedSizeList(4, Float32)'))",
                v[0], v[1], v[2], v[3]
            ),
            None => "(arrow_cast(NULL, 'FixedSizeList(4, Float32)'))".to_string(),
        })
        .collect();
    let sql = format!("SELECT * FROM (VALUES {}) AS t(v)", values.join(", "));
    let frame = session.sql(&sql).await.unwrap();
    let batches = frame.profile(0).unwrap().collect().await.unwrap();
    let p = &batches[0];
    assert_eq!(text_at(p, "kind", 0).as_deref(), Some("vector"));
    assert_eq!(f64_at(p, "duplicate_vectors", 0), Some(want_duplicates));
    assert!(want_duplicates > 2000.0);
    let centroid = p
        .column_by_name("centroid")
        .unwrap()
        .as_list::<i32>()
        .value(0);
    let got: Vec<f64> = centroid
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .values()
        .to_vec();
    assert_eq!(got.len(), 4);
    for (g, w) in got.iter().zip(&want_centroid) {
        assert!(
            (g - w).abs() <= 1e-12 * w.abs().max(1.0),
            "{got:?} against {want_centroid:?}"
        );
    }
    // vector_mean in SQL: the same, and NULL over no vectors; vectors of
    // two lengths are an error.
    let mean = one_row(
        &session,
        &format!("SELECT vector_mean(v) AS m FROM ({sql})"),
    )
    .await;
    assert_eq!(mean.column(0).as_list::<i32>().value(0).len(), 4);
    let none = one_row(
        &session,
        "SELECT vector_mean(v) AS m FROM (SELECT [1.0, 2.0] AS v) WHERE false",
    )
    .await;
    assert!(none.column(0).is_null(0));
    let mixed = session
        .sql("SELECT vector_mean(v) FROM (VALUES ([1.0, 2.0]), ([1.0, 2.0, 3.0])) AS t(v)")
        .await
        .unwrap()
        .collect()
        .await;
    let e = mixed.unwrap_err().to_string();
    assert!(e.contains("vectors of lengths 2 and 3"), "{e}");
    // Other columns have neither.
    let plain = session
        .sql("SELECT 1 AS x")
        .await
        .unwrap()
        .profile(0)
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(f64_at(&plain[0], "duplicate_vectors", 0), None);
    assert!(plain[0].column_by_name("centroid").unwrap().is_null(0));
}

#[test]
fn kiln_profile_writes_a_json_document() {
    let dir = tempdir();
    let path = dir.path().join("people.parquet");
    write_people(&path);
    let out = dir.path().join("profile.json");
    ok(&["profile", &s(&path), "--out", &s(&out)]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["source"], s(&path));
    assert_eq!(doc["rows"], 4);
    let columns = doc["columns"].as_array().unwrap();
    let by_name = |n: &str| columns.iter().find(|c| c["column"] == n).unwrap();
    assert_eq!(by_name("score")["nulls"], 1);
    assert_eq!(by_name("score")["max"], "10.0");
    // Lengths in characters: 'ada', 'grace', 'linus', '陈'.
    assert_eq!(by_name("name")["min_length"], 1);
    assert_eq!(by_name("name")["max_length"], 5);
    assert_eq!(by_name("name")["mean_length"], 3.5);
    assert_eq!(by_name("id")["top_values"].as_array().unwrap().len(), 4);

    // The HTML report: a section per column, a 20-bin histogram for a
    // numeric column, the most frequent values for text; names escaped.
    let html = dir.path().join("report.html");
    ok(&["profile", &s(&path), "--html", &s(&html), "--format", "csv"]);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(page.matches("<section>").count(), 3, "one per column");
    let id = &page[page.find("<h2>id</h2>").unwrap()..];
    let id = &id[..id.find("</section>").unwrap()];
    assert_eq!(id.matches("<rect").count(), 20, "a histogram of 20 bins");
    let name = &page[page.find("<h2>name</h2>").unwrap()..];
    assert!(name[..name.find("</section>").unwrap()].contains(">grace</text>"));
    assert!(!page.contains("<script"), "no script: opens anywhere");

    let printed = ok(&[
        "profile",
        "people",
        "--table",
        &format!("people={}", s(&path)),
        "--format",
        "csv",
        "--top",
        "1",
    ]);
    assert!(
        printed.starts_with("column,data_type,kind,rows,nulls,distinct_approx,min,max,mean"),
        "{printed}"
    );
    assert_eq!(printed.lines().count(), 4, "{printed}");
}

#[test]
fn profiling_nothing_is_a_one_line_error() {
    let r = run(kiln().args(["profile", "no_such_table"]));
    assert_one_line_error(
        &r,
        &["profile: no table or readable location named 'no_such_table'"],
    );
    assert_eq!(r.code, 1);
    let r = run(kiln().args(["sql", "-c", "SELECT * FROM profile()"]));
    assert_one_line_error(&r, &["profile takes (table_or_location [, top])"]);
}
