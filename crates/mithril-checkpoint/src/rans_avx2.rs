//! AVX2 decoding of whole 32-symbol groups of a rANS stream (see [`crate::rans`]).
//!
//! The same arithmetic as the scalar decoder, eight lanes to a register and four registers
//! to a group. Renormalisation words are consumed in lane order, as the scalar decoder does.
//! A lane that needs a word takes the next one: a table indexed by the 8-bit "needs a word"
//! mask gives each lane its word's position among the next eight.

use crate::rans::{Symbol, LANES, PROB_BITS, PROB_SCALE, RANS_L};
use std::arch::x86_64::*;

/// For each 8-lane mask, lane `i` -> the number of set bits below bit `i`.
static WORD_INDEX: [[u32; 8]; 256] = word_index_table();

const fn word_index_table() -> [[u32; 8]; 256] {
    let mut table = [[0u32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let mut taken = 0u32;
        let mut lane = 0;
        while lane < 8 {
            if mask & (1 << lane) != 0 {
                table[mask][lane] = taken;
                taken += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
}

/// Per-slot decode tables: `step[slot] = freq | (slot - cum) << 16`, `symbol[slot]`.
pub(crate) struct SlotTables {
    pub step: Vec<u32>,
    pub symbol: Vec<u32>,
}

pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Decode whole groups of `LANES` symbols into `out` (a multiple of `LANES` long) while at
/// least `LANES` words remain after `*pos`; returns how many symbols were decoded. `body`
/// holds `nwords` little-endian u16 words.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn decode_groups<T: Symbol>(
    out: &mut [T],
    states: &mut [u32; LANES],
    tables: &SlotTables,
    body: &[u8],
    nwords: usize,
    pos: &mut usize,
) -> usize {
    assert!(tables.step.len() == PROB_SCALE as usize && tables.symbol.len() == PROB_SCALE as usize);
    assert!(body.len() >= 2 * nwords);
    let mut decoded = 0usize;
    // SAFETY: AVX2 is enabled for this function. Gathers index the two tables with
    // `x & (PROB_SCALE - 1)`, below their asserted length. Each group starts only when
    // `*pos + LANES <= nwords`, a group consumes at most one word per lane, so every 8-word
    // load at `*pos` (at most `LANES - 8` words into the group) ends inside `body`.
    // Unaligned loads and stores use the `loadu`/`storeu` forms.
    unsafe {
        let slot_mask = _mm256_set1_epi32((PROB_SCALE - 1) as i32);
        let low16 = _mm256_set1_epi32(0xffff);
        let zero = _mm256_setzero_si256();
        let step = tables.step.as_ptr() as *const i32;
        let symbol = tables.symbol.as_ptr() as *const i32;
        let mut x = [zero; LANES / 8];
        for (b, xb) in x.iter_mut().enumerate() {
            *xb = _mm256_loadu_si256(states.as_ptr().add(8 * b) as *const __m256i);
        }
        let mut syms = [0u32; 8];
        for group in out.chunks_exact_mut(LANES) {
            if *pos + LANES > nwords {
                break;
            }
            for (b, xb) in x.iter_mut().enumerate() {
                let slot = _mm256_and_si256(*xb, slot_mask);
                let e = _mm256_i32gather_epi32::<4>(step, slot);
                let s = _mm256_i32gather_epi32::<4>(symbol, slot);
                let freq = _mm256_and_si256(e, low16);
                let offset = _mm256_srli_epi32::<16>(e);
                let hi = _mm256_srli_epi32::<{ PROB_BITS as i32 }>(*xb);
                let xn = _mm256_add_epi32(_mm256_mullo_epi32(freq, hi), offset);
                // x < RANS_L (2^16) <=> its top half is zero.
                let need = _mm256_cmpeq_epi32(_mm256_srli_epi32::<16>(xn), zero);
                let mask = _mm256_movemask_ps(_mm256_castsi256_ps(need)) as usize;
                let next = body.as_ptr().add(2 * *pos) as *const __m128i;
                let words = _mm256_cvtepu16_epi32(_mm_loadu_si128(next));
                let index = _mm256_loadu_si256(WORD_INDEX[mask].as_ptr() as *const __m256i);
                let w = _mm256_permutevar8x32_epi32(words, index);
                let refilled = _mm256_or_si256(_mm256_slli_epi32::<16>(xn), w);
                *xb = _mm256_blendv_epi8(xn, refilled, need);
                *pos += mask.count_ones() as usize;
                _mm256_storeu_si256(syms.as_mut_ptr() as *mut __m256i, s);
                for (o, &v) in group[8 * b..8 * b + 8].iter_mut().zip(&syms) {
                    *o = T::from_index(v as u16);
                }
            }
            decoded += LANES;
        }
        for (b, xb) in x.iter().enumerate() {
            _mm256_storeu_si256(states.as_mut_ptr().add(8 * b) as *mut __m256i, *xb);
        }
    }
    debug_assert!(states.iter().all(|&s| s >= RANS_L));
    decoded
}
