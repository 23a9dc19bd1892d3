//! The public face of idemlog: [`Store`], [`Outcome`] and [`Reservation`].
//!
//! The store validates input, hashes identities, calls the pure decision
//! table in [`crate::decision`] inside its engine's per-identity critical
//! section, and counts what happened. Engines only keep records.

mod counters;
pub(crate) mod engine;
mod maintenance;
pub(crate) mod memory;
mod slab;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_utils::CachePadded;

use crate::clock::Timestamp;
use crate::config::Config;
use crate::decision::{self, Decision};
use crate::error::{Error, Poison, Result};
use crate::fingerprint::Fingerprint;
use crate::identity::{IdempotencyKey, IdentityHash, IdentityHasher};
use crate::log::fs::{FileSystem, OsFileSystem};
use crate::log::LogEngine;
use crate::record::{Record, RecordState};
use counters::{thread_stripe, Counters, Event};
pub use engine::MaintenanceReport;
use engine::{Change, Engine, Identity, Wait};
use maintenance::MaintenanceThread;
use memory::MemoryEngine;

/// The idempotency store. Cheap to clone; clones share one store. The
/// background maintenance thread stops, and the engine flushes, when the last
/// clone is dropped.
///
/// ```
/// use idemlog::{Config, Fingerprint, Outcome, Store};
///
/// let store = Store::in_memory(Config::default());
/// let key = store.key("tenant-1", "order-7f3a")?;
/// let body = br#"{"amount": 1200, "currency": "eur"}"#;
/// let fp = Fingerprint::of_json(body)?;
///
/// match store.reserve(&key, &fp)? {
///     Outcome::Acquired(reservation) => {
///         let response = b"201 charge ch_1".to_vec(); // run the write once
///         reservation.complete(response)?;
///     }
///     other => panic!("a fresh key is acquired, got {other:?}"),
/// }
/// // The client retries: it gets the stored response back.
/// let Outcome::Replay(replay) = store.reserve(&key, &fp)? else { panic!() };
/// assert_eq!(&replay.response[..], b"201 charge ch_1");
/// # Ok::<(), idemlog::Error>(())
/// ```
#[derive(Clone)]
pub struct Store {
    // Declared first so the thread is joined before the last `Shared` goes.
    _maintenance: Arc<MaintenanceThread>,
    shared: Arc<Shared>,
    /// What reservations hold, one per thread stripe (see [`SharedHandle`]).
    handles: Arc<[SharedHandle]>,
}

/// The shared state as a [`Reservation`] holds it. Each reservation keeps
/// the store alive, but a clone of the one `Arc<Shared>` per reservation
/// bumped (and dropped) the same reference count from every thread on every
/// request, pulling its cache line from core to core. A thread clones its
/// stripe's handle instead, whose count sits on a line of its own.
type SharedHandle = Arc<CachePadded<Arc<Shared>>>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.shared.engine_name)
            .finish_non_exhaustive()
    }
}

/// What an operation decided: its answer, what must be durable before the
/// answer may be acted on, and the events to count once it is. A
/// completion whose sync fails was never acknowledged, so it is not
/// counted.
struct Decided<T> {
    answer: Result<T>,
    wait: Wait,
    events: Tally,
}

impl<T> From<(Result<T>, Wait)> for Decided<T> {
    /// A decision that counts nothing.
    fn from((answer, wait): (Result<T>, Wait)) -> Self {
        Decided {
            answer,
            wait,
            events: Tally::default(),
        }
    }
}

/// The events one operation counts: at most three (a reservation's
/// outcome, a takeover, an expired record it replaced).
#[derive(Default)]
struct Tally([Option<Event>; 3]);

impl Tally {
    fn of(event: Event) -> Tally {
        Tally([Some(event), None, None])
    }

    fn add(&mut self, event: Event) {
        let free = self.0.iter_mut().find(|e| e.is_none());
        debug_assert!(free.is_some(), "more than three events for one operation");
        if let Some(slot) = free {
            *slot = Some(event);
        }
    }
}

