//! Delta of one chunk against the same elements of a base tensor.
//!
//! Two transforms of the element bit patterns, chosen per chunk by estimated size:
//! - `Xor`: `t ^ b`. Unchanged high bits become zeros.
//! - `Sub`: zigzag(`t - b`) with wrapping integer arithmetic on the bit patterns. A float
//!   that moved by a few ulps (the usual optimiser step) becomes a small integer, where XOR
//!   would smear the carry across the mantissa.
//!
//! - `SubCtx` (floats only): the `Sub` words grouped by the base element's sign and exponent
//!   before coding. An optimiser step moves a weight by a similar *value* everywhere, which
//!   is a number of ulps that depends on the weight's exponent; grouping by it gives each
//!   group a narrow distribution of its own.
//!
//! The transformed words are cut into little-endian byte planes, and each plane is stored
//! raw, constant, rANS or zstd, whichever is smallest (the same plane coder as the float
//! codec). Payload: one `u8 method | u32 length | bytes` stream per byte of the element;
//! for `SubCtx`, that many streams per group, groups in the order [`groups`] gives.

use crate::error::{corrupt, Result};
use crate::float::{decode_plane, encode_plane_counts, StreamReader};
use crate::rans;

/// Which delta transform a chunk uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOp {
    Xor,
    Sub,
    SubCtx,
}

/// Contexts (sign + exponent values) seen fewer times than this in a chunk share one group,
/// so that no group pays a coding table for a handful of elements.
const MIN_GROUP: u32 = 2048;

pub trait Word: Copy {
    const BYTES: usize;
    const ZERO: Self;
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
    fn xor(self, o: Self) -> Self;
    /// zigzag(self - base)
    fn sub_zigzag(self, base: Self) -> Self;
    /// Inverse of `sub_zigzag`: base + unzigzag(self).
    fn add_unzigzag(self, base: Self) -> Self;
    fn byte(self, i: usize) -> u8;
    /// `self >> shift` as a context id (sign + exponent of a float word).
    fn context(self, shift: u32) -> u16;
    /// `self` with byte `i` set to `b` (which must be zero before).
    fn with_byte(self, i: usize, b: u8) -> Self;
}

macro_rules! word {
    ($u:ty, $i:ty) => {
        impl Word for $u {
            const BYTES: usize = std::mem::size_of::<$u>();
            const ZERO: Self = 0;
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$u>()];
                a.copy_from_slice(b);
                <$u>::from_le_bytes(a)
            }
            #[inline(always)]
            fn store(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn xor(self, o: Self) -> Self {
                self ^ o
            }
            #[inline(always)]
            fn sub_zigzag(self, base: Self) -> Self {
                let d = self.wrapping_sub(base) as $i;
                ((d << 1) ^ (d >> (<$u>::BITS - 1))) as $u
            }
            #[inline(always)]
            fn add_unzigzag(self, base: Self) -> Self {
                let d = (self >> 1) ^ (self & 1).wrapping_neg();
                base.wrapping_add(d)
            }
            #[inline(always)]
            fn byte(self, i: usize) -> u8 {
                (self >> (8 * i)) as u8
            }
            #[inline(always)]
            fn with_byte(self, i: usize, b: u8) -> Self {
                self | ((b as $u) << (8 * i))
            }
            #[inline(always)]
            fn context(self, shift: u32) -> u16 {
                self.checked_shr(shift).unwrap_or(0) as u16
            }
        }
    };
}

word!(u8, i8);
word!(u16, i16);
word!(u32, i32);
word!(u64, i64);

/// The delta words of both transforms, in one pass.
fn delta_words<T: Word>(raw: &[u8], base: &[u8]) -> (Vec<T>, Vec<T>) {
    let n = raw.len() / T::BYTES;
    let mut xor = Vec::with_capacity(n);
    let mut sub = Vec::with_capacity(n);
    for (t, b) in raw.chunks_exact(T::BYTES).zip(base.chunks_exact(T::BYTES)) {
        let (t, b) = (T::load(t), T::load(b));
        xor.push(t.xor(b));
        sub.push(t.sub_zigzag(b));
    }
    (xor, sub)
}

