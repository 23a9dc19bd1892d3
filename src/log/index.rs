//! The in-memory index: per shard, a hash table of 16-byte entries saying
//! where each identity's current record is on disk, plus the few fields the
//! hot path and maintenance need. Responses stay on disk. Records in flight
//! are also kept whole in a small side table, since `complete` reads them
//! right after `reserve` wrote them; the rare frames too long for an entry's
//! length field and the replay counters of replayed records live in side
//! tables too, so that the common entry stays at 16 bytes.

use hashbrown::{HashMap, HashTable};

use super::table::EntryTable;

use super::segment::Pos;
use super::writer::Loc;
use crate::clock::Timestamp;
use crate::record::{Record, RecordState};

/// Bits of the identity hash an entry keeps.
pub(crate) const HASH_BITS: u32 = 24;
/// Mask of the kept identity hash bits.
pub(crate) const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
/// An entry keeps a segment id modulo this; the log never spans this many
/// segments (a roll refuses to), so the id is recovered from the head's.
pub(crate) const SEGMENT_SPAN: u32 = 1 << 24;
const SEGMENT_MASK: u32 = SEGMENT_SPAN - 1;

const IN_FLIGHT: u32 = 1 << 15;
const LEASE_VOID: u32 = 1 << 14;
/// Frame lengths up to this are kept in the entry; 0 means "in the side
/// table".
const LEN_MASK: u32 = LEASE_VOID - 1;

/// Where an identity's current record is. The 24-bit hash only narrows the
/// search: a match is confirmed against the full identity read back from
/// disk (or from the in-flight side table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Identity hash (24 bits) << 8 | segment id bits 16..24.
    tag: u32,
    pub(crate) offset: u32,
    /// Expiry in whole seconds, rounded up: maintenance removes the entry
    /// once this has passed (decisions use the exact time on the record).
    expires_secs: u32,
    /// Segment id bits 0..16 << 16 | in flight | lease void | frame length
    /// (14 bits; 0 when it does not fit).
    meta: u32,
}

impl Entry {
    /// A free slot of the table, marked by an offset no frame has.
    pub(crate) const fn vacant(offset: u32) -> Self {
        Entry {
            tag: 0,
            offset,
            expires_secs: 0,
            meta: 0,
        }
    }

    /// `hash` must already be cut to [`HASH_BITS`].
    pub(crate) fn new(hash: u32, loc: Loc, in_flight: bool, expires_at: u64) -> Self {
        let seg = loc.segment & SEGMENT_MASK;
        let len = if loc.len <= LEN_MASK { loc.len } else { 0 };
        Entry {
            tag: (hash & HASH_MASK) << 8 | seg >> 16,
            offset: loc.offset,
            expires_secs: u32::try_from(expires_at.div_ceil(1000)).unwrap_or(u32::MAX),
            meta: (seg & 0xFFFF) << 16 | if in_flight { IN_FLIGHT } else { 0 } | len,
        }
    }

    pub(crate) fn hash(&self) -> u32 {
        self.tag >> 8
    }

    fn segment_bits(&self) -> u32 {
        (self.tag & 0xFF) << 16 | self.meta >> 16
    }

    /// The full segment id, given the id of a segment at or after it that
    /// is less than [`SEGMENT_SPAN`] ids ahead (the head of the log).
    pub(crate) fn segment(&self, head: u32) -> u32 {
        head.wrapping_sub(head.wrapping_sub(self.segment_bits()) & SEGMENT_MASK)
    }

    /// A key naming the frame, unique among the live entries.
    pub(crate) fn place(&self) -> u64 {
        u64::from(self.segment_bits()) << 32 | u64::from(self.offset)
    }

    fn short_len(&self) -> Option<u32> {
        let n = self.meta & LEN_MASK;
        (n != 0).then_some(n)
    }

    pub(crate) fn in_flight(&self) -> bool {
        self.meta & IN_FLIGHT != 0
    }

