//! Parquet metadata checked before a scan slices with it.
//!
//! The `parquet` crate (59) trusts the offsets and sizes a file's metadata
//! gives: a column chunk with a negative start or length panics ("column
//! start and length should not be negative"), a page location before its
//! column chunk underflows in the page reader, a page beyond the chunk's
//! bytes is sliced out of range. The Parquet fuzz target found each (issue
//! 14, item 3). [`CheckedReaderFactory`] wraps the reader factory of a
//! Parquet scan: the metadata its readers return is checked against the
//! file's size ([`check_metadata`]) and a lie is an error naming the file
//! and the column chunk.
//!
//! What it covers: every column chunk's byte range, and the page locations
//! of the offset index. The index comes with the metadata from DataFusion's
//! metadata cache; when it does not (the cache off or full), the reader
//! loads it before returning the metadata, so it is checked too (DataFusion
//! would otherwise load it later for page pruning, past this check, and
//! keeps an index the reader gives it; the cost is reading the page index of
//! files a scan would not have pruned by page). The planner's rule
//! `CheckParquetMetadata` installs it on every Parquet scan whose factory
//! DataFusion set (every scan a local session plans). What the metadata declares before any data is read
//! (the embedded Arrow schema, sorting columns, row counts:
//! [`check_declared`]) is checked here too, and earlier, when schema
//! inference fetches the footer, by [`super::parquet_footer`].

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::ParquetFileReaderFactory;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::{AsyncFileReader, MetadataFetch};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{
    PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader,
};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::arrow_schema_check::{ARROW_SCHEMA_KEY, check_arrow_schema};

/// The most rows a file may declare in all: DataFusion's statistics
/// multiply the row count by a value's width (up to 32 bytes) in `usize`.
const MAX_DECLARED_ROWS: u64 = (usize::MAX / 32) as u64;

/// Checks what `metadata` declares that readers use before reading any
/// data, and that `parquet`, `arrow-ipc` or DataFusion would otherwise
/// trust until they panic: the embedded Arrow schema
/// ([`super::arrow_schema_check`]); each row group's sorting columns (an
/// index into the file's leaf columns — DataFusion's ordering inference
/// asks `SchemaDescriptor::column` for it, which asserts); the row counts
/// (negative, or summing beyond what DataFusion's statistics can multiply
/// without overflow).
pub fn check_declared(metadata: &ParquetMetaData) -> Result<(), String> {
    let file = metadata.file_metadata();
    // Every entry: parquet keeps the last one of a repeated key.
    for value in file
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|kv| kv.key == ARROW_SCHEMA_KEY)
        .filter_map(|kv| kv.value.as_deref())
    {
        check_arrow_schema(value)?;
    }
    let columns = file.schema_descr().num_columns();
    let mut rows: u64 = 0;
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for sorting in group.sorting_columns().into_iter().flatten() {
            if usize::try_from(sorting.column_idx).map_or(true, |i| i >= columns) {
                return Err(format!(
                    "row group {g} is said to be sorted by column {}, the file has {columns} columns",
                    sorting.column_idx
                ));
            }
        }
        let declared = group.num_rows();
        rows = u64::try_from(declared)
            .ok()
            .and_then(|n| rows.checked_add(n))
            .filter(|total| *total <= MAX_DECLARED_ROWS)
            .ok_or_else(|| {
                format!(
                    "row group {g} is said to hold {declared} rows{}",
                    if declared < 0 {
                        String::new()
                    } else {
                        format!(", more than {MAX_DECLARED_ROWS} in the file")
                    }
                )
            })?;
    }
    Ok(())
}

