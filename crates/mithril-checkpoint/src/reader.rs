//! Reading a container: the whole layout is validated on open; tensors decode lazily,
//! chunk by chunk in parallel, straight from the memory map.

use crate::chunk::decode_chunk;
use crate::error::{zeroed_buffer, Error, Result};
use crate::format::{self, Index, TensorInfo};
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

enum Backing {
    Map(Mmap),
    Bytes(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Bytes(b) => b,
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

    fn from_backing(backing: Backing, origin: String) -> Result<Reader> {
        let (index, tensors, data_offset) =
            format::parse(backing.bytes()).map_err(|e| e.context(&origin))?;
        let by_name = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Reader {
            backing,
            origin,
            index,
            tensors,
            by_name,
            data_offset,
        })
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
        if out.len() as u64 != t.raw_len {
            return Err(Error::Invalid(format!(
                "buffer of {} bytes for tensor {:?} of {} bytes",
                out.len(),
                t.name,
                t.raw_len
            )));
        }
        let data = &self.backing.bytes()[self.data_offset as usize..];
        let mut pieces = Vec::with_capacity(t.chunks.len());
        let mut rest = out;
        for c in &t.chunks {
            let (piece, tail) = rest.split_at_mut(c.raw_length as usize);
            pieces.push((c, piece));
            rest = tail;
        }
        pieces
            .into_par_iter()
            .enumerate()
            .try_for_each(|(i, (c, piece))| {
                let stored = &data[c.offset as usize..(c.offset + c.length) as usize];
                decode_chunk(
                    c.encoding,
                    stored,
                    t.dtype,
                    c.checksum,
                    c.raw_checksum,
                    piece,
                )
                .map_err(|e| e.context(format!("{}: tensor {:?} chunk {i}", self.origin, t.name)))
            })
    }

    /// Decode every chunk of every tensor and check both checksums; returns the number of
    /// chunks checked.
    pub fn verify(&self) -> Result<usize> {
        let mut checked = 0;
        for t in &self.tensors {
            let largest = t.chunks.iter().map(|c| c.raw_length).max().unwrap_or(0) as usize;
            let data = &self.backing.bytes()[self.data_offset as usize..];
            t.chunks
                .par_iter()
                .enumerate()
                .map_init(
                    || vec![0u8; largest],
                    |buf, (i, c)| {
                        let stored = &data[c.offset as usize..(c.offset + c.length) as usize];
                        decode_chunk(
                            c.encoding,
                            stored,
                            t.dtype,
                            c.checksum,
                            c.raw_checksum,
                            &mut buf[..c.raw_length as usize],
                        )
                        .map_err(|e| {
                            e.context(format!("{}: tensor {:?} chunk {i}", self.origin, t.name))
                        })
                    },
                )
                .collect::<Result<()>>()?;
            checked += t.chunks.len();
        }
        Ok(checked)
    }
}
