//! `DecodeGuardExec`: a Parquet scan whose decoding may not crash the
//! process.
//!
//! Kiln checks what a Parquet file *declares* before the `parquet` crate
//! trusts it (its footer, metadata, page index, embedded Arrow schema:
//! `crate::io::parquet_metadata`). What a page *holds* can only be checked by
//! decoding it, and two classes of corrupt page data make parquet 59 panic
//! rather than return an error: a dictionary-encoded page in a column chunk
//! without a dictionary page (`column/reader/decoder.rs`), and a run-length
//! or delta encoded page with a variable-length integer of more than ten
//! bytes (`util/bit_util.rs`). Both were found by Kiln's Parquet fuzz target
//! and are committed as regressions (`fuzz/regressions/parquet/`).
//!
//! This operator sits above each Parquet scan and polls it inside
//! [`std::panic::catch_unwind`]: a panic while the scan decodes becomes
//! [`EngineError::Undecodable`], naming the files the partition reads, and
//! the stream ends. It also gives a scan that has no reader factory (a plan
//! a cluster executor decoded) Kiln's checked readers, built from the task's
//! object store, so an executor checks metadata as a local session does.
//!
//! While a guarded poll runs, a panic is not printed by the process's panic
//! hook: the hook Kiln installs (once, on top of whatever hook was there)
//! keeps the message for the guard. Panics elsewhere go to the previous hook.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics, internal_err};
use datafusion::datasource::physical_plan::parquet::DefaultParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileScanConfig, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, RecordBatchStream,
    SendableRecordBatchStream,
};
use futures::{Stream, StreamExt};

use crate::error::EngineError;
use crate::io::parquet_metadata::CheckedReaderFactory;

/// See the module documentation.
#[derive(Debug)]
pub struct DecodeGuardExec {
    input: Arc<dyn ExecutionPlan>,
}

impl DecodeGuardExec {
    /// Guards `input`, a Parquet scan (any plan works; the files named in
    /// errors are a scan's).
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        DecodeGuardExec { input }
    }

    /// The guarded plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// `partition`'s files as errors name them: up to three, then a count.
    fn files_of(&self, partition: usize) -> String {
        let Some(config) = scan_config(&self.input) else {
            return "a file of the scan".into();
        };
        let key = config.object_store_url.as_str().trim_end_matches('/');
        let files: Vec<String> = config
            .file_groups
            .get(partition)
            .map(|group| {
                group
                    .files()
                    .iter()
                    .map(|f| {
                        format!(
                            "'{}'",
                            crate::io::shown_location(key, &f.object_meta.location)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        match files.len() {
            0 => "a file of the scan".into(),
            1 => files[0].clone(),
            n if n <= 3 => format!("one of {}", files.join(", ")),
            n => format!("one of {} (and {} more)", files[..3].join(", "), n - 3),
        }
    }

    /// The scan to run: the input, or, when it is a Parquet scan without a
    /// reader factory (decoded on a cluster executor), the same scan with
    /// Kiln's checked readers over the task's store.
    fn checked_input(&self, context: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(config) = scan_config(&self.input) else {
            return Ok(Arc::clone(&self.input));
        };
        let Some(parquet) = config.file_source().downcast_ref::<ParquetSource>() else {
            return Ok(Arc::clone(&self.input));
        };
        if parquet.parquet_file_reader_factory().is_some() {
            return Ok(Arc::clone(&self.input));
        }
        let store = context
            .runtime_env()
            .object_store(&config.object_store_url)?;
        let page_index = parquet.table_parquet_options().global.enable_page_index;
        let checked =
            parquet
                .clone()
                .with_parquet_file_reader_factory(Arc::new(CheckedReaderFactory::new(
                    Arc::new(DefaultParquetFileReaderFactory::new(store)),
                    config.object_store_url.as_str(),
                    page_index,
                )));
        let config = FileScanConfigBuilder::from(config.clone())
            .with_source(Arc::new(checked))
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

fn scan_config(plan: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    plan.downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()
}

impl DisplayAs for DecodeGuardExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DecodeGuardExec")
    }
}

impl ExecutionPlan for DecodeGuardExec {
    fn name(&self) -> &'static str {
        "DecodeGuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("DecodeGuardExec takes exactly one child");
        };
        Ok(Arc::new(DecodeGuardExec { input }))
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats.first() {
            Some(stats) => Ok(Arc::clone(stats)),
            None => Ok(Arc::new(Statistics::new_unknown(&self.schema()))),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        install_hook();
        let input = self.checked_input(&context)?;
        let schema = input.schema();
        let inner = guarded(|| input.execute(partition, context))
            .unwrap_or_else(|message| Err(self.undecodable(partition, message)))?;
        Ok(Box::pin(GuardedStream {
            inner: Some(inner),
            schema,
            files: self.files_of(partition),
        }))
    }
}

impl DecodeGuardExec {
    fn undecodable(&self, partition: usize, panic: String) -> DataFusionError {
        DataFusionError::External(Box::new(EngineError::Undecodable {
            files: self.files_of(partition),
            panic,
        }))
    }
}

/// The scan's stream, polled under the guard; ended after a panic.
struct GuardedStream {
    inner: Option<SendableRecordBatchStream>,
    schema: SchemaRef,
    files: String,
}

impl Stream for GuardedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match guarded(|| inner.poll_next_unpin(cx)) {
            Ok(poll) => poll,
            Err(panic) => {
                // The scan's state is whatever the panic left: drop it.
                self.inner = None;
                let files = std::mem::take(&mut self.files);
                Poll::Ready(Some(Err(DataFusionError::External(Box::new(
                    EngineError::Undecodable { files, panic },
                )))))
            }
        }
    }
}

impl RecordBatchStream for GuardedStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

thread_local! {
    /// Guarded calls running on this thread.
    static GUARDED: Cell<usize> = const { Cell::new(0) };
    /// The message of the last panic inside a guard on this thread.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Whether this thread is inside a guarded poll now: a panic hook that
/// would swallow a panic (a fuzz target's) hands such a panic on instead.
pub fn is_guarded() -> bool {
    GUARDED.with(|g| g.get()) > 0
}

/// Runs `f`; a panic inside it comes back as its message (with where it
/// happened, a dependency's path from its crate on).
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    result.map_err(|payload| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| panic_message(payload.as_ref()))
    })
}

