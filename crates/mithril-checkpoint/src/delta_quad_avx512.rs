//! `sub-quad` with AVX-512: the planner and the decoder's three passes, each a whole
//! 64-byte vector of elements a step, each giving what the scalar code it stands in front
//! of gives (a test per kernel checks it).
//!
//! [`plan_blocks`] plans sixteen elements (four quads) a step.
//! The scalar planner spends about twenty operations per element where every quad escapes
//! (the fp32 masters' steps): a difference, a branch on its size, a bit length, a symbol,
//! and a bit writer whose flush branch is taken at random. Here the differences, the quad
//! symbols, the escape symbols and the extra bits of sixteen elements are formed in
//! vectors; the escaped lanes are compressed to the front, their extra bits merged in pairs
//! (two values of at most 28 bits fit 64), and a scatter of one 64-bit window per pair
//! appends them to the bit stream ([`scatter_pairs`]; a branch-free loop where the pairs
//! are few or one is narrow). The output is the scalar planner's, byte for byte (a test
//! checks it).
//!
//! [`apply_in_order`] is the decoder's side for chunks whose every quad escaped: the extra
//! bits of a 64-byte vector of elements (sixteen 32-bit or thirty-two 16-bit ones) are cut
//! out of one 64-byte window of the stream at offsets from a prefix sum of their widths,
//! instead of one dependent read per element. For a block of mixed quads, [`escape_diffs`]
//! does the same into a buffer of the block's escaped differences, and [`add_quads`] then
//! adds every quad in one pass: a plain quad's differences from its symbol, an escaped
//! one's expanded from that buffer. Both hand the words they store to the chunk's
//! checksum. [`add_plain_quads`] is the plain pass alone, for CPUs without the byte
//! permutes (the escapes then follow one by one).

#![cfg(target_arch = "x86_64")]

use crate::delta_bits::{BitReader, BitWriter, EXACT, FIRST_LEN, KEPT_BITS, LEAD_SHIFT};
use crate::xxh3_avx512::StripeHash;
use std::arch::x86_64::*;

/// How far ahead of a step its inputs are prefetched, in bytes: 2048 decoded fp32 masters
/// 3-4 % faster from memory than 1024 (512 and 4096 slower, docs/benchmarks.md).
const PREFETCH: usize = 2048;

/// Elements per step.
pub(crate) const BLOCK: usize = 16;

/// From how many pairs of extra bits a step appends them with [`scatter_pairs`] (a fixed
/// cost) rather than a pair at a time (each pair waiting for the one before).
const SCATTERED_FROM: usize = 4;

/// Whether [`plan_blocks`] and [`add_plain_quads`] may run on this CPU.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512cd")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("bmi2")
        && is_x86_feature_detected!("popcnt")
}

/// Extra-bit bytes a step can append, and the slack its last store needs (64 bytes, from
/// [`scatter_pairs`]).
pub(crate) const fn extra_room<const W: usize>(blocks: usize) -> usize {
    blocks * (BLOCK * (8 * W - 1 - KEPT_BITS as usize)).div_ceil(8) + 64
}

