//! Writing a container: chunks are encoded in parallel windows and streamed to disk after a
//! reserved index area, so memory stays bounded by the window, not by the checkpoint.

use crate::atomic::{AtomicFile, SyncAhead};
use crate::chunk::{
    chunk_lengths, encode_chunk, encode_chunk_delta, EncodeOptions, EncodedChunk, Encoding,
};
use crate::dtype::{byte_size, DType};
use crate::error::{Error, Result};
use crate::format::{self, hex64, BaseRef, ChunkEntry, Index, TensorEntry};
use crate::parallel::calling_thread_only;
use crate::reader::Reader;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Seek, SeekFrom, Write};
use std::mem::MaybeUninit;
use std::path::Path;

/// One tensor to store: its raw little-endian bytes and how to interpret them.
#[derive(Debug, Clone)]
pub struct TensorSource<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: &'a [u8],
}

/// What goes into a file besides the tensors.
#[derive(Debug, Clone, Default)]
pub struct FileExtras {
    pub metadata: Option<BTreeMap<String, String>>,
    pub safetensors_header: Option<String>,
}

/// Where the base tensors of a delta come from.
pub enum BaseTensors<'a> {
    /// Decoded from a container (itself possibly a delta with its chain resolved).
    File(&'a Reader),
    /// Held in memory by the caller, who vouches that they are what `reference` names;
    /// by name (see [`BaseTensors::memory`]).
    Memory(HashMap<&'a str, &'a TensorSource<'a>>),
}

impl<'a> BaseTensors<'a> {
    /// Base tensors held in memory, indexed by name once rather than searched per tensor.
    pub fn memory(list: &'a [TensorSource<'a>]) -> Self {
        BaseTensors::Memory(list.iter().map(|t| (t.name.as_str(), t)).collect())
    }
}

/// The checkpoint a new file is written as a delta against.
pub struct DeltaBase<'a> {
    /// What the new file's index records.
    pub reference: BaseId<'a>,
    pub tensors: BaseTensors<'a>,
}

/// What a delta container records as its base.
pub enum BaseId<'a> {
    /// This reference, whatever its chunks turn out to be (a file's base checkpoint).
    Given(BaseRef),
    /// The content id ([`format::tensor_content_id`]) of this base tensor, made only when
    /// some chunk is stored as a delta: a container whose chunks all gain nothing from the
    /// base is stored whole, records no base and decodes without one. The id is a pass over
    /// the whole base, and a reader given a base would make it again to check a base that
    /// no chunk reads.
    TensorIfUsed(&'a TensorSource<'a>),
}

impl BaseId<'_> {
    /// A reference as long in the index as the one recorded: room is reserved before the
    /// chunks are encoded.
    fn widest(&self) -> BaseRef {
        match self {
            BaseId::Given(r) => r.clone(),
            BaseId::TensorIfUsed(_) => BaseRef {
                id: "0".repeat(32),
                path: None,
            },
        }
    }

    /// The reference a finished container with this `index` records.
    fn recorded(&self, index: &Index) -> Option<BaseRef> {
        match self {
            BaseId::Given(r) => Some(r.clone()),
            BaseId::TensorIfUsed(t) => index
                .tensors
                .iter()
                .flat_map(|e| &e.chunks)
                .any(|c| Encoding::parse(&c.encoding).is_some_and(Encoding::is_delta))
                .then(|| BaseRef {
                    id: format::tensor_content_id(t.dtype, &t.shape, t.data),
                    path: None,
                }),
        }
    }
}

impl DeltaBase<'_> {
    /// The base's bytes of the tensor that `t` replaces, when it has the same name, dtype
    /// and shape; `None` for a tensor that is new, reshaped or retyped (stored whole).
    fn bytes_for(&self, t: &TensorSource) -> Result<Option<Cow<'_, [u8]>>> {
        match &self.tensors {
            BaseTensors::File(r) => match r.tensor(&t.name) {
                Ok(b) if b.dtype == t.dtype && b.shape == t.shape => {
                    Ok(Some(Cow::Owned(r.read(&t.name)?)))
                }
                _ => Ok(None),
            },
            BaseTensors::Memory(by_name) => Ok(by_name
                .get(t.name.as_str())
                .filter(|b| b.dtype == t.dtype && b.shape == t.shape)
                .map(|b| Cow::Borrowed(b.data))),
        }
    }
}

