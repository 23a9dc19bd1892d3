//! Concurrency: 16 threads hammer a store on a skewed key set while they
//! move a shared manual clock (a tick now and then, rarely a jump past every
//! lease and TTL) and the background maintenance runs every millisecond; the recorded history is checked per identity by
//! `support/history.rs` (S1 and the rest of SPEC §3's promises).
//!
//! Operations per thread: `IDEMLOG_LINEARIZABILITY_OPS` (default 10,000 in
//! debug builds, 25,000 in release; the long run is 100,000).

#[path = "support/history.rs"]
mod history;
#[path = "support/rng.rs"]
mod rng;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use history::{check, payload, payload_id, Done, Event, Looked, Op, Params, Report, Reserved};
use idemlog::{
    Clock, Config, Error, Fingerprint, IdempotencyKey, Lease, ManualClock, Outcome, RecordState,
    Store, Timestamp,
};
use rng::Rng;

const THREADS: usize = 16;
const LEASE_MS: u64 = 6;
const TTL_MS: u64 = 15;
/// Identities: 4 hot ones take 3/4 of the operations, 60 cold ones the rest,
/// spread over two scopes (the same key string in both scopes is two
/// identities).
const HOT: u32 = 4;
const IDENTITIES: u32 = 64;

fn ops_per_thread() -> usize {
    if let Ok(n) = std::env::var("IDEMLOG_LINEARIZABILITY_OPS") {
        return n
            .parse()
            .expect("IDEMLOG_LINEARIZABILITY_OPS must be a number");
    }
    if cfg!(debug_assertions) {
        10_000
    } else {
        25_000
    }
}

fn config(clock: &ManualClock) -> Config {
    Config::builder()
        .clock(clock.clone())
        .lease(Duration::from_millis(LEASE_MS))
        .ttl(Duration::from_millis(TTL_MS))
        .maintenance_interval(Some(Duration::from_millis(1)))
        .shards(8)
        .build()
}

fn identity(i: u32) -> IdempotencyKey {
    // Key strings repeat across the two scopes on purpose.
    IdempotencyKey::new(format!("tenant-{}", i % 2), format!("key-{}", i / 2))
        .expect("valid identity")
}

fn fingerprint(f: u8) -> Fingerprint {
    Fingerprint::of_bytes(&[b'A' + f])
}

struct Recorder<'a> {
    seq: &'a AtomicU64,
    clock: &'a ManualClock,
    thread: u16,
    events: Vec<Event>,
}

impl Recorder<'_> {
    fn record<T>(
        &mut self,
        identity: u32,
        run: impl FnOnce() -> T,
        op: impl FnOnce(&T) -> Op,
    ) -> T {
        let clock_invoke = self.clock.now().as_millis();
        let invoke = self.seq.fetch_add(1, Ordering::SeqCst);
        let out = run();
        let ret = self.seq.fetch_add(1, Ordering::SeqCst);
        let clock_ret = self.clock.now().as_millis();
        self.events.push(Event {
            thread: self.thread,
            identity,
            invoke,
            ret,
            clock_invoke,
            clock_ret,
            op: op(&out),
        });
        out
    }
}

fn done(r: &idemlog::Result<()>) -> Done {
    match r {
        Ok(()) => Done::Ok,
        Err(Error::LeaseLost { .. }) => Done::LeaseLost,
        Err(e) => Done::Failed(e.to_string()),
    }
}

