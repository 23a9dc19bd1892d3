//! The conformance suite against a sled-backed store, plus what only sled
//! has: reopening the database, ending the previous process's leases, and
//! completing inside the application's own sled transaction.

#![cfg(feature = "sled")]

mod conformance;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use conformance::{acquire, fp, key, record, Harness, LONG};
use idemlog::{
    Backend, Bytes, Config, Durability, Error, ManualClock, Outcome, ReserveOptions, Store,
    Timestamp,
};
use sled::transaction::TransactionError;
use sled::Transactional;

const TREE: &str = "idempotency";

struct SledHarness {
    clock: ManualClock,
    dir: tempfile::TempDir,
    last: Mutex<Option<(Config, PathBuf)>>,
}

impl SledHarness {
    fn new() -> Self {
        SledHarness {
            clock: ManualClock::new(Timestamp::from_millis(1_700_000_000_000)),
            dir: tempfile::tempdir().expect("temporary directory"),
            last: Mutex::new(None),
        }
    }

    fn open_at(&self, config: Config, path: &PathBuf) -> Store {
        let db = sled::open(path).expect("open sled");
        Store::with_sled_tree(db.open_tree(TREE).expect("tree"), config).expect("open store")
    }
}

impl Harness for SledHarness {
    type B = Store;

    async fn open(&self, mut config: Config) -> Store {
        config.clock = Arc::new(self.clock.clone());
        // Buffered: the suite checks decisions, not fsync; one test below
        // runs with Sync.
        config.durability = Durability::None;
        let path = self.dir.path().join("db");
        *self.last.lock().unwrap() = Some((config.clone(), path.clone()));
        self.open_at(config, &path)
    }

    async fn reopen(&self, backend: Store) -> Option<Store> {
        backend.flush().expect("flush");
        drop(backend); // the last handle: sled closes the database
        let (config, path) = self.last.lock().unwrap().clone().expect("opened before");
        Some(self.open_at(config, &path))
    }

    async fn now(&self, backend: &Store) -> Timestamp {
        backend.now()
    }

    fn manual_clock(&self) -> Option<&ManualClock> {
        Some(&self.clock)
    }
}

conformance::suite!(SledHarness::new());

/// By default a reopened store ends the leases of the previous process: the
/// retry takes over at once and resumes from the checkpoint.
#[tokio::test]
async fn reopen_ends_leases_of_the_previous_process() {
    let h = SledHarness::new();
    let b = h.open(conformance::config()).await;
    let (k, f) = (key("t", "crashed"), fp("body"));
    let old = acquire(&b, &k, &f, ReserveOptions::default()).await;
    b.checkpoint(&old, Bytes::from_static(b"step 3"))
        .await
        .expect("checkpoint");
    let b = h.reopen(b).await.expect("reopen");
    let got = Backend::reserve(&b, &k, &f, ReserveOptions::default()).await;
    match got {
        Ok(Outcome::Acquired(new)) => {
            assert_eq!(new.attempt, 2);
            assert_eq!(new.checkpoint.as_deref(), Some(&b"step 3"[..]));
            assert!(new.token > old.token);
        }
        other => panic!("expected an immediate takeover, got {other:?}"),
    }
}

/// The same with `Durability::Sync`: every acknowledged operation was
/// flushed, and a reopen sees it.
#[tokio::test]
async fn sync_durability_survives_reopen() {
    let h = SledHarness::new();
    let path = h.dir.path().join("sync");
    let config = Config::builder()
        .durability(Durability::Sync)
        .clock(h.clock.clone())
        .lease(LONG)
        .maintenance_interval(None)
        .build();
    let store = h.open_at(config.clone(), &path);
    let (k, f) = (key("t", "sync"), fp("body"));
    let lease = acquire(&store, &k, &f, ReserveOptions::default()).await;
    store
        .complete(&lease, Bytes::from_static(b"durable"))
        .await
        .expect("complete");
    drop(store);
    let store = h.open_at(config, &path);
    assert_eq!(
        record(&store, &k).await.response().map(|r| &r[..]),
        Some(&b"durable"[..])
    );
}

/// The application writes its own data and completes the idempotency
/// record in one sled transaction: both commit, or (for a stale lease)
/// neither does.
#[tokio::test]
async fn completion_commits_with_the_applications_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::open(dir.path()).expect("open");
    let orders = db.open_tree("orders").expect("tree");
    let records = db.open_tree(TREE).expect("tree");
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let config = Config::builder()
        .clock(clock.clone())
        .maintenance_interval(None)
        .build();
    let store = Store::with_sled_tree(records.clone(), config).expect("store");
    let (k, f) = (key("t", "order-1"), fp("body"));

    let stale = acquire(&store, &k, &f, ReserveOptions::default()).await;
    clock.advance(store.config().lease);
    let current = acquire(&store, &k, &f, ReserveOptions::default()).await;

    // The stale holder's transaction aborts whole: no order is written.
    let got = (&orders, &records).transaction(|(orders, records)| {
        orders.insert(b"order-1".as_slice(), b"by the stale holder".as_slice())?;
        store.complete_in_sled_transaction(records, &stale, Bytes::from_static(b"stale"))?;
        Ok(())
    });
    assert!(
        matches!(got, Err(TransactionError::Abort(Error::LeaseLost { .. }))),
        "got {got:?}"
    );
    assert_eq!(orders.get(b"order-1").expect("get"), None);

    // The current holder's transaction commits both.
    (&orders, &records)
        .transaction(|(orders, records)| {
            orders.insert(b"order-1".as_slice(), b"shipped".as_slice())?;
            store.complete_in_sled_transaction(records, &current, Bytes::from_static(b"201"))?;
            Ok(())
        })
        .expect("transaction");
    assert_eq!(
        orders.get(b"order-1").expect("get").as_deref(),
        Some(&b"shipped"[..])
    );
    match store.reserve(&k, &f) {
        Ok(Outcome::Replay(r)) => assert_eq!(&r.response[..], b"201"),
        other => panic!("expected Replay, got {other:?}"),
    }
    // And it cannot be completed twice.
    let got = (&orders, &records).transaction(|(_, records)| {
        store.complete_in_sled_transaction(records, &current, Bytes::from_static(b"again"))?;
        Ok(())
    });
    assert!(
        matches!(got, Err(TransactionError::Abort(Error::LeaseLost { .. }))),
        "got {got:?}"
    );
}
