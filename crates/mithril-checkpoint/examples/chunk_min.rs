//! Encode and decode speed as the sum of each chunk's best time over many repeats: on a noisy machine
//! a burst of load spoils single repeats, not the best of them, so two builds compare
//! better this way than by whole-model rounds (`codec_speed`). Chunks under 256 KiB are
//! left out (their time is per-call work). With `cold`, 32 MiB (`FLUSH_MIB` to change it)
//! are written before every repeat so that the chunk and the encoder's buffers come from
//! further out: on the development VM it takes `FLUSH_MIB=512` to leave them in memory,
//! where the benchmark's interleaved passes find them.
//! `cargo run --release --example chunk_min -- model.safetensors bf16|f32 REPEATS [cold]`
use mithril_checkpoint::chunk::{chunk_lengths, decode_chunk, encode_chunk, EncodeOptions};
use mithril_checkpoint::safetensors::parse_header;
use mithril_checkpoint::DType;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let bytes = std::fs::read(&args[1])?;
    let want = args[2].as_str();
    let reps: usize = args[3].parse()?;
    let header = parse_header(&bytes, &args[1])?;
    let data = &bytes[header.data_start as usize..];
    let dtype = if want == "bf16" {
        DType::BF16
    } else {
        DType::F32
    };
    let opts = EncodeOptions::default();
    let mut chunks = Vec::new();
    for e in &header.entries {
        let raw = &data[e.begin as usize..e.end as usize];
        let t: Vec<u8> = if want == "bf16" {
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
        for len in chunk_lengths(t.len(), dtype, opts.chunk_bytes) {
            if len >= 256 << 10 {
                chunks.push(t[at..at + len].to_vec());
            }
            at += len;
        }
    }
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
                for b in flush.chunks_mut(64) {
                    b[0] = b[0].wrapping_add(1);
                    sink += b[0] as u64;
                }
            }
            let t0 = Instant::now();
            let e = std::hint::black_box(encode_chunk(c, dtype, &opts));
            best = best.min(t0.elapsed().as_secs_f64());
            // As the writer does once a chunk is copied out.
            if let std::borrow::Cow::Owned(v) = e.data {
                mithril_checkpoint::buffer_pool::recycle_payload(v);
            }
        }
        sum += best;
        let e = encode_chunk(c, dtype, &opts);
        let mut best = f64::MAX;
        for _ in 0..reps {
            if cold {
                for b in flush.chunks_mut(64) {
                    b[0] = b[0].wrapping_add(1);
                    sink += b[0] as u64;
                }
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