fn sub_words<T: Word>(raw: &[u8], base: &[u8]) -> Vec<T> {
    raw.chunks_exact(T::BYTES)
        .zip(base.chunks_exact(T::BYTES))
        .map(|(t, b)| T::load(t).sub_zigzag(T::load(b)))
        .collect()
}

/// One 256-bin histogram per byte plane of `words`.
fn plane_histograms<T: Word>(words: &[T]) -> Vec<[u32; 256]> {
    let mut h = vec![[0u32; 256]; T::BYTES];
    for w in words {
        for (p, hp) in h.iter_mut().enumerate() {
            hp[w.byte(p) as usize] += 1;
        }
    }
    h
}

/// Context id of every element (sign + exponent of its base) and the grouping they imply:
/// the group of each element, and where each group starts in grouped order (len groups + 1).
/// Contexts with at least [`MIN_GROUP`] elements get their own group, in increasing context
/// order; the rest share a last group. Computed from the base alone, so the decoder gets
/// the same answer.
fn groups<T: Word>(base: &[u8], ctx_shift: u32) -> (Vec<u16>, Vec<usize>) {
    let mut ids: Vec<u16> = base
        .chunks_exact(T::BYTES)
        .map(|b| T::load(b).context(ctx_shift))
        .collect();
    // Contexts are the bits above `ctx_shift`: at most 2^(width - shift) of them.
    let contexts = 1usize << (8 * T::BYTES as u32).saturating_sub(ctx_shift).min(16);
    let mut counts = vec![0u32; contexts];
    for &c in &ids {
        counts[c as usize] += 1;
    }
    let mut group_of = vec![0u16; contexts];
    let mut sizes = Vec::new();
    let mut rest = Vec::new();
    for (c, &n) in counts.iter().enumerate() {
        if n >= MIN_GROUP {
            group_of[c] = sizes.len() as u16;
            sizes.push(n as usize);
        } else if n > 0 {
            rest.push(c);
        }
    }
    if !rest.is_empty() {
        let rest_id = sizes.len() as u16;
        let mut total = 0usize;
        for c in rest {
            group_of[c] = rest_id;
            total += counts[c] as usize;
        }
        sizes.push(total);
    }
    for id in ids.iter_mut() {
        *id = group_of[*id as usize];
    }
    let mut starts = Vec::with_capacity(sizes.len() + 1);
    let mut at = 0;
    starts.push(0);
    for n in sizes {
        at += n;
        starts.push(at);
    }
    (ids, starts)
}

/// Histograms per (group, plane), index `g * BYTES + p`.
fn grouped_histograms<T: Word>(words: &[T], ids: &[u16], groups: usize) -> Vec<[u32; 256]> {
    let mut h = vec![[0u32; 256]; groups * T::BYTES];
    for (w, &g) in words.iter().zip(ids) {
        let row = &mut h[g as usize * T::BYTES..(g as usize + 1) * T::BYTES];
        for (p, hp) in row.iter_mut().enumerate() {
            hp[w.byte(p) as usize] += 1;
        }
    }
    h
}

fn plane_estimate(counts: &[u32; 256], len: usize) -> usize {
    if counts.iter().filter(|&&c| c > 0).count() <= 1 {
        return 6;
    }
    5 + rans::estimated_size(counts).min(len)
}

/// What [`encode`] would do with a chunk, and its estimated payload size.
pub struct DeltaPlan<T> {
    pub op: DeltaOp,
    pub estimate: usize,
    words: Vec<T>,
    hists: Vec<[u32; 256]>,
    grouping: Option<(Vec<u16>, Vec<usize>)>,
}

