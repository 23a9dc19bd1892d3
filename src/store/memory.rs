//! The in-memory engine: sharded hash tables under parking_lot mutexes.

use crossbeam_utils::CachePadded;
use hashbrown::hash_table::{Entry, HashTable};
use parking_lot::{Mutex, MutexGuard};

use super::engine::{Change, Engine, EngineStats, Identity, MaintenanceReport, Wait};
use super::slab::{Places, RecordSlab, Relocated, SlabIndex};
use crate::clock::Timestamp;
use crate::error::Result;
use crate::record::Record;

/// A table entry. The record lives in its shard's [`RecordSlab`]: a
/// `Record` is 184 bytes and a hash table runs up to half empty after it
/// doubles, so inline records would cost up to ~370 B of table per record
/// and every doubling would move them all. A table entry is 16
/// bytes: the low half of the identity's table hash (see [`bucket_hash`]),
/// the record's place and its expiry, copied next to the hash so a
/// maintenance pass reads the table only, not every record.
struct Slot {
    hash: u32,
    at: SlabIndex,
    expires_at: Timestamp,
}

/// The low 32 bits of an identity's table hash: what a [`Slot`] keeps.
fn slot_hash(table: u64) -> u32 {
    table as u32
}

/// What the table hashes a slot by: its 32 bits twice over, so that
/// hashbrown's bucket (its low bits) and control tag (its top 7 bits) both
/// come from them, exactly as from the identity's full hash for tables of
/// up to 2^25 buckets per shard.
fn bucket_hash(hash: u32) -> u64 {
    u64::from(hash) << 32 | u64::from(hash)
}

struct Shard {
    table: HashTable<Slot>,
    records: RecordSlab,
    in_flight: u64,
    /// No record of the shard expires before this (a lower bound: every
    /// write lowers it to its record's expiry, and a maintenance pass
    /// rebuilds it from the expiries it kept and those written meanwhile,
    /// see [`ShardSweep`]). A pass skips a shard with
    /// nothing due instead of reading every slot, which, run every second
    /// while a large store's records are still young, took ~3 % of the
    /// cores in the compare bench and held each shard's lock for the scan.
    earliest_expiry: Timestamp,
    /// Bumped before any write that may move the table's entries to other
    /// buckets (a rehash, in place or into a larger table), so that a sweep
    /// made in steps knows it may have passed some entries over.
    layout: u64,
}

impl Shard {
    /// Notes that the next insertion will rehash the table: hashbrown
    /// rehashes exactly when a table with no growth left takes one more
    /// entry, and `entry` reserves that room before it looks.
    fn note_rehash_ahead(&mut self) {
        if self.table.len() == self.table.capacity() {
            self.layout += 1;
        }
    }
}

/// Table buckets one sweep step visits under its shard's lock. A step
/// takes a few µs, about what a few requests take: a request that finds
/// the lock held spins that long before it sleeps, and waking it costs a
/// VM tens of µs. A whole shard of a 10 M-record store in one hold kept
/// requests to it waiting ~200 µs at the p99 (`footprint`, "while
/// expiring"); 4,096 buckets set its p99.9 at 55–80 µs at 1 M records,
/// 1,024 at 47–52 µs, with passes no slower.
const SWEEP_STEP_BUCKETS: usize = 1024;

/// Records kept in memory only; lost when the store is dropped.
pub(crate) struct MemoryEngine {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    mask: usize,
    /// Held by a maintenance pass: two passes at once would each reset and
    /// rebuild the shards' expiry bounds under the other.
    passing: Mutex<()>,
}

/// One shard's part of a maintenance pass, made in steps of
/// [`SWEEP_STEP_BUCKETS`] with the lock released in between.
///
/// Between steps requests may add, change and remove entries. Each visited
/// entry is judged on its own expiry, so nothing live is removed. The
/// shard's bound must stay a lower bound of what it holds: the sweep sets
/// it to `Timestamp::MAX` when it starts, writes lower it as always, and
/// the last step lowers it to the earliest expiry kept. An entry added
/// behind the sweep is covered by its write; one whose expiry moved is
/// covered by its write or read afresh when visited. Only a rehash between
/// steps can move an unvisited entry behind the sweep; then nothing is
/// known of what was passed over, the bound falls to zero, and the next
/// pass visits the shard again.
///
/// The sweep also gives memory back, in two ways decided when it starts,
/// so that a pass that expires a burst leaves the next one to judge what
/// remains (a store whose records all expire at once and then fill again,
/// as in steady churn, keeps its memory). Records it visits in chunks the
/// slab marked for evacuation move elsewhere (see [`RecordSlab`]), and a
/// table that was more than eight times larger than its entries need when
/// the sweep started and still is at the end is rebuilt at twice their
/// number.
struct ShardSweep {
    now: Timestamp,
    /// The next bucket to visit.
    next_bucket: usize,
    /// The shard's layout when the sweep started.
    layout: u64,
    kept_earliest: Timestamp,
    started: bool,
    /// The table was oversized when the sweep started.
    shrink_table: bool,
    /// Every bucket is visited; what remains is to rebuild the table
    /// smaller, into one made before this last step.
    finishing: bool,
    /// The table is to be rebuilt in the finishing step.
    rebuild_table: bool,
    /// The finishing step found the table made for it too small once.
    table_fell_short: bool,
    /// The slab's [`chunk_slots`](RecordSlab::chunk_slots) as the last
    /// step left them (or as a look before the first one found them).
    chunk_slots: Option<usize>,
    /// A move found no place ready: the next step needs a spare chunk.
    needs_chunk: bool,
    /// The table's entries when the last step ended.
    table_len: usize,
    /// Records moved out of evacuating chunks.
    moved: u64,
    /// Bytes of chunks and table given back.
    released: u64,
}

/// A sweep step ends early once it has moved this many records: a move
/// copies a record between places far from the cache (~0.4 µs each on the
/// development VM), and 64 in one step held the lock 22–30 µs (1 M
/// records, one in 25 left after a burst); 16 hold it ~6 µs.
const MOVES_PER_STEP: u64 = 16;

/// A sweep step ends early once it has removed this many records (or up
/// to a bucket group's 64 more). Each removal reads a record far from the
/// cache (~150 ns); a step that expired all of a burst's ~3,600 records in
/// its buckets held the lock 0.2–0.4 ms, and requests waiting on it set
/// lookups' p99.9 near 200 µs at 1 M records. 32 hold it ~5 µs.
const REMOVALS_PER_STEP: usize = 32;

