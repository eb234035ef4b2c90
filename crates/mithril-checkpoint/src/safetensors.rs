//! safetensors interop, bit-exact both ways.
//!
//! A container made from a safetensors file keeps that file's JSON header verbatim, so the
//! file written back is byte-identical. A container made any other way gets a fresh
//! header laid out as the safetensors library lays it out.

use crate::atomic::{AtomicFile, SyncAhead};
use crate::chunk::EncodeOptions;
use crate::dtype::{byte_size, DType};
use crate::error::{format_err, Error, Result};
use crate::reader::Reader;
use crate::writer::{write_file, DeltaBase, FileExtras, Progress, TensorSource};
use memmap2::Mmap;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The safetensors library refuses headers over 100 MB; so do we.
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as a safetensors header describes it.
#[derive(Debug, Clone)]
pub struct StEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

/// A parsed safetensors header: tensors in data order, user metadata, the header text.
#[derive(Debug, Clone)]
pub struct StHeader {
    pub entries: Vec<StEntry>,
    pub metadata: Option<Metadata>,
    pub text: String,
    pub data_start: u64,
}

fn err(path: &str, msg: impl std::fmt::Display) -> Error {
    format_err(format!("{path}: not a valid safetensors file: {msg}"))
}

/// String-to-string user metadata, as safetensors keeps it.
pub type Metadata = BTreeMap<String, String>;

/// Parse and validate a safetensors JSON header: dtypes, shapes, offsets that match each
/// tensor's size and tile `[0, total)` with no gap or overlap, string-to-string metadata.
/// Returns the entries in data order, the metadata and the total data length.
pub fn parse_header_text(
    text: &str,
    origin: &str,
) -> Result<(Vec<StEntry>, Option<Metadata>, u64)> {
    let root: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| err(origin, format!("header JSON: {e}")))?;
    let mut entries = Vec::new();
    let mut metadata = None;
    for (name, v) in root {
        if name == "__metadata__" {
            let m: Metadata =
                serde_json::from_value(v).map_err(|e| err(origin, format!("__metadata__: {e}")))?;
            metadata = Some(m);
            continue;
        }
        let bad = |what: &str| err(origin, format!("tensor {name:?}: {what}"));
        let dtype = v
            .get("dtype")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing dtype"))?;
        let dtype = DType::parse(dtype).map_err(|e| e.context(origin))?;
        let shape: Vec<u64> = v
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad("missing or bad shape"))?;
        let offs: [u64; 2] = v
            .get("data_offsets")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| bad("missing or bad data_offsets"))?;
        let need = byte_size(dtype, &shape).map_err(|e| e.context(origin))?;
        if offs[1] < offs[0] || offs[1] - offs[0] != need {
            return Err(bad("data_offsets do not match dtype and shape"));
        }
        entries.push(StEntry {
            name,
            dtype,
            shape,
            begin: offs[0],
            end: offs[1],
        });
    }
    entries.sort_by_key(|e| (e.begin, e.end));
    let mut next = 0;
    for e in &entries {
        if e.begin != next {
            return Err(err(
                origin,
                format!("tensor {:?} leaves a gap or overlap", e.name),
            ));
        }
        next = e.end;
    }
    Ok((entries, metadata, next))
}

/// Parse and validate a whole safetensors file image.
pub fn parse_header(bytes: &[u8], origin: &str) -> Result<StHeader> {
    if bytes.len() < 8 {
        return Err(err(origin, "shorter than 8 bytes"));
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[..8]);
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER || 8 + n > bytes.len() as u64 {
        return Err(err(origin, format!("header length {n} is too large")));
    }
    let text = std::str::from_utf8(&bytes[8..8 + n as usize])
        .map_err(|_| err(origin, "header is not UTF-8"))?
        .to_string();
    let (entries, metadata, covered) = parse_header_text(&text, origin)?;
    let data_len = bytes.len() as u64 - 8 - n;
    if covered != data_len {
        return Err(err(
            origin,
            format!("tensors cover {covered} bytes of a {data_len}-byte data section"),
        ));
    }
    Ok(StHeader {
        entries,
        metadata,
        text,
        data_start: 8 + n,
    })
}

