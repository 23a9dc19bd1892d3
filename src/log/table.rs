//! The hash table of one index shard: open addressing over groups of four
//! 16-byte entries, each group one 64-byte cache line. A probe walks group
//! by group from the hash's home group and stops at a group with an empty
//! slot. At millions of records the tables outgrow the caches, and a
//! lookup that misses costs one line here, where a table of control bytes
//! beside its entries costs two (the control group, then the entry).
//!
//! A slot is empty or a tombstone when its entry's offset is 0 or 1: real
//! entries point at frames, which start after the segment header.

use super::index::{table_hash, Entry};

/// Slots per group: 4 × 16 bytes = one cache line.
const GROUP: usize = 4;
const EMPTY: u32 = 0;
const TOMBSTONE: u32 = 1;
/// Groups in a table's first allocation.
const MIN_GROUPS: usize = 2;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Group([Entry; GROUP]);

impl Group {
    const EMPTY: Group = Group([Entry::vacant(EMPTY); GROUP]);

    fn has_empty(&self) -> bool {
        self.0.iter().any(|e| e.offset == EMPTY)
    }
}

fn is_live(e: &Entry) -> bool {
    e.offset > TOMBSTONE
}

/// Entries found by their 24-bit hash; several may share one.
#[derive(Default)]
pub(crate) struct EntryTable {
    groups: Vec<Group>,
    /// Live entries.
    len: usize,
    /// Slots holding a tombstone.
    tombstones: usize,
    /// Bumped by every rebuild, the only thing that moves an entry: a
    /// sweep made in steps knows from it whether the positions it has
    /// passed still hold the entries it saw.
    layout: u64,
}

impl EntryTable {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn slots(&self) -> usize {
        self.groups.len() * GROUP
    }

    /// The home group of `hash`: the top bits of its spread, so that every
    /// bit of the 24 takes part.
    fn home(&self, hash: u32) -> usize {
        let bits = self.groups.len().trailing_zeros();
        if bits == 0 {
            return 0;
        }
        (table_hash(hash) >> (64 - bits)) as usize
    }

