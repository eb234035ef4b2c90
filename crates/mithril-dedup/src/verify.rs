//! Exact Jaccard similarity of sorted, distinct shingle sets.

/// `|A ∩ B| / |A ∪ B|` of two sorted, distinct slices; two empty sets give 0 (texts without
/// shingles are never near-duplicates).
pub fn jaccard<T: Ord>(a: &[T], b: &[T]) -> f64 {
    let union_max = a.len() + b.len();
    if union_max == 0 {
        return 0.0;
    }
    let inter = intersection(a, b);
    inter as f64 / (union_max - inter) as f64
}

fn intersection<T: Ord>(a: &[T], b: &[T]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (&a[i], &b[j]);
        n += usize::from(x == y);
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    n
}

/// Whether `jaccard(a, b) >= threshold`, skipping the merge when the sizes alone rule it out
/// (`J ≤ min/max`).
pub fn at_least<T: Ord>(a: &[T], b: &[T], threshold: f64) -> bool {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if small.is_empty() || (small.len() as f64) < threshold * large.len() as f64 {
        return false;
    }
    jaccard(a, b) >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(jaccard(&[1, 2, 3, 4], &[3, 4, 5, 6]), 2.0 / 6.0);
        assert_eq!(jaccard(&[1, 2], &[1, 2]), 1.0);
        assert_eq!(jaccard::<u64>(&[], &[]), 0.0);
        assert!(at_least(&[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5, 6], 0.8));
        assert!(!at_least(&[1], &[1, 2, 3, 4, 5, 6], 0.8));
        assert!(!at_least::<u32>(&[], &[], 0.5));
    }

    proptest! {
        #[test]
        fn matches_hash_sets(a in proptest::collection::btree_set(0u64..64, 0..40),
                             b in proptest::collection::btree_set(0u64..64, 0..40)) {
            let av: Vec<u64> = a.iter().copied().collect();
            let bv: Vec<u64> = b.iter().copied().collect();
            let inter = a.intersection(&b).count();
            let uni = a.union(&b).count();
            let expect = if uni == 0 { 0.0 } else { inter as f64 / uni as f64 };
            prop_assert_eq!(jaccard(&av, &bv), expect);
            prop_assert_eq!(at_least(&av, &bv, 0.5), uni > 0 && expect >= 0.5);
        }
    }
}