fn plan_words<T: Word>(raw: &[u8], base: &[u8], ctx_shift: Option<u32>) -> DeltaPlan<T> {
    let n = raw.len() / T::BYTES;
    let est = |h: &[[u32; 256]]| h.iter().map(|c| plane_estimate(c, n)).sum::<usize>();
    // Floats: an optimiser step is an integer number of ulps, which the difference keeps
    // small and XOR smears, so XOR is not worth its passes there.
    let (xor, sub) = match ctx_shift {
        Some(_) => (Vec::new(), sub_words::<T>(raw, base)),
        None => delta_words::<T>(raw, base),
    };
    let hs = plane_histograms(&sub);
    let hx = if ctx_shift.is_some() {
        Vec::new()
    } else {
        plane_histograms(&xor)
    };
    let es = est(&hs);
    let ex = if ctx_shift.is_some() {
        usize::MAX
    } else {
        est(&hx)
    };
    if let Some(shift) = ctx_shift {
        let (ids, starts) = groups::<T>(base, shift);
        let gh = grouped_histograms(&sub, &ids, starts.len() - 1);
        let eg: usize = gh
            .iter()
            .enumerate()
            .map(|(i, c)| plane_estimate(c, starts[i / T::BYTES + 1] - starts[i / T::BYTES]))
            .sum();
        if eg < ex.min(es) {
            return DeltaPlan {
                op: DeltaOp::SubCtx,
                estimate: eg,
                words: sub,
                hists: gh,
                grouping: Some((ids, starts)),
            };
        }
    }
    if es <= ex {
        DeltaPlan {
            op: DeltaOp::Sub,
            estimate: es,
            words: sub,
            hists: hs,
            grouping: None,
        }
    } else {
        DeltaPlan {
            op: DeltaOp::Xor,
            estimate: ex,
            words: xor,
            hists: hx,
            grouping: None,
        }
    }
}

fn push_plane(out: &mut Vec<u8>, plane: &[u8], counts: &[u32; 256]) {
    let (method, data) = encode_plane_counts(plane, 8, counts, false);
    out.push(method);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
}

fn emit<T: Word>(plan: DeltaPlan<T>) -> (DeltaOp, Vec<u8>) {
    let n = plan.words.len();
    let mut out = Vec::with_capacity(plan.estimate + 64);
    let mut plane = vec![0u8; n];
    match &plan.grouping {
        None => {
            for (p, counts) in plan.hists.iter().enumerate() {
                for (o, w) in plane.iter_mut().zip(&plan.words) {
                    *o = w.byte(p);
                }
                push_plane(&mut out, &plane, counts);
            }
        }
        Some((ids, starts)) => {
            // Grouped planes, one per byte, each group contiguous (stable within a group).
            let mut planes = vec![vec![0u8; n]; T::BYTES];
            let mut next: Vec<usize> = starts[..starts.len() - 1].to_vec();
            for (w, &g) in plan.words.iter().zip(ids) {
                let at = next[g as usize];
                next[g as usize] += 1;
                for (p, pl) in planes.iter_mut().enumerate() {
                    pl[at] = w.byte(p);
                }
            }
            for (g, span) in starts.windows(2).enumerate() {
                for (p, pl) in planes.iter().enumerate() {
                    push_plane(
                        &mut out,
                        &pl[span[0]..span[1]],
                        &plan.hists[g * T::BYTES + p],
                    );
                }
            }
        }
    }
    (plan.op, out)
}

/// Plan and emit in one call.
fn encode_words<T: Word>(raw: &[u8], base: &[u8], ctx_shift: Option<u32>) -> (DeltaOp, Vec<u8>) {
    emit(plan_words::<T>(raw, base, ctx_shift))
}

/// A planned delta of any element width, so that the caller can compare its estimate with
/// the plain codec's before paying for the coding.
pub enum Planned {
    W1(DeltaPlan<u8>),
    W2(DeltaPlan<u16>),
    W4(DeltaPlan<u32>),
    W8(DeltaPlan<u64>),
}

impl Planned {
    pub fn estimate(&self) -> usize {
        match self {
            Planned::W1(p) => p.estimate,
            Planned::W2(p) => p.estimate,
            Planned::W4(p) => p.estimate,
            Planned::W8(p) => p.estimate,
        }
    }

    pub fn emit(self) -> (DeltaOp, Vec<u8>) {
        match self {
            Planned::W1(p) => emit(p),
            Planned::W2(p) => emit(p),
            Planned::W4(p) => emit(p),
            Planned::W8(p) => emit(p),
        }
    }
}

