//! AVX2 kernels of the 16-bit float split with a bit-packed remainder (see
//! [`crate::float`]): heads plus packed `WIDTH`-bit remainders out of raw words, and back.
//!
//! The packing is the scalar one (values LSB first, each `WIDTH` bits): 32 values make
//! `4 * WIDTH` bytes. Packing pairs values with `maddubs` and pairs of pairs with `madd`
//! (the base64 trick), then drops the unused bytes with a shuffle. Unpacking gathers the
//! two bytes that hold each value into a 16-bit lane and aligns it with a multiply.

use std::arch::x86_64::*;

pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Per-lane byte pairs and multipliers that move value `j` of a group of eight to the top
/// of its 16-bit lane.
const fn unpack_controls(width: usize) -> ([i8; 16], [i16; 8]) {
    let mut shuffle = [0i8; 16];
    let mut multiply = [0i16; 8];
    let mut j = 0;
    while j < 8 {
        let bit = j * width;
        shuffle[2 * j] = (bit / 8) as i8;
        shuffle[2 * j + 1] = (bit / 8 + 1) as i8;
        multiply[j] = (1i32 << (16 - width - bit % 8)) as i16;
        j += 1;
    }
    (shuffle, multiply)
}

/// Join heads and packed remainders of `WIDTH` (6 or 7) bits into 16-bit words, 16 at a
/// time; returns how many words were written (the caller does the rest).
///
/// # Safety
/// The CPU must support AVX2. `out` holds `2 * heads.len()` bytes and `packed` the packed
/// remainders of `heads.len()` values.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn join_packed<const WIDTH: usize>(
    heads: &[u16],
    packed: &[u8],
    out: &mut [u8],
) -> usize {
    let low = WIDTH as i32 - 1;
    let (shuffle, multiply) = unpack_controls(WIDTH);
    // SAFETY (whole function): every load and store below is bounds-checked by the loop
    // condition: 16 heads, 32 output bytes and `WIDTH + 16` packed bytes from the group's
    // first packed byte.
    unsafe {
        let shuffle = _mm256_broadcastsi128_si256(_mm_loadu_si128(shuffle.as_ptr().cast()));
        let multiply = _mm256_broadcastsi128_si256(_mm_loadu_si128(multiply.as_ptr().cast()));
        let low_mask = _mm256_set1_epi16(((1 << low) - 1) as i16);
        let sign = _mm256_set1_epi16(i16::MIN);
        let align = _mm_cvtsi32_si128(16 - WIDTH as i32);
        let mut done = 0usize;
        while done + 16 <= heads.len() && (done / 8) * WIDTH + WIDTH + 16 <= packed.len() {
            let src = packed.as_ptr().add(done / 8 * WIDTH);
            let bytes = _mm256_loadu2_m128i(src.add(WIDTH).cast(), src.cast());
            let pairs = _mm256_shuffle_epi8(bytes, shuffle);
            let rem = _mm256_srl_epi16(_mm256_mullo_epi16(pairs, multiply), align);
            let h = _mm256_loadu_si256(heads.as_ptr().add(done).cast());
            let signs = _mm256_and_si256(_mm256_sll_epi16(rem, _mm_cvtsi32_si128(15 - low)), sign);
            let word = _mm256_or_si256(
                _mm256_or_si256(signs, _mm256_sll_epi16(h, _mm_cvtsi32_si128(low))),
                _mm256_and_si256(rem, low_mask),
            );
            _mm256_storeu_si256(out.as_mut_ptr().add(2 * done).cast(), word);
            done += 16;
        }
        done
    }
}

