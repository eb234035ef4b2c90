//! Shared by the delta examples: the float tensors that two safetensors files of one model
//! hold under the same name, dtype and shape, cut into the writer's chunks.

use mithril_checkpoint::chunk::chunk_lengths;
use mithril_checkpoint::safetensors::parse_header;
use mithril_checkpoint::DType;

/// One chunk of a float tensor: its dtype, the base file's bytes, the new file's bytes.
pub type ChunkPair = (DType, Vec<u8>, Vec<u8>);

/// Every chunk of every float tensor in both files.
pub fn float_chunk_pairs(
    base_path: &str,
    new_path: &str,
    chunk_bytes: usize,
) -> Result<Vec<ChunkPair>, Box<dyn std::error::Error>> {
    let (base_bytes, new_bytes) = (std::fs::read(base_path)?, std::fs::read(new_path)?);
    let (bh, nh) = (
        parse_header(&base_bytes, base_path)?,
        parse_header(&new_bytes, new_path)?,
    );
    let mut pairs = Vec::new();
    for e in &nh.entries {
        let Some(b) = bh.entries.iter().find(|b| b.name == e.name) else {
            continue;
        };
        if e.dtype.float_bits().is_none() || b.dtype != e.dtype || b.shape != e.shape {
            continue;
        }
        let t = &new_bytes[(nh.data_start + e.begin) as usize..(nh.data_start + e.end) as usize];
        let s = &base_bytes[(bh.data_start + b.begin) as usize..(bh.data_start + b.end) as usize];
        let mut at = 0;
        for len in chunk_lengths(t.len(), e.dtype, chunk_bytes) {
            pairs.push((e.dtype, s[at..at + len].to_vec(), t[at..at + len].to_vec()));
            at += len;
        }
    }
    Ok(pairs)
}