    /// In flight in a previous process whose lease no longer holds.
    pub(crate) fn lease_void(&self) -> bool {
        self.meta & LEASE_VOID != 0
    }

    pub(crate) fn void_lease(&mut self) {
        self.meta |= LEASE_VOID;
    }

    /// Whether the entry has expired once `now_secs` whole seconds have
    /// passed ([`whole_secs`]): its expiry was rounded up, so it never goes
    /// before the record's own.
    fn expired_by(&self, now_secs: u64) -> bool {
        u64::from(self.expires_secs) <= now_secs
    }

    #[cfg(test)]
    fn is_expired(&self, now: Timestamp) -> bool {
        self.expired_by(whole_secs(now))
    }

    pub(crate) fn same_place(&self, other: &Entry) -> bool {
        self.place() == other.place()
    }

    /// The same entry at `loc` (same frame length).
    fn moved_to(&self, loc: Loc) -> Entry {
        let mut e = Entry::new(self.hash(), loc, self.in_flight(), 0);
        e.expires_secs = self.expires_secs;
        e.meta = e.meta & !(LEN_MASK | LEASE_VOID) | self.meta & (LEN_MASK | LEASE_VOID);
        e
    }
}

/// The live frames of one segment, as the expiry pass counts them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentLive {
    /// Bytes of live frames.
    pub(crate) bytes: u64,
    /// Bytes of those that expire within the reclaim horizon.
    pub(crate) expiring: u64,
}

/// Whole seconds elapsed at `now`, the unit of an entry's expiry.
fn whole_secs(now: Timestamp) -> u64 {
    now.as_millis() / 1000
}

/// Live frame bytes of every segment from the oldest to the head, as one
/// expiry pass counts them. Kept by distance from the head in a dense
/// vector: the pass adds to it once per entry, so a lookup must be an index,
/// not a search.
#[derive(Debug)]
pub(crate) struct LiveBySegment {
    head: u32,
    /// Index: how many segments before the head.
    by_distance: Vec<SegmentLive>,
}

impl LiveBySegment {
    /// Counts for the `span` segments that end at `head`.
    pub(crate) fn new(head: u32, span: usize) -> Self {
        LiveBySegment {
            head,
            by_distance: vec![SegmentLive::default(); span],
        }
    }

    /// Adds a live entry's frame bytes to its segment. Entries in segments
    /// outside the span (rolled after the head was read) are not counted:
    /// the pass never frees those.
    fn add(&mut self, e: &Entry, len: u64, expiring: bool) {
        let distance = self.head.wrapping_sub(e.segment_bits()) & SEGMENT_MASK;
        if let Some(seg) = self.by_distance.get_mut(distance as usize) {
            seg.bytes += len;
            if expiring {
                seg.expiring += len;
            }
        }
    }

