//! `mithril._native` checkpoint functions and the `Reader` class.

use crate::errors::{config_error, IntoPyResult};
use crate::threads;
use mithril_checkpoint::chunk::{chunk_lengths, EncodeOptions};
use mithril_checkpoint::delta::DeltaMode;
use mithril_checkpoint::parallel;
use mithril_checkpoint::{
    safetensors, writer, BaseId, BaseRef, BaseTensors, DType, DeltaBase, Error, FileExtras, Reader,
    TensorSource,
};
use numpy::PyArray1;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict};
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::path::PathBuf;

/// (dtype, shape, raw bytes, stored bytes, chunk encodings) of one stored tensor.
type TensorInfoTuple = (String, Vec<u64>, u64, u64, Vec<String>);

/// A tensor handed in from Python: the buffer stays borrowed while Rust reads it.
type InTensor = (String, String, Vec<u64>, PyBuffer<u8>);

/// Encoder options from the Python keywords; `delta_coding` is "compact" (the default) or
/// "fast".
fn options(chunk_bytes: Option<usize>, delta_coding: Option<&str>) -> PyResult<EncodeOptions> {
    let mut o = EncodeOptions::default();
    if let Some(c) = chunk_bytes {
        o.chunk_bytes = c;
    }
    o.delta_mode = match delta_coding {
        None | Some("compact") => DeltaMode::Compact,
        Some("fast") => DeltaMode::Fast,
        Some(other) => {
            return Err(config_error(format!(
                "delta_coding must be 'compact' or 'fast', got {other:?}"
            )))
        }
    };
    Ok(o)
}

/// Borrow the bytes of each buffer; they must be C-contiguous.
fn sources(tensors: &[InTensor]) -> PyResult<Vec<TensorSource<'_>>> {
    tensors
        .iter()
        .map(|(name, dtype, shape, buf)| {
            if !buf.is_c_contiguous() {
                return Err(PyValueError::new_err(format!(
                    "tensor {name:?}: buffer is not C-contiguous"
                )));
            }
            let dtype = DType::parse(dtype).py()?;
            // SAFETY: the PyBuffer keeps the exporter alive and its memory pinned for as long
            // as `tensors` lives, which outlives the returned slices.
            let data =
                unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
            Ok(TensorSource {
                name: name.clone(),
                dtype,
                shape: shape.clone(),
                data,
            })
        })
        .collect()
}

/// Adapts an optional Python callable to the core's progress hook. A Python exception
/// (including KeyboardInterrupt from a signal check) cancels the work and is re-raised.
struct PyProgress {
    callback: Option<Py<PyAny>>,
    error: Option<PyErr>,
}

impl PyProgress {
    fn new(callback: Option<Py<PyAny>>) -> Self {
        PyProgress {
            callback,
            error: None,
        }
    }

    fn tick(&mut self, done: u64, total: u64) -> Result<(), Error> {
        let outcome = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            if let Some(cb) = &self.callback {
                cb.call1(py, (done, total))?;
            }
            Ok(())
        });
        outcome.map_err(|e| {
            self.error = Some(e);
            Error::Cancelled("stopped by the progress callback".into())
        })
    }

    fn finish<T>(self, r: Result<T, Error>) -> PyResult<T> {
        match (r, self.error) {
            (Err(_), Some(e)) => Err(e),
            (r, _) => r.py(),
        }
    }
}

/// Open the base of a new delta file (its chain resolved, so that its tensors can be read).
fn open_base(py: Python<'_>, base_path: &Option<PathBuf>) -> PyResult<Option<Reader>> {
    match base_path {
        None => Ok(None),
        Some(p) => Ok(Some(py.detach(|| Reader::open_chain(p, None)).py()?)),
    }
}

/// The delta base for a write: ids come from the base file; bytes from memory when the
/// caller holds them, else decoded from the file.
fn delta_base<'a>(
    base: &'a Option<Reader>,
    hint: Option<String>,
    in_memory: &'a Option<Vec<TensorSource<'a>>>,
) -> Option<DeltaBase<'a>> {
    let reader = base.as_ref()?;
    Some(DeltaBase {
        reference: BaseId::Given(BaseRef {
            id: reader.content_id().to_string(),
            path: hint,
        }),
        tensors: match in_memory {
            Some(list) => BaseTensors::memory(list),
            None => BaseTensors::File(reader),
        },
    })
}

