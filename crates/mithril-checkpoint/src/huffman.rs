//! Static order-0 canonical Huffman coder, code lengths limited to 11 bits.
//!
//! rANS codes within 0.2 % of the entropy but costs a multiply, a data-dependent
//! renormalisation and (to encode) a division per symbol. A Huffman code costs one table
//! lookup and a shift per symbol on both sides, at a price of a few hundredths of a bit per
//! symbol on the skewed alphabets of float heads. The float codec takes Huffman when that
//! price is small (see `float::push_symbols`) and rANS otherwise.
//!
//! Long streams are cut into four contiguous segments, each with its own bitstream, so the
//! decoder runs four independent dependency chains. Bits are written LSB first; a code is
//! stored bit-reversed so that the decoder can index its table with the low bits of a
//! 64-bit window. Eleven-bit codes let one window feed five table lookups, each of which
//! yields every code that lies whole in its 11 bits (up to six `u8` or three `u16` symbols).
//!
//! Stream layout (little-endian):
//! ```text
//! u8 set form | symbol set | 4-bit code lengths, two per byte, low nibble first
//! u8 segments (1 or 4) | (segments - 1) x u32 segment byte lengths | segment bitstreams
//! set form 0: u16 first, u16 last, bitmap of last - first + 1 bits (LSB first)
//! set form 1: u16 count, count x u16 symbols, increasing
//! ```
//! A reader refuses incomplete or over-full codes, unused bits that are not zero and
//! segments that do not end exactly at their last symbol.

use crate::error::{corrupt, Result};
use crate::rans::Symbol;

/// Longest code, in bits.
pub const MAX_CODE_BITS: u32 = 11;
const TABLE_SIZE: usize = 1 << MAX_CODE_BITS;
const WINDOW_MASK: u64 = TABLE_SIZE as u64 - 1;
/// Most distinct symbols a code may hold (at most `2^MAX_CODE_BITS`).
pub const MAX_ALPHABET: usize = 1024;
/// Streams with at least this many symbols are cut into `SEGMENTS` bitstreams.
const SEGMENTED_FROM: usize = 4096;
const SEGMENTS: usize = 4;
/// Symbols decoded from one 64-bit window: 5 x 11 bits plus up to 7 bits of offset fit.
const PER_WINDOW: usize = 5;

const SET_BITMAP: u8 = 0;
const SET_LIST: u8 = 1;

/// A canonical code: the present symbols (increasing) and their code lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub symbols: Vec<u16>,
    pub lengths: Vec<u8>,
}

