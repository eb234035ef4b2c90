//! One chunk of one tensor: pick the encoding, checksum it, and undo it.

use crate::delta::{self, DeltaMode, DeltaOp};
use crate::dtype::DType;
use crate::error::{corrupt, Result};
use crate::float;
use std::borrow::Cow;

/// xxh3-64 of `data`, the chunk checksum of the format. Every chunk is hashed twice on
/// write and twice on read, raw and coded, so this picks the widest vectors the CPU has at
/// run time: AVX-512 for long inputs (module `xxh3_avx512`), else `twox-hash` (AVX2).
#[inline]
pub fn xxh3_checksum(data: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= crate::xxh3_avx512::LONG_FROM && crate::xxh3_avx512::available() {
        // SAFETY: the CPU supports AVX-512F and the input is long enough (checked above).
        return unsafe { crate::xxh3_avx512::hash_long(data) };
    }
    twox_hash::XxHash3_64::oneshot(data)
}

/// How a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The raw bytes, when nothing else was smaller.
    Raw,
    /// The float head/remainder codec ([`crate::float`]).
    Float,
    /// A zstd frame: the generic path for integers, bools, fp8 and fp64.
    Zstd,
    /// XOR of the bit patterns against the base tensor ([`crate::delta`]).
    Xor,
    /// Zigzag integer difference of the bit patterns against the base tensor.
    Sub,
    /// `Sub`, grouped by the base element's sign and exponent (float dtypes only).
    SubCtx,
    /// `Sub`, four elements to a Huffman symbol (float dtypes only).
    SubQuad,
    /// `Sub`, bit-packed eight elements to a block (32-bit floats only).
    SubPack,
}

impl Encoding {
    /// Every encoding, in the order the fuzz targets index them.
    pub const ALL: [Encoding; 8] = [
        Encoding::Raw,
        Encoding::Float,
        Encoding::Zstd,
        Encoding::Xor,
        Encoding::Sub,
        Encoding::SubCtx,
        Encoding::SubQuad,
        Encoding::SubPack,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Float => "float",
            Encoding::Zstd => "zstd",
            Encoding::Xor => "xor",
            Encoding::Sub => "sub",
            Encoding::SubCtx => "sub-ctx",
            Encoding::SubQuad => "sub-quad",
            Encoding::SubPack => "sub-pack",
        }
    }

    /// Whether decoding needs the base tensor's bytes.
    pub fn is_delta(self) -> bool {
        self.delta_op().is_some()
    }

    /// The delta transform of a delta encoding.
    pub fn delta_op(self) -> Option<DeltaOp> {
        match self {
            Encoding::Xor => Some(DeltaOp::Xor),
            Encoding::Sub => Some(DeltaOp::Sub),
            Encoding::SubCtx => Some(DeltaOp::SubCtx),
            Encoding::SubQuad => Some(DeltaOp::SubQuad),
            Encoding::SubPack => Some(DeltaOp::SubPack),
            Encoding::Raw | Encoding::Float | Encoding::Zstd => None,
        }
    }

    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "raw" => Some(Encoding::Raw),
            "float" => Some(Encoding::Float),
            "zstd" => Some(Encoding::Zstd),
            "xor" => Some(Encoding::Xor),
            "sub" => Some(Encoding::Sub),
            "sub-ctx" => Some(Encoding::SubCtx),
            "sub-quad" => Some(Encoding::SubQuad),
            "sub-pack" => Some(Encoding::SubPack),
            _ => None,
        }
    }
}

/// Knobs of the encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// zstd level of the generic path.
    pub zstd_level: i32,
    /// Target raw bytes per chunk (rounded to whole elements).
    pub chunk_bytes: usize,
    /// Speed or size for float delta chunks.
    pub delta_mode: DeltaMode,
}

pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// Largest chunk a reader accepts; bounds the memory one hostile chunk entry can ask for.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

impl From<DeltaOp> for Encoding {
    fn from(op: DeltaOp) -> Encoding {
        match op {
            DeltaOp::Xor => Encoding::Xor,
            DeltaOp::Sub => Encoding::Sub,
            DeltaOp::SubCtx => Encoding::SubCtx,
            DeltaOp::SubQuad => Encoding::SubQuad,
            DeltaOp::SubPack => Encoding::SubPack,
        }
    }
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            zstd_level: 3,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            delta_mode: DeltaMode::default(),
        }
    }
}

