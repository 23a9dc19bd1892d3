//! The decisions of SPEC §3 against the durable store (the same outcomes as
//! the in-memory engine).

mod durable_support;

use std::time::Duration;

use durable_support::*;
use idemlog::{Durability, Error, Outcome, ReserveOptions, Store};

fn open(dir: &std::path::Path, clock: &idemlog::ManualClock) -> Store {
    Store::open(dir, config(clock, Durability::Sync)).unwrap()
}

#[test]
fn decision_table() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let k = key("k1");
    let Outcome::Acquired(r) = store.reserve(&k, &fp("a")).unwrap() else {
        panic!("fresh key must be acquired")
    };
    assert_eq!(r.attempt(), 1);
    clock.advance(Duration::from_secs(10));
    let o = store.reserve(&k, &fp("a")).unwrap();
    assert!(
        matches!(o, Outcome::InProgress { retry_after, attempt: 1 } if retry_after == Duration::from_secs(50)),
        "got {o:?}"
    );
    let o = store.reserve(&k, &fp("b")).unwrap();
    assert!(
        matches!(o, Outcome::Conflict { in_flight: true }),
        "got {o:?}"
    );
    r.complete(&b"response-1"[..]).unwrap();
    let o = store.reserve(&k, &fp("a")).unwrap();
    match o {
        Outcome::Replay(replay) => {
            assert_eq!(&replay.response[..], b"response-1");
            assert_eq!(replay.attempts, 1);
            assert_eq!(replay.completed_at, Timestamp::from_millis(T0 + 10_000));
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    let o = store.reserve(&k, &fp("b")).unwrap();
    assert!(
        matches!(o, Outcome::Conflict { in_flight: false }),
        "got {o:?}"
    );
    let rec = store.lookup(&k).unwrap().expect("completed record");
    assert_eq!(rec.replays(), 1);
    assert_eq!(rec.response().map(|b| &b[..]), Some(&b"response-1"[..]));
    // TTL: expired at exactly completed_at + ttl.
    clock.advance(Duration::from_secs(3600) - Duration::from_millis(1));
    assert!(matches!(
        store.reserve(&k, &fp("a")).unwrap(),
        Outcome::Replay(_)
    ));
    clock.advance(Duration::from_millis(1));
    assert!(store.lookup(&k).unwrap().is_none());
    let o = store.reserve(&k, &fp("b")).unwrap();
    assert!(matches!(o, Outcome::Acquired(_)), "got {o:?}");
    let s = store.stats();
    assert_eq!((s.replayed, s.conflicts, s.in_progress), (2, 2, 1));
}

use idemlog::Timestamp;

#[test]
fn takeover_hands_over_the_checkpoint_and_fences_the_old_holder() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let k = key("job");
    let Outcome::Acquired(mut first) = store.reserve(&k, &fp("a")).unwrap() else {
        panic!()
    };
    first.checkpoint(&b"phase-2"[..]).unwrap();
    clock.advance(Duration::from_secs(61));
    let Outcome::Acquired(second) = store.reserve(&k, &fp("a")).unwrap() else {
        panic!("lease over: takeover")
    };
    assert!(second.is_takeover());
    assert_eq!(second.attempt(), 2);
    assert_eq!(
        second.recovered_checkpoint().map(|b| &b[..]),
        Some(&b"phase-2"[..])
    );
    assert!(second.fencing_token() > first.fencing_token());
    let err = first.complete(&b"late"[..]).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "got {err:?}");
    second.complete(&b"done"[..]).unwrap();
    let Outcome::Replay(r) = store.reserve(&k, &fp("a")).unwrap() else {
        panic!()
    };
    assert_eq!((&r.response[..], r.attempts), (&b"done"[..], 2));
    assert_eq!(store.stats().takeovers, 1);
}

#[test]
fn release_extend_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let k = key("r");
    let Outcome::Acquired(r) = store.reserve(&k, &fp("a")).unwrap() else {
        panic!()
    };
    r.release().unwrap();
    assert!(store.lookup(&k).unwrap().is_none());
    let Outcome::Acquired(mut r) = store.reserve(&k, &fp("a")).unwrap() else {
        panic!()
    };
    clock.advance(Duration::from_secs(50));
    r.extend(Duration::from_secs(60)).unwrap();
    clock.advance(Duration::from_secs(50));
    let o = store.reserve(&k, &fp("a")).unwrap();
    assert!(
        matches!(o, Outcome::InProgress { retry_after, .. } if retry_after == Duration::from_secs(10)),
        "got {o:?}"
    );
    drop(r);
    assert!(store.lookup(&k).unwrap().is_none());
    assert_eq!(store.stats().in_flight, 0);
    assert_eq!(store.stats().live_records, 0);
}

