//! Static order-0 rANS entropy coder.
//!
//! 32 interleaved lanes (symbol `i` belongs to lane `i % 32`) so that the decoder has 32
//! independent dependency chains; 32-bit states renormalised 16 bits at a time; probabilities
//! quantised to 12 bits. The frequency table travels with the stream.
//!
//! Stream layout (little-endian):
//! ```text
//! u16 nsym | nsym x (u16 symbol, u16 freq) | 32 x u32 initial decoder state | u16 words ...
//! ```
//! Every lane ends at the state `RANS_L` after the last symbol; the decoder checks this and
//! that every word was consumed, which catches most corruption on its own.

use crate::error::{corrupt, Result};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

pub const PROB_BITS: u32 = 12;
pub const PROB_SCALE: u32 = 1 << PROB_BITS;
pub const LANES: usize = 32;
pub(crate) const RANS_L: u32 = 1 << 16;
const SLOT_MASK: u32 = PROB_SCALE - 1;
/// Streams shorter than this decode with the scalar loop (the SIMD tables cost more to build).
#[cfg(target_arch = "x86_64")]
const SIMD_FROM_SYMBOLS: usize = 16 * 1024;
/// Most distinct symbols a table may hold; keeps tables small and quantisation sane.
pub const MAX_ALPHABET: usize = 1024;

/// A symbol type the coder can carry (`u8` planes and `u16` exponent+mantissa heads).
pub trait Symbol: Copy + Default + Send + Sync + 'static {
    /// One past the largest value.
    const CARDINALITY: usize;
    fn index(self) -> usize;
    fn from_index(v: u16) -> Self;

    /// Bits of one symbol as Huffman runs store it.
    const BITS: usize = 8 * std::mem::size_of::<Self>();
    /// Most symbols one Huffman table lookup yields: as many as 48 bits hold (six `u8`,
    /// three `u16`), which leaves a table entry room for its bit and symbol counts.
    const PER_LOOKUP: usize = 48 / Self::BITS;
    /// Elements one [`Symbol::write_run`] store covers: eight bytes' worth.
    const PER_STORE: usize = 64 / Self::BITS;

    /// Symbol `s` in place `i` of a run as [`Symbol::write_run`] stores it (the first
    /// symbol in the low bits); a run is these or-ed together.
    #[inline(always)]
    fn run_place(s: u16, i: usize) -> u64 {
        (s as u64 & ((1u64 << Self::BITS) - 1)) << (i * Self::BITS)
    }

    /// Store the eight bytes of `run` (made with [`Symbol::run_place`], perhaps with more
    /// bits above its symbols) as [`Symbol::PER_STORE`] elements from `at` on, with one
    /// unaligned store. The caller advances past only the symbols the run holds and
    /// overwrites the rest with the next run.
    ///
    /// # Safety
    /// `at` must be valid for writes of `PER_STORE` elements.
    #[inline(always)]
    unsafe fn write_run(at: *mut Self, run: u64) {
        if cfg!(target_endian = "little") {
            // SAFETY: the caller guarantees `PER_STORE` writable elements: eight bytes.
            unsafe { at.cast::<u64>().write_unaligned(run) }
        } else {
            for i in 0..Self::PER_STORE {
                let v = (run >> (i * Self::BITS)) as u16;
                // SAFETY: `i < PER_STORE`, which the caller guarantees writable.
                unsafe { at.add(i).write(Self::from_index(v)) }
            }
        }
    }
}

impl Symbol for u8 {
    const CARDINALITY: usize = 256;
    #[inline(always)]
    fn index(self) -> usize {
        self as usize
    }
    #[inline(always)]
    fn from_index(v: u16) -> Self {
        v as u8
    }
}

impl Symbol for u16 {
    const CARDINALITY: usize = 65536;
    #[inline(always)]
    fn index(self) -> usize {
        self as usize
    }
    #[inline(always)]
    fn from_index(v: u16) -> Self {
        v
    }
}

/// Counts of each symbol value, indexed by value, `len` up to the largest value present + 1.
pub fn histogram<T: Symbol>(syms: &[T], cardinality: usize) -> Vec<u32> {
    histogram_by(syms.iter().map(|s| s.index()), cardinality)
}

