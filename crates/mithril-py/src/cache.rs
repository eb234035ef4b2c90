//! `mithril._native.CacheStore`: the content-addressed store of `mithril-cache`.

use crate::errors::{config_error, IntoPyResult};
use mithril_cache::{Action, Store};
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[pyclass(module = "mithril._native", name = "CacheStore", frozen)]
pub struct PyCacheStore {
    inner: Store,
}

fn action_dict<'py>(py: Python<'py>, a: &Action) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("key", &a.key)?;
    d.set_item("outputs", a.outputs.clone())?;
    d.set_item("meta", a.meta.clone())?;
    Ok(d)
}

#[pymethods]
impl PyCacheStore {
    #[new]
    #[pyo3(signature = (root, max_bytes=None))]
    fn new(py: Python<'_>, root: PathBuf, max_bytes: Option<u64>) -> PyResult<Self> {
        let inner = py.detach(|| Store::open(&root, max_bytes)).py()?;
        Ok(Self { inner })
    }

    #[getter]
    fn root(&self) -> PathBuf {
        self.inner.root().to_path_buf()
    }

    #[getter]
    fn max_bytes(&self) -> Option<u64> {
        self.inner.max_bytes()
    }

    /// Store the bytes of any buffer; returns the blob name.
    fn put(&self, py: Python<'_>, data: PyBuffer<u8>) -> PyResult<String> {
        if !data.is_c_contiguous() {
            return Err(config_error("data must be a contiguous buffer".into()));
        }
        // SAFETY: the PyBuffer keeps the exporter's memory alive and pinned during the call.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
        py.detach(|| self.inner.put(bytes)).py()
    }

    fn get<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data = py.detach(|| self.inner.get(name)).py()?;
        Ok(data.map(|d| PyBytes::new(py, &d)))
    }

    fn __contains__(&self, name: &str) -> bool {
        self.inner.contains(name)
    }

    #[pyo3(signature = (key, outputs, meta=None))]
    fn put_action(
        &self,
        py: Python<'_>,
        key: String,
        outputs: BTreeMap<String, String>,
        meta: Option<BTreeMap<String, String>>,
    ) -> PyResult<()> {
        let action = Action {
            key,
            outputs,
            meta: meta.unwrap_or_default(),
        };
        py.detach(|| self.inner.put_action(&action)).py()
    }

    fn get_action<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let action = py.detach(|| self.inner.get_action(key)).py()?;
        action.map(|a| action_dict(py, &a)).transpose()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| self.inner.stats()).py()?;
        let d = PyDict::new(py);
        d.set_item("blobs", s.blobs)?;
        d.set_item("blob_bytes", s.blob_bytes)?;
        d.set_item("actions", s.actions)?;
        d.set_item("quarantined", s.quarantined)?;
        d.set_item("max_bytes", s.max_bytes)?;
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("corrupt", s.corrupt)?;
        d.set_item("evicted", s.evicted)?;
        Ok(d)
    }

    #[pyo3(signature = (max_bytes=None))]
    fn gc<'py>(&self, py: Python<'py>, max_bytes: Option<u64>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.inner.gc(max_bytes)).py()?;
        let d = PyDict::new(py);
        d.set_item("evicted_blobs", r.evicted_blobs)?;
        d.set_item("evicted_bytes", r.evicted_bytes)?;
        d.set_item("removed_actions", r.removed_actions)?;
        d.set_item("removed_tmp", r.removed_tmp)?;
        d.set_item("remaining_bytes", r.remaining_bytes)?;
        Ok(d)
    }

    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let r = py.detach(|| self.inner.verify()).py()?;
        let d = PyDict::new(py);
        d.set_item("blobs", r.blobs)?;
        d.set_item("actions", r.actions)?;
        d.set_item("corrupt", r.corrupt)?;
        Ok(d)
    }
}

/// The blob name of `data` (blake3 hex), without storing it.
#[pyfunction]
fn blob_name(py: Python<'_>, data: PyBuffer<u8>) -> PyResult<String> {
    if !data.is_c_contiguous() {
        return Err(config_error("data must be a contiguous buffer".into()));
    }
    // SAFETY: the PyBuffer keeps the exporter's memory alive and pinned during the call.
    let bytes =
        unsafe { std::slice::from_raw_parts(data.buf_ptr() as *const u8, data.len_bytes()) };
    Ok(py.detach(|| mithril_cache::store::blob_name(bytes)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCacheStore>()?;
    m.add_function(wrap_pyfunction!(blob_name, m)?)?;
    Ok(())
}
