//! Delta Lake tables (issue 16, §2), through delta-rs (`deltalake` 1.1).
//!
//! - **Write**: `COPY (query) TO 'loc' STORED AS DELTA [PARTITIONED BY (c)]
//!   [OPTIONS ('mode' 'overwrite'|'append', 'schema_mode' 'merge')]`.
//!   The query runs on Kiln's plan (its devices, its stores); delta-rs
//!   writes the files and commits them as one new version of the table's
//!   log. `overwrite` (the default, as a Parquet `COPY` replaces its target)
//!   replaces the rows and may change the schema; `append` adds rows of the
//!   table's schema (`'schema_mode' 'merge'` adds new columns). A table is
//!   created by its first write. `INSERT INTO` a Delta table appends.
//! - **Read**: `FROM 'loc'` (a directory with a `_delta_log/`), `CREATE
//!   EXTERNAL TABLE t STORED AS DELTA LOCATION 'loc'`.
//! - **Time travel**: `FROM 'loc@v3'` (version 3) or `FROM
//!   'loc@20261201103000000'` (the version current at that UTC time, as
//!   `yyyyMMddHHmmssSSS`; an RFC 3339 time works too), the forms Delta
//!   gives Spark SQL; `CREATE EXTERNAL TABLE ... OPTIONS ('version' '3')` or
//!   `('timestamp' '2026-12-01T10:30:00Z')` pins a table.
//!
//! Commits are atomic by the log: a version's JSON file is written with a
//! conditional put (`PutMode::Create`: `If-None-Match: *` on S3, which AWS
//! S3 honours since 2024; an exclusive create on a local disk), so two
//! writers never both commit a version and a reader sees a version whole or
//! not at all. Files written by a write that dies before its commit are in
//! no version: no reader sees them (`VACUUM` in other engines removes them).
//! Kiln gives delta-rs its own object stores (the session's credentials and
//! endpoints), so S3 needs no locking provider and no DynamoDB; a store with
//! conditional puts turned off (`aws.conditional_put` = `disabled`) cannot
//! commit, and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use chrono::{DateTime, NaiveDateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session as CatalogSession, TableProvider, TableProviderFactory};
use datafusion::common::DataFusionError;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionState;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::{CreateExternalTable, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{DataFrame, SessionContext};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::logstore::{LogStoreFactory, ObjectStoreRef, StorageConfig, default_logstore};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::StreamExt;
use kiln_engine::io::KilnObjectStoreRegistry;
use kiln_engine::io::committed::JobMark;
use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use crate::error::{KilnError, Result};

/// `STORED AS DELTA`.
pub(crate) const FORMAT: &str = "delta";

/// The log directory that makes a directory a Delta table.
const LOG_DIR: &str = "_delta_log";

/// Put in the log directory of a table whose first write has not yet
/// committed (Delta readers skip a name that is no log entry).
const PENDING: &str = ".kiln-first-write-pending";

/// The table's log directory in its store.
fn log_path(url: &Url) -> Result<Path> {
    Ok(Path::from_url_path(url.path())
        .map_err(|e| KilnError::Internal(format!("{url}: {e}")))?
        .join(LOG_DIR))
}

/// `STORED AS DELTA` in a `COPY`: DataFusion plans a `COPY` by its
/// format's name; Kiln runs a Delta `COPY` itself ([`copy`]), so the format
/// is never asked to write.
#[derive(Debug, Default)]
pub(crate) struct DeltaFormat;

impl datafusion::common::GetExt for DeltaFormat {
    fn get_ext(&self) -> String {
        FORMAT.to_string()
    }
}

impl datafusion::datasource::file_format::FileFormatFactory for DeltaFormat {
    fn create(
        &self,
        _: &dyn CatalogSession,
        _: &std::collections::HashMap<String, String>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::datasource::file_format::FileFormat>> {
        Ok(Arc::new(DeltaFileFormat::default()))
    }

    /// A Delta table's data files are Parquet.
    fn default(&self) -> Arc<dyn datafusion::datasource::file_format::FileFormat> {
        Arc::new(datafusion::datasource::file_format::parquet::ParquetFormat::default())
    }
}

/// The format DataFusion asks for when it plans a Delta `COPY`'s physical
/// plan, which happens only for `EXPLAIN` (Kiln runs the `COPY` itself):
/// its writer is a [`DeltaSink`] over the input's plan, so that `EXPLAIN`
/// shows the plan that will run; reading goes through Parquet, a Delta
/// table's data files.
#[derive(Debug, Default)]
struct DeltaFileFormat {
    parquet: datafusion::datasource::file_format::parquet::ParquetFormat,
}

#[async_trait::async_trait]
impl datafusion::datasource::file_format::FileFormat for DeltaFileFormat {
    fn get_ext(&self) -> String {
        FORMAT.to_string()
    }

    fn get_ext_with_compression(
        &self,
        compression: &datafusion::datasource::file_format::file_compression_type::FileCompressionType,
    ) -> datafusion::error::Result<String> {
        self.parquet.get_ext_with_compression(compression)
    }

    fn compression_type(
        &self,
    ) -> Option<datafusion::datasource::file_format::file_compression_type::FileCompressionType>
    {
        self.parquet.compression_type()
    }

    async fn infer_schema(
        &self,
        state: &dyn CatalogSession,
        store: &Arc<dyn object_store::ObjectStore>,
        objects: &[object_store::ObjectMeta],
    ) -> datafusion::error::Result<datafusion::arrow::datatypes::SchemaRef> {
        self.parquet.infer_schema(state, store, objects).await
    }

    async fn infer_stats(
        &self,
        state: &dyn CatalogSession,
        store: &Arc<dyn object_store::ObjectStore>,
        table_schema: datafusion::arrow::datatypes::SchemaRef,
        object: &object_store::ObjectMeta,
    ) -> datafusion::error::Result<datafusion::common::Statistics> {
        self.parquet
            .infer_stats(state, store, table_schema, object)
            .await
    }

    async fn create_physical_plan(
        &self,
        state: &dyn CatalogSession,
        conf: datafusion::datasource::physical_plan::FileScanConfig,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        self.parquet.create_physical_plan(state, conf).await
    }

    async fn create_writer_physical_plan(
        &self,
        input: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        _: &dyn CatalogSession,
        conf: datafusion::datasource::physical_plan::FileSinkConfig,
        order: Option<datafusion::physical_expr::LexRequirement>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let sink = DeltaSink {
            location: conf.original_url.clone(),
            schema: Arc::clone(conf.output_schema()),
        };
        Ok(Arc::new(datafusion::datasource::sink::DataSinkExec::new(
            input,
            Arc::new(sink),
            order,
        )))
    }

    fn file_source(
        &self,
        table_schema: datafusion::datasource::table_schema::TableSchema,
    ) -> Arc<dyn datafusion::datasource::physical_plan::FileSource> {
        self.parquet.file_source(table_schema)
    }
}

/// The writer `EXPLAIN` shows for a Delta `COPY`: Kiln runs the `COPY`
/// through delta-rs ([`copy`]), never through this sink, which refuses to
/// write.
#[derive(Debug)]
struct DeltaSink {
    location: String,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl datafusion::physical_plan::DisplayAs for DeltaSink {
    fn fmt_as(
        &self,
        _: datafusion::physical_plan::DisplayFormatType,
        f: &mut std::fmt::Formatter,
    ) -> std::fmt::Result {
        write!(f, "DeltaSink(location={}, writer=delta-rs)", self.location)
    }
}

#[async_trait::async_trait]
impl datafusion::datasource::sink::DataSink for DeltaSink {
    fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        _: datafusion::execution::SendableRecordBatchStream,
        _: &Arc<datafusion::execution::TaskContext>,
    ) -> datafusion::error::Result<u64> {
        Err(DataFusionError::NotImplemented(
            "Delta tables are written by COPY ... STORED AS DELTA or INSERT INTO run in a \
             Kiln session (EXPLAIN ANALYZE does not write them)"
                .into(),
        ))
    }
}

/// Which version of a table to read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AsOf {
    Latest,
    Version(u64),
    Timestamp(DateTime<Utc>),
}

/// Whether a `COPY` writes Delta.
pub(crate) fn is_delta_copy(copy: &CopyTo) -> bool {
    copy.file_type.get_ext().eq_ignore_ascii_case(FORMAT)
}

/// delta-rs finds a log store by the URL's scheme; it knows `file://` and
/// `memory://`. Kiln hands it its own stores, so every other scheme gets
/// delta-rs's default log store (commits by conditional put) over them.
fn register_log_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[derive(Debug)]
        struct OverKilnStores;
        impl LogStoreFactory for OverKilnStores {
            fn with_options(
                &self,
                prefixed_store: ObjectStoreRef,
                root_store: ObjectStoreRef,
                location: &Url,
                options: &StorageConfig,
            ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
                Ok(default_logstore(
                    prefixed_store,
                    root_store,
                    location,
                    options,
                ))
            }
        }
        let factories = deltalake::logstore::logstore_factories();
        for scheme in [
            "s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl", "http", "https",
        ] {
            if let Ok(url) = Url::parse(&format!("{scheme}://")) {
                factories.insert(url, Arc::new(OverKilnStores));
            }
        }
    });
}

