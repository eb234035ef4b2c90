//! Decode outputs from the recycled pool (`mithril_checkpoint::buffer_pool`), handed to
//! numpy through the buffer protocol, so that a tensor's memory returns to the pool when
//! the last array or tensor viewing it is garbage.

use crate::errors::IntoPyResult;
use mithril_checkpoint::buffer_pool::{self, PooledBuffer, DECODE_POOL, POOLED_FROM};
use pyo3::exceptions::PyBufferError;
use pyo3::prelude::*;
use std::ffi::c_int;

/// Uninitialised, writable memory of a fixed length for one decoded tensor
/// (`numpy.frombuffer` views it without copying). It holds whatever bytes it held before:
/// a reader must write all of them before anyone reads it.
#[pyclass(frozen, module = "mithril._native")]
struct DecodeBuffer {
    inner: PooledBuffer,
}

#[pymethods]
impl DecodeBuffer {
    /// `nbytes` (at least 1) of memory, recycled when the pool holds a block that fits.
    /// `MemoryError` when the allocator refuses.
    #[new]
    fn new(nbytes: usize) -> PyResult<Self> {
        if nbytes == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a decode buffer holds at least one byte",
            ));
        }
        let inner = PooledBuffer::new(&DECODE_POOL, nbytes).py()?;
        Ok(DecodeBuffer { inner })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Export the memory as a writable, one-dimensional buffer of bytes.
    ///
    /// # Safety
    /// Called by CPython with a valid `view` to fill in.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let inner = &slf.get().inner;
        let len = pyo3::ffi::Py_ssize_t::try_from(inner.len())
            .map_err(|_| PyBufferError::new_err("decode buffer too large to export"))?;
        // SAFETY: `view` is CPython's to fill; the memory is `len` bytes owned by this
        // frozen object, which `PyBuffer_FillInfo` keeps alive (it takes a reference) for as
        // long as the export lasts, and which never moves or resizes it.
        let status = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                inner.as_mut_ptr().cast(),
                len,
                0,
                flags,
            )
        };
        if status == 0 {
            Ok(())
        } else {
            Err(PyErr::fetch(slf.py()))
        }
    }
}

/// Give the kept decode blocks and encoder payload buffers back to the allocator; returns
/// the bytes released.
#[pyfunction]
fn release_kept_memory() -> usize {
    buffer_pool::release_all()
}

/// Bytes kept for reuse: decode blocks and encoder payload buffers.
#[pyfunction]
fn kept_memory_bytes() -> usize {
    buffer_pool::kept_bytes()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DecodeBuffer>()?;
    m.add("POOLED_FROM", POOLED_FROM)?;
    m.add_function(wrap_pyfunction!(release_kept_memory, m)?)?;
    m.add_function(wrap_pyfunction!(kept_memory_bytes, m)?)?;
    Ok(())
}
