//! Writes seed inputs for the fuzz targets in `fuzz/` (see fuzz/README.md), one folder per
//! target, in the input layout each target expects.
//! `cargo run -p mithril-checkpoint --example fuzz_seeds -- fuzz/corpus`

use mithril_checkpoint::chunk::encode_chunk;
use mithril_checkpoint::{float, rans, write_bytes, DType, EncodeOptions, FileExtras};
use mithril_checkpoint::{BaseId, BaseRef, BaseTensors, DeltaBase, Encoding, TensorSource};
use std::collections::BTreeMap;
use std::error::Error;
use std::path::Path;

type Res<T> = Result<T, Box<dyn Error>>;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Small values clustered around 0, like an exponent offset of trained weights.
    fn skewed(&mut self, spread: u32) -> u32 {
        let a = self.next() % spread;
        let b = self.next() % spread;
        a.min(b)
    }
}

/// `n` float-like words of `dtype` (exponents skewed just below the bias, random mantissas).
fn floats(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed);
    let mut out = Vec::with_capacity(n * dtype.size());
    for _ in 0..n {
        let sign = r.next() & 1;
        match dtype {
            DType::BF16 => {
                let w = (sign << 15) | ((126 - r.skewed(8)) << 7) | (r.next() & 0x7f);
                out.extend_from_slice(&(w as u16).to_le_bytes());
            }
            DType::F16 => {
                let w = (sign << 15) | ((14 - r.skewed(6)) << 10) | (r.next() & 0x3ff);
                out.extend_from_slice(&(w as u16).to_le_bytes());
            }
            _ => {
                let w = (sign << 31) | ((126 - r.skewed(10)) << 23) | (r.next() & 0x7f_ffff);
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
    }
    out
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)?;
    Ok(())
}

fn with_prefix(prefix: &[u8], body: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(body);
    v
}

fn container_seeds(dir: &Path) -> Res<()> {
    let bf16 = floats(DType::BF16, 300, 1);
    let f16 = floats(DType::F16, 200, 2);
    let f32 = floats(DType::F32, 100, 3);
    let ints: Vec<u8> = (0..256i32).flat_map(|i| (i / 7).to_le_bytes()).collect();
    let bytes: Vec<u8> = {
        let mut r = Rng(4);
        (0..64).map(|_| r.next() as u8).collect()
    };
    let long = floats(DType::BF16, 1000, 5);
    let t = |name: &str, dtype, shape: &[u64], data| TensorSource {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data,
    };
    let small = EncodeOptions {
        chunk_bytes: 256,
        ..Default::default()
    };
    let none = FileExtras::default();
    let cases: Vec<(&str, Vec<TensorSource>, FileExtras, EncodeOptions)> = vec![
        ("empty_file", vec![], none.clone(), small),
        ("bf16", vec![t("w", DType::BF16, &[20, 15], &bf16)], none.clone(), small),
        ("f16", vec![t("h", DType::F16, &[200], &f16)], none.clone(), small),
        ("f32", vec![t("f", DType::F32, &[10, 10], &f32)], none.clone(), small),
        ("ints", vec![t("i", DType::I32, &[256], &ints)], none.clone(), small),
        ("raw_u8", vec![t("b", DType::U8, &[64], &bytes)], none.clone(), small),
        (
            "empty_and_scalar",
            vec![
                t("e", DType::F32, &[0, 3], &[]),
                t("s", DType::BF16, &[], &bf16[..2]),
            ],
            none.clone(),
            small,
        ),
        (
            "multi_chunk",
            vec![t("long", DType::BF16, &[1000], &long)],
            none.clone(),
            small,
        ),
        (
            "mixed_default_chunks",
            vec![
                t("a", DType::BF16, &[300], &bf16),
                t("b", DType::I32, &[16, 16], &ints),
                t("c", DType::F16, &[2, 100], &f16),
            ],
            none,
            EncodeOptions::default(),
        ),
        (
            "with_extras",
            vec![t("w", DType::F32, &[4], &f32[..16])],
            FileExtras {
                metadata: Some(BTreeMap::from([("format".into(), "pt".into())])),
                safetensors_header: Some(
                    r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#
                        .into(),
                ),
            },
            small,
        ),
    ];
    for (name, tensors, extras, opts) in cases {
        write(
            dir,
            "container",
            name,
            &write_bytes(&tensors, &extras, &opts, None)?,
        )?;
    }
    // A delta file (its base in memory): the reader has no base, so reads stop at the base
    // check, but the index's `base` and the delta chunk entries are validated.
    let moved: Vec<u8> = long
        .chunks_exact(2)
        .flat_map(|w| {
            u16::from_le_bytes([w[0], w[1]])
                .wrapping_add(1)
                .to_le_bytes()
        })
        .collect();
    let base_list = [t("long", DType::BF16, &[1000], &long)];
    let base = DeltaBase {
        reference: BaseId::Given(BaseRef {
            id: "0123456789abcdef0123456789abcdef".into(),
            path: Some("base.mithril".into()),
        }),
        tensors: BaseTensors::memory(&base_list),
    };
    let target = [t("long", DType::BF16, &[1000], &moved)];
    let delta = write_bytes(&target, &FileExtras::default(), &small, Some(&base))?;
    write(dir, "container", "delta", &delta)?;
    Ok(())
}

