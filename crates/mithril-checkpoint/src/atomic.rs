//! Atomic file replacement: write to a temporary file beside the target, fsync, rename, fsync
//! the directory. A crash at any point leaves either the old file or the new one, never a mix.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Bytes written without a flush after which a background sync is requested anyway.
const SYNC_STEP: u64 = 4 << 20;

/// A writer over a file that makes what it has written durable from a helper thread while
/// the caller goes on producing data. On virtual disks the final fsync otherwise pays for
/// the whole file at once: asking the kernel to start writeback (`sync_file_range`) only
/// moves the data into the host's cache, and the flush of that cache is what takes the
/// time. With a sync requested at every `flush` and every `SYNC_STEP` of data, the disk
/// works while the encoder does, and the commit's fsync finds little left to do.
///
/// A failed background sync is kept and returned by [`SyncAhead::finish`]: Linux reports a
/// writeback error to one sync call only, so a later fsync could otherwise succeed over
/// lost data.
pub struct SyncAhead<'a> {
    file: &'a File,
    since_sync: u64,
    worker: Option<SyncWorker>,
}

struct SyncWorker {
    /// Room for one request: at most one sync runs and one waits behind it (it will cover
    /// everything written by the time it starts), so requests never pile up.
    request: SyncSender<()>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl SyncWorker {
    fn start(file: &File) -> Option<SyncWorker> {
        let file = file.try_clone().ok()?;
        let (request, requests) = sync_channel::<()>(1);
        let handle = std::thread::Builder::new()
            .name("mithril-sync".into())
            .spawn(move || {
                while requests.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            })
            .ok()?;
        Some(SyncWorker { request, handle })
    }

    fn stop(self) -> std::io::Result<()> {
        drop(self.request);
        self.handle
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the background sync thread panicked")))
    }
}

impl<'a> SyncAhead<'a> {
    pub fn new(file: &'a File) -> Self {
        SyncAhead {
            file,
            since_sync: 0,
            worker: None,
        }
    }

    /// Ask the helper thread to sync what has been written so far, starting it if needed.
    fn request_sync(&mut self) {
        if self.since_sync == 0 {
            return;
        }
        if self.worker.is_none() {
            // Without a thread (none could be started) the commit's fsync does all the work.
            self.worker = SyncWorker::start(self.file);
        }
        if let Some(w) = &self.worker {
            // Full: a sync is already waiting to start and will cover these bytes too.
            // Disconnected: the last sync failed, and `finish` reports it.
            let _ = w.request.try_send(());
        }
        self.since_sync = 0;
    }

    /// Wait for the background sync and report its error, if any. The data written since
    /// its start is not yet durable: the caller still fsyncs the file.
    pub fn finish(mut self) -> std::io::Result<()> {
        match self.worker.take() {
            Some(w) => w.stop(),
            None => Ok(()),
        }
    }
}

impl Drop for SyncAhead<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.stop();
        }
    }
}

impl Write for SyncAhead<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.since_sync += n as u64;
        if self.since_sync >= SYNC_STEP {
            self.request_sync();
        }
        Ok(n)
    }

    /// Flushing also starts a background sync of everything written: a writer that flushes
    /// after each batch gets the disk working on that batch at once.
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.request_sync();
        Ok(())
    }
}

impl Seek for SyncAhead<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn sync_ahead_keeps_every_byte_through_background_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let data = pattern(3 * SYNC_STEP as usize + 12345);
        {
            let file = File::create(&path).unwrap();
            let mut w = std::io::BufWriter::with_capacity(1 << 16, SyncAhead::new(&file));
            w.seek(SeekFrom::Start(100)).unwrap();
            w.write_all(&data[100..]).unwrap();
            w.seek(SeekFrom::Start(0)).unwrap();
            w.write_all(&data[..100]).unwrap();
            let Ok(inner) = w.into_inner() else {
                panic!("flush failed")
            };
            inner.finish().unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_failed_background_sync_is_reported_by_finish() {
        // fsync of a pipe fails with EINVAL: a stand-in for a disk that reports a write error.
        let (mut rx, tx) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(tx));
        let drain = std::thread::spawn(move || {
            let mut sink = Vec::new();
            rx.read_to_end(&mut sink).map(|_| sink.len())
        });
        let mut w = SyncAhead::new(&file);
        let piece = pattern(1 << 20);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !w.worker.as_ref().is_some_and(|k| k.handle.is_finished()) {
            assert!(
                std::time::Instant::now() < deadline,
                "no background sync ran"
            );
            w.write_all(&piece).unwrap();
        }
        let err = w.finish().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        drop(file);
        assert!(drain.join().unwrap().unwrap() > SYNC_STEP as usize);
    }
}
