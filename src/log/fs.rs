//! The file I/O the durable store does, behind a small trait.
//!
//! [`Store::open`](crate::Store::open) uses [`OsFileSystem`]. Tests and the
//! reliability harness pass their own [`FileSystem`] to
//! [`Store::open_with_fs`](crate::Store::open_with_fs) to inject faults or to
//! keep "written" and "synced" bytes apart and simulate power loss.
//!
//! The store needs only these operations: positional reads and writes,
//! `fdatasync`, preallocation, truncation, a directory listing, rename,
//! remove, a directory fsync and an exclusive lock file.

use std::any::Any;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// An open data file.
pub trait FileHandle: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `offset`; a read past the end is
    /// an error of kind [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes the written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Allocates space so the file is at least `len` bytes long, reading as
    /// zeros past the old end, so later writes below `len` need no size
    /// change to be made durable.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Cuts the file to `len` bytes. The store calls it only on a segment
    /// file it has already removed from the directory, to give the file's
    /// blocks back a step at a time rather than all at once when it is
    /// closed. The default cannot cut: such a file is freed whole when it
    /// closes, and the maintenance pass counts it in
    /// [`MaintenanceReport::segments_freed_whole`](crate::MaintenanceReport::segments_freed_whole).
    fn truncate(&self, len: u64) -> io::Result<()> {
        let _ = len;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this file handle cannot truncate",
        ))
    }
}

/// What a [`FileSystem::lock`] holds; the lock is released when it is
/// dropped.
pub type LockGuard = Box<dyn Any + Send + Sync>;

/// The directory operations of the durable store.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `dir` and its parents if they are missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Whether `path` exists and is a directory; an error of kind
    /// [`io::ErrorKind::NotFound`] if it does not exist.
    fn is_dir(&self, path: &Path) -> io::Result<bool>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;
    /// Creates a new file for reading and writing; fails if it exists.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>>;
    /// The names of the entries of `dir` (not full paths).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable (fsync of the
    /// directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `path` (created if missing) without
    /// waiting; fails with [`io::ErrorKind::WouldBlock`] if any holder, in
    /// this process or another, has it.
    fn lock(&self, path: &Path) -> io::Result<LockGuard>;
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsFileSystem;

#[derive(Debug)]
struct OsFile(File);

impl FileHandle for OsFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.size()? >= len {
            return Ok(());
        }
        match rustix::fs::fallocate(&self.0, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate (tmpfs on old kernels, some
            // network file systems): write zeros instead.
            Err(rustix::io::Errno::OPNOTSUPP) => zero_fill(&self.0, len),
            Err(e) => Err(e.into()),
        }
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

fn zero_fill(file: &File, len: u64) -> io::Result<()> {
    let start = file.metadata()?.len();
    let zeros = vec![0u8; 1 << 16];
    let mut at = start;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl FileSystem for OsFileSystem {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        Ok(std::fs::metadata(path)?.is_dir())
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let f = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(OsFile(f)))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(OsFile(f)))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Box::new(f)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the lock is held by another open store",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}