/// An acquisition as `reserve` decides it: its lease without the key. The
/// engine's closure hands this out and `settle` passes it on, so those
/// moves copy a few words rather than a lease with its key; the lease is
/// built once, at the end, by [`lease`](Self::lease).
struct Grant {
    token: u64,
    attempt: u32,
    lease_until: Timestamp,
    ttl: Duration,
    checkpoint: Option<Bytes>,
}

impl Grant {
    /// The lease on `key`.
    fn lease(self, key: &IdempotencyKey) -> Lease {
        Lease::new(
            key.clone(),
            self.token,
            self.attempt,
            self.lease_until,
            self.ttl,
            self.checkpoint,
        )
    }
}

/// State shared by a store's clones, its reservations and its background
/// thread.
pub(crate) struct Shared {
    engine: Box<dyn Engine>,
    engine_name: &'static str,
    config: Config,
    hasher: IdentityHasher,
    counters: Counters,
    /// Set once, never cleared: checked on every write without a lock.
    poison: Poison,
}

/// Per-call settings for [`Store::reserve_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReserveOptions {
    /// The lease of this reservation, instead of [`Config::lease`].
    pub lease: Option<Duration>,
    /// How long the response replays once completed, instead of
    /// [`Config::ttl`].
    pub ttl: Option<Duration>,
}

impl ReserveOptions {
    /// Sets the lease.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }
    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// The answer to `reserve`. Losing a race is an outcome, not an error.
#[derive(Debug)]
#[must_use = "an Acquired reservation must be completed or released"]
pub enum Outcome<R = Reservation> {
    /// The caller owns the record: run the write, then `complete` (or
    /// `release` to let a retry run it again).
    Acquired(R),
    /// The same request completed earlier: answer with this response.
    Replay(Replay),
    /// The same request is running now under a live lease.
    InProgress {
        /// Time until the lease runs out; a retry after it may take over.
        retry_after: Duration,
        /// Attempt number of the reservation that is running.
        attempt: u32,
    },
    /// The key was used for a different request (different fingerprint).
    Conflict {
        /// Whether the earlier request is still in flight.
        in_flight: bool,
    },
}

impl<R> Outcome<R> {
    /// Applies `f` to an acquired reservation, keeping every other outcome.
    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> Outcome<S> {
        match self {
            Outcome::Acquired(r) => Outcome::Acquired(f(r)),
            Outcome::Replay(r) => Outcome::Replay(r),
            Outcome::InProgress {
                retry_after,
                attempt,
            } => Outcome::InProgress {
                retry_after,
                attempt,
            },
            Outcome::Conflict { in_flight } => Outcome::Conflict { in_flight },
        }
    }
}

/// A stored response handed back for a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replay {
    /// The response exactly as it was stored.
    pub response: Bytes,
    /// When it was stored.
    pub completed_at: Timestamp,
    /// When the record stops replaying.
    pub expires_at: Timestamp,
    /// How many reservations the request took (1 + takeovers).
    pub attempts: u32,
}

/// A held reservation as plain data: what remote backends and the HTTP layer
/// pass around. The embedded store's [`Reservation`] wraps one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lease {
    /// The identity held.
    pub key: IdempotencyKey,
    /// The fencing token: only the holder of the current token can change
    /// the record.
    pub token: u64,
    /// 1 for the first reservation, +1 per takeover.
    pub attempt: u32,
    /// When the lease runs out.
    pub lease_until: Timestamp,
    /// TTL the response gets when completed.
    pub ttl: Duration,
    /// The checkpoint left by the previous holder, on a takeover.
    pub checkpoint: Option<Bytes>,
}

impl Lease {
    /// Builds a lease from its parts, for backends.
    pub fn new(
        key: IdempotencyKey,
        token: u64,
        attempt: u32,
        lease_until: Timestamp,
        ttl: Duration,
        checkpoint: Option<Bytes>,
    ) -> Self {
        Lease {
            key,
            token,
            attempt,
            lease_until,
            ttl,
            checkpoint,
        }
    }
}