/// Split 16-bit words into heads and packed remainders of `WIDTH` (6 or 7) bits, 32 words
/// at a time; returns how many words were done. `packed` needs `4 * WIDTH + 4` bytes of
/// room per 32 words (the last store runs 4 bytes past its group; the next overwrites them).
///
/// # Safety
/// The CPU must support AVX2. `heads` holds `raw.len() / 2` values and `packed` at least
/// `(raw.len() / 2) * WIDTH / 8 + 4` bytes.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn split_packed<const WIDTH: usize>(
    raw: &[u8],
    heads: &mut [u16],
    packed: &mut [u8],
) -> usize {
    let low = WIDTH as i32 - 1;
    let n = raw.len() / 2;
    // SAFETY (whole function): the loop condition keeps 64 raw bytes, 32 heads and
    // `4 * WIDTH + 4` packed bytes in bounds for every group.
    unsafe {
        let low_mask = _mm256_set1_epi16(((1 << low) - 1) as i16);
        let head_mask = _mm256_set1_epi16(((1 << (15 - low)) - 1) as i16);
        let (pair_weights, quad_weights, keep) = if WIDTH == 6 {
            (
                _mm256_set1_epi16(1 | (64 << 8)),
                _mm256_set1_epi32(1 | (4096 << 16)),
                _mm256_setr_epi8(
                    0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9,
                    10, 12, 13, 14, -1, -1, -1, -1,
                ),
            )
        } else {
            (
                _mm256_set1_epi16(1 | (128 << 8)),
                _mm256_set1_epi32(1 | (16384 << 16)),
                _mm256_setr_epi8(
                    0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, -1, -1, 0, 1, 2, 3, 4, 5, 6, 8,
                    9, 10, 11, 12, 13, 14, -1, -1,
                ),
            )
        };
        let lane_bytes = 2 * WIDTH;
        let mut done = 0usize;
        while done + 32 <= n && (done / 8) * WIDTH + 4 * WIDTH + 4 <= packed.len() {
            let src = raw.as_ptr().add(2 * done);
            let w0 = _mm256_loadu_si256(src.cast());
            let w1 = _mm256_loadu_si256(src.add(32).cast());
            let shift = _mm_cvtsi32_si128(low);
            let h0 = _mm256_and_si256(_mm256_srl_epi16(w0, shift), head_mask);
            let h1 = _mm256_and_si256(_mm256_srl_epi16(w1, shift), head_mask);
            _mm256_storeu_si256(heads.as_mut_ptr().add(done).cast(), h0);
            _mm256_storeu_si256(heads.as_mut_ptr().add(done + 16).cast(), h1);
            let r0 = _mm256_or_si256(
                _mm256_sll_epi16(_mm256_srli_epi16::<15>(w0), shift),
                _mm256_and_si256(w0, low_mask),
            );
            let r1 = _mm256_or_si256(
                _mm256_sll_epi16(_mm256_srli_epi16::<15>(w1), shift),
                _mm256_and_si256(w1, low_mask),
            );
            // packus interleaves the 128-bit lanes; the permute puts the 32 bytes in order.
            let bytes = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(r0, r1));
            // The weights go in as the unsigned operand: 128 does not fit a signed byte.
            let pairs = _mm256_maddubs_epi16(pair_weights, bytes);
            let quads = _mm256_madd_epi16(pairs, quad_weights);
            let joined = if WIDTH == 6 {
                quads
            } else {
                // Two 28-bit quads per 64-bit lane become one 56-bit run.
                let lo = _mm256_and_si256(quads, _mm256_set1_epi64x(0x0FFF_FFFF));
                let hi = _mm256_and_si256(
                    _mm256_srli_epi64::<4>(quads),
                    _mm256_set1_epi64x(0x00FF_FFFF_F000_0000),
                );
                _mm256_or_si256(lo, hi)
            };
            let compact = _mm256_shuffle_epi8(joined, keep);
            let dst = packed.as_mut_ptr().add(done / 8 * WIDTH);
            _mm_storeu_si128(dst.cast(), _mm256_castsi256_si128(compact));
            _mm_storeu_si128(
                dst.add(lane_bytes).cast(),
                _mm256_extracti128_si256::<1>(compact),
            );
            done += 32;
        }
        done
    }
}
