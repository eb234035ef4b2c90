//! Hostile inputs from the fuzz corpus (`fuzz/`, see fuzz/README.md), replayed on every
//! `cargo test`. Each goes through the same calls as its fuzz target and must give the
//! expected outcome without panicking: most are minimised corpus entries that reach a
//! particular rejection deep inside a decoder.
//!
//! Input layouts (files under tests/fuzz_regressions/TARGET/):
//! - `rans/*.bin`: `selector u8 (bit 0: u16 symbols) | symbols u16 LE | stream`
//! - `float_chunk/*.bin`: `dtype u8 (0 BF16, 1 F16, 2 F32) | raw bytes u16 LE | payload`
//! - `chunk/*.bin`: `encoding u8 (0 raw, 1 float, 2 zstd) | dtype u8 (index into DType::ALL)
//!   | raw bytes u16 LE | stored bytes`, decoded with the stored checksum computed here
//! - `safetensors_header/*.bin`: a whole safetensors file image
//! - `container/NAME.index.json` + `NAME.data.bin`: the index and data section of a
//!   container; the header (with its checksum) and padding are rebuilt here, so the cases
//!   stay valid when the header layout changes.
//!
//! A crash found by `cargo fuzz` goes into the matching folder (a container one as its
//! index and data) and into the table of its test below.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mithril_checkpoint::chunk::decode_chunk;
use mithril_checkpoint::format::{data_offset_for, encode_header};
use mithril_checkpoint::safetensors::parse_header;
use mithril_checkpoint::{float, rans, DType, Encoding, Error, Reader, Result};
use std::path::{Path, PathBuf};
use xxhash_rust::xxh3::xxh3_64;

fn dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target)
}