/// The table's URL, as a directory (`.../t/`).
fn table_url(location: &str) -> Result<Url> {
    let url = ListingTableUrl::parse(location)?;
    let mut url: Url = AsRef::<Url>::as_ref(&url).clone();
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The store of `url` as Kiln configured it (credentials, endpoint),
/// with nothing hidden from its listings (the log is under `_delta_log/`).
fn store_of(registry: &KilnObjectStoreRegistry, url: &Url) -> Result<Arc<dyn ObjectStore>> {
    Ok(registry.unfiltered_store(url)?)
}

fn table_builder(registry: &KilnObjectStoreRegistry, url: &Url) -> Result<DeltaTableBuilder> {
    register_log_stores();
    let store = store_of(registry, url)?;
    let delta = |source| KilnError::Delta {
        location: url.to_string(),
        source,
    };
    Ok(DeltaTableBuilder::from_url(url.clone())
        .map_err(delta)?
        .with_storage_backend(store, url.clone()))
}

/// Whether `location` is a Delta table (a directory with a log).
pub(crate) async fn is_table(registry: &KilnObjectStoreRegistry, location: &str) -> bool {
    let Ok(url) = table_url(location) else {
        return false;
    };
    let Ok(store) = store_of(registry, &url) else {
        return false;
    };
    let Ok(log) = log_path(&url) else {
        return false;
    };
    matches!(store.list(Some(&log)).next().await, Some(Ok(_)))
}

/// Opens the table at `location` as of `as_of`.
pub(crate) async fn open(
    registry: &KilnObjectStoreRegistry,
    location: &str,
    as_of: AsOf,
) -> Result<DeltaTable> {
    let url = table_url(location)?;
    let builder = table_builder(registry, &url)?;
    let builder = match as_of {
        AsOf::Latest => builder,
        AsOf::Version(v) => builder.with_version(v),
        AsOf::Timestamp(t) => builder.with_timestamp(t),
    };
    let table = match builder.load().await {
        Ok(table) => table,
        Err(source) => {
            // A version past the newest: say which versions there are.
            if let AsOf::Version(v) = as_of
                && let Ok(latest) = table_builder(registry, &url)?.load().await
                && let Some(newest) = latest.version()
                && v > newest
            {
                return Err(KilnError::Usage(format!(
                    "{location}: the Delta table has no version {v} (its newest is {newest})"
                )));
            }
            return Err(KilnError::Delta {
                location: location.to_string(),
                source,
            });
        }
    };
    // delta-rs reads a time before the first commit as the first version:
    // a point-in-time read must not see rows from after its time.
    if let (AsOf::Timestamp(t), Some(version)) = (as_of, table.version()) {
        let commit = read_commit(registry, location, version).await?;
        if let Some(committed) = commit.timestamp
            && committed > t.timestamp_millis()
        {
            let when = DateTime::<Utc>::from_timestamp_millis(committed)
                .map(|c| c.to_rfc3339())
                .unwrap_or_else(|| committed.to_string());
            return Err(KilnError::Usage(format!(
                "{location}: no version of the Delta table existed at {}: its first \
                 readable version ({version}) was committed at {when}",
                t.to_rfc3339()
            )));
        }
    }
    Ok(table)
}

/// A DataFusion table over `table`, read with `state`'s settings.
pub(crate) async fn provider(
    table: &DeltaTable,
    state: Option<&SessionState>,
) -> datafusion::error::Result<Arc<dyn TableProvider>> {
    let builder = table.table_provider();
    match state {
        Some(state) => builder.with_session(Arc::new(state.clone())).await,
        None => builder.await,
    }
}

/// A Delta table as Kiln's sessions see it. A table created in a session
/// (`CREATE EXTERNAL TABLE`) reads its newest version again at every scan
/// (it sees the commits made since, its own `INSERT`s included); a table
/// named by location in a query is opened for that query and read as
/// opened; a pinned version (`@v3`, `OPTIONS ('version' ...)`) stays that
/// version. Its location lets Kiln write it
/// through [`insert`] (a job's mark in the commit).
#[derive(Debug)]
pub(crate) struct DeltaProvider {
    pub(crate) location: String,
    /// Read the newest version at each scan (a session's table).
    follows: bool,
    registry: Arc<KilnObjectStoreRegistry>,
    /// The table as opened: its schema, and the scan of a pinned version.
    opened: Arc<dyn TableProvider>,
}

impl DeltaProvider {
    async fn open(
        registry: Arc<KilnObjectStoreRegistry>,
        location: &str,
        as_of: AsOf,
        state: Option<&SessionState>,
        follows: bool,
    ) -> datafusion::error::Result<DeltaProvider> {
        let table = open(&registry, location, as_of)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(DeltaProvider {
            location: location.to_string(),
            follows: follows && as_of == AsOf::Latest,
            opened: provider(&table, state).await?,
            registry,
        })
    }

    /// The provider a scan reads: the newest version, or the pinned one.
    async fn current(
        &self,
        state: &dyn CatalogSession,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        if !self.follows {
            return Ok(Arc::clone(&self.opened));
        }
        let table = open(&self.registry, &self.location, AsOf::Latest)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let newest = provider(&table, state.as_any().downcast_ref::<SessionState>()).await?;
        if newest.schema() != self.opened.schema() {
            return Err(DataFusionError::Plan(format!(
                "{}: the Delta table's schema changed since the table was named in this \
                 session (an overwrite with other columns); create the table again",
                self.location
            )));
        }
        Ok(newest)
    }
}

#[async_trait::async_trait]
impl TableProvider for DeltaProvider {
    fn schema(&self) -> SchemaRef {
        self.opened.schema()
    }

    fn table_type(&self) -> datafusion::logical_expr::TableType {
        self.opened.table_type()
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.current(state)
            .await?
            .scan(state, projection, filters, limit)
            .await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::prelude::Expr],
    ) -> datafusion::error::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.opened.supports_filters_pushdown(filters)
    }

    /// Outside Kiln's `INSERT` (which commits through [`insert`]): delta-rs's
    /// own sink.
    async fn insert_into(
        &self,
        state: &dyn CatalogSession,
        input: Arc<dyn ExecutionPlan>,
        op: datafusion::logical_expr::dml::InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.current(state)
            .await?
            .insert_into(state, input, op)
            .await
    }
}

