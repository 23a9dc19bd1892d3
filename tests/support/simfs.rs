//! `SimFs`: an in-memory file system for the durable store that keeps what
//! was written apart from what was synced, so tests can cut the power at any
//! step and look at every disk the crash could leave behind, and can make the
//! n-th I/O fail.
//!
//! The disk model:
//! * A file's bytes are durable once `sync_data` ran on it after they were
//!   written. Unsynced writes are remembered in order; at a crash each of
//!   them, block by block (512 B or 4 KiB, aligned on the file), is kept,
//!   dropped, or replaced by garbage. Writes never damage bytes outside their
//!   own range (the "powersafe overwrite" property of current disks: a torn
//!   sector holds old or new bytes of that write, never garbage in bytes it
//!   did not write). `allocate` is an unsynced write of zeros.
//! * Creations, renames and removals are durable once `sync_dir` ran after
//!   them. At a crash a prefix of the unsynced ones survives (file systems
//!   journal namespace changes in order).
//! * Directories themselves (`create_dir_all`) are durable at once.
//!
//! Crash states are taken as [`Snapshot`]s (durable state + what is still
//! pending) at chosen steps; [`Snapshot::damage`] turns one into a disk image
//! with a chosen [`Damage`], and [`SimFs::from_image`] boots it.

#![allow(dead_code)] // each test binary uses a part of this module

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use idemlog::fs::{FileHandle, FileSystem, LockGuard};
use parking_lot::Mutex;

use super::rng::Rng;

type Ino = u64;
/// Unsynced writes of one file, in order: (offset, bytes).
type Pending = Vec<(u64, Vec<u8>)>;

/// One file's contents: what is durable, what reads see, and the unsynced
/// writes between them.
#[derive(Debug, Clone, Default)]
struct Inode {
    synced: Vec<u8>,
    data: Vec<u8>,
    pending: Pending,
}

#[derive(Debug, Clone)]
enum NsOp {
    Link(PathBuf, Ino),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

/// What kind of step a snapshot was taken before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Write,
    Allocate,
    Sync,
    Create,
    Rename,
    Remove,
    SyncDir,
}

/// Which steps take snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAt {
    Never,
    /// Before every `sync_data` and `sync_dir`.
    Syncs,
    /// Before every step that changes the disk.
    EveryStep,
}

/// An injected I/O failure.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Fail the n-th counted operation (1-based).
    pub nth: u64,
    /// `libc` errno: 5 (EIO) or 28 (ENOSPC).
    pub errno: i32,
    /// Keep failing every counted operation after the first failure.
    pub persistent: bool,
    /// Count only `sync_data` and `sync_dir` calls.
    pub syncs_only: bool,
}

#[derive(Debug, Default)]
struct State {
    dirs: BTreeSet<PathBuf>,
    names: BTreeMap<PathBuf, Ino>,
    durable_names: BTreeMap<PathBuf, Ino>,
    pending_ns: Vec<NsOp>,
    inodes: BTreeMap<Ino, Inode>,
    next_ino: Ino,
    locked: BTreeSet<PathBuf>,
    snapshot_at: Option<SnapshotAt>,
    snapshots: Vec<Snapshot>,
    fault: Option<Fault>,
    counted: u64,
    failing: bool,
    faults_hit: u64,
    first_fault: Option<Step>,
    fail_next: Option<(Step, i32)>,
    /// After `freeze`, every operation fails: the process is "dead".
    frozen: bool,
}

/// The simulated file system; clones share it.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    /// A value the test sets (for example the number of acknowledged
    /// operations) that each snapshot records.
    pub mark: Arc<AtomicU64>,
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimFs")
    }
}

/// A crash state: the durable disk plus everything still pending.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub step: Step,
    /// `SimFs::mark` when the snapshot was taken.
    pub mark: u64,
    dirs: BTreeSet<PathBuf>,
    durable_names: BTreeMap<PathBuf, Ino>,
    pending_ns: Vec<NsOp>,
    inodes: BTreeMap<Ino, (Vec<u8>, Pending)>,
}

/// How a crash treats what was not synced.
#[derive(Debug, Clone, Copy)]
pub struct Damage {
    /// Block size for keep/drop/garbage choices: 512 or 4096.
    pub block: u64,
    /// Out of 100: chance a pending block is kept.
    pub keep: u64,
    /// Out of 100: chance a pending block becomes garbage (else dropped).
    pub garbage: u64,
    /// How many unsynced namespace changes survive; `None`: a random prefix.
    pub namespace_prefix: Option<usize>,
    pub seed: u64,
}