impl Code {
    /// The optimal code with lengths of at most [`MAX_CODE_BITS`] for `counts` (indexed by
    /// symbol value), built by package-merge. `None` when fewer than 2 or more than
    /// [`MAX_ALPHABET`] symbols are present.
    pub fn from_counts(counts: &[u32]) -> Option<Code> {
        let mut present: Vec<(u32, u16)> = counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(s, &c)| (c, s as u16))
            .collect();
        if present.len() < 2 || present.len() > MAX_ALPHABET || counts.len() > 65536 {
            return None;
        }
        present.sort_unstable();
        let weights: Vec<u64> = present.iter().map(|p| p.0 as u64).collect();
        let depth = package_merge(&weights, MAX_CODE_BITS as usize);
        let mut pairs: Vec<(u16, u8)> = present
            .iter()
            .zip(&depth)
            .map(|(&(_, s), &d)| (s, d))
            .collect();
        pairs.sort_unstable();
        Some(Code {
            symbols: pairs.iter().map(|p| p.0).collect(),
            lengths: pairs.iter().map(|p| p.1).collect(),
        })
    }

    /// Bits of the coded symbols for `counts` (which must only hold symbols of this code).
    pub fn payload_bits(&self, counts: &[u32]) -> u64 {
        self.symbols
            .iter()
            .zip(&self.lengths)
            .map(|(&s, &l)| counts.get(s as usize).copied().unwrap_or(0) as u64 * l as u64)
            .sum()
    }

    /// Exact size in bytes of [`encode`]'s output for `n` symbols with `counts`, give or
    /// take the rounding of each segment to whole bytes.
    pub fn encoded_size(&self, counts: &[u32], n: usize) -> usize {
        let segments = segments_for(n);
        self.header_len()
            + 1
            + 4 * (segments - 1)
            + self.payload_bits(counts).div_ceil(8) as usize
            + segments
    }

    /// The most [`encode_into`] appends for `n` symbols: what it reserves, each segment's
    /// worst case under this code's longest length. A buffer with this much spare capacity
    /// is never reallocated while the stream is written.
    pub fn room_needed(&self, n: usize) -> usize {
        let segments = segments_for(n);
        let seg_len = n.div_ceil(segments).max(1);
        let coded: usize = (0..n)
            .step_by(seg_len)
            .map(|at| segment_room(seg_len.min(n - at), self.longest()))
            .sum();
        self.header_len() + 1 + 4 * (segments - 1) + coded
    }

    /// The longest code length, in bits.
    fn longest(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0) as usize
    }

    fn header_len(&self) -> usize {
        let lengths = self.symbols.len().div_ceil(2);
        1 + set_len(&self.symbols) + lengths
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        let first = self.symbols.first().copied().unwrap_or(0);
        let last = self.symbols.last().copied().unwrap_or(0);
        if bitmap_len(first, last) <= list_len(self.symbols.len()) {
            out.push(SET_BITMAP);
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&last.to_le_bytes());
            let mut bitmap = vec![0u8; (last - first) as usize / 8 + 1];
            for &s in &self.symbols {
                let at = (s - first) as usize;
                bitmap[at / 8] |= 1 << (at % 8);
            }
            out.extend_from_slice(&bitmap);
        } else {
            out.push(SET_LIST);
            out.extend_from_slice(&(self.symbols.len() as u16).to_le_bytes());
            for &s in &self.symbols {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
        for pair in self.lengths.chunks(2) {
            out.push(pair[0] | pair.get(1).map_or(0, |&l| l << 4));
        }
    }

    /// Parse and validate a code; returns it and the number of bytes read.
    fn read(data: &[u8], cardinality: usize) -> Result<(Code, usize)> {
        let truncated = || corrupt("Huffman table truncated");
        let form = *data.first().ok_or_else(truncated)?;
        let (symbols, mut at): (Vec<u16>, usize) = match form {
            SET_BITMAP => {
                let first = read_u16(data, 1).ok_or_else(truncated)?;
                let last = read_u16(data, 3).ok_or_else(truncated)?;
                if last < first || last as usize >= cardinality {
                    return Err(corrupt(format!(
                        "Huffman symbol range {first}..={last} invalid"
                    )));
                }
                let len = bitmap_len(first, last) - 4;
                let bitmap = data.get(5..5 + len).ok_or_else(truncated)?;
                let symbols: Vec<u16> = (first..=last)
                    .filter(|&s| {
                        let i = (s - first) as usize;
                        bitmap[i / 8] >> (i % 8) & 1 == 1
                    })
                    .collect();
                let span = (last - first) as usize + 1;
                if !span.is_multiple_of(8) && bitmap[len - 1] >> (span % 8) != 0 {
                    return Err(corrupt("Huffman symbol bitmap has bits past its range"));
                }
                (symbols, 5 + len)
            }
            SET_LIST => {
                let n = read_u16(data, 1).ok_or_else(truncated)? as usize;
                if n > MAX_ALPHABET {
                    return Err(corrupt(format!("Huffman table has {n} symbols")));
                }
                let list = data.get(3..3 + 2 * n).ok_or_else(truncated)?;
                let symbols: Vec<u16> = list
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect();
                if symbols.windows(2).any(|w| w[1] <= w[0]) {
                    return Err(corrupt("Huffman symbols not increasing"));
                }
                if symbols.last().is_some_and(|&s| s as usize >= cardinality) {
                    return Err(corrupt("Huffman symbol out of range"));
                }
                (symbols, 3 + 2 * n)
            }
            f => return Err(corrupt(format!("unknown Huffman symbol set form {f}"))),
        };
        let n = symbols.len();
        if !(2..=MAX_ALPHABET).contains(&n) {
            return Err(corrupt(format!("Huffman table has {n} symbols")));
        }
        let packed = data.get(at..at + n.div_ceil(2)).ok_or_else(truncated)?;
        at += packed.len();
        let lengths: Vec<u8> = (0..n)
            .map(|i| packed[i / 2] >> (4 * (i % 2)) & 15)
            .collect();
        if n % 2 == 1 && packed[n / 2] >> 4 != 0 {
            return Err(corrupt("Huffman length padding is not zero"));
        }
        let mut kraft = 0usize;
        for &l in &lengths {
            if l == 0 || l as u32 > MAX_CODE_BITS {
                return Err(corrupt(format!("Huffman code length {l} invalid")));
            }
            kraft += TABLE_SIZE >> l;
        }
        if kraft != TABLE_SIZE {
            return Err(corrupt("Huffman code lengths do not form a complete code"));
        }
        Ok((Code { symbols, lengths }, at))
    }

    /// Bit-reversed canonical codewords, in the order of `symbols`. Canonical codes are
    /// assigned in order of (length, symbol); `symbols` is increasing, so each length's
    /// first code is all that is needed, with no sort.
    fn codewords(&self) -> Vec<u32> {
        let mut per_len = [0u32; MAX_CODE_BITS as usize + 1];
        for &l in &self.lengths {
            per_len[l as usize] += 1;
        }
        let mut next = [0u32; MAX_CODE_BITS as usize + 1];
        let mut code = 0u32;
        for len in 1..=MAX_CODE_BITS as usize {
            code = (code + per_len[len - 1]) << 1;
            next[len] = code;
        }
        self.lengths
            .iter()
            .map(|&l| {
                let len = l as u32;
                let w = next[l as usize];
                next[l as usize] += 1;
                w.reverse_bits() >> (32 - len)
            })
            .collect()
    }

    /// Decoding table: for every 11-bit window, `symbol | length << 16`, the symbol as
    /// `map` has it where one is given (it must cover every symbol of the code).
    fn decode_table(&self, map: Option<&[u16]>) -> Box<[u32; TABLE_SIZE]> {
        let mut table = Box::new([0u32; TABLE_SIZE]);
        for ((&s, &l), w) in self.symbols.iter().zip(&self.lengths).zip(self.codewords()) {
            let s = map.map_or(s, |m| m[s as usize]);
            let entry = s as u32 | (l as u32) << 16;
            for slot in (w as usize..TABLE_SIZE).step_by(1 << l) {
                table[slot] = entry;
            }
        }
        table
    }

    /// Multi-symbol decoding table: for every 11-bit window, the symbols whose codes lie
    /// whole inside it, up to [`Symbol::PER_LOOKUP`] of them (six `u8` or three `u16`).
    /// Float heads take three to five bits a symbol, so one lookup often yields three, and
    /// the decoder's dependency chains take fewer steps than with at most two. Each entry
    /// is laid out for the fewest operations in the decoding loop: the bits taken in its
    /// low byte (the shift count `shrx` reads), the symbols as `write_run` stores them in
    /// bits 8..56, and how many symbols it holds in its top byte.
    fn run_table<T: Symbol>(single: &[u32; TABLE_SIZE]) -> Box<[u64; TABLE_SIZE]> {
        let mut table = Box::new([0u64; TABLE_SIZE]);
        for (v, slot) in table.iter_mut().enumerate() {
            let (mut bits, mut count, mut symbols) = (0u32, 0usize, 0u64);
            while count < T::PER_LOOKUP {
                let e = single[v >> bits];
                let len = e >> 16;
                if bits + len > MAX_CODE_BITS {
                    break;
                }
                symbols |= T::run_place(e as u16, count);
                bits += len;
                count += 1;
            }
            *slot = symbols << 8 | bits as u64 | (count as u64) << 56;
        }
        table
    }

    /// Encoding table indexed by symbol value: the codeword in the top bits, its length in
    /// the low byte (0 when absent). See [`BitWriter`].
    fn encode_table(&self) -> Vec<u64> {
        let top = self.symbols.last().map_or(0, |&s| s as usize + 1);
        let mut table = vec![0u64; top];
        for ((&s, &l), w) in self.symbols.iter().zip(&self.lengths).zip(self.codewords()) {
            table[s as usize] = (w as u64) << (64 - l as u32) | l as u64;
        }
        table
    }
}