/// Plan the first `blocks` steps of `raw` against `base` (words of `W` = 2 or 4 bytes):
/// quad symbols into `quads[..4 blocks]`, escape symbols appended to `escapes`, and the
/// extra bits into a fresh stream, returned as a writer the scalar planner continues.
/// With 4-byte words every step's 64 bytes of `raw` also go to `hash` (the chunk's raw
/// checksum), while they are in a register; 2-byte words leave it untouched.
///
/// # Safety
/// The CPU must support what [`available`] checks. `raw` and `base` must hold
/// `BLOCK * W * blocks` bytes, `quads` `4 blocks` symbols, and `escapes` spare capacity
/// for `BLOCK * blocks + BLOCK` more.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,bmi2,popcnt")]
pub(crate) unsafe fn plan_blocks<const W: usize>(
    raw: &[u8],
    base: &[u8],
    blocks: usize,
    quads: &mut [u16],
    escapes: &mut Vec<u16>,
    escape_symbol: u16,
    small: u32,
    hash: Option<&mut StripeHash>,
) -> BitWriter {
    debug_assert!(W == 2 || W == 4);
    debug_assert!(raw.len() >= BLOCK * W * blocks && base.len() >= BLOCK * W * blocks);
    debug_assert!(quads.len() >= 4 * blocks);
    debug_assert!(escapes.capacity() - escapes.len() >= BLOCK * (blocks + 1));
    // Recycled: a fresh buffer this large is fresh memory, faulted in page by page.
    let mut extra: Vec<u8> = crate::buffer_pool::payload_buffer(extra_room::<W>(blocks));
    let out = extra.as_mut_ptr();
    let mut pos = 0usize;
    let mut acc = 0u64;
    let mut filled = 0u32;
    let mut esc_len = escapes.len();
    let esc_out = escapes.as_mut_ptr();

    let quad_shifts = _mm512_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6, 0, 2, 4, 6);
    let first_lane = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    let small_v = _mm512_set1_epi32(small as i32);
    let exact_v = _mm512_set1_epi32(EXACT as i32);
    let width = _mm512_set1_epi32(32);
    let dropped = _mm512_set1_epi32((1 + KEPT_BITS) as i32);
    let kept_mask = _mm512_set1_epi32((1 << KEPT_BITS) - 1);
    let symbol_base = _mm512_set1_epi32(EXACT.wrapping_sub(FIRST_LEN << KEPT_BITS) as i32);
    let one = _mm512_set1_epi32(1);
    let low_half = _mm512_set1_epi64(0xFFFF_FFFF);
    let escape_v = _mm_set1_epi16(escape_symbol as i16);
    let mut pairs = [0u64; BLOCK / 2];
    let mut pair_bits = [0u64; BLOCK / 2];
    // The hash's state in a local, so that it stays in registers across the loop.
    let mut local = hash.as_deref().cloned().filter(|_| W == 4);

    for i in 0..blocks {
        // SAFETY: step `i` reads `BLOCK * W` bytes at `BLOCK * W * i` of `raw` and
        // `base`, inside the lengths the caller guarantees.
        let d = unsafe {
            let at = BLOCK * W * i;
            let (t, b) = (raw.as_ptr().add(at), base.as_ptr().add(at));
            _mm_prefetch::<_MM_HINT_T0>(t.wrapping_add(PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH).cast());
            if W == 4 {
                let words = _mm512_loadu_si512(t.cast());
                if let Some(h) = local.as_mut() {
                    h.push(words);
                }
                let diff = _mm512_sub_epi32(words, _mm512_loadu_si512(b.cast()));
                _mm512_xor_si512(_mm512_slli_epi32::<1>(diff), _mm512_srai_epi32::<31>(diff))
            } else {
                let diff =
                    _mm256_sub_epi16(_mm256_loadu_si256(t.cast()), _mm256_loadu_si256(b.cast()));
                let zz =
                    _mm256_xor_si256(_mm256_slli_epi16::<1>(diff), _mm256_srai_epi16::<15>(diff));
                _mm512_cvtepu16_epi32(zz)
            }
        };
        // Quad symbols: each lane shifted to its two bits, ORed across its quad (one
        // 128-bit lane), the first lane of each quad kept.
        let s = _mm512_sllv_epi32(d, quad_shifts);
        let s = _mm512_or_si512(s, _mm512_shuffle_epi32::<0b10_11_00_01>(s));
        let s = _mm512_or_si512(s, _mm512_shuffle_epi32::<0b01_00_11_10>(s));
        let q = _mm512_cvtepi32_epi16(_mm512_permutexvar_epi32(first_lane, s));
        let big = _mm512_cmpge_epu32_mask(d, small_v) as u32;
        let any = big | big >> 1;
        let any = any | any >> 2;
        let escaped = _pext_u32(any, 0x1111);
        let q = _mm_mask_blend_epi16(escaped as __mmask8, _mm256_castsi256_si128(q), escape_v);
        // SAFETY: quads 4i..4i+4 are inside `quads`.
        unsafe { _mm_storel_epi64(quads.as_mut_ptr().add(4 * i).cast(), q) };
        if escaped == 0 {
            continue;
        }
        let lanes = (_pdep_u32(escaped, 0x1111) * 0xF) as __mmask16;
        let len = _mm512_sub_epi32(width, _mm512_lzcnt_epi32(d));
        let exact = _mm512_cmplt_epu32_mask(d, exact_v);
        let bits = _mm512_maskz_sub_epi32(!exact, len, dropped);
        let top = _mm512_and_si512(_mm512_srlv_epi32(d, bits), kept_mask);
        let coded = _mm512_add_epi32(
            _mm512_add_epi32(symbol_base, _mm512_slli_epi32::<{ KEPT_BITS }>(len)),
            top,
        );
        let symbols = _mm512_mask_mov_epi32(coded, exact, d);
        let values = _mm512_and_si512(d, _mm512_sub_epi32(_mm512_sllv_epi32(one, bits), one));
        let count = lanes.count_ones() as usize;
        // SAFETY: the caller left room for `BLOCK` more symbols past every step's start.
        unsafe {
            let packed = _mm512_cvtepi32_epi16(_mm512_maskz_compress_epi32(lanes, symbols));
            _mm256_storeu_si256(esc_out.add(esc_len).cast(), packed);
        }
        esc_len += count;
        // Only differences of `EXACT` or more have extra bits (few, in a 16-bit step's
        // escapes): pairs of consecutive such values in 64-bit lanes, low value, then the
        // high one above its bits (a lone last value pairs with a zero of no bits).
        let with_bits = lanes & !exact;
        let v = _mm512_maskz_compress_epi32(with_bits, values);
        let n = _mm512_maskz_compress_epi32(with_bits, bits);
        let low_bits = _mm512_and_si512(n, low_half);
        let merged = _mm512_or_si512(
            _mm512_and_si512(v, low_half),
            _mm512_sllv_epi64(_mm512_srli_epi64::<32>(v), low_bits),
        );
        let merged_bits = _mm512_add_epi64(low_bits, _mm512_srli_epi64::<32>(n));
        let pair_count = (with_bits.count_ones() as usize).div_ceil(2);
        // SAFETY: a pair is below 2^56, and `extra_room` leaves 64 bytes past `pos`.
        if pair_count >= SCATTERED_FROM
            && unsafe {
                scatter_pairs(
                    merged,
                    merged_bits,
                    pair_count,
                    out,
                    &mut pos,
                    &mut acc,
                    &mut filled,
                )
            }
        {
            continue;
        }
        // SAFETY: both arrays are 64 bytes.
        unsafe {
            _mm512_storeu_si512(pairs.as_mut_ptr().cast(), merged);
            _mm512_storeu_si512(pair_bits.as_mut_ptr().cast(), merged_bits);
        }
        for j in 0..pair_count {
            // At most 7 bits wait in `acc` and a pair holds at most 56, so the sum fits.
            // Loaded from the arrays, not taken from the vectors: the compiler would
            // otherwise extract every pair from `merged` and `merged_bits` (two shuffles
            // each, on the port that the vector work above also needs), which bound the
            // fp32 planner; the loads go to the load ports instead.
            // SAFETY: `j` is below 8, inside both arrays.
            let (pair, bits) = unsafe {
                (
                    std::ptr::read_volatile(pairs.as_ptr().add(j)),
                    std::ptr::read_volatile(pair_bits.as_ptr().add(j)),
                )
            };
            acc |= pair << filled;
            filled += bits as u32;
            // SAFETY: `pos` stays below the bytes this step may append plus those before
            // it, and `extra_room` leaves slack for this store.
            unsafe { std::ptr::write_unaligned(out.add(pos).cast::<u64>(), acc.to_le()) };
            let whole = filled >> 3;
            pos += whole as usize;
            acc >>= 8 * whole;
            filled &= 7;
        }
    }
    // SAFETY: the first `pos` bytes of `extra` and `esc_len` symbols of `escapes` were
    // written above (the bytes past them are scratch and stay outside the lengths).
    unsafe {
        extra.set_len(pos);
        escapes.set_len(esc_len);
    }
    if let (Some(to), Some(from)) = (hash, local) {
        *to = from;
    }
    BitWriter::resume(extra, acc, filled)
}

