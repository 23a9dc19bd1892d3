//! loom models of the three hand-offs where threads meet (`--cfg idemlog_loom` only):
//!
//! ```text
//! RUSTFLAGS="--cfg idemlog_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom_models
//! ```
//!
//! loom explores every interleaving of a small program, but only of code
//! built on its own sync types. The engines use parking_lot and crossbeam,
//! and swapping those for loom's would touch every engine file, so each
//! model below is a small standalone copy of one protocol, written to
//! mirror the engine step by step (the correspondence is noted on each
//! step). The decision itself is not copied: the reservation model calls
//! idemlog's real `decision` functions.
//!
//! 1. The reservation compare-and-set (`store::memory::MemoryEngine::update`,
//!    `Shared::reserve`/`with_held`, `Counters::next_token`): under the
//!    shard lock, read the record, decide, draw a token, store. Properties:
//!    exactly one caller acquires; a stale holder and a taker-over never both
//!    succeed; replays return the one stored response.
//! 2. The group-commit hand-off (`log::writer::Log::{append, wait_durable,
//!    sync, synced}` + `spawn_writer`): callers append to a shared buffer
//!    and wait for `durable`; the writer thread, kicked through a one-slot
//!    channel, swaps the buffer out, writes it, syncs, publishes `durable`
//!    and wakes waiters under the wait lock. Properties: a caller returns
//!    only once its frame is synced; no wake-up is lost (a lost wake-up is a
//!    deadlock, which loom reports).
//! 3. The async hand-off (`log::writer::{DurableWait::poll, Log::wake_waiters}`
//!    and the writer thread): a task appends, then its future checks
//!    `durable`, registers its waker under the wait lock (checking again
//!    there), kicks the writer thread and returns pending; the writer syncs,
//!    publishes `durable` and takes the wakers it covered under the same
//!    lock. Properties as in model 2. The writer's gather before a sync
//!    (`Log::gather`) only delays the sync, by a bounded park, so it is left
//!    out: it cannot lose a wake-up. The same holds for a blocking leader's
//!    gather (`Log::gather_blocking`), a bounded yield loop before its sync
//!    in model 2.

#![cfg(idemlog_loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use idemlog::decision::{self, Decision};
use idemlog::{Bytes, Fingerprint, IdempotencyKey, Record, Timestamp};

// ---------------------------------------------------------------- model 1

const LEASE: std::time::Duration = std::time::Duration::from_millis(100);
const TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// One shard holding one identity's record (`MemoryEngine` shard).
struct Shard {
    record: Mutex<Option<Record>>,
    /// `Counters` stripe: tokens drawn with `fetch_add` inside the lock.
    next_token: AtomicU64,
}

#[derive(Debug, PartialEq)]
enum Answer {
    Acquired(u64),
    Replay(Bytes),
    InProgress,
    Conflict,
}

fn key() -> IdempotencyKey {
    IdempotencyKey::new("t", "k").expect("valid")
}

/// `Shared::reserve` over `MemoryEngine::update`.
fn reserve(shard: &Shard, fp: &Fingerprint, now: Timestamp) -> Answer {
    let mut slot = shard.record.lock().expect("shard lock");
    match decision::decide(slot.as_ref(), fp, now) {
        Decision::Acquire { takeover } => {
            let token = shard.next_token.fetch_add(1, Ordering::Relaxed);
            let record = decision::acquired_record(
                slot.as_ref(),
                takeover,
                &key(),
                fp,
                now,
                LEASE,
                TTL,
                token,
            );
            *slot = Some(record);
            Answer::Acquired(token)
        }
        Decision::Replay => Answer::Replay(
            slot.as_ref()
                .and_then(|r| r.response().cloned())
                .expect("replay of a completed record"),
        ),
        Decision::InProgress { .. } => Answer::InProgress,
        Decision::Conflict { .. } => Answer::Conflict,
    }
}

