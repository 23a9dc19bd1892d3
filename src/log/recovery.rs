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

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use super::format::{self, FrameHeader, Summary, FRAME_OVERHEAD, HEADER_LEN};
use super::fs::FileSystem;
use super::index::{table_hash, Entry, Shard, HASH_MASK, SEGMENT_SPAN};
use super::segment::{classify, pos, Name, Pos, Segment, Window};
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

struct State {
    shards: Vec<Shard>,
    max_token: u64,
    synced_max: u64,
    first_bad: Option<(usize, u64, &'static str)>,
    hints: Hints,
}

/// Identity hashes made ahead by the helper thread, by log position.
/// (position, payload length, identity hash) of frames whose checksums hold.
type HashBatch = Vec<(Pos, u32, IdentityHash)>;
const HASH_BATCH: usize = 4096;

/// The scan's end of the helper's channel.
struct Hints {
    rx: Option<crossbeam_channel::Receiver<HashBatch>>,
    batch: HashBatch,
    next: usize,
}

impl Hints {
    /// What the helper found at `at` (payload length, identity hash), if
    /// it found a valid frame there. Positions only grow, so entries for
    /// earlier positions are passed by.
    fn find(&mut self, at: Pos) -> Option<(u32, IdentityHash)> {
        loop {
            if let Some(&(p, len, h)) = self.batch.get(self.next) {
                if p > at {
                    return None;
                }
                if p == at {
                    return Some((len, h));
                }
                self.next += 1;
                continue;
            }
            match self.rx.as_ref()?.recv() {
                Ok(batch) => {
                    self.batch = batch;
                    self.next = 0;
                }
                Err(_) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }
}

/// The helper thread: walks the frames of every segment, stopping a segment
/// at the first frame that does not check out, and sends the position,
/// length and identity hash of each valid record and tombstone. The scan
/// still reads every frame header itself and uses a helper's finding only
/// for a frame of the same length at the very same position.
fn hash_ahead(
    segs: &[Segment],
    hasher: &IdentityHasher,
    tx: &crossbeam_channel::Sender<HashBatch>,
) {
    let mut batch = Vec::with_capacity(HASH_BATCH);
    let mut buf = Vec::new();
    for seg in segs {
        let mut w = Window::new(seg, buf);
        let mut at = u64::from(HEADER_LEN);
        while at + 8 <= seg.size {
            let Ok(header) = w.get(at, 8) else { break };
            let FrameHeader::Len(n) = format::frame_header(header) else {
                break;
            };
            if at + (n + FRAME_OVERHEAD) as u64 > seg.size {
                break;
            }
            let Ok(bytes) = w.get(at + 8, n + 4) else {
                break;
            };
            if !format::payload_ok(bytes) {
                break;
            }
            let (scope, key) = match format::summarize(&bytes[..n]) {
                Ok(Summary::Put { scope, key, .. }) | Ok(Summary::Tombstone { scope, key }) => {
                    (scope, key)
                }
                Ok(Summary::Mark { .. }) => {
                    at += (n + FRAME_OVERHEAD) as u64;
                    continue;
                }
                Err(_) => break,
            };
            batch.push((
                pos(seg.id, at as u32),
                n as u32,
                hasher.hash_parts(scope, key),
            ));
            if batch.len() == HASH_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(HASH_BATCH));
                if tx.send(full).is_err() {
                    return;
                }
            }
            at += (n + FRAME_OVERHEAD) as u64;
        }
        buf = w.into_buf();
    }
    if !batch.is_empty() {
        let _ = tx.send(batch);
    }
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
    let st = std::thread::scope(|scope| -> Result<State> {
        // A helper thread hashes identities ahead of the scan (the keyed
        // hash is the largest cost of a frame); the scan checks every frame
        // itself and only takes a hash for the exact position it was made at.
        let (tx, rx) = crossbeam_channel::bounded(4);
        let segs_ref = &segs;
        let hasher = p.hasher;
        let helper = std::thread::Builder::new()
            .name("idemlog-recovery".into())
            .spawn_scoped(scope, move || hash_ahead(segs_ref, hasher, &tx));
        let mut st = State {
            shards: (0..p.shards).map(|_| Shard::default()).collect(),
            max_token: 0,
            synced_max: 0,
            first_bad: None,
            hints: Hints {
                rx: helper.is_ok().then_some(rx),
                batch: Vec::new(),
                next: 0,
            },
        };
        let mut buf = Vec::new();
        for i in 0..segs.len() {
            let mut w = Window::new(&segs[i], buf);
            head_end = scan_segment(p, &segs, i, &mut w, &mut st)?;
            buf = w.into_buf();
        }
        // Closing the channel stops the helper if it is still going.
        st.hints.rx = None;
        Ok(st)
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
        shards: st.shards,
        max_token: st.max_token,
    }))
}

