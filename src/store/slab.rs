//! Where the in-memory engine keeps its records: one slab per shard, in
//! chunks allocated and written through at once, each with its own list
//! of freed places.
//!
//! A `Box` per record cost a fresh `malloc` per reserve (~200 instructions
//! when nothing is being freed, as while a store fills) and spread the
//! first touch of new pages over one reserve in ~20; a chunk takes those
//! page faults in the one operation that allocates it. Chunks grow from 16
//! to 256 records, so a small store stays small.
//!
//! A freed place holds the offset of its chunk's next freed place, and the
//! slab lists the chunks that have one. That list has at most one entry
//! per chunk, so it never grows while the shard's lock is held, and a
//! chunk leaves it in one step: a single free list of places grew by
//! copying (1 MB at 10 M records, and the page faults of its new memory:
//! 6 ms under the lock) and had to be filtered place by place (~45 µs)
//! whenever chunks were marked for evacuation.
//!
//! A slab also gives memory back. Once a burst of records has expired, its
//! chunks hold a few survivors each, scattered by reuse; a slab with more
//! than twice the places its records need marks its emptiest chunks for
//! evacuation. The maintenance sweep then moves each survivor it visits in
//! such a chunk to a place elsewhere ([`RecordSlab::relocate`]), and a
//! chunk is freed the moment its last record leaves.
//!
//! A record keeps its own key. Usual identities are inline in the key
//! (`IdempotencyKey` allocates only beyond 62 packed bytes), so the store
//! holds no allocation of the caller's: one kept alive per record made
//! every `Store::key` take fresh heap memory and touch a new page in ~2 %
//! of reserves (1.3–19 µs each on the development VM), which set the
//! reserve p99.

use crate::record::Record;

/// Where a record is in a [`RecordSlab`]: its chunk, and its offset in the
/// chunk in the low [`OFFSET_BITS`], in 32 bits so that the in-memory
/// store's table entry stays 16 bytes. A chunk has at most
/// [`LARGEST_CHUNK`] places; the 2^24 chunks left hold 4 G records in one
/// shard, ~790 GB of records, beyond any machine that keeps them in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct SlabIndex(u32);

/// Bits of a [`SlabIndex`] that hold the offset.
const OFFSET_BITS: u32 = 8;
const _: () = assert!(LARGEST_CHUNK <= 1 << OFFSET_BITS);
/// Chunks a slab can index.
const MAX_CHUNKS: usize = 1 << (32 - OFFSET_BITS);

impl SlabIndex {
    fn new(chunk: u32, offset: u32) -> Self {
        debug_assert!((chunk as usize) < MAX_CHUNKS && offset < 1 << OFFSET_BITS);
        SlabIndex(chunk << OFFSET_BITS | offset)
    }

    fn chunk(self) -> u32 {
        self.0 >> OFFSET_BITS
    }

    fn offset(self) -> u32 {
        self.0 & ((1 << OFFSET_BITS) - 1)
    }
}

/// What [`RecordSlab::relocate`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Relocated {
    /// The record's chunk is not being evacuated.
    Stays,
    /// The record is at this place now.
    Moved(SlabIndex),
    /// No place was ready and no spare chunk given: the record stays.
    NeedsChunk,
}

/// One place of a chunk.
#[allow(
    clippy::large_enum_variant,
    reason = "a place is a record's room: boxing it is the allocation per record chunks avoid"
)]
pub(super) enum Place {
    Held(Record),
    /// Free: `next` is the offset of the chunk's next freed place, or
    /// [`NO_PLACE`]. Places a chunk has not handed out yet are free and
    /// linked to nothing.
    Free {
        next: u32,
    },
}

/// The end of a chunk's list of freed places.
const NO_PLACE: u32 = u32::MAX;

/// A chunk's places, as allocated and as freed.
pub(super) type Places = Box<[Place]>;

const FIRST_CHUNK: usize = 16;
const LARGEST_CHUNK: usize = 256;

