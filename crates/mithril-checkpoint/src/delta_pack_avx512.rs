//! `sub-pack` with AVX-512, two blocks (sixteen 32-bit elements, one 64-byte vector) a
//! step, each giving what the scalar code after it gives (the module's tests check it).
//!
//! [`apply`] decodes. A block of width `w` is `w` bytes; element `i` starts at bit
//! `i * w`, so one byte permute per block gathers each element's eight bytes (from byte
//! `i * w / 8`) into a 64-bit lane, a variable shift drops the `i * w % 8` bits below it,
//! and a mask keeps `w` bits. The permute indices, shifts and masks depend on `w` alone
//! and come from one table per width.
//!
//! [`pack_steps`] plans: the differences of a step in one vector (and the raw words into
//! the chunk's checksum), then each block's width and bytes as the scalar planner makes
//! them.

#![cfg(target_arch = "x86_64")]

use crate::delta_pack::{block_width, pack_block, BLOCK, WIDTHS};
use crate::xxh3_avx512::StripeHash;
use std::arch::x86_64::*;

/// How far ahead of a step the base is prefetched, in bytes (as the `sub-quad` kernels).
const PREFETCH: usize = 2048;

/// Whether [`apply`] may run on this CPU.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vbmi")
}

/// Per width, the byte permute that puts element `i`'s eight bytes in 64-bit lane `i`, the
/// shift that brings its first bit to the bottom, and the mask of its `w` bits.
#[repr(C, align(64))]
struct Layouts {
    index: [[u8; 64]; 33],
    shift: [[u64; 8]; 33],
    mask: [u64; 33],
}

const fn layouts() -> Layouts {
    let mut t = Layouts {
        index: [[0; 64]; 33],
        shift: [[0; 8]; 33],
        mask: [0; 33],
    };
    let mut w = 0;
    while w <= 32 {
        let mut i = 0;
        while i < 8 {
            let bit = i * w;
            let mut j = 0;
            while j < 8 {
                // At most 7 * 32 / 8 + 7 = 35: inside the 64-byte window.
                t.index[w][8 * i + j] = (bit / 8 + j) as u8;
                j += 1;
            }
            t.shift[w][i] = (bit % 8) as u64;
            i += 1;
        }
        t.mask[w] = if w == 0 { 0 } else { u64::MAX >> (64 - w) };
        w += 1;
    }
    t
}

static LAYOUTS: Layouts = layouts();

/// The eight values of a block of width `w` whose bytes start at `p`, in 64-bit lanes.
///
/// # Safety
/// 64 bytes must be readable at `p`; `w` at most 32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn block(p: *const u8, w: usize) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes; the tables have 33 entries.
    unsafe {
        let window = _mm512_loadu_si512(p.cast());
        let index = _mm512_load_si512(LAYOUTS.index[w].as_ptr().cast());
        let shift = _mm512_load_si512(LAYOUTS.shift[w].as_ptr().cast());
        let lanes = _mm512_srlv_epi64(_mm512_permutexvar_epi8(index, window), shift);
        _mm512_and_si512(lanes, _mm512_set1_epi64(LAYOUTS.mask[w] as i64))
    }
}

