//! `kiln.Session`: a Kiln session (device, options, tables) and the entry
//! points that make DataFrames.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use kiln::{DeviceRequest, Session};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::arrow_io::import_stream;
use crate::errors::{IntoPy, usage};
use crate::frame::PyDataFrame;
use crate::runtime::wait;

/// A Kiln session: its device, its options and its tables.
#[pyclass(module = "kiln._kiln", name = "Session", frozen)]
pub(crate) struct PySession {
    pub(crate) session: Arc<Session>,
}

/// An option's value as Kiln's `SET` takes it: bools as `true`/`false`.
fn option_value(value: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = value.cast::<pyo3::types::PyBool>() {
        return Ok(b.is_true().to_string());
    }
    Ok(value.str()?.to_cow()?.to_string())
}

impl PySession {
    fn frame(&self, frame: datafusion::prelude::DataFrame) -> PyDataFrame {
        PyDataFrame::new(Arc::clone(&self.session), frame)
    }
}

#[pymethods]
impl PySession {
    #[new]
    #[pyo3(signature = (device = None, target_partitions = None, options = None, cluster = None))]
    fn new(
        device: Option<&str>,
        target_partitions: Option<usize>,
        options: Option<&Bound<'_, PyDict>>,
        cluster: Option<&str>,
    ) -> PyResult<Self> {
        let mut builder = Session::builder();
        if let Some(device) = device {
            let request: DeviceRequest = device.parse().py_err()?;
            builder = builder.device(request);
        }
        if let Some(n) = target_partitions {
            if n == 0 {
                return Err(usage("target_partitions must be at least 1"));
            }
            builder = builder.target_partitions(n);
        }
        if let Some(url) = cluster {
            builder = builder.cluster(url);
        }
        let session = builder.build().py_err()?;
        if let Some(options) = options {
            for (key, value) in options.iter() {
                let key: String = key.extract()?;
                session.set_option(&key, &option_value(&value)?).py_err()?;
            }
        }
        Ok(PySession {
            session: Arc::new(session),
        })
    }

    fn __repr__(&self) -> String {
        let device = match self.session.device_info() {
            Some(info) => info.id(),
            None => "auto".to_string(),
        };
        match self.session.cluster() {
            Some(url) => format!("Session(cluster={url})"),
            None => format!("Session(device={device})"),
        }
    }

    /// Runs one SQL statement. DDL, `SET` and `COPY` take effect now; a
    /// query comes back as a lazy DataFrame.
    fn sql(&self, py: Python<'_>, query: &str) -> PyResult<PyDataFrame> {
        let session = Arc::clone(&self.session);
        let query = query.to_string();
        let frame = wait(py, async move { session.sql(&query).await })?;
        Ok(self.frame(frame))
    }

    /// A lazy DataFrame over Parquet at `path` (a file, a directory or a
    /// prefix, local or in an object store).
    fn read_parquet(&self, py: Python<'_>, path: &str) -> PyResult<PyDataFrame> {
        let session = Arc::clone(&self.session);
        let path = path.to_string();
        let frame = wait(py, async move { session.read_parquet(&path).await })?;
        Ok(self.frame(frame))
    }

    /// Registers Parquet at `path` as table `name`.
    fn register_parquet(&self, py: Python<'_>, name: &str, path: &str) -> PyResult<()> {
        let session = Arc::clone(&self.session);
        let (name, path) = (name.to_string(), path.to_string());
        wait(
            py,
            async move { session.register_parquet(&name, &path).await },
        )
    }

    /// Registers Arrow data (any object with `__arrow_c_stream__`) as table
    /// `name`, replacing a table of that name. The data is not copied.
    fn register_arrow(&self, name: &str, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let (schema, batches) = import_stream(data)?;
        let table = MemTable::try_new(schema, vec![batches]).py_err()?;
        self.session
            .context()
            .register_table(name, Arc::new(table))
            .py_err()?;
        Ok(())
    }

