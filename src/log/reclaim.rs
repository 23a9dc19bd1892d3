//! Maintenance: expire index entries, then give disk space back.
//!
//! Segments are only ever deleted oldest first. That is what makes a crash
//! at any step safe: every frame that supersedes, deletes (tombstone) or
//! outlives a frame of the oldest segment lies in a later segment, so
//! deleting the oldest segment can never bring back an older version of a
//! record, and a record whose newest version has expired stays expired.
//! Before a deletion the log is flushed (and synced, unless the durability
//! is `None`), so the later frames are on disk first, and each deletion is
//! made durable (directory fsync) before the next one.
//!
//! The oldest segment is deleted once nothing in it is live. While any of
//! its live records expires within the horizon ([`horizon`]), the pass
//! waits for them: under a uniform TTL the oldest segment holds the oldest
//! records in the store, which free their space soon anyway, and copying
//! them would mix soon-dead records into the head, so that later segments
//! go half dead early and are copied again. Once only records that outlive
//! the horizon keep it (a longer per-request TTL than their neighbours', or
//! neighbours superseded rather than expired), its live frames are copied
//! verbatim to the head of the log when at least half of it is dead (a
//! third, while the log takes more than 1.5 times its live bytes), bounded
//! bytes per pass.

use std::time::Duration;

use parking_lot::MutexGuard;

use super::engine::LogEngine;
use super::index::{Entry, LiveBySegment, SegmentLive, ShardSweep};
use super::segment::Segment;
use crate::clock::Timestamp;
use crate::error::Result;
use crate::store::engine::MaintenanceReport;

/// Most segments deleted in one pass.
const MAX_DELETIONS: usize = 64;

/// The reclaim horizon for a store whose TTL is `ttl`: an eighth of it.
/// A record that expires within it is not worth copying: under steady load
/// (what is live is what was written in one TTL) the log takes in at most
/// an eighth of its live bytes before the record's space comes back by
/// itself. A record with longer to live, left alone in an old segment,
/// would pin the segment (and every later one) for longer, so it is copied.
pub(super) fn horizon(ttl: Duration) -> Duration {
    ttl / 8
}

pub(super) fn maintain(engine: &LogEngine, now: Timestamp) -> Result<MaintenanceReport> {
    let _pass = engine.reclaiming.lock();
    engine.log.check()?;
    let mut report = MaintenanceReport::default();
    // The segments, read after the head so the list holds it. Only a pass
    // deletes segments, and those rolled later lie past the head, which
    // the pass never frees: one list serves both steps.
    let head = engine.log.head_id();
    let segments: Vec<(u32, u64)> = engine
        .log
        .segments
        .read()
        .values()
        .map(|s| (s.id, s.size))
        .collect();
    let span = segments
        .first()
        .map_or(0, |&(oldest, _)| head.wrapping_sub(oldest) as usize + 1);
    // 1. Expire entries, one shard at a time and each in steps (see
    //    `ShardSweep`), and count live bytes per segment, and those of them
    //    that expire within the horizon.
    let mut live = LiveBySegment::new(head, span);
    let soon = now.saturating_add(engine.reclaim_horizon);
    for shard in engine.shards.iter() {
        let mut sweep = ShardSweep::new(now, soon, head, span);
        loop {
            let mut guard = shard.lock();
            if sweep.step(&mut guard) {
                break;
            }
            // Hand the lock to a request waiting for it, if any, rather
            // than take it straight back.
            MutexGuard::unlock_fair(guard);
        }
        report.expired += sweep.expired;
        live.absorb(&sweep.live);
    }
    // 2. Free the oldest segments.
    let copy_budget = segments.first().map_or(0, |s| s.1);
    let live_total = live.total_bytes();
    let on_disk = engine.log.bytes_on_disk();
    let mut copied = 0u64;
    let mut doomed = Vec::new();
    for &(id, size) in &segments {
        if id == head {
            break;
        }
        if doomed.len() >= MAX_DELETIONS {
            report.more_work = true;
            break;
        }
        let SegmentLive {
            bytes: live_bytes,
            expiring,
        } = live.get(id);
        if live_bytes == 0 {
            doomed.push(id);
            continue;
        }
        // Records that expire within the horizon free it soon without a
        // copy; later segments wait behind it.
        if expiring > 0 {
            break;
        }
        // Copy forward when at least half the segment is dead, or a third
        // while the log is over 1.5 times its live bytes.
        let over = on_disk * 2 > live_total * 3;
        let worth = if over {
            live_bytes * 3 <= size * 2
        } else {
            live_bytes * 2 <= size
        };
        if !worth {
            break;
        }
        if copied > 0 && copied + live_bytes > copy_budget {
            report.more_work = true;
            break;
        }
        let seg = engine.log.segment(id)?;
        let (records, bytes) = copy_forward(engine, &seg)?;
        report.records_copied += records;
        copied += bytes;
        doomed.push(id);
    }
    if doomed.is_empty() {
        return Ok(report);
    }
    // Later frames (including the copies) and the token floor reach the
    // disk before any segment goes.
    engine.log.persist_token_floor()?;
    for id in doomed {
        let deleted = engine.log.delete_segment(id)?;
        report.bytes_reclaimed += deleted.bytes;
        report.segments_freed_whole += u64::from(deleted.freed_whole);
        report.rested += deleted.rested;
        report.segments_deleted += 1;
    }
    Ok(report)
}

