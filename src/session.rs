//! [`Session`]: a DataFusion `SessionContext` with Kiln's extensions.
//!
//! A session plans SQL and DataFrame programs with DataFusion, reads and
//! writes Parquet in any supported object store (stores are created on first
//! use of a location, see `kiln_engine::io`), and carries the device its
//! operators are asked to use.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::dialect::dialect_from_str;
use kiln_engine::io::{KilnObjectStoreRegistry, is_store_option, redact};
use kiln_kernels::{DeviceInfo, DeviceRequest};

use crate::cluster::ClusterUrl;
use crate::error::{KilnError, Result};

/// Builds a [`Session`] with non-default settings.
#[derive(Debug, Clone, Default)]
pub struct SessionBuilder {
    device: Option<DeviceRequest>,
    target_partitions: Option<usize>,
    cluster: Option<String>,
}

impl SessionBuilder {
    /// The device Kiln's operators run on; default: `KILN_DEVICE`, else auto.
    pub fn device(mut self, device: DeviceRequest) -> Self {
        self.device = Some(device);
        self
    }

    /// DataFusion's partition count; default: the number of cores.
    pub fn target_partitions(mut self, n: usize) -> Self {
        self.target_partitions = Some(n);
        self
    }

    /// Runs the session's queries on the Kiln cluster whose scheduler is at
    /// `url` (`df://host:50050`) instead of in this process; default:
    /// `KILN_CLUSTER` if set. Statements are planned by the scheduler and
    /// run by its executors, each on its own device (the session's device
    /// is not used there). `build` fails if the scheduler does not answer.
    pub fn cluster(mut self, url: impl Into<String>) -> Self {
        self.cluster = Some(url.into());
        self
    }

    /// Creates the session. A device asked for by name must exist on this
    /// machine; `auto` always succeeds.
    pub fn build(self) -> Result<Session> {
        let device = match self.device {
            Some(d) => d,
            None => DeviceRequest::from_env()?,
        };
        let device_info = match device {
            DeviceRequest::Auto => None,
            named => Some(named.resolve(kiln_engine::device::discovered())?.clone()),
        };
        let registry = Arc::new(KilnObjectStoreRegistry::new());
        let runtime = RuntimeEnvBuilder::new()
            .with_object_store_registry(Arc::clone(&registry) as _)
            .build_arc()?;
        let cluster = match self.cluster {
            Some(url) => Some(url),
            None => std::env::var("KILN_CLUSTER")
                .ok()
                .filter(|u| !u.trim().is_empty()),
        };
        let cluster = cluster.map(|u| u.parse::<ClusterUrl>()).transpose()?;
        let mut config = match &cluster {
            Some(_) => crate::cluster::node_config(device),
            None => kiln_planner::session_config(device),
        }
        // Kiln's stores, for the table factories that need them unfiltered
        // (Delta's log is under `_delta_log/`).
        .with_extension(Arc::clone(&registry));
        if let Some(n) = self.target_partitions {
            config = config.with_target_partitions(n);
        }
        let state = match &cluster {
            Some(url) => {
                url.check_reachable()?;
                crate::cluster::client_state(url, config, runtime)?
            }
            None => {
                let mut state = kiln_planner::install(
                    SessionStateBuilder::new()
                        .with_config(config)
                        .with_runtime_env(runtime),
                )
                .build();
                state.register_file_format(Arc::new(NdjsonFormatFactory::default()), false)?;
                state.register_file_format(Arc::new(crate::delta::DeltaFormat), false)?;
                for name in ["DELTA", "DELTATABLE"] {
                    state
                        .table_factories_mut()
                        .insert(name.to_string(), Arc::new(crate::delta::DeltaTables));
                }
                state
            }
        };
        let ctx = with_url_tables(state);
        kiln_planner::register_functions(&ctx);
        Ok(Session {
            ctx,
            registry,
            device,
            device_info,
            cluster,
        })
    }
}

/// `FROM 'events.ndjson'`: newline-delimited JSON under its other common
/// extension, read as DataFusion reads `.json`.
#[derive(Debug, Default)]
struct NdjsonFormatFactory(datafusion::datasource::file_format::json::JsonFormatFactory);

impl datafusion::common::GetExt for NdjsonFormatFactory {
    fn get_ext(&self) -> String {
        "ndjson".to_string()
    }
}