/// `Shared::complete` over `with_held` (authorize, then put).
fn complete(shard: &Shard, token: u64, response: &'static [u8], now: Timestamp) -> bool {
    let mut slot = shard.record.lock().expect("shard lock");
    match decision::authorize(slot.as_ref(), token, now) {
        Ok(held) => {
            let done = decision::completed_record(held, Bytes::from_static(response), now, TTL);
            *slot = Some(done);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn concurrent_reservations_acquire_exactly_once_and_replay_its_response() {
    loom::model(|| {
        let shard = Arc::new(Shard {
            record: Mutex::new(None),
            next_token: AtomicU64::new(1),
        });
        let fp = Fingerprint::of_bytes(b"body");
        let now = Timestamp::from_millis(1_000);
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let shard = Arc::clone(&shard);
                thread::spawn(move || {
                    let answer = reserve(&shard, &fp, now);
                    if let Answer::Acquired(token) = answer {
                        let responses: [&'static [u8]; 3] = [b"r0", b"r1", b"r2"];
                        assert!(complete(&shard, token, responses[i], now));
                        return (answer, Some(responses[i]));
                    }
                    (answer, None)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let winners: Vec<_> = results.iter().filter_map(|(_, r)| *r).collect();
        assert_eq!(winners.len(), 1, "exactly one acquisition: {results:?}");
        for (answer, _) in &results {
            match answer {
                Answer::Acquired(_) | Answer::InProgress => {}
                Answer::Replay(bytes) => {
                    assert_eq!(&bytes[..], winners[0], "replayed another response")
                }
                Answer::Conflict => panic!("same fingerprint answered Conflict"),
            }
        }
    });
}

#[test]
fn a_stale_holder_and_a_taker_over_never_both_succeed() {
    loom::model(|| {
        let fp = Fingerprint::of_bytes(b"body");
        let start = Timestamp::from_millis(1_000);
        let late = Timestamp::from_millis(1_000 + 150); // the lease has run out
        let first = decision::acquired_record(None, false, &key(), &fp, start, LEASE, TTL, 1);
        let shard = Arc::new(Shard {
            record: Mutex::new(Some(first)),
            next_token: AtomicU64::new(2),
        });
        let stale = {
            let shard = Arc::clone(&shard);
            thread::spawn(move || complete(&shard, 1, b"late result", late))
        };
        let takers: Vec<_> = (0..2)
            .map(|_| {
                let shard = Arc::clone(&shard);
                thread::spawn(move || reserve(&shard, &fp, late))
            })
            .collect();
        let stale_ok = stale.join().expect("thread");
        let answers: Vec<_> = takers
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let acquired = answers
            .iter()
            .filter(|a| matches!(a, Answer::Acquired(_)))
            .count();
        assert!(acquired <= 1, "two takeovers: {answers:?}");
        assert!(
            !(stale_ok && acquired == 1),
            "the stale holder completed after a takeover: {answers:?}"
        );
        if stale_ok {
            for a in &answers {
                assert_eq!(a, &Answer::Replay(Bytes::from_static(b"late result")));
            }
        } else {
            assert_eq!(acquired, 1, "{answers:?}");
        }
    });
}

// ---------------------------------------------------------------- model 2

/// `Log`: the parts of the write path the hand-off uses. Positions count
/// frames instead of bytes.
struct Log {
    /// `tail`: frames not yet written, and the position after the last.
    tail: Mutex<(Vec<u64>, u64)>,
    /// `io`: one writer at a time.
    io: Mutex<()>,
    disk: Disk,
    written: AtomicU64,
    durable: AtomicU64,
    /// `wait_lock` + `wake`.
    wait_lock: Mutex<()>,
    wake: Condvar,
    kick: Kick,
}

/// The file: frames written, and how many of them are synced.
type Disk = Mutex<(Vec<u64>, usize)>;

/// `kick`: a bounded(1) channel, as a flag and a condvar.
struct Kick {
    state: Mutex<(bool, bool)>, // (pending, stopped)
    kicked: Condvar,
}

impl Kick {
    fn new() -> Kick {
        Kick {
            state: Mutex::new((false, false)),
            kicked: Condvar::new(),
        }
    }

    /// `kick.try_send(())`: a no-op when a kick is already pending.
    fn try_kick(&self) {
        let mut k = self.state.lock().expect("kick");
        if !k.0 {
            k.0 = true;
            self.kicked.notify_one();
        }
    }

    /// The writer thread's `select!`: waits for a kick and takes it; false
    /// once the channel is closed with no kick pending.
    fn take(&self) -> bool {
        let mut k = self.state.lock().expect("kick");
        while !k.0 && !k.1 {
            k = self.kicked.wait(k).expect("wait");
        }
        if !k.0 && k.1 {
            return false;
        }
        k.0 = false;
        true
    }

    /// Closing the channel (the store's drop).
    fn stop(&self) {
        self.state.lock().expect("kick").1 = true;
        self.kicked.notify_one();
    }
}

/// Two callers append frames 1 and 2 and wait with `wait`; each checks its
/// frame is synced when the wait returns. Then the writer stops.
fn two_callers_then_stop<L: Send + Sync + 'static>(
    log: Arc<L>,
    writer: fn(&L),
    append_and_wait: fn(&L, u64),
    disk: fn(&L) -> &Disk,
    kick: fn(&L) -> &Kick,
) {
    let writer = {
        let log = Arc::clone(&log);
        thread::spawn(move || writer(&log))
    };
    let callers: Vec<_> = (1..=2u64)
        .map(|frame| {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                append_and_wait(&log, frame);
                let d = disk(&log).lock().expect("disk");
                assert!(
                    d.0[..d.1].contains(&frame),
                    "frame {frame} acknowledged but not synced: {:?}",
                    *d
                );
            })
        })
        .collect();
    for c in callers {
        c.join().expect("caller");
    }
    kick(&log).stop();
    writer.join().expect("writer");
}

impl Log {
    /// `Log::append`: under the tail lock.
    fn append(&self, frame: u64) -> u64 {
        let mut t = self.tail.lock().expect("tail");
        t.0.push(frame);
        t.1 += 1;
        t.1
    }

    /// `Log::wait_durable`: one round of the leader path (a caller that
    /// finds the writer free syncs itself; the spin phase repeats exactly
    /// this), then the kick and the park.
    fn wait_durable(&self, end: u64) {
        if self.durable.load(Ordering::Acquire) >= end {
            return;
        }
        if let Ok(io) = self.io.try_lock() {
            if self.durable.load(Ordering::Acquire) < end {
                self.sync_holding(&io);
            }
            if self.durable.load(Ordering::Acquire) >= end {
                return;
            }
        }
        self.kick.try_kick();
        let mut g = self.wait_lock.lock().expect("wait lock");
        loop {
            if self.durable.load(Ordering::Acquire) >= end {
                return;
            }
            g = self.wake.wait(g).expect("wait");
        }
    }

    /// `Log::sync` (via `flush`): `write_out` then fdatasync then `synced`.
    fn sync(&self) {
        let io = self.io.lock().expect("io");
        self.sync_holding(&io);
    }

    /// `Log::sync` with the `io` lock held by the caller.
    fn sync_holding(&self, _io: &()) {
        // write_out: swap the buffer out under the tail lock, write it.
        let (frames, end) = {
            let mut t = self.tail.lock().expect("tail");
            (std::mem::take(&mut t.0), t.1)
        };
        if frames.is_empty()
            && self.written.load(Ordering::Acquire) <= self.durable.load(Ordering::Acquire)
        {
            return;
        }
        self.disk.lock().expect("disk").0.extend(frames);
        self.written.store(end, Ordering::Release);
        let target = self.written.load(Ordering::Acquire);
        // fdatasync
        {
            let mut d = self.disk.lock().expect("disk");
            d.1 = d.0.len();
        }
        // synced: publish, then wake every waiter under the wait lock.
        self.durable.store(target, Ordering::Release);
        let _g = self.wait_lock.lock().expect("wait lock");
        self.wake.notify_all();
    }

    /// `spawn_writer`'s loop for `Durability::Sync`.
    fn writer(&self) {
        while self.kick.take() {
            self.sync();
        }
    }
}

#[test]
fn group_commit_returns_only_synced_frames_and_loses_no_wakeup() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let log = Arc::new(Log {
            tail: Mutex::new((Vec::new(), 0)),
            io: Mutex::new(()),
            disk: Mutex::new((Vec::new(), 0)),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            wait_lock: Mutex::new(()),
            wake: Condvar::new(),
            kick: Kick::new(),
        });
        two_callers_then_stop(
            log,
            Log::writer,
            |log, frame| {
                let end = log.append(frame);
                log.wait_durable(end);
            },
            |log| &log.disk,
            |log| &log.kick,
        );
    });
}