/// Checks what [`check_declared`] checks, then that every column chunk of
/// `metadata` lies within a file of `file_len` bytes, and every page the
/// offset index (when loaded) locates lies within its column chunk.
pub fn check_metadata(metadata: &ParquetMetaData, file_len: u64) -> Result<(), String> {
    check_declared(metadata)?;
    let offset_index = metadata.offset_index();
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, column) in group.columns().iter().enumerate() {
            let name = || format!("row group {g}, column {}", column.column_path());
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let len = column.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(s, l)| s.checked_add(l))
                .filter(|end| *end <= file_len);
            let Some(end) = end else {
                return Err(format!(
                    "{}: its data is said to be {len} bytes at offset {start}, \
                     the file has {file_len} bytes",
                    name()
                ));
            };
            let start = start as u64;
            let Some(pages) = offset_index.and_then(|i| i.get(g)).and_then(|i| i.get(c)) else {
                continue;
            };
            for page in pages.page_locations() {
                let page_end = u64::try_from(page.offset)
                    .ok()
                    .zip(u64::try_from(page.compressed_page_size).ok())
                    .and_then(|(o, s)| o.checked_add(s));
                let inside = page_end.is_some_and(|e| page.offset as u64 >= start && e <= end);
                if !inside {
                    return Err(format!(
                        "{}: its offset index puts a page of {} bytes at offset {}, \
                         outside the column's bytes {start}..{end}",
                        name(),
                        page.compressed_page_size,
                        page.offset
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A reader as the page index loader fetches with.
struct Fetch<'a>(&'a mut (dyn AsyncFileReader + Send));

impl MetadataFetch for Fetch<'_> {
    fn fetch(
        &mut self,
        range: Range<u64>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        self.0.get_bytes(range)
    }
}

/// Whether a column chunk of `metadata` says where its offset index is.
fn declares_offset_index(metadata: &ParquetMetaData) -> bool {
    metadata
        .row_groups()
        .iter()
        .flat_map(|g| g.columns())
        .any(|c| c.offset_index_offset().is_some())
}

/// A [`ParquetFileReaderFactory`] whose readers check the metadata they
/// return (see the module's doc). Its `Debug` is its name alone, which is
/// how the planner's rule recognizes a scan it already wrapped.
pub struct CheckedReaderFactory {
    inner: Arc<dyn ParquetFileReaderFactory>,
    /// The scan's store, `scheme://authority`, to name files in errors.
    store_key: String,
    /// Whether the scan may prune by page (then its readers load the page
    /// index with the metadata, to check it before DataFusion uses it).
    page_index: bool,
}

impl CheckedReaderFactory {
    /// Wraps `inner`, the factory of a scan over the store `store_url`
    /// (the scan's `ObjectStoreUrl`, e.g. `file:///` or `s3://bucket/`).
    pub fn new(
        inner: Arc<dyn ParquetFileReaderFactory>,
        store_url: &str,
        page_index: bool,
    ) -> Self {
        CheckedReaderFactory {
            inner,
            store_key: store_url.trim_end_matches('/').to_string(),
            page_index,
        }
    }
}

impl fmt::Debug for CheckedReaderFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckedReaderFactory")
    }
}

impl ParquetFileReaderFactory for CheckedReaderFactory {
    fn create_reader(
        &self,
        partition_index: usize,
        partitioned_file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::common::Result<Box<dyn AsyncFileReader + Send>> {
        let file = FileShown {
            location: super::shown_location(
                &self.store_key,
                &partitioned_file.object_meta.location,
            ),
            len: partitioned_file.object_meta.size,
        };
        let inner = self.inner.create_reader(
            partition_index,
            partitioned_file,
            metadata_size_hint,
            metrics,
        )?;
        Ok(Box::new(CheckedReader {
            inner,
            file,
            page_index: self.page_index,
        }))
    }
}

struct FileShown {
    location: String,
    len: u64,
}

impl fmt::Display for FileShown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}'", self.location)
    }
}

struct CheckedReader {
    inner: Box<dyn AsyncFileReader + Send>,
    file: FileShown,
    page_index: bool,
}

impl AsyncFileReader for CheckedReader {
    fn get_bytes(
        &mut self,
        range: Range<u64>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Bytes>> {
        self.inner.get_bytes(range)
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, datafusion::parquet::errors::Result<Vec<Bytes>>> {
        self.inner.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, datafusion::parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let mut metadata = self.inner.get_metadata(options).await?;
            if self.page_index
                && metadata.offset_index().is_none()
                && declares_offset_index(&metadata)
            {
                // Load the page index now, so its page locations are checked
                // below: DataFusion would load it later for page pruning,
                // past this check (it keeps an index a reader gives it).
                let whole = Arc::try_unwrap(metadata).unwrap_or_else(|m| m.as_ref().clone());
                let mut reader = ParquetMetaDataReader::new_with_metadata(whole)
                    .with_page_index_policy(PageIndexPolicy::Optional);
                reader.load_page_index(Fetch(self.inner.as_mut())).await?;
                metadata = Arc::new(reader.finish()?);
            }
            check_metadata(&metadata, self.file.len).map_err(|reason| {
                ParquetError::General(format!(
                    "{} is not a valid Parquet file: {reason}",
                    self.file
                ))
            })?;
            Ok(metadata)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::parquet::file::metadata::{FileMetaData, KeyValue, ParquetMetaDataReader};

    /// parquet keeps the last of repeated keys: a valid `ARROW:schema`
    /// before an invalid one must not hide it.
    #[test]
    fn every_arrow_schema_entry_is_checked() {
        let crasher = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/regressions/parquet/arrow-schema-unknown-float-precision"),
        )
        .unwrap();
        let n = crasher.len();
        let len = u32::from_le_bytes(crasher[n - 8..n - 4].try_into().unwrap()) as usize;
        let metadata =
            ParquetMetaDataReader::decode_metadata(&crasher[n - 8 - len..n - 8]).unwrap();
        let file = metadata.file_metadata();
        let bad = file
            .key_value_metadata()
            .unwrap()
            .iter()
            .find(|kv| kv.key == ARROW_SCHEMA_KEY)
            .unwrap()
            .clone();
        let entries = vec![KeyValue::new(ARROW_SCHEMA_KEY.to_string(), None), bad];
        let twice = ParquetMetaData::new(
            FileMetaData::new(
                file.version(),
                file.num_rows(),
                file.created_by().map(str::to_string),
                Some(entries),
                file.schema_descr_ptr(),
                file.column_orders().cloned(),
            ),
            metadata.row_groups().to_vec(),
        );
        let err = check_declared(&twice).unwrap_err();
        assert!(err.contains("float precision"), "{err}");
    }
}
