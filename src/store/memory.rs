//! The in-memory engine: sharded hash tables under parking_lot mutexes.

use crossbeam_utils::CachePadded;
use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::Mutex;

use super::engine::{Change, Engine, EngineStats, Identity, MaintenanceReport};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::record::Record;

struct Slot {
    hash: u64,
    record: Record,
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
    ) -> Result<()> {
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
                        occupied.get_mut().record = record;
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
                        record,
                    });
                }
            }
        }
        Ok(())
    }

    fn get(&self, id: Identity<'_>) -> Result<Option<Record>> {
        let shard = self.shard(&id).lock();
        Ok(shard
            .table
            .find(id.hash.table, |s| {
                s.hash == id.hash.table && s.record.key == *id.key
            })
            .map(|s| s.record.clone()))
    }

    fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport> {
        let mut report = MaintenanceReport::default();
        // One shard at a time, so no lock is held for more than one shard's
        // worth of records.
        for shard in self.shards.iter() {
            let mut guard = shard.lock();
            let shard = &mut *guard;
            let (mut expired, mut in_flight_expired) = (0, 0);
            shard.table.retain(|s| {
                let keep = !s.record.is_expired(now);
                if !keep {
                    expired += 1;
                    in_flight_expired += u64::from(s.record.is_in_flight());
                }
                keep
            });
            shard.in_flight -= in_flight_expired;
            report.expired += expired;
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
