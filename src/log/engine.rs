//! [`LogEngine`]: the durable engine behind [`Store::open`](crate::Store::open).
//!
//! Each update runs under its identity's index shard lock: find the entry,
//! read its record (from the in-flight side table or back from disk), let
//! the store decide, append the new frame to the log buffer, update the
//! index, unlock; then the caller waits, outside the lock, until the frame
//! (or the last frame of that shard the decision saw) is as durable as the
//! store's durability asks: blocking, or as a future registered with the
//! group commit (async callers).

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use super::format;
use super::fs::{FileSystem, LockGuard};
use super::index::{self, Entry, Shard};
use super::lock::lock_dir;
use super::recovery::{self, hashes, Params};
use super::writer::{spawn_writer, Log, LogSettings};
use crate::clock::Timestamp;
use crate::config::{Config, Durability};
use crate::error::{Error, Result};
use crate::identity::IdentityHasher;
use crate::record::Record;
use crate::store::engine::{
    Change, Engine, EngineStats, Identity, MaintenanceReport, Wait, WaitFuture, WholeChange,
};

thread_local! {
    /// Per-thread encoding buffer, so a frame costs no allocation.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// How a directory is opened, beyond its [`Config`]: internals that tests
/// change to reach paths the defaults rarely take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OpenTuning {
    /// The identity-hash bits the index keeps; 0 makes every identity
    /// collide.
    pub(crate) hash_mask: u32,
    /// Whether recovery builds the index on threads beside its scan (false:
    /// the scan indexes every frame itself, as when no thread can start).
    pub(crate) indexer_threads: bool,
}

impl OpenTuning {
    /// What a store opened through the public API uses.
    pub(crate) const DEFAULT: OpenTuning = OpenTuning {
        hash_mask: u32::MAX,
        indexer_threads: true,
    };
}

/// The durable, log-structured engine.
pub(crate) struct LogEngine {
    pub(super) log: Arc<Log>,
    pub(super) shards: Box<[CachePadded<Mutex<Shard>>]>,
    hash_mask: u32,
    opened_at: Timestamp,
    max_token: u64,
    /// One maintenance pass at a time.
    pub(super) reclaiming: Mutex<()>,
    /// Records expiring within this are left to expire rather than copied
    /// forward (see `reclaim`).
    pub(super) reclaim_horizon: Duration,
    stop_writer: Option<Sender<()>>,
    writer: Option<JoinHandle<()>>,
    // Last: released after the final flush in `drop`.
    _lock: LockGuard,
}

/// Where a found record is.
pub(super) struct Found {
    pub(super) entry: Entry,
    /// Read back from disk; `None` when it is in the in-flight side table.
    pub(super) from_disk: Option<Record>,
}

impl LogEngine {
    /// Opens (creating if needed) the data directory `dir`.
    pub(crate) fn open(
        dir: &Path,
        config: &Config,
        fs: Arc<dyn FileSystem>,
        hasher: &IdentityHasher,
    ) -> Result<LogEngine> {
        Self::open_tuned(dir, config, fs, hasher, OpenTuning::DEFAULT)
    }

    /// Opens with the internals `tuning` sets, which tests change to reach
    /// paths the defaults rarely take.
    pub(crate) fn open_tuned(
        dir: &Path,
        config: &Config,
        fs: Arc<dyn FileSystem>,
        hasher: &IdentityHasher,
        tuning: OpenTuning,
    ) -> Result<LogEngine> {
        let OpenTuning {
            hash_mask,
            indexer_threads,
        } = tuning;
        let lock = lock_dir(&*fs, dir)?;
        let shards = config.shard_count();
        let opened_at = config.clock.now();
        let sync = config.durability != Durability::None;
        // A frame must fit in a segment after its header.
        let segment_size = config.segment_size.clamp(4096, u64::from(u32::MAX));
        let opened = recovery::recover(&Params {
            fs: &*fs,
            dir,
            hasher,
            shards,
            hash_mask,
            now: opened_at,
            keep_leases: config.keep_leases_on_open,
            repair: config.repair,
            segment_size,
            disk_budget: config.disk_budget,
            sync,
            indexer_threads,
        })?;
        let (log, kicked) = Log::new(
            LogSettings {
                fs,
                dir: dir.to_path_buf(),
                durability: config.durability,
                segment_size,
                disk_budget: config.disk_budget,
                shards,
                prefill: config.durability == Durability::Sync && config.prefill_segments,
            },
            opened.segments,
            opened.head,
            opened.head_end,
            opened.max_token,
        );
        let log = Arc::new(log);
        let (stop_writer, stop) = crossbeam_channel::bounded::<()>(0);
        let writer = spawn_writer(Arc::clone(&log), kicked, stop).map_err(|e| {
            Error::io(
                format!("cannot start the writer thread for {}", dir.display()),
                e,
            )
        })?;
        Ok(LogEngine {
            log,
            shards: opened
                .shards
                .into_iter()
                .map(|s| CachePadded::new(Mutex::new(s)))
                .collect(),
            hash_mask,
            opened_at,
            max_token: opened.max_token,
            reclaiming: Mutex::new(()),
            reclaim_horizon: super::reclaim::horizon(config.ttl),
            stop_writer: Some(stop_writer),
            writer: Some(writer),
            _lock: lock,
        })
    }