/// Called with (raw bytes done, raw bytes total) after each window of chunks; an error
/// aborts the write and leaves nothing behind.
pub type Progress<'p> = &'p mut dyn FnMut(u64, u64) -> Result<()>;

fn check_sources(tensors: &[TensorSource]) -> Result<()> {
    let mut names = HashSet::new();
    for t in tensors {
        if !names.insert(t.name.as_str()) {
            return Err(Error::Invalid(format!(
                "duplicate tensor name {:?}",
                t.name
            )));
        }
        let need = byte_size(t.dtype, &t.shape)?;
        if need != t.data.len() as u64 {
            return Err(Error::Invalid(format!(
                "tensor {:?}: shape {:?} of {} needs {need} bytes, got {}",
                t.name,
                t.shape,
                t.dtype,
                t.data.len()
            )));
        }
    }
    Ok(())
}

/// An I/O error of the sink; `write_file` replaces the placeholder path with the file's.
fn output_io(source: std::io::Error) -> Error {
    Error::io("<output>", source)
}

/// One chunk to encode: (tensor index, chunk index, raw byte range).
type Job = (usize, usize, std::ops::Range<usize>);

/// Where an encoded container goes: its chunks in file order, a window at a time, then its
/// head (header, index and padding up to the first chunk), whose size is known from the
/// start.
trait Sink<'a>: Send {
    /// The chunks will follow a head of `data_offset` bytes.
    fn start(&mut self, data_offset: u64) -> Result<()>;
    fn chunk(&mut self, data: Cow<'a, [u8]>) -> Result<()>;
    /// The end of a window of chunks.
    fn window_done(&mut self) -> Result<()>;
    fn head(&mut self, head: Vec<u8>) -> Result<()>;
}

/// A seekable byte sink: chunks are written after room left for the head, which is written
/// last over that room.
struct Stream<'w, W>(&'w mut W);

impl<'a, W: Write + Seek + Send> Sink<'a> for Stream<'_, W> {
    fn start(&mut self, data_offset: u64) -> Result<()> {
        self.0
            .seek(SeekFrom::Start(data_offset))
            .map_err(output_io)?;
        Ok(())
    }

    fn chunk(&mut self, data: Cow<'a, [u8]>) -> Result<()> {
        self.0.write_all(&data).map_err(output_io)?;
        crate::buffer_pool::recycle_chunk_data(data);
        Ok(())
    }

    fn window_done(&mut self) -> Result<()> {
        self.0.flush().map_err(output_io)
    }

    fn head(&mut self, head: Vec<u8>) -> Result<()> {
        self.0.seek(SeekFrom::Start(0)).map_err(output_io)?;
        self.0.write_all(&head).map_err(output_io)?;
        self.0.flush().map_err(output_io)
    }
}

/// A container held in memory as its head and its encoded chunks (see [`assemble`]).
#[derive(Default)]
pub struct Assembled<'a> {
    head: Vec<u8>,
    chunks: Vec<Cow<'a, [u8]>>,
}