struct Chunk {
    /// Empty once the chunk is freed; its index is then reused.
    places: Places,
    /// Records in `places`.
    live: u32,
    /// Its records are being moved out; none of its places is handed out.
    evacuating: bool,
    /// The first of its freed places, or [`NO_PLACE`].
    first_free: u32,
    /// In the slab's `with_room` list.
    listed: bool,
}

impl Chunk {
    fn new(places: Places) -> Self {
        Chunk {
            places,
            live: 0,
            evacuating: false,
            first_free: NO_PLACE,
            listed: false,
        }
    }
}

#[derive(Default)]
pub(super) struct RecordSlab {
    chunks: Vec<Chunk>,
    /// The chunk handed out place by place, and how many of its places.
    /// Never evacuated.
    open: Option<(u32, usize)>,
    /// Chunks with a freed place, none of them evacuating or freed; the
    /// last one's places are handed out first. Its capacity is kept at
    /// least the number of chunks, so it never grows under the lock.
    with_room: Vec<u32>,
    /// Indices of freed chunks, for the next chunk allocated.
    vacant_chunks: Vec<u32>,
    /// Places in allocated chunks, and records in them.
    places: usize,
    live: usize,
    /// Chunks marked for evacuation and not yet freed.
    evacuating: usize,
    /// Freed chunks' memory, for the sweep to drop once the shard's lock
    /// is released ([`take_retired`](Self::take_retired)).
    retired: Vec<Places>,
}

/// Makes `list`'s capacity at least `total`.
fn reserve_total<T>(list: &mut Vec<T>, total: usize) {
    list.reserve(total.saturating_sub(list.len()));
}

/// Free places for a new chunk.
fn free_places(len: usize) -> Places {
    (0..len).map(|_| Place::Free { next: NO_PLACE }).collect()
}

impl RecordSlab {
    pub(super) fn get(&self, at: SlabIndex) -> &Record {
        match &self.chunks[at.chunk() as usize].places[at.offset() as usize] {
            Place::Held(r) => r,
            Place::Free { .. } => unreachable!("a table entry points at a free slab place"),
        }
    }

    pub(super) fn get_mut(&mut self, at: SlabIndex) -> &mut Record {
        match &mut self.chunks[at.chunk() as usize].places[at.offset() as usize] {
            Place::Held(r) => r,
            Place::Free { .. } => unreachable!("a table entry points at a free slab place"),
        }
    }

    /// The packed identity of the record at `at`.
    pub(super) fn key(&self, at: SlabIndex) -> &[u8] {
        self.get(at).key.framed()
    }

    pub(super) fn insert(&mut self, record: Record) -> SlabIndex {
        let at = match self.with_room.last() {
            Some(&chunk) => self.take_freed_place(chunk),
            None => self.next_fresh_place(),
        };
        let chunk = &mut self.chunks[at.chunk() as usize];
        chunk.places[at.offset() as usize] = Place::Held(record);
        chunk.live += 1;
        self.live += 1;
        at
    }

    /// Unlinks the first freed place of `chunk` (listed in `with_room`,
    /// last), and unlists the chunk when that was its last.
    fn take_freed_place(&mut self, chunk: u32) -> SlabIndex {
        let c = &mut self.chunks[chunk as usize];
        let offset = c.first_free;
        c.first_free = match c.places[offset as usize] {
            Place::Free { next } => next,
            Place::Held(_) => unreachable!("a chunk lists a taken place as free"),
        };
        if c.first_free == NO_PLACE {
            c.listed = false;
            self.with_room.pop();
        }
        SlabIndex::new(chunk, offset)
    }

    /// The open chunk and the places it has handed out, if it has one
    /// left to hand out.
    fn open_with_room(&self) -> Option<(u32, usize)> {
        self.open
            .filter(|&(chunk, used)| used < self.chunks[chunk as usize].places.len())
    }