#[pyfunction]
#[pyo3(signature = (
    path, tensors, metadata=None, threads=None, chunk_bytes=None, progress=None,
    base_path=None, base_hint=None, base_tensors=None, delta_coding=None,
))]
#[allow(clippy::too_many_arguments)]
fn write_file(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<InTensor>,
    metadata: Option<BTreeMap<String, String>>,
    threads: Option<usize>,
    chunk_bytes: Option<usize>,
    progress: Option<Py<PyAny>>,
    base_path: Option<PathBuf>,
    base_hint: Option<String>,
    base_tensors: Option<Vec<InTensor>>,
    delta_coding: Option<&str>,
) -> PyResult<u64> {
    let opts = options(chunk_bytes, delta_coding)?;
    let srcs = sources(&tensors)?;
    let base_srcs = base_tensors.as_deref().map(sources).transpose()?;
    let base_reader = open_base(py, &base_path)?;
    let base = delta_base(&base_reader, base_hint, &base_srcs);
    let extras = FileExtras {
        metadata,
        safetensors_header: None,
    };
    let mut p = PyProgress::new(progress);
    let r = py.detach(|| {
        threads::run(threads, || {
            writer::write_file(&path, &srcs, &extras, &opts, base.as_ref(), &mut |d, t| {
                p.tick(d, t)
            })
        })
    })?;
    p.finish(r)
}

/// Re-encode a container (chain resolved) as a full file, or as a delta against `base_path`.
#[pyfunction]
#[pyo3(signature = (src, dst, base_path=None, base_hint=None, threads=None, chunk_bytes=None, progress=None, delta_coding=None))]
#[allow(clippy::too_many_arguments)]
fn rewrite(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    base_path: Option<PathBuf>,
    base_hint: Option<String>,
    threads: Option<usize>,
    chunk_bytes: Option<usize>,
    progress: Option<Py<PyAny>>,
    delta_coding: Option<&str>,
) -> PyResult<u64> {
    let opts = options(chunk_bytes, delta_coding)?;
    let reader = py.detach(|| Reader::open_chain(&src, None)).py()?;
    let base_reader = open_base(py, &base_path)?;
    let base = delta_base(&base_reader, base_hint, &None);
    let mut p = PyProgress::new(progress);
    let r = py.detach(|| {
        threads::run(threads, || {
            writer::rewrite(&reader, &dst, &opts, base.as_ref(), &mut |d, t| {
                p.tick(d, t)
            })
        })
    })?;
    p.finish(r)
}

/// A container in memory. With `base_tensor`, tensors of its name, dtype and shape are
/// stored as a delta against it, and the container records the base tensor's content id.
#[pyfunction]
#[pyo3(signature = (tensors, metadata=None, threads=None, chunk_bytes=None, base_tensor=None, delta_coding=None))]
fn write_bytes<'py>(
    py: Python<'py>,
    tensors: Vec<InTensor>,
    metadata: Option<BTreeMap<String, String>>,
    threads: Option<usize>,
    chunk_bytes: Option<usize>,
    base_tensor: Option<InTensor>,
    delta_coding: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    let opts = options(chunk_bytes, delta_coding)?;
    let srcs = sources(&tensors)?;
    let base_list = base_tensor.map(|t| vec![t]);
    let base_srcs = base_list.as_deref().map(sources).transpose()?;
    let extras = FileExtras {
        metadata,
        safetensors_header: None,
    };
    // One chunk in all, or `threads=1`, is encoded on the calling thread: handing a small
    // tensor to a pool thread and waiting costs more than encoding it, and one-thread
    // callers on several Python threads would otherwise queue for one pool thread.
    let chunks: usize = srcs
        .iter()
        .map(|t| chunk_lengths(t.data.len(), t.dtype, opts.chunk_bytes).len())
        .sum();
    let assembled = py
        .detach(|| {
            // The base's content id, a pass over the whole base, is made here without the
            // GIL, and only if a chunk is stored against the base.
            let base = base_srcs.as_ref().and_then(|list| {
                Some(DeltaBase {
                    reference: BaseId::TensorIfUsed(list.first()?),
                    tensors: BaseTensors::memory(list),
                })
            });
            threads::run_on_caller_if_one(threads, chunks > 1, || {
                writer::assemble(&srcs, &extras, &opts, base.as_ref())
            })
        })?
        .py()?;
    filled_bytes(py, assembled.len(), |out| {
        threads::run_on_caller_if_one(threads, chunks > 1, || assembled.copy_to_parallel(out))?.py()
    })
}