impl datafusion::datasource::file_format::FileFormatFactory for NdjsonFormatFactory {
    fn create(
        &self,
        state: &dyn datafusion::catalog::Session,
        format_options: &std::collections::HashMap<String, String>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::datasource::file_format::FileFormat>> {
        self.0.create(state, format_options)
    }

    fn default(&self) -> Arc<dyn datafusion::datasource::file_format::FileFormat> {
        self.0.default()
    }
}

/// A context over `state` that reads `FROM '<location>'` (as DataFusion's
/// `enable_url_table`), and whose Parquet tables, named by location or
/// created, read directories whose files' writers disagree on string types
/// ([`crate::mixed_schema`]).
fn with_url_tables(mut state: SessionState) -> SessionContext {
    if let Some(inner) = state.table_factories().get("PARQUET").cloned() {
        state.table_factories_mut().insert(
            "PARQUET".to_string(),
            Arc::new(crate::mixed_schema::ParquetTables { inner }),
        );
    }
    over_catalogs(state, None)
}

/// A context over `state` whose catalogs are `catalogs` (default: the
/// state's own) and which reads `FROM '<location>'` through
/// [`crate::mixed_schema::UrlTables`].
pub(crate) fn over_catalogs(
    state: SessionState,
    catalogs: Option<Arc<dyn datafusion::catalog::CatalogProviderList>>,
) -> SessionContext {
    use datafusion::catalog::{DynamicFileCatalog, UrlTableFactory};
    let catalogs = catalogs.unwrap_or_else(|| Arc::clone(state.catalog_list()));
    let factory = Arc::new(crate::mixed_schema::UrlTables::default());
    let catalogs = Arc::new(DynamicFileCatalog::new(
        catalogs,
        Arc::clone(&factory) as Arc<dyn UrlTableFactory>,
    ));
    let state = SessionStateBuilder::new_from_existing(state)
        .with_catalog_list(catalogs)
        .build();
    let ctx = SessionContext::new_with_state(state);
    factory.attach(&ctx);
    ctx
}

/// Whether a table name in a query is a location (`FROM 'data/x.parquet'`,
/// `FROM 's3://bucket/prefix/'`) rather than a catalog name.
fn looks_like_location(name: &str) -> bool {
    name.contains('/')
        || name.contains("://")
        || name.rsplit_once('.').is_some_and(|(_, e)| !e.is_empty())
}

/// The file extensions `FROM '<file>'` reads.
const READABLE_EXTENSIONS: [&str; 6] = ["parquet", "csv", "json", "ndjson", "avro", "arrow"];

/// An error for a file whose extension names no format Kiln reads.
fn unknown_extension(location: &str) -> Option<KilnError> {
    let name = location.rsplit('/').next().unwrap_or(location);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext {
        Some(e) if READABLE_EXTENSIONS.contains(&e.as_str()) => None,
        _ => Some(KilnError::UnknownFormat(format!(
            "{location}: the file's extension names no format Kiln reads ({}); \
             use CREATE EXTERNAL TABLE ... STORED AS PARQUET|CSV|JSON LOCATION '{location}'",
            READABLE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
        ))),
    }
}

/// What one statement of a script produced.
#[derive(Debug, Clone)]
pub struct StatementOutput {
    /// The statement's SQL, as parsed.
    pub sql: String,
    /// The schema of its rows; empty for DDL and `SET`.
    pub schema: SchemaRef,
    /// Its rows, computed before the next statement ran.
    pub batches: Vec<RecordBatch>,
}

impl StatementOutput {
    /// Whether the statement produces rows to show (queries, `COPY`'s count,
    /// `EXPLAIN`), as opposed to DDL and `SET`.
    pub fn returns_rows(&self) -> bool {
        !self.schema.fields().is_empty()
    }
}

/// A Kiln session: SQL and DataFrames over Parquet, on Kiln's devices.
pub struct Session {
    ctx: SessionContext,
    registry: Arc<KilnObjectStoreRegistry>,
    device: DeviceRequest,
    device_info: Option<DeviceInfo>,
    cluster: Option<ClusterUrl>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("session_id", &self.ctx.session_id())
            .field("device", &self.device)
            .finish()
    }
}

