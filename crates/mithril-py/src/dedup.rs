//! `mithril._native` dedup classes: `MinHasher`, `Deduper`, `BloomDeduper`, `LshTables`,
//! `BandBloom` and `optimal_params`.

use crate::arrow::with_texts;
use crate::errors::{config_error, IntoPyResult};
use crate::threads;
use mithril_dedup::bloom::BandBloom;
use mithril_dedup::cluster::Keep;
use mithril_dedup::graph;
use mithril_dedup::lsh::{optimal_params as optimal, Bands, LshTables};
use mithril_dedup::minhash::Signer;
use mithril_dedup::pipeline::{self, BloomDeduper, DedupConfig, Deduper, Stats};
use mithril_dedup::shingle::{ShingleConfig, TokenKind};
use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn shingle_config(
    ngram: usize,
    seed: u64,
    tokens: &str,
    lowercase: bool,
    nfc: bool,
) -> PyResult<ShingleConfig> {
    let cfg = ShingleConfig {
        tokens: TokenKind::parse(tokens).py()?,
        ngram,
        lowercase,
        nfc,
        seed,
    };
    cfg.validate().py()?;
    Ok(cfg)
}

/// Signatures (`n × num_perm`) and shingle counts.
type SigsAndCounts<'py> = (Bound<'py, PyArray2<u64>>, Bound<'py, PyArray1<u64>>);
/// Concatenated fingerprint sets and their offsets.
type FlatSets<'py> = (Bound<'py, PyArray1<u32>>, Bound<'py, PyArray1<u64>>);
/// A spanning forest and the (candidate, verified, similar) pair counts.
type ForestAndCounts<'py> = (
    Bound<'py, PyArray1<u64>>,
    Bound<'py, PyArray1<u64>>,
    (u64, u64, u64),
);
/// Cluster label and kept document, per document.
type LabelsAndKept<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

fn stats_dict<'py>(py: Python<'py>, s: &Stats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("documents", s.documents)?;
    d.set_item("bytes", s.bytes)?;
    d.set_item("shingles", s.shingles)?;
    d.set_item("empty", s.empty)?;
    d.set_item("nulls", s.nulls)?;
    d.set_item("buckets", s.buckets)?;
    d.set_item("candidate_docs", s.candidate_docs)?;
    d.set_item("candidate_pairs", s.candidate_pairs)?;
    d.set_item("verified_pairs", s.verified_pairs)?;
    d.set_item("similar_pairs", s.similar_pairs)?;
    d.set_item("set_bytes", s.set_bytes)?;
    Ok(d)
}

fn sig_slice<'a>(sig: &'a PyReadonlyArray1<'_, u32>) -> PyResult<&'a [u32]> {
    sig.as_slice()
        .map_err(|_| config_error("signature must be a contiguous 1-d array".into()))
}

/// Shingling and MinHash signatures.
#[pyclass(module = "mithril._native", name = "MinHasher", frozen)]
pub struct PyMinHasher {
    signer: Signer,
    cfg: ShingleConfig,
}

#[pymethods]
impl PyMinHasher {
    #[new]
    #[pyo3(signature = (num_perm, ngram, seed, tokens, lowercase, nfc))]
    fn new(
        num_perm: usize,
        ngram: usize,
        seed: u64,
        tokens: &str,
        lowercase: bool,
        nfc: bool,
    ) -> PyResult<Self> {
        let cfg = shingle_config(ngram, seed, tokens, lowercase, nfc)?;
        Ok(Self {
            signer: Signer::new(cfg.clone(), num_perm).py()?,
            cfg,
        })
    }

    #[getter]
    fn num_perm(&self) -> usize {
        self.signer.minhash.num_perm()
    }