/// Choose the transform for `raw` against `base` (same length, whole elements of
/// `elem_bytes`) from histograms alone. `ctx_shift` (the mantissa width of a float dtype)
/// enables the grouped [`DeltaOp::SubCtx`].
pub fn plan(raw: &[u8], base: &[u8], elem_bytes: usize, ctx_shift: Option<u32>) -> Planned {
    debug_assert_eq!(raw.len(), base.len());
    match elem_bytes {
        1 => Planned::W1(plan_words(raw, base, None)),
        2 => Planned::W2(plan_words(raw, base, ctx_shift)),
        4 => Planned::W4(plan_words(raw, base, ctx_shift)),
        _ => Planned::W8(plan_words(raw, base, None)),
    }
}

/// Encode `raw` against `base`: [`plan`], then code it.
pub fn encode(
    raw: &[u8],
    base: &[u8],
    elem_bytes: usize,
    ctx_shift: Option<u32>,
) -> (DeltaOp, Vec<u8>) {
    match elem_bytes {
        1 => encode_words::<u8>(raw, base, None),
        2 => encode_words::<u16>(raw, base, ctx_shift),
        4 => encode_words::<u32>(raw, base, ctx_shift),
        _ => encode_words::<u64>(raw, base, None),
    }
}

fn decode_words<T: Word>(
    op: DeltaOp,
    payload: &[u8],
    inout: &mut [u8],
    ctx_shift: Option<u32>,
) -> Result<()> {
    let n = inout.len() / T::BYTES;
    let mut rd = StreamReader::new(payload);
    let mut planes = vec![vec![0u8; n]; T::BYTES];
    let mut grouping = None;
    if op == DeltaOp::SubCtx {
        let shift = ctx_shift.ok_or_else(|| corrupt("grouped delta on a non-float dtype"))?;
        let (ids, starts) = groups::<T>(inout, shift);
        for w in starts.windows(2) {
            for plane in planes.iter_mut() {
                let (method, data) = rd.stream()?;
                decode_plane(method, data, &mut plane[w[0]..w[1]], 8)?;
            }
        }
        grouping = Some((ids, starts));
    } else {
        for plane in planes.iter_mut() {
            let (method, data) = rd.stream()?;
            decode_plane(method, data, plane, 8)?;
        }
    }
    rd.finish()?;
    // Reassemble the delta words (in grouped order for SubCtx).
    let mut words = vec![T::ZERO; n];
    for (p, plane) in planes.iter().enumerate() {
        for (w, &b) in words.iter_mut().zip(plane) {
            *w = w.with_byte(p, b);
        }
    }
    let elems = inout.chunks_exact_mut(T::BYTES);
    match (op, grouping) {
        (DeltaOp::Xor, _) => {
            for (o, d) in elems.zip(&words) {
                T::load(o).xor(*d).store(o);
            }
        }
        (_, None) => {
            for (o, d) in elems.zip(&words) {
                d.add_unzigzag(T::load(o)).store(o);
            }
        }
        (_, Some((ids, starts))) => {
            let mut next: Vec<usize> = starts[..starts.len() - 1].to_vec();
            for (o, &g) in elems.zip(&ids) {
                let at = next[g as usize];
                next[g as usize] += 1;
                words[at].add_unzigzag(T::load(o)).store(o);
            }
        }
    }
    Ok(())
}