/// One worker: reserves, and with the leases it holds completes, releases,
/// extends, checkpoints or abandons them (abandoned leases run out and are
/// taken over; held leases that were taken over are stale and must fail).
fn worker(store: &Store, rec: &mut Recorder<'_>, seed: u64, ops: usize) {
    let mut rng = Rng::new(seed);
    let keys: Vec<IdempotencyKey> = (0..IDENTITIES).map(identity).collect();
    let mut held: Vec<(u32, u8, Lease)> = Vec::new();
    let mut next_id = u64::from(rec.thread) << 40;
    for _ in 0..ops {
        // Time moves with the work done, whichever thread runs: every thread
        // ticks the shared clock now and then, and rarely jumps it past
        // every lease and TTL at once.
        if rng.chance(1, 12) {
            rec.clock.advance(Duration::from_millis(1));
        } else if rng.chance(1, 5_000) {
            rec.clock.advance(Duration::from_millis(LEASE_MS + TTL_MS));
        }
        if !held.is_empty() && rng.chance(1, 2) {
            let i = rng.below(held.len() as u64) as usize;
            let (id, _, _) = held[i];
            let action = rng.below(20);
            match action {
                0..=9 => {
                    let (_, _, lease) = held.swap_remove(i);
                    next_id += 1;
                    let response = next_id;
                    let _judged_by_checker = rec.record(
                        id,
                        || store.complete_lease(&lease, payload("r", response).into()),
                        |r| Op::Complete {
                            token: lease.token,
                            response,
                            result: done(r),
                        },
                    );
                }
                10..=12 => {
                    let (_, _, lease) = held.swap_remove(i);
                    let _judged_by_checker = rec.record(
                        id,
                        || store.release_lease(&lease),
                        |r| Op::Release {
                            token: lease.token,
                            result: done(r),
                        },
                    );
                }
                13..=15 => {
                    let lease = &mut held[i].2;
                    let token = lease.token;
                    let _judged_by_checker = rec.record(
                        id,
                        || store.extend_lease(lease, Duration::from_millis(LEASE_MS)),
                        |r| Op::Extend {
                            token,
                            result: done(r),
                        },
                    );
                }
                16..=18 => {
                    let lease = &held[i].2;
                    next_id += 1;
                    let checkpoint = next_id;
                    let _judged_by_checker = rec.record(
                        id,
                        || store.checkpoint_lease(lease, payload("c", checkpoint).into()),
                        |r| Op::Checkpoint {
                            token: lease.token,
                            checkpoint,
                            result: done(r),
                        },
                    );
                }
                _ => {
                    // Abandon: the holder "crashes"; its lease runs out.
                    held.swap_remove(i);
                }
            }
            continue;
        }
        let id = if rng.chance(3, 4) {
            rng.below(u64::from(HOT)) as u32
        } else {
            HOT + rng.below(u64::from(IDENTITIES - HOT)) as u32
        };
        let key = &keys[id as usize];
        if rng.chance(1, 8) {
            let _judged_by_checker = rec.record(
                id,
                || store.lookup(key),
                |r| Op::Lookup {
                    result: match r {
                        Ok(None) => Looked::Absent,
                        Ok(Some(record)) => {
                            let fp =
                                (record.fingerprint().digest() == fingerprint(1).digest()) as u8;
                            match record.state() {
                                RecordState::InFlight { .. } => Looked::InFlight {
                                    token: record.fencing_token(),
                                    fingerprint: fp,
                                },
                                RecordState::Completed { response, .. } => Looked::Completed {
                                    token: record.fencing_token(),
                                    fingerprint: fp,
                                    response: payload_id("r", response),
                                },
                            }
                        }
                        Err(e) => Looked::Failed(e.to_string()),
                    },
                },
            );
            continue;
        }
        let f = u8::from(rng.chance(1, 10));
        let fp = fingerprint(f);
        let outcome = rec.record(
            id,
            || store.reserve(key, &fp).map(|o| o.map(|r| r.into_lease())),
            |r| Op::Reserve {
                fingerprint: f,
                result: match r {
                    Ok(Outcome::Acquired(lease)) => Reserved::Acquired {
                        token: lease.token,
                        attempt: lease.attempt,
                        lease_until: lease.lease_until.as_millis(),
                        checkpoint: lease.checkpoint.as_ref().map(|c| payload_id("c", c)),
                    },
                    Ok(Outcome::Replay(replay)) => Reserved::Replay {
                        response: payload_id("r", &replay.response),
                    },
                    Ok(Outcome::InProgress { .. }) => Reserved::InProgress,
                    Ok(Outcome::Conflict { .. }) => Reserved::Conflict,
                    Err(e) => Reserved::Failed(e.to_string()),
                },
            },
        );
        if let Ok(Outcome::Acquired(lease)) = outcome {
            held.push((id, f, lease));
            if held.len() > 4 {
                // Too many at once: the oldest is abandoned.
                held.remove(0);
            }
        }
    }
}