/// Memory a sweep step works with, made or freed outside the shard's
/// lock. Heap memory is neither allocated nor freed under it when it can
/// be helped: `malloc` right after a burst's records were freed can stall
/// for milliseconds (glibc sorts up to 10,000 freed blocks in one call),
/// and freeing hundreds of responses, emptied chunks or a whole table is
/// most of a step's cost.
#[derive(Default)]
struct Unlinked {
    /// Removed records.
    records: Vec<Record>,
    /// Freed chunks' places.
    chunks: Vec<Places>,
    /// The replaced table.
    old_table: Option<HashTable<Slot>>,
    /// Made ready: a table for the rebuild, a chunk for moves, scratch
    /// for the evacuation plan.
    new_table: Option<HashTable<Slot>>,
    spare_chunk: Option<Places>,
    plan: Vec<(u32, u32)>,
}

impl Unlinked {
    /// Frees what the last step unlinked; keeps the buffers that are
    /// reused step after step.
    fn clear(&mut self) {
        self.records.clear();
        self.chunks.clear();
        self.old_table = None;
        self.new_table = None;
    }
}

/// A table with fewer entries than this is never shrunk: its memory is
/// small and a shrink would soon be undone by growth.
const SHRINK_FLOOR: usize = 1024;

/// An empty table with room for `capacity` entries, its memory written
/// once: a fresh table's buckets are untouched pages, and the first write
/// to each under the shard's lock cost the rebuild ~3 µs a page (a rebuilt
/// shard of 6,000 entries at 10 M records held the lock ~0.5 ms).
fn touched_table(capacity: usize) -> HashTable<Slot> {
    let mut table = HashTable::with_capacity(capacity);
    let filler = Slot {
        hash: 0,
        at: SlabIndex::default(),
        expires_at: Timestamp::ZERO,
    };
    // Spread over every bucket, up to the capacity, which never grows it.
    for i in 0..table.capacity() as u32 {
        let hash = i.wrapping_mul(0x9E37_79B9);
        table.insert_unique(bucket_hash(hash), Slot { hash, ..filler }, |s| {
            bucket_hash(s.hash)
        });
    }
    table.clear();
    table
}

/// True when `table` has more than eight times the buckets its entries
/// need (hashbrown fills a table to 7/8 of its buckets).
fn is_oversized(table: &HashTable<Slot>) -> bool {
    table.num_buckets() * 7 > 64 * table.len().max(SHRINK_FLOOR)
}

impl ShardSweep {
    fn new(now: Timestamp) -> Self {
        ShardSweep {
            now,
            next_bucket: 0,
            layout: 0,
            kept_earliest: Timestamp::MAX,
            started: false,
            shrink_table: false,
            finishing: false,
            rebuild_table: false,
            table_fell_short: false,
            chunk_slots: None,
            needs_chunk: false,
            table_len: 0,
            moved: 0,
            released: 0,
        }
    }

    /// One step on `shard`: makes the memory the step may need, takes the
    /// lock, steps, and hands the lock to a waiting request, if any, rather
    /// than take it straight back. True when the shard is done. What the
    /// step unlinked is in `unlinked`, for the caller to count and clear
    /// once the lock is released.
    fn step_on(&mut self, shard: &Mutex<Shard>, unlinked: &mut Unlinked) -> bool {
        let chunk_slots = match self.chunk_slots {
            Some(slots) => slots,
            None => {
                // A look first: most passes skip most shards, and need no
                // memory made for them.
                let shard = shard.lock();
                if !self.worth_starting(&shard) {
                    return true;
                }
                self.table_len = shard.table.len();
                *self.chunk_slots.insert(shard.records.chunk_slots())
            }
        };
        // Room for the records a step may remove.
        unlinked.records.reserve(REMOVALS_PER_STEP + 64);
        unlinked.chunks.reserve(chunk_slots);
        if !self.started {
            unlinked.plan.clear();
            unlinked.plan.reserve(chunk_slots);
        }
        if self.finishing && self.rebuild_table {
            // Twice the entries: room too for what requests add before the
            // lock is taken.
            unlinked.new_table = Some(touched_table(2 * self.table_len));
        }
        if self.needs_chunk && unlinked.spare_chunk.is_none() {
            unlinked.spare_chunk = Some(RecordSlab::spare_chunk());
        }
        let mut guard = shard.lock();
        let done = self.step(&mut guard, unlinked);
        if done {
            drop(guard);
        } else {
            MutexGuard::unlock_fair(guard);
        }
        done
    }

    /// Visits the next buckets, moving the records due and whatever else it
    /// frees into `unlinked` (to be dropped once the lock is released);
    /// true when the shard is done.
    fn step(&mut self, shard: &mut Shard, unlinked: &mut Unlinked) -> bool {
        let done = self.step_locked(shard, unlinked);
        self.released += shard.records.take_retired(&mut unlinked.chunks) as u64;
        self.chunk_slots = Some(shard.records.chunk_slots());
        self.table_len = shard.table.len();
        done
    }