    /// The open chunk's next place, opening a new chunk when it is full.
    fn next_fresh_place(&mut self) -> SlabIndex {
        let (chunk, used) = match self.open_with_room() {
            Some(open) => open,
            None => (self.allocate_chunk(), 0),
        };
        self.open = Some((chunk, used + 1));
        SlabIndex::new(chunk, used as u32)
    }

    fn allocate_chunk(&mut self) -> u32 {
        let allocated = self.chunks.len() - self.vacant_chunks.len();
        let len = (FIRST_CHUNK << allocated.min(8)).min(LARGEST_CHUNK);
        self.adopt_chunk(free_places(len))
    }

    /// Takes `places` (all free) as a chunk, in a freed chunk's index if
    /// there is one.
    fn adopt_chunk(&mut self, places: Places) -> u32 {
        debug_assert!(places
            .iter()
            .all(|p| matches!(p, Place::Free { next: NO_PLACE })));
        let chunk = Chunk::new(places);
        self.places += chunk.places.len();
        // Room to list, retire and free every chunk without growing a list
        // under the sweep's lock (capacities, not counted from their use).
        let chunks = self.chunks.len() + 1;
        reserve_total(&mut self.with_room, chunks);
        reserve_total(&mut self.vacant_chunks, chunks);
        reserve_total(&mut self.retired, chunks);
        match self.vacant_chunks.pop() {
            Some(i) => {
                self.chunks[i as usize] = chunk;
                i
            }
            None => {
                // Out of memory long before (see `SlabIndex`); a wrapped
                // index would hand out another record's place.
                assert!(self.chunks.len() < MAX_CHUNKS, "a slab indexes 2^24 chunks");
                self.chunks.push(chunk);
                (self.chunks.len() - 1) as u32
            }
        }
    }

    /// Takes the record at `at` out, freeing its place (or its chunk, when
    /// it was the last record of an evacuating one).
    pub(super) fn remove(&mut self, at: SlabIndex) -> Option<Record> {
        let chunk = &mut self.chunks[at.chunk() as usize];
        let place = &mut chunk.places[at.offset() as usize];
        if matches!(place, Place::Free { .. }) {
            debug_assert!(false, "a table entry points at a free slab place");
            return None;
        }
        let freed = Place::Free {
            next: chunk.first_free,
        };
        let Place::Held(record) = std::mem::replace(place, freed) else {
            unreachable!("the place was checked to be taken")
        };
        chunk.first_free = at.offset();
        chunk.live -= 1;
        self.live -= 1;
        if !chunk.evacuating {
            if !chunk.listed {
                chunk.listed = true;
                self.with_room.push(at.chunk());
            }
        } else if chunk.live == 0 {
            self.evacuating -= 1;
            self.free_chunk(at.chunk());
        }
        Some(record)
    }

    /// Gives an empty, unlisted chunk's memory back; its index waits for
    /// reuse.
    fn free_chunk(&mut self, i: u32) {
        let chunk = &mut self.chunks[i as usize];
        debug_assert!(chunk.live == 0 && !chunk.listed);
        self.places -= chunk.places.len();
        let places = std::mem::replace(chunk, Chunk::new(Box::new([]))).places;
        self.retired.push(places);
        self.vacant_chunks.push(i);
    }

    /// True while some chunk is marked for evacuation.
    pub(super) fn is_evacuating(&self) -> bool {
        self.evacuating > 0
    }

