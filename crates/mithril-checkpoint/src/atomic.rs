//! Atomic file replacement: write to a temporary file beside the target, fsync, rename, fsync
//! the directory. A crash at any point leaves either the old file or the new one, never a mix.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes written between two writeback requests.
const WRITEBACK_STEP: u64 = 16 << 20;

/// A writer over a file that asks the kernel to start writing each `WRITEBACK_STEP` of data
/// to disk as soon as it is written. Without it the kernel keeps up to a tenth of memory
/// dirty before writing anything, and the final fsync then waits for all of it; with it the
/// disk works while the encoder does, and the fsync finds little left to do.
pub struct EagerWriteback<'a> {
    file: &'a File,
    pos: u64,
    pending_from: u64,
}

impl<'a> EagerWriteback<'a> {
    pub fn new(file: &'a File) -> Self {
        EagerWriteback {
            file,
            pos: 0,
            pending_from: 0,
        }
    }

    fn start_writeback(&mut self) {
        if self.pos > self.pending_from {
            start_writeback(self.file, self.pending_from, self.pos - self.pending_from);
        }
        self.pending_from = self.pos;
    }
}

impl Write for EagerWriteback<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        if self.pos >= self.pending_from + WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for EagerWriteback<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.start_writeback();
        self.pos = self.file.seek(to)?;
        self.pending_from = self.pos;
        Ok(self.pos)
    }
}

/// Start (not wait for) writeback of a byte range; a hint, so failures are ignored: the
/// final fsync reports any real error.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for
    // as long as `file` is borrowed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

pub struct AtomicFile {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::Invalid(format!("{} is not a file path", target.display())))?
            .to_string_lossy()
            .into_owned();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = dir.join(format!(".{name}.{}.{stamp:08x}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(AtomicFile {
            file,
            tmp,
            target: target.to_path_buf(),
            committed: false,
        })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// fsync the data, move it over the target and fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