    /// (signatures as uint64 `(n, num_perm)`, shingle count per text).
    #[pyo3(signature = (texts, threads=None))]
    fn signatures<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<SigsAndCounts<'py>> {
        let num_perm = self.signer.minhash.num_perm();
        let (sigs, counts) = with_texts(texts, |t| {
            py.detach(|| threads::run(threads, || pipeline::signatures(t, &self.cfg, num_perm)))?
                .py()
        })?;
        let n = counts.len();
        let wide: Vec<u64> = sigs.into_iter().map(u64::from).collect();
        let arr = PyArray1::from_vec(py, wide).reshape([n, num_perm])?;
        Ok((arr, PyArray1::from_vec(py, counts)))
    }

    /// (band keys `(n, bands)`, shingle count per text): the map side of a distributed run.
    #[pyo3(signature = (texts, bands, rows, threads=None))]
    fn band_keys<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        bands: usize,
        rows: usize,
        threads: Option<usize>,
    ) -> PyResult<SigsAndCounts<'py>> {
        let b = Bands::new(bands, rows, self.signer.minhash.num_perm()).py()?;
        let (keys, counts) = with_texts(texts, |t| {
            py.detach(|| threads::run(threads, || pipeline::band_keys(t, &self.signer, b)))
        })?;
        let n = counts.len();
        let arr = PyArray1::from_vec(py, keys).reshape([n, bands])?;
        Ok((arr, PyArray1::from_vec(py, counts)))
    }

    /// (concatenated fingerprint sets of texts `rows`, offsets): for verification tasks.
    #[pyo3(signature = (texts, rows, threads=None))]
    fn fingerprint_sets<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        rows: Vec<usize>,
        threads: Option<usize>,
    ) -> PyResult<FlatSets<'py>> {
        let (flat, offsets) = with_texts(texts, |t| {
            py.detach(|| {
                threads::run(threads, || {
                    pipeline::fingerprint_sets(t, &rows, &self.signer)
                })
            })?
            .py()
        })?;
        Ok((
            PyArray1::from_vec(py, flat),
            PyArray1::from_vec(py, offsets),
        ))
    }

    /// Sorted distinct shingle hashes of one text.
    fn shingles<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<u64>>> {
        let list = pyo3::types::PyList::new(py, [text])?;
        let set = with_texts(list.as_any(), |t| {
            let mut s = self.signer.fresh();
            Ok(py.detach(|| s.shingler.set(t.get(0).unwrap_or_default())))
        })?;
        Ok(PyArray1::from_vec(py, set))
    }
}

fn dedup_config(
    shingle: ShingleConfig,
    num_perm: usize,
    (bands, rows): (usize, usize),
    threshold: f64,
    verify: bool,
    keep: &str,
) -> PyResult<DedupConfig> {
    let cfg = DedupConfig {
        shingle,
        num_perm,
        bands: Bands::new(bands, rows, num_perm).py()?,
        threshold,
        verify,
        keep: Keep::parse(keep).py()?,
    };
    cfg.validate().py()?;
    Ok(cfg)
}

/// Two-pass batch deduplication (band tables + exact verification).
#[pyclass(module = "mithril._native", name = "Deduper")]
pub struct PyDeduper {
    inner: Deduper,
}

#[pymethods]
impl PyDeduper {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (num_perm, ngram, seed, tokens, lowercase, nfc, bands, rows, threshold, verify, keep))]
    fn new(
        num_perm: usize,
        ngram: usize,
        seed: u64,
        tokens: &str,
        lowercase: bool,
        nfc: bool,
        bands: usize,
        rows: usize,
        threshold: f64,
        verify: bool,
        keep: &str,
    ) -> PyResult<Self> {
        let shingle = shingle_config(ngram, seed, tokens, lowercase, nfc)?;
        let cfg = dedup_config(shingle, num_perm, (bands, rows), threshold, verify, keep)?;
        Ok(Self {
            inner: Deduper::new(cfg).py()?,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[pyo3(signature = (texts, threads=None))]
    fn add_batch(
        &mut self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        let inner = &mut self.inner;
        with_texts(texts, |t| {
            py.detach(|| threads::run(threads, || inner.add_batch(t)))?
                .py()
        })
    }

    #[pyo3(signature = (threads=None))]
    fn plan(&mut self, py: Python<'_>, threads: Option<usize>) -> PyResult<usize> {
        let inner = &mut self.inner;
        py.detach(|| threads::run(threads, || inner.plan()))
    }

    /// Whether any of documents `start..start+count` needs its shingle set.
    fn needs_sets(&self, start: usize, count: usize) -> bool {
        (start..start + count).any(|i| self.inner.needs_set(i))
    }

    #[pyo3(signature = (start, texts, threads=None))]
    fn add_sets(
        &mut self,
        py: Python<'_>,
        start: usize,
        texts: &Bound<'_, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        let inner = &mut self.inner;
        with_texts(texts, |t| {
            py.detach(|| threads::run(threads, || inner.add_sets(start, t)))?
                .py()
        })
    }

    /// (cluster label per document, kept document per document), both int64.
    fn cluster<'py>(&mut self, py: Python<'py>) -> PyResult<LabelsAndKept<'py>> {
        let inner = &mut self.inner;
        let c = py.detach(|| inner.cluster()).py()?;
        let label: Vec<i64> = c.label.iter().map(|&x| i64::from(x)).collect();
        let kept: Vec<i64> = c.kept.iter().map(|&x| i64::from(x)).collect();
        Ok((PyArray1::from_vec(py, label), PyArray1::from_vec(py, kept)))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner.stats())
    }

    #[getter]
    fn index_bytes(&self) -> usize {
        self.inner.index_bytes()
    }
}

