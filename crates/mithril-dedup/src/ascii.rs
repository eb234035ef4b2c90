//! Byte classes of a block of up to 64 bytes as bit masks, for the word tokenizer's ASCII
//! fast path: bit `k` describes byte `k` of the block.

/// `word`: ASCII `[A-Za-z0-9_]`; `upper`: ASCII `[A-Z]`; `high`: any byte ≥ 0x80.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Masks {
    pub word: u64,
    pub upper: u64,
    pub high: u64,
}

pub const BLOCK: usize = 64;

/// Classify `block` (at most 64 bytes); `avx2` selects the vector kernel for full blocks.
#[inline]
pub fn classify(block: &[u8], avx2: bool) -> Masks {
    #[cfg(target_arch = "x86_64")]
    {
        if avx2 && block.len() == BLOCK {
            // SAFETY: the caller checked that the CPU has AVX2; the block holds 64 bytes.
            return unsafe { classify_avx2(block) };
        }
    }
    let _ = avx2;
    classify_scalar(block)
}

pub fn classify_scalar(block: &[u8]) -> Masks {
    let mut m = Masks::default();
    for (k, &b) in block.iter().enumerate().take(BLOCK) {
        let bit = 1u64 << k;
        if b >= 0x80 {
            m.high |= bit;
        } else if b.is_ascii_uppercase() {
            m.upper |= bit;
            m.word |= bit;
        } else if b.is_ascii_alphanumeric() || b == b'_' {
            m.word |= bit;
        }
    }
    m
}

pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn classify_avx2(block: &[u8]) -> Masks {
    use std::arch::x86_64::*;
    // Signed byte compares: bytes ≥ 0x80 are negative and fall outside every ASCII range.
    #[target_feature(enable = "avx2")]
    unsafe fn half(p: *const u8) -> (u32, u32, u32) {
        // SAFETY: the caller passes a pointer to 32 readable bytes; AVX2 is enabled.
        unsafe {
            let v = _mm256_loadu_si256(p as *const __m256i);
            let ge = |lo: u8| _mm256_cmpgt_epi8(v, _mm256_set1_epi8(lo as i8 - 1));
            let le = |hi: u8| _mm256_cmpgt_epi8(_mm256_set1_epi8(hi as i8 + 1), v);
            let upper = _mm256_and_si256(ge(b'A'), le(b'Z'));
            let lower = _mm256_and_si256(ge(b'a'), le(b'z'));
            let digit = _mm256_and_si256(ge(b'0'), le(b'9'));
            let under = _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'_' as i8));
            let word =
                _mm256_or_si256(_mm256_or_si256(upper, lower), _mm256_or_si256(digit, under));
            (
                _mm256_movemask_epi8(word) as u32,
                _mm256_movemask_epi8(upper) as u32,
                _mm256_movemask_epi8(v) as u32,
            )
        }
    }
    let p = block.as_ptr();
    // SAFETY: `block` holds 64 bytes, so both halves are readable.
    let (w0, u0, h0) = unsafe { half(p) };
    // SAFETY: as above.
    let (w1, u1, h1) = unsafe { half(p.add(32)) };
    let join = |a: u32, b: u32| u64::from(a) | (u64::from(b) << 32);
    Masks {
        word: join(w0, w1),
        upper: join(u0, u1),
        high: join(h0, h1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn vector_and_scalar_agree(block in proptest::collection::vec(any::<u8>(), 64)) {
            prop_assert_eq!(classify(&block, has_avx2()), classify_scalar(&block));
        }
    }

    #[test]
    fn classes() {
        let m = classify_scalar(b"aZ_9 -\xc3");
        assert_eq!(m.word, 0b1111);
        assert_eq!(m.upper, 0b10);
        assert_eq!(m.high, 0b100_0000);
    }
}
