//! Locality-sensitive hashing over MinHash signatures: `b` bands of `r` rows.
//!
//! Two documents become candidates when all `r` values of at least one band agree, which
//! happens with probability `1 - (1 - J^r)^b`. [`optimal_params`] picks `(b, r)` for a
//! threshold by minimising the weighted areas of false positives (below the threshold) and
//! false negatives (above it) under that curve, the rule datasketch and text-dedup use.

use crate::{Error, Result};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bands and rows per band.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bands {
    pub bands: usize,
    pub rows: usize,
}

impl Bands {
    pub fn new(bands: usize, rows: usize, num_perm: usize) -> Result<Self> {
        if bands == 0 || rows == 0 || bands.saturating_mul(rows) > num_perm {
            return Err(Error::Invalid(format!(
                "bands × rows must be between 1 and num_perm ({num_perm}), got {bands} × {rows}"
            )));
        }
        Ok(Self { bands, rows })
    }

    /// Refuse a signature too short for these bands (every key reads `bands × rows` values).
    pub fn check_signature(&self, sig: &[u32]) -> Result<()> {
        let need = self.bands * self.rows;
        if sig.len() < need {
            return Err(Error::Invalid(format!(
                "signature has {} values; this index needs at least {need}",
                sig.len()
            )));
        }
        Ok(())
    }

    /// Probability that a pair at Jaccard `s` shares at least one band.
    pub fn collision_probability(&self, s: f64) -> f64 {
        1.0 - (1.0 - s.powi(self.rows as i32)).powi(self.bands as i32)
    }