/// Counts of `values` (each below `cardinality`). Consecutive values go to four
/// sub-histograms in turn, which breaks the store-to-load dependency that runs of equal
/// values (exponents of a trained tensor, bytes of a delta) would otherwise serialise on.
pub fn histogram_by(mut values: impl Iterator<Item = usize>, cardinality: usize) -> Vec<u32> {
    let mut h = vec![[0u32; 4]; cardinality];
    'all: while let Some(v) = values.next() {
        h[v][0] += 1;
        for lane in 1..4 {
            let Some(v) = values.next() else {
                break 'all;
            };
            let bin: &mut [u32; 4] = &mut h[v];
            bin[lane] += 1;
        }
    }
    h.iter().map(|c| c[0] + c[1] + c[2] + c[3]).collect()
}

/// Empirical order-0 entropy of `counts`, in bits for the whole sequence.
pub fn entropy_bits(counts: &[u32]) -> f64 {
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    if total == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let c = c as f64;
            -c * (c / total).log2()
        })
        .sum()
}

/// Estimated encoded size in bytes: entropy, quantisation slack, table and lane states.
pub fn estimated_size(counts: &[u32]) -> usize {
    let present = counts.iter().filter(|&&c| c > 0).count();
    let payload = entropy_bits(counts) * 1.002 / 8.0;
    payload as usize + 2 + 4 * present + 4 * LANES + 2
}

/// Quantised frequencies: present symbols in increasing order, frequencies summing to 2^12.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreqTable {
    pub symbols: Vec<u16>,
    pub freqs: Vec<u16>,
}

#[derive(PartialEq)]
struct Candidate {
    score: f64,
    at: usize,
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.at.cmp(&self.at))
    }
}

impl FreqTable {
    /// Quantise `counts` to frequencies that sum to `PROB_SCALE`, each present symbol at least 1,
    /// minimising the coded size greedily. `None` when fewer than 2 or more than
    /// `MAX_ALPHABET` symbols are present.
    pub fn from_counts(counts: &[u32]) -> Option<FreqTable> {
        let present: Vec<(u16, u64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(s, &c)| (s as u16, c as u64))
            .collect();
        if present.len() < 2 || present.len() > MAX_ALPHABET || counts.len() > 65536 {
            return None;
        }
        let total: u64 = present.iter().map(|p| p.1).sum();
        let scale = PROB_SCALE as u64;
        let mut freqs: Vec<u32> = present
            .iter()
            .map(|&(_, c)| ((c * scale) / total).max(1) as u32)
            .collect();
        let mut sum: i64 = freqs.iter().map(|&f| f as i64).sum();
        let target = PROB_SCALE as i64;
        // Cost change of moving one unit: count * log2(f'/f). Greedy by best marginal gain.
        if sum < target {
            let gain = |c: u64, f: u32| c as f64 * ((f as f64 + 1.0) / f as f64).log2();
            let mut heap: BinaryHeap<Candidate> = present
                .iter()
                .enumerate()
                .map(|(i, p)| Candidate {
                    score: gain(p.1, freqs[i]),
                    at: i,
                })
                .collect();
            while sum < target {
                let top = heap.pop()?;
                freqs[top.at] += 1;
                sum += 1;
                heap.push(Candidate {
                    score: gain(present[top.at].1, freqs[top.at]),
                    at: top.at,
                });
            }
        } else if sum > target {
            // Max-heap on negative loss = min loss first.
            let loss = |c: u64, f: u32| -(c as f64 * (f as f64 / (f as f64 - 1.0)).log2());
            let mut heap: BinaryHeap<Candidate> = present
                .iter()
                .enumerate()
                .filter(|(i, _)| freqs[*i] > 1)
                .map(|(i, p)| Candidate {
                    score: loss(p.1, freqs[i]),
                    at: i,
                })
                .collect();
            while sum > target {
                let top = heap.pop()?;
                freqs[top.at] -= 1;
                sum -= 1;
                if freqs[top.at] > 1 {
                    heap.push(Candidate {
                        score: loss(present[top.at].1, freqs[top.at]),
                        at: top.at,
                    });
                }
            }
        }
        Some(FreqTable {
            symbols: present.iter().map(|p| p.0).collect(),
            freqs: freqs.iter().map(|&f| f as u16).collect(),
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.symbols.len() as u16).to_le_bytes());
        for (s, f) in self.symbols.iter().zip(&self.freqs) {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&f.to_le_bytes());
        }
    }

    /// Parse and validate a table; returns it and the number of bytes read.
    fn read(data: &[u8], cardinality: usize) -> Result<(FreqTable, usize)> {
        let n = read_u16(data, 0).ok_or_else(|| corrupt("rANS table truncated"))? as usize;
        if !(2..=MAX_ALPHABET).contains(&n) {
            return Err(corrupt(format!("rANS table has {n} symbols")));
        }
        let end = 2 + 4 * n;
        if data.len() < end {
            return Err(corrupt("rANS table truncated"));
        }
        let mut symbols = Vec::with_capacity(n);
        let mut freqs = Vec::with_capacity(n);
        let mut sum = 0u32;
        for i in 0..n {
            let s = read_u16(data, 2 + 4 * i).unwrap_or(0);
            let f = read_u16(data, 4 + 4 * i).unwrap_or(0);
            if (s as usize) >= cardinality {
                return Err(corrupt(format!("rANS symbol {s} out of range")));
            }
            if let Some(&prev) = symbols.last() {
                if s <= prev {
                    return Err(corrupt("rANS table symbols not increasing"));
                }
            }
            if f == 0 || f as u32 >= PROB_SCALE {
                return Err(corrupt(format!("rANS frequency {f} invalid")));
            }
            sum += f as u32;
            symbols.push(s);
            freqs.push(f);
        }
        if sum != PROB_SCALE {
            return Err(corrupt(format!(
                "rANS frequencies sum to {sum}, not {PROB_SCALE}"
            )));
        }
        Ok((FreqTable { symbols, freqs }, end))
    }
}

