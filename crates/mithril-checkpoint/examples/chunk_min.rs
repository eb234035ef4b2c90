//! Encode and decode speed as the sum of each chunk's best time over many repeats: on a noisy machine
//! a burst of load spoils single repeats, not the best of them, so two builds compare
//! better this way than by whole-model rounds (`codec_speed`). Chunks under 256 KiB are
//! left out (their time is per-call work). With `cold`, 32 MiB (`FLUSH_MIB` to change it)
//! are written before every repeat so that the chunk and the encoder's buffers come from
//! further out: on the development VM it takes `FLUSH_MIB=512` to leave them in memory,
//! where the benchmark's interleaved passes find them.
//! `cargo run --release --example chunk_min -- model.safetensors bf16|f32 REPEATS [cold]`
use mithril_checkpoint::chunk::{decode_chunk, encode_chunk, EncodeOptions};
use std::time::Instant;

#[path = "shared/model_chunks.rs"]
mod model_chunks;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let want = args[2].as_str();
    let reps: usize = args[3].parse()?;
    let dtype = model_chunks::dtype_named(want);
    let opts = EncodeOptions::default();
    let chunks = model_chunks::model_chunks(&args[1], dtype, opts.chunk_bytes, 256 << 10)?;
    let total: usize = chunks.iter().map(Vec::len).sum();
    let cold = args.get(4).is_some_and(|a| a == "cold");
    let flush_mib: usize = std::env::var("FLUSH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut flush = vec![1u8; flush_mib << 20];
    let mut sink = 0u64;
    let mut sum = 0.0;
    let mut dec_sum = 0.0;
    let mut out = vec![0u8; opts.chunk_bytes];
    for c in &chunks {
        let mut best = f64::MAX;
        for _ in 0..reps {
            if cold {
                sink += evict(&mut flush);
            }
            let t0 = Instant::now();
            let e = std::hint::black_box(encode_chunk(c, dtype, &opts));
            best = best.min(t0.elapsed().as_secs_f64());
            // As the writer does once a chunk is copied out.
            mithril_checkpoint::buffer_pool::recycle_chunk_data(e.data);
        }
        sum += best;
        let e = encode_chunk(c, dtype, &opts);
        let mut best = f64::MAX;
        for _ in 0..reps {
            if cold {
                sink += evict(&mut flush);
            }
            let o = &mut out[..e.raw_len];
            let t0 = Instant::now();
            decode_chunk(e.encoding, &e.data, dtype, e.checksum, e.raw_checksum, o)?;
            best = best.min(t0.elapsed().as_secs_f64());
        }
        dec_sum += best;
    }
    std::hint::black_box(sink);
    println!(
        "{}{want}: {} chunks, sum of per-chunk best encode {:.0} MB/s, decode {:.0} MB/s",
        if cold { "cold " } else { "" },
        chunks.len(),
        total as f64 / sum / 1e6,
        total as f64 / dec_sum / 1e6
    );
    Ok(())
}

/// Write a byte in every cache line of `flush`, pushing what the last repeat used out to
/// memory; returns a sum for the caller to keep, so that the writes are not optimised away.
fn evict(flush: &mut [u8]) -> u64 {
    let mut sum = 0u64;
    for line in flush.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
        sum += line[0] as u64;
    }
    sum
}
