//! Candidate verification and connected components over global document ids, in pieces that
//! a distributed engine can run as separate tasks: each task verifies some buckets and
//! returns a spanning forest of what it joined; forests merge pairwise into the components.

use crate::cluster::UnionFind;
use crate::verify;
use crate::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::hash::Hash;

/// The union-find operations the bucket walk needs, over whichever ids a caller numbers
/// documents with (dense `u32` in one process, global `u64` across a cluster).
pub trait Joiner<Id> {
    fn connected(&mut self, a: Id, b: Id) -> bool;
    fn join(&mut self, a: Id, b: Id);
}

impl Joiner<u32> for UnionFind {
    fn connected(&mut self, a: u32, b: u32) -> bool {
        self.find(a) == self.find(b)
    }
    fn join(&mut self, a: u32, b: u32) {
        self.union(a, b);
    }
}

impl Joiner<u64> for SparseUnionFind {
    fn connected(&mut self, a: u64, b: u64) -> bool {
        SparseUnionFind::connected(self, a, b)
    }
    fn join(&mut self, a: u64, b: u64) {
        self.union(a, b);
    }
}

/// Join the near-duplicates within each bucket (ascending ids). With `sets` (a lookup of
/// fingerprint sets and the threshold), every pair not yet connected, and not already found
/// dissimilar, is checked by exact Jaccard; without, each bucket joins whole. `joined` sees
/// every pair that joined two components (a spanning forest of the result).
pub fn join_buckets<'s, Id, B, S>(
    buckets: impl IntoIterator<Item = B>,
    sets: Option<(S, f64)>,
    uf: &mut impl Joiner<Id>,
    counts: &mut VerifyCounts,
    mut joined: impl FnMut(Id, Id),
) -> Result<()>
where
    Id: Copy + Eq + Hash + Display,
    B: AsRef<[Id]>,
    S: Fn(Id) -> Option<&'s [u32]>,
{
    let mut dissimilar: HashSet<(Id, Id)> = HashSet::new();
    for bucket in buckets {
        let bucket = bucket.as_ref();
        let m = bucket.len() as u64;
        counts.candidate_pairs += m * m.saturating_sub(1) / 2;
        let Some((set_of, threshold)) = &sets else {
            for &d in bucket.iter().skip(1) {
                if !uf.connected(bucket[0], d) {
                    uf.join(bucket[0], d);
                    joined(bucket[0], d);
                }
            }
            continue;
        };
        for i in 1..bucket.len() {
            for j in 0..i {
                let (a, b) = (bucket[j], bucket[i]);
                if uf.connected(a, b) || dissimilar.contains(&(a, b)) {
                    continue;
                }
                let (Some(sa), Some(sb)) = (set_of(a), set_of(b)) else {
                    return Err(Error::Invalid(format!(
                        "shingle sets of documents {a} and {b} were not collected"
                    )));
                };
                counts.verified_pairs += 1;
                if verify::at_least(sa, sb, *threshold) {
                    counts.similar_pairs += 1;
                    uf.join(a, b);
                    joined(a, b);
                } else {
                    dissimilar.insert((a, b));
                }
            }
        }
    }
    Ok(())
}

/// Union-find over sparse 64-bit ids.
#[derive(Default)]
pub struct SparseUnionFind {
    index: HashMap<u64, u32>,
    ids: Vec<u64>,
    parent: Vec<u32>,
}