#[test]
fn limits_and_per_call_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cfg = idemlog::Config::builder()
        .clock(clock.clone())
        .maintenance_interval(None)
        .max_response_len(16)
        .max_checkpoint_len(4)
        .segment_size(4096)
        .build();
    let store = Store::open(dir.path(), cfg).unwrap();
    let k = key("l");
    let Outcome::Acquired(mut r) = store
        .reserve_with(
            &k,
            &fp("a"),
            ReserveOptions::default().ttl(Duration::from_secs(5)),
        )
        .unwrap()
    else {
        panic!()
    };
    let err = r.checkpoint(&b"12345"[..]).unwrap_err();
    assert!(
        matches!(err, Error::CheckpointTooLarge { len: 5, limit: 4 }),
        "got {err:?}"
    );
    let err = store
        .complete_lease(r.lease(), vec![0u8; 17].into())
        .unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { len: 17, limit: 16 }),
        "got {err:?}"
    );
    r.complete(vec![7u8; 16]).unwrap();
    clock.advance(Duration::from_secs(5));
    assert!(store.lookup(&k).unwrap().is_none());
    let report = store.run_maintenance().unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(store.stats().live_records, 0);
    // Responses larger than a segment get a segment of their own.
    let big_dir = tempfile::tempdir().unwrap();
    let big = Store::open(
        big_dir.path(),
        idemlog::Config::builder()
            .segment_size(4096)
            .maintenance_interval(None)
            .build(),
    )
    .unwrap();
    let Outcome::Acquired(r) = big.reserve(&k, &fp("a")).unwrap() else {
        panic!()
    };
    r.complete(vec![1u8; 100_000]).unwrap();
    let Outcome::Replay(rep) = big.reserve(&k, &fp("a")).unwrap() else {
        panic!()
    };
    assert_eq!(rep.response.len(), 100_000);
}

#[test]
fn disk_budget_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let cfg = idemlog::Config::builder()
        .clock(clock.clone())
        .maintenance_interval(None)
        .segment_size(4096)
        .disk_budget(Some(3 * 4096))
        .build();
    let store = Store::open(dir.path(), cfg).unwrap();
    let mut err = None;
    for i in 0..100 {
        match store.reserve(&key(&format!("k{i}")), &fp("a")) {
            Ok(Outcome::Acquired(r)) => {
                if let Err(e) = r.complete(vec![0u8; 1000]) {
                    err = Some(e);
                    break;
                }
            }
            Ok(other) => panic!("got {other:?}"),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the budget must run out");
    assert!(
        matches!(
            err,
            Error::DiskBudgetExceeded {
                budget: 12288,
                needed: 16384
            }
        ),
        "got {err:?}"
    );
    assert!(store.stats().bytes_on_disk <= 3 * 4096);
}

#[test]
fn tenants_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let a = idemlog::IdempotencyKey::new("tenant-a", "same").unwrap();
    let b = idemlog::IdempotencyKey::new("tenant-b", "same").unwrap();
    let Outcome::Acquired(r) = store.reserve(&a, &fp("x")).unwrap() else {
        panic!()
    };
    r.complete(&b"a's"[..]).unwrap();
    assert!(matches!(
        store.reserve(&b, &fp("y")).unwrap(),
        Outcome::Acquired(_)
    ));
}

#[test]
fn concurrent_callers_get_exactly_one_acquisition() {
    let dir = tempfile::tempdir().unwrap();
    let clock = clock();
    let store = open(dir.path(), &clock);
    let k = key("race");
    let acquired = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                if let Outcome::Acquired(r) = store.reserve(&k, &fp("a")).unwrap() {
                    acquired.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    r.into_lease();
                }
            });
        }
    });
    assert_eq!(acquired.load(std::sync::atomic::Ordering::SeqCst), 1);
    let s = store.stats();
    assert!(s.syncs >= 1 && s.records_synced >= 1, "{s:?}");
}