    fn locate(&self, id: &Identity<'_>) -> (u32, usize) {
        hashes(id.hash, self.shards.len(), self.hash_mask)
    }

    /// Finds the current record of `id` in `shard`, confirming the full
    /// identity for every entry whose hash matches.
    fn find(&self, shard: &Shard, id: &Identity<'_>, hash: u32) -> Result<Option<Found>> {
        for e in shard.table.iter_hash(hash) {
            if e.in_flight() {
                if let Some(r) = shard.cached(e) {
                    if r.key == *id.key {
                        return Ok(Some(Found {
                            entry: *e,
                            from_disk: None,
                        }));
                    }
                    continue;
                }
            }
            let mut r = self.read(shard, e)?;
            if r.key == *id.key {
                if e.lease_void() {
                    index::void_lease(&mut r, self.opened_at);
                }
                r.replays = shard.replays_of(e);
                return Ok(Some(Found {
                    entry: *e,
                    from_disk: Some(r),
                }));
            }
        }
        Ok(None)
    }

    fn read(&self, shard: &Shard, e: &Entry) -> Result<Record> {
        let segment = e.segment(self.log.head_id());
        let payload = self
            .log
            .read_payload(segment, e.offset, shard.frame_len(e))?;
        format::decode_put(&payload).map_err(|reason| Error::Corrupt {
            file: self.log.dir.join(super::segment::file_name(segment)),
            offset: u64::from(e.offset),
            reason: reason.into(),
        })
    }

    fn append_with(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<super::writer::Loc> {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            s.clear();
            encode(&mut s);
            let loc = self.log.append(&s);
            if s.capacity() > 1 << 20 {
                *s = Vec::new();
            }
            loc
        })
    }
}

impl Engine for LogEngine {
    fn update(
        &self,
        id: Identity<'_>,
        decide: &mut dyn FnMut(Option<&Record>) -> Change,
    ) -> Result<Wait> {
        self.log.check()?;
        let (hash, si) = self.locate(&id);
        let mut guard = self.shards[si].lock();
        let shard = &mut *guard;
        let found = self.find(shard, &id, hash)?;
        let seen = match &found {
            None => None,
            Some(Found {
                from_disk: Some(r), ..
            }) => Some(r),
            Some(Found {
                entry,
                from_disk: None,
            }) => match shard.cached(entry) {
                Some(r) => Some(r),
                None => unreachable!("find saw this cached record under the same lock"),
            },
        };
        // The log writes whole records: a completion becomes one.
        let change = decide(seen).into_whole(id.key, seen);
        let wait_for = match change {
            WholeChange::Keep => shard.last_end,
            WholeChange::Replayed => {
                if let Some(f) = &found {
                    shard.count_replay(&f.entry);
                }
                shard.last_end
            }
            WholeChange::Put(record) => {
                let len = format::put_frame_len(&record);
                if len > format::MAX_PAYLOAD {
                    return Err(Error::ResponseTooLarge {
                        len: record.response().map_or(0, |b| b.len()),
                        limit: format::MAX_PAYLOAD,
                    });
                }
                let loc = self.append_with(|out| format::encode_put(out, &record))?;
                self.log.note_token(si, record.token);
                let entry = Entry::new(
                    hash,
                    loc,
                    record.is_in_flight(),
                    record.expires_at.as_millis(),
                );
                match &found {
                    Some(f) => shard.replace(&f.entry, entry, loc.len, record.replays),
                    None => shard.insert(entry, loc.len, record.replays),
                }
                if record.is_in_flight() {
                    shard.cache(&entry, record);
                }
                shard.last_end = loc.end();
                shard.last_end
            }
            WholeChange::Remove => match &found {
                Some(f) => {
                    let loc = self.append_with(|out| format::encode_tombstone(out, id.key))?;
                    shard.remove(&f.entry);
                    shard.last_end = loc.end();
                    shard.last_end
                }
                None => shard.last_end,
            },
        };
        drop(guard);
        Ok(Wait::Log(wait_for))
    }

