//! The container format: fixed header, JSON index, and their validation.
//!
//! ```text
//! 0   8  magic "MITHRIL\0"
//! 8   2  major version (1)      10  2  minor version (0)     12  4  flags (0)
//! 16  8  index length           24  8  xxh3-64 of header + index (this field as zero)
//! 32  8  data offset            40  8  data length
//! 48  .. JSON index, zero padding up to the data offset, then the chunks
//! ```
//! All integers little-endian. See docs/format.md for the index fields.

use crate::chunk::{Encoding, MAX_CHUNK_BYTES};
use crate::dtype::{byte_size, DType};
use crate::error::{corrupt, format_err, Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use xxhash_rust::xxh3::Xxh3;

pub const MAGIC: &[u8; 8] = b"MITHRIL\0";
pub const MAJOR: u16 = 1;
/// Minor 1 added delta chunks (`xor`, `sub`, `sub-ctx`) and the index's `base` reference;
/// minor 2 the `sub-quad` delta chunk; minor 3 the `sub-pack` delta chunk.
pub const MINOR: u16 = 3;
pub const HEADER_LEN: usize = 48;
/// Largest index a reader accepts.
pub const MAX_INDEX_LEN: u64 = 256 << 20;
/// Data section alignment, so that mmapped raw chunks are aligned for any dtype.
pub const DATA_ALIGN: u64 = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChunkEntry {
    /// Offset from the start of the data section.
    pub offset: u64,
    /// Stored bytes.
    pub length: u64,
    /// Bytes after decoding.
    pub raw_length: u64,
    pub encoding: String,
    /// xxh3-64 of the stored bytes, 16 hex digits.
    pub xxh3: String,
    /// xxh3-64 of the decoded bytes, 16 hex digits.
    pub raw_xxh3: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub chunks: Vec<ChunkEntry>,
}

/// Which checkpoint a delta file was made against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BaseRef {
    /// Content id of the base: xxh3-128 of its header and index, 32 hex digits (see
    /// [`content_id`]). The index holds the checksum of every chunk, so this names the
    /// base's whole content, not its path.
    pub id: String,
    /// Where the base was when the delta was written: relative to the delta's directory, or
    /// absolute. Only a hint; the id decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Index {
    pub tensors: Vec<TensorEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The verbatim JSON header of the safetensors file this was made from, so that
    /// converting back gives the identical file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safetensors_header: Option<String>,
    /// Present on delta files: the checkpoint whose tensors the delta chunks apply to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
}

/// Content id of a container given its bytes up to the end of the index.
pub fn content_id(header_and_index: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(header_and_index))
}

/// Content id of a file that [`parse`] accepted.
pub fn content_id_of(file: &[u8]) -> String {
    let end = (HEADER_LEN as u64).saturating_add(u64_at(file, 16));
    content_id(&file[..(end as usize).min(file.len())])
}

/// Content id of one in-memory tensor, for deltas made against a tensor rather than a file.
///
/// It hashes the whole tensor, so it uses `twox-hash`, which picks its AVX2 loop at run
/// time (the `xxhash-rust` crate chooses at compile time, SSE2 in a portable wheel).
pub fn tensor_content_id(dtype: DType, shape: &[u64], data: &[u8]) -> String {
    let mut prefix = dtype.name().as_bytes().to_vec();
    for d in shape {
        prefix.extend_from_slice(&d.to_le_bytes());
    }
    prefix.extend_from_slice(&(shape.len() as u64).to_le_bytes());
    format!("{:032x}", xxh3_128_of(&prefix, data))
}

/// xxh3-128 of `prefix` then `data`: with AVX-512 where the CPU has it and the input is
/// long (a delta's writer hashes its whole base, at several times `twox-hash`'s speed).
fn xxh3_128_of(prefix: &[u8], data: &[u8]) -> u128 {
    #[cfg(target_arch = "x86_64")]
    if crate::xxh3_avx512::prefixed_fits(prefix.len(), data.len())
        && crate::xxh3_avx512::available()
    {
        // SAFETY: the CPU supports AVX-512F and `prefixed_fits` takes the lengths.
        return unsafe { crate::xxh3_avx512::hash128_prefixed(prefix, data) };
    }
    let mut h = twox_hash::XxHash3_128::new();
    h.write(prefix);
    h.write(data);
    h.finish_128()
}

pub fn hex64(v: u64) -> String {
    format!("{v:016x}")
}

fn parse_hex64(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// A chunk entry after validation.
#[derive(Debug, Clone, Copy)]
pub struct Chunk {
    pub offset: u64,
    pub length: u64,
    pub raw_offset: u64,
    pub raw_length: u64,
    pub encoding: Encoding,
    pub checksum: u64,
    pub raw_checksum: u64,
}

/// A tensor entry after validation.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub raw_len: u64,
    pub stored_len: u64,
    pub chunks: Vec<Chunk>,
}

