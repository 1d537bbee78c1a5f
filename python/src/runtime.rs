//! Running Kiln's async work from Python: one multi-threaded tokio runtime
//! for the process, the GIL released while a query runs, and Ctrl-C
//! (Python's pending signals, checked every 50 ms) cancelling it.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use arrow::error::ArrowError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// The process's runtime, started on first use; a failure to start it
/// (no threads to be had) is a `ResourceError`.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("kiln-worker")
        .enable_all()
        .build()
        .map_err(|e| {
            crate::errors::ResourceError::new_err(format!("cannot start Kiln's threads: {e}"))
        })?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// How often a waiting query looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Why a wait ended without a value.
enum Stop {
    Kiln(Box<kiln::KilnError>),
    /// Python raised (KeyboardInterrupt from Ctrl-C): the work was dropped.
    Python(PyErr),
}

/// Runs `work` to completion with the GIL released. Ctrl-C raises
/// `KeyboardInterrupt` here, and the work is dropped (a query's streams and
/// tasks with it), so nothing of it runs on.
pub(crate) fn wait<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: Future<Output = kiln::Result<T>> + Send,
    T: Send,
{
    let runtime = runtime()?;
    let outcome = py.detach(move || {
        runtime.block_on(async move {
            let mut work = std::pin::pin!(work);
            loop {
                tokio::select! {
                    out = &mut work => return out.map_err(|e| Stop::Kiln(Box::new(e))),
                    _ = tokio::time::sleep(SIGNAL_POLL) => {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            return Err(Stop::Python(e));
                        }
                    }
                }
            }
        })
    });
    match outcome {
        Ok(value) => Ok(value),
        Err(Stop::Kiln(e)) => Err(to_py(*e)),
        Err(Stop::Python(e)) => Err(e),
    }
}

/// Runs `work` on the runtime from a thread that may or may not hold the
/// GIL (an Arrow stream's consumer), releasing it meanwhile. Ctrl-C stops
/// the work as `Cancelled`: the consumer (pyarrow, polars, ...) raises its
/// own error type with Kiln's message, "cancelled (Ctrl-C)" (as
/// datafusion-python's streams do; a C stream has no way to raise
/// KeyboardInterrupt through its reader).
pub(crate) fn wait_detached<T, F>(work: F) -> Result<T, ArrowError>
where
    F: Future<Output = kiln::Result<T>> + Send,
    T: Send,
{
    let failed = |e: kiln::KilnError| ArrowError::ExternalError(Box::new(e));
    Python::attach(|py| match wait(py, work) {
        Ok(value) => Ok(value),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => {
            Err(failed(kiln::KilnError::Cancelled))
        }
        Err(e) => Err(failed(kiln::KilnError::Usage(e.to_string()))),
    })
}