    /// The 64-bit key of band `band` of a signature.
    #[inline]
    pub fn key(&self, sig: &[u32], band: usize) -> u64 {
        let rows = &sig[band * self.rows..(band + 1) * self.rows];
        let mut buf = [0u8; 4 * 64];
        if rows.len() <= 64 {
            for (i, v) in rows.iter().enumerate() {
                buf[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
            xxh3_64_with_seed(&buf[..4 * rows.len()], band as u64)
        } else {
            let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
            xxh3_64_with_seed(&bytes, band as u64)
        }
    }
}

fn integrate(f: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
    // Composite Simpson's rule; the integrands are smooth polynomials.
    const STEPS: usize = 400;
    if hi <= lo {
        return 0.0;
    }
    let h = (hi - lo) / STEPS as f64;
    let mut sum = f(lo) + f(hi);
    for i in 1..STEPS {
        let w = if i % 2 == 1 { 4.0 } else { 2.0 };
        sum += w * f(lo + i as f64 * h);
    }
    sum * h / 3.0
}

/// `(b, r)` minimising `fp_weight · FP + fn_weight · FN` for `threshold`, with `b · r ≤ num_perm`.
pub fn optimal_params(
    threshold: f64,
    num_perm: usize,
    fp_weight: f64,
    fn_weight: f64,
) -> Result<Bands> {
    if !(threshold > 0.0 && threshold < 1.0) {
        return Err(Error::Invalid(format!(
            "threshold must be strictly between 0 and 1, got {threshold}"
        )));
    }
    if !(fp_weight >= 0.0 && fn_weight >= 0.0 && fp_weight + fn_weight > 0.0) {
        return Err(Error::Invalid(format!(
            "weights must be non-negative and not both zero, got ({fp_weight}, {fn_weight})"
        )));
    }
    if num_perm == 0 {
        return Err(Error::Invalid("num_perm must be at least 1".into()));
    }
    let mut best = (f64::INFINITY, Bands { bands: 1, rows: 1 });
    for b in 1..=num_perm {
        for r in 1..=num_perm / b {
            let p = Bands { bands: b, rows: r };
            let fp = integrate(|s| p.collision_probability(s), 0.0, threshold);
            let fneg = integrate(|s| 1.0 - p.collision_probability(s), threshold, 1.0);
            let err = fp_weight * fp + fn_weight * fneg;
            if err < best.0 {
                best = (err, p);
            }
        }
    }
    Ok(best.1)
}

/// Band tables for incremental insert/query of keyed signatures (the `LSHIndex` API).
pub struct LshTables {
    bands: Bands,
    tables: Vec<HashMap<u64, Vec<u64>>>,
    keys_of: HashMap<u64, Vec<u64>>,
}

impl LshTables {
    pub fn new(bands: Bands) -> Self {
        Self {
            bands,
            tables: (0..bands.bands).map(|_| HashMap::new()).collect(),
            keys_of: HashMap::new(),
        }
    }

    pub fn bands(&self) -> Bands {
        self.bands
    }

    pub fn len(&self) -> usize {
        self.keys_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys_of.is_empty()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.keys_of.contains_key(&id)
    }

    /// Insert `id` (which must be new) with its signature.
    pub fn insert(&mut self, id: u64, sig: &[u32]) -> Result<()> {
        self.bands.check_signature(sig)?;
        if self.keys_of.contains_key(&id) {
            return Err(Error::Invalid(format!("key {id} is already in the index")));
        }
        let keys: Vec<u64> = (0..self.bands.bands)
            .map(|b| self.bands.key(sig, b))
            .collect();
        for (table, k) in self.tables.iter_mut().zip(&keys) {
            table.entry(*k).or_default().push(id);
        }
        self.keys_of.insert(id, keys);
        Ok(())
    }

    /// Ids sharing at least one band with `sig`, each once, in insertion order per band.
    pub fn query(&self, sig: &[u32]) -> Result<Vec<u64>> {
        self.bands.check_signature(sig)?;
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (b, table) in self.tables.iter().enumerate() {
            if let Some(ids) = table.get(&self.bands.key(sig, b)) {
                for &id in ids {
                    if seen.insert(id) {
                        out.push(id);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Remove `id`; returns whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(keys) = self.keys_of.remove(&id) else {
            return false;
        };
        for (table, k) in self.tables.iter_mut().zip(&keys) {
            if let Some(ids) = table.get_mut(k) {
                ids.retain(|&x| x != id);
                if ids.is_empty() {
                    table.remove(k);
                }
            }
        }
        true
    }

    /// Approximate heap bytes of the band tables.
    pub fn index_bytes(&self) -> usize {
        let per_entry = 8 + 24 + 8; // key, Vec header, one id
        self.tables
            .iter()
            .map(|t| t.capacity() * per_entry)
            .sum::<usize>()
            + self.keys_of.capacity() * (8 + 24 + 8 * self.bands.bands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimal_params_match_the_known_choices() {
        // datasketch's choices for 128 permutations at 0.8.
        assert_eq!(
            optimal_params(0.8, 128, 0.5, 0.5).unwrap(),
            Bands { bands: 9, rows: 13 }
        );
        assert_eq!(
            optimal_params(0.8, 128, 0.05, 0.95).unwrap(),
            Bands { bands: 16, rows: 8 }
        );
        assert!(optimal_params(1.0, 128, 0.5, 0.5).is_err());
        assert!(optimal_params(0.5, 128, -1.0, 0.5).is_err());
    }

    #[test]
    fn tables_insert_query_remove() {
        let bands = Bands::new(4, 2, 8).unwrap();
        let mut t = LshTables::new(bands);
        let a = [1, 2, 3, 4, 5, 6, 7, 8];
        let b = [1, 2, 0, 0, 0, 0, 0, 0];
        let c = [9, 9, 9, 9, 9, 9, 9, 9];
        t.insert(10, &a).unwrap();
        t.insert(11, &b).unwrap();
        assert!(t.insert(10, &c).is_err());
        assert_eq!(t.query(&a).unwrap(), vec![10, 11]);
        assert!(t.query(&c).unwrap().is_empty());
        assert!(t.remove(11));
        assert!(!t.remove(11));
        assert_eq!(t.query(&b).unwrap(), vec![10]);
        assert!(t.query(&[1, 2]).is_err());
        assert!(Bands::new(5, 2, 8).is_err());
    }
}