impl Assembled<'_> {
    /// The container's bytes in order: the head, then every chunk.
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.head[..]).chain(self.chunks.iter().map(|c| &c[..]))
    }

    /// The container's size in bytes.
    pub fn len(&self) -> usize {
        self.pieces().map(<[u8]>::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy the container into `out`, which must be exactly [`Assembled::len`] bytes long;
    /// every byte of it is written, so `out` may start uninitialised (a new Python `bytes`).
    pub fn copy_to(&self, out: &mut [MaybeUninit<u8>]) -> Result<()> {
        for (dst, src) in self.placed(out)? {
            put(dst, src);
        }
        Ok(())
    }

    /// [`Assembled::copy_to`], piece by piece on the current rayon pool: writing fresh
    /// memory is mostly page faults, which the cores take in parallel. Inside
    /// [`crate::parallel::on_calling_thread`] it copies in order on the calling thread.
    pub fn copy_to_parallel(&self, out: &mut [MaybeUninit<u8>]) -> Result<()> {
        let Ok(()) = crate::parallel::try_for_each(self.placed(out)?, |(dst, src)| {
            put(dst, src);
            Ok::<(), std::convert::Infallible>(())
        });
        Ok(())
    }

    /// Every piece beside the part of `out` it goes to.
    fn placed<'o>(&'o self, out: &'o mut [MaybeUninit<u8>]) -> Result<Vec<Placed<'o>>> {
        if out.len() != self.len() {
            return Err(Error::Invalid(format!(
                "a {}-byte container does not fit a {}-byte buffer",
                self.len(),
                out.len()
            )));
        }
        let mut rest = out;
        let mut placed = Vec::with_capacity(self.chunks.len() + 1);
        for piece in self.pieces() {
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(piece.len());
            placed.push((dst, piece));
            rest = tail;
        }
        Ok(placed)
    }

    /// The container as one buffer.
    pub fn into_vec(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for piece in self.pieces() {
            out.extend_from_slice(piece);
        }
        out
    }
}

/// Chunk payloads go back to be reused by the next encoder once the container is copied
/// out or dropped.
impl Drop for Assembled<'_> {
    fn drop(&mut self) {
        self.chunks
            .drain(..)
            .for_each(crate::buffer_pool::recycle_chunk_data);
    }
}

/// A piece of a container and the part of the output it is copied to.
type Placed<'o> = (&'o mut [MaybeUninit<u8>], &'o [u8]);

/// Copy `src` into `dst` (the same length); the compiler makes this one memcpy.
fn put(dst: &mut [MaybeUninit<u8>], src: &[u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        d.write(s);
    }
}

impl<'a> Sink<'a> for Assembled<'a> {
    fn start(&mut self, _data_offset: u64) -> Result<()> {
        Ok(())
    }

    fn chunk(&mut self, data: Cow<'a, [u8]>) -> Result<()> {
        self.chunks.push(data);
        Ok(())
    }

    fn window_done(&mut self) -> Result<()> {
        Ok(())
    }

    fn head(&mut self, head: Vec<u8>) -> Result<()> {
        self.head = head;
        Ok(())
    }
}

/// Hand a window's encoded chunks to the sink and record them in the index; returns the
/// raw bytes they cover.
fn write_window<'a, S: Sink<'a>>(
    sink: &mut S,
    index: &mut Index,
    offset: &mut u64,
    jobs: &[Job],
    chunks: Vec<EncodedChunk<'a>>,
) -> Result<u64> {
    let mut raw = 0u64;
    for ((ti, ci, _), chunk) in jobs.iter().zip(chunks) {
        let length = chunk.data.len() as u64;
        if length > chunk.raw_len as u64 {
            // The room reserved for the index counts on this never happening.
            return Err(Error::Invalid(format!(
                "chunk {ci} of tensor {:?} encoded to {length} bytes, over its {} raw bytes",
                index.tensors[*ti].name, chunk.raw_len
            )));
        }
        index.tensors[*ti].chunks[*ci] = ChunkEntry {
            offset: *offset,
            length,
            raw_length: chunk.raw_len as u64,
            encoding: chunk.encoding.name().into(),
            xxh3: hex64(chunk.checksum),
            raw_xxh3: hex64(chunk.raw_checksum),
        };
        sink.chunk(chunk.data)?;
        *offset += length;
        raw += chunk.raw_len as u64;
    }
    sink.window_done()?;
    Ok(raw)
}

/// How many of the first `jobs` it takes for their raw bytes to reach `target` (at least
/// one, at most all).
fn jobs_to_reach(jobs: &[Job], target: usize) -> usize {
    let mut bytes = 0usize;
    let mut n = 0usize;
    while n < jobs.len() && (n == 0 || bytes < target) {
        bytes += jobs[n].2.len();
        n += 1;
    }
    n
}