/// A chunk ready to be written.
#[derive(Debug)]
pub struct EncodedChunk<'a> {
    pub encoding: Encoding,
    pub data: Cow<'a, [u8]>,
    pub raw_len: usize,
    /// xxh3-64 of `data` (what is stored).
    pub checksum: u64,
    /// xxh3-64 of the raw bytes (what decoding must give back).
    pub raw_checksum: u64,
}

/// Encode one chunk of whole elements of `dtype`.
pub fn encode_chunk<'a>(raw: &'a [u8], dtype: DType, opts: &EncodeOptions) -> EncodedChunk<'a> {
    let (coded, raw_hash) = match dtype.float_bits() {
        Some(bits) => {
            let (payload, hash) = float::encode_hashed(raw, bits, dtype.size());
            (Some((Encoding::Float, payload)), hash)
        }
        None => {
            let zstd = crate::scratch::zstd_compress(raw, opts.zstd_level);
            (zstd.ok().map(|z| (Encoding::Zstd, z)), None)
        }
    };
    let raw_checksum = raw_hash.unwrap_or_else(|| xxh3_checksum(raw));
    let (encoding, data) = match coded {
        Some((enc, data)) if data.len() < raw.len() => (enc, Cow::Owned(data)),
        _ => (Encoding::Raw, Cow::Borrowed(raw)),
    };
    EncodedChunk {
        encoding,
        checksum: xxh3_checksum(&data),
        data,
        raw_len: raw.len(),
        raw_checksum,
    }
}

/// Whether every byte is zero. A plain `iter().all` stops at the first non-zero byte and
/// so is not vectorised (about a byte per cycle); OR-ing fixed blocks is, and stopping
/// only between blocks costs nothing on the data this sees (all zeros, or non-zero at once).
pub fn all_zero(bytes: &[u8]) -> bool {
    let mut blocks = bytes.chunks_exact(256);
    let whole = blocks.all(|b| b.iter().fold(0u8, |acc, &x| acc | x) == 0);
    whole && blocks.remainder().iter().all(|&b| b == 0)
}

/// Whether a sample shows that no delta of this float chunk is worth planning: its
/// ungrouped difference estimates at the plain encoding's size or above. Optimiser
/// moments against the moments of an earlier step are often such chunks: their planned
/// deltas and plain encodings come within a fraction of a percent of each other, and
/// planning the delta took most of their encoding time. On a real MiniLM fine-tuning run
/// (steps 0, 1, 10 and 100), trained weights sample at 0.82 of plain or less; moments at
/// 0.77 to 1.05, since the grouped codings find structure in the embedding's moments that
/// an ungrouped difference does not. Skipping every moment chunk that samples at plain or
/// above stored 0.02-0.17 % more of the moments' bytes (`examples/delta_sample.rs`).
///
/// A base of zeros settles it too: XOR or difference against zeros is the data itself,
/// which the plain codec codes better. A sampled chunk tells that from its sample
/// (optimiser moments at step 0, and the untouched rows of an embedding's moments), with
/// no pass over the base; short chunks and integer dtypes, which are not sampled, are
/// planned unless their whole base is zeros.
fn delta_cannot_win(raw: &[u8], base: &[u8], dtype: DType) -> bool {
    let Some(runs) = SampleRuns::of(raw, base, dtype) else {
        return all_zero(base);
    };
    runs.prefetch(base);
    if runs.ranges().all(|r| all_zero(&base[r])) {
        return true;
    }
    runs.prefetch(raw);
    let (delta, plain) = DeltaSample::take(runs, raw, base).estimates();
    delta >= plain
}

/// The estimates `delta_cannot_win` compares, in bytes of its sample: an ungrouped
/// difference of `raw` against `base`, and `raw`'s plain encoding. `None` for a chunk that
/// is not a float dtype or is too short to sample (always planned).
pub fn sampled_delta_and_plain(raw: &[u8], base: &[u8], dtype: DType) -> Option<(usize, usize)> {
    let runs = SampleRuns::of(raw, base, dtype)?;
    runs.prefetch(raw);
    runs.prefetch(base);
    Some(DeltaSample::take(runs, raw, base).estimates())
}

/// Where [`delta_cannot_win`] samples a float chunk: [`SAMPLE_RUNS`] short runs spread
/// over it. The chunk is not in cache yet, and whole cache lines in sequence cost a
/// fraction of the misses of a strided sample.
#[derive(Clone, Copy)]
struct SampleRuns {
    bits: crate::dtype::FloatBits,
    width: usize,
    step: usize,
}

