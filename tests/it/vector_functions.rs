//! dot_product, cosine_similarity, l2_distance and l2_normalize in SQL, over
//! fixed-size and variable-size list columns and array literals.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, FixedSizeListArray, Float32Array, Int64Array, ListArray, RecordBatch,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

use crate::common::*;

/// Rows (id, v: FixedSizeList<Float32, 3>, w: List<Float32>):
/// 1: v=[1,2,2]  w=[2,0,0]
/// 2: v=NULL     w=[1,1,1]
/// 3: v=[0,0,0]  w=[0,3,4]
/// 4: v=[3,0,4]  w=[1,1]      (w shorter: a row-level mismatch)
fn write_vectors(path: &std::path::Path) {
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let v = FixedSizeListArray::try_new(
        Arc::clone(&item),
        3,
        Arc::new(Float32Array::from(vec![
            1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 4.0,
        ])),
        Some(NullBuffer::from(vec![true, false, true, true])),
    )
    .unwrap();
    let w = ListArray::try_new(
        Arc::clone(&item),
        OffsetBuffer::from_lengths([3, 3, 3, 2]),
        Arc::new(Float32Array::from(vec![
            2.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 3.0, 4.0, 1.0, 1.0,
        ])),
        None,
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", v.data_type().clone(), true),
        Field::new("w", w.data_type().clone(), true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            Arc::new(v),
            Arc::new(w),
        ],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn vectors() -> (tempfile::TempDir, String) {
    let dir = tempdir();
    let p = dir.path().join("vectors.parquet");
    write_vectors(&p);
    let s = s(&p);
    (dir, s)
}

fn csv(sql: &str) -> String {
    ok(&["sql", "--format", "csv", "-c", sql])
}

#[test]
fn scores_against_a_constant_vector() {
    let (_d, p) = vectors();
    let out = csv(&format!(
        "SELECT id, dot_product(v, [2.0, 0.0, 0.0]) AS dot, \
                round(cosine_similarity(v, [2.0, 0.0, 0.0]), 5) AS cos, \
                l2_distance(v, [2.0, 0.0, 0.0]) AS l2 \
         FROM '{p}' ORDER BY id"
    ));
    // [1,2,2]·[2,0,0] = 2, |[1,2,2]| = 3: cos = 1/3, distance = √(1+4+4) = 3.
    // NULL gives NULL; the zero vector has no cosine; [3,0,4]: dot 6,
    // cos 3/5, distance √(1+16) .
    assert_eq!(
        out,
        "id,dot,cos,l2\n1,2.0,0.33333,3.0\n2,,,\n3,0.0,,2.0\n4,6.0,0.6,4.1231055\n"
    );
}

#[test]
fn scores_between_columns_and_row_level_mismatch() {
    let (_d, p) = vectors();
    let out = csv(&format!(
        "SELECT id, dot_product(v, w) AS dot, l2_distance(w, v) AS l2 FROM '{p}' WHERE id < 4 ORDER BY id"
    ));
    assert_eq!(out, "id,dot,l2\n1,2.0,3.0\n2,,\n3,0.0,5.0\n");
    let r = run(kiln().args(["sql", "-c", &format!("SELECT dot_product(v, w) FROM '{p}'")]));
    assert_one_line_error(&r, &["dimension mismatch in row 4", "3 components", "2"]);
}

#[test]
fn a_dimension_mismatch_is_a_planning_error_naming_both() {
    let (_d, p) = vectors();
    let r = run(kiln().args([
        "sql",
        "-c",
        &format!("SELECT cosine_similarity(v, [1.0, 2.0]) FROM '{p}'"),
    ]));
    assert_one_line_error(
        &r,
        &[
            "cosine_similarity: dimension mismatch",
            "has 3 components",
            "the second 2",
        ],
    );
    let r = run(kiln().args([
        "sql",
        "-c",
        &format!("SELECT dot_product(id, v) FROM '{p}'"),
    ]));
    assert_one_line_error(&r, &["dot_product: argument 1 must be a vector"]);
}

#[test]
fn l2_normalize_keeps_the_type_and_scales_rows() {
    let (_d, p) = vectors();
    let out = csv(&format!(
        "SELECT id, arrow_typeof(l2_normalize(v)) AS t, l2_normalize(v)[1] AS x, \
                l2_normalize(v)[3] AS z, round(l2_distance(l2_normalize(w), [0.0, 0.6, 0.8]), 6) AS d \
         FROM '{p}' WHERE id <> 4 ORDER BY id"
    ));
    assert_eq!(
        out,
        "id,t,x,z,d\n\
         1,FixedSizeList(3 x non-null Float32),0.33333334,0.6666667,1.414214\n\
         2,FixedSizeList(3 x non-null Float32),,,0.619209\n\
         3,FixedSizeList(3 x non-null Float32),0.0,0.0,0.0\n"
    );
}
