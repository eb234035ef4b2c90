//! One coding of every float chunk of two safetensors files of one model, in a loop on one
//! thread: for profiling (`perf record`) and for timing two builds against each other. The
//! chunks are encoded once; then `REPS` passes run one of: `full` (decode the plain
//! encoding), `delta` (decode the `fast` delta onto the base held apart), `efull` or
//! `edelta` (encode).
//! `cargo run --release --example codec_loop -- base.safetensors new.safetensors delta 10`

#[path = "shared/float_pairs.rs"]
mod float_pairs;

use mithril_checkpoint::buffer_pool::recycle_chunk_data;
use mithril_checkpoint::chunk::{
    decode_chunk, decode_chunk_onto, encode_chunk, encode_chunk_delta, EncodeOptions,
};
use mithril_checkpoint::delta::DeltaMode;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base_path, new_path, what, reps] = &args[..] else {
        return Err("usage: codec_loop BASE NEW full|delta|efull|edelta REPS".into());
    };
    let reps: usize = reps.parse()?;
    let opts = EncodeOptions {
        delta_mode: DeltaMode::Fast,
        ..EncodeOptions::default()
    };
    let pairs = float_pairs::float_chunk_pairs(base_path, new_path, opts.chunk_bytes)?;
    let total: usize = pairs.iter().map(|p| p.2.len()).sum();
    let full: Vec<_> = pairs
        .iter()
        .map(|(d, _, t)| encode_chunk(t, *d, &opts))
        .collect();
    let delta: Vec<_> = pairs
        .iter()
        .map(|(d, b, t)| encode_chunk_delta(t, b, *d, &opts))
        .collect();
    let mut out = vec![0u8; opts.chunk_bytes];
    let start = Instant::now();
    for _ in 0..reps {
        match what.as_str() {
            "full" => {
                for ((d, _, _), e) in pairs.iter().zip(&full) {
                    let o = &mut out[..e.raw_len];
                    decode_chunk(e.encoding, &e.data, *d, e.checksum, e.raw_checksum, o)?;
                }
            }
            "delta" => {
                for ((d, b, _), e) in pairs.iter().zip(&delta) {
                    let o = &mut out[..e.raw_len];
                    decode_chunk_onto(e.encoding, &e.data, *d, e.checksum, e.raw_checksum, b, o)?;
                }
            }
            "efull" => {
                for (d, _, t) in &pairs {
                    // Given back as the writer does once a chunk is copied out.
                    recycle_chunk_data(std::hint::black_box(encode_chunk(t, *d, &opts)).data);
                }
            }
            "edelta" => {
                for (d, b, t) in &pairs {
                    let e = std::hint::black_box(encode_chunk_delta(t, b, *d, &opts));
                    recycle_chunk_data(e.data);
                }
            }
            other => return Err(format!("unknown pass {other:?}").into()),
        }
    }
    let mbs = (reps * total) as f64 / start.elapsed().as_secs_f64() / 1e6;
    println!("{what}: {mbs:.0} MB/s");
    Ok(())
}
