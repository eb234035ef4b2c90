//! Whole container: open (header, index and layout validation), verify every chunk, and
//! read every tensor.
//!
//! Each input is tried twice: as it is, and "repaired": its index re-serialised with the
//! index checksum, the stored-bytes checksum of every chunk (and the decoded checksum of
//! raw chunks) recomputed and the header rebuilt. Without the repair nearly every mutation
//! dies at the first checksum, so the index validation and the chunk decoders would hardly
//! be reached through the container.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::format::{self, hex64, Index, HEADER_LEN};
use mithril_checkpoint::safetensors::parse_header_text;
use mithril_checkpoint::Reader;
use xxhash_rust::xxh3::xxh3_64;

/// `read` allocates the whole tensor up front, as it must: a few bytes of chunk can
/// legitimately decode to 64 MiB, so a tiny honest file can hold a huge tensor. Reading
/// such tensors here only measures the allocator; `verify` still decodes their chunks.
const MAX_READ: u64 = 64 << 20;

fn exercise(bytes: Vec<u8>) {
    let Ok(reader) = Reader::from_bytes(bytes) else {
        return;
    };
    let _ = reader.verify();
    if let Some(text) = &reader.index().safetensors_header {
        let _ = parse_header_text(text, "<fuzz>");
    }
    let mut reused = Vec::new();
    for t in reader.tensors() {
        if t.raw_len <= MAX_READ {
            let _ = reader.read(&t.name);
            let _ = reader.read_reusing(&t.name, &mut reused);
        }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn repair(file: &[u8]) -> Option<Vec<u8>> {
    if file.len() < HEADER_LEN {
        return None;
    }
    let len = file.len() as u64;
    let index_end = (HEADER_LEN as u64)
        .saturating_add(u64_at(file, 16))
        .min(len) as usize;
    let data_offset = u64_at(file, 32).clamp(index_end as u64, len) as usize;
    let mut index: Index = serde_json::from_slice(&file[HEADER_LEN..index_end]).ok()?;
    let data = &file[data_offset..];
    for t in &mut index.tensors {
        for c in &mut t.chunks {
            let Some(end) = c.offset.checked_add(c.length) else {
                continue;
            };
            if let Some(stored) = data.get(c.offset as usize..end as usize) {
                let sum = hex64(xxh3_64(stored));
                if c.encoding == "raw" {
                    c.raw_xxh3.clone_from(&sum);
                }
                c.xxh3 = sum;
            }
        }
    }
    let json = serde_json::to_vec(&index).ok()?;
    let offset = format::data_offset_for(json.len());
    let mut out = format::encode_header(&json, offset, data.len() as u64);
    out.extend_from_slice(&json);
    out.resize(offset as usize, 0);
    out.extend_from_slice(data);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    exercise(data.to_vec());
    if let Some(fixed) = repair(data) {
        exercise(fixed);
    }
});
