//! `sub-quad` delta payloads: the zigzag difference of the bit patterns against the base,
//! four elements to a Huffman symbol.
//!
//! Most elements of a step's delta move by at most one ulp (72 % do not move at all in
//! bf16 after one AdamW step at lr 1e-4), so a Huffman code over single elements would
//! spend a whole bit on each zero. Four differences below `SMALL` (4) make one symbol, their
//! two-bit values packed; the skewed quad alphabet brings Huffman close to the order-0
//! entropy, and the decoder looks up one symbol per four elements. A quad holding a larger
//! difference is an escape: its four differences go to a second Huffman stream, each as a
//! bit length and the bits after its leading one (module `delta_bits`), with the bits
//! below those stored raw.
//!
//! This trades some size for speed against `sub-ctx` (no sign-and-exponent contexts, whole
//! bits per symbol): Huffman on both streams, because rANS alone decodes more slowly than
//! the plain float codec does a whole chunk.
//!
//! Payload: `stream quads | stream escapes | stream extra bits` (see docs/format.md). The
//! last quad of a chunk whose length is not a multiple of four is padded with zero
//! differences.
//!
//! The writer codes 16-bit floats this way. fp32 deltas are `sub-pack` since format minor
//! 3 ([`crate::delta_pack`]): every quad of an fp32 weight delta escapes, and its escape
//! symbols decoded more slowly than a plain chunk. fp32 `sub-quad` chunks of files written
//! before still decode here, and the planner still makes them for the tests of that path.

use crate::delta::{LeWord, Word};
use crate::delta_bits::{max_symbol, read_form, symbol_of, BitReader, BitWriter, READ_FORMS};
use crate::error::{corrupt, Result};
use crate::float::{
    push_huffman, push_stream, read_mapped_symbols, read_symbols, symbol_histogram, StreamReader,
    StripeHash, METHOD_CONST, METHOD_RAW,
};
use crate::huffman;
use std::cell::RefCell;

/// Elements per quad symbol.
const QUAD: usize = 4;
/// Differences below this fit a quad symbol: two bits each.
const SMALL: u32 = 4;
/// The quad symbol of a quad coded element by element in the escape stream. Symbols below
/// it pack four differences, element `j` in bits `2j..2j + 2`.
const ESCAPE: u16 = 256;
const QUAD_CARDINALITY: usize = ESCAPE as usize + 1;
const ESCAPE_CARDINALITY: usize = 256;

std::thread_local! {
    /// Symbol buffers kept between chunks on one thread: a fresh buffer of this size is a
    /// fresh mapping whose page faults cost more than filling it.
    static SPARE: RefCell<Vec<Vec<u16>>> = const { RefCell::new(Vec::new()) };
}

/// An empty symbol buffer, reused when the thread has one.
fn spare_buffer() -> Vec<u16> {
    let mut v = take_spare();
    v.clear();
    v
}

/// A reused symbol buffer with whatever it held, or a new empty one.
fn take_spare() -> Vec<u16> {
    SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default()
}

/// The first `len` entries of `v`, for a decoder to overwrite, zeroing only entries it did
/// not have: what a reused buffer held is left in place, since the symbol readers write
/// every entry or fail. `v` is never cut short, so that a short chunk between two long
/// ones does not make the next long one zero what it then grows back.
fn first_entries(v: &mut Vec<u16>, len: usize) -> &mut [u16] {
    if v.len() < len {
        v.resize(len, 0);
    }
    &mut v[..len]
}

fn return_buffer(v: Vec<u16>) {
    SPARE.with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < 2 {
            spare.push(v);
        }
    });
}

/// Keep a chunk's symbol buffers for the next chunk on this thread, the escapes' below the
/// quads': the next chunk takes its quad buffer first, and so gets each buffer back in the
/// role it had. Swapped, the escape buffer would be the shorter one and be grown (zeroed
/// when decoding, reallocated when planning) on every chunk.
fn return_buffers(quads: Vec<u16>, escapes: Vec<u16>) {
    return_buffer(escapes);
    return_buffer(quads);
}

/// What [`plan`] found: the symbols and extra bits of a chunk, and their counts.
pub struct QuadPlan {
    pub estimate: usize,
    /// The raw chunk's checksum as far as the planner took it (see [`QuadPlan::take_raw_hash`]).
    raw_hash: Option<Box<StripeHash>>,
    quads: Vec<u16>,
    quad_code: Option<huffman::Code>,
    escapes: Vec<u16>,
    escape_code: Option<huffman::Code>,
    extra: Vec<u8>,
}

/// The quad symbol of four differences, or [`ESCAPE`] after appending them to the escape
/// stream and the extra bits.
#[inline(always)]
fn quad_symbol(d: [u32; QUAD], escapes: &mut Vec<u16>, extra: &mut BitWriter) -> u16 {
    if (d[0] | d[1] | d[2] | d[3]) < SMALL {
        return (d[0] | d[1] << 2 | d[2] << 4 | d[3] << 6) as u16;
    }
    let mut symbols = [0u16; QUAD];
    for (s, v) in symbols.iter_mut().zip(d) {
        let (symbol, bits) = symbol_of(v);
        *s = symbol as u16;
        extra.put(v, bits);
    }
    escapes.extend_from_slice(&symbols);
    ESCAPE
}

/// The zigzag differences of up to four elements; those missing (in the short last quad
/// of a chunk) are zero.
#[inline(always)]
fn quad_diffs<T: Word>(t: &[u8], b: &[u8]) -> [u32; QUAD] {
    let mut d = [0u32; QUAD];
    let w = T::BYTES;
    for ((d, t), b) in d.iter_mut().zip(t.chunks_exact(w)).zip(b.chunks_exact(w)) {
        *d = T::load(t).sub_zigzag(T::load(b)).to_u64() as u32;
    }
    d
}

/// Escape symbols the vector planner may store past the end of its output.
#[cfg(target_arch = "x86_64")]
const SIMD_SLACK: usize = crate::delta_quad_avx512::BLOCK;
#[cfg(not(target_arch = "x86_64"))]
const SIMD_SLACK: usize = 0;

