//! `kiln.DataFrame`: DataFusion's lazy DataFrame with Kiln's additions
//! (`embed`, `knn_join`, `vector_search`, ...). Nothing runs until a
//! terminal operation (`to_arrow`, `collect`, `write_parquet`, `show`,
//! `count`, or a consumer of `__arrow_c_stream__`).

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::logical_expr::{Expr, SortExpr};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use kiln::{KilnDataFrameExt, Metric, Session};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyList, PyString, PyTuple};

use crate::arrow_io::{ArrowStream, QueryReader, schema_capsule, stream_capsule};
use crate::errors::{IntoPy, usage};
use crate::expr::{PySortExpr, column_or_expr, operand, vector};
use crate::runtime::wait;

/// A lazy query: a plan and the session it runs in.
#[pyclass(module = "kiln._kiln", name = "DataFrame", frozen)]
pub(crate) struct PyDataFrame {
    session: Arc<Session>,
    frame: DataFrame,
}

/// `df.group_by(keys)`: `.agg(...)` makes the aggregate.
#[pyclass(module = "kiln._kiln", name = "GroupBy", frozen)]
pub(crate) struct PyGroupBy {
    session: Arc<Session>,
    frame: DataFrame,
    keys: Vec<Expr>,
}

impl PyDataFrame {
    pub(crate) fn new(session: Arc<Session>, frame: DataFrame) -> Self {
        PyDataFrame { session, frame }
    }

    fn derive(&self, frame: DataFrame) -> PyDataFrame {
        PyDataFrame::new(Arc::clone(&self.session), frame)
    }

    fn cloned(&self) -> DataFrame {
        self.frame.clone()
    }
}

/// Expressions from `*args`, each a column name or an `Expr`; a single
/// list or tuple argument stands for its items.
fn exprs(args: &Bound<'_, PyTuple>) -> PyResult<Vec<Expr>> {
    let items: Vec<Bound<'_, PyAny>> = if args.len() == 1
        && (args.get_item(0)?.is_instance_of::<PyList>()
            || args.get_item(0)?.is_instance_of::<PyTuple>())
    {
        args.get_item(0)?.try_iter()?.collect::<PyResult<_>>()?
    } else {
        args.iter().collect()
    };
    items.iter().map(column_or_expr).collect()
}

fn metric(name: &str) -> PyResult<Metric> {
    name.parse::<Metric>().map_err(usage)
}

fn join_type(how: &str) -> PyResult<JoinType> {
    Ok(match how.to_ascii_lowercase().as_str() {
        "inner" => JoinType::Inner,
        "left" => JoinType::Left,
        "right" => JoinType::Right,
        "full" | "outer" => JoinType::Full,
        "semi" | "left_semi" => JoinType::LeftSemi,
        "anti" | "left_anti" => JoinType::LeftAnti,
        other => {
            return Err(usage(format!(
                "join: how must be 'inner', 'left', 'right', 'full', 'semi' or 'anti', got '{other}'"
            )));
        }
    })
}

/// Column names from a name or a list of names.
fn names(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<String>> {
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(vec![s.to_cow()?.to_string()]);
    }
    value
        .extract::<Vec<String>>()
        .map_err(|_| usage(format!("{what} must be a column name or a list of names")))
}

#[pymethods]
impl PyDataFrame {
    fn __repr__(&self) -> String {
        let columns: Vec<String> = self
            .frame
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
        format!("DataFrame[{}]", columns.join(", "))
    }

    /// The output's column names.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.frame
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The columns `exprs` (names or expressions), in that order.
    #[pyo3(signature = (*args))]
    fn select(&self, args: &Bound<'_, PyTuple>) -> PyResult<PyDataFrame> {
        let frame = self.cloned().select(exprs(args)?).py_err()?;
        Ok(self.derive(frame))
    }

    /// The rows where `predicate` (an Expr, or SQL text such as
    /// `"lang = 'en'"`) is true.
    fn filter(&self, predicate: &Bound<'_, PyAny>) -> PyResult<PyDataFrame> {
        let predicate = match predicate.cast::<PyString>() {
            Ok(sql) => self.frame.parse_sql_expr(&sql.to_cow()?).py_err()?,
            Err(_) => operand(predicate)?,
        };
        Ok(self.derive(self.cloned().filter(predicate).py_err()?))
    }

