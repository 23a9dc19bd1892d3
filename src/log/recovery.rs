//! Opening a data directory: scan every segment in order, rebuild the
//! index, tell a torn tail (cut) from corruption (refused).
//!
//! The rule: the first frame that does not check out at position `X` ends
//! the log. If any valid mark anywhere says the log was synced past `X`,
//! those bytes had reached stable storage and were damaged since: that is
//! corruption, reported as [`Error::Corrupt`] (or, with `repair`, the
//! segment is moved into `quarantine/`). Otherwise `X` lies in the part
//! that was never synced, so it is a torn tail: everything from `X` on is
//! cut, and no frame after `X` is ever applied.
//!
//! The opening thread scans: it reads and checks every frame in log order,
//! keeps the marks, and sends each record and tombstone, with its identity
//! hash and bytes, to the indexer thread that owns its shard. Indexers
//! build their shards' tables side by side; at millions of records those
//! tables outgrow the caches, and the time goes to waiting on memory.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::format::{self, FrameHeader, Summary, FRAME_OVERHEAD, HEADER_LEN};
use super::fs::FileSystem;
use super::index::{Entry, Shard, HASH_MASK, SEGMENT_SPAN};
use super::segment::{classify, pos, Name, Segment, Window};
use super::writer::Loc;
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::identity::{IdentityHash, IdentityHasher};

/// What recovery needs to know.
pub(crate) struct Params<'a> {
    pub(crate) fs: &'a dyn FileSystem,
    pub(crate) dir: &'a Path,
    pub(crate) hasher: &'a IdentityHasher,
    pub(crate) shards: usize,
    pub(crate) hash_mask: u32,
    pub(crate) now: Timestamp,
    pub(crate) keep_leases: bool,
    pub(crate) repair: bool,
    pub(crate) segment_size: u64,
    pub(crate) disk_budget: Option<u64>,
    pub(crate) sync: bool,
    /// Whether the index is built on threads beside the scan. When false,
    /// or when no thread can be started, the scan indexes every frame
    /// itself; tests turn it off to cover that path.
    pub(crate) indexer_threads: bool,
}

/// The opened directory.
pub(crate) struct Opened {
    pub(crate) segments: BTreeMap<u32, Arc<Segment>>,
    pub(crate) head: Arc<Segment>,
    pub(crate) head_end: u32,
    pub(crate) shards: Vec<Shard>,
    pub(crate) max_token: u64,
}

/// The hashes the engine uses for an identity: (entry hash, shard index).
pub(crate) fn hashes(h: IdentityHash, shards: usize, hash_mask: u32) -> (u32, usize) {
    (
        h.table as u32 & hash_mask & HASH_MASK,
        h.shard as usize & (shards - 1),
    )
}

/// Scans the directory and builds the index.
pub(crate) fn recover(p: &Params<'_>) -> Result<Opened> {
    loop {
        if let Some(opened) = scan_once(p)? {
            return Ok(opened);
        }
        // Repair moved a damaged segment aside: scan again without it.
    }
}

/// A valid record or tombstone, as the scan hands it to the indexer that
/// owns its shard.
struct Frame {
    loc: Loc,
    /// The entry hash.
    hash: u32,
    /// The shard index.
    shard: u32,
    /// Where the frame's scope and key start in its batch's `ids`.
    id_at: u32,
    scope_len: u32,
    key_len: u32,
    /// A record's expiry (ms) and whether it is in flight; `None` for a
    /// tombstone.
    put: Option<(u64, bool)>,
}

/// Frames for one indexer, in log order, with the bytes of their
/// identities (so that the indexer never reads the log itself for them).
#[derive(Default)]
struct Batch {
    frames: Vec<Frame>,
    ids: Vec<u8>,
}

/// Frames in one batch: large enough that the channel is touched rarely,
/// small enough to stay in cache while it is applied.
const BATCH: usize = 2048;
/// Batches an indexer keeps after applying them: the previous version of
/// an identity is usually among the last few thousand frames of its
/// shards, and is then compared without reading the file.
const KEPT: usize = 4;
/// Frames whose table lines an indexer loads ahead, side by side.
const AHEAD: usize = 8;

