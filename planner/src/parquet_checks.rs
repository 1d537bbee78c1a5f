//! `CheckParquetMetadata`: the physical rule that puts
//! [`CheckedReaderFactory`] on every Parquet scan, so the metadata a file
//! gives is checked against its size before the `parquet` crate slices with
//! it (see `kiln_engine::io::parquet_metadata`).
//!
//! It wraps the reader factory DataFusion gave the scan (its metadata cache
//! included); a scan without one (a plan decoded on a cluster executor) gets
//! Kiln's checked readers when it runs, from [`DecodeGuardExec`], which has
//! the task's object store.
//!
//! `GuardParquetDecoding`, the last of Kiln's physical rules, puts a
//! [`DecodeGuardExec`] above every Parquet scan: page data that makes the
//! parquet crate panic (what no metadata check can see) becomes an error
//! naming the files.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use kiln_engine::exec::DecodeGuardExec;
use kiln_engine::io::parquet_metadata::CheckedReaderFactory;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct CheckParquetMetadata;

impl PhysicalOptimizerRule for CheckParquetMetadata {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(scan) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some(config) = scan.data_source().downcast_ref::<FileScanConfig>() else {
                return Ok(Transformed::no(node));
            };
            let Some(parquet) = config.file_source().downcast_ref::<ParquetSource>() else {
                return Ok(Transformed::no(node));
            };
            let Some(factory) = parquet.parquet_file_reader_factory() else {
                return Ok(Transformed::no(node));
            };
            // Once per scan, however often the rule runs.
            if format!("{factory:?}") == "CheckedReaderFactory" {
                return Ok(Transformed::no(node));
            }
            // The page index is loaded (and checked) where the scan would
            // use it for pruning.
            let page_index = parquet.table_parquet_options().global.enable_page_index;
            let checked = parquet.clone().with_parquet_file_reader_factory(Arc::new(
                CheckedReaderFactory::new(
                    Arc::clone(factory),
                    config.object_store_url.as_str(),
                    page_index,
                ),
            ));
            let config = FileScanConfigBuilder::from(config.clone())
                .with_source(Arc::new(checked))
                .build();
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "check_parquet_metadata"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan` is a scan of Parquet files.
fn is_parquet_scan(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<DataSourceExec>()
        .and_then(|scan| scan.data_source().downcast_ref::<FileScanConfig>())
        .is_some_and(|config| config.file_source().is::<ParquetSource>())
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct GuardParquetDecoding;

impl PhysicalOptimizerRule for GuardParquetDecoding {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| {
            // Once per scan, however often the rule runs.
            if node.is::<DecodeGuardExec>() {
                return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
            }
            if !is_parquet_scan(&node) {
                return Ok(Transformed::no(node));
            }
            let guarded: Arc<dyn ExecutionPlan> = Arc::new(DecodeGuardExec::new(node));
            Ok(Transformed::new(guarded, true, TreeNodeRecursion::Jump))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "guard_parquet_decoding"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