    /// What was counted for segment `id` (nothing, if it is outside the
    /// span).
    pub(crate) fn get(&self, id: u32) -> SegmentLive {
        let distance = self.head.wrapping_sub(id) & SEGMENT_MASK;
        self.by_distance
            .get(distance as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Live bytes of every segment in the span.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.by_distance.iter().map(|s| s.bytes).sum()
    }

    fn clear(&mut self) {
        self.by_distance.fill(SegmentLive::default());
    }

    /// Adds what `other`, over the same span, counted.
    pub(crate) fn absorb(&mut self, other: &LiveBySegment) {
        debug_assert_eq!(
            (self.head, self.by_distance.len()),
            (other.head, other.by_distance.len())
        );
        for (mine, theirs) in self.by_distance.iter_mut().zip(&other.by_distance) {
            mine.bytes += theirs.bytes;
            mine.expiring += theirs.expiring;
        }
    }
}

/// Table groups a sweep step visits under one hold of the shard's lock:
/// 4 Ki entries, about 15 µs, so that a request never waits behind a whole
/// shard's sweep (about 0.8 ms at 10 M records). Steps of 1 Ki made the
/// pass slower and a waiting request's wait barely shorter.
const SWEEP_STEP_GROUPS: usize = 1024;

/// Restarts after which a sweep does the rest of the shard in one step, so
/// that a shard rebuilt again and again (growing fast) is still swept.
const SWEEP_RESTARTS: u32 = 2;

/// One shard's part of an expiry pass, made in steps so that the shard's
/// lock is held briefly. Between steps other threads may add, replace and
/// remove entries. That is safe for the count: a removal (or replacement)
/// only makes it count a frame that is no longer live, which at worst
/// keeps a segment a pass longer; and a new frame goes to the head or a
/// later segment, which this pass does not free. What is not safe is a
/// rebuild, which moves entries into positions already passed: then the
/// shard's count starts again.
pub(crate) struct ShardSweep {
    now_secs: u64,
    soon_secs: u64,
    next_group: usize,
    layout: Option<u64>,
    restarts: u32,
    /// This shard's live bytes by segment.
    pub(crate) live: LiveBySegment,
    /// Entries removed, over every step.
    pub(crate) expired: u64,
}

impl ShardSweep {
    /// A sweep removing what has expired at `now`, counting apart what
    /// expires by `soon`, for the `span` segments that end at `head`.
    pub(crate) fn new(now: Timestamp, soon: Timestamp, head: u32, span: usize) -> Self {
        ShardSweep {
            now_secs: whole_secs(now),
            soon_secs: whole_secs(soon),
            next_group: 0,
            layout: None,
            restarts: 0,
            live: LiveBySegment::new(head, span),
            expired: 0,
        }
    }

