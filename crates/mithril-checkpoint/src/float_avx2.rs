//! AVX2 kernels of the 16-bit float split with a bit-packed remainder (see
//! [`crate::float`]): heads plus packed `WIDTH`-bit remainders out of raw words, and back.
//!
//! The packing is the scalar one (values LSB first, each `WIDTH` bits): 32 values make
//! `4 * WIDTH` bytes. Packing pairs values with `maddubs` and pairs of pairs with `madd`
//! (the base64 trick), then drops the unused bytes with a shuffle. Unpacking gathers the
//! two bytes that hold each value into a 16-bit lane and aligns it with a multiply.

use std::arch::x86_64::*;

/// How far ahead the joins prefetch their packed remainders and planes, in bytes: on
/// decoding they are the first reads of the payload past the head stream, and the hardware
/// prefetcher alone leaves the loops waiting on memory.
pub(crate) const PREFETCH: usize = 1024;

pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Per-lane byte pairs and multipliers that move value `j` of a group of eight to the top
/// of its 16-bit lane.
pub(crate) const fn unpack_controls(width: usize) -> ([i8; 16], [i16; 8]) {
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
            if done.is_multiple_of(64) {
                _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(PREFETCH).cast());
            }
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

/// Unpack values of `WIDTH` (1 to 7) bits, packed as by `float::pack_bits`, into one byte
/// each, 32 at a time; returns how many values were written (the caller does the rest).
/// The fp32 split keeps the remainder's top bits in such a plane, so every fp32 chunk
/// with heads of one or two mantissa bits unpacks one.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn unpack_bytes<const WIDTH: usize>(packed: &[u8], out: &mut [u8]) -> usize {
    let (shuffle, multiply) = unpack_controls(WIDTH);
    // SAFETY (whole function): the loop condition keeps 32 output bytes and, for the
    // second group of 16 values, `WIDTH + 16` packed bytes from its first byte in bounds.
    unsafe {
        let shuffle = _mm256_broadcastsi128_si256(_mm_loadu_si128(shuffle.as_ptr().cast()));
        let multiply = _mm256_broadcastsi128_si256(_mm_loadu_si128(multiply.as_ptr().cast()));
        let align = _mm_cvtsi32_si128(16 - WIDTH as i32);
        let values = |src: *const u8| {
            let bytes = _mm256_loadu2_m128i(src.add(WIDTH).cast(), src.cast());
            let pairs = _mm256_shuffle_epi8(bytes, shuffle);
            _mm256_srl_epi16(_mm256_mullo_epi16(pairs, multiply), align)
        };
        let mut done = 0usize;
        while done + 32 <= out.len() && (done / 8) * WIDTH + 3 * WIDTH + 16 <= packed.len() {
            let src = packed.as_ptr().add(done / 8 * WIDTH);
            let (a, b) = (values(src), values(src.add(2 * WIDTH)));
            // packus works within 128-bit lanes: a0 b0 a1 b1, put back in order.
            let bytes = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(a, b));
            _mm256_storeu_si256(out.as_mut_ptr().add(done).cast(), bytes);
            done += 32;
        }
        done
    }
}

/// Packs 32 byte values of `WIDTH` (6 or 7) bits into `4 * WIDTH` bytes.
struct Packer<const WIDTH: usize> {
    pair_weights: __m256i,
    quad_weights: __m256i,
    keep: __m256i,
}

impl<const WIDTH: usize> Packer<WIDTH> {
    #[target_feature(enable = "avx2")]
    fn new() -> Self {
        if WIDTH == 6 {
            Packer {
                pair_weights: _mm256_set1_epi16(1 | (64 << 8)),
                quad_weights: _mm256_set1_epi32(1 | (4096 << 16)),
                keep: _mm256_setr_epi8(
                    0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9,
                    10, 12, 13, 14, -1, -1, -1, -1,
                ),
            }
        } else {
            Packer {
                pair_weights: _mm256_set1_epi16(1 | (128 << 8)),
                quad_weights: _mm256_set1_epi32(1 | (16384 << 16)),
                keep: _mm256_setr_epi8(
                    0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, -1, -1, 0, 1, 2, 3, 4, 5, 6, 8,
                    9, 10, 11, 12, 13, 14, -1, -1,
                ),
            }
        }
    }