/// A new `bytes` of `len` bytes, all written by `fill` with the GIL released: one copy from
/// the encoder's buffers into the object. (`PyBytes::new_with` would zero it first.) A large
/// one asks for huge pages, as decode buffers do: past glibc's mmap threshold (32 MiB at
/// most) every such object is fresh memory, and its 4 KiB page faults cost more than the
/// copy.
fn filled_bytes<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<u8>]) -> PyResult<()> + Send,
) -> PyResult<Bound<'py, PyBytes>> {
    let size = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| PyValueError::new_err(format!("{len} bytes do not fit a Python bytes")))?;
    // SAFETY: a NULL source asks CPython for an uninitialised object of `size` bytes, owned
    // here (an allocation failure is the Python error). Its buffer is `len` bytes long and
    // stays valid while `bytes` lives, and is handed on as `MaybeUninit` bytes; no other
    // code can see the object before it is returned, so writing it with the GIL released
    // races with nothing. `fill` writes every byte on success; on failure the object is
    // dropped unseen.
    unsafe {
        let ptr = pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), size);
        let bytes = Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked::<PyBytes>();
        let buf = pyo3::ffi::PyBytes_AsString(ptr).cast::<u8>();
        mithril_checkpoint::error::advise_huge_pages(buf, len);
        let out = std::slice::from_raw_parts_mut(buf.cast::<MaybeUninit<u8>>(), len);
        py.detach(|| fill(out))?;
        Ok(bytes)
    }
}

#[pyfunction]
#[pyo3(signature = (src, dst, threads=None, chunk_bytes=None, progress=None, base_path=None, base_hint=None, delta_coding=None))]
#[allow(clippy::too_many_arguments)]
fn compress_safetensors(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    threads: Option<usize>,
    chunk_bytes: Option<usize>,
    progress: Option<Py<PyAny>>,
    base_path: Option<PathBuf>,
    base_hint: Option<String>,
    delta_coding: Option<&str>,
) -> PyResult<u64> {
    let opts = options(chunk_bytes, delta_coding)?;
    let base_reader = open_base(py, &base_path)?;
    let base = delta_base(&base_reader, base_hint, &None);
    let mut p = PyProgress::new(progress);
    let r = py.detach(|| {
        threads::run(threads, || {
            safetensors::compress(&src, &dst, &opts, base.as_ref(), &mut |d, t| p.tick(d, t))
        })
    })?;
    p.finish(r)
}

