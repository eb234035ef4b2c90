//! Whole-chunk decoder (`chunk::decode_chunk`) for every encoding and dtype, with the stored
//! checksum computed here so that the fuzzed bytes get past it and reach the decoders.
//!
//! Input: `encoding: u8 (index into Encoding::ALL; delta encodings get an all-zero base) |
//! dtype: u8 (index into DType::ALL) | raw bytes: u16 LE | stored bytes ...`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::chunk::decode_chunk;
use mithril_checkpoint::{DType, Encoding};
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|data: &[u8]| {
    let [enc, dt, lo, hi, stored @ ..] = data else {
        return;
    };
    let encoding = Encoding::ALL[*enc as usize % Encoding::ALL.len()];
    let dtype = DType::ALL[*dt as usize % DType::ALL.len()];
    let mut out = vec![0u8; u16::from_le_bytes([*lo, *hi]) as usize];
    let checksum = xxh3_64(stored);
    // The decoded checksum cannot be known in advance; a mismatch is only reported after
    // decoding, so every decoder still runs to the end.
    let _ = decode_chunk(encoding, stored, dtype, checksum, 0, &mut out);
});
