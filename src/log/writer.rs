//! The write path: callers append encoded frames to a shared buffer under a
//! short lock; the buffer goes to the head segment in one write, and one
//! `fdatasync` covers every frame written before it (group commit).
//!
//! Two positions tell callers how far their frames got: `written` (handed to
//! the operating system) and `durable` (synced). What a caller waits for
//! depends on the durability:
//! * `Sync`: a blocking caller whose frame is not durable yet writes and
//!   syncs the buffer itself if no one else is writing, first holding the
//!   sync back briefly until the other blocking callers' frames are in the
//!   buffer (see [`Log::gather_blocking`]); otherwise the writer thread,
//!   kicked, writes and syncs; callers wait for `durable`.
//!   An async caller never syncs on its own task: it registers its waker
//!   and kicks the writer thread, which holds each sync back briefly until
//!   the tasks the previous sync woke have appended again (see
//!   [`Log::gather`]), so one sync takes them all.
//! * `Buffered`: a caller writes the buffer itself (or finds it written by
//!   another caller); the writer thread syncs every `max_delay`.
//! * `None`: callers return at once; the writer thread writes the buffer
//!   when it grows or every few milliseconds, and never syncs.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use crossbeam_utils::CachePadded;
use parking_lot::{Mutex, RwLock};

use super::format::{self, HEADER_LEN};
use super::fs::{FileHandle, FileSystem};
use super::index::SEGMENT_SPAN;
use super::prefill::Prefill;
use super::segment::{pos, pos_offset, Pos, Segment};
use crate::config::Durability;
use crate::error::{Error, Poison, Result};

/// In `None` mode, the buffer is written once it holds this much...
const WRITE_AT: usize = 1 << 20;
/// ...and a caller writes it itself (back-pressure) past this much. This
/// bounds what a process crash loses and the buffers a burst leaves behind
/// (at 16 MiB a 1 M-record load could end holding 8 MiB buffers); the
/// 2-thread `None` row was no faster at 16 MiB (docs/BENCHMARKS.md,
/// twelfth session).
const WRITE_MYSELF_AT: usize = 4 << 20;
/// Bytes a mark frame takes.
const MARK_ROOM: u64 = 64;
/// Longest a `Sync` caller yields waiting for a sync before it parks.
const MAX_SPIN: Duration = Duration::from_millis(2);
/// In `None` mode, how often the writer thread writes a non-empty buffer.
const NONE_WRITE_EVERY: Duration = Duration::from_millis(10);
/// Longest the writer thread holds a sync back for async waiters to come
/// back (see [`Log::gather`]).
const MAX_GATHER: Duration = Duration::from_millis(1);

/// Who waits for `durable` to reach a position.
enum Waiter {
    /// A blocking caller, parked.
    Thread(Thread),
    /// An async caller's task.
    Task(Waker),
}

/// Frames not yet written, all in the head segment.
struct Tail {
    buf: Vec<u8>,
    /// Position of `buf[0]`.
    buf_pos: Pos,
    head: Arc<Segment>,
    /// Offset after the last frame appended to the head.
    head_end: u32,
    /// Frames in `buf` (for the records-per-sync figure).
    records: u64,
}

/// What the one writer at a time (writer thread, a `Buffered` caller, a
/// segment roll) owns.
struct Io {
    spare: Vec<u8>,
    unsynced_records: u64,
    /// Zeros written ahead of the log (`Sync` with
    /// `Config::prefill_segments`).
    prefill: Option<Prefill>,
}

/// What one `fdatasync` must cover, as [`Log::prepare_sync`] found it.
struct PendingSync {
    /// Everything before it is written and becomes durable.
    target: Pos,
    /// The segment `target` is in.
    head: Arc<Segment>,
    /// Record frames among those bytes (for the records-per-sync figure).
    records: u64,
}

/// The log of one data directory.
pub(crate) struct Log {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) durability: Durability,
    segment_size: u64,
    disk_budget: Option<u64>,
    tail: CachePadded<Mutex<Tail>>,
    /// The head segment's id (also in `tail`), read without its lock to
    /// resolve the segment ids the index keeps modulo `SEGMENT_SPAN`.
    head_id: AtomicU32,
    io: Mutex<Io>,
    written: CachePadded<AtomicU64>,
    durable: CachePadded<AtomicU64>,
    /// Callers waiting for `durable` to reach a position, woken one by one
    /// (each by its own unpark or waker, so they do not queue on a lock to
    /// wake).
    waiters: Mutex<Vec<(Pos, Waiter)>>,
    /// Async tasks among `waiters`.
    task_waiters: AtomicUsize,
    /// Async tasks that were waiting when the last sync woke some: how many
    /// the next sync can expect.
    gather_target: AtomicUsize,
    /// Set while the writer thread holds a sync back in [`Log::gather`].
    gathering: AtomicBool,
    /// Blocking callers inside `wait_durable`: each has one frame there,
    /// in the buffer or synced but not yet seen so (see
    /// [`Log::gather_blocking`]).
    blocking_waiters: AtomicUsize,
    /// The writer thread, unparked when the tasks it gathers are back.
    writer_thread: OnceLock<Thread>,
    poison: Poison,
    /// The store is closing: a pass deleting segments stops resting
    /// between cuts (see [`Log::rest_after_cut`]).
    hurrying: AtomicBool,
    pub(crate) segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    bytes_on_disk: AtomicU64,
    /// Largest fencing token written, per index shard (stored under the
    /// shard's lock, so no two threads fight over one line).
    max_tokens: Box<[CachePadded<AtomicU64>]>,
    kick: crossbeam_channel::Sender<()>,
    syncs: AtomicU64,
    records_synced: AtomicU64,
    last_sync_nanos: AtomicU64,
}