/// Encode `tensors` into `sink`.
fn write_to<'a, S: Sink<'a>>(
    sink: &mut S,
    tensors: &[TensorSource<'a>],
    extras: &FileExtras,
    opts: &EncodeOptions,
    base: Option<&DeltaBase>,
    progress: Progress,
) -> Result<u64> {
    check_sources(tensors)?;
    let plan: Vec<Vec<usize>> = tensors
        .iter()
        .map(|t| chunk_lengths(t.data.len(), t.dtype, opts.chunk_bytes))
        .collect();

    // Reserve room for the index at its largest possible size. A chunk is never stored
    // longer than its raw bytes (it falls back to raw), so its length and offset take at
    // most the digits of its raw length and of the raw bytes before it.
    let longest_encoding = Encoding::ALL
        .iter()
        .map(|e| e.name())
        .max_by_key(|n| n.len())
        .unwrap_or("float");
    let mut raw_before = 0u64;
    let widest = |len: usize, raw_before: &mut u64| {
        let entry = ChunkEntry {
            offset: *raw_before,
            length: len as u64,
            raw_length: len as u64,
            encoding: longest_encoding.into(),
            xxh3: hex64(u64::MAX),
            raw_xxh3: hex64(u64::MAX),
        };
        *raw_before += len as u64;
        entry
    };
    let mut index = Index {
        tensors: tensors
            .iter()
            .zip(&plan)
            .map(|(t, p)| TensorEntry {
                name: t.name.clone(),
                dtype: t.dtype.name().into(),
                shape: t.shape.clone(),
                chunks: p.iter().map(|&len| widest(len, &mut raw_before)).collect(),
            })
            .collect(),
        metadata: extras.metadata.clone(),
        safetensors_header: extras.safetensors_header.clone(),
        base: base.map(|b| b.reference.widest()),
    };
    let bound = serde_json::to_vec(&index)?.len();
    if bound as u64 > format::MAX_INDEX_LEN {
        return Err(Error::Invalid(format!(
            "the index would take up to {bound} bytes, over the {}-byte cap: use larger chunks",
            format::MAX_INDEX_LEN
        )));
    }
    let data_offset = format::data_offset_for(bound);
    sink.start(data_offset)?;

    // Jobs in file order: (tensor, chunk, raw range).
    let mut jobs: Vec<Job> = Vec::new();
    for (ti, lens) in plan.iter().enumerate() {
        let mut at = 0usize;
        for (ci, &len) in lens.iter().enumerate() {
            jobs.push((ti, ci, at..at + len));
            at += len;
        }
    }
    let total: u64 = tensors.iter().map(|t| t.data.len() as u64).sum();
    // The first window holds about one chunk's worth of bytes per thread (several small
    // tensors, where the file starts with them), so that the disk gets its first bytes,
    // and the background sync its first work, after one chunk's encoding time. The later
    // windows are four chunks per thread, which keeps the threads evenly loaded.
    let threads = rayon::current_num_threads().max(1);
    let (first, rest) = jobs.split_at(jobs_to_reach(
        &jobs,
        threads.saturating_mul(opts.chunk_bytes),
    ));
    let batches = std::iter::once(first)
        .filter(|b| !b.is_empty())
        .chain(rest.chunks(threads * 4));
    let mut done = 0u64;
    let mut offset = 0u64;
    // Base bytes of the tensors the current window touches.
    let mut base_bytes: HashMap<usize, Option<Cow<[u8]>>> = HashMap::new();
    // Each window is encoded while the one before it is written, so that the sink's
    // write calls (page-cache copies, or a slow disk) overlap the encoding.
    let mut pending: Option<(&[Job], Vec<EncodedChunk>)> = None;
    for batch in batches {
        if let Some(b) = base {
            for (ti, _, _) in batch {
                if !base_bytes.contains_key(ti) {
                    let t = &tensors[*ti];
                    let bytes = b
                        .bytes_for(t)
                        .map_err(|e| e.context(format!("base of tensor {:?}", t.name)))?;
                    base_bytes.insert(*ti, bytes);
                }
            }
        }
        let encode_one = |(ti, _, range): &Job| {
            let t = &tensors[*ti];
            let raw = &t.data[range.clone()];
            match base_bytes.get(ti) {
                Some(Some(b)) => encode_chunk_delta(raw, &b[range.clone()], t.dtype, opts),
                _ => encode_chunk(raw, t.dtype, opts),
            }
        };
        let encode = || -> Vec<EncodedChunk> {
            match batch {
                // A lone chunk stays on this thread, which need not be a pool thread (see
                // `write_bytes`): rayon would hand it to its global pool and wait.
                [job] => vec![encode_one(job)],
                _ if calling_thread_only() => batch.iter().map(encode_one).collect(),
                _ => batch.par_iter().map(encode_one).collect(),
            }
        };
        let encoded = match pending.take() {
            None => encode(),
            Some((prev, chunks)) if calling_thread_only() => {
                done += write_window(&mut *sink, &mut index, &mut offset, prev, chunks)?;
                progress(done, total)?;
                encode()
            }
            Some((prev, chunks)) => {
                let (encoded, written) = rayon::join(encode, || {
                    write_window(&mut *sink, &mut index, &mut offset, prev, chunks)
                });
                done += written?;
                progress(done, total)?;
                encoded
            }
        };
        // Tensors that end in this window no longer need their base.
        if let Some((last, ci, _)) = batch.last() {
            let finished = *ci + 1 == plan[*last].len();
            base_bytes.retain(|ti, _| *ti > *last || (*ti == *last && !finished));
        }
        pending = Some((batch, encoded));
    }
    if let Some((prev, chunks)) = pending {
        done += write_window(&mut *sink, &mut index, &mut offset, prev, chunks)?;
        progress(done, total)?;
    }
    if let Some(b) = base {
        index.base = b.reference.recorded(&index);
    }
    let json = serde_json::to_vec(&index)?;
    if format::data_offset_for(json.len()) > data_offset {
        return Err(Error::Invalid(format!(
            "the index takes {} bytes, more than the room reserved for it",
            json.len()
        )));
    }
    let mut head = format::encode_header(&json, data_offset, offset);
    head.extend_from_slice(&json);
    head.resize(data_offset as usize, 0);
    sink.head(head)?;
    Ok(data_offset + offset)
}

/// Write a container file atomically (temp file + fsync + rename).
pub fn write_file(
    path: &Path,
    tensors: &[TensorSource],
    extras: &FileExtras,
    opts: &EncodeOptions,
    base: Option<&DeltaBase>,
    progress: Progress,
) -> Result<u64> {
    let mut out = AtomicFile::create(path)?;
    let tmp = out.tmp_path().to_path_buf();
    let mut buffered = std::io::BufWriter::with_capacity(1 << 20, SyncAhead::new(out.file()));
    let size = write_to(
        &mut Stream(&mut buffered),
        tensors,
        extras,
        opts,
        base,
        progress,
    )
    .map_err(|e| match e {
        Error::Io { source, .. } => Error::io(&tmp, source),
        other => other,
    })?;
    buffered
        .into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?
        .finish()
        .map_err(|e| Error::io(&tmp, e))?;
    out.commit()?;
    Ok(size)
}

/// Build a container in memory, as its head and encoded chunks: a caller can size a buffer
/// of its own (a Python `bytes`) and copy it there once. A container of one chunk is built
/// on the calling thread alone, without rayon.
pub fn assemble<'a>(
    tensors: &[TensorSource<'a>],
    extras: &FileExtras,
    opts: &EncodeOptions,
    base: Option<&DeltaBase>,
) -> Result<Assembled<'a>> {
    let mut out = Assembled::default();
    write_to(&mut out, tensors, extras, opts, base, &mut |_, _| Ok(()))?;
    Ok(out)
}