impl SampleRuns {
    /// `None` for a chunk that is not a float dtype or is too short to sample.
    fn of(raw: &[u8], base: &[u8], dtype: DType) -> Option<SampleRuns> {
        let bits = dtype.float_bits()?;
        let width = dtype.size();
        if raw.len() / width < float::SAMPLE_FROM_LEN {
            return None;
        }
        let step = raw.len().min(base.len()) / SAMPLE_RUNS / width * width;
        Some(SampleRuns { bits, width, step })
    }

    fn ranges(self) -> impl Iterator<Item = std::ops::Range<usize>> {
        let run = SAMPLE_RUN * self.width;
        (0..SAMPLE_RUNS).map(move |r| r * self.step..r * self.step + run)
    }

    /// Every run of `bytes` prefetched before any is read, so that the misses overlap
    /// instead of coming one after another.
    fn prefetch(self, bytes: &[u8]) {
        for r in self.ranges() {
            float::prefetch(bytes[r.start..].as_ptr());
            float::prefetch(bytes[r.end - 1..].as_ptr());
        }
    }
}

/// What [`sampled_delta_and_plain`] estimates from: the same runs of a float chunk and of
/// its base, copied out.
struct DeltaSample {
    runs: SampleRuns,
    raw: Vec<u8>,
    base: Vec<u8>,
}

impl DeltaSample {
    /// The runs copied out of `raw` and `base`, which the caller has prefetched.
    fn take(runs: SampleRuns, raw: &[u8], base: &[u8]) -> DeltaSample {
        let gather = |bytes: &[u8]| -> Vec<u8> {
            let mut out = Vec::with_capacity(SAMPLE_RUNS * SAMPLE_RUN * runs.width);
            for r in runs.ranges() {
                out.extend_from_slice(&bytes[r]);
            }
            out
        };
        DeltaSample {
            runs,
            raw: gather(raw),
            base: gather(base),
        }
    }

    /// The ungrouped difference's estimate and the plain encoding's, in sample bytes.
    fn estimates(&self) -> (usize, usize) {
        let (bits, width) = (self.runs.bits, self.runs.width);
        (
            delta::sub_estimate(&self.raw, &self.base, width),
            float::estimate(&self.raw, bits, width, true),
        )
    }
}

/// [`delta_cannot_win`]'s sample: this many runs of [`SAMPLE_RUN`] elements.
const SAMPLE_RUNS: usize = 128;
const SAMPLE_RUN: usize = 16;

/// In compact delta coding, a plain estimate within this fraction of the delta's is a close
/// call, settled by coding both (see [`encode_chunk_delta`]).
const CLOSE_CALL: (usize, usize) = (1, 8);

/// A delta estimated below this fraction of the rough plain estimate is kept without
/// counting the plain encoding's heads in full.
const FAR_BELOW: (usize, usize) = (3, 4);

/// [`FAR_BELOW`] in fast delta coding, which only asks which estimate is smaller (it has no
/// close calls). On the weight chunks of a real fine-tuning run the rough plain estimate
/// was within 1.3 % of the fully counted one (the moments' within 6 %), so a delta more
/// than 1/16 below it is smaller whatever the full count says.
const FAST_FAR_BELOW: (usize, usize) = (15, 16);