fn rans_seeds(dir: &Path) -> Res<()> {
    let mut r = Rng(7);
    for (i, n) in [2usize, 33, 100, 700].into_iter().enumerate() {
        let syms: Vec<u8> = (0..n).map(|_| 120 + r.skewed(6) as u8).collect();
        let counts = rans::histogram(&syms, 256);
        if let Some(table) = rans::FreqTable::from_counts(&counts) {
            let body = rans::encode(&syms, &table);
            let seed = with_prefix(&[0, n as u8, (n >> 8) as u8], &body);
            write(dir, "rans", &format!("u8_{i}"), &seed)?;
        }
    }
    for (i, n) in [64usize, 300].into_iter().enumerate() {
        let syms: Vec<u16> = (0..n).map(|_| 500 + r.skewed(40) as u16).collect();
        let counts = rans::histogram(&syms, 1024);
        if let Some(table) = rans::FreqTable::from_counts(&counts) {
            let body = rans::encode(&syms, &table);
            let seed = with_prefix(&[1, n as u8, (n >> 8) as u8], &body);
            write(dir, "rans", &format!("u16_{i}"), &seed)?;
        }
    }
    Ok(())
}

fn float_seeds(dir: &Path) -> Res<()> {
    for (sel, dtype) in [DType::BF16, DType::F16, DType::F32]
        .into_iter()
        .enumerate()
    {
        let n = 600 / dtype.size();
        let mut inputs = vec![
            ("random", floats(dtype, n, 10 + sel as u64)),
            ("zeros", vec![0u8; 64 * dtype.size()]),
            ("short", floats(dtype, 5, 20 + sel as u64)),
            ("empty", Vec::new()),
        ];
        // Few distinct mantissas: pushes bf16 to a wider head and a bit-packed remainder.
        let mut skew = floats(dtype, n, 30 + sel as u64);
        for w in skew.chunks_exact_mut(dtype.size()) {
            w[0] &= 0x81;
        }
        inputs.push(("skewed", skew));
        for (name, raw) in inputs {
            let Some(bits) = dtype.float_bits() else {
                continue;
            };
            let payload = float::encode(&raw, bits, dtype.size());
            let len = raw.len() as u16;
            let seed = with_prefix(&[sel as u8, len as u8, (len >> 8) as u8], &payload);
            write(dir, "float_chunk", &format!("{dtype}_{name}"), &seed)?;
        }
    }
    Ok(())
}