/// The leading whole blocks of a chunk planned with AVX-512 where the CPU has it: how many
/// elements were planned, and the extra-bit writer to continue with.
#[inline(always)]
fn plan_simd<T: Word>(
    raw: &[u8],
    base: &[u8],
    quads: &mut [u16],
    escapes: &mut Vec<u16>,
    hash: Option<&mut StripeHash>,
) -> (usize, BitWriter) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::delta_quad_avx512 as simd;
        let blocks = raw.len() / T::BYTES / simd::BLOCK;
        if blocks > 0
            && base.len() >= raw.len()
            && quads.len() >= QUAD * blocks
            && escapes.capacity() - escapes.len() >= simd::BLOCK * (blocks + 1)
            && (T::BYTES == 2 || T::BYTES == 4)
            && simd::available()
        {
            // SAFETY: the CPU has the features `available` checks; `raw` and `base` hold
            // `blocks` whole blocks, `quads` one symbol per quad of them, and `escapes`
            // room for every quad to escape plus a block (all checked above).
            let extra = unsafe {
                if T::BYTES == 4 {
                    simd::plan_blocks::<4>(raw, base, blocks, quads, escapes, ESCAPE, SMALL, hash)
                } else {
                    simd::plan_blocks::<2>(raw, base, blocks, quads, escapes, ESCAPE, SMALL, hash)
                }
            };
            return (blocks * simd::BLOCK, extra);
        }
    }
    let _ = (raw, base, quads, escapes, hash);
    (0, BitWriter::with_capacity(0))
}

/// The Huffman code of a stream with histogram `counts` (`None`: a constant stream), and
/// the stream's bytes with its 5-byte header. The code is kept for [`QuadPlan::emit`],
/// which would otherwise build it again.
fn stream_code(counts: &[u32], n: usize) -> (Option<huffman::Code>, usize) {
    let code = huffman::Code::from_counts(counts);
    let size = code.as_ref().map_or(2, |c| c.encoded_size(counts, n));
    (code, 5 + size)
}

/// The quads, escapes and extra bits of `raw` against `base` (whole elements of `T`, at
/// most 4 bytes each).
pub fn plan<T: Word>(raw: &[u8], base: &[u8]) -> QuadPlan {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("lzcnt") && std::arch::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU supports LZCNT and BMI2 (checked just above).
        return unsafe { plan_lzcnt::<T>(raw, base) };
    }
    plan_body::<T>(raw, base, true)
}

/// [`plan`] compiled for `lzcnt` (the bit length of every escaped difference) and `shrx`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "lzcnt,bmi2")]
unsafe fn plan_lzcnt<T: Word>(raw: &[u8], base: &[u8]) -> QuadPlan {
    plan_body::<T>(raw, base, true)
}

/// `simd`: the leading blocks with AVX-512 where the CPU has it (off only to test that
/// both give the same plan).
#[inline(always)]
fn plan_body<T: Word>(raw: &[u8], base: &[u8], simd: bool) -> QuadPlan {
    debug_assert!(T::BYTES <= 4, "differences are coded as 32-bit values");
    let w = T::BYTES;
    let n = raw.len() / w;
    let mut quads = spare_buffer();
    quads.resize(n.div_ceil(QUAD), 0);
    // Room for every quad to escape, so that the loop never grows the buffer (the
    // buffer comes back from the last chunk with this capacity); not zeroed, since few
    // quads escape in most chunks.
    let mut escapes = spare_buffer();
    escapes.reserve(QUAD * quads.len() + SIMD_SLACK);
    // Boxed: its vectors would align and widen every plan to 64 bytes.
    let mut raw_hash = StripeHash::new(raw.len())
        .filter(|_| T::BYTES == 4)
        .map(Box::new);
    let (done, mut extra) = if simd {
        plan_simd::<T>(raw, base, &mut quads, &mut escapes, raw_hash.as_deref_mut())
    } else {
        (0, BitWriter::with_capacity(0))
    };
    let full = n / QUAD;
    let whole = raw[done * w..full * QUAD * w]
        .chunks_exact(QUAD * w)
        .zip(base[done * w..full * QUAD * w].chunks_exact(QUAD * w));
    for (q, (t, b)) in quads[done / QUAD..].iter_mut().zip(whole) {
        *q = quad_symbol(quad_diffs::<T>(t, b), &mut escapes, &mut extra);
    }
    if let Some(last) = quads.get_mut(full) {
        let (t, b) = (&raw[full * QUAD * w..], &base[full * QUAD * w..]);
        *last = quad_symbol(quad_diffs::<T>(t, b), &mut escapes, &mut extra);
    }
    // Counted afterwards, from a sample where the stream is long: runs of the all-zero
    // quad would serialise a count taken in the loop above.
    let quad_counts = if escapes.len() == QUAD * quads.len() {
        // Every quad escaped (each escape adds four symbols, a plain quad none): the
        // constant escape, known without a pass over the quads.
        let mut counts = vec![0; QUAD_CARDINALITY];
        counts[ESCAPE as usize] = quads.len() as u32;
        counts
    } else {
        symbol_histogram(&quads, QUAD_CARDINALITY)
    };
    let escape_counts = symbol_histogram(&escapes, ESCAPE_CARDINALITY);
    let extra = extra.finish();
    let (quad_code, quad_bytes) = stream_code(&quad_counts, quads.len());
    let (escape_code, escape_bytes) = stream_code(&escape_counts, escapes.len());
    QuadPlan {
        estimate: quad_bytes + escape_bytes + 5 + extra.len(),
        raw_hash,
        quads,
        quad_code,
        escapes,
        escape_code,
        extra,
    }
}

impl QuadPlan {
    /// The raw chunk's checksum as the vector planner left it, each 64 bytes it planned
    /// taken while they were in a register; [`StripeHash::finish`] reads the rest from
    /// the chunk. `None` where the planner took none (16-bit words, short chunks, CPUs
    /// without AVX-512), or once taken.
    pub(crate) fn take_raw_hash(&mut self) -> Option<StripeHash> {
        self.raw_hash.take().map(|h| *h)
    }

    pub fn emit(self) -> Vec<u8> {
        // Room for each Huffman stream's worst case, which `encode_into` reserves before it
        // codes: sized by the estimate, the buffer was reallocated (into fresh memory, then
        // zeroed) on most chunks of fp32 weights.
        let stream_room =
            |code: Option<&huffman::Code>, n: usize| 5 + code.map_or(2, |c| c.room_needed(n));
        let room = stream_room(self.quad_code.as_ref(), self.quads.len())
            + stream_room(self.escape_code.as_ref(), self.escapes.len())
            + 5
            + self.extra.len();
        let mut out = crate::buffer_pool::payload_buffer(room);
        // Huffman whatever rANS would save: decoding speed is what this encoding is for.
        push_huffman(&mut out, &self.quads, self.quad_code.as_ref());
        push_huffman(&mut out, &self.escapes, self.escape_code.as_ref());
        push_stream(&mut out, METHOD_RAW, &self.extra);
        return_buffers(self.quads, self.escapes);
        crate::buffer_pool::recycle_payload(self.extra);
        out
    }
}

