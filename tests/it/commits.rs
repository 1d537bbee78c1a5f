//! Directory outputs committed with a manifest (issue 16 §2, plain
//! Parquet): readers through Kiln see the last commit whole, never a mix;
//! inserts join the manifest when complete; hidden files and leftovers of
//! killed writes are not data.

use datafusion::execution::object_store::ObjectStoreUrl;
use futures::TryStreamExt;
use kiln::Session;
use kiln_engine::io::committed::Manifest;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::common::*;

async fn count(session: &Session, sql: &str) -> i64 {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    let batches = session.sql(sql).await.unwrap().collect().await.unwrap();
    batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

async fn names(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

/// On an object store a commit moves files one by one: readers follow the
/// manifest, so files of a commit not yet published (or of one killed
/// half-way) are not read, and the next commit deletes them.
#[tokio::test]
async fn readers_of_a_store_directory_see_its_last_commit_only() {
    let session = Session::new().unwrap();
    let store = session
        .context()
        .runtime_env()
        .object_store(ObjectStoreUrl::parse("memory://commits").unwrap())
        .unwrap();
    session
        .sql(
            "COPY (SELECT i FROM generate_series(1, 10) t(i)) \
             TO 'memory://commits/out/' STORED AS PARQUET",
        )
        .await
        .unwrap();
    let manifest = Manifest::read(store.as_ref(), &Path::from("out"))
        .await
        .expect("a Kiln manifest in _SUCCESS");
    assert_eq!(manifest.rows, 10);
    assert_eq!(manifest.files.len(), 1);
    let first_file = format!("out/{}", manifest.files[0].path);
    assert!(manifest.files[0].bytes > 0);
    let from = "SELECT count(*) FROM 'memory://commits/out/'";
    assert_eq!(count(&session, from).await, 10);

    // A file of another commit, moved in but not yet in a manifest.
    store
        .copy(
            &Path::from(first_file.as_str()),
            &Path::from("out/pending.parquet"),
        )
        .await
        .unwrap();
    assert_eq!(
        count(&session, from).await,
        10,
        "an unpublished file was read"
    );

    // The next commit replaces the output and deletes what no longer belongs.
    session
        .sql(
            "COPY (SELECT i FROM generate_series(1, 5) t(i)) \
             TO 'memory://commits/out/' STORED AS PARQUET",
        )
        .await
        .unwrap();
    assert_eq!(count(&session, from).await, 5);
    // Listings through the session show the committed file alone (the
    // marker is hidden); the unpublished file is gone from the store.
    let objects = names(store.as_ref(), "out").await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let manifest = Manifest::read(store.as_ref(), &Path::from("out"))
        .await
        .unwrap();
    assert_eq!(objects[0], format!("out/{}", manifest.files[0].path));
    assert!(matches!(
        store.head(&Path::from("out/pending.parquet")).await,
        Err(object_store::Error::NotFound { .. })
    ));

    // INSERT INTO a table over it: the new file joins the manifest.
    session
        .sql("CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'memory://commits/out/'")
        .await
        .unwrap();
    session
        .sql("INSERT INTO t VALUES (100), (101)")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(count(&session, "SELECT count(*) FROM t").await, 7);
    assert_eq!(count(&session, from).await, 7);
    let manifest = Manifest::read(store.as_ref(), &Path::from("out"))
        .await
        .unwrap();
    assert_eq!((manifest.rows, manifest.files.len()), (7, 2));
}

/// On a local disk the manifest moves in with the directory; markers and
/// checksums of other writers and the staging of a killed write are not
/// read, and the next write to the same output deletes that staging.
#[test]
fn local_directories_hide_markers_and_leftovers() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let o = s(&out);
    ok(&[
        "sql",
        "-c",
        &format!("COPY (SELECT i FROM generate_series(1, 4) t(i)) TO '{o}/' STORED AS PARQUET"),
    ]);
    let marker = std::fs::read(out.join("_SUCCESS")).unwrap();
    let manifest = Manifest::parse(&marker).expect("a Kiln manifest");
    assert_eq!(manifest.rows, 4);
    assert!(out.join(&manifest.files[0].path).is_file());

    // What other writers leave: a JSON _SUCCESS (S3A), a .crc, _temporary/.
    let spark = dir.path().join("spark");
    std::fs::create_dir_all(spark.join("_temporary/0")).unwrap();
    write_people(&spark.join("part-00000.parquet"));
    std::fs::write(
        spark.join("_SUCCESS"),
        r#"{"committer":"magic","filenames":[]}"#,
    )
    .unwrap();
    std::fs::write(spark.join(".part-00000.parquet.crc"), "crc").unwrap();
    std::fs::write(
        spark.join("_temporary/0/part-00001.parquet"),
        "half written",
    )
    .unwrap();
    let query = |from: &str| format!("SELECT count(*) AS n FROM {from}");
    let csv = |sql: &str| ok(&["sql", "--format", "csv", "-c", sql]);
    let sp = s(&spark);
    assert_eq!(csv(&query(&format!("'{sp}/'"))), "n\n4\n");
    assert_eq!(
        csv(&format!(
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '{sp}/'; {}",
            query("t")
        )),
        "n\n4\n"
    );

    // A killed write's staging and a set-aside output, beside the target.
    let stale = dir.path().join(".kiln-staging-4242-0-out");
    let aside = dir.path().join(".kiln-staging-4242-1-out-replaced");
    let other = dir.path().join(".kiln-staging-4242-2-other");
    for d in [&stale, &aside, &other] {
        std::fs::create_dir_all(d).unwrap();
        write_people(&d.join("part.parquet"));
    }
    ok(&[
        "sql",
        "-c",
        &format!("COPY (SELECT 1 AS i) TO '{o}/' STORED AS PARQUET"),
    ]);
    assert!(
        !stale.exists() && !aside.exists(),
        "leftovers of 'out' remain"
    );
    assert!(other.exists(), "another output's staging was deleted");
    assert_eq!(csv(&query(&format!("'{o}/'"))), "n\n1\n");
}