    /// Moves the record at `at` to another place if its chunk is being
    /// evacuated. A move takes a freed place, the open chunk's next one or
    /// else `spare` as a new chunk; it allocates no chunk itself (only the
    /// list of chunks may grow, rarely, when it takes the spare), since it
    /// runs under the shard's lock, where `malloc` can stall: right after a
    /// burst's responses were freed glibc sorts up to 10,000 freed blocks
    /// per call (a sweep step at 10 M records held the lock 4–36 ms for
    /// that).
    pub(super) fn relocate(&mut self, at: SlabIndex, spare: &mut Option<Places>) -> Relocated {
        if !self.chunks[at.chunk() as usize].evacuating {
            return Relocated::Stays;
        }
        if self.with_room.is_empty() && self.open_with_room().is_none() {
            let Some(places) = spare.take() else {
                return Relocated::NeedsChunk;
            };
            let chunk = self.adopt_chunk(places);
            self.open = Some((chunk, 0));
        }
        match self.remove(at) {
            Some(record) => Relocated::Moved(self.insert(record)),
            None => unreachable!("a table entry points at a free slab place"),
        }
    }

    /// Places for a chunk that moves take when no place is ready, made
    /// before the lock is taken.
    pub(super) fn spare_chunk() -> Places {
        free_places(LARGEST_CHUNK)
    }

    /// True while freed chunks wait in [`take_retired`](Self::take_retired).
    pub(super) fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Moves the freed chunks' memory into `into`; returns its bytes.
    pub(super) fn take_retired(&mut self, into: &mut Vec<Places>) -> usize {
        let bytes = self
            .retired
            .iter()
            .map(|c| std::mem::size_of_val::<[Place]>(c))
            .sum();
        into.append(&mut self.retired);
        bytes
    }

    /// True when the slab holds more than twice the places its records
    /// need, beyond two chunks of slack: then some chunk is worth emptying.
    pub(super) fn is_sparse(&self) -> bool {
        self.places > 2 * self.live + 2 * LARGEST_CHUNK
    }

    /// Frees the empty chunks and marks the emptiest others for
    /// evacuation, keeping places for every record and a quarter more. A
    /// sweep that then visits every record frees the marked ones; records
    /// it misses keep their chunk marked for the next sweep.
    ///
    /// `candidates` is scratch space: with capacity for one entry per chunk
    /// ([`chunk_slots`](Self::chunk_slots)), made before the lock was
    /// taken, the plan allocates nothing.
    pub(super) fn plan_evacuation(&mut self, candidates: &mut Vec<(u32, u32)>) {
        if !self.is_sparse() {
            return;
        }
        let open = self.open.map(|(chunk, _)| chunk);
        candidates.clear();
        candidates.extend(
            self.chunks
                .iter()
                .enumerate()
                .filter(|&(i, c)| !c.places.is_empty() && !c.evacuating && Some(i as u32) != open)
                .map(|(i, c)| (c.live, i as u32)),
        );
        candidates.sort_unstable();
        let needed = self.live + self.live / 4 + LARGEST_CHUNK;
        // Chunks an earlier plan marked are leaving already (a sweep that
        // passed records over leaves them marked).
        let leaving: usize = self
            .chunks
            .iter()
            .filter(|c| c.evacuating)
            .map(|c| c.places.len())
            .sum();
        let mut kept = self.places - leaving;
        for &(live, i) in candidates.iter() {
            let chunk = &mut self.chunks[i as usize];
            if kept - chunk.places.len() < needed {
                break;
            }
            kept -= chunk.places.len();
            // Empty ones are marked only until they are unlisted below.
            chunk.evacuating = true;
            self.evacuating += usize::from(live > 0);
        }
        // No chunk that leaves may hand out a place.
        let chunks = &mut self.chunks;
        self.with_room.retain(|&i| {
            let chunk = &mut chunks[i as usize];
            chunk.listed = !chunk.evacuating;
            chunk.listed
        });
        for &(live, i) in candidates.iter() {
            if live == 0 && self.chunks[i as usize].evacuating {
                self.free_chunk(i);
            }
        }
    }

    /// Entries in the list of chunks, freed ones included: what the sweep
    /// sizes its scratch space by before it takes the lock.
    pub(super) fn chunk_slots(&self) -> usize {
        self.chunks.len()
    }