/// Code lengths for `weights` (increasing), none longer than `max_len`, minimising the
/// weighted length. Package-merge: at each of `max_len` levels the leaves are merged with
/// the pairs of the level below; the 2n-2 cheapest items of the top level decide, level by
/// level, how many of the lightest leaves gain one bit.
fn package_merge(weights: &[u64], max_len: usize) -> Vec<u8> {
    let n = weights.len();
    let mut is_leaf_by_level: Vec<Vec<bool>> = Vec::with_capacity(max_len);
    let mut below: Vec<u64> = Vec::new();
    for _ in 0..max_len {
        let packages: Vec<u64> = below.chunks_exact(2).map(|p| p[0] + p[1]).collect();
        let mut merged = Vec::with_capacity(n + packages.len());
        let mut is_leaf = Vec::with_capacity(n + packages.len());
        let (mut i, mut j) = (0, 0);
        while i < n || j < packages.len() {
            if j == packages.len() || (i < n && weights[i] <= packages[j]) {
                merged.push(weights[i]);
                is_leaf.push(true);
                i += 1;
            } else {
                merged.push(packages[j]);
                is_leaf.push(false);
                j += 1;
            }
        }
        is_leaf_by_level.push(is_leaf);
        below = merged;
    }
    let mut lengths = vec![0u8; n];
    let mut take = 2 * n - 2;
    for is_leaf in is_leaf_by_level.iter().rev() {
        let taken = &is_leaf[..take.min(is_leaf.len())];
        let leaves = taken.iter().filter(|&&l| l).count();
        for l in &mut lengths[..leaves] {
            *l += 1;
        }
        take = 2 * (taken.len() - leaves);
    }
    lengths
}

fn bitmap_len(first: u16, last: u16) -> usize {
    4 + (last - first) as usize / 8 + 1
}

fn list_len(n: usize) -> usize {
    2 + 2 * n
}

fn set_len(symbols: &[u16]) -> usize {
    let first = symbols.first().copied().unwrap_or(0);
    let last = symbols.last().copied().unwrap_or(0);
    bitmap_len(first, last).min(list_len(symbols.len()))
}

fn segments_for(n: usize) -> usize {
    if n >= SEGMENTED_FROM {
        SEGMENTS
    } else {
        1
    }
}

#[inline(always)]
fn read_u16(data: &[u8], at: usize) -> Option<u16> {
    let b = data.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// LSB-first bit writer state; the bytes go to a slice the caller passes in, so that the
/// state stays in registers.
///
/// The pending bits fill the accumulator from the top: a code enters by shifting the
/// accumulator right by its length and or-ing in the table entry, whose codeword sits in
/// the top bits and whose length sits in the low byte. `shrx` takes the shift count from
/// the entry's low six bits and the bit count grows by the whole entry (only its low byte
/// is read), so a code costs a shift, an or and an add. The lengths or-ed in stay in the
/// low four bits and only move down, below the pending bits as long as at most 60 are
/// pending: 7 left over and [`PER_FLUSH`] codes of at most 11 bits.
#[derive(Clone, Copy, Default)]
struct BitWriter {
    at: usize,
    acc: u64,
    bits: u64,
}

/// Codes between two flushes of the writer ([`BitWriter::put4`] takes exactly this many).
const PER_FLUSH: usize = 4;

impl BitWriter {
    /// Append one table entry; at most [`PER_FLUSH`] between flushes.
    #[inline(always)]
    fn put(&mut self, entry: u64) {
        self.acc = self.acc >> (entry & 63) | entry;
        self.bits = self.bits.wrapping_add(entry);
    }

    /// Append four table entries, as four [`BitWriter::put`]s in order would. The entries
    /// are first joined in pairs and the pairs joined (`a` shifted by the lengths after it),
    /// off the accumulator's dependency chain, which then takes one shift and one or for
    /// all four instead of one each: that chain, two cycles a code, bounded the loop.
    #[inline(always)]
    fn put4(&mut self, [a, b, c, d]: [u64; 4]) {
        let ab = a >> (b & 63) | b;
        let cd = c >> (d & 63) | d;
        let abcd = ab >> (c.wrapping_add(d) & 63) | cd;
        let all = a.wrapping_add(b).wrapping_add(c.wrapping_add(d));
        self.acc = self.acc >> (all & 63) | abcd;
        self.bits = self.bits.wrapping_add(all);
    }

    /// Store the whole bytes of the pending bits into `out`, which has room for the
    /// segment's worst case.
    #[inline(always)]
    fn flush(&mut self, out: &mut [u8]) {
        let pending = self.bits & 0xff;
        // With nothing pending the shift is by 0 and the bytes stored are not counted.
        let bytes = self.acc >> ((64 - pending) & 63);
        if let Some(w) = out
            .get_mut(self.at..)
            .and_then(|w| w.first_chunk_mut::<8>())
        {
            *w = bytes.to_le_bytes();
        }
        self.at += (pending >> 3) as usize;
        self.bits = pending & 7;
    }

    /// Bytes used once the last partial byte is stored.
    fn finish(mut self, out: &mut [u8]) -> usize {
        self.flush(out);
        self.at + (self.bits > 0) as usize
    }
}

/// Encode `syms`, every one of which must have a code in `code`.
pub fn encode<T: Symbol>(syms: &[T], code: &Code) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(syms, code, &mut out);
    out
}

