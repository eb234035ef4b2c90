//! How fast can an entropy-coded delta be? Times the entropy coders alone on one symbol
//! per element of a real delta (the zigzag difference of the bit patterns, capped at 255),
//! one order-0 table per ~1 MiB chunk, beside the whole plain codec on the same chunks, and
//! prints the coded sizes. One thread. A delta coded with either is slower than the coder
//! alone: it must also read the base and add. (Huffman's rate is that of one table per
//! chunk; a table per context would be slower still.)
//! `cargo run --release --example delta_bound -- base.safetensors new.safetensors`

#[path = "shared/float_pairs.rs"]
mod float_pairs;

use mithril_checkpoint::chunk::{decode_chunk, encode_chunk, EncodeOptions};
use mithril_checkpoint::{huffman, rans};
use std::time::Instant;

/// The zigzag difference of each element's bit pattern against its base, capped at 255.
fn delta_symbols(new: &[u8], base: &[u8], w: usize) -> Vec<u8> {
    let bits = 8 * w as u32;
    new.chunks_exact(w)
        .zip(base.chunks_exact(w))
        .map(|(t, b)| {
            let mut tw = [0u8; 8];
            let mut bw = [0u8; 8];
            tw[..w].copy_from_slice(t);
            bw[..w].copy_from_slice(b);
            let d = u64::from_le_bytes(tw).wrapping_sub(u64::from_le_bytes(bw)) << (64 - bits);
            let z = ((d << 1) ^ ((d as i64 >> 63) as u64)) >> (64 - bits);
            z.min(255) as u8
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base_path), Some(new_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: delta_bound BASE NEW".into());
    };
    let opts = EncodeOptions::default();
    // (dtype, new chunk, symbols)
    let chunks: Vec<_> = float_pairs::float_chunk_pairs(base_path, new_path, opts.chunk_bytes)?
        .into_iter()
        .map(|(dtype, base, new)| {
            let syms = delta_symbols(&new, &base, dtype.size());
            (dtype, new, syms)
        })
        .collect();
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
