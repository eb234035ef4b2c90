//! Encode and decode speed when neither the input nor the output is in cache, as in a
//! pass over a whole checkpoint: every chunk of the model is held eight times over, and
//! each round works through a different copy, decoding into the next stretch of a 1 GiB
//! buffer. One thread; a round's chunk payloads go back to the payload pool as the writer
//! returns them. Unlike `chunk_min` the figure is a plain total, so it is noisier, but it
//! has no cache flush between repeats that the codec pays for.
//! `cargo run --release --example from_memory -- model.safetensors bf16|f32 ROUNDS`
use mithril_checkpoint::buffer_pool::recycle_chunk_data;
use mithril_checkpoint::chunk::{decode_chunk, encode_chunk, EncodeOptions};
use std::time::Instant;

#[path = "shared/model_chunks.rs"]
mod model_chunks;

const COPIES: usize = 8;
const ARENA: usize = 1 << 30;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dtype = model_chunks::dtype_named(&args[2]);
    let rounds: usize = args[3].parse()?;
    let opts = EncodeOptions::default();
    let chunks = model_chunks::model_chunks(&args[1], dtype, opts.chunk_bytes, 256 << 10)?;
    let copies: Vec<Vec<Vec<u8>>> = (0..COPIES).map(|_| chunks.clone()).collect();
    let encoded: Vec<Vec<_>> = copies
        .iter()
        .map(|copy| {
            let chunk = |c: &Vec<u8>| {
                let e = encode_chunk(c, dtype, &opts);
                (e.encoding, e.data.into_owned(), e.checksum, e.raw_checksum)
            };
            copy.iter().map(chunk).collect()
        })
        .collect();
    let mut arena = vec![1u8; ARENA];
    let (mut at, mut bytes) = (0usize, 0usize);
    let (mut enc, mut dec) = (0.0, 0.0);
    for r in 0..rounds {
        let t0 = Instant::now();
        for c in &copies[r % COPIES] {
            recycle_chunk_data(encode_chunk(c, dtype, &opts).data);
        }
        enc += t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for ((encoding, data, checksum, raw_checksum), c) in encoded[r % COPIES].iter().zip(&chunks)
        {
            if at + c.len() > ARENA {
                at = 0;
            }
            let out = &mut arena[at..at + c.len()];
            decode_chunk(*encoding, data, dtype, *checksum, *raw_checksum, out)?;
            at += c.len().next_multiple_of(64);
            bytes += c.len();
        }
        dec += t0.elapsed().as_secs_f64();
    }
    println!(
        "{}: {} chunks x {rounds} rounds from memory, encode {:.0} MB/s, decode {:.0} MB/s",
        args[2],
        chunks.len(),
        bytes as f64 / enc / 1e6,
        bytes as f64 / dec / 1e6
    );
    Ok(())
}
