//! How fast can an entropy-coded delta be? Times the rANS coder alone on one symbol per
//! element of a real delta (the zigzag difference of the bit patterns, capped at 255), in
//! ~1 MiB chunks, beside the whole plain codec on the same chunks. One thread.
//! A delta below one bit per element needs an arithmetic-class coder such as rANS, so the
//! coder's rate is a ceiling on any such delta's speed (before reading the base, grouping
//! or adding). `cargo run --release --example delta_bound -- base.safetensors new.safetensors`

use mithril_checkpoint::chunk::{chunk_lengths, decode_chunk, encode_chunk, EncodeOptions};
use mithril_checkpoint::safetensors::parse_header;
use mithril_checkpoint::{huffman, rans};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base_path), Some(new_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: delta_bound BASE NEW".into());
    };
    let (base_bytes, new_bytes) = (std::fs::read(base_path)?, std::fs::read(new_path)?);
    let (bh, nh) = (
        parse_header(&base_bytes, base_path)?,
        parse_header(&new_bytes, new_path)?,
    );
    let opts = EncodeOptions::default();
    // (dtype, new chunk, symbols)
    let mut chunks = Vec::new();
    for e in &nh.entries {
        let Some(b) = bh.entries.iter().find(|b| b.name == e.name) else {
            continue;
        };
        if e.dtype.float_bits().is_none() || b.dtype != e.dtype || b.shape != e.shape {
            continue;
        }
        let w = e.dtype.size();
        let t = &new_bytes[(nh.data_start + e.begin) as usize..(nh.data_start + e.end) as usize];
        let s = &base_bytes[(bh.data_start + b.begin) as usize..(bh.data_start + b.end) as usize];
        let mut at = 0;
        for len in chunk_lengths(t.len(), e.dtype, opts.chunk_bytes) {
            let syms: Vec<u8> = t[at..at + len]
                .chunks_exact(w)
                .zip(s[at..at + len].chunks_exact(w))
                .map(|(t, b)| {
                    let mut tw = [0u8; 8];
                    let mut bw = [0u8; 8];
                    tw[..w].copy_from_slice(t);
                    bw[..w].copy_from_slice(b);
                    let bits = 8 * w as u32;
                    let d =
                        u64::from_le_bytes(tw).wrapping_sub(u64::from_le_bytes(bw)) << (64 - bits);
                    let z = ((d << 1) ^ ((d as i64 >> 63) as u64)) >> (64 - bits);
                    z.min(255) as u8
                })
                .collect();
            chunks.push((e.dtype, t[at..at + len].to_vec(), syms));
            at += len;
        }
    }
    let elements: usize = chunks.iter().map(|c| c.2.len()).sum();
    let coded: Vec<_> = chunks
        .iter()
        .map(|(_, _, syms)| {
            let table = rans::FreqTable::from_counts(&rans::histogram(syms, 256));
            table.map(|t| (rans::encode(syms, &t), t))
        })
        .collect();
    let huffman_coded: Vec<_> = chunks
        .iter()
        .map(|(_, _, syms)| {
            let code = huffman::Code::from_counts(&rans::histogram(syms, 256));
            code.map(|c| (huffman::encode(syms, &c), c))
        })
        .collect();
    let raw: usize = chunks.iter().map(|c| c.1.len()).sum();
    let size = |n: usize| 100.0 * n as f64 / raw as f64;
    println!(
        "symbols alone, as % of the raw chunks (differences above 254 not counted): rANS {:.2} %, Huffman {:.2} %",
        size(coded.iter().flatten().map(|c| c.0.len()).sum()),
        size(huffman_coded.iter().flatten().map(|c| c.0.len()).sum()),
    );
    let rate = |a: Instant, b: Instant| elements as f64 / (b - a).as_secs_f64() / 1e6;
    println!("{elements} elements in {} chunks", chunks.len());
    for round in 0..3 {
        let t0 = Instant::now();
        let full: Vec<_> = chunks
            .iter()
            .map(|(d, t, _)| encode_chunk(t, *d, &opts))
            .collect();
        let t1 = Instant::now();
        let mut out = vec![0u8; opts.chunk_bytes];
        for ((d, _, _), e) in chunks.iter().zip(&full) {
            let o = &mut out[..e.raw_len];
            decode_chunk(e.encoding, &e.data, *d, e.checksum, e.raw_checksum, o)?;
        }
        let t2 = Instant::now();
        for ((_, _, syms), c) in chunks.iter().zip(&coded) {
            if let Some((_, table)) = c {
                std::hint::black_box(rans::encode(syms, table));
            }
        }
        let t3 = Instant::now();
        let mut syms_out = vec![0u8; opts.chunk_bytes];
        for ((_, _, syms), c) in chunks.iter().zip(&coded) {
            if let Some((stream, _)) = c {
                rans::decode(stream, &mut syms_out[..syms.len()], 256)?;
            }
        }
        let t4 = Instant::now();
        for ((_, _, syms), c) in chunks.iter().zip(&huffman_coded) {
            if let Some((_, code)) = c {
                std::hint::black_box(huffman::encode(syms, code));
            }
        }
        let t5 = Instant::now();
        for ((_, _, syms), c) in chunks.iter().zip(&huffman_coded) {
            if let Some((stream, _)) = c {
                huffman::decode(stream, &mut syms_out[..syms.len()], 256)?;
            }
        }
        let t6 = Instant::now();
        println!(
            "round {round}: M elements/s: full codec encode {:.0} decode {:.0} | M symbols/s: rANS encode {:.0} decode {:.0}, Huffman encode {:.0} decode {:.0}",
            rate(t0, t1),
            rate(t1, t2),
            rate(t2, t3),
            rate(t3, t4),
            rate(t4, t5),
            rate(t5, t6),
        );
    }
    Ok(())
}
