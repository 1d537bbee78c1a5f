//! `kiln._kiln`: Kiln's Python extension module. A thin layer over the
//! `kiln` crate: every operation is the Rust one. The Python package
//! (`python/kiln/`) re-exports these classes and adds conversions to
//! pyarrow, polars and pandas.

use pyo3::prelude::*;

mod arrow_io;
mod errors;
mod expr;
mod frame;
mod runtime;
mod session;

/// The extension module.
#[pymodule]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<session::PySession>()?;
    m.add_class::<frame::PyDataFrame>()?;
    m.add_class::<frame::PyGroupBy>()?;
    m.add_class::<expr::PyExpr>()?;
    m.add_class::<expr::PySortExpr>()?;
    m.add_class::<arrow_io::ArrowStream>()?;
    m.add_function(wrap_pyfunction!(expr::col, m)?)?;
    m.add_function(wrap_pyfunction!(expr::lit, m)?)?;
    m.add_function(wrap_pyfunction!(expr::call_function, m)?)?;
    m.add_function(wrap_pyfunction!(expr::function_names, m)?)?;
    m.add_function(wrap_pyfunction!(session::devices, m)?)?;
    Ok(())
}