/// Where an appended frame landed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc {
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl Loc {
    pub(crate) fn end(&self) -> Pos {
        pos(self.segment, self.offset + self.len)
    }
}

/// The settings [`Log::new`] takes.
pub(crate) struct LogSettings {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) dir: PathBuf,
    pub(crate) durability: Durability,
    pub(crate) segment_size: u64,
    pub(crate) disk_budget: Option<u64>,
    pub(crate) shards: usize,
    /// Write zeros ahead of the log before syncs ([`Prefill`]).
    pub(crate) prefill: bool,
}

impl Log {
    /// A log whose head is `head`, with the next frame at `head_end`, over
    /// the segments `segments` (which include the head). Returns the log and
    /// the receiving end of its kick channel for the writer thread.
    pub(crate) fn new(
        settings: LogSettings,
        segments: BTreeMap<u32, Arc<Segment>>,
        head: Arc<Segment>,
        head_end: u32,
        max_token: u64,
    ) -> (Log, Receiver<()>) {
        let (kick, kicked) = crossbeam_channel::bounded(1);
        let start = pos(head.id, head_end);
        let head_id = AtomicU32::new(head.id);
        let bytes_on_disk = segments.values().map(|s| s.size).sum();
        let max_tokens: Box<[CachePadded<AtomicU64>]> = (0..settings.shards.max(1))
            .map(|_| CachePadded::new(AtomicU64::new(max_token)))
            .collect();
        let log = Log {
            fs: settings.fs,
            dir: settings.dir,
            durability: settings.durability,
            segment_size: settings.segment_size,
            disk_budget: settings.disk_budget,
            tail: CachePadded::new(Mutex::new(Tail {
                buf: Vec::with_capacity(1 << 16),
                buf_pos: start,
                head,
                head_end,
                records: 0,
            })),
            head_id,
            io: Mutex::new(Io {
                spare: Vec::with_capacity(1 << 16),
                unsynced_records: 0,
                prefill: settings.prefill.then(Prefill::new),
            }),
            written: CachePadded::new(AtomicU64::new(start)),
            durable: CachePadded::new(AtomicU64::new(start)),
            waiters: Mutex::new(Vec::new()),
            task_waiters: AtomicUsize::new(0),
            gather_target: AtomicUsize::new(0),
            gathering: AtomicBool::new(false),
            blocking_waiters: AtomicUsize::new(0),
            writer_thread: OnceLock::new(),
            poison: Poison::default(),
            hurrying: AtomicBool::new(false),
            segments: RwLock::new(segments),
            bytes_on_disk: AtomicU64::new(bytes_on_disk),
            max_tokens,
            kick,
            syncs: AtomicU64::new(0),
            records_synced: AtomicU64::new(0),
            last_sync_nanos: AtomicU64::new(u64::MAX),
        };
        (log, kicked)
    }

    fn syncs_enabled(&self) -> bool {
        self.durability != Durability::None
    }

