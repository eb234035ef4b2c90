//! Float codec for one chunk: split each element into a *head* (exponent plus the top `k`
//! mantissa bits) and a *remainder* (sign plus the other mantissa bits).
//!
//! The head carries almost all the redundancy of trained weights (exponent entropy is
//! ~2.6 of 8 bits, and the top mantissa bits are skewed given the exponent), so it is
//! entropy-coded as one symbol per element: Huffman when that is within a small slack of
//! rANS, rANS otherwise. The remainder is near-random: stored as packed bits, or, when it
//! is whole bytes, as byte planes that each pick raw, Huffman, rANS or zstd, whichever is
//! smallest on that chunk (fp32 optimiser moments and embedding tables reward zstd).
//!
//! Payload layout: `u8 k`, then the head stream, then the remainder streams, each stream
//! being `u8 method | u32 length | bytes`.

use crate::dtype::FloatBits;
use crate::error::{corrupt, Result};
use crate::huffman;
use crate::rans;
use crate::rans::Symbol;
use crate::scratch;
use std::borrow::Cow;
use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
pub(crate) use crate::xxh3_avx512::StripeHash;

/// Where no kernel hashes the words it joins, there is no such hash.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) enum StripeHash {}

#[cfg(not(target_arch = "x86_64"))]
impl StripeHash {
    pub(crate) fn new(_len: usize) -> Option<StripeHash> {
        None
    }

    pub(crate) fn finish(self, _data: &[u8]) -> Option<u64> {
        match self {}
    }
}

pub(crate) const METHOD_RAW: u8 = 0;
pub(crate) const METHOD_CONST: u8 = 1;
pub(crate) const METHOD_RANS: u8 = 2;
pub(crate) const METHOD_ZSTD: u8 = 3;
pub(crate) const METHOD_HUFFMAN: u8 = 4;

/// How much larger than the rANS estimate a Huffman stream may be and still be chosen:
/// Huffman encodes and decodes several times faster. On the 9-bit heads of bf16 and fp32
/// (exponent and one mantissa bit) it costs under 1 % of the stream. fp32 once had half
/// this slack, when its heads were mostly 10 bits wide; with 9-bit heads that slack sent
/// them to rANS, which decodes a fifth slower.
pub(crate) const HUFFMAN_SLACK: f64 = 0.02;

/// How much smaller (a fraction of the chunk) a chunk must be with a 10-bit head (bf16 or
/// fp32 with `k = 2`) than with the best narrower one to take it. A 9-bit head (`k = 1`)
/// codes in about 3.6 bits, so one 11-bit decoding lookup usually yields three heads; a
/// 10-bit head codes in about 4.6 bits and yields two. On trained weights the wider head
/// saves about 0.07 % of the chunk, and the narrower one decodes 11-15 % faster (see
/// docs/benchmarks.md). Narrower heads still compete on size alone: an 8-bit head leaves
/// whole remainder bytes, whose path is not faster.
const TEN_BIT_HEAD_SLACK: f64 = 0.002;

/// Order-0 entropy (bits per byte) below which a plane is worth trying with zstd.
const ZSTD_TRY_BELOW_BITS: f64 = 7.98;
const PLANE_ZSTD_LEVEL: i32 = 1;

/// Mantissa bits that may join the exponent in the head, per float layout.
fn head_mantissa_choices(bits: FloatBits) -> &'static [u32] {
    match (bits.exponent, bits.mantissa) {
        (8, 7) | (8, 23) => &[0, 1, 2],
        (5, 10) => &[3],
        _ => &[0],
    }
}

/// Geometry of the split for one `k`.
#[derive(Clone, Copy)]
struct Split {
    k: u32,
    /// Bits of mantissa left in the remainder.
    low: u32,
    /// Remainder width: sign + low mantissa bits.
    rem_bits: u32,
    head_bits: u32,
    sign_shift: u32,
}

impl Split {
    fn new(bits: FloatBits, k: u32) -> Split {
        let low = bits.mantissa - k;
        Split {
            k,
            low,
            rem_bits: low + 1,
            head_bits: bits.exponent + k,
            sign_shift: bits.exponent + bits.mantissa,
        }
    }

    #[inline(always)]
    fn head(&self, w: u32) -> u16 {
        ((w >> self.low) & ((1 << self.head_bits) - 1)) as u16
    }

    #[inline(always)]
    fn rem(&self, w: u32) -> u32 {
        ((w >> self.sign_shift) << self.low) | (w & ((1 << self.low) - 1))
    }

    #[inline(always)]
    fn join(&self, head: u16, rem: u32) -> u32 {
        ((rem >> self.low) << self.sign_shift)
            | ((head as u32) << self.low)
            | (rem & ((1 << self.low) - 1))
    }

    /// Remainder planes, most significant first: the first holds what is left over the
    /// whole low bytes (bit-packed when under 8 bits), the others one byte each.
    fn planes(&self) -> usize {
        self.rem_bits.div_ceil(8) as usize
    }

    /// Bits per value of remainder plane `p`.
    fn plane_width(&self, p: usize) -> u32 {
        if p == 0 {
            self.rem_bits - 8 * (self.planes() as u32 - 1)
        } else {
            8
        }
    }
}