/// Compress a safetensors file into a container.
/// With `base`, unchanged-shape tensors are stored as deltas against it.
pub fn compress(
    src: &Path,
    dst: &Path,
    opts: &EncodeOptions,
    base: Option<&DeltaBase>,
    progress: Progress,
) -> Result<u64> {
    let f = File::open(src).map_err(|e| Error::io(src, e))?;
    let origin = src.display().to_string();
    let len = f.metadata().map_err(|e| Error::io(src, e))?.len();
    if len == 0 {
        return Err(err(&origin, "file is empty"));
    }
    // SAFETY: read-only map of a file we do not expect to change while we read it.
    let map = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(src, e))?;
    let header = parse_header(&map, &origin)?;
    let data = &map[header.data_start as usize..];
    let sources: Vec<TensorSource> = header
        .entries
        .iter()
        .map(|e| TensorSource {
            name: e.name.clone(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            data: &data[e.begin as usize..e.end as usize],
        })
        .collect();
    let extras = FileExtras {
        metadata: header.metadata.clone(),
        safetensors_header: Some(header.text.clone()),
    };
    write_file(dst, &sources, &extras, opts, base, progress)
}

/// The header text to write, and the tensor order it lays out. A stored original header is
/// used verbatim and must describe the tensors exactly (otherwise a FormatError); without
/// one, a fresh header is built (sorted by name, data in that order, padded to 8 bytes).
fn header_for(reader: &Reader) -> Result<(String, Vec<String>)> {
    if let Some(text) = &reader.index().safetensors_header {
        let origin = format!(
            "{} (stored header of the source safetensors file)",
            reader.origin()
        );
        let (h, _, _) = parse_header_text(text, &origin)?;
        let mut order = Vec::with_capacity(h.len());
        for e in &h {
            let t = reader.tensor(&e.name).map_err(|_| {
                format_err(format!(
                    "{origin}: names tensor {:?}, which the file lacks",
                    e.name
                ))
            })?;
            if t.dtype != e.dtype || t.shape != e.shape {
                return Err(format_err(format!(
                    "{}: stored safetensors header disagrees with tensor {:?}",
                    reader.origin(),
                    e.name
                )));
            }
            order.push(e.name.clone());
        }
        if order.len() != reader.tensors().len() {
            return Err(format_err(format!(
                "{}: stored safetensors header names {} tensors, the file has {}",
                reader.origin(),
                order.len(),
                reader.tensors().len()
            )));
        }
        return Ok((text.clone(), order));
    }
    let mut names: Vec<&str> = reader.tensors().iter().map(|t| t.name.as_str()).collect();
    names.sort();
    let mut root = Map::new();
    if let Some(m) = &reader.index().metadata {
        root.insert("__metadata__".into(), serde_json::to_value(m)?);
    }
    let mut at = 0u64;
    for name in &names {
        let t = reader.tensor(name)?;
        let mut e = Map::new();
        e.insert("dtype".into(), Value::from(t.dtype.name()));
        e.insert("shape".into(), serde_json::to_value(&t.shape)?);
        e.insert(
            "data_offsets".into(),
            serde_json::to_value([at, at + t.raw_len])?,
        );
        root.insert(name.to_string(), Value::Object(e));
        at += t.raw_len;
    }
    let mut text = serde_json::to_string(&root)?;
    while (8 + text.len()) % 8 != 0 {
        text.push(' ');
    }
    Ok((text, names.into_iter().map(String::from).collect()))
}

/// Write a container (a delta with its chain of bases resolved) back out as a safetensors
/// file, atomically.
pub fn decompress(src: &Path, dst: &Path, progress: Progress) -> Result<u64> {
    let reader = Reader::open_chain(src, None)?;
    let (text, order) = header_for(&reader)?;
    let total: u64 = reader.tensors().iter().map(|t| t.raw_len).sum();
    let mut out = AtomicFile::create(dst)?;
    let tmp = out.tmp_path().to_path_buf();
    let io = |e| Error::io(&tmp, e);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, SyncAhead::new(out.file()));
        w.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(text.as_bytes()).map_err(io)?;
        let mut done = 0u64;
        let mut buf = Vec::new();
        for name in &order {
            let t = reader.tensor(name)?;
            reader.read_reusing(name, &mut buf)?;
            w.write_all(&buf).map_err(io)?;
            done += t.raw_len;
            progress(done, total)?;
        }
        w.into_inner()
            .map_err(|e| io(e.into_error()))?
            .finish()
            .map_err(io)?;
    }
    out.commit()?;
    Ok(8 + text.len() as u64 + total)
}