    fn wait(&self, wait: Wait) -> Result<()> {
        match wait {
            Wait::Ready => self.log.check(),
            Wait::Log(end) => self.log.wait(end),
        }
    }

    fn wait_async(&self, wait: Wait) -> WaitFuture<'_> {
        match wait {
            Wait::Log(end) if self.log.durability == Durability::Sync => {
                WaitFuture::Log(self.log.wait_async(end))
            }
            _ => WaitFuture::Done(Some(self.wait(wait))),
        }
    }

    fn get(&self, id: Identity<'_>) -> Result<(Option<Record>, Wait)> {
        self.log.check()?;
        let (hash, si) = self.locate(&id);
        let guard = self.shards[si].lock();
        let record = match self.find(&guard, &id, hash)? {
            None => None,
            Some(Found {
                from_disk: Some(r), ..
            }) => Some(r),
            Some(Found {
                entry,
                from_disk: None,
            }) => guard.cached(&entry).cloned(),
        };
        let wait_for = guard.last_end;
        drop(guard);
        Ok((record, Wait::Log(wait_for)))
    }

    fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport> {
        super::reclaim::maintain(self, now)
    }

    fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::default();
        for shard in self.shards.iter() {
            let s = shard.lock();
            stats.live_records += s.table.len() as u64;
            stats.in_flight += s.in_flight;
            stats.bytes_live += s.live_bytes;
        }
        stats.segments = self.log.segments.read().len() as u64;
        stats.bytes_on_disk = self.log.bytes_on_disk();
        let (syncs, records, last) = self.log.sync_figures();
        stats.syncs = syncs;
        stats.records_synced = records;
        stats.last_sync_latency = last;
        stats
    }

    fn hurry(&self) {
        self.log.hurry();
    }

    fn flush(&self) -> Result<()> {
        self.log.flush()
    }

    fn max_token(&self) -> u64 {
        self.max_token
    }
}