/// Records copied forward per hold of a shard's lock. A copy appends a
/// frame to the log (~0.6 µs on the development VM); a whole shard's
/// share of a burst's survivors in one hold (~600 at 1 M records) kept
/// requests to the shard waiting 0.4–0.7 ms.
const COPIES_PER_HOLD: usize = 32;

/// Copies every live frame of `seg` to the head of the log, one shard at a
/// time; returns the frames and bytes copied.
fn copy_forward(engine: &LogEngine, seg: &Segment) -> Result<(u64, u64)> {
    copy_forward_between(engine, seg, &mut || {})
}

/// [`copy_forward`], calling `between` before each hold in which it copies
/// (when requests may change the shard: tests change it there).
///
/// A shard's entries in the segment are listed under its lock, their
/// frames read without it (the segment is sealed, and only this pass
/// deletes it), and copied [`COPIES_PER_HOLD`] at a time, each only if its
/// entry still points at the frame read: one superseded or removed
/// meanwhile would come back if copied.
fn copy_forward_between(
    engine: &LogEngine,
    seg: &Segment,
    between: &mut dyn FnMut(),
) -> Result<(u64, u64)> {
    let (mut records, mut bytes) = (0, 0);
    let mut frames = Vec::with_capacity(COPIES_PER_HOLD);
    for shard in engine.shards.iter() {
        let movers: Vec<(Entry, u32)> = {
            let s = shard.lock();
            let head = engine.log.head_id();
            s.table
                .iter()
                .filter(|e| e.segment(head) == seg.id)
                .map(|e| (*e, s.frame_len(e)))
                .collect()
        };
        for batch in movers.chunks(COPIES_PER_HOLD) {
            // Checked on the way, so corruption is never copied.
            frames.clear();
            for &(old, len) in batch {
                frames.push(seg.read_frame(old.offset, len)?);
            }
            between();
            let mut guard = shard.lock();
            let s = &mut *guard;
            for ((old, _), frame) in batch.iter().zip(&frames) {
                if !s.table.iter_hash(old.hash()).any(|e| e.same_place(old)) {
                    continue;
                }
                let loc = engine.log.append(frame)?;
                s.move_entry(old, loc);
                s.last_end = loc.end();
                records += 1;
                bytes += u64::from(loc.len);
            }
            MutexGuard::unlock_fair(guard);
        }
    }
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use super::{copy_forward_between, COPIES_PER_HOLD};
    use crate::clock::Timestamp;
    use crate::config::{Config, Durability};
    use crate::decision::acquisition;
    use crate::fingerprint::Fingerprint;
    use crate::fs::OsFileSystem;
    use crate::identity::IdentityHasher;
    use crate::log::engine::LogEngine;
    use crate::store::engine::{Change, Engine, Identity};
    use crate::IdempotencyKey;

    const HOUR: Duration = Duration::from_secs(3_600);

    fn now() -> Timestamp {
        Timestamp::from_millis(1_000_000)
    }

    /// An engine whose clock stays at [`now`] (a reopen drops records
    /// expired by the clock).
    fn open(dir: &Path, hasher: &IdentityHasher) -> LogEngine {
        let config = Config::builder()
            .clock(crate::clock::ManualClock::new(now()))
            .durability(Durability::None)
            .maintenance_interval(None)
            .shards(1)
            .segment_size(16 << 10)
            .build();
        LogEngine::open(dir, &config, Arc::new(OsFileSystem), hasher).unwrap()
    }

    fn key(i: usize) -> IdempotencyKey {
        IdempotencyKey::new("t", format!("k{i}")).unwrap()
    }

    fn id<'a>(key: &'a IdempotencyKey, hasher: &IdentityHasher) -> Identity<'a> {
        Identity {
            key,
            hash: hasher.hash(key),
        }
    }

    /// Reserves key `i` (taking it over if held) with fencing token
    /// `token`.
    fn acquire(engine: &LogEngine, hasher: &IdentityHasher, i: usize, token: u64) {
        let key = key(i);
        let fp = Fingerprint::of_bytes(b"body");
        let wait = engine
            .update(id(&key, hasher), &mut |found| {
                Change::Acquire(acquisition(found, true, &fp, now(), HOUR, HOUR, token))
            })
            .unwrap();
        engine.wait(wait).unwrap();
    }

    fn remove(engine: &LogEngine, hasher: &IdentityHasher, i: usize) {
        let key = key(i);
        let wait = engine
            .update(id(&key, hasher), &mut |_| Change::Remove)
            .unwrap();
        engine.wait(wait).unwrap();
    }

    fn token(engine: &LogEngine, hasher: &IdentityHasher, i: usize) -> Option<u64> {
        let key = key(i);
        engine.get(id(&key, hasher)).unwrap().0.map(|r| r.token)
    }

    /// Copies are made a few at a time with the lock let go in between,
    /// and requests may remove or supersede a record whose frame was read
    /// for copying: that frame must not be copied, or it would bring the
    /// old version back (the later frame wins when the log is read again).
    #[test]
    fn a_record_changed_between_copies_is_not_copied() {
        let dir = tempfile::tempdir().unwrap();
        let hasher = IdentityHasher::new();
        let engine = open(dir.path(), &hasher);
        let n = 400;
        for i in 0..n {
            acquire(&engine, &hasher, i, i as u64 + 1);
        }
        let seg = engine.log.segments.read().values().next().cloned().unwrap();
        let in_oldest = |engine: &LogEngine| {
            let head = engine.log.head_id();
            engine.shards[0]
                .lock()
                .table
                .iter()
                .filter(|e| e.segment(head) == seg.id)
                .count()
        };
        let movers = in_oldest(&engine);
        assert!(
            movers > 2 * COPIES_PER_HOLD,
            "{movers} records in the oldest segment"
        );
        // Keys 0 and 1 were written first, into the oldest segment.
        let mut holds = 0;
        let (copied, _) = copy_forward_between(&engine, &seg, &mut || {
            if holds == 0 {
                remove(&engine, &hasher, 0);
                acquire(&engine, &hasher, 1, 10_000);
            }
            holds += 1;
        })
        .unwrap();
        assert!(holds >= 3, "{holds} holds");
        assert_eq!(copied as usize, movers - 2);
        assert_eq!(
            in_oldest(&engine),
            0,
            "an entry still points into the segment"
        );
        let check = |engine: &LogEngine| {
            assert_eq!(
                token(engine, &hasher, 0),
                None,
                "a removed record came back"
            );
            assert_eq!(token(engine, &hasher, 1), Some(10_000));
            for i in 2..n {
                assert_eq!(token(engine, &hasher, i), Some(i as u64 + 1), "key {i}");
            }
        };
        check(&engine);
        engine.flush().unwrap();
        drop(engine);
        check(&open(dir.path(), &hasher));
    }
}