    /// The entries whose hash is `hash`, in probe order.
    pub(crate) fn iter_hash(&self, hash: u32) -> Probe<'_> {
        Probe {
            table: self,
            hash,
            group: self.home(hash),
            slot: 0,
            left: self.groups.len(),
        }
    }

    /// Reads the first word of `hash`'s home group, so that a caller that
    /// knows which entries it will look up next can have their cache lines
    /// loaded side by side; returns it only so the load is not removed.
    pub(crate) fn touch(&self, hash: u32) -> u32 {
        self.groups
            .get(self.home(hash))
            .map_or(0, |g| g.0[0].offset)
    }

    /// The slot (group, index) of the first entry with `hash` for which
    /// `found` holds.
    fn position(&self, hash: u32, mut found: impl FnMut(&Entry) -> bool) -> Option<(usize, usize)> {
        let mask = self.groups.len().wrapping_sub(1);
        let mut g = self.home(hash);
        for _ in 0..self.groups.len() {
            let group = &self.groups[g];
            for (i, e) in group.0.iter().enumerate() {
                if is_live(e) && e.hash() == hash && found(e) {
                    return Some((g, i));
                }
            }
            if group.has_empty() {
                return None;
            }
            g = (g + 1) & mask;
        }
        None
    }

    pub(crate) fn find_mut(
        &mut self,
        hash: u32,
        found: impl FnMut(&Entry) -> bool,
    ) -> Option<&mut Entry> {
        let (g, i) = self.position(hash, found)?;
        Some(&mut self.groups[g].0[i])
    }

    /// Takes out the first entry with `hash` for which `found` holds.
    pub(crate) fn remove(&mut self, hash: u32, found: impl FnMut(&Entry) -> bool) -> Option<Entry> {
        let (g, i) = self.position(hash, found)?;
        Some(self.clear(g, i))
    }

    /// Empties slot `i` of group `g`. A group that already has an empty
    /// slot ends every probe that reaches it, so the slot can be empty
    /// too; otherwise probes must go on past it: a tombstone.
    fn clear(&mut self, g: usize, i: usize) -> Entry {
        let group = &mut self.groups[g];
        let marker = if group.has_empty() { EMPTY } else { TOMBSTONE };
        let e = std::mem::replace(&mut group.0[i], Entry::vacant(marker));
        self.len -= 1;
        self.tombstones += usize::from(marker == TOMBSTONE);
        e
    }

    /// Adds `e`, which no entry in the table is the same as.
    pub(crate) fn insert(&mut self, e: Entry) {
        debug_assert!(is_live(&e), "entries point after the segment header");
        // At most 3/4 of the slots in use, tombstones included, so probes
        // stay short and always meet an empty slot. Rebuilding clears the
        // tombstones: at the same size while the live entries fill at most
        // 3/8 of it, else at twice the size.
        if (self.len + self.tombstones + 1) * 4 > self.slots() * 3 {
            let groups = if self.groups.is_empty() {
                MIN_GROUPS
            } else if (self.len + 1) * 8 <= self.slots() * 3 {
                self.groups.len()
            } else {
                self.groups.len() * 2
            };
            self.resize(groups);
        }
        self.place(e);
    }

    /// Puts `e` in the first free slot of its probe; there is one.
    fn place(&mut self, e: Entry) {
        let mask = self.groups.len() - 1;
        let mut g = self.home(e.hash());
        loop {
            let group = &mut self.groups[g];
            if let Some(slot) = group.0.iter_mut().find(|s| !is_live(s)) {
                self.tombstones -= usize::from(slot.offset == TOMBSTONE);
                *slot = e;
                self.len += 1;
                return;
            }
            g = (g + 1) & mask;
        }
    }

    /// Moves the live entries into a table of `groups` groups (a power of
    /// two, or 0 when there are none).
    fn resize(&mut self, groups: usize) {
        let old = std::mem::replace(&mut self.groups, vec![Group::EMPTY; groups]);
        self.len = 0;
        self.tombstones = 0;
        self.layout += 1;
        for e in old.iter().flat_map(|g| g.0.iter()) {
            if is_live(e) {
                self.place(*e);
            }
        }
    }

    /// Keeps only the entries for which `keep` holds.
    #[cfg(test)]
    pub(crate) fn retain(&mut self, keep: impl FnMut(&Entry) -> bool) {
        self.retain_groups(0..self.groups.len(), keep);
        self.tidy();
    }

    /// How many groups the table has; a sweep walks them by index.
    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// Changes whenever entries move (see the field).
    pub(crate) fn layout(&self) -> u64 {
        self.layout
    }

    /// Keeps only the entries of the groups in `range` for which `keep`
    /// holds. Removing leaves tombstones and never moves an entry; call
    /// [`EntryTable::tidy`] once a sweep has passed every group.
    pub(crate) fn retain_groups(
        &mut self,
        range: std::ops::Range<usize>,
        mut keep: impl FnMut(&Entry) -> bool,
    ) {
        for g in range {
            for i in 0..GROUP {
                let e = self.groups[g].0[i];
                if is_live(&e) && !keep(&e) {
                    self.clear(g, i);
                }
            }
        }
    }

    /// Rebuilds the table after a sweep if it needs it. Many removals leave
    /// many tombstones, and probes would run long; after a burst has
    /// expired the table would hold memory it no longer needs. Rebuild at a
    /// size the live entries fill to at most 3/8.
    pub(crate) fn tidy(&mut self) {
        let sparse = self.len * 16 < self.slots() && self.groups.len() > MIN_GROUPS;
        if self.tombstones * 4 > self.slots() || sparse || (self.len == 0 && self.tombstones > 0) {
            let mut groups = if self.len == 0 { 0 } else { MIN_GROUPS };
            while groups > 0 && self.len * 8 > groups * GROUP * 3 {
                groups *= 2;
            }
            self.resize(groups);
        }
    }

    /// Every live entry, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.groups
            .iter()
            .flat_map(|g| g.0.iter())
            .filter(|e| is_live(e))
    }
}

/// The entries of one hash, walked along its probe.
pub(crate) struct Probe<'a> {
    table: &'a EntryTable,
    hash: u32,
    group: usize,
    slot: usize,
    /// Groups not yet walked.
    left: usize,
}