    /// Fails with `Poisoned` once a write or sync failed.
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        self.poison.check()
    }

    /// Records the first failure, wakes every waiter (they will see the
    /// poison) and returns the error for the caller that hit it.
    fn poison(&self, cause: String) -> Error {
        let error = self.poison.set(cause);
        self.wake_waiters(Pos::MAX);
        error
    }

    /// Notes a fencing token written under index shard `shard`.
    pub(crate) fn note_token(&self, shard: usize, token: u64) {
        let slot = &self.max_tokens[shard % self.max_tokens.len()];
        if slot.load(Ordering::Relaxed) < token {
            slot.store(token, Ordering::Relaxed);
        }
    }

    fn token_floor(&self) -> u64 {
        self.max_tokens
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0)
    }

    /// Appends one encoded frame and returns where it landed. It is not
    /// written yet: see [`wait`](Self::wait).
    pub(crate) fn append(&self, frame: &[u8]) -> Result<Loc> {
        self.check()?;
        let len = frame.len() as u32;
        loop {
            let mut t = self.tail.lock();
            if u64::from(t.head_end) + u64::from(len) <= t.head.size {
                let loc = Loc {
                    segment: t.head.id,
                    offset: t.head_end,
                    len,
                };
                t.buf.extend_from_slice(frame);
                t.head_end += len;
                t.records += 1;
                let buffered = t.buf.len();
                drop(t);
                if self.durability == Durability::None && buffered >= WRITE_AT {
                    if buffered >= WRITE_MYSELF_AT {
                        self.ensure_written(loc.end())?;
                    } else {
                        let _ = self.kick.try_send(());
                    }
                }
                return Ok(loc);
            }
            let full = t.head.id;
            drop(t);
            self.roll(full, frame.len())?;
        }
    }

    /// Waits until the frame ending at `end` is as durable as the store's
    /// durability asks.
    pub(crate) fn wait(&self, end: Pos) -> Result<()> {
        match self.durability {
            Durability::None => self.check(),
            Durability::Buffered { .. } => self.ensure_written(end),
            Durability::Sync => self.wait_durable(end),
        }
    }

    fn wait_durable(&self, end: Pos) -> Result<()> {
        if self.durable.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        // Nobody is writing: write and sync here, sparing the hand-off to
        // the writer thread and back. Callers that find it busy leave their
        // frames to the next sync (group commit), by whichever thread.
        //
        // If another thread is syncing, its sync and the next one that
        // takes this frame are expected within a few sync latencies: wait
        // for them yielding the processor rather than parking, trying the
        // writer again each turn. Parking costs a futex sleep and wake per
        // frame and lets the processors go idle between syncs; with many
        // callers on few cores that, not the disk, bounded throughput (64
        // callers on 2 cores: ~43 k pairs/s parked, ~72 k yielding,
        // measured side by side). So syncs run back to back, each taking
        // every frame appended during the previous one, once the callers it
        // finds waiting have appended theirs (`gather_blocking`).
        let spin = self.spin_budget();
        let started = Instant::now();
        let _counted = Counted::enter(&self.blocking_waiters);
        loop {
            if let Some(mut io) = self.io.try_lock() {
                if self.durable.load(Ordering::Acquire) < end {
                    self.gather_blocking();
                    self.sync(&mut io, false)?;
                }
            }
            if self.durable.load(Ordering::Acquire) >= end {
                return self.check();
            }
            self.check()?;
            if started.elapsed() >= spin {
                break;
            }
            std::thread::yield_now();
        }
        let _ = self.kick.try_send(());
        loop {
            {
                // Checked under the lock a waker takes after moving
                // `durable` or poisoning: no wakeup is lost.
                let mut waiters = self.waiters.lock();
                self.check()?;
                if self.durable.load(Ordering::Acquire) >= end {
                    return Ok(());
                }
                waiters.push((end, Waiter::Thread(std::thread::current())));
            }
            std::thread::park();
        }
    }

    /// Before a blocking caller's sync (with `io` held): while other
    /// blocking callers are waiting whose frames are not in the buffer yet,
    /// yield so they can append them, for at most half the last sync's
    /// latency ([`MAX_GATHER`] at most); not at all for a lone caller.
    ///
    /// Each waiting caller has one frame: in the buffer, or synced already
    /// by a sync it has not seen finish yet. Those come back with their next
    /// frame within a few turns of the processor, and without this the
    /// first caller to find the writer free synced before they did: 64
    /// threads on 2 cores put ~22 records in a sync; holding it back put
    /// ~54, and made ~15 % more pairs per second with less CPU per pair
    /// (docs/BENCHMARKS.md, thirteenth session). The async path does the
    /// same in [`Log::gather`].
    fn gather_blocking(&self) {
        let last = self.last_sync_nanos.load(Ordering::Relaxed);
        let Some(wait) = gather_deadline(last) else {
            return;
        };
        let deadline = Instant::now() + wait;
        while !gathered(
            self.tail.lock().records,
            self.blocking_waiters.load(Ordering::SeqCst),
        ) && !self.is_poisoned()
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }

    /// How long a caller waiting for a sync yields before it parks: four
    /// sync latencies (its frame usually rides the sync after the one in
    /// progress), at most [`MAX_SPIN`], none before the first sync is
    /// measured. Slow disks (an 8 ms fsync) park after `MAX_SPIN`, so the
    /// processor is not held for long.
    fn spin_budget(&self) -> Duration {
        let last = self.last_sync_nanos.load(Ordering::Relaxed);
        if last == u64::MAX {
            return Duration::ZERO;
        }
        Duration::from_nanos(last.saturating_mul(4)).min(MAX_SPIN)
    }

    /// Wakes the waiters for positions up to `upto`.
    fn wake_waiters(&self, upto: Pos) {
        let ready: Vec<Waiter> = {
            let mut waiters = self.waiters.lock();
            if waiters.is_empty() {
                return;
            }
            let mut ready = Vec::new();
            let (mut tasks_woken, mut tasks_left) = (0, 0);
            let mut i = 0;
            while i < waiters.len() {
                let is_task = usize::from(matches!(waiters[i].1, Waiter::Task(_)));
                if waiters[i].0 <= upto {
                    tasks_woken += is_task;
                    ready.push(waiters.swap_remove(i).1);
                } else {
                    tasks_left += is_task;
                    i += 1;
                }
            }
            if tasks_woken > 0 {
                self.task_waiters.fetch_sub(tasks_woken, Ordering::SeqCst);
                self.gather_target
                    .store(tasks_woken + tasks_left, Ordering::Relaxed);
            }
            ready
        };
        for waiter in ready {
            match waiter {
                Waiter::Thread(thread) => thread.unpark(),
                Waiter::Task(waker) => waker.wake(),
            }
        }
    }

    /// The `Sync` wait of an async caller: a future that registers the
    /// task with the group commit and kicks the writer thread, which syncs
    /// and wakes it. No thread blocks on the caller's behalf.
    pub(crate) fn wait_async(&self, end: Pos) -> DurableWait<'_> {
        DurableWait {
            log: self,
            end,
            registered: None,
        }
    }

    /// Before a sync of the writer thread: if the last sync woke async
    /// tasks, give them a moment to append their next frames so that this
    /// sync takes them all, instead of syncing the first few and leaving
    /// the rest for the sync after. Tasks woken together come back within
    /// microseconds (no thread switch each), so waiting for them costs far
    /// less than the sync their frames would otherwise miss. Held back for
    /// at most half the last sync's latency ([`MAX_GATHER`] at most), and
    /// not at all for a lone task.
    fn gather(&self) {
        let target = self.gather_target.load(Ordering::Relaxed);
        let last = self.last_sync_nanos.load(Ordering::Relaxed);
        let Some(wait) = gather_deadline(last).filter(|_| target >= 2) else {
            return;
        };
        let deadline = Instant::now() + wait;
        // SeqCst pairs with `register_task`: either this sees the count
        // reach the target, or the task that reaches it sees `gathering`.
        self.gathering.store(true, Ordering::SeqCst);
        while self.task_waiters.load(Ordering::SeqCst) < target && !self.is_poisoned() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::park_timeout(deadline - now);
        }
        self.gathering.store(false, Ordering::SeqCst);
    }

    fn is_poisoned(&self) -> bool {
        self.poison.is_set()
    }

    /// Counts a task that just joined `waiters`; wakes the gathering writer
    /// thread when the tasks it expects are all back.
    fn register_task(&self) {
        let waiting = self.task_waiters.fetch_add(1, Ordering::SeqCst) + 1;
        if waiting >= self.gather_target.load(Ordering::Relaxed)
            && self.gathering.load(Ordering::SeqCst)
        {
            if let Some(writer) = self.writer_thread.get() {
                writer.unpark();
            }
        }
    }

    /// Makes sure everything before `end` has been handed to the operating
    /// system, writing the buffer if nobody has.
    pub(crate) fn ensure_written(&self, end: Pos) -> Result<()> {
        if self.written.load(Ordering::Acquire) >= end {
            return self.check();
        }
        let mut io = self.io.lock();
        if self.written.load(Ordering::Acquire) < end {
            self.write_out(&mut io)?;
        }
        self.check()
    }

    /// Writes the buffer to the head segment in one write.
    fn write_out(&self, io: &mut Io) -> Result<()> {
        self.check()?;
        let (start, head, records) = {
            let mut t = self.tail.lock();
            if t.buf.is_empty() {
                return Ok(());
            }
            std::mem::swap(&mut t.buf, &mut io.spare);
            let start = t.buf_pos;
            t.buf_pos += io.spare.len() as u64;
            (start, Arc::clone(&t.head), std::mem::take(&mut t.records))
        };
        let result = head
            .file
            .write_all_at(&io.spare, u64::from(pos_offset(start)));
        let len = io.spare.len() as u64;
        io.spare.clear();
        // A burst the writer fell behind on leaves buffers of up to
        // WRITE_MYSELF_AT and more; once a write is back to the usual size
        // (or one buffer is past the bound), give the memory back and keep
        // what the usual size needs.
        let usual = 2 * WRITE_AT;
        if io.spare.capacity() > usual
            && (len <= WRITE_AT as u64 || io.spare.capacity() > WRITE_MYSELF_AT)
        {
            io.spare.shrink_to(usual);
        }
        if let Err(e) = result {
            return Err(self.poison(format!("writing {} failed: {e}", head.path.display())));
        }
        io.unsynced_records += records;
        self.written.store(start + len, Ordering::Release);
        Ok(())
    }

    /// Writes the buffer and syncs the head segment. Unless `marks_too`,
    /// a buffer that holds only marks is left alone, so an idle store does
    /// not sync forever.
    fn sync(&self, io: &mut Io, marks_too: bool) -> Result<()> {
        match self.prepare_sync(io, marks_too)? {
            Some(pending) => self.finish_sync(pending),
            None => Ok(()),
        }
    }

    /// The half of a sync that needs `io`: writes the buffer and says what
    /// the `fdatasync` must cover (`None`: nothing new to sync).
    fn prepare_sync(&self, io: &mut Io, marks_too: bool) -> Result<Option<PendingSync>> {
        if !marks_too && io.unsynced_records == 0 && self.tail.lock().records == 0 {
            self.check()?;
            return Ok(None);
        }
        self.write_out(io)?;
        let target = self.written.load(Ordering::Acquire);
        if target <= self.durable.load(Ordering::Acquire) {
            return Ok(None);
        }
        // Under `io`, so `target` is in this segment: a roll needs `io`.
        let head = Arc::clone(&self.tail.lock().head);
        if let Some(prefill) = &mut io.prefill {
            if let Err(e) = prefill.write_ahead(&head, pos_offset(target)) {
                return Err(self.poison(format!("prefilling {} failed: {e}", head.path.display())));
            }
        }
        let records = std::mem::take(&mut io.unsynced_records);
        Ok(Some(PendingSync {
            target,
            head,
            records,
        }))
    }

    /// The half of a sync that needs no lock: `fdatasync`, then `durable`
    /// moves and waiters wake.
    fn finish_sync(&self, pending: PendingSync) -> Result<()> {
        let started = Instant::now();
        self.sync_segment(&pending.head)?;
        self.synced(started, pending.records, pending.target);
        // A mark rides with the next write, telling recovery that damage
        // before `target` is corruption, not a torn tail.
        self.append_mark(pending.target);
        Ok(())
    }

    /// `fdatasync` of `segment`. A failure poisons the log (SPEC §4): the
    /// kernel may have dropped dirty pages, frames included, and a later
    /// sync of the file could then report success.
    fn sync_segment(&self, segment: &Segment) -> Result<()> {
        if let Err(e) = segment.file.sync_data() {
            return Err(self.poison(format!(
                "fdatasync of {} failed: {e}",
                segment.path.display()
            )));
        }
        Ok(())
    }

    fn synced(&self, started: Instant, records: u64, target: Pos) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_sync_nanos.store(nanos, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.records_synced.fetch_add(records, Ordering::Relaxed);
        // A sync made without `io` may finish after a roll synced further.
        self.durable.fetch_max(target, Ordering::AcqRel);
        self.wake_waiters(target);
    }

    fn append_mark(&self, synced_upto: Pos) {
        let mut mark = Vec::with_capacity(40);
        format::encode_mark(&mut mark, synced_upto, self.token_floor());
        let mut t = self.tail.lock();
        // A mark that does not fit is left out: it only sharpens recovery's
        // verdict, and rolling here would need the lock we hold.
        if u64::from(t.head_end) + mark.len() as u64 <= t.head.size {
            t.buf.extend_from_slice(&mark);
            t.head_end += mark.len() as u32;
        }
    }

    /// `Buffered`'s timed sync: writes the buffer under `io`, then syncs
    /// with `io` released. A `Buffered` caller waits only for its frame to
    /// be written, which needs `io`; holding it through the `fdatasync`
    /// made callers wait for the disk every `max_delay` (compare
    /// `--only buffered-2`, three alternating runs each: 181–212 k →
    /// 221–254 k pairs/s; the p99 of 70–88 µs did not move, its cause is
    /// elsewhere).
    fn sync_in_background(&self) -> Result<()> {
        let pending = self.prepare_sync(&mut self.io.lock(), false)?;
        pending.map_or(Ok(()), |pending| self.finish_sync(pending))
    }

    /// Writes and (unless the durability is `None`) syncs everything
    /// appended so far.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut io = self.io.lock();
        if self.syncs_enabled() {
            self.sync(&mut io, false)
        } else {
            self.write_out(&mut io)
        }
    }

    /// Appends a mark carrying the current token floor and flushes it, so
    /// that fencing tokens keep rising after the segments that held them
    /// are deleted.
    pub(crate) fn persist_token_floor(&self) -> Result<()> {
        let mut mark = Vec::with_capacity(40);
        format::encode_mark(
            &mut mark,
            self.durable.load(Ordering::Acquire),
            self.token_floor(),
        );
        self.append(&mark)?;
        let mut io = self.io.lock();
        if self.syncs_enabled() {
            self.sync(&mut io, true)
        } else {
            self.write_out(&mut io)
        }
    }

    /// Closes the log cleanly: everything written and, unless the
    /// durability is `None`, synced and covered by a final mark.
    pub(crate) fn close(&self) -> Result<()> {
        let mut io = self.io.lock();
        if self.syncs_enabled() {
            self.sync(&mut io, false)?;
            self.sync(&mut io, true)
        } else {
            self.write_out(&mut io)
        }
    }

    /// Starts segment `full + 1` once `full` cannot take a frame of `need`
    /// bytes; a no-op if another caller already did.
    fn roll(&self, full: u32, need: usize) -> Result<()> {
        let mut io = self.io.lock();
        if self.tail.lock().head.id != full {
            return Ok(());
        }
        self.check()?;
        let id = full.checked_add(1).ok_or_else(|| {
            Error::io(
                format!("cannot start a new segment in {}", self.dir.display()),
                std::io::Error::other("segment ids are exhausted"),
            )
        })?;
        // The index keeps segment ids modulo SEGMENT_SPAN.
        let oldest = self.segments.read().keys().next().copied().unwrap_or(id);
        if id - oldest >= SEGMENT_SPAN {
            return Err(Error::io(
                format!("cannot start a new segment in {}", self.dir.display()),
                std::io::Error::other(format!(
                    "the log would span {SEGMENT_SPAN} segment files; run maintenance or use larger segments"
                )),
            ));
        }
        // Room for the mark a roll appends first.
        let size = self
            .segment_size
            .max(u64::from(HEADER_LEN) + need as u64 + MARK_ROOM);
        let on_disk = self.bytes_on_disk.load(Ordering::Relaxed);
        if let Some(budget) = self.disk_budget {
            if on_disk + size > budget {
                return Err(Error::DiskBudgetExceeded {
                    budget,
                    needed: on_disk + size,
                });
            }
        }
        // Creating a segment syncs its file and the directory; a failed
        // fsync there poisons like any other (SPEC §4), so no later write
        // trusts a retry of it.
        let seg = match Segment::create(&*self.fs, &self.dir, id, size, self.syncs_enabled()) {
            Ok(seg) => Arc::new(seg),
            Err(e) => return Err(self.poison(format!("starting a new segment failed: {e}"))),
        };
        self.segments.write().insert(id, Arc::clone(&seg));
        self.bytes_on_disk.fetch_add(size, Ordering::Relaxed);
        let new_start = pos(id, HEADER_LEN);
        let (start, old, records) = {
            let mut t = self.tail.lock();
            std::mem::swap(&mut t.buf, &mut io.spare);
            let start = t.buf_pos;
            t.buf_pos = new_start;
            t.head_end = HEADER_LEN;
            let old = std::mem::replace(&mut t.head, seg);
            self.head_id.store(id, Ordering::Release);
            (start, old, std::mem::take(&mut t.records))
        };
        let written = old
            .file
            .write_all_at(&io.spare, u64::from(pos_offset(start)));
        io.spare.clear();
        if let Err(e) = written {
            return Err(self.poison(format!("writing {} failed: {e}", old.path.display())));
        }
        io.unsynced_records += records;
        self.written.store(new_start, Ordering::Release);
        if self.syncs_enabled() {
            // The old segment is complete: sync it so that `durable` can
            // move into the new one.
            let started = Instant::now();
            self.sync_segment(&old)?;
            self.synced(started, std::mem::take(&mut io.unsynced_records), new_start);
            self.append_mark(new_start);
        }
        Ok(())
    }

    /// The payload of the frame at `loc`, read back from the file (written
    /// first if it is still in the buffer).
    pub(crate) fn read_payload(&self, segment: u32, offset: u32, len: u32) -> Result<Vec<u8>> {
        self.ensure_written(pos(segment, offset + len))?;
        let seg = self.segment(segment)?;
        seg.read_payload(offset, len)
    }

    pub(crate) fn segment(&self, id: u32) -> Result<Arc<Segment>> {
        self.segments
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| Error::Corrupt {
                file: self.dir.join(super::segment::file_name(id)),
                offset: 0,
                reason: "the index points into a segment that is gone".into(),
            })
    }

    /// The head segment's id.
    pub(crate) fn head_id(&self) -> u32 {
        self.head_id.load(Ordering::Acquire)
    }

    /// Deletes a segment file that holds nothing live; the deletion is made
    /// durable before returning so that deletions reach the disk oldest
    /// first. Then gives the file's blocks back in steps, resting between
    /// them (see [`release_in_steps`], [`Log::rest_after_cut`]), unless the
    /// durability is `None`: there the
    /// removal is never synced, and a power cut could bring the name back
    /// on a file cut short, which recovery would refuse as damaged.
    pub(crate) fn delete_segment(&self, id: u32) -> Result<Deleted> {
        let Some(seg) = self.segments.write().remove(&id) else {
            return Ok(Deleted::default());
        };
        self.fs
            .remove(&seg.path)
            .map_err(|e| Error::io(format!("cannot delete {}", seg.path.display()), e))?;
        if self.syncs_enabled() {
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                return Err(self.poison(format!(
                    "fsync of the directory {} failed: {e}",
                    self.dir.display()
                )));
            }
        }
        self.bytes_on_disk.fetch_sub(seg.size, Ordering::Relaxed);
        let mut rested = Duration::ZERO;
        let cut = self.syncs_enabled()
            && release_in_steps(&*seg.file, seg.size, |took| {
                let rest = self.rest_after_cut(took);
                std::thread::sleep(rest);
                rested += rest;
            });
        Ok(Deleted {
            bytes: seg.size,
            freed_whole: !cut,
            rested,
        })
    }

    /// How long a pass deleting a segment rests after a cut that took
    /// `took`: as long again (at most [`MAX_CUT_REST`]), so that giving
    /// blocks back holds the disk half the time at most; not at all once
    /// the store is closing, whose last handle waits for the pass.
    pub(crate) fn rest_after_cut(&self, took: Duration) -> Duration {
        cut_rest(took, self.hurrying.load(Ordering::Relaxed))
    }

    /// The store is closing: a pass under way finishes without resting.
    pub(crate) fn hurry(&self) {
        self.hurrying.store(true, Ordering::Relaxed);
    }

    pub(crate) fn bytes_on_disk(&self) -> u64 {
        self.bytes_on_disk.load(Ordering::Relaxed)
    }

    pub(crate) fn sync_figures(&self) -> (u64, u64, Option<Duration>) {
        let last = self.last_sync_nanos.load(Ordering::Relaxed);
        (
            self.syncs.load(Ordering::Relaxed),
            self.records_synced.load(Ordering::Relaxed),
            (last != u64::MAX).then(|| Duration::from_nanos(last)),
        )
    }
}

