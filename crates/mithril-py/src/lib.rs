//! Python bindings: extract arguments, release the GIL, call the core crates, convert back.
//! No algorithm lives here.

mod arrow;
mod buffers;
mod cache;
mod checkpoint;
mod dedup;
mod errors;
mod threads;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    checkpoint::register(m)?;
    buffers::register(m)?;
    dedup::register(m)?;
    cache::register(m)?;
    Ok(())
}