impl Session {
    /// A session with default settings (device from `KILN_DEVICE`, else auto).
    pub fn new() -> Result<Session> {
        Session::builder().build()
    }

    pub fn builder() -> SessionBuilder {
        SessionBuilder::default()
    }

    /// The DataFusion context underneath, for anything Kiln does not wrap.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The cluster this session runs on, if any.
    pub fn cluster(&self) -> Option<&ClusterUrl> {
        self.cluster.as_ref()
    }

    /// Kiln's object stores for this session.
    pub(crate) fn registry(&self) -> &KilnObjectStoreRegistry {
        &self.registry
    }

    /// The device this session was asked to use.
    pub fn device(&self) -> DeviceRequest {
        self.device
    }

    /// The session's current `kiln.*` options (as changed by `SET kiln.x = ...`).
    pub fn kiln_options(&self) -> kiln_planner::KilnOptions {
        self.ctx
            .state()
            .config()
            .options()
            .extensions
            .get::<kiln_planner::KilnOptions>()
            .cloned()
            .unwrap_or_default()
    }

    /// Sets one session option, as `SET key = 'value'` does; the value is
    /// checked now.
    pub fn set_option(&self, key: &str, value: &str) -> Result<()> {
        let state = self.ctx.state_ref();
        let mut state = state.write();
        state.config_mut().options_mut().set(key, value)?;
        Ok(())
    }

    /// `kiln.statement_timeout`: how long a statement may run (`None`: no
    /// limit). The CLI and [`Session::run_script`] cancel statements past it.
    pub fn statement_timeout(&self) -> Result<Option<std::time::Duration>> {
        Ok(self.kiln_options().statement_timeout()?)
    }

    /// The device a named request resolved to (`None` for auto).
    pub fn device_info(&self) -> Option<&DeviceInfo> {
        self.device_info.as_ref()
    }