/// What [`Log::delete_segment`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deleted {
    /// The segment's size; zero if it was already gone.
    pub(crate) bytes: u64,
    /// Its blocks were left to be freed all at once when it closed.
    pub(crate) freed_whole: bool,
    /// Time spent resting between its cuts.
    pub(crate) rested: Duration,
}

/// Bytes of a deleted segment given back per truncation. Closing a deleted
/// 64 MiB segment frees all its blocks at once, and the log's `fdatasync`
/// waits behind that: on the development VM (ext4 without a journal,
/// mounted with `discard`) the close discards the whole 64 MiB in one
/// request the disk takes 12–18 ms over, and a sync queued behind it
/// waited up to 36 ms. Cut in steps, each piece of that work is short
/// and a sync waits for one step at most; smaller steps kept `Sync`
/// writers faster while the pass ran and made the pass longer, and
/// 256 KiB was the balance (`footprint`'s deletion probe; the figures are
/// in docs/BENCHMARKS.md, sixteenth session).
const RELEASE_STEP: u64 = 1 << 18;

/// The longest rest after one cut. Back to back, the cuts still kept
/// `Sync` writers to a quarter of their quiet rate on a VM whose disk took
/// each cut's discard slowly (0.5–1 ms); resting as long as each cut took
/// kept them at 0.55–0.93 of it, and the pass took about three times as
/// long (docs/BENCHMARKS.md, twenty-first session). The bound keeps one
/// stalled cut from stopping the pass for long.
const MAX_CUT_REST: Duration = Duration::from_millis(100);

