//! Reading a container: the whole layout is validated on open; tensors decode lazily,
//! chunk by chunk in parallel, straight from the memory map.

use crate::chunk::{decode_chunk, decode_chunk_onto};
use crate::error::{zeroed_buffer, Error, Result};
use crate::format::{self, BaseRef, Chunk, Index, TensorInfo};
use crate::parallel;
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Longest chain of delta files a reader follows.
pub const MAX_CHAIN: usize = 1000;

enum Backing {
    Map(Mmap),
    Bytes(Vec<u8>),
    /// Bytes owned elsewhere (a Python `bytes` object), read in place.
    Shared(Box<dyn AsRef<[u8]> + Send + Sync>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Bytes(b) => b,
            Backing::Shared(b) => (**b).as_ref(),
        }
    }
}

pub struct Reader {
    backing: Backing,
    origin: String,
    index: Index,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    data_offset: u64,
    content_id: String,
    /// The opened base of a delta file, once resolved.
    base: Option<Box<Reader>>,
}

impl Reader {
    /// Open and validate a file. The file must not be modified while it is open.
    pub fn open(path: &Path) -> Result<Reader> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let backing = if len == 0 {
            Backing::Bytes(Vec::new())
        } else {
            // SAFETY: the map is read-only; like safetensors, we rely on the file not being
            // truncated by another process while it is open.
            Backing::Map(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?)
        };
        Self::from_backing(backing, path.display().to_string())
    }

    /// Validate an in-memory container.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Reader> {
        Self::from_backing(Backing::Bytes(bytes), "<bytes>".into())
    }

    /// A reader over bytes that something else owns and keeps unchanged, without a copy.
    pub fn from_shared(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Result<Reader> {
        Self::from_backing(Backing::Shared(Box::new(bytes)), "<bytes>".into())
    }

    fn from_backing(backing: Backing, origin: String) -> Result<Reader> {
        let (index, tensors, data_offset) =
            format::parse(backing.bytes()).map_err(|e| e.context(&origin))?;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let content_id = format::content_id_of(backing.bytes());
        Ok(Reader {
            backing,
            origin,
            index,
            tensors,
            by_name,
            data_offset,
            content_id,
            base: None,
        })
    }

    /// Open a file and, if it is a delta, the chain of bases it needs, each checked against
    /// the content id its delta recorded. `base_override` replaces the first base's path hint.
    pub fn open_chain(path: &Path, base_override: Option<&Path>) -> Result<Reader> {
        let mut seen = HashSet::new();
        Self::open_chain_inner(path, base_override, &mut seen)
    }

    fn open_chain_inner(
        path: &Path,
        base_override: Option<&Path>,
        seen: &mut HashSet<PathBuf>,
    ) -> Result<Reader> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if !seen.insert(key) {
            return Err(Error::Base(format!(
                "{}: the chain of bases loops back to this file",
                path.display()
            )));
        }
        if seen.len() > MAX_CHAIN {
            return Err(Error::Base(format!(
                "{}: chain of bases longer than {MAX_CHAIN} files",
                path.display()
            )));
        }
        let mut reader = Reader::open(path)?;
        let Some(base) = reader.index.base.clone() else {
            return Ok(reader);
        };
        let base_path = match base_override {
            Some(p) => p.to_path_buf(),
            None => hint_path(path, &base)?,
        };
        if !base_path.exists() {
            return Err(Error::Base(format!(
                "{}: base {} (content id {}) is missing",
                path.display(),
                base_path.display(),
                base.id
            )));
        }
        let base_reader = Self::open_chain_inner(&base_path, None, seen)?;
        reader.attach_base(base_reader)?;
        Ok(reader)
    }

    /// Use `base` as this delta file's base, after checking its content id.
    pub fn attach_base(&mut self, base: Reader) -> Result<()> {
        let Some(want) = &self.index.base else {
            return Err(Error::Invalid(format!(
                "{} is not a delta file; it takes no base",
                self.origin
            )));
        };
        if base.content_id != want.id {
            return Err(Error::Base(format!(
                "{}: base {} has content id {}, the delta was made against {} (the base was replaced or altered)",
                self.origin, base.origin, base.content_id, want.id
            )));
        }
        self.base = Some(Box::new(base));
        Ok(())
    }

    /// Content id of this file (what a delta made against it records).
    pub fn content_id(&self) -> &str {
        &self.content_id
    }

    /// The base this file names, if it is a delta.
    pub fn base_ref(&self) -> Option<&BaseRef> {
        self.index.base.as_ref()
    }

    /// The resolved base reader, if any.
    pub fn base(&self) -> Option<&Reader> {
        self.base.as_deref()
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.by_name
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// Size of the whole container in bytes.
    pub fn file_len(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// Decode tensor `name` into `out`, which must be exactly its raw size.
    pub fn read_into(&self, name: &str, out: &mut [u8]) -> Result<()> {
        let t = self.tensor(name)?;
        crate::error::advise_huge_pages(out.as_mut_ptr(), out.len());
        self.decode_tensor(t, out)
    }

    /// Decode tensor `name` into a reusable buffer, growing it without aborting on a
    /// size the allocator refuses.
    pub fn read_reusing(&self, name: &str, buf: &mut Vec<u8>) -> Result<()> {
        let t = self.tensor(name)?;
        let n = t.raw_len as usize;
        if buf.capacity() < n {
            *buf = zeroed_buffer(n)
                .map_err(|e| e.context(format!("{}: tensor {:?}", self.origin, t.name)))?;
        }
        buf.resize(n, 0);
        self.decode_tensor(t, buf)
    }

    /// Decode tensor `name` into a new buffer.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_reusing(name, &mut out)?;
        Ok(out)
    }

    fn decode_tensor(&self, t: &TensorInfo, out: &mut [u8]) -> Result<()> {
        check_len(t, out, "buffer")?;
        if t.chunks.iter().any(|c| c.encoding.is_delta()) {
            self.read_base_into(t, out)?;
        }
        self.decode_chunks(t, out, None)
    }

    /// Fill `out` with the base's bytes of tensor `t`, which must have the same dtype and shape.
    fn read_base_into(&self, t: &TensorInfo, out: &mut [u8]) -> Result<()> {
        let Some(base) = &self.base else {
            return Err(Error::Base(format!(
                "{}: tensor {:?} is a delta and its base is not loaded",
                self.origin, t.name
            )));
        };
        let bt = base.tensor(&t.name).map_err(|_| {
            Error::Base(format!(
                "{}: delta tensor {:?} is not in the base {}",
                self.origin, t.name, base.origin
            ))
        })?;
        if bt.dtype != t.dtype || bt.shape != t.shape {
            return Err(Error::Base(format!(
                "{}: delta tensor {:?} is {} {:?}, the base {} holds {} {:?}",
                self.origin, t.name, t.dtype, t.shape, base.origin, bt.dtype, bt.shape
            )));
        }
        base.decode_tensor(bt, out)
    }

    /// Decode a delta tensor into `out` against base bytes held by the caller, both exactly
    /// the tensor's raw size. The base must be the tensor whose [`format::tensor_content_id`]
    /// the file records. Only chunks stored as deltas read it: each such chunk is applied
    /// to its base bytes and the sum written to its place in `out`, while the chunks stored
    /// whole decode as in a plain file.
    ///
    /// The base's content id is checked only where decoding fails, or where no chunk reads
    /// the base: the raw checksum of every delta chunk already proves what it decodes to, and
    /// hashing the whole base upfront cost a pass over it on every call. A failure against a
    /// base other than the recorded one is reported as such.
    pub fn read_with_base(&self, name: &str, base: &[u8], out: &mut [u8]) -> Result<()> {
        let t = self.tensor(name)?;
        let wrong_base = || {
            let want = self.index.base.as_ref()?;
            (format::tensor_content_id(t.dtype, &t.shape, base) != want.id).then(|| {
                Error::Base(format!(
                    "{}: tensor {:?}: the base given is not the one this delta was made against",
                    self.origin, t.name
                ))
            })
        };
        let base_fits = check_len(t, base, "base");
        if base_fits.is_err() || !t.chunks.iter().any(|c| c.encoding.is_delta()) {
            if let Some(e) = wrong_base() {
                return Err(e);
            }
        }
        base_fits?;
        check_len(t, out, "output buffer")?;
        self.decode_chunks(t, out, Some(base))
            .map_err(|e| wrong_base().unwrap_or(e))
    }

    /// Decode every chunk of `t` into its place in `out`. With `base` (the tensor's base
    /// bytes, held apart from `out`), a chunk stored as a delta applies to its part of it;
    /// without it, `out` already holds the base where deltas need one.
    fn decode_chunks(&self, t: &TensorInfo, out: &mut [u8], base: Option<&[u8]>) -> Result<()> {
        let data = &self.backing.bytes()[self.data_offset as usize..];
        let mut pieces = Vec::with_capacity(t.chunks.len());
        let mut rest = out;
        let mut at = 0usize;
        for (i, c) in t.chunks.iter().enumerate() {
            let len = c.raw_length as usize;
            let (piece, tail) = rest.split_at_mut(len);
            pieces.push((i, c, piece, base.map(|b| &b[at..at + len])));
            rest = tail;
            at += len;
        }
        parallel::try_for_each(pieces, |(i, c, piece, base): Piece<'_, '_>| {
            self.decode_one(data, t, i, c, base, piece)
        })
    }

    /// Decode chunk `i` (`c`) of tensor `t` from the data section `data` into `out`, with
    /// the file, tensor and chunk named in any error. A delta chunk applies to `base` when
    /// given, else to what `out` holds.
    fn decode_one(
        &self,
        data: &[u8],
        t: &TensorInfo,
        i: usize,
        c: &Chunk,
        base: Option<&[u8]>,
        out: &mut [u8],
    ) -> Result<()> {
        let stored = &data[c.offset as usize..(c.offset + c.length) as usize];
        let (sum, raw_sum) = (c.checksum, c.raw_checksum);
        match base {
            Some(base) => decode_chunk_onto(c.encoding, stored, t.dtype, sum, raw_sum, base, out),
            None => decode_chunk(c.encoding, stored, t.dtype, sum, raw_sum, out),
        }
        .map_err(|e| e.context(format!("{}: tensor {:?} chunk {i}", self.origin, t.name)))
    }

    /// Whether decoding tensor `name` is one chunk with no base to read: work for the
    /// calling thread alone, whatever thread count was asked for.
    pub fn decodes_in_one_step(&self, name: &str) -> bool {
        self.tensor(name)
            .is_ok_and(|t| t.chunks.len() <= 1 && !t.chunks.iter().any(|c| c.encoding.is_delta()))
    }

    /// Decode every chunk of every tensor and check both checksums; returns the number of
    /// chunks checked.
    pub fn verify(&self) -> Result<usize> {
        let mut checked = 0;
        let mut scratch = Vec::new();
        for t in &self.tensors {
            if t.chunks.iter().any(|c| c.encoding.is_delta()) {
                self.read_reusing(&t.name, &mut scratch)?;
                checked += t.chunks.len();
                continue;
            }
            let largest = t.chunks.iter().map(|c| c.raw_length).max().unwrap_or(0) as usize;
            let data = &self.backing.bytes()[self.data_offset as usize..];
            let check = |buf: &mut Vec<u8>, (i, c): (usize, &Chunk)| {
                self.decode_one(data, t, i, c, None, &mut buf[..c.raw_length as usize])
            };
            if parallel::calling_thread_only() {
                let mut buf = vec![0u8; largest];
                t.chunks
                    .iter()
                    .enumerate()
                    .try_for_each(|ic| check(&mut buf, ic))?;
            } else {
                t.chunks
                    .par_iter()
                    .enumerate()
                    .map_init(|| vec![0u8; largest], check)
                    .collect::<Result<()>>()?;
            }
            checked += t.chunks.len();
        }
        Ok(checked)
    }
}

/// A chunk, where it decodes to, and its base bytes when they are held apart.
type Piece<'c, 'o> = (usize, &'c Chunk, &'o mut [u8], Option<&'o [u8]>);

/// `buf` must be exactly tensor `t`'s raw size.
fn check_len(t: &TensorInfo, buf: &[u8], what: &str) -> Result<()> {
    if buf.len() as u64 != t.raw_len {
        return Err(Error::Invalid(format!(
            "{what} of {} bytes for tensor {:?} of {} bytes",
            buf.len(),
            t.name,
            t.raw_len
        )));
    }
    Ok(())
}

/// Where a delta's base hint points, relative to the delta's own directory.
fn hint_path(delta: &Path, base: &BaseRef) -> Result<PathBuf> {
    let Some(hint) = &base.path else {
        return Err(Error::Base(format!(
            "{}: the delta names its base only by content id {}; pass the base explicitly",
            delta.display(),
            base.id
        )));
    };
    let hint = Path::new(hint);
    if hint.is_absolute() {
        return Ok(hint.to_path_buf());
    }
    let dir = delta.parent().unwrap_or(Path::new(""));
    Ok(dir.join(hint))
}
