//! Float chunk payload decoder for the three float layouts.
//!
//! Input: `dtype: u8 (0 BF16, 1 F16, 2 F32) | raw bytes: u16 LE | payload ...`. The raw
//! length need not be a whole number of elements: the decoder must not care.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::{float, DType};

const DTYPES: [DType; 3] = [DType::BF16, DType::F16, DType::F32];

fuzz_target!(|data: &[u8]| {
    let [sel, lo, hi, payload @ ..] = data else {
        return;
    };
    let dtype = DTYPES[*sel as usize % DTYPES.len()];
    let Some(bits) = dtype.float_bits() else {
        return;
    };
    let mut out = vec![0u8; u16::from_le_bytes([*lo, *hi]) as usize];
    let _ = float::decode(payload, bits, dtype.size(), &mut out);
});
