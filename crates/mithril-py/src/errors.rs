//! Map core errors onto the Python hierarchy defined in `mithril.errors`.

use mithril_checkpoint::Error;
use pyo3::exceptions::{PyFileNotFoundError, PyMemoryError, PyOSError, PyPermissionError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::io::ErrorKind;

fn raise(py: Python<'_>, cell: &'static PyOnceLock<Py<PyType>>, name: &str, msg: String) -> PyErr {
    match cell.import(py, "mithril.errors", name) {
        Ok(ty) => PyErr::from_type(ty.clone(), msg),
        Err(e) => e,
    }
}

static CORRUPT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static FORMAT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CONFIG: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static MISSING: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static CANCELLED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static BASE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

pub fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let msg = err.to_string();
        match err {
            Error::Corrupt(_) => raise(py, &CORRUPT, "CorruptDataError", msg),
            Error::Format(_) => raise(py, &FORMAT, "FormatError", msg),
            Error::Invalid(_) => raise(py, &CONFIG, "ConfigError", msg),
            Error::MissingTensor(_) => raise(py, &MISSING, "TensorNotFoundError", msg),
            Error::Base(_) => raise(py, &BASE, "BaseCheckpointError", msg),
            Error::Cancelled(_) => raise(py, &CANCELLED, "CancelledError", msg),
            Error::OutOfMemory(_) => PyMemoryError::new_err(msg),
            Error::Io { path, source } => {
                let text = format!("{}: {source}", path.display());
                match source.kind() {
                    ErrorKind::NotFound => PyFileNotFoundError::new_err(text),
                    ErrorKind::PermissionDenied => PyPermissionError::new_err(text),
                    _ => PyOSError::new_err(text),
                }
            }
        }
    })
}

pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A `mithril.ConfigError` with `msg`.
pub fn config_error(msg: String) -> PyErr {
    Python::attach(|py| raise(py, &CONFIG, "ConfigError", msg))
}

pub fn dedup_to_py(err: mithril_dedup::Error) -> PyErr {
    Python::attach(|py| {
        let msg = err.to_string();
        match err {
            mithril_dedup::Error::Invalid(_) => raise(py, &CONFIG, "ConfigError", msg),
            mithril_dedup::Error::Format(_) => raise(py, &FORMAT, "FormatError", msg),
            mithril_dedup::Error::OutOfMemory(_) => PyMemoryError::new_err(msg),
        }
    })
}

impl<T> IntoPyResult<T> for Result<T, mithril_dedup::Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(dedup_to_py)
    }
}

pub fn cache_to_py(err: mithril_cache::Error) -> PyErr {
    Python::attach(|py| {
        let msg = err.to_string();
        match err {
            mithril_cache::Error::Invalid(_) => raise(py, &CONFIG, "ConfigError", msg),
            mithril_cache::Error::Format(_) => raise(py, &FORMAT, "FormatError", msg),
            mithril_cache::Error::Io { path, source } => {
                let text = format!("{}: {source}", path.display());
                match source.kind() {
                    ErrorKind::NotFound => PyFileNotFoundError::new_err(text),
                    ErrorKind::PermissionDenied => PyPermissionError::new_err(text),
                    _ => PyOSError::new_err(text),
                }
            }
        }
    })
}

impl<T> IntoPyResult<T> for Result<T, mithril_cache::Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(cache_to_py)
    }
}
