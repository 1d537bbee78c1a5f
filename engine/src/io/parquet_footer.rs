//! A store wrapper that checks the footer of every Parquet file read through
//! it before a reader slices with it.
//!
//! A Parquet file ends with the length of its metadata (4 bytes, little
//! endian) and the magic `PAR1`. The `parquet` crate (59) subtracts that
//! length from the file's size without checking it, so a file whose footer
//! claims more metadata than the file holds panics inside the reader
//! ("attempt to subtract with overflow", or "range start must not be greater
//! than end") instead of failing — issue 14, item 3, found by a user's
//! truncated file and again by the Parquet fuzz target. Every reader of the
//! footer (schema inference, statistics, the scan's metadata; DataFusion
//! fetches them with `get_ranges`, others with `get_range`) first fetches
//! the tail of the object, through Kiln's registry on every store and every
//! cluster node; this wrapper checks what it hands back and answers a lying
//! footer with an error naming the file.
//!
//! It also refuses a read of more than [`LARGE_RANGE`] bytes that reaches
//! past the object's end (learning the size with a `head` first): object
//! stores allocate the range before reading (the local store's
//! `Vec::with_capacity(range.len())`), so a column chunk or page index whose
//! metadata claims terabytes aborted the process ("memory allocation of
//! 48530143925601 bytes failed", found by the Parquet fuzz target).
//!
//! Only objects named `*.parquet` (any case, also `*.parq` and `*.pq`) are
//! footer-checked: part files without an extension (Hive's `000000_0`) are not. A fetched range that ends with the magic and a length that fits
//! before the range's end is fine whatever the file's size; only when the
//! length reaches further back does the wrapper learn the size (a `head`),
//! so valid files cost nothing.
//!
//! A tail that ends with the footer also has the metadata it closes decoded
//! and checked for what readers trust before reading any data (the
//! embedded Arrow schema, sorting columns, row counts:
//! [`super::parquet_metadata::check_declared`]): schema inference and
//! statistics use them straight from the footer, before any scan's reader
//! factory could check them. The cost is a second decoding of each file's
//! metadata (once per file and session: DataFusion caches what it
//! decoded), and one more read when the metadata is longer than the
//! reader's prefetch (DataFusion's hint is 512 KiB).

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};

use super::parquet_metadata::check_declared;

/// The longest tail read `get_opts` checks (buffering it first): readers
/// prefetch a footer with a hint of some hundred KiB (DataFusion's default
/// is 512 KiB, fetched with `get_ranges`, which returns bytes anyway); a
/// longer read is a data read and streams through unchecked.
pub const MAX_CHECKED_TAIL: u64 = 1 << 20;

/// Reads longer than this are checked against the object's size before the
/// store allocates them (a `head` each: next to a read this large, cheap).
pub const LARGE_RANGE: u64 = 16 << 20;

/// Length field and magic at the end of every Parquet file.
const FOOTER_LEN: u64 = 8;

/// Why a Parquet file's footer cannot be believed.
#[derive(Debug)]
pub struct BadFooter {
    /// As the user wrote it ([`super::shown_location`]).
    pub location: String,
    pub metadata_len: u64,
    pub file_len: u64,
}

impl fmt::Display for BadFooter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a valid Parquet file: its footer gives {} bytes of metadata, \
             the file has {} bytes (truncated or corrupt)",
            self.location, self.metadata_len, self.file_len
        )
    }
}

impl std::error::Error for BadFooter {}

/// A read that reaches past the object's end.
#[derive(Debug)]
pub struct RangeBeyondObject {
    pub location: String,
    pub range: Range<u64>,
    pub size: u64,
}

impl fmt::Display for RangeBeyondObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}': asked for bytes {}..{} of an object of {} bytes (a file whose \
             metadata gives offsets or sizes beyond it is corrupt)",
            self.location, self.range.start, self.range.end, self.size
        )
    }
}

impl std::error::Error for RangeBeyondObject {}

/// Metadata that declares what no reader can use (see
/// [`super::parquet_metadata::check_declared`]).
#[derive(Debug)]
pub struct BadMetadata {
    pub location: String,
    pub reason: String,
}

impl fmt::Display for BadMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a valid Parquet file: {}",
            self.location, self.reason
        )
    }
}

impl std::error::Error for BadMetadata {}

impl BadFooter {
    fn into_store_error(self) -> object_store::Error {
        object_store::Error::Generic {
            store: "Parquet",
            source: Box::new(self),
        }
    }
}

/// Whether `location` names a Parquet file.
fn is_parquet(location: &Path) -> bool {
    location.extension().is_some_and(|e| {
        e.eq_ignore_ascii_case("parquet")
            || e.eq_ignore_ascii_case("parq")
            || e.eq_ignore_ascii_case("pq")
    })
}