/// A panic's message: its `&str` or `String` payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Installs, once, a panic hook that keeps a guarded panic's message for
/// the guard (unprinted) and hands every other panic to the hook before it.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) == 0 {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", short_path(l.file()), l.line()))
                .unwrap_or_default();
            let message = format!("{}{at}", panic_message(info.payload()).replace('\n', " "));
            CAUGHT.with(|c| *c.borrow_mut() = Some(message));
        }));
    });
}

/// A dependency's source path from its registry directory on: the crate
/// and version are what a report needs (`parquet-59.3.2/src/...`).
pub fn short_path(file: &str) -> &str {
    file.rfind("/registry/src/")
        .and_then(|i| file[i + "/registry/src/".len()..].split_once('/'))
        .map_or(file, |(_, rest)| rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependency_paths_keep_crate_and_file() {
        assert_eq!(
            short_path(
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/parquet-59.3.2/src/file/metadata/push_decoder.rs"
            ),
            "parquet-59.3.2/src/file/metadata/push_decoder.rs"
        );
        assert_eq!(short_path("src/cli/mod.rs"), "src/cli/mod.rs");
    }

    /// A scan as a cluster executor decodes it has no reader factory: the
    /// guard runs it with Kiln's checked readers over the task's store.
    #[tokio::test]
    async fn a_scan_without_a_reader_factory_runs_with_checked_readers() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::datasource::listing::PartitionedFile;
        use datafusion::execution::object_store::ObjectStoreUrl;
        use datafusion::parquet::arrow::ArrowWriter;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            Arc::clone(&schema),
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        let config = FileScanConfigBuilder::new(
            ObjectStoreUrl::local_filesystem(),
            Arc::new(ParquetSource::new(schema)),
        )
        .with_file(PartitionedFile::new(path.display().to_string(), size))
        .build();
        let guard = DecodeGuardExec::new(DataSourceExec::from_data_source(config));
        let context = Arc::new(TaskContext::default());
        let checked = guard.checked_input(&context).unwrap();
        let factory = scan_config(&checked)
            .and_then(|c| c.file_source().downcast_ref::<ParquetSource>())
            .and_then(|p| p.parquet_file_reader_factory().map(|f| format!("{f:?}")));
        assert_eq!(factory.as_deref(), Some("CheckedReaderFactory"));
        let batches: Vec<RecordBatch> = guard
            .execute(0, context)
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
            .await;
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
    }

    #[test]
    fn a_guarded_panic_is_its_message_and_others_pass_through() {
        install_hook();
        let caught = guarded(|| {
            let v: Vec<u8> = Vec::new();
            v[v.len() + 3]
        })
        .unwrap_err();
        assert!(caught.contains("index out of bounds"), "{caught}");
        assert!(caught.contains("decode_guard.rs"), "{caught}");
        assert_eq!(guarded(|| 7), Ok(7));
        // Outside a guard the previous hook sees the panic (and the panic
        // unwinds as ever).
        assert!(std::panic::catch_unwind(|| panic!("unguarded")).is_err());
        assert_eq!(GUARDED.with(|g| g.get()), 0);
    }
}