/// `loc@v3`, `loc@20261201103000000`, `loc@2026-12-01T10:30:00Z`: the
/// location and the version asked for; `None` when the name carries no
/// such suffix (an `@` elsewhere is part of the name).
pub(crate) fn split_as_of(name: &str) -> Option<(&str, AsOf)> {
    let (base, suffix) = name.rsplit_once('@')?;
    if base.is_empty() {
        return None;
    }
    let suffix = suffix.trim_end_matches('/');
    if let Some(v) = suffix
        .strip_prefix('v')
        .or_else(|| suffix.strip_prefix('V'))
        && !v.is_empty()
        && v.bytes().all(|b| b.is_ascii_digit())
    {
        return v.parse().ok().map(|v| (base, AsOf::Version(v)));
    }
    parse_time(suffix).map(|t| (base, AsOf::Timestamp(t)))
}

/// A point in time: `yyyyMMddHHmmssSSS` (UTC, Delta's form in a table
/// name), RFC 3339, or `yyyy-MM-dd HH:mm:ss[.fff]` (UTC).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if text.len() == 17 && text.bytes().all(|b| b.is_ascii_digit()) {
        return NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%S%3f")
            .ok()
            .map(|t| t.and_utc());
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]
        .iter()
        .find_map(|f| {
            NaiveDateTime::parse_from_str(text, f).ok().or_else(|| {
                chrono::NaiveDate::parse_from_str(text, f)
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
            })
        })
        .map(|t| t.and_utc())
}