impl<'a> Iterator for Probe<'a> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        let groups = &self.table.groups;
        while self.left > 0 {
            let group = &groups[self.group];
            while self.slot < GROUP {
                let e = &group.0[self.slot];
                self.slot += 1;
                if is_live(e) && e.hash() == self.hash {
                    return Some(e);
                }
            }
            if group.has_empty() {
                self.left = 0;
                return None;
            }
            self.group = (self.group + 1) & (groups.len() - 1);
            self.slot = 0;
            self.left -= 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::writer::Loc;
    use std::collections::HashMap;

    fn entry(hash: u32, id: u32) -> Entry {
        Entry::new(
            hash,
            Loc {
                segment: 1,
                offset: 32 + id * 8,
                len: 40,
            },
            false,
            0,
        )
    }

    #[test]
    fn groups_are_one_cache_line() {
        assert_eq!(std::mem::size_of::<Group>(), 64);
        assert_eq!(std::mem::align_of::<Group>(), 64);
    }

    /// Random inserts, removals, retains and lookups against a map, with
    /// hashes drawn from a few bits so that most entries share one.
    #[test]
    fn behaves_as_a_multimap_under_random_operations() {
        let mut state = 0x1234_5678_9ABC_DEF1_u64;
        let mut rnd = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for hash_bits in [0u32, 2, 6, 24] {
            let mut t = EntryTable::default();
            let mut model: HashMap<u32, u32> = HashMap::new(); // id -> hash
            let mut next_id = 0;
            for step in 0..20_000 {
                match rnd(10) {
                    0..=4 => {
                        let hash = (rnd(1 << 24) as u32) & ((1u32 << hash_bits) - 1);
                        t.insert(entry(hash, next_id));
                        model.insert(next_id, hash);
                        next_id += 1;
                    }
                    5..=7 if !model.is_empty() => {
                        let id = *model.keys().nth(rnd(model.len() as u64) as usize).unwrap();
                        let hash = model.remove(&id).unwrap();
                        let want = entry(hash, id);
                        let got = t.remove(hash, |e| e.same_place(&want));
                        assert_eq!(got, Some(want), "step {step}");
                    }
                    8 if step % 97 == 0 => {
                        let cut = rnd(3) as u32;
                        t.retain(|e| (e.offset / 8) % 3 != cut);
                        model.retain(|&id, _| (32 + id * 8) / 8 % 3 != cut);
                    }
                    _ => {
                        let hash = (rnd(1 << 24) as u32) & ((1u32 << hash_bits) - 1);
                        let mut seen: Vec<u32> =
                            t.iter_hash(hash).map(|e| (e.offset - 32) / 8).collect();
                        let mut want: Vec<u32> = model
                            .iter()
                            .filter(|(_, &h)| h == hash)
                            .map(|(&id, _)| id)
                            .collect();
                        seen.sort_unstable();
                        want.sort_unstable();
                        assert_eq!(seen, want, "step {step}");
                    }
                }
                assert_eq!(t.len(), model.len());
                assert!((t.len() + t.tombstones) * 4 <= t.slots() * 3 || t.slots() == 0);
            }
            let mut all: Vec<u32> = t.iter().map(|e| (e.offset - 32) / 8).collect();
            all.sort_unstable();
            let mut want: Vec<u32> = model.keys().copied().collect();
            want.sort_unstable();
            assert_eq!(all, want);
            for (&id, &hash) in &model {
                let want = entry(hash, id);
                assert!(t.find_mut(hash, |e| e.same_place(&want)).is_some());
            }
        }
    }

    #[test]
    fn retain_gives_back_what_the_live_entries_do_not_need() {
        let mut t = EntryTable::default();
        for id in 0..1000 {
            t.insert(entry(id * 7919 % (1 << 24), id));
        }
        t.retain(|e| e.offset < 32 + 8 * 40);
        assert_eq!(t.len(), 40);
        assert_eq!(t.tombstones, 0);
        assert!(t.slots() <= 128, "{} slots kept for 40 entries", t.slots());
        t.retain(|_| false);
        assert_eq!(t.len(), 0);
        assert_eq!(t.slots(), 0);
        assert!(t.iter_hash(0).next().is_none());
        t.insert(entry(5, 1));
        assert_eq!(t.iter_hash(5).count(), 1);
    }
}