    /// Places in allocated chunks.
    #[cfg(test)]
    pub(super) fn places(&self) -> usize {
        self.places
    }

    /// Records held.
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.live
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::decision;
    use crate::{Fingerprint, IdempotencyKey};
    use std::time::Duration;

    fn record(i: usize) -> Record {
        let key = IdempotencyKey::new("t", format!("k{i}")).unwrap();
        decision::acquisition(
            None,
            false,
            &Fingerprint::of_bytes(b"body"),
            Timestamp::from_millis(0),
            Duration::from_secs(1),
            Duration::from_secs(1),
            i as u64 + 1,
        )
        .into_record(&key)
    }

    fn plan(slab: &mut RecordSlab) {
        slab.plan_evacuation(&mut Vec::new());
    }

    /// Relocates as a sweep does, with a spare chunk at hand.
    fn relocate(slab: &mut RecordSlab, at: SlabIndex) -> Option<SlabIndex> {
        match slab.relocate(at, &mut Some(RecordSlab::spare_chunk())) {
            Relocated::Moved(to) => Some(to),
            Relocated::Stays => None,
            Relocated::NeedsChunk => unreachable!("a spare was given"),
        }
    }

    fn token(slab: &RecordSlab, at: SlabIndex) -> u64 {
        slab.get(at).token
    }

    /// Walks the chunks and checks the slab's own tallies and lists
    /// against them.
    pub(in crate::store) fn check_tallies(slab: &RecordSlab) {
        let (mut live, mut places, mut evacuating) = (0, 0, 0);
        for (i, c) in slab.chunks.iter().enumerate() {
            let here = c
                .places
                .iter()
                .filter(|p| matches!(p, Place::Held(_)))
                .count();
            assert_eq!(here, c.live as usize, "a chunk's live count is off");
            live += here;
            places += c.places.len();
            evacuating += usize::from(c.evacuating);
            let vacant = slab.vacant_chunks.contains(&(i as u32));
            assert_eq!(vacant, c.places.is_empty(), "chunk {i}: vacant {vacant}");
            assert!(!(c.evacuating && here == 0), "an empty chunk stays marked");
            // Its list links exactly the places it handed out and freed.
            let handed_out = match slab.open {
                Some((open, used)) if open as usize == i => used,
                _ => c.places.len(),
            };
            let mut linked = std::collections::HashSet::new();
            let mut next = c.first_free;
            while next != NO_PLACE {
                assert!((next as usize) < handed_out, "chunk {i} links {next}");
                assert!(linked.insert(next), "chunk {i} links {next} twice");
                next = match c.places[next as usize] {
                    Place::Free { next } => next,
                    Place::Held(_) => panic!("chunk {i} links its taken place {next}"),
                };
            }
            let freed = c.places[..handed_out]
                .iter()
                .filter(|p| matches!(p, Place::Free { .. }))
                .count();
            assert_eq!(
                linked.len(),
                freed,
                "chunk {i}: a freed place is not linked"
            );
            let listed = slab.with_room.iter().filter(|&&l| l as usize == i).count();
            assert_eq!(
                listed,
                usize::from(c.listed),
                "chunk {i} listed {listed} times"
            );
            assert_eq!(
                c.listed,
                !c.evacuating && freed > 0,
                "chunk {i}: listed {}, evacuating {}, {freed} freed",
                c.listed,
                c.evacuating
            );
        }
        assert_eq!(live, slab.live);
        assert_eq!(places, slab.places);
        assert_eq!(evacuating, slab.evacuating);
        assert!(slab.with_room.capacity() >= slab.chunks.len());
        if let Some((open, used)) = slab.open {
            let c = &slab.chunks[open as usize];
            assert!(!c.evacuating && used <= c.places.len() && !c.places.is_empty());
        }
    }

    /// Live records in chunks marked for evacuation.
    pub(in crate::store) fn live_in_evacuating(slab: &RecordSlab) -> usize {
        slab.chunks
            .iter()
            .filter(|c| c.evacuating)
            .map(|c| c.live as usize)
            .sum()
    }

