//! The library API: `Session` with SQL and the lazy DataFrame API.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::dataframe::DataFrameWriteOptions;
use datafusion::prelude::{col, lit};
use kiln::{DeviceRequest, KilnError, Session};

use crate::common::*;

#[tokio::test]
async fn dataframe_read_filter_write_read_back() {
    let dir = tempdir();
    let input = dir.path().join("people.parquet");
    write_people(&input);
    let session = Session::builder()
        .device(DeviceRequest::Auto)
        .build()
        .unwrap();
    let df = session
        .read_parquet(&s(&input))
        .await
        .unwrap()
        .filter(col("score").is_not_null())
        .unwrap()
        .select(vec![col("id"), (col("score") * lit(2.0)).alias("s2")])
        .unwrap();
    let out = dir.path().join("out");
    df.write_parquet(&format!("{}/", s(&out)), DataFrameWriteOptions::new(), None)
        .await
        .unwrap();

    session
        .register_parquet("written", &format!("{}/", s(&out)))
        .await
        .unwrap();
    let batches = session
        .sql("SELECT id FROM written ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ids: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, vec![1, 3, 4]);
}

#[tokio::test]
async fn sql_takes_one_statement_and_scripts_take_many() {
    let session = Session::new().unwrap();
    let err = session.sql("SELECT 1; SELECT 2").await.unwrap_err();
    assert!(matches!(err, KilnError::Usage(_)), "{err}");
    assert!(matches!(
        session.sql("").await.unwrap_err(),
        KilnError::EmptySql
    ));

    let outputs = session
        .run_script(
            "CREATE TABLE t AS SELECT 42 AS x; SELECT count(*) AS n FROM t; \
             INSERT INTO t VALUES (7); SELECT sum(x) AS s FROM t",
        )
        .await
        .unwrap();
    assert_eq!(outputs.len(), 4);
    assert!(!outputs[0].returns_rows());
    assert!(outputs[1].returns_rows());
    let value = |i: usize| {
        outputs[i].batches[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0)
    };
    // Each query ran before the statements after it: the count does not see
    // the later insert.
    assert_eq!(value(1), 1);
    assert_eq!(value(3), 49);
}

#[tokio::test]
async fn memory_store_round_trip() {
    let session = Session::new().unwrap();
    session
        .sql("COPY (SELECT 7 AS n) TO 'memory://scratch/n/' STORED AS PARQUET")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let df = session.read_parquet("memory://scratch/n/").await.unwrap();
    let batches = df.collect().await.unwrap();
    assert_eq!(batches[0].column(0).len(), 1);
    assert_eq!(batches[0].column(0).as_primitive::<Int64Type>().value(0), 7);
}

/// A 0-byte object in a store is no table, as a 0-byte local file is not
/// (DataFusion skips empty files, so it read as 0 rows).
#[tokio::test]
async fn an_empty_object_in_a_store_is_an_error() {
    let session = Session::new().unwrap();
    let url = datafusion::execution::object_store::ObjectStoreUrl::parse("memory://empty").unwrap();
    let store = session.context().runtime_env().object_store(&url).unwrap();
    let path = object_store::path::Path::from("x.parquet");
    object_store::ObjectStoreExt::put(store.as_ref(), &path, Vec::<u8>::new().into())
        .await
        .unwrap();
    for read in [
        session
            .sql("SELECT * FROM 'memory://empty/x.parquet'")
            .await,
        session.read_parquet("memory://empty/x.parquet").await,
    ] {
        let err = read.expect_err("an empty object").to_string();
        assert!(
            err.contains("memory://empty/x.parquet: the file is empty (0 bytes)"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn kiln_options_are_settable() {
    let session = Session::builder()
        .device(DeviceRequest::Auto)
        .build()
        .unwrap();
    assert_eq!(session.kiln_options().device, "auto");
    session.sql("SET kiln.device = 'cpu'").await.unwrap();
    assert_eq!(session.kiln_options().device, "cpu");
    let err = session
        .sql("SET kiln.no_such_option = 1")
        .await
        .unwrap_err();
    assert!(
        err.one_line().contains("no_such_option"),
        "{}",
        err.one_line()
    );
}

#[test]
fn a_named_missing_device_is_an_error() {
    if kiln_kernels::cuda_backend::driver_present() {
        return;
    }
    let err = Session::builder()
        .device("cuda".parse().unwrap())
        .build()
        .unwrap_err();
    assert!(err.one_line().contains("libcuda"), "{}", err.one_line());
}
