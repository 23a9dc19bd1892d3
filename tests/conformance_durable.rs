//! The conformance suite against the durable log store (`Store::open`),
//! with `Durability::Sync` so every acknowledged step is on disk, and reopen
//! standing for a process restart.

mod conformance;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use conformance::Harness;
use idemlog::{Config, Durability, ManualClock, Store, Timestamp};

struct DurableHarness {
    clock: ManualClock,
    dir: tempfile::TempDir,
    last: Mutex<Option<Config>>,
}

impl DurableHarness {
    fn new() -> Self {
        DurableHarness {
            clock: ManualClock::new(Timestamp::from_millis(1_700_000_000_000)),
            dir: tempfile::tempdir().expect("temporary directory"),
            last: Mutex::new(None),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Harness for DurableHarness {
    type B = Store;

    async fn open(&self, mut config: Config) -> Store {
        config.clock = Arc::new(self.clock.clone());
        config.durability = Durability::Sync;
        *self.last.lock().unwrap() = Some(config.clone());
        Store::open(self.path(), config).expect("open durable store")
    }

    async fn reopen(&self, backend: Store) -> Option<Store> {
        drop(backend); // the last handle: the directory lock is released
        let config = self.last.lock().unwrap().clone().expect("opened before");
        Some(Store::open(self.path(), config).expect("reopen durable store"))
    }

    async fn now(&self, backend: &Store) -> Timestamp {
        backend.now()
    }

    fn manual_clock(&self) -> Option<&ManualClock> {
        Some(&self.clock)
    }
}

conformance::suite!(DurableHarness::new());
