//! The in-memory index: per shard, a hash table of 24-byte entries saying
//! where each identity's current record is on disk, plus the few fields the
//! hot path and maintenance need. Responses stay on disk. Records in flight
//! are also kept whole in a small side table, since `complete` reads them
//! right after `reserve` wrote them.

use hashbrown::HashTable;

use super::segment::Pos;
use super::writer::Loc;
use crate::clock::Timestamp;
use crate::record::{Record, RecordState};

const IN_FLIGHT: u32 = 1 << 31;
const LEASE_VOID: u32 = 1 << 30;
const LEN_MASK: u32 = LEASE_VOID - 1;

/// Where an identity's current record is. The 32-bit hash only narrows the
/// search: a match is confirmed against the full identity read back from
/// disk (or from the in-flight side table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) hash: u32,
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    len_flags: u32,
    /// Expiry in whole seconds, rounded up: maintenance removes the entry
    /// once this has passed (decisions use the exact time on the record).
    expires_secs: u32,
    pub(crate) replays: u32,
}

impl Entry {
    pub(crate) fn new(hash: u32, loc: Loc, in_flight: bool, expires_at: u64, replays: u64) -> Self {
        Entry {
            hash,
            segment: loc.segment,
            offset: loc.offset,
            len_flags: (loc.len & LEN_MASK) | if in_flight { IN_FLIGHT } else { 0 },
            expires_secs: u32::try_from(expires_at.div_ceil(1000)).unwrap_or(u32::MAX),
            replays: u32::try_from(replays).unwrap_or(u32::MAX),
        }
    }

    pub(crate) fn len(&self) -> u32 {
        self.len_flags & LEN_MASK
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.len_flags & IN_FLIGHT != 0
    }

    /// In flight in a previous process whose lease no longer holds.
    pub(crate) fn lease_void(&self) -> bool {
        self.len_flags & LEASE_VOID != 0
    }

    pub(crate) fn void_lease(&mut self) {
        self.len_flags |= LEASE_VOID;
    }

    pub(crate) fn is_expired(&self, now: Timestamp) -> bool {
        now.as_millis() >= u64::from(self.expires_secs) * 1000
    }

    pub(crate) fn same_place(&self, other: &Entry) -> bool {
        self.segment == other.segment && self.offset == other.offset
    }

    pub(crate) fn move_to(&mut self, loc: Loc) {
        self.segment = loc.segment;
        self.offset = loc.offset;
    }
}

/// An in-flight record kept whole, found by its entry's place on disk.
pub(crate) struct Cached {
    pub(crate) hash: u32,
    pub(crate) segment: u32,
    pub(crate) offset: u32,
    pub(crate) record: Record,
}

/// One shard of the index.
#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) table: HashTable<Entry>,
    pub(crate) cache: HashTable<Cached>,
    /// End of the last frame appended for this shard: a caller that saw
    /// this shard's state waits until it is durable before answering.
    pub(crate) last_end: Pos,
    pub(crate) in_flight: u64,
    pub(crate) live_bytes: u64,
}

/// The table hash of a 32-bit entry hash, spread over 64 bits for hashbrown.
pub(crate) fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Shard {
    /// Inserts a new entry.
    pub(crate) fn insert(&mut self, e: Entry) {
        self.in_flight += u64::from(e.in_flight());
        self.live_bytes += u64::from(e.len());
        self.table
            .insert_unique(table_hash(e.hash), e, |x| table_hash(x.hash));
    }

    /// Replaces the entry at `old`'s place with `new` (same identity).
    pub(crate) fn replace(&mut self, old: &Entry, new: Entry) {
        self.remove(old);
        self.insert(new);
    }

    /// Removes the entry at `old`'s place, and its cached record.
    pub(crate) fn remove(&mut self, old: &Entry) {
        let th = table_hash(old.hash);
        if let Ok(found) = self.table.find_entry(th, |x| x.same_place(old)) {
            let (e, _) = found.remove();
            self.in_flight -= u64::from(e.in_flight());
            self.live_bytes -= u64::from(e.len());
        }
        if old.in_flight() {
            self.uncache(old);
        }
    }

    pub(crate) fn uncache(&mut self, old: &Entry) {
        let th = table_hash(old.hash);
        if let Ok(c) = self
            .cache
            .find_entry(th, |c| c.segment == old.segment && c.offset == old.offset)
        {
            c.remove();
        }
    }

    pub(crate) fn cache(&mut self, e: &Entry, record: Record) {
        self.cache.insert_unique(
            table_hash(e.hash),
            Cached {
                hash: e.hash,
                segment: e.segment,
                offset: e.offset,
                record,
            },
            |c| table_hash(c.hash),
        );
    }

    pub(crate) fn cached(&self, e: &Entry) -> Option<&Record> {
        self.cache
            .find(table_hash(e.hash), |c| {
                c.segment == e.segment && c.offset == e.offset
            })
            .map(|c| &c.record)
    }

    pub(crate) fn entry_mut(&mut self, e: &Entry) -> Option<&mut Entry> {
        self.table.find_mut(table_hash(e.hash), |x| x.same_place(e))
    }
}

/// Treats the lease of a record in flight in a previous process as over at
/// `opened_at`, so a retry can take it over at once.
pub(crate) fn void_lease(record: &mut Record, opened_at: Timestamp) {
    if let RecordState::InFlight { lease_until } = &mut record.state {
        if *lease_until > opened_at {
            *lease_until = opened_at;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[test]
    fn expiry_rounds_up_to_whole_seconds() {
        let loc = Loc {
            segment: 1,
            offset: 32,
            len: 100,
        };
        let e = Entry::new(7, loc, true, 1_500, 0);
        assert!(!e.is_expired(Timestamp::from_millis(1_999)));
        assert!(e.is_expired(Timestamp::from_millis(2_000)));
        assert!(e.in_flight());
        assert_eq!(e.len(), 100);
        let never = Entry::new(7, loc, false, u64::MAX, u64::MAX);
        assert!(!never.is_expired(Timestamp::from_millis(u64::from(u32::MAX - 1) * 1000)));
        assert_eq!(never.replays, u32::MAX);
    }
}