/// Append the first `count` (1 to 8) pairs of extra bits to the stream at once, if every
/// one is at least 7 bits wide (returns whether it did): the 64-bit lanes of `pairs`, each
/// no wider than its lane of `widths` says (at most 56 bits). `acc` holds the `filled`
/// (below 8) pending bits of the byte at `out + pos`.
///
/// Each pair goes out in a 64-bit window that starts at the byte its first bit falls in,
/// below it the bits of that byte that come before it. With pairs of 7 bits or more those
/// are the top bits of the pair before (or the pending bits), so every window is known
/// without the others; and a window reaches the next one's first byte, which the next
/// window then writes again, whole. A scatter writes the windows in lane order.
///
/// # Safety
/// The CPU must support what [`available`] checks, and `out` must have 64 writable bytes
/// at `pos`.
#[inline]
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,bmi2,popcnt")]
unsafe fn scatter_pairs(
    pairs: __m512i,
    widths: __m512i,
    count: usize,
    out: *mut u8,
    pos: &mut usize,
    acc: &mut u64,
    filled: &mut u32,
) -> bool {
    debug_assert!((1..=BLOCK / 2).contains(&count));
    let lanes = ((1u32 << count) - 1) as __mmask8;
    if _mm512_mask_cmplt_epu64_mask(lanes, widths, _mm512_set1_epi64(7)) != 0 {
        return false;
    }
    let zero = _mm512_setzero_si512();
    // Where each pair ends, in bits from the pending byte: the pending bits plus an
    // inclusive prefix sum of the widths; it starts its width before that.
    let mut ends = widths;
    ends = _mm512_add_epi64(ends, _mm512_alignr_epi64::<7>(ends, zero));
    ends = _mm512_add_epi64(ends, _mm512_alignr_epi64::<6>(ends, zero));
    ends = _mm512_add_epi64(ends, _mm512_alignr_epi64::<4>(ends, zero));
    ends = _mm512_add_epi64(ends, _mm512_set1_epi64(i64::from(*filled)));
    let starts = _mm512_sub_epi64(ends, widths);
    let seven = _mm512_set1_epi64(7);
    // The top bits of each pair that fall in the byte the next pair starts in.
    let spilled = _mm512_srlv_epi64(
        pairs,
        _mm512_sub_epi64(widths, _mm512_and_si512(ends, seven)),
    );
    let before = _mm512_alignr_epi64::<7>(spilled, _mm512_maskz_set1_epi64(0x80, *acc as i64));
    let windows = _mm512_or_si512(
        _mm512_sllv_epi64(pairs, _mm512_and_si512(starts, seven)),
        before,
    );
    // SAFETY: every window starts at most 7 * 8 bytes past `pos` (a pair and the bits
    // before it take at most 63 bits), inside the 64 bytes the caller guarantees.
    unsafe {
        _mm512_mask_i64scatter_epi64::<1>(
            out.add(*pos).cast(),
            lanes,
            _mm512_srli_epi64::<3>(starts),
            windows,
        )
    };
    let last = _mm512_set1_epi64(count as i64 - 1);
    let end =
        _mm_cvtsi128_si64(_mm512_castsi512_si128(_mm512_permutexvar_epi64(last, ends))) as u64;
    *acc = _mm_cvtsi128_si64(_mm512_castsi512_si128(_mm512_permutexvar_epi64(
        last, spilled,
    ))) as u64;
    *pos += (end >> 3) as usize;
    *filled = (end & 7) as u32;
    true
}