impl Batch {
    fn identity(&self, f: &Frame) -> (&[u8], &[u8]) {
        let at = f.id_at as usize;
        let (s, k) = (f.scope_len as usize, f.key_len as usize);
        (&self.ids[at..at + s], &self.ids[at + s..at + s + k])
    }

    /// The identity of the frame at (`segment`, `offset`), if this batch
    /// holds it.
    fn identity_at(&self, segment: u32, offset: u32) -> Option<(&[u8], &[u8])> {
        let place = pos(segment, offset);
        let first = self.frames.first()?;
        if place < pos(first.loc.segment, first.loc.offset) {
            return None;
        }
        let i = self
            .frames
            .binary_search_by_key(&place, |f| pos(f.loc.segment, f.loc.offset))
            .ok()?;
        Some(self.identity(&self.frames[i]))
    }

    fn push(
        &mut self,
        loc: Loc,
        hash: u32,
        shard: usize,
        scope: &[u8],
        key: &[u8],
        put: Option<(u64, bool)>,
    ) {
        let id_at = self.ids.len() as u32;
        self.ids.extend_from_slice(scope);
        self.ids.extend_from_slice(key);
        self.frames.push(Frame {
            loc,
            hash,
            shard: shard as u32,
            id_at,
            scope_len: scope.len() as u32,
            key_len: key.len() as u32,
            put,
        });
    }
}

/// Builds the tables of the shards `shard % lanes == lane`, from the frames
/// the scan sends it, in log order. Shards are independent, so indexers
/// work side by side: at 10 M records the tables no longer fit any cache,
/// and two cores wait on their misses at once.
struct Indexer<'a> {
    segs: &'a [Segment],
    now: Timestamp,
    keep_leases: bool,
    lanes: usize,
    /// Shard `lane + j * lanes` at `j`.
    shards: Vec<Shard>,
    kept: std::collections::VecDeque<Batch>,
}

impl<'a> Indexer<'a> {
    fn new(segs: &'a [Segment], p: &Params<'_>, lane: usize, lanes: usize) -> Self {
        Indexer {
            segs,
            now: p.now,
            keep_leases: p.keep_leases,
            lanes,
            shards: (lane..p.shards)
                .step_by(lanes)
                .map(|_| Shard::default())
                .collect(),
            kept: std::collections::VecDeque::with_capacity(KEPT + 1),
        }
    }

    fn apply(&mut self, batch: Batch) -> Result<()> {
        // The tables' lines are loaded a few frames ahead, several at once,
        // so that their cache misses overlap instead of following each
        // other.
        let mut touched = self.touch(&batch.frames[..batch.frames.len().min(AHEAD)]);
        for (i, f) in batch.frames.iter().enumerate() {
            if i % AHEAD == 0 {
                let next = batch.frames.get(i + AHEAD..).unwrap_or_default();
                touched ^= self.touch(&next[..next.len().min(AHEAD)]);
            }
            self.take(&batch, f)?;
        }
        std::hint::black_box(touched);
        if self.kept.len() == KEPT {
            self.kept.pop_front();
        }
        self.kept.push_back(batch);
        Ok(())
    }

    fn touch(&self, frames: &[Frame]) -> u32 {
        frames.iter().fold(0, |acc, f| {
            acc ^ self.shards[f.shard as usize / self.lanes]
                .table
                .touch(f.hash)
        })
    }

    /// Applies one frame: it replaces the entry of the same identity, if
    /// any; a live record gets an entry of its own.
    fn take(&mut self, batch: &Batch, f: &Frame) -> Result<()> {
        let (scope, key) = batch.identity(f);
        let shard = &mut self.shards[f.shard as usize / self.lanes];
        let mut existing = None;
        for e in shard.table.iter_hash(f.hash) {
            let len = shard.frame_len(e);
            let recent = std::iter::once(batch).chain(self.kept.iter().rev());
            if holds_identity(self.segs, recent, f.loc.segment, e, len, scope, key)? {
                existing = Some(*e);
                break;
            }
        }
        let live = f
            .put
            .filter(|&(expires_at, _)| Timestamp::from_millis(expires_at) > self.now);
        let new = live.map(|(expires_at, in_flight)| {
            let mut e = Entry::new(f.hash, f.loc, in_flight, expires_at);
            if in_flight && !self.keep_leases {
                e.void_lease();
            }
            e
        });
        match (existing, new) {
            (Some(old), Some(e)) => shard.replace(&old, e, f.loc.len, 0),
            (Some(old), None) => shard.remove(&old),
            (None, Some(e)) => shard.insert(e, f.loc.len, 0),
            (None, None) => {}
        }
        Ok(())
    }
}