impl Damage {
    /// `n` different damage patterns for one crash point (n ≥ 4 gives the
    /// extremes: everything kept, everything lost, garbage everywhere at
    /// either block size).
    pub fn variants(n: usize, seed: u64) -> Vec<Damage> {
        let mut out = vec![
            Damage {
                block: 512,
                keep: 100,
                garbage: 0,
                namespace_prefix: Some(usize::MAX),
                seed,
            },
            Damage {
                block: 512,
                keep: 0,
                garbage: 0,
                namespace_prefix: Some(0),
                seed,
            },
            Damage {
                block: 512,
                keep: 0,
                garbage: 100,
                namespace_prefix: Some(usize::MAX),
                seed,
            },
            Damage {
                block: 4096,
                keep: 0,
                garbage: 100,
                namespace_prefix: None,
                seed,
            },
        ];
        let mut rng = Rng::new(seed);
        while out.len() < n {
            let block = if rng.chance(1, 2) { 512 } else { 4096 };
            let keep = rng.below(101);
            let garbage = rng.below(101 - keep);
            out.push(Damage {
                block,
                keep,
                garbage,
                namespace_prefix: None,
                seed: rng.next_u64(),
            });
        }
        out.truncate(n);
        out
    }
}

impl Snapshot {
    /// The disk image this crash leaves under `damage`.
    pub fn damage(&self, damage: &Damage) -> Image {
        let mut rng = Rng::new(damage.seed);
        let mut names = self.durable_names.clone();
        let keep_ns = match damage.namespace_prefix {
            Some(n) => n.min(self.pending_ns.len()),
            None => rng.below(self.pending_ns.len() as u64 + 1) as usize,
        };
        for op in &self.pending_ns[..keep_ns] {
            apply_ns(&mut names, op);
        }
        let mut files = BTreeMap::new();
        for (path, ino) in &names {
            let Some((synced, pending)) = self.inodes.get(ino) else {
                continue;
            };
            let mut bytes = synced.clone();
            for (offset, data) in pending {
                let end = offset + data.len() as u64;
                let mut at = *offset;
                while at < end {
                    let block_end = ((at / damage.block) + 1) * damage.block;
                    let piece_end = block_end.min(end);
                    let piece = &data[(at - offset) as usize..(piece_end - offset) as usize];
                    let roll = rng.below(100);
                    if roll < damage.keep {
                        put(&mut bytes, at, piece);
                    } else if roll < damage.keep + damage.garbage {
                        let mut junk = vec![0u8; piece.len()];
                        rng.fill(&mut junk);
                        put(&mut bytes, at, &junk);
                    }
                    at = piece_end;
                }
            }
            files.insert(path.clone(), bytes);
        }
        Image {
            dirs: self.dirs.clone(),
            files,
        }
    }

    /// How many unsynced writes and namespace changes this crash can lose.
    pub fn pending(&self) -> (usize, usize) {
        (
            self.inodes.values().map(|(_, p)| p.len()).sum(),
            self.pending_ns.len(),
        )
    }
}

/// A whole disk after a crash: directories and file contents by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub dirs: BTreeSet<PathBuf>,
    pub files: BTreeMap<PathBuf, Vec<u8>>,
}

fn put(bytes: &mut Vec<u8>, at: u64, piece: &[u8]) {
    let at = at as usize;
    if bytes.len() < at + piece.len() {
        bytes.resize(at + piece.len(), 0);
    }
    bytes[at..at + piece.len()].copy_from_slice(piece);
}

