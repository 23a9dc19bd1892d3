//! Zero-filling the head segment ahead of the log, for `Durability::Sync`.
//!
//! Segments are preallocated with `fallocate`, which leaves their blocks
//! "unwritten": an `fdatasync` that flushes the first write into such a
//! block must also record the block as written (a journal commit on ext4).
//! With `Sync` every group commit would pay that. So before a sync, when
//! less than half a step of zeros lies ahead of the last frame, the syncing
//! thread writes the next step of zeros past it: that one sync records the
//! whole step's blocks as written, and the syncs after it flush data only.
//!
//! The zeros are written by whichever thread syncs, under the log's I/O
//! lock, never by a thread of their own. An earlier design had a prefill
//! thread writing zeros a few MiB ahead and syncing them by itself; the
//! log's syncs then kept flushing its not-yet-synced zeros and their block
//! conversions (compare's `disk-64-zeroing` row against `disk-64` measures
//! what that costs a sync).
//!
//! Steps start at 1 MiB and double up to 16 MiB, so a store that writes
//! little writes few zeros, and a busy one pays the slower sync that
//! carries a step about once every 8 MiB of log. Zeros past the last frame
//! read exactly like the preallocated region they replace, so recovery and
//! the format are unchanged.

use std::io;

use super::segment::Segment;

/// The first step of zeros in a store's life.
const FIRST_STEP: u64 = 1 << 20;
/// The largest step.
const MAX_STEP: u64 = 16 << 20;
/// Zeros start on a file-system block boundary: the block holding the last
/// frame already holds data.
const BLOCK: u64 = 4096;

/// A source of zeros for the writes (in `.bss`: no memory until read).
static ZEROS: [u8; 1 << 18] = [0; 1 << 18];

/// How far the head segment is known to be written.
#[derive(Debug)]
pub(crate) struct Prefill {
    /// The segment `zeroed_to` is in; another id means "not yet".
    segment: u32,
    /// Offset up to which the segment holds frames or written zeros.
    zeroed_to: u64,
    step: u64,
}

impl Prefill {
    pub(crate) fn new() -> Prefill {
        Prefill {
            segment: 0,
            zeroed_to: 0,
            step: FIRST_STEP,
        }
    }

    /// Before a sync of `head` whose frames end at `end`: writes the next
    /// step of zeros past `end` if less than half a step is left. Returns
    /// the bytes written. The caller holds the log's I/O lock, so nothing
    /// else writes to the file meanwhile, and every later frame lands at or
    /// after `end`, over zeros.
    pub(crate) fn write_ahead(&mut self, head: &Segment, end: u32) -> io::Result<u64> {
        let end = u64::from(end);
        let zeroed_to = if self.segment == head.id {
            self.zeroed_to
        } else {
            0
        };
        if zeroed_to >= head.size || zeroed_to >= end + self.step / 2 {
            return Ok(0);
        }
        let start = zeroed_to.max(end.next_multiple_of(BLOCK));
        let stop = head.size.min(start + self.step).max(start);
        let mut at = start;
        while at < stop {
            let len = (stop - at).min(ZEROS.len() as u64);
            head.file.write_all_at(&ZEROS[..len as usize], at)?;
            at += len;
        }
        self.segment = head.id;
        self.zeroed_to = stop;
        self.step = (self.step * 2).min(MAX_STEP);
        Ok(stop - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::fs::OsFileSystem;

    fn segment(dir: &std::path::Path, id: u32, size: u64) -> Segment {
        Segment::create(&OsFileSystem, dir, id, size, false).unwrap()
    }

    #[test]
    fn steps_start_past_the_last_frame_double_and_stop_at_the_segment_end() {
        let dir = tempfile::tempdir().unwrap();
        let head = segment(dir.path(), 1, 40 << 20);
        let mut p = Prefill::new();
        // The first sync zeros 1 MiB from the block after the frames.
        assert_eq!(p.write_ahead(&head, 100).unwrap(), FIRST_STEP);
        assert_eq!(p.zeroed_to, BLOCK + FIRST_STEP);
        // At least half the next step (2 MiB) left: nothing.
        assert_eq!(p.write_ahead(&head, 2_000).unwrap(), 0);
        // Less than that left: the next step, doubled, continues where the
        // zeros end.
        let end = (BLOCK + FIRST_STEP - 100) as u32;
        assert_eq!(p.write_ahead(&head, end).unwrap(), 2 << 20);
        assert_eq!(p.zeroed_to, BLOCK + FIRST_STEP + (2 << 20));
        // The step stops growing at MAX_STEP and the zeros at the end of
        // the segment.
        let mut written = 3 << 20;
        for _ in 0..10 {
            let end = p.zeroed_to.saturating_sub(1) as u32;
            written += p.write_ahead(&head, end).unwrap();
            assert!(p.step <= MAX_STEP);
        }
        assert_eq!(p.zeroed_to, 40 << 20);
        assert_eq!(p.write_ahead(&head, (40 << 20) - 10).unwrap(), 0);
        assert!(written <= 40 << 20);
    }

    #[test]
    fn a_new_head_starts_over_and_zeros_never_cover_frames() {
        let dir = tempfile::tempdir().unwrap();
        let first = segment(dir.path(), 1, 8 << 20);
        let mut p = Prefill::new();
        p.write_ahead(&first, 5000).unwrap();
        let second = segment(dir.path(), 2, 8 << 20);
        // Frames up to 9000 in the new head: zeros start at the next block.
        let frames = vec![0xA5u8; 9000 - 32];
        second.file.write_all_at(&frames, 32).unwrap();
        assert_eq!(p.write_ahead(&second, 9000).unwrap(), 2 << 20);
        let mut back = vec![0u8; frames.len()];
        second.file.read_exact_at(&mut back, 32).unwrap();
        assert_eq!(back, frames);
        assert_eq!(p.zeroed_to, 3 * BLOCK + (2 << 20));
    }
}
