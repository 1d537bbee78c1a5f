//! Vector top-k in SQL: the ORDER BY ... LIMIT k rewrite, `vector_search` and
//! `knn_join`, on every device, against DataFusion computing the same answer
//! the slow way (scoring every row with the scalar functions and sorting,
//! with the rewrite off), over a multi-file corpus with NULL and zero
//! vectors, exact ties and a memory budget far below the corpus size.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema, UInt32Type};
use datafusion::parquet::arrow::ArrowWriter;
use kiln::{DeviceRequest, Session};

use crate::common::*;

const DIM: usize = 8;

/// splitmix64 values quantized to multiples of 1/4 in [-4, 4]: dot products
/// and L2 distances of these are exact in f32, so ties are exact ties.
fn quantized(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) % 33) as f32 / 4.0 - 4.0
        })
        .collect()
}

fn vector_batch(ids: Vec<i64>, values: Vec<f32>, valid: Vec<bool>) -> RecordBatch {
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let v = FixedSizeListArray::try_new(
        item,
        DIM as i32,
        Arc::new(Float32Array::from(values)),
        Some(NullBuffer::from(valid)),
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", v.data_type().clone(), true),
    ]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(ids)), Arc::new(v)]).unwrap()
}

fn write(path: &std::path::Path, batch: &RecordBatch) {
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A corpus of 3 files × 700 rows: ids in file order; every 50th row NULL,
/// every 97th a zero vector, and rows 1000.. repeating rows 0.. (exact ties
/// across files). Queries: 9 rows, one NULL.
fn corpus(dir: &std::path::Path) {
    let all = quantized(2100 * DIM, 7);
    std::fs::create_dir_all(dir.join("corpus")).unwrap();
    for f in 0..3 {
        let ids: Vec<i64> = (f * 700..(f + 1) * 700).collect();
        let mut values = Vec::new();
        let mut valid = Vec::new();
        for id in &ids {
            let src = if *id >= 1000 {
                (*id - 1000) as usize
            } else {
                *id as usize
            };
            let mut row = all[src * DIM..(src + 1) * DIM].to_vec();
            if id % 97 == 3 {
                row.fill(0.0);
            }
            values.extend(row);
            valid.push(id % 50 != 7);
        }
        write(
            &dir.join(format!("corpus/part-{f}.parquet")),
            &vector_batch(ids, values, valid),
        );
    }
    let q = quantized(9 * DIM, 99);
    write(
        &dir.join("queries.parquet"),
        &vector_batch((100..109).collect(), q, (0..9).map(|i| i != 4).collect()),
    );
}

/// The devices to run on: the CPU, and the test GPU where it exists
/// (lavapipe in CI, where KILN_TEST_REQUIRE=wgpu makes its absence a
/// failure).
fn devices() -> Vec<&'static str> {
    let mut out = vec!["cpu"];
    if has_gpu() {
        out.push(test_gpu());
    }
    out
}

async fn session(dir: &std::path::Path, device: &str) -> Session {
    let session = Session::builder()
        .device("cpu".parse::<DeviceRequest>().unwrap())
        .target_partitions(3)
        .build()
        .unwrap();
    session
        .register_parquet("corpus", &format!("{}/", s(&dir.join("corpus"))))
        .await
        .unwrap();
    session
        .register_parquet("queries", &s(&dir.join("queries.parquet")))
        .await
        .unwrap();
    session
        .sql(&format!("SET kiln.device = '{device}'"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    session
}

async fn rows(session: &Session, sql: &str) -> Vec<RecordBatch> {
    match session.sql(sql).await {
        Ok(df) => df.collect().await.unwrap_or_else(|e| panic!("{sql}: {e}")),
        Err(e) => panic!("{sql}: {e}"),
    }
}

async fn explain(session: &Session, sql: &str) -> String {
    let batches = rows(session, &format!("EXPLAIN {sql}")).await;
    let mut out = String::new();
    for b in batches {
        let plans = b.column(1).as_string::<i32>();
        for i in 0..plans.len() {
            out.push_str(plans.value(i));
            out.push('\n');
        }
    }
    out
}

/// (id, score) pairs of a result whose columns are `id` and `s`.
fn id_scores(batches: &[RecordBatch]) -> Vec<(i64, Option<f32>)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let s = b.column_by_name("s").unwrap().as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push((ids.value(i), s.is_valid(i).then(|| s.value(i))));
        }
    }
    out
}