// ---------------------------------------------------------------- model 3

/// `Log` as async callers use it: the same buffer, disk and kick, with
/// registered wakers in place of parked threads.
struct AsyncLog {
    tail: Mutex<(Vec<u64>, u64)>,
    disk: Disk,
    durable: AtomicU64,
    /// `waiters`: (end position, waker) of every pending future.
    waiters: Mutex<Vec<(u64, std::task::Waker)>>,
    kick: Kick,
}

impl AsyncLog {
    fn append(&self, frame: u64) -> u64 {
        let mut t = self.tail.lock().expect("tail");
        t.0.push(frame);
        t.1 += 1;
        t.1
    }

    /// The writer thread's sync: write, fdatasync, publish `durable`, then
    /// wake (outside the lock) the wakers it covered (`wake_waiters`).
    fn sync(&self) {
        let (frames, end) = {
            let mut t = self.tail.lock().expect("tail");
            (std::mem::take(&mut t.0), t.1)
        };
        {
            let mut d = self.disk.lock().expect("disk");
            d.0.extend(frames);
            d.1 = d.0.len();
        }
        self.durable.fetch_max(end, Ordering::AcqRel);
        let ready: Vec<std::task::Waker> = {
            let mut w = self.waiters.lock().expect("waiters");
            let mut ready = Vec::new();
            w.retain(|(at, waker)| {
                if *at <= end {
                    ready.push(waker.clone());
                    false
                } else {
                    true
                }
            });
            ready
        };
        for waker in ready {
            waker.wake();
        }
    }

