//! Output commit for `COPY` and [`Session::write_parquet`]: a write either
//! replaces what was at its target, whole, or leaves it untouched.
//!
//! The rows are written to a staging location beside the target (a hidden
//! sibling, `.kiln-staging-<id>-<name>`), and only once every row is written
//! is the staging location promoted to the target: a file by one rename; a
//! directory, on a local disk, by two renames (the old directory aside, the
//! new one in place), on an object store object by object. A failure, a
//! timeout or Ctrl-C before that deletes the staging location, so the
//! previous output stays as it was and no partial output appears.
//!
//! A `COPY` replaces its target (Spark's and Delta's `overwrite`); to add
//! files to a directory, `INSERT INTO` a table over it.
//!
//! Written files carry the Arrow types other engines write and read:
//! `Utf8View` and `BinaryView` columns (DataFusion's in-memory form of
//! strings) are written as `Utf8` and `Binary`, so a directory holding
//! Kiln's files and pyarrow's or Spark's reads as one table.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, cast};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{KilnError, Result};

/// What a committed `COPY` wrote.
pub(crate) struct Written {
    /// Its `count` column.
    pub batches: Vec<RecordBatch>,
    /// The plan that ran, with its operators' metrics.
    pub plan: Arc<dyn ExecutionPlan>,
}

/// Runs a `COPY` plan through the commit protocol.
pub(crate) async fn copy(ctx: &SessionContext, mut copy: CopyTo) -> Result<Written> {
    let target = ListingTableUrl::parse(&copy.output_url)?;
    let single_file = match copy.options.get("single_file_output").map(|v| v.trim()) {
        Some("true") => true,
        Some("false") => false,
        // DataFusion's automatic rule, decided here so that the staging
        // name's shape cannot change it.
        _ => {
            copy.partition_by.is_empty()
                && !target.is_collection()
                && target.file_extension().is_some()
        }
    };
    copy.options
        .insert("single_file_output".into(), single_file.to_string());
    let staging = staging_url(target.as_str(), single_file)?;
    copy.output_url = staging.as_str().to_string();
    copy.input = Arc::new(standard_types(Arc::unwrap_or_clone(copy.input))?);
    let store = ctx.runtime_env().object_store(target.object_store())?;
    let mut staged = Staged {
        store: Arc::clone(&store),
        url: staging,
        single_file,
        done: false,
    };
    let frame = DataFrame::new(ctx.state(), LogicalPlan::Copy(copy));
    let task = frame.task_ctx();
    let written = async {
        let plan = frame.create_physical_plan().await?;
        let batches = collect(Arc::clone(&plan), Arc::new(task)).await?;
        Ok::<_, DataFusionError>(Written { batches, plan })
    }
    .await;
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            staged.discard().await;
            return Err(e.into());
        }
    };
    if let Err(e) = staged.promote(&target).await {
        staged.discard().await;
        return Err(e);
    }
    Ok(written)
}

/// The hidden sibling of `target` the rows are first written to.
fn staging_url(target: &str, single_file: bool) -> Result<ListingTableUrl> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let trimmed = target.trim_end_matches('/');
    let (parent, name) = trimmed
        .rsplit_once('/')
        .filter(|(_, name)| !name.is_empty())
        .ok_or_else(|| KilnError::Usage(format!("cannot write to the root of {target}")))?;
    let id = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let slash = if single_file { "" } else { "/" };
    Ok(ListingTableUrl::parse(format!(
        "{parent}/.kiln-staging-{id}-{name}{slash}"
    ))?)
}

/// `plan` with its `Utf8View`/`BinaryView` columns cast to `Utf8`/`Binary`.
fn standard_types(plan: LogicalPlan) -> Result<LogicalPlan> {
    let schema = plan.schema();
    let views = schema
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView));
    if !views {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = schema
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(datafusion::common::Column::from((qualifier, field)));
            match field.data_type() {
                DataType::Utf8View => cast(column, DataType::Utf8).alias(field.name()),
                DataType::BinaryView => cast(column, DataType::Binary).alias(field.name()),
                _ => column,
            }
        })
        .collect();
    Ok(LogicalPlanBuilder::from(plan).project(exprs)?.build()?)
}

