//! The in-memory engine: sharded hash tables under parking_lot mutexes.

use crossbeam_utils::CachePadded;
use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::Mutex;

use super::engine::{Change, Engine, EngineStats, Identity, MaintenanceReport, Wait};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::record::Record;

/// A table entry. The record is boxed: a `Record` is about 200 bytes and a
/// hash table runs up to half empty after it doubles, so inline records
/// would cost ~450 B of table per record at 1 M records and every doubling
/// would move them all. Boxed, a table entry is 24 bytes. The expiry is
/// copied next to the hash so a maintenance pass reads the table only, not
/// every record.
struct Slot {
    hash: u64,
    expires_at: Timestamp,
    record: Box<Record>,
}

#[derive(Default)]
struct Shard {
    table: HashTable<Slot>,
    in_flight: u64,
}

/// Records kept in memory only; lost when the store is dropped.
pub(crate) struct MemoryEngine {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    mask: usize,
}

impl MemoryEngine {
    pub(crate) fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        MemoryEngine {
            shards: (0..n)
                .map(|_| CachePadded::new(Mutex::new(Shard::default())))
                .collect(),
            mask: n - 1,
        }
    }

    fn shard(&self, id: &Identity<'_>) -> &Mutex<Shard> {
        &self.shards[id.hash.shard as usize & self.mask]
    }
}

impl Engine for MemoryEngine {
    fn update(
        &self,
        id: Identity<'_>,
        decide: &mut dyn FnMut(Option<&Record>) -> Change,
    ) -> Result<Wait> {
        let mut guard = self.shard(&id).lock();
        let shard = &mut *guard;
        let entry = shard.table.entry(
            id.hash.table,
            |s| s.hash == id.hash.table && s.record.key == *id.key,
            |s| s.hash,
        );
        match entry {
            Entry::Occupied(mut occupied) => {
                let was_in_flight = occupied.get().record.is_in_flight();
                match decide(Some(&occupied.get().record)) {
                    Change::Keep => {}
                    Change::Replayed => {
                        let r = &mut occupied.get_mut().record;
                        r.replays = r.replays.saturating_add(1);
                    }
                    Change::Put(record) => {
                        let now_in_flight = record.is_in_flight();
                        let slot = occupied.get_mut();
                        slot.expires_at = record.expires_at;
                        *slot.record = record;
                        shard.in_flight =
                            shard.in_flight + u64::from(now_in_flight) - u64::from(was_in_flight);
                    }
                    Change::Remove => {
                        occupied.remove();
                        shard.in_flight -= u64::from(was_in_flight);
                    }
                }
            }
            Entry::Vacant(vacant) => {
                if let Change::Put(record) = decide(None) {
                    shard.in_flight += u64::from(record.is_in_flight());
                    vacant.insert(Slot {
                        hash: id.hash.table,
                        expires_at: record.expires_at,
                        record: Box::new(record),
                    });
                }
            }
        }
        Ok(Wait::Ready)
    }

    fn get(&self, id: Identity<'_>) -> Result<(Option<Record>, Wait)> {
        let shard = self.shard(&id).lock();
        let record = shard
            .table
            .find(id.hash.table, |s| {
                s.hash == id.hash.table && s.record.key == *id.key
            })
            .map(|s| Record::clone(&s.record));
        Ok((record, Wait::Ready))
    }

    fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        // One shard at a time, so no lock is held for more than one shard's
        // worth of records.
        let mut removed: Vec<Slot> = Vec::new();
        for shard in self.shards.iter() {
            {
                let mut guard = shard.lock();
                let shard = &mut *guard;
                // Records are unlinked under the lock and freed after it:
                // freeing hundreds of records is most of a pass's work, and
                // requests to this shard wait for the lock meanwhile.
                // (Record::is_expired, on the slot's copy of the expiry.)
                removed.extend(shard.table.extract_if(|s| now >= s.expires_at));
                let in_flight_expired =
                    removed.iter().filter(|s| s.record.is_in_flight()).count() as u64;
                shard.in_flight -= in_flight_expired;
            }
            report.expired += removed.len() as u64;
            removed.clear();
        }
        Ok(report)
    }

    fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            stats.live_records += shard.table.len() as u64;
            stats.in_flight += shard.in_flight;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Config, Fingerprint, ManualClock, Outcome, ReserveOptions, Store, Timestamp};

    const SECOND: Duration = Duration::from_secs(1);

    fn store(clock: &ManualClock) -> Store {
        Store::in_memory(
            Config::builder()
                .clock(clock.clone())
                .lease(60 * SECOND)
                .ttl(3600 * SECOND)
                .maintenance_interval(None)
                .build(),
        )
    }

    /// Maintenance reads each slot's copy of the expiry: every change that
    /// moves a record's expiry (extend, complete) must move the copy too.
    #[test]
    fn maintenance_follows_expiry_changes_made_after_insert() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = store(&clock);
        let fp = Fingerprint::of_bytes(b"body");
        let key = store.key("t", "extended").unwrap();
        let Outcome::Acquired(mut held) = store.reserve(&key, &fp).unwrap() else {
            panic!("fresh key not acquired")
        };
        // Inserted expiring at 60 s + 3600 s; the extension moves it to
        // 50 s + 600 s + 3600 s.
        clock.advance(50 * SECOND);
        held.extend(600 * SECOND).unwrap();
        clock.set(Timestamp::from_millis(3_700_000));
        let report = store.run_maintenance().unwrap();
        assert_eq!(report.expired, 0, "extended record removed: {report:?}");
        assert_eq!(store.stats().in_flight, 1);

        // Completed with a 10 s TTL at 3700 s: gone at 3710 s, not before.
        held.complete_with_ttl(b"done".to_vec(), 10 * SECOND)
            .unwrap();
        clock.set(Timestamp::from_millis(3_709_999));
        assert_eq!(store.run_maintenance().unwrap().expired, 0);
        let record = store.lookup(&key).unwrap();
        assert!(record.is_some(), "completed record lost before its TTL");
        clock.set(Timestamp::from_millis(3_710_000));
        assert_eq!(store.run_maintenance().unwrap().expired, 1);
        let stats = store.stats();
        assert_eq!((stats.live_records, stats.in_flight), (0, 0), "{stats:?}");
    }

    #[test]
    fn maintenance_removes_abandoned_reservations_and_their_in_flight_count() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = store(&clock);
        let fp = Fingerprint::of_bytes(b"body");
        let options = ReserveOptions::default()
            .lease(10 * SECOND)
            .ttl(20 * SECOND);
        let mut kept = Vec::new();
        for i in 0..100 {
            let key = store.key("t", format!("k{i}")).unwrap();
            match store.reserve_with(&key, &fp, options).unwrap() {
                Outcome::Acquired(r) => kept.push(r.into_lease()),
                other => panic!("fresh key not acquired: {other:?}"),
            }
        }
        assert_eq!(store.stats().in_flight, 100);
        clock.set(Timestamp::from_millis(29_999));
        assert_eq!(store.run_maintenance().unwrap().expired, 0);
        clock.set(Timestamp::from_millis(30_000));
        assert_eq!(store.run_maintenance().unwrap().expired, 100);
        let stats = store.stats();
        assert_eq!((stats.live_records, stats.in_flight), (0, 0), "{stats:?}");
    }
}