/// Four elements in one integer, added lane by lane with no carry between lanes: a quad
/// is one load, one add and one store.
trait Packed: LeWord {
    fn lanes_add(self, o: Self) -> Self;
    /// Lane `j` set to `lanes[j]` (each within the lane width).
    fn pack(lanes: [u64; QUAD]) -> Self;
    fn is_zero_from(self, lane: usize) -> bool;
}

macro_rules! packed {
    ($p:ty, $high:expr) => {
        impl Packed for $p {
            #[inline(always)]
            fn lanes_add(self, o: Self) -> Self {
                const HIGH: $p = $high;
                ((self & !HIGH) + (o & !HIGH)) ^ ((self ^ o) & HIGH)
            }
            #[inline(always)]
            fn pack(lanes: [u64; QUAD]) -> Self {
                let bits = 8 * <Self as LeWord>::BYTES / QUAD;
                lanes
                    .iter()
                    .enumerate()
                    .fold(0, |acc, (j, &v)| acc | (v as $p) << (bits * j))
            }
            fn is_zero_from(self, lane: usize) -> bool {
                let bits = 8 * <Self as LeWord>::BYTES / QUAD;
                (self >> (bits * lane)) == 0
            }
        }
    };
}

packed!(u64, 0x8000_8000_8000_8000);
packed!(u128, 0x8000_0000_8000_0000_8000_0000_8000_0000);

/// Per quad symbol: its four differences, unzigzagged, packed; zero for [`ESCAPE`].
fn quad_table<T: Word, P: Packed>() -> [P; QUAD_CARDINALITY] {
    std::array::from_fn(|q| {
        if q == ESCAPE as usize {
            return P::pack([0; QUAD]);
        }
        P::pack(std::array::from_fn(|j| {
            T::from_u64((q as u64 >> (2 * j)) & 3)
                .add_unzigzag(T::ZERO)
                .to_u64()
        }))
    })
}

/// Quads per decoding block: small enough to stay in cache between the block's passes.
const BLOCK_QUADS: usize = 2048;

/// The zigzag difference of an escape symbol in its read form `form`
/// ([`READ_FORMS`]), its extra bits taken from `bits`.
#[inline(always)]
fn escaped_diff<T: Word>(bits: &mut BitReader, form: u16) -> T {
    let (lead, extra) = read_form(form);
    T::from_u64(((lead as u64) << extra) | bits.take(extra) as u64)
}

/// The four differences of an escaped quad (symbols in read form), unzigzagged and packed.
#[inline(always)]
fn escaped_diffs<T: Word, P: Packed>(bits: &mut BitReader, e: &[u16]) -> P {
    let mut lanes = [0u64; QUAD];
    if read_form(e.iter().fold(0, |a, &f| a | f)).1 == 0 {
        // No extra bits (the usual escape of a 16-bit step: a difference below 32, its
        // own leading value).
        for (lane, &f) in lanes.iter_mut().zip(e) {
            let lead = read_form(f).0;
            *lane = T::from_u64(lead as u64).add_unzigzag(T::ZERO).to_u64();
        }
        return P::pack(lanes);
    }
    for (lane, &s) in lanes.iter_mut().zip(e) {
        *lane = escaped_diff::<T>(bits, s).add_unzigzag(T::ZERO).to_u64();
    }
    P::pack(lanes)
}

/// Add every quad of `block` from `table` (an escape adds zero) and note the escapes'
/// indices in `at` (one longer than `qs`); returns how many there are. With `base` (as
/// long as `block`), the quads are added to `base`'s and the sums written to `block`.
/// `simd`: the leading quads with AVX-512 where the CPU has it (off only to test that both
/// agree).
#[inline(never)]
fn add_plain_quads<T: Word, P: Packed>(
    block: &mut [u8],
    base: Option<&[u8]>,
    qs: &[u16],
    table: &[P; QUAD_CARDINALITY],
    at: &mut [u32],
    simd: bool,
) -> usize {
    let (start, mut found) = if simd {
        add_plain_quads_simd::<T>(block, base, qs, at)
    } else {
        (0, 0)
    };
    if let Some(base) = base {
        let (from, to) = ((start * P::BYTES).min(block.len()), block.len());
        block[from..].copy_from_slice(&base[from..to]);
    }
    for (i, (el, &q)) in block
        .chunks_exact_mut(P::BYTES)
        .zip(qs)
        .enumerate()
        .skip(start)
    {
        P::load(el)
            .lanes_add(table[(q as usize).min(ESCAPE as usize)])
            .store(el);
        if let Some(slot) = at.get_mut(found) {
            *slot = i as u32;
        }
        found += (q == ESCAPE) as usize;
    }
    found
}

/// The leading quads of [`add_plain_quads`] with AVX-512 where the CPU has it: the quads
/// done and the escapes noted.
#[inline(always)]
fn add_plain_quads_simd<T: Word>(
    block: &mut [u8],
    base: Option<&[u8]>,
    qs: &[u16],
    at: &mut [u32],
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::delta_quad_avx512::available()
        && block.len() >= QUAD * T::BYTES * qs.len()
        && base.is_none_or(|b| b.len() >= QUAD * T::BYTES * qs.len())
        && at.len() >= qs.len()
    {
        use crate::delta_quad_avx512::add_plain_quads;
        // SAFETY: the CPU has the features `available` checks; `block` and `base` hold
        // every quad of `qs` and `at` a slot per quad (checked above).
        return unsafe {
            match T::BYTES {
                2 => add_plain_quads::<2>(block, base, qs, at, ESCAPE),
                4 => add_plain_quads::<4>(block, base, qs, at, ESCAPE),
                _ => (0, 0),
            }
        };
    }
    let _ = (block, base, qs, at);
    (0, 0)
}