/// The registry Kiln keeps in a session's config (see
/// [`crate::Session`]'s builder).
pub(crate) fn registry_of(state: &dyn CatalogSession) -> Option<Arc<KilnObjectStoreRegistry>> {
    state.config().get_extension::<KilnObjectStoreRegistry>()
}

/// `FROM '<location>'` when the location is a Delta table (or names a
/// version of one): its provider; `None` for anything else.
pub(crate) async fn url_table(
    state: &SessionState,
    name: &str,
) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
    let Some(registry) = registry_of(state) else {
        return Ok(None);
    };
    let last = name
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(name);
    let file = last.rsplit_once('.').is_some_and(|(_, e)| {
        ["parquet", "csv", "json", "ndjson", "avro", "arrow"]
            .contains(&e.to_ascii_lowercase().as_str())
    });
    if file && !name.contains('@') {
        return Ok(None);
    }
    let (location, as_of) = match split_as_of(name) {
        Some((base, as_of)) if is_table(&registry, base).await => (base, as_of),
        Some((base, _)) if !is_table(&registry, name).await => {
            return Err(DataFusionError::Plan(format!(
                "{name}: '@' names a version of a Delta table, and {base} is not one \
                 (no {LOG_DIR}/ in it)"
            )));
        }
        _ if is_table(&registry, name).await => (name, AsOf::Latest),
        _ => return Ok(None),
    };
    // Opened for this query: no need to look again at its scan.
    let table = DeltaProvider::open(registry, location, as_of, Some(state), false).await?;
    Ok(Some(Arc::new(table)))
}

