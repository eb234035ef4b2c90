//! `sub-pack` delta payloads of 32-bit floats: the zigzag difference of the bit patterns
//! against the base, bit-packed eight elements to a block at the width of the block's
//! largest difference.
//!
//! An AdamW step moves nearly every fp32 master weight by hundreds to hundreds of thousands
//! of ulps, so in `sub-quad` every quad of such a chunk escapes: one Huffman symbol and a
//! variable number of raw bits per element. Decoding that is more work than decoding the
//! plain float codec (a short Huffman head per element and whole remainder bytes), and the
//! delta of a whole state decoded a little slower than the full file. Here a block of
//! eight differences at width `w` is exactly `w` bytes, so every block starts on a byte:
//! the decoder reads one width symbol per eight elements and cuts the eight values out of
//! the block's bytes at offsets that depend on `w` alone (a table per width). The price is
//! size: a block pays for its largest difference, 4 to 10 points of the raw size more than
//! `sub-quad` on fp32 master weights (docs/benchmarks.md).
//!
//! Payload: `stream packed | stream widths` (see docs/format.md). `packed` is raw: the
//! blocks one after another, each `w` bytes, element `i` of a block in bits
//! `i*w .. (i+1)*w`, least significant bit first. `widths` holds one symbol per block (0 to
//! 32), Huffman-coded. The last block of a chunk whose length is not a multiple of eight is
//! padded with zero differences.

use crate::delta::{LeWord, Word};
use crate::delta_bits::BitReader;
use crate::error::{corrupt, Result};
use crate::float::{push_huffman, read_symbols, StreamReader, StripeHash, METHOD_RAW};
use crate::huffman;
use std::cell::RefCell;
use std::mem::MaybeUninit;

std::thread_local! {
    /// The widths of the chunk being planned or decoded on this thread, kept between
    /// chunks: a fresh buffer of this size (64 KiB for a 1 MiB chunk) is fresh memory.
    static WIDTH_BUFFER: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Elements per block.
pub(crate) const BLOCK: usize = 8;
/// Widths a block can have: 0 (all eight unchanged) to 32 bits.
pub(crate) const WIDTHS: usize = 33;
/// The most bytes [`pack_block`] writes from where a block starts.
pub(crate) const BLOCK_WRITE: usize = 32;

/// Element `i` of `bytes`, 32-bit words.
#[inline(always)]
fn word(bytes: &[u8], i: usize) -> u32 {
    u32::load(&bytes[4 * i..4 * i + 4])
}

/// The width of a block: the bit length of its largest difference.
#[inline(always)]
pub(crate) fn block_width(d: &[u32; BLOCK]) -> u32 {
    32 - d.iter().fold(0, |a, &v| a | v).leading_zeros()
}

/// Write block `d` at width `w` (every value below `2^w`) to `dst[at..at + w]`, as 32
/// bytes from `at`, the ones after the block's zero: the next block overwrites them.
/// `dst` must have [`BLOCK_WRITE`] bytes from `at`.
#[inline(always)]
pub(crate) fn pack_block(d: &[u32; BLOCK], w: u32, dst: &mut [MaybeUninit<u8>], at: usize) {
    // Pairs first (2w <= 64 bits), then the pairs of each half into 128 bits.
    let pair = |a: u32, b: u32| a as u64 | (b as u64) << w;
    let half = |p: u64, q: u64| p as u128 | (q as u128) << (2 * w);
    let h0 = half(pair(d[0], d[1]), pair(d[2], d[3]));
    let h1 = half(pair(d[4], d[5]), pair(d[6], d[7]));
    // The block as a 256-bit number, h1 above the 4w bits of h0.
    let low = h0 | h1.checked_shl(4 * w).unwrap_or(0);
    let high = h1.checked_shr(128 - 4 * w).unwrap_or(0);
    let out = &mut dst[at..at + BLOCK_WRITE];
    let bytes = [low.to_le_bytes(), high.to_le_bytes()];
    // SAFETY: `out` is 32 bytes, and `MaybeUninit<u8>` is laid out as `u8`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr().cast::<u8>(),
            out.as_mut_ptr().cast(),
            BLOCK_WRITE,
        )
    };
}

/// What [`plan`] found: the packed stream, whole, and the widths still to code.
pub struct PackPlan {
    /// Bytes of the payload [`PackPlan::emit`] writes, give or take the widths stream's
    /// rounding.
    pub estimate: usize,
    raw_hash: Option<Box<StripeHash>>,
    payload: Vec<u8>,
    widths: Vec<u16>,
    code: Option<huffman::Code>,
}

