//! Whole-corpus deduplication driven batch by batch.
//!
//! [`Deduper`] takes a corpus in two passes over its texts:
//! 1. [`Deduper::add_batch`]: shingle and sign every document (in parallel), keep only its band
//!    keys, its length and whether it had shingles.
//! 2. [`Deduper::plan`] sorts each band's keys into buckets of candidates; when verification is
//!    on, [`Deduper::add_sets`] then collects the exact shingle sets of the documents that are
//!    in some bucket (the rest are never compared), and [`Deduper::cluster`] checks candidate
//!    pairs by exact Jaccard, joining the ones at or above the threshold.
//!
//! Memory between the passes is `8 · bands` bytes per document plus the shingle sets of
//! candidate documents, held as sorted 32-bit fingerprints (4 bytes per distinct shingle).
//! Two different shingles of a pair share a fingerprint with probability `2^-32`; over a
//! pair's `|A|·|B|` cross pairs that moves its Jaccard value by about `|A||B| / (2^32 |A∪B|)`,
//! below `10^-5` for documents of 100k shingles, far inside any threshold's margin. [`BloomDeduper`] is the one-pass, fixed-memory alternative.

use crate::bloom::BandBloom;
use crate::cluster::{Clusters, Keep, UnionFind};
use crate::graph::{join_buckets, VerifyCounts};
use crate::lsh::Bands;
use crate::minhash::{MinHash, Signer};
use crate::shingle::ShingleConfig;
use crate::texts::Texts;
use crate::{Error, Result};
use rayon::prelude::*;
use std::collections::HashSet;

/// Everything that decides which documents are near-duplicates.
#[derive(Clone, Debug)]
pub struct DedupConfig {
    pub shingle: ShingleConfig,
    pub num_perm: usize,
    pub bands: Bands,
    pub threshold: f64,
    pub verify: bool,
    pub keep: Keep,
}

impl DedupConfig {
    pub fn validate(&self) -> Result<()> {
        self.shingle.validate()?;
        MinHash::new(self.num_perm, self.shingle.seed)?;
        Bands::new(self.bands.bands, self.bands.rows, self.num_perm)?;
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(Error::Invalid(format!(
                "threshold must be in (0, 1], got {}",
                self.threshold
            )));
        }
        Ok(())
    }
}

/// Signatures of a batch, row-major `len × num_perm`, and the shingle count of each text.
pub fn signatures(
    texts: &dyn Texts,
    shingle: &ShingleConfig,
    num_perm: usize,
) -> Result<(Vec<u32>, Vec<u64>)> {
    Ok(sign_batch(texts, &Signer::new(shingle.clone(), num_perm)?))
}

/// Signatures (`len × num_perm`) and shingle counts of a batch, in parallel.
fn sign_batch(texts: &dyn Texts, signer: &Signer) -> (Vec<u32>, Vec<u64>) {
    let num_perm = signer.minhash.num_perm();
    let mut sigs = vec![0u32; texts.len() * num_perm];
    let mut counts = vec![0u64; texts.len()];
    sigs.par_chunks_mut(num_perm)
        .zip(counts.par_iter_mut())
        .enumerate()
        .for_each_init(
            || signer.fresh(),
            |signer, (i, (row, count))| {
                *count = signer.sign(texts.get(i).unwrap_or_default(), row);
            },
        );
    (sigs, counts)
}

/// Band keys of a batch, row-major `len × bands`, and the shingle count of each text.
pub fn band_keys(texts: &dyn Texts, signer: &Signer, bands: Bands) -> (Vec<u64>, Vec<u64>) {
    let nb = bands.bands;
    let num_perm = signer.minhash.num_perm();
    let mut keys = vec![0u64; texts.len() * nb];
    let mut counts = vec![0u64; texts.len()];
    keys.par_chunks_mut(nb)
        .zip(counts.par_iter_mut())
        .enumerate()
        .for_each_init(
            || (signer.fresh(), vec![0u32; num_perm]),
            |(signer, sig), (i, (row, count))| {
                *count = signer.sign(texts.get(i).unwrap_or_default(), sig);
                for (b, k) in row.iter_mut().enumerate() {
                    *k = bands.key(sig, b);
                }
            },
        );
    (keys, counts)
}