const QUERY: &str = "[1.0, -0.5, 0.25, 2.0, 0.0, -1.0, 3.0, 0.5]";

#[tokio::test]
async fn order_by_similarity_limit_is_rewritten_and_exact() {
    let dir = tempdir();
    corpus(dir.path());
    for device in devices() {
        let session = session(dir.path(), device).await;
        for (func, dir_) in [
            ("cosine_similarity", "DESC"),
            ("dot_product", "DESC"),
            ("l2_distance", "ASC"),
            ("cosine_similarity", "DESC NULLS LAST"),
            ("l2_distance", "ASC NULLS FIRST"),
        ] {
            for k in [1usize, 5, 60] {
                let fast = format!(
                    "SELECT id, {func}(v, {QUERY}) AS s FROM corpus ORDER BY s {dir_} LIMIT {k}"
                );
                let plan = explain(&session, &fast).await;
                assert!(plan.contains("VectorTopKExec"), "{device} {fast}:\n{plan}");
                // EXPLAIN says where the search runs.
                let search = plan.lines().find(|l| l.contains("VectorTopKExec")).unwrap();
                let placed = match device {
                    "cpu" => "-- cpu: the vector search runs on the CPU".to_string(),
                    gpu => format!("-- on {gpu}:0"),
                };
                assert!(search.contains(&placed), "{device}: {search}");
                assert!(!plan.contains("SortExec"), "{device} {fast}:\n{plan}");
                let slow = format!(
                    "SELECT id, {func}(v, {QUERY}) AS s FROM corpus ORDER BY s {dir_}, id LIMIT {k}"
                );
                let got = id_scores(&rows(&session, &fast).await);
                let want = id_scores(&rows(&session, &slow).await);
                assert_eq!(got, want, "{device}: {fast}");
            }
        }
        // The score in ORDER BY only, the arguments swapped, and OFFSET.
        let fast = format!(
            "SELECT id, NULL::float AS s FROM corpus ORDER BY cosine_similarity({QUERY}, v) DESC LIMIT 4 OFFSET 3"
        );
        assert!(explain(&session, &fast).await.contains("VectorTopKExec"));
        let slow = format!(
            "SELECT id, NULL::float AS s FROM corpus ORDER BY cosine_similarity({QUERY}, v) DESC, id LIMIT 4 OFFSET 3"
        );
        assert_eq!(
            id_scores(&rows(&session, &fast).await),
            id_scores(&rows(&session, &slow).await),
            "{device}: {fast}"
        );
        // Farthest-first is not a nearest-neighbour query: left to the sort.
        let far =
            format!("SELECT id FROM corpus ORDER BY cosine_similarity(v, {QUERY}) ASC LIMIT 3");
        assert!(!explain(&session, &far).await.contains("VectorTopKExec"));
    }
}

#[tokio::test]
async fn the_rewrite_can_be_switched_off() {
    let dir = tempdir();
    corpus(dir.path());
    let session = session(dir.path(), "cpu").await;
    rows(&session, "SET kiln.vector_topk = false").await;
    let plan = explain(
        &session,
        &format!("SELECT id FROM corpus ORDER BY dot_product(v, {QUERY}) DESC LIMIT 3"),
    )
    .await;
    assert!(!plan.contains("VectorTopK"), "{plan}");
}

