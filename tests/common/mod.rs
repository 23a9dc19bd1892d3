//! Shared test support: one suite, every engine.
#![allow(dead_code)]

use std::time::Duration;

use idemlog::{Config, ConfigBuilder, ManualClock, Store, Timestamp};

/// The engines every core test runs against.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Memory,
}

/// A store under test with the clock that drives it.
pub struct Harness {
    pub store: Store,
    pub clock: ManualClock,
    pub engine: Engine,
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
        let config = tweak(config(&clock)).build();
        let store = match engine {
            Engine::Memory => Store::in_memory(config),
        };
        Harness {
            store,
            clock,
            engine,
        }
    }

    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}