/// Rows written to a staging location, not yet at their target. Dropped
/// before [`Staged::promote`] (a cancelled statement), it deletes them.
struct Staged {
    store: Arc<dyn ObjectStore>,
    url: ListingTableUrl,
    single_file: bool,
    done: bool,
}

impl Staged {
    fn local_path(url: &ListingTableUrl) -> Option<PathBuf> {
        let url: &url::Url = url.as_ref();
        (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten()
    }

    /// Moves the staged rows to `target`, replacing what was there.
    async fn promote(&mut self, target: &ListingTableUrl) -> Result<()> {
        match (Self::local_path(&self.url), Self::local_path(target)) {
            (Some(from), Some(to)) => promote_local(&from, &to, self.single_file)?,
            _ => self.promote_in_store(target).await?,
        }
        self.done = true;
        Ok(())
    }

    async fn promote_in_store(&self, target: &ListingTableUrl) -> Result<()> {
        let store_err = |location: &Path| {
            let location = location.to_string();
            move |source| KilnError::ObjectStore { location, source }
        };
        let from = self.url.prefix();
        let to = target.prefix();
        if self.single_file {
            return self.store.rename(from, to).await.map_err(store_err(to));
        }
        let old = self.list(to).await.map_err(store_err(to))?;
        let staged = self.list(from).await.map_err(store_err(from))?;
        let mut written = std::collections::HashSet::new();
        for path in staged {
            let dest = path
                .prefix_match(from)
                .into_iter()
                .flatten()
                .fold(to.clone(), |dir, part| dir.join(part));
            self.store
                .rename(&path, &dest)
                .await
                .map_err(store_err(&dest))?;
            written.insert(dest);
        }
        for path in old.into_iter().filter(|p| !written.contains(p)) {
            self.store.delete(&path).await.map_err(store_err(&path))?;
        }
        Ok(())
    }

    /// The objects under `prefix`.
    async fn list(&self, prefix: &Path) -> object_store::Result<Vec<Path>> {
        self.store
            .list(Some(prefix))
            .map_ok(|m| m.location)
            .try_collect()
            .await
    }

    /// Deletes whatever was staged.
    async fn discard(&mut self) {
        self.done = true;
        if let Some(path) = Self::local_path(&self.url) {
            remove_local(&path);
            return;
        }
        let prefix = self.url.prefix().clone();
        let paths = self.list(&prefix).await.unwrap_or_default();
        for path in paths {
            // Best effort: what cannot be deleted now is hidden and named as staging.
            let _ = self.store.delete(&path).await;
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(path) = Self::local_path(&self.url) {
            remove_local(&path);
        } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let rest = Staged {
                store: Arc::clone(&self.store),
                url: self.url.clone(),
                single_file: self.single_file,
                done: true,
            };
            handle.spawn(async move {
                let mut rest = rest;
                rest.discard().await
            });
        }
    }
}

fn remove_local(path: &std::path::Path) {
    // Best effort, as above.
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

/// Local promotion: renames, so a reader sees the old output or the new.
fn promote_local(from: &std::path::Path, to: &std::path::Path, single_file: bool) -> Result<()> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| KilnError::File { path, source }
    };
    if single_file {
        return std::fs::rename(from, to).map_err(io(to));
    }
    // A query with no rows writes no file: the target becomes empty.
    std::fs::create_dir_all(from).map_err(io(from))?;
    if !to.exists() {
        return std::fs::rename(from, to).map_err(io(to));
    }
    let aside = from.with_file_name(format!(
        "{}-replaced",
        from.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    std::fs::rename(to, &aside).map_err(io(to))?;
    if let Err(e) = std::fs::rename(from, to) {
        // Put the old output back: nothing changed.
        let _ = std::fs::rename(&aside, to);
        return Err(io(to)(e));
    }
    remove_local(&aside);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_a_hidden_sibling() {
        let file = staging_url("file:///data/out.parquet", true).unwrap();
        assert!(file.as_str().starts_with("file:///data/.kiln-staging-"));
        assert!(file.as_str().ends_with("-out.parquet"));
        let dir = staging_url("s3://bucket/out/", false).unwrap();
        assert!(dir.as_str().starts_with("s3://bucket/.kiln-staging-"));
        assert!(dir.as_str().ends_with("-out/"));
    }
}