#[inline(always)]
fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

#[inline(always)]
fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Per-symbol encoder constants. Division by the frequency is a multiplication by its
/// inverse in f64, exact for every 32-bit state (see [`EncSymbol::quotient`]).
#[derive(Clone, Copy, Default)]
struct EncSymbol {
    x_max: u32,
    cum: u32,
    complement: u32,
    inverse: f64,
}

/// Added to x / freq before truncation; see [`EncSymbol::quotient`].
const QUOTIENT_BIAS: f64 = 1.0 / (1u32 << 14) as f64;

impl EncSymbol {
    fn new(cum: u32, freq: u32) -> Self {
        EncSymbol {
            x_max: ((RANS_L >> PROB_BITS) << 16) * freq,
            cum,
            complement: PROB_SCALE - freq,
            inverse: 1.0 / freq as f64,
        }
    }

    /// `x / freq`, exactly: x < 2^32 and freq < 2^12, so x * (1/freq) in f64 is within
    /// 2^-20 of x / freq, whose fraction lies in [0, 1 - 2^-12]; adding 2^-14 before
    /// truncating keeps every quotient exact (`quotient_is_exact` checks it).
    #[inline(always)]
    fn quotient(&self, x: u32) -> u32 {
        (x as f64 * self.inverse + QUOTIENT_BIAS) as u32
    }

    /// Encode one symbol into state `x`, writing a renormalisation word to `out[*pos]`
    /// unconditionally and keeping it only when needed (no unpredictable branch).
    #[inline(always)]
    fn put(&self, x: u32, out: &mut [u16], pos: &mut usize) -> u32 {
        let emit = (x >= self.x_max) as u32;
        out[*pos] = x as u16;
        *pos += emit as usize;
        // Arithmetic, not a branch: emission is unpredictable.
        let x = x >> (16 * emit);
        let q = self.quotient(x);
        // x + cum + q * (M - f) == (q << 12) + (x mod f) + cum, below 2^32 by construction.
        x + self.cum + q * self.complement
    }
}

/// Encode `syms` with `table` (which must cover every symbol in `syms`).
pub fn encode<T: Symbol>(syms: &[T], table: &FreqTable) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(syms, table, &mut out);
    out
}

std::thread_local! {
    /// Renormalisation words, reused from stream to stream: a fresh zeroed buffer of two
    /// bytes per symbol cost page faults on every chunk. The encoder writes each word it
    /// keeps before reading it, so stale contents never reach the output.
    static WORDS: std::cell::RefCell<Vec<u16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`encode`], appended to `out`.