/// Decode whole pairs of blocks of `packed` (block `k` of width `widths[k]`) onto `base`
/// (or onto `out` itself) into `out`, 64 bytes a step, while the step's second block has
/// 64 readable bytes; every step's words go to `hash`. Returns the blocks done (even) and
/// the packed bytes they took; the caller does the rest.
///
/// # Safety
/// The CPU must support what [`available`] checks; every width must be at most 32;
/// `base`, if given, must be as long as `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn apply(
    widths: &[u16],
    packed: &[u8],
    base: Option<&[u8]>,
    out: &mut [u8],
    hash: Option<&mut StripeHash>,
) -> (usize, usize) {
    let mut local = hash.as_deref().cloned();
    let steps = (out.len() / 64).min(widths.len() / 2);
    let dst = out.as_mut_ptr();
    let src = base.map_or(dst.cast_const(), <[u8]>::as_ptr);
    let evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let one = _mm512_set1_epi32(1);
    let zero = _mm512_setzero_si512();
    let (mut step, mut at) = (0usize, 0usize);
    while step < steps {
        let (wa, wb) = (widths[2 * step] as usize, widths[2 * step + 1] as usize);
        if at + wa + 64 > packed.len() {
            break;
        }
        // SAFETY: both windows end at or before `at + wa + 64`, inside `packed` (checked
        // above); the widths are at most 32 (the caller's); the step's 64 bytes lie inside
        // `out` and `base` (`step < steps`).
        unsafe {
            let p = packed.as_ptr().add(at);
            let a = block(p, wa);
            let b = block(p.add(wa), wb);
            let z = _mm512_permutex2var_epi32(a, evens, b);
            let diff = _mm512_xor_si512(
                _mm512_srli_epi32::<1>(z),
                _mm512_sub_epi32(zero, _mm512_and_si512(z, one)),
            );
            let (from, to) = (src.add(64 * step), dst.add(64 * step));
            _mm_prefetch::<_MM_HINT_T0>(from.wrapping_add(PREFETCH).cast());
            let sum = _mm512_add_epi32(_mm512_loadu_si512(from.cast()), diff);
            _mm512_storeu_si512(to.cast(), sum);
            if let Some(h) = local.as_mut() {
                h.push(sum);
            }
        }
        at += wa + wb;
        step += 1;
    }
    if let (Some(to), Some(from)) = (hash, local) {
        *to = from;
    }
    (2 * step, at)
}

/// Plan whole steps of sixteen elements of `raw` against `base` (two blocks a step): each
/// block's width pushed to `widths` and counted in `counts`, its bytes packed into `dst`
/// from the start, and every 64 bytes of `raw` handed to `hash`. Returns the blocks done
/// (even) and the packed bytes written.
///
/// # Safety
/// The CPU must support what [`available`] checks; `base` must be as long as `raw`, and
/// `dst` must have room for every block at full width ([`BLOCK_WRITE`] bytes a block).
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(crate) unsafe fn pack_steps(
    raw: &[u8],
    base: &[u8],
    dst: &mut [std::mem::MaybeUninit<u8>],
    widths: &mut Vec<u16>,
    counts: &mut [u32; WIDTHS],
    hash: Option<&mut StripeHash>,
) -> (usize, usize) {
    // The hash's state in a local, so that it stays in registers across the loop.
    let mut local = hash.as_deref().cloned();
    let steps = raw.len() / 64;
    let mut at = 0usize;
    // The step's two blocks of differences, contiguous: one 64-byte store fills both.
    let mut z = [[0u32; BLOCK]; 2];
    for step in 0..steps {
        // SAFETY: the step's 64 bytes lie inside `raw` and `base` (`step < steps`).
        unsafe {
            let (t_at, b_at) = (raw.as_ptr().add(64 * step), base.as_ptr().add(64 * step));
            _mm_prefetch::<_MM_HINT_T0>(t_at.wrapping_add(PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(b_at.wrapping_add(PREFETCH).cast());
            let t = _mm512_loadu_si512(t_at.cast());
            if let Some(h) = local.as_mut() {
                h.push(t);
            }
            let b = _mm512_loadu_si512(b_at.cast());
            let d = _mm512_sub_epi32(t, b);
            let zz = _mm512_xor_si512(_mm512_slli_epi32::<1>(d), _mm512_srai_epi32::<31>(d));
            _mm512_storeu_si512(z.as_mut_ptr().cast(), zz);
        }
        for block in &z {
            let w = block_width(block);
            counts[w as usize] += 1;
            widths.push(w as u16);
            pack_block(block, w, dst, at);
            at += w as usize;
        }
    }
    if let (Some(to), Some(from)) = (hash, local) {
        *to = from;
    }
    (2 * steps, at)
}
