//! AVX-512 forms of the float codec's split and joins ([`crate::float_avx2`]) that hash
//! every 64 raw bytes they read or store ([`StripeHash`]), so that a chunk's raw checksum
//! needs no pass of its own. Reading a decoded chunk back for it cost about a sixth of
//! decoding when the payload came from memory: by then the heads, the payload and the
//! output no longer fit in L2 together.

use crate::float_avx2::{
    f32_join_len, f32_split_outputs, prefetch_planes, unpack_controls, SplitF32Kernel,
    SplitPackedKernel, PREFETCH,
};
use crate::xxh3_avx512::StripeHash;
use std::arch::x86_64::*;

pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
}

/// [`crate::float_avx2::split_packed`], hashing each 64 bytes split.
///
/// # Safety
/// The CPU must support AVX-512F. Sizes as for the AVX2 kernel; `hash` must not have
/// taken any stripe yet.
#[target_feature(enable = "avx2,avx512f")]
pub(crate) unsafe fn split_packed<const WIDTH: usize>(
    raw: &[u8],
    heads: &mut [u16],
    packed: &mut [u8],
    hash: &mut StripeHash,
) -> usize {
    let n = raw.len() / 2;
    let split = SplitPackedKernel::<WIDTH>::new();
    let mut done = 0usize;
    // SAFETY: the loop condition keeps 64 raw bytes, 32 heads and `4 * WIDTH + 4` packed
    // bytes in bounds for every group.
    unsafe {
        while done + 32 <= n && (done / 8) * WIDTH + 4 * WIDTH + 4 <= packed.len() {
            let words = _mm512_loadu_si512(raw.as_ptr().add(2 * done).cast());
            let halves = [
                _mm512_castsi512_si256(words),
                _mm512_extracti64x4_epi64::<1>(words),
            ];
            let packed_at = packed.as_mut_ptr().add(done / 8 * WIDTH);
            split.group(halves, heads.as_mut_ptr().add(done), packed_at);
            hash.push(words);
            done += 32;
        }
    }
    done
}

/// [`crate::float_avx2::split_f32`], 16 words at a time, hashing each 64 bytes split.
///
/// # Safety
/// The CPU must support AVX-512F. Sizes as for the AVX2 kernel; `hash` must not have
/// taken any stripe yet.
#[target_feature(enable = "avx2,avx512f")]
pub(crate) unsafe fn split_f32(
    raw: &[u8],
    low: u32,
    heads: &mut [u16],
    planes: [&mut [u8]; 3],
    hash: &mut StripeHash,
) -> usize {
    let (n, (heads, planes)) = f32_split_outputs(raw, heads, planes);
    let split = SplitF32Kernel::new(low);
    let mut done = 0usize;
    // SAFETY: the loop condition keeps 64 raw bytes and 16 values of every output in bounds.
    unsafe {
        while done + 16 <= n {
            let words = _mm512_loadu_si512(raw.as_ptr().add(4 * done).cast());
            for (half, w) in [
                _mm512_castsi512_si256(words),
                _mm512_extracti64x4_epi64::<1>(words),
            ]
            .into_iter()
            .enumerate()
            {
                let at = done + 8 * half;
                split.group(w, (heads.add(at), planes.map(|p| p.add(at))));
            }
            hash.push(words);
            done += 16;
        }
    }
    done
}