/// Add the escaped quads `at` (indices into `block`, with their symbols in `escapes`, in
/// read form).
/// Kept out of line with the reader in locals: inlined into the decoder, its state lived
/// on the stack and every read waited on the previous one's store.
#[inline(never)]
fn apply_escapes<T: Word, P: Packed>(
    block: &mut [u8],
    at: &[u32],
    escapes: &[u16],
    bits: &mut BitReader,
) {
    let mut reader = *bits;
    for (&i, e) in at.iter().zip(escapes.chunks_exact(QUAD)) {
        if let Some(el) = block.get_mut(i as usize * P::BYTES..(i as usize + 1) * P::BYTES) {
            P::load(el)
                .lanes_add(escaped_diffs::<T, P>(&mut reader, e))
                .store(el);
        }
    }
    *bits = reader;
}

/// The differences of `escapes` (symbols in read form, their extra bits from `bits`),
/// unzigzagged into `out` as words of `T`, which must have room for them; returns the
/// bytes written. `simd`: the leading ones with AVX-512 where the CPU has it (off only to
/// test that both agree).
fn escape_diffs<T: Word>(
    escapes: &[u16],
    bits: &mut BitReader,
    out: &mut [u8],
    simd: bool,
) -> usize {
    let w = T::BYTES;
    let done = if simd {
        escape_diffs_simd::<T>(escapes, bits, out)
    } else {
        0
    };
    let mut reader = *bits;
    for (o, &s) in out[done * w..].chunks_exact_mut(w).zip(&escapes[done..]) {
        escaped_diff::<T>(&mut reader, s)
            .add_unzigzag(T::ZERO)
            .store(o);
    }
    *bits = reader;
    escapes.len() * w
}

/// Add every quad of `qs` to `block`, or with `base` (as long as `block`) to `base`'s
/// quads, writing the sums to `block`: a plain quad from `table`, an escaped one from the
/// next four words of `diffs` (the block's escaped differences, from [`escape_diffs`], and
/// 64 bytes of slack). One pass: an escape's differences are ready when its quad is
/// reached, so no quad is stored twice. Stored 64-byte steps go to `hash` while every step
/// of the block was; returns whether it was.
fn add_quads<T: Word, P: Packed>(
    block: &mut [u8],
    base: Option<&[u8]>,
    qs: &[u16],
    table: &[P; QUAD_CARDINALITY],
    diffs: &[u8],
    hash: Option<&mut StripeHash>,
    simd: bool,
) -> bool {
    let w = T::BYTES;
    let (done, mut used) = if simd {
        add_quads_simd::<T>(block, base, qs, diffs, hash)
    } else {
        (0, 0)
    };
    for (i, &q) in qs.iter().enumerate().skip(done) {
        let at = i * P::BYTES;
        let Some(el) = block.get_mut(at..at + P::BYTES) else {
            break;
        };
        let from = match base.and_then(|b| b.get(at..at + P::BYTES)) {
            Some(b) => P::load(b),
            None => P::load(el),
        };
        let add = if q == ESCAPE {
            let lanes = std::array::from_fn(|j| {
                let k = (used + j) * w;
                diffs.get(k..k + w).map_or(0, |d| T::load(d).to_u64())
            });
            used += QUAD;
            P::pack(lanes)
        } else {
            table[(q as usize).min(ESCAPE as usize)]
        };
        from.lanes_add(add).store(el);
    }
    done == qs.len()
}

/// Add escaped quads to every quad of `elems`, in order: with every quad escaped, each
/// element takes its own symbol, so the elements are added one by one, without packing
/// each quad's four differences into lanes first. With `base` (as long as `elems`), the
/// differences are added to `base`'s elements and the sums written to `elems`. `simd`: the
/// leading elements with AVX-512 where the CPU has it (off only to test that both give the
/// same elements). The elements stored by AVX-512 go to `hash`.
#[inline(never)]
fn apply_escapes_in_order<T: Word>(
    elems: &mut [u8],
    base: Option<&[u8]>,
    escapes: &[u16],
    bits: &mut BitReader,
    hash: Option<&mut StripeHash>,
    simd: bool,
) {
    let done = if simd {
        apply_in_order_simd::<T>(elems, base, escapes, bits, hash)
    } else {
        0
    };
    if let Some(base) = base {
        let (from, to) = ((done * T::BYTES).min(elems.len()), elems.len());
        elems[from..].copy_from_slice(&base[from..to]);
    }
    let (elems, escapes) = (
        &mut elems[done * T::BYTES..],
        &escapes[done.min(escapes.len())..],
    );
    let mut reader = *bits;
    for (el, &s) in elems.chunks_exact_mut(T::BYTES).zip(escapes) {
        escaped_diff::<T>(&mut reader, s)
            .add_unzigzag(T::load(el))
            .store(el);
    }
    *bits = reader;
}

/// Whether [`add_quads`] and [`escape_diffs`] have AVX-512 kernels on this CPU.
fn merged_simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::delta_quad_avx512::apply_available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The leading differences of [`escape_diffs`] with AVX-512 where the CPU has it; returns
/// how many were written.
#[inline(always)]
fn escape_diffs_simd<T: Word>(escapes: &[u16], bits: &mut BitReader, out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::delta_quad_avx512::apply_available() {
        use crate::delta_quad_avx512::escape_diffs;
        // SAFETY: the CPU has the features `apply_available` checks.
        return unsafe {
            match T::BYTES {
                2 => escape_diffs::<2>(escapes, bits, out),
                4 => escape_diffs::<4>(escapes, bits, out),
                _ => 0,
            }
        };
    }
    let _ = (escapes, bits, out);
    0
}

/// The leading quads of [`add_quads`] with AVX-512 where the CPU has it: the quads done
/// and the differences used.
#[inline(always)]
fn add_quads_simd<T: Word>(
    block: &mut [u8],
    base: Option<&[u8]>,
    qs: &[u16],
    diffs: &[u8],
    hash: Option<&mut StripeHash>,
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if crate::delta_quad_avx512::apply_available()
        && block.len() >= QUAD * T::BYTES * qs.len()
        && base.is_none_or(|b| b.len() >= QUAD * T::BYTES * qs.len())
    {
        use crate::delta_quad_avx512::add_quads;
        // SAFETY: the CPU has the features `apply_available` checks; `block` and `base`
        // hold every quad of `qs` (checked above).
        return unsafe {
            match T::BYTES {
                2 => add_quads::<2>(block, base, qs, diffs, ESCAPE, hash),
                4 => add_quads::<4>(block, base, qs, diffs, ESCAPE, hash),
                _ => (0, 0),
            }
        };
    }
    let _ = (block, base, qs, diffs, hash);
    (0, 0)
}

