//! Helpers shared by the durable-store tests.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idemlog::fs::{FileHandle, FileSystem, LockGuard, OsFileSystem};
use idemlog::{Config, Durability, Fingerprint, IdempotencyKey, ManualClock, Timestamp};

pub const T0: u64 = 1_700_000_000_000;

pub fn clock() -> ManualClock {
    ManualClock::new(Timestamp::from_millis(T0))
}

pub fn config(clock: &ManualClock, durability: Durability) -> Config {
    Config::builder()
        .clock(clock.clone())
        .durability(durability)
        .maintenance_interval(None)
        .ttl(Duration::from_secs(3600))
        .lease(Duration::from_secs(60))
        .segment_size(64 << 10)
        .build()
}

pub fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::new("tenant", k).unwrap()
}

pub fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_bytes(body.as_bytes())
}

/// The segment files of `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// A frame as the test sees it, parsed by the layout in docs/FORMAT.md.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub offset: usize,
    pub len: usize,
    pub kind: u8,
    /// For records: 0 in flight, 1 completed.
    pub state: u8,
}

/// Walks the frames of a segment file's bytes from the header on, until
/// the first zero length.
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut at = 32;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        out.push(Frame {
            offset: at,
            len: len + 12,
            kind: bytes[at + 8],
            state: bytes[at + 9],
        });
        at += len + 12;
    }
    out
}

/// The OS file system, counting syncs and able to fail them on demand.
#[derive(Debug, Default)]
pub struct CountingFs {
    pub data_syncs: AtomicU64,
    pub dir_syncs: AtomicU64,
    pub fail_syncs: AtomicBool,
    /// Writes of at least a block of nothing but zeros: the prefill's.
    pub zero_writes: AtomicU64,
    /// Fail those writes.
    pub fail_zero_writes: AtomicBool,
    /// While closed, data syncs wait (up to 10 s) for `open_gate`.
    pub gate: SyncGate,
    /// Fail reads of at most 1 KiB after a file's first byte: recovery's
    /// reads of single old frames (its scan reads whole windows).
    pub fail_frame_reads: AtomicBool,
    /// Reads failed so.
    pub failed_frame_reads: AtomicU64,
    /// Removals and truncations (of files numbered as they were created
    /// or opened) and directory syncs, in order.
    pub file_events: std::sync::Mutex<Vec<FileEvent>>,
    /// Fail truncations.
    pub fail_truncates: AtomicBool,
    /// Truncations failed so.
    pub failed_truncates: AtomicU64,
    /// The number of the file at each path, kept across renames.
    file_numbers: std::sync::Mutex<std::collections::HashMap<PathBuf, u64>>,
    next_file: AtomicU64,
}

/// A removal or a truncation of the file with this number, or a directory
/// sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEvent {
    Removed { file: u64 },
    DirSynced,
    Truncated { file: u64, len: u64 },
}

impl CountingFs {
    /// The number of the file at `path`, given one if it has none yet
    /// (numbers, unlike inode numbers, are never reused).
    fn number(&self, path: &Path) -> u64 {
        let mut numbers = self.file_numbers.lock().unwrap();
        *numbers
            .entry(path.to_path_buf())
            .or_insert_with(|| self.next_file.fetch_add(1, Ordering::SeqCst))
    }
}

/// Holds fdatasync calls back until the test lets them through.
#[derive(Debug, Default)]
pub struct SyncGate {
    closed: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// Syncs that found the gate closed.
    pub held: AtomicU64,
    /// Syncs that gave up waiting: the test never opened the gate.
    pub timed_out: AtomicBool,
}

impl SyncGate {
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }
    fn pass(&self) {
        let closed = self.closed.lock().unwrap();
        if *closed {
            self.held.fetch_add(1, Ordering::SeqCst);
        }
        let (_guard, timeout) = self
            .opened
            .wait_timeout_while(closed, std::time::Duration::from_secs(10), |c| *c)
            .unwrap();
        if timeout.timed_out() {
            self.timed_out.store(true, Ordering::SeqCst);
        }
    }
}

#[derive(Debug)]
struct CountingFile {
    inner: Box<dyn FileHandle>,
    fs: Arc<CountingFs>,
    number: u64,
}

impl FileHandle for CountingFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset > 0 && buf.len() <= 1024 && self.fs.fail_frame_reads.load(Ordering::SeqCst) {
            self.fs.failed_frame_reads.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other("injected failure reading a frame"));
        }
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.len() >= 4096 && buf.iter().all(|&b| b == 0) {
            if self.fs.fail_zero_writes.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected failure writing zeros"));
            }
            self.fs.zero_writes.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.fs.fail_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.fs.gate.pass();
        self.fs.data_syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        if self.fs.fail_truncates.load(Ordering::SeqCst) {
            self.fs.failed_truncates.fetch_add(1, Ordering::SeqCst);
            return Err(io::Error::other("injected truncation failure"));
        }
        self.inner.truncate(len)?;
        let event = FileEvent::Truncated {
            file: self.number,
            len,
        };
        self.fs.file_events.lock().unwrap().push(event);
        Ok(())
    }
}

/// Wraps `CountingFs` in an `Arc` the store can own while the test keeps
/// a handle.
#[derive(Debug, Clone)]
pub struct SharedFs(pub Arc<CountingFs>);

impl FileSystem for SharedFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsFileSystem.create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        OsFileSystem.is_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        Ok(Box::new(CountingFile {
            inner: OsFileSystem.open(path)?,
            fs: Arc::clone(&self.0),
            number: self.0.number(path),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let inner = OsFileSystem.create(path)?;
        // A new file: whatever had this path before was removed.
        self.0.file_numbers.lock().unwrap().remove(path);
        Ok(Box::new(CountingFile {
            inner,
            fs: Arc::clone(&self.0),
            number: self.0.number(path),
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        OsFileSystem.list(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsFileSystem.rename(from, to)?;
        let mut numbers = self.0.file_numbers.lock().unwrap();
        if let Some(number) = numbers.remove(from) {
            numbers.insert(to.to_path_buf(), number);
        }
        Ok(())
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        OsFileSystem.remove(path)?;
        let file = self.0.number(path);
        self.0.file_numbers.lock().unwrap().remove(path);
        let event = FileEvent::Removed { file };
        self.0.file_events.lock().unwrap().push(event);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.0.dir_syncs.fetch_add(1, Ordering::SeqCst);
        OsFileSystem.sync_dir(dir)?;
        self.0
            .file_events
            .lock()
            .unwrap()
            .push(FileEvent::DirSynced);
        Ok(())
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        OsFileSystem.lock(path)
    }
}
