//! `drift(...)`, `kiln drift` and `DataFrame::drift`: every statistic
//! checked against scipy on the same data (tests/it/drift_reference.py, by
//! Evidently's rules), and against Evidently's own stattest functions where
//! Evidently is installed; the gate's exit code; the errors.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use datafusion::arrow::array::RecordBatch;
use kiln::{KilnDataFrameExt, Session};
use kiln_planner::profile::{cell_f64, cell_i64, cell_text};
use serde_json::Value;

use crate::common::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/drift_reference.py");

/// A Python with scipy and pyarrow, or None (skip) unless the run
/// requires it.
fn scipy_python() -> Option<String> {
    python_with("scipy, pyarrow, numpy", "KILN_TEST_REQUIRE_SCIPY")
}

fn python_json(python: &str, args: &[&str]) -> Option<Value> {
    let out = Command::new(python)
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{python} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (!out.stdout.is_empty()).then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// Agreement to 1e-6 relative (exactly for zeros).
fn close(ours: f64, theirs: f64) -> bool {
    ours == theirs || (ours - theirs).abs() <= 1e-6 * ours.abs().max(theirs.abs())
}

async fn drift_rows(session: &Session, sql: &str) -> HashMap<String, (RecordBatch, usize)> {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    let mut out = HashMap::new();
    for batch in batches {
        for r in 0..batch.num_rows() {
            let column = cell_text(&batch, "column", r).unwrap().unwrap();
            out.insert(column, (batch.clone(), r));
        }
    }
    out
}

fn scenario_sql(dir: &Path, name: &str) -> String {
    format!(
        "SELECT * FROM drift('{}/{name}_reference.parquet', '{}/{name}_current.parquet')",
        s(dir),
        s(dir)
    )
}

#[tokio::test]
async fn drift_agrees_with_scipy_and_evidently() {
    let Some(python) = scipy_python() else {
        return;
    };
    let dir = tempdir();
    python_json(&python, &["data", &s(dir.path())]);
    let scipy: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("scipy.json")).unwrap())
            .unwrap();
    let evidently = match std::env::var("KILN_TEST_EVIDENTLY") {
        Ok(ev) => {
            python_json(&ev, &["evidently", &s(dir.path())]);
            let text = std::fs::read_to_string(dir.path().join("evidently.json")).unwrap();
            Some(serde_json::from_str::<Value>(&text).unwrap())
        }
        Err(_) => {
            assert!(
                std::env::var("KILN_TEST_REQUIRE_EVIDENTLY").is_err(),
                "KILN_TEST_REQUIRE_EVIDENTLY is set but KILN_TEST_EVIDENTLY is not"
            );
            eprintln!("checking against scipy only: KILN_TEST_EVIDENTLY is not set");
            None
        }
    };
    let session = Session::new().unwrap();
    let mut checked = 0;
    for (name, columns) in scipy.as_object().unwrap() {
        let rows = drift_rows(&session, &scenario_sql(dir.path(), name)).await;
        for (column, want) in columns.as_object().unwrap() {
            let (batch, r) = &rows[column];
            let at = |field: &str| cell_f64(batch, field, *r).unwrap();
            let what = format!("{name}.{column}");
            assert_eq!(
                cell_text(batch, "test", *r).unwrap().unwrap(),
                want["test"].as_str().unwrap(),
                "{what}: test"
            );
            let values = want["values"].as_array().unwrap();
            assert_eq!(
                cell_i64(batch, "reference_values", *r).unwrap(),
                values[0].as_i64(),
                "{what}"
            );
            assert_eq!(
                cell_i64(batch, "current_values", *r).unwrap(),
                values[1].as_i64(),
                "{what}"
            );
            for field in ["statistic", "p_value", "psi"] {
                if let Some(expected) = want.get(field).and_then(Value::as_f64) {
                    let got = at(field).unwrap();
                    assert!(
                        close(got, expected),
                        "{what}: {field} {got} vs scipy {expected}"
                    );
                }
            }
            assert_eq!(
                cell_text(batch, "drifted", *r).unwrap().as_deref(),
                Some(if want["drifted"].as_bool().unwrap() {
                    "true"
                } else {
                    "false"
                }),
                "{what}: verdict"
            );
            if let Some(ev) = &evidently {
                let e = &ev[name][column];
                assert_eq!(
                    cell_text(batch, "test", *r).unwrap().as_deref(),
                    e["test"].as_str(),
                    "{what}: Evidently's test"
                );
                let score = at("drift_score").unwrap();
                let theirs = e["drift_score"].as_f64().unwrap();
                assert!(
                    close(score, theirs),
                    "{what}: {score} vs Evidently {theirs}"
                );
                let psi = at("psi").unwrap();
                let theirs = e["psi"].as_f64().unwrap();
                assert!(
                    close(psi, theirs),
                    "{what}: PSI {psi} vs Evidently {theirs}"
                );
                assert_eq!(
                    cell_text(batch, "drifted", *r).unwrap().as_deref(),
                    Some(if e["drifted"].as_bool().unwrap() {
                        "true"
                    } else {
                        "false"
                    }),
                    "{what}: Evidently's verdict"
                );
            }
            checked += 1;
        }
        // Embeddings: the verdict and the centroid distance as Evidently's
        // (its classifier is scikit-learn's SGD, ours a logistic regression
        // by gradient descent: the ROC AUCs differ a little).
        for (column, drifted) in [("emb_same", false), ("emb_shift", true)] {
            let Some((batch, r)) = rows.get(column) else {
                continue;
            };
            let auc = cell_f64(batch, "statistic", *r).unwrap().unwrap();
            assert_eq!(
                cell_text(batch, "drifted", *r).unwrap().as_deref(),
                Some(if drifted { "true" } else { "false" }),
                "{column}: ROC AUC {auc}"
            );
            assert_eq!(
                cell_text(batch, "test", *r).unwrap().as_deref(),
                Some("domain_classifier")
            );
            if let Some(ev) = &evidently {
                let e = &ev[name][column];
                assert_eq!(e["drifted"].as_bool(), Some(drifted), "{column}: Evidently");
                let theirs = e["centroid_distance"].as_f64().unwrap();
                let ours = cell_f64(batch, "centroid_distance", *r).unwrap().unwrap();
                // The vectors are stored as f32: Evidently reads those.
                assert!(
                    (ours - theirs).abs() <= 1e-6 * theirs,
                    "{column}: centroid distance {ours} vs Evidently {theirs}"
                );
                let their_auc = e["statistic"].as_f64().unwrap();
                assert!(
                    (auc - their_auc).abs() < 0.05,
                    "{column}: ROC AUC {auc} vs Evidently {their_auc}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} columns checked");
}

#[tokio::test]
async fn the_kolmogorov_distributions_agree_with_scipy() {
    use kiln_planner::drift::stats;
    let Some(python) = scipy_python() else {
        return;
    };
    let reference = python_json(&python, &["kstwo"]).unwrap();
    for point in reference["kstwo"].as_array().unwrap() {
        let (n, x, want) = (
            point[0].as_f64().unwrap(),
            point[1].as_f64().unwrap(),
            point[2].as_f64().unwrap(),
        );
        let got = stats::kolmogorov_sf(n, x);
        assert!(close(got, want), "kstwo.sf({x}, {n}) = {want}, ours {got}");
    }
    let counts = |v: &Value| {
        let mut values: Vec<f64> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        values.sort_by(f64::total_cmp);
        let mut out: Vec<(f64, u64)> = Vec::new();
        for x in values {
            match out.last_mut() {
                Some((y, c)) if *y == x => *c += 1,
                _ => out.push((x, 1)),
            }
        }
        out
    };
    for case in reference["ks_2samp"].as_array().unwrap() {
        let (a, b) = (counts(&case[0]), counts(&case[1]));
        let got = stats::ks_2samp(&a, &b);
        let (d, p) = (case[2].as_f64().unwrap(), case[3].as_f64().unwrap());
        assert!(close(got.statistic, d), "D {} vs {d}", got.statistic);
        assert!(close(got.p_value, p), "p {} vs {p}", got.p_value);
    }
}

fn write_two(dir: &Path) -> (String, String) {
    let session_sql = |path: &Path, shift: i64| {
        format!(
            "COPY (SELECT i AS id, CAST(i % 10 + {shift} AS DOUBLE) AS x, \
             CASE WHEN i % 3 = 0 THEN 'a' ELSE 'b' END AS kind \
             FROM generate_series(1, 2000) t(i)) TO '{}'",
            s(path)
        )
    };
    let reference = dir.join("reference.parquet");
    let current = dir.join("current.parquet");
    ok(&["sql", "-c", &session_sql(&reference, 0)]);
    ok(&["sql", "-c", &session_sql(&current, 3)]);
    (s(&reference), s(&current))
}

#[test]
fn kiln_drift_gates_a_pipeline() {
    let dir = tempdir();
    let (reference, current) = write_two(dir.path());
    // No drift against itself: exit 0 even with the gate.
    let same = run(kiln().args(["drift", &reference, &reference, "--fail-on-drift"]));
    assert_eq!(same.code, 0, "{}", same.stderr);
    assert!(
        same.stderr.contains("0 of 3 columns drifted"),
        "{}",
        same.stderr
    );
    // x shifted by 3 and id unchanged, kind unchanged: 1 of 3.
    let report = dir.path().join("drift.json");
    let r = run(kiln().args([
        "drift",
        &reference,
        &current,
        "--out",
        &s(&report),
        "--fail-on-drift",
        "--drift-share",
        "0.3",
    ]));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_one_line_error(&r, &["drift: 1 of 3 columns drifted", "x"]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(doc["drifted"], serde_json::json!(["x"]));
    assert_eq!(doc["dataset_drift"], Value::Bool(true));
    assert_eq!(doc["columns"].as_array().unwrap().len(), 3);
    let x = doc["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "x")
        .unwrap();
    assert_eq!(x["test"], "wasserstein");
    // Without the gate the same drift is a report, exit 0; at the default
    // share (0.5) one column of three is no data set drift.
    let r = run(kiln().args(["drift", &reference, &current, "--fail-on-drift"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("wasserstein"), "{}", r.stdout);
    assert!(r.stderr.contains("no data set drift"), "{}", r.stderr);
    // Named columns only.
    let r = run(kiln().args(["drift", &reference, &current, "--columns", "id,kind"]));
    assert!(r.stderr.contains("0 of 2 columns drifted"), "{}", r.stderr);
}

#[test]
fn kiln_drift_names_what_is_wrong() {
    let dir = tempdir();
    let (reference, current) = write_two(dir.path());
    let other = dir.path().join("other.parquet");
    ok(&[
        "sql",
        "-c",
        &format!(
            "COPY (SELECT CAST(i AS VARCHAR) AS id, 1.0 AS y FROM generate_series(1, 5) t(i)) TO '{}'",
            s(&other)
        ),
    ]);
    let r = run(kiln().args(["drift", &reference, &s(&other)]));
    assert_eq!(r.code, 1);
    assert_one_line_error(
        &r,
        &[
            "missing from the current data: x, kind",
            "only in the current data: y",
            "column 'id' is Int64 in the reference but Utf8",
        ],
    );
    let empty = dir.path().join("empty.parquet");
    ok(&[
        "sql",
        "-c",
        &format!(
            "COPY (SELECT * FROM '{reference}' WHERE id < 0) TO '{}'",
            s(&empty)
        ),
    ]);
    let r = run(kiln().args(["drift", &s(&empty), &current]));
    assert_one_line_error(&r, &["column 'id' has no values in the reference"]);
    let missing = s(&dir.path().join("missing.parquet"));
    let r = run(kiln().args(["drift", &missing, &current]));
    assert_one_line_error(
        &r,
        &[
            "drift: no table or readable location named",
            "missing.parquet",
        ],
    );
    let r = run(kiln().args(["drift", &reference, &current, "--columns", "nope"]));
    assert_one_line_error(&r, &["missing from the reference: nope"]);
    let r = run(kiln().args(["drift", &reference, &current, "--drift-share", "2"]));
    assert_eq!(r.code, 2);
    assert_one_line_error(&r, &["--drift-share must be between 0 and 1"]);
}

#[tokio::test]
async fn the_dataframe_api_gives_the_same_rows() {
    let dir = tempdir();
    let (reference, current) = write_two(dir.path());
    let session = Session::new().unwrap();
    let sql = drift_rows(
        &session,
        &format!("SELECT * FROM drift('{reference}', '{current}', 'x')"),
    )
    .await;
    let r = session.read_parquet(&reference).await.unwrap();
    let c = session.read_parquet(&current).await.unwrap();
    let batches = r.drift(c, &["x"]).unwrap().collect().await.unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    let (batch, row) = &sql["x"];
    for field in ["statistic", "drift_score", "psi"] {
        assert_eq!(
            cell_f64(&batches[0], field, 0).unwrap(),
            cell_f64(batch, field, *row).unwrap(),
            "{field}"
        );
    }
}
