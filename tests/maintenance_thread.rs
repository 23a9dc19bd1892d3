//! The background maintenance thread: it expires records on its own, and
//! dropping the last store handle stops and joins it (no leaked threads).
//! One test in this binary, so no other test's threads are counted.

use std::time::{Duration, Instant};

use idemlog::{Config, Fingerprint, ManualClock, Outcome, Store, Timestamp};

fn maintenance_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == "idemlog-mainten") // comm keeps 15 bytes
                .count()
        })
        .unwrap_or(0)
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::yield_now();
    }
}

#[test]
fn background_thread_expires_records_and_is_joined_on_drop() {
    assert_eq!(maintenance_threads(), 0);
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let store = Store::in_memory(
        Config::builder()
            .clock(clock.clone())
            .ttl(Duration::from_secs(10))
            .maintenance_interval(Some(Duration::from_millis(1)))
            .build(),
    );
    let clone = store.clone();
    // The thread names itself once it runs: wait for that, bounded.
    wait_until("the maintenance thread starts", || {
        maintenance_threads() == 1
    });
    for i in 0..100 {
        let key = store.key("t", format!("k{i}")).unwrap();
        let Outcome::Acquired(r) = store.reserve(&key, &Fingerprint::of_bytes(b"x")).unwrap()
        else {
            panic!("fresh key")
        };
        r.complete(&b"ok"[..]).unwrap();
    }
    assert_eq!(store.stats().live_records, 100);
    clock.advance(Duration::from_secs(10));
    // Wait for the thread to notice (an event, not a duration): bounded.
    // The pass counts what it removed once it ends (see `Stats`), so wait
    // for the count; the records are gone before it is taken.
    wait_until("the maintenance thread expires the records", || {
        store.stats().expired == 100
    });
    assert_eq!(store.stats().live_records, 0);
    assert_eq!(store.stats().expired, 100);
    drop(store);
    assert_eq!(maintenance_threads(), 1, "a clone still holds the store");
    drop(clone);
    // Joined, the thread has exited, but the kernel may list it in
    // /proc/self/task for an instant longer, until it is reaped (seen in
    // about 1 run in 100). A thread that was never stopped never leaves.
    wait_until("the stopped thread leaves /proc/self/task", || {
        maintenance_threads() == 0
    });

    // That the drop joins the thread, observed without /proc: the thread
    // holds a share of the store, so the data directory's lock is free the
    // moment the drop returns only if the thread has finished by then.
    let dir = tempfile::tempdir().unwrap();
    let durable = || {
        Config::builder()
            .clock(clock.clone())
            .maintenance_interval(Some(Duration::from_millis(1)))
            .build()
    };
    let store = Store::open(dir.path(), durable()).unwrap();
    wait_until("the durable store's maintenance thread starts", || {
        maintenance_threads() == 1
    });
    drop(store);
    let reopened = Store::open(dir.path(), durable());
    assert!(
        reopened.is_ok(),
        "the directory was still locked after the last handle was dropped: {:?}",
        reopened.err()
    );
}
