//! One chunk of one tensor: pick the encoding, checksum it, and undo it.

use crate::dtype::DType;
use crate::error::{corrupt, Result};
use crate::float;
use std::borrow::Cow;
use xxhash_rust::xxh3::xxh3_64;

/// How a chunk is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The raw bytes, when nothing else was smaller.
    Raw,
    /// The float head/remainder codec ([`crate::float`]).
    Float,
    /// A zstd frame: the generic path for integers, bools, fp8 and fp64.
    Zstd,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Float => "float",
            Encoding::Zstd => "zstd",
        }
    }

    pub fn parse(s: &str) -> Option<Encoding> {
        match s {
            "raw" => Some(Encoding::Raw),
            "float" => Some(Encoding::Float),
            "zstd" => Some(Encoding::Zstd),
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
}

pub const DEFAULT_CHUNK_BYTES: usize = 1 << 20;
/// Largest chunk a reader accepts; bounds the memory one hostile chunk entry can ask for.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            zstd_level: 3,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
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
    let coded = match dtype.float_bits() {
        Some(bits) => Some((Encoding::Float, float::encode(raw, bits, dtype.size()))),
        None => zstd::bulk::compress(raw, opts.zstd_level)
            .ok()
            .map(|z| (Encoding::Zstd, z)),
    };
    let raw_checksum = xxh3_64(raw);
    let (encoding, data) = match coded {
        Some((enc, data)) if data.len() < raw.len() => (enc, Cow::Owned(data)),
        _ => (Encoding::Raw, Cow::Borrowed(raw)),
    };
    EncodedChunk {
        encoding,
        checksum: xxh3_64(&data),
        data,
        raw_len: raw.len(),
        raw_checksum,
    }
}

/// Decode one stored chunk into `out` (exactly its raw length), verifying both checksums.
pub fn decode_chunk(
    encoding: Encoding,
    data: &[u8],
    dtype: DType,
    checksum: u64,
    raw_checksum: u64,
    out: &mut [u8],
) -> Result<()> {
    if xxh3_64(data) != checksum {
        return Err(corrupt("stored checksum mismatch"));
    }
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
            float::decode(data, bits, dtype.size(), out)?;
        }
        Encoding::Zstd => {
            let n = zstd::bulk::decompress_to_buffer(data, out)
                .map_err(|e| corrupt(format!("zstd: {e}")))?;
            if n != out.len() {
                return Err(corrupt("zstd chunk decoded to the wrong length"));
            }
        }
    }
    if xxh3_64(out) != raw_checksum {
        return Err(corrupt("decoded data checksum mismatch"));
    }
    Ok(())
}

/// Split `len` bytes of `dtype` elements into chunk lengths of about `target` bytes.
pub fn chunk_lengths(len: usize, dtype: DType, target: usize) -> Vec<usize> {
    let elem = dtype.size();
    let per = (target.clamp(elem, MAX_CHUNK_BYTES) / elem).max(1) * elem;
    if len == 0 {
        return Vec::new();
    }
    let mut out = vec![per; len / per];
    if len % per != 0 {
        out.push(len % per);
    }
    out
}