#[tokio::test]
async fn vector_search_returns_rows_and_scores_on_every_device() {
    let dir = tempdir();
    corpus(dir.path());
    for device in devices() {
        let session = session(dir.path(), device).await;
        for (metric, func, order) in [
            ("cosine", "cosine_similarity", "DESC"),
            ("dot", "dot_product", "DESC"),
            ("l2", "l2_distance", "ASC"),
        ] {
            for budget in ["256MiB", "2KiB"] {
                rows(
                    &session,
                    &format!("SET kiln.vector_memory_budget = '{budget}'"),
                )
                .await;
                let got = rows(
                    &session,
                    &format!(
                        "SELECT id, score AS s FROM vector_search('corpus', 'v', {QUERY}, 25, '{metric}')"
                    ),
                )
                .await;
                // NULL scores (NULL vectors, zero vectors under cosine) are not results.
                let want = rows(
                    &session,
                    &format!(
                        "SELECT id, {func}(v, {QUERY}) AS s FROM corpus WHERE {func}(v, {QUERY}) IS NOT NULL ORDER BY s {order}, id LIMIT 25"
                    ),
                )
                .await;
                assert_eq!(
                    id_scores(&got),
                    id_scores(&want),
                    "{device} {metric} {budget}"
                );
            }
        }
        // All columns come back, plus score; k beyond the corpus gives every
        // scored row; k = 0 gives none.
        let all = rows(
            &session,
            &format!("SELECT * FROM vector_search(corpus, v, {QUERY}, 100000, 'dot')"),
        )
        .await;
        let n: usize = all.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(n, 2100 - 42, "{device}: every non-NULL row");
        let names: Vec<String> = all[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["id", "v", "score"]);
        let none = rows(
            &session,
            &format!("SELECT * FROM vector_search('corpus', 'v', {QUERY}, 0)"),
        )
        .await;
        assert_eq!(none.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    }
}

#[tokio::test]
async fn knn_join_matches_a_window_function_reference_on_every_device() {
    let dir = tempdir();
    corpus(dir.path());
    for device in devices() {
        let session = session(dir.path(), device).await;
        for (metric, func, order) in [
            ("cosine", "cosine_similarity", "DESC"),
            ("l2", "l2_distance", "ASC"),
        ] {
            for (budget, batch) in [("256MiB", 1024), ("3KiB", 2)] {
                rows(
                    &session,
                    &format!("SET kiln.vector_memory_budget = '{budget}'"),
                )
                .await;
                rows(&session, &format!("SET kiln.knn_query_batch = {batch}")).await;
                let got = rows(
                    &session,
                    &format!(
                        "SELECT id, corpus_id, rank, score FROM knn_join('queries', 'v', 'corpus', 'v', 6, '{metric}')"
                    ),
                )
                .await;
                let want = rows(
                    &session,
                    &format!(
                        "SELECT * FROM (SELECT q.id, c.id AS corpus_id, \
                           CAST(ROW_NUMBER() OVER (PARTITION BY q.id ORDER BY {func}(q.v, c.v) {order}, c.id) AS INT UNSIGNED) AS rank, \
                           {func}(q.v, c.v) AS score \
                         FROM queries q CROSS JOIN corpus c WHERE {func}(q.v, c.v) IS NOT NULL) \
                         WHERE rank <= 6 ORDER BY id, rank"
                    ),
                )
                .await;
                let flat = |b: &[RecordBatch]| -> Vec<(i64, i64, u32, f32)> {
                    b.iter()
                        .flat_map(|b| {
                            let q = b.column(0).as_primitive::<Int64Type>().clone();
                            let c = b.column(1).as_primitive::<Int64Type>().clone();
                            let r = b.column(2).as_primitive::<UInt32Type>().clone();
                            let s = b.column(3).as_primitive::<Float32Type>().clone();
                            (0..b.num_rows())
                                .map(move |i| (q.value(i), c.value(i), r.value(i), s.value(i)))
                        })
                        .collect()
                };
                let (g, w) = (flat(&got), flat(&want));
                if batch == 2 {
                    // 3 KiB holds 64 rows of vectors and scores: the 67 KB
                    // corpus streams through 33 tiles per pass.
                    let plan = explain(
                        &session,
                        &format!("ANALYZE SELECT * FROM knn_join('queries', 'v', 'corpus', 'v', 6, '{metric}')"),
                    )
                    .await;
                    assert!(plan.contains("tile_rows=64"), "{plan}");
                    let tiles: usize = plan
                        .split("tiles=")
                        .nth(1)
                        .unwrap()
                        .split(|c: char| !c.is_ascii_digit())
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert!(tiles >= 150, "5 passes × ~32 tiles: {plan}");
                    assert!(plan.contains("corpus_rows=10.50 K"), "5 passes: {plan}");
                }

                assert_eq!(g.len(), 8 * 6, "{device} {metric}: 8 non-NULL queries × 6");
                assert_eq!(g, w, "{device} {metric} budget={budget} batch={batch}");
            }
        }
    }
    report_injection();
}

#[tokio::test]
async fn bad_search_input_is_a_clear_error() {
    let dir = tempdir();
    corpus(dir.path());
    let nan = vector_batch(
        vec![1, 2],
        {
            let mut v = vec![0.5f32; 2 * DIM];
            v[DIM + 3] = f32::NAN;
            v
        },
        vec![true, true],
    );
    write(&dir.path().join("nan.parquet"), &nan);
    let session = session(dir.path(), "cpu").await;
    session
        .register_parquet("nan", &s(&dir.path().join("nan.parquet")))
        .await
        .unwrap();
    let err = |sql: String| {
        let session = &session;
        async move {
            let result = match session.sql(&sql).await {
                Ok(df) => df
                    .collect()
                    .await
                    .map(|_| ())
                    .map_err(kiln::KilnError::from),
                Err(e) => Err(e),
            };
            result.expect_err(&sql).one_line()
        }
    };
    let e = err(format!(
        "SELECT * FROM vector_search('nan', 'v', {QUERY}, 1)"
    ))
    .await;
    assert!(
        e.contains("corpus row 1 has a NaN or infinite component"),
        "{e}"
    );
    let e = err("SELECT * FROM vector_search('corpus', 'v', [1.0, 2.0], 1)".into()).await;
    assert!(
        e.contains("dimension mismatch: column 'v' has 8 components, the query 2"),
        "{e}"
    );
    let e = err(format!(
        "SELECT * FROM vector_search('corpus', 'v', {QUERY}, 3, 'manhattan')"
    ))
    .await;
    assert!(e.contains("unknown metric 'manhattan'"), "{e}");
    let e = err(format!(
        "SELECT * FROM vector_search('nope', 'v', {QUERY}, 3)"
    ))
    .await;
    assert!(e.contains("nope"), "{e}");
    let e = err(format!(
        "SELECT * FROM vector_search('corpus', 'id', {QUERY}, 3)"
    ))
    .await;
    assert!(
        e.contains("column 'id' of 'corpus' must be a vector"),
        "{e}"
    );
    let e = err(format!(
        "SELECT * FROM vector_search('corpus', 'w', {QUERY}, 3)"
    ))
    .await;
    assert!(e.contains("has no column 'w'"), "{e}");
    let e = err(format!(
        "SELECT * FROM vector_search('corpus', 'v', {QUERY}, -1)"
    ))
    .await;
    assert!(e.contains("k must be a non-negative integer"), "{e}");
    let e = err("SELECT * FROM vector_search('corpus', 'v')".into()).await;
    assert!(
        e.contains("vector_search takes (table, column, query, k [, metric])"),
        "{e}"
    );
    let e = err("SELECT * FROM knn_join('queries', 'v', 'corpus', 'id', 3)".into()).await;
    assert!(e.contains("must be a vector"), "{e}");
}