    /// A sweep that passed records over leaves their chunks marked, and
    /// writes may fill chunks meanwhile; the next plan must count what is
    /// already leaving and mark no full chunk.
    #[test]
    fn planning_again_while_chunks_are_leaving_keeps_full_chunks() {
        let mut slab = RecordSlab::default();
        let at: Vec<SlabIndex> = (0..20_000).map(|i| slab.insert(record(i))).collect();
        for (i, a) in at.iter().enumerate() {
            if i % 100 != 0 {
                slab.remove(*a).unwrap();
            }
        }
        let survivors: Vec<SlabIndex> = at.into_iter().step_by(100).collect();
        plan(&mut slab);
        let marked = live_in_evacuating(&slab);
        assert!(marked > 0);
        // The sweep moves nothing (a rehash put every survivor behind it);
        // writers add 3,000 records.
        let fresh: Vec<SlabIndex> = (0..3_000)
            .map(|i| slab.insert(record(100_000 + i)))
            .collect();
        plan(&mut slab);
        check_tallies(&slab);
        let full_marked = slab
            .chunks
            .iter()
            .filter(|c| c.evacuating && c.live as usize == c.places.len())
            .count();
        assert_eq!(full_marked, 0, "{full_marked} full chunks marked");
        let moved = survivors
            .iter()
            .chain(&fresh)
            .filter(|a| relocate(&mut slab, **a).is_some())
            .count();
        check_tallies(&slab);
        assert!(!slab.is_evacuating());
        assert!(
            moved <= marked + 2 * LARGEST_CHUNK,
            "{moved} records moved; {marked} were in marked chunks"
        );
    }

    #[test]
    fn an_evacuated_burst_gives_its_chunks_back() {
        let mut slab = RecordSlab::default();
        let mut at: Vec<SlabIndex> = (0..20_000).map(|i| slab.insert(record(i))).collect();
        let full = slab.places();
        // The burst expires but for one record in 100, spread over every
        // chunk.
        for (i, a) in at.iter().enumerate() {
            if i % 100 != 0 {
                slab.remove(*a).unwrap();
            }
        }
        at = at.into_iter().step_by(100).collect();
        check_tallies(&slab);
        assert!(slab.is_sparse());
        assert_eq!(slab.places(), full, "removing alone frees nothing");

        plan(&mut slab);
        assert!(slab.is_evacuating());
        check_tallies(&slab);
        // What a sweep does: every record it visits is relocated.
        let mut moved = 0;
        for (n, a) in at.iter_mut().enumerate() {
            let before = token(&slab, *a);
            if let Some(to) = relocate(&mut slab, *a) {
                *a = to;
                moved += 1;
            }
            assert_eq!(token(&slab, *a), before, "record {n} changed on the move");
        }
        check_tallies(&slab);
        assert!(moved > 150, "{moved} of 200 survivors moved");
        assert!(!slab.is_evacuating(), "every marked chunk was emptied");
        let record_size = std::mem::size_of::<Place>();
        let mut retired = Vec::new();
        assert_eq!(
            slab.take_retired(&mut retired),
            (full - slab.places()) * record_size
        );
        assert!(!retired.is_empty() && !slab.has_retired());
        assert_eq!(slab.take_retired(&mut retired), 0);
        assert!(!slab.is_sparse());
        assert!(
            slab.places() <= 200 + 200 / 4 + 2 * LARGEST_CHUNK,
            "{} places kept for 200 records",
            slab.places()
        );
        for (i, a) in at.iter().enumerate() {
            assert_eq!(token(&slab, *a), (i * 100) as u64 + 1);
        }
    }