/// Checks `tail`, the last bytes of a Parquet file of `file_len` bytes: a
/// footer (plain `PAR1` or encrypted `PARE`) must not claim more metadata
/// than precedes it. A tail without either magic is left to the reader,
/// which names it as not Parquet.
pub fn check_footer(location: &str, tail: &[u8], file_len: u64) -> Result<(), BadFooter> {
    let Some(footer) = tail
        .len()
        .checked_sub(FOOTER_LEN as usize)
        .map(|at| &tail[at..])
    else {
        return Ok(());
    };
    if &footer[4..] != b"PAR1" && &footer[4..] != b"PARE" {
        return Ok(());
    }
    let metadata_len = u64::from(u32::from_le_bytes([
        footer[0], footer[1], footer[2], footer[3],
    ]));
    if metadata_len + FOOTER_LEN > file_len {
        return Err(BadFooter {
            location: location.to_string(),
            metadata_len,
            file_len,
        });
    }
    Ok(())
}

/// An [`ObjectStore`] that checks Parquet footers on the way out (see the
/// module's doc) and passes everything else through.
#[derive(Debug)]
pub struct FooterCheckedStore {
    inner: Arc<dyn ObjectStore>,
    /// The store's `scheme://authority`, to name files in errors.
    store_key: String,
}

impl FooterCheckedStore {
    /// `inner` behind the check; a store already behind it (one taken from
    /// Kiln's registry and registered again) as it is.
    pub fn wrap(inner: Arc<dyn ObjectStore>, store_key: &str) -> Arc<dyn ObjectStore> {
        if inner.to_string().starts_with("FooterChecked(") {
            return inner;
        }
        Arc::new(FooterCheckedStore {
            inner,
            store_key: store_key.to_string(),
        })
    }

    fn shown(&self, location: &Path) -> String {
        super::shown_location(&self.store_key, location)
    }

    /// Refuses `ranges` of `location` when one is longer than
    /// [`LARGE_RANGE`] and reaches past the object's end.
    async fn check_large(&self, location: &Path, ranges: &[Range<u64>]) -> Result<()> {
        let large = ranges
            .iter()
            .any(|r| r.end.saturating_sub(r.start) > LARGE_RANGE);
        if !large {
            return Ok(());
        }
        let size = self.inner.head(location).await?.size;
        match ranges.iter().find(|r| r.end > size) {
            Some(range) => Err(object_store::Error::Generic {
                store: "Kiln",
                source: Box::new(RangeBeyondObject {
                    location: self.shown(location),
                    range: range.clone(),
                    size,
                }),
            }),
            None => Ok(()),
        }
    }
}

impl FooterCheckedStore {
    /// When `tail`, the bytes of `location` that end at `tail_end`, ends
    /// with a plain Parquet footer, decodes the metadata it closes and
    /// checks what that declares
    /// ([`super::parquet_metadata::check_declared`]). Metadata longer than
    /// the tail (a reader that fetched the footer alone, or metadata beyond
    /// its prefetch hint) is completed with one more read. Bytes that do not
    /// decode are left to the reader, which names them.
    async fn check_declared_in_tail(
        &self,
        location: &Path,
        tail_end: u64,
        tail: &[u8],
    ) -> Result<()> {
        let n = tail.len();
        if n < FOOTER_LEN as usize || &tail[n - 4..] != b"PAR1" {
            return Ok(());
        }
        let metadata_len =
            u32::from_le_bytes([tail[n - 8], tail[n - 7], tail[n - 6], tail[n - 5]]) as usize;
        let body = &tail[..n - FOOTER_LEN as usize];
        let decoded = if metadata_len <= body.len() {
            ParquetMetaDataReader::decode_metadata(&body[body.len() - metadata_len..])
        } else {
            let tail_start = tail_end - n as u64;
            let Some(start) = tail_start.checked_sub((metadata_len - body.len()) as u64) else {
                return Ok(());
            };
            let before = self.inner.get_range(location, start..tail_start).await?;
            let mut whole = Vec::with_capacity(metadata_len);
            whole.extend_from_slice(&before);
            whole.extend_from_slice(body);
            ParquetMetaDataReader::decode_metadata(&whole)
        };
        let Ok(metadata) = decoded else {
            return Ok(());
        };
        check_declared(&metadata).map_err(|reason| object_store::Error::Generic {
            store: "Parquet",
            source: Box::new(BadMetadata {
                location: self.shown(location),
                reason,
            }),
        })
    }
}