fn chunk_seeds(dir: &Path) -> Res<()> {
    let opts = EncodeOptions::default();
    for (di, dtype) in DType::ALL.into_iter().enumerate() {
        let raw: Vec<u8> = match dtype.float_bits() {
            Some(_) => floats(dtype, 512 / dtype.size(), di as u64),
            None => (0..512u32).map(|i| (i / 5) as u8).collect(),
        };
        let c = encode_chunk(&raw, dtype, &opts);
        let enc = match c.encoding {
            Encoding::Raw => 0,
            Encoding::Float => 1,
            Encoding::Zstd => 2,
            Encoding::Xor => 3,
            Encoding::Sub => 4,
            Encoding::SubCtx => 5,
            Encoding::SubQuad => 6,
            Encoding::SubPack => 7,
        };
        let len = c.raw_len as u16;
        let seed = with_prefix(&[enc, di as u8, len as u8, (len >> 8) as u8], &c.data);
        write(dir, "chunk", &format!("{dtype}"), &seed)?;
    }
    Ok(())
}

fn safetensors_image(header: &str, data_len: usize) -> Vec<u8> {
    let mut text = header.to_string();
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(' ');
    }
    let mut v = (text.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v.extend((0..data_len).map(|i| i as u8));
    v
}

fn safetensors_seeds(dir: &Path) -> Res<()> {
    let cases = [
        ("empty", "{}", 0),
        (
            "one",
            r#"{"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#,
            12,
        ),
        (
            "metadata_and_two",
            r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[],"data_offsets":[8,16]}}"#,
            16,
        ),
        (
            "zero_sized",
            r#"{"z":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"f":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}"#,
            4,
        ),
    ];
    for (name, header, data_len) in cases {
        write(
            dir,
            "safetensors_header",
            name,
            &safetensors_image(header, data_len),
        )?;
    }
    Ok(())
}

/// Real deltas: a base of skewed floats and a copy moved by a few ulps, per float dtype and
/// transform, as `op | dtype | elements | base | payload`.
fn delta_seeds(dir: &Path) -> Res<()> {
    use mithril_checkpoint::delta::{encode, DeltaMode, DeltaOp};
    for (di, dtype) in DType::ALL.into_iter().enumerate() {
        if dtype.float_bits().is_none() {
            continue;
        }
        let n = 6000usize;
        let base = floats(dtype, n, 7 + di as u64);
        let mut r = Rng(99);
        let target: Vec<u8> = base
            .chunks_exact(dtype.size())
            .flat_map(|w| {
                let step = r.next() % 5;
                if dtype.size() == 2 {
                    let v = u16::from_le_bytes([w[0], w[1]]).wrapping_add(step as u16);
                    v.to_le_bytes().to_vec()
                } else {
                    let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]).wrapping_add(step);
                    v.to_le_bytes().to_vec()
                }
            })
            .collect();
        // The unsigned dtype of the same width gives the ungrouped `sub`, which decodes the
        // same under the float dtype; the float dtype itself gives `sub-ctx` (compact) and
        // `sub-quad` (fast).
        let same_width = if dtype.size() == 2 {
            DType::U16
        } else {
            DType::U32
        };
        let cases = [
            (same_width, DeltaMode::Compact),
            (dtype, DeltaMode::Compact),
            (dtype, DeltaMode::Fast),
        ];
        for (coded_as, mode) in cases {
            let (op, payload) = encode(&target, &base, coded_as, mode);
            let code = match op {
                DeltaOp::Xor => 0u8,
                DeltaOp::Sub => 1,
                DeltaOp::SubCtx => 2,
                DeltaOp::SubQuad => 3,
                DeltaOp::SubPack => 4,
            };
            let mut seed = vec![code, di as u8, n as u8, (n >> 8) as u8];
            seed.extend_from_slice(&base);
            seed.extend_from_slice(&payload);
            write(dir, "delta_chunk", &format!("{dtype}_{code}"), &seed)?;
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: fuzz_seeds CORPUS_DIR")?;
    let dir = Path::new(&dir);
    container_seeds(dir)?;
    rans_seeds(dir)?;
    float_seeds(dir)?;
    chunk_seeds(dir)?;
    delta_seeds(dir)?;
    safetensors_seeds(dir)?;
    println!("seeds written under {}", dir.display());
    Ok(())
}
