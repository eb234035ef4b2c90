//! The on-disk store.
//!
//! ```text
//! <root>/CACHEDIR.TAG                 marks the directory as a cache for backup tools
//! <root>/v1/blobs/ab/cdef…            a blob, named by the blake3 hex of its content
//! <root>/v1/actions/12/3456…          an action: blake3(key) → outputs (name → blob)
//! <root>/v1/tmp/                      temporary files of writes in progress
//! <root>/v1/quarantine/               blobs and actions that failed verification
//! ```
//!
//! An action file is its JSON body, a newline, and the blake3 hex of the body. Reads verify
//! blobs against their names and actions against their checksum and key; anything that fails
//! is quarantined and reported as a miss. Least-recently-used order is the files'
//! modification time, refreshed on every hit.

use crate::error::io;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const LAYOUT: &str = "v1";
const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This file is a cache directory tag created by Mithril.\n\
# For information about cache directory tags see https://bford.info/cachedir/\n";
/// Temporary files older than this belong to dead writers and are removed by `gc`.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// After the cap is exceeded, eviction goes down to this fraction of it.
const LOW_WATER: f64 = 0.9;

/// The result of an action: named outputs (each a blob) and free-form metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub key: String,
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct ActionFile {
    version: u32,
    #[serde(flatten)]
    action: Action,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub blobs: u64,
    pub blob_bytes: u64,
    pub actions: u64,
    pub quarantined: u64,
    pub max_bytes: Option<u64>,
    pub hits: u64,
    pub misses: u64,
    pub corrupt: u64,
    pub evicted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    pub evicted_blobs: u64,
    pub evicted_bytes: u64,
    pub removed_actions: u64,
    pub removed_tmp: u64,
    pub remaining_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub blobs: u64,
    pub actions: u64,
    /// Names of the blobs and actions that failed and were quarantined.
    pub corrupt: Vec<String>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    corrupt: AtomicU64,
    evicted: AtomicU64,
    tmp_seq: AtomicU64,
}

pub struct Store {
    root: PathBuf,
    dir: PathBuf,
    max_bytes: Option<u64>,
    /// Bytes of blobs as this process last knew them (a scan at open, puts since, gc).
    known_bytes: AtomicU64,
    counters: Counters,
}

/// The name a blob with content `data` has: the blake3 hex of it.
pub fn blob_name(data: &[u8]) -> String {
    content_hash(data).to_hex().to_string()
}

/// Blobs from this size on are hashed on all cores: a precompiled header is ~150 MB, and
/// every read verifies it.
const PARALLEL_HASH_BYTES: usize = 1 << 20;