/// The fingerprint sets of texts `rows` of a batch, concatenated, with `rows.len() + 1`
/// offsets into the flat array.
pub fn fingerprint_sets(
    texts: &dyn Texts,
    rows: &[usize],
    signer: &Signer,
) -> Result<(Vec<u32>, Vec<u64>)> {
    if let Some(&bad) = rows.iter().find(|&&r| r >= texts.len()) {
        return Err(Error::Invalid(format!(
            "row {bad} is past the batch's {} texts",
            texts.len()
        )));
    }
    let sets: Vec<Vec<u32>> = rows
        .par_iter()
        .map_init(
            || signer.fresh(),
            |s, &i| s.shingler.fingerprints(texts.get(i).unwrap_or_default()),
        )
        .collect();
    let mut offsets = Vec::with_capacity(sets.len() + 1);
    offsets.push(0u64);
    let total: usize = sets.iter().map(Vec::len).sum();
    let mut flat = Vec::with_capacity(total);
    for s in sets {
        flat.extend_from_slice(&s);
        offsets.push(flat.len() as u64);
    }
    Ok((flat, offsets))
}

/// What a pass over the corpus found, for the report.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub documents: u64,
    pub bytes: u64,
    pub shingles: u64,
    pub empty: u64,
    pub nulls: u64,
    pub buckets: u64,
    pub candidate_docs: u64,
    pub candidate_pairs: u64,
    pub verified_pairs: u64,
    pub similar_pairs: u64,
    pub set_bytes: u64,
}

/// A document's shingle set between plan and cluster.
enum Slot {
    NotCandidate,
    Wanted,
    Have(Box<[u32]>),
}

/// Two-pass batch deduplication with band tables and exact verification.
pub struct Deduper {
    cfg: DedupConfig,
    signer: Signer,
    /// Band keys, `bands` per document.
    keys: Vec<u64>,
    lengths: Vec<u64>,
    has_shingles: Vec<bool>,
    /// Candidate buckets: members (ascending ids) of each distinct multi-document bucket.
    buckets: Vec<Vec<u32>>,
    sets: Vec<Slot>,
    planned: bool,
    stats: Stats,
}