    /// Sweeps the next groups of `shard`; true once every group is done.
    pub(crate) fn step(&mut self, shard: &mut Shard) -> bool {
        let layout = shard.table.layout();
        if self.layout.is_some_and(|seen| seen != layout) {
            self.live.clear();
            self.next_group = 0;
            self.restarts += 1;
        }
        self.layout = Some(layout);
        let groups = shard.table.group_count();
        let end = if self.restarts >= SWEEP_RESTARTS {
            groups
        } else {
            groups.min(self.next_group + SWEEP_STEP_GROUPS)
        };
        self.expired += shard.expire_groups(
            self.next_group..end,
            self.now_secs,
            self.soon_secs,
            &mut self.live,
        );
        self.next_group = end;
        if end < groups {
            return false;
        }
        shard.table.tidy();
        true
    }
}

/// An in-flight record kept whole, found by its entry's place on disk.
pub(crate) struct Cached {
    pub(crate) hash: u32,
    pub(crate) place: u64,
    pub(crate) record: Record,
}

/// One shard of the index.
#[derive(Default)]
pub(crate) struct Shard {
    pub(crate) table: EntryTable,
    pub(crate) cache: HashTable<Cached>,
    /// Frame lengths that do not fit an entry, by place.
    long_lens: HashMap<u64, u32>,
    /// Replays since the open, by place, of the records replayed.
    replays: HashMap<u64, u64>,
    /// End of the last frame appended for this shard: a caller that saw
    /// this shard's state waits until it is durable before answering.
    pub(crate) last_end: Pos,
    pub(crate) in_flight: u64,
    pub(crate) live_bytes: u64,
}

/// An entry hash spread over 64 bits: the in-flight cache (hashbrown) and
/// the entry table take their buckets from it.
pub(crate) fn table_hash(hash: u32) -> u64 {
    u64::from(hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Shard {
    /// The length of the frame `e` points at.
    pub(crate) fn frame_len(&self, e: &Entry) -> u32 {
        match e.short_len() {
            Some(n) => n,
            None => self.long_lens.get(&e.place()).copied().unwrap_or(0),
        }
    }

    /// Replays counted for `e`'s record since the open.
    pub(crate) fn replays_of(&self, e: &Entry) -> u64 {
        self.replays.get(&e.place()).copied().unwrap_or(0)
    }

    /// Counts one replay of `e`'s record.
    pub(crate) fn count_replay(&mut self, e: &Entry) {
        let n = self.replays.entry(e.place()).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// Inserts a new entry for a frame of `len` bytes whose record was
    /// replayed `replays` times.
    pub(crate) fn insert(&mut self, e: Entry, len: u32, replays: u64) {
        self.admit(&e, len, replays);
        self.table.insert(e);
    }

    /// Puts `new` (same hash) in the slot of the entry at `old`'s place,
    /// with what the side tables hold for each: one probe where a removal
    /// and an insertion would take two.
    pub(crate) fn replace(&mut self, old: &Entry, new: Entry, len: u32, replays: u64) {
        debug_assert_eq!(old.hash(), new.hash());
        match self.table.find_mut(old.hash(), |x| x.same_place(old)) {
            Some(slot) => {
                let gone = std::mem::replace(slot, new);
                self.forget(&gone);
                self.admit(&new, len, replays);
            }
            None => self.insert(new, len, replays),
        }
    }

    /// Counts a new entry for a frame of `len` bytes and notes what does
    /// not fit in it.
    fn admit(&mut self, e: &Entry, len: u32, replays: u64) {
        self.in_flight += u64::from(e.in_flight());
        self.live_bytes += u64::from(len);
        if e.short_len().is_none() {
            self.long_lens.insert(e.place(), len);
        }
        if replays > 0 {
            self.replays.insert(e.place(), replays);
        }
    }

    /// Removes the entry at `old`'s place, and what the side tables hold
    /// for it.
    pub(crate) fn remove(&mut self, old: &Entry) {
        if let Some(e) = self.table.remove(old.hash(), |x| x.same_place(old)) {
            self.forget(&e);
        }
    }

    /// Drops the side-table state and counts of an entry taken out of the
    /// table.
    pub(crate) fn forget(&mut self, e: &Entry) {
        let len = self.frame_len(e);
        self.in_flight -= u64::from(e.in_flight());
        self.live_bytes -= u64::from(len);
        if e.short_len().is_none() {
            self.long_lens.remove(&e.place());
        }
        if !self.replays.is_empty() {
            self.replays.remove(&e.place());
        }
        if e.in_flight() {
            self.uncache(e);
        }
    }

    fn uncache(&mut self, old: &Entry) {
        let th = table_hash(old.hash());
        if let Ok(c) = self.cache.find_entry(th, |c| c.place == old.place()) {
            c.remove();
        }
    }

    pub(crate) fn cache(&mut self, e: &Entry, record: Record) {
        self.cache.insert_unique(
            table_hash(e.hash()),
            Cached {
                hash: e.hash(),
                place: e.place(),
                record,
            },
            |c| table_hash(c.hash),
        );
    }

    pub(crate) fn cached(&self, e: &Entry) -> Option<&Record> {
        self.cache
            .find(table_hash(e.hash()), |c| c.place == e.place())
            .map(|c| &c.record)
    }

    /// Removes the entries of the table groups in `range` expired by
    /// `now_secs`, adding the frame bytes of the others to `live` by
    /// segment, and separately those of entries that expire by
    /// `soon_secs`; returns how many were removed.
    fn expire_groups(
        &mut self,
        range: std::ops::Range<usize>,
        now_secs: u64,
        soon_secs: u64,
        live: &mut LiveBySegment,
    ) -> u64 {
        let mut gone = Vec::new();
        let long_lens = &self.long_lens;
        self.table.retain_groups(range, |e| {
            if e.expired_by(now_secs) {
                gone.push(*e);
                return false;
            }
            let len = u64::from(match e.short_len() {
                Some(n) => n,
                None => long_lens.get(&e.place()).copied().unwrap_or(0),
            });
            live.add(e, len, e.expired_by(soon_secs));
            true
        });
        for e in &gone {
            self.forget(e);
        }
        gone.len() as u64
    }

    /// Points the entry at `old`'s place to its copy at `loc`, with its
    /// side-table state. The entry as it is now moves, not `old`, which may
    /// have been read before a change in place ([`Entry::void_lease`]).
    pub(crate) fn move_entry(&mut self, old: &Entry, loc: Loc) {
        let th = table_hash(old.hash());
        let Some(e) = self.table.find_mut(old.hash(), |x| x.same_place(old)) else {
            return;
        };
        let new = e.moved_to(loc);
        *e = new;
        if let Some(len) = self.long_lens.remove(&old.place()) {
            self.long_lens.insert(new.place(), len);
        }
        if let Some(n) = self.replays.remove(&old.place()) {
            self.replays.insert(new.place(), n);
        }
        if let Some(c) = self.cache.find_mut(th, |c| c.place == old.place()) {
            c.place = new.place();
        }
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

    fn loc(segment: u32, offset: u32, len: u32) -> Loc {
        Loc {
            segment,
            offset,
            len,
        }
    }

    #[test]
    fn entries_are_16_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }

    #[test]
    fn expiry_rounds_up_to_whole_seconds() {
        let e = Entry::new(7, loc(1, 32, 100), true, 1_500);
        assert!(!e.is_expired(Timestamp::from_millis(1_999)));
        assert!(e.is_expired(Timestamp::from_millis(2_000)));
        assert!(e.in_flight());
        assert_eq!(e.short_len(), Some(100));
        let never = Entry::new(7, loc(1, 32, 100), false, u64::MAX);
        assert!(!never.is_expired(Timestamp::from_millis(u64::from(u32::MAX - 1) * 1000)));
    }

    #[test]
    fn segment_ids_come_back_within_the_span() {
        for (seg, head) in [
            (1, 1),
            (1, 5),
            (0x00AB_CDEF, 0x00AB_CDEF),
            (0x0100_0001, 0x01FF_FFFF),
            (0x00FF_FFFF, 0x0100_0003),
            (u32::MAX - 3, u32::MAX),
        ] {
            let e = Entry::new(HASH_MASK, loc(seg, 99, 40), false, 0);
            assert_eq!(
                e.segment(head),
                seg,
                "segment {seg:#x} under head {head:#x}"
            );
            assert_eq!(e.hash(), HASH_MASK);
            assert_eq!(e.offset, 99);
        }
    }

    #[test]
    fn long_frames_and_replays_live_in_side_tables() {
        let mut s = Shard::default();
        let big = Entry::new(5, loc(3, 64, 1 << 20), false, 10_000);
        assert_eq!(big.short_len(), None);
        s.insert(big, 1 << 20, 2);
        assert_eq!(s.frame_len(&big), 1 << 20);
        assert_eq!(s.replays_of(&big), 2);
        s.count_replay(&big);
        assert_eq!(s.replays_of(&big), 3);
        assert_eq!(s.live_bytes, 1 << 20);
        s.move_entry(&big, loc(9, 128, 1 << 20));
        let moved = *s.table.iter().next().unwrap();
        assert_eq!(moved.segment(9), 9);
        assert_eq!(moved.offset, 128);
        assert_eq!(s.frame_len(&moved), 1 << 20);
        assert_eq!(s.replays_of(&moved), 3);
        assert!(!moved.is_expired(Timestamp::from_millis(9_999)));
        s.remove(&moved);
        assert_eq!(s.live_bytes, 0);
        assert!(s.long_lens.is_empty() && s.replays.is_empty() && s.table.len() == 0);
    }

    #[test]
    fn expiry_pass_counts_live_bytes_by_segment() {
        // The span wraps past the 24 bits an entry keeps of its segment id.
        let head = 0x0100_0001;
        let oldest = 0x00FF_FFFE;
        let mut s = Shard::default();
        let at = |seg, hash: u32, len, expires| {
            Entry::new(hash, loc(seg, 64 * hash, len), false, expires)
        };
        let (gone, kept, soon, long, newer) = (
            at(oldest, 1, 100, 4_000),
            at(oldest, 2, 200, 60_000),
            at(oldest + 1, 3, 300, 7_000),
            at(head, 4, 1 << 20, 60_000),
            // Rolled after the pass read the head: not counted.
            at(head + 1, 5, 500, 60_000),
        );
        for (e, len) in [
            (gone, 100),
            (kept, 200),
            (soon, 300),
            (long, 1 << 20),
            (newer, 500),
        ] {
            s.insert(e, len, 0);
        }
        let mut sweep = ShardSweep::new(
            Timestamp::from_millis(4_000),
            Timestamp::from_millis(7_000),
            head,
            4,
        );
        assert!(sweep.step(&mut s), "a small table is swept in one step");
        let (expired, live) = (sweep.expired, sweep.live);
        assert_eq!(expired, 1);
        assert_eq!(s.table.len(), 4);
        assert_eq!(
            live.get(oldest),
            SegmentLive {
                bytes: 200,
                expiring: 0
            }
        );
        assert_eq!(
            live.get(oldest + 1),
            SegmentLive {
                bytes: 300,
                expiring: 300
            }
        );
        assert_eq!(live.get(oldest + 2), SegmentLive::default());
        assert_eq!(
            live.get(head),
            SegmentLive {
                bytes: 1 << 20,
                expiring: 0
            }
        );
        assert_eq!(live.get(head + 1), SegmentLive::default());
        assert_eq!(live.get(oldest - 1), SegmentLive::default());
        assert_eq!(live.total_bytes(), 500 + (1 << 20));
    }

    /// A shard of `n` completed entries: entry `i` is in segment
    /// `10 + i % 4`, 100 bytes long, and expires at second `i % 50 + 1`.
    fn striped_shard(n: u32) -> Shard {
        let mut s = Shard::default();
        for i in 0..n {
            let e = Entry::new(
                i & HASH_MASK,
                loc(10 + i % 4, 64 + 8 * i, 100),
                false,
                u64::from(i % 50 + 1) * 1000,
            );
            s.insert(e, 100, 0);
        }
        s
    }

    /// What a sweep at second 10 counts, by segment 10..=13.
    fn live_bytes_by_segment(live: &LiveBySegment) -> Vec<u64> {
        (10..14).map(|id| live.get(id).bytes).collect()
    }

    /// Adds entries at the head (segment 14) to `s`, numbered on from
    /// `added`, until the table is rebuilt; returns the new count.
    fn add_at_head_until_rebuilt(s: &mut Shard, mut added: u32) -> u32 {
        let layout = s.table.layout();
        while s.table.layout() == layout {
            let e = Entry::new(
                added & HASH_MASK,
                loc(14, 64 + 8 * added, 100),
                false,
                60_000,
            );
            s.insert(e, 100, 0);
            added += 1;
        }
        added
    }

    fn sweep_at_10s() -> ShardSweep {
        ShardSweep::new(
            Timestamp::from_millis(10_000),
            Timestamp::from_millis(20_000),
            14,
            5,
        )
    }

    /// The same sweep with no steps: what a whole-shard hold counts.
    fn sweep_at_10s_in_one_step(s: &mut Shard) -> ShardSweep {
        let mut sweep = sweep_at_10s();
        sweep.restarts = SWEEP_RESTARTS;
        assert!(sweep.step(s), "a sweep past its restarts takes one step");
        sweep
    }

    #[test]
    fn a_sweep_in_steps_counts_what_a_sweep_in_one_does() {
        let n = 40_000;
        let mut whole = striped_shard(n);
        let once = sweep_at_10s_in_one_step(&mut whole);
        let mut stepped = striped_shard(n);
        let mut sweep = sweep_at_10s();
        let mut steps = 1;
        while !sweep.step(&mut stepped) {
            steps += 1;
        }
        assert!(steps > 1, "{n} entries take more than one step");
        // Seconds 1..=10 of every 50 are gone.
        assert_eq!(sweep.expired, u64::from(n / 50 * 10));
        assert_eq!(sweep.expired, once.expired);
        assert_eq!(stepped.table.len(), whole.table.len());
        assert_eq!(stepped.live_bytes, whole.live_bytes);
        assert_eq!(
            live_bytes_by_segment(&sweep.live),
            live_bytes_by_segment(&once.live)
        );
        assert_eq!(sweep.live.total_bytes(), stepped.live_bytes);
        // Expiring within the horizon: seconds 11..=20.
        let expiring: u64 = (10..14).map(|id| sweep.live.get(id).expiring).sum();
        assert_eq!(expiring, u64::from(n / 50 * 10) * 100);
    }

    #[test]
    fn a_rebuild_between_steps_starts_the_count_again() {
        let n = 40_000;
        let mut s = striped_shard(n);
        let mut sweep = sweep_at_10s();
        assert!(!sweep.step(&mut s));
        // Requests in between: enough new entries at the head to make the
        // table grow, which moves entries into groups the sweep passed.
        let added = add_at_head_until_rebuilt(&mut s, 0);
        while !sweep.step(&mut s) {}
        assert_eq!(sweep.restarts, 1);
        // Every older entry that is still live is counted exactly once.
        let exact = sweep_at_10s_in_one_step(&mut s);
        assert_eq!(exact.expired, 0, "the sweep removed everything due");
        assert_eq!(
            live_bytes_by_segment(&sweep.live),
            live_bytes_by_segment(&exact.live)
        );
        assert_eq!(sweep.live.get(14).bytes, u64::from(added) * 100);
    }

    #[test]
    fn removals_and_replacements_between_steps_never_undercount() {
        let n = 40_000;
        let mut s = striped_shard(n);
        let mut sweep = sweep_at_10s();
        assert!(!sweep.step(&mut s));
        // Replace or remove a live entry in every group, passed or not.
        let olds: Vec<Entry> = s.table.iter().copied().step_by(4).collect();
        for (i, old) in olds.iter().enumerate() {
            if i % 2 == 0 {
                s.remove(old);
            } else {
                let new = Entry::new(old.hash(), loc(14, old.offset, 100), false, 60_000);
                s.replace(old, new, 100, 0);
            }
        }
        assert_eq!(
            s.table.layout(),
            sweep.layout.unwrap(),
            "no rebuild in this test"
        );
        while !sweep.step(&mut s) {}
        assert_eq!(sweep.restarts, 0);
        let exact = sweep_at_10s_in_one_step(&mut s);
        for id in 10..14 {
            assert!(
                sweep.live.get(id).bytes >= exact.live.get(id).bytes,
                "segment {id}: counted {:?}, live {:?}",
                sweep.live.get(id),
                exact.live.get(id)
            );
        }
        // The passed groups still count the frames taken out after they
        // were passed: more than what is live.
        assert!(sweep.live.total_bytes() > exact.live.total_bytes() - exact.live.get(14).bytes);
    }

    #[test]
    fn a_shard_rebuilt_again_and_again_is_still_swept() {
        let mut s = striped_shard(40_000);
        let mut sweep = sweep_at_10s();
        let mut added = 0u32;
        let mut steps = 0;
        loop {
            steps += 1;
            if sweep.step(&mut s) {
                break;
            }
            added = add_at_head_until_rebuilt(&mut s, added);
        }
        assert_eq!(sweep.restarts, SWEEP_RESTARTS);
        assert_eq!(steps, usize::try_from(SWEEP_RESTARTS).unwrap() + 1);
        assert_eq!(sweep.live.total_bytes(), s.live_bytes);
    }
}