/// Whether [`apply_in_order`], [`escape_diffs`] and [`add_quads`] may run on this CPU.
pub(crate) fn apply_available() -> bool {
    available() && is_x86_feature_detected!("avx512vbmi") && is_x86_feature_detected!("avx512vbmi2")
}

/// The differences of sixteen escape symbols of 32-bit words (their 16-bit read forms,
/// `delta_bits::READ_FORMS`, at `symbols`) whose extra bits start at bit `first_bit`
/// (below 8) of `window`, unzigzagged in 32-bit lanes; and the extra bits they take.
/// Symbols must be below the cardinality for 32-bit words, so that no difference has more
/// than 28 extra bits and sixteen fit the window. A read form splits into the leading
/// value and the extra-bit count with two operations.
///
/// Each lane's extra bits are cut out by where they end: the eight window bytes before
/// the byte after its last bit (one byte permute per four), shifted left so that its last
/// bit is the top bit of the lane. A double shift then moves them in under the leading
/// value, with no mask: bits above a lane's own fall out at the top, and the window bytes
/// before the stream's first (wrapped permute indices) only ever land below them.
///
/// # Safety
/// The CPU must support what [`apply_available`] checks; `symbols` must point at sixteen
/// readable `u16`s.
#[inline]
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")]
unsafe fn escaped_diffs16(window: __m512i, first_bit: u32, symbols: *const u16) -> (__m512i, u64) {
    let zero = _mm512_setzero_si512();
    let one = _mm512_set1_epi32(1);
    // SAFETY: the caller guarantees sixteen readable symbols.
    let forms = _mm512_cvtepu16_epi32(unsafe { _mm256_loadu_si256(symbols.cast()) });
    let extra = _mm512_and_si512(forms, _mm512_set1_epi32((1 << LEAD_SHIFT) - 1));
    let lead = _mm512_srli_epi32::<{ LEAD_SHIFT }>(forms);
    // Where each element's extra bits end: an inclusive prefix sum of their widths.
    let mut ends = extra;
    ends = _mm512_add_epi32(ends, _mm512_alignr_epi32::<15>(ends, zero));
    ends = _mm512_add_epi32(ends, _mm512_alignr_epi32::<14>(ends, zero));
    ends = _mm512_add_epi32(ends, _mm512_alignr_epi32::<12>(ends, zero));
    ends = _mm512_add_epi32(ends, _mm512_alignr_epi32::<8>(ends, zero));
    // The window bit after each lane's last one, rounded up to a byte: `end_byte`; and
    // how far that rounding moved it, the left shift that makes the last bit the top one.
    let end_up = _mm512_add_epi32(ends, _mm512_set1_epi32(first_bit as i32 + 7));
    let end_byte = _mm512_srli_epi32::<3>(end_up);
    let shift = _mm512_andnot_si512(end_up, _mm512_set1_epi32(7));
    // `end_byte` in all four bytes of its lane, less 4..1: the indices of the four window
    // bytes before it; the four before those are four less.
    let index = _mm512_add_epi8(
        _mm512_shuffle_epi8(
            end_byte,
            _mm512_set4_epi32(0x0C0C_0C0C, 0x0808_0808, 0x0404_0404, 0),
        ),
        _mm512_set1_epi32(0xFFFE_FDFC_u32 as i32),
    );
    let high = _mm512_permutexvar_epi8(index, window);
    let low = _mm512_permutexvar_epi8(_mm512_sub_epi8(index, _mm512_set1_epi8(4)), window);
    let top = _mm512_shldv_epi32(high, low, shift);
    let d = _mm512_shldv_epi32(lead, top, extra);
    let diff = _mm512_xor_si512(
        _mm512_srli_epi32::<1>(d),
        _mm512_sub_epi32(zero, _mm512_and_si512(d, one)),
    );
    let taken = _mm_extract_epi32::<3>(_mm512_extracti32x4_epi32::<3>(ends));
    (diff, taken as u32 as u64)
}