/// [`encode`], appended to `out`. Segments are coded one after the other straight into
/// `out`, each starting where the previous one ended, so nothing is copied afterwards; each
/// gets room for its worst case under this code's longest length, zeroed only where `out`
/// has not reached yet.
pub fn encode_into<T: Symbol>(syms: &[T], code: &Code, out: &mut Vec<u8>) {
    let table = code.encode_table();
    let segments = segments_for(syms.len());
    let seg_len = syms.len().div_ceil(segments).max(1);
    let longest = code.longest();
    code.write_header(out);
    out.push(segments as u8);
    let lengths_at = out.len();
    out.resize(lengths_at + 4 * (segments - 1), 0);
    let mut at = out.len();
    for (i, seg) in syms.chunks(seg_len).enumerate() {
        let room = segment_room(seg.len(), longest);
        if out.len() < at + room {
            out.resize(at + room, 0);
        }
        let used = encode_segment(seg, &table, &mut out[at..at + room]);
        if i + 1 < segments {
            let slot = lengths_at + 4 * i;
            out[slot..slot + 4].copy_from_slice(&(used as u32).to_le_bytes());
        }
        at += used;
    }
    out.truncate(at);
}

/// Bytes [`encode_into`] gives a segment of `symbols` symbols to be coded into: each at the
/// code's `longest` length, plus the 8 bytes of [`encode_segment`]'s last store.
fn segment_room(symbols: usize, longest: usize) -> usize {
    (symbols * longest).div_ceil(8) + 8
}

