//! Through the async `Backend` trait, a `Durability::Sync` store's wait for
//! its fsync is a future registered with the group commit: with a
//! single-threaded runtime other tasks keep running while a write waits, many
//! tasks share one fdatasync without a thread each, a failed fdatasync fails
//! every waiting task, and a task dropped mid-wait leaves the store working.

#![cfg(feature = "http")]

mod durable_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_support::{CountingFs, SharedFs};
use idemlog::{Backend, Bytes, Config, Durability, Fingerprint, Outcome, ReserveOptions, Store};

#[test]
fn sync_waits_run_off_a_single_threaded_executor() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(CountingFs::default());
    let config = Config::builder()
        .durability(Durability::Sync)
        .maintenance_interval(None)
        .build();
    let store =
        Store::open_with_fs(dir.path(), config, Arc::new(SharedFs(Arc::clone(&fs)))).unwrap();
    let key = store.key("t", "k").unwrap();
    let fingerprint = Fingerprint::of_bytes(b"body");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    fs.gate.close();
    let outcome =
        runtime.block_on(async {
            let task = tokio::spawn({
                let store = store.clone();
                async move {
                    Backend::reserve(&store, &key, &fingerprint, ReserveOptions::default()).await
                }
            });
            // This task shares the only executor thread with the reserve: it
            // runs only if the reserve's wait for the held fsync is elsewhere.
            until_a_sync_is_held(&fs).await;
            assert!(!task.is_finished(), "the reserve must wait for its fsync");
            fs.gate.open();
            task.await.unwrap().unwrap()
        });
    assert!(
        !fs.gate.timed_out.load(Ordering::SeqCst),
        "the executor was blocked by the fsync wait"
    );
    assert!(matches!(outcome, Outcome::Acquired(_)), "got {outcome:?}");
}

/// Yields to the other tasks until an fdatasync is held at the closed gate.
async fn until_a_sync_is_held(fs: &CountingFs) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs.gate.held.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the reserve never reached its fsync"
        );
        tokio::task::yield_now().await;
    }
}

/// A `Sync` store on a counting file system with its gate, and a
/// single-threaded runtime to drive it.
struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    fs: Arc<CountingFs>,
    fingerprint: Fingerprint,
    runtime: tokio::runtime::Runtime,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(CountingFs::default());
    let config = Config::builder()
        .durability(Durability::Sync)
        .maintenance_interval(None)
        // No zero-filling: the tests count the log's syncs and what they
        // carry, nothing else.
        .prefill_segments(false)
        .build();
    let store =
        Store::open_with_fs(dir.path(), config, Arc::new(SharedFs(Arc::clone(&fs)))).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // A blocking-pool wait would serialize the tasks, one fdatasync each.
        .max_blocking_threads(1)
        .build()
        .unwrap();
    Fixture {
        dir,
        store,
        fs,
        fingerprint: Fingerprint::of_bytes(b"body"),
        runtime,
    }
}

#[test]
fn concurrent_tasks_share_fdatasyncs_on_one_thread() {
    const TASKS: u64 = 32;
    let Fixture {
        dir,
        store,
        fs,
        fingerprint,
        runtime,
    } = fixture();
    fs.gate.close();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = store.key("t", format!("k{i}")).unwrap();
                    let lease = match Backend::reserve(
                        &store,
                        &key,
                        &fingerprint,
                        ReserveOptions::default(),
                    )
                    .await?
                    {
                        Outcome::Acquired(lease) => lease,
                        other => panic!("a fresh key was not acquired: {other:?}"),
                    };
                    Backend::complete(&store, &lease, format!("response {i}").into()).await
                })
            })
            .collect();
        // Every reservation is decided and appended while the first sync
        // is held: the single executor thread is never blocked.
        let deadline = Instant::now() + Duration::from_secs(5);
        while store.stats().in_flight < TASKS || fs.gate.held.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the tasks did not all reserve");
            tokio::task::yield_now().await;
        }
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "no task may finish before its frames are synced"
        );
        fs.gate.open();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    });
    assert!(!fs.gate.timed_out.load(Ordering::SeqCst));
    let syncs = fs.data_syncs.load(Ordering::SeqCst);
    // 64 writes; one fdatasync each (the blocking-pool path with one
    // blocking thread) would be 64.
    assert!(
        syncs <= 8,
        "{syncs} fdatasyncs for {} writes: the tasks did not share syncs",
        2 * TASKS
    );
    drop(store);
    let reopened = Store::open(dir.path(), Config::default()).unwrap();
    for i in 0..TASKS {
        let key = reopened.key("t", format!("k{i}")).unwrap();
        match reopened.reserve(&key, &fingerprint).unwrap() {
            Outcome::Replay(replay) => assert_eq!(replay.response, format!("response {i}")),
            other => panic!("k{i} did not replay after reopening: {other:?}"),
        }
    }
}