pub fn encode_into<T: Symbol>(syms: &[T], table: &FreqTable, out: &mut Vec<u8>) {
    // At most one word per symbol, plus room for the unconditional store of the last one.
    let need = syms.len() + 1;
    if need > crate::scratch::KEEP_ELEMENTS {
        return encode_with(syms, table, &mut vec![0u16; need], out);
    }
    crate::scratch::with_buffer(&WORDS, need, |words| encode_with(syms, table, words, out))
}

fn encode_with<T: Symbol>(syms: &[T], table: &FreqTable, words: &mut [u16], out: &mut Vec<u8>) {
    let top = table.symbols.last().map_or(0, |&s| s as usize + 1);
    let mut enc = vec![EncSymbol::default(); top];
    let mut cum = 0u32;
    for (&s, &f) in table.symbols.iter().zip(&table.freqs) {
        enc[s as usize] = EncSymbol::new(cum, f as u32);
        cum += f as u32;
    }
    let mut states = [RANS_L; LANES];
    let mut pos = 0usize;
    let full = syms.len() / LANES * LANES;
    for (lane, s) in syms[full..].iter().enumerate().rev() {
        states[lane] = enc[s.index()].put(states[lane], words, &mut pos);
    }
    for group in syms[..full].chunks_exact(LANES).rev() {
        for lane in (0..LANES).rev() {
            states[lane] = enc[group[lane].index()].put(states[lane], words, &mut pos);
        }
    }
    out.reserve(2 + 4 * table.symbols.len() + 4 * LANES + 2 * pos);
    table.write(out);
    for s in states {
        out.extend_from_slice(&s.to_le_bytes());
    }
    let start = out.len();
    out.resize(start + 2 * pos, 0);
    for (dst, w) in out[start..]
        .chunks_exact_mut(2)
        .zip(words[..pos].iter().rev())
    {
        dst.copy_from_slice(&w.to_le_bytes());
    }
}

/// Decode exactly `out.len()` symbols from `data`, refusing anything that is not a stream
/// `encode` could have produced for that many symbols.
pub fn decode<T: Symbol>(data: &[u8], out: &mut [T], cardinality: usize) -> Result<()> {
    let (table, mut at) = FreqTable::read(data, cardinality)?;
    let mut states = [0u32; LANES];
    for s in states.iter_mut() {
        *s = read_u32(data, at).ok_or_else(|| corrupt("rANS lane states truncated"))?;
        if *s < RANS_L {
            return Err(corrupt("rANS lane state out of range"));
        }
        at += 4;
    }
    let body = &data[at..];
    if !body.len().is_multiple_of(2) {
        return Err(corrupt("rANS body has an odd length"));
    }
    let nwords = body.len() / 2;
    let word = |i: usize| u16::from_le_bytes([body[2 * i], body[2 * i + 1]]) as u32;

    // slot -> freq | (slot - cum) << 16 | symbol << 32: one load per decoded symbol.
    let mut entries = vec![0u64; PROB_SCALE as usize];
    let mut cum = 0usize;
    for (&s, &f) in table.symbols.iter().zip(&table.freqs) {
        for (j, slot) in (cum..cum + f as usize).enumerate() {
            entries[slot] = f as u64 | (j as u64) << 16 | (s as u64) << 32;
        }
        cum += f as usize;
    }

    let mut pos = 0usize;
    let full = out.len() / LANES * LANES;
    let (head, tail) = out.split_at_mut(full);
    let mut simd_done = 0usize;
    #[cfg(target_arch = "x86_64")]
    if full >= SIMD_FROM_SYMBOLS && crate::rans_avx2::available() {
        let mut tables = crate::rans_avx2::SlotTables {
            step: vec![0u32; PROB_SCALE as usize],
            symbol: vec![0u32; PROB_SCALE as usize],
        };
        for (slot, &e) in entries.iter().enumerate() {
            tables.step[slot] = e as u32;
            tables.symbol[slot] = (e >> 32) as u32;
        }
        // SAFETY: the CPU supports AVX2 (checked just above).
        simd_done = unsafe {
            crate::rans_avx2::decode_groups(head, &mut states, &tables, body, nwords, &mut pos)
        };
    }
    for group in head[simd_done..].chunks_exact_mut(LANES) {
        if pos + LANES <= nwords {
            // At most one word per lane: this window cannot run out.
            let window = &body[2 * pos..2 * (pos + LANES)];
            // Phase 1: the 32 lanes are independent; phase 2 threads the word cursor through
            // them. Keeping the cursor out of phase 1 keeps the lanes from serialising.
            let mut xs = [0u32; LANES];
            for ((o, xo), &x) in group.iter_mut().zip(xs.iter_mut()).zip(states.iter()) {
                let e = entries[(x & SLOT_MASK) as usize];
                *o = T::from_index((e >> 32) as u16);
                *xo = (e as u32 & 0xffff) * (x >> PROB_BITS) + ((e as u32) >> 16);
            }
            let mut used = 0usize;
            for (st, &x) in states.iter_mut().zip(xs.iter()) {
                // `used` never exceeds the lane number, so the index is in range.
                let at = 2 * (used & (LANES - 1));
                let w = u16::from_le_bytes([window[at], window[at + 1]]) as u32;
                // Arithmetic select: renormalisation is data-dependent and unpredictable,
                // and a branch here costs more than the whole decode step.
                let need = (x < RANS_L) as u32;
                *st = (x << (16 * need)) | (w & need.wrapping_neg());
                used += need as usize;
            }
            pos += used;
        } else {
            decode_checked(group, &mut states, &entries, &word, nwords, &mut pos)?;
        }
    }
    decode_checked(tail, &mut states, &entries, &word, nwords, &mut pos)?;
    if pos != nwords {
        return Err(corrupt(format!(
            "rANS stream has {} unused words",
            nwords - pos
        )));
    }
    if states.iter().any(|&s| s != RANS_L) {
        return Err(corrupt("rANS stream did not end in its initial state"));
    }
    Ok(())
}

