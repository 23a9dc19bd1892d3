//! The conformance suite against the embedded in-memory store.

mod conformance;

use std::sync::Arc;

use conformance::Harness;
use idemlog::{Config, ManualClock, Store, Timestamp};

struct MemoryHarness {
    clock: ManualClock,
}

impl MemoryHarness {
    fn new() -> Self {
        MemoryHarness {
            clock: ManualClock::new(Timestamp::from_millis(1_700_000_000_000)),
        }
    }
}

impl Harness for MemoryHarness {
    type B = Store;

    async fn open(&self, mut config: Config) -> Store {
        config.clock = Arc::new(self.clock.clone());
        Store::in_memory(config)
    }

    async fn reopen(&self, _backend: Store) -> Option<Store> {
        None
    }

    async fn now(&self, backend: &Store) -> Timestamp {
        backend.now()
    }

    fn manual_clock(&self) -> Option<&ManualClock> {
        Some(&self.clock)
    }
}

conformance::suite!(MemoryHarness::new());