/// Figures about a store.
///
/// Each figure is read on its own, not as one snapshot: while maintenance
/// runs, `live_records` drops shard by shard and `expired` counts the whole
/// pass once it ends, so a reading in between shows the one moved and not
/// yet the other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Records in the index, in flight or completed (expired ones count
    /// until maintenance removes them).
    pub live_records: u64,
    /// Records in flight.
    pub in_flight: u64,
    /// `reserve` calls answered `Acquired` (takeovers included).
    pub acquired: u64,
    /// `reserve` calls answered `Replay`.
    pub replayed: u64,
    /// `reserve` calls answered `Conflict`.
    pub conflicts: u64,
    /// `reserve` calls answered `InProgress`.
    pub in_progress: u64,
    /// Acquisitions that took over an expired lease.
    pub takeovers: u64,
    /// Expired records removed by maintenance or replaced by a new request.
    pub expired: u64,
    /// Reservations completed.
    pub completed: u64,
    /// Reservations released (explicitly or by drop).
    pub released: u64,
    /// Log segment files (durable store).
    pub segments: u64,
    /// Bytes of data files on disk (durable store).
    pub bytes_on_disk: u64,
    /// Bytes of live records on disk (durable store).
    pub bytes_live: u64,
    /// How long the last sync took (durable store).
    pub last_sync_latency: Option<Duration>,
    /// Syncs issued (durable store).
    pub syncs: u64,
    /// Records covered by those syncs (durable store).
    pub records_synced: u64,
}

impl Store {
    /// A store that keeps records in memory only, for tests, caches and
    /// single-process services that accept losing records on restart.
    pub fn in_memory(config: Config) -> Store {
        let engine = MemoryEngine::new(config.shard_count());
        Store::with_engine(Box::new(engine), "memory", config)
    }