    fn writer(&self) {
        while self.kick.take() {
            self.sync();
        }
    }
}

/// `DurableWait`.
struct DurableWait<'a> {
    log: &'a AsyncLog,
    end: u64,
    registered: bool,
}

impl std::future::Future for DurableWait<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let log = self.log;
        if log.durable.load(Ordering::Acquire) >= self.end {
            return std::task::Poll::Ready(());
        }
        {
            let mut w = log.waiters.lock().expect("waiters");
            if log.durable.load(Ordering::Acquire) >= self.end {
                return std::task::Poll::Ready(());
            }
            if !self.registered {
                w.push((self.end, cx.waker().clone()));
                self.registered = true;
            }
        }
        log.kick.try_kick();
        std::task::Poll::Pending
    }
}

#[test]
fn async_waits_return_only_synced_frames_and_lose_no_wakeup() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(2);
    builder.check(|| {
        let log = Arc::new(AsyncLog {
            tail: Mutex::new((Vec::new(), 0)),
            disk: Mutex::new((Vec::new(), 0)),
            durable: AtomicU64::new(0),
            waiters: Mutex::new(Vec::new()),
            kick: Kick::new(),
        });
        two_callers_then_stop(
            log,
            AsyncLog::writer,
            |log, frame| {
                let end = log.append(frame);
                loom::future::block_on(DurableWait {
                    log,
                    end,
                    registered: false,
                });
            },
            |log| &log.disk,
            |log| &log.kick,
        );
    });
}