/// [`escaped_diffs16`] for 16-bit words, thirty-two symbols in 16-bit lanes: at most 12
/// extra bits each, so thirty-two fit the window, and a lane's bits, with up to 7 bits of
/// rounding above them, the four window bytes before the byte after its last bit.
///
/// # Safety
/// As [`escaped_diffs16`], with thirty-two readable `u16`s at `symbols`, each the read
/// form of a symbol below the cardinality for 16-bit words.
#[inline]
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")]
unsafe fn escaped_diffs32(window: __m512i, first_bit: u32, symbols: *const u16) -> (__m512i, u64) {
    let zero = _mm512_setzero_si512();
    let one = _mm512_set1_epi16(1);
    // SAFETY: the caller guarantees thirty-two readable symbols.
    let forms = unsafe { _mm512_loadu_si512(symbols.cast()) };
    let extra = _mm512_and_si512(forms, _mm512_set1_epi16((1 << LEAD_SHIFT) - 1));
    let lead = _mm512_srli_epi16::<{ LEAD_SHIFT }>(forms);
    // Inclusive prefix sum of the widths: lane i adds lane i - k, for k = 1, 2, 4, 8, 16.
    let lanes = _mm512_set_epi16(
        31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9,
        8, 7, 6, 5, 4, 3, 2, 1, 0,
    );
    let mut ends = extra;
    for k in [1, 2, 4, 8, 16] {
        let from = _mm512_sub_epi16(lanes, _mm512_set1_epi16(k));
        let shifted = _mm512_maskz_permutexvar_epi16(!((1u32 << k) - 1), from, ends);
        ends = _mm512_add_epi16(ends, shifted);
    }
    let end_up = _mm512_add_epi16(ends, _mm512_set1_epi16(first_bit as i16 + 7));
    let end_byte = _mm512_srli_epi16::<3>(end_up);
    let shift = _mm512_andnot_si512(end_up, _mm512_set1_epi16(7));
    // `end_byte` in both bytes of its lane, less 2 and 1: the indices of the two window
    // bytes before it; the two before those are two less.
    let index = _mm512_add_epi8(
        _mm512_mullo_epi16(end_byte, _mm512_set1_epi16(0x0101)),
        _mm512_set1_epi16(0xFFFE_u16 as i16),
    );
    let high = _mm512_permutexvar_epi8(index, window);
    let low = _mm512_permutexvar_epi8(_mm512_sub_epi8(index, _mm512_set1_epi8(2)), window);
    let top = _mm512_shldv_epi16(high, low, shift);
    let d = _mm512_shldv_epi16(lead, top, extra);
    let diff = _mm512_xor_si512(
        _mm512_srli_epi16::<1>(d),
        _mm512_sub_epi16(zero, _mm512_and_si512(d, one)),
    );
    let taken = _mm_extract_epi16::<7>(_mm512_extracti32x4_epi32::<3>(ends));
    (diff, taken as u16 as u64)
}

/// Escape symbols a step decodes: a 64-byte vector of `W`-byte differences.
pub(crate) const fn step_elems<const W: usize>() -> usize {
    64 / W
}

