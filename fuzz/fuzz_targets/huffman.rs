//! Huffman stream decoder, u8 planes (alphabet 256) and u16 heads (alphabet 1024): never
//! a panic, and a stream that decodes gives only symbols below the alphabet size.
//!
//! Input: `selector: u8 | symbols: u16 LE | stream ...`; bit 0 of the selector picks u16.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::huffman;
use mithril_checkpoint::rans::Symbol;

fn check<T: Symbol + PartialEq + std::fmt::Debug>(stream: &[u8], n: usize, cardinality: usize) {
    let mut out = vec![T::default(); n];
    if huffman::decode::<T>(stream, &mut out, cardinality).is_ok() {
        assert!(out.iter().all(|s| s.index() < cardinality));
    }
}

fuzz_target!(|data: &[u8]| {
    let [sel, lo, hi, stream @ ..] = data else {
        return;
    };
    let n = u16::from_le_bytes([*lo, *hi]) as usize;
    if sel & 1 == 0 {
        check::<u8>(stream, n, 256);
    } else {
        check::<u16>(stream, n, 1024);
    }
});