/// Whether the frame `e` points at belongs to identity (`scope`, `key`):
/// compared in the recent batches if one holds that frame, else read back.
fn holds_identity<'b>(
    segs: &[Segment],
    recent: impl Iterator<Item = &'b Batch>,
    current: u32,
    e: &Entry,
    len: u32,
    scope: &[u8],
    key: &[u8],
) -> Result<bool> {
    let segment = e.segment(current);
    for b in recent {
        if let Some((s, k)) = b.identity_at(segment, e.offset) {
            return Ok(s == scope && k == key);
        }
    }
    let Ok(i) = segs.binary_search_by_key(&segment, |s| s.id) else {
        return Ok(false);
    };
    let payload = segs[i].read_payload(e.offset, len)?;
    Ok(match format::summarize(&payload) {
        Ok(Summary::Put {
            scope: s, key: k, ..
        }) => s == scope && k == key,
        _ => false,
    })
}

/// Where the scan sends an indexer's frames.
enum Sink<'a> {
    Thread(crossbeam_channel::Sender<Batch>),
    /// No thread could be started: the scan applies the frames itself.
    Inline(Indexer<'a>),
}

struct Lane<'a> {
    batch: Batch,
    sink: Sink<'a>,
}

impl Lane<'_> {
    fn flush(&mut self) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        self.batch.frames.reserve(BATCH);
        match &mut self.sink {
            Sink::Thread(tx) => tx.send(batch).map_err(|_| {
                // Replaced by the indexer's own error once it is joined.
                Error::io(
                    "a recovery indexer stopped",
                    io::Error::other("indexer stopped"),
                )
            }),
            Sink::Inline(ix) => ix.apply(batch),
        }
    }
}

/// How many indexers share the shards: the scan is one thread of its own,
/// and the indexers' work is mostly waiting on memory.
fn indexer_count(shards: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = if cores >= 4 { 4 } else { 2 };
    lanes.min(shards).max(1)
}

/// What the scan keeps itself: the marks, the tokens, where the log ends.
#[derive(Default)]
struct LogEnd {
    max_token: u64,
    synced_max: u64,
    first_bad: Option<(usize, u64, &'static str)>,
}

struct Scan<'a> {
    end: LogEnd,
    lanes: Vec<Lane<'a>>,
}

fn io_err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let context = format!("cannot {what} {}", path.display());
    move |e| Error::io(context, e)
}