/// The differences of the [`step_elems`] symbols at `symbols` (in read form) as `W`-byte
/// words, their extra bits from bit `pos` of the stream `data` ([`escaped_diffs16`] or
/// [`escaped_diffs32`]); `None` where the 64-byte window from that bit's byte would pass
/// the end of the stream (the caller finishes one element at a time).
///
/// # Safety
/// The CPU must support what [`apply_available`] checks; `symbols` must point at
/// [`step_elems`] readable symbols, each below the cardinality for `W`-byte words.
#[inline]
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")]
unsafe fn diffs_at<const W: usize>(
    data: &[u8],
    pos: u64,
    symbols: *const u16,
) -> Option<(__m512i, u64)> {
    let byte = (pos >> 3) as usize;
    let window = data.get(byte..byte + 64)?;
    // SAFETY: `window` is 64 bytes; the symbols are the caller's.
    unsafe {
        let window = _mm512_loadu_si512(window.as_ptr().cast());
        Some(if W == 4 {
            escaped_diffs16(window, (pos & 7) as u32, symbols)
        } else {
            escaped_diffs32(window, (pos & 7) as u32, symbols)
        })
    }
}

/// Add each element's escaped difference (symbol `escapes[i]` in read form, and its extra
/// bits from `bits`) to the words of `elems` (`W` = 2 or 4 bytes), or with `base` to the
/// words of `base`, writing the sums to `elems`; 64 bytes a step, while a step's 64-byte
/// window of extra bits lies inside the stream. Every step's sums go to `hash`. Returns
/// the elements done, a multiple of [`step_elems`], and leaves `bits` after their extra
/// bits; the caller does the rest one by one. Symbols must be below the cardinality for
/// `W` (as `read_mapped_symbols` checks).
///
/// # Safety
/// The CPU must support what [`apply_available`] checks; `base`, if given, must be at
/// least as long as `elems`.
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")]
pub(crate) unsafe fn apply_in_order<const W: usize>(
    elems: &mut [u8],
    base: Option<&[u8]>,
    escapes: &[u16],
    bits: &mut BitReader,
    hash: Option<&mut StripeHash>,
) -> usize {
    // The hash's state in a local, so that it stays in registers across the loop.
    let mut local = hash.as_deref().cloned();
    debug_assert!(W == 2 || W == 4);
    debug_assert!(base.is_none_or(|b| b.len() >= elems.len()));
    let per = step_elems::<W>();
    let steps = (elems.len() / W).min(escapes.len()) / per;
    let dst = elems.as_mut_ptr();
    let src = base.map_or(dst.cast_const(), <[u8]>::as_ptr);
    let (data, mut pos) = bits.parts();
    let mut done = 0;
    while done < steps {
        // SAFETY: the step's symbols and 64 element bytes lie inside `escapes` and `elems`
        // (`done < steps`), and so inside `base`.
        let Some((diff, taken)) =
            (unsafe { diffs_at::<W>(data, pos, escapes.as_ptr().add(per * done)) })
        else {
            break;
        };
        unsafe {
            let (from, to) = (src.add(64 * done), dst.add(64 * done));
            _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(PREFETCH).cast());
            let old = _mm512_loadu_si512(from.cast());
            let sum = if W == 4 {
                _mm512_add_epi32(old, diff)
            } else {
                _mm512_add_epi16(old, diff)
            };
            _mm512_storeu_si512(to.cast(), sum);
            if let Some(h) = local.as_mut() {
                h.push(sum);
            }
        }
        pos += taken;
        done += 1;
    }
    *bits = BitReader::at(data, pos);
    if let (Some(to), Some(from)) = (hash, local) {
        *to = from;
    }
    done * per
}

/// The differences of `escapes` (read forms of symbols below the cardinality for `W`, their
/// extra bits from `bits`) unzigzagged into `out` as `W`-byte words, 64 bytes a step while
/// a step's symbols remain and its window of extra bits lies inside the stream. Returns the
/// differences done (a multiple of [`step_elems`]) and leaves `bits` after their extra
/// bits; the caller does the rest one by one.
///
/// # Safety
/// The CPU must support what [`apply_available`] checks.
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,avx512vbmi,avx512vbmi2,bmi2,popcnt")]
pub(crate) unsafe fn escape_diffs<const W: usize>(
    escapes: &[u16],
    bits: &mut BitReader,
    out: &mut [u8],
) -> usize {
    debug_assert!(W == 2 || W == 4);
    let per = step_elems::<W>();
    let steps = escapes.len().min(out.len() / W) / per;
    let (data, mut pos) = bits.parts();
    let mut done = 0;
    while done < steps {
        // SAFETY: the step's symbols lie inside `escapes` and its 64 bytes inside `out`
        // (`done < steps`).
        let Some((diff, taken)) =
            (unsafe { diffs_at::<W>(data, pos, escapes.as_ptr().add(per * done)) })
        else {
            break;
        };
        // SAFETY: as above.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(64 * done).cast(), diff) };
        pos += taken;
        done += 1;
    }
    *bits = BitReader::at(data, pos);
    done * per
}

