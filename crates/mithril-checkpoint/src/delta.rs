//! Delta of one chunk against the same elements of a base tensor.
//!
//! Four transforms of the element bit patterns:
//! - `Xor`: `t ^ b`. Unchanged high bits become zeros.
//! - `Sub`: zigzag(`t - b`) with wrapping integer arithmetic on the bit patterns. A float
//!   that moved by a few ulps (the usual optimiser step) becomes a small integer, where XOR
//!   would smear the carry across the mantissa.
//! - `SubCtx` (floats only): the `Sub` words grouped by the base element's sign and exponent
//!   before coding. An optimiser step moves a weight by a similar *value* everywhere, which
//!   is a number of ulps that depends on the weight's exponent; grouping by it gives each
//!   group a narrow distribution of its own.
//! - `SubQuad` (floats only): the `Sub` words four to a Huffman symbol
//!   ([`crate::delta_quad`]); larger than `SubCtx`, and decodes several times faster.
//! - `SubPack` (32-bit floats only): the `Sub` words bit-packed eight to a block at the
//!   block's width ([`crate::delta_pack`]); larger than `SubQuad`, and decodes faster
//!   than the plain float codec.
//!
//! Integer dtypes take `Xor` or `Sub`, whichever is estimated smaller. Float dtypes take
//! `SubPack` (fp32) or `SubQuad` (16-bit floats) in [`DeltaMode::Fast`], or the smaller of
//! `SubCtx` and `Sub` in [`DeltaMode::Compact`].
//!
//! `Xor` and `Sub` payloads are one stream per little-endian byte plane of the transformed
//! words, each raw, constant, rANS or zstd (the plane coder of the float codec). A `SubCtx`
//! payload holds, per group, a mode byte and either such planes or one joint symbol stream
//! plus the low planes (see docs/format.md).

use crate::delta_pack::{self, PackPlan};
use crate::delta_quad::{self, QuadPlan};
use crate::dtype::DType;
use crate::error::{corrupt, Error, Result};
use crate::float::{
    decode_plane, encode_plane_counts, push_stream, push_symbols, read_symbols, StreamReader,
    StripeHash, HUFFMAN_SLACK,
};
use crate::rans;

/// Which delta transform a chunk uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaOp {
    Xor,
    Sub,
    SubCtx,
    SubQuad,
    SubPack,
}

/// What float deltas are optimised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeltaMode {
    /// `sub-ctx` (or `sub`): the smallest deltas.
    #[default]
    Compact,
    /// `sub-pack` for fp32, `sub-quad` for 16-bit floats: about twice as fast to encode
    /// and decode as `Compact` on a training state, and faster than the plain codec; larger.
    Fast,
}

/// Contexts (sign + exponent values) seen fewer times than this in a chunk share one group,
/// so that no group pays a coding table for a handful of elements.
const MIN_GROUP: u32 = 2048;

/// An unsigned integer read from and written to little-endian bytes.
pub trait LeWord: Copy {
    const BYTES: usize;
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
}

macro_rules! le_word {
    ($($u:ty),*) => {$(
        impl LeWord for $u {
            const BYTES: usize = std::mem::size_of::<$u>();
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
        }
    )*};
}

le_word!(u8, u16, u32, u64, u128);

pub trait Word: LeWord {
    const ZERO: Self;
    fn xor(self, o: Self) -> Self;
    /// zigzag(self - base)
    fn sub_zigzag(self, base: Self) -> Self;
    /// Inverse of `sub_zigzag`: base + unzigzag(self).
    fn add_unzigzag(self, base: Self) -> Self;
    /// Wrapping sum.
    fn plus(self, o: Self) -> Self;
    fn byte(self, i: usize) -> u8;
    /// `self >> shift` as a context id (sign + exponent of a float word).
    fn context(self, shift: u32) -> u16;
    /// `self` with byte `i` set to `b` (which must be zero before).
    fn with_byte(self, i: usize, b: u8) -> Self;
    fn to_u64(self) -> u64;
    /// Truncating conversion.
    fn from_u64(v: u64) -> Self;
}