    /// Configures the object store of `location` (`s3://bucket/`,
    /// `gs://bucket/`, ...) with explicit options (`aws.access_key_id`,
    /// `aws.endpoint`, `aws.region`, `gcp.service_account_path`, ...), as
    /// `CREATE EXTERNAL TABLE ... OPTIONS` does; without them Kiln reads
    /// the usual environment (`AWS_*`, instance metadata).
    fn configure_store(
        &self,
        location: &str,
        options: std::collections::BTreeMap<String, String>,
    ) -> PyResult<()> {
        let options: Vec<(String, String)> = options.into_iter().collect();
        self.session.configure_store(location, &options).py_err()
    }

    /// A lazy DataFrame over Arrow data (any object with
    /// `__arrow_c_stream__`), not copied.
    fn read_arrow(&self, data: &Bound<'_, PyAny>) -> PyResult<PyDataFrame> {
        let (schema, batches) = import_stream(data)?;
        let table = MemTable::try_new(schema, vec![batches]).py_err()?;
        let frame = self
            .session
            .context()
            .read_table(Arc::new(table))
            .py_err()?;
        Ok(self.frame(frame))
    }

    /// The table (or view) `name` as a lazy DataFrame.
    fn table(&self, py: Python<'_>, name: &str) -> PyResult<PyDataFrame> {
        let session = Arc::clone(&self.session);
        let name = name.to_string();
        let frame = wait(py, async move {
            Ok(session.context().table(name.as_str()).await?)
        })?;
        Ok(self.frame(frame))
    }

    /// Drops table `name`; whether there was one.
    fn deregister(&self, name: &str) -> PyResult<bool> {
        Ok(self
            .session
            .context()
            .deregister_table(name)
            .py_err()?
            .is_some())
    }

    /// The names of the session's tables, sorted.
    fn tables(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .session
            .context()
            .catalog_names()
            .into_iter()
            .filter_map(|c| self.session.context().catalog(&c))
            .flat_map(|catalog| {
                catalog
                    .schema_names()
                    .into_iter()
                    .filter(|s| s != "information_schema")
                    .filter_map(move |s| catalog.schema(&s))
                    .flat_map(|schema| schema.table_names())
            })
            .collect();
        names.sort();
        names
    }

    /// Sets a session option (`kiln.*` or DataFusion's `datafusion.*`), as
    /// SQL `SET` does; the value is checked now.
    fn set(&self, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.session.set_option(key, &option_value(value)?).py_err()
    }

    /// A session option's current value (None when unset).
    fn get(&self, key: &str) -> PyResult<Option<String>> {
        let state = self.session.context().state();
        let entries = state.config().options().entries();
        match entries.into_iter().find(|e| e.key == key) {
            Some(entry) => Ok(entry.value),
            None => Err(usage(format!("unknown option '{key}'"))),
        }
    }

    /// The session's device: `auto`, or the device a named request resolved to.
    #[getter]
    fn device(&self) -> String {
        match self.session.device_info() {
            Some(info) => info.id(),
            None => "auto".to_string(),
        }
    }
}

/// The devices on this machine, as `kiln devices` lists them: one dict per
/// device (`id`, `backend`, `name`, `type`, `memory_bytes`, `details`).
#[pyfunction]
pub(crate) fn devices(py: Python<'_>) -> PyResult<Bound<'_, PyList>> {
    let list = PyList::empty(py);
    for info in &kiln_engine::device::discovered().devices {
        let d = PyDict::new(py);
        d.set_item("id", info.id())?;
        d.set_item("backend", info.backend.to_string())?;
        d.set_item("name", &info.name)?;
        d.set_item("type", format!("{:?}", info.device_type).to_lowercase())?;
        d.set_item("memory_bytes", info.memory_bytes)?;
        d.set_item("details", &info.details)?;
        list.append(d)?;
    }
    Ok(list)
}