impl Drop for LogEngine {
    fn drop(&mut self) {
        // Closing the channel stops the writer thread.
        drop(self.stop_writer.take());
        if let Some(thread) = self.writer.take() {
            let _ = thread.join();
        }
        // Nothing to report a failure to: an unsynced tail is what a crash
        // would leave, and recovery handles it.
        let _ = self.log.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::fingerprint::Fingerprint;
    use crate::fs::OsFileSystem;
    use crate::identity::IdempotencyKey;
    use crate::store::{Outcome, Store};

    /// A store on the log engine opened with `tuning`.
    fn tuned_store(dir: &Path, config: &Config, tuning: OpenTuning) -> Store {
        let hasher = IdentityHasher::new();
        let engine =
            LogEngine::open_tuned(dir, config, Arc::new(OsFileSystem), &hasher, tuning).unwrap();
        Store::with_engine_and_hasher(Box::new(engine), "log", config.clone(), hasher)
    }

    /// A store whose index keeps no hash bits: every identity collides.
    fn colliding_store(dir: &Path, clock: &ManualClock) -> Store {
        let config = Config::builder()
            .clock(clock.clone())
            .maintenance_interval(None)
            .shards(1)
            .segment_size(4096)
            .build();
        let tuning = OpenTuning {
            hash_mask: 0,
            ..OpenTuning::DEFAULT
        };
        tuned_store(dir, &config, tuning)
    }

    #[test]
    fn hash_collisions_never_return_another_identity() {
        let dir = std::env::temp_dir().join(format!("idemlog-collide-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let keys: Vec<_> = (0..40)
            .map(|i| IdempotencyKey::new("t", format!("k{i}")).unwrap())
            .collect();
        {
            let store = colliding_store(&dir, &clock);
            for (i, k) in keys.iter().enumerate() {
                let fp = Fingerprint::of_bytes(format!("body{i}").as_bytes());
                let Outcome::Acquired(r) = store.reserve(k, &fp).unwrap() else {
                    panic!("{k:?} collided with another identity")
                };
                if i % 3 == 0 {
                    let _ = r.into_lease(); // stays in flight
                } else {
                    r.complete(format!("resp{i}").into_bytes()).unwrap();
                }
            }
            for (i, k) in keys.iter().enumerate() {
                let rec = store.lookup(k).unwrap().unwrap();
                assert_eq!(rec.key(), k);
                if i % 3 != 0 {
                    assert_eq!(&rec.response().unwrap()[..], format!("resp{i}").as_bytes());
                }
            }
        }
        // Recovery confirms identities too.
        let store = colliding_store(&dir, &clock);
        for (i, k) in keys.iter().enumerate() {
            let fp = Fingerprint::of_bytes(format!("body{i}").as_bytes());
            match store.reserve(k, &fp).unwrap() {
                Outcome::Replay(r) if i % 3 != 0 => {
                    assert_eq!(&r.response[..], format!("resp{i}").as_bytes())
                }
                Outcome::Acquired(r) if i % 3 == 0 => assert!(r.is_takeover()),
                other => panic!("{i}: got {other:?}"),
            }
        }
        // The 14 taken-over reservations were dropped, which released them.
        assert_eq!(store.stats().live_records, 26);
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn open_store(dir: &Path, config: &Config, indexer_threads: bool) -> Store {
        let tuning = OpenTuning {
            indexer_threads,
            ..OpenTuning::DEFAULT
        };
        tuned_store(dir, config, tuning)
    }

    #[test]
    fn recovery_without_indexer_threads_rebuilds_the_same_index() {
        // The path taken when no indexer thread can be started: the scan
        // applies every batch itself, read-backs of old versions included.
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builder()
            .clock(ManualClock::new(Timestamp::from_millis(1_000_000)))
            .durability(Durability::None)
            .maintenance_interval(None)
            .keep_leases_on_open(true)
            .segment_size(1 << 20)
            .ttl(Duration::from_secs(3600))
            .build();
        let key = |k: &str| IdempotencyKey::new("t", k).unwrap();
        let fp = Fingerprint::of_bytes(b"body");
        let pairs = 20_000;
        {
            let store = open_store(dir.path(), &config, true);
            // Its completion lands ~40 k frames later: beyond the batches an
            // indexer keeps, so the reservation is read back to match it.
            let Outcome::Acquired(far) = store.reserve(&key("far"), &fp).unwrap() else {
                panic!("a fresh key was not acquired")
            };
            for i in 0..pairs {
                let Outcome::Acquired(r) = store.reserve(&key(&format!("k{i}")), &fp).unwrap()
                else {
                    panic!("k{i} was not acquired")
                };
                match i % 100 {
                    0 => drop(r.into_lease()), // left in flight
                    1 => r.release().unwrap(), // removed: a tombstone
                    _ => r.complete(format!("r{i}").into_bytes()).unwrap(),
                }
            }
            far.complete(b"far response".to_vec()).unwrap();
            store.flush().unwrap();
        }
        let threaded = open_store(dir.path(), &config, true).stats();
        let store = open_store(dir.path(), &config, false);
        let stats = store.stats();
        // 200 released, 200 in flight, the rest and `far` completed.
        assert_eq!(stats.live_records, pairs as u64 - 200 + 1);
        assert_eq!(stats.in_flight, 200);
        assert_eq!(
            (stats.live_records, stats.in_flight),
            (threaded.live_records, threaded.in_flight)
        );
        match store.reserve(&key("far"), &fp).unwrap() {
            Outcome::Replay(r) => assert_eq!(&r.response[..], b"far response"),
            other => panic!("far: got {other:?}"),
        }
        for i in (0..pairs).step_by(7) {
            let found = store.lookup(&key(&format!("k{i}"))).unwrap();
            match (i % 100, found) {
                (0, Some(r)) => assert!(r.is_in_flight(), "k{i}"),
                (1, None) => {}
                (_, Some(r)) => assert_eq!(
                    r.response().map(|b| &b[..]),
                    Some(format!("r{i}").as_bytes())
                ),
                (_, other) => panic!("k{i}: got {other:?}"),
            }
        }
    }

    #[test]
    fn a_hurried_engine_stops_resting_between_cuts() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::builder()
            .durability(Durability::Sync)
            .maintenance_interval(None)
            .build();
        let engine = LogEngine::open(
            dir.path(),
            &config,
            Arc::new(OsFileSystem),
            &IdentityHasher::new(),
        )
        .unwrap();
        let ms = Duration::from_millis(1);
        assert_eq!(engine.log.rest_after_cut(ms), ms);
        engine.hurry();
        assert_eq!(engine.log.rest_after_cut(ms), Duration::ZERO);
    }
}