    #[test]
    fn freed_chunks_are_reused_and_never_hand_out_a_taken_place() {
        let mut slab = RecordSlab::default();
        let mut live: Vec<(SlabIndex, u64)> = Vec::new();
        let mut next = 0usize;
        let mut chunks_after_first_burst = 0;
        // Bursts and quiet spells, with relocations between them, the way
        // writes and sweeps interleave.
        for round in 0..6 {
            let burst = if round % 2 == 0 { 5_000 } else { 300 };
            for _ in 0..burst {
                let a = slab.insert(record(next));
                next += 1;
                live.push((a, next as u64));
            }
            let keep_every = if round % 2 == 0 { 50 } else { 2 };
            let mut kept = Vec::new();
            for (k, (a, t)) in live.drain(..).enumerate() {
                if k % keep_every == 0 {
                    kept.push((a, t));
                } else {
                    slab.remove(a).unwrap();
                }
            }
            live = kept;
            plan(&mut slab);
            // Half the survivors are relocated before more writes come in.
            for (a, _) in live.iter_mut().step_by(2) {
                *a = relocate(&mut slab, *a).unwrap_or(*a);
            }
            for _ in 0..100 {
                let a = slab.insert(record(next));
                next += 1;
                live.push((a, next as u64));
            }
            for (a, _) in live.iter_mut() {
                *a = relocate(&mut slab, *a).unwrap_or(*a);
            }
            check_tallies(&slab);
            for (a, t) in &live {
                assert_eq!(
                    token(&slab, *a),
                    *t,
                    "round {round}: a record was overwritten"
                );
            }
            assert!(!slab.is_evacuating());
            assert!(!slab.is_sparse(), "round {round}: {} places", slab.places());
            if round == 0 {
                chunks_after_first_burst = slab.chunks.len();
            }
        }
        // The later bursts took the freed chunks' indices again.
        assert!(slab.chunks.len() <= chunks_after_first_burst + 2);
    }

    /// With no free place and the open chunk full, a move needs a spare
    /// chunk made outside the lock: without one the record stays put.
    #[test]
    fn a_move_with_no_place_ready_waits_for_a_spare_chunk() {
        let mut slab = RecordSlab::default();
        let mut at: Vec<SlabIndex> = (0..8_000).map(|i| slab.insert(record(i))).collect();
        for a in at.drain(..).skip(1).filter(|a| a.offset() % 64 != 0) {
            slab.remove(a).unwrap();
        }
        plan(&mut slab);
        assert!(slab.is_evacuating());
        // Writes take every free place and fill the open chunk.
        let mut n = 100_000;
        while !slab.with_room.is_empty() || slab.open_with_room().is_some() {
            slab.insert(record(n));
            n += 1;
        }
        let marked = slab
            .chunks
            .iter()
            .enumerate()
            .find(|(_, c)| c.evacuating && c.live > 0)
            .map(|(i, c)| {
                let offset = c
                    .places
                    .iter()
                    .position(|p| matches!(p, Place::Held(_)))
                    .unwrap();
                SlabIndex::new(i as u32, offset as u32)
            })
            .expect("a marked chunk with a record");
        let token_before = token(&slab, marked);
        let places_before = slab.places();
        assert_eq!(slab.relocate(marked, &mut None), Relocated::NeedsChunk);
        assert_eq!(token(&slab, marked), token_before);
        assert_eq!(slab.places(), places_before, "no chunk was allocated");
        let mut spare = Some(RecordSlab::spare_chunk());
        let Relocated::Moved(to) = slab.relocate(marked, &mut spare) else {
            panic!("a spare chunk was given")
        };
        assert!(spare.is_none());
        assert_eq!(token(&slab, to), token_before);
        check_tallies(&slab);
    }

