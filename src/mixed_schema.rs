//! Directories of Parquet files written by different engines.
//!
//! The same string column is `string` in one writer's file, `large_string`
//! or `string_view` in another's (pyarrow, Polars, DataFusion and older Kiln
//! files each pick one, and say so in the Arrow schema they embed).
//! DataFusion infers a directory's schema by merging the files' schemas as
//! they are, which fails: "Fail to merge schema field 's' because the from
//! data_type = Utf8 does not equal Utf8View" (issue 14, item 7). Spark,
//! DuckDB and Polars read such a directory, and so does Kiln: when that
//! merge fails, each file's schema is inferred on its own, the string and
//! binary types are taken as one (the view types, or the plain ones when
//! `datafusion.execution.parquet.schema_force_view_types` is off, as
//! DataFusion reads Parquet strings), and the merged schema is given to the
//! table, whose scan casts each file's columns to it. A real conflict (a
//! column that is a string in one file and an integer in another) is still
//! the merge's error.
//!
//! It applies to `FROM '<dir>/'` (the URL table factory), `CREATE EXTERNAL
//! TABLE ... STORED AS PARQUET` and [`crate::Session::read_parquet`] /
//! `register_parquet`; the fallback costs nothing unless the plain
//! inference fails.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::UrlTableFactory;
use datafusion::catalog::{Session as CatalogSession, TableProvider, TableProviderFactory};
use datafusion::common::{DFSchema, DataFusionError, Result};
use datafusion::datasource::dynamic_file::DynamicListTableFactory;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableConfigExt, ListingTableUrl,
};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::CreateExternalTable;
use futures::{StreamExt, TryStreamExt};

/// Whether `error` is a schema merge failing over column types.
pub(crate) fn is_type_conflict(error: &DataFusionError) -> bool {
    matches!(error.find_root(), DataFusionError::ArrowError(e, _)
        if matches!(**e, ArrowError::SchemaError(_)))
}

/// The type a string or binary column is read as (see the module doc).
fn one_type(data_type: &DataType, view: bool) -> DataType {
    let field = |f: &Arc<Field>| {
        Arc::new(
            f.as_ref()
                .clone()
                .with_data_type(one_type(f.data_type(), view)),
        )
    };
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View if view => DataType::Utf8View,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView if view => {
            DataType::BinaryView
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(field(f)),
        DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect::<Fields>()),
        other => other.clone(),
    }
}

/// The schema of the files at `url`, each inferred on its own with
/// `options`' format and merged with the string and binary types taken as
/// one.
pub(crate) async fn infer_per_file(
    state: &dyn CatalogSession,
    options: &ListingOptions,
    url: &ListingTableUrl,
) -> Result<SchemaRef> {
    let store = state.runtime_env().object_store(url)?;
    let mut files: Vec<_> = url
        .list_all_files(state, store.as_ref(), &options.file_extension)
        .await?
        .try_filter(|f| futures::future::ready(f.size > 0))
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    let view = state
        .config_options()
        .execution
        .parquet
        .schema_force_view_types;
    let concurrency = state.config_options().execution.meta_fetch_concurrency;
    let store = &store;
    let schemas: Vec<SchemaRef> = futures::stream::iter(files)
        .map(|file| async move {
            options
                .format
                .infer_schema(state, store, std::slice::from_ref(&file))
                .await
        })
        // Boxed for rust-lang/rust#64552, as DataFusion's inference is.
        .boxed()
        .buffered(concurrency.get())
        .try_collect()
        .await?;
    let schemas = schemas.iter().map(|schema| {
        Schema::new_with_metadata(
            schema
                .fields()
                .iter()
                .map(|f| {
                    f.as_ref()
                        .clone()
                        .with_data_type(one_type(f.data_type(), view))
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        )
    });
    Ok(Arc::new(Schema::try_merge(schemas)?))
}

/// `FROM '<location>'`: a Delta table ([`crate::delta`]) when the location
/// is one, else DataFusion's URL tables, with the fallback above.
#[derive(Debug, Default)]
pub(crate) struct UrlTables {
    inner: DynamicListTableFactory,
}

impl UrlTables {
    /// Points the factory at the session whose tables it makes.
    pub(crate) fn attach(&self, ctx: &datafusion::prelude::SessionContext) {
        self.inner.session_store().with_state(ctx.state_weak_ref());
    }
}

#[async_trait]
impl UrlTableFactory for UrlTables {
    async fn try_new(&self, url: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let state = self
            .inner
            .session_store()
            .get_session()
            .upgrade()
            .and_then(|s| s.read().as_any().downcast_ref::<SessionState>().cloned());
        if let Some(state) = &state
            && let Some(table) = crate::delta::url_table(state, url).await?
        {
            return Ok(Some(table));
        }
        let error = match self.inner.try_new(url).await {
            Err(e) if is_type_conflict(&e) => e,
            other => return other,
        };
        let (Some(state), Ok(table_url)) = (state, ListingTableUrl::parse(url)) else {
            return Err(error);
        };
        let config = ListingTableConfig::new(table_url.clone())
            .infer_options(&state)
            .await?
            .infer_partitions_from_path(&state)
            .await?;
        let Some(options) = config.options.clone() else {
            return Err(error);
        };
        let schema = infer_per_file(&state, &options, &table_url).await?;
        let table = ListingTable::try_new(config.with_schema(schema))?;
        Ok(Some(Arc::new(table)))
    }
}

/// `CREATE EXTERNAL TABLE ... STORED AS PARQUET`: DataFusion's listing
/// table factory, with the fallback above for one location and no
/// declared columns.
#[derive(Debug)]
pub(crate) struct ParquetTables {
    pub(crate) inner: Arc<dyn TableProviderFactory>,
}

#[async_trait]
impl TableProviderFactory for ParquetTables {
    async fn create(
        &self,
        state: &dyn CatalogSession,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let error = match self.inner.create(state, cmd).await {
            Err(e) if is_type_conflict(&e) => e,
            other => return other,
        };
        let (Some(session_state), [location]) = (
            state.as_any().downcast_ref::<SessionState>(),
            cmd.locations.as_slice(),
        ) else {
            return Err(error);
        };
        if !cmd.schema.fields().is_empty() {
            return Err(error);
        }
        let url = ListingTableUrl::parse(location)?;
        let Some(format) = session_state.get_file_format_factory(&cmd.file_type) else {
            return Err(error);
        };
        // As DataFusion's factory: none for a directory, the file's own.
        let extension = match url.prefix().extension() {
            Some(e) if !url.is_collection() => format!(".{e}"),
            _ => String::new(),
        };
        let options = ListingOptions::new(format.create(session_state, &cmd.options)?)
            .with_file_extension(extension);
        let partitions = if cmd.table_partition_cols.is_empty()
            && state
                .config_options()
                .execution
                .listing_table_factory_infer_partitions
        {
            options.infer_partitions(session_state, &url).await?
        } else {
            cmd.table_partition_cols.clone()
        };
        let files = infer_per_file(state, &options, &url).await?;
        let dictionary = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
        let fields = files.fields().iter().cloned().chain(
            partitions
                .iter()
                .map(|p| Arc::new(Field::new(p, dictionary.clone(), true))),
        );
        let schema =
            Schema::new_with_metadata(fields.collect::<Vec<_>>(), files.metadata().clone());
        let mut declared = cmd.clone();
        declared.schema = Arc::new(DFSchema::try_from(schema)?);
        declared.table_partition_cols = partitions;
        self.inner.create(state, &declared).await
    }
}
