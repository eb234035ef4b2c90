//! The unsampled half of a sampled head histogram (see `float::head_histogram`): which
//! heads of the second 64-byte block of every 128 bytes are missing from the sample.
//!
//! Counting a head costs a load, an add and a store to a table, bound by the stores at
//! about one element per cycle. Testing one against the sample's bitmap of present heads
//! costs a few vector operations per 64 bytes: the bitmap (1024 bits) sits in two
//! registers, a two-register permute fetches each lane's word of it and a variable shift
//! its bit. Heads found missing, rare in trained weights, are counted one by one, so that
//! the histogram still names every head present.

use std::arch::x86_64::*;

/// Bytes in a block; a pair of blocks is the sample's block then the one tested here.
pub(crate) const BLOCK: usize = 64;
/// Heads the bitmap covers (the widest head is 10 bits).
pub(crate) const BINS: usize = 1024;

/// Whether [`count_missing`] may run on this CPU.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// For every whole 128-byte pair of `raw`, the heads (`(word >> low) & mask`, `W`-byte
/// little-endian words, `mask` below [`BINS`]) of its second block that are not set in
/// `present` are counted in `missing`; returns how many there were.
///
/// # Safety
/// The CPU must support AVX-512 F and BW ([`available`]).
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn count_missing<const W: usize>(
    raw: &[u8],
    low: u32,
    mask: u32,
    present: &[u64; BINS / 64],
    missing: &mut [u32; BINS],
) -> usize {
    // SAFETY (all intrinsics below): the CPU supports AVX-512 F and BW (the caller's
    // promise); every load reads 64 bytes inside `raw` or `present`, and every store
    // writes 64 bytes inside a local array.
    unsafe {
        let lower = _mm512_loadu_si512(present.as_ptr().cast());
        let upper = _mm512_loadu_si512(present[8..].as_ptr().cast());
        let shift = _mm_cvtsi32_si128(low as i32);
        let mut found = 0;
        for pair in raw.chunks_exact(2 * BLOCK) {
            let v = _mm512_loadu_si512(pair[BLOCK..].as_ptr().cast());
            if W == 2 {
                let heads =
                    _mm512_and_si512(_mm512_srl_epi16(v, shift), _mm512_set1_epi16(mask as i16));
                // Word `h >> 4` of the bitmap, bit `h & 15` of that word.
                let word = _mm512_permutex2var_epi16(lower, _mm512_srli_epi16::<4>(heads), upper);
                let bit = _mm512_srlv_epi16(word, _mm512_and_si512(heads, _mm512_set1_epi16(15)));
                let set = _mm512_test_epi16_mask(bit, _mm512_set1_epi16(1));
                if set != u32::MAX {
                    let mut lanes = [0u16; BLOCK / 2];
                    _mm512_storeu_si512(lanes.as_mut_ptr().cast(), heads);
                    for (j, &h) in lanes.iter().enumerate() {
                        if set >> j & 1 == 0 {
                            missing[h as usize & (BINS - 1)] += 1;
                            found += 1;
                        }
                    }
                }
            } else {
                let heads =
                    _mm512_and_si512(_mm512_srl_epi32(v, shift), _mm512_set1_epi32(mask as i32));
                // Double word `h >> 5` of the bitmap, bit `h & 31` of it.
                let word = _mm512_permutex2var_epi32(lower, _mm512_srli_epi32::<5>(heads), upper);
                let bit = _mm512_srlv_epi32(word, _mm512_and_si512(heads, _mm512_set1_epi32(31)));
                let set = _mm512_test_epi32_mask(bit, _mm512_set1_epi32(1));
                if set != u16::MAX {
                    let mut lanes = [0u32; BLOCK / 4];
                    _mm512_storeu_si512(lanes.as_mut_ptr().cast(), heads);
                    for (j, &h) in lanes.iter().enumerate() {
                        if set >> j & 1 == 0 {
                            missing[h as usize & (BINS - 1)] += 1;
                            found += 1;
                        }
                    }
                }
            }
        }
        found
    }
}