    /// Opens (creating it if missing) the data directory `dir` as a durable
    /// store: same API and decisions as [`Store::in_memory`], records kept
    /// in an append-only log and recovered on the next open.
    ///
    /// Fails with [`Error::Locked`] if another store has the directory
    /// open, [`Error::BadDirectory`] if `dir` is not a usable directory,
    /// [`Error::UnsupportedFormatVersion`] / [`Error::NotIdemlogFile`] /
    /// [`Error::Corrupt`] for data files it cannot trust.
    ///
    /// ```
    /// use idemlog::{Config, Fingerprint, Outcome, Store};
    ///
    /// let dir = std::env::temp_dir().join(format!("idemlog-doc-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let key = idemlog::IdempotencyKey::new("tenant-1", "k-1")?;
    /// let fp = Fingerprint::of_bytes(b"body");
    /// {
    ///     let store = Store::open(&dir, Config::default())?;
    ///     let Outcome::Acquired(r) = store.reserve(&key, &fp)? else { panic!() };
    ///     r.complete(&b"201 created"[..])?;
    /// }
    /// let store = Store::open(&dir, Config::default())?;
    /// let Outcome::Replay(replay) = store.reserve(&key, &fp)? else { panic!() };
    /// assert_eq!(&replay.response[..], b"201 created");
    /// # drop(store);
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), idemlog::Error>(())
    /// ```
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Store> {
        Self::open_with_fs(dir, config, Arc::new(OsFileSystem))
    }

    /// [`Store::open`] with file I/O going through `fs`, for tests that
    /// inject faults or simulate power loss.
    pub fn open_with_fs(
        dir: impl AsRef<Path>,
        config: Config,
        fs: Arc<dyn FileSystem>,
    ) -> Result<Store> {
        let hasher = IdentityHasher::new();
        let engine = LogEngine::open(dir.as_ref(), &config, fs, &hasher)?;
        Ok(Store::with_engine_and_hasher(
            Box::new(engine),
            "log",
            config,
            hasher,
        ))
    }

    pub(crate) fn with_engine(
        engine: Box<dyn Engine>,
        engine_name: &'static str,
        config: Config,
    ) -> Store {
        Self::with_engine_and_hasher(engine, engine_name, config, IdentityHasher::new())
    }

    /// A store over `engine`, whose identity hashes use `hasher` (the
    /// durable engine rebuilt its index with it).
    pub(crate) fn with_engine_and_hasher(
        engine: Box<dyn Engine>,
        engine_name: &'static str,
        config: Config,
        hasher: IdentityHasher,
    ) -> Store {
        let shared = Arc::new(Shared {
            counters: Counters::new(engine.max_token()),
            engine,
            engine_name,
            hasher,
            poison: Poison::default(),
            config,
        });
        let maintenance = MaintenanceThread::start(&shared);
        let handles = (0..counters::STRIPES)
            .map(|_| Arc::new(CachePadded::new(Arc::clone(&shared))))
            .collect();
        Store {
            _maintenance: Arc::new(maintenance),
            shared,
            handles,
        }
    }

    /// Builds an identity checked against this store's limits.
    pub fn key(&self, scope: impl AsRef<[u8]>, key: impl AsRef<str>) -> Result<IdempotencyKey> {
        IdempotencyKey::with_limits(scope, key, &self.shared.config.limits)
    }

    /// Decides a request with the store's default lease and TTL. See
    /// [`reserve_with`](Self::reserve_with).
    pub fn reserve(&self, key: &IdempotencyKey, fingerprint: &Fingerprint) -> Result<Outcome> {
        self.reserve_with(key, fingerprint, ReserveOptions::default())
    }

    /// Decides a request by the table of SPEC §3: a new or expired identity
    /// is `Acquired`; the same request is `Replay`ed when completed or
    /// `InProgress` under a live lease, and taken over (`Acquired` with the
    /// previous checkpoint) once the lease ran out; another request with the
    /// same key is a `Conflict`.
    pub fn reserve_with(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> Result<Outcome> {
        let shared = &self.shared;
        let (outcome, hash) = shared.settle(shared.reserve(key, fingerprint, options))?;
        Ok(outcome.map(|grant| Reservation {
            shared: Arc::clone(&self.handles[thread_stripe()]),
            lease: grant.lease(key),
            hash,
            done: false,
        }))
    }

    /// The record of `key`, or `None` if there is none or it has expired.
    pub fn lookup(&self, key: &IdempotencyKey) -> Result<Option<Record>> {
        self.shared.settle(self.shared.lookup(key))
    }

    /// Removes expired records and reclaims space now. The background thread
    /// calls this every [`Config::maintenance_interval`]; tests call it
    /// after moving a manual clock.
    pub fn run_maintenance(&self) -> Result<MaintenanceReport> {
        self.shared.run_maintenance()
    }

    /// Current figures.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Makes every acknowledged operation durable now (a no-op in memory).
    pub fn flush(&self) -> Result<()> {
        self.shared.engine.flush()
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The store's current time, from its clock.
    pub fn now(&self) -> Timestamp {
        self.shared.config.clock.now()
    }

    /// Completes a held lease (the token-level form behind
    /// [`Reservation::complete`], for backends and the HTTP layer).
    pub fn complete_lease(&self, lease: &Lease, response: Bytes) -> Result<()> {
        let shared = &self.shared;
        let hash = shared.hash_of(&lease.key);
        shared.settle(shared.complete(lease, hash, response, lease.ttl))
    }

    /// Releases a held lease.
    pub fn release_lease(&self, lease: &Lease) -> Result<()> {
        let shared = &self.shared;
        shared.settle(shared.release(lease, shared.hash_of(&lease.key)))
    }

    /// Extends a held lease to `now + lease_for`.
    pub fn extend_lease(&self, lease: &mut Lease, lease_for: Duration) -> Result<()> {
        let shared = &self.shared;
        let hash = shared.hash_of(&lease.key);
        lease.lease_until = shared.settle(shared.extend(lease, hash, lease_for))?;
        Ok(())
    }

    /// Stores a checkpoint under a held lease.
    pub fn checkpoint_lease(&self, lease: &Lease, checkpoint: Bytes) -> Result<()> {
        let shared = &self.shared;
        shared.settle(shared.checkpoint(lease, shared.hash_of(&lease.key), checkpoint))
    }

    /// The async forms behind the [`Backend`](crate::Backend) impl: the
    /// same operations, settling their waits without blocking a thread
    /// where the engine allows (see [`Engine::wait_async`]).
    pub(crate) async fn reserve_async(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> Result<Outcome<Lease>> {
        let shared = &self.shared;
        let (outcome, _) = shared
            .settle_async(shared.reserve(key, fingerprint, options))
            .await?;
        Ok(outcome.map(|grant| grant.lease(key)))
    }

    pub(crate) async fn complete_async(&self, lease: &Lease, response: Bytes) -> Result<()> {
        let shared = &self.shared;
        let hash = shared.hash_of(&lease.key);
        shared
            .settle_async(shared.complete(lease, hash, response, lease.ttl))
            .await
    }

    pub(crate) async fn release_async(&self, lease: &Lease) -> Result<()> {
        let shared = &self.shared;
        shared
            .settle_async(shared.release(lease, shared.hash_of(&lease.key)))
            .await
    }

    pub(crate) async fn extend_async(&self, lease: &mut Lease, lease_for: Duration) -> Result<()> {
        let shared = &self.shared;
        let hash = shared.hash_of(&lease.key);
        lease.lease_until = shared
            .settle_async(shared.extend(lease, hash, lease_for))
            .await?;
        Ok(())
    }

    pub(crate) async fn checkpoint_async(&self, lease: &Lease, checkpoint: Bytes) -> Result<()> {
        let shared = &self.shared;
        let hash = shared.hash_of(&lease.key);
        shared
            .settle_async(shared.checkpoint(lease, hash, checkpoint))
            .await
    }

    pub(crate) async fn lookup_async(&self, key: &IdempotencyKey) -> Result<Option<Record>> {
        let shared = &self.shared;
        shared.settle_async(shared.lookup(key)).await
    }

    /// Whether `update` blocks on the disk itself (sled's `Sync` flush), so
    /// async callers must run it off their executor.
    pub(crate) fn blocks_in_update(&self) -> bool {
        self.shared.engine.blocks_in_update()
    }
}

impl Shared {
    fn identity<'a>(&self, key: &'a IdempotencyKey) -> Identity<'a> {
        Identity {
            key,
            hash: self.hash_of(key),
        }
    }

    /// The per-store keyed hash of `key`. It is one of the larger CPU costs of an in-memory
    /// operation, so a [`Reservation`] keeps the one computed by `reserve`.
    fn hash_of(&self, key: &IdempotencyKey) -> IdentityHash {
        self.hasher.hash(key)
    }

    #[inline]
    fn check_poison(&self) -> Result<()> {
        self.poison.check()
    }

    pub(crate) fn poison(&self, cause: String) {
        self.poison.set(cause);
    }

    /// Blocks until the decision's wait is settled, counts its events, then
    /// hands back its answer.
    fn settle<T>(&self, decided: impl Into<Decided<T>>) -> Result<T> {
        let Decided {
            answer,
            wait,
            events,
        } = decided.into();
        self.engine.wait(wait)?;
        self.count(&events, &answer);
        answer
    }

    /// [`settle`](Self::settle) for async callers: engines that can (the
    /// durable log's `Sync` wait) settle without blocking a thread.
    async fn settle_async<T>(&self, decided: impl Into<Decided<T>>) -> Result<T> {
        let Decided {
            answer,
            wait,
            events,
        } = decided.into();
        self.engine.wait_async(wait).await?;
        self.count(&events, &answer);
        answer
    }

    /// Counts what an answer that stands did.
    fn count<T>(&self, events: &Tally, answer: &Result<T>) {
        if answer.is_ok() {
            for &event in events.0.iter().flatten() {
                self.counters.add(event, 1);
            }
        }
    }

    /// Decides a reservation. The answer may be acted on only after its
    /// wait (see [`settle`](Self::settle)).
    fn reserve(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
    ) -> Decided<(Outcome<Grant>, IdentityHash)> {
        let mut wait = Wait::Ready;
        let mut events = Tally::default();
        let answer = self.reserve_inner(key, fingerprint, options, &mut wait, &mut events);
        Decided {
            answer,
            wait,
            events,
        }
    }

    fn reserve_inner(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        options: ReserveOptions,
        wait: &mut Wait,
        events: &mut Tally,
    ) -> Result<(Outcome<Grant>, IdentityHash)> {
        key.check(&self.config.limits)?;
        self.check_poison()?;
        let id = self.identity(key);
        let now = self.config.clock.now();
        let lease_for = options.lease.unwrap_or(self.config.lease);
        let ttl = options.ttl.unwrap_or(self.config.ttl);
        let mut outcome = None;
        let mut replaced_expired = false;
        *wait = self.engine.update(id, &mut |found| {
            replaced_expired = found.is_some_and(|r| r.is_expired(now));
            let (result, change) = match decision::decide(found, fingerprint, now) {
                Decision::Acquire { takeover } => {
                    let token = self.counters.next_token(id.hash.shard);
                    let acquired = decision::acquisition(
                        found,
                        takeover,
                        fingerprint,
                        now,
                        lease_for,
                        ttl,
                        token,
                    );
                    let grant = Outcome::Acquired(Grant {
                        token,
                        attempt: acquired.attempts(),
                        lease_until: acquired.lease_until(),
                        ttl,
                        checkpoint: acquired.checkpoint().cloned(),
                    });
                    ((grant, takeover), Change::Acquire(acquired))
                }
                Decision::Replay => {
                    let Some(r) = found else {
                        unreachable!("decide replays only a found record")
                    };
                    let RecordState::Completed {
                        completed_at,
                        response,
                    } = &r.state
                    else {
                        unreachable!("decide replays only a completed record")
                    };
                    let replay = Replay {
                        response: response.clone(),
                        completed_at: *completed_at,
                        expires_at: r.expires_at,
                        attempts: r.attempts,
                    };
                    ((Outcome::Replay(replay), false), Change::Replayed)
                }
                Decision::InProgress { retry_after } => {
                    let attempt = found.map_or(1, |r| r.attempts);
                    (
                        (
                            Outcome::InProgress {
                                retry_after,
                                attempt,
                            },
                            false,
                        ),
                        Change::Keep,
                    )
                }
                Decision::Conflict { in_flight } => {
                    ((Outcome::Conflict { in_flight }, false), Change::Keep)
                }
            };
            outcome = Some(result);
            change
        })?;
        let Some((outcome, takeover)) = outcome else {
            unreachable!("every engine calls the decision at least once")
        };
        let event = match &outcome {
            Outcome::Acquired(_) => Event::Acquired,
            Outcome::Replay(_) => Event::Replayed,
            Outcome::InProgress { .. } => Event::InProgress,
            Outcome::Conflict { .. } => Event::Conflict,
        };
        events.add(event);
        if takeover {
            events.add(Event::Takeover);
        }
        if replaced_expired {
            events.add(Event::Expired);
        }
        Ok((outcome, id.hash))
    }

    /// Runs `change` on the record held by `lease`, if the lease's token is
    /// still current. The answer (including a denial, which may rest on a
    /// record not yet durable) holds once the returned wait is settled.
    fn with_held(
        &self,
        lease: &Lease,
        hash: IdentityHash,
        mut change: impl FnMut(&Record, Timestamp) -> Change,
    ) -> (Result<()>, Wait) {
        if let Err(e) = self.check_poison() {
            return (Err(e), Wait::Ready);
        }
        let now = self.config.clock.now();
        let id = Identity {
            key: &lease.key,
            hash,
        };
        let mut denied = None;
        let updated =
            self.engine.update(
                id,
                &mut |found| match decision::authorize(found, lease.token, now) {
                    Ok(held) => {
                        denied = None;
                        change(held, now)
                    }
                    Err(e) => {
                        denied = Some(e);
                        Change::Keep
                    }
                },
            );
        match updated {
            Ok(wait) => (denied.map_or(Ok(()), Err), wait),
            Err(e) => (Err(e), Wait::Ready),
        }
    }

    fn complete(
        &self,
        lease: &Lease,
        hash: IdentityHash,
        response: Bytes,
        ttl: Duration,
    ) -> Decided<()> {
        let limit = self.config.limits.max_response_len;
        if response.len() > limit {
            let too_large = Error::ResponseTooLarge {
                len: response.len(),
                limit,
            };
            return (Err(too_large), Wait::Ready).into();
        }
        // Moved into the record when the engine decides once: cloning a
        // `Bytes` made from a `Vec` allocates.
        let mut response = Some(response);
        let retries = !self.engine.decides_once();
        let mut decided_twice = false;
        let (answer, wait) = self.with_held(lease, hash, |_, now| {
            let response = if retries {
                response.clone()
            } else {
                response.take()
            };
            match response {
                Some(response) => Change::Complete(decision::completion(response, now, ttl)),
                None => {
                    decided_twice = true;
                    Change::Keep
                }
            }
        });
        if answer.is_ok() && decided_twice {
            // An engine broke its `decides_once` promise; nothing was
            // stored, and saying so beats storing an empty response.
            let broken = Error::Backend {
                backend: "idemlog",
                message: "the storage engine asked for the completion twice; nothing was stored, retry the request".into(),
                source: None,
            };
            return (Err(broken), wait).into();
        }
        Decided {
            answer,
            wait,
            events: Tally::of(Event::Completed),
        }
    }

    fn release(&self, lease: &Lease, hash: IdentityHash) -> Decided<()> {
        let (answer, wait) = self.with_held(lease, hash, |_, _| Change::Remove);
        Decided {
            answer,
            wait,
            events: Tally::of(Event::Released),
        }
    }

    /// Extends the lease; the answer is the lease's new end.
    fn extend(
        &self,
        lease: &Lease,
        hash: IdentityHash,
        lease_for: Duration,
    ) -> (Result<Timestamp>, Wait) {
        let ttl = lease.ttl;
        let mut lease_until = lease.lease_until;
        let (answer, wait) = self.with_held(lease, hash, |held, now| {
            lease_until = now.saturating_add(lease_for);
            Change::Put(Box::new(decision::extended_record(
                held, now, lease_for, ttl,
            )))
        });
        (answer.map(|()| lease_until), wait)
    }

    fn checkpoint(
        &self,
        lease: &Lease,
        hash: IdentityHash,
        checkpoint: Bytes,
    ) -> (Result<()>, Wait) {
        let limit = self.config.limits.max_checkpoint_len;
        if checkpoint.len() > limit {
            let too_large = Error::CheckpointTooLarge {
                len: checkpoint.len(),
                limit,
            };
            return (Err(too_large), Wait::Ready);
        }
        self.with_held(lease, hash, |held, _| {
            Change::Put(Box::new(decision::checkpointed_record(
                held,
                checkpoint.clone(),
            )))
        })
    }

    fn lookup(&self, key: &IdempotencyKey) -> (Result<Option<Record>>, Wait) {
        if let Err(e) = key.check(&self.config.limits) {
            return (Err(e), Wait::Ready);
        }
        let now = self.config.clock.now();
        match self.engine.get(self.identity(key)) {
            Ok((record, wait)) => (Ok(record.filter(|r| !r.is_expired(now))), wait),
            Err(e) => (Err(e), Wait::Ready),
        }
    }

    pub(crate) fn run_maintenance(&self) -> Result<MaintenanceReport> {
        let report = self.engine.maintain(self.config.clock.now())?;
        self.counters.add(Event::Expired, report.expired);
        Ok(report)
    }

    fn stats(&self) -> Stats {
        let e = self.engine.stats();
        let c = &self.counters;
        Stats {
            live_records: e.live_records,
            in_flight: e.in_flight,
            acquired: c.total(Event::Acquired),
            replayed: c.total(Event::Replayed),
            conflicts: c.total(Event::Conflict),
            in_progress: c.total(Event::InProgress),
            takeovers: c.total(Event::Takeover),
            expired: c.total(Event::Expired),
            completed: c.total(Event::Completed),
            released: c.total(Event::Released),
            segments: e.segments,
            bytes_on_disk: e.bytes_on_disk,
            bytes_live: e.bytes_live,
            last_sync_latency: e.last_sync_latency,
            syncs: e.syncs,
            records_synced: e.records_synced,
        }
    }
}

