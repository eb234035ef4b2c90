//! xxh3-64 (seed 0, default secret) of inputs longer than 240 bytes, with AVX-512; and
//! the xxh3-128 of tensor content ids, whose input is a short prefix and the tensor.
//!
//! Every chunk is hashed twice on write and twice on read, and most of those hashes run
//! over data that is still in L2. There the hash is bound by its arithmetic, and one
//! 512-bit register holds all eight accumulators of a 64-byte stripe where AVX2 needs two.
//! The result is the reference xxh3-64 bit for bit (a test checks every length class).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

const STRIPE: usize = 64;
const SECRET_LEN: usize = 192;
/// Stripes between two scrambles: the secret advances 8 bytes per stripe.
const STRIPES_PER_BLOCK: usize = (SECRET_LEN - STRIPE) / 8;
const BLOCK: usize = STRIPE * STRIPES_PER_BLOCK;
/// Where the secret of the last stripe starts, counted back from the end of the secret.
const LAST_STRIPE_SECRET_BACK: usize = 7;
const MERGE_SECRET_START: usize = 11;

const PRIME32_1: u64 = 0x9E37_79B1;
const PRIME32_2: u64 = 0x85EB_CA77;
const PRIME32_3: u64 = 0xC2B2_AE3D;
const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;
const PRIME_MX1: u64 = 0x1656_6791_9E37_79F9;

/// The default secret: xxh3's secret for seed 0.
static SECRET: [u8; SECRET_LEN] = xxhash_rust::const_xxh3::const_custom_default_secret(0);

/// Inputs longer than this take the long-input algorithm, the only one here.
pub const LONG_FROM: usize = 241;

/// Whether [`hash_long`] may run on this CPU.
#[inline]
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// xxh3-64 of `data`, which must be at least [`LONG_FROM`] bytes long.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn hash_long(data: &[u8]) -> u64 {
    debug_assert!(data.len() >= LONG_FROM);
    let len = data.len();
    let ptr = data.as_ptr();
    // SAFETY: every stripe of `data` is read through `ptr` (see `accumulators`).
    let lanes = unsafe { accumulators(len, ptr, ptr) };
    merge(
        &lanes,
        MERGE_SECRET_START,
        (len as u64).wrapping_mul(PRIME64_1),
    )
}

/// xxh3-64 of an input of known length fed 64-byte stripe by stripe from registers, as a
/// kernel writes it: the decoders' joins hash the words they store, so the decoded chunk
/// is not read back for its checksum (by then it has often left L2). The stripes handed
/// to [`StripeHash::push`] must be the input's first ones, in order; [`StripeHash::finish`]
/// reads the rest from memory.
#[derive(Clone)]
pub(crate) struct StripeHash {
    products: __m512i,
    words: __m512i,
    /// Stripes taken so far.
    taken: usize,
    /// Stripes the block loop of the algorithm takes: the last one, at `len - 64`, is
    /// keyed apart, so a length that is a multiple of 64 leaves its last stripe out.
    limit: usize,
    len: usize,
}

impl StripeHash {
    /// A hash of `len` bytes, or `None` where [`hash_long`] does not apply (a CPU without
    /// AVX-512F, or an input shorter than [`LONG_FROM`]).
    pub(crate) fn new(len: usize) -> Option<StripeHash> {
        if len < LONG_FROM || !available() {
            return None;
        }
        // SAFETY: AVX-512F is present (checked above).
        let products = unsafe { initial_accumulators() };
        Some(StripeHash {
            products,
            // SAFETY: as above.
            words: unsafe { _mm512_setzero_si512() },
            taken: 0,
            limit: (len - 1) / STRIPE,
            len,
        })
    }