/// One-pass LSHBloom deduplication.
#[pyclass(module = "mithril._native", name = "BloomDeduper")]
pub struct PyBloomDeduper {
    inner: BloomDeduper,
}

#[pymethods]
impl PyBloomDeduper {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (num_perm, ngram, seed, tokens, lowercase, nfc, bands, rows, capacity, fp_rate, votes))]
    fn new(
        num_perm: usize,
        ngram: usize,
        seed: u64,
        tokens: &str,
        lowercase: bool,
        nfc: bool,
        bands: usize,
        rows: usize,
        capacity: u64,
        fp_rate: f64,
        votes: usize,
    ) -> PyResult<Self> {
        let shingle = shingle_config(ngram, seed, tokens, lowercase, nfc)?;
        let cfg = dedup_config(shingle, num_perm, (bands, rows), 0.5, false, "lowest")?;
        Ok(Self {
            inner: BloomDeduper::new(&cfg, capacity, fp_rate, votes).py()?,
        })
    }

    /// Boolean array: True where the text near-duplicates an earlier one.
    #[pyo3(signature = (texts, threads=None))]
    fn process<'py>(
        &mut self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let inner = &mut self.inner;
        let dup = with_texts(texts, |t| {
            py.detach(|| threads::run(threads, || inner.process(t)))
        })?;
        Ok(PyArray1::from_vec(py, dup))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner.stats())
    }

    #[getter]
    fn index_bytes(&self) -> usize {
        self.inner.bloom().bytes()
    }

    #[getter]
    fn probes(&self) -> u32 {
        self.inner.bloom().probes()
    }
}

/// Band hash tables keyed by integer ids.
#[pyclass(module = "mithril._native", name = "LshTables")]
pub struct PyLshTables {
    inner: LshTables,
}

#[pymethods]
impl PyLshTables {
    #[new]
    fn new(bands: usize, rows: usize) -> PyResult<Self> {
        Ok(Self {
            inner: LshTables::new(Bands::new(bands, rows, bands.saturating_mul(rows)).py()?),
        })
    }

    fn insert(&mut self, id: u64, sig: PyReadonlyArray1<'_, u32>) -> PyResult<()> {
        self.inner.insert(id, sig_slice(&sig)?).py()
    }

    /// Insert rows of `sigs` under `ids`.
    fn insert_many(&mut self, ids: Vec<u64>, sigs: PyReadonlyArray2<'_, u32>) -> PyResult<()> {
        let shape = sigs.shape();
        if shape[0] != ids.len() {
            return Err(config_error(format!(
                "{} keys but {} signatures",
                ids.len(),
                shape[0]
            )));
        }
        let data = sigs
            .as_slice()
            .map_err(|_| config_error("signatures must be a contiguous 2-d array".into()))?;
        for (i, id) in ids.iter().enumerate() {
            self.inner
                .insert(*id, &data[i * shape[1]..(i + 1) * shape[1]])
                .py()?;
        }
        Ok(())
    }

    fn query(&self, sig: PyReadonlyArray1<'_, u32>) -> PyResult<Vec<u64>> {
        self.inner.query(sig_slice(&sig)?).py()
    }

    fn remove(&mut self, id: u64) -> bool {
        self.inner.remove(id)
    }

    fn __contains__(&self, id: u64) -> bool {
        self.inner.contains(id)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    #[getter]
    fn index_bytes(&self) -> usize {
        self.inner.index_bytes()
    }
}

/// One Bloom filter per band.
#[pyclass(module = "mithril._native", name = "BandBloom")]
pub struct PyBandBloom {
    inner: BandBloom,
}

#[pymethods]
impl PyBandBloom {
    #[new]
    fn new(bands: usize, rows: usize, capacity: u64, fp_rate: f64, votes: usize) -> PyResult<Self> {
        let b = Bands::new(bands, rows, bands.saturating_mul(rows)).py()?;
        Ok(Self {
            inner: BandBloom::new(b, capacity, fp_rate, votes).py()?,
        })
    }

    fn contains(&self, sig: PyReadonlyArray1<'_, u32>) -> PyResult<bool> {
        let s = self.checked(&sig)?;
        Ok(self.inner.contains(s))
    }

    fn insert(&mut self, sig: PyReadonlyArray1<'_, u32>) -> PyResult<()> {
        let s = self.checked(&sig)?;
        self.inner.insert(s);
        Ok(())
    }

    fn check_and_insert(&mut self, sig: PyReadonlyArray1<'_, u32>) -> PyResult<bool> {
        let s = self.checked(&sig)?;
        Ok(self.inner.check_and_insert(s))
    }

    #[getter]
    fn index_bytes(&self) -> usize {
        self.inner.bytes()
    }