#[test]
fn a_failed_fdatasync_fails_every_waiting_task() {
    let f = fixture();
    let (store, fingerprint) = (&f.store, f.fingerprint);
    f.fs.fail_syncs.store(true, Ordering::SeqCst);
    let results = f.runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = store.key("t", format!("k{i}")).unwrap();
                    Backend::reserve(&store, &key, &fingerprint, ReserveOptions::default()).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            // A lost wake-up would hang here; fail the test instead.
            let joined = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("a task waiting for a failed fdatasync was never woken");
            results.push(joined.unwrap());
        }
        results
    });
    for result in results {
        match result {
            Err(idemlog::Error::Poisoned { cause }) => {
                assert!(cause.contains("fdatasync"), "cause: {cause}")
            }
            other => panic!("expected Poisoned, got {other:?}"),
        }
    }
    // None of them was acknowledged, so none is counted.
    assert_eq!(store.stats().acquired, 0);
}

#[test]
fn operations_whose_fdatasync_fails_are_not_counted() {
    // Blocking and async callers alike: an answer counts in the stats only
    // once its wait is settled.
    for use_async in [false, true] {
        let f = fixture();
        let (store, fingerprint) = (&f.store, f.fingerprint);
        let key = store.key("t", "k").unwrap();
        let lease = match store.reserve(&key, &fingerprint).unwrap() {
            Outcome::Acquired(r) => r.into_lease(),
            other => panic!("expected Acquired, got {other:?}"),
        };
        f.fs.fail_syncs.store(true, Ordering::SeqCst);
        let completed = if use_async {
            f.runtime.block_on(Backend::complete(
                store,
                &lease,
                Bytes::from_static(b"done"),
            ))
        } else {
            store.complete_lease(&lease, Bytes::from_static(b"done"))
        };
        assert!(
            matches!(completed, Err(idemlog::Error::Poisoned { .. })),
            "async {use_async}: {completed:?}"
        );
        let stats = store.stats();
        assert_eq!(
            (stats.acquired, stats.completed),
            (1, 0),
            "async {use_async}: {stats:?}"
        );
    }
}

#[test]
fn a_task_dropped_while_waiting_leaves_the_store_working() {
    let f = fixture();
    let (store, fs, fingerprint) = (&f.store, &f.fs, f.fingerprint);
    fs.gate.close();
    f.runtime.block_on(async {
        let abandoned = tokio::spawn({
            let store = store.clone();
            async move {
                let key = store.key("t", "abandoned").unwrap();
                Backend::reserve(&store, &key, &fingerprint, ReserveOptions::default()).await
            }
        });
        until_a_sync_is_held(fs).await;
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        fs.gate.open();
        let key = store.key("t", "next").unwrap();
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            Backend::reserve(store, &key, &fingerprint, ReserveOptions::default()),
        )
        .await
        .expect("the store stopped answering after a task was dropped mid-wait")
        .unwrap();
        let Outcome::Acquired(lease) = outcome else {
            panic!("got {outcome:?}")
        };
        Backend::complete(store, &lease, Bytes::from_static(b"ok"))
            .await
            .unwrap();
    });
    // The abandoned write was decided and logged before its task went away:
    // like a caller that crashed, it holds its key until the lease runs out.
    let key = store.key("t", "abandoned").unwrap();
    assert!(matches!(
        store.reserve(&key, &fingerprint).unwrap(),
        Outcome::InProgress { .. }
    ));
}
