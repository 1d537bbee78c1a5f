//! The embedding cache (issue 16 §4): a rerun over a corpus with 5% of its
//! texts changed embeds exactly those; vectors from the cache are the bytes
//! computed; a tampered or foreign cache file is detected and its texts
//! embedded again.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Float32Type;
use kiln::Session;
use kiln::job::Job;

use crate::common::*;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("engine/tests/fixtures/tiny-bert")
}

/// 200 texts; with `changed`, every 20th (5%) is another text.
async fn write_corpus(session: &Session, path: &Path, changed: bool) {
    let text = if changed {
        "CASE WHEN i % 20 = 0 THEN 'changed text ' || i ELSE 'text number ' || i || ' of the corpus' END"
    } else {
        "'text number ' || i || ' of the corpus'"
    };
    session
        .sql(&format!(
            "COPY (SELECT i AS id, {text} AS text FROM generate_series(1, 200) t(i)) \
             TO '{}'",
            s(path)
        ))
        .await
        .unwrap();
}

fn job(cache: Option<&Path>, corpus: &Path, out: &Path) -> String {
    let set = cache
        .map(|c| format!("SET kiln.embed_cache = '{}';\n", s(c)))
        .unwrap_or_default();
    format!(
        "{set}COPY (SELECT id, embed(text, '{model}') AS v FROM '{corpus}') TO '{out}' \
         STORED AS PARQUET;\n",
        model = tiny().display(),
        corpus = s(corpus),
        out = s(out),
    )
}

/// Runs a job in a new session; its report's (embedded, hits, misses).
async fn run_job(sql: &str) -> (u64, u64, u64) {
    let session = Session::new().unwrap();
    let job = Job::plan(&session, sql).await.unwrap();
    let report = job.run(&session).await.unwrap();
    (
        report.embedded_rows,
        report.embed_cache_hits,
        report.embed_cache_misses,
    )
}

/// The vectors at `out` by id, as bits.
async fn vectors(out: &Path) -> Vec<(i64, Vec<u32>)> {
    let session = Session::new().unwrap();
    let batches: Vec<RecordBatch> = session
        .sql(&format!("SELECT id, v FROM '{}' ORDER BY id", s(out)))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        let ids = b
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let vs = b.column(1).as_fixed_size_list();
        for i in 0..b.num_rows() {
            let v = vs.value(i);
            let bits = v
                .as_primitive::<Float32Type>()
                .values()
                .iter()
                .map(|f| f.to_bits())
                .collect();
            rows.push((ids.value(i), bits));
        }
    }
    rows
}

fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for identity in std::fs::read_dir(cache).unwrap() {
        for f in std::fs::read_dir(identity.unwrap().path()).unwrap() {
            files.push(f.unwrap().path());
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn a_rerun_with_five_percent_changed_embeds_only_those() {
    let dir = tempdir();
    let (corpus, cache) = (dir.path().join("corpus.parquet"), dir.path().join("cache"));
    let session = Session::new().unwrap();
    write_corpus(&session, &corpus, false).await;
    let first = dir.path().join("first");
    assert_eq!(
        run_job(&job(Some(&cache), &corpus, &first)).await,
        (200, 0, 200)
    );
    assert_eq!(cache_files(&cache).len(), 1, "one file per flush");
    // Unchanged: everything from the cache, nothing embedded.
    let again = dir.path().join("again");
    assert_eq!(
        run_job(&job(Some(&cache), &corpus, &again)).await,
        (0, 200, 0)
    );
    assert_eq!(vectors(&again).await, vectors(&first).await);
    // 5% changed: exactly those ten are embedded.
    write_corpus(&session, &corpus, true).await;
    let rerun = dir.path().join("rerun");
    assert_eq!(
        run_job(&job(Some(&cache), &corpus, &rerun)).await,
        (10, 190, 10)
    );
    // The same vectors, bit for bit, as a run without the cache.
    let fresh = dir.path().join("fresh");
    assert_eq!(run_job(&job(None, &corpus, &fresh)).await, (200, 0, 0));
    assert_eq!(vectors(&rerun).await, vectors(&fresh).await);
}

#[tokio::test]
async fn tampered_and_foreign_cache_files_are_not_returned() {
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::file::properties::WriterProperties;
    let dir = tempdir();
    let (corpus, cache) = (dir.path().join("corpus.parquet"), dir.path().join("cache"));
    let session = Session::new().unwrap();
    write_corpus(&session, &corpus, false).await;
    let first = dir.path().join("first");
    run_job(&job(Some(&cache), &corpus, &first)).await;
    let [file] = cache_files(&cache).try_into().unwrap();
    // Rewrite the file with one float changed in each of its first three
    // rows, checks and metadata kept: the checks no longer match.
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
    let kv = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned();
    let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
    let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let list = batch.column(1).as_fixed_size_list();
    let dim = list.value_length() as usize;
    let mut values = list
        .values()
        .as_primitive::<Float32Type>()
        .values()
        .to_vec();
    for row in 0..3 {
        values[row * dim] += 0.5;
    }
    let tampered = datafusion::arrow::array::FixedSizeListArray::try_new(
        std::sync::Arc::new(datafusion::arrow::datatypes::Field::new_list_field(
            datafusion::arrow::datatypes::DataType::Float32,
            false,
        )),
        dim as i32,
        std::sync::Arc::new(datafusion::arrow::array::Float32Array::from(values)),
        None,
    )
    .unwrap();
    let mut columns = batch.columns().to_vec();
    columns[1] = std::sync::Arc::new(tampered);
    let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let write = |path: &Path, kv| {
        let props = WriterProperties::builder()
            .set_key_value_metadata(kv)
            .build();
        let mut w = ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            batch.schema(),
            Some(props),
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    };
    write(&file, kv);
    // A file of the same identity directory whose metadata names no
    // identity: a foreign file, skipped whole.
    write(&file.with_file_name("part-0-foreign.parquet"), None);
    let rerun = dir.path().join("rerun");
    assert_eq!(
        run_job(&job(Some(&cache), &corpus, &rerun)).await,
        (3, 197, 3)
    );
    assert_eq!(vectors(&rerun).await, vectors(&first).await);
}

/// `embed()` in a `WHERE` runs as the embedding operator (batched, counted,
/// served by the cache), not as the scalar function: a filter over a
/// cached corpus embeds nothing, and its rows are those computed without
/// the cache.
#[tokio::test]
async fn embed_in_a_filter_is_served_by_the_cache() {
    let dir = tempdir();
    let (corpus, cache) = (dir.path().join("corpus.parquet"), dir.path().join("cache"));
    let session = Session::new().unwrap();
    write_corpus(&session, &corpus, false).await;
    assert_eq!(
        run_job(&job(Some(&cache), &corpus, &dir.path().join("first"))).await,
        (200, 0, 200)
    );
    let filter = |cache: Option<&Path>, out: &Path| {
        let set = cache
            .map(|c| format!("SET kiln.embed_cache = '{}';\n", s(c)))
            .unwrap_or_default();
        format!(
            "{set}COPY (SELECT id FROM '{corpus}' \
             WHERE cosine_similarity(embed(text, '{model}'), \
                                     embed('text number 7 of the corpus', '{model}')) > 0.999) \
             TO '{out}' STORED AS PARQUET;\n",
            model = tiny().display(),
            corpus = s(&corpus),
            out = s(out),
        )
    };
    let (cached, fresh) = (dir.path().join("cached"), dir.path().join("fresh"));
    assert_eq!(run_job(&filter(Some(&cache), &cached)).await, (0, 200, 0));
    assert_eq!(run_job(&filter(None, &fresh)).await, (200, 0, 0));
    let ids = |out: PathBuf| async move {
        let batches = Session::new()
            .unwrap()
            .sql(&format!("SELECT id FROM '{}' ORDER BY id", s(&out)))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect::<Vec<i64>>()
    };
    let found = ids(cached).await;
    assert!(found.contains(&7), "{found:?}");
    assert_eq!(found, ids(fresh).await);
    // The conjuncts that embed nothing filter first: only the rows they
    // keep are embedded.
    let narrowed = filter(None, &dir.path().join("narrowed")).replace(
        "WHERE cosine_similarity",
        "WHERE id > 190 AND cosine_similarity",
    );
    assert!(narrowed.contains("id > 190 AND"), "{narrowed}");
    assert_eq!(run_job(&narrowed).await, (10, 0, 0));
}