/// Encode one chunk against the same elements of its base tensor: the delta or the plain
/// encoding, whichever is smaller. Both sizes are estimated from histograms, so usually
/// only one is coded; a close call in compact coding codes both.
/// Integer dtypes have no cheap plain estimate and try both.
pub fn encode_chunk_delta<'a>(
    raw: &'a [u8],
    base: &[u8],
    dtype: DType,
    opts: &EncodeOptions,
) -> EncodedChunk<'a> {
    if delta_cannot_win(raw, base, dtype) {
        return encode_chunk(raw, dtype, opts);
    }
    let mut planned = delta::plan(raw, base, dtype, opts.delta_mode);
    let estimate = planned.estimate();
    // A delta at a quarter of the raw size or less is compared with a rough (sparsely
    // sampled) plain estimate: the plain codec comes near such a delta only on chunks that
    // are nearly constant or mostly zeros (optimiser moments), never on trained weights,
    // and a sparse sample shows which.
    let small_delta = estimate <= raw.len() / 4;
    // The plain encoding, made up front for a close call, or for integer dtypes, which
    // have no cheap plain estimate.
    let mut plain = None;
    match dtype.float_bits() {
        Some(bits) => {
            let mut plain_estimate = float::estimate(raw, bits, dtype.size(), true);
            // The rough estimate's error is a small fraction of a bit per head; only where
            // the delta comes near it are the heads counted in full. A weight delta of
            // fp32 masters (about half the plain size) is settled by the rough one, which
            // spares a full pass over the chunk.
            let far_below = match opts.delta_mode {
                DeltaMode::Fast => FAST_FAR_BELOW,
                DeltaMode::Compact => FAR_BELOW,
            };
            if !small_delta && estimate * far_below.1 > plain_estimate * far_below.0 {
                plain_estimate = float::estimate(raw, bits, dtype.size(), false);
            }
            let margin = estimate * CLOSE_CALL.0 / CLOSE_CALL.1;
            let close = plain_estimate.abs_diff(estimate) <= margin;
            if close && opts.delta_mode == DeltaMode::Compact {
                // Compact coding wants the smaller: a close call codes both. The plain
                // estimate can be off by more than the gap (zstd beats a plane's order-0
                // entropy on optimiser moments by up to 40 %).
                plain = Some(encode_chunk(raw, dtype, opts));
            } else if plain_estimate < estimate {
                return encode_chunk(raw, dtype, opts);
            }
        }
        None => plain = Some(encode_chunk(raw, dtype, opts)),
    }
    let raw_hash = planned.take_raw_hash();
    let (op, payload) = planned.emit();
    if let Some(plain) = plain {
        if plain.data.len() <= payload.len() {
            return plain;
        }
    }
    if payload.len() >= raw.len() {
        return encode_chunk(raw, dtype, opts);
    }
    EncodedChunk {
        encoding: op.into(),
        checksum: xxh3_checksum(&payload),
        data: Cow::Owned(payload),
        raw_len: raw.len(),
        raw_checksum: raw_hash
            .and_then(|h| h.finish(raw))
            .unwrap_or_else(|| xxh3_checksum(raw)),
    }
}

/// Decode one stored chunk into `out` (exactly its raw length), verifying both checksums.
/// For a delta encoding, `out` must hold the base tensor's bytes of this chunk on entry.
pub fn decode_chunk(
    encoding: Encoding,
    data: &[u8],
    dtype: DType,
    checksum: u64,
    raw_checksum: u64,
    out: &mut [u8],
) -> Result<()> {
    decode_checked(encoding, data, dtype, (checksum, raw_checksum), None, out)
}

/// [`decode_chunk`] with the base held apart: a delta chunk is applied to `base` (this
/// chunk's base bytes, as long as `out`) and written to `out`, without copying the base
/// into `out` first where the encoding allows; other chunks ignore `base`.
pub fn decode_chunk_onto(
    encoding: Encoding,
    data: &[u8],
    dtype: DType,
    checksum: u64,
    raw_checksum: u64,
    base: &[u8],
    out: &mut [u8],
) -> Result<()> {
    decode_checked(
        encoding,
        data,
        dtype,
        (checksum, raw_checksum),
        Some(base),
        out,
    )
}

/// Decode and check both checksums (stored, raw).
fn decode_checked(
    encoding: Encoding,
    data: &[u8],
    dtype: DType,
    (checksum, raw_checksum): (u64, u64),
    base: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    let decoded = decode_payload(encoding, data, dtype, base, out);
    // The stored bytes are checked after decoding them, not before: decoding has brought
    // them into cache, where they hash several times faster than from memory. Decoding
    // unchecked bytes is safe, since the decoders refuse hostile payloads by themselves (a
    // hostile file can carry valid checksums), and a mismatch is still what is reported.
    if xxh3_checksum(data) != checksum {
        return Err(corrupt("stored checksum mismatch"));
    }
    let decoded_checksum = match decoded? {
        Some(hash) => hash,
        None => xxh3_checksum(out),
    };
    if decoded_checksum != raw_checksum {
        if encoding.is_delta() {
            return Err(corrupt(
                "decoded data checksum mismatch (delta chunk: corrupt, or applied to the wrong base)",
            ));
        }
        return Err(corrupt("decoded data checksum mismatch"));
    }
    Ok(())
}

