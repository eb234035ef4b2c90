//! Single-thread delta codec throughput against the plain codec, on two safetensors files of
//! the same model at two training steps (every float tensor, ~1 MiB chunks), in the delta
//! coding given (`compact`, the default, or `fast`).
//! `cargo run --release --example delta_speed -- base.safetensors new.safetensors [fast]`

use mithril_checkpoint::chunk::{
    chunk_lengths, decode_chunk, encode_chunk, encode_chunk_delta, EncodeOptions,
};
use mithril_checkpoint::delta::DeltaMode;
use mithril_checkpoint::safetensors::parse_header;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base_path), Some(new_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: delta_speed BASE NEW".into());
    };
    let (base_bytes, new_bytes) = (std::fs::read(base_path)?, std::fs::read(new_path)?);
    let (bh, nh) = (
        parse_header(&base_bytes, base_path)?,
        parse_header(&new_bytes, new_path)?,
    );
    let opts = EncodeOptions {
        delta_mode: match args.get(3).map(String::as_str) {
            None | Some("compact") => DeltaMode::Compact,
            Some("fast") => DeltaMode::Fast,
            Some(other) => return Err(format!("unknown delta coding {other:?}").into()),
        },
        ..EncodeOptions::default()
    };
    // (dtype, base chunk, new chunk)
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
        for len in chunk_lengths(t.len(), e.dtype, opts.chunk_bytes) {
            pairs.push((e.dtype, s[at..at + len].to_vec(), t[at..at + len].to_vec()));
            at += len;
        }
    }
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
            o.copy_from_slice(b);
            decode_chunk(e.encoding, &e.data, *d, e.checksum, e.raw_checksum, o)?;
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