    fn step_locked(&mut self, shard: &mut Shard, unlinked: &mut Unlinked) -> bool {
        if !self.started && !self.finishing && !self.worth_starting(shard) {
            return true;
        }
        let Shard {
            table,
            records,
            in_flight,
            earliest_expiry,
            layout,
        } = shard;
        if self.finishing {
            return self.finish(table, layout, unlinked);
        }
        if !self.started {
            self.shrink_table = is_oversized(table);
            self.started = true;
            self.layout = *layout;
            *earliest_expiry = Timestamp::MAX;
            records.plan_evacuation(&mut unlinked.plan);
        }
        let mut end = (self.next_bucket + SWEEP_STEP_BUCKETS).min(table.num_buckets());
        let removed = &mut unlinked.records;
        let before = removed.len();
        let moved_before = self.moved;
        self.needs_chunk = false;
        let mut group = self.next_bucket;
        while group < end {
            // Which of the next 64 buckets are full, found without a branch
            // per bucket: a branch on each bucket's fullness, which is
            // random, mispredicted often enough to double a pass's time.
            let width = (end - group).min(64);
            let mut full = 0u64;
            for k in 0..width {
                full |= u64::from(table.get_bucket(group + k).is_some()) << k;
            }
            while full != 0 {
                let bucket = group + full.trailing_zeros() as usize;
                full &= full - 1;
                // (Record::is_expired, on the slot's copy of the expiry.)
                let Ok(mut entry) = table.get_bucket_entry(bucket) else {
                    continue;
                };
                let expires_at = entry.get().expires_at;
                if self.now < expires_at {
                    self.kept_earliest = self.kept_earliest.min(expires_at);
                    if records.is_evacuating() {
                        let slot = entry.get_mut();
                        match records.relocate(slot.at, &mut unlinked.spare_chunk) {
                            Relocated::Stays => {}
                            Relocated::Moved(to) => {
                                slot.at = to;
                                self.moved += 1;
                            }
                            // Visited again next step, with a spare chunk.
                            Relocated::NeedsChunk => {
                                self.needs_chunk = true;
                                end = bucket;
                                break;
                            }
                        }
                    }
                } else {
                    let (slot, _) = entry.remove();
                    removed.extend(records.remove(slot.at));
                }
            }
            if self.needs_chunk {
                break;
            }
            group += width;
            if self.moved - moved_before >= MOVES_PER_STEP
                || removed.len() - before >= REMOVALS_PER_STEP
            {
                end = group;
            }
        }
        *in_flight -= removed[before..]
            .iter()
            .filter(|r| r.is_in_flight())
            .count() as u64;
        self.next_bucket = end;
        if end < table.num_buckets() {
            return false;
        }
        if *layout != self.layout {
            self.kept_earliest = Timestamp::ZERO;
        }
        *earliest_expiry = (*earliest_expiry).min(self.kept_earliest);
        self.rebuild_table = self.shrink_table && is_oversized(table);
        if self.rebuild_table {
            // Once more, with the memory made outside the lock.
            self.finishing = true;
            return false;
        }
        true
    }

    /// True when the shard has records due or memory to give back.
    fn worth_starting(&self, shard: &Shard) -> bool {
        let records = &shard.records;
        self.now >= shard.earliest_expiry
            || records.is_evacuating()
            || records.is_sparse()
            || records.has_retired()
            || is_oversized(&shard.table)
    }

    /// The last step of a sweep that gives memory back: the table rebuilt
    /// at twice its entries, into the table made for it. True when done;
    /// false to be called again, once, with a larger table made, when
    /// requests added more entries than the one made could hold.
    fn finish(
        &mut self,
        table: &mut HashTable<Slot>,
        layout: &mut u64,
        unlinked: &mut Unlinked,
    ) -> bool {
        if self.rebuild_table && is_oversized(table) {
            let made = unlinked.new_table.take();
            let mut smaller = match made {
                Some(t) if t.capacity() >= table.len() => t,
                _ if !self.table_fell_short => {
                    self.table_fell_short = true;
                    return false;
                }
                _ => HashTable::with_capacity(2 * table.len()),
            };
            *layout += 1;
            for slot in table.drain() {
                smaller.insert_unique(bucket_hash(slot.hash), slot, |s| bucket_hash(s.hash));
            }
            let old = std::mem::replace(table, smaller);
            let bucket_bytes = std::mem::size_of::<Slot>() + 1;
            self.released += ((old.num_buckets() - table.num_buckets()) * bucket_bytes) as u64;
            unlinked.old_table = Some(old);
        }
        true
    }
}

impl MemoryEngine {
    pub(crate) fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        MemoryEngine {
            shards: (0..n)
                .map(|_| {
                    CachePadded::new(Mutex::new(Shard {
                        table: HashTable::new(),
                        records: RecordSlab::default(),
                        in_flight: 0,
                        earliest_expiry: Timestamp::MAX,
                        layout: 0,
                    }))
                })
                .collect(),
            mask: n - 1,
            passing: Mutex::new(()),
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
        guard.note_rehash_ahead();
        let Shard {
            table,
            records,
            in_flight,
            earliest_expiry,
            ..
        } = &mut *guard;
        let framed = id.key.framed();
        let hash = slot_hash(id.hash.table);
        let entry = table.entry(
            bucket_hash(hash),
            |s| s.hash == hash && records.key(s.at) == framed,
            |s| bucket_hash(s.hash),
        );
        let expires_at = match entry {
            Entry::Occupied(mut occupied) => {
                let at = occupied.get().at;
                let found = records.get_mut(at);
                let was_in_flight = found.is_in_flight();
                match decide(Some(found)) {
                    Change::Keep => return Ok(Wait::Ready),
                    Change::Replayed => {
                        found.replays = found.replays.saturating_add(1);
                        return Ok(Wait::Ready);
                    }
                    Change::Acquire(acquired) => {
                        acquired.apply(found);
                        *in_flight += u64::from(!was_in_flight);
                    }
                    Change::Complete(done) => {
                        done.apply(found);
                        *in_flight -= u64::from(was_in_flight);
                    }
                    Change::Put(record) => {
                        let now_in_flight = record.is_in_flight();
                        *found = *record;
                        *in_flight =
                            *in_flight + u64::from(now_in_flight) - u64::from(was_in_flight);
                    }
                    Change::Remove => {
                        occupied.remove();
                        records.remove(at);
                        *in_flight -= u64::from(was_in_flight);
                        return Ok(Wait::Ready);
                    }
                }
                occupied.get_mut().expires_at = found.expires_at;
                found.expires_at
            }
            Entry::Vacant(vacant) => {
                // Only an acquisition (or a put) adds a record; the store
                // completes or removes only records it holds.
                let record = match decide(None) {
                    Change::Acquire(acquired) => acquired.into_record(id.key),
                    Change::Put(record) => *record,
                    _ => return Ok(Wait::Ready),
                };
                *in_flight += u64::from(record.is_in_flight());
                let expires_at = record.expires_at;
                let at = records.insert(record);
                vacant.insert(Slot {
                    hash,
                    at,
                    expires_at,
                });
                expires_at
            }
        };
        *earliest_expiry = (*earliest_expiry).min(expires_at);
        Ok(Wait::Ready)
    }

    fn get(&self, id: Identity<'_>) -> Result<(Option<Record>, Wait)> {
        let shard = self.shard(&id).lock();
        let framed = id.key.framed();
        let hash = slot_hash(id.hash.table);
        let record = shard
            .table
            .find(bucket_hash(hash), |s| {
                s.hash == hash && shard.records.key(s.at) == framed
            })
            .map(|s| Record::clone(shard.records.get(s.at)));
        Ok((record, Wait::Ready))
    }

    fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport> {
        let _pass = self.passing.lock();
        let mut report = MaintenanceReport::default();
        // What a step unlinks is dropped once the lock is released.
        let mut unlinked = Unlinked::default();
        for shard in self.shards.iter() {
            let mut sweep = ShardSweep::new(now);
            loop {
                let done = sweep.step_on(shard, &mut unlinked);
                report.expired += unlinked.records.len() as u64;
                unlinked.clear();
                if done {
                    report.records_moved += sweep.moved;
                    report.memory_released += sweep.released;
                    break;
                }
            }
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

    use super::Engine as _;
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

    /// Every record in one shard, so that slab places are reused between
    /// keys.
    fn one_shard_store(clock: &ManualClock) -> Store {
        Store::in_memory(
            Config::builder()
                .clock(clock.clone())
                .shards(1)
                .maintenance_interval(None)
                .build(),
        )
    }

    /// A fresh key of scope "t" and its reservation.
    fn acquired(store: &Store, key: &str) -> (crate::IdempotencyKey, crate::Reservation) {
        let key = store.key("t", key).unwrap();
        match store
            .reserve(&key, &Fingerprint::of_bytes(b"body"))
            .unwrap()
        {
            Outcome::Acquired(held) => (key, held),
            other => panic!("fresh key not acquired: {other:?}"),
        }
    }

    /// Maintenance reads each slot's copy of the expiry: every change that
    /// moves a record's expiry (extend, complete) must move the copy too.
    #[test]
    fn maintenance_follows_expiry_changes_made_after_insert() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = store(&clock);
        let (key, mut held) = acquired(&store, "extended");
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

    /// A maintenance pass skips a shard when nothing in it can be due yet,
    /// so every write must lower the shard's bound to its record's expiry,
    /// including writes that move an expiry earlier (a completion with a
    /// short TTL, a shorter extension), and a pass must leave the bound at
    /// the earliest expiry it kept.
    #[test]
    fn maintenance_skips_only_shards_with_nothing_due() {
        let mut direct = Direct::new();
        assert_eq!(direct.bound(), Timestamp::MAX);
        direct.put(0, 1_000);
        assert_eq!(direct.bound(), at(1_000));
        // Nothing due: skipped, and the record stays.
        assert_eq!(direct.engine.maintain(at(500)).unwrap().expired, 0);
        assert_eq!(direct.bound(), at(1_000));
        // Completed with a TTL that ends before the reservation would have.
        direct.apply(0, &mut |_| {
            super::Change::Complete(crate::decision::completion(
                bytes::Bytes::from_static(b"done"),
                at(100),
                Duration::from_secs(100),
            ))
        });
        assert_eq!(direct.bound(), at(200));
        direct.put(1, 5_000);
        assert_eq!(direct.bound(), at(200));
        assert_eq!(direct.engine.maintain(at(199)).unwrap().expired, 0);
        assert_eq!(direct.engine.maintain(at(300)).unwrap().expired, 1);
        assert_eq!(
            direct.bound(),
            at(5_000),
            "the pass keeps the earliest expiry left"
        );
        assert_eq!(direct.engine.maintain(at(4_999)).unwrap().expired, 0);
        assert_eq!(direct.engine.maintain(at(5_000)).unwrap().expired, 1);
        assert_eq!(direct.bound(), Timestamp::MAX);
        let stats = direct.engine.stats();
        assert_eq!((stats.live_records, stats.in_flight), (0, 0));
    }

    /// An extension shorter than the lease it replaces moves the expiry
    /// earlier; maintenance must still find the record when it is due.
    #[test]
    fn maintenance_finds_a_record_whose_extension_shortened_it() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = store(&clock);
        let (_, mut held) = acquired(&store, "shortened");
        // Reserved until 60 s, expiring at 3660 s; extended by 1 s at 0 s:
        // lease until 1 s, expiring at 3601 s.
        held.extend(SECOND).unwrap();
        clock.set(Timestamp::from_millis(3_600_999));
        assert_eq!(store.run_maintenance().unwrap().expired, 0);
        clock.set(Timestamp::from_millis(3_601_000));
        assert_eq!(store.run_maintenance().unwrap().expired, 1);
        assert_eq!(store.stats().live_records, 0);
        drop(held);
    }

    /// Records live in slab places that are reused once freed: across chunk
    /// growth, releases and maintenance, every key reads back its own record.
    #[test]
    fn slab_places_are_reused_without_mixing_records() {
        let clock = ManualClock::new(Timestamp::from_millis(0));
        let store = one_shard_store(&clock);
        let fp = Fingerprint::of_bytes(b"body");
        let short = ReserveOptions::default().lease(SECOND).ttl(SECOND);
        let key = |i: usize| store.key("t", format!("k{i}")).unwrap();
        // 600 records span chunks of 16, 32, 64, 128, 256 and 256 places.
        for i in 0..600 {
            let options = if i % 3 == 0 {
                short
            } else {
                ReserveOptions::default()
            };
            let Outcome::Acquired(r) = store.reserve_with(&key(i), &fp, options).unwrap() else {
                panic!("fresh key {i} not acquired")
            };
            if i % 2 == 0 {
                r.release().unwrap();
            } else {
                r.complete(format!("r{i}").into_bytes()).unwrap();
            }
        }
        clock.set(Timestamp::from_millis(10_000));
        let expired = store.run_maintenance().unwrap().expired;
        assert_eq!(expired, 100, "odd multiples of 3 had a 1 s TTL");
        for i in 600..1200 {
            let Outcome::Acquired(r) = store.reserve(&key(i), &fp).unwrap() else {
                panic!("fresh key {i} not acquired")
            };
            r.complete(format!("r{i}").into_bytes()).unwrap();
        }
        for i in 0..1200 {
            let record = store.lookup(&key(i)).unwrap();
            let kept = i >= 600 || (i % 2 == 1 && i % 3 != 0);
            match record {
                Some(r) if kept => {
                    assert_eq!(r.key(), &key(i));
                    assert_eq!(&r.response().unwrap()[..], format!("r{i}").as_bytes());
                }
                None if !kept => {}
                other => panic!("key {i}: {other:?}"),
            }
        }
        assert_eq!(store.stats().live_records, 600 + 200);
    }

    /// Keys are inline up to 62 packed bytes and shared beyond: keys on
    /// both sides of the boundary, reusing each other's freed slab places,
    /// each find their own record, and the store holds exactly one more
    /// reference to a shared key (its record's) and none to an inline one.
    #[test]
    fn inline_and_shared_identities_find_their_own_records() {
        let store = one_shard_store(&ManualClock::new(Timestamp::from_millis(0)));
        let fp = Fingerprint::of_bytes(b"body");
        // Packed length: 4 + scope + key; scope "s" makes it 5 + key length.
        let keys: Vec<_> = [1, 56, 57, 58, 59, 60, 200, 255]
            .iter()
            .flat_map(|&len| ["a", "b"].map(|first| format!("{first}{}", "x".repeat(len - 1))))
            .map(|k| store.key("s", k).unwrap())
            // The same bytes split differently between scope and key.
            .chain([store.key("sx", "x").unwrap(), store.key("s", "xx").unwrap()])
            .collect();
        for round in 0..3 {
            for (i, key) in keys.iter().enumerate() {
                let Outcome::Acquired(r) = store.reserve(key, &fp).unwrap() else {
                    panic!("round {round}: {key:?} not acquired")
                };
                if round < 2 {
                    // Frees the place for the next key's record.
                    r.release().unwrap();
                } else {
                    r.complete(format!("r{i}").into_bytes()).unwrap();
                }
            }
        }
        for (i, key) in keys.iter().enumerate() {
            let Outcome::Replay(replay) = store.reserve(key, &fp).unwrap() else {
                panic!("{key:?} not replayed")
            };
            assert_eq!(&replay.response[..], format!("r{i}").as_bytes());
            let inline = 4 + key.scope().len() + key.key().len() <= 62;
            assert_eq!(key.is_inline(), inline, "{key:?}");
            assert_eq!(key.holders(), if inline { 1 } else { 2 }, "{key:?}");
            let record = store.lookup(key).unwrap().expect("completed record");
            assert_eq!(record.key(), key);
        }
        assert_eq!(store.stats().live_records, keys.len() as u64);
    }

    /// A one-shard engine driven directly: records put with a chosen
    /// expiry (in seconds from 0), changed and removed.
    struct Direct {
        engine: super::MemoryEngine,
        hasher: crate::identity::IdentityHasher,
        keys: Vec<crate::IdempotencyKey>,
        /// Table hashes chosen by the test instead of the hasher's.
        forced: std::collections::HashMap<usize, u64>,
        token: u64,
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_millis(secs * 1_000)
    }

    impl Direct {
        fn new() -> Self {
            Direct {
                engine: super::MemoryEngine::new(1),
                hasher: crate::identity::IdentityHasher::new(),
                keys: Vec::new(),
                forced: Default::default(),
                token: 0,
            }
        }

        fn hash(&self, i: usize) -> crate::identity::IdentityHash {
            let mut hash = self.hasher.hash(&self.keys[i]);
            if let Some(&table) = self.forced.get(&i) {
                hash.table = table;
            }
            hash
        }

        fn key(&mut self, i: usize) -> crate::IdempotencyKey {
            while self.keys.len() <= i {
                let k = crate::IdempotencyKey::new("t", format!("k{}", self.keys.len())).unwrap();
                self.keys.push(k);
            }
            self.keys[i].clone()
        }

        /// Applies the change `decide` returns to key `i`'s record.
        fn apply(
            &mut self,
            i: usize,
            decide: &mut dyn FnMut(Option<&crate::record::Record>) -> super::Change,
        ) {
            let key = self.key(i);
            let id = super::Identity {
                key: &key,
                hash: self.hash(i),
            };
            let wait = self.engine.update(id, decide).unwrap();
            assert_eq!(wait, super::Wait::Ready);
        }

        /// Acquires key `i` (a takeover if it is there) at 0 s so that its
        /// record expires at `expires` seconds.
        fn put(&mut self, i: usize, expires: u64) {
            self.token += 1;
            let token = self.token;
            let lease = Duration::from_secs(expires / 2);
            let ttl = Duration::from_secs(expires - expires / 2);
            let fp = Fingerprint::of_bytes(b"body");
            self.apply(i, &mut |found| {
                super::Change::Acquire(crate::decision::acquisition(
                    found,
                    true,
                    &fp,
                    at(0),
                    lease,
                    ttl,
                    token,
                ))
            });
        }

        fn remove(&mut self, i: usize) {
            self.apply(i, &mut |_| super::Change::Remove);
        }

        /// What `read` makes of key `i`'s shard, slot and bucket, if the
        /// key is there.
        fn with_slot<T>(
            &mut self,
            i: usize,
            read: impl FnOnce(&super::Shard, &super::Slot, usize) -> T,
        ) -> Option<T> {
            let key = self.key(i);
            let hash = super::slot_hash(self.hash(i).table);
            let shard = self.engine.shards[0].lock();
            let bucket = shard
                .table
                .find_bucket_index(super::bucket_hash(hash), |s| {
                    s.hash == hash && shard.records.key(s.at) == key.framed()
                })?;
            let slot = shard.table.get_bucket(bucket)?;
            Some(read(&shard, slot, bucket))
        }

        /// Key `i`'s expiry and bucket, if it is there.
        fn find(&mut self, i: usize) -> Option<(Timestamp, usize)> {
            self.with_slot(i, |_, slot, bucket| (slot.expires_at, bucket))
        }

        /// The shard's bound is at or below every expiry it holds, and
        /// every slot's expiry is its record's.
        fn assert_bound_holds(&self) {
            let shard = self.engine.shards[0].lock();
            for slot in shard.table.iter() {
                assert!(
                    shard.earliest_expiry <= slot.expires_at,
                    "bound {:?} above an expiry {:?}",
                    shard.earliest_expiry,
                    slot.expires_at
                );
                assert_eq!(slot.expires_at, shard.records.get(slot.at).expires_at);
            }
        }

        fn bound(&self) -> Timestamp {
            self.engine.shards[0].lock().earliest_expiry
        }

        /// Every slot points at a record of its own whose expiry it
        /// copies, and the slab's tallies and lists are right.
        fn assert_consistent(&self) {
            let shard = self.engine.shards[0].lock();
            super::super::slab::tests::check_tallies(&shard.records);
            let mut places = std::collections::HashSet::new();
            for slot in shard.table.iter() {
                assert!(places.insert(slot.at), "two slots share {:?}", slot.at);
                assert_eq!(slot.expires_at, shard.records.get(slot.at).expires_at);
            }
            assert_eq!(places.len(), shard.records.live());
        }

        /// Key `i`'s fencing token, if it is there.
        fn token(&mut self, i: usize) -> Option<u64> {
            self.with_slot(i, |shard, slot, _| shard.records.get(slot.at).token)
        }

        /// Slab places and table buckets.
        fn held(&self) -> (usize, usize) {
            let shard = self.engine.shards[0].lock();
            (shard.records.places(), shard.table.num_buckets())
        }

        fn layout(&self) -> u64 {
            self.engine.shards[0].lock().layout
        }

        /// Makes one step of `sweep`; true when the shard is done.
        fn step(&self, sweep: &mut super::ShardSweep) -> bool {
            let mut unlinked = super::Unlinked::default();
            sweep.step_on(&self.engine.shards[0], &mut unlinked)
        }
    }

    /// Expiry of key `i` in the sweep tests: 1–200 s, spread over the keys.
    fn spread(i: usize) -> u64 {
        1 + (i as u64 * 7_919) % 200
    }

    /// A shard of many steps is swept whole: exactly the records due go,
    /// and the bound ends at the earliest expiry kept.
    #[test]
    fn stepped_sweep_removes_exactly_what_is_due() {
        let mut direct = Direct::new();
        let n = 20_000;
        for i in 0..n {
            direct.put(i, spread(i));
        }
        let buckets = direct.engine.shards[0].lock().table.num_buckets();
        assert!(buckets > 4 * super::SWEEP_STEP_BUCKETS, "{buckets} buckets");
        let due = (0..n).filter(|&i| spread(i) <= 50).count() as u64;
        assert_eq!(direct.engine.maintain(at(50)).unwrap().expired, due);
        for i in 0..n {
            assert_eq!(direct.find(i).is_some(), spread(i) > 50, "key {i}");
        }
        assert_eq!(direct.bound(), at(51));
        assert_eq!(direct.engine.stats().live_records, n as u64 - due);
        assert_eq!(
            direct.engine.maintain(at(200)).unwrap().expired,
            n as u64 - due
        );
        assert_eq!(direct.bound(), Timestamp::MAX);
        let stats = direct.engine.stats();
        assert_eq!((stats.live_records, stats.in_flight), (0, 0));
    }

    /// Writes between two steps of a sweep, behind it and ahead of it:
    /// nothing live is removed, everything due that no write touched is,
    /// and the bound stays at or below every expiry left.
    #[test]
    fn writes_between_steps_keep_the_bound() {
        let mut direct = Direct::new();
        let n = 20_000;
        for i in 0..n {
            direct.put(i, 100 + spread(i));
        }
        let now = at(150);
        let mut sweep = super::ShardSweep::new(now);
        let layout = direct.layout();
        assert!(!direct.step(&mut sweep), "one step swept the whole shard");
        let behind =
            |direct: &mut Direct, i| direct.find(i).is_some_and(|(_, b)| b < sweep.next_bucket);
        let (mut touched_behind, mut touched_ahead) = (0, 0);
        let mut touched = std::collections::HashSet::new();
        for i in 0..n {
            // Every seventh key moved earlier or later, every eleventh
            // removed; new keys added due and not due.
            let was_behind = behind(&mut direct, i);
            if i % 7 == 0 {
                direct.put(i, if i % 2 == 0 { 20 } else { 400 });
            } else if i % 11 == 0 {
                direct.remove(i);
            } else {
                continue;
            }
            touched.insert(i);
            if was_behind {
                touched_behind += 1;
            } else {
                touched_ahead += 1;
            }
        }
        for i in n..n + 100 {
            direct.put(i, if i % 2 == 0 { 10 } else { 500 });
            touched.insert(i);
        }
        assert!(touched_behind > 0 && touched_ahead > 0);
        assert_eq!(direct.layout(), layout, "the writes rehashed the table");
        while !direct.step(&mut sweep) {}
        direct.assert_bound_holds();
        assert!(direct.bound() <= at(10), "{:?}", direct.bound());
        for i in 0..n {
            let found = direct.find(i);
            if touched.contains(&i) {
                if i % 7 == 0 && i % 2 == 1 {
                    assert!(found.is_some(), "key {i} moved later was removed");
                }
                continue;
            }
            assert_eq!(found.is_some(), 100 + spread(i) > 150, "key {i}");
        }
        for i in (n..n + 100).filter(|i| i % 2 == 1) {
            assert!(direct.find(i).is_some(), "new key {i} removed");
        }
    }

    /// A rehash between steps can move entries not yet visited behind the
    /// sweep; the bound then falls to zero, and the next pass removes
    /// whatever was passed over.
    #[test]
    fn a_rehash_between_steps_leaves_the_shard_due() {
        let mut direct = Direct::new();
        // Just under a doubling, so that the writes below grow the table.
        let n = 14_000;
        for i in 0..n {
            direct.put(i, spread(i));
        }
        let now = at(100);
        let mut sweep = super::ShardSweep::new(now);
        let layout = direct.layout();
        assert!(!direct.step(&mut sweep));
        let buckets = |direct: &Direct| direct.engine.shards[0].lock().table.num_buckets();
        let before = buckets(&direct);
        let mut added = n;
        while buckets(&direct) == before {
            direct.put(added, 1_000);
            added += 1;
        }
        assert_ne!(direct.layout(), layout, "a table growth went unnoticed");
        while !direct.step(&mut sweep) {}
        direct.assert_bound_holds();
        assert_eq!(
            direct.bound(),
            Timestamp::ZERO,
            "the shard is due again at once"
        );
        direct.engine.maintain(now).unwrap();
        for i in 0..added {
            let due = i < n && spread(i) <= 100;
            assert_eq!(direct.find(i).is_none(), due, "key {i}");
        }
        assert_eq!(direct.bound(), at(101));
    }

    /// The sweep relies on this: an entry changes bucket only after the
    /// shard's layout counter moved. The table is rehashed into larger
    /// tables as it grows, then in place once removals have left it full
    /// of tombstones; every entry's bucket is compared after each write.
    #[test]
    fn the_layout_counter_moves_before_any_entry_does() {
        let mut direct = Direct::new();
        let mut buckets_of: std::collections::HashMap<u32, usize> = Default::default();
        let (grown, in_place) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let mut write = |direct: &mut Direct, op: &dyn Fn(&mut Direct)| {
            let (layout, num_buckets) = {
                let shard = direct.engine.shards[0].lock();
                (shard.layout, shard.table.num_buckets())
            };
            op(direct);
            let shard = direct.engine.shards[0].lock();
            let moved_layout = shard.layout != layout;
            let mut now_at = std::collections::HashMap::new();
            for bucket in 0..shard.table.num_buckets() {
                if let Some(slot) = shard.table.get_bucket(bucket) {
                    now_at.insert(slot.hash, bucket);
                    if let Some(&was) = buckets_of.get(&slot.hash) {
                        assert!(was == bucket || moved_layout, "an entry moved unannounced");
                    }
                }
            }
            if moved_layout {
                if shard.table.num_buckets() == num_buckets {
                    in_place.set(in_place.get() + 1);
                } else {
                    grown.set(grown.get() + 1);
                }
            }
            buckets_of = now_at;
            moved_layout
        };
        // Spread keys grow the table to 2,048 buckets, then leave.
        let spread: Vec<usize> = (0..1_000).collect();
        for &i in &spread {
            write(&mut direct, &|d| d.put(i, 100));
        }
        for &i in &spread {
            write(&mut direct, &|d| d.remove(i));
        }
        let mut next = spread.len();
        // Runs of keys whose hashes start at consecutive buckets fill a
        // contiguous stretch of the table; removed, they leave tombstones,
        // which use up the room for growth until the table is rehashed in
        // place.
        for round in 0..20u64 {
            let run: Vec<usize> = (next..next + 300).collect();
            next += 300;
            for (j, &i) in run.iter().enumerate() {
                let bucket = round * 300 + j as u64;
                // The slot's 32 bits: the control tag from the top 7 of
                // them, the bucket from the low ones (`bucket_hash`).
                direct.forced.insert(i, ((i as u64 % 128) << 25) | bucket);
                write(&mut direct, &|d| d.put(i, 100));
            }
            for &i in &run {
                write(&mut direct, &|d| d.remove(i));
            }
            if in_place.get() > 0 {
                break;
            }
        }
        let (grown, in_place) = (grown.get(), in_place.get());
        assert!(
            grown > 0 && in_place > 0,
            "grown {grown}, in place {in_place}"
        );
    }

    /// Puts `n` keys expiring at 10 s but every 50th, which lives to
    /// 1,000 s; returns the survivors' tokens.
    fn burst(direct: &mut Direct, n: usize) -> std::collections::HashMap<usize, u64> {
        let mut survivors = std::collections::HashMap::new();
        for i in 0..n {
            direct.put(i, if i % 50 == 0 { 1_000 } else { 10 });
            if i % 50 == 0 {
                survivors.insert(i, direct.token);
            }
        }
        survivors
    }

    /// A burst that expires leaves its survivors scattered over the slab;
    /// the pass that expires it keeps the memory (a store refilling at
    /// once reuses it), and the next pass moves the survivors together,
    /// frees the emptied chunks and shrinks the table.
    #[test]
    fn passes_after_a_burst_expires_give_its_memory_back() {
        let mut direct = Direct::new();
        let n = 40_000;
        let survivors = burst(&mut direct, n);
        let (places, buckets) = direct.held();
        assert!(
            places >= n && buckets >= n,
            "{places} places, {buckets} buckets"
        );

        let expired = direct.engine.maintain(at(10)).unwrap().expired;
        assert_eq!(expired, (n - survivors.len()) as u64);
        assert_eq!(
            direct.held(),
            (places, buckets),
            "the expiring pass kept the memory"
        );

        // Nothing is due at 11 s; the shard is swept for its memory.
        let (places_before, buckets_before) = (places, buckets);
        let report = direct.engine.maintain(at(11)).unwrap();
        let (places, buckets) = direct.held();
        let live = survivors.len();
        assert_eq!(report.expired, 0);
        assert!(report.records_moved > 0 && report.records_moved <= live as u64);
        let record_size = std::mem::size_of::<Option<crate::record::Record>>();
        let slot_size = std::mem::size_of::<super::Slot>() + 1;
        assert_eq!(
            report.memory_released as usize,
            (places_before - places) * record_size + (buckets_before - buckets) * slot_size
        );
        assert!(
            places <= live + live / 4 + 2 * 256,
            "{places} slab places kept for {live} records"
        );
        assert!(
            buckets < 4 * live,
            "{buckets} table buckets for {live} entries"
        );
        for (&i, &token) in &survivors {
            assert_eq!(direct.token(i), Some(token), "survivor {i}");
        }
        direct.assert_bound_holds();
        assert_eq!(direct.bound(), at(1_000));
        assert_eq!(direct.engine.stats().live_records, live as u64);

        // Settled: a further pass with nothing due does not sweep again.
        let sweep_layout = direct.layout();
        let mut sweep = super::ShardSweep::new(at(12));
        assert!(direct.step(&mut sweep) && !sweep.started);
        assert_eq!(direct.layout(), sweep_layout);
    }

    /// Writes between the steps of a sweep that evacuates: removed and
    /// replaced survivors, and new records. Every slot points at its own
    /// record after every step, and every record keeps its token.
    #[test]
    fn writes_between_evacuating_steps_lose_nothing() {
        let n = 40_000;
        let (mut direct, mut live, mut sweep, _) = burst_expired(n);
        let (places, _) = direct.held();

        assert!(!direct.step(&mut sweep), "one step swept the whole shard");
        direct.assert_consistent();
        churn_survivors(&mut direct, &mut live, n);
        direct.assert_consistent();
        while !direct.step(&mut sweep) {
            direct.assert_consistent();
        }
        direct.assert_consistent();
        for (&i, &token) in &live {
            assert_eq!(direct.token(i), Some(token), "key {i}");
        }
        assert_eq!(direct.engine.stats().live_records, live.len() as u64);
        direct.assert_bound_holds();
        let shard = direct.engine.shards[0].lock();
        assert!(!shard.records.is_evacuating());
        assert!(shard.records.places() < places / 4);
    }

    /// Removes every third survivor of [`burst`], replaces the next, and
    /// adds 3,000 records after the burst's `n`.
    fn churn_survivors(
        direct: &mut Direct,
        live: &mut std::collections::HashMap<usize, u64>,
        n: usize,
    ) {
        for i in (0..n).step_by(50) {
            match i % 150 {
                0 => {
                    direct.remove(i);
                    live.remove(&i);
                }
                50 => {
                    direct.put(i, 2_000);
                    live.insert(i, direct.token);
                }
                _ => {}
            }
        }
        for i in n..n + 3_000 {
            direct.put(i, 2_000);
            live.insert(i, direct.token);
        }
    }

    /// Records a sweep passed over (after a rehash between its steps) keep
    /// their chunks marked; a sweep left after one step stands in for it
    /// here. The next pass, after more writes, must move them and not much
    /// else: planning again must count the chunks already leaving (counted
    /// as kept, it marked nearly every chunk, full ones too, and moved
    /// nearly every record).
    #[test]
    fn a_pass_finishes_what_an_earlier_sweep_left_marked() {
        let n = 40_000;
        let (mut direct, mut live, mut sweep, _) = burst_expired(n);
        // One step, and the sweep is never taken up again.
        assert!(!direct.step(&mut sweep));
        churn_survivors(&mut direct, &mut live, n);
        let left =
            super::super::slab::tests::live_in_evacuating(&direct.engine.shards[0].lock().records);
        assert!(left > 0);

        let report = direct.engine.maintain(at(12)).unwrap();
        direct.assert_consistent();
        assert!(report.records_moved >= left as u64);
        assert!(
            report.records_moved < live.len() as u64 / 2,
            "{} of {} records moved to finish moving {left}",
            report.records_moved,
            live.len()
        );
        let shard = direct.engine.shards[0].lock();
        assert!(!shard.records.is_evacuating() && !shard.records.is_sparse());
        drop(shard);
        for (&i, &token) in &live {
            assert_eq!(direct.token(i), Some(token), "key {i}");
        }
    }

    /// Runs `sweep` on the one shard step by step, as a pass does, until
    /// `stop` holds after a step or the shard is done; true when done.
    fn step_until(
        direct: &Direct,
        sweep: &mut super::ShardSweep,
        unlinked: &mut super::Unlinked,
        mut stop: impl FnMut(&super::ShardSweep, &super::Unlinked) -> bool,
    ) -> bool {
        loop {
            let done = sweep.step_on(&direct.engine.shards[0], unlinked);
            let stopped = stop(sweep, unlinked);
            unlinked.clear();
            if done || stopped {
                return done;
            }
        }
    }

    /// A one-shard engine after a [`burst`] of `n` records expired at
    /// 10 s, the survivors' tokens, and a sweep to start at 11 s.
    fn burst_expired(
        n: usize,
    ) -> (
        Direct,
        std::collections::HashMap<usize, u64>,
        super::ShardSweep,
        super::Unlinked,
    ) {
        let mut direct = Direct::new();
        let survivors = burst(&mut direct, n);
        direct.engine.maintain(at(10)).unwrap();
        let sweep = super::ShardSweep::new(at(11));
        (direct, survivors, sweep, super::Unlinked::default())
    }

    /// A step that finds a whole burst due removes a bounded number of
    /// records and never grows the list it hands them out in (made before
    /// the lock was taken): a step that removed every due record of its
    /// buckets (4,096 then) held the lock up to 0.4 ms.
    #[test]
    fn a_step_removes_a_bounded_number_of_records() {
        let n = 40_000;
        let mut direct = Direct::new();
        let survivors = burst(&mut direct, n);
        let mut sweep = super::ShardSweep::new(at(10));
        let mut unlinked = super::Unlinked::default();
        let (mut removed, mut steps, mut most) = (0, 0, 0);
        let mut capacity = None;
        assert!(step_until(&direct, &mut sweep, &mut unlinked, |_, u| {
            let made = *capacity.get_or_insert(u.records.capacity());
            assert_eq!(u.records.capacity(), made, "the list grew");
            most = most.max(u.records.len());
            removed += u.records.len();
            steps += 1;
            false
        }));
        assert_eq!(removed, n - survivors.len());
        assert!(
            most <= super::REMOVALS_PER_STEP + 63,
            "{most} removed in one step"
        );
        assert!(
            steps > removed / (super::REMOVALS_PER_STEP + 64),
            "{steps} steps"
        );
        direct.assert_consistent();
    }

    /// Every live record has a table entry, and a table runs up to half
    /// empty after it doubles: each byte of an entry costs ~2 per record.
    #[test]
    fn a_table_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<super::Slot>(), 16);
    }

    /// The table made for a rebuild is empty, holds what it was made for
    /// without growing, and has had its memory written.
    #[test]
    fn a_touched_table_is_empty_and_ready() {
        let mut table = super::touched_table(5_000);
        assert!(table.is_empty() && table.capacity() >= 5_000);
        let buckets = table.num_buckets();
        for i in 0..5_000u32 {
            let slot = super::Slot {
                hash: i,
                at: super::SlabIndex::default(),
                expires_at: at(1),
            };
            table.insert_unique(super::bucket_hash(i), slot, |s| super::bucket_hash(s.hash));
        }
        assert_eq!(table.num_buckets(), buckets);
        assert_eq!(table.len(), 5_000);
    }

    /// The table made for the finishing step is made only if the table is
    /// still to be rebuilt when the scan ends, and never outlives the step.
    #[test]
    fn a_table_for_the_rebuild_is_made_only_when_needed() {
        let n = 40_000;
        let (mut direct, _, mut sweep, mut unlinked) = burst_expired(n);
        assert!(!step_until(&direct, &mut sweep, &mut unlinked, |_, _| true));
        assert!(sweep.shrink_table);
        // Requests fill the table back up while the sweep runs.
        for i in n + 10..n + 10 + 8_000 {
            direct.put(i, 2_000);
        }
        let mut made = false;
        assert!(step_until(&direct, &mut sweep, &mut unlinked, |s, u| {
            made |= u.new_table.is_some() || s.finishing;
            false
        }));
        assert!(!sweep.rebuild_table, "the table is no longer oversized");
        assert!(!made, "a table was made for nothing");
        assert!(unlinked.new_table.is_none());
    }

    /// The plan's scratch space holds one entry per chunk, whatever the
    /// steps before it left.
    #[test]
    fn the_plan_scratch_stays_one_entry_per_chunk() {
        let mut direct = Direct::new();
        burst(&mut direct, 40_000);
        direct.engine.maintain(at(10)).unwrap();
        let chunks = direct.engine.shards[0].lock().records.chunk_slots();
        for now in [11, 12] {
            let mut sweep = super::ShardSweep::new(at(now));
            let mut unlinked = super::Unlinked {
                plan: (0..chunks as u32).map(|i| (i, i)).collect(),
                ..Default::default()
            };
            step_until(&direct, &mut sweep, &mut unlinked, |_, u| {
                assert!(
                    u.plan.capacity() <= chunks,
                    "{} for {chunks}",
                    u.plan.capacity()
                );
                false
            });
        }
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