/// The rest after a cut that took `took`; none when `hurrying`.
fn cut_rest(took: Duration, hurrying: bool) -> Duration {
    if hurrying {
        Duration::ZERO
    } else {
        took.min(MAX_CUT_REST)
    }
}

/// Cuts a deleted segment's file down to nothing, [`RELEASE_STEP`] bytes at
/// a time, before it is closed; false if a cut failed, leaving the rest to
/// the close. The file has no name and its removal is durable, so nothing
/// reads it again, and a crash midway leaves nothing behind on a local
/// file system (ext4, XFS and btrfs free an unlinked file's blocks when
/// they mount, or their check does).
///
/// `rest` is called between two cuts with the time the first took.
fn release_in_steps(
    file: &dyn FileHandle,
    created_len: u64,
    mut rest: impl FnMut(Duration),
) -> bool {
    // The file's own length, in case it grew past what it was created with.
    let mut len = file.size().unwrap_or(created_len);
    while len > 0 {
        len = len.saturating_sub(RELEASE_STEP);
        let started = Instant::now();
        if file.truncate(len).is_err() {
            return false;
        }
        if len > 0 {
            rest(started.elapsed());
        }
    }
    true
}

/// The writer thread: group commit for `Sync`, timed syncs for `Buffered`,
/// timed writes for `None`. Stops when `stop` is closed.
pub(crate) fn spawn_writer(
    log: Arc<Log>,
    kicked: Receiver<()>,
    stop: Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("idemlog-writer".into())
        .spawn(move || {
            let _ = log.writer_thread.set(std::thread::current());
            let tick = match log.durability {
                Durability::Sync => None,
                Durability::Buffered { max_delay } => Some(max_delay.max(Duration::from_millis(1))),
                Durability::None => Some(NONE_WRITE_EVERY),
            };
            loop {
                let stopped = match tick {
                    None => select! {
                        recv(kicked) -> m => m.is_err(),
                        recv(stop) -> _ => true,
                    },
                    Some(t) => select! {
                        recv(kicked) -> m => m.is_err(),
                        recv(stop) -> _ => true,
                        default(t) => false,
                    },
                };
                if stopped {
                    return;
                }
                // Failures poison the log and wake the waiters; the thread
                // keeps serving kicks, which then fail fast.
                let _ = match log.durability {
                    Durability::Buffered { .. } => log.sync_in_background(),
                    Durability::Sync => {
                        log.gather();
                        log.flush()
                    }
                    Durability::None => log.flush(),
                };
            }
        })
}

