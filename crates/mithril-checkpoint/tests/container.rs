//! Container round trips and hostile edits, at the Rust level.
#![allow(clippy::unwrap_used)]

use mithril_checkpoint::chunk::EncodeOptions;
use mithril_checkpoint::{write_bytes, DType, Error, FileExtras, Reader, TensorSource};

type Sample = (String, DType, Vec<u64>, Vec<u8>);

fn sample() -> Vec<Sample> {
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // Gaussian-like bf16 weights: exponent concentrated, mantissa random.
    let bf16: Vec<u8> = (0..20_000)
        .flat_map(|_| {
            let r = next();
            let exp = 118 + (r % 8) as u16;
            (((r >> 8) as u16 & 0x8000) | (exp << 7) | ((r >> 20) as u16 & 0x7f)).to_le_bytes()
        })
        .collect();
    let f32s: Vec<u8> = (0..5_000)
        .flat_map(|i| ((i as f32 * 0.37).sin() * 0.02).to_le_bytes())
        .collect();
    let ints: Vec<u8> = (0..3_000i64).flat_map(|i| (i % 17).to_le_bytes()).collect();
    vec![
        ("w".into(), DType::BF16, vec![100, 200], bf16),
        ("m".into(), DType::F32, vec![5_000], f32s),
        ("ids".into(), DType::I64, vec![3, 1_000], ints),
        ("empty".into(), DType::F16, vec![0, 4], vec![]),
        (
            "scalar".into(),
            DType::F64,
            vec![],
            1.5f64.to_le_bytes().to_vec(),
        ),
    ]
}

fn build(chunk_bytes: usize) -> (Vec<u8>, Vec<Sample>) {
    let tensors = sample();
    let sources: Vec<TensorSource> = tensors
        .iter()
        .map(|(n, d, s, b)| TensorSource {
            name: n.clone(),
            dtype: *d,
            shape: s.clone(),
            data: b,
        })
        .collect();
    let opts = EncodeOptions {
        chunk_bytes,
        ..Default::default()
    };
    let bytes = write_bytes(&sources, &FileExtras::default(), &opts, None).unwrap();
    (bytes, tensors)
}

#[test]
fn roundtrip_every_tensor_bit_exact() {
    for chunk in [512, 4096, 1 << 20] {
        let (bytes, tensors) = build(chunk);
        let r = Reader::from_bytes(bytes).unwrap();
        for (name, dtype, shape, data) in &tensors {
            let t = r.tensor(name).unwrap();
            assert_eq!(t.dtype, *dtype);
            assert_eq!(&t.shape, shape);
            assert_eq!(&r.read(name).unwrap(), data, "{name} chunk={chunk}");
        }
        assert!(r.verify().unwrap() > 0);
    }
}

#[test]
fn weights_compress() {
    let (bytes, tensors) = build(1 << 20);
    let raw: usize = tensors.iter().map(|t| t.3.len()).sum();
    assert!(bytes.len() < raw * 9 / 10, "{} vs {raw}", bytes.len());
}