/// How many of `qs` are escapes.
fn count_escapes(qs: &[u16]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::delta_quad_avx512::available() {
        // SAFETY: the CPU has the features `available` checks.
        return unsafe { crate::delta_quad_avx512::count_symbol(qs, ESCAPE) };
    }
    qs.iter().filter(|&&q| q == ESCAPE).count()
}

/// The leading elements of [`apply_escapes_in_order`] with AVX-512 where the CPU has it;
/// returns how many were applied.
#[inline(always)]
fn apply_in_order_simd<T: Word>(
    elems: &mut [u8],
    base: Option<&[u8]>,
    escapes: &[u16],
    bits: &mut BitReader,
    hash: Option<&mut StripeHash>,
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::delta_quad_avx512::apply_available() && base.is_none_or(|b| b.len() >= elems.len()) {
        use crate::delta_quad_avx512::apply_in_order;
        // SAFETY: the CPU has the features `apply_available` checks, and `base` is as long
        // as `elems` (checked above).
        return unsafe {
            match T::BYTES {
                2 => apply_in_order::<2>(elems, base, escapes, bits, hash),
                4 => apply_in_order::<4>(elems, base, escapes, bits, hash),
                _ => 0,
            }
        };
    }
    let _ = (elems, base, escapes, bits, hash);
    0
}

/// Apply a `sub-quad` payload: `inout` holds the base elements on entry and the decoded
/// elements on return.
pub fn decode<T: Word>(payload: &[u8], inout: &mut [u8]) -> Result<()> {
    decode_from::<T>(payload, None, inout).map(|_| ())
}

/// Apply a `sub-quad` payload to `base` (which must be as long as `out`, as
/// `delta::decode_onto` checks), writing the decoded elements to `out`: the base is read
/// where the differences are added, not copied first. Without `base`, [`decode`]. Returns
/// the xxh3-64 of `out` where the decoder hashed the elements as it stored them.
pub(crate) fn decode_from<T: Word>(
    payload: &[u8],
    base: Option<&[u8]>,
    out: &mut [u8],
) -> Result<Option<u64>> {
    debug_assert!(base.is_none_or(|b| b.len() == out.len()));
    let n = out.len() / T::BYTES;
    let mut quads = take_spare();
    let mut escapes = take_spare();
    let symbols = first_entries(&mut quads, n.div_ceil(QUAD));
    let mut hash = StripeHash::new(out.len());
    let result = match T::BYTES {
        2 => decode_with::<T, u64>(payload, base, out, symbols, &mut escapes, hash.as_mut()),
        4 => decode_with::<T, u128>(payload, base, out, symbols, &mut escapes, hash.as_mut()),
        w => Err(corrupt(format!("sub-quad on {w}-byte elements"))),
    };
    return_buffers(quads, escapes);
    result.map(|()| hash.and_then(|h| h.finish(out)))
}

