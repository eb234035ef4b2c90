//! rANS stream decoder, u8 planes (alphabet 256) and u16 heads (alphabet 1024).
//!
//! Input: `selector: u8 | symbols: u16 LE | stream ...`; bit 0 of the selector picks u16.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::rans;

fuzz_target!(|data: &[u8]| {
    let [sel, lo, hi, stream @ ..] = data else {
        return;
    };
    let n = u16::from_le_bytes([*lo, *hi]) as usize;
    if sel & 1 == 0 {
        let mut out = vec![0u8; n];
        let _ = rans::decode::<u8>(stream, &mut out, 256);
    } else {
        let mut out = vec![0u16; n];
        let _ = rans::decode::<u16>(stream, &mut out, 1024);
    }
});