fn decode_checked<T: Symbol>(
    group: &mut [T],
    states: &mut [u32; LANES],
    entries: &[u64],
    word: &impl Fn(usize) -> u32,
    nwords: usize,
    pos: &mut usize,
) -> Result<()> {
    for (lane, o) in group.iter_mut().enumerate() {
        let x = states[lane];
        let e = entries[(x & SLOT_MASK) as usize];
        *o = T::from_index((e >> 32) as u16);
        let mut x = (e as u32 & 0xffff) * (x >> PROB_BITS) + ((e as u32) >> 16);
        if x < RANS_L {
            if *pos >= nwords {
                return Err(corrupt("rANS stream ends early"));
            }
            x = (x << 16) | word(*pos);
            *pos += 1;
        }
        states[lane] = x;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    const SIMD_FROM_SYMBOLS_FOR_TESTS: usize = SIMD_FROM_SYMBOLS;
    #[cfg(not(target_arch = "x86_64"))]
    const SIMD_FROM_SYMBOLS_FOR_TESTS: usize = 16 * 1024;
    use proptest::prelude::*;

    fn roundtrip<T: Symbol + PartialEq + std::fmt::Debug>(syms: &[T], card: usize) {
        let counts = histogram(syms, card);
        let table = FreqTable::from_counts(&counts).unwrap();
        let enc = encode(syms, &table);
        let mut out = vec![T::default(); syms.len()];
        decode(&enc, &mut out, card).unwrap();
        assert_eq!(out, syms);
    }

    /// Skewed u16 symbols (like float heads) from a fixed LCG.
    pub(crate) fn skewed_heads(n: usize, seed: u64) -> Vec<u16> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) as u32;
                // Geometric-ish around 120, a long tail up to 1000.
                (120 + (r % 7) * ((r >> 8) % 3) + if r.is_multiple_of(97) { r % 1000 } else { 0 })
                    as u16
            })
            .collect()
    }

    #[test]
    fn long_streams_take_the_wide_decoder_and_match_the_scalar_one() {
        // Long enough for the SIMD path, with a tail that is not a whole group.
        for n in [SIMD_FROM_SYMBOLS_FOR_TESTS, 262_144, 262_144 + 17] {
            let syms = skewed_heads(n, n as u64);
            roundtrip(&syms, 2048);
            let bytes: Vec<u8> = syms.iter().map(|&s| (s % 251) as u8).collect();
            roundtrip(&bytes, 256);
        }
    }

    #[test]
    fn damaged_long_streams_fail_cleanly() {
        let syms = skewed_heads(100_000, 7);
        let table = FreqTable::from_counts(&histogram(&syms, 2048)).unwrap();
        let enc = encode(&syms, &table);
        let mut out = vec![0u16; syms.len()];
        // Truncated by whole words, a flipped word in the body, extra words.
        for cut in [2, 64, enc.len() / 2] {
            assert!(
                decode(&enc[..enc.len() - cut], &mut out, 2048).is_err(),
                "cut {cut}"
            );
        }
        let mut flipped = enc.clone();
        let at = enc.len() - 1000;
        flipped[at] ^= 0x5a;
        assert!(decode(&flipped, &mut out, 2048).is_err() || out != syms);
        let mut longer = enc.clone();
        longer.extend_from_slice(&[1, 2, 3, 4]);
        assert!(decode(&longer, &mut out, 2048).is_err());
    }

    #[test]
    fn skewed_bytes_roundtrip_and_compress() {
        let mut x = 12345u64;
        let syms: Vec<u8> = (0..100_003)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) as u32 % 1000;
                if r < 600 {
                    120
                } else if r < 900 {
                    121
                } else {
                    (r % 7) as u8
                }
            })
            .collect();
        roundtrip(&syms, 256);
        let counts = histogram(&syms, 256);
        let enc = encode(&syms, &FreqTable::from_counts(&counts).unwrap());
        let bound = entropy_bits(&counts) / 8.0;
        assert!(
            (enc.len() as f64) < bound * 1.01 + 300.0,
            "{} vs {}",
            enc.len(),
            bound
        );
    }

    #[test]
    fn quotient_is_exact() {
        // The hardest cases are the ends of each quotient's range, x = k*f and k*f + f - 1,
        // largest near 2^32; every frequency is checked there and at pseudo-random states.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        // A table of two or more symbols gives each a frequency below PROB_SCALE.
        for f in 1..PROB_SCALE {
            let e = EncSymbol::new(0, f);
            let top = u32::MAX / f;
            for k in [0, 1, 2, 3, 1000, top / 2, top.saturating_sub(1), top] {
                for x in [
                    (k * f).checked_sub(1),
                    Some(k * f),
                    (k * f).checked_add(f - 1),
                ]
                .into_iter()
                .flatten()
                {
                    assert_eq!(e.quotient(x), x / f, "x={x} f={f}");
                }
            }
            for _ in 0..64 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let x = (seed >> 32) as u32;
                assert_eq!(e.quotient(x), x / f, "x={x} f={f}");
            }
        }
        for x in [u32::MAX, u32::MAX - 1, 0] {
            assert_eq!(EncSymbol::new(0, 1).quotient(x), x);
        }
    }

    #[test]
    fn truncated_and_flipped_streams_fail_cleanly() {
        let syms: Vec<u8> = (0..5000u32).map(|i| (i * i % 13) as u8).collect();
        let counts = histogram(&syms, 256);
        let enc = encode(&syms, &FreqTable::from_counts(&counts).unwrap());
        let mut out = vec![0u8; syms.len()];
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut], &mut out, 256).is_err());
        }
        let mut caught = 0;
        for byte in (0..enc.len()).step_by(7) {
            let mut bad = enc.clone();
            bad[byte] ^= 0x10;
            if decode(&bad, &mut out, 256).is_err() || out != syms {
                caught += 1;
            }
        }
        assert!(caught > 0);
    }

    proptest! {
        #[test]
        fn any_u8_sequence_roundtrips(syms in proptest::collection::vec(0u8..=255, 2..3000)) {
            let counts = histogram(&syms, 256);
            if let Some(table) = FreqTable::from_counts(&counts) {
                let enc = encode(&syms, &table);
                let mut out = vec![0u8; syms.len()];
                decode(&enc, &mut out, 256).unwrap();
                prop_assert_eq!(out, syms);
            }
        }

        #[test]
        fn u16_heads_roundtrip(syms in proptest::collection::vec(0u16..1024, 2..5000)) {
            let counts = histogram(&syms, 1024);
            if let Some(table) = FreqTable::from_counts(&counts) {
                let enc = encode(&syms, &table);
                let mut out = vec![0u16; syms.len()];
                decode(&enc, &mut out, 1024).unwrap();
                prop_assert_eq!(out, syms);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), n in 0usize..200) {
            let mut out = vec![0u8; n];
            let _ = decode(&data, &mut out, 256);
        }
    }
}