    /// Pack the 32 values of `bytes` (in order) to `dst`, writing `4 * WIDTH + 4` bytes:
    /// the last 4 are spare, for the next group to overwrite.
    ///
    /// # Safety
    /// `dst` must be valid for writes of `4 * WIDTH + 4` bytes.
    #[target_feature(enable = "avx2")]
    unsafe fn store(&self, bytes: __m256i, dst: *mut u8) {
        // The weights go in as the unsigned operand: 128 does not fit a signed byte.
        let pairs = _mm256_maddubs_epi16(self.pair_weights, bytes);
        let quads = _mm256_madd_epi16(pairs, self.quad_weights);
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
        let compact = _mm256_shuffle_epi8(joined, self.keep);
        // SAFETY: the two 16-byte stores end at `2 * WIDTH + 16 <= 4 * WIDTH + 4` bytes.
        unsafe {
            _mm_storeu_si128(dst.cast(), _mm256_castsi256_si128(compact));
            _mm_storeu_si128(
                dst.add(2 * WIDTH).cast(),
                _mm256_extracti128_si256::<1>(compact),
            );
        }
    }
}

/// Pack byte values of `WIDTH` (6 or 7) bits as `float::pack_bits` does, 32 at a time;
/// returns how many values were packed. `packed` needs `4 * WIDTH + 4` bytes of room per
/// 32 values. The fp32 split's top remainder plane is such a plane.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn pack_bytes<const WIDTH: usize>(vals: &[u8], packed: &mut [u8]) -> usize {
    let packer = Packer::<WIDTH>::new();
    let mut done = 0usize;
    // SAFETY: the loop condition keeps 32 values and `4 * WIDTH + 4` packed bytes in bounds.
    unsafe {
        while done + 32 <= vals.len() && (done / 8) * WIDTH + 4 * WIDTH + 4 <= packed.len() {
            let bytes = _mm256_loadu_si256(vals.as_ptr().add(done).cast());
            packer.store(bytes, packed.as_mut_ptr().add(done / 8 * WIDTH));
            done += 32;
        }
    }
    done
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
    let n = raw.len() / 2;
    let split = SplitPackedKernel::<WIDTH>::new();
    let mut done = 0usize;
    // SAFETY: the loop condition keeps 64 raw bytes, 32 heads and `4 * WIDTH + 4` packed
    // bytes in bounds for every group.
    unsafe {
        while done + 32 <= n && (done / 8) * WIDTH + 4 * WIDTH + 4 <= packed.len() {
            let src = raw.as_ptr().add(2 * done);
            let words = [
                _mm256_loadu_si256(src.cast()),
                _mm256_loadu_si256(src.add(32).cast()),
            ];
            split.group(
                words,
                heads.as_mut_ptr().add(done),
                packed.as_mut_ptr().add(done / 8 * WIDTH),
            );
            done += 32;
        }
    }
    done
}

/// The 16-bit split with a `WIDTH`-bit remainder (6 or 7), a group of 32 words at a time.
pub(crate) struct SplitPackedKernel<const WIDTH: usize> {
    low_mask: __m256i,
    head_mask: __m256i,
    shift: __m128i,
    packer: Packer<WIDTH>,
}

impl<const WIDTH: usize> SplitPackedKernel<WIDTH> {
    const LOW: i32 = WIDTH as i32 - 1;

    #[target_feature(enable = "avx2")]
    pub(crate) fn new() -> Self {
        SplitPackedKernel {
            low_mask: _mm256_set1_epi16(((1 << Self::LOW) - 1) as i16),
            head_mask: _mm256_set1_epi16(((1 << (15 - Self::LOW)) - 1) as i16),
            shift: _mm_cvtsi32_si128(Self::LOW),
            packer: Packer::<WIDTH>::new(),
        }
    }