    #[getter]
    fn probes(&self) -> u32 {
        self.inner.probes()
    }
}

impl PyBandBloom {
    fn checked<'a>(&self, sig: &'a PyReadonlyArray1<'_, u32>) -> PyResult<&'a [u32]> {
        let s = sig_slice(sig)?;
        self.inner.bands().check_signature(s).py()?;
        Ok(s)
    }
}

fn u64s<'a>(a: &'a PyReadonlyArray1<'_, u64>, what: &str) -> PyResult<&'a [u64]> {
    a.as_slice()
        .map_err(|_| config_error(format!("{what} must be a contiguous 1-d uint64 array")))
}

type Edges<'py> = (Bound<'py, PyArray1<u64>>, Bound<'py, PyArray1<u64>>);

fn edge_arrays<'py>(py: Python<'py>, edges: &[(u64, u64)]) -> Edges<'py> {
    let a: Vec<u64> = edges.iter().map(|e| e.0).collect();
    let b: Vec<u64> = edges.iter().map(|e| e.1).collect();
    (PyArray1::from_vec(py, a), PyArray1::from_vec(py, b))
}

fn edge_pairs(a: &[u64], b: &[u64]) -> PyResult<Vec<(u64, u64)>> {
    if a.len() != b.len() {
        return Err(config_error(format!(
            "edge arrays differ in length ({} and {})",
            a.len(),
            b.len()
        )));
    }
    Ok(a.iter().copied().zip(b.iter().copied()).collect())
}

/// Verify buckets of global ids; returns (forest a, forest b, (candidate, verified, similar)).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn verify_buckets<'py>(
    py: Python<'py>,
    members: PyReadonlyArray1<'_, u64>,
    bucket_offsets: PyReadonlyArray1<'_, u64>,
    set_ids: PyReadonlyArray1<'_, u64>,
    set_flat: PyReadonlyArray1<'_, u32>,
    set_offsets: PyReadonlyArray1<'_, u64>,
    threshold: f64,
    verify: bool,
) -> PyResult<ForestAndCounts<'py>> {
    let flat = set_flat
        .as_slice()
        .map_err(|_| config_error("set_flat must be a contiguous uint32 array".into()))?;
    let (m, bo, ids, so) = (
        u64s(&members, "members")?,
        u64s(&bucket_offsets, "bucket_offsets")?,
        u64s(&set_ids, "set_ids")?,
        u64s(&set_offsets, "set_offsets")?,
    );
    let (forest, c) = py
        .detach(|| graph::verify_buckets(m, bo, ids, flat, so, threshold, verify))
        .py()?;
    let (a, b) = edge_arrays(py, &forest);
    Ok((a, b, (c.candidate_pairs, c.verified_pairs, c.similar_pairs)))
}

/// A spanning forest of the edges `(a[i], b[i])`.
#[pyfunction]
fn spanning_forest<'py>(
    py: Python<'py>,
    a: PyReadonlyArray1<'_, u64>,
    b: PyReadonlyArray1<'_, u64>,
) -> PyResult<Edges<'py>> {
    let edges = edge_pairs(u64s(&a, "a")?, u64s(&b, "b")?)?;
    let forest = py.detach(|| graph::spanning_forest(&edges));
    Ok(edge_arrays(py, &forest))
}

/// (ids, lowest id of each one's component) over the edges, ascending by id.
#[pyfunction]
fn component_labels<'py>(
    py: Python<'py>,
    a: PyReadonlyArray1<'_, u64>,
    b: PyReadonlyArray1<'_, u64>,
) -> PyResult<Edges<'py>> {
    let edges = edge_pairs(u64s(&a, "a")?, u64s(&b, "b")?)?;
    let labels = py.detach(|| {
        let mut uf = graph::SparseUnionFind::default();
        for (x, y) in edges {
            uf.union(x, y);
        }
        uf.labels()
    });
    Ok(edge_arrays(py, &labels))
}

/// `(bands, rows)` minimising weighted false positives and negatives for `threshold`.
#[pyfunction]
fn optimal_params(
    threshold: f64,
    num_perm: usize,
    fp_weight: f64,
    fn_weight: f64,
) -> PyResult<(usize, usize)> {
    let b = optimal(threshold, num_perm, fp_weight, fn_weight).py()?;
    Ok((b.bands, b.rows))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMinHasher>()?;
    m.add_class::<PyDeduper>()?;
    m.add_class::<PyBloomDeduper>()?;
    m.add_class::<PyLshTables>()?;
    m.add_class::<PyBandBloom>()?;
    m.add_function(wrap_pyfunction!(optimal_params, m)?)?;
    m.add_function(wrap_pyfunction!(verify_buckets, m)?)?;
    m.add_function(wrap_pyfunction!(spanning_forest, m)?)?;
    m.add_function(wrap_pyfunction!(component_labels, m)?)?;
    Ok(())
}
