//! Single-thread delta codec throughput against the plain codec, on two safetensors files of
//! the same model at two training steps (every float tensor, ~1 MiB chunks), in the delta
//! coding given (`compact`, the default, or `fast`). Deltas decode onto base bytes held
//! apart, as `Reader::read_with_base` does.
//! `cargo run --release --example delta_speed -- base.safetensors new.safetensors [fast]`

#[path = "shared/float_pairs.rs"]
mod float_pairs;

use mithril_checkpoint::chunk::{
    decode_chunk, decode_chunk_onto, encode_chunk, encode_chunk_delta, EncodeOptions,
};
use mithril_checkpoint::delta::DeltaMode;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base_path), Some(new_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: delta_speed BASE NEW".into());
    };
    let opts = EncodeOptions {
        delta_mode: match args.get(3).map(String::as_str) {
            None | Some("compact") => DeltaMode::Compact,
            Some("fast") => DeltaMode::Fast,
            Some(other) => return Err(format!("unknown delta coding {other:?}").into()),
        },
        ..EncodeOptions::default()
    };
    let pairs = float_pairs::float_chunk_pairs(base_path, new_path, opts.chunk_bytes)?;
    let total: usize = pairs.iter().map(|p| p.2.len()).sum();
    for round in 0..3 {
        let t0 = Instant::now();
        let full: Vec<_> = pairs
            .iter()
            .map(|(d, _, t)| encode_chunk(t, *d, &opts))
            .collect();
        let t1 = Instant::now();
        let delta: Vec<_> = pairs
            .iter()
            .map(|(d, b, t)| encode_chunk_delta(t, b, *d, &opts))
            .collect();
        let t2 = Instant::now();
        let mut out = vec![0u8; opts.chunk_bytes];
        for ((d, _, _), e) in pairs.iter().zip(&full) {
            let o = &mut out[..e.raw_len];
            decode_chunk(e.encoding, &e.data, *d, e.checksum, e.raw_checksum, o)?;
        }
        let t3 = Instant::now();
        for ((d, b, _), e) in pairs.iter().zip(&delta) {
            let o = &mut out[..e.raw_len];
            decode_chunk_onto(e.encoding, &e.data, *d, e.checksum, e.raw_checksum, b, o)?;
        }
        let t4 = Instant::now();
        let size = |v: &[mithril_checkpoint::chunk::EncodedChunk]| {
            100.0 * v.iter().map(|e| e.data.len()).sum::<usize>() as f64 / total as f64
        };
        let mbs = |a: Instant, b: Instant| total as f64 / (b - a).as_secs_f64() / 1e6;
        println!(
            "round {round}: full {:.2}% enc {:.0} dec {:.0} MB/s | delta {:.2}% enc {:.0} dec {:.0} MB/s",
            size(&full),
            mbs(t0, t1),
            mbs(t2, t3),
            size(&delta),
            mbs(t1, t2),
            mbs(t3, t4),
        );
    }
    Ok(())
}