    /// Split the 32 words of `words` (in order): heads to `heads`, the packed remainders
    /// to `packed`.
    ///
    /// # Safety
    /// `heads` must be valid for 32 writes and `packed` for `4 * WIDTH + 4` bytes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn group(&self, [w0, w1]: [__m256i; 2], heads: *mut u16, packed: *mut u8) {
        let h0 = _mm256_and_si256(_mm256_srl_epi16(w0, self.shift), self.head_mask);
        let h1 = _mm256_and_si256(_mm256_srl_epi16(w1, self.shift), self.head_mask);
        let r0 = _mm256_or_si256(
            _mm256_sll_epi16(_mm256_srli_epi16::<15>(w0), self.shift),
            _mm256_and_si256(w0, self.low_mask),
        );
        let r1 = _mm256_or_si256(
            _mm256_sll_epi16(_mm256_srli_epi16::<15>(w1), self.shift),
            _mm256_and_si256(w1, self.low_mask),
        );
        // packus interleaves the 128-bit lanes; the permute puts the 32 bytes in order.
        let bytes = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(r0, r1));
        // SAFETY: the caller provides the room.
        unsafe {
            _mm256_storeu_si256(heads.cast(), h0);
            _mm256_storeu_si256(heads.add(16).cast(), h1);
            self.packer.store(bytes, packed);
        }
    }
}

/// Byte order that gathers, within each 128-bit lane of four fp32 words, the four low
/// bytes, then the four second bytes, then the four high halves.
const F32_GATHER: [i8; 16] = [0, 4, 8, 12, 1, 5, 9, 13, 2, 3, 6, 7, 10, 11, 14, 15];

/// Split fp32 words into heads and the three remainder planes, 8 words at a time; returns
/// how many words were done. The high half of each word splits like a 16-bit float with a
/// `low + 1`-bit remainder (`low` = 7 - k); the two low bytes are planes 2 and 1 as they are.
///
/// # Safety
/// The CPU must support AVX2. `heads` and the three planes hold `raw.len() / 4` values.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn split_f32(
    raw: &[u8],
    low: u32,
    heads: &mut [u16],
    planes: [&mut [u8]; 3],
) -> usize {
    let (n, (heads, planes)) = f32_split_outputs(raw, heads, planes);
    let split = SplitF32Kernel::new(low);
    let mut done = 0usize;
    // SAFETY: the loop condition keeps 32 raw bytes and 8 values of every output in bounds.
    unsafe {
        while done + 8 <= n {
            let w = _mm256_loadu_si256(raw.as_ptr().add(4 * done).cast());
            split.group(w, (heads.add(done), planes.map(|p| p.add(done))));
            done += 8;
        }
    }
    done
}

/// The fp32 split, a group of 8 words at a time.
pub(crate) struct SplitF32Kernel {
    gather: __m256i,
    order: __m256i,
    shift: __m128i,
    low_mask: __m128i,
    head_mask: __m128i,
}

impl SplitF32Kernel {
    /// The split whose high halves keep `low` mantissa bits below the head.
    #[target_feature(enable = "avx2")]
    pub(crate) fn new(low: u32) -> Self {
        // SAFETY: `F32_GATHER` is 16 bytes.
        let gather = unsafe { _mm_loadu_si128(F32_GATHER.as_ptr().cast()) };
        SplitF32Kernel {
            gather: _mm256_broadcastsi128_si256(gather),
            order: _mm256_setr_epi32(0, 4, 1, 5, 2, 3, 6, 7),
            shift: _mm_cvtsi32_si128(low as i32),
            low_mask: _mm_set1_epi16(((1u32 << low) - 1) as i16),
            head_mask: _mm_set1_epi16(((1u32 << (15 - low)) - 1) as i16),
        }
    }