#[test]
fn every_truncation_is_refused() {
    let (bytes, _) = build(4096);
    for cut in 0..bytes.len() {
        match Reader::from_bytes(bytes[..cut].to_vec()) {
            Err(Error::Format(_)) | Err(Error::Corrupt(_)) => {}
            other => panic!("cut at {cut}: {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn single_bit_flips_are_caught() {
    let (bytes, tensors) = build(4096);
    // Every byte of the header and index; a stride through the chunk data.
    let data_offset = u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    let offsets = (0..data_offset).chain((data_offset..bytes.len()).step_by(97));
    for at in offsets {
        let mut bad = bytes.clone();
        bad[at] ^= 1 << (at % 8);
        let caught = match Reader::from_bytes(bad) {
            Err(_) => true,
            Ok(r) => r.verify().is_err() || tensors.iter().any(|t| r.read(&t.0).is_err()),
        };
        assert!(caught, "flip at byte {at} went unnoticed");
    }
}

/// Decoding chunk after chunk on the calling thread (`parallel::on_calling_thread`) gives
/// what the parallel decoder gives: plain tensors of many chunks, a delta against a base
/// held by the caller, and `verify`.
#[test]
fn decoding_on_the_calling_thread_matches_the_parallel_decoder() {
    use mithril_checkpoint::parallel::on_calling_thread;
    use mithril_checkpoint::{BaseId, BaseRef, BaseTensors, DeltaBase};
    let (bytes, tensors) = build(512);
    let r = Reader::from_bytes(bytes).unwrap();
    for (name, _, _, data) in &tensors {
        assert!(r.tensor(name).unwrap().chunks.len() > 1 || data.len() <= 512);
        let mut out = vec![0u8; data.len()];
        on_calling_thread(|| r.read_into(name, &mut out)).unwrap();
        assert_eq!(&out, data, "{name}");
    }
    assert_eq!(
        on_calling_thread(|| r.verify()).unwrap(),
        r.verify().unwrap()
    );

    let (name, dtype, shape, base) = &tensors[0];
    let next: Vec<u8> = base
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ (i % 3 == 0) as u8)
        .collect();
    let base_source = [TensorSource {
        name: name.clone(),
        dtype: *dtype,
        shape: shape.clone(),
        data: base,
    }];
    let delta_base = DeltaBase {
        reference: BaseId::Given(BaseRef {
            id: mithril_checkpoint::format::tensor_content_id(*dtype, shape, base),
            path: None,
        }),
        tensors: BaseTensors::memory(&base_source),
    };
    let source = [TensorSource {
        name: name.clone(),
        dtype: *dtype,
        shape: shape.clone(),
        data: &next,
    }];
    let opts = EncodeOptions {
        chunk_bytes: 4096,
        ..Default::default()
    };
    let delta = write_bytes(&source, &FileExtras::default(), &opts, Some(&delta_base)).unwrap();
    let r = Reader::from_bytes(delta).unwrap();
    assert!(r
        .tensor(name)
        .unwrap()
        .chunks
        .iter()
        .all(|c| c.encoding.is_delta()));
    let mut out = vec![0u8; next.len()];
    on_calling_thread(|| r.read_with_base(name, base, &mut out)).unwrap();
    assert_eq!(out, next);
    // Another base of the right size fails a chunk's checksum, and only then is its
    // content id computed and found to be another's.
    let err = r.read_with_base(name, &next, &mut out).unwrap_err();
    assert!(matches!(err, Error::Base(_)), "{err}");
}

/// A container written against a base tensor whose id is left to the writer records that
/// id only when a chunk is stored as a delta: a tensor the base does not help is stored
/// whole, with no base to name, and decodes without one.
#[test]
fn a_base_tensor_is_recorded_only_if_a_chunk_uses_it() {
    use mithril_checkpoint::format::tensor_content_id;
    use mithril_checkpoint::{BaseId, BaseTensors, DeltaBase};
    let floats = |f: &dyn Fn(usize) -> f32| -> Vec<u8> {
        (0..6_000).flat_map(|i| f(i).to_le_bytes()).collect()
    };
    let base = floats(&|i| (i as f32 * 0.37).sin() * 0.02);
    let near = floats(&|i| (i as f32 * 0.37).sin() * 0.02 + 1e-6);
    // Bit patterns with no relation to the base's: no delta is smaller than the plain codec.
    let unrelated = floats(&|i| f32::from_bits((i as u32).wrapping_mul(0x9e37_79b9) >> 2));
    let shape = vec![6_000u64];
    let base_source = [TensorSource {
        name: "w".into(),
        dtype: DType::F32,
        shape: shape.clone(),
        data: &base,
    }];
    let delta_base = DeltaBase {
        reference: BaseId::TensorIfUsed(&base_source[0]),
        tensors: BaseTensors::memory(&base_source),
    };
    let opts = EncodeOptions {
        chunk_bytes: 4096,
        ..Default::default()
    };
    let write = |data: &[u8]| {
        let source = [TensorSource {
            name: "w".into(),
            dtype: DType::F32,
            shape: shape.clone(),
            data,
        }];
        let bytes = write_bytes(&source, &FileExtras::default(), &opts, Some(&delta_base));
        Reader::from_bytes(bytes.unwrap()).unwrap()
    };

    let delta_chunks = |r: &Reader| {
        let chunks = &r.tensor("w").unwrap().chunks;
        chunks.iter().filter(|c| c.encoding.is_delta()).count()
    };

    let r = write(&near);
    assert!(delta_chunks(&r) > 0);
    let recorded = r.index().base.as_ref().map(|b| b.id.clone());
    assert_eq!(recorded, Some(tensor_content_id(DType::F32, &shape, &base)));
    let mut out = vec![0u8; near.len()];
    r.read_with_base("w", &base, &mut out).unwrap();
    assert_eq!(out, near);
    let err = r.read_with_base("w", &unrelated, &mut out).unwrap_err();
    assert!(matches!(err, Error::Base(_)), "{err}");

    // Beside a tensor the base does not name, the id recorded is still the base tensor's.
    let pair = [
        TensorSource {
            name: "w".into(),
            dtype: DType::F32,
            shape: shape.clone(),
            data: &near,
        },
        TensorSource {
            name: "other".into(),
            dtype: DType::F32,
            shape: shape.clone(),
            data: &unrelated,
        },
    ];
    let bytes = write_bytes(&pair, &FileExtras::default(), &opts, Some(&delta_base)).unwrap();
    let two = Reader::from_bytes(bytes).unwrap();
    assert!(delta_chunks(&two) > 0);
    assert_eq!(two.index().base.as_ref().map(|b| b.id.clone()), recorded);

    let r = write(&unrelated);
    assert_eq!(delta_chunks(&r), 0);
    assert!(r.index().base.is_none());
    let mut out = vec![0u8; unrelated.len()];
    r.read_into("w", &mut out).unwrap();
    assert_eq!(out, unrelated);
    out.fill(0);
    r.read_with_base("w", &near, &mut out).unwrap();
    assert_eq!(out, unrelated);
}
