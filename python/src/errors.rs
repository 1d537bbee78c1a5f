//! Kiln's errors as Python exceptions: `kiln.KilnError`, and under it
//! `UserError` (the query, the data, an argument: running again fails the
//! same way), `ResourceError` (a store, the network, a device, memory:
//! running again may pass) and `InternalError` (a bug in Kiln). The message
//! is Kiln's one line, as the CLI prints it.

use datafusion::error::DataFusionError;
use kiln::KilnError;
use pyo3::prelude::*;

pyo3::create_exception!(
    kiln,
    PyKilnError,
    pyo3::exceptions::PyException,
    "Base class of every error Kiln raises."
);
pyo3::create_exception!(
    kiln,
    UserError,
    PyKilnError,
    "The query, the data or an argument is wrong: running again fails the same way."
);
pyo3::create_exception!(
    kiln,
    ResourceError,
    PyKilnError,
    "A store, the network, a device or memory failed: running again may succeed."
);
pyo3::create_exception!(
    kiln,
    InternalError,
    PyKilnError,
    "A bug in Kiln or a library it uses; please report it."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("KilnError", py.get_type::<PyKilnError>())?;
    m.add("UserError", py.get_type::<UserError>())?;
    m.add("ResourceError", py.get_type::<ResourceError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    Ok(())
}

/// Whether Kiln (not the user or the environment) is at fault.
fn is_internal(e: &KilnError) -> bool {
    match e {
        KilnError::Panic(_) | KilnError::Internal(_) => true,
        KilnError::DataFusion(DataFusionError::Internal(_)) => true,
        KilnError::Statement { source, .. } => is_internal(source),
        _ => false,
    }
}

/// The Python exception of a Kiln error.
pub(crate) fn to_py(e: KilnError) -> PyErr {
    let message = e.one_line();
    if matches!(e, KilnError::Cancelled) {
        return pyo3::exceptions::PyKeyboardInterrupt::new_err(message);
    }
    if is_internal(&e) {
        InternalError::new_err(message)
    } else if e.is_retryable() {
        ResourceError::new_err(message)
    } else {
        UserError::new_err(message)
    }
}

/// A `UserError` for a bad argument.
pub(crate) fn usage(message: impl Into<String>) -> PyErr {
    UserError::new_err(message.into())
}

/// `?` on DataFusion's and Kiln's results inside the bindings.
pub(crate) trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T, E: Into<KilnError>> IntoPy<T> for Result<T, E> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(|e| to_py(e.into()))
    }
}