/// An `Acquired` reservation: the right to run the write and store its
/// response. Complete it, release it, or drop it (which releases it).
///
/// Only the holder of the record's current fencing token can change the
/// record; once the lease ran out and a retry took over, every method here
/// answers [`Error::LeaseLost`] and changes nothing.
#[derive(Debug)]
#[must_use = "dropping a reservation releases it at once"]
pub struct Reservation {
    shared: SharedHandle,
    lease: Lease,
    /// The identity hash `reserve` computed, so completing does not hash
    /// the key again.
    hash: IdentityHash,
    done: bool,
}

impl Reservation {
    /// The identity held.
    pub fn key(&self) -> &IdempotencyKey {
        &self.lease.key
    }

    /// The fencing token; pass it to downstream systems that can reject
    /// stale writers.
    pub fn fencing_token(&self) -> u64 {
        self.lease.token
    }

    /// 1 for the first reservation, +1 per takeover.
    pub fn attempt(&self) -> u32 {
        self.lease.attempt
    }

    /// Whether this reservation took over from a holder whose lease ran out
    /// (its work may have been partly done: see [`Self::recovered_checkpoint`]).
    pub fn is_takeover(&self) -> bool {
        self.lease.attempt > 1
    }

    /// The checkpoint the previous holder stored, on a takeover.
    pub fn recovered_checkpoint(&self) -> Option<&Bytes> {
        self.lease.checkpoint.as_ref()
    }

