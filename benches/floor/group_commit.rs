//! The group-commit floor: 64 async tasks, each waiting for its own record
//! to be synced, around a log that does nothing but append bytes, write
//! them and `fdatasync` — no index, no records to decide on, no store.
//!
//! It uses the protocol of idemlog's `Sync` log for async callers: a task
//! appends, registers its waker and waits; one syncing thread holds each
//! sync back until every task it expects is waiting (at most half the last
//! sync's latency, at most 1 ms), writes the gathered bytes to a file that
//! was zero-filled and synced first (so a sync flushes data only, like the
//! disk rows), syncs, then wakes the tasks whose records it covered. What
//! this row reaches is what any store can reach with this many tasks on
//! this machine: the sync plus the tasks' turnaround between two syncs
//! (their wake-ups, polls and the bench's own timing), with the store's
//! own work taken out.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Longest a sync is held back for the tasks to come back.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// What the syncing thread did over a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct SyncFigures {
    pub syncs: u64,
    pub records: u64,
}

/// An append-only log with a group commit and nothing else.
pub struct FloorLog {
    state: Mutex<State>,
    /// Records made durable so far (a record's sequence number is its
    /// position in append order, from 1).
    durable: AtomicU64,
    /// Set when a write or sync failed: waits end with an error instead of
    /// waiting forever.
    failed: AtomicBool,
    syncer: OnceLock<Thread>,
}

struct State {
    buf: Vec<u8>,
    /// Records appended so far.
    appended: u64,
    /// Tasks waiting, with the sequence number they wait for.
    waiting: Vec<(u64, Waker)>,
    /// Members not dropped yet: a sync that has them all waiting need not
    /// wait for more.
    active: usize,
}

impl FloorLog {
    /// A log with no members yet (see [`FloorLog::member`]).
    pub fn new() -> FloorLog {
        FloorLog {
            state: Mutex::new(State {
                buf: Vec::with_capacity(1 << 16),
                appended: 0,
                waiting: Vec::new(),
                active: 0,
            }),
            durable: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            syncer: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A task that panicked has already failed the run.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_syncer(&self) {
        if let Some(t) = self.syncer.get() {
            t.unpark();
        }
    }

    /// Appends `record` with `key` copied over its first bytes (the store
    /// would copy the key too) and returns its sequence number.
    pub fn append(&self, record: &[u8], key: &[u8]) -> u64 {
        let mut st = self.lock();
        let at = st.buf.len();
        st.buf.extend_from_slice(record);
        st.buf[at..at + key.len()].copy_from_slice(key);
        st.appended += 1;
        st.appended
    }

    /// Resolves once the record numbered `seq` is durable.
    pub fn durable(&self, seq: u64) -> Durable<'_> {
        Durable {
            log: self,
            seq,
            registered: false,
        }
    }

    /// A task's membership: the syncer counts on the task from here until
    /// the membership is dropped (the task finished, failed or panicked, or
    /// never ran). Make every member before starting the syncer, which
    /// stops once none is left.
    pub fn member(log: &Arc<FloorLog>) -> Member {
        log.lock().active += 1;
        Member(Arc::clone(log))
    }

    /// The syncing thread's loop: gathers, appends to `file` from its start
    /// (wrapping at `file_bytes`), syncs and wakes, until every task has
    /// left. If a write or sync fails, every wait ends with an error.
    pub fn run_syncer(&self, file: &File, file_bytes: u64) -> io::Result<SyncFigures> {
        let _ = self.syncer.set(std::thread::current());
        let result = self.sync_until_all_left(file, file_bytes);
        if result.is_err() {
            let waiting = {
                let mut st = self.lock();
                self.failed.store(true, Ordering::Release);
                std::mem::take(&mut st.waiting)
            };
            for (_, waker) in waiting {
                waker.wake();
            }
        }
        result
    }

    fn sync_until_all_left(&self, file: &File, file_bytes: u64) -> io::Result<SyncFigures> {
        let mut figures = SyncFigures::default();
        let mut spare: Vec<u8> = Vec::with_capacity(1 << 16);
        let mut offset = 0u64;
        let mut last_sync: Option<Duration> = None;
        loop {
            let (target, records) = {
                let mut st = self.lock();
                let mut deadline: Option<Instant> = None;
                loop {
                    if st.active == 0 && st.waiting.is_empty() {
                        return Ok(figures);
                    }
                    let waiting = st.waiting.len();
                    let now = Instant::now();
                    let wait = if waiting == 0 {
                        Duration::from_millis(5)
                    } else if waiting >= st.active {
                        break;
                    } else {
                        let hold = last_sync.map_or(Duration::ZERO, |s| (s / 2).min(MAX_GATHER));
                        let until = *deadline.get_or_insert(now + hold);
                        if now >= until {
                            break;
                        }
                        until - now
                    };
                    drop(st);
                    std::thread::park_timeout(wait);
                    st = self.lock();
                }
                std::mem::swap(&mut st.buf, &mut spare);
                let durable = self.durable.load(Ordering::Relaxed);
                (st.appended, st.appended - durable)
            };
            if offset + spare.len() as u64 > file_bytes {
                offset = 0;
            }
            file.write_all_at(&spare, offset)?;
            offset += spare.len() as u64;
            spare.clear();
            let started = Instant::now();
            file.sync_data()?;
            last_sync = Some(started.elapsed());
            figures.syncs += 1;
            figures.records += records;
            self.durable.store(target, Ordering::Release);
            let ready: Vec<Waker> = {
                let mut st = self.lock();
                let mut ready = Vec::with_capacity(st.waiting.len());
                let mut i = 0;
                while i < st.waiting.len() {
                    if st.waiting[i].0 <= target {
                        ready.push(st.waiting.swap_remove(i).1);
                    } else {
                        i += 1;
                    }
                }
                ready
            };
            for waker in ready {
                waker.wake();
            }
        }
    }
}

/// A task's wait for its record (see [`FloorLog::durable`]).
pub struct Durable<'a> {
    log: &'a FloorLog,
    seq: u64,
    registered: bool,
}

impl Future for Durable<'_> {
    type Output = Result<(), String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.log.durable.load(Ordering::Acquire) >= this.seq {
            return Poll::Ready(Ok(()));
        }
        let mut st = this.log.lock();
        // Checked again under the lock the syncer takes to wake or to fail:
        // no wake-up is lost.
        if this.log.durable.load(Ordering::Acquire) >= this.seq {
            return Poll::Ready(Ok(()));
        }
        if this.log.failed.load(Ordering::Acquire) {
            return Poll::Ready(Err("the floor's write or sync failed".into()));
        }
        let seq = this.seq;
        if this.registered {
            if let Some(entry) = st.waiting.iter_mut().find(|(s, _)| *s == seq) {
                entry.1 = cx.waker().clone();
            }
            return Poll::Pending;
        }
        this.registered = true;
        st.waiting.push((seq, cx.waker().clone()));
        // The first one starts the syncer's gather clock; the last one ends
        // the gather.
        let wake = st.waiting.len() == 1 || st.waiting.len() >= st.active;
        drop(st);
        if wake {
            this.log.wake_syncer();
        }
        Poll::Pending
    }
}

/// See [`FloorLog::member`].
pub struct Member(Arc<FloorLog>);

impl std::ops::Deref for Member {
    type Target = FloorLog;
    fn deref(&self) -> &FloorLog {
        &self.0
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.0.lock().active -= 1;
        self.0.wake_syncer();
    }
}
