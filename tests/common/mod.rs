//! Shared test support: one suite, every engine.
#![allow(dead_code)]

use std::time::Duration;

use idemlog::{Config, ConfigBuilder, Durability, ManualClock, Store, Timestamp};

/// The engines every core test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Memory,
    /// The durable log with `Durability::Sync`, in a temporary directory.
    Durable,
    /// The durable log with `Durability::None` (no fsync: fast, same decisions).
    DurableUnsynced,
}

/// A store under test with the clock that drives it.
pub struct Harness {
    pub store: Store,
    pub clock: ManualClock,
    pub engine: Engine,
    pub dir: Option<tempfile::TempDir>,
}

/// The instant every test starts at (2026-01-01T00:00:00Z).
pub const START: Timestamp = Timestamp::from_millis(1_767_225_600_000);

pub const LEASE: Duration = Duration::from_secs(60);
pub const TTL: Duration = Duration::from_secs(3600);

/// A config with a manual clock, the test lease and TTL, and no background
/// thread (tests call `run_maintenance` when they mean it).
pub fn config(clock: &ManualClock) -> ConfigBuilder {
    Config::builder()
        .clock(clock.clone())
        .lease(LEASE)
        .ttl(TTL)
        .maintenance_interval(None)
}

impl Harness {
    pub fn new(engine: Engine) -> Self {
        Self::with(engine, |c| c)
    }

    pub fn with(engine: Engine, tweak: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> Self {
        let clock = ManualClock::new(START);
        let builder = config(&clock);
        let (store, dir) = match engine {
            Engine::Memory => (Store::in_memory(tweak(builder).build()), None),
            Engine::Durable | Engine::DurableUnsynced => {
                let durability = match engine {
                    Engine::Durable => Durability::Sync,
                    _ => Durability::None,
                };
                let dir = tempfile::tempdir().expect("temp dir");
                let config = tweak(builder.durability(durability)).build();
                (
                    Store::open(dir.path(), config).expect("open durable store"),
                    Some(dir),
                )
            }
        };
        Harness {
            store,
            clock,
            engine,
            dir,
        }
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}
