//! Single-thread codec throughput on the tensors of a safetensors file.
//! `cargo run --release --example codec_speed -- model.safetensors [bf16|f32] [rounds]`
//!
//! Prints each round (every chunk encoded, then decoded into a reused chunk-sized buffer)
//! and, with more than three rounds, a last line with the best encode and decode of all
//! rounds, for A/B runs of two builds on a noisy machine.

use mithril_checkpoint::chunk::{decode_chunk, encode_chunk, EncodeOptions};
use std::time::Instant;

#[path = "shared/model_chunks.rs"]
mod model_chunks;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).ok_or("usage: codec_speed FILE [bf16|f32]")?;
    let want = args.get(2).map(String::as_str).unwrap_or("bf16");
    let dtype = model_chunks::dtype_named(want);
    let opts = EncodeOptions::default();
    let chunks = model_chunks::model_chunks(path, dtype, opts.chunk_bytes, 0)?;
    let total: usize = chunks.iter().map(Vec::len).sum();
    let rounds: usize = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(3);
    let (mut best_enc, mut best_dec) = (f64::MAX, f64::MAX);
    let mut stored = 0;
    for round in 0..rounds {
        let t0 = Instant::now();
        let enc: Vec<_> = chunks
            .iter()
            .map(|c| encode_chunk(c, dtype, &opts))
            .collect();
        let te = t0.elapsed().as_secs_f64();
        stored = enc.iter().map(|e| e.data.len()).sum();
        let mut out = vec![0u8; opts.chunk_bytes];
        let t1 = Instant::now();
        for e in &enc {
            let o = &mut out[..e.raw_len];
            decode_chunk(e.encoding, &e.data, dtype, e.checksum, e.raw_checksum, o)?;
        }
        let td = t1.elapsed().as_secs_f64();
        println!(
            "round {round}: {want} {:.2}% encode {:.0} MB/s decode {:.0} MB/s",
            100.0 * stored as f64 / total as f64,
            total as f64 / te / 1e6,
            total as f64 / td / 1e6
        );
        best_enc = best_enc.min(te);
        best_dec = best_dec.min(td);
    }
    if rounds > 3 {
        println!(
            "best of {rounds}: {want} {:.2}% encode {:.0} MB/s decode {:.0} MB/s",
            100.0 * stored as f64 / total as f64,
            total as f64 / best_enc / 1e6,
            total as f64 / best_dec / 1e6
        );
    }
    Ok(())
}