fn decode_with<T: Word, P: Packed>(
    payload: &[u8],
    base: Option<&[u8]>,
    inout: &mut [u8],
    quads: &mut [u16],
    escapes: &mut Vec<u16>,
    mut hash: Option<&mut StripeHash>,
) -> Result<()> {
    debug_assert_eq!(P::BYTES, QUAD * T::BYTES);
    let w = T::BYTES;
    let mut rd = StreamReader::new(payload);
    let quad_stream = rd.stream()?;
    // A chunk whose every quad escaped (fp32 weights against a base many steps back) has
    // the constant escape for its quad stream: nothing to expand into `quads` or count.
    let all_escape = quad_stream == (METHOD_CONST, &ESCAPE.to_le_bytes()[..]);
    let escaped = if all_escape {
        quads.len()
    } else {
        read_symbols(quad_stream, quads, QUAD_CARDINALITY, "delta quad")?;
        count_escapes(quads)
    };
    let escapes = first_entries(escapes, QUAD * escaped);
    let cardinality = max_symbol(8 * w as u32) as usize + 1;
    // In read form, mapped by the Huffman decoder's table.
    read_mapped_symbols(
        rd.stream()?,
        escapes,
        cardinality,
        Some(&READ_FORMS),
        "delta escape",
    )?;
    let (method, extra) = rd.stream()?;
    if method != METHOD_RAW {
        return Err(corrupt(format!("delta extra bits with method {method}")));
    }
    rd.finish()?;

    let table = quad_table::<T, P>();
    let mut bits = BitReader::new(extra);
    let mut escapes: &[u16] = escapes;
    let full = inout.len() / P::BYTES * P::BYTES;
    let block_bytes = BLOCK_QUADS * P::BYTES;
    let blocks = inout[..full]
        .chunks_mut(block_bytes)
        .zip(quads.chunks(BLOCK_QUADS))
        .enumerate();
    if escaped == quads.len() {
        // Every quad escaped (wide differences, as in fp32): no plain pass.
        let (these, rest) = escapes.split_at((full / P::BYTES * QUAD).min(escapes.len()));
        let base = base.map(|b| &b[..full]);
        apply_escapes_in_order::<T>(&mut inout[..full], base, these, &mut bits, hash, true);
        escapes = rest;
    } else if merged_simd_available() {
        // Per block of quads: its escaped differences into `diffs`, then one pass that adds
        // every quad, plain or escaped, and hashes what it stores.
        let mut diffs = vec![0u8; block_bytes + 64];
        for (k, (block, qs)) in blocks {
            let start = k * block_bytes;
            let base = base.map(|b| &b[start..start + block.len()]);
            // The last block's symbols run on to the short quad after `full`.
            let qs = &qs[..block.len() / P::BYTES];
            let found = count_escapes(qs);
            let (these, rest) = escapes.split_at((QUAD * found).min(escapes.len()));
            let filled = escape_diffs::<T>(these, &mut bits, &mut diffs, true);
            let diffs = &diffs[..filled + 64];
            if !add_quads::<T, P>(block, base, qs, &table, diffs, hash.as_deref_mut(), true) {
                // The stripes hashed must be the chunk's first ones: the rest is read back.
                hash = None;
            }
            escapes = rest;
        }
    } else {
        // Per block of quads, two passes: every plain quad from the table without a branch
        // (an escape adds zero and is noted), then the block's escaped quads. Escapes are
        // unpredictable, and a branch on them costs more than the second pass, which finds
        // the block still in cache.
        let mut at = [0u32; BLOCK_QUADS + 1];
        for (k, (block, qs)) in blocks {
            let start = k * block_bytes;
            let base = base.map(|b| &b[start..start + block.len()]);
            let found = add_plain_quads::<T, P>(block, base, qs, &table, &mut at, true);
            let (these, rest) = escapes.split_at((QUAD * found).min(escapes.len()));
            apply_escapes::<T, P>(block, &at[..found], these, &mut bits);
            escapes = rest;
        }
    }
    if full < inout.len() {
        if let Some(base) = base {
            inout[full..].copy_from_slice(&base[full..]);
        }
        let q = if all_escape {
            ESCAPE
        } else {
            quads[quads.len() - 1]
        };
        let add = if q == ESCAPE {
            escaped_diffs::<T, P>(&mut bits, &escapes[..QUAD.min(escapes.len())])
        } else {
            table[q as usize]
        };
        let tail = &mut inout[full..];
        if !add.is_zero_from(tail.len() / w) {
            return Err(corrupt("sub-quad padding of the last quad is not zero"));
        }
        let mut padded = [0u8; 16];
        padded[..tail.len()].copy_from_slice(tail);
        let sum = P::load(&padded[..P::BYTES]).lanes_add(add);
        sum.store(&mut padded[..P::BYTES]);
        let len = tail.len();
        tail.copy_from_slice(&padded[..len]);
    }
    bits.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Base and target words of width `W` where most elements move by at most one ulp and
    /// every seventh by a lot, so that plain quads and escapes mix.
    fn pair<const W: usize>(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut x = seed;
        let mut base = Vec::new();
        let mut raw = Vec::new();
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let b = x >> 20;
            let step = if i % 7 == 3 { x >> 40 } else { (x >> 60) % 3 };
            base.extend_from_slice(&b.to_le_bytes()[..W]);
            raw.extend_from_slice(&b.wrapping_sub(step).to_le_bytes()[..W]);
        }
        (base, raw)
    }

    fn encode<T: Word>(raw: &[u8], base: &[u8]) -> Vec<u8> {
        plan::<T>(raw, base).emit()
    }

    /// Decoded in place and onto a base held apart, into a buffer of other bytes.
    fn roundtrip<T: Word>(raw: &[u8], base: &[u8]) {
        let payload = encode::<T>(raw, base);
        let mut out = base.to_vec();
        decode::<T>(&payload, &mut out).unwrap();
        assert_eq!(out, raw);
        let mut out = vec![0xa5; base.len()];
        decode_from::<T>(&payload, Some(base), &mut out).unwrap();
        assert_eq!(out, raw, "onto a base held apart");
    }

    #[test]
    fn every_tail_length_roundtrips() {
        for n in 0..=13 {
            let (base, raw) = pair::<2>(n, n as u64);
            roundtrip::<u16>(&raw, &base);
            let (base, raw) = pair::<4>(n, n as u64);
            roundtrip::<u32>(&raw, &base);
        }
        // Long enough for several decoding blocks and the segmented Huffman streams.
        let (base, raw) = pair::<2>(3 * BLOCK_QUADS * QUAD + 5, 1);
        roundtrip::<u16>(&raw, &base);
        let (base, raw) = pair::<4>(3 * BLOCK_QUADS * QUAD + 5, 2);
        roundtrip::<u32>(&raw, &base);
    }

    /// A xorshift64 sequence (`seed` not zero): test data that is the same on every run.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// Random bytes holding exactly the extra bits that `escapes` (in read form) take.
    fn extra_bits_for(escapes: &[u16], next: &mut impl FnMut() -> u64) -> Vec<u8> {
        let bits: usize = escapes.iter().map(|&f| read_form(f).1 as usize).sum();
        (0..bits.div_ceil(8)).map(|_| next() as u8).collect()
    }

    /// The vector planner must give the scalar one's plan exactly: files hold it.
    #[test]
    fn vector_and_scalar_plans_are_identical() {
        fn check<T: Word>(raw: &[u8], base: &[u8], what: &str) {
            let (v, s) = (
                plan_body::<T>(raw, base, true),
                plan_body::<T>(raw, base, false),
            );
            assert_eq!(v.quads, s.quads, "{what}: quads");
            assert_eq!(v.escapes, s.escapes, "{what}: escapes");
            assert_eq!(v.extra, s.extra, "{what}: extra bits");
            assert_eq!(v.estimate, s.estimate, "{what}");
        }
        /// `check` on the words as 32-bit elements and on their low halves as 16-bit ones.
        fn check_both(new: &[u32], base: &[u32], what: &str) {
            let bytes = |v: &[u32]| v.iter().flat_map(|w| w.to_le_bytes()).collect::<Vec<u8>>();
            let halves = |v: &[u32]| {
                v.iter()
                    .flat_map(|&w| (w as u16).to_le_bytes())
                    .collect::<Vec<u8>>()
            };
            check::<u32>(&bytes(new), &bytes(base), &format!("u32 {what}"));
            check::<u16>(&halves(new), &halves(base), &format!("u16 {what}"));
        }
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        // Differences of every size class: mostly small, some escaping quads, some
        // moved by up to the whole word.
        for n in [0usize, 1, 15, 16, 17, 63, 64, 65, 1000, 4099] {
            for spread in [0u32, 2, 3, 6, 12, 20, 31] {
                let base: Vec<u32> = (0..n).map(|_| next() as u32).collect();
                let new: Vec<u32> = base
                    .iter()
                    .map(|&b| {
                        let r = next();
                        let mag = if r & 7 == 0 {
                            (r >> 8) as u32 >> (31 - spread.min(31))
                        } else {
                            (r >> 40) as u32 & 1
                        };
                        if r & 8 == 0 {
                            b.wrapping_add(mag)
                        } else {
                            b.wrapping_sub(mag)
                        }
                    })
                    .collect();
                check_both(&new, &base, &format!("n={n} spread={spread}"));
            }
        }
        // Every element moved by a full-width amount, both directions.
        let base: Vec<u8> = (0..4099u32).flat_map(|i| (i << 20).to_le_bytes()).collect();
        let raw: Vec<u8> = (0..4099u32)
            .flat_map(|i| (u32::MAX - (i << 21)).to_le_bytes())
            .collect();
        check::<u32>(&raw, &base, "u32 full width");
        // Every element escaped, by amounts of random bit lengths: steps whose pairs of
        // extra bits are all wide enough to be scattered, beside steps with a narrow pair,
        // and steps with only some escaped, in one stream.
        for (n, shortest) in [(4099usize, 0u32), (4099, 6), (4099, 14), (1000, 20)] {
            let base: Vec<u32> = (0..n).map(|_| next() as u32).collect();
            let new: Vec<u32> = base
                .iter()
                .map(|&b| {
                    let r = next();
                    let mag = if r.is_multiple_of(97) {
                        (r >> 40) as u32 & 1
                    } else {
                        (r >> 8) as u32 >> (r as u32 % (32 - shortest))
                    };
                    b.wrapping_add(mag)
                })
                .collect();
            check_both(
                &new,
                &base,
                &format!("every element escaped, n={n}, shortest={shortest}"),
            );
        }
    }

    /// The raw checksum the vector planner takes on the way is the chunk's xxh3-64, for
    /// every length class of the hash, with all, some or no quads escaped.
    #[test]
    fn the_planners_raw_hash_is_the_chunks_checksum() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for len in crate::chunk::tests::xxh3_length_classes().map(|l| l / 4 * 4) {
            let base: Vec<u32> = (0..len / 4).map(|_| next() as u32).collect();
            for moved in [0u64, 3, 8] {
                let new: Vec<u8> = base
                    .iter()
                    .flat_map(|&b| {
                        let r = next();
                        let step = if r % 8 < moved { (r >> 32) as u32 } else { 0 };
                        b.wrapping_add(step).to_le_bytes()
                    })
                    .collect();
                let old: Vec<u8> = base.iter().flat_map(|b| b.to_le_bytes()).collect();
                let mut planned = plan::<u32>(&new, &old);
                if let Some(hash) = planned.take_raw_hash() {
                    assert_eq!(
                        hash.finish(&new),
                        Some(xxhash_rust::xxh3::xxh3_64(&new)),
                        "{len} bytes, {moved} in 8 moved"
                    );
                }
            }
        }
    }

    /// What a decoder under test starts from: the base in place, or other bytes with the
    /// base held apart (then also returned, to pass along).
    fn start_of(base: &[u8], apart: bool) -> (Vec<u8>, Option<&[u8]>) {
        if apart {
            (vec![0xa5; base.len()], Some(base))
        } else {
            (base.to_vec(), None)
        }
    }

    /// The vector decoder of all-escape chunks must add what the scalar one adds and leave
    /// the bit stream at the same place, for every symbol of both widths.
    #[test]
    fn vector_and_scalar_in_order_escapes_agree() {
        fn check<T: Word>(n: usize, seed: u64) {
            let cardinality = max_symbol(8 * T::BYTES as u32) + 1;
            let mut next = xorshift(seed);
            let escapes: Vec<u16> = (0..n)
                .map(|i| match i % 5 {
                    0 => (next() % cardinality as u64) as u16,
                    1 => (cardinality - 1 - (next() % 8) as u32) as u16,
                    _ => (next() % 40) as u16,
                })
                .map(|s| READ_FORMS[s as usize])
                .collect();
            let stream = extra_bits_for(&escapes, &mut next);
            let base: Vec<u8> = (0..n * T::BYTES).map(|_| next() as u8).collect();
            let run = |simd: bool, apart: bool| {
                let (mut elems, from) = start_of(&base, apart);
                let mut bits = BitReader::new(&stream);
                apply_escapes_in_order::<T>(&mut elems, from, &escapes, &mut bits, None, simd);
                (elems, bits.parts().1)
            };
            let want = run(false, false);
            for (simd, apart) in [(true, false), (true, true), (false, true)] {
                assert_eq!(
                    run(simd, apart),
                    want,
                    "{}-byte words, {n} elements, simd {simd}, base apart {apart}",
                    T::BYTES
                );
            }
        }
        for n in [0, 15, 16, 17, 31, 32, 33, 65, 100, 1000, 4099] {
            check::<u16>(n, n as u64 + 1);
            check::<u32>(n, n as u64 + 2);
        }
    }

    /// A block of mixed quads decoded in one pass (its escaped differences first, vector or
    /// scalar) must give what the two-pass scalar decoder gives, and leave the bit stream
    /// at the same place.
    #[test]
    fn one_pass_and_two_pass_blocks_agree() {
        fn check<T: Word, P: Packed>(quads: usize, seed: u64) {
            let cardinality = max_symbol(8 * T::BYTES as u32) + 1;
            let mut next = xorshift(seed);
            let qs: Vec<u16> = (0..quads)
                .map(|_| match next() % 3 {
                    0 => ESCAPE,
                    _ => (next() % 256) as u16,
                })
                .collect();
            let found = qs.iter().filter(|&&q| q == ESCAPE).count();
            let escapes: Vec<u16> = (0..QUAD * found)
                .map(|i| match i % 3 {
                    0 => (next() % cardinality as u64) as u16,
                    _ => (next() % 40) as u16,
                })
                .map(|s| READ_FORMS[s as usize])
                .collect();
            let stream = extra_bits_for(&escapes, &mut next);
            let base: Vec<u8> = (0..quads * P::BYTES).map(|_| next() as u8).collect();
            let table = quad_table::<T, P>();
            let two_pass = || {
                let mut block = base.clone();
                let mut bits = BitReader::new(&stream);
                let mut at = vec![0u32; quads + 1];
                let n = add_plain_quads::<T, P>(&mut block, None, &qs, &table, &mut at, false);
                apply_escapes::<T, P>(&mut block, &at[..n], &escapes, &mut bits);
                (block, bits.parts().1)
            };
            let one_pass = |simd: bool, apart: bool| {
                let (mut block, from) = start_of(&base, apart);
                let mut bits = BitReader::new(&stream);
                let mut diffs = vec![0x5a; QUAD * T::BYTES * found + 64];
                let filled = escape_diffs::<T>(&escapes, &mut bits, &mut diffs, simd);
                assert_eq!(filled, escapes.len() * T::BYTES);
                add_quads::<T, P>(&mut block, from, &qs, &table, &diffs, None, simd);
                (block, bits.parts().1)
            };
            let want = two_pass();
            for (simd, apart) in [(true, false), (true, true), (false, false), (false, true)] {
                assert_eq!(
                    one_pass(simd, apart),
                    want,
                    "{}-byte words, {quads} quads, simd {simd}, base apart {apart}",
                    T::BYTES
                );
            }
        }
        for quads in [0, 3, 4, 7, 8, 13, 64, 1024, 2048] {
            check::<u16, u64>(quads, quads as u64 + 3);
            check::<u32, u128>(quads, quads as u64 + 4);
        }
    }

    /// The checksum a decoder takes on the way must be xxh3-64 of what it decoded, in the
    /// one-pass blocks and the all-escape path, whatever the length's remainder.
    #[test]
    fn decoded_hash_is_reference_xxh3() {
        for (n, all_escape) in [
            (64, false),
            (241, false),
            (4096, false),
            (3 * BLOCK_QUADS * QUAD + 5, false),
            (2 * BLOCK_QUADS * QUAD, false),
            (4099, true),
            (3 * BLOCK_QUADS * QUAD + 37, true),
        ] {
            // `all_escape`: every element moves far, so every quad escapes.
            let (base, raw) = if all_escape {
                let base: Vec<u8> = (0..n as u32)
                    .flat_map(|i| (i << 20).to_le_bytes())
                    .collect();
                let raw = (0..n as u32)
                    .flat_map(|i| (u32::MAX - (i << 21)).to_le_bytes())
                    .collect();
                (base, raw)
            } else {
                pair::<4>(n, n as u64)
            };
            let payload = encode::<u32>(&raw, &base);
            let mut out = vec![0u8; base.len()];
            let hash = decode_from::<u32>(&payload, Some(&base), &mut out).unwrap();
            assert_eq!(out, raw);
            if let Some(hash) = hash {
                assert_eq!(hash, xxhash_rust::xxh3::xxh3_64(&raw), "{n} u32 elements");
            }
            let (base, raw) = if all_escape {
                let base: Vec<u16> = (0..2 * n as u16).map(|i| i.wrapping_mul(40503)).collect();
                let raw = base
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b.wrapping_add(1000 + i as u16 % 7));
                (
                    base.iter()
                        .flat_map(|b| b.to_le_bytes())
                        .collect::<Vec<u8>>(),
                    raw.flat_map(u16::to_le_bytes).collect::<Vec<u8>>(),
                )
            } else {
                pair::<2>(2 * n, n as u64 + 1)
            };
            let payload = encode::<u16>(&raw, &base);
            let mut out = base.clone();
            let hash = decode_from::<u16>(&payload, None, &mut out).unwrap();
            assert_eq!(out, raw);
            if let Some(hash) = hash {
                assert_eq!(hash, xxhash_rust::xxh3::xxh3_64(&raw), "{n} u16 elements");
            }
        }
    }

    /// And for the plain quads of a block, escapes noted in order.
    #[test]
    fn vector_and_scalar_plain_quads_agree() {
        fn check<T: Word, P: Packed>(quads: usize, seed: u64) {
            let mut next = xorshift(seed);
            let qs: Vec<u16> = (0..quads)
                .map(|_| match next() % 4 {
                    0 => ESCAPE,
                    _ => (next() % 256) as u16,
                })
                .collect();
            let base: Vec<u8> = (0..quads * P::BYTES).map(|_| next() as u8).collect();
            let table = quad_table::<T, P>();
            let run = |simd: bool, apart: bool| {
                let (mut block, from) = start_of(&base, apart);
                let mut at = vec![0u32; quads + 1];
                let found = add_plain_quads::<T, P>(&mut block, from, &qs, &table, &mut at, simd);
                at.truncate(found);
                (block, at)
            };
            let want = run(false, false);
            for (simd, apart) in [(true, false), (true, true), (false, true)] {
                assert_eq!(
                    run(simd, apart),
                    want,
                    "{}-byte words, {quads} quads, simd {simd}, base apart {apart}",
                    T::BYTES
                );
            }
        }
        for quads in [0, 3, 4, 7, 8, 9, 100, 2048] {
            check::<u16, u64>(quads, quads as u64 + 5);
            check::<u32, u128>(quads, quads as u64 + 6);
        }
    }

    #[test]
    fn chunks_where_every_quad_escapes_roundtrip() {
        let base: Vec<u8> = (0..4099u32).flat_map(|i| (i << 20).to_le_bytes()).collect();
        let raw: Vec<u8> = (0..4099u32)
            .flat_map(|i| ((i << 20) ^ 0x0f0f_0f00).to_le_bytes())
            .collect();
        roundtrip::<u32>(&raw, &base);
    }

    #[test]
    fn nonzero_padding_of_the_last_quad_is_refused() {
        // Eight elements, the last moved: decoded as seven, that move is padding.
        let base = vec![0u8; 16];
        let mut raw = base.clone();
        raw[14] = 1;
        let payload = encode::<u16>(&raw, &base);
        let mut out = base[..14].to_vec();
        let err = decode::<u16>(&payload, &mut out).unwrap_err();
        assert!(err.to_string().contains("padding"), "{err}");
        // The same where every quad escapes (the quad stream a constant escape, which the
        // decoder does not expand): eight fp32 words, each moved by a lot.
        let base: Vec<u8> = (0..8u32).flat_map(|i| (i << 20).to_le_bytes()).collect();
        let raw: Vec<u8> = (0..8u32)
            .flat_map(|i| ((i << 20) ^ 0x0f0f_0f00).to_le_bytes())
            .collect();
        let payload = encode::<u32>(&raw, &base);
        assert_eq!(payload[..7], [METHOD_CONST, 2, 0, 0, 0, 0, 1]);
        let mut out = vec![0xa5; 28];
        let err = decode_from::<u32>(&payload, Some(&base[..28]), &mut out).unwrap_err();
        assert!(err.to_string().contains("padding"), "{err}");
        let mut out = vec![0xa5; 32];
        decode_from::<u32>(&payload, Some(&base), &mut out).unwrap();
        assert_eq!(out, raw);
    }

    #[test]
    fn damaged_payloads_fail_cleanly() {
        let (base, raw) = pair::<2>(3000, 9);
        let payload = encode::<u16>(&raw, &base);
        for cut in 0..payload.len() {
            let mut out = base.clone();
            assert!(
                decode::<u16>(&payload[..cut], &mut out).is_err(),
                "cut {cut}"
            );
        }
        let mut caught = 0;
        for at in (0..payload.len()).step_by(3) {
            let mut bad = payload.clone();
            bad[at] ^= 0x24;
            let mut out = base.clone();
            if decode::<u16>(&bad, &mut out).is_err() || out != raw {
                caught += 1;
            }
        }
        assert!(caught > 0);
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode::<u16>(&longer, &mut base.clone()).is_err());
    }
}
