//! What a reader of a directory sees: its committed files, not the others.
//!
//! Two conventions, applied to every listing through Kiln's stores (a
//! table over a directory or prefix, schema inference, partition discovery):
//!
//! - **Hidden paths.** A file or directory below the listed prefix whose
//!   name starts with `_` or `.` is not data: `_SUCCESS` markers, Spark's
//!   `_temporary/`, Hadoop's `.crc` files, Kiln's own staging siblings
//!   (`.kiln-staging-...`). Hadoop's input formats, Spark and pyarrow's
//!   datasets skip them the same way.
//! - **Kiln's commit manifest.** A directory Kiln wrote (`COPY ... TO`,
//!   [`Manifest`]) holds a `_SUCCESS` file naming the files of its last
//!   commit, written after they are in place and before the files of the
//!   commit before it are deleted. A listing of that directory shows only the
//!   files the manifest names: on an object store, where a commit moves files
//!   one by one, a reader never sees a mix of two commits. A `_SUCCESS`
//!   from another writer (Spark's empty marker, the S3A committers' JSON) is
//!   only hidden.
//!
//! The cost is one read of `<prefix>/_SUCCESS` per listing (an error
//! answer, where there is none).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The marker and manifest of a committed directory.
pub const SUCCESS: &str = "_SUCCESS";

/// The manifest Kiln writes into `_SUCCESS` when it commits a directory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Always `kiln`: a manifest of another committer is not followed.
    pub committer: String,
    pub format_version: u32,
    /// Unix time of the commit, in seconds.
    pub committed_at: f64,
    /// Rows written.
    pub rows: u64,
    /// The files of the commit, relative to the directory.
    pub files: Vec<ManifestFile>,
    /// The job steps that wrote it, when a job did: the `COPY` that made
    /// it, then any `INSERT INTO` that added to it (what `--resume` checks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_steps: Vec<JobMark>,
}

/// Which job step wrote a commit: the job's fingerprint (its statements and
/// the versions of the files it reads) and the step's number.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobMark {
    pub fingerprint: String,
    pub step: usize,
}

/// One file of a commit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
}

impl Manifest {
    pub const COMMITTER: &'static str = "kiln";

    pub fn new(rows: u64, files: Vec<ManifestFile>) -> Self {
        let committed_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Manifest {
            committer: Self::COMMITTER.to_string(),
            format_version: 1,
            committed_at,
            rows,
            files,
            job_steps: Vec::new(),
        }
    }

    /// A manifest Kiln wrote, from the bytes of a `_SUCCESS` file; `None`
    /// for anything else (empty, another committer's, not JSON).
    pub fn parse(bytes: &[u8]) -> Option<Manifest> {
        serde_json::from_slice::<Manifest>(bytes)
            .ok()
            .filter(|m| m.committer == Self::COMMITTER)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The manifest of the directory `dir` in `store`, if Kiln wrote one.
    pub async fn read(store: &dyn ObjectStore, dir: &Path) -> Option<Manifest> {
        let bytes = store
            .get(&dir.clone().join(SUCCESS))
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        Manifest::parse(&bytes)
    }
}

/// `location` relative to the directory `prefix` ("k=1/part-0.parquet"),
/// as a manifest names files; `None` when it is not under it.
pub fn relative_path(prefix: &Path, location: &Path) -> Option<String> {
    let parts: Vec<String> = location
        .prefix_match(prefix)?
        .map(|p| p.as_ref().to_string())
        .collect();
    Some(parts.join("/"))
}

/// Whether `location`, listed under `prefix`, is hidden: a segment below
/// the prefix starts with `_` or `.`.
pub fn is_hidden(prefix: Option<&Path>, location: &Path) -> bool {
    let below: Vec<_> = match prefix {
        Some(prefix) => match location.prefix_match(prefix) {
            Some(parts) => parts.collect(),
            None => return false,
        },
        None => location.parts().collect(),
    };
    below.iter().any(|part| {
        let name = part.as_ref();
        // A Hive partition directory may name a column starting with `_`
        // (`_source=web/`): as Spark, a segment with `=` is not hidden.
        name.starts_with('.') || (name.starts_with('_') && !name.contains('='))
    })
}

/// The listing filter for `prefix`: hidden paths out, and with a Kiln
/// manifest, every file it does not name.
#[derive(Clone)]
struct Visible {
    prefix: Option<Path>,
    committed: Option<Arc<HashSet<String>>>,
}

impl Visible {
    async fn of(store: &dyn ObjectStore, prefix: Option<&Path>) -> Self {
        let committed = match prefix {
            Some(dir) => Manifest::read(store, dir)
                .await
                .map(|m| Arc::new(m.files.into_iter().map(|f| f.path).collect::<HashSet<_>>())),
            None => None,
        };
        Visible {
            prefix: prefix.cloned(),
            committed,
        }
    }

