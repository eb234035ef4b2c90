//! LSHBloom: one Bloom filter per band in place of band tables.
//!
//! A document is a near-duplicate of something seen before when at least `votes` of its band
//! keys are already in their band's filter (`votes = 1` is the classic any-band rule; more
//! votes sharpen the similarity cut-off, since one band of few rows is easy to share by chance
//! with some earlier document). Memory is fixed when the index is built, from the expected
//! number of documents and the target false-positive rate `p`: each band's filter gets the
//! largest rate `p_b ≤ p` at which a document unlike all earlier ones still reaches `votes`
//! hits with probability at most `p`, then `m = -n ln p_b / ln² 2` bits and `k = m/n · ln 2`
//! probes (double hashing from the 64-bit band key).

use crate::lsh::Bands;
use crate::shingle::fmix64 as mix;
use crate::{Error, Result};

pub struct BandBloom {
    bands: Bands,
    votes: usize,
    bits_per_band: u64,
    probes: u32,
    words: Vec<u64>,
    capacity: u64,
    fp_rate: f64,
}

#[inline]
fn reduce(x: u64, m: u64) -> u64 {
    ((u128::from(x) * u128::from(m)) >> 64) as u64
}

impl BandBloom {
    /// Filters sized for `capacity` documents at a false-positive rate of `fp_rate` per
    /// document, flagging a document when `votes` bands hit.
    pub fn new(bands: Bands, capacity: u64, fp_rate: f64, votes: usize) -> Result<Self> {
        if votes == 0 || votes > bands.bands {
            return Err(Error::Invalid(format!(
                "bloom votes must be between 1 and the number of bands ({}), got {votes}",
                bands.bands
            )));
        }
        if !(fp_rate > 0.0 && fp_rate < 1.0) {
            return Err(Error::Invalid(format!(
                "bloom false-positive rate must be strictly between 0 and 1, got {fp_rate}"
            )));
        }
        if capacity == 0 {
            return Err(Error::Invalid(
                "bloom capacity must be at least 1 document".into(),
            ));
        }
        let per_band = per_band_rate(bands.bands, votes, fp_rate);
        let ln2 = std::f64::consts::LN_2;
        let bits_per_item = (-(per_band.ln()) / (ln2 * ln2)).max(1.0);
        let bits = ((capacity as f64 * bits_per_item).ceil() as u64).max(64);
        let bits_per_band = bits.div_ceil(64) * 64;
        let probes = ((bits_per_item * ln2).round() as u32).clamp(1, 32);
        let words_len = (bits_per_band / 64)
            .checked_mul(bands.bands as u64)
            .and_then(|w| usize::try_from(w).ok())
            .ok_or_else(|| Error::OutOfMemory("bloom filter size overflows".into()))?;
        let mut words = Vec::new();
        words.try_reserve_exact(words_len).map_err(|_| {
            Error::OutOfMemory(format!(
                "cannot allocate {} bytes of bloom filters",
                words_len as u128 * 8
            ))
        })?;
        words.resize(words_len, 0);
        Ok(Self {
            bands,
            votes,
            bits_per_band,
            probes,
            words,
            capacity,
            fp_rate,
        })
    }

    pub fn bands(&self) -> Bands {
        self.bands
    }

    pub fn probes(&self) -> u32 {
        self.probes
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn fp_rate(&self) -> f64 {
        self.fp_rate
    }

    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    fn positions(&self, band: usize, key: u64) -> impl Iterator<Item = usize> + '_ {
        let h1 = key;
        let h2 = mix(key) | 1;
        let base = band as u64 * self.bits_per_band;
        (0..u64::from(self.probes)).map(move |i| {
            (base + reduce(h1.wrapping_add(i.wrapping_mul(h2)), self.bits_per_band)) as usize
        })
    }

    fn test(&self, band: usize, key: u64) -> bool {
        self.positions(band, key)
            .all(|p| self.words[p / 64] >> (p % 64) & 1 == 1)
    }

    fn set(&mut self, band: usize, key: u64) {
        let pos: Vec<usize> = self.positions(band, key).collect();
        for p in pos {
            self.words[p / 64] |= 1 << (p % 64);
        }
    }

    pub fn votes(&self) -> usize {
        self.votes
    }

    /// Whether at least `votes` bands of `sig` were seen before.
    pub fn contains(&self, sig: &[u32]) -> bool {
        let hits = (0..self.bands.bands)
            .filter(|&b| self.test(b, self.bands.key(sig, b)))
            .count();
        hits >= self.votes
    }