/// Where in `waiters` the task that registered `waker` for `end` is.
fn task_entry(waiters: &[(Pos, Waiter)], end: Pos, waker: &Waker) -> Option<usize> {
    waiters
        .iter()
        .position(|(at, w)| *at == end && matches!(w, Waiter::Task(t) if t.will_wake(waker)))
}

/// A `Sync` wait as a future (see [`Log::wait_async`]).
pub(crate) struct DurableWait<'a> {
    log: &'a Log,
    end: Pos,
    /// The waker last registered in `log.waiters`, if any.
    registered: Option<Waker>,
}

impl Future for DurableWait<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let log = this.log;
        if log.durable.load(Ordering::Acquire) >= this.end {
            // `wake_waiters` removes any entry of ours.
            this.registered = None;
            return Poll::Ready(log.check());
        }
        {
            // Checked under the lock a waker takes after moving `durable`
            // or poisoning: no wake-up is lost.
            let mut waiters = log.waiters.lock();
            if let Err(e) = log.check() {
                this.registered = None;
                return Poll::Ready(Err(e));
            }
            if log.durable.load(Ordering::Acquire) >= this.end {
                this.registered = None;
                return Poll::Ready(Ok(()));
            }
            match &this.registered {
                Some(old) if old.will_wake(cx.waker()) => {}
                Some(old) => {
                    // Polled from another task: move the entry to its waker.
                    if let Some(i) = task_entry(&waiters, this.end, old) {
                        waiters[i].1 = Waiter::Task(cx.waker().clone());
                    }
                }
                None => {
                    waiters.push((this.end, Waiter::Task(cx.waker().clone())));
                    log.register_task();
                }
            }
            this.registered = Some(cx.waker().clone());
        }
        let _ = log.kick.try_send(());
        Poll::Pending
    }
}

