//! Text preparation (issue 19): `chunk_text` in SQL — chunks unnested to a
//! row each, offsets that cut the text exactly, budgets kept, NULL and
//! empty texts without chunks, and bad arguments as one-line errors.

use std::path::PathBuf;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use kiln::Session;

fn tiny() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("engine/tests/fixtures/tiny-bert")
        .display()
        .to_string()
}

async fn ints(session: &Session, sql: &str) -> Vec<i64> {
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

#[tokio::test]
async fn chunks_unnest_to_rows_whose_offsets_cut_the_text() {
    let session = Session::new().unwrap();
    let docs = "(VALUES \
        (1, 'First paragraph, with a few words in it.\n\nSecond paragraph: more words here. \
            And a last sentence — with ünïcödé.'), \
        (2, NULL), \
        (3, ''), \
        (4, 'short')) AS d(id, body)";
    let chunks = format!(
        "SELECT id, body, c['chunk'] AS chunk, c['start'] AS s, c['end'] AS e, \
                c['tokens'] AS tokens \
         FROM (SELECT id, body, unnest(chunk_text(body, 8, 2, '{model}')) AS c FROM {docs})",
        model = tiny()
    );
    // Every chunk is the text between its offsets (characters, from 0).
    let wrong = ints(
        &session,
        &format!(
            "SELECT count(*) FROM ({chunks}) \
             WHERE substr(body, s + 1, e - s) <> chunk OR tokens > 8 OR tokens < 1"
        ),
    )
    .await;
    assert_eq!(wrong, [0]);
    // NULL and empty texts give no rows; the others at least one.
    let ids = ints(
        &session,
        &format!("SELECT DISTINCT id FROM ({chunks}) ORDER BY id"),
    )
    .await;
    assert_eq!(ids, [1, 4]);
    let first = ints(
        &session,
        &format!("SELECT count(*) FROM ({chunks}) WHERE id = 1"),
    )
    .await;
    assert!(first[0] >= 3, "{first:?}");
    // The first chunk ends at the paragraph break, not mid-sentence.
    let ends = ints(
        &session,
        &format!("SELECT e FROM ({chunks}) WHERE id = 1 ORDER BY s LIMIT 1"),
    )
    .await;
    assert!(ends[0] <= 41, "{ends:?}");
}

#[tokio::test]
async fn bad_chunking_arguments_are_one_line_errors() {
    let session = Session::new().unwrap();
    let too_many = format!("SELECT chunk_text('a b', 100000, 0, '{}')", tiny());
    for (sql, want) in [
        (
            "SELECT chunk_text('a b', 0)",
            "max_tokens must be at least 1",
        ),
        (
            "SELECT chunk_text('a b', 4, 4)",
            "overlap_tokens must be at least 0 and less than",
        ),
        ("SELECT chunk_text('a b', 4, -1)", "overlap_tokens"),
        (
            too_many.as_str(),
            "reads without truncating (128 tokens, 2 of them special): at most 126",
        ),
        ("SELECT chunk_text('a b', 4.5)", "chunk_text"),
    ] {
        let e = crate::common::sql_error(&session, sql).await;
        assert!(e.contains(want), "{sql}: {e}");
    }
}

/// `kiln chunk IN OUT`: a row per chunk with the other columns, the text
/// column replaced by `chunk` and its offsets; a bad budget is a one-line
/// error with exit code 1 and no output.
#[test]
fn kiln_chunk_writes_a_row_per_chunk() {
    use crate::common::{csv_of, kiln, run, s, tempdir};
    let dir = tempdir();
    let input = dir.path().join("docs.parquet");
    let r = run(kiln().args([
        "sql",
        "-c",
        &format!(
            "COPY (SELECT i AS id, 'Document ' || i || '. It has a first sentence here. \
             And a second one, somewhat longer than the first.\n\nA new paragraph.' AS body \
             FROM generate_series(1, 3) t(i)) TO '{}'",
            s(&input)
        ),
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = dir.path().join("chunks.parquet");
    let r = run(kiln().args([
        "chunk",
        &s(&input),
        &s(&out),
        "--column",
        "body",
        "--max-tokens",
        "8",
        "--overlap",
        "2",
        "--model",
        &tiny(),
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("cut 3 rows"), "{}", r.stdout);
    let summary = csv_of(
        kiln(),
        &format!(
            "SELECT count(*) > 6 AS many, count(DISTINCT id) AS ids, max(chunk_tokens) <= 8 AS kept, \
             min(chunk_start) AS first FROM '{}'",
            s(&out)
        ),
    );
    assert_eq!(
        summary.as_deref().map(str::trim),
        Some("many,ids,kept,first\ntrue,3,true,0")
    );
    let first = csv_of(kiln(), &format!("SELECT * FROM '{}' LIMIT 1", s(&out))).unwrap();
    assert!(
        first.starts_with("id,chunk,chunk_start,chunk_end,chunk_tokens"),
        "{first}"
    );

    let bad = dir.path().join("bad.parquet");
    let r = run(kiln().args([
        "chunk",
        &s(&input),
        &s(&bad),
        "--column",
        "body",
        "--max-tokens",
        "0",
        "--model",
        &tiny(),
    ]));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("max_tokens must be at least 1"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(!bad.exists());
}
