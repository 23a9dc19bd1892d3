//! Everything tunable, in one place, with defaults right for production.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};

/// Size limits. Every one is enforced with a typed error, never by
/// truncation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest client key in bytes (default 255).
    pub max_key_len: usize,
    /// Longest scope in bytes (default 1024).
    pub max_scope_len: usize,
    /// Largest stored response in bytes (default 1 MiB).
    pub max_response_len: usize,
    /// Largest checkpoint in bytes (default 64 KiB).
    pub max_checkpoint_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_len: 255,
            max_scope_len: 1024,
            max_response_len: 1 << 20,
            max_checkpoint_len: 64 << 10,
        }
    }
}

/// When a write counts as done. See SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// An operation returns only once its log record is on stable storage
    /// (fdatasync). Concurrent operations share one sync (group commit).
    #[default]
    Sync,
    /// Records reach the operating system at once and are synced within
    /// `max_delay`: survives a process crash, may lose the last `max_delay`
    /// of operations on power loss.
    Buffered {
        /// Longest time a written record may stay unsynced.
        max_delay: Duration,
    },
    /// Never synced: for tests and caches. Records wait in the process
    /// for a background write (every 10 ms, or once 1 MiB is buffered; at
    /// 4 MiB a caller writes them itself), so a process crash loses at most
    /// those, and power loss whatever the operating system had not yet
    /// written.
    None,
}

/// The store's configuration. Build one with [`Config::builder`] or take
/// [`Config::default`].
///
/// ```
/// use idemlog::{Config, Durability};
/// use std::time::Duration;
///
/// let config = Config::builder()
///     .ttl(Duration::from_secs(6 * 3600))
///     .lease(Duration::from_secs(30))
///     .durability(Durability::Buffered { max_delay: Duration::from_millis(5) })
///     .build();
/// assert_eq!(config.lease, Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How long a completed record replays (default 24 h). The durable
    /// store's maintenance leaves records that expire within an eighth of
    /// it to expire in place rather than copying them forward.
    pub ttl: Duration,
    /// How long a reservation holds its record before a retry may take it
    /// over (default 60 s).
    pub lease: Duration,
    /// Size limits.
    pub limits: Limits,
    /// When writes count as done (durable store only; default `Sync`).
    pub durability: Durability,
    /// The time source (default the system clock).
    pub clock: Arc<dyn Clock>,
    /// How often the background thread expires records and reclaims space;
    /// `None` runs no thread (call [`Store::run_maintenance`](crate::Store::run_maintenance)).
    /// Default 1 s. After a pass that took long (a pass scans the whole
    /// index), the thread waits 15 times the pass's duration if that is
    /// longer, so maintenance takes at most 1/16 of a core.
    /// Expiry stays exact at read time; only space comes back later.
    pub maintenance_interval: Option<Duration>,
    /// Number of index shards, rounded up to a power of two (default 64).
    pub shards: usize,
    /// After a restart, keep the leases of records that were in flight in the
    /// previous process instead of letting retries take them over at once
    /// (default `false`: the owner is gone, so a retry resumes from the
    /// checkpoint immediately).
    pub keep_leases_on_open: bool,
    /// Size at which the durable log starts a new segment file (default 64 MiB).
    pub segment_size: u64,
    /// Most bytes the durable store may keep on disk; `None` for no limit.
    pub disk_budget: Option<u64>,
    /// Open a damaged directory by moving corrupt segments aside into
    /// `quarantine/` instead of failing (default `false`).
    pub repair: bool,
    /// With `Durability::Sync`, the log writes zeros into the head segment
    /// ahead of its frames, 1–16 MiB at a time, just before a sync (default
    /// `true`). A preallocated but never-written region costs every
    /// `fdatasync` that first writes into it a file-system journal commit
    /// (the extents change from unwritten to written); prefilled, one sync
    /// per step pays that and the others flush data only. It doubles the
    /// bytes written to disk; turn it off where write volume matters more
    /// than sync latency.
    pub prefill_segments: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            limits: Limits::default(),
            durability: Durability::Sync,
            clock: Arc::new(SystemClock),
            maintenance_interval: Some(Duration::from_secs(1)),
            shards: 64,
            keep_leases_on_open: false,
            segment_size: 64 << 20,
            disk_budget: None,
            repair: false,
            prefill_segments: true,
        }
    }
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.clamp(1, 1 << 16).next_power_of_two()
    }
}

/// Builder for [`Config`]; every setter has a production default.
#[derive(Debug, Clone)]
pub struct ConfigBuilder(Config);

impl ConfigBuilder {
    /// How long completed records replay.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.0.ttl = ttl;
        self
    }
    /// The default lease of a reservation.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.0.lease = lease;
        self
    }
    /// All size limits at once.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.0.limits = limits;
        self
    }
    /// Longest client key in bytes.
    pub fn max_key_len(mut self, n: usize) -> Self {
        self.0.limits.max_key_len = n;
        self
    }
    /// Longest scope in bytes.
    pub fn max_scope_len(mut self, n: usize) -> Self {
        self.0.limits.max_scope_len = n;
        self
    }
    /// Largest stored response in bytes.
    pub fn max_response_len(mut self, n: usize) -> Self {
        self.0.limits.max_response_len = n;
        self
    }
    /// Largest checkpoint in bytes.
    pub fn max_checkpoint_len(mut self, n: usize) -> Self {
        self.0.limits.max_checkpoint_len = n;
        self
    }
    /// When writes count as done.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.0.durability = durability;
        self
    }
    /// The time source; tests pass a [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.0.clock = Arc::new(clock);
        self
    }
    /// How often background maintenance runs (at most 1/16 of a core's
    /// time; see [`Config::maintenance_interval`]); `None` for no thread.
    pub fn maintenance_interval(mut self, every: Option<Duration>) -> Self {
        self.0.maintenance_interval = every;
        self
    }
    /// Number of index shards.
    pub fn shards(mut self, n: usize) -> Self {
        self.0.shards = n;
        self
    }
    /// Keep the leases of in-flight records across a restart.
    pub fn keep_leases_on_open(mut self, keep: bool) -> Self {
        self.0.keep_leases_on_open = keep;
        self
    }
    /// Segment file size of the durable log.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.0.segment_size = bytes;
        self
    }
    /// Most bytes the durable store may keep on disk.
    pub fn disk_budget(mut self, bytes: Option<u64>) -> Self {
        self.0.disk_budget = bytes;
        self
    }
    /// Move corrupt segments aside on open instead of failing.
    pub fn repair(mut self, repair: bool) -> Self {
        self.0.repair = repair;
        self
    }
    /// Zero-fill the head segment ahead of the log in the background
    /// (`Durability::Sync` only).
    pub fn prefill_segments(mut self, prefill: bool) -> Self {
        self.0.prefill_segments = prefill;
        self
    }
    /// The finished configuration.
    pub fn build(self) -> Config {
        self.0
    }
}