fn content_hash(data: &[u8]) -> blake3::Hash {
    if data.len() < PARALLEL_HASH_BYTES {
        return blake3::hash(data);
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_rayon(data);
    hasher.finalize()
}

/// Whether `s` is a blob name: 64 lowercase hex digits.
pub fn is_blob_name(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn fanout(base: &Path, name: &str) -> PathBuf {
    base.join(&name[..2]).join(&name[2..])
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

fn touch(path: &Path) {
    // Best effort: a read-only store still serves hits, it just ages by write time.
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Store {
    /// Open (creating if needed) the store at `root`, with an optional size cap in bytes.
    pub fn open(root: &Path, max_bytes: Option<u64>) -> Result<Self> {
        if max_bytes == Some(0) {
            return Err(Error::Invalid("max_bytes must be at least 1".into()));
        }
        fs::create_dir_all(root).map_err(io(root))?;
        let dir = root.join(LAYOUT);
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Format(format!(
                "{} is not a directory; {} is not a Mithril cache",
                dir.display(),
                root.display()
            )));
        }
        for sub in ["blobs", "actions", "tmp", "quarantine"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let store = Self {
            root: root.to_path_buf(),
            dir,
            max_bytes,
            known_bytes: AtomicU64::new(0),
            counters: Counters::default(),
        };
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            store.write_atomic(&tag, TAG.as_bytes())?;
        }
        let (_, bytes) = store
            .scan_blobs()?
            .iter()
            .fold((0, 0), |(n, b), e| (n + 1, b + e.1));
        store.known_bytes.store(bytes, Ordering::Relaxed);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    fn blob_path(&self, name: &str) -> PathBuf {
        fanout(&self.dir.join("blobs"), name)
    }

    fn action_path(&self, key: &str) -> PathBuf {
        let h = blake3::hash(key.as_bytes()).to_hex();
        fanout(&self.dir.join("actions"), h.as_str())
    }

    /// Write `data` to `dst` through a temporary file, fsync, rename and directory fsync.
    fn write_atomic(&self, dst: &Path, data: &[u8]) -> Result<()> {
        let parent = dst
            .parent()
            .ok_or_else(|| Error::Invalid(format!("{} has no parent", dst.display())))?;
        fs::create_dir_all(parent).map_err(io(parent))?;
        let seq = self.counters.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}.{}.tmp",
            std::process::id(),
            seq,
            now_nanos()
        ));
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(data).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, dst).map_err(io(dst))?;
            fsync_dir(parent)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn check_name(name: &str) -> Result<()> {
        if is_blob_name(name) {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "{name:?} is not a blob name (64 lowercase hex digits of blake3)"
            )))
        }
    }

    /// Store `data`; returns its name. Storing what is already there only refreshes its age.
    pub fn put(&self, data: &[u8]) -> Result<String> {
        let name = blob_name(data);
        let path = self.blob_path(&name);
        match fs::metadata(&path) {
            Ok(m) if m.len() == data.len() as u64 => touch(&path),
            _ => {
                self.write_atomic(&path, data)?;
                let total = self
                    .known_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed)
                    + data.len() as u64;
                if let Some(cap) = self.max_bytes {
                    if total > cap {
                        self.gc(Some((cap as f64 * LOW_WATER) as u64))?;
                    }
                }
            }
        }
        Ok(name)
    }

    /// The bytes at `path`, or `None` (counted as a miss) when there is no such file.
    fn read_or_miss(&self, path: &Path) -> Result<Option<Vec<u8>>> {
        match fs::read(path) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(io(path)(e)),
        }
    }

    /// The blob `name`, verified; `None` when absent or corrupt (then quarantined).
    pub fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Self::check_name(name)?;
        let path = self.blob_path(name);
        let Some(data) = self.read_or_miss(&path)? else {
            return Ok(None);
        };
        if content_hash(&data).to_hex().as_str() != name {
            self.quarantine(&path, name);
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        touch(&path);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(data))
    }

    pub fn contains(&self, name: &str) -> bool {
        is_blob_name(name) && self.blob_path(name).is_file()
    }

    fn quarantine(&self, path: &Path, name: &str) {
        self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        let dst = self
            .dir
            .join("quarantine")
            .join(format!("{name}.{}", now_nanos()));
        if fs::rename(path, &dst).is_err() {
            let _ = fs::remove_file(path);
        }
    }

    /// Record `action`; every output must already be a blob of this store.
    pub fn put_action(&self, action: &Action) -> Result<()> {
        if action.key.is_empty() {
            return Err(Error::Invalid("an action key must not be empty".into()));
        }
        for (out, name) in &action.outputs {
            Self::check_name(name)?;
            if !self.contains(name) {
                return Err(Error::Invalid(format!(
                    "output {out:?} of action {:?} names blob {name}, which is not in the store",
                    action.key
                )));
            }
        }
        let body = serde_json::to_vec(&ActionFile {
            version: 1,
            action: action.clone(),
        })
        .map_err(|e| Error::Invalid(format!("action {:?}: {e}", action.key)))?;
        let mut file = body.clone();
        file.push(b'\n');
        file.extend_from_slice(blake3::hash(&body).to_hex().as_bytes());
        self.write_atomic(&self.action_path(&action.key), &file)
    }

    fn parse_action(data: &[u8]) -> Option<Action> {
        let split = data.iter().rposition(|&b| b == b'\n')?;
        let (body, sum) = (&data[..split], &data[split + 1..]);
        if blake3::hash(body).to_hex().as_bytes() != sum {
            return None;
        }
        let file: ActionFile = serde_json::from_slice(body).ok()?;
        (file.version == 1 && file.action.outputs.values().all(|n| is_blob_name(n)))
            .then_some(file.action)
    }

    /// The action recorded for `key`, when it is intact and all its blobs are present.
    pub fn get_action(&self, key: &str) -> Result<Option<Action>> {
        let path = self.action_path(key);
        let Some(data) = self.read_or_miss(&path)? else {
            return Ok(None);
        };
        let Some(action) = Self::parse_action(&data).filter(|a| a.key == key) else {
            let name = path
                .file_name()
                .map(|n| format!("action-{}", n.to_string_lossy()))
                .unwrap_or_else(|| "action".into());
            self.quarantine(&path, &name);
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        if !action.outputs.values().all(|n| self.contains(n)) {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        touch(&path);
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(action))
    }

    /// Every blob as (path, size, modification time).
    fn scan_blobs(&self) -> Result<Vec<(PathBuf, u64, SystemTime)>> {
        let mut out = Vec::new();
        visit_files(&self.dir.join("blobs"), &mut |p, m| {
            out.push((p.to_path_buf(), m.len(), m.modified().unwrap_or(UNIX_EPOCH)));
        })?;
        Ok(out)
    }

    pub fn stats(&self) -> Result<Stats> {
        let blobs = self.scan_blobs()?;
        let mut actions = 0;
        visit_files(&self.dir.join("actions"), &mut |_, _| actions += 1)?;
        let mut quarantined = 0;
        visit_files(&self.dir.join("quarantine"), &mut |_, _| quarantined += 1)?;
        let c = &self.counters;
        Ok(Stats {
            blobs: blobs.len() as u64,
            blob_bytes: blobs.iter().map(|b| b.1).sum(),
            actions,
            quarantined,
            max_bytes: self.max_bytes,
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            corrupt: c.corrupt.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
        })
    }

    /// Evict least-recently-used blobs down to `max_bytes` (default: the store's cap), drop
    /// actions whose blobs are gone or that fail their checksum, and remove temporary files of
    /// writers that died.
    pub fn gc(&self, max_bytes: Option<u64>) -> Result<GcReport> {
        let mut report = GcReport::default();
        let mut blobs = self.scan_blobs()?;
        let mut total: u64 = blobs.iter().map(|b| b.1).sum();
        if let Some(cap) = max_bytes.or(self.max_bytes) {
            blobs.sort_by_key(|b| b.2);
            for (path, size, _) in &blobs {
                if total <= cap {
                    break;
                }
                match fs::remove_file(path) {
                    Ok(()) => {
                        total -= size;
                        report.evicted_blobs += 1;
                        report.evicted_bytes += size;
                    }
                    Err(e) if e.kind() == ErrorKind::NotFound => total -= size,
                    Err(e) => return Err(io(path)(e)),
                }
            }
        }
        self.counters
            .evicted
            .fetch_add(report.evicted_blobs, Ordering::Relaxed);
        let mut stale_actions = Vec::new();
        visit_files(&self.dir.join("actions"), &mut |p, _| {
            let keep = fs::read(p)
                .ok()
                .and_then(|d| Self::parse_action(&d))
                .is_some_and(|a| a.outputs.values().all(|n| self.contains(n)));
            if !keep {
                stale_actions.push(p.to_path_buf());
            }
        })?;
        for p in stale_actions {
            if fs::remove_file(&p).is_ok() {
                report.removed_actions += 1;
            }
        }
        let now = SystemTime::now();
        let mut stale_tmp = Vec::new();
        visit_files(&self.dir.join("tmp"), &mut |p, m| {
            let old = m
                .modified()
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE_TMP);
            if old {
                stale_tmp.push(p.to_path_buf());
            }
        })?;
        for p in stale_tmp {
            if fs::remove_file(&p).is_ok() {
                report.removed_tmp += 1;
            }
        }
        report.remaining_bytes = total;
        self.known_bytes.store(total, Ordering::Relaxed);
        Ok(report)
    }

    /// Re-hash every blob and re-check every action; quarantine whatever fails.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for (path, _, _) in self.scan_blobs()? {
            report.blobs += 1;
            let name = blob_name_of(&path);
            let ok = match (&name, fs::read(&path)) {
                (Some(n), Ok(d)) => content_hash(&d).to_hex().as_str() == n,
                (_, Err(e)) if e.kind() == ErrorKind::NotFound => true,
                _ => false,
            };
            if !ok {
                let n = name.unwrap_or_else(|| path.display().to_string());
                self.quarantine(&path, &n.replace('/', "_"));
                report.corrupt.push(n);
            }
        }
        let mut bad_actions = Vec::new();
        visit_files(&self.dir.join("actions"), &mut |p, _| {
            report.actions += 1;
            if fs::read(p)
                .ok()
                .and_then(|d| Self::parse_action(&d))
                .is_none()
            {
                bad_actions.push(p.to_path_buf());
            }
        })?;
        for p in bad_actions {
            let n = format!(
                "action-{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            );
            self.quarantine(&p, &n);
            report.corrupt.push(n);
        }
        Ok(report)
    }
}