/// Write the codes of `syms` to `out` (room for the longest code per symbol, plus the 8
/// bytes of the last store); returns the bytes used.
/// One segment at a time: with codes joined four at a time ([`BitWriter::put4`]) the
/// accumulator chain is short, so interleaving segments would only add register pressure.
fn encode_segment<T: Symbol>(syms: &[T], table: &[u64], out: &mut [u8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("bmi2") {
        // SAFETY: the CPU supports BMI2 (checked just above).
        return unsafe { encode_segment_bmi2(syms, table, out) };
    }
    encode_segment_body(syms, table, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2")]
unsafe fn encode_segment_bmi2<T: Symbol>(syms: &[T], table: &[u64], out: &mut [u8]) -> usize {
    encode_segment_body(syms, table, out)
}

#[inline(always)]
fn encode_segment_body<T: Symbol>(syms: &[T], table: &[u64], out: &mut [u8]) -> usize {
    let mut w = BitWriter::default();
    let mut groups = syms.chunks_exact(PER_FLUSH);
    for group in &mut groups {
        let entries = [0, 1, 2, 3].map(|j| table[group[j].index()]);
        w.put4(entries);
        w.flush(out);
    }
    for s in groups.remainder() {
        w.put(table[s.index()]);
    }
    w.finish(out)
}

/// The next 64 bits of `data` from bit `pos` (zeros past the end).
#[inline(always)]
fn window(data: &[u8], pos: usize) -> u64 {
    let byte = pos >> 3;
    let word = match data.get(byte..).and_then(|s| s.first_chunk::<8>()) {
        Some(w) => u64::from_le_bytes(*w),
        None => {
            let mut w = [0u8; 8];
            let rest = data.get(byte..).unwrap_or(&[]);
            w[..rest.len()].copy_from_slice(rest);
            u64::from_le_bytes(w)
        }
    };
    word >> (pos & 7)
}

/// Room a window round needs in every output segment: five lookups, the last of which
/// stores `PER_STORE` elements after at most `PER_LOOKUP` from each one before.
const fn round_room<T: Symbol>() -> usize {
    T::PER_LOOKUP * (PER_WINDOW - 1) + T::PER_STORE
}

/// Whether a window round of [`decode_runs`] may run on a segment at bit `pos` of
/// `stream` with room for `room` more symbols.
fn round_fits<T: Symbol>(stream: &[u8], pos: usize, room: usize) -> bool {
    room >= round_room::<T>() && stream.len() >= (pos >> 3) + 8
}

/// The interleaved fast loop over `N` segments, from bit `pos[s]` of `streams[s]` into
/// `outs[s]`: every round refills each segment's 64-bit window and takes five lookups of
/// one to `PER_LOOKUP` symbols from it, while every segment passes [`round_fits`]. Returns
/// each segment's bit position and symbols written; the caller goes on with the segments
/// that still fit a round, then decodes the rest one symbol at a time.
fn decode_runs<T: Symbol, const N: usize>(
    streams: [&[u8]; N],
    outs: [&mut [T]; N],
    pos: [usize; N],
    runs: &[u64; TABLE_SIZE],
) -> ([usize; N], [usize; N]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("bmi2") && std::arch::is_x86_feature_detected!("lzcnt") {
        // SAFETY: the CPU supports BMI2 and LZCNT (checked just above).
        return unsafe { decode_runs_bmi2(streams, outs, pos, runs) };
    }
    decode_runs_body(streams, outs, pos, runs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi2,lzcnt")]
unsafe fn decode_runs_bmi2<T: Symbol, const N: usize>(
    streams: [&[u8]; N],
    outs: [&mut [T]; N],
    pos: [usize; N],
    runs: &[u64; TABLE_SIZE],
) -> ([usize; N], [usize; N]) {
    decode_runs_body(streams, outs, pos, runs)
}

/// Marks the top of a round's window. A round takes at most `PER_WINDOW * 11 = 55` bits
/// and its lookups read no bit above 54, so the marker never reaches a table index (it
/// replaces a data bit only when the window starts on a byte boundary, and that bit is
/// read in the next round). After the round the marker has moved down by the bits taken,
/// which `leading_zeros` then gives back: no running bit count per lookup.
const MARKER: u64 = 1 << 63;

#[inline(always)]
fn decode_runs_body<T: Symbol, const N: usize>(
    streams: [&[u8]; N],
    outs: [&mut [T]; N],
    mut pos: [usize; N],
    runs: &[u64; TABLE_SIZE],
) -> ([usize; N], [usize; N]) {
    let lens = outs.each_ref().map(|o| o.len());
    if lens.iter().any(|&l| l < round_room::<T>()) {
        return (pos, [0; N]);
    }
    let starts = outs.map(|o| o.as_mut_ptr());
    // The last place a round may start in each segment.
    // SAFETY: every segment is at least `round_room` long (checked above).
    let last_starts: [*mut T; N] =
        std::array::from_fn(|s| unsafe { starts[s].add(lens[s] - round_room::<T>()) });
    let mut at = starts;
    // Symbols written to each segment so far.
    let done = |at: [*mut T; N]| -> [usize; N] {
        // SAFETY: both pointers lie in the same output slice, `at` at or after `starts`.
        std::array::from_fn(|s| unsafe { at[s].offset_from(starts[s]) } as usize)
    };
    loop {
        let mut windows = [0u64; N];
        for s in 0..N {
            let Some(bytes) = streams[s]
                .get(pos[s] >> 3..)
                .and_then(|b| b.first_chunk::<8>())
            else {
                return (pos, done(at));
            };
            if at[s] > last_starts[s] {
                return (pos, done(at));
            }
            windows[s] = u64::from_le_bytes(*bytes) >> (pos[s] & 7) | MARKER;
        }
        for _ in 0..PER_WINDOW {
            for s in 0..N {
                let e = runs[(windows[s] & WINDOW_MASK) as usize];
                // SAFETY: segment `s` had at most `len - round_room` symbols when this
                // round began and grows by at most `PER_LOOKUP` per lookup, so every
                // element the store writes lies inside `outs[s]`.
                unsafe {
                    T::write_run(at[s], e >> 8);
                    at[s] = at[s].add((e >> 56) as usize);
                }
                windows[s] >>= e & 63;
            }
        }
        for s in 0..N {
            pos[s] += windows[s].leading_zeros() as usize;
        }
    }
}

/// Run [`decode_runs`] on the `N` segments `parts` (stream, output from where the segment
/// stands, bit position): each one's new bit position and symbols written, in the order of
/// `parts`; `None` unless there are exactly `N`.
fn decode_some_runs<T: Symbol, const N: usize>(
    parts: Vec<(&[u8], &mut [T], usize)>,
    runs: &[u64; TABLE_SIZE],
) -> Option<(Vec<usize>, Vec<usize>)> {
    let streams: [&[u8]; N] = std::array::from_fn(|k| parts.get(k).map_or(&[][..], |p| p.0));
    let pos: [usize; N] = std::array::from_fn(|k| parts.get(k).map_or(0, |p| p.2));
    let outs: [&mut [T]; N] = parts
        .into_iter()
        .map(|p| p.1)
        .collect::<Vec<_>>()
        .try_into()
        .ok()?;
    let (pos, done) = decode_runs(streams, outs, pos, runs);
    Some((pos.to_vec(), done.to_vec()))
}

/// Decode the segments `segs` of a segmented stream with [`decode_runs`], interleaved:
/// all four, then, since they decode at different rates (their symbols' lengths differ)
/// and the loop stops at the first one out of room, the others together, and so on down
/// to one. `pos` and `done` (bit position and symbols written per segment) are advanced;
/// the rest of each segment is left for [`decode_singles`].
fn decode_segments<T: Symbol>(
    streams: &[&[u8]],
    segs: &mut [&mut [T]],
    pos: &mut [usize],
    done: &mut [usize],
    runs: &[u64; TABLE_SIZE],
) {
    loop {
        let active: Vec<usize> = (0..segs.len())
            .filter(|&i| round_fits::<T>(streams[i], pos[i], segs[i].len() - done[i]))
            .collect();
        let parts: Vec<(&[u8], &mut [T], usize)> = segs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(i, seg)| (streams[i], &mut seg[done[i]..], pos[i]))
            .collect();
        let Some((p, d)) = (match active.len() {
            4 => decode_some_runs::<T, 4>(parts, runs),
            3 => decode_some_runs::<T, 3>(parts, runs),
            2 => decode_some_runs::<T, 2>(parts, runs),
            1 => decode_some_runs::<T, 1>(parts, runs),
            _ => None,
        }) else {
            return;
        };
        for (k, &i) in active.iter().enumerate() {
            pos[i] = p[k];
            done[i] += d[k];
        }
    }
}

/// Decode `out.len()` symbols one lookup each from `stream`, starting at bit `pos`; returns
/// the bit position after them. Short streams (one segment) and the ends of long ones go
/// this way: a window is loaded once for five symbols while eight bytes remain readable
/// (the position only grows, so once they do not, they never will again), then once per
/// symbol.
fn decode_singles<T: Symbol>(
    stream: &[u8],
    mut pos: usize,
    out: &mut [T],
    table: &[u32; TABLE_SIZE],
) -> usize {
    let mut done = 0;
    for group in out.chunks_exact_mut(PER_WINDOW) {
        let Some(bytes) = stream.get(pos >> 3..).and_then(|b| b.first_chunk::<8>()) else {
            break;
        };
        let mut w = u64::from_le_bytes(*bytes) >> (pos & 7);
        for o in group.iter_mut() {
            let e = table[(w & WINDOW_MASK) as usize];
            *o = T::from_index(e as u16);
            w >>= e >> 16;
            pos += (e >> 16) as usize;
        }
        done += PER_WINDOW;
    }
    for o in &mut out[done..] {
        let e = table[(window(stream, pos) & WINDOW_MASK) as usize];
        *o = T::from_index(e as u16);
        pos += (e >> 16) as usize;
    }
    pos
}

/// Decode exactly `out.len()` symbols from `data`, each below `cardinality`, refusing
/// anything that is not a stream `encode` could have produced for that many symbols.
pub fn decode<T: Symbol>(data: &[u8], out: &mut [T], cardinality: usize) -> Result<()> {
    decode_with_map(data, out, cardinality, None)
}

/// [`decode`], writing `map[s]` for every symbol `s`: a decoder that wants each symbol in
/// another form has it from the table lookup that finds the symbol, not from a pass of
/// its own. `map` must have an entry for every symbol below `cardinality`.
pub fn decode_mapped(data: &[u8], out: &mut [u16], cardinality: usize, map: &[u16]) -> Result<()> {
    if map.len() < cardinality {
        return Err(corrupt(format!(
            "symbol map of {} entries for {cardinality} symbols",
            map.len()
        )));
    }
    decode_with_map(data, out, cardinality, Some(map))
}

/// The segments of the stream `data` of `symbols` symbols whose segment count is at byte
/// `at` (after the code): each segment's bytes, checked against the stream's bounds.
fn segment_streams(data: &[u8], mut at: usize, symbols: usize) -> Result<Vec<&[u8]>> {
    let segments = *data
        .get(at)
        .ok_or_else(|| corrupt("Huffman stream truncated"))? as usize;
    at += 1;
    if segments != segments_for(symbols) {
        return Err(corrupt(format!(
            "Huffman stream has {segments} segments, expected {}",
            segments_for(symbols)
        )));
    }
    let mut bounds = Vec::with_capacity(segments + 1);
    bounds.push(at + 4 * (segments - 1));
    for i in 0..segments - 1 {
        let b = data
            .get(at + 4 * i..at + 4 * i + 4)
            .ok_or_else(|| corrupt("Huffman segment table truncated"))?;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let end = bounds[i] + len;
        if end > data.len() {
            return Err(corrupt("Huffman segment runs past the stream"));
        }
        bounds.push(end);
    }
    if bounds[segments - 1] > data.len() {
        return Err(corrupt("Huffman segment table truncated"));
    }
    bounds.push(data.len());
    Ok(bounds.windows(2).map(|b| &data[b[0]..b[1]]).collect())
}

fn decode_with_map<T: Symbol>(
    data: &[u8],
    out: &mut [T],
    cardinality: usize,
    map: Option<&[u16]>,
) -> Result<()> {
    let (code, at) = Code::read(data, cardinality)?;
    let table = code.decode_table(map);
    let streams = segment_streams(data, at, out.len())?;
    let segments = streams.len();

    let seg_len = out.len().div_ceil(segments).max(1);
    let mut pos = vec![0usize; segments];
    let mut done = vec![0usize; segments];
    if segments == SEGMENTS {
        let runs = Code::run_table::<T>(&table);
        let mut segs: Vec<&mut [T]> = out.chunks_mut(seg_len).collect();
        if segs.len() == SEGMENTS {
            decode_segments(&streams, &mut segs, &mut pos, &mut done, &runs);
        }
    }
    for (((seg, stream), p), &from) in out
        .chunks_mut(seg_len)
        .zip(&streams)
        .zip(pos.iter_mut())
        .zip(&done)
    {
        *p = decode_singles(stream, *p, seg.get_mut(from..).unwrap_or(&mut []), &table);
    }
    for (i, (stream, &p)) in streams.iter().zip(&pos).enumerate() {
        if p.div_ceil(8) != stream.len() {
            return Err(corrupt(format!(
                "Huffman segment {i} holds {} bytes, its symbols take {} bits",
                stream.len(),
                p
            )));
        }
        if p % 8 != 0 && stream.last().is_some_and(|&b| b >> (p % 8) != 0) {
            return Err(corrupt(format!(
                "Huffman segment {i} has stray bits at its end"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rans::tests::skewed_heads as skewed;
    use crate::rans::{entropy_bits, histogram};
    use proptest::prelude::*;

    fn roundtrip<T: Symbol + PartialEq + std::fmt::Debug>(syms: &[T], card: usize) -> usize {
        let counts = histogram(syms, card);
        let code = Code::from_counts(&counts).unwrap();
        let enc = encode(syms, &code);
        let mut out = vec![T::default(); syms.len()];
        decode(&enc, &mut out, card).unwrap();
        assert_eq!(out, syms);
        let estimate = code.encoded_size(&counts, syms.len());
        assert!(
            enc.len() <= estimate && enc.len() + 4 >= estimate,
            "{} vs {estimate}",
            enc.len()
        );
        enc.len()
    }

    #[test]
    fn lengths_are_limited_complete_and_near_entropy() {
        // Fibonacci weights force an unlimited Huffman tree 30 levels deep.
        let mut fib = vec![1u32, 1];
        while fib.len() < 30 {
            let n = fib.len();
            fib.push(fib[n - 1] + fib[n - 2]);
        }
        let code = Code::from_counts(&fib).unwrap();
        assert!(code.lengths.iter().all(|&l| (1..=11).contains(&l)));
        let kraft: usize = code.lengths.iter().map(|&l| TABLE_SIZE >> l).sum();
        assert_eq!(kraft, TABLE_SIZE);

        // Against the unlimited Huffman code (package-merge with room for any depth):
        // the limit costs little when the alphabet has a few hundred symbols, as float
        // heads do. A thousand rare symbols would crowd an 11-bit code.
        let syms: Vec<u16> = skewed(200_000, 3).iter().map(|&s| s % 150).collect();
        let counts = histogram(&syms, 2048);
        let code = Code::from_counts(&counts).unwrap();
        let mut present: Vec<u64> = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| c as u64)
            .collect();
        present.sort_unstable();
        let free = package_merge(&present, 40);
        assert!(
            free.iter().any(|&l| l > 11),
            "the test data must need the limit"
        );
        let free_bits: u64 = present.iter().zip(&free).map(|(&c, &l)| c * l as u64).sum();
        let bits = code.payload_bits(&counts);
        assert!(
            bits >= free_bits && bits <= free_bits + free_bits * 3 / 100,
            "{bits} vs {free_bits}"
        );
        assert!(bits as f64 >= entropy_bits(&counts));
    }

    #[test]
    fn a_lookup_yields_every_whole_code_in_its_window() {
        // Codes of 1 to 11 bits, so that windows hold from one to six codes.
        let counts: Vec<u32> = (0..40i32).map(|i| 1 << (24 - i).max(1)).collect();
        let code = Code::from_counts(&counts).unwrap();
        let words = code.codewords();
        let runs = Code::run_table::<u8>(&code.decode_table(None));
        let mut seen = [0usize; 7];
        for (v, &e) in runs.iter().enumerate() {
            // Match codewords against the window bit by bit, independently of the table.
            let (mut bits, mut expect) = (0u32, Vec::new());
            while expect.len() < u8::PER_LOOKUP {
                let at = (0..code.symbols.len()).find(|&i| {
                    let len = code.lengths[i] as u32;
                    bits + len <= MAX_CODE_BITS && (v as u32 >> bits) & ((1 << len) - 1) == words[i]
                });
                let Some(i) = at else { break };
                expect.push(code.symbols[i]);
                bits += code.lengths[i] as u32;
            }
            assert_eq!(e & 0xff, bits as u64, "window {v:#x}");
            assert_eq!((e >> 56) as usize, expect.len(), "window {v:#x}");
            assert_eq!(
                (e >> 8) & ((1 << 48) - 1),
                expect
                    .iter()
                    .enumerate()
                    .fold(0, |run, (i, &s)| run | u8::run_place(s, i)),
                "window {v:#x}"
            );
            seen[expect.len()] += 1;
        }
        assert!(seen[1] > 0 && seen[6] > 0, "{seen:?}");
    }

    #[test]
    fn codewords_are_canonical() {
        // Files written before depend on this exact assignment: codes in order of (length,
        // symbol), each one more than the last, shifted left when the length grows.
        let mut state = 0x2545_f491_u32;
        for n in [2usize, 3, 17, 200, 1024] {
            let counts: Vec<u32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    1 + (state >> (state % 28))
                })
                .collect();
            let code = Code::from_counts(&counts).unwrap();
            let mut order: Vec<usize> = (0..code.symbols.len()).collect();
            order.sort_by_key(|&i| (code.lengths[i], code.symbols[i]));
            let mut expect = vec![0u32; order.len()];
            let (mut next, mut prev) = (0u32, 0u32);
            for i in order {
                let len = code.lengths[i] as u32;
                next <<= len - prev;
                prev = len;
                expect[i] = next.reverse_bits() >> (32 - len);
                next += 1;
            }
            assert_eq!(code.codewords(), expect, "{n} symbols");
        }
    }

    #[test]
    fn two_symbols_take_one_bit_each() {
        let syms: Vec<u8> = (0..8000).map(|i| (i % 3 == 0) as u8 * 200).collect();
        let size = roundtrip(&syms, 256);
        assert!(size < 8000 / 8 + 64, "{size}");
    }

    #[test]
    fn long_and_short_streams_roundtrip() {
        for n in [
            2,
            5,
            17,
            SEGMENTED_FROM - 1,
            SEGMENTED_FROM,
            SEGMENTED_FROM + 3,
            262_147,
        ] {
            let syms = skewed(n, n as u64);
            roundtrip(&syms, 2048);
            let bytes: Vec<u8> = syms.iter().map(|&s| (s % 251) as u8).collect();
            if bytes.iter().any(|&b| b != bytes[0]) {
                roundtrip(&bytes, 256);
            }
        }
    }

    /// A buffer with `room_needed` spare is never grown: `sub-quad` sizes its payload by it.
    #[test]
    fn room_needed_covers_what_encoding_reserves() {
        for n in [2, 17, SEGMENTED_FROM - 1, SEGMENTED_FROM, 262_147] {
            let syms = skewed(n, n as u64 + 1);
            let code = Code::from_counts(&histogram(&syms, 2048)).unwrap();
            for prefix in [0, 5, 1000] {
                let room = prefix + code.room_needed(n);
                let mut out = Vec::with_capacity(room);
                out.resize(prefix, 7);
                encode_into(&syms, &code, &mut out);
                assert_eq!(out.capacity(), room, "{n} symbols after {prefix} bytes");
                assert_eq!(out[prefix..], encode(&syms, &code)[..]);
            }
        }
    }

    #[test]
    fn sparse_symbols_use_the_list_form() {
        let syms: Vec<u16> = (0..1000u16)
            .map(|i| [3, 4000, 4095][i as usize % 3])
            .collect();
        let size = roundtrip(&syms, 4096);
        assert!(size < 1000 * 2 / 8 + 32, "{size}");
    }

    /// Segments whose symbols differ in length decode at different rates. When the first
    /// runs out of room the others must go on interleaved, not one symbol at a time: every
    /// segment is left to the single-symbol decoder only where no round fits any more.
    #[test]
    fn uneven_segments_all_decode_in_runs() {
        let n = 40_000;
        // Short codes in the first quarter, long ones in the last.
        let syms: Vec<u16> = (0..n as u32)
            .map(|i| {
                let spread = 1 + (i * 4 / n as u32) * 60;
                (i.wrapping_mul(2_654_435_761) >> 20) as u16 % spread as u16
            })
            .collect();
        let card = 256;
        let counts = histogram(&syms, card);
        let code = Code::from_counts(&counts).unwrap();
        let enc = encode(&syms, &code);
        let (read, at) = Code::read(&enc, card).unwrap();
        let streams = segment_streams(&enc, at, n).unwrap();
        assert_eq!(streams.len(), SEGMENTS);
        let runs = Code::run_table::<u16>(&read.decode_table(None));
        let mut out = vec![0u16; n];
        let seg_len = n.div_ceil(SEGMENTS);
        let mut segs: Vec<&mut [u16]> = out.chunks_mut(seg_len).collect();
        let (mut pos, mut done) = (vec![0; SEGMENTS], vec![0; SEGMENTS]);
        decode_segments(&streams, &mut segs, &mut pos, &mut done, &runs);
        for s in 0..SEGMENTS {
            assert!(
                !round_fits::<u16>(streams[s], pos[s], seg_len - done[s]),
                "segment {s}: {} of {seg_len} symbols, bit {} of {}",
                done[s],
                pos[s],
                8 * streams[s].len()
            );
        }
        assert_eq!(&out[..done[0]], &syms[..done[0]]);
        roundtrip(&syms, card);
    }

    #[test]
    fn damaged_streams_fail_cleanly() {
        let syms = skewed(100_000, 7);
        let code = Code::from_counts(&histogram(&syms, 2048)).unwrap();
        let enc = encode(&syms, &code);
        let mut out = vec![0u16; syms.len()];
        for cut in [1, 2, 64, enc.len() / 2, enc.len() - 1] {
            assert!(
                decode(&enc[..enc.len() - cut], &mut out, 2048).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = enc.clone();
        longer.push(0);
        assert!(decode(&longer, &mut out, 2048).is_err());
        let mut caught = 0;
        let mut tried = 0;
        for at in (0..enc.len()).step_by(97) {
            let mut bad = enc.clone();
            bad[at] ^= 0x24;
            tried += 1;
            if decode(&bad, &mut out, 2048).is_err() || out != syms {
                caught += 1;
            }
        }
        assert_eq!(
            caught, tried,
            "every flip is refused or changes the symbols"
        );
        // Fewer symbols expected than coded: the segments do not end where they should.
        let mut short = vec![0u16; syms.len() - 1];
        assert!(decode(&enc, &mut short, 2048).is_err());
        // Symbols beyond the cardinality the caller allows.
        assert!(decode(&enc, &mut out, 1000).is_err());
    }

    #[test]
    fn invalid_tables_are_refused() {
        let syms: Vec<u8> = (0..5000u32).map(|i| (i * i % 13) as u8).collect();
        let code = Code::from_counts(&histogram(&syms, 256)).unwrap();
        let enc = encode(&syms, &code);
        let mut out = vec![0u8; syms.len()];
        decode(&enc, &mut out, 256).unwrap();
        let lengths_at = 1 + set_len(&code.symbols);
        for bad_nibble in [0u8, 12, 15] {
            let mut bad = enc.clone();
            bad[lengths_at] = bad[lengths_at] & 0xf0 | bad_nibble;
            assert!(decode(&bad, &mut out, 256).is_err());
        }
        // One code made one bit longer: no longer complete.
        let mut bad = enc.clone();
        bad[lengths_at] += 1;
        assert!(decode(&bad, &mut out, 256).is_err());
        let mut bad = enc.clone();
        bad[0] = 7;
        assert!(decode(&bad, &mut out, 256).is_err());
        for cut in 0..lengths_at + 2 {
            assert!(decode(&enc[..cut], &mut out, 256).is_err());
        }
    }

    proptest! {
        #[test]
        fn any_u8_sequence_roundtrips(syms in proptest::collection::vec(0u8..=255, 2..6000)) {
            if Code::from_counts(&histogram(&syms, 256)).is_some() {
                roundtrip(&syms, 256);
            }
        }

        #[test]
        fn u16_symbols_roundtrip(syms in proptest::collection::vec(0u16..1024, 2..9000)) {
            if Code::from_counts(&histogram(&syms, 1024)).is_some() {
                roundtrip(&syms, 1024);
            }
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), n in 0usize..5000) {
            let mut out = vec![0u16; n];
            let _ = decode(&data, &mut out, 1024);
        }
    }
}