impl Deduper {
    pub fn new(cfg: DedupConfig) -> Result<Self> {
        cfg.validate()?;
        let signer = Signer::new(cfg.shingle.clone(), cfg.num_perm)?;
        Ok(Self {
            cfg,
            signer,
            keys: Vec::new(),
            lengths: Vec::new(),
            has_shingles: Vec::new(),
            buckets: Vec::new(),
            sets: Vec::new(),
            planned: false,
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &DedupConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Bytes held per document between the passes (band keys, length, flag).
    pub fn index_bytes(&self) -> usize {
        self.keys.capacity() * 8 + self.lengths.capacity() * 8 + self.has_shingles.capacity()
    }

    /// Pass 1: sign a batch; its documents get the next ids.
    pub fn add_batch(&mut self, texts: &dyn Texts) -> Result<()> {
        if self.planned {
            return Err(Error::Invalid(
                "documents cannot be added after planning verification".into(),
            ));
        }
        let start = self.lengths.len();
        if start + texts.len() > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "a corpus of more than {} documents needs the bloom index",
                u32::MAX
            )));
        }
        let (keys, counts) = band_keys(texts, &self.signer, self.cfg.bands);
        for (i, &count) in counts.iter().enumerate() {
            let text = texts.get(i);
            self.stats.nulls += u64::from(text.is_none());
            let len = text.map_or(0, |t| t.len() as u64);
            self.stats.bytes += len;
            self.lengths.push(len);
            self.has_shingles.push(count > 0);
            self.stats.empty += u64::from(count == 0);
            self.stats.shingles += count;
        }
        self.keys.extend_from_slice(&keys);
        self.stats.documents = self.lengths.len() as u64;
        Ok(())
    }

    /// Sort each band into buckets; returns how many documents are in some bucket (the
    /// documents whose shingle sets [`Deduper::add_sets`] must collect when verifying).
    pub fn plan(&mut self) -> usize {
        let n = self.lengths.len();
        let nb = self.cfg.bands.bands;
        let keys = &self.keys;
        let has = &self.has_shingles;
        let per_band: Vec<Vec<Vec<u32>>> = (0..nb)
            .into_par_iter()
            .map(|b| {
                let mut entries: Vec<(u64, u32)> = (0..n)
                    .filter(|&i| has[i])
                    .map(|i| (keys[i * nb + b], i as u32))
                    .collect();
                entries.par_sort_unstable();
                let mut out = Vec::new();
                let mut start = 0;
                while start < entries.len() {
                    let mut end = start + 1;
                    while end < entries.len() && entries[end].0 == entries[start].0 {
                        end += 1;
                    }
                    if end - start > 1 {
                        out.push(entries[start..end].iter().map(|e| e.1).collect());
                    }
                    start = end;
                }
                out
            })
            .collect();
        let mut seen: HashSet<Vec<u32>> = HashSet::new();
        let mut candidate = vec![false; n];
        for bucket in per_band.into_iter().flatten() {
            if seen.contains(&bucket) {
                continue;
            }
            for &d in &bucket {
                candidate[d as usize] = true;
            }
            let m = bucket.len() as u64;
            self.stats.candidate_pairs += m * (m - 1) / 2;
            seen.insert(bucket.clone());
            self.buckets.push(bucket);
        }
        self.stats.buckets = self.buckets.len() as u64;
        self.sets = candidate
            .iter()
            .map(|&c| if c { Slot::Wanted } else { Slot::NotCandidate })
            .collect();
        let count = candidate.iter().filter(|&&c| c).count();
        self.stats.candidate_docs = count as u64;
        self.planned = true;
        count
    }

    /// Whether document `id` is in some bucket (its set is needed for verification).
    pub fn needs_set(&self, id: usize) -> bool {
        matches!(self.sets.get(id), Some(Slot::Wanted | Slot::Have(_)))
    }

    /// Pass 2 (verification only): collect the shingle sets of the candidate documents among
    /// `texts`, whose first document has id `start`.
    pub fn add_sets(&mut self, start: usize, texts: &dyn Texts) -> Result<()> {
        if !self.planned {
            return Err(Error::Invalid("add_sets called before plan".into()));
        }
        if start + texts.len() > self.sets.len() {
            return Err(Error::Invalid(format!(
                "documents {start}..{} are past the {} signed in the first pass",
                start + texts.len(),
                self.sets.len()
            )));
        }
        let wanted: Vec<usize> = (0..texts.len())
            .filter(|&i| self.needs_set(start + i))
            .collect();
        let proto = &self.signer;
        let sets: Vec<Vec<u32>> = wanted
            .par_iter()
            .map_init(
                || proto.fresh(),
                |s, &i| s.shingler.fingerprints(texts.get(i).unwrap_or_default()),
            )
            .collect();
        for (i, set) in wanted.into_iter().zip(sets) {
            self.stats.set_bytes += set.len() as u64 * 4;
            self.sets[start + i] = Slot::Have(set.into_boxed_slice());
        }
        Ok(())
    }

    /// Join near-duplicates and choose the kept document of each cluster.
    pub fn cluster(&mut self) -> Result<Clusters> {
        if !self.planned {
            self.plan();
        }
        let mut uf = UnionFind::new(self.lengths.len());
        let sets = &self.sets;
        let set_of = |id: u32| match &sets[id as usize] {
            Slot::Have(s) => Some(&s[..]),
            _ => None,
        };
        let mut counts = VerifyCounts::default();
        join_buckets(
            &self.buckets,
            self.cfg.verify.then_some((set_of, self.cfg.threshold)),
            &mut uf,
            &mut counts,
            |_, _| {},
        )
        .map_err(|e| Error::Invalid(format!("{e} (every batch must be passed to add_sets)")))?;
        // Candidate pairs were counted when the buckets were formed.
        self.stats.verified_pairs += counts.verified_pairs;
        self.stats.similar_pairs += counts.similar_pairs;
        Ok(Clusters::from_union_find(
            &mut uf,
            &self.lengths,
            self.cfg.keep,
        ))
    }
}

/// One-pass LSHBloom deduplication in a fixed amount of memory.
pub struct BloomDeduper {
    signer: Signer,
    bloom: BandBloom,
    stats: Stats,
    removed: u64,
}

impl BloomDeduper {
    pub fn new(cfg: &DedupConfig, capacity: u64, fp_rate: f64, votes: usize) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            signer: Signer::new(cfg.shingle.clone(), cfg.num_perm)?,
            bloom: BandBloom::new(cfg.bands, capacity, fp_rate, votes)?,
            stats: Stats::default(),
            removed: 0,
        })
    }

    pub fn bloom(&self) -> &BandBloom {
        &self.bloom
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn removed(&self) -> u64 {
        self.removed
    }

    /// Whether each text of the batch near-duplicates an earlier text (of this or an earlier
    /// batch). Texts without shingles are never duplicates.
    pub fn process(&mut self, texts: &dyn Texts) -> Vec<bool> {
        let num_perm = self.signer.minhash.num_perm();
        let (sigs, counts) = sign_batch(texts, &self.signer);
        let mut dup = vec![false; texts.len()];
        for i in 0..texts.len() {
            let text = texts.get(i);
            self.stats.documents += 1;
            self.stats.nulls += u64::from(text.is_none());
            self.stats.bytes += text.map_or(0, |t| t.len() as u64);
            self.stats.shingles += counts[i];
            if counts[i] == 0 {
                self.stats.empty += 1;
                continue;
            }
            dup[i] = self
                .bloom
                .check_and_insert(&sigs[i * num_perm..(i + 1) * num_perm]);
            self.removed += u64::from(dup[i]);
        }
        dup
    }
}