macro_rules! word {
    ($u:ty, $i:ty) => {
        impl Word for $u {
            const ZERO: Self = 0;
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
            fn plus(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn byte(self, i: usize) -> u8 {
                (self >> (8 * i)) as u8
            }
            #[inline(always)]
            fn to_u64(self) -> u64 {
                self as u64
            }
            #[inline(always)]
            fn from_u64(v: u64) -> Self {
                v as $u
            }
            #[inline(always)]
            fn with_byte(self, i: usize, b: u8) -> Self {
                self | ((b as $u) << (8 * i))
            }
            #[inline(always)]
            fn context(self, shift: u32) -> u16 {
                (self >> (shift & (<$u>::BITS - 1))) as u16
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

/// One 256-bin histogram per byte plane of `words`. Four interleaved sub-histograms keep
/// runs of equal bytes (the common case in a delta) from serialising on one counter.
fn plane_histograms<T: Word>(words: &[T]) -> Vec<[u32; 256]> {
    let mut sub = vec![[[0u32; 256]; 4]; T::BYTES];
    let mut quads = words.chunks_exact(4);
    for q in &mut quads {
        for (p, h) in sub.iter_mut().enumerate() {
            h[0][q[0].byte(p) as usize] += 1;
            h[1][q[1].byte(p) as usize] += 1;
            h[2][q[2].byte(p) as usize] += 1;
            h[3][q[3].byte(p) as usize] += 1;
        }
    }
    for w in quads.remainder() {
        for (p, h) in sub.iter_mut().enumerate() {
            h[0][w.byte(p) as usize] += 1;
        }
    }
    sub.iter()
        .map(|h| std::array::from_fn(|i| h[0][i] + h[1][i] + h[2][i] + h[3][i]))
        .collect()
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
    let counts = rans::histogram_by(ids.iter().map(|&c| c as usize), contexts);
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

fn plane_estimate(counts: &[u32; 256], len: usize) -> usize {
    if counts.iter().filter(|&&c| c > 0).count() <= 1 {
        return 6;
    }
    5 + rans::estimated_size(counts).min(len)
}

/// The coded form a plan emits: whole words (cut into planes at emit time), or planes
/// already grouped.
enum Body<T> {
    Words(Vec<T>),
    /// Differences in grouped order, group starts, and how each group is coded.
    Grouped {
        words: Vec<T>,
        starts: Vec<usize>,
        codes: Vec<GroupCode>,
    },
    /// Quad symbols, escapes and extra bits, ready to code.
    Quads(QuadPlan),
    /// The packed stream, and the widths to code.
    Pack(PackPlan),
}

/// What [`encode`] would do with a chunk, and its estimated payload size.
pub struct DeltaPlan<T> {
    pub op: DeltaOp,
    pub estimate: usize,
    body: Body<T>,
    /// One histogram per emitted plane, in payload order.
    hists: Vec<[u32; 256]>,
}

/// Integer dtypes: XOR or difference, whichever is estimated smaller.
fn plan_words<T: Word>(raw: &[u8], base: &[u8]) -> DeltaPlan<T> {
    let n = raw.len() / T::BYTES;
    let est = |h: &[[u32; 256]]| h.iter().map(|c| plane_estimate(c, n)).sum::<usize>();
    let (xor, sub) = delta_words::<T>(raw, base);
    let (hx, hs) = (plane_histograms(&xor), plane_histograms(&sub));
    let (ex, es) = (est(&hx), est(&hs));
    if es <= ex {
        DeltaPlan {
            op: DeltaOp::Sub,
            estimate: es,
            body: Body::Words(sub),
            hists: hs,
        }
    } else {
        DeltaPlan {
            op: DeltaOp::Xor,
            estimate: ex,
            body: Body::Words(xor),
            hists: hx,
        }
    }
}

/// High parts of grouped differences are coded as one symbol when below this.
const JOINT_CARDINALITY: usize = 4096;
const GROUP_PLANES: u8 = 0;
const GROUP_JOINT: u8 = 1;

/// How one group of a `SubCtx` chunk is coded.
enum GroupCode {
    /// One stream per byte of the difference (as `Sub`).
    Planes,
    /// The low `k` bytes as byte planes, everything above them as one rANS symbol
    /// (`d >> 8k`, below [`JOINT_CARDINALITY`]): one symbol per element instead of several,
    /// and the bytes of a small difference coded jointly.
    Joint { k: usize, counts: Vec<u32> },
}

/// Float dtypes: the grouped difference. An optimiser step is an integer number of ulps
/// that depends on the exponent, which grouping captures and XOR would smear. One pass
/// computes the differences into grouped order and counts their byte planes; then each
/// group picks planes or joint coding by estimated size.
fn plan_grouped<T: Word>(raw: &[u8], base: &[u8], ctx_shift: u32) -> DeltaPlan<T> {
    let n = raw.len() / T::BYTES;
    let (ids, starts) = groups::<T>(base, ctx_shift);
    let groups = starts.len() - 1;
    let mut words = vec![T::ZERO; n];
    let mut next: Vec<usize> = starts[..groups].to_vec();
    let elems = raw.chunks_exact(T::BYTES).zip(base.chunks_exact(T::BYTES));
    for ((t, b), &g) in elems.zip(&ids) {
        let g = g as usize;
        words[next[g]] = T::load(t).sub_zigzag(T::load(b));
        next[g] += 1;
    }
    let mut hists = Vec::with_capacity(groups * T::BYTES);
    for span in starts.windows(2) {
        hists.extend(plane_histograms(&words[span[0]..span[1]]));
    }
    // The ungrouped difference's planes are the sums of the groups' planes: its estimate is
    // free, and it wins where groups are too many or too alike to pay for their tables.
    let mut whole = vec![[0u32; 256]; T::BYTES];
    for (i, h) in hists.iter().enumerate() {
        for (a, b) in whole[i % T::BYTES].iter_mut().zip(h) {
            *a += b;
        }
    }
    let ungrouped: usize = whole.iter().map(|c| plane_estimate(c, n)).sum();
    let mut estimate = 0;
    let mut codes = Vec::with_capacity(groups);
    for g in 0..groups {
        let span = &words[starts[g]..starts[g + 1]];
        let row = &hists[g * T::BYTES..(g + 1) * T::BYTES];
        let planes_size: usize = 1 + row
            .iter()
            .map(|c| plane_estimate(c, span.len()))
            .sum::<usize>();
        let mut best = (planes_size, GroupCode::Planes);
        if let Some((k, counts)) = joint_symbols(span) {
            let high = if counts.iter().filter(|&&c| c > 0).count() <= 1 {
                8
            } else {
                5 + rans::estimated_size(&counts)
            };
            let size = 2
                + high
                + row[..k]
                    .iter()
                    .map(|c| plane_estimate(c, span.len()))
                    .sum::<usize>();
            if size < best.0 {
                best = (size, GroupCode::Joint { k, counts });
            }
        }
        estimate += best.0;
        codes.push(best.1);
    }
    if ungrouped < estimate {
        let sub = raw
            .chunks_exact(T::BYTES)
            .zip(base.chunks_exact(T::BYTES))
            .map(|(t, b)| T::load(t).sub_zigzag(T::load(b)))
            .collect();
        return DeltaPlan {
            op: DeltaOp::Sub,
            estimate: ungrouped,
            body: Body::Words(sub),
            hists: whole,
        };
    }
    DeltaPlan {
        op: DeltaOp::SubCtx,
        estimate,
        body: Body::Grouped {
            words,
            starts,
            codes,
        },
        hists,
    }
}

/// The fewest low bytes `k` that leave every `d >> 8k` below [`JOINT_CARDINALITY`] with at
/// most [`rans::MAX_ALPHABET`] distinct values, and the counts of those values.
fn joint_symbols<T: Word>(span: &[T]) -> Option<(usize, Vec<u32>)> {
    let max = span.iter().fold(0u64, |m, w| m.max(w.to_u64()));
    let mut k = 0;
    while k < T::BYTES && (max >> (8 * k)) >= JOINT_CARDINALITY as u64 {
        k += 1;
    }
    while k < T::BYTES {
        let shift = 8 * k as u32;
        let high = span
            .iter()
            .map(|w| ((w.to_u64() >> shift) as usize).min(JOINT_CARDINALITY - 1));
        let counts = rans::histogram_by(high, JOINT_CARDINALITY);
        if counts.iter().filter(|&&c| c > 0).count() <= rans::MAX_ALPHABET {
            return Some((k, counts));
        }
        k += 1;
    }
    None
}

fn push_plane(out: &mut Vec<u8>, plane: &[u8], counts: &[u32; 256]) {
    let (method, data) = encode_plane_counts(plane, 8, counts, false);
    push_stream(out, method, &data);
}

fn emit<T: Word>(plan: DeltaPlan<T>) -> (DeltaOp, Vec<u8>) {
    let DeltaPlan {
        op,
        estimate,
        body,
        hists,
    } = plan;
    // Taken only for the codings that write into it: `sub-quad` sizes its own.
    let buffer = || crate::buffer_pool::payload_buffer(estimate + 64);
    let out = match body {
        Body::Quads(quads) => return (op, quads.emit()),
        Body::Pack(pack) => return (op, pack.emit()),
        Body::Words(words) => {
            let mut out = buffer();
            let mut plane = vec![0u8; words.len()];
            for (p, counts) in hists.iter().enumerate() {
                for (o, w) in plane.iter_mut().zip(&words) {
                    *o = w.byte(p);
                }
                push_plane(&mut out, &plane, counts);
            }
            out
        }
        Body::Grouped {
            words,
            starts,
            codes,
        } => {
            let mut out = buffer();
            let mut plane = Vec::new();
            for (g, code) in codes.iter().enumerate() {
                let span = &words[starts[g]..starts[g + 1]];
                let low = match code {
                    GroupCode::Planes => {
                        out.push(GROUP_PLANES);
                        T::BYTES
                    }
                    GroupCode::Joint { k, counts } => {
                        out.push(GROUP_JOINT);
                        out.push(*k as u8);
                        let high: Vec<u16> = span
                            .iter()
                            .map(|w| (w.to_u64() >> (8 * k)) as u16)
                            .collect();
                        push_symbols(&mut out, &high, counts, HUFFMAN_SLACK);
                        *k
                    }
                };
                for p in 0..low {
                    plane.clear();
                    plane.extend(span.iter().map(|w| w.byte(p)));
                    push_plane(&mut out, &plane, &hists[g * T::BYTES + p]);
                }
            }
            out
        }
    };
    (op, out)
}

fn plan_any<T: Word>(raw: &[u8], base: &[u8], dtype: DType, mode: DeltaMode) -> DeltaPlan<T> {
    match (context_shift(dtype), mode) {
        (Some(_), DeltaMode::Fast) if T::BYTES == 4 => {
            let pack = delta_pack::plan(raw, base);
            DeltaPlan {
                op: DeltaOp::SubPack,
                estimate: pack.estimate,
                body: Body::Pack(pack),
                hists: Vec::new(),
            }
        }
        (Some(_), DeltaMode::Fast) if T::BYTES <= 4 => {
            let quads = delta_quad::plan::<T>(raw, base);
            DeltaPlan {
                op: DeltaOp::SubQuad,
                estimate: quads.estimate,
                body: Body::Quads(quads),
                hists: Vec::new(),
            }
        }
        (Some(shift), _) => plan_grouped(raw, base, shift),
        (None, _) => plan_words(raw, base),
    }
}

/// The shift that leaves an element's sign and exponent, for float dtypes (which group).
fn context_shift(dtype: DType) -> Option<u32> {
    dtype.float_bits().map(|b| b.mantissa)
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

    /// The raw chunk's checksum as far as planning took it (`sub-quad` and `sub-pack`
    /// plans of 32-bit words); see `QuadPlan::take_raw_hash`.
    pub(crate) fn take_raw_hash(&mut self) -> Option<StripeHash> {
        match self {
            Planned::W4(DeltaPlan {
                body: Body::Quads(quads),
                ..
            }) => quads.take_raw_hash(),
            Planned::W4(DeltaPlan {
                body: Body::Pack(pack),
                ..
            }) => pack.take_raw_hash(),
            _ => None,
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

/// Choose the transform for `raw` against `base` (same length, whole elements of `dtype`)
/// from histograms alone; `mode` decides between the float transforms.
pub fn plan(raw: &[u8], base: &[u8], dtype: DType, mode: DeltaMode) -> Planned {
    debug_assert_eq!(raw.len(), base.len());
    match dtype.size() {
        1 => Planned::W1(plan_any(raw, base, dtype, mode)),
        2 => Planned::W2(plan_any(raw, base, dtype, mode)),
        4 => Planned::W4(plan_any(raw, base, dtype, mode)),
        _ => Planned::W8(plan_any(raw, base, dtype, mode)),
    }
}

/// Estimated size of an ungrouped `Sub` delta of `raw` against `base` (elements of `width`
/// bytes), from the order-0 entropy of its byte planes: no coding, no grouping. Run on a
/// sample before [`plan`], it tells the deltas that cannot win (optimiser moments, whose
/// base is a different moment rather than an earlier copy of the same values) from the
/// ones that do. It overstates what the grouped codings achieve, never the reverse.
pub fn sub_estimate(raw: &[u8], base: &[u8], width: usize) -> usize {
    fn planes<T: Word>(raw: &[u8], base: &[u8]) -> usize {
        let words: Vec<T> = raw
            .chunks_exact(T::BYTES)
            .zip(base.chunks_exact(T::BYTES))
            .map(|(t, b)| T::load(t).sub_zigzag(T::load(b)))
            .collect();
        plane_histograms(&words)
            .iter()
            .map(|h| (rans::entropy_bits(h) / 8.0).ceil() as usize)
            .sum()
    }
    match width {
        1 => planes::<u8>(raw, base),
        2 => planes::<u16>(raw, base),
        4 => planes::<u32>(raw, base),
        _ => planes::<u64>(raw, base),
    }
}

/// Encode `raw` against `base`: [`plan`], then code it.
pub fn encode(raw: &[u8], base: &[u8], dtype: DType, mode: DeltaMode) -> (DeltaOp, Vec<u8>) {
    plan(raw, base, dtype, mode).emit()
}

/// Decode into `inout`: against what it holds, or against `base` (as long as `inout`).
/// `sub-quad` reads `base` where it adds the differences; the other operations copy it into
/// `inout` first. Returns the xxh3-64 of the decoded elements where the decoder took it on
/// the way (`sub-quad` on AVX-512 CPUs).
fn decode_words<T: Word>(
    op: DeltaOp,
    payload: &[u8],
    dtype: DType,
    base: Option<&[u8]>,
    inout: &mut [u8],
) -> Result<Option<u64>> {
    let n = inout.len() / T::BYTES;
    if op == DeltaOp::SubQuad {
        if context_shift(dtype).is_none() {
            return Err(corrupt("sub-quad delta on a non-float dtype"));
        }
        return delta_quad::decode_from::<T>(payload, base, inout);
    }
    if op == DeltaOp::SubPack {
        if context_shift(dtype).is_none() || T::BYTES != 4 {
            return Err(corrupt(format!("sub-pack delta on {dtype} data")));
        }
        return delta_pack::decode(payload, base, inout);
    }
    if let Some(base) = base {
        inout.copy_from_slice(base);
    }
    let mut rd = StreamReader::new(payload);
    if op == DeltaOp::SubCtx {
        let shift =
            context_shift(dtype).ok_or_else(|| corrupt("grouped delta on a non-float dtype"))?;
        let (ids, starts) = groups::<T>(inout, shift);
        let mut words = vec![T::ZERO; n];
        let mut plane = Vec::new();
        for w in starts.windows(2) {
            let span = &mut words[w[0]..w[1]];
            let low = match rd.byte()? {
                GROUP_PLANES => T::BYTES,
                GROUP_JOINT => {
                    let k = rd.byte()? as usize;
                    if k >= T::BYTES {
                        return Err(corrupt(format!("joint group with {k} low bytes")));
                    }
                    let mut high = vec![0u16; span.len()];
                    read_symbols(rd.stream()?, &mut high, JOINT_CARDINALITY, "joint symbol")?;
                    for (o, &h) in span.iter_mut().zip(&high) {
                        *o = T::from_u64((h as u64) << (8 * k));
                    }
                    k
                }
                m => return Err(corrupt(format!("unknown group coding {m}"))),
            };
            plane.resize(span.len(), 0);
            for p in 0..low {
                let (method, data) = rd.stream()?;
                decode_plane(method, data, &mut plane, 8)?;
                for (o, &b) in span.iter_mut().zip(&plane) {
                    *o = o.with_byte(p, b);
                }
            }
        }
        rd.finish()?;
        let mut next: Vec<usize> = starts[..starts.len() - 1].to_vec();
        for (o, &g) in inout.chunks_exact_mut(T::BYTES).zip(&ids) {
            let at = next[g as usize];
            next[g as usize] += 1;
            words[at].add_unzigzag(T::load(o)).store(o);
        }
        return Ok(None);
    }
    // Plane by plane into whole words: each merge is one pass the compiler vectorises.
    let mut words = vec![T::ZERO; n];
    let mut plane = vec![0u8; n];
    for p in 0..T::BYTES {
        let (method, data) = rd.stream()?;
        decode_plane(method, data, &mut plane, 8)?;
        for (w, &b) in words.iter_mut().zip(&plane) {
            *w = w.with_byte(p, b);
        }
    }
    rd.finish()?;
    let elems = inout.chunks_exact_mut(T::BYTES).zip(&words);
    if op == DeltaOp::Xor {
        for (o, &w) in elems {
            T::load(o).xor(w).store(o);
        }
    } else {
        for (o, &w) in elems {
            w.add_unzigzag(T::load(o)).store(o);
        }
    }
    Ok(None)
}

/// [`decode`] with the base held apart: `out` (as long as `base`) gets the decoded
/// elements. `sub-quad` chunks read the base as they apply the differences; the other
/// operations copy it into `out` first.
pub fn decode_onto(
    op: DeltaOp,
    payload: &[u8],
    dtype: DType,
    base: &[u8],
    out: &mut [u8],
) -> Result<()> {
    decode_hashed(op, payload, dtype, Some(base), out).map(|_| ())
}

/// Apply a delta payload: `inout` holds the base elements (of `dtype`) on entry and the
/// decoded elements on return.
pub fn decode(op: DeltaOp, payload: &[u8], dtype: DType, inout: &mut [u8]) -> Result<()> {
    decode_hashed(op, payload, dtype, None, inout).map(|_| ())
}

/// [`decode_onto`] with `base`, else [`decode`]; returns the xxh3-64 of the decoded
/// elements where the decoder took it on the way.
pub(crate) fn decode_hashed(
    op: DeltaOp,
    payload: &[u8],
    dtype: DType,
    base: Option<&[u8]>,
    inout: &mut [u8],
) -> Result<Option<u64>> {
    if let Some(base) = base.filter(|b| b.len() != inout.len()) {
        return Err(Error::Invalid(format!(
            "a {}-byte base for a {}-byte delta chunk",
            base.len(),
            inout.len()
        )));
    }
    if !inout.len().is_multiple_of(dtype.size()) {
        return Err(corrupt("delta chunk is not whole elements"));
    }
    match dtype.size() {
        1 => decode_words::<u8>(op, payload, dtype, base, inout),
        2 => decode_words::<u16>(op, payload, dtype, base, inout),
        4 => decode_words::<u32>(op, payload, dtype, base, inout),
        8 => decode_words::<u64>(op, payload, dtype, base, inout),
        w => Err(corrupt(format!("delta on {w}-byte elements"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip_as(raw: &[u8], base: &[u8], dtype: DType, mode: DeltaMode) -> (DeltaOp, usize) {
        let (op, enc) = encode(raw, base, dtype, mode);
        let mut out = base.to_vec();
        decode(op, &enc, dtype, &mut out).unwrap();
        assert_eq!(out, raw);
        let mut out = vec![0xa5; base.len()];
        decode_onto(op, &enc, dtype, base, &mut out).unwrap();
        assert_eq!(out, raw, "{op:?} onto a base held apart");
        (op, enc.len())
    }

    #[test]
    fn a_base_of_another_length_is_refused() {
        let base: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        let raw: Vec<u8> = base.iter().map(|b| b ^ 1).collect();
        let (op, enc) = encode(&raw, &base, DType::BF16, DeltaMode::Fast);
        let mut out = vec![0u8; raw.len()];
        let err = decode_onto(op, &enc, DType::BF16, &base[..198], &mut out).unwrap_err();
        assert!(
            err.to_string().contains("198-byte base for a 200-byte"),
            "{err}"
        );
    }

    fn roundtrip(raw: &[u8], base: &[u8], dtype: DType) -> (DeltaOp, usize) {
        roundtrip_as(raw, base, dtype, DeltaMode::Compact)
    }

    /// The unsigned dtype of a width: never grouped.
    fn uint(w: usize) -> DType {
        match w {
            1 => DType::U8,
            2 => DType::U16,
            4 => DType::U32,
            _ => DType::U64,
        }
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
        let (op, len) = roundtrip(&t, &b, DType::U32);
        assert_eq!(op, DeltaOp::Sub);
        assert!(len < t.len() / 8, "{len}");
    }

    #[test]
    fn identical_chunk_is_tiny() {
        let b: Vec<u8> = (0..8192u32)
            .flat_map(|i| (i * 7919).to_le_bytes())
            .collect();
        let (_, len) = roundtrip(&b, &b, DType::U32);
        assert!(len < 64, "{len}");
    }

    #[test]
    fn extremes_wrap_exactly() {
        for w in [1usize, 2, 4, 8] {
            let raw: Vec<u8> = (0..64).map(|i| if i % 2 == 0 { 0xff } else { 0 }).collect();
            let base: Vec<u8> = (0..64).map(|i| if i % 3 == 0 { 0 } else { 0xff }).collect();
            roundtrip(&raw, &base, uint(w));
        }
    }

    /// Random fp32 weights and the same weights after an Adam-like step: every one moved
    /// by the same value, so the step in ulps depends on the exponent of each weight.
    fn same_value_step() -> (Vec<f32>, Vec<f32>) {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let base: Vec<f32> = (0..1 << 16)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect();
        let next = base
            .iter()
            .enumerate()
            .map(|(i, v)| v - if (i * 7) % 3 == 0 { 1e-4 } else { -1e-4 })
            .collect();
        (base, next)
    }

    fn le_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Grouping by exponent must win on the same-value step and round-trip.
    #[test]
    fn same_value_step_groups_by_exponent() {
        let (base, next) = same_value_step();
        let (b, t) = (le_bytes(&base), le_bytes(&next));
        let (_, plain) = roundtrip(&t, &b, DType::U32);
        let (op, grouped) = roundtrip(&t, &b, DType::F32);
        assert_eq!(op, DeltaOp::SubCtx);
        assert!(grouped < plain * 3 / 4, "{grouped} vs {plain}");
    }

    /// The same step in fast mode: packed blocks in fp32 and quads in bf16, larger than
    /// grouped, far smaller than the data; integer dtypes ignore the mode.
    #[test]
    fn fast_mode_codes_float_steps_as_packs_and_quads() {
        let (base, next) = same_value_step();
        let (b, t) = (le_bytes(&base), le_bytes(&next));
        let (op, fast) = roundtrip_as(&t, &b, DType::F32, DeltaMode::Fast);
        assert_eq!(op, DeltaOp::SubPack);
        // A block takes the width of its largest move, which here is the move of its
        // value nearest zero: packed blocks pay for that, and are still smaller.
        let bits = DType::F32.float_bits().unwrap();
        let plain = crate::float::encode(&t, bits, 4).len();
        assert!(fast < plain * 3 / 4, "{fast} against {plain}");
        let (op, _) = roundtrip_as(&t, &b, DType::U32, DeltaMode::Fast);
        assert!(matches!(op, DeltaOp::Xor | DeltaOp::Sub), "{op:?}");
        let half = |v: &[f32]| -> Vec<u8> {
            v.iter()
                .flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes())
                .collect()
        };
        let (op, fast) = roundtrip_as(&half(&next), &half(&base), DType::BF16, DeltaMode::Fast);
        assert_eq!(op, DeltaOp::SubQuad);
        assert!(fast < base.len() * 2 / 4, "{fast}");
    }

    proptest! {
        #[test]
        fn any_pair_roundtrips_fast(
            data in proptest::collection::vec(any::<(u16, u8)>(), 0..3000),
            wide in any::<bool>(),
        ) {
            // Mostly small moves (plain quads), some of any size (escapes), any length.
            let mut base = Vec::new();
            let mut raw = Vec::new();
            for &(b, m) in &data {
                let step = if m < 200 { (m % 5) as u32 } else { (m as u32) << (m % 24) };
                if wide {
                    let b = (b as u32) << 12 | m as u32;
                    base.extend_from_slice(&b.to_le_bytes());
                    raw.extend_from_slice(&b.wrapping_sub(step).to_le_bytes());
                } else {
                    base.extend_from_slice(&b.to_le_bytes());
                    raw.extend_from_slice(&b.wrapping_add(step as u16).to_le_bytes());
                }
            }
            let dtype = if wide { DType::F32 } else { DType::BF16 };
            roundtrip_as(&raw, &base, dtype, DeltaMode::Fast);
        }

        #[test]
        fn any_pair_roundtrips_grouped(
            data in proptest::collection::vec(any::<(u16, u16)>(), 0..6000),
            spread in 0u16..4,
        ) {
            // Few distinct exponents so that real groups form, plus arbitrary words.
            let base: Vec<u8> = data.iter().flat_map(|p| (p.1 % (1 << (8 + spread))).to_le_bytes()).collect();
            let raw: Vec<u8> = data.iter().flat_map(|p| p.0.to_le_bytes()).collect();
            roundtrip(&raw, &base, DType::BF16);
        }

        #[test]
        fn any_pair_roundtrips(
            data in proptest::collection::vec(any::<(u8, u8)>(), 0..2000),
            w in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        ) {
            let n = data.len() / w * w;
            let raw: Vec<u8> = data[..n].iter().map(|p| p.0).collect();
            let base: Vec<u8> = data[..n].iter().map(|p| p.1).collect();
            roundtrip(&raw, &base, uint(w));
        }

        #[test]
        fn garbage_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            for dtype in DType::ALL {
                let mut out = vec![0u8; 16 * dtype.size()];
                for op in [DeltaOp::Xor, DeltaOp::Sub, DeltaOp::SubCtx, DeltaOp::SubQuad, DeltaOp::SubPack] {
                    let _ = decode(op, &payload, dtype, &mut out);
                }
            }
        }
    }
}