/// `CREATE EXTERNAL TABLE ... STORED AS DELTA LOCATION '...'` (also
/// `DELTATABLE`, delta-rs's name).
#[derive(Debug, Default)]
pub(crate) struct DeltaTables;

#[async_trait::async_trait]
impl TableProviderFactory for DeltaTables {
    async fn create(
        &self,
        state: &dyn CatalogSession,
        cmd: &CreateExternalTable,
    ) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let plan_err = |m: String| DataFusionError::Plan(format!("{}: {m}", cmd.name));
        let [location] = cmd.locations.as_slice() else {
            return Err(plan_err("a Delta table has one LOCATION".into()));
        };
        if !cmd.schema.fields().is_empty() || !cmd.table_partition_cols.is_empty() {
            return Err(plan_err(
                "a Delta table's columns and partitions come from its log; \
                 leave out the column list and PARTITIONED BY"
                    .into(),
            ));
        }
        let mut as_of = AsOf::Latest;
        for (key, value) in &cmd.options {
            let key = key.strip_prefix("format.").unwrap_or(key);
            as_of = match key {
                "version" => AsOf::Version(value.trim().parse().map_err(|_| {
                    plan_err(format!("'version' must be a version number, got '{value}'"))
                })?),
                "timestamp" => AsOf::Timestamp(parse_time(value.trim()).ok_or_else(|| {
                    plan_err(format!(
                        "'timestamp' must be a time (2026-12-01T10:30:00Z), got '{value}'"
                    ))
                })?),
                other => {
                    return Err(plan_err(format!(
                        "unknown option '{other}' for a Delta table (known: version, timestamp)"
                    )));
                }
            };
        }
        let registry = registry_of(state)
            .ok_or_else(|| plan_err("Delta tables need a Kiln session".into()))?;
        let state = state.as_any().downcast_ref::<SessionState>();
        let table = DeltaProvider::open(registry, location, as_of, state, true).await?;
        Ok(Arc::new(table))
    }
}

/// What a `COPY ... STORED AS DELTA` asks for.
struct WriteOptions {
    mode: SaveMode,
    schema_mode: Option<SchemaMode>,
}