#[inline(always)]
fn load<const W: usize>(b: &[u8]) -> u32 {
    if W == 2 {
        u16::from_le_bytes([b[0], b[1]]) as u32
    } else {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

#[inline(always)]
fn store<const W: usize>(b: &mut [u8], w: u32) {
    if W == 2 {
        b.copy_from_slice(&(w as u16).to_le_bytes());
    } else {
        b.copy_from_slice(&w.to_le_bytes());
    }
}

/// Bins of [`head_histogram`]'s fixed tables: heads of up to 10 bits (bf16, fp16 and fp32
/// with their widest heads).
const HEAD_BINS: usize = 1 << 10;

/// How far ahead of its step [`head_histogram`] prefetches the chunk, in bytes.
const HISTOGRAM_PREFETCH: usize = 1024;

/// Chunks at least this long count their heads from a sample where the CPU can test the
/// rest against it (see [`head_histogram`]).
const SAMPLED_HISTOGRAM_FROM: usize = 64 << 10;

/// Histogram of the heads of `raw` under `split`: every head present has a count, and
/// the counts are exact or, for long chunks, estimated from half of them.
///
/// A long chunk is counted exactly in the first 64 bytes of every 128 (and its tail), its
/// other half only tested against the heads that sample holds
/// (`head_sample_avx512::count_missing`): a head the sample lacks is counted exactly, one
/// it holds is accounted for by scaling the sample's counts up to the whole chunk. The
/// entropy coders need every present head and good proportions, not exact counts. On the
/// MiniLM weights the sizes do not change in the second decimal, and the pass costs about
/// half as much.
fn head_histogram<const W: usize>(raw: &[u8], split: Split) -> Vec<u32> {
    let cardinality = 1usize << split.head_bits;
    if cardinality > HEAD_BINS {
        let heads = raw
            .chunks_exact(W)
            .map(|w| split.head(load::<W>(w)) as usize);
        return rans::histogram_by(heads, cardinality);
    }
    #[cfg(target_arch = "x86_64")]
    if raw.len() >= SAMPLED_HISTOGRAM_FROM && crate::head_sample_avx512::available() {
        let mask = (cardinality - 1) as u32;
        let count = |b: &[u8], tables: &mut _| count_heads::<W>(b, split, tables);
        // SAFETY: the CPU supports AVX-512 F and BW (checked above).
        return unsafe { sampled_histogram::<W>(raw, cardinality, split.low, mask, count) };
    }
    let mut tables = [[0u32; HEAD_BINS]; 4];
    count_heads::<W>(raw, split, &mut tables);
    summed(&tables, cardinality)
}

/// Histogram of `symbols` (each below `cardinality`): every symbol present has a count,
/// and long streams are counted from half, as [`head_histogram`] counts heads. The
/// `sub-quad` planner's quad and escape symbols take it: their exact count was a tenth of
/// the planning of an fp32 delta, and the Huffman codes need proportions, not exact counts.
pub(crate) fn symbol_histogram(symbols: &[u16], cardinality: usize) -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    if cardinality <= HEAD_BINS
        && 2 * symbols.len() >= SAMPLED_HISTOGRAM_FROM
        && crate::head_sample_avx512::available()
    {
        // SAFETY: a `u16` slice is readable as its bytes (no padding, byte alignment).
        let bytes =
            unsafe { std::slice::from_raw_parts(symbols.as_ptr().cast::<u8>(), 2 * symbols.len()) };
        let mask = (HEAD_BINS - 1) as u32;
        // SAFETY: the CPU supports AVX-512 F and BW (checked above).
        return unsafe { sampled_histogram::<2>(bytes, cardinality, 0, mask, count_symbols) };
    }
    rans::histogram_by(symbols.iter().map(|&s| s as usize), cardinality)
}

/// The sampled histogram of [`head_histogram`] and [`symbol_histogram`]: the values
/// (`(word >> low) & mask` of `raw`'s `W`-byte words, each below `cardinality`) of the
/// first 64 bytes of every 128 and of the tail counted exactly by `count` into four
/// tables; the other half tested against that sample's bitmap, a value it lacks counted
/// one by one, one it holds accounted for by scaling the sample's counts up to the whole.
///
/// # Safety
/// The CPU must support what `head_sample_avx512::available` checks.
#[cfg(target_arch = "x86_64")]
unsafe fn sampled_histogram<const W: usize>(
    raw: &[u8],
    cardinality: usize,
    low: u32,
    mask: u32,
    count: impl Fn(&[u8], &mut [[u32; HEAD_BINS]; 4]),
) -> Vec<u32> {
    use crate::head_sample_avx512::{count_missing, BLOCK};
    let mut tables = [[0u32; HEAD_BINS]; 4];
    let pairs = raw.chunks_exact(2 * BLOCK);
    let tail = pairs.remainder();
    for pair in pairs {
        count(&pair[..BLOCK], &mut tables);
    }
    count(tail, &mut tables);
    let sample = summed(&tables, cardinality);
    let mut present = [0u64; HEAD_BINS / 64];
    for (i, _) in sample.iter().enumerate().filter(|(_, &c)| c > 0) {
        present[i / 64] |= 1 << (i % 64);
    }
    let mut missing = [0u32; HEAD_BINS];
    // SAFETY: the caller's.
    let found = unsafe { count_missing::<W>(raw, low, mask, &present, &mut missing) };
    let tested = raw.len() / (2 * BLOCK) * (BLOCK / W);
    let (sampled, held) = ((raw.len() / W - tested) as u64, (tested - found) as u64);
    sample
        .iter()
        .zip(&missing)
        .map(|(&s, &m)| {
            let s = s as u64;
            (s + (s * held + sampled / 2) / sampled) as u32 + m
        })
        .collect()
}

/// Count the little-endian 16-bit symbols in `bytes` (below [`HEAD_BINS`]) into four
/// tables in turn.
#[cfg(target_arch = "x86_64")]
fn count_symbols(bytes: &[u8], tables: &mut [[u32; HEAD_BINS]; 4]) {
    let mut fours = bytes.chunks_exact(8);
    for four in &mut fours {
        for (table, s) in tables.iter_mut().zip(four.chunks_exact(2)) {
            table[u16::from_le_bytes([s[0], s[1]]) as usize & (HEAD_BINS - 1)] += 1;
        }
    }
    for s in fours.remainder().chunks_exact(2) {
        tables[0][u16::from_le_bytes([s[0], s[1]]) as usize & (HEAD_BINS - 1)] += 1;
    }
}

/// Ask for the cache line holding `at` into L1: a hint, which reads nothing and does not
/// fault on any address; nothing where the CPU has no such instruction.
#[inline(always)]
pub(crate) fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it does not fault on any address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// The first `bins` counts of the four tables of [`count_heads`], added up.
fn summed(tables: &[[u32; HEAD_BINS]; 4], bins: usize) -> Vec<u32> {
    (0..bins)
        .map(|i| tables.iter().map(|t| t[i]).sum())
        .collect()
}

/// Count the heads of `raw` (whole words) into `tables`, heads masked to [`HEAD_BINS`].
///
/// Sixteen bytes per step, read as two 64-bit words whose elements are shifted out in
/// registers, each element counted in one of four tables in turn so that runs of equal
/// heads do not wait on one counter's store; the tables are fixed-size and the heads masked
/// to them, so no count is bounds-checked. The pass is bound by the operations per element
/// (the number of tables barely matters), which is why the elements are not loaded one by
/// one.
#[inline(always)]
fn count_heads<const W: usize>(raw: &[u8], split: Split, tables: &mut [[u32; HEAD_BINS]; 4]) {
    let cardinality = 1usize << split.head_bits;
    let mask = (cardinality - 1) as u64 & (HEAD_BINS as u64 - 1);
    let low = split.low;
    let word = |b: &[u8]| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let mut steps = raw.chunks_exact(16);
    for q in &mut steps {
        prefetch(q.as_ptr().wrapping_add(HISTOGRAM_PREFETCH));
        let (x, y) = (word(&q[..8]) >> low, word(&q[8..]) >> low);
        if W == 2 {
            for v in [x, y] {
                tables[0][(v & mask) as usize] += 1;
                tables[1][(v >> 16 & mask) as usize] += 1;
                tables[2][(v >> 32 & mask) as usize] += 1;
                tables[3][(v >> 48 & mask) as usize] += 1;
            }
        } else {
            tables[0][(x & mask) as usize] += 1;
            tables[1][(x >> 32 & mask) as usize] += 1;
            tables[2][(y & mask) as usize] += 1;
            tables[3][(y >> 32 & mask) as usize] += 1;
        }
    }
    let head = |w: &[u8]| split.head(load::<W>(w)) as usize & (HEAD_BINS - 1);
    for w in steps.remainder().chunks_exact(W) {
        tables[0][head(w)] += 1;
    }
}

pub(crate) fn push_stream(out: &mut Vec<u8>, method: u8, data: &[u8]) {
    out.push(method);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// One stream of 16-bit symbols with histogram `counts`: Huffman or rANS (see
/// [`coded_symbols`]), or the one value when only one is present. Used for float heads and
/// for the joint symbols of grouped deltas. The coder writes straight into `out`.
pub(crate) fn push_symbols(out: &mut Vec<u8>, syms: &[u16], counts: &[u32], slack: f64) {
    push_coded(out, syms, |out| {
        append_coded_symbols(out, syms, counts, slack)
    });
}

/// [`push_symbols`] always in Huffman, with the code already built (`None`: fewer than two
/// symbols present), for a caller that built it to estimate the stream's size.
pub(crate) fn push_huffman(out: &mut Vec<u8>, syms: &[u16], code: Option<&huffman::Code>) {
    push_coded(out, syms, |out| {
        huffman::encode_into(syms, code?, out);
        Some(METHOD_HUFFMAN)
    });
}

/// One stream of `syms` as `code` appends it (returning the method), or the one value when
/// `code` declines.
fn push_coded(out: &mut Vec<u8>, syms: &[u16], code: impl FnOnce(&mut Vec<u8>) -> Option<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 5]);
    match code(out) {
        Some(method) => {
            let len = (out.len() - start - 5) as u32;
            out[start] = method;
            out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
        }
        None => {
            out.truncate(start);
            let value = syms.first().copied().unwrap_or(0);
            push_stream(out, METHOD_CONST, &value.to_le_bytes());
        }
    }
}

/// Entropy-code `syms` (histogram `counts`): Huffman when it is within `slack` (a
/// fraction, e.g. [`HUFFMAN_SLACK`]) of rANS's estimated size, rANS otherwise. `None` when fewer than two symbols are present
/// or the alphabet is too large for either coder.
pub(crate) fn coded_symbols<T: Symbol>(
    syms: &[T],
    counts: &[u32],
    slack: f64,
) -> Option<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let method = append_coded_symbols(&mut out, syms, counts, slack)?;
    Some((method, out))
}

/// [`coded_symbols`], appended to `out`; returns the method, or `None` with `out` untouched.
fn append_coded_symbols<T: Symbol>(
    out: &mut Vec<u8>,
    syms: &[T],
    counts: &[u32],
    slack: f64,
) -> Option<u8> {
    let code = huffman::Code::from_counts(counts)?;
    let rans_size = rans::estimated_size(counts) as f64;
    if code.encoded_size(counts, syms.len()) as f64 <= rans_size * (1.0 + slack) {
        huffman::encode_into(syms, &code, out);
        return Some(METHOD_HUFFMAN);
    }
    let table = rans::FreqTable::from_counts(counts)?;
    rans::encode_into(syms, &table, out);
    Some(METHOD_RANS)
}

/// Inverse of [`push_symbols`] for a stream read off a payload: every symbol below
/// `cardinality`; `what` names the stream in errors.
pub(crate) fn read_symbols(
    stream: (u8, &[u8]),
    out: &mut [u16],
    cardinality: usize,
    what: &str,
) -> Result<()> {
    read_mapped_symbols(stream, out, cardinality, None, what)
}

/// [`read_symbols`], each symbol `s` written as `map[s]` where a map is given (one entry
/// per symbol below `cardinality`): a Huffman stream maps in its decoding table.
pub(crate) fn read_mapped_symbols(
    (method, data): (u8, &[u8]),
    out: &mut [u16],
    cardinality: usize,
    map: Option<&[u16]>,
    what: &str,
) -> Result<()> {
    if map.is_some_and(|m| m.len() < cardinality) {
        return Err(corrupt(format!(
            "{what} symbol map shorter than {cardinality}"
        )));
    }
    let mapped = |s: u16| map.map_or(s, |m| m[s as usize]);
    match (method, map) {
        (METHOD_HUFFMAN, Some(map)) => huffman::decode_mapped(data, out, cardinality, map)?,
        (METHOD_HUFFMAN, None) => huffman::decode(data, out, cardinality)?,
        (METHOD_RANS, _) => {
            rans::decode(data, out, cardinality)?;
            if map.is_some() {
                out.iter_mut().for_each(|s| *s = mapped(*s));
            }
        }
        (METHOD_CONST, _) => {
            let [a, b] = data else {
                return Err(corrupt(format!("constant {what} is not two bytes")));
            };
            let v = u16::from_le_bytes([*a, *b]);
            if v as usize >= cardinality {
                return Err(corrupt(format!("constant {what} out of range")));
            }
            out.fill(mapped(v));
        }
        (m, _) => return Err(corrupt(format!("unknown {what} method {m}"))),
    }
    Ok(())
}

/// Encode `raw` (whole elements of a float type with layout `bits`, `W` bytes each).
pub fn encode(raw: &[u8], bits: FloatBits, word_bytes: usize) -> Vec<u8> {
    encode_hashed(raw, bits, word_bytes).0
}

/// [`encode`], and the xxh3-64 of `raw` where it can be had without a pass of its own: on
/// AVX-512 CPUs the split hashes the words as it reads them.
pub(crate) fn encode_hashed(
    raw: &[u8],
    bits: FloatBits,
    word_bytes: usize,
) -> (Vec<u8>, Option<u64>) {
    let mut hash = StripeHash::new(raw.len());
    let payload = if word_bytes == 2 {
        encode_words::<2>(raw, bits, hash.as_mut())
    } else {
        encode_words::<4>(raw, bits, hash.as_mut())
    };
    (payload, hash.and_then(|h| h.finish(raw)))
}