    /// Split the 8 words of `w`: heads to `heads`, remainder bytes to planes 0, 1 and 2.
    ///
    /// # Safety
    /// Every pointer must be valid for 8 writes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) unsafe fn group(&self, w: __m256i, (heads, [p0, p1, p2]): (*mut u16, [*mut u8; 3])) {
        let sorted = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(w, self.gather), self.order);
        let bytes = _mm256_castsi256_si128(sorted);
        let hi = _mm256_extracti128_si256::<1>(sorted);
        let head = _mm_and_si128(_mm_srl_epi16(hi, self.shift), self.head_mask);
        let rem = _mm_or_si128(
            _mm_sll_epi16(_mm_srli_epi16::<15>(hi), self.shift),
            _mm_and_si128(hi, self.low_mask),
        );
        // SAFETY: the caller provides the room.
        unsafe {
            _mm_storel_epi64(p2.cast(), bytes);
            _mm_storel_epi64(p1.cast(), _mm_unpackhi_epi64(bytes, bytes));
            _mm_storeu_si128(heads.cast(), head);
            _mm_storel_epi64(p0.cast(), _mm_packus_epi16(rem, rem));
        }
    }
}

/// Inverse of [`split_f32`], 8 words at a time; returns how many words were written.
///
/// # Safety
/// The CPU must support AVX2. `out` holds 4 bytes per head and each plane one byte per head.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn join_f32(
    heads: &[u16],
    low: u32,
    planes: [&[u8]; 3],
    out: &mut [u8],
) -> usize {
    let n = f32_join_len(heads, planes, out);
    let [p0, p1, p2] = planes;
    // SAFETY (whole function): the loop condition keeps 8 values of every input and 32
    // output bytes in bounds.
    unsafe {
        let shift = _mm_cvtsi32_si128(low as i32);
        let sign_shift = _mm_cvtsi32_si128(15 - low as i32);
        let low_mask = _mm_set1_epi16(((1u32 << low) - 1) as i16);
        let sign = _mm_set1_epi16(i16::MIN);
        let mut done = 0usize;
        while done + 8 <= n {
            prefetch_planes(planes, done);
            let head = _mm_loadu_si128(heads.as_ptr().add(done).cast());
            let rem = _mm_cvtepu8_epi16(_mm_loadl_epi64(p0.as_ptr().add(done).cast()));
            let hi = _mm_or_si128(
                _mm_or_si128(
                    _mm_and_si128(_mm_sll_epi16(rem, sign_shift), sign),
                    _mm_sll_epi16(head, shift),
                ),
                _mm_and_si128(rem, low_mask),
            );
            let b1 = _mm_loadl_epi64(p1.as_ptr().add(done).cast());
            let b0 = _mm_loadl_epi64(p2.as_ptr().add(done).cast());
            let lo = _mm_unpacklo_epi8(b0, b1);
            let dst = out.as_mut_ptr().add(4 * done);
            _mm_storeu_si128(dst.cast(), _mm_unpacklo_epi16(lo, hi));
            _mm_storeu_si128(dst.add(16).cast(), _mm_unpackhi_epi16(lo, hi));
            done += 8;
        }
        done
    }
}

/// How many words an fp32 split of `raw` can do, and where its outputs start: heads, then
/// remainder planes 0 to 2.
pub(crate) fn f32_split_outputs(
    raw: &[u8],
    heads: &mut [u16],
    planes: [&mut [u8]; 3],
) -> (usize, (*mut u16, [*mut u8; 3])) {
    let n = planes
        .iter()
        .map(|p| p.len())
        .fold((raw.len() / 4).min(heads.len()), usize::min);
    (n, (heads.as_mut_ptr(), planes.map(|p| p.as_mut_ptr())))
}

/// How many words an fp32 join can write: one per head and per byte of each plane, four
/// bytes each into `out`.
pub(crate) fn f32_join_len(heads: &[u16], planes: [&[u8]; 3], out: &[u8]) -> usize {
    planes
        .iter()
        .map(|p| p.len())
        .fold(heads.len().min(out.len() / 4), usize::min)
}

/// Once every 64 words, prefetch the fp32 join's planes [`PREFETCH`] bytes past word `done`.
#[inline]
#[target_feature(enable = "sse")]
pub(crate) fn prefetch_planes(planes: [&[u8]; 3], done: usize) {
    if done.is_multiple_of(64) {
        for plane in planes {
            _mm_prefetch::<_MM_HINT_T0>(plane.as_ptr().wrapping_add(done + PREFETCH).cast());
        }
    }
}
