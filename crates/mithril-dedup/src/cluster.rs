//! Union-find over document ids and the choice of one kept document per cluster.

use crate::{Error, Result};

pub struct UnionFind {
    parent: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
        }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    /// Join the sets of `a` and `b`; the smaller root becomes the root, so a cluster's root is
    /// always its lowest id.
    pub fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        self.parent[hi as usize] = lo;
        true
    }
}

/// Which document of a cluster is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The lowest id (the first in input order).
    Lowest,
    /// The longest text in bytes; ties go to the lowest id.
    Longest,
}

impl Keep {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "lowest" | "first" => Ok(Self::Lowest),
            "longest" => Ok(Self::Longest),
            _ => Err(Error::Invalid(format!(
                "keep must be \"lowest\" or \"longest\", not {s:?}"
            ))),
        }
    }
}

/// Per-document cluster label (the cluster's lowest id) and the id kept for each document's
/// cluster.
pub struct Clusters {
    pub label: Vec<u32>,
    pub kept: Vec<u32>,
}

impl Clusters {
    pub fn from_union_find(uf: &mut UnionFind, lengths: &[u64], keep: Keep) -> Self {
        let n = lengths.len();
        let label: Vec<u32> = (0..n as u32).map(|i| uf.find(i)).collect();
        let mut kept: Vec<u32> = label.clone();
        if keep == Keep::Longest {
            for i in 0..n {
                let root = label[i] as usize;
                let best = kept[root] as usize;
                if lengths[i] > lengths[best] {
                    kept[root] = i as u32;
                }
            }
            for i in 0..n {
                kept[i] = kept[label[i] as usize];
            }
        }
        Self { label, kept }
    }

    pub fn is_kept(&self, i: usize) -> bool {
        self.kept[i] as usize == i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_lowest_and_keep_rules() {
        let mut uf = UnionFind::new(6);
        uf.union(4, 2);
        uf.union(5, 4);
        uf.union(1, 3);
        let c = Clusters::from_union_find(&mut uf, &[1, 1, 1, 1, 9, 1], Keep::Lowest);
        assert_eq!(c.label, vec![0, 1, 2, 1, 2, 2]);
        assert!(c.is_kept(2) && !c.is_kept(4) && !c.is_kept(5));
        let mut uf2 = UnionFind::new(6);
        uf2.union(4, 2);
        uf2.union(5, 4);
        let c = Clusters::from_union_find(&mut uf2, &[1, 1, 1, 1, 9, 9], Keep::Longest);
        assert!(c.is_kept(4) && !c.is_kept(2) && !c.is_kept(5));
        assert!(Keep::parse("random").is_err());
    }
}