/// Decode `data` (the payload of a chunk in `encoding`) into `out`, checksums unchecked;
/// a delta against `base`, or against `out` itself without one. Returns the xxh3-64 of
/// `out` where the decoder computed it on the way.
fn decode_payload(
    encoding: Encoding,
    data: &[u8],
    dtype: DType,
    base: Option<&[u8]>,
    out: &mut [u8],
) -> Result<Option<u64>> {
    let delta = |op: DeltaOp, out: &mut [u8]| delta::decode_hashed(op, data, dtype, base, out);
    match encoding {
        Encoding::Raw => {
            if data.len() != out.len() {
                return Err(corrupt("raw chunk has the wrong length"));
            }
            out.copy_from_slice(data);
        }
        Encoding::Float => {
            let bits = dtype
                .float_bits()
                .ok_or_else(|| corrupt(format!("float encoding on {dtype} data")))?;
            return float::decode_hashed(data, bits, dtype.size(), out);
        }
        Encoding::Zstd => {
            let n = zstd::bulk::decompress_to_buffer(data, out)
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if n != out.len() {
                return Err(corrupt("zstd chunk decoded to the wrong length"));
            }
        }
        Encoding::Xor => return delta(DeltaOp::Xor, out),
        Encoding::Sub => return delta(DeltaOp::Sub, out),
        Encoding::SubCtx => return delta(DeltaOp::SubCtx, out),
        Encoding::SubQuad => return delta(DeltaOp::SubQuad, out),
        Encoding::SubPack => return delta(DeltaOp::SubPack, out),
    }
    Ok(None)
}