impl fmt::Display for FooterCheckedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FooterChecked({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FooterCheckedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if let Some(object_store::GetRange::Bounded(range)) = &options.range {
            self.check_large(location, std::slice::from_ref(range))
                .await?;
        }
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        let tail = result.range.end == result.meta.size
            && !result.range.is_empty()
            && result.range.end - result.range.start <= MAX_CHECKED_TAIL;
        if head || !tail || !is_parquet(location) {
            return Ok(result);
        }
        let GetResult {
            meta,
            range,
            attributes,
            payload,
        } = result;
        let bytes = GetResult {
            payload,
            meta: meta.clone(),
            range: range.clone(),
            attributes: attributes.clone(),
        }
        .bytes()
        .await?;
        check_footer(&self.shown(location), &bytes, meta.size)
            .map_err(BadFooter::into_store_error)?;
        self.check_declared_in_tail(location, range.end, &bytes)
            .await?;
        let once = futures::stream::once(async move { Ok::<Bytes, object_store::Error>(bytes) });
        Ok(GetResult {
            payload: GetResultPayload::Stream(once.boxed()),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.check_large(location, ranges).await?;
        let fetched = self.inner.get_ranges(location, ranges).await?;
        if is_parquet(location) {
            for (range, bytes) in ranges.iter().zip(&fetched) {
                // Within the range, the footer cannot lie: it could only
                // if the range is the file's tail and reaches back less far
                // than the footer says, which takes the file's size to tell.
                let shown = self.shown(location);
                if check_footer(&shown, bytes, range.end).is_err() {
                    let size = self.inner.head(location).await?.size;
                    if range.end == size {
                        check_footer(&shown, bytes, size).map_err(BadFooter::into_store_error)?;
                    }
                }
                self.check_declared_in_tail(location, range.end, bytes)
                    .await?;
            }
        }
        Ok(fetched)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn file(metadata_len: u32, body: usize) -> Vec<u8> {
        let mut f = b"PAR1".to_vec();
        f.resize(4 + body, 0);
        f.extend_from_slice(&metadata_len.to_le_bytes());
        f.extend_from_slice(b"PAR1");
        f
    }

    #[tokio::test]
    async fn a_lying_footer_is_an_error_naming_the_file() {
        let store = FooterCheckedStore::wrap(Arc::new(InMemory::new()), "memory://");
        let bad = Path::from("dir/bad.parquet");
        let good = Path::from("dir/good.parquet");
        let other = Path::from("dir/bad.csv");
        store
            .put(&bad, file(0x7fff_ffff, 100).into())
            .await
            .unwrap();
        store.put(&good, file(100, 100).into()).await.unwrap();
        store
            .put(&other, file(0x7fff_ffff, 100).into())
            .await
            .unwrap();
        let size = 4 + 100 + 8;
        let err = store.get_range(&bad, size - 8..size).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("'memory:/dir/bad.parquet' is not a valid Parquet file")
                && text.contains("2147483647 bytes of metadata")
                && text.contains("112 bytes"),
            "{text}"
        );
        // A whole-file read of a small file is a tail read too.
        assert!(store.get(&bad).await.is_err());
        // Footers that fit, other names, and reads short of the end pass.
        let tail = store.get_range(&good, size - 8..size).await.unwrap();
        assert_eq!(&tail[4..], b"PAR1");
        assert!(store.get_range(&other, size - 8..size).await.is_ok());
        assert!(store.get_range(&bad, 0..8).await.is_ok());
        assert!(store.head(&bad).await.is_ok());
        // As DataFusion fetches footers: get_ranges, the size unknown.
        let err = store
            .get_ranges(&bad, &[0..4, size - 8..size])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("2147483647 bytes of metadata"),
            "{err}"
        );
        assert!(
            store
                .get_ranges(&good, std::slice::from_ref(&(0..size)))
                .await
                .is_ok()
        );
        // A range inside the file that happens to end like a footer is
        // not the footer.
        let inner = Path::from("dir/inner.parquet");
        let mut f = file(0x7fff_ffff, 100);
        f.extend(file(4, 100));
        store.put(&inner, f.into()).await.unwrap();
        assert!(
            store
                .get_ranges(&inner, std::slice::from_ref(&(size - 8..size)))
                .await
                .is_ok()
        );
        // A huge range past the end is refused before any store allocates it.
        let huge = 0..(48 << 40);
        let err = store
            .get_ranges(&good, std::slice::from_ref(&huge))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("of an object of 112 bytes"),
            "{err}"
        );
        assert!(store.get_range(&good, huge).await.is_err());
    }

    #[test]
    fn the_footer_arithmetic() {
        let p = "x.parquet";
        // Metadata filling everything but the footer is fine; one more is not.
        assert!(check_footer(p, &file(4, 0)[..], 16).is_ok());
        assert!(check_footer(p, &file(9, 0)[..], 16).is_err());
        // Not Parquet, or too short to tell: the reader's business.
        assert!(check_footer(p, b"hello, world", 12).is_ok());
        assert!(check_footer(p, b"PAR1", 4).is_ok());
        let mut encrypted = file(1000, 0);
        encrypted[8..].copy_from_slice(b"PARE");
        assert!(check_footer(p, &encrypted, 16).is_err());
    }
}