    /// When the lease runs out unless extended.
    pub fn lease_until(&self) -> Timestamp {
        self.lease.lease_until
    }

    /// The lease as plain data.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Stores the response; the record replays it until its TTL runs out.
    pub fn complete(self, response: impl Into<Bytes>) -> Result<()> {
        let ttl = self.lease.ttl;
        self.complete_with_ttl(response, ttl)
    }

    /// Stores the response with a TTL chosen now.
    pub fn complete_with_ttl(mut self, response: impl Into<Bytes>, ttl: Duration) -> Result<()> {
        let shared = &self.shared;
        let result = shared.settle(shared.complete(&self.lease, self.hash, response.into(), ttl));
        // Succeeded, or lost the lease: nothing left to release. Other
        // failures (limits, I/O) still release on drop.
        self.done = matches!(result, Ok(()) | Err(Error::LeaseLost { .. }));
        result
    }

    /// Deletes the in-flight record so a retry runs the write again (for a
    /// failure that must not be cached).
    pub fn release(mut self) -> Result<()> {
        self.done = true;
        let shared = &self.shared;
        shared.settle(shared.release(&self.lease, self.hash))
    }

    /// Extends the lease to `now + lease`: a heartbeat for long work.
    pub fn extend(&mut self, lease: Duration) -> Result<()> {
        let shared = &self.shared;
        self.lease.lease_until = shared.settle(shared.extend(&self.lease, self.hash, lease))?;
        Ok(())
    }