    /// Take the next stripe of the input (a stripe past those the algorithm keys in its
    /// block loop is left for [`StripeHash::finish`]).
    ///
    /// # Safety
    /// The CPU must support AVX-512F (it does wherever a `StripeHash` exists).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn push(&mut self, data: __m512i) {
        if self.taken >= self.limit {
            return;
        }
        let slot = self.taken % STRIPES_PER_BLOCK;
        // SAFETY: the key's 64 bytes start at most 8 * 15 = 120 bytes into the 192-byte secret.
        let key = unsafe { _mm512_loadu_si512(SECRET.as_ptr().add(slot * 8).cast()) };
        let keyed = _mm512_xor_si512(data, key);
        let product = _mm512_mul_epu32(keyed, _mm512_srli_epi64::<32>(keyed));
        self.products = _mm512_add_epi64(self.products, product);
        self.words = _mm512_add_epi64(self.words, data);
        self.taken += 1;
        if slot == STRIPES_PER_BLOCK - 1 {
            // SAFETY: the scramble key is the secret's last 64 bytes.
            let scramble_key =
                unsafe { _mm512_loadu_si512(SECRET.as_ptr().add(SECRET_LEN - STRIPE).cast()) };
            self.products = scramble(self.folded(), scramble_key);
            self.words = _mm512_setzero_si512();
        }
    }

    /// The accumulators, with the neighbours' words swapped in.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn folded(&self) -> __m512i {
        _mm512_add_epi64(
            self.products,
            _mm512_shuffle_epi32::<0b01_00_11_10>(self.words),
        )
    }

    /// The hash of `data`, the whole input: the stripes not yet pushed are read from it.
    /// `None` if `data` is not as long as the hash was made for.
    pub(crate) fn finish(self, data: &[u8]) -> Option<u64> {
        // SAFETY: a `StripeHash` exists only where AVX-512F is present.
        (data.len() == self.len).then(|| unsafe { self.finish_avx512(data) })
    }

    /// [`StripeHash::finish`] of an input of the right length.
    ///
    /// # Safety
    /// The CPU must support AVX-512F, and `data` be `self.len` bytes long.
    #[target_feature(enable = "avx512f")]
    unsafe fn finish_avx512(mut self, data: &[u8]) -> u64 {
        if self.taken == 0 {
            // Nothing was pushed (the chunk took a kernel that does not hash): the block
            // loop of `hash_long` is faster than stripe-by-stripe pushes.
            // SAFETY: AVX-512F is present and `data` is at least `LONG_FROM` bytes long.
            return unsafe { hash_long(data) };
        }
        // SAFETY (every load): stripes below `limit` end at most at `len - 1`, the last
        // one starts at `len - 64`, and `len` is at least `LONG_FROM`.
        unsafe {
            while self.taken < self.limit {
                self.push(_mm512_loadu_si512(
                    data.as_ptr().add(self.taken * STRIPE).cast(),
                ));
            }
            let secret = SECRET
                .as_ptr()
                .add(SECRET_LEN - STRIPE - LAST_STRIPE_SECRET_BACK);
            let acc = accumulate(
                self.folded(),
                data.as_ptr().add(self.len - STRIPE),
                1,
                secret,
            );
            let mut lanes = [0u64; 8];
            _mm512_storeu_si512(lanes.as_mut_ptr().cast(), acc);
            merge(
                &lanes,
                MERGE_SECRET_START,
                (self.len as u64).wrapping_mul(PRIME64_1),
            )
        }
    }
}

/// The accumulators' starting values.
#[inline]
#[target_feature(enable = "avx512f")]
fn initial_accumulators() -> __m512i {
    _mm512_setr_epi64(
        PRIME32_3 as i64,
        PRIME64_1 as i64,
        PRIME64_2 as i64,
        PRIME64_3 as i64,
        PRIME64_4 as i64,
        PRIME32_2 as i64,
        PRIME64_5 as i64,
        PRIME32_1 as i64,
    )
}

/// Whether [`hash128_prefixed`] takes a prefix of `prefix` bytes before `data` bytes: a
/// prefix shorter than a block, and the two together longer than a block and a stripe.
pub fn prefixed_fits(prefix: usize, data: usize) -> bool {
    prefix < BLOCK && prefix + data > BLOCK + STRIPE
}

/// xxh3-128 of `prefix` followed by `data`, without joining them: the first block is
/// copied together, the rest is read from `data` in place.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]), and the lengths must be ones
/// [`prefixed_fits`] takes.
#[target_feature(enable = "avx512f")]
pub unsafe fn hash128_prefixed(prefix: &[u8], data: &[u8]) -> u128 {
    let (p, len) = (prefix.len(), prefix.len() + data.len());
    debug_assert!(prefixed_fits(p, data.len()));
    let mut first = [0u8; BLOCK];
    first[..p].copy_from_slice(prefix);
    first[p..].copy_from_slice(&data[..BLOCK - p]);
    // Input offset `o` past the first block is `data[o - p]`.
    let rest = data.as_ptr().wrapping_sub(p);
    // SAFETY: the first block is `first`; every later stripe, the last one included, lies
    // at an offset of at least a block, so `rest` reads it inside `data`.
    let lanes = unsafe { accumulators(len, first.as_ptr(), rest) };
    let low = merge(
        &lanes,
        MERGE_SECRET_START,
        (len as u64).wrapping_mul(PRIME64_1),
    );
    let high = merge(
        &lanes,
        SECRET_LEN - STRIPE - MERGE_SECRET_START,
        !(len as u64).wrapping_mul(PRIME64_2),
    );
    (high as u128) << 64 | low as u128
}