/// How many of `qs` are `symbol`.
///
/// # Safety
/// The CPU must support what [`available`] checks.
#[target_feature(enable = "avx512f,avx512bw,popcnt")]
pub(crate) unsafe fn count_symbol(qs: &[u16], symbol: u16) -> usize {
    let wanted = _mm512_set1_epi16(symbol as i16);
    let mut groups = qs.chunks_exact(32);
    let mut count = 0usize;
    for g in &mut groups {
        // SAFETY: `g` is 32 symbols, 64 bytes.
        let v = unsafe { _mm512_loadu_si512(g.as_ptr().cast()) };
        count += _mm512_cmpeq_epi16_mask(v, wanted).count_ones() as usize;
    }
    count + groups.remainder().iter().filter(|&&q| q == symbol).count()
}

/// The differences of the quads of one 64-byte step (eight 16-bit symbols or four 32-bit
/// ones in the low lanes of `q`), unzigzagged in their `W`-byte lanes: each symbol's four
/// two-bit differences spread to their lanes by a permute and a variable shift. An escape
/// symbol (256) has zeros in its low eight bits and so gives zeros.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn plain_diffs<const W: usize>(q: __m128i) -> __m512i {
    if W == 2 {
        let spread = _mm512_permutexvar_epi16(
            _mm512_set_epi16(
                7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1,
                0, 0, 0, 0,
            ),
            _mm512_castsi128_si512(q),
        );
        let shifts = _mm512_set1_epi64(0x0006_0004_0002_0000);
        let z = _mm512_and_si512(_mm512_srlv_epi16(spread, shifts), _mm512_set1_epi16(3));
        _mm512_xor_si512(
            _mm512_srli_epi16::<1>(z),
            _mm512_sub_epi16(
                _mm512_setzero_si512(),
                _mm512_and_si512(z, _mm512_set1_epi16(1)),
            ),
        )
    } else {
        let spread = _mm512_permutexvar_epi32(
            _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
            _mm512_cvtepu16_epi32(_mm256_castsi128_si256(q)),
        );
        let shifts = _mm512_set_epi32(6, 4, 2, 0, 6, 4, 2, 0, 6, 4, 2, 0, 6, 4, 2, 0);
        let z = _mm512_and_si512(_mm512_srlv_epi32(spread, shifts), _mm512_set1_epi32(3));
        _mm512_xor_si512(
            _mm512_srli_epi32::<1>(z),
            _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_and_si512(z, _mm512_set1_epi32(1)),
            ),
        )
    }
}

/// The symbols of one 64-byte step: eight 16-bit quads or four 32-bit ones.
///
/// # Safety
/// `qs` must point at `16 / W` readable symbols.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn step_symbols<const W: usize>(qs: *const u16) -> __m128i {
    // SAFETY: the caller's.
    unsafe {
        if W == 2 {
            _mm_loadu_si128(qs.cast())
        } else {
            _mm_loadl_epi64(qs.cast())
        }
    }
}