/// Runs the workload on `store` and returns the merged history.
fn run(store: &Store, clock: &ManualClock, ops: usize, seed: u64) -> Vec<Event> {
    let seq = AtomicU64::new(0);
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (seq, barrier, store) = (&seq, &barrier, store.clone());
                s.spawn(move || {
                    let mut rec = Recorder {
                        seq,
                        clock,
                        thread: t as u16,
                        events: Vec::with_capacity(ops),
                    };
                    barrier.wait();
                    worker(&store, &mut rec, seed ^ (t as u64 * 0x9E37_79B9), ops);
                    rec.events
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread panicked"))
            .collect()
    })
}

fn params() -> Params {
    Params {
        lease_ms: LEASE_MS,
        ttl_ms: TTL_MS,
    }
}

fn print_report(name: &str, r: &Report) {
    println!(
        "{name}: {} events on {} identities: {} acquisitions ({} takeovers), {} completes, {} replays, {} conflicts, {} stale tokens rejected; {} violations",
        r.events,
        r.identities,
        r.acquisitions,
        r.takeovers,
        r.completes_ok,
        r.replays,
        r.conflicts,
        r.stale_rejected,
        r.violations.len()
    );
    for v in r.violations.iter().take(20) {
        println!("  VIOLATION {v}");
    }
}

fn assert_linearizable(name: &str, store: &Store, clock: &ManualClock, seed: u64) {
    let ops = ops_per_thread();
    let events = run(store, clock, ops, seed);
    // Abandoning a lease is not a store call, so it leaves no event.
    assert!(
        events.len() > THREADS * ops * 9 / 10,
        "{} events",
        events.len()
    );
    let report = check(&events, params());
    print_report(name, &report);
    assert!(
        report.violations.is_empty(),
        "{} violations",
        report.violations.len()
    );
    // The workload must have exercised what the checker checks.
    assert!(report.takeovers > 0 && report.replays > 0 && report.conflicts > 0);
    assert!(report.stale_rejected > 0, "no stale token was ever tried");
}

#[test]
fn in_memory_store_is_linearizable_per_identity() {
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let store = Store::in_memory(config(&clock));
    assert_linearizable("in-memory", &store, &clock, 0x1DE_4106);
}

#[test]
fn durable_store_is_linearizable_per_identity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(Timestamp::from_millis(1_000));
    let mut config = config(&clock);
    config.durability = idemlog::Durability::Sync;
    // Small segments: rolls and reclamation run during the test.
    config.segment_size = 64 << 10;
    let store = Store::open(dir.path(), config).expect("open");
    assert_linearizable("durable (Sync)", &store, &clock, 0xD0_4AB1E);
    let stats = store.stats();
    println!(
        "durable: {} syncs for {} records, {} segments",
        stats.syncs, stats.records_synced, stats.segments
    );
}

// ---- The checker itself must catch violations: hand-made bad histories. ----

fn ev(thread: u16, invoke: u64, ret: u64, clock: u64, op: Op) -> Event {
    Event {
        thread,
        identity: 0,
        invoke,
        ret,
        clock_invoke: clock,
        clock_ret: clock,
        op,
    }
}

fn acquired(token: u64, attempt: u32, lease_until: u64) -> Op {
    Op::Reserve {
        fingerprint: 0,
        result: Reserved::Acquired {
            token,
            attempt,
            lease_until,
            checkpoint: None,
        },
    }
}

fn violations(events: &[Event]) -> Vec<String> {
    check(events, params()).violations
}

#[test]
fn checker_accepts_a_correct_history() {
    let h = [
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(
            1,
            2,
            3,
            1,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::InProgress,
            },
        ),
        ev(
            2,
            2,
            3,
            1,
            Op::Reserve {
                fingerprint: 1,
                result: Reserved::Conflict,
            },
        ),
        ev(
            0,
            4,
            5,
            2,
            Op::Complete {
                token: 5,
                response: 9,
                result: Done::Ok,
            },
        ),
        ev(
            1,
            6,
            7,
            3,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::Replay { response: 9 },
            },
        ),
        ev(
            1,
            8,
            9,
            3,
            Op::Lookup {
                result: Looked::Completed {
                    token: 5,
                    fingerprint: 0,
                    response: 9,
                },
            },
        ),
        // Expired at 2 + 60: a new acquisition is fine.
        ev(2, 10, 11, 70, acquired(37, 1, 90)),
        ev(
            0,
            12,
            13,
            70,
            Op::Complete {
                token: 5,
                response: 10,
                result: Done::LeaseLost,
            },
        ),
    ];
    let v = violations(&h);
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn checker_catches_two_holders_at_once() {
    let h = [
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(1, 2, 3, 5, acquired(37, 1, 25)),
    ];
    let v = violations(&h);
    assert!(v.iter().any(|m| m.contains("exclusive")), "{v:#?}");
}