/// Split `len` bytes of `dtype` elements into chunk lengths of about `target` bytes.
pub fn chunk_lengths(len: usize, dtype: DType, target: usize) -> Vec<usize> {
    let elem = dtype.size();
    let per = (target.clamp(elem, MAX_CHUNK_BYTES) / elem).max(1) * elem;
    if len == 0 {
        return Vec::new();
    }
    let mut out = vec![per; len / per];
    if !len.is_multiple_of(per) {
        out.push(len % per);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{
        all_zero, decode_chunk, delta_cannot_win, encode_chunk, encode_chunk_delta,
        sampled_delta_and_plain, xxh3_checksum, EncodeOptions,
    };
    use crate::delta::DeltaMode;
    use crate::dtype::DType;
    use crate::Encoding;

    /// Uniform values in [0, 1) from an xorshift generator seeded with `seed`.
    fn uniform(mut state: u64) -> impl FnMut() -> f64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// An fp32 chunk shaped like the embedding table's AdamW `exp_avg` between two
    /// checkpoints nine steps apart: rows (of 384) that no batch touched are zero; rows
    /// touched before the base and not since have decayed by 0.9^9; rows first touched
    /// since the base are new values over zeros. Most elements are zero in both, which the
    /// plain codec stores almost for free, and no row is cheaper as a difference.
    fn moment_like() -> (Vec<u8>, Vec<u8>) {
        let mut next = uniform(0x9e37_79b9_7f4a_7c15u64);
        let (mut base, mut new) = (Vec::new(), Vec::new());
        let mut row_kind = 0;
        for i in 0..(1usize << 18) {
            if i % 384 == 0 {
                row_kind = match next() {
                    r if r < 0.06 => 1,
                    r if r < 0.16 => 2,
                    _ => 0,
                };
            }
            // Gradient-like magnitudes: a sign and six decades of exponent.
            let mut value = || {
                let sign = if next() < 0.5 { -1.0 } else { 1.0 };
                (sign * 10f64.powf(-2.0 - 6.0 * next())) as f32
            };
            let (b, n) = match row_kind {
                1 => {
                    let b = value();
                    (b, b * 0.387_420_5)
                }
                2 => (0.0, value()),
                _ => (0.0, 0.0),
            };
            base.extend_from_slice(&b.to_le_bytes());
            new.extend_from_slice(&n.to_le_bytes());
        }
        (base, new)
    }

    #[test]
    fn a_delta_is_not_kept_where_the_plain_encoding_is_smaller() {
        let (base, new) = moment_like();
        for mode in [DeltaMode::Compact, DeltaMode::Fast] {
            let opts = EncodeOptions {
                delta_mode: mode,
                ..EncodeOptions::default()
            };
            let plain = encode_chunk(&new, DType::F32, &opts);
            let chosen = encode_chunk_delta(&new, &base, DType::F32, &opts);
            assert!(
                chosen.data.len() <= plain.data.len() + plain.data.len() / 50,
                "{mode:?}: kept {} bytes as {:?}, the plain encoding is {}",
                chosen.data.len(),
                chosen.encoding,
                plain.data.len()
            );
            let mut out = base.clone();
            decode_chunk(
                chosen.encoding,
                &chosen.data,
                DType::F32,
                chosen.checksum,
                chosen.raw_checksum,
                &mut out,
            )
            .unwrap();
            assert!(out == new, "{mode:?}: the round trip is not bit-exact");
        }
    }

    /// Trained-weight-like fp32 values and the same values one AdamW step earlier (each
    /// moved by about 1e-4 of its magnitude, as a step at lr 1e-4 moves them).
    fn weight_like() -> (Vec<u8>, Vec<u8>) {
        let mut next = uniform(0x2545_f491_4f6c_dd1du64);
        let (mut base, mut new) = (Vec::new(), Vec::new());
        for _ in 0..(1usize << 18) {
            let w = ((next() - 0.5) * 0.1) as f32;
            let step = (1e-4 * (next() - 0.5)) as f32 * w.abs().max(1e-3);
            base.extend_from_slice(&w.to_le_bytes());
            new.extend_from_slice(&(w - step).to_le_bytes());
        }
        (base, new)
    }

    /// Dense fp32 second moments of every element at two steps far apart: each is its own
    /// gradient-squared magnitude (eight decades), unrelated to the other.
    fn dense_moments() -> (Vec<u8>, Vec<u8>) {
        let mut next = uniform(0x853c_49e6_748f_ea9bu64);
        let mut value = move || (10f64.powf(-12.0 + 8.0 * next()) as f32).to_le_bytes();
        let base: Vec<u8> = (0..(1usize << 18)).flat_map(|_| value()).collect();
        let new: Vec<u8> = (0..(1usize << 18)).flat_map(|_| value()).collect();
        (base, new)
    }

    #[test]
    fn a_sparse_sample_tells_moments_from_weights_before_any_delta_is_planned() {
        let (base, new) = dense_moments();
        assert!(delta_cannot_win(&new, &base, DType::F32), "moments");
        let (base, new) = weight_like();
        assert!(!delta_cannot_win(&new, &base, DType::F32), "fp32 weights");
        let to_bf16 =
            |v: &[u8]| -> Vec<u8> { v.chunks_exact(4).flat_map(|w| [w[2], w[3]]).collect() };
        assert!(
            !delta_cannot_win(&to_bf16(&new), &to_bf16(&base), DType::BF16),
            "bf16 weights"
        );
        // Short chunks are not sampled: planned, unless their whole base is zeros.
        let (base, new) = dense_moments();
        assert!(!delta_cannot_win(&new[..4000], &base[..4000], DType::F32));
        assert!(delta_cannot_win(&new[..4000], &[0; 4000], DType::F32));
        // The moments themselves are stored plain, bit-exact, without a planned delta.
        let opts = EncodeOptions::default();
        let chosen = encode_chunk_delta(&new, &base, DType::F32, &opts);
        assert!(chosen.data == encode_chunk(&new, DType::F32, &opts).data);
    }

    /// Weights against a base of zeros, or of zeros wherever the sample looks, are stored
    /// whole: the difference from zero is the data itself. (The sample alone decides,
    /// which spares a pass over the base; the decision is the one the estimates make.)
    #[test]
    fn weights_against_zeros_are_stored_whole() {
        let (_, new) = weight_like();
        let mut base = vec![0u8; new.len()];
        let opts = EncodeOptions::default();
        let plain = encode_chunk(&new, DType::F32, &opts);
        for what in ["all zeros", "zeros where the sample looks"] {
            assert!(delta_cannot_win(&new, &base, DType::F32), "{what}");
            let (delta, plain_estimate) =
                sampled_delta_and_plain(&new, &base, DType::F32).expect("long enough");
            assert!(delta >= plain_estimate, "{what}: the estimates agree");
            let chosen = encode_chunk_delta(&new, &base, DType::F32, &opts);
            assert_eq!(chosen.encoding, plain.encoding, "{what}");
            assert!(chosen.data == plain.data, "{what}");
            let at = new.len() - 3;
            base[at] = 1;
            assert!(!all_zero(&base));
        }
    }

    #[test]
    fn all_zero_sees_a_single_set_bit_anywhere() {
        for len in [0usize, 1, 255, 256, 257, 1000, 4096] {
            let mut v = vec![0u8; len];
            assert!(all_zero(&v), "length {len}");
            for at in [0, len / 2, len.saturating_sub(1)]
                .into_iter()
                .filter(|&a| a < len)
            {
                v[at] = 0x10;
                assert!(!all_zero(&v), "length {len}, byte {at}");
                v[at] = 0;
            }
        }
    }

    /// `n` bytes that look random (a multiplicative hash of each index), the same on every
    /// run: incompressible test data.
    pub(crate) fn scrambled_bytes(n: usize) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    /// Input lengths that reach every code path of xxh3 (short, mid-size, long, and a
    /// partial last stripe), all below 300 000.
    pub(crate) fn xxh3_length_classes() -> impl Iterator<Item = usize> {
        (0..=260).chain([
            1023, 1024, 1025, 1088, 1089, 2048, 2049, 4096, 65_537, 299_999,
        ])
    }

    /// The checksum is the format's xxh3-64 whatever the implementation: the run-time
    /// dispatched one must agree with the reference crate at every length class.
    #[test]
    fn checksum_is_reference_xxh3_64() {
        let data = scrambled_bytes(300_000);
        for len in xxh3_length_classes() {
            let d = &data[..len];
            assert_eq!(
                xxh3_checksum(d),
                xxhash_rust::xxh3::xxh3_64(d),
                "length {len}"
            );
        }
    }

    /// A damaged payload is reported as a stored checksum mismatch, whether or not the
    /// decoder (which runs first) could make sense of it, and for every kind of chunk.
    #[test]
    fn damage_is_reported_as_a_stored_checksum_mismatch() {
        let mut next = uniform(7);
        let floats: Vec<u8> = (0..200_000)
            .flat_map(|_| ((next() - 0.5) as f32 * 0.02).to_le_bytes())
            .collect();
        let base: Vec<u8> = floats.iter().map(|b| b ^ 1).collect();
        // The same floats one ulp away, which a fast delta codes in packed blocks.
        let near: Vec<u8> = floats
            .chunks_exact(4)
            .flat_map(|w| [w[0] ^ 1, w[1], w[2], w[3]])
            .collect();
        // The high halves of the same floats: bf16 words.
        let halves =
            |v: &[u8]| -> Vec<u8> { v.chunks_exact(4).flat_map(|w| [w[2], w[3]]).collect() };
        let (bf16, bf16_base) = (halves(&floats), halves(&base));
        let ints: Vec<u8> = (0..800_000u32).map(|i| (i / 1000) as u8).collect();
        let noise: Vec<u8> = (0..4096).map(|_| (next() * 256.0) as u8).collect();
        let opts = EncodeOptions::default();
        let fast = EncodeOptions {
            delta_mode: DeltaMode::Fast,
            ..EncodeOptions::default()
        };
        let chunks = [
            (encode_chunk(&floats, DType::F32, &opts), DType::F32, None),
            (encode_chunk(&ints, DType::U8, &opts), DType::U8, None),
            (encode_chunk(&noise, DType::U8, &opts), DType::U8, None),
            (
                encode_chunk_delta(&floats, &base, DType::F32, &opts),
                DType::F32,
                Some(&base),
            ),
            (
                encode_chunk_delta(&floats, &near, DType::F32, &fast),
                DType::F32,
                Some(&near),
            ),
            (
                encode_chunk_delta(&bf16, &bf16_base, DType::BF16, &fast),
                DType::BF16,
                Some(&bf16_base),
            ),
        ];
        let kinds: Vec<Encoding> = chunks.iter().map(|c| c.0.encoding).collect();
        use Encoding::*;
        assert_eq!(kinds, [Float, Zstd, Raw, SubCtx, SubPack, SubQuad]);
        for (chunk, dtype, base) in chunks {
            let len = chunk.data.len();
            for at in [0, 1, 5, len / 2, len - 1] {
                let mut damaged = chunk.data.to_vec();
                damaged[at] ^= 0x40;
                let mut out = base.map_or_else(|| vec![0u8; chunk.raw_len], |b| b.to_vec());
                let err = decode_chunk(
                    chunk.encoding,
                    &damaged,
                    dtype,
                    chunk.checksum,
                    chunk.raw_checksum,
                    &mut out,
                )
                .expect_err("a damaged payload must not decode");
                assert!(
                    err.to_string().contains("stored checksum mismatch"),
                    "{:?} damaged at {at}: {err}",
                    chunk.encoding
                );
            }
        }
    }
}
