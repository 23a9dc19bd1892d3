//! Zero-filling the head segment ahead of the log, for `Durability::Sync`.
//!
//! Segments are preallocated with `fallocate`, which leaves their blocks
//! "unwritten": the first `fdatasync` after a write into such a block must
//! also commit the file system's journal to record the block as written.
//! With `Sync`, every group commit would pay that. A thread here keeps a few
//! MiB past the write position already written with zeros and synced, so
//! the log's syncs flush data only (ext4 on this project's test machine:
//! 64 `Sync` callers +17–19 % pairs/s, measured side by side).
//!
//! Zeros past the last frame read exactly like the preallocated region
//! they replace, so recovery and the format are unchanged.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::segment::Segment;
use super::writer::Log;

/// How far past the write position the prefill keeps the segment written.
const AHEAD: u64 = 8 << 20;
/// Bytes of zeros per write; the log's writers wait for one such write at
/// most, so it stays small.
const CHUNK: usize = 128 << 10;
/// Zeros written between two syncs of them.
const SYNC_EVERY: u64 = 1 << 20;
/// How often an idle prefill looks at the write position again.
const POLL: Duration = Duration::from_millis(5);

/// Starts the prefill thread; it stops when `stop` is closed, or for good
/// once the log is poisoned.
pub(crate) fn spawn_prefill(log: Arc<Log>, stop: Receiver<()>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("idemlog-prefill".into())
        .spawn(move || run(&log, &stop))
}

fn run(log: &Log, stop: &Receiver<()>) {
    let zeros = vec![0u8; CHUNK];
    let mut frontier = (0u32, 0u64);
    // Zeros written but not yet synced, and the segment they are in.
    let mut unsynced: Option<(Arc<Segment>, u64)> = None;
    loop {
        match log.prefill_step(&mut frontier, &zeros, AHEAD) {
            Ok(Some((segment, len))) => {
                let pending = match unsynced.take() {
                    Some((s, n)) if s.id == segment.id => n + len,
                    Some((s, _)) => {
                        // The log rolled: finish the old segment's zeros.
                        if log.sync_segment(&s).is_err() {
                            return;
                        }
                        len
                    }
                    None => len,
                };
                if pending >= SYNC_EVERY {
                    if log.sync_segment(&segment).is_err() {
                        return;
                    }
                } else {
                    unsynced = Some((segment, pending));
                }
            }
            Ok(None) => {
                if let Some((segment, _)) = unsynced.take() {
                    if log.sync_segment(&segment).is_err() {
                        return;
                    }
                }
                if stop.recv_timeout(POLL) != Err(crossbeam_channel::RecvTimeoutError::Timeout) {
                    return;
                }
            }
            // Poisoned: every later write fails anyway.
            Err(_) => return,
        }
        if matches!(
            stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        ) {
            return;
        }
    }
}