impl WriteOptions {
    fn from_copy(copy: &CopyTo) -> Result<WriteOptions> {
        let mut mode = SaveMode::Overwrite;
        let mut merge = false;
        for (key, value) in &copy.options {
            let key = key.strip_prefix("format.").unwrap_or(key);
            let value = value.trim().to_ascii_lowercase();
            match (key, value.as_str()) {
                ("mode", "overwrite") => mode = SaveMode::Overwrite,
                ("mode", "append") => mode = SaveMode::Append,
                ("mode", "error" | "errorifexists") => mode = SaveMode::ErrorIfExists,
                ("mode", "ignore") => mode = SaveMode::Ignore,
                ("mode", _) => {
                    return Err(KilnError::Usage(format!(
                        "COPY ... STORED AS DELTA: 'mode' is overwrite, append, error or ignore, \
                         not '{value}'"
                    )));
                }
                ("schema_mode", "merge") => merge = true,
                ("schema_mode", "strict") => merge = false,
                ("schema_mode", _) => {
                    return Err(KilnError::Usage(format!(
                        "COPY ... STORED AS DELTA: 'schema_mode' is merge or strict, not '{value}'"
                    )));
                }
                _ => {
                    return Err(KilnError::Usage(format!(
                        "COPY ... STORED AS DELTA: unknown option '{key}' (known: mode, schema_mode)"
                    )));
                }
            }
        }
        let schema_mode = match mode {
            // A COPY replaces its target, schema included.
            SaveMode::Overwrite if !merge => Some(SchemaMode::Overwrite),
            _ if merge => Some(SchemaMode::Merge),
            _ => None,
        };
        Ok(WriteOptions { mode, schema_mode })
    }
}

/// The job step a commit belongs to, as recorded in its `commitInfo`.
const JOB_KEY: &str = "kiln.job";
const STEP_KEY: &str = "kiln.step";

/// Writes a `COPY ... STORED AS DELTA` (see the module's doc). `mark`:
/// the job step it is, recorded in the commit (`--resume`), with a Delta
/// `txn` action (application `kiln-job-<fingerprint>`, version = step).
pub(crate) async fn copy(
    ctx: &SessionContext,
    registry: &KilnObjectStoreRegistry,
    copy: CopyTo,
    input: LogicalPlan,
    mark: Option<JobMark>,
) -> Result<(u64, Arc<dyn ExecutionPlan>)> {
    let target = Target {
        options: WriteOptions::from_copy(&copy)?,
        location: copy.output_url.clone(),
        partition_by: copy.partition_by.clone(),
    };
    write_to(ctx, registry, target, input, mark).await
}

/// `INSERT INTO` (`INSERT OVERWRITE`) a Delta table: one commit of its
/// rows, with the job step's mark, as a `COPY ... OPTIONS ('mode'
/// 'append')` (`'overwrite'`, keeping the schema).
pub(crate) async fn insert(
    ctx: &SessionContext,
    registry: &KilnObjectStoreRegistry,
    location: &str,
    overwrite: bool,
    input: LogicalPlan,
    mark: Option<JobMark>,
) -> Result<(u64, Arc<dyn ExecutionPlan>)> {
    let target = Target {
        options: WriteOptions {
            mode: if overwrite {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            },
            schema_mode: None,
        },
        location: location.to_string(),
        partition_by: Vec::new(),
    };
    write_to(ctx, registry, target, input, mark).await
}

/// Where and how a write goes.
struct Target {
    location: String,
    options: WriteOptions,
    partition_by: Vec<String>,
}

async fn write_to(
    ctx: &SessionContext,
    registry: &KilnObjectStoreRegistry,
    target: Target,
    input: LogicalPlan,
    mark: Option<JobMark>,
) -> Result<(u64, Arc<dyn ExecutionPlan>)> {
    let location = target.location.clone();
    let url = table_url(&location)?;
    // The log reader wants a local table's directory to exist; one made
    // here goes again if the write fails (nothing of the user's is in it).
    let made_dir = match url.scheme() {
        "file" => match url.to_file_path() {
            Ok(path) if !path.exists() => {
                std::fs::create_dir_all(&path).map_err(|source| KilnError::File {
                    path: location.clone(),
                    source,
                })?;
                Some(path)
            }
            _ => None,
        },
        _ => None,
    };
    let written = write(ctx, registry, &target, input, mark, &url).await;
    if written.is_err()
        && let Some(path) = made_dir
    {
        let _ = std::fs::remove_dir_all(path);
    }
    written
}