/// The zigzag differences of block `k` (zero past the end of the chunk).
#[inline(always)]
fn block_diffs(raw: &[u8], base: &[u8], k: usize) -> [u32; BLOCK] {
    let n = raw.len() / 4;
    std::array::from_fn(|i| {
        let e = k * BLOCK + i;
        if e < n {
            word(raw, e).sub_zigzag(word(base, e))
        } else {
            0
        }
    })
}

/// Pack `raw` against `base` (equal lengths, whole 32-bit elements; a shorter base
/// panics).
pub fn plan(raw: &[u8], base: &[u8]) -> PackPlan {
    plan_with(raw, base, true)
}

/// [`plan`], with the vector kernel where the CPU has it or without (`simd` false only in
/// tests, which check that both give the same payload).
fn plan_with(raw: &[u8], base: &[u8], simd: bool) -> PackPlan {
    debug_assert_eq!(raw.len(), base.len());
    let blocks = (raw.len() / 4).div_ceil(BLOCK);
    let mut widths = WIDTH_BUFFER.with(|b| {
        b.try_borrow_mut()
            .map(|mut b| std::mem::take(&mut *b))
            .unwrap_or_default()
    });
    widths.clear();
    widths.reserve(blocks);
    let mut counts = [0u32; WIDTHS];
    // Room for the packed stream at full width, then the widths stream (at most about
    // two bytes a block).
    let mut payload =
        crate::buffer_pool::payload_buffer(5 + blocks * BLOCK_WRITE + 2 * blocks + 64);
    payload.extend_from_slice(&[METHOD_RAW, 0, 0, 0, 0]);
    let mut raw_hash = StripeHash::new(raw.len()).map(Box::new);
    let dst = &mut payload.spare_capacity_mut()[..blocks * BLOCK_WRITE];
    let (mut done, mut at) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if simd && base.len() >= raw.len() && crate::delta_pack_avx512::available() {
        // SAFETY: the CPU supports the kernel and `base` is as long as `raw` (both checked
        // above); `dst` has room for every block at full width.
        (done, at) = unsafe {
            crate::delta_pack_avx512::pack_steps(
                raw,
                base,
                dst,
                &mut widths,
                &mut counts,
                raw_hash.as_deref_mut(),
            )
        };
    }
    let _ = simd;
    for k in done..blocks {
        let d = block_diffs(raw, base, k);
        let w = block_width(&d);
        counts[w as usize] += 1;
        widths.push(w as u16);
        pack_block(&d, w, dst, at);
        at += w as usize;
    }
    // SAFETY: every block wrote its bytes from where it starts, so the `at` bytes after
    // the stream header are all initialised, and inside the capacity (`dst`).
    unsafe { payload.set_len(5 + at) };
    payload[1..5].copy_from_slice(&(at as u32).to_le_bytes());
    let code = huffman::Code::from_counts(&counts);
    let widths_size = 5 + code.as_ref().map_or(2, |c| c.encoded_size(&counts, blocks));
    PackPlan {
        estimate: payload.len() + widths_size,
        raw_hash,
        payload,
        widths,
        code,
    }
}

impl PackPlan {
    /// The raw chunk's checksum as the vector planner left it (see
    /// `QuadPlan::take_raw_hash`): `None` where it took none, or once taken.
    pub(crate) fn take_raw_hash(&mut self) -> Option<StripeHash> {
        self.raw_hash.take().map(|h| *h)
    }

    pub fn emit(mut self) -> Vec<u8> {
        let mut payload = std::mem::take(&mut self.payload);
        let room = self
            .code
            .as_ref()
            .map_or(2, |c| c.room_needed(self.widths.len()));
        payload.reserve(5 + room);
        // Huffman whatever rANS would save: decoding speed is what this encoding is for.
        push_huffman(&mut payload, &self.widths, self.code.as_ref());
        payload
    }
}

impl Drop for PackPlan {
    /// The buffers go back for the next chunk, whether the plan was emitted or not (the
    /// plain encoding won).
    fn drop(&mut self) {
        let widths = std::mem::take(&mut self.widths);
        WIDTH_BUFFER.with(|b| {
            if let Ok(mut b) = b.try_borrow_mut() {
                *b = widths;
            }
        });
        crate::buffer_pool::recycle_payload(std::mem::take(&mut self.payload));
    }
}

/// Decode `payload` onto `base` (or onto `out` itself) into `out`, whole 32-bit elements.
/// Returns the xxh3-64 of `out` where the vector kernel computed it on the way.
pub(crate) fn decode(payload: &[u8], base: Option<&[u8]>, out: &mut [u8]) -> Result<Option<u64>> {
    decode_with(payload, base, out, true)
}

