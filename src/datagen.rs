//! TPC-H data as Parquet, generated with the `tpchgen` crates.
//!
//! Deterministic: the same scale factor gives the same rows on every machine,
//! so demos, tests and benchmarks need no external data. Each table becomes a
//! directory of Parquet parts (`DIR/lineitem/part-000.parquet`, ...) of about
//! a million rows each, generated in parallel and written to any supported
//! store (a local directory, `s3://bucket/prefix`, ...).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow,
    RecordBatchIterator, RegionArrow, SupplierArrow,
};

use crate::error::{KilnError, Result};
use crate::session::Session;

/// The eight TPC-H tables, with their rows at scale factor 1.
pub const TPCH_TABLES: &[(&str, u64)] = &[
    ("region", 5),
    ("nation", 25),
    ("supplier", 10_000),
    ("customer", 150_000),
    ("part", 200_000),
    ("partsupp", 800_000),
    ("orders", 1_500_000),
    ("lineitem", 6_001_215),
];

/// Rows per Parquet part, roughly: enough parts to generate and scan in
/// parallel, few enough that files stay tens of megabytes.
const ROWS_PER_PART: f64 = 1_000_000.0;

/// The largest scale factor accepted: SF 1000 is a terabyte of CSV.
const MAX_SCALE: f64 = 1000.0;

/// One finished part of one table.
#[derive(Debug, Clone)]
pub struct PartWritten {
    pub table: &'static str,
    pub part: usize,
    pub parts: usize,
    pub rows: u64,
    pub bytes: u64,
    pub location: String,
}

/// What was generated for one table.
#[derive(Debug, Clone, Default)]
pub struct TableSummary {
    pub table: String,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

fn batches(table: &str, scale: f64, part: i32, parts: i32) -> Box<dyn RecordBatchIterator> {
    match table {
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, part, parts))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(
            scale, part, parts,
        ))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(
            scale, part, parts,
        ))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(
            scale, part, parts,
        ))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
        _ => Box::new(LineItemArrow::new(LineItemGenerator::new(
            scale, part, parts,
        ))),
    }
}

/// Generates one part and encodes it as Parquet in memory.
fn encode_part(table: &str, scale: f64, part: usize, parts: usize) -> Result<(Vec<u8>, u64)> {
    let iter = batches(table, scale, part as i32 + 1, parts as i32);
    let schema: SchemaRef = Arc::clone(iter.schema());
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema, Some(props))?;
    let mut rows = 0u64;
    for batch in iter {
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    Ok((writer.into_inner()?, rows))
}

/// Validates a scale factor: positive, finite, at most [`MAX_SCALE`].
pub fn check_scale(scale: f64) -> Result<()> {
    if !scale.is_finite() || scale <= 0.0 || scale > MAX_SCALE {
        return Err(KilnError::Usage(format!(
            "invalid TPC-H scale factor {scale}: expected a number in (0, {MAX_SCALE}]"
        )));
    }
    Ok(())
}

/// Writes the TPC-H tables at `scale` under `output` (a directory or prefix
/// in any supported store), calling `on_part` as each part lands.
pub async fn generate_tpch(
    session: &Session,
    scale: f64,
    output: &str,
    mut on_part: impl FnMut(&PartWritten),
) -> Result<Vec<TableSummary>> {
    check_scale(scale)?;
    let base = ListingTableUrl::parse(output)?;
    let store: Arc<dyn ObjectStore> = session.context().runtime_env().object_store(&base)?;
    let prefix = base.prefix().clone();

    let mut jobs = Vec::new();
    for &(table, rows_at_sf1) in TPCH_TABLES {
        // Nation and region do not scale.
        let rows = if rows_at_sf1 <= 25 {
            rows_at_sf1 as f64
        } else {
            rows_at_sf1 as f64 * scale
        };
        let parts = (rows / ROWS_PER_PART).ceil().max(1.0) as usize;
        for part in 0..parts {
            jobs.push((table, part, parts));
        }
    }

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results = futures::stream::iter(jobs)
        .map(|(table, part, parts)| {
            let store = Arc::clone(&store);
            let path = Path::from(format!(
                "{}{}{table}/part-{part:03}.parquet",
                prefix.as_ref(),
                if prefix.as_ref().is_empty() { "" } else { "/" }
            ));
            let location = format!("{}{}", base.object_store().as_str(), path);
            async move {
                let (bytes, rows) =
                    tokio::task::spawn_blocking(move || encode_part(table, scale, part, parts))
                        .await
                        .map_err(|e| KilnError::Internal(format!("datagen task failed: {e}")))??;
                let size = bytes.len() as u64;
                store
                    .put(&path, bytes.into())
                    .await
                    .map_err(|source| KilnError::ObjectStore {
                        location: location.clone(),
                        source,
                    })?;
                Ok::<_, KilnError>(PartWritten {
                    table,
                    part,
                    parts,
                    rows,
                    bytes: size,
                    location,
                })
            }
        })
        .buffer_unordered(threads);

    let mut summaries: Vec<TableSummary> = TPCH_TABLES
        .iter()
        .map(|(t, _)| TableSummary {
            table: t.to_string(),
            ..Default::default()
        })
        .collect();
    while let Some(written) = results.next().await {
        let written = written?;
        on_part(&written);
        if let Some(s) = summaries.iter_mut().find(|s| s.table == written.table) {
            s.files += 1;
            s.rows += written.rows;
            s.bytes += written.bytes;
        }
    }
    Ok(summaries)
}