#[test]
fn checker_catches_a_stale_token_that_succeeds() {
    let h = [
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(1, 2, 3, 25, acquired(37, 2, 45)),
        ev(
            0,
            4,
            5,
            26,
            Op::Extend {
                token: 5,
                result: Done::Ok,
            },
        ),
    ];
    let v = violations(&h);
    assert!(v.iter().any(|m| m.contains("fencing")), "{v:#?}");
}

#[test]
fn checker_catches_a_replaced_response() {
    let h = [
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(
            0,
            2,
            3,
            1,
            Op::Complete {
                token: 5,
                response: 9,
                result: Done::Ok,
            },
        ),
        ev(1, 4, 5, 10, acquired(37, 1, 30)),
        ev(
            1,
            6,
            7,
            11,
            Op::Complete {
                token: 37,
                response: 10,
                result: Done::Ok,
            },
        ),
        ev(
            2,
            8,
            9,
            12,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::Replay { response: 10 },
            },
        ),
    ];
    let v = violations(&h);
    assert!(v.iter().any(|m| m.contains("exclusive")), "{v:#?}");
}

#[test]
fn checker_catches_replays_of_unknown_early_or_expired_bytes() {
    let h = [
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(
            1,
            2,
            3,
            1,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::Replay { response: u64::MAX },
            },
        ),
        ev(
            1,
            4,
            5,
            1,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::Replay { response: 9 },
            },
        ),
        ev(
            0,
            6,
            7,
            2,
            Op::Complete {
                token: 5,
                response: 9,
                result: Done::Ok,
            },
        ),
        ev(
            1,
            8,
            9,
            200,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::Replay { response: 9 },
            },
        ),
        ev(
            2,
            10,
            11,
            3,
            Op::Reserve {
                fingerprint: 1,
                result: Reserved::Replay { response: 9 },
            },
        ),
    ];
    let v = violations(&h);
    assert!(
        v.iter().any(|m| m.contains("no complete of this identity")),
        "{v:#?}"
    );
    assert!(
        v.iter()
            .any(|m| m.contains("before its complete was invoked")),
        "{v:#?}"
    );
    assert!(v.iter().any(|m| m.contains("expired")), "{v:#?}");
    assert!(
        v.iter().any(|m| m.contains("another fingerprint")),
        "{v:#?}"
    );
}

#[test]
fn checker_catches_a_conflict_with_the_same_fingerprint() {
    let h = [
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(
            1,
            2,
            3,
            1,
            Op::Reserve {
                fingerprint: 0,
                result: Reserved::Conflict,
            },
        ),
    ];
    let v = violations(&h);
    assert!(v.iter().any(|m| m.contains("conflict")), "{v:#?}");
}

#[test]
fn checker_catches_a_bad_takeover_and_an_invented_checkpoint() {
    let mut h = vec![
        ev(0, 0, 1, 0, acquired(5, 1, 20)),
        ev(
            0,
            2,
            3,
            1,
            Op::Release {
                token: 5,
                result: Done::Ok,
            },
        ),
        ev(1, 4, 5, 2, acquired(37, 2, 22)),
    ];
    if let Op::Reserve {
        result: Reserved::Acquired { checkpoint, .. },
        ..
    } = &mut h[2].op
    {
        *checkpoint = Some(77);
    }
    let v = violations(&h);
    assert!(
        v.iter()
            .any(|m| m.contains("a reservation that was released")),
        "{v:#?}"
    );
    assert!(
        v.iter()
            .any(|m| m.contains("which no earlier holder stored")),
        "{v:#?}"
    );
}

#[test]
fn payload_ids_round_trip_and_reject_altered_bytes() {
    for id in [0, 1, 6, 7, 1 << 40, u64::MAX - 1] {
        assert_eq!(payload_id("r", &payload("r", id)), id);
    }
    let mut altered = payload("r", 12);
    altered.push(b'.');
    assert_eq!(payload_id("r", &altered), u64::MAX);
    assert_eq!(payload_id("r", &payload("c", 12)), u64::MAX);
    assert_eq!(payload_id("r", b"\xff"), u64::MAX);
}