fn apply_ns(names: &mut BTreeMap<PathBuf, Ino>, op: &NsOp) {
    match op {
        NsOp::Link(path, ino) => {
            names.insert(path.clone(), *ino);
        }
        NsOp::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
        NsOp::Remove(path) => {
            names.remove(path);
        }
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl SimFs {
    pub fn new() -> Self {
        SimFs::default()
    }

    /// A file system holding `image`, all of it durable.
    pub fn from_image(image: &Image) -> Self {
        let fs = SimFs::new();
        {
            let mut s = fs.state.lock();
            s.dirs = image.dirs.clone();
            for (path, bytes) in &image.files {
                let ino = s.next_ino;
                s.next_ino += 1;
                s.inodes.insert(
                    ino,
                    Inode {
                        synced: bytes.clone(),
                        data: bytes.clone(),
                        pending: Vec::new(),
                    },
                );
                s.names.insert(path.clone(), ino);
                s.durable_names.insert(path.clone(), ino);
            }
        }
        fs
    }

    /// Starts taking snapshots before the given steps.
    pub fn snapshot_at(&self, at: SnapshotAt) {
        self.state.lock().snapshot_at = Some(at);
    }

    /// The snapshots taken so far (and forgets them).
    pub fn take_snapshots(&self) -> Vec<Snapshot> {
        std::mem::take(&mut self.state.lock().snapshots)
    }

    /// The crash state right now.
    pub fn snapshot_now(&self, step: Step) -> Snapshot {
        let s = self.state.lock();
        snapshot(&s, step, self.mark.load(Ordering::SeqCst))
    }

    /// Injects a failure.
    pub fn set_fault(&self, fault: Option<Fault>) {
        let mut s = self.state.lock();
        s.fault = fault;
        s.counted = 0;
        s.failing = false;
        s.faults_hit = 0;
        s.first_fault = None;
    }

    /// Fails the next operation of kind `step` once with `errno`.
    pub fn fail_next(&self, step: Step, errno: i32) {
        self.state.lock().fail_next = Some((step, errno));
    }

    /// The step the first injected failure hit.
    pub fn first_fault(&self) -> Option<Step> {
        self.state.lock().first_fault
    }

    /// How many operations failed on purpose so far.
    pub fn faults_hit(&self) -> u64 {
        self.state.lock().faults_hit
    }

    /// How many operations the fault counter has seen.
    pub fn counted(&self) -> u64 {
        self.state.lock().counted
    }

    /// Kills the "process": every later operation fails with EIO and
    /// changes nothing, so a store still running on this file system can
    /// make no more progress.
    pub fn freeze(&self) {
        self.state.lock().frozen = true;
    }

    /// What reads see now (unsynced data included), for inspection.
    pub fn current_image(&self) -> Image {
        let s = self.state.lock();
        Image {
            dirs: s.dirs.clone(),
            files: s
                .names
                .iter()
                .map(|(p, ino)| (p.clone(), s.inodes[ino].data.clone()))
                .collect(),
        }
    }

    /// The durable disk only: a power loss now with every pending change lost.
    pub fn durable_image(&self) -> Image {
        self.snapshot_now(Step::Sync).damage(&Damage {
            block: 512,
            keep: 0,
            garbage: 0,
            namespace_prefix: Some(0),
            seed: 0,
        })
    }

    /// Runs the bookkeeping every operation shares: the freeze, the fault
    /// counter and the snapshot trigger. `step` is `None` for reads.
    fn enter(&self, s: &mut State, step: Option<Step>) -> io::Result<()> {
        if s.frozen {
            return Err(errno(5));
        }
        if let (Some(step), Some((target, e))) = (step, s.fail_next) {
            if step == target {
                s.fail_next = None;
                s.faults_hit += 1;
                s.first_fault.get_or_insert(step);
                return Err(errno(e));
            }
        }
        if let Some(f) = s.fault {
            let counts = match step {
                Some(Step::Sync | Step::SyncDir) => true,
                Some(_) => !f.syncs_only,
                None => false,
            };
            if counts {
                s.counted += 1;
                if s.counted == f.nth || (s.failing && f.persistent) {
                    s.failing = true;
                    s.faults_hit += 1;
                    if s.first_fault.is_none() {
                        s.first_fault = step;
                    }
                    return Err(errno(f.errno));
                }
            }
        }
        if let (Some(step), Some(at)) = (step, s.snapshot_at) {
            let take = match at {
                SnapshotAt::Never => false,
                SnapshotAt::Syncs => matches!(step, Step::Sync | Step::SyncDir),
                SnapshotAt::EveryStep => true,
            };
            if take {
                let snap = snapshot(s, step, self.mark.load(Ordering::SeqCst));
                s.snapshots.push(snap);
            }
        }
        Ok(())
    }
}

fn snapshot(s: &State, step: Step, mark: u64) -> Snapshot {
    // Only inodes reachable from a durable or pending name can survive.
    let mut live: BTreeSet<Ino> = s.durable_names.values().copied().collect();
    for op in &s.pending_ns {
        if let NsOp::Link(_, ino) = op {
            live.insert(*ino);
        }
    }
    Snapshot {
        step,
        mark,
        dirs: s.dirs.clone(),
        durable_names: s.durable_names.clone(),
        pending_ns: s.pending_ns.clone(),
        inodes: live
            .into_iter()
            .filter_map(|ino| {
                s.inodes
                    .get(&ino)
                    .map(|i| (ino, (i.synced.clone(), i.pending.clone())))
            })
            .collect(),
    }
}

fn parent_exists(s: &State, path: &Path) -> bool {
    path.parent().is_some_and(|p| s.dirs.contains(p))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

struct SimFile {
    fs: SimFs,
    ino: Ino,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimFile({})", self.ino)
    }
}

impl FileHandle for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        self.fs.enter(&mut s, None)?;
        let data = &s.inodes[&self.ino].data;
        let end = offset.saturating_add(buf.len() as u64);
        if end > data.len() as u64 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        buf.copy_from_slice(&data[offset as usize..end as usize]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        self.fs.enter(&mut s, Some(Step::Write))?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        put(&mut inode.data, offset, buf);
        inode.pending.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        self.fs.enter(&mut s, Some(Step::Sync))?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        inode.synced = inode.data.clone();
        inode.pending.clear();
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        let mut s = self.fs.state.lock();
        self.fs.enter(&mut s, None)?;
        Ok(s.inodes[&self.ino].data.len() as u64)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        self.fs.enter(&mut s, Some(Step::Allocate))?;
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        let old = inode.data.len() as u64;
        if len > old {
            let zeros = vec![0u8; (len - old) as usize];
            put(&mut inode.data, old, &zeros);
            inode.pending.push((old, zeros));
        }
        Ok(())
    }

    /// The store cuts only files whose removal is durable, which no crash
    /// state can reach; a cut of a file with a name, or whose removal a
    /// crash could still undo, would need the crash model to know of
    /// truncation, so it fails and the test that made it notices.
    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut s = self.fs.state.lock();
        self.fs.enter(&mut s, None)?;
        let named = |names: &BTreeMap<PathBuf, Ino>| names.values().any(|&ino| ino == self.ino);
        if named(&s.names) || named(&s.durable_names) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated file system cuts only files whose removal is durable",
            ));
        }
        let inode = s.inodes.get_mut(&self.ino).expect("open inode");
        inode.data.truncate(len as usize);
        Ok(())
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.state.lock().locked.remove(&self.path);
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        self.enter(&mut s, None)?;
        if s.names.contains_key(dir) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file is in the way",
            ));
        }
        for a in dir.ancestors() {
            if !a.as_os_str().is_empty() {
                s.dirs.insert(a.to_path_buf());
            }
        }
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> io::Result<bool> {
        let mut s = self.state.lock();
        self.enter(&mut s, None)?;
        if s.dirs.contains(path) {
            Ok(true)
        } else if s.names.contains_key(path) {
            Ok(false)
        } else {
            Err(not_found(path))
        }
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let mut s = self.state.lock();
        self.enter(&mut s, None)?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
        }))
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FileHandle>> {
        let mut s = self.state.lock();
        self.enter(&mut s, Some(Step::Create))?;
        if !parent_exists(&s, path) {
            return Err(not_found(path));
        }
        if s.names.contains_key(path) || s.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists"));
        }
        let ino = s.next_ino;
        s.next_ino += 1;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        s.pending_ns.push(NsOp::Link(path.to_path_buf(), ino));
        Ok(Box::new(SimFile {
            fs: self.clone(),
            ino,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.state.lock();
        self.enter(&mut s, None)?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let child = |p: &PathBuf| {
            (p.parent() == Some(dir))
                .then(|| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .flatten()
        };
        let mut out: Vec<String> = s.names.keys().filter_map(child).collect();
        out.extend(s.dirs.iter().filter_map(child));
        Ok(out)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        self.enter(&mut s, Some(Step::Rename))?;
        if !parent_exists(&s, to) {
            return Err(not_found(to));
        }
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        s.pending_ns
            .push(NsOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        self.enter(&mut s, Some(Step::Remove))?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        s.pending_ns.push(NsOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.state.lock();
        self.enter(&mut s, Some(Step::SyncDir))?;
        if !s.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        // One data directory per store: a directory sync makes every
        // pending namespace change durable.
        let pending = std::mem::take(&mut s.pending_ns);
        for op in &pending {
            apply_ns(&mut s.durable_names, op);
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<LockGuard> {
        let mut s = self.state.lock();
        self.enter(&mut s, None)?;
        if !parent_exists(&s, path) {
            return Err(not_found(path));
        }
        if !s.locked.insert(path.to_path_buf()) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the lock is held by another open store",
            ));
        }
        if !s.names.contains_key(path) {
            let ino = s.next_ino;
            s.next_ino += 1;
            s.inodes.insert(ino, Inode::default());
            s.names.insert(path.to_path_buf(), ino);
            s.pending_ns.push(NsOp::Link(path.to_path_buf(), ino));
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
        }))
    }
}