async fn write(
    ctx: &SessionContext,
    registry: &KilnObjectStoreRegistry,
    target: &Target,
    input: LogicalPlan,
    mark: Option<JobMark>,
    url: &Url,
) -> Result<(u64, Arc<dyn ExecutionPlan>)> {
    let options = &target.options;
    let location = target.location.clone();
    let delta = |source| KilnError::Delta {
        location: location.clone(),
        source,
    };
    if !target.partition_by.is_empty()
        && input
            .schema()
            .fields()
            .iter()
            .all(|f| target.partition_by.contains(f.name()))
    {
        return Err(KilnError::Usage(format!(
            "{location}: PARTITIONED BY names every column; a Delta table keeps at least one \
             column in its data files"
        )));
    }
    let mut table = table_builder(registry, url)?.build().map_err(delta)?;
    let pending = match table.load().await {
        Ok(()) => None,
        Err(DeltaTableError::NotATable(_)) => {
            // A first write: until its commit the directory holds data
            // files and no log, which a Parquet reader would take for the
            // table. The marker makes it a Delta table with no version.
            let store = store_of(registry, url)?;
            let marker = log_path(url)?.join(PENDING);
            object_store::ObjectStoreExt::put(store.as_ref(), &marker, Vec::new().into())
                .await
                .map_err(|source| KilnError::ObjectStore {
                    location: marker.to_string(),
                    source,
                })?;
            Some((store, marker))
        }
        Err(e) => return Err(delta(e)),
    };
    let frame = DataFrame::new(ctx.state(), input);
    let plan = frame.create_physical_plan().await?;
    let source = KilnInput::new(Arc::clone(&plan), ctx.task_ctx(), mark.clone());
    let rows = Arc::clone(&source.rows);
    let schema = plan.schema();
    let partitions: Vec<Arc<dyn PartitionStream>> = (0..source.partitions)
        .map(|i| Arc::new(KilnPartition(Arc::clone(&source), i)) as _)
        .collect();
    let scan = StreamingTable::try_new(schema, partitions)?;
    let input = LogicalPlanBuilder::scan("kiln_input", provider_as_source(Arc::new(scan)), None)?
        .build()?;
    let mut properties = CommitProperties::default();
    if let Some(mark) = &mark {
        properties = properties
            .with_metadata([
                (JOB_KEY.to_string(), mark.fingerprint.clone().into()),
                (STEP_KEY.to_string(), (mark.step as u64).into()),
            ])
            .with_application_transaction(Transaction::new(
                format!("kiln-job-{}", mark.fingerprint),
                mark.step as i64,
            ));
    }
    let mut write = table
        .write(Vec::new())
        .with_input_plan(input)
        .with_save_mode(options.mode)
        .with_commit_properties(properties);
    if let Some(schema_mode) = options.schema_mode {
        write = write.with_schema_mode(schema_mode);
    }
    if !target.partition_by.is_empty() {
        write = write.with_partition_columns(target.partition_by.clone());
    }
    write.await.map_err(delta)?;
    if let Some((store, marker)) = pending {
        // Committed: the marker has done its work (a failure to delete it
        // leaves a file every Delta reader ignores).
        let _ = object_store::ObjectStoreExt::delete(store.as_ref(), &marker).await;
    }
    Ok((rows.load(Ordering::Relaxed), plan))
}

/// Kiln's physical plan as delta-rs's input: each partition runs in
/// Kiln's task context (its stores, memory pool and settings), whatever
/// context delta-rs's own session passes.
#[derive(Debug)]
struct KilnInput {
    plan: Arc<dyn ExecutionPlan>,
    schema: SchemaRef,
    task: Arc<TaskContext>,
    partitions: usize,
    rows: Arc<AtomicU64>,
    finished: AtomicUsize,
    mark: Option<JobMark>,
}

impl KilnInput {
    fn new(
        plan: Arc<dyn ExecutionPlan>,
        task: Arc<TaskContext>,
        mark: Option<JobMark>,
    ) -> Arc<Self> {
        let partitions = plan.properties().output_partitioning().partition_count();
        Arc::new(KilnInput {
            schema: plan.schema(),
            plan,
            task,
            partitions,
            rows: Arc::new(AtomicU64::new(0)),
            finished: AtomicUsize::new(0),
            mark,
        })
    }
}

#[derive(Debug)]
struct KilnPartition(Arc<KilnInput>, usize);