/// Build a container in memory, as one buffer.
pub fn write_bytes(
    tensors: &[TensorSource],
    extras: &FileExtras,
    opts: &EncodeOptions,
    base: Option<&DeltaBase>,
) -> Result<Vec<u8>> {
    Ok(assemble(tensors, extras, opts, base)?.into_vec())
}

/// Rewrite a container (with its chain resolved) as a full file (`base` None: squash) or as
/// a delta against another base (rebase). Tensors, metadata and the safetensors header are
/// kept; the decoded tensors are held in memory while the new file is written.
pub fn rewrite(
    src: &Reader,
    dst: &Path,
    opts: &EncodeOptions,
    base: Option<&DeltaBase>,
    progress: Progress,
) -> Result<u64> {
    let mut decoded = Vec::with_capacity(src.tensors().len());
    for t in src.tensors() {
        decoded.push(src.read(&t.name)?);
    }
    let sources: Vec<TensorSource> = src
        .tensors()
        .iter()
        .zip(&decoded)
        .map(|(t, data)| TensorSource {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data,
        })
        .collect();
    let extras = FileExtras {
        metadata: src.index().metadata.clone(),
        safetensors_header: src.index().safetensors_header.clone(),
    };
    write_file(dst, &sources, &extras, opts, base, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs_of(lens: &[usize]) -> Vec<Job> {
        let mut at = 0;
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                at += len;
                (i, 0, at - len..at)
            })
            .collect()
    }

    #[test]
    fn the_first_window_gathers_small_tensors_up_to_a_chunk_per_thread() {
        let mib = 1 << 20;
        // Small tensors first: they share the window with the chunks that follow.
        assert_eq!(
            jobs_to_reach(&jobs_of(&[100, 200, mib, mib, mib]), 2 * mib),
            4
        );
        // Whole chunks: one per thread.
        assert_eq!(jobs_to_reach(&jobs_of(&[mib, mib, mib, mib]), 2 * mib), 2);
        // Never empty, never past the end.
        assert_eq!(jobs_to_reach(&jobs_of(&[8 * mib]), 2 * mib), 1);
        assert_eq!(jobs_to_reach(&jobs_of(&[10, 10]), 2 * mib), 2);
        assert_eq!(jobs_to_reach(&[], 2 * mib), 0);
    }

    fn sample_tensors(words: &[Vec<u8>]) -> Vec<TensorSource<'_>> {
        words
            .iter()
            .enumerate()
            .map(|(i, data)| TensorSource {
                name: format!("t{i}"),
                dtype: DType::BF16,
                shape: vec![data.len() as u64 / 2],
                data,
            })
            .collect()
    }

    #[test]
    fn a_container_assembled_in_memory_is_the_file_byte_for_byte() {
        // Trained-weight-like bf16 (coded), a constant tensor, random bytes (stored raw)
        // and an empty tensor; small chunks so that tensors span several windows.
        let mut x = 0x9e37_79b9_u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let weights: Vec<u8> = (0..300_000)
            .flat_map(|_| (0x3c00u16 | (next() & 0x3ff) as u16).to_le_bytes())
            .collect();
        let noise: Vec<u8> = (0..50_000).map(|_| next() as u8).collect();
        let data = vec![weights, vec![7u8; 4096], noise, Vec::new()];
        let tensors = sample_tensors(&data);
        let opts = EncodeOptions {
            chunk_bytes: 64 << 10,
            ..EncodeOptions::default()
        };
        let extras = FileExtras::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.mithril");
        write_file(&path, &tensors, &extras, &opts, None, &mut |_, _| Ok(())).unwrap();
        let file = std::fs::read(&path).unwrap();

        let assembled = assemble(&tensors, &extras, &opts, None).unwrap();
        assert_eq!(assembled.len(), file.len());
        // Buffers filled beforehand, so that every byte can be read back safely; a byte
        // that the copy missed would keep the filler.
        let read = |buf: &[MaybeUninit<u8>]| -> Vec<u8> {
            // SAFETY: every element was initialised when the buffer was made.
            buf.iter().map(|b| unsafe { b.assume_init() }).collect()
        };
        let mut copied = vec![MaybeUninit::new(0xa5u8); assembled.len()];
        assembled.copy_to(&mut copied).unwrap();
        assert!(read(&copied) == file, "copy_to differs from the file");
        let mut copied = vec![MaybeUninit::new(0x5au8); assembled.len()];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| assembled.copy_to_parallel(&mut copied))
            .unwrap();
        assert!(
            read(&copied) == file,
            "copy_to_parallel differs from the file"
        );
        assert!(
            assembled.into_vec() == file,
            "into_vec differs from the file"
        );
        assert!(write_bytes(&tensors, &extras, &opts, None).unwrap() == file);
        // On the calling thread alone the windows are encoded and written in turn, not
        // overlapped; the chunk payloads now come from the buffers the containers above
        // gave back. Neither may change a byte.
        let caller = crate::parallel::on_calling_thread(|| {
            assemble(&tensors, &extras, &opts, None).map(Assembled::into_vec)
        });
        assert!(
            caller.unwrap() == file,
            "the calling thread's container differs"
        );
        let mut streamed = std::io::Cursor::new(Vec::new());
        crate::parallel::on_calling_thread(|| {
            write_to(
                &mut Stream(&mut streamed),
                &tensors,
                &extras,
                &opts,
                None,
                &mut |_, _| Ok(()),
            )
        })
        .unwrap();
        assert!(
            streamed.into_inner() == file,
            "the calling thread's stream differs"
        );
    }

    #[test]
    fn the_room_left_for_the_index_is_close_to_its_size() {
        // Raw-stored noise (length = raw length) and coded weights (length below it).
        let noise = crate::chunk::tests::scrambled_bytes(300_000);
        let weights: Vec<u8> = (0..150_000u32)
            .flat_map(|i| (0x3c00u16 | (i.wrapping_mul(40_503) >> 6 & 0x3ff) as u16).to_le_bytes())
            .collect();
        let data = vec![noise, weights, vec![0u8; 2]];
        let tensors = sample_tensors(&data);
        let opts = EncodeOptions {
            chunk_bytes: 16 << 10,
            ..EncodeOptions::default()
        };
        let bytes = write_bytes(&tensors, &FileExtras::default(), &opts, None).unwrap();
        let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let (index_len, data_offset) = (field(16), field(32));
        let index: Index = serde_json::from_slice(&bytes[48..48 + index_len as usize]).unwrap();
        let chunks: usize = index.tensors.iter().map(|t| t.chunks.len()).sum();
        assert!(chunks > 20, "{chunks} chunks");
        // At most the 64-byte alignment plus, per chunk, the longest encoding name's extra
        // letters and one digit each of offset and length.
        let padding = data_offset - 48 - index_len;
        assert!(
            padding < 64 + 7 * chunks as u64,
            "{padding} bytes of padding"
        );
        let reader = Reader::from_bytes(bytes).unwrap();
        for t in &tensors {
            assert!(reader.read(&t.name).unwrap() == t.data, "tensor {}", t.name);
        }
    }

    #[test]
    fn an_assembled_container_refuses_a_buffer_of_another_size() {
        let data = vec![vec![1u8, 2, 3, 4]];
        let tensors = sample_tensors(&data);
        let assembled = assemble(
            &tensors,
            &FileExtras::default(),
            &EncodeOptions::default(),
            None,
        )
        .unwrap();
        for len in [0, assembled.len() - 1, assembled.len() + 1] {
            let mut buf = vec![MaybeUninit::new(0u8); len];
            let err = assembled.copy_to(&mut buf).unwrap_err();
            assert!(err.to_string().contains("does not fit"), "{err}");
            let err = assembled.copy_to_parallel(&mut buf).unwrap_err();
            assert!(err.to_string().contains("does not fit"), "{err}");
        }
    }
}
