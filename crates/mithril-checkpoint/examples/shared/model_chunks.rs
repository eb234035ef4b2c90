//! Shared by the codec examples: the tensors of an fp32 safetensors file (a model's
//! weights), as fp32 or rounded to bf16, cut into the writer's chunks.

use mithril_checkpoint::chunk::chunk_lengths;
use mithril_checkpoint::safetensors::parse_header;
use mithril_checkpoint::DType;

/// `BF16` for `"bf16"`, else `F32`.
pub fn dtype_named(want: &str) -> DType {
    if want == "bf16" {
        DType::BF16
    } else {
        DType::F32
    }
}

/// Every chunk of every tensor in the file at `path` as `dtype` (fp32 words rounded to
/// nearest even for bf16), chunks of at least `min_len` bytes only.
pub fn model_chunks(
    path: &str,
    dtype: DType,
    chunk_bytes: usize,
    min_len: usize,
) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let header = parse_header(&bytes, path)?;
    let data = &bytes[header.data_start as usize..];
    let mut chunks = Vec::new();
    for e in &header.entries {
        let raw = &data[e.begin as usize..e.end as usize];
        let t: Vec<u8> = if dtype == DType::BF16 {
            raw.chunks_exact(4)
                .flat_map(|b| {
                    let x = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    (((x + 0x7fff + ((x >> 16) & 1)) >> 16) as u16).to_le_bytes()
                })
                .collect()
        } else {
            raw.to_vec()
        };
        let mut at = 0;
        for len in chunk_lengths(t.len(), dtype, chunk_bytes) {
            if len >= min_len {
                chunks.push(t[at..at + len].to_vec());
            }
            at += len;
        }
    }
    Ok(chunks)
}