impl PartitionStream for KilnPartition {
    fn schema(&self) -> &SchemaRef {
        &self.0.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let input = Arc::clone(&self.0);
        let schema = Arc::clone(&input.schema);
        let stream = match input.plan.execute(self.1, Arc::clone(&input.task)) {
            Ok(stream) => stream,
            Err(e) => {
                return Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::once(async move { Err(e) }),
                ));
            }
        };
        let counted = stream
            .map(move |batch| {
                if let Ok(b) = &batch {
                    input.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                }
                batch
            })
            .chain(futures::stream::poll_fn({
                let input = Arc::clone(&self.0);
                move |_| {
                    // The last partition's end: every row is with the
                    // writer, nothing committed yet.
                    let done = input.finished.fetch_add(1, Ordering::Relaxed) + 1;
                    if done == input.partitions
                        && let Some(mark) = &input.mark
                    {
                        crate::fault::kill_at("kill-before-commit", mark.step);
                    }
                    std::task::Poll::Ready(None)
                }
            }));
        Box::pin(RecordBatchStreamAdapter::new(schema, counted))
    }
}

/// A commit of a Delta table, as the job report and `--resume` read it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Commit {
    pub version: u64,
    /// Milliseconds since the epoch (`commitInfo.timestamp`).
    pub timestamp: Option<i64>,
    pub rows: Option<u64>,
    pub files: u64,
    pub bytes: u64,
    pub job: Option<JobMark>,
}

/// The newest commit of the Delta table at `location`; `None` when no
/// table is there.
pub(crate) async fn last_commit(
    registry: &KilnObjectStoreRegistry,
    location: &str,
) -> Result<Option<Commit>> {
    if !is_table(registry, location).await {
        return Ok(None);
    }
    let table = match open(registry, location, AsOf::Latest).await {
        Ok(table) => table,
        // A first write killed before its commit: no version.
        Err(KilnError::Delta {
            source: DeltaTableError::NotATable(_),
            ..
        }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match table.version() {
        Some(version) => read_commit(registry, location, version).await.map(Some),
        None => Ok(None),
    }
}

/// Commit `version` of the table at `location`, from its log entry.
async fn read_commit(
    registry: &KilnObjectStoreRegistry,
    location: &str,
    version: u64,
) -> Result<Commit> {
    let url = table_url(location)?;
    let store = store_of(registry, &url)?;
    let path = log_path(&url)?.join(format!("{version:020}.json"));
    let failed = |source| KilnError::ObjectStore {
        location: path.to_string(),
        source,
    };
    let bytes = object_store::ObjectStoreExt::get(store.as_ref(), &path)
        .await
        .map_err(failed)?
        .bytes()
        .await
        .map_err(failed)?;
    let mut commit = Commit {
        version,
        ..Commit::default()
    };
    for line in bytes.split(|b| *b == b'\n') {
        let Ok(action) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(add) = action.get("add") {
            commit.files += 1;
            commit.bytes += add.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
        }
        if let Some(info) = action.get("commitInfo") {
            commit.timestamp = info.get("timestamp").and_then(|t| t.as_i64());
            commit.rows = info
                .pointer("/operationMetrics/num_added_rows")
                .and_then(|r| r.as_u64());
            if let (Some(job), Some(step)) = (
                info.get(JOB_KEY).and_then(|j| j.as_str()),
                info.get(STEP_KEY).and_then(|s| s.as_u64()),
            ) {
                commit.job = Some(JobMark {
                    fingerprint: job.to_string(),
                    step: step as usize,
                });
            }
        }
    }
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_times_in_names() {
        assert_eq!(split_as_of("out/t@v3"), Some(("out/t", AsOf::Version(3))));
        assert_eq!(
            split_as_of("out/t/@v12/"),
            Some(("out/t/", AsOf::Version(12)))
        );
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert_eq!(
            split_as_of("s3://b/t@20261201103000500"),
            Some(("s3://b/t", AsOf::Timestamp(t("2026-12-01T10:30:00.5Z"))))
        );
        assert_eq!(
            split_as_of("t@2026-12-01T10:30:00+01:00"),
            Some(("t", AsOf::Timestamp(t("2026-12-01T09:30:00Z"))))
        );
        assert_eq!(
            split_as_of("t@2026-12-01"),
            Some(("t", AsOf::Timestamp(t("2026-12-01T00:00:00Z"))))
        );
        // An '@' that names no version is part of the name.
        assert_eq!(split_as_of("users/a@b.parquet"), None);
        assert_eq!(split_as_of("@v3"), None);
        assert_eq!(split_as_of("t@v"), None);
    }
}
