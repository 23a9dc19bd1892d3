//! The prefill (src/log/prefill.rs): with `Durability::Sync` the syncing
//! thread writes zeros ahead of the log before a sync. These tests check
//! that it happens only when asked, never damages a frame written around
//! it, and that its I/O failures poison the store like the log's own.
//! (tests/power_loss.rs crashes at every sync with it on;
//! tests/crash_kill9.rs kills stores with it on.)

mod durable_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use durable_support::*;
use idemlog::{Durability, Error, Outcome, Store};

fn response(thread: usize, i: usize) -> Vec<u8> {
    format!("response {thread}-{i} ").repeat(20).into_bytes()
}

#[test]
fn frames_written_around_the_prefill_all_survive_a_reopen() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(CountingFs::default());
    let mut cfg = config(&clock, Durability::Sync);
    // Several rolls, each new head prefilled while writers append to it.
    cfg.segment_size = 256 << 10;
    let store =
        Store::open_with_fs(dir.path(), cfg.clone(), Arc::new(SharedFs(fs.clone()))).unwrap();
    const THREADS: usize = 4;
    const PAIRS: usize = 300;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let store = store.clone();
            s.spawn(move || {
                for i in 0..PAIRS {
                    let key = key(&format!("k-{t}-{i}"));
                    match store.reserve(&key, &fp("body")).unwrap() {
                        Outcome::Acquired(r) => r.complete(response(t, i)).unwrap(),
                        other => panic!("fresh key not acquired: {other:?}"),
                    }
                }
            });
        }
    });
    let stats = store.stats();
    assert!(stats.segments >= 3, "no rolls to prefill across: {stats:?}");
    drop(store);
    assert!(fs.zero_writes.load(Ordering::SeqCst) > 0);

    let store = Store::open(dir.path(), cfg).unwrap();
    assert_eq!(store.stats().live_records, (THREADS * PAIRS) as u64);
    for t in 0..THREADS {
        for i in 0..PAIRS {
            let record = store.lookup(&key(&format!("k-{t}-{i}"))).unwrap();
            let record = record.unwrap_or_else(|| panic!("k-{t}-{i} lost"));
            assert_eq!(
                record.response().map(|b| b.to_vec()),
                Some(response(t, i)),
                "k-{t}-{i}"
            );
        }
    }
}

#[test]
fn a_failed_prefill_write_poisons_the_store() {
    let clock = clock();
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(CountingFs::default());
    fs.fail_zero_writes.store(true, Ordering::SeqCst);
    let store = Store::open_with_fs(
        dir.path(),
        config(&clock, Durability::Sync),
        Arc::new(SharedFs(fs.clone())),
    )
    .unwrap();
    let mut i = 0;
    let cause = loop {
        i += 1;
        let result = match store.reserve(&key(&format!("k{i}")), &fp("body")) {
            Ok(Outcome::Acquired(r)) => r.complete(&b"done"[..]),
            Ok(other) => panic!("fresh key not acquired: {other:?}"),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {}
            Err(Error::Poisoned { cause }) => break cause,
            Err(e) => panic!("expected Poisoned, got {e}"),
        }
        assert!(
            i < 1_000_000,
            "the prefill failure never poisoned the store"
        );
    };
    assert!(cause.contains("prefilling"), "cause: {cause}");
    assert!(matches!(
        store.reserve(&key("after"), &fp("body")),
        Err(Error::Poisoned { .. })
    ));
}

#[test]
fn only_sync_stores_that_ask_for_it_prefill() {
    let clock = clock();
    let mut off = config(&clock, Durability::Sync);
    off.prefill_segments = false;
    let buffered = config(
        &clock,
        Durability::Buffered {
            max_delay: Duration::from_millis(1),
        },
    );
    for cfg in [off, buffered, config(&clock, Durability::None)] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(CountingFs::default());
        let store =
            Store::open_with_fs(dir.path(), cfg.clone(), Arc::new(SharedFs(fs.clone()))).unwrap();
        for i in 0..200 {
            match store.reserve(&key(&format!("k{i}")), &fp("body")).unwrap() {
                Outcome::Acquired(r) => r.complete(response(0, i)).unwrap(),
                other => panic!("fresh key not acquired: {other:?}"),
            }
        }
        drop(store);
        assert_eq!(
            fs.zero_writes.load(Ordering::SeqCst),
            0,
            "{:?} with prefill {}",
            cfg.durability,
            cfg.prefill_segments
        );
    }
}
