//! Large differences as a symbol plus raw bits, for the delta encodings.
//!
//! A difference `d` below [`EXACT`] is its own symbol. A larger one is coded as its bit
//! length and the [`KEPT_BITS`] bits after its leading one (one symbol), then the bits
//! below those, stored raw in a separate bit stream. 32-bit differences take 248 symbols.
//! The low bits of a large difference are close to uniform, which storing them raw assumes.

use crate::error::{corrupt, Result};

/// Differences below this are their own symbol, with no extra bits.
pub const EXACT: u32 = 32;
/// Bit length of the smallest difference that is not its own symbol.
pub(crate) const FIRST_LEN: u32 = EXACT.trailing_zeros() + 1;
/// Bits after the leading one that a symbol keeps.
pub(crate) const KEPT_BITS: u32 = 3;
/// Symbols of differences up to 32 bits.
pub const ALPHABET: usize = 256;

/// The symbol of difference `d` and how many raw extra bits follow it.
#[inline(always)]
pub fn symbol_of(d: u32) -> (u32, u32) {
    if d < EXACT {
        return (d, 0);
    }
    let len = 32 - d.leading_zeros();
    let extra = len - 1 - KEPT_BITS;
    let top = (d >> extra) & ((1 << KEPT_BITS) - 1);
    (EXACT + ((len - FIRST_LEN) << KEPT_BITS) + top, extra)
}

/// The largest symbol a difference of `width_bits` bits can have.
pub const fn max_symbol(width_bits: u32) -> u32 {
    EXACT + ((width_bits - FIRST_LEN) << KEPT_BITS) + (1 << KEPT_BITS) - 1
}

/// Per symbol, the form decoders take it in ([`read_form`]): its number of extra bits in
/// the low byte, and above them its leading value, the difference with its extra bits cut
/// off (the symbol itself when it is exact). A decoder builds a difference as
/// `lead << extra | bits`, with nothing to work out from the symbol first; the Huffman
/// decoder writes these forms straight from its table (`huffman::decode_mapped`).
pub static READ_FORMS: [u16; ALPHABET] = read_form_table();

/// Bits of a read form below its leading value.
pub(crate) const LEAD_SHIFT: u32 = 8;

/// The leading value and the number of extra bits of a read form.
#[inline(always)]
pub fn read_form(form: u16) -> (u32, u32) {
    (
        (form >> LEAD_SHIFT) as u32,
        (form & ((1 << LEAD_SHIFT) - 1)) as u32,
    )
}

const fn read_form_table() -> [u16; ALPHABET] {
    let mut table = [0u16; ALPHABET];
    let mut s = 0u32;
    while s <= max_symbol(32) {
        let (lead, extra) = if s < EXACT {
            (s, 0)
        } else {
            let j = s - EXACT;
            let len = FIRST_LEN + (j >> KEPT_BITS);
            (
                (1 << KEPT_BITS) + (j & ((1 << KEPT_BITS) - 1)),
                len - 1 - KEPT_BITS,
            )
        };
        table[s as usize] = (lead << LEAD_SHIFT | extra) as u16;
        s += 1;
    }
    table
}

/// Raw extra bits, least significant first, flushed 32 bits at a time.
pub struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    filled: u32,
}

impl BitWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        BitWriter {
            out: Vec::with_capacity(bytes),
            acc: 0,
            filled: 0,
        }
    }

    /// Append the low `bits` bits of `v` (at most 32 - `KEPT_BITS` - 1).
    #[inline(always)]
    pub fn put(&mut self, v: u32, bits: u32) {
        self.acc |= ((v & ((1u64 << bits) - 1) as u32) as u64) << self.filled;
        self.filled += bits;
        if self.filled >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.filled -= 32;
        }
    }

    /// A writer that continues the stream in `out` (whole bytes) followed by the low
    /// `filled` bits of `acc` (fewer than 32).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn resume(out: Vec<u8>, acc: u64, filled: u32) -> Self {
        debug_assert!(filled < 32 && acc >> filled == 0);
        BitWriter { out, acc, filled }
    }

    pub fn finish(mut self) -> Vec<u8> {
        let bytes = self.filled.div_ceil(8) as usize;
        self.out.extend_from_slice(&self.acc.to_le_bytes()[..bytes]);
        self.out
    }
}