/// Apply a delta payload: `inout` holds the base elements on entry and the decoded elements
/// on return.
pub fn decode(
    op: DeltaOp,
    payload: &[u8],
    elem_bytes: usize,
    ctx_shift: Option<u32>,
    inout: &mut [u8],
) -> Result<()> {
    if inout.len() % elem_bytes != 0 {
        return Err(corrupt("delta chunk is not whole elements"));
    }
    match elem_bytes {
        1 => decode_words::<u8>(op, payload, inout, None),
        2 => decode_words::<u16>(op, payload, inout, ctx_shift),
        4 => decode_words::<u32>(op, payload, inout, ctx_shift),
        8 => decode_words::<u64>(op, payload, inout, None),
        w => Err(corrupt(format!("delta on {w}-byte elements"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_ctx(raw: &[u8], base: &[u8], w: usize, ctx: Option<u32>) -> (DeltaOp, usize) {
        let (op, enc) = encode(raw, base, w, ctx);
        let mut out = base.to_vec();
        decode(op, &enc, w, ctx, &mut out).unwrap();
        assert_eq!(out, raw);
        (op, enc.len())
    }

    fn roundtrip(raw: &[u8], base: &[u8], w: usize) -> (DeltaOp, usize) {
        let (op, enc) = encode(raw, base, w, None);
        let mut out = base.to_vec();
        decode(op, &enc, w, None, &mut out).unwrap();
        assert_eq!(out, raw);
        (op, enc.len())
    }

    #[test]
    fn small_float_steps_pick_sub_and_shrink() {
        let base: Vec<f32> = (0..4096)
            .map(|i| ((i as f32) * 0.37).sin() * 0.05)
            .collect();
        let next: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, v)| f32::from_bits(v.to_bits().wrapping_add((i % 5) as u32)))
            .collect();
        let b: Vec<u8> = base.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t: Vec<u8> = next.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (op, len) = roundtrip(&t, &b, 4);
        assert_eq!(op, DeltaOp::Sub);
        assert!(len < t.len() / 8, "{len}");
    }

    #[test]
    fn identical_chunk_is_tiny() {
        let b: Vec<u8> = (0..8192u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let (_, len) = roundtrip(&b, &b, 4);
        assert!(len < 64, "{len}");
    }

    #[test]
    fn extremes_wrap_exactly() {
        for w in [1usize, 2, 4, 8] {
            let raw: Vec<u8> = (0..64).map(|i| if i % 2 == 0 { 0xff } else { 0 }).collect();
            let base: Vec<u8> = (0..64).map(|i| if i % 3 == 0 { 0 } else { 0xff }).collect();
            roundtrip(&raw, &base, w);
        }
    }

    /// An Adam-like step: the same value moved everywhere, so the step in ulps depends on the
    /// exponent of each weight. Grouping by exponent must win and round-trip.
    #[test]
    fn same_value_step_groups_by_exponent() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let base: Vec<f32> = (0..1 << 16)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        let next: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, v)| v - if (i * 7) % 3 == 0 { 1e-4 } else { -1e-4 })
            .collect();
        let b: Vec<u8> = base.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t: Vec<u8> = next.iter().flat_map(|v| v.to_le_bytes()).collect();
        let (_, plain) = roundtrip(&t, &b, 4);
        let (op, grouped) = roundtrip_ctx(&t, &b, 4, Some(23));
        assert_eq!(op, DeltaOp::SubCtx);
        assert!(grouped < plain * 3 / 4, "{grouped} vs {plain}");
    }

    proptest! {
        #[test]
        fn any_pair_roundtrips_grouped(
            data in proptest::collection::vec(any::<(u16, u16)>(), 0..6000),
            spread in 0u16..4,
        ) {
            // Few distinct exponents so that real groups form, plus arbitrary words.
            let base: Vec<u8> = data.iter().flat_map(|p| (p.1 % (1 << (8 + spread))).to_le_bytes()).collect();
            let raw: Vec<u8> = data.iter().flat_map(|p| p.0.to_le_bytes()).collect();
            roundtrip_ctx(&raw, &base, 2, Some(7));
        }

        #[test]
        fn any_pair_roundtrips(
            data in proptest::collection::vec(any::<(u8, u8)>(), 0..2000),
            w in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        ) {
            let n = data.len() / w * w;
            let raw: Vec<u8> = data[..n].iter().map(|p| p.0).collect();
            let base: Vec<u8> = data[..n].iter().map(|p| p.1).collect();
            roundtrip(&raw, &base, w);
        }

        #[test]
        fn garbage_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            for w in [1usize, 2, 4, 8] {
                let mut out = vec![0u8; 16 * w];
                let _ = decode(DeltaOp::Sub, &payload, w, None, &mut out);
                let _ = decode(DeltaOp::Xor, &payload, w, None, &mut out);
                let _ = decode(DeltaOp::SubCtx, &payload, w, Some(7), &mut out);
            }
        }
    }
}