#[pyfunction]
#[pyo3(signature = (src, dst, threads=None, progress=None))]
fn decompress_safetensors(
    py: Python<'_>,
    src: PathBuf,
    dst: PathBuf,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<u64> {
    let mut p = PyProgress::new(progress);
    let r = py.detach(|| {
        threads::run(threads, || {
            safetensors::decompress(&src, &dst, &mut |d, t| p.tick(d, t))
        })
    })?;
    p.finish(r)
}

/// An open container: validated on open, tensors decoded on demand.
#[pyclass(name = "Reader", module = "mithril._native", frozen)]
struct PyReader {
    inner: Reader,
}

#[pymethods]
impl PyReader {
    /// Open `path`; a delta file also opens its chain of bases (checked by content id)
    /// unless `resolve_base` is false. `base` overrides the path hint of the first base.
    #[new]
    #[pyo3(signature = (path, resolve_base=true, base=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        resolve_base: bool,
        base: Option<PathBuf>,
    ) -> PyResult<Self> {
        let inner = py
            .detach(|| {
                if resolve_base {
                    Reader::open_chain(&path, base.as_deref())
                } else {
                    Reader::open(&path)
                }
            })
            .py()?;
        Ok(PyReader { inner })
    }

    /// Content id of this file: what a delta made against it records.
    fn content_id(&self) -> String {
        self.inner.content_id().to_string()
    }

    /// (content id, path hint) of the base this delta names, or None for a full file.
    fn base_ref(&self) -> Option<(String, Option<String>)> {
        self.inner
            .base_ref()
            .map(|b| (b.id.clone(), b.path.clone()))
    }

    /// (origin, content id, file size) of this file and each resolved base, newest first.
    fn chain(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        let mut at = Some(&self.inner);
        while let Some(r) = at {
            out.push((
                r.origin().to_string(),
                r.content_id().to_string(),
                r.file_len(),
            ));
            at = r.base();
        }
        out
    }

    /// Decode a delta tensor against a base tensor held by the caller (see
    /// `write_bytes(base_tensor=...)`) straight into a caller's writable, C-contiguous
    /// buffer of exactly its raw size.
    #[pyo3(signature = (name, base, out, threads=None))]
    fn read_with_base_into(
        &self,
        py: Python<'_>,
        name: &str,
        base: PyBuffer<u8>,
        out: PyBuffer<u8>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        if !base.is_c_contiguous() {
            return Err(PyValueError::new_err(format!(
                "tensor {name:?}: the base buffer is not C-contiguous"
            )));
        }
        let (addr, len) = writable_target(name, &out)?;
        let (base_addr, base_len) = (base.buf_ptr() as usize, base.len_bytes());
        if base_len > 0 && base_addr < addr + len && addr < base_addr + base_len {
            return Err(PyValueError::new_err(format!(
                "tensor {name:?}: the output buffer overlaps the base"
            )));
        }
        py.detach(|| {
            // SAFETY: `base` and `out` hold their buffer exports until this call returns,
            // which keeps both exporters' memory alive and in place; `out` was checked
            // writable and contiguous, `base` contiguous, and the two do not overlap.
            let out = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
            let base: &[u8] = if base_len == 0 {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(base_addr as *const u8, base_len) }
            };
            let chunks = self.inner.tensor(name).map_or(0, |t| t.chunks.len());
            threads::run_on_caller_if_one(threads, chunks > 1, || {
                self.inner.read_with_base(name, base, out)
            })
        })?
        .py()
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: PyBackedBytes) -> PyResult<Self> {
        // Read in place: the reader keeps the `bytes` object alive instead of copying it.
        let inner = py.detach(|| Reader::from_shared(data)).py()?;
        Ok(PyReader { inner })
    }

    /// (dtype, shape, whether it is stored as a delta) of the one tensor of a
    /// `compress_tensor` blob (a single tensor named ""), or `None` for any other
    /// container. One call instead of three on the path that decodes such blobs.
    fn lone_tensor(&self) -> Option<(String, Vec<u64>, bool)> {
        match self.inner.tensors() {
            [t] if t.name.is_empty() => Some((
                t.dtype.name().to_string(),
                t.shape.clone(),
                self.inner.base_ref().is_some(),
            )),
            _ => None,
        }
    }

    /// Tensor names in file order.
    fn names(&self) -> Vec<String> {
        self.inner
            .tensors()
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// (dtype, shape, raw bytes, stored bytes, chunk encodings) of one tensor.
    fn info(&self, name: &str) -> PyResult<TensorInfoTuple> {
        let t = self.inner.tensor(name).py()?;
        Ok((
            t.dtype.name().to_string(),
            t.shape.clone(),
            t.raw_len,
            t.stored_len,
            t.chunks
                .iter()
                .map(|c| c.encoding.name().to_string())
                .collect(),
        ))
    }

    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        match &self.inner.index().metadata {
            None => Ok(None),
            Some(m) => {
                let d = PyDict::new(py);
                for (k, v) in m {
                    d.set_item(k, v)?;
                }
                Ok(Some(d))
            }
        }
    }

    fn has_safetensors_header(&self) -> bool {
        self.inner.index().safetensors_header.is_some()
    }

    fn file_size(&self) -> u64 {
        self.inner.file_len()
    }

    /// Decode one tensor into a new uint8 numpy array (no further copy).
    #[pyo3(signature = (name, threads=None))]
    fn read<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let bytes = py
            .detach(|| threads::run(threads, || self.inner.read(name)))?
            .py()?;
        Ok(PyArray1::from_vec(py, bytes))
    }

    /// Decode several tensors at once, each straight into its caller's buffer (`outs`, in
    /// `names` order; writable, C-contiguous, exactly the tensor's raw size). The tensors
    /// are decoded concurrently as well as their chunks, so a checkpoint of many small
    /// tensors (one or two chunks each) still uses every core.
    #[pyo3(signature = (names, outs, threads=None))]
    fn read_many_into(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        outs: Vec<PyBuffer<u8>>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        if names.len() != outs.len() {
            return Err(PyValueError::new_err(format!(
                "{} tensor names but {} output buffers",
                names.len(),
                outs.len()
            )));
        }
        let mut targets = Vec::with_capacity(outs.len());
        for (name, out) in names.iter().zip(&outs) {
            targets.push((name.as_str(), writable_target(name, out)?));
        }
        refuse_overlaps(&targets)?;
        py.detach(|| {
            threads::run_on_caller_if_one(threads, true, || {
                parallel::try_for_each(targets, |(name, (addr, len))| {
                    // SAFETY: `outs` holds every buffer export until this call returns, which
                    // keeps each exporter's memory alive and in place; each was checked
                    // writable and contiguous, and no two of them overlap.
                    let slice = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
                    self.inner.read_into(name, slice)
                })
            })
        })?
        .py()
    }

    /// Decode one tensor straight into a caller's writable, C-contiguous buffer of exactly
    /// its raw size (e.g. a torch tensor's memory), so that loading needs no extra copy.
    #[pyo3(signature = (name, out, threads=None))]
    fn read_into(
        &self,
        py: Python<'_>,
        name: &str,
        out: PyBuffer<u8>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        let (addr, len) = writable_target(name, &out)?;
        py.detach(|| {
            // SAFETY: `out` holds the buffer export, which keeps the exporter's memory alive
            // and in place until it is dropped after this call; it was checked writable and
            // contiguous, and nothing else in this call aliases it.
            let slice = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
            let parallel = !self.inner.decodes_in_one_step(name);
            threads::run_on_caller_if_one(threads, parallel, || self.inner.read_into(name, slice))
        })?
        .py()
    }

    /// Decode everything and check every checksum; returns the number of chunks checked.
    #[pyo3(signature = (threads=None))]
    fn verify(&self, py: Python<'_>, threads: Option<usize>) -> PyResult<usize> {
        py.detach(|| threads::run(threads, || self.inner.verify()))?
            .py()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(write_file, m)?)?;
    m.add_function(wrap_pyfunction!(write_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(rewrite, m)?)?;
    m.add_function(wrap_pyfunction!(compress_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(decompress_safetensors, m)?)?;
    m.add_class::<PyReader>()?;
    Ok(())
}

/// The address and length of a writable, C-contiguous output buffer for tensor `name`.
fn writable_target(name: &str, out: &PyBuffer<u8>) -> PyResult<(usize, usize)> {
    if out.readonly() {
        return Err(PyValueError::new_err(format!(
            "tensor {name:?}: the output buffer is read-only"
        )));
    }
    if !out.is_c_contiguous() {
        return Err(PyValueError::new_err(format!(
            "tensor {name:?}: the output buffer is not C-contiguous"
        )));
    }
    let len = out.len_bytes();
    // An empty buffer may export a null pointer, which no slice may hold.
    let addr = if len == 0 {
        std::ptr::NonNull::<u8>::dangling().as_ptr() as usize
    } else {
        out.buf_ptr() as usize
    };
    Ok((addr, len))
}

/// Refuse output buffers that share memory: they would be decoded into concurrently.
fn refuse_overlaps(targets: &[(&str, (usize, usize))]) -> PyResult<()> {
    let mut spans: Vec<(usize, usize, &str)> = targets
        .iter()
        .filter(|(_, (_, len))| *len > 0)
        .map(|&(name, (addr, len))| (addr, addr + len, name))
        .collect();
    spans.sort_unstable();
    for pair in spans.windows(2) {
        if pair[1].0 < pair[0].1 {
            return Err(PyValueError::new_err(format!(
                "tensors {:?} and {:?}: their output buffers overlap",
                pair[0].2, pair[1].2
            )));
        }
    }
    Ok(())
}