fn encode_words<const W: usize>(
    raw: &[u8],
    bits: FloatBits,
    hash: Option<&mut StripeHash>,
) -> Vec<u8> {
    let n = raw.len() / W;
    let choices = head_mantissa_choices(bits);
    let kmax = choices.iter().copied().max().unwrap_or(0);
    let widest = Split::new(bits, kmax);
    let hist = head_histogram::<W>(raw, widest);
    // Pick k by estimated size: coarser heads are the finest histogram with bins merged.
    let mut best: Option<(usize, Split, Vec<u32>)> = None;
    for &k in choices {
        let split = Split::new(bits, k);
        let merge = 1usize << (kmax - k);
        let counts: Vec<u32> = hist.chunks(merge).map(|c| c.iter().sum()).collect();
        let present = counts.iter().filter(|&&c| c > 0).count();
        if present > rans::MAX_ALPHABET {
            continue;
        }
        let size = rans::estimated_size(&counts) + (n * split.rem_bits as usize).div_ceil(8);
        // Choices come narrowest head first.
        let head_slack = if split.head_bits >= 10 {
            TEN_BIT_HEAD_SLACK
        } else {
            0.0
        };
        let wins = |b: &(usize, Split, Vec<u32>)| (size as f64) < b.0 as f64 * (1.0 - head_slack);
        if best.as_ref().is_none_or(wins) {
            best = Some((size, split, counts));
        }
    }
    let Some((_, split, counts)) = best else {
        return Vec::new();
    };

    let planes = split.planes();
    // A bit-packed bf16 remainder that a sample shows to be random is split and packed in
    // one pass with the heads. A sample that is not random is not taken again below.
    let mut sampled_not_random = false;
    if W == 2 && matches!(split.rem_bits, 6 | 7) && n >= SAMPLE_FROM_LEN {
        let stride = sample_stride(n);
        let sampled = rans::histogram_by(
            raw.chunks_exact(W)
                .step_by(stride)
                .map(|w| split.rem(load::<W>(w)) as usize),
            1 << split.rem_bits,
        );
        if !looks_random(&sampled, n.div_ceil(stride), split.rem_bits) {
            sampled_not_random = true;
        } else if matches!(split.rem_bits, 6 | 7) {
            return with_scratch(n, packed_room(n), |heads, packed| {
                let packed = split_packed(raw, split, heads, packed, hash);
                let plane = (METHOD_RAW, Cow::Borrowed(packed));
                payload(split, heads, &counts, [plane], raw.len())
            });
        }
    }
    with_scratch(n, planes * n, |heads, bytes| {
        let mut rem: Vec<&mut [u8]> = Vec::with_capacity(planes);
        let mut rest = bytes;
        for _ in 0..planes {
            let (plane, tail) = rest.split_at_mut(n);
            rem.push(plane);
            rest = tail;
        }
        split_planes::<W>(raw, split, heads, &mut rem, hash);
        let planes = rem.iter().enumerate().map(|(p, plane)| {
            let width = split.plane_width(p);
            if sampled_not_random {
                encode_plane_counts(plane, width, &rans::histogram(plane, 256), true)
            } else {
                encode_plane(plane, width)
            }
        });
        payload(split, heads, &counts, planes, raw.len())
    })
}

/// Heads and remainder byte planes (most significant first) of every word of `raw`; every
/// value of `heads` and `rem` is written.
fn split_planes<const W: usize>(
    raw: &[u8],
    split: Split,
    heads: &mut [u16],
    rem: &mut [&mut [u8]],
    hash: Option<&mut StripeHash>,
) {
    let planes = rem.len();
    if let [r0] = rem {
        for ((w, h), r) in raw.chunks_exact(W).zip(heads.iter_mut()).zip(r0.iter_mut()) {
            let w = load::<W>(w);
            *h = split.head(w);
            *r = split.rem(w) as u8;
        }
    } else if let [p0, p1, p2] = rem {
        // fp32 (sign + 23 mantissa bits): the only three-plane split; one pass, no indexing.
        let mut done = 0usize;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
        #[cfg(target_arch = "x86_64")]
        if W == 4 {
            // The high half of an fp32 word splits with `low - 16` mantissa bits in its
            // remainder.
            let (low, planes) = (split.low - 16, [&mut p0[..], &mut p1[..], &mut p2[..]]);
            match hash {
                Some(hash) if crate::float_avx512::available() => {
                    // SAFETY: AVX-512F is present; heads and planes hold one value per word;
                    // nothing of `raw` was hashed yet.
                    done = unsafe { crate::float_avx512::split_f32(raw, low, heads, planes, hash) };
                }
                _ if crate::float_avx2::available() => {
                    // SAFETY: AVX2 is present; sizes as above.
                    done = unsafe { crate::float_avx2::split_f32(raw, low, heads, planes) };
                }
                _ => {}
            }
        }
        let words = raw[W * done..]
            .chunks_exact(W)
            .zip(heads[done..].iter_mut());
        let (p0, p1, p2) = (&mut p0[done..], &mut p1[done..], &mut p2[done..]);
        for (((w, h), a), (b, c)) in words.zip(p0.iter_mut()).zip(p1.iter_mut().zip(p2)) {
            let w = load::<W>(w);
            *h = split.head(w);
            let r = split.rem(w);
            *a = (r >> 16) as u8;
            *b = (r >> 8) as u8;
            *c = r as u8;
        }
    } else {
        for (i, w) in raw.chunks_exact(W).enumerate() {
            let w = load::<W>(w);
            heads[i] = split.head(w);
            let r = split.rem(w);
            for (p, plane) in rem.iter_mut().enumerate() {
                plane[i] = (r >> (8 * (planes - 1 - p))) as u8;
            }
        }
    }
}

/// The float payload: `k`, the head stream, then the remainder planes' streams.
fn payload<'a>(
    split: Split,
    heads: &[u16],
    counts: &[u32],
    planes: impl IntoIterator<Item = (u8, Cow<'a, [u8]>)>,
    raw_len: usize,
) -> Vec<u8> {
    // Room for a payload as large as the raw chunk (a larger one is not kept): never grown,
    // and pages the payload does not reach are never touched.
    let mut out = crate::buffer_pool::payload_buffer(raw_len + 64);
    out.push(split.k as u8);
    push_symbols(&mut out, heads, counts, HUFFMAN_SLACK);
    for (method, data) in planes {
        push_stream(&mut out, method, &data);
    }
    out
}

/// Whether a strided sample's histogram is within [`SAMPLE_RANDOM_MARGIN`] of `width` bits
/// per symbol: such a plane is stored raw without being counted in full.
fn looks_random(sample: &[u32], taken: usize, width: u32) -> bool {
    rans::entropy_bits(sample) / taken.max(1) as f64 >= width as f64 - SAMPLE_RANDOM_MARGIN
}

