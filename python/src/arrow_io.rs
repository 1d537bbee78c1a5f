//! Arrow in and out through the Arrow PyCapsule interface (the C data and
//! C stream interfaces): no buffer is copied either way. What comes in is
//! held by Arrow arrays whose release callbacks return the memory to its
//! producer (pyarrow, polars, ...); what goes out is Kiln's arrays, released
//! when the consumer lets them go.

use std::ffi::CStr;
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::ffi::FFI_ArrowSchema;
use arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyCapsuleMethods};

use crate::errors::usage;
use crate::runtime::wait_detached;

const STREAM: &CStr = c"arrow_array_stream";
const SCHEMA: &CStr = c"arrow_schema";

/// An `arrow_array_stream` capsule over `reader`.
pub(crate) fn stream_capsule<'py>(
    py: Python<'py>,
    reader: Box<dyn RecordBatchReader + Send>,
) -> PyResult<Bound<'py, PyCapsule>> {
    PyCapsule::new_with_value(py, FFI_ArrowArrayStream::new(reader), STREAM)
}

/// An `arrow_schema` capsule of `schema`.
pub(crate) fn schema_capsule<'py>(
    py: Python<'py>,
    schema: &Schema,
) -> PyResult<Bound<'py, PyCapsule>> {
    let ffi = FFI_ArrowSchema::try_from(schema)
        .map_err(|e| usage(format!("cannot export the schema to Arrow: {e}")))?;
    PyCapsule::new_with_value(py, ffi, SCHEMA)
}

/// The batches of any object with `__arrow_c_stream__` (a pyarrow Table or
/// RecordBatchReader, a polars DataFrame, ...), read to the end.
pub(crate) fn import_stream(data: &Bound<'_, PyAny>) -> PyResult<(SchemaRef, Vec<RecordBatch>)> {
    let py = data.py();
    if !data.hasattr(pyo3::intern!(py, "__arrow_c_stream__"))? {
        let kind = data.get_type().name()?;
        return Err(usage(format!(
            "a {kind} is not Arrow data: pass an object with __arrow_c_stream__ \
             (a pyarrow Table or RecordBatchReader, a polars or pandas DataFrame)"
        )));
    }
    let capsule = data.call_method0(pyo3::intern!(py, "__arrow_c_stream__"))?;
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| usage("__arrow_c_stream__ did not return a capsule"))?;
    let pointer = capsule.pointer_checked(Some(STREAM))?;
    // SAFETY: the capsule is an `arrow_array_stream`, so its pointer is a
    // valid FFI_ArrowArrayStream; `from_raw` moves it out and marks the
    // capsule's copy released, as the PyCapsule protocol asks a consumer to.
    let stream = unsafe { FFI_ArrowArrayStream::from_raw(pointer.cast().as_ptr()) };
    let reader = ArrowArrayStreamReader::try_new(stream)
        .map_err(|e| usage(format!("cannot read the Arrow stream: {e}")))?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, ArrowError>>()
        .map_err(|e| usage(format!("reading the Arrow stream: {e}")))?;
    Ok((schema, batches))
}

/// An Arrow stream over a query's results: each batch is computed when the
/// consumer asks for it, with the GIL released meanwhile.
pub(crate) struct QueryReader {
    schema: SchemaRef,
    stream: Option<SendableRecordBatchStream>,
}

impl QueryReader {
    pub(crate) fn new(stream: SendableRecordBatchStream) -> Self {
        QueryReader {
            schema: stream.schema(),
            stream: Some(stream),
        }
    }
}

impl Iterator for QueryReader {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = self.stream.as_mut()?;
        let next = wait_detached(async {
            match stream.next().await {
                Some(batch) => Ok(Some(batch?)),
                None => Ok(None),
            }
        });
        match next {
            Ok(Some(batch)) => Some(Ok(batch)),
            Ok(None) => {
                self.stream = None;
                None
            }
            Err(e) => {
                // The query stops at its first error.
                self.stream = None;
                Some(Err(e))
            }
        }
    }
}

impl RecordBatchReader for QueryReader {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

/// Batches already in memory, as a one-shot Arrow stream object
/// (`__arrow_c_stream__`) that pyarrow, polars and DuckDB read without a
/// copy.
#[pyclass(module = "kiln._kiln", name = "ArrowStream", frozen)]
pub(crate) struct ArrowStream {
    reader: std::sync::Mutex<Option<Box<dyn RecordBatchReader + Send>>>,
    schema: SchemaRef,
}

impl ArrowStream {
    pub(crate) fn of_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let reader = RecordBatchIterator::new(batches.into_iter().map(Ok), Arc::clone(&schema));
        ArrowStream {
            reader: std::sync::Mutex::new(Some(Box::new(reader))),
            schema,
        }
    }
}

#[pymethods]
impl ArrowStream {
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        // The schema is what it is; a consumer that asked for another casts.
        let _ = requested_schema;
        let reader = self
            .reader
            .lock()
            .map_err(|_| usage("this Arrow stream failed while it was read"))?
            .take()
            .ok_or_else(|| usage("this Arrow stream was already read"))?;
        stream_capsule(py, reader)
    }

    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        schema_capsule(py, &self.schema)
    }
}