/// Reads what [`BitWriter`] wrote. Each read is one unaligned 64-bit load at the bit
/// position, with no refill branch. Reading past the end yields zeros and is reported by
/// [`BitReader::finish`], so a damaged stream cannot make the decoder read out of bounds.
#[derive(Clone, Copy)]
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Bits read so far.
    pos: u64,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    /// The next `bits` bits, at most 32 (the extra bits of an escape, or a `sub-pack`
    /// value).
    #[inline(always)]
    pub fn take(&mut self, bits: u32) -> u32 {
        let byte = (self.pos >> 3) as usize;
        let window = match self.data.get(byte..byte + 8) {
            Some(b) => u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            None => self.window_near_end(byte),
        };
        let v = ((window >> (self.pos & 7)) & ((1u64 << bits) - 1)) as u32;
        self.pos += bits as u64;
        v
    }

    /// The stream and the bits read so far.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (&'a [u8], u64) {
        (self.data, self.pos)
    }

    /// A reader of `data` with `pos` bits already read.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn at(data: &'a [u8], pos: u64) -> Self {
        BitReader { data, pos }
    }

    #[cold]
    fn window_near_end(&self, byte: usize) -> u64 {
        let mut b = [0u8; 8];
        let tail = self.data.get(byte..).unwrap_or(&[]);
        b[..tail.len().min(8)].copy_from_slice(&tail[..tail.len().min(8)]);
        u64::from_le_bytes(b)
    }

    /// Every bit read was written, and the stream has no whole byte left over.
    pub fn finish(&self) -> Result<()> {
        if self.pos.div_ceil(8) != self.data.len() as u64 {
            return Err(corrupt(format!(
                "delta extra bits: {} bits read from a {}-byte stream",
                self.pos,
                self.data.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_cover_every_difference_exactly() {
        for d in (0u32..70_000).chain([u32::MAX, u32::MAX - 1, 1 << 31, (1 << 31) - 1]) {
            let (s, extra) = symbol_of(d);
            assert!(s <= max_symbol(32), "{d}");
            let (lead, bits) = read_form(READ_FORMS[s as usize]);
            assert_eq!(bits, extra);
            let low = d & ((1u64 << extra) - 1) as u32;
            assert_eq!(lead << extra | low, d, "{d}");
        }
        assert_eq!(symbol_of(u16::MAX as u32).0, max_symbol(16));
        assert_eq!(symbol_of(u32::MAX).0, max_symbol(32));
        assert!(max_symbol(32) < ALPHABET as u32);
    }

    #[test]
    fn bit_stream_roundtrips_and_detects_overrun() {
        let mut w = BitWriter::with_capacity(0);
        let vals: Vec<(u32, u32)> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2654435761), i % 29))
            .collect();
        for &(v, b) in &vals {
            w.put(v, b);
        }
        let data = w.finish();
        let mut r = BitReader::new(&data);
        for &(v, b) in &vals {
            assert_eq!(r.take(b), v & ((1u64 << b) - 1) as u32);
        }
        r.finish().unwrap();
        let mut r = BitReader::new(&data);
        for &(_, b) in &vals {
            r.take(b);
        }
        r.take(9);
        assert!(r.finish().is_err());
    }
    #[test]
    fn bit_stream_is_the_bits_in_order_least_significant_first() {
        // Files hold these bytes: a bit-by-bit reference, from an empty writer up to
        // enough values to make it grow several times.
        for count in [0usize, 1, 7, 3000] {
            let mut w = BitWriter::with_capacity(0);
            let mut bits = Vec::new();
            for i in 0..count as u32 {
                let (v, b) = (i.wrapping_mul(0x9e37_79b9) ^ i >> 3, (i * 7) % 29);
                w.put(v, b);
                bits.extend((0..b).map(|j| (v >> j) & 1 == 1));
            }
            let mut expect = vec![0u8; bits.len().div_ceil(8)];
            for (j, _) in bits.iter().enumerate().filter(|(_, &bit)| bit) {
                expect[j / 8] |= 1 << (j % 8);
            }
            assert_eq!(w.finish(), expect, "{count} values");
        }
    }
}