/// Add every quad of `qs` to `block` (quad `i` is `4 W` bytes at `4 W i`), or with `base`
/// to the same quads of `base`, writing the sums to `block`; 64 bytes a step. A plain quad
/// adds the differences its symbol packs; an escaped one the next four of `diffs` (the
/// block's escaped differences, `W`-byte words in order, from [`escape_diffs`]), expanded
/// into its lanes. Each stored step is handed to `hash`, so that the decoded chunk is not
/// read back for its checksum. Runs while 64 bytes of `diffs` are readable from the next
/// difference; returns the quads done and the differences used. The caller does the rest.
///
/// # Safety
/// The CPU must support what [`apply_available`] checks. `block` (and `base`, if given)
/// must hold `4 W` bytes per symbol of `qs`.
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,avx512vbmi2,bmi2,popcnt")]
pub(crate) unsafe fn add_quads<const W: usize>(
    block: &mut [u8],
    base: Option<&[u8]>,
    qs: &[u16],
    diffs: &[u8],
    escape_symbol: u16,
    hash: Option<&mut StripeHash>,
) -> (usize, usize) {
    // The hash's state in a local, so that it stays in registers across the loop.
    let mut local = hash.as_deref().cloned();
    debug_assert!(W == 2 || W == 4);
    debug_assert!(block.len() >= 4 * W * qs.len());
    debug_assert!(base.is_none_or(|b| b.len() >= 4 * W * qs.len()));
    let dst = block.as_mut_ptr();
    let src = base.map_or(dst.cast_const(), <[u8]>::as_ptr);
    // Quads per 64-byte step.
    let per = 16 / W;
    let steps = qs.len() / per;
    let escape = _mm_set1_epi16(escape_symbol as i16);
    let lane_spread = if W == 2 { 0x1111_1111 } else { 0x1111 };
    let mut used = 0usize;
    let mut s = 0;
    while s < steps && W * used + 64 <= diffs.len() {
        // SAFETY: step `s` reads `per` symbols of `qs` and 64 bytes of `block` (or `base`)
        // at `64 s`, inside the lengths above, and 64 bytes of `diffs` at `W used`
        // (checked by the loop condition).
        unsafe {
            let q = step_symbols::<W>(qs.as_ptr().add(per * s));
            let escaped = (_mm_cmpeq_epi16_mask(q, escape) as u32) & ((1 << per) - 1);
            let lanes = _pdep_u32(escaped, lane_spread) * 0xF;
            let (from, to) = (src.add(64 * s), dst.add(64 * s));
            _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(PREFETCH).cast());
            let next = _mm512_loadu_si512(diffs.as_ptr().add(W * used).cast());
            let sum = if W == 2 {
                let d =
                    _mm512_add_epi16(plain_diffs::<2>(q), _mm512_maskz_expand_epi16(lanes, next));
                _mm512_add_epi16(_mm512_loadu_si512(from.cast()), d)
            } else {
                let d = _mm512_add_epi32(
                    plain_diffs::<4>(q),
                    _mm512_maskz_expand_epi32(lanes as __mmask16, next),
                );
                _mm512_add_epi32(_mm512_loadu_si512(from.cast()), d)
            };
            _mm512_storeu_si512(to.cast(), sum);
            if let Some(h) = local.as_mut() {
                h.push(sum);
            }
            used += lanes.count_ones() as usize;
        }
        s += 1;
    }
    if let (Some(to), Some(from)) = (hash, local) {
        *to = from;
    }
    (s * per, used)
}

/// Add the plain quads of `qs` to `block` (quad `i` is `4 W` bytes at `4 W i`), or with
/// `base` to the same quads of `base`, writing the sums to `block`; eight 16-bit or four
/// 32-bit quads a step: each symbol's four two-bit zigzag differences are spread to their
/// lanes, unzigzagged and added. An escape symbol (256) has zeros in its low eight bits and
/// so adds nothing; its index is appended to `at`. Returns the quads done and how many
/// escapes were noted; the caller does the rest.
///
/// # Safety
/// The CPU must support what [`available`] checks. `block` (and `base`, if given) must
/// hold `4 W` bytes per symbol of `qs`, and `at` one slot per symbol.
#[target_feature(enable = "avx512f,avx512cd,avx512bw,avx512vl,bmi2,popcnt")]
pub(crate) unsafe fn add_plain_quads<const W: usize>(
    block: &mut [u8],
    base: Option<&[u8]>,
    qs: &[u16],
    at: &mut [u32],
    escape_symbol: u16,
) -> (usize, usize) {
    debug_assert!(W == 2 || W == 4);
    debug_assert!(block.len() >= 4 * W * qs.len() && at.len() >= qs.len());
    debug_assert!(base.is_none_or(|b| b.len() >= 4 * W * qs.len()));
    let dst = block.as_mut_ptr();
    let src = base.map_or(dst.cast_const(), <[u8]>::as_ptr);
    // Quads per 64-byte step.
    let per = 16 / W;
    let steps = qs.len() / per;
    let mut found = 0usize;
    let escape = _mm_set1_epi16(escape_symbol as i16);
    for s in 0..steps {
        // SAFETY: step `s` reads `per` symbols of `qs` and 64 bytes of `block` (or
        // `base`) at `64 s`, inside the lengths above; `at` has a slot for each of the
        // step's quads past the `found <= per s` already noted.
        unsafe {
            let q = step_symbols::<W>(qs.as_ptr().add(per * s));
            let escaped = (_mm_cmpeq_epi16_mask(q, escape) as u32) & ((1 << per) - 1);
            let (from, to) = (src.add(64 * s), dst.add(64 * s));
            _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(PREFETCH).cast());
            let sum = if W == 2 {
                _mm512_add_epi16(_mm512_loadu_si512(from.cast()), plain_diffs::<2>(q))
            } else {
                _mm512_add_epi32(_mm512_loadu_si512(from.cast()), plain_diffs::<4>(q))
            };
            _mm512_storeu_si512(to.cast(), sum);
            if escaped != 0 {
                let index = _mm256_add_epi32(
                    _mm256_set1_epi32((per * s) as i32),
                    _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                );
                _mm256_mask_compressstoreu_epi32(
                    at.as_mut_ptr().add(found).cast(),
                    escaped as __mmask8,
                    index,
                );
                found += escaped.count_ones() as usize;
            }
        }
    }
    (steps * per, found)
}