std::thread_local! {
    /// The heads and remainder bytes of the split, reused from chunk to chunk: a chunk
    /// neither allocates nor zeroes them, since the split overwrites every value it hands on.
    static SPLIT_HEADS: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    static SPLIT_BYTES: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` with a buffer of `heads` values and one of `bytes` bytes (contents unspecified).
fn with_scratch<R>(heads: usize, bytes: usize, f: impl FnOnce(&mut [u16], &mut [u8]) -> R) -> R {
    if heads > scratch::KEEP_ELEMENTS {
        return f(&mut vec![0u16; heads], &mut vec![0u8; bytes]);
    }
    scratch::with_buffer(&SPLIT_HEADS, heads, |h| {
        scratch::with_buffer(&SPLIT_BYTES, bytes, |b| f(h, b))
    })
}

/// Room [`split_packed`] needs for `n` words.
fn packed_room(n: usize) -> usize {
    (n * 7).div_ceil(8) + 32
}

/// Heads and the bit-packed remainder of 16-bit words in one pass, for remainders of 6 or 7
/// bits (bf16 with one or two mantissa bits in the head), into `heads` (one per word) and
/// `packed` (at least [`packed_room`] bytes). Returns the packed bytes, packed as
/// [`pack_bits`] does.
fn split_packed<'p>(
    raw: &[u8],
    split: Split,
    heads: &mut [u16],
    packed: &'p mut [u8],
    hash: Option<&mut StripeHash>,
) -> &'p [u8] {
    match split.rem_bits {
        6 => split_packed_width::<6>(raw, heads, packed, hash),
        _ => split_packed_width::<7>(raw, heads, packed, hash),
    }
}

/// The 16-bit split with a `WIDTH`-bit remainder, with every shift a constant.
struct Split16<const WIDTH: usize>;

impl<const WIDTH: usize> Split16<WIDTH> {
    const LOW: u32 = WIDTH as u32 - 1;
    const LOW_MASK: u32 = (1 << Self::LOW) - 1;
    const HEAD_MASK: u32 = (1 << (15 - Self::LOW)) - 1;

    #[inline(always)]
    fn head(w: u32) -> u16 {
        ((w >> Self::LOW) & Self::HEAD_MASK) as u16
    }

    #[inline(always)]
    fn rem(w: u32) -> u64 {
        (((w >> 15) << Self::LOW) | (w & Self::LOW_MASK)) as u64
    }

    #[inline(always)]
    fn join(head: u16, rem: u32) -> u16 {
        (((rem >> Self::LOW) << 15) | ((head as u32) << Self::LOW) | (rem & Self::LOW_MASK)) as u16
    }
}

fn split_packed_width<'p, const WIDTH: usize>(
    raw: &[u8],
    heads: &mut [u16],
    packed: &'p mut [u8],
    hash: Option<&mut StripeHash>,
) -> &'p [u8] {
    let n = raw.len() / 2;
    let packed_len = (n * WIDTH).div_ceil(8);
    let heads = &mut heads[..n];
    // Room for the 8-byte tail store and the SIMD kernel's overhanging stores.
    let packed = &mut packed[..packed_len + 32];
    let mut done = 0usize;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = hash;
    #[cfg(target_arch = "x86_64")]
    match hash {
        Some(hash) if crate::float_avx512::available() => {
            // SAFETY: AVX-512F is present; `heads` holds n values and `packed` has the room
            // the kernel asks for; nothing of `raw` was hashed yet.
            done = unsafe { crate::float_avx512::split_packed::<WIDTH>(raw, heads, packed, hash) };
        }
        _ if crate::float_avx2::available() => {
            // SAFETY: AVX2 is present; sizes as above.
            done = unsafe { crate::float_avx2::split_packed::<WIDTH>(raw, heads, packed) };
        }
        _ => {}
    }
    let out = &mut packed[done / 8 * WIDTH..];
    let groups = raw[2 * done..]
        .chunks(16)
        .zip(heads[done..].chunks_mut(8))
        .zip(out.chunks_mut(WIDTH));
    for ((words, h), dst) in groups {
        let mut acc = 0u64;
        for (j, (w, h)) in words.chunks_exact(2).zip(h.iter_mut()).enumerate() {
            let w = u16::from_le_bytes([w[0], w[1]]) as u32;
            *h = Split16::<WIDTH>::head(w);
            acc |= Split16::<WIDTH>::rem(w) << (j * WIDTH);
        }
        dst.copy_from_slice(&acc.to_le_bytes()[..dst.len()]);
    }
    &packed[..packed_len]
}

/// Inverse of [`split_packed`]: 16-bit words from heads and a raw bit-packed remainder.
fn join_packed(
    heads: &[u16],
    packed: &[u8],
    split: Split,
    out: &mut [u8],
    hash: Option<&mut StripeHash>,
) -> Result<bool> {
    let width = split.rem_bits as usize;
    if !(6..=7).contains(&width) {
        return Ok(false);
    }
    let need = (heads.len() * width).div_ceil(8);
    if packed.len() != need {
        return Err(corrupt(format!(
            "packed remainder is {} bytes, expected {need}",
            packed.len()
        )));
    }
    if width == 6 {
        join_packed_width::<6>(heads, packed, out, hash);
    } else {
        join_packed_width::<7>(heads, packed, out, hash);
    }
    Ok(true)
}

fn join_packed_width<const WIDTH: usize>(
    heads: &[u16],
    packed: &[u8],
    out: &mut [u8],
    hash: Option<&mut StripeHash>,
) {
    let mask = (1u64 << WIDTH) - 1;
    let mut done = 0usize;
    #[cfg(not(target_arch = "x86_64"))]
    let _ = hash;
    #[cfg(target_arch = "x86_64")]
    match hash {
        Some(hash) if crate::float_avx512::available() => {
            // SAFETY: AVX-512F/BW are present; `out` holds 2 bytes per head and `packed`
            // was checked to hold the packed remainders of every head; nothing of `out` was
            // hashed yet.
            done = unsafe { crate::float_avx512::join_packed::<WIDTH>(heads, packed, out, hash) };
        }
        _ if crate::float_avx2::available() => {
            // SAFETY: AVX2 is present; sizes as above.
            done = unsafe { crate::float_avx2::join_packed::<WIDTH>(heads, packed, out) };
        }
        _ => {}
    }
    let groups = out[2 * done..]
        .chunks_mut(16)
        .zip(heads[done..].chunks(8))
        .zip(packed[done / 8 * WIDTH..].chunks(WIDTH));
    for ((o, h), p) in groups {
        let mut b = [0u8; 8];
        b[..p.len()].copy_from_slice(p);
        let acc = u64::from_le_bytes(b);
        for (j, (o, &h)) in o.chunks_exact_mut(2).zip(h).enumerate() {
            let r = ((acc >> (j * WIDTH)) & mask) as u32;
            o.copy_from_slice(&Split16::<WIDTH>::join(h, r).to_le_bytes());
        }
    }
}

/// Raw form of a plane of `width`-bit values: bit-packed below 8 bits.
fn raw_plane(plane: &[u8], width: u32) -> Cow<'_, [u8]> {
    if width < 8 {
        Cow::Owned(pack_bits(plane, width))
    } else {
        Cow::Borrowed(plane)
    }
}

/// Planes at least this long are first judged on a sample.
pub(crate) const SAMPLE_FROM_LEN: usize = 1 << 16;
/// Every `sample_stride`-th value is sampled: 7, or 31 where that still leaves over 16 000
/// values (a 1 MiB chunk of bf16 gives 17 000), which estimate a 7-bit entropy within a
/// hundredth of a bit of its value. Primes, so that the sample does not line up with
/// power-of-two row lengths.
fn sample_stride(len: usize) -> usize {
    if len >= 31 << 14 {
        31
    } else {
        7
    }
}
/// A sample within this many bits per symbol of the plane's width is taken as incompressible.
const SAMPLE_RANDOM_MARGIN: f64 = 0.04;

/// Smallest of raw, constant, rANS and zstd for one plane of `width`-bit values.
///
/// The low mantissa bytes of fp32 weights are close to uniformly random; counting every
/// byte only to find that out costs a fifth of the encoder's time. A long plane whose
/// strided sample is within [`SAMPLE_RANDOM_MARGIN`] of `width` bits per symbol is stored
/// raw without the full count.
pub(crate) fn encode_plane(plane: &[u8], width: u32) -> (u8, Cow<'_, [u8]>) {
    if plane.len() >= SAMPLE_FROM_LEN {
        let stride = sample_stride(plane.len());
        let sample = rans::histogram_by(plane.iter().step_by(stride).map(|&b| b as usize), 256);
        if looks_random(&sample, plane.len().div_ceil(stride), width) {
            return (METHOD_RAW, raw_plane(plane, width));
        }
    }
    encode_plane_counts(plane, width, &rans::histogram(plane, 256), true)
}

/// [`encode_plane`] with the plane's histogram already counted; `try_zstd` false keeps to
/// raw, constant and rANS (for planes where zstd's match finding is not worth its time).
pub(crate) fn encode_plane_counts<'a>(
    plane: &'a [u8],
    width: u32,
    counts: &[u32],
    try_zstd: bool,
) -> (u8, Cow<'a, [u8]>) {
    if counts.iter().filter(|&&c| c > 0).count() < 2 {
        return match plane.first() {
            Some(&v) => (METHOD_CONST, Cow::Owned(vec![v])),
            None => (METHOD_RAW, raw_plane(plane, width)),
        };
    }
    let mut best = (METHOD_RAW, raw_plane(plane, width));
    let raw_len = best.1.len();
    let bits_per_symbol = rans::entropy_bits(counts) / plane.len().max(1) as f64;
    let estimate = rans::estimated_size(counts);
    // zstd first: where it wins (the repeated rows of an embedding table, optimiser moments),
    // the entropy coder's estimate, known from the counts alone, says so before any coding.
    // A short plane's entropy is underestimated (few values over many bins); there, zstd
    // is tried only when the entropy coder with its table would beat raw too.
    let short = plane.len() < SAMPLE_FROM_LEN;
    if try_zstd
        && bits_per_symbol < ZSTD_TRY_BELOW_BITS - (8 - width) as f64
        && (!short || estimate < raw_len)
    {
        if let Ok(z) = crate::scratch::zstd_compress(plane, PLANE_ZSTD_LEVEL) {
            if z.len() < best.1.len() {
                best = (METHOD_ZSTD, Cow::Owned(z));
            }
        }
    }
    if estimate < raw_len * 99 / 100 && estimate < best.1.len() {
        if let Some((method, coded)) = coded_symbols(plane, counts, HUFFMAN_SLACK) {
            if coded.len() < best.1.len() {
                best = (method, Cow::Owned(coded));
            }
        }
    }
    best
}

/// Every how many words [`estimate`] samples a long chunk; a prime, so that the sample
/// does not line up with power-of-two row lengths. About 2 000 samples of a 1 MiB fp32
/// chunk put a byte plane's entropy within a tenth of a bit.
pub(crate) const ESTIMATE_STRIDE: usize = 127;

/// Estimated size of [`encode`]'s output, from histograms (no coding). The heads are
/// counted in full, the remainder planes on a sample; `rough`: the heads on the sample
/// too, for an estimate at a small fraction of the cost.
pub fn estimate(raw: &[u8], bits: FloatBits, word_bytes: usize, rough: bool) -> usize {
    if word_bytes == 2 {
        estimate_words::<2>(raw, bits, rough)
    } else {
        estimate_words::<4>(raw, bits, rough)
    }
}

fn estimate_words<const W: usize>(raw: &[u8], bits: FloatBits, rough: bool) -> usize {
    let split = Split::new(bits, head_mantissa_choices(bits)[0]);
    let n = raw.len() / W;
    // The sampled words of a long chunk, read once for all the histograms below: each is
    // a cache line of its own, and the chunk has often left L1 by now.
    let sample: Vec<u32> = if n >= SAMPLE_FROM_LEN {
        raw.chunks_exact(W)
            .step_by(ESTIMATE_STRIDE)
            .map(load::<W>)
            .collect()
    } else {
        Vec::new()
    };
    let heads = if rough {
        sampled_entropy_bytes::<W>(raw, &sample, 1 << split.head_bits, |w| {
            split.head(w) as usize
        })
    } else {
        rans::estimated_size(&head_histogram::<W>(raw, split))
    };
    let planes = split.planes();
    let remainder: usize = (0..planes)
        .map(|p| {
            let width = split.plane_width(p);
            let shift = 8 * (planes - 1 - p) as u32;
            let mask = (1u32 << width) - 1;
            sampled_entropy_bytes::<W>(raw, &sample, 1 << width, |w| {
                ((split.rem(w) >> shift) & mask) as usize
            })
        })
        .sum();
    heads + remainder
}

/// Bytes of `raw`'s words mapped by `value` (each below `cardinality`) at their order-0
/// entropy, counted on `sample`, every [`ESTIMATE_STRIDE`]-th word of a long chunk (empty
/// for a short one, whose words are all counted).
///
/// The remainder planes are counted this way rather than at their raw width: the encoder
/// codes a plane whenever that pays (optimiser moments, whose low bytes are far from
/// random), and counting every plane raw overstated the plain codec's size by up to half,
/// which made deltas of moments look smaller than their plain encoding.
fn sampled_entropy_bytes<const W: usize>(
    raw: &[u8],
    sample: &[u32],
    cardinality: usize,
    value: impl Fn(u32) -> usize,
) -> usize {
    let n = raw.len() / W;
    let (counts, taken) = if sample.is_empty() {
        let all = raw.chunks_exact(W).map(|w| value(load::<W>(w)));
        (rans::histogram_by(all, cardinality), n)
    } else {
        let some = sample.iter().map(|&w| value(w));
        (rans::histogram_by(some, cardinality), sample.len())
    };
    (rans::entropy_bits(&counts) / taken.max(1) as f64 * n as f64 / 8.0).ceil() as usize
}

/// Pack values of `width` (1..=8) bits, LSB first: 8 values make `width` bytes.
pub(crate) fn pack_bits(vals: &[u8], width: u32) -> Vec<u8> {
    let w = width as usize;
    let need = (vals.len() * w).div_ceil(8);
    let mut out = Vec::with_capacity(need + 8);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if matches!(w, 6 | 7) && vals.len() >= 64 && crate::float_avx2::available() {
        out.resize(need + 4, 0);
        // SAFETY: AVX2 is present (checked just above).
        done = unsafe {
            if w == 6 {
                crate::float_avx2::pack_bytes::<6>(vals, &mut out)
            } else {
                crate::float_avx2::pack_bytes::<7>(vals, &mut out)
            }
        };
        out.truncate(done / 8 * w);
    }
    let vals = &vals[done..];
    // Whole groups of 8 values take exactly `w` bytes; a constant width lets each group be
    // one fixed-size store instead of a call to memcpy.
    match w {
        1 => pack_groups::<1>(vals, &mut out),
        2 => pack_groups::<2>(vals, &mut out),
        3 => pack_groups::<3>(vals, &mut out),
        4 => pack_groups::<4>(vals, &mut out),
        5 => pack_groups::<5>(vals, &mut out),
        6 => pack_groups::<6>(vals, &mut out),
        7 => pack_groups::<7>(vals, &mut out),
        _ => pack_groups_any(vals, w, &mut out),
    }
    let rest = &vals[vals.len() / 8 * 8..];
    let mut acc = 0u64;
    for (i, &v) in rest.iter().enumerate() {
        acc |= (v as u64) << (i * w);
    }
    out.extend_from_slice(&acc.to_le_bytes()[..(rest.len() * w).div_ceil(8)]);
    out
}

#[inline(always)]
fn pack_group(g: &[u8], w: usize) -> u64 {
    g.iter()
        .enumerate()
        .fold(0u64, |acc, (i, &v)| acc | (v as u64) << (i * w))
}

fn pack_groups<const W: usize>(vals: &[u8], out: &mut Vec<u8>) {
    for g in vals.chunks_exact(8) {
        let bytes = pack_group(g, W).to_le_bytes();
        let mut fixed = [0u8; W];
        fixed.copy_from_slice(&bytes[..W]);
        out.extend_from_slice(&fixed);
    }
}

fn pack_groups_any(vals: &[u8], w: usize, out: &mut Vec<u8>) {
    for g in vals.chunks_exact(8) {
        out.extend_from_slice(&pack_group(g, w).to_le_bytes()[..w]);
    }
}

pub(crate) fn unpack_bits(data: &[u8], width: u32, out: &mut [u8]) -> Result<()> {
    let w = width as usize;
    let need = (out.len() * w).div_ceil(8);
    if data.len() != need {
        return Err(corrupt(format!(
            "packed remainder is {} bytes, expected {need}",
            data.len()
        )));
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::float_avx2::available() {
        // SAFETY: AVX2 is present (checked just above).
        done = unsafe {
            match w {
                1 => crate::float_avx2::unpack_bytes::<1>(data, out),
                2 => crate::float_avx2::unpack_bytes::<2>(data, out),
                3 => crate::float_avx2::unpack_bytes::<3>(data, out),
                4 => crate::float_avx2::unpack_bytes::<4>(data, out),
                5 => crate::float_avx2::unpack_bytes::<5>(data, out),
                6 => crate::float_avx2::unpack_bytes::<6>(data, out),
                7 => crate::float_avx2::unpack_bytes::<7>(data, out),
                _ => 0,
            }
        };
    }
    // Whole groups of eight values from there on; `done` is a multiple of 32.
    let (data, out) = (&data[done / 8 * w..], &mut out[done..]);
    let whole = out.len() / 8;
    let (groups, rest) = out.split_at_mut(whole * 8);
    let (body, tail) = data.split_at(whole * w);
    match w {
        1 => unpack_groups::<1>(body, groups),
        2 => unpack_groups::<2>(body, groups),
        3 => unpack_groups::<3>(body, groups),
        4 => unpack_groups::<4>(body, groups),
        5 => unpack_groups::<5>(body, groups),
        6 => unpack_groups::<6>(body, groups),
        7 => unpack_groups::<7>(body, groups),
        _ => unpack_groups_any(body, w, groups),
    }
    let mut b = [0u8; 8];
    b[..tail.len()].copy_from_slice(tail);
    unpack_group(u64::from_le_bytes(b), w, rest);
    Ok(())
}

#[inline(always)]
fn unpack_group(acc: u64, w: usize, out: &mut [u8]) {
    let mask = (1u64 << w) - 1;
    for (i, o) in out.iter_mut().enumerate() {
        *o = ((acc >> (i * w)) & mask) as u8;
    }
}

fn unpack_groups<const W: usize>(data: &[u8], out: &mut [u8]) {
    for (src, g) in data.chunks_exact(W).zip(out.chunks_exact_mut(8)) {
        let mut b = [0u8; 8];
        b[..W].copy_from_slice(src);
        unpack_group(u64::from_le_bytes(b), W, g);
    }
}

fn unpack_groups_any(data: &[u8], w: usize, out: &mut [u8]) {
    for (src, g) in data.chunks_exact(w).zip(out.chunks_exact_mut(8)) {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(src);
        unpack_group(u64::from_le_bytes(b), w, g);
    }
}

/// Reads `u8 method | u32 length | bytes` streams off a payload. A copy reads ahead
/// without moving the original.
#[derive(Clone, Copy)]
pub(crate) struct StreamReader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> StreamReader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        StreamReader { data, at: 0 }
    }

    pub(crate) fn byte(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.at)
            .ok_or_else(|| corrupt("chunk payload truncated"))?;
        self.at += 1;
        Ok(b)
    }

    pub(crate) fn stream(&mut self) -> Result<(u8, &'a [u8])> {
        let method = self.byte()?;
        let len_bytes = self
            .data
            .get(self.at..self.at + 4)
            .ok_or_else(|| corrupt("chunk payload truncated"))?;
        let len =
            u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        self.at += 4;
        let body = self
            .data
            .get(self.at..self.at.saturating_add(len))
            .ok_or_else(|| corrupt("chunk stream runs past the chunk"))?;
        self.at += len;
        Ok((method, body))
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.at != self.data.len() {
            return Err(corrupt("trailing bytes after the last stream"));
        }
        Ok(())
    }
}

/// Decode one plane of `out.len()` values of `width` bits.
pub(crate) fn decode_plane(method: u8, data: &[u8], out: &mut [u8], width: u32) -> Result<()> {
    let cardinality = 1usize << width;
    match method {
        METHOD_RAW if width < 8 => unpack_bits(data, width, out)?,
        METHOD_RAW => {
            if data.len() != out.len() {
                return Err(corrupt("raw plane has the wrong length"));
            }
            out.copy_from_slice(data);
        }
        METHOD_CONST => {
            let [v] = data else {
                return Err(corrupt("constant plane is not one byte"));
            };
            if *v as usize >= cardinality {
                return Err(corrupt("constant plane value out of range"));
            }
            out.fill(*v);
        }
        METHOD_RANS => rans::decode(data, out, cardinality)?,
        METHOD_HUFFMAN => huffman::decode(data, out, cardinality)?,
        METHOD_ZSTD => {
            let n = zstd::bulk::decompress_to_buffer(data, out)
                .map_err(|e| corrupt(format!("zstd plane: {e}")))?;
            if n != out.len() {
                return Err(corrupt("zstd plane decoded to the wrong length"));
            }
            if width < 8 && out.iter().any(|&v| v as usize >= cardinality) {
                return Err(corrupt("zstd plane value out of range"));
            }
        }
        m => return Err(corrupt(format!("unknown plane method {m}"))),
    }
    Ok(())
}

/// Decode a payload made by [`encode`] into `out` (whole elements).
pub fn decode(payload: &[u8], bits: FloatBits, word_bytes: usize, out: &mut [u8]) -> Result<()> {
    decode_hashed(payload, bits, word_bytes, out).map(|_| ())
}

/// [`decode`], returning the xxh3-64 of `out` where it can be had without a pass of its own:
/// on AVX-512 CPUs the joins hash the words as they store them.
pub(crate) fn decode_hashed(
    payload: &[u8],
    bits: FloatBits,
    word_bytes: usize,
    out: &mut [u8],
) -> Result<Option<u64>> {
    let mut hash = StripeHash::new(out.len());
    if word_bytes == 2 {
        decode_words::<2>(payload, bits, out, hash.as_mut())?;
    } else {
        decode_words::<4>(payload, bits, out, hash.as_mut())?;
    }
    Ok(hash.and_then(|h| h.finish(out)))
}

fn decode_words<const W: usize>(
    payload: &[u8],
    bits: FloatBits,
    out: &mut [u8],
    mut hash: Option<&mut StripeHash>,
) -> Result<()> {
    let n = out.len() / W;
    let mut rd = StreamReader::new(payload);
    let k = rd.byte()? as u32;
    if !head_mantissa_choices(bits).contains(&k) {
        return Err(corrupt(format!("invalid head width k={k}")));
    }
    let split = Split::new(bits, k);
    let cardinality = 1usize << split.head_bits;

    let planes = split.planes();
    // Heads and decoded planes live in the per-thread scratch: every value is written by
    // the stream decoders (which refuse a stream that comes up short) before it is read.
    with_scratch(n, planes * n, |heads, bytes| {
        read_symbols(rd.stream()?, heads, cardinality, "head")?;
        if W == 2 && planes == 1 {
            let mut peek = rd;
            if let (METHOD_RAW, packed) = peek.stream()? {
                peek.finish()?;
                if join_packed(heads, packed, split, out, hash.as_deref_mut())? {
                    return Ok(());
                }
            }
        }
        // Raw byte planes are joined straight from the payload, without a copy.
        let mut rem: Vec<&[u8]> = Vec::with_capacity(planes);
        let mut spare = bytes;
        for p in 0..planes {
            let (method, data) = rd.stream()?;
            let width = split.plane_width(p);
            if method == METHOD_RAW && width == 8 {
                if data.len() != n {
                    return Err(corrupt("raw plane has the wrong length"));
                }
                rem.push(data);
            } else {
                let (plane, tail) = std::mem::take(&mut spare).split_at_mut(n);
                spare = tail;
                decode_plane(method, data, plane, width)?;
                rem.push(plane);
            }
        }
        rd.finish()?;
        join_planes::<W>(heads, &rem, split, out, hash);
        Ok(())
    })
}

/// Words from heads and remainder byte planes (most significant first).
fn join_planes<const W: usize>(
    heads: &[u16],
    rem: &[&[u8]],
    split: Split,
    out: &mut [u8],
    hash: Option<&mut StripeHash>,
) {
    if let [r0] = rem {
        for ((o, &h), &r) in out.chunks_exact_mut(W).zip(heads).zip(r0.iter()) {
            store::<W>(o, split.join(h, r as u32));
        }
    } else if let [p0, p1, p2] = rem {
        let mut done = 0usize;
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
        #[cfg(target_arch = "x86_64")]
        if W == 4 {
            let low = split.low - 16;
            match hash {
                Some(hash) if crate::float_avx512::available() => {
                    // SAFETY: AVX-512F/BW are present; every plane holds one value per head
                    // and `out` four bytes per head; nothing of `out` was hashed yet.
                    done = unsafe {
                        crate::float_avx512::join_f32(heads, low, [p0, p1, p2], out, hash)
                    };
                }
                _ if crate::float_avx2::available() => {
                    // SAFETY: AVX2 is present; sizes as above.
                    done = unsafe { crate::float_avx2::join_f32(heads, low, [p0, p1, p2], out) };
                }
                _ => {}
            }
        }
        let words = out[W * done..].chunks_exact_mut(W).zip(&heads[done..]);
        let (p0, p1, p2) = (&p0[done..], &p1[done..], &p2[done..]);
        for (((o, &h), &a), (&b, &c)) in words.zip(p0).zip(p1.iter().zip(p2)) {
            let r = (a as u32) << 16 | (b as u32) << 8 | c as u32;
            store::<W>(o, split.join(h, r));
        }
    } else {
        for (i, o) in out.chunks_exact_mut(W).enumerate() {
            let mut r = 0u32;
            for plane in rem {
                r = (r << 8) | plane[i] as u32;
            }
            store::<W>(o, split.join(heads[i], r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use proptest::prelude::*;

    /// The heads of `raw` (`word`-byte words) counted one by one in a single table.
    fn one_table_histogram(raw: &[u8], word: usize, split: Split) -> Vec<u32> {
        let heads = raw.chunks_exact(word).map(|w| {
            let w = if word == 2 {
                load::<2>(w)
            } else {
                load::<4>(w)
            };
            split.head(w) as usize
        });
        rans::histogram_by(heads, 1 << split.head_bits)
    }

    /// [`head_histogram`] for a word width known only at run time.
    fn head_histogram_of(raw: &[u8], word: usize, split: Split) -> Vec<u32> {
        if word == 2 {
            head_histogram::<2>(raw, split)
        } else {
            head_histogram::<4>(raw, split)
        }
    }

    #[test]
    fn the_four_table_head_histogram_counts_what_one_table_counts() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let bytes: Vec<u8> = (0..40_003)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly a few exponents (runs of equal heads), sometimes any byte.
                if x.is_multiple_of(5) {
                    x as u8
                } else {
                    0x3c + (x >> 60) as u8 % 3
                }
            })
            .collect();
        let wide = FloatBits {
            exponent: 11,
            mantissa: 4,
        };
        for (bits, word) in [
            (DType::BF16.float_bits().unwrap(), 2),
            (DType::F16.float_bits().unwrap(), 2),
            (DType::F32.float_bits().unwrap(), 4),
            // Heads wider than the fixed tables take the general path.
            (wide, 2),
        ] {
            for k in [0, bits.mantissa.min(3)] {
                let split = Split::new(bits, k);
                // Every remainder of words after the last group of four, and none.
                for len in (bytes.len() / word - 7..=bytes.len() / word).map(|n| n * word) {
                    let raw = &bytes[..len];
                    let one = one_table_histogram(raw, word, split);
                    let four = head_histogram_of(raw, word, split);
                    assert_eq!(four, one, "{bits:?}, k {k}, {len} bytes");
                }
            }
        }
    }

    #[test]
    fn a_sampled_symbol_histogram_holds_every_symbol_present() {
        // Symbols up to 256 (the quad alphabet's escape): common ones everywhere, rare ones
        // only in the tested halves (symbols 32..64 of every 64, from 64 KiB of symbols on)
        // and one only in the tail. The rare ones must come out exact; the common ones
        // within the sampling error; the tail's, counted with the sample and scaled as it
        // is, present and at most doubled; and a short stream exact throughout.
        let n = (64 << 10) + 40;
        let tail_from = n / 64 * 64;
        let symbols: Vec<u16> = (0..n)
            .zip(xorshift(0x2545_f491_4f6c_dd1d))
            .map(|(i, r)| {
                if i >= tail_from && i % 2 == 0 {
                    200
                } else if i % 64 >= 32 && i < tail_from && i % 997 == 40 {
                    [256, 255, 129][i % 3]
                } else {
                    (r % 24) as u16
                }
            })
            .collect();
        let exact = rans::histogram_by(symbols.iter().map(|&s| s as usize), 257);
        let sampled = symbol_histogram(&symbols, 257);
        assert_eq!(sampled.len(), 257);
        for (v, (&e, &s)) in exact.iter().zip(&sampled).enumerate() {
            if v == 200 {
                assert!(s >= e && s <= 2 * e + 1, "symbol {v}: {e} {s}");
            } else if v >= 24 {
                assert_eq!(s, e, "symbol {v}");
            } else {
                let error = (e as f64).sqrt() * 4.0;
                assert!((s as f64 - e as f64).abs() <= error, "symbol {v}: {e} {s}");
            }
        }
        assert!(exact[256] > 0 && exact[200] > 0 && exact[129] > 0);
        // Scaling keeps the total, up to rounding in each bin.
        let total: u32 = sampled.iter().sum();
        assert!(
            total.abs_diff(n as u32) <= 257 + exact[200],
            "{total} of {n}"
        );
        assert_eq!(symbol_histogram(&symbols[..1000], 257), {
            rans::histogram_by(symbols[..1000].iter().map(|&s| s as usize), 257)
        });
    }

    #[test]
    fn a_sampled_head_histogram_holds_every_head_present() {
        // Long chunks count half their heads and test the other half (the second 64
        // bytes of every 128) against them. Rare heads only in the tested half, and a
        // layout whose tested half holds heads the counted half never has, must come out
        // exact; common heads, and one only in the tail (which is counted with the
        // sample), within the sampling error (a count scaled from about half its
        // occurrences is off by about its square root).
        let mut stream = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut next = move || stream.next().unwrap_or_default();
        for (dtype, word) in [(DType::BF16, 2), (DType::F16, 2), (DType::F32, 4)] {
            let bits = dtype.float_bits().unwrap();
            let kmax = head_mantissa_choices(bits).iter().copied().max().unwrap();
            let split = Split::new(bits, kmax);
            let card = 1u32 << split.head_bits;
            let with_head = |head: u32, noise: u64| -> u32 {
                let low = noise as u32 & ((1 << split.low) - 1);
                (head << split.low) | low | ((noise >> 63) as u32) << split.sign_shift
            };
            // Common heads are the offsets 0 to 7 from `card / 2`; the rare ones (offsets
            // 9 to 11 and 17 to 19) share bitmap words with them, one bit of index apart in
            // a 16-bit word (8) or in a 32-bit one (16).
            let common = |r: u64| card / 2 + (r >> 61) as u32;
            let rare = |i: usize| card / 2 + [9, 10, 11, 17, 18, 19][(i / 997) % 6];
            let apart = |r: u64| card / 4 + (r >> 62) as u32;
            let tail_head = card / 2 + 12;
            for layout in ["rare heads in tested blocks", "tested blocks apart"] {
                let n = (256 << 10) / word + 3;
                let mut raw = Vec::with_capacity(n * word);
                // Heads outside the counted half's common ones: each must come out exact.
                let mut uncommon = std::collections::BTreeSet::new();
                for i in 0..n {
                    let r = next();
                    let in_tail = (i * word) / 128 == n * word / 128;
                    let tested = (i * word) % 128 >= 64 && !in_tail;
                    let head = match layout {
                        "rare heads in tested blocks" if tested && i % 997 < 3 => rare(i),
                        "tested blocks apart" if tested => apart(r),
                        _ if in_tail && i % 2 == 0 => tail_head,
                        _ => common(r),
                    };
                    if head != common(r) && head != tail_head {
                        uncommon.insert(head as usize);
                    }
                    let w = with_head(head, r);
                    raw.extend_from_slice(&w.to_le_bytes()[..word]);
                }
                let exact = one_table_histogram(&raw, word, split);
                let sampled = head_histogram_of(&raw, word, split);
                assert_eq!(sampled.len(), exact.len());
                assert!(uncommon.len() >= 4, "{dtype:?}, {layout}: {uncommon:?}");
                for (h, (&e, &s)) in exact.iter().zip(&sampled).enumerate() {
                    let what = format!("{dtype:?}, {layout}, head {h}: exact {e}, sampled {s}");
                    assert_eq!(e > 0, s > 0, "{what}");
                    if uncommon.contains(&h) {
                        assert_eq!(e, s, "{what}");
                    } else {
                        assert!((s.abs_diff(e) as f64) <= 5.0 * (e as f64).sqrt(), "{what}");
                    }
                }
            }
        }
    }

    fn roundtrip(raw: &[u8], dtype: DType) -> usize {
        let bits = dtype.float_bits().unwrap();
        let (enc, hash) = encode_hashed(raw, bits, dtype.size());
        if let Some(hash) = hash {
            assert_eq!(
                hash,
                xxhash_rust::xxh3::xxh3_64(raw),
                "{dtype}, {} bytes",
                raw.len()
            );
        }
        let mut out = vec![0u8; raw.len()];
        let hash = decode_hashed(&enc, bits, dtype.size(), &mut out).unwrap();
        assert_eq!(out, raw, "{dtype}");
        if let Some(hash) = hash {
            assert_eq!(
                hash,
                xxhash_rust::xxh3::xxh3_64(raw),
                "{dtype}, {} bytes",
                raw.len()
            );
        }
        enc.len()
    }

    /// A deterministic xorshift64 stream from `seed`.
    fn xorshift(mut x: u64) -> impl Iterator<Item = u64> {
        std::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        })
    }

    /// One weight of a uniform init in [-0.05, 0.05), from one xorshift draw.
    fn uniform_value(x: u64) -> f32 {
        ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
    }

    /// Weights of a uniform init: a deterministic xorshift stream, scaled into [-0.05, 0.05).
    fn uniform_f32(n: usize, low_bytes_zero: bool) -> Vec<u8> {
        let mask = if low_bytes_zero {
            0xffff_0000
        } else {
            u32::MAX
        };
        xorshift(0x9e37_79b9_7f4a_7c15)
            .take(n)
            .flat_map(|x| (uniform_value(x).to_bits() & mask).to_le_bytes())
            .collect()
    }

    #[test]
    fn long_fp32_planes_round_trip_through_the_sampled_path() {
        let n = 300_000; // planes past SAMPLE_FROM_LEN
        let random = uniform_f32(n, false);
        let size = roundtrip(&random, DType::F32);
        assert!(
            size < random.len() * 85 / 100,
            "exponents still coded: {size}"
        );
        // Low mantissa bytes that are all zero must not be mistaken for random by the sample.
        let truncated = uniform_f32(n, true);
        let size = roundtrip(&truncated, DType::F32);
        assert!(
            size < truncated.len() * 50 / 100,
            "zero planes coded as constants: {size}"
        );
    }

    /// The fused split (AVX2 where present) gives the heads and the packing of the
    /// element-by-element split, and the fused join undoes it, at lengths around the
    /// kernels' block sizes.
    #[test]
    fn fused_split_and_join_match_the_plain_split() {
        let words: Vec<u8> = xorshift(0x2545_f491_4f6c_dd1d)
            .take(70_000)
            .flat_map(|x| (x as u16).to_le_bytes())
            .collect();
        let bits = DType::BF16.float_bits().unwrap();
        for k in [1u32, 2] {
            let split = Split::new(bits, k);
            let lengths = [
                0usize, 1, 7, 8, 31, 32, 33, 47, 64, 120, 121, 512, 513, 1000,
            ];
            for n in lengths.into_iter().chain([65_536, 69_999]) {
                let raw = &words[..2 * n];
                // Buffers full of stale bytes, as a reused scratch buffer is: the split
                // must overwrite everything it hands on.
                let mut heads = vec![0xabcdu16; n + 5];
                let mut room = vec![0xffu8; (n * 7).div_ceil(8) + 40];
                let packed = split_packed(raw, split, &mut heads, &mut room, None).to_vec();
                let heads = &heads[..n];
                // Split again (AVX-512) hashing what it reads: the same split, and the hash.
                if let Some(mut hash) = StripeHash::new(raw.len()) {
                    let (mut again, mut room) = (vec![0x1234u16; n + 5], vec![0x55u8; room.len()]);
                    let repacked = split_packed(raw, split, &mut again, &mut room, Some(&mut hash));
                    assert_eq!((repacked, &again[..n]), (&packed[..], heads), "k={k} n={n}");
                    let reference = xxhash_rust::xxh3::xxh3_64(raw);
                    assert_eq!(hash.finish(raw), Some(reference), "k={k} n={n}");
                }
                let plain_heads: Vec<u16> = raw
                    .chunks_exact(2)
                    .map(|w| split.head(load::<2>(w)))
                    .collect();
                let rems: Vec<u8> = raw
                    .chunks_exact(2)
                    .map(|w| split.rem(load::<2>(w)) as u8)
                    .collect();
                assert_eq!(heads, plain_heads, "k={k} n={n}");
                assert_eq!(packed, pack_bits(&rems, split.rem_bits), "k={k} n={n}");
                // Joined alone, and (AVX-512) hashing what it joins.
                for hashed in [false, true] {
                    let mut out = vec![0u8; raw.len()];
                    let mut hash = StripeHash::new(raw.len()).filter(|_| hashed);
                    let joined = join_packed(heads, &packed, split, &mut out, hash.as_mut());
                    assert!(joined.unwrap());
                    assert_eq!(out, raw, "k={k} n={n}");
                    if let Some(hash) = hash {
                        let reference = xxhash_rust::xxh3::xxh3_64(raw);
                        assert_eq!(hash.finish(&out), Some(reference), "k={k} n={n}");
                    }
                }
                if n > 0 {
                    let mut out = vec![0u8; raw.len()];
                    assert!(join_packed(heads, &packed[1..], split, &mut out, None).is_err());
                }
            }
        }
    }

    /// A mapped read gives `map[s]` for every symbol `s` a plain read gives, whichever
    /// method coded the stream (Huffman maps in its table, the others after decoding), and
    /// refuses a map that does not cover the alphabet.
    #[test]
    fn mapped_reads_map_every_symbol() {
        let cardinality = 200;
        let map: Vec<u16> = (0..cardinality as u16)
            .map(|s| s.wrapping_mul(40_503) ^ 0x5a5a)
            .collect();
        let syms: Vec<u16> = (0..20_000u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) >> 24) % (i % 7 * 28 + 4)) as u16)
            .collect();
        let counts = symbol_histogram(&syms, cardinality);
        let mut streams = Vec::new();
        let code = huffman::Code::from_counts(&counts).unwrap();
        streams.push((METHOD_HUFFMAN, huffman::encode(&syms, &code)));
        let table = rans::FreqTable::from_counts(&counts).unwrap();
        streams.push((METHOD_RANS, rans::encode(&syms, &table)));
        streams.push((METHOD_CONST, 17u16.to_le_bytes().to_vec()));
        for (method, data) in &streams {
            let mut plain = vec![0u16; syms.len()];
            read_symbols((*method, data), &mut plain, cardinality, "test").unwrap();
            let mut mapped = vec![0u16; syms.len()];
            read_mapped_symbols(
                (*method, data),
                &mut mapped,
                cardinality,
                Some(&map),
                "test",
            )
            .unwrap();
            let want: Vec<u16> = plain.iter().map(|&s| map[s as usize]).collect();
            assert_eq!(mapped, want, "method {method}");
            let short = &map[..cardinality - 1];
            let err = read_mapped_symbols(
                (*method, data),
                &mut mapped,
                cardinality,
                Some(short),
                "test",
            );
            assert!(err.is_err(), "method {method}: a short map is refused");
        }
    }

    /// The AVX2 fp32 kernels give the planes of the scalar split (so that files do not
    /// depend on the CPU that wrote them) and join them back.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fp32_kernels_match_the_scalar_split() {
        if !crate::float_avx2::available() {
            return;
        }
        let raw = uniform_f32(1003, false);
        let n = raw.len() / 4;
        let bits = DType::F32.float_bits().unwrap();
        for k in [0u32, 1, 2] {
            let split = Split::new(bits, k);
            let (mut heads, mut p0, mut p1, mut p2) =
                (vec![0u16; n], vec![0u8; n], vec![0u8; n], vec![0u8; n]);
            let done = unsafe {
                crate::float_avx2::split_f32(
                    &raw,
                    split.low - 16,
                    &mut heads,
                    [&mut p0[..], &mut p1[..], &mut p2[..]],
                )
            };
            assert_eq!(done, n / 8 * 8);
            if crate::float_avx512::available() {
                let mut hash = StripeHash::new(raw.len()).unwrap();
                let mut again = (vec![0u16; n], vec![0u8; n], vec![0u8; n], vec![0u8; n]);
                let planes = [&mut again.1[..], &mut again.2[..], &mut again.3[..]];
                let hashed = unsafe {
                    crate::float_avx512::split_f32(
                        &raw,
                        split.low - 16,
                        &mut again.0,
                        planes,
                        &mut hash,
                    )
                };
                assert_eq!(hashed, n / 16 * 16);
                let upto = |v: &[u8]| v[..hashed].to_vec();
                assert_eq!(again.0[..hashed], heads[..hashed], "k={k}");
                assert_eq!(
                    [upto(&again.1), upto(&again.2), upto(&again.3)],
                    [upto(&p0), upto(&p1), upto(&p2)],
                    "k={k}"
                );
                let reference = xxhash_rust::xxh3::xxh3_64(&raw);
                assert_eq!(hash.finish(&raw), Some(reference), "k={k}");
            }
            for (i, w) in raw.chunks_exact(4).take(done).enumerate() {
                let w = load::<4>(w);
                let r = split.rem(w);
                assert_eq!(heads[i], split.head(w), "k={k} i={i}");
                assert_eq!(
                    [p0[i], p1[i], p2[i]],
                    [(r >> 16) as u8, (r >> 8) as u8, r as u8]
                );
            }
            let mut out = vec![0u8; raw.len()];
            let joined = unsafe {
                crate::float_avx2::join_f32(&heads, split.low - 16, [&p0, &p1, &p2], &mut out)
            };
            assert_eq!(joined, done);
            assert_eq!(out[..4 * done], raw[..4 * done]);
            if crate::float_avx512::available() {
                let mut fused = vec![0u8; raw.len()];
                let mut hash = StripeHash::new(raw.len()).unwrap();
                let planes = [&p0[..], &p1[..], &p2[..]];
                let joined = unsafe {
                    crate::float_avx512::join_f32(
                        &heads,
                        split.low - 16,
                        planes,
                        &mut fused,
                        &mut hash,
                    )
                };
                assert_eq!(joined, n / 16 * 16);
                // The words the kernel left are the scalar join's.
                fused[4 * joined..].copy_from_slice(&raw[4 * joined..]);
                assert_eq!(fused, raw, "k={k}");
                let reference = xxhash_rust::xxh3::xxh3_64(&raw);
                assert_eq!(hash.finish(&fused), Some(reference), "k={k}");
            }
        }
        for len in [0usize, 4, 28, 32, 36, 4012] {
            roundtrip(&raw[..len], DType::F32);
        }
    }

    #[test]
    fn long_bf16_chunks_roundtrip_through_both_remainder_paths() {
        // Trained-looking weights: the remainder is near-random, so it is packed in the
        // same pass as the heads.
        let weights: Vec<u8> = xorshift(7)
            .take(200_001)
            .flat_map(|x| ((uniform_value(x).to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let size = roundtrip(&weights, DType::BF16);
        assert!(size < weights.len() * 80 / 100, "{size}");
        // Low mantissa bits that repeat: the remainder plane is entropy-coded instead.
        let rounded: Vec<u8> = weights
            .chunks_exact(2)
            .flat_map(|w| (u16::from_le_bytes([w[0], w[1]]) & 0xfff0).to_le_bytes())
            .collect();
        let size = roundtrip(&rounded, DType::BF16);
        assert!(size < rounded.len() * 60 / 100, "{size}");
    }

    /// The split's per-thread buffers are reused from chunk to chunk: chunks of other
    /// sizes, dtypes and paths on one thread, encoded and decoded interleaved, never see
    /// each other's bytes.
    #[test]
    fn chunks_on_one_thread_do_not_share_stale_scratch_bytes() {
        let long: Vec<u8> = xorshift(11)
            .take(150_000)
            .flat_map(|x| ((uniform_value(x).to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let short: Vec<u8> = xorshift(12)
            .take(70_001)
            .flat_map(|x| ((uniform_value(x).to_bits() >> 16) as u16 & 0xfff0).to_le_bytes())
            .collect();
        let fp32 = uniform_f32(90_000, false);
        let cases: [(&[u8], DType); 4] = [
            (&long, DType::BF16),
            (&fp32, DType::F32),
            (&short, DType::BF16),
            (&long[..20_002], DType::F16),
        ];
        let encoded: Vec<Vec<u8>> = cases
            .iter()
            .map(|(raw, dtype)| encode(raw, dtype.float_bits().unwrap(), dtype.size()))
            .collect();
        for ((raw, dtype), enc) in cases.iter().zip(&encoded).rev() {
            let mut out = vec![0x5au8; raw.len()];
            decode(enc, dtype.float_bits().unwrap(), dtype.size(), &mut out).unwrap();
            assert_eq!(&out[..], *raw, "{dtype}");
            // And a fresh encode of the same chunk now gives the same bytes.
            assert_eq!(&encode(raw, dtype.float_bits().unwrap(), dtype.size()), enc);
        }
    }

    #[test]
    fn split_join_is_identity_for_every_bf16_and_f16_word() {
        for dtype in [DType::BF16, DType::F16] {
            let bits = dtype.float_bits().unwrap();
            for &k in head_mantissa_choices(bits) {
                let s = Split::new(bits, k);
                for w in 0..=u16::MAX as u32 {
                    assert_eq!(s.join(s.head(w), s.rem(w)), w);
                }
            }
        }
    }

    #[test]
    fn special_values_roundtrip() {
        let f32s = [
            0.0f32,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE / 4.0,
            1.0,
            -2.5,
        ];
        let mut raw: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw.extend_from_slice(&0x7fc0_1234u32.to_le_bytes()); // NaN with payload
        raw.extend_from_slice(&0xffa0_0001u32.to_le_bytes()); // signalling NaN, sign set
        roundtrip(&raw, DType::F32);
        let halfs: Vec<u8> = [0x0000u16, 0x8000, 0x7c00, 0xfc00, 0x7e01, 0x0001, 0xffff]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        roundtrip(&halfs, DType::F16);
        roundtrip(&halfs, DType::BF16);
        roundtrip(&[], DType::BF16);
    }

    #[test]
    fn a_ten_bit_head_is_taken_only_when_it_saves_more_than_the_slack() {
        // Normal-like weights (a sum of four uniforms), as fp32 words. Their second
        // mantissa bit is barely skewed, so the 10-bit head saves well under the slack;
        // with that bit forced to zero it saves a whole bit a value.
        let mut uniform = xorshift(0x5eed).map(|x| (x >> 11) as f64 / (1u64 << 53) as f64);
        let words: Vec<u32> = (0..1 << 17)
            .map(|_| {
                let v: f64 = (0..4).map(|_| uniform.next().unwrap() - 0.5).sum();
                (v * 0.05) as f32
            })
            .map(f32::to_bits)
            .collect();
        for (dtype, second_bit, shift) in [(DType::BF16, 1u32 << 21, 16), (DType::F32, 1 << 21, 0)]
        {
            for (forced, want_k) in [(false, 1u8), (true, 2)] {
                let raw: Vec<u8> = words
                    .iter()
                    .map(|&w| if forced { w & !second_bit } else { w })
                    .flat_map(|w| {
                        let b = (w >> shift).to_le_bytes();
                        b[..dtype.size()].to_vec()
                    })
                    .collect();
                let bits = dtype.float_bits().unwrap();
                let enc = encode(&raw, bits, dtype.size());
                assert_eq!(
                    enc[0], want_k,
                    "{dtype}, second mantissa bit forced: {forced}"
                );
                roundtrip(&raw, dtype);
            }
        }
    }

    #[test]
    fn constant_chunk_is_tiny() {
        let raw = vec![0u8; 1 << 16];
        assert!(roundtrip(&raw, DType::BF16) < 64);
        assert!(roundtrip(&raw, DType::F32) < 64);
    }

    #[test]
    fn bit_packing_roundtrips() {
        for width in 1..=8u32 {
            for n in [0usize, 1, 3, 5, 31, 32, 33, 100, 255, 256, 1000, 4099] {
                let vals: Vec<u8> = (0..n)
                    .map(|i| (i as u8).wrapping_mul(37) & ((1u16 << width) - 1) as u8)
                    .collect();
                let packed = pack_bits(&vals, width);
                // The format: values LSB first, each `width` bits, zero padding.
                let mut reference = vec![0u8; (n * width as usize).div_ceil(8)];
                for (i, &v) in vals.iter().enumerate() {
                    for b in 0..width as usize {
                        let bit = i * width as usize + b;
                        reference[bit / 8] |= ((v >> b) & 1) << (bit % 8);
                    }
                }
                assert_eq!(packed, reference, "width {width}, {n} values");
                let mut out = vec![0u8; n];
                unpack_bits(&packed, width, &mut out).unwrap();
                assert_eq!(out, vals);
            }
        }
    }

    proptest! {
        #[test]
        fn any_bytes_roundtrip_bf16(raw in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let raw = &raw[..raw.len() / 2 * 2];
            roundtrip(raw, DType::BF16);
            roundtrip(raw, DType::F16);
        }

        #[test]
        fn any_bytes_roundtrip_f32(raw in proptest::collection::vec(any::<u8>(), 0..4000)) {
            roundtrip(&raw[..raw.len() / 4 * 4], DType::F32);
        }

        #[test]
        fn garbage_payload_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut out = vec![0u8; 64];
            for dtype in [DType::BF16, DType::F16, DType::F32] {
                let _ = decode(&data, dtype.float_bits().unwrap(), dtype.size(), &mut out);
            }
        }
    }
}