    fn shows(&self, location: &Path) -> bool {
        match (&self.committed, &self.prefix) {
            // What the manifest names is data, whatever its name.
            (Some(files), Some(prefix)) => {
                relative_path(prefix, location).is_some_and(|r| files.contains(&r))
            }
            _ => !is_hidden(self.prefix.as_ref(), location),
        }
    }
}

/// An [`ObjectStore`] whose listings show committed data only (see the
/// module's doc); reads, writes and everything else pass through.
#[derive(Debug)]
pub struct CommittedListingStore {
    inner: Arc<dyn ObjectStore>,
}

impl CommittedListingStore {
    /// `inner` behind the filter; a store already behind it as it is.
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
        if inner.to_string().starts_with("CommittedListing(") {
            return inner;
        }
        Arc::new(CommittedListingStore { inner })
    }
}

impl fmt::Display for CommittedListingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommittedListing({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CommittedListingStore {
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
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let visible = Visible::of(inner.as_ref(), prefix.as_ref()).await;
            inner
                .list(prefix.as_ref())
                .try_filter(move |meta| futures::future::ready(visible.shows(&meta.location)))
        })
        .flatten()
        .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = Arc::clone(&self.inner);
        let prefix = prefix.cloned();
        let offset = offset.clone();
        futures::stream::once(async move {
            let visible = Visible::of(inner.as_ref(), prefix.as_ref()).await;
            inner
                .list_with_offset(prefix.as_ref(), &offset)
                .try_filter(move |meta| futures::future::ready(visible.shows(&meta.location)))
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let visible = Visible::of(self.inner.as_ref(), prefix).await;
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects.retain(|meta| visible.shows(&meta.location));
        listed.common_prefixes.retain(|dir| !is_hidden(prefix, dir));
        Ok(listed)
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

    async fn listed(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = store
            .list(Some(&Path::from(prefix)))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        names.sort();
        names
    }

    #[tokio::test]
    async fn hides_markers_and_follows_a_kiln_manifest_only() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        for path in [
            "t/a.parquet",
            "t/b.parquet",
            "t/.a.parquet.crc",
            "t/_temporary/0/x.parquet",
            "t/k=1/c.parquet",
            "t/_src=web/e.parquet",
            "_root/t2/d.parquet",
        ] {
            inner.put(&Path::from(path), "x".into()).await.unwrap();
        }
        let store = CommittedListingStore::wrap(Arc::clone(&inner));
        // Spark's empty marker: hidden, nothing else changes.
        inner
            .put(&Path::from("t/_SUCCESS"), "".into())
            .await
            .unwrap();
        assert_eq!(
            listed(store.as_ref(), "t").await,
            [
                "t/_src=web/e.parquet",
                "t/a.parquet",
                "t/b.parquet",
                "t/k=1/c.parquet"
            ]
        );
        // A hidden segment above the listed prefix does not hide.
        assert_eq!(
            listed(store.as_ref(), "_root/t2").await,
            ["_root/t2/d.parquet"]
        );
        // Kiln's manifest: only what it names.
        let manifest = Manifest::new(
            3,
            vec![
                ManifestFile {
                    path: "b.parquet".into(),
                    bytes: 1,
                },
                ManifestFile {
                    path: "k=1/c.parquet".into(),
                    bytes: 1,
                },
            ],
        );
        inner
            .put(&Path::from("t/_SUCCESS"), manifest.to_json().into())
            .await
            .unwrap();
        assert_eq!(
            listed(store.as_ref(), "t").await,
            ["t/b.parquet", "t/k=1/c.parquet"]
        );
        let by_dir = store
            .list_with_delimiter(Some(&Path::from("t")))
            .await
            .unwrap();
        let objects: Vec<_> = by_dir
            .objects
            .iter()
            .map(|m| m.location.to_string())
            .collect();
        assert_eq!(objects, ["t/b.parquet"]);
        let dirs: Vec<_> = by_dir
            .common_prefixes
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(dirs, ["t/_src=web", "t/k=1"]);
        // Another committer's JSON is not followed.
        inner
            .put(
                &Path::from("t/_SUCCESS"),
                r#"{"committer": "magic", "filenames": ["/t/a.parquet"]}"#.into(),
            )
            .await
            .unwrap();
        assert_eq!(listed(store.as_ref(), "t").await.len(), 4);
    }
}