impl SparseUnionFind {
    fn slot(&mut self, id: u64) -> u32 {
        if let Some(&i) = self.index.get(&id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.index.insert(id, i);
        self.ids.push(id);
        self.parent.push(i);
        i
    }

    fn root(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Whether `a` and `b` are already in one set.
    pub fn connected(&mut self, a: u64, b: u64) -> bool {
        match (self.index.get(&a).copied(), self.index.get(&b).copied()) {
            (Some(x), Some(y)) => self.root(x) == self.root(y),
            _ => a == b,
        }
    }

    /// Join `a` and `b`; true when they were apart (the edge belongs to the forest).
    pub fn union(&mut self, a: u64, b: u64) -> bool {
        let (x, y) = (self.slot(a), self.slot(b));
        let (rx, ry) = (self.root(x), self.root(y));
        if rx == ry {
            return false;
        }
        // The root is the smaller id, so a component's root is its lowest id.
        if self.ids[rx as usize] < self.ids[ry as usize] {
            self.parent[ry as usize] = rx;
        } else {
            self.parent[rx as usize] = ry;
        }
        true
    }

    /// `(id, lowest id of its component)` for every id seen, ascending by id.
    pub fn labels(&mut self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = (0..self.ids.len() as u32)
            .map(|i| {
                let r = self.root(i);
                (self.ids[i as usize], self.ids[r as usize])
            })
            .collect();
        out.sort_unstable();
        out
    }
}

/// A spanning forest of the graph with `edges`: the same components, at most one edge per
/// joined vertex.
pub fn spanning_forest(edges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut uf = SparseUnionFind::default();
    edges
        .iter()
        .copied()
        .filter(|&(a, b)| uf.union(a, b))
        .collect()
}

/// Counts of one verification task.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyCounts {
    pub candidate_pairs: u64,
    pub verified_pairs: u64,
    pub similar_pairs: u64,
}

/// Verify every pair within each bucket (ascending global ids; `bucket_offsets` has one
/// more entry than there are buckets) against the fingerprint sets of `set_ids`, skipping
/// pairs this task has already joined; `verify = false` joins every bucket whole. Returns the
/// spanning forest of the joined pairs.
pub fn verify_buckets(
    members: &[u64],
    bucket_offsets: &[u64],
    set_ids: &[u64],
    set_flat: &[u32],
    set_offsets: &[u64],
    threshold: f64,
    verify: bool,
) -> Result<(Vec<(u64, u64)>, VerifyCounts)> {
    let bad = |what: &str| Error::Format(format!("verify_buckets: {what}"));
    if set_offsets.len() != set_ids.len() + 1 {
        return Err(bad("set offsets do not match set ids"));
    }
    let mut sets: HashMap<u64, &[u32]> = HashMap::with_capacity(set_ids.len());
    for (i, &id) in set_ids.iter().enumerate() {
        let (s, e) = (set_offsets[i] as usize, set_offsets[i + 1] as usize);
        let set = set_flat
            .get(s..e)
            .ok_or_else(|| bad("set offsets out of range"))?;
        sets.insert(id, set);
    }
    let buckets = bucket_offsets
        .windows(2)
        .map(|w| {
            members
                .get(w[0] as usize..w[1] as usize)
                .ok_or_else(|| bad("bucket offsets out of range"))
        })
        .collect::<Result<Vec<&[u64]>>>()?;
    let set_of = |id: u64| sets.get(&id).copied();
    let mut uf = SparseUnionFind::default();
    let mut forest = Vec::new();
    let mut counts = VerifyCounts::default();
    join_buckets(
        buckets,
        verify.then_some((set_of, threshold)),
        &mut uf,
        &mut counts,
        |a, b| forest.push((a, b)),
    )?;
    Ok((forest, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forest_and_labels() {
        let edges = [(5, 9), (9, 7), (7, 5), (100, 3), (42, 42)];
        let f = spanning_forest(&edges);
        assert_eq!(f, vec![(5, 9), (9, 7), (100, 3)]);
        let mut uf = SparseUnionFind::default();
        for (a, b) in f {
            uf.union(a, b);
        }
        assert_eq!(uf.labels(), vec![(3, 3), (5, 5), (7, 5), (9, 5), (100, 3)]);
    }

    #[test]
    fn buckets_verify_against_sets() {
        // Documents 1 and 2 are similar, 3 is not; bucket [1, 2, 3].
        let set_ids = [1, 2, 3];
        let flat = [1, 2, 3, 4, 1, 2, 3, 4, 9];
        let offsets = [0, 4, 8, 9];
        let (f, c) =
            verify_buckets(&[1, 2, 3], &[0, 3], &set_ids, &flat, &offsets, 0.8, true).unwrap();
        assert_eq!(f, vec![(1, 2)]);
        assert_eq!(
            (c.candidate_pairs, c.verified_pairs, c.similar_pairs),
            (3, 3, 1)
        );
        let (f, _) = verify_buckets(&[1, 2, 3], &[0, 3], &[], &[], &[0], 0.8, false).unwrap();
        assert_eq!(f, vec![(1, 2), (1, 3)]);
        assert!(verify_buckets(&[1, 2], &[0, 2], &[1], &flat, &[0, 4], 0.8, true).is_err());
        assert!(verify_buckets(&[1, 2], &[0, 5], &[], &[], &[0], 0.8, false).is_err());
    }
}