    /// Adds (or replaces) column `name` computed by `expr`.
    fn with_column(&self, name: &str, expr: &Bound<'_, PyAny>) -> PyResult<PyDataFrame> {
        let expr = operand(expr)?.unalias();
        let frame = self.cloned().with_column(name, expr).py_err()?;
        Ok(self.derive(frame))
    }

    /// Renames column `old` to `new`.
    fn with_column_renamed(&self, old: &str, new: &str) -> PyResult<PyDataFrame> {
        let frame = self.cloned().with_column_renamed(old, new).py_err()?;
        Ok(self.derive(frame))
    }

    /// Drops the named columns.
    #[pyo3(signature = (*columns))]
    fn drop(&self, columns: Vec<String>) -> PyResult<PyDataFrame> {
        let names: Vec<&str> = columns.iter().map(String::as_str).collect();
        Ok(self.derive(self.cloned().drop_columns(&names).py_err()?))
    }

    /// One row per group of `group_by` with the aggregates `aggs`
    /// (datafusion-python's form; `group_by(...).agg(...)` is polars').
    fn aggregate(
        &self,
        group_by: &Bound<'_, PyAny>,
        aggs: &Bound<'_, PyAny>,
    ) -> PyResult<PyDataFrame> {
        let as_tuple = |v: &Bound<'_, PyAny>| -> PyResult<Vec<Expr>> {
            let items: Vec<Bound<'_, PyAny>> = v.try_iter()?.collect::<PyResult<_>>()?;
            items.iter().map(column_or_expr).collect()
        };
        let frame = self
            .cloned()
            .aggregate(as_tuple(group_by)?, as_tuple(aggs)?)
            .py_err()?;
        Ok(self.derive(frame))
    }

    /// Groups by the keys (names or expressions): `.agg(...)` aggregates.
    #[pyo3(signature = (*keys))]
    fn group_by(&self, keys: &Bound<'_, PyTuple>) -> PyResult<PyGroupBy> {
        Ok(PyGroupBy {
            session: Arc::clone(&self.session),
            frame: self.cloned(),
            keys: exprs(keys)?,
        })
    }

    /// Joins `right`: on the columns `on` (named alike on both sides; the
    /// right side's copies are dropped), or `left_on`/`right_on`. `how` is
    /// 'inner', 'left', 'right', 'full', 'semi' or 'anti'.
    #[pyo3(signature = (right, on = None, how = "inner", left_on = None, right_on = None))]
    fn join(
        &self,
        right: &PyDataFrame,
        on: Option<&Bound<'_, PyAny>>,
        how: &str,
        left_on: Option<&Bound<'_, PyAny>>,
        right_on: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDataFrame> {
        let how = join_type(how)?;
        let (left_keys, right_keys, shared) = match (on, left_on, right_on) {
            (Some(on), None, None) => {
                let on = names(on, "join: on")?;
                (on.clone(), on, true)
            }
            (None, Some(l), Some(r)) => (
                names(l, "join: left_on")?,
                names(r, "join: right_on")?,
                false,
            ),
            _ => {
                return Err(usage(
                    "join: give either on=... or both left_on=... and right_on=...",
                ));
            }
        };
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(usage(
                "join: left_on and right_on must name as many columns, at least one",
            ));
        }
        // Each side under its own name, so that columns named alike on
        // both sides stay apart.
        let left = self.cloned().alias("__kiln_left").py_err()?;
        let right_frame = right.cloned().alias("__kiln_right").py_err()?;
        let l: Vec<&str> = left_keys.iter().map(String::as_str).collect();
        let r: Vec<&str> = right_keys.iter().map(String::as_str).collect();
        let joined = left.join(right_frame, how, &l, &r, None).py_err()?;
        // Names as the user knows them: unqualified, the right side's join
        // keys dropped when `on` named them on both sides, and a right
        // column that clashes with a left one suffixed `_right` (polars).
        let left_names: Vec<String> = self.columns();
        let mut projection = Vec::new();
        for (qualifier, field) in joined.schema().iter() {
            let column = datafusion::common::Column::new(qualifier.cloned(), field.name());
            let is_right = qualifier.is_some_and(|q| q.table() == "__kiln_right");
            let name = field.name();
            if is_right {
                if matches!(how, JoinType::LeftSemi | JoinType::LeftAnti) {
                    continue;
                }
                if shared && right_keys.contains(name) {
                    continue;
                }
                if left_names.contains(name) {
                    projection.push(Expr::Column(column).alias(format!("{name}_right")));
                    continue;
                }
            }
            projection.push(Expr::Column(column).alias(name));
        }
        let frame = joined.select(projection).py_err()?;
        Ok(self.derive(frame))
    }

    /// Sorts by the keys: names, expressions or `expr.desc()`; `descending`
    /// (one bool or one per key) applies to names and expressions.
    #[pyo3(signature = (*by, descending = None))]
    fn sort(
        &self,
        by: &Bound<'_, PyTuple>,
        descending: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDataFrame> {
        let keys: Vec<Bound<'_, PyAny>> = by.iter().collect();
        let flags: Vec<bool> = match descending {
            None => vec![false; keys.len()],
            Some(d) => match d.extract::<bool>() {
                Ok(b) => vec![b; keys.len()],
                Err(_) => d.extract::<Vec<bool>>()?,
            },
        };
        if flags.len() != keys.len() {
            return Err(usage(format!(
                "sort: {} keys but {} descending flags",
                keys.len(),
                flags.len()
            )));
        }
        let sort = keys
            .iter()
            .zip(flags)
            .map(|(key, desc)| match key.extract::<PySortExpr>() {
                Ok(s) => Ok(s.sort),
                Err(_) => Ok(SortExpr::new(column_or_expr(key)?, !desc, desc)),
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(self.derive(self.cloned().sort(sort).py_err()?))
    }

    /// The first `n` rows after skipping `offset`.
    #[pyo3(signature = (n, offset = 0))]
    fn limit(&self, n: usize, offset: usize) -> PyResult<PyDataFrame> {
        Ok(self.derive(self.cloned().limit(offset, Some(n)).py_err()?))
    }

    /// The distinct rows.
    fn distinct(&self) -> PyResult<PyDataFrame> {
        Ok(self.derive(self.cloned().distinct().py_err()?))
    }

    /// The rows of this frame, then those of `other` (same columns).
    fn union(&self, other: &PyDataFrame) -> PyResult<PyDataFrame> {
        Ok(self.derive(self.cloned().union(other.cloned()).py_err()?))
    }

    /// Adds column `as_`: the embedding of text column `column` by `model`
    /// (a name or a directory; default all-MiniLM-L6-v2), as
    /// FixedSizeList<Float32>. NULL text gives NULL.
    #[pyo3(signature = (column, as_ = "embedding", model = None))]
    fn embed(&self, column: &str, as_: &str, model: Option<&str>) -> PyResult<PyDataFrame> {
        Ok(self.derive(self.cloned().embed(column, model, as_).py_err()?))
    }

    /// For every row, its `k` nearest rows of `corpus` by the vector columns
    /// `left_on` and `right_on` (default: the same name): this frame's
    /// columns, the corpus's (clashing names prefixed `corpus_`), `rank`
    /// and `score`. Exact; `metric` is 'cosine', 'dot' or 'l2'.
    #[pyo3(signature = (corpus, left_on, right_on = None, k = 10, metric = "cosine"))]
    fn knn_join(
        &self,
        corpus: &PyDataFrame,
        left_on: &str,
        right_on: Option<&str>,
        k: usize,
        metric: &str,
    ) -> PyResult<PyDataFrame> {
        let frame = self
            .cloned()
            .knn_join(
                left_on,
                corpus.cloned(),
                right_on.unwrap_or(left_on),
                k,
                self::metric(metric)?,
            )
            .py_err()?;
        Ok(self.derive(frame))
    }

    /// The `k` rows whose vector column `column` is closest to `query` (a
    /// list of numbers): all columns and `score`, closest first. Exact.
    #[pyo3(signature = (column, query, k = 10, metric = "cosine"))]
    fn vector_search(
        &self,
        column: &str,
        query: &Bound<'_, PyAny>,
        k: usize,
        metric: &str,
    ) -> PyResult<PyDataFrame> {
        let query = vector(query)?;
        let frame = self
            .cloned()
            .vector_search(column, &query, k, self::metric(metric)?)
            .py_err()?;
        Ok(self.derive(frame))
    }

    /// The profile of the rows: one row per column (counts, approximate
    /// distinct count, min/max, mean, stddev and quantiles, text lengths,
    /// vector norms, the `top` most frequent values).
    #[pyo3(signature = (top = 20))]
    fn profile(&self, top: usize) -> PyResult<PyDataFrame> {
        Ok(self.derive(self.cloned().profile(top).py_err()?))
    }

    /// The as-of (point-in-time) join with `other`: for each row, the latest
    /// row of `other` with equal `by` keys whose `on` time is at or before
    /// this row's (Polars' `join_asof`, backward).
    #[pyo3(signature = (
        other, on = None, left_on = None, right_on = None, by = None, by_left = None,
        by_right = None, strategy = "backward", tolerance = None, allow_exact_matches = true,
        how = "left"
    ))]
    #[allow(clippy::too_many_arguments)]
    fn join_asof(
        &self,
        other: &PyDataFrame,
        on: Option<&str>,
        left_on: Option<&str>,
        right_on: Option<&str>,
        by: Option<&Bound<'_, PyAny>>,
        by_left: Option<&Bound<'_, PyAny>>,
        by_right: Option<&Bound<'_, PyAny>>,
        strategy: &str,
        tolerance: Option<&Bound<'_, PyAny>>,
        allow_exact_matches: bool,
        how: &str,
    ) -> PyResult<PyDataFrame> {
        const F: &str = "join_asof";
        if strategy != "backward" {
            return Err(usage(format!(
                "{F}: strategy must be 'backward' (the latest row at or before), got '{strategy}'"
            )));
        }
        let keep_unmatched = match how {
            "left" => true,
            "inner" => false,
            other => {
                return Err(usage(format!(
                    "{F}: how must be 'left' or 'inner', got '{other}'"
                )));
            }
        };
        let (lt, rt) = match (on, left_on, right_on) {
            (Some(on), None, None) => (on.to_string(), on.to_string()),
            (None, Some(l), Some(r)) => (l.to_string(), r.to_string()),
            _ => {
                return Err(usage(format!(
                    "{F}: give the time column as on=NAME, or as left_on= and right_on="
                )));
            }
        };
        let (lk, rk) = match (by, by_left, by_right) {
            (Some(by), None, None) => {
                let by = names(by, "join_asof: by")?;
                (by.clone(), by)
            }
            (None, Some(l), Some(r)) => (
                names(l, "join_asof: by_left")?,
                names(r, "join_asof: by_right")?,
            ),
            (None, None, None) => (vec![], vec![]),
            _ => {
                return Err(usage(format!(
                    "{F}: give the keys as by=, or as by_left= and by_right="
                )));
            }
        };
        if lk.len() != rk.len() {
            return Err(usage(format!(
                "{F}: {} left keys but {} right keys",
                lk.len(),
                rk.len()
            )));
        }
        let tolerance = match tolerance {
            None => None,
            Some(t) if t.is_instance_of::<pyo3::types::PyBool>() => {
                return Err(usage(format!(
                    "{F}: tolerance must be a number or a timedelta"
                )));
            }
            Some(t) => Some(if let Ok(n) = t.extract::<i64>() {
                kiln::AsofTolerance::Units(n)
            } else if let Ok(v) = t.extract::<f64>() {
                kiln::AsofTolerance::Value(v)
            } else if let Ok(d) = t.extract::<std::time::Duration>() {
                kiln::AsofTolerance::Duration(d)
            } else {
                return Err(usage(format!(
                    "{F}: tolerance must be a number or a non-negative timedelta"
                )));
            }),
        };
        let by: Vec<(&str, &str)> = lk
            .iter()
            .zip(&rk)
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        let options = kiln::AsofOptions {
            strict: !allow_exact_matches,
            tolerance,
            keep_unmatched,
        };
        Ok(self.derive(
            self.cloned()
                .asof_join(other.cloned(), &by, (&lt, &rt), options)
                .py_err()?,
        ))
    }

    /// How `current` drifted from these rows (the reference): one row per
    /// column (`columns`, or all) with its test, statistic, p-value or
    /// distance, threshold, verdict and PSI.
    #[pyo3(signature = (current, columns = None))]
    fn drift(
        &self,
        current: &PyDataFrame,
        columns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyDataFrame> {
        let columns = match columns {
            Some(c) => names(c, "drift: columns")?,
            None => Vec::new(),
        };
        let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
        Ok(self.derive(self.cloned().drift(current.cloned(), &columns).py_err()?))
    }

    /// The column lineage of these rows, as the JSON of OpenLineage's
    /// `columnLineage` facet.
    fn lineage(&self) -> PyResult<String> {
        let lineage = self.cloned().lineage().py_err()?;
        Ok(kiln::lineage::column_lineage_facet(&lineage).to_string())
    }

    /// The plan as text, with where each operator runs (GPU stage or CPU,
    /// and why); `analyze` runs the query and adds its metrics.
    #[pyo3(signature = (analyze = false, verbose = false))]
    fn explain(&self, py: Python<'_>, analyze: bool, verbose: bool) -> PyResult<String> {
        let frame = self.cloned();
        wait(py, async move {
            let batches = frame.explain(verbose, analyze)?.collect().await?;
            kiln::cli::output::plan_text(batches)
        })
    }

    /// Runs the query; the rows as an Arrow stream object
    /// (`__arrow_c_stream__`) holding every batch. A query that runs past a
    /// second shows its progress (rows so far, time) on stderr when stderr
    /// is a terminal, as the CLI does.
    fn _collect_stream(&self, py: Python<'_>) -> PyResult<ArrowStream> {
        let frame = self.cloned();
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = wait(py, async move {
            let mut stream = frame.execute_stream().await?;
            let mut progress = kiln::cli::progress::Progress::stderr();
            let mut ticks = tokio::time::interval(std::time::Duration::from_millis(250));
            let (mut batches, mut rows) = (Vec::new(), 0usize);
            loop {
                tokio::select! {
                    next = stream.next() => match next {
                        Some(batch) => {
                            let batch = batch?;
                            rows += batch.num_rows();
                            batches.push(batch);
                        }
                        None => break,
                    },
                    _ = ticks.tick() => progress.update(|elapsed| {
                        format!("kiln: {rows} rows, {:.1} s", elapsed.as_secs_f64())
                    }),
                }
            }
            progress.finish();
            Ok(batches)
        })?;
        Ok(ArrowStream::of_batches(schema, batches))
    }

    /// The number of rows.
    fn count(&self, py: Python<'_>) -> PyResult<usize> {
        let frame = self.cloned();
        wait(py, async move { Ok(frame.count().await?) })
    }

    /// Writes the rows as Parquet at `path`, replacing what is there (one
    /// file when `single_file`, default: when `path` has an extension; else
    /// a directory), committed only when every row is written. Returns the
    /// number of rows written.
    #[pyo3(signature = (path, single_file = None))]
    fn write_parquet(
        &self,
        py: Python<'_>,
        path: &str,
        single_file: Option<bool>,
    ) -> PyResult<u64> {
        let session = Arc::clone(&self.session);
        let frame = self.cloned();
        let path = path.to_string();
        wait(py, async move {
            session.write_parquet(frame, &path, single_file).await
        })
    }

    /// The first `n` rows as a text table.
    #[pyo3(signature = (n = 20))]
    fn _show_text(&self, py: Python<'_>, n: usize) -> PyResult<String> {
        let frame = self.cloned().limit(0, Some(n)).py_err()?;
        let batches = wait(py, async move { Ok(frame.collect().await?) })?;
        let text = if batches.iter().all(|b| b.num_rows() == 0) {
            let empty = arrow::array::RecordBatch::new_empty(Arc::new(
                self.frame.schema().as_arrow().clone(),
            ));
            arrow::util::pretty::pretty_format_batches(&[empty])
        } else {
            arrow::util::pretty::pretty_format_batches(&batches)
        };
        text.map(|t| t.to_string())
            .map_err(|e| usage(format!("cannot format the rows: {e}")))
    }

    /// The rows as an Arrow C stream, computed batch by batch as the
    /// consumer reads (the PyCapsule interface).
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let frame = self.cloned();
        let stream = wait(py, async move { Ok(frame.execute_stream().await?) })?;
        stream_capsule(py, Box::new(QueryReader::new(stream)))
    }

    /// The output's schema as an Arrow C schema (the PyCapsule interface).
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        schema_capsule(py, self.frame.schema().as_arrow())
    }
}

#[pymethods]
impl PyGroupBy {
    /// One row per group: the keys, then the aggregates.
    #[pyo3(signature = (*aggs))]
    fn agg(&self, aggs: &Bound<'_, PyTuple>) -> PyResult<PyDataFrame> {
        let frame = self
            .frame
            .clone()
            .aggregate(self.keys.clone(), exprs(aggs)?)
            .py_err()?;
        Ok(PyDataFrame::new(Arc::clone(&self.session), frame))
    }
}