/// Checksum of the fixed header (with its checksum field taken as zero) and the index, so
/// that a flipped bit anywhere before the data is caught.
fn header_checksum(header: &[u8], index_json: &[u8]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&header[..24]);
    h.update(&[0u8; 8]);
    h.update(&header[32..HEADER_LEN]);
    h.update(index_json);
    h.digest()
}

pub fn encode_header(index_json: &[u8], data_offset: u64, data_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&MAJOR.to_le_bytes());
    h.extend_from_slice(&MINOR.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(index_json.len() as u64).to_le_bytes());
    h.extend_from_slice(&[0u8; 8]);
    h.extend_from_slice(&data_offset.to_le_bytes());
    h.extend_from_slice(&data_len.to_le_bytes());
    let sum = header_checksum(&h, index_json);
    h[24..32].copy_from_slice(&sum.to_le_bytes());
    h
}

pub fn data_offset_for(index_len_bound: usize) -> u64 {
    (HEADER_LEN as u64 + index_len_bound as u64).div_ceil(DATA_ALIGN) * DATA_ALIGN
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Validate the whole file layout and return the index with every tensor checked.
/// Every byte outside the chunks is covered: header fields, index checksum, zero padding,
/// and chunks that tile the data section exactly with no gap, overlap or overhang.
pub fn parse(file: &[u8]) -> Result<(Index, Vec<TensorInfo>, u64)> {
    if file.len() < HEADER_LEN {
        return Err(format_err(format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header (empty or truncated)",
            file.len()
        )));
    }
    if &file[..8] != MAGIC {
        return Err(format_err("not a Mithril checkpoint (bad magic)"));
    }
    let major = u16::from_le_bytes([file[8], file[9]]);
    if major != MAJOR {
        return Err(format_err(format!(
            "format version {major} is not supported (this reader knows {MAJOR})"
        )));
    }
    let flags = u32::from_le_bytes([file[12], file[13], file[14], file[15]]);
    if flags != 0 {
        return Err(format_err(format!("unknown header flags {flags:#x}")));
    }
    let index_len = u64_at(file, 16);
    let index_sum = u64_at(file, 24);
    let data_offset = u64_at(file, 32);
    let data_len = u64_at(file, 40);
    let file_len = file.len() as u64;
    if index_len > MAX_INDEX_LEN {
        return Err(format_err(format!(
            "index length {index_len} exceeds the {MAX_INDEX_LEN}-byte cap"
        )));
    }
    let index_end = HEADER_LEN as u64 + index_len;
    if index_end > file_len {
        return Err(format_err(format!(
            "index length {index_len} runs past the end of the {file_len}-byte file (truncated?)"
        )));
    }
    if !data_offset.is_multiple_of(DATA_ALIGN) {
        return Err(format_err(format!(
            "data offset {data_offset} is not a multiple of {DATA_ALIGN}"
        )));
    }
    if data_offset < index_end || data_offset > file_len {
        return Err(format_err(format!(
            "data offset {data_offset} is outside [{index_end}, {file_len}]"
        )));
    }
    if data_offset.checked_add(data_len) != Some(file_len) {
        return Err(format_err(format!(
            "header says {data_len} data bytes at offset {data_offset}, file has {file_len} bytes (truncated or extended)"
        )));
    }
    let index_bytes = &file[HEADER_LEN..index_end as usize];
    if header_checksum(file, index_bytes) != index_sum {
        return Err(corrupt("header/index checksum mismatch"));
    }
    if file[index_end as usize..data_offset as usize]
        .iter()
        .any(|&b| b != 0)
    {
        return Err(corrupt("non-zero bytes in the padding before the data"));
    }
    let index: Index = serde_json::from_slice(index_bytes)
        .map_err(|e| format_err(format!("index is not valid JSON: {e}")))?;
    let tensors = validate(&index, data_len)?;
    Ok((index, tensors, data_offset))
}