fn input(target: &str, name: &str) -> Vec<u8> {
    let path = dir(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file of one target folder with the given suffix, by name.
fn all_inputs(target: &str, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir(target))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no {suffix} inputs for {target}");
    names
}

/// What a case must give: success, or an error of a kind whose message contains a text
/// (so that the case keeps reaching the check it was picked for).
#[derive(Debug, Clone, Copy)]
enum Want {
    Ok,
    Corrupt(&'static str),
    Format(&'static str),
}

fn check<T>(case: &str, got: &Result<T>, want: Want) {
    let ok = match (got, want) {
        (Ok(_), Want::Ok) => true,
        (Err(Error::Corrupt(m)), Want::Corrupt(s)) | (Err(Error::Format(m)), Want::Format(s)) => {
            m.contains(s)
        }
        _ => false,
    };
    let shown = got.as_ref().map(|_| "Ok");
    assert!(ok, "{case}: got {shown:?}, want {want:?}");
}

/// Check each named case of `target` against its expected outcome, then replay every
/// input in the folder (new crash files can simply be dropped in) for panics only.
fn replay<T>(target: &str, cases: &[(&str, Want)], run: impl Fn(&[u8]) -> Result<T>) {
    for (name, want) in cases {
        check(name, &run(&input(target, &format!("{name}.bin"))), *want);
    }
    for name in all_inputs(target, ".bin") {
        let _ = run(&input(target, &name));
    }
}

fn run_rans(data: &[u8]) -> Result<()> {
    let [sel, lo, hi, stream @ ..] = data else {
        return Ok(());
    };
    let n = u16::from_le_bytes([*lo, *hi]) as usize;
    if sel & 1 == 0 {
        rans::decode::<u8>(stream, &mut vec![0u8; n], 256)
    } else {
        rans::decode::<u16>(stream, &mut vec![0u16; n], 1024)
    }
}

fn run_float(data: &[u8]) -> Result<()> {
    let [sel, lo, hi, payload @ ..] = data else {
        return Ok(());
    };
    let dtype = [DType::BF16, DType::F16, DType::F32][*sel as usize % 3];
    let mut out = vec![0u8; u16::from_le_bytes([*lo, *hi]) as usize];
    float::decode(payload, dtype.float_bits().unwrap(), dtype.size(), &mut out)
}

fn run_chunk(data: &[u8]) -> Result<()> {
    let [enc, dt, lo, hi, stored @ ..] = data else {
        return Ok(());
    };
    let encoding = Encoding::ALL[*enc as usize % Encoding::ALL.len()];
    let dtype = DType::ALL[*dt as usize % DType::ALL.len()];
    let mut out = vec![0u8; u16::from_le_bytes([*lo, *hi]) as usize];
    decode_chunk(encoding, stored, dtype, xxh3_64(stored), 0, &mut out)
}

/// A container file from an index and a data section, laid out as the writer does.
fn container(name: &str) -> Vec<u8> {
    let json = input("container", &format!("{name}.index.json"));
    let data = input("container", &format!("{name}.data.bin"));
    let offset = data_offset_for(json.len());
    let mut file = encode_header(&json, offset, data.len() as u64);
    file.extend_from_slice(&json);
    file.resize(offset as usize, 0);
    file.extend_from_slice(&data);
    file
}

/// Open, verify and read every tensor (both ways), as the `container` fuzz target does;
/// returns the outcome of opening and of verifying.
fn run_container(file: Vec<u8>) -> (Result<()>, Option<Result<usize>>) {
    let reader = match Reader::from_bytes(file) {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    let verified = reader.verify();
    let mut reused = Vec::new();
    for t in reader.tensors() {
        let read = reader.read(&t.name);
        let reread = reader.read_reusing(&t.name, &mut reused);
        // Both reads decode the same chunks, which verifying decoded too.
        assert_eq!(
            read.is_ok(),
            reread.is_ok(),
            "reads of {:?} disagree",
            t.name
        );
        assert!(
            read.is_ok() || verified.is_err(),
            "verified, but {:?} fails",
            t.name
        );
    }
    (Ok(()), Some(verified))
}

#[test]
fn rans_streams() {
    let cases = [
        ("u8_symbol_out_of_range", Want::Corrupt("rANS symbol")),
        (
            "u8_frequencies_bad_sum",
            Want::Corrupt("frequencies sum to"),
        ),
        ("u8_stream_ends_early", Want::Corrupt("stream ends early")),
        ("u8_unused_words", Want::Corrupt("unused words")),
        ("u16_stream_ends_early", Want::Corrupt("stream ends early")),
        (
            "u16_symbols_not_increasing",
            Want::Corrupt("not increasing"),
        ),
    ];
    replay("rans", &cases, run_rans);
}

#[test]
fn float_chunk_payloads() {
    let cases = [
        (
            "bf16_const_head_out_of_range",
            Want::Corrupt("constant head out of range"),
        ),
        (
            "bf16_const_plane_out_of_range",
            Want::Corrupt("constant plane value out of range"),
        ),
        (
            "bf16_packed_remainder_wrong_size",
            Want::Corrupt("packed remainder"),
        ),
        (
            "f32_zstd_plane_wrong_length",
            Want::Corrupt("zstd plane decoded to the wrong length"),
        ),
        ("bf16_ok", Want::Ok),
    ];
    replay("float_chunk", &cases, run_float);
}

#[test]
fn whole_chunks_with_valid_stored_checksum() {
    let cases = [
        ("float_zstd_plane_bad_src_size", Want::Corrupt("zstd plane")),
        ("float_on_bool", Want::Corrupt("float encoding on BOOL")),
        (
            "zstd_wrong_length",
            Want::Corrupt("zstd chunk decoded to the wrong length"),
        ),
        ("zstd_bad_src_size", Want::Corrupt("zstd:")),
        // Decodes to the end; only the decoded checksum (unknown to the fuzzer) is wrong.
        (
            "float_decoded_checksum_mismatch",
            Want::Corrupt("decoded data checksum"),
        ),
    ];
    replay("chunk", &cases, run_chunk);
}

#[test]
fn safetensors_headers() {
    let cases = [
        ("json_recursion_limit", Want::Format("recursion limit")),
        ("data_not_covered", Want::Format("tensors cover")),
        (
            "offsets_mismatch_shape",
            Want::Format("data_offsets do not match"),
        ),
        ("gap_or_overlap", Want::Format("gap or overlap")),
        ("header_length_too_large", Want::Format("too large")),
    ];
    replay("safetensors_header", &cases, |b| parse_header(b, "fuzz"));
}

#[test]
fn containers() {
    // (case, outcome of opening, outcome of verifying when it opens)
    let cases = [
        (
            "chunks_do_not_cover_data",
            Want::Format("chunks cover 0 of 1"),
            None,
        ),
        (
            "float_encoding_on_bool",
            Want::Format("float encoding on BOOL"),
            None,
        ),
        (
            "raw_length_not_whole_elements",
            Want::Format("not a whole number"),
            None,
        ),
        (
            "rans_lane_state_out_of_range",
            Want::Ok,
            Some(Want::Corrupt("rANS lane state out of range")),
        ),
        // Several bad zstd chunks; which one verify reports first depends on scheduling.
        (
            "zstd_chunks_corrupt",
            Want::Ok,
            Some(Want::Corrupt("zstd:")),
        ),
    ];
    for (name, open_want, verify_want) in cases {
        let (opened, verified) = run_container(container(name));
        check(name, &opened, open_want);
        match (verified, verify_want) {
            (Some(got), Some(want)) => check(name, &got, want),
            (None, None) => {}
            (got, want) => panic!(
                "{name}: verified {:?}, want {want:?}",
                got.map(|r| r.is_ok())
            ),
        }
    }
    for name in all_inputs("container", ".index.json") {
        let _ = run_container(container(name.trim_end_matches(".index.json")));
    }
}