    /// Freed places go back to their own chunk's list; the slab hands out
    /// the last listed chunk's places first, newest first, and unlists a
    /// chunk once its list is empty.
    #[test]
    fn freed_places_are_handed_out_chunk_by_chunk() {
        let mut slab = RecordSlab::default();
        // Two full chunks: 16 places, then 32.
        let at: Vec<SlabIndex> = (0..48).map(|i| slab.insert(record(i))).collect();
        assert_eq!((at[15].chunk(), at[16].chunk(), at[47].chunk()), (0, 1, 1));
        for i in [1, 5, 9, 20, 30] {
            slab.remove(at[i]).unwrap();
        }
        check_tallies(&slab);
        assert_eq!(slab.with_room, [0, 1]);
        let mut handed_out = Vec::new();
        for i in 0..6 {
            handed_out.push(slab.insert(record(100 + i)));
            check_tallies(&slab);
        }
        let expected: Vec<SlabIndex> = [30, 20, 9, 5, 1].iter().map(|&i| at[i]).collect();
        assert_eq!(handed_out[..5], expected[..]);
        assert_eq!(handed_out[5].chunk(), 2, "then a new chunk");
        assert!(slab.with_room.is_empty());
        for (i, a) in handed_out.iter().enumerate() {
            assert_eq!(token(&slab, *a), 100 + i as u64 + 1);
        }
    }

    /// Random inserts, removals, plans and relocations, in phases that
    /// fill the slab, empty most of it and fill it again, against a map of
    /// where each record is: every record keeps its place (or the one it
    /// was moved to) and its token, and the tallies and lists hold after
    /// every phase.
    #[test]
    fn random_work_keeps_every_record_and_every_list_true() {
        for seed in 1..=6u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: usize| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % n as u64) as usize
            };
            let mut slab = RecordSlab::default();
            let mut live: Vec<(SlabIndex, u64)> = Vec::new();
            let (mut made, mut moved, mut freed) = (0usize, 0usize, 0usize);
            for phase in 0..12 {
                // Filling phases insert more than they remove; draining
                // ones leave about a fifth of what was there, scattered.
                let draining = phase % 3 == 1;
                let (insert_in_8, ops) = if draining {
                    (1, live.len())
                } else {
                    (6, 3_000)
                };
                for _ in 0..ops {
                    match next(8) {
                        k if k < insert_in_8 => {
                            live.push((slab.insert(record(made)), made as u64 + 1));
                            made += 1;
                        }
                        _ if !live.is_empty() => {
                            let (at, t) = live.swap_remove(next(live.len()));
                            assert_eq!(slab.remove(at).map(|r| r.token), Some(t));
                        }
                        _ => {}
                    }
                }
                if draining || next(2) == 0 {
                    plan(&mut slab);
                }
                // A sweep visits some of the records (all, in most phases).
                let visited = if next(3) == 0 {
                    live.len() / 2
                } else {
                    live.len()
                };
                for (at, _) in live.iter_mut().take(visited) {
                    if let Some(to) = relocate(&mut slab, *at) {
                        *at = to;
                        moved += 1;
                    }
                }
                check_tallies(&slab);
                freed += slab.take_retired(&mut Vec::new());
                for &(at, t) in &live {
                    assert_eq!(token(&slab, at), t, "seed {seed}, phase {phase}");
                }
                assert_eq!(slab.live(), live.len());
            }
            assert!(
                moved > 0 && freed > 0,
                "seed {seed}: {moved} moved, {freed} B freed"
            );
        }
    }

    /// The link of a freed place fits beside the record's own niche.
    #[test]
    fn a_place_is_no_larger_than_an_optional_record() {
        assert_eq!(
            std::mem::size_of::<Place>(),
            std::mem::size_of::<Option<Record>>()
        );
    }

    #[test]
    fn a_small_slab_is_left_alone() {
        let mut slab = RecordSlab::default();
        let at: Vec<SlabIndex> = (0..400).map(|i| slab.insert(record(i))).collect();
        for a in &at[1..] {
            slab.remove(*a).unwrap();
        }
        assert!(
            !slab.is_sparse(),
            "two chunks of slack are not worth a move"
        );
        plan(&mut slab);
        assert!(!slab.is_evacuating());
    }
}