/// Check the index against itself and the data section length.
pub fn validate(index: &Index, data_len: u64) -> Result<Vec<TensorInfo>> {
    if let Some(b) = &index.base {
        if b.id.len() != 32 || !b.id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(format_err(format!(
                "base id {:?} is not 32 hex digits",
                b.id
            )));
        }
    }
    let mut names = HashSet::new();
    let mut next = 0u64;
    let mut out = Vec::with_capacity(index.tensors.len());
    for t in &index.tensors {
        let ctx = format!("tensor {:?}", t.name);
        if !names.insert(t.name.as_str()) {
            return Err(format_err(format!("duplicate tensor name {:?}", t.name)));
        }
        let dtype = DType::parse(&t.dtype).map_err(|e| e.context(&ctx))?;
        let raw_len = byte_size(dtype, &t.shape).map_err(|e| e.context(&ctx))?;
        let mut chunks = Vec::with_capacity(t.chunks.len());
        let mut raw_offset = 0u64;
        let mut stored = 0u64;
        for (i, c) in t.chunks.iter().enumerate() {
            let cctx = || format!("{ctx} chunk {i}");
            let encoding = Encoding::parse(&c.encoding).ok_or_else(|| {
                format_err(format!("{}: unknown encoding {:?}", cctx(), c.encoding))
            })?;
            let floats_only = matches!(
                encoding,
                Encoding::Float | Encoding::SubCtx | Encoding::SubQuad | Encoding::SubPack
            );
            if (floats_only && dtype.float_bits().is_none())
                || (encoding == Encoding::SubPack && dtype.size() != 4)
            {
                return Err(format_err(format!(
                    "{}: {} encoding on {dtype} data",
                    cctx(),
                    encoding.name()
                )));
            }
            if encoding.is_delta() && index.base.is_none() {
                return Err(format_err(format!(
                    "{}: delta chunk in a file that names no base",
                    cctx()
                )));
            }
            if c.offset != next {
                return Err(format_err(format!(
                    "{}: offset {} leaves a gap or overlap (expected {next})",
                    cctx(),
                    c.offset
                )));
            }
            next = c
                .offset
                .checked_add(c.length)
                .filter(|&end| end <= data_len)
                .ok_or_else(|| {
                    format_err(format!("{}: extends past the end of the data", cctx()))
                })?;
            if c.raw_length == 0
                || c.raw_length > MAX_CHUNK_BYTES as u64
                || c.raw_length % dtype.size() as u64 != 0
            {
                return Err(format_err(format!(
                    "{}: raw length {} is not a whole number of {dtype} elements up to {MAX_CHUNK_BYTES} bytes",
                    cctx(),
                    c.raw_length
                )));
            }
            if encoding == Encoding::Raw && c.length != c.raw_length {
                return Err(format_err(format!(
                    "{}: raw chunk with stored length {} != raw length {}",
                    cctx(),
                    c.length,
                    c.raw_length
                )));
            }
            let (Some(checksum), Some(raw_checksum)) =
                (parse_hex64(&c.xxh3), parse_hex64(&c.raw_xxh3))
            else {
                return Err(format_err(format!("{}: malformed checksum", cctx())));
            };
            chunks.push(Chunk {
                offset: c.offset,
                length: c.length,
                raw_offset,
                raw_length: c.raw_length,
                encoding,
                checksum,
                raw_checksum,
            });
            raw_offset += c.raw_length;
            stored += c.length;
        }
        if raw_offset != raw_len {
            return Err(format_err(format!(
                "{ctx}: chunks hold {raw_offset} bytes, shape {:?} of {dtype} needs {raw_len}",
                t.shape
            )));
        }
        out.push(TensorInfo {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            raw_len,
            stored_len: stored,
            chunks,
        });
    }
    if next != data_len {
        return Err(format_err(format!(
            "chunks cover {next} of {data_len} data bytes"
        )));
    }
    Ok(out)
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        format_err(format!("JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::{scrambled_bytes, xxh3_length_classes};

    /// Tensor content ids are stored in delta files, so they must stay the format's
    /// xxh3-128 whatever the implementation: the run-time dispatched hasher must agree with
    /// the reference crate at every length class of xxh3 (short, mid-size, long, and a
    /// partial last stripe), fed in the pieces `tensor_content_id` writes.
    #[test]
    fn tensor_content_id_is_reference_xxh3_128() {
        let data = scrambled_bytes(300_000);
        for len in xxh3_length_classes() {
            let d = &data[..len];
            let shape = [len as u64 / 2, 2];
            let mut reference = Vec::new();
            reference.extend_from_slice(b"BF16");
            for s in shape {
                reference.extend_from_slice(&s.to_le_bytes());
            }
            reference.extend_from_slice(&2u64.to_le_bytes());
            reference.extend_from_slice(d);
            assert_eq!(
                tensor_content_id(DType::BF16, &shape, d),
                format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&reference)),
                "length {len}"
            );
        }
        // Prefixes of every rank up to 8, with data lengths around where the prefixed
        // AVX-512 path starts (the whole input just over a block and a stripe, 1088 bytes)
        // and where a later block or the last stripe meets a block boundary.
        let prefix_len = |rank: usize| 3 + 8 * rank + 8;
        let cases = (0..=8usize).flat_map(|rank| {
            let start = 1088 - prefix_len(rank);
            (start - 3..start + 4)
                .chain([2047, 2048, 2049, 3071, 3072, 3073, 4097, 5000])
                .map(move |len| (rank, len))
        });
        for (rank, len) in cases {
            let shape: Vec<u64> = (0..rank as u64).map(|i| i + 3).collect();
            let d = &data[..len];
            let mut reference = b"F32".to_vec();
            for s in &shape {
                reference.extend_from_slice(&s.to_le_bytes());
            }
            reference.extend_from_slice(&(rank as u64).to_le_bytes());
            reference.extend_from_slice(d);
            assert_eq!(
                tensor_content_id(DType::F32, &shape, d),
                format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&reference)),
                "rank {rank}, length {len}"
            );
        }
    }
}