    /// Parses a script into its statements, in the session's SQL dialect.
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        let state = self.ctx.state();
        let options = state.config().options();
        let dialect = &options.sql_parser.dialect;
        let dialect = dialect_from_str(dialect)
            .ok_or_else(|| KilnError::Usage(format!("unsupported SQL dialect '{dialect}'")))?;
        let sql = crate::asof_sql::rewrite_text(sql);
        let statements = DFParserBuilder::new(sql.as_ref())
            .with_dialect(dialect.as_ref())
            .with_recursion_limit(options.sql_parser.recursion_limit.get())
            .build()?
            .parse_statements()?;
        Ok(statements.into_iter().collect())
    }

    /// Runs one SQL statement. DDL, `SET` and `COPY` take effect now; a query
    /// comes back as a lazy [`DataFrame`].
    pub async fn sql(&self, sql: &str) -> Result<DataFrame> {
        let mut statements = self.parse(sql)?;
        match statements.len() {
            0 => Err(KilnError::EmptySql),
            1 => self.execute_statement(statements.remove(0)).await,
            n => Err(KilnError::Usage(format!(
                "Session::sql takes one statement, got {n}; use Session::run_script"
            ))),
        }
    }

    /// Runs every statement of a script in order (each under
    /// `kiln.statement_timeout`, if set), each one to completion
    /// before the next starts (so a query sees the tables as the script left
    /// them at that point); statements after a failing one do not run.
    /// To stream a large result instead, use [`Session::parse`] and
    /// [`Session::execute_statement`].
    pub async fn run_script(&self, sql: &str) -> Result<Vec<StatementOutput>> {
        let statements = self.parse(sql)?;
        if statements.is_empty() {
            return Err(KilnError::EmptySql);
        }
        let mut out = Vec::with_capacity(statements.len());
        for statement in statements {
            let sql = statement.to_string();
            let run = async {
                let frame = self.execute_statement(statement).await?;
                let schema = Arc::new(frame.schema().as_arrow().clone());
                let batches = frame.collect().await?;
                Ok::<_, KilnError>((schema, batches))
            };
            let (schema, batches) = match self.statement_timeout()? {
                Some(limit) => tokio::time::timeout(limit, run)
                    .await
                    .map_err(|_| KilnError::Timeout(limit))??,
                None => run.await?,
            };
            out.push(StatementOutput {
                sql,
                schema,
                batches,
            });
        }
        Ok(out)
    }

    /// Plans one parsed statement, applies Kiln's handling of store options,
    /// and executes it (lazily, for queries).
    /// A `COPY` runs now, through Kiln's output commit (see
    /// [`Session::write_parquet`]); its frame holds the row count.
    pub async fn execute_statement(&self, statement: Statement) -> Result<DataFrame> {
        let plan = self.plan_statement(statement).await?;
        if let LogicalPlan::Copy(copy) = plan {
            let written = self.copy(copy).await?;
            return Ok(self.ctx.read_batches(written.batches)?);
        }
        if let LogicalPlan::Dml(dml) = &plan
            && matches!(dml.op, datafusion::logical_expr::WriteOp::Insert(_))
        {
            let written = self.insert(plan, None).await?;
            return Ok(self.ctx.read_batches(written.batches)?);
        }
        Ok(self.ctx.execute_logical_plan(plan).await?)
    }

    /// Runs a `COPY` through Kiln's output commit ([`crate::commit`]).
    pub(crate) async fn copy(
        &self,
        copy: datafusion::logical_expr::dml::CopyTo,
    ) -> Result<crate::commit::Written> {
        crate::commit::copy(&self.ctx, &self.registry, copy, None).await
    }

    /// A job step's `COPY`: its manifest records the step (`--resume`).
    pub(crate) async fn copy_for_job(
        &self,
        copy: datafusion::logical_expr::dml::CopyTo,
        job: crate::commit::JobWrite,
    ) -> Result<crate::commit::Written> {
        crate::commit::copy(&self.ctx, &self.registry, copy, Some(job)).await
    }

    /// Runs an `INSERT INTO`, keeping a committed directory's manifest
    /// ([`crate::commit::insert`]).
    pub(crate) async fn insert(
        &self,
        plan: LogicalPlan,
        mark: Option<kiln_engine::io::committed::JobMark>,
    ) -> Result<crate::commit::Written> {
        crate::commit::insert(&self.ctx, &self.registry, plan, mark).await
    }

    /// Writes `frame` as Parquet at `location`, replacing what is there:
    /// one file when `single_file` (default: when `location` names a file
    /// with an extension), else a directory of files. The rows go to a
    /// hidden staging location first and are moved into place only when
    /// all are written, so a failure leaves the previous output untouched.
    /// Returns the number of rows written.
    pub async fn write_parquet(
        &self,
        frame: DataFrame,
        location: &str,
        single_file: Option<bool>,
    ) -> Result<u64> {
        use datafusion::datasource::file_format::format_as_file_type;
        use datafusion::datasource::file_format::parquet::ParquetFormatFactory;
        let options = single_file
            .map(|s| [("single_file_output".to_string(), s.to_string())].into())
            .unwrap_or_default();
        let plan = datafusion::logical_expr::LogicalPlanBuilder::copy_to(
            frame.into_unoptimized_plan(),
            location.to_string(),
            format_as_file_type(Arc::new(ParquetFormatFactory::new())),
            options,
            vec![],
        )?
        .build()?;
        let LogicalPlan::Copy(copy) = plan else {
            return Err(KilnError::Internal("copy_to built no COPY plan".into()));
        };
        let written = self.copy(copy).await?;
        Ok(crate::commit::row_count(&written.batches))
    }

    /// The logical plan of one parsed statement, with the storage options of
    /// a `CREATE EXTERNAL TABLE` applied to its store and removed from it.
    /// A statement nested deeper than `kiln.max_expression_depth` is
    /// refused here, before DataFusion plans it.
    pub async fn plan_statement(&self, statement: Statement) -> Result<LogicalPlan> {
        self.plan_statement_in(&self.ctx, statement).await
    }

    /// [`Session::plan_statement`] against the tables and settings of
    /// `ctx` (a job's planning context: [`crate::job`]).
    pub(crate) async fn plan_statement_in(
        &self,
        ctx: &SessionContext,
        mut statement: Statement,
    ) -> Result<LogicalPlan> {
        let limit = self.kiln_options().max_expression_depth;
        if let Some(depth) = crate::statement_depth::exceeds(&statement, limit) {
            return Err(KilnError::TooDeep { depth, limit });
        }
        if let Some(clause) = crate::statement_depth::table_version(&statement) {
            return Err(KilnError::Usage(format!(
                "{clause}: Kiln reads a version of a Delta table as FROM '<location>@v<N>' or \
                 FROM '<location>@<yyyyMMddHHmmssSSS>', or with CREATE EXTERNAL TABLE ... \
                 STORED AS DELTA OPTIONS ('version' 'N'); version clauses are not supported"
            )));
        }
        // After the depth check: the rewrite walks the whole statement.
        crate::named_args::rewrite(&mut statement).map_err(KilnError::Usage)?;
        crate::asof_sql::rewrite_statement(&mut statement).map_err(KilnError::Usage)?;
        let state = ctx.state();
        // `FROM '<path>'` that cannot be read plans as "table not found";
        // the locations are kept to find the real cause.
        let locations: Vec<String> = state
            .resolve_table_references(&statement)
            .unwrap_or_default()
            .iter()
            .map(|t| t.table().to_string())
            .filter(|t| looks_like_location(t))
            .collect();
        for location in &locations {
            self.refuse_empty_file(location).await?;
        }
        let plan = match state.statement_to_plan(statement).await {
            Ok(plan) => plan,
            Err(e) => {
                if e.to_string().contains("not found") {
                    for location in &locations {
                        if let Some(cause) = self.why_unreadable(location).await {
                            return Err(cause);
                        }
                    }
                }
                return Err(e.into());
            }
        };
        self.apply_store_options(plan)
    }

    /// A file of 0 bytes named as a table is no table: DataFusion skips
    /// empty files (markers) in a listing, which would make it read as 0
    /// rows. Local files are checked with the file system, objects in a
    /// store with a `head` (a failing `head` is left to the read, which
    /// names its cause).
    async fn refuse_empty_file(&self, location: &str) -> Result<()> {
        let Ok(url) = ListingTableUrl::parse(location) else {
            return Ok(());
        };
        if url.is_collection() {
            return Ok(());
        }
        let as_url: &url::Url = url.as_ref();
        let empty = if as_url.scheme() == "file" {
            let Some(path) = as_url.to_file_path().ok() else {
                return Ok(());
            };
            std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0)
        } else {
            let Ok(store) = self.ctx.runtime_env().object_store(url.object_store()) else {
                return Ok(());
            };
            object_store::ObjectStoreExt::head(store.as_ref(), url.prefix())
                .await
                .is_ok_and(|m| m.size == 0)
        };
        if empty {
            return Err(KilnError::UnknownFormat(format!(
                "{location}: the file is empty (0 bytes), not a table"
            )));
        }
        Ok(())
    }

    /// Why `location` (a file, directory or prefix named in a query) cannot
    /// be read as a table, if a reason can be found: it is missing, not
    /// permitted, a symlink loop, its store refuses (credentials, an
    /// unreachable endpoint), or its extension names no format.
    async fn why_unreadable(&self, location: &str) -> Option<KilnError> {
        let url = match ListingTableUrl::parse(location) {
            Ok(url) => url,
            Err(e) => return Some(e.into()),
        };
        let as_url: &url::Url = url.as_ref();
        if as_url.scheme() == "file" {
            let path = as_url.to_file_path().ok()?;
            let checked = std::fs::metadata(&path).and_then(|m| {
                if m.is_dir() {
                    std::fs::read_dir(&path).map(|_| m)
                } else {
                    std::fs::File::open(&path).map(|_| m)
                }
            });
            return match checked {
                Err(source) => Some(KilnError::File {
                    path: location.to_string(),
                    source,
                }),
                Ok(m) if m.is_file() => unknown_extension(location),
                Ok(_) => None,
            };
        }
        let store = match self.ctx.runtime_env().object_store(url.object_store()) {
            Ok(store) => store,
            Err(e) => return Some(e.into()),
        };
        let mut listing = store.list(Some(url.prefix()));
        match futures::StreamExt::next(&mut listing).await {
            Some(Err(source)) => Some(KilnError::ObjectStore {
                location: location.to_string(),
                source,
            }),
            None => Some(KilnError::ObjectStore {
                location: location.to_string(),
                source: object_store::Error::NotFound {
                    path: url.prefix().to_string(),
                    source: "no object has this name or prefix".into(),
                },
            }),
            Some(Ok(_)) if !url.is_collection() => unknown_extension(location),
            Some(Ok(_)) => None,
        }
    }

    /// `CREATE EXTERNAL TABLE ... OPTIONS ('aws.region' 'eu-west-1', ...)`:
    /// the `aws.*`, `gcp.*` and `azure.*` options configure the store of the
    /// table's location (and are remembered as secrets where they are
    /// credentials); the rest go on to DataFusion as format options.
    fn apply_store_options(&self, plan: LogicalPlan) -> Result<LogicalPlan> {
        let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(mut cmd)) = plan else {
            return Ok(plan);
        };
        let (store, format): (Vec<_>, Vec<_>) = cmd
            .options
            .drain()
            .partition(|(key, _)| is_store_option(key));
        cmd.options = format.into_iter().collect();
        if !store.is_empty() {
            for location in &cmd.locations {
                let url = ListingTableUrl::parse(location)?;
                self.registry.configure(url.as_ref(), &store)?;
            }
        }
        // The statement's text is kept as the table's definition; keep the
        // credentials out of it.
        cmd.definition = cmd.definition.map(|d| redact(&d));
        Ok(LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)))
    }

    /// A lazy DataFrame over Parquet at `location` (a file, a directory or a
    /// prefix, in any supported store).
    /// A directory's Hive partitions (`year=2024/`) become columns, as with
    /// `FROM 'dir/'`.
    pub async fn read_parquet(&self, location: &str) -> Result<DataFrame> {
        self.refuse_empty_file(location).await?;
        let options = self.parquet_options(location).await?;
        match self.ctx.read_parquet(location, options.clone()).await {
            Err(e) if crate::mixed_schema::is_type_conflict(&e) => {
                let schema = self.parquet_files_schema(location).await?;
                Ok(self
                    .ctx
                    .read_parquet(location, options.schema(&schema))
                    .await?)
            }
            read => Ok(read?),
        }
    }

    /// The schema of the Parquet files at `location`, inferred file by file
    /// ([`crate::mixed_schema`]): for a directory whose files' writers
    /// disagree on string types.
    async fn parquet_files_schema(&self, location: &str) -> Result<SchemaRef> {
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::ListingOptions;
        let state = self.ctx.state();
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
        let url = ListingTableUrl::parse(location)?;
        Ok(crate::mixed_schema::infer_per_file(&state, &options, &url).await?)
    }

    /// Reading options for Parquet at `location`, with the partition
    /// columns its directory layout names.
    async fn parquet_options(&self, location: &str) -> Result<ParquetReadOptions<'static>> {
        use datafusion::arrow::datatypes::DataType;
        use datafusion::datasource::file_format::parquet::ParquetFormat;
        use datafusion::datasource::listing::ListingOptions;
        let url = ListingTableUrl::parse(location)?;
        if !url.is_collection() {
            return Ok(ParquetReadOptions::default());
        }
        let state = self.ctx.state();
        let partitions = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .infer_partitions(&state, &url)
            .await?;
        let dictionary = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
        Ok(ParquetReadOptions::default().table_partition_cols(
            partitions
                .into_iter()
                .map(|name| (name, dictionary.clone()))
                .collect(),
        ))
    }

    /// Registers Parquet at `location` as table `name`.
    pub async fn register_parquet(&self, name: &str, location: &str) -> Result<()> {
        self.refuse_empty_file(location).await?;
        let options = self.parquet_options(location).await?;
        match self
            .ctx
            .register_parquet(name, location, options.clone())
            .await
        {
            Err(e) if crate::mixed_schema::is_type_conflict(&e) => {
                let schema = self.parquet_files_schema(location).await?;
                let options = options.schema(&schema);
                self.ctx.register_parquet(name, location, options).await?;
            }
            registered => registered?,
        }
        Ok(())
    }

    /// Configures the store of `location` with explicit options
    /// (`aws.access_key_id`, `aws.endpoint`, `gcp.service_account_path`, ...),
    /// as `CREATE EXTERNAL TABLE ... OPTIONS` does.
    pub fn configure_store(&self, location: &str, options: &[(String, String)]) -> Result<()> {
        let url = ListingTableUrl::parse(location)?;
        self.registry.configure(url.as_ref(), options)?;
        Ok(())
    }
}
