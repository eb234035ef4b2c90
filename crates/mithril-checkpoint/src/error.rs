//! The error type of the checkpoint crate.

use std::path::PathBuf;

/// Everything that can go wrong while encoding, decoding, reading or writing a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Stored bytes fail a checksum or decode to something impossible.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The file or index does not follow the container format.
    #[error("format error: {0}")]
    Format(String),
    /// The caller asked for something that cannot be done (bad dtype, shape, option).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A named tensor is not in the file.
    #[error("no tensor named {0:?} in the file")]
    MissingTensor(String),
    /// The base checkpoint a delta needs is missing, altered, mismatched or in a cycle.
    #[error("base checkpoint: {0}")]
    Base(String),
    /// A buffer of the requested size cannot be allocated.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The progress callback asked to stop (for example on Ctrl-C).
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// An operating-system error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Prefix the message with where the problem was found (file, tensor, chunk).
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        match self {
            Error::Corrupt(m) => Error::Corrupt(format!("{prefix}: {m}")),
            Error::Format(m) => Error::Format(format!("{prefix}: {m}")),
            Error::Invalid(m) => Error::Invalid(format!("{prefix}: {m}")),
            Error::Base(m) => Error::Base(format!("{prefix}: {m}")),
            Error::OutOfMemory(m) => Error::OutOfMemory(format!("{prefix}: {m}")),
            other => other,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}

pub(crate) fn format_err(msg: impl Into<String>) -> Error {
    Error::Format(msg.into())
}

/// A zero-filled buffer of `n` bytes, or an error instead of aborting when the allocator
/// refuses. Zeroed pages come lazily from the OS, so a large buffer costs nothing until
/// it is written.
pub fn zeroed_buffer(n: usize) -> Result<Vec<u8>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(n)
        .map_err(|_| Error::OutOfMemory(format!("{n} bytes is not a valid allocation")))?;
    // SAFETY: the layout has a non-zero size.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(Error::OutOfMemory(format!("cannot allocate {n} bytes")));
    }
    advise_huge_pages(ptr, n);
    // SAFETY: `ptr` comes from the global allocator with the layout of `n` u8s, all of
    // which are initialised (zeroed); length and capacity are both `n`.
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// Buffers at least this large ask for transparent huge pages.
const HUGE_PAGES_FROM: usize = 8 << 20;

/// Ask the kernel to back the 2 MiB-aligned inside of a large, not yet touched buffer with
/// huge pages. A fresh tensor buffer otherwise takes one page fault per 4 KiB while it is
/// decoded into, which costs about a third of the decode time of a large fp32 tensor. Only
/// advice: where transparent huge pages are off, nothing changes. Also used on buffers a
/// caller hands in to be decoded into (a fresh `torch.empty` tensor, say).
pub fn advise_huge_pages(ptr: *mut u8, n: usize) {
    #[cfg(target_os = "linux")]
    if n >= HUGE_PAGES_FROM {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + n) / HUGE * HUGE;
        if end > start {
            // SAFETY: the range lies inside the allocation of `n` bytes at `ptr`;
            // MADV_HUGEPAGE only changes how the kernel backs it, never its contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, n, HUGE_PAGES_FROM);
}