/// Scans one segment; returns the offset where its data ends.
fn scan_segment(
    p: &Params<'_>,
    segs: &[Segment],
    i: usize,
    w: &mut Window<'_>,
    st: &mut State,
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
        let check = check_frame(w, at, size, segs[i].id, &mut st.hints)?;
        match check {
            Check::Valid(n, hashed) => {
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
                        st.take(p, segs, s, loc, hashed, w)?;
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
    /// A frame with this payload length, and its identity hash if the
    /// helper thread made it.
    Valid(usize, Option<IdentityHash>),
    Zero,
    Bad(&'static str),
}

fn check_frame(
    w: &mut Window<'_>,
    at: u64,
    size: u64,
    segment: u32,
    hints: &mut Hints,
) -> Result<Check> {
    // The helper checked this very frame already, header and payload (the
    // same bytes: nothing writes during recovery).
    if let Some((len, hash)) = hints.find(pos(segment, at as u32)) {
        let n = len as usize;
        if at + (n + FRAME_OVERHEAD) as u64 <= size {
            w.get(at + 8, n)?;
            return Ok(Check::Valid(n, Some(hash)));
        }
    }
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
    Ok(Check::Valid(n, None))
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

impl State {
    fn bad(&mut self, segment: usize, offset: u64, reason: &'static str) {
        if self.first_bad.is_none() {
            self.first_bad = Some((segment, offset, reason));
        }
    }

    /// Applies a valid frame found at `loc` (only marks once the log has
    /// ended at a bad frame); `hashed` is its identity hash if the helper
    /// thread made it.
    fn take(
        &mut self,
        p: &Params<'_>,
        segs: &[Segment],
        s: Summary<'_>,
        loc: Loc,
        hashed: Option<IdentityHash>,
        w: &Window<'_>,
    ) -> Result<()> {
        if let Summary::Mark {
            synced_upto,
            token_floor,
        } = s
        {
            self.synced_max = self.synced_max.max(synced_upto);
            self.max_token = self.max_token.max(token_floor);
            return Ok(());
        }
        if self.first_bad.is_some() {
            return Ok(());
        }
        let (scope, key) = match s {
            Summary::Put {
                scope, key, token, ..
            } => {
                self.max_token = self.max_token.max(token);
                (scope, key)
            }
            Summary::Tombstone { scope, key } => (scope, key),
            Summary::Mark { .. } => return Ok(()),
        };
        let id_hash = hashed.unwrap_or_else(|| p.hasher.hash_parts(scope, key));
        let (hash, si) = hashes(id_hash, p.shards, p.hash_mask);
        let shard = &mut self.shards[si];
        let mut existing = None;
        for e in shard.table.iter_hash(table_hash(hash)) {
            if e.hash() == hash
                && same_identity_at(segs, loc.segment, w, e, shard.frame_len(e), scope, key)?
            {
                existing = Some(*e);
                break;
            }
        }
        if let Some(old) = existing {
            shard.remove(&old);
        }
        if let Summary::Put {
            in_flight,
            expires_at,
            ..
        } = s
        {
            if Timestamp::from_millis(expires_at) > p.now {
                let mut e = Entry::new(hash, loc, in_flight, expires_at);
                if in_flight && !p.keep_leases {
                    e.void_lease();
                }
                shard.insert(e, loc.len, 0);
            }
        }
        Ok(())
    }
}

/// Whether the frame `e` points at belongs to identity (`scope`, `key`).
fn same_identity_at(
    segs: &[Segment],
    current: u32,
    w: &Window<'_>,
    e: &Entry,
    len: u32,
    scope: &[u8],
    key: &[u8],
) -> Result<bool> {
    // Usually the previous version is a few frames back, still in the
    // window: no read needed.
    let payload_len = (len as usize).saturating_sub(FRAME_OVERHEAD);
    let segment = e.segment(current);
    let in_window = (segment == current)
        .then(|| w.peek(u64::from(e.offset) + 8, payload_len))
        .flatten();
    let read;
    let payload = match in_window {
        Some(p) => p,
        None => {
            let Ok(i) = segs.binary_search_by_key(&segment, |s| s.id) else {
                return Ok(false);
            };
            read = segs[i].read_payload(e.offset, len)?;
            &read[..]
        }
    };
    Ok(match format::summarize(payload) {
        Ok(Summary::Put {
            scope: s, key: k, ..
        }) => s == scope && k == key,
        _ => false,
    })
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