fn scan_once(p: &Params<'_>) -> Result<Option<Opened>> {
    let names = p.fs.list(p.dir).map_err(io_err("list", p.dir))?;
    let mut ids = Vec::new();
    for name in names {
        match classify(&name) {
            Name::Segment(id) => ids.push(id),
            // Left by a crash while a segment was being created.
            Name::Temp => {
                let path = p.dir.join(&name);
                match p.fs.remove(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &path)(e)),
                }
            }
            Name::Other => {}
        }
    }
    ids.sort_unstable();
    if let (Some(&first), Some(&last)) = (ids.first(), ids.last()) {
        // The index keeps segment ids modulo SEGMENT_SPAN; the writer never
        // lets the log span more.
        if last - first >= SEGMENT_SPAN {
            return Err(Error::Corrupt {
                file: p.dir.join(super::segment::file_name(first)),
                offset: 0,
                reason: format!(
                    "segment files {first:#x} to {last:#x} span more than {SEGMENT_SPAN} ids"
                ),
            });
        }
    }
    let mut segs = Vec::with_capacity(ids.len());
    for id in ids {
        match Segment::open(p.fs, p.dir, id) {
            // With `repair` the records before the cut are kept, as for a
            // torn tail: the most a truncated file can still give.
            Ok(s) if s.is_truncated() && !p.repair => {
                return Err(Error::Corrupt {
                    file: s.path.clone(),
                    offset: s.size,
                    reason: format!(
                        "the file is {} bytes long but was created with {}: something other than a crash truncated it, possibly cutting synced records; open with Config::repair to keep the records before the cut",
                        s.size, s.created_size
                    ),
                });
            }
            Ok(s) => segs.push(s),
            Err(Error::Corrupt { file, .. }) if p.repair => {
                quarantine(p, &file)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    let mut head_end = HEADER_LEN;
    let lanes = indexer_count(p.shards);
    let (st, shards) = std::thread::scope(|scope| -> Result<(LogEnd, Vec<Shard>)> {
        let segs_ref = &segs;
        let mut st = Scan {
            end: LogEnd::default(),
            lanes: Vec::with_capacity(lanes),
        };
        let mut threads = Vec::with_capacity(lanes);
        for lane in 0..lanes {
            let (tx, rx) = crossbeam_channel::bounded::<Batch>(4);
            let spawned = p.indexer_threads.then(|| {
                std::thread::Builder::new()
                    .name("idemlog-recovery".into())
                    .spawn_scoped(scope, move || -> Result<Indexer<'_>> {
                        let mut ix = Indexer::new(segs_ref, p, lane, lanes);
                        for batch in rx {
                            ix.apply(batch)?;
                        }
                        Ok(ix)
                    })
            });
            let sink = match spawned {
                Some(Ok(t)) => {
                    threads.push((lane, t));
                    Sink::Thread(tx)
                }
                // Slower, not wrong: the same indexer, on this thread.
                Some(Err(_)) | None => Sink::Inline(Indexer::new(segs_ref, p, lane, lanes)),
            };
            st.lanes.push(Lane {
                batch: Batch::default(),
                sink,
            });
        }
        let mut scanned = (|| -> Result<()> {
            let mut buf = Vec::new();
            for i in 0..segs.len() {
                let mut w = Window::new(&segs[i], buf);
                head_end = scan_segment(p, &segs, i, &mut w, &mut st)?;
                buf = w.into_buf();
            }
            st.lanes.iter_mut().try_for_each(Lane::flush)
        })();
        // Closing the channels lets the indexers finish.
        let mut indexers: Vec<Option<Indexer<'_>>> = (0..lanes).map(|_| None).collect();
        for (lane, l) in st.lanes.drain(..).enumerate() {
            if let Sink::Inline(ix) = l.sink {
                indexers[lane] = Some(ix);
            }
        }
        for (lane, t) in threads {
            match t.join() {
                Ok(Ok(ix)) => indexers[lane] = Some(ix),
                // An indexer's error is the cause of the scan's failed send.
                Ok(Err(e)) => scanned = Err(e),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        scanned?;
        let mut shards: Vec<Option<Shard>> = (0..p.shards).map(|_| None).collect();
        for (lane, ix) in indexers.into_iter().enumerate() {
            let Some(ix) = ix else { continue };
            for (j, shard) in ix.shards.into_iter().enumerate() {
                shards[lane + j * lanes] = Some(shard);
            }
        }
        let shards = shards.into_iter().map(Option::unwrap_or_default).collect();
        Ok((st.end, shards))
    })?;
    if let Some((i, offset, reason)) = st.first_bad {
        if st.synced_max > pos(segs[i].id, offset as u32) {
            if p.repair {
                quarantine(p, &segs[i].path)?;
                return Ok(None);
            }
            return Err(Error::Corrupt {
                file: segs[i].path.clone(),
                offset,
                reason: format!("{reason}, in a part of the log that had been synced"),
            });
        }
        // A torn tail: cut it, and drop any later segment.
        zero_from(p, &segs[i], offset)?;
        for later in segs.drain(i + 1..) {
            p.fs.remove(&later.path)
                .map_err(io_err("remove the torn segment", &later.path))?;
        }
        if p.sync {
            p.fs.sync_dir(p.dir).map_err(io_err("sync", p.dir))?;
        }
        head_end = offset as u32;
    }
    let mut head = match segs.pop() {
        Some(s) => s,
        None => {
            if let Some(budget) = p.disk_budget.filter(|&b| b < p.segment_size) {
                return Err(Error::DiskBudgetExceeded {
                    budget,
                    needed: p.segment_size,
                });
            }
            head_end = HEADER_LEN;
            Segment::create(p.fs, p.dir, 1, p.segment_size, p.sync)?
        }
    };
    if head.size < p.segment_size {
        head.file
            .allocate(p.segment_size)
            .map_err(io_err("preallocate", &head.path))?;
        head.size = p.segment_size;
    }
    let head = Arc::new(head);
    let mut segments: BTreeMap<u32, Arc<Segment>> =
        segs.into_iter().map(|s| (s.id, Arc::new(s))).collect();
    segments.insert(head.id, Arc::clone(&head));
    Ok(Some(Opened {
        segments,
        head,
        head_end,
        shards,
        max_token: st.max_token,
    }))
}

/// Scans one segment; returns the offset where its data ends.
fn scan_segment(
    p: &Params<'_>,
    segs: &[Segment],
    i: usize,
    w: &mut Window<'_>,
    st: &mut Scan<'_>,
) -> Result<u32> {
    let size = segs[i].size;
    let mut at = u64::from(HEADER_LEN);
    // After a bad frame, look for the next valid one byte by byte: only its
    // marks count, to tell corruption from a torn tail.
    let mut searching = false;
    loop {
        if at + 8 > size {
            if !searching && at < size && next_nonzero(w, at, size)?.is_some() {
                st.bad(i, at, "bytes after the last frame");
            }
            return Ok(at as u32);
        }
        match check_frame(w, at, size)? {
            Check::Valid(n) => {
                // `check_frame` left the payload in the window: no copy.
                let w: &Window<'_> = w;
                let Some(payload) = w.peek(at + 8, n) else {
                    unreachable!("check_frame read the payload into the window")
                };
                match format::summarize(payload).ok() {
                    Some(s) => {
                        let loc = Loc {
                            segment: segs[i].id,
                            offset: at as u32,
                            len: (n + FRAME_OVERHEAD) as u32,
                        };
                        st.take(p, s, loc)?;
                        searching = false;
                        at += (n + FRAME_OVERHEAD) as u64;
                    }
                    None if searching => at += 1,
                    None => {
                        st.bad(i, at, "frame with a valid checksum but malformed contents");
                        searching = true;
                        at += 1;
                    }
                }
            }
            Check::Zero => match next_nonzero(w, at, size)? {
                None => return Ok(at as u32),
                Some(z) => {
                    if !searching {
                        st.bad(i, at, "zeros where a frame should be");
                        searching = true;
                    }
                    // A frame may start with up to 7 zero bytes.
                    at = (z.saturating_sub(7)).max(at + 1);
                }
            },
            Check::Bad(reason) => {
                if !searching {
                    st.bad(i, at, reason);
                    searching = true;
                }
                at += 1;
            }
        }
    }
}

enum Check {
    /// A frame with this payload length.
    Valid(usize),
    Zero,
    Bad(&'static str),
}

fn check_frame(w: &mut Window<'_>, at: u64, size: u64) -> Result<Check> {
    let n = match format::frame_header(w.get(at, 8)?) {
        FrameHeader::Zero => return Ok(Check::Zero),
        FrameHeader::Bad => return Ok(Check::Bad("frame length checksum mismatch")),
        FrameHeader::Len(n) => n,
    };
    if at + (n + FRAME_OVERHEAD) as u64 > size {
        return Ok(Check::Bad("frame runs past the end of the file"));
    }
    if !format::payload_ok(w.get(at + 8, n + 4)?) {
        return Ok(Check::Bad("frame checksum mismatch"));
    }
    Ok(Check::Valid(n))
}

/// The first non-zero byte at or after `from`.
fn next_nonzero(w: &mut Window<'_>, from: u64, size: u64) -> Result<Option<u64>> {
    const CHUNK: u64 = 64 << 10;
    let mut at = from;
    while at < size {
        let n = (size - at).min(CHUNK);
        let bytes = w.get(at, n as usize)?;
        // Eight bytes at a time: this runs over the unwritten tail.
        let words = bytes.chunks_exact(8);
        let skipped = words
            .clone()
            .position(|c| c != [0u8; 8])
            .unwrap_or(bytes.len() / 8)
            * 8;
        if let Some(i) = bytes[skipped..].iter().position(|&b| b != 0) {
            return Ok(Some(at + (skipped + i) as u64));
        }
        at += n;
    }
    Ok(None)
}

impl Scan<'_> {
    fn bad(&mut self, segment: usize, offset: u64, reason: &'static str) {
        if self.end.first_bad.is_none() {
            self.end.first_bad = Some((segment, offset, reason));
        }
    }

    /// Takes a valid frame found at `loc`: marks always; records and
    /// tombstones only while the log has not ended at a bad frame, sent to
    /// the indexer of their shard.
    fn take(&mut self, p: &Params<'_>, s: Summary<'_>, loc: Loc) -> Result<()> {
        let (scope, key, put) = match s {
            Summary::Mark {
                synced_upto,
                token_floor,
            } => {
                self.end.synced_max = self.end.synced_max.max(synced_upto);
                self.end.max_token = self.end.max_token.max(token_floor);
                return Ok(());
            }
            _ if self.end.first_bad.is_some() => return Ok(()),
            Summary::Put {
                scope,
                key,
                token,
                in_flight,
                expires_at,
            } => {
                self.end.max_token = self.end.max_token.max(token);
                (scope, key, Some((expires_at, in_flight)))
            }
            Summary::Tombstone { scope, key } => (scope, key, None),
        };
        let (hash, si) = hashes(p.hasher.hash_parts(scope, key), p.shards, p.hash_mask);
        let lanes = self.lanes.len();
        let lane = &mut self.lanes[si % lanes];
        lane.batch.push(loc, hash, si, scope, key, put);
        if lane.batch.frames.len() >= BATCH {
            lane.flush()?;
        }
        Ok(())
    }
}

/// Overwrites with zeros every non-zero byte of `seg` from `offset` on, and
/// syncs, so a cut tail can never be read again.
fn zero_from(p: &Params<'_>, seg: &Segment, offset: u64) -> Result<()> {
    const CHUNK: u64 = 64 << 10;
    let zeros = vec![0u8; CHUNK as usize];
    let mut buf = vec![0u8; CHUNK as usize];
    let mut at = offset;
    while at < seg.size {
        let n = (seg.size - at).min(CHUNK) as usize;
        seg.file
            .read_exact_at(&mut buf[..n], at)
            .map_err(io_err("read", &seg.path))?;
        if buf[..n].iter().any(|&b| b != 0) {
            seg.file
                .write_all_at(&zeros[..n], at)
                .map_err(io_err("cut the torn tail of", &seg.path))?;
        }
        at += n as u64;
    }
    if p.sync {
        seg.file.sync_data().map_err(io_err("sync", &seg.path))?;
    }
    Ok(())
}

/// Moves a damaged segment into `quarantine/` (repair mode).
fn quarantine(p: &Params<'_>, path: &Path) -> Result<()> {
    let qdir = p.dir.join("quarantine");
    p.fs.create_dir_all(&qdir)
        .map_err(io_err("create", &qdir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let taken = p.fs.list(&qdir).map_err(io_err("list", &qdir))?;
    let mut target = name.clone();
    let mut n = 1;
    while taken.contains(&target) {
        target = format!("{name}.{n}");
        n += 1;
    }
    let to = qdir.join(target);
    p.fs.rename(path, &to).map_err(io_err("quarantine", path))?;
    p.fs.sync_dir(&qdir).map_err(io_err("sync", &qdir))?;
    p.fs.sync_dir(p.dir).map_err(io_err("sync", p.dir))?;
    Ok(())
}