    /// Add every band of `sig`.
    pub fn insert(&mut self, sig: &[u32]) {
        for b in 0..self.bands.bands {
            let k = self.bands.key(sig, b);
            self.set(b, k);
        }
    }

    /// `contains` then `insert`: the streaming "seen a near-duplicate before?" step.
    pub fn check_and_insert(&mut self, sig: &[u32]) -> bool {
        let mut hits = 0;
        for b in 0..self.bands.bands {
            let k = self.bands.key(sig, b);
            hits += usize::from(self.test(b, k));
            self.set(b, k);
        }
        hits >= self.votes
    }
}

/// `P(Binomial(n, p) ≥ k)`.
fn binomial_tail(n: usize, p: f64, k: usize) -> f64 {
    // Sum the lower part in log space for stability, then complement.
    let mut below = 0.0;
    let mut log_choose = 0.0f64;
    for j in 0..k {
        if j > 0 {
            log_choose += ((n - j + 1) as f64).ln() - (j as f64).ln();
        }
        below += (log_choose + j as f64 * p.ln() + (n - j) as f64 * (1.0 - p).ln()).exp();
    }
    (1.0 - below).max(0.0)
}

/// The per-band false-positive rate: at most `fp_rate`, and such that `votes` spurious hits
/// out of `bands` happen with probability at most `fp_rate`.
fn per_band_rate(bands: usize, votes: usize, fp_rate: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, fp_rate);
    if binomial_tail(bands, hi, votes) <= fp_rate {
        return hi;
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if binomial_tail(bands, mid, votes) <= fp_rate {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo.max(f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_measured_fp_rate_near_target() {
        let bands = Bands::new(16, 8, 128).unwrap();
        let n = 20_000u64;
        let mut bloom = BandBloom::new(bands, n, 0.01, 1).unwrap();
        let mut state = 5u64;
        let mut sig = vec![0u32; 128];
        let fill = |state: &mut u64, sig: &mut [u32]| {
            for v in sig.iter_mut() {
                *state = mix(state.wrapping_add(0x9E37_79B9_7F4A_7C15));
                *v = *state as u32;
            }
        };
        let mut inserted = Vec::new();
        for _ in 0..n {
            fill(&mut state, &mut sig);
            bloom.check_and_insert(&sig);
            inserted.push(sig.clone());
        }
        assert!(inserted.iter().all(|s| bloom.contains(s)));
        let trials = 20_000;
        let mut fp = 0;
        for _ in 0..trials {
            fill(&mut state, &mut sig);
            fp += usize::from(bloom.contains(&sig));
        }
        let rate = fp as f64 / trials as f64;
        assert!(
            rate < 0.02,
            "false-positive rate {rate} far above the 0.01 target"
        );
        // Memory follows the formula: about 20 bits per band per document at 1 %.
        let per_doc_band = bloom.bytes() as f64 / (n as f64 * 16.0);
        assert!(
            per_doc_band < 2.5,
            "{per_doc_band} bytes per band per document"
        );
    }

    #[test]
    fn bad_configuration_is_refused() {
        let bands = Bands::new(16, 8, 128).unwrap();
        assert!(BandBloom::new(bands, 0, 0.01, 1).is_err());
        assert!(BandBloom::new(bands, 10, 0.0, 1).is_err());
        assert!(BandBloom::new(bands, 10, 1.0, 1).is_err());
        assert!(BandBloom::new(bands, 10, 0.01, 0).is_err());
        assert!(BandBloom::new(bands, 10, 0.01, 17).is_err());
    }

    #[test]
    fn votes_need_that_many_bands() {
        let bands = Bands::new(4, 2, 8).unwrap();
        let mut bloom = BandBloom::new(bands, 100, 1e-3, 2).unwrap();
        bloom.insert(&[1, 2, 3, 4, 5, 6, 7, 8]);
        // One shared band: not enough.
        assert!(!bloom.contains(&[1, 2, 0, 0, 0, 0, 0, 0]));
        // Two shared bands: flagged.
        assert!(bloom.contains(&[1, 2, 3, 4, 0, 0, 0, 0]));
        assert!(!bloom.check_and_insert(&[9, 9, 3, 4, 0, 0, 0, 0]));
    }

    #[test]
    fn per_band_rate_meets_both_limits() {
        let p1 = per_band_rate(16, 1, 1e-3);
        assert!((binomial_tail(16, p1, 1) - 1e-3).abs() < 1e-6);
        assert_eq!(per_band_rate(25, 11, 1e-3), 1e-3);
        assert!((binomial_tail(10, 0.5, 10) - 0.5f64.powi(10)).abs() < 1e-12);
    }
}
