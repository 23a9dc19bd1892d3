//! Through the async `Backend` trait, a `Durability::Sync` store waits for
//! its fsync on tokio's blocking pool, not on the executor thread: with a
//! single-threaded runtime, other tasks keep running while a write waits.

#![cfg(feature = "http")]

mod durable_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_support::{CountingFs, SharedFs};
use idemlog::{Backend, Config, Durability, Fingerprint, Outcome, ReserveOptions, Store};

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
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs.gate.held.load(Ordering::SeqCst) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "the reserve never reached its fsync"
                );
                tokio::task::yield_now().await;
            }
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