/// [`crate::float_avx2::join_packed`], 32 words at a time, hashing each 64 bytes written;
/// returns how many words were written (the caller does the rest).
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW. `hash` must have taken the stripes of `out`
/// before `out` (none, for a chunk's first join).
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn join_packed<const WIDTH: usize>(
    heads: &[u16],
    packed: &[u8],
    out: &mut [u8],
    hash: &mut StripeHash,
) -> usize {
    let low = WIDTH as u32 - 1;
    let (shuffle, multiply) = unpack_controls(WIDTH);
    let n = heads.len().min(out.len() / 2);
    // SAFETY (whole function): the loop condition keeps 32 heads, 64 output bytes and,
    // for the last group of eight values, `WIDTH + 16` packed bytes from the group's first
    // packed byte in bounds.
    unsafe {
        let shuffle = _mm512_broadcast_i32x4(_mm_loadu_si128(shuffle.as_ptr().cast()));
        let multiply = _mm512_broadcast_i32x4(_mm_loadu_si128(multiply.as_ptr().cast()));
        let low_mask = _mm512_set1_epi16(((1u32 << low) - 1) as i16);
        let sign = _mm512_set1_epi16(i16::MIN);
        let align = _mm_cvtsi32_si128(16 - WIDTH as i32);
        let sign_shift = _mm_cvtsi32_si128(15 - low as i32);
        let head_shift = _mm_cvtsi32_si128(low as i32);
        let mut done = 0usize;
        while done + 32 <= n && (done / 8) * WIDTH + 3 * WIDTH + 16 <= packed.len() {
            let src = packed.as_ptr().add(done / 8 * WIDTH);
            if done.is_multiple_of(64) {
                _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH).cast());
            }
            let load = |group: usize| _mm_loadu_si128(src.add(group * WIDTH).cast());
            let bytes = _mm512_inserti32x4::<3>(
                _mm512_inserti32x4::<2>(
                    _mm512_inserti32x4::<1>(_mm512_castsi128_si512(load(0)), load(1)),
                    load(2),
                ),
                load(3),
            );
            let pairs = _mm512_shuffle_epi8(bytes, shuffle);
            let rem = _mm512_srl_epi16(_mm512_mullo_epi16(pairs, multiply), align);
            let h = _mm512_loadu_si512(heads.as_ptr().add(done).cast());
            let signs = _mm512_and_si512(_mm512_sll_epi16(rem, sign_shift), sign);
            let word = _mm512_or_si512(
                _mm512_or_si512(signs, _mm512_sll_epi16(h, head_shift)),
                _mm512_and_si512(rem, low_mask),
            );
            _mm512_storeu_si512(out.as_mut_ptr().add(2 * done).cast(), word);
            hash.push(word);
            done += 32;
        }
        done
    }
}

/// [`crate::float_avx2::join_f32`], 16 words at a time, hashing each 64 bytes written;
/// returns how many words were written.
///
/// # Safety
/// As for [`join_packed`]; `out` holds 4 bytes per head and each plane one byte per head.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn join_f32(
    heads: &[u16],
    low: u32,
    planes: [&[u8]; 3],
    out: &mut [u8],
    hash: &mut StripeHash,
) -> usize {
    let n = f32_join_len(heads, planes, out);
    let [p0, p1, p2] = planes;
    // SAFETY (whole function): the loop condition keeps 16 values of every input and 64
    // output bytes in bounds.
    unsafe {
        let shift = _mm_cvtsi32_si128(low as i32);
        let sign_shift = _mm_cvtsi32_si128(15 - low as i32);
        let low_mask = _mm256_set1_epi16(((1u32 << low) - 1) as i16);
        let sign = _mm256_set1_epi16(i16::MIN);
        let mut done = 0usize;
        while done + 16 <= n {
            prefetch_planes(planes, done);
            let head = _mm256_loadu_si256(heads.as_ptr().add(done).cast());
            let rem = _mm256_cvtepu8_epi16(_mm_loadu_si128(p0.as_ptr().add(done).cast()));
            let hi = _mm256_or_si256(
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_sll_epi16(rem, sign_shift), sign),
                    _mm256_sll_epi16(head, shift),
                ),
                _mm256_and_si256(rem, low_mask),
            );
            let byte = |plane: &[u8]| {
                _mm512_cvtepu8_epi32(_mm_loadu_si128(plane.as_ptr().add(done).cast()))
            };
            let word = _mm512_or_si512(
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)),
                _mm512_or_si512(_mm512_slli_epi32::<8>(byte(p1)), byte(p2)),
            );
            _mm512_storeu_si512(out.as_mut_ptr().add(4 * done).cast(), word);
            hash.push(word);
            done += 16;
        }
        done
    }
}