/// The accumulators after every stripe of an input of `len` bytes (at least
/// [`LONG_FROM`]), read from `first` below offset [`BLOCK`] and from `rest` (plus the
/// offset) from there on.
///
/// # Safety
/// The CPU must support AVX-512F. Every 64-byte stripe the long-input algorithm reads, at
/// multiples of 64 below `len - 1` and at `len - 64`, must be readable where the rule above
/// places it, and no stripe may cross offset [`BLOCK`] unless `first` and `rest` are one.
#[target_feature(enable = "avx512f")]
unsafe fn accumulators(len: usize, first: *const u8, rest: *const u8) -> [u64; 8] {
    let secret = SECRET.as_ptr();
    let mut acc = initial_accumulators();
    let at = |offset: usize| {
        if offset < BLOCK {
            first.wrapping_add(offset)
        } else {
            rest.wrapping_add(offset)
        }
    };
    // SAFETY (every load below): each reads 64 bytes that the caller guarantees readable,
    // or that lie inside `SECRET`, as the offsets show; unaligned loads are allowed.
    let scramble_key = unsafe { _mm512_loadu_si512(secret.add(SECRET_LEN - STRIPE).cast()) };
    let blocks = (len - 1) / BLOCK;
    for b in 0..blocks {
        acc = unsafe { accumulate(acc, at(b * BLOCK), STRIPES_PER_BLOCK, secret) };
        acc = scramble(acc, scramble_key);
    }
    let stripes = ((len - 1) - blocks * BLOCK) / STRIPE;
    acc = unsafe { accumulate(acc, at(blocks * BLOCK), stripes, secret) };
    let last_secret = unsafe { secret.add(SECRET_LEN - STRIPE - LAST_STRIPE_SECRET_BACK) };
    acc = unsafe { accumulate(acc, at(len - STRIPE), 1, last_secret) };
    let mut lanes = [0u64; 8];
    // SAFETY: `lanes` is 64 bytes.
    unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), acc) };
    lanes
}

/// `stripes` consecutive stripes from `input` into the accumulators, stripe `s` keyed by
/// the secret from byte `8 s`: each lane adds the product of the two 32-bit halves of its
/// input word XOR the key, and its neighbour's input word. The neighbours' words are summed
/// unswapped and swapped once at the end (the swap commutes with the sum), which saves a
/// shuffle per stripe on the two ports that run 512-bit integer operations.
///
/// # Safety
/// `input` must have `64 stripes` readable bytes and `secret` `8 stripes + 56`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate(acc: __m512i, input: *const u8, stripes: usize, secret: *const u8) -> __m512i {
    let mut products = acc;
    let mut words = _mm512_setzero_si512();
    for s in 0..stripes {
        let data = unsafe { _mm512_loadu_si512(input.add(s * STRIPE).cast()) };
        let key = unsafe { _mm512_loadu_si512(secret.add(s * 8).cast()) };
        let keyed = _mm512_xor_si512(data, key);
        let product = _mm512_mul_epu32(keyed, _mm512_srli_epi64::<32>(keyed));
        products = _mm512_add_epi64(products, product);
        words = _mm512_add_epi64(words, data);
    }
    _mm512_add_epi64(products, _mm512_shuffle_epi32::<0b01_00_11_10>(words))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn scramble(acc: __m512i, key: __m512i) -> __m512i {
    let mixed = _mm512_xor_si512(_mm512_xor_si512(acc, _mm512_srli_epi64::<47>(acc)), key);
    let prime = _mm512_set1_epi64(PRIME32_1 as i64);
    let low = _mm512_mul_epu32(mixed, prime);
    let high = _mm512_mul_epu32(_mm512_srli_epi64::<32>(mixed), prime);
    _mm512_add_epi64(low, _mm512_slli_epi64::<32>(high))
}

/// The accumulators merged into 64 bits, keyed by the secret from byte `secret_at`.
fn merge(acc: &[u64; 8], secret_at: usize, start: u64) -> u64 {
    let key = |i: usize| {
        let at = secret_at + 8 * i;
        let mut b = [0u8; 8];
        b.copy_from_slice(&SECRET[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut h = start;
    for i in 0..4 {
        let a = acc[2 * i] ^ key(2 * i);
        let b = acc[2 * i + 1] ^ key(2 * i + 1);
        let product = (a as u128) * (b as u128);
        h = h.wrapping_add((product as u64) ^ ((product >> 64) as u64));
    }
    h ^= h >> 37;
    h = h.wrapping_mul(PRIME_MX1);
    h ^ (h >> 32)
}