/// The blob name a path under `blobs/` stands for (`ab/cdef…` → `abcdef…`).
fn blob_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let dir = path.parent()?.file_name()?.to_str()?;
    let name = format!("{dir}{file}");
    is_blob_name(&name).then_some(name)
}

/// Call `f` on every regular file two levels below `base` (the fan-out layout).
fn visit_files(base: &Path, f: &mut dyn FnMut(&Path, &fs::Metadata)) -> Result<()> {
    let entries = match fs::read_dir(base) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(base)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(base))?;
        let path = entry.path();
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(_) => continue, // removed meanwhile
        };
        if meta.is_dir() {
            visit_files(&path, f)?;
        } else if meta.is_file() {
            f(&path, &meta);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cap: Option<u64>) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), cap).unwrap();
        (dir, s)
    }

    #[test]
    fn layout_and_round_trip() {
        let (dir, s) = store(None);
        assert!(dir.path().join("CACHEDIR.TAG").is_file());
        let name = s.put(b"hello").unwrap();
        assert_eq!(name, blake3::hash(b"hello").to_hex().as_str());
        assert!(dir
            .path()
            .join("v1/blobs")
            .join(&name[..2])
            .join(&name[2..])
            .is_file());
        assert_eq!(s.get(&name).unwrap().unwrap(), b"hello");
        assert_eq!(s.put(b"hello").unwrap(), name);
        let empty = s.put(b"").unwrap();
        assert_eq!(s.get(&empty).unwrap().unwrap(), b"");
        assert!(s.get(&"0".repeat(64)).unwrap().is_none());
        assert!(s.get("not-a-name").is_err());
    }

    #[test]
    fn large_blobs_hashed_on_all_cores_keep_their_blake3_names() {
        let (_dir, s) = store(None);
        let data: Vec<u8> = (0..3 * PARALLEL_HASH_BYTES + 17)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let name = s.put(&data).unwrap();
        assert_eq!(name, blake3::hash(&data).to_hex().as_str());
        assert_eq!(s.get(&name).unwrap().unwrap(), data);
    }

    #[test]
    fn corrupt_blobs_are_misses_and_quarantined() {
        let (dir, s) = store(None);
        let names: Vec<String> = (0..4).map(|i| s.put(&[i as u8; 100]).unwrap()).collect();
        let path = |n: &str| dir.path().join("v1/blobs").join(&n[..2]).join(&n[2..]);
        let mut flipped = fs::read(path(&names[0])).unwrap();
        flipped[7] ^= 1;
        fs::write(path(&names[0]), flipped).unwrap();
        fs::write(path(&names[1]), [1u8; 50]).unwrap(); // truncated
        fs::write(path(&names[2]), b"").unwrap(); // emptied
        for n in &names[..3] {
            assert!(s.get(n).unwrap().is_none());
            assert!(!path(n).exists());
        }
        assert_eq!(s.get(&names[3]).unwrap().unwrap(), vec![3u8; 100]);
        let st = s.stats().unwrap();
        assert_eq!((st.corrupt, st.quarantined, st.blobs), (3, 3, 1));
        // A blob stored under another blob's name is caught too.
        fs::write(path(&names[3]), [9u8; 100]).unwrap();
        let v = s.verify().unwrap();
        assert_eq!(v.corrupt, vec![names[3].clone()]);
    }

    #[test]
    fn actions_round_trip_and_refuse_damage() {
        let (dir, s) = store(None);
        let blob = s.put(b"kernel.so bytes").unwrap();
        let a = Action {
            key: "graph-key".into(),
            outputs: BTreeMap::from([("kernel.so".into(), blob.clone())]),
            meta: BTreeMap::from([("torch".into(), "2.15".into())]),
        };
        s.put_action(&a).unwrap();
        assert_eq!(s.get_action("graph-key").unwrap(), Some(a.clone()));
        assert!(s.get_action("other").unwrap().is_none());
        let missing = Action {
            outputs: BTreeMap::from([("x".into(), "f".repeat(64))]),
            ..a.clone()
        };
        assert!(s.put_action(&missing).is_err());
        // Damage the action file: a miss, quarantined.
        let path = s.action_path("graph-key");
        let mut d = fs::read(&path).unwrap();
        d[3] ^= 0x20;
        fs::write(&path, d).unwrap();
        assert!(s.get_action("graph-key").unwrap().is_none());
        assert!(!path.exists());
        // An action whose blob went away is a miss, and gc drops it.
        s.put_action(&a).unwrap();
        fs::remove_file(
            dir.path()
                .join("v1/blobs")
                .join(&blob[..2])
                .join(&blob[2..]),
        )
        .unwrap();
        assert!(s.get_action("graph-key").unwrap().is_none());
        assert_eq!(s.gc(None).unwrap().removed_actions, 1);
    }

    #[test]
    fn cap_evicts_least_recently_used() {
        let (_dir, s) = store(Some(1000));
        let old = s.put(&[1u8; 400]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mid = s.put(&[2u8; 400]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.get(&old).unwrap().is_some()); // now the most recent
        std::thread::sleep(Duration::from_millis(20));
        let new = s.put(&[3u8; 400]).unwrap(); // 1200 > 1000: evict down to 900
        assert!(s.contains(&old) && s.contains(&new) && !s.contains(&mid));
        assert!(s.stats().unwrap().blob_bytes <= 1000);
        assert!(Store::open(_dir.path(), Some(0)).is_err());
    }
}