impl Drop for DurableWait<'_> {
    /// A wait given up (its task dropped) leaves the list, so the writer
    /// thread does not count on it.
    fn drop(&mut self) {
        let Some(mine) = self.registered.take() else {
            return;
        };
        let mut waiters = self.log.waiters.lock();
        if let Some(i) = task_entry(&waiters, self.end, &mine) {
            waiters.swap_remove(i);
            self.log.task_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// How long a sync may be held back for callers to append (half the last
/// sync's latency in ns, `u64::MAX` before the first), or `None` for no
/// wait: a log that has not synced yet has no latency to go by. Both
/// gathers use it: the writer thread's for tasks ([`Log::gather`]) and a
/// blocking caller's ([`Log::gather_blocking`]).
fn gather_deadline(last_sync_nanos: u64) -> Option<Duration> {
    (last_sync_nanos != u64::MAX).then(|| Duration::from_nanos(last_sync_nanos / 2).min(MAX_GATHER))
}

/// Whether `pending` frames in the buffer are enough for `waiting`
/// blocking callers (the gathering one among them): all but one, so a
/// caller the scheduler keeps off a processor does not hold up the rest.
/// A lone caller, or two, never wait.
fn gathered(pending: u64, waiting: usize) -> bool {
    pending + 1 >= waiting as u64
}

/// Counts a caller in a counter while it lives, however it leaves.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_is_held_back_at_most_half_the_last_one_and_never_before_the_first() {
        assert_eq!(gather_deadline(u64::MAX), None);
        assert_eq!(gather_deadline(200_000), Some(Duration::from_micros(100)));
        assert_eq!(gather_deadline(60_000_000), Some(MAX_GATHER));
        assert_eq!(gather_deadline(0), Some(Duration::ZERO));
    }

    #[test]
    fn a_sync_waits_for_all_waiting_callers_but_one() {
        // A lone caller, or two, go at once: the caller's own frame is in.
        assert!(gathered(1, 1));
        assert!(gathered(1, 2));
        // 64 callers: 62 frames in is not enough, 63 is.
        assert!(!gathered(62, 64));
        assert!(gathered(63, 64));
        // Callers that left meanwhile lower the bar.
        assert!(gathered(40, 41));
        assert!(gathered(0, 0));
    }

    #[test]
    fn a_cut_is_followed_by_as_long_a_rest_unless_the_store_is_closing() {
        let ms = Duration::from_millis;
        assert_eq!(cut_rest(ms(1), false), ms(1));
        assert_eq!(cut_rest(Duration::ZERO, false), Duration::ZERO);
        assert_eq!(cut_rest(ms(10_000), false), MAX_CUT_REST);
        assert_eq!(cut_rest(ms(1), true), Duration::ZERO);
        assert_eq!(cut_rest(ms(10_000), true), Duration::ZERO);
    }

    /// A file that records its cuts and can fail the n-th.
    #[derive(Debug)]
    struct CutFile {
        len: parking_lot::Mutex<u64>,
        cuts: parking_lot::Mutex<Vec<u64>>,
        fail_at: usize,
    }

    impl FileHandle for CutFile {
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
            unreachable!("a deleted segment is not read")
        }
        fn write_all_at(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            unreachable!("a deleted segment is not written")
        }
        fn sync_data(&self) -> std::io::Result<()> {
            unreachable!("a deleted segment is not synced")
        }
        fn size(&self) -> std::io::Result<u64> {
            Ok(*self.len.lock())
        }
        fn allocate(&self, _: u64) -> std::io::Result<()> {
            unreachable!("a deleted segment is not grown")
        }
        fn truncate(&self, len: u64) -> std::io::Result<()> {
            let mut cuts = self.cuts.lock();
            if cuts.len() + 1 == self.fail_at {
                return Err(std::io::Error::other("injected"));
            }
            cuts.push(len);
            *self.len.lock() = len;
            Ok(())
        }
    }

    #[test]
    fn a_deleted_segment_is_cut_in_steps_with_a_rest_between_two_cuts() {
        let len = 3 * RELEASE_STEP + 12_345;
        let file = CutFile {
            len: parking_lot::Mutex::new(len),
            cuts: parking_lot::Mutex::new(Vec::new()),
            fail_at: usize::MAX,
        };
        let mut rests = 0;
        assert!(release_in_steps(&file, len, |_| rests += 1));
        let want = vec![2 * RELEASE_STEP + 12_345, RELEASE_STEP + 12_345, 12_345, 0];
        assert_eq!(*file.cuts.lock(), want);
        assert_eq!(rests, 3, "a rest between two cuts, none after the last");

        // A failed cut ends the release without a rest after it.
        let file = CutFile {
            len: parking_lot::Mutex::new(len),
            cuts: parking_lot::Mutex::new(Vec::new()),
            fail_at: 3,
        };
        let mut rests = 0;
        assert!(!release_in_steps(&file, len, |_| rests += 1));
        assert_eq!(file.cuts.lock().len(), 2);
        assert_eq!(rests, 2);
    }

    #[test]
    fn a_counted_caller_is_uncounted_however_it_leaves() {
        let count = AtomicUsize::new(0);
        {
            let _a = Counted::enter(&count);
            let _b = Counted::enter(&count);
            assert_eq!(count.load(Ordering::SeqCst), 2);
        }
        assert_eq!(count.load(Ordering::SeqCst), 0);
        let unwound = std::panic::catch_unwind(|| {
            let _c = Counted::enter(&count);
            panic!("a failing wait");
        });
        assert!(unwound.is_err());
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