/// [`decode`], with the vector kernel or without (`simd` false only in tests, which check
/// that both decode alike).
fn decode_with(
    payload: &[u8],
    base: Option<&[u8]>,
    out: &mut [u8],
    simd: bool,
) -> Result<Option<u64>> {
    let n = out.len() / 4;
    let blocks = n.div_ceil(BLOCK);
    let mut reader = StreamReader::new(payload);
    let (method, packed) = reader.stream()?;
    let widths_stream = reader.stream()?;
    reader.finish()?;
    if method != METHOD_RAW {
        return Err(corrupt(format!(
            "sub-pack bits stored with method {method}, not raw"
        )));
    }
    crate::scratch::with_buffer(&WIDTH_BUFFER, blocks, |widths| {
        apply(widths_stream, widths, packed, base, out, simd)
    })
}

/// Decode the widths into `widths` (one per block), then apply the packed blocks.
fn apply(
    widths_stream: (u8, &[u8]),
    widths: &mut [u16],
    packed: &[u8],
    base: Option<&[u8]>,
    out: &mut [u8],
    simd: bool,
) -> Result<Option<u64>> {
    let n = out.len() / 4;
    read_symbols(widths_stream, widths, WIDTHS, "sub-pack width")?;
    let total: usize = widths.iter().map(|&w| w as usize).sum();
    if total != packed.len() {
        return Err(corrupt(format!(
            "sub-pack widths take {total} bytes, the packed stream holds {}",
            packed.len()
        )));
    }
    let mut hash = StripeHash::new(out.len());
    let (mut done, mut at) = (0usize, 0usize);
    #[cfg(target_arch = "x86_64")]
    if simd && crate::delta_pack_avx512::available() {
        // SAFETY: the CPU supports the kernel (checked above), every width is below 33
        // (`read_symbols`) and `base` is as long as `out` (the caller's).
        (done, at) =
            unsafe { crate::delta_pack_avx512::apply(widths, packed, base, out, hash.as_mut()) };
    }
    let _ = simd;
    // The widths add up to the stream's length, so the reader stays inside it.
    let mut bits = BitReader::at(packed, 8 * at as u64);
    for (k, &w) in widths.iter().enumerate().skip(done) {
        for i in 0..BLOCK {
            let e = k * BLOCK + i;
            let v = bits.take(w as u32);
            if e >= n {
                if v != 0 {
                    return Err(corrupt("sub-pack padding is not zero"));
                }
                continue;
            }
            let b = match base {
                Some(b) => word(b, e),
                None => word(out, e),
            };
            v.add_unzigzag(b).store(&mut out[4 * e..4 * e + 4]);
        }
    }
    Ok(hash.and_then(|h| h.finish(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::xxh3_checksum;
    use crate::float::{push_stream, METHOD_CONST};
    use proptest::prelude::*;

    fn rng(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// `n` base words and new words whose zigzag differences lie below `2^width(k)` in
    /// block `k`, each block's top bit set in one element so that the block has that width.
    fn blocks_of(n: usize, width: impl Fn(usize) -> u32, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut next = rng(seed);
        let (mut base, mut raw) = (Vec::new(), Vec::new());
        for e in 0..n {
            let w = width(e / BLOCK);
            let b = next() as u32;
            let z = match w {
                0 => 0,
                _ if e % BLOCK == 3 => 1 << (w - 1),
                _ => (next() as u32) & (u32::MAX >> (32 - w)),
            };
            base.extend_from_slice(&b.to_le_bytes());
            raw.extend_from_slice(&z.add_unzigzag(b).to_le_bytes());
        }
        (raw, base)
    }

    /// Decode `payload` with and without the vector kernel, onto a base held apart and in
    /// place, and check every result against `raw`.
    fn check_decodes(payload: &[u8], raw: &[u8], base: &[u8]) {
        for simd in [true, false] {
            let mut out = vec![0xa5; raw.len()];
            let hash = decode_with(payload, Some(base), &mut out, simd).unwrap();
            assert!(out == raw, "simd {simd}: decoded onto a base held apart");
            if let Some(h) = hash {
                assert_eq!(h, xxh3_checksum(raw), "simd {simd}");
            }
            let mut inout = base.to_vec();
            decode_with(payload, None, &mut inout, simd).unwrap();
            assert!(inout == raw, "simd {simd}: decoded in place");
        }
    }

    /// Planned with and without the vector kernel (same payload, and the raw checksum the
    /// vector planner took), then decoded every way.
    fn roundtrip(raw: &[u8], base: &[u8]) -> Vec<u8> {
        let mut vector = plan_with(raw, base, true);
        if let Some(h) = vector.take_raw_hash() {
            assert_eq!(h.finish(raw), Some(xxh3_checksum(raw)));
        }
        let estimate = vector.estimate;
        let payload = vector.emit();
        assert!(
            payload == plan_with(raw, base, false).emit(),
            "vector and scalar plans"
        );
        assert!(
            payload.len().abs_diff(estimate) <= 8,
            "{} against {estimate}",
            payload.len()
        );
        check_decodes(&payload, raw, base);
        payload
    }

    #[test]
    fn every_width_roundtrips() {
        // 33 widths in turn, then again with the pairs shifted by one block, and a chunk
        // length that is neither a whole block nor a whole step.
        for (shift, extra) in [(0, 0), (1, 3), (0, 7)] {
            let n = BLOCK * (2 * WIDTHS + shift) + extra;
            let (raw, base) = blocks_of(n, |k| ((k + shift) % WIDTHS) as u32, n as u64);
            let payload = roundtrip(&raw, &base);
            let packed: usize = (0..n.div_ceil(BLOCK)).map(|k| (k + shift) % WIDTHS).sum();
            assert_eq!(
                u32::from_le_bytes(payload[1..5].try_into().unwrap()) as usize,
                packed
            );
        }
    }

    #[test]
    fn a_long_chunk_of_mixed_widths_roundtrips() {
        let mut next = rng(99);
        let widths: Vec<u32> = (0..40_000).map(|_| (next() % 26) as u32).collect();
        let (raw, base) = blocks_of(BLOCK * widths.len() - 5, |k| widths[k], 7);
        roundtrip(&raw, &base);
    }

    #[test]
    fn short_and_empty_chunks_roundtrip() {
        for n in [0, 1, 7, 8, 9, 15, 16, 17, 60] {
            let (raw, base) = blocks_of(n, |k| 3 + k as u32, n as u64);
            roundtrip(&raw, &base);
        }
    }

    fn payload_of(packed: &[u8], widths: (u8, &[u8])) -> Vec<u8> {
        let mut p = Vec::new();
        push_stream(&mut p, METHOD_RAW, packed);
        push_stream(&mut p, widths.0, widths.1);
        p
    }

    fn decode_err(payload: &[u8], elements: usize) -> String {
        let base = vec![0u8; 4 * elements];
        let mut out = vec![0u8; 4 * elements];
        let scalar = decode_with(payload, Some(&base), &mut out, false)
            .unwrap_err()
            .to_string();
        let vector = decode_with(payload, Some(&base), &mut out, true)
            .unwrap_err()
            .to_string();
        assert_eq!(scalar, vector);
        scalar
    }

    #[test]
    fn bad_payloads_are_refused_with_what_is_wrong() {
        let (raw, base) = blocks_of(64, |k| 5 + k as u32, 3);
        let good = roundtrip(&raw, &base);
        for len in 0..good.len() {
            let err = decode_err(&good[..len], 64);
            assert!(
                err.contains("truncated") || err.contains("runs past"),
                "{len}: {err}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_err(&trailing, 64).contains("trailing bytes"));
        let mut coded = good.clone();
        coded[0] = METHOD_CONST;
        assert!(decode_err(&coded, 64).contains("method 1, not raw"));
        // Widths of two blocks (3 + 4 bytes) against a packed stream of 8 bytes.
        let mut widths = Vec::new();
        push_huffman(
            &mut widths,
            &[3, 4],
            huffman::Code::from_counts(&[0, 0, 0, 1, 1]).as_ref(),
        );
        let err = decode_err(&payload_of(&[0; 8], (widths[0], &widths[5..])), 16);
        assert!(
            err.contains("widths take 7 bytes, the packed stream holds 8"),
            "{err}"
        );
        // A width of 40 bits.
        let err = decode_err(
            &payload_of(&[0; 80], (METHOD_CONST, &40u16.to_le_bytes())),
            8,
        );
        assert!(err.contains("out of range"), "{err}");
        // Five elements: the block's last three values are padding and must be zero.
        let err = decode_err(&payload_of(&[0xff], (METHOD_CONST, &1u16.to_le_bytes())), 5);
        assert!(err.contains("padding is not zero"), "{err}");
    }

    proptest! {
        #[test]
        fn any_words_roundtrip(
            data in proptest::collection::vec(any::<(u32, u32)>(), 0..700),
            shift in 0u32..32,
        ) {
            let base: Vec<u8> = data.iter().flat_map(|p| p.0.to_le_bytes()).collect();
            let raw: Vec<u8> = data
                .iter()
                .flat_map(|p| p.0.wrapping_add(p.1 >> shift).to_le_bytes())
                .collect();
            roundtrip(&raw, &base);
        }

        #[test]
        fn garbage_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            elements in 0usize..200,
        ) {
            let base = vec![7u8; 4 * elements];
            for simd in [true, false] {
                let mut out = vec![0u8; 4 * elements];
                let _ = decode_with(&payload, Some(&base), &mut out, simd);
            }
        }
    }
}
