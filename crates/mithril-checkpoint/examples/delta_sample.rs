//! How the sampled check before a delta is planned (`chunk::sampled_delta_and_plain`) sorts
//! the float chunks of two safetensors files of one model at two training steps: the range of
//! sampled delta / plain ratios, how many chunks it stores plain without planning (ratio 1 or
//! above), and what that costs against the smaller of the planned delta and the plain
//! encoding of each such chunk.
//! `cargo run --release --example delta_sample -- base.safetensors new.safetensors [fast]`

#[path = "shared/float_pairs.rs"]
mod float_pairs;

use mithril_checkpoint::chunk::{all_zero, encode_chunk, sampled_delta_and_plain, EncodeOptions};
use mithril_checkpoint::delta::{self, DeltaMode};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(base_path), Some(new_path)) = (args.get(1), args.get(2)) else {
        return Err("usage: delta_sample BASE NEW [compact|fast]".into());
    };
    let mode = match args.get(3).map(String::as_str) {
        None | Some("compact") => DeltaMode::Compact,
        Some("fast") => DeltaMode::Fast,
        Some(other) => return Err(format!("unknown delta coding {other:?}").into()),
    };
    let opts = EncodeOptions {
        delta_mode: mode,
        ..EncodeOptions::default()
    };
    let pairs = float_pairs::float_chunk_pairs(base_path, new_path, opts.chunk_bytes)?;
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    let (mut sampled, mut skipped, mut best_total, mut added) = (0usize, 0usize, 0usize, 0usize);
    for (dtype, base, new) in &pairs {
        if all_zero(base) {
            continue;
        }
        let Some((d, p)) = sampled_delta_and_plain(new, base, *dtype) else {
            continue;
        };
        let ratio = d as f64 / p as f64;
        lo = lo.min(ratio);
        hi = hi.max(ratio);
        sampled += 1;
        let plain = encode_chunk(new, *dtype, &opts).data.len();
        let planned = delta::plan(new, base, *dtype, mode).emit().1.len();
        let best = plain.min(planned);
        best_total += best;
        if d >= p {
            skipped += 1;
            added += plain - best;
        }
    }
    println!(
        "{mode:?}: {sampled} sampled chunks, delta/plain {lo:.3}-{hi:.3}; stored plain unplanned: \
         {skipped}, costing {added} bytes of {best_total} ({:.3} %)",
        100.0 * added as f64 / best_total.max(1) as f64
    );
    Ok(())
}
