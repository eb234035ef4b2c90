//! safetensors file image parser.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mithril_checkpoint::safetensors::parse_header;

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data, "<fuzz>");
});
