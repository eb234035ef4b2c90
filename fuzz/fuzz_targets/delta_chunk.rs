//! Delta chunk decoder (`delta::decode`) against a base taken from the input, so that the
//! grouped (`sub-ctx`) path sees real context groups.
//!
//! Input: `op: u8 (0 xor, 1 sub, 2 sub-ctx, 3 sub-quad, 4 sub-pack) | dtype: u8 (index into DType::ALL) |
//! elements: u16 LE | base bytes (elements x dtype size) | payload ...`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::delta::{decode, DeltaOp};
use mithril_checkpoint::DType;

const OPS: [DeltaOp; 5] = [
    DeltaOp::Xor,
    DeltaOp::Sub,
    DeltaOp::SubCtx,
    DeltaOp::SubQuad,
    DeltaOp::SubPack,
];

fuzz_target!(|data: &[u8]| {
    let [op, dt, lo, hi, rest @ ..] = data else {
        return;
    };
    let op = OPS[*op as usize % OPS.len()];
    let dtype = DType::ALL[*dt as usize % DType::ALL.len()];
    let len = u16::from_le_bytes([*lo, *hi]) as usize * dtype.size();
    if rest.len() < len {
        return;
    }
    let (base, payload) = rest.split_at(len);
    let mut inout = base.to_vec();
    let _ = decode(op, payload, dtype, &mut inout);
});