    /// Stores a small recovery point, handed to whoever takes the record over
    /// if this holder dies.
    pub fn checkpoint(&mut self, checkpoint: impl Into<Bytes>) -> Result<()> {
        let checkpoint = checkpoint.into();
        let shared = &self.shared;
        shared.settle(shared.checkpoint(&self.lease, self.hash, checkpoint.clone()))?;
        self.lease.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// Gives up the automatic release on drop and returns the lease as plain
    /// data, for code that completes it later through
    /// [`Store::complete_lease`] (or lets it run out on purpose).
    pub fn into_lease(mut self) -> Lease {
        self.done = true;
        self.lease.clone()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            // Best effort: if this fails the lease simply runs out.
            let shared = &self.shared;
            let _ = shared.settle(shared.release(&self.lease, self.hash));
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("engine", &self.engine_name)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_store_refuses_writes_with_the_cause() {
        let store = Store::in_memory(Config::builder().maintenance_interval(None).build());
        let key = store.key("t", "k").unwrap();
        let fp = Fingerprint::of_bytes(b"x");
        let Outcome::Acquired(r) = store.reserve(&key, &fp).unwrap() else {
            panic!("fresh key")
        };
        store
            .shared
            .poison("background maintenance panicked: boom".into());
        let err = store.reserve(&key, &fp).unwrap_err();
        assert!(
            matches!(&err, Error::Poisoned { cause } if cause.contains("boom")),
            "got {err:?}"
        );
        let err = r.complete(Bytes::from_static(b"x")).unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "got {err:?}");
        assert!(err.to_string().contains("reopen"), "{err}");
    }
}
