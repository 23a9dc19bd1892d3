//! The boundary between the store's decisions and the storage under them.
//!
//! An engine only finds and stores records, atomically per identity. All
//! decisions are made by the caller's closure (which calls
//! [`crate::decision`]), so the in-memory, durable and sled engines cannot
//! disagree about outcomes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::decision::{Acquisition, Completion};
use crate::error::Result;
use crate::identity::{IdempotencyKey, IdentityHash};
use crate::record::Record;

/// An identity with its store-local hash, computed once per operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub(crate) key: &'a IdempotencyKey,
    pub(crate) hash: IdentityHash,
}

/// What a decision does to the stored record. Reserve's and complete's
/// changes carry only what they set, so engines holding records in memory
/// write them in place; [`Change::into_whole`] turns them into whole
/// records for the engines that store records whole.
#[derive(Debug)]
pub(crate) enum Change {
    /// Nothing.
    Keep,
    /// Nothing durable; the stored record was replayed (engines count it).
    Replayed,
    /// Make the identity's record (absent, expired or taken over) in flight.
    Acquire(Acquisition),
    /// Complete the record found (always present: only a held record is
    /// completed).
    Complete(Completion),
    /// Store this record in place of whatever was there (`extend`,
    /// `checkpoint`: rare enough that the box's allocation costs nothing
    /// that matters, and it keeps every `Change` small to move).
    Put(Box<Record>),
    /// Delete the record.
    Remove,
}

impl Change {
    /// The change as whole records, for engines that store them so.
    /// `found` is the record the decision saw; a completion without one
    /// (which the store never asks for: only a held record is completed)
    /// changes nothing.
    pub(crate) fn into_whole(self, key: &IdempotencyKey, found: Option<&Record>) -> WholeChange {
        match self {
            Change::Keep => WholeChange::Keep,
            Change::Replayed => WholeChange::Replayed,
            Change::Acquire(acquired) => WholeChange::Put(acquired.into_record(key)),
            Change::Complete(done) => match found {
                Some(held) => WholeChange::Put(done.applied_to(held)),
                None => {
                    debug_assert!(false, "a completion without a held record");
                    WholeChange::Keep
                }
            },
            Change::Put(record) => WholeChange::Put(*record),
            Change::Remove => WholeChange::Remove,
        }
    }
}

/// A [`Change`] in whole records.
#[derive(Debug)]
// `Put` is moved straight into storage; boxing it would add an allocation
// to every write.
#[allow(clippy::large_enum_variant)]
pub(crate) enum WholeChange {
    /// Nothing.
    Keep,
    /// Nothing durable; the stored record was replayed.
    Replayed,
    /// Store this record in place of whatever was there.
    Put(Record),
    /// Delete the record.
    Remove,
}

/// What must be durable before an engine's answer may be acted on (a
/// reservation used, a response replayed, a write acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an answer must not be acted on before its wait"]
pub(crate) enum Wait {
    /// Nothing: the answer is already as durable as the store asks.
    Ready,
    /// The durable log up to this position.
    Log(u64),
}

/// An engine's wait, as a future for async callers: the durable log's
/// `Sync` wait registers the task's waker with the group commit, so no
/// thread blocks while the fdatasync runs.
pub(crate) enum WaitFuture<'a> {
    /// Already settled, with this result (taken on the first poll).
    Done(Option<Result<()>>),
    /// Waiting for the durable log.
    Log(crate::log::DurableWait<'a>),
}

impl Future for WaitFuture<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.get_mut() {
            WaitFuture::Done(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            WaitFuture::Log(wait) => Pin::new(wait).poll(cx),
        }
    }
}

/// Engine-side figures for [`Stats`](crate::Stats).
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineStats {
    pub(crate) live_records: u64,
    pub(crate) in_flight: u64,
    pub(crate) segments: u64,
    pub(crate) bytes_on_disk: u64,
    pub(crate) bytes_live: u64,
    pub(crate) last_sync_latency: Option<Duration>,
    pub(crate) syncs: u64,
    pub(crate) records_synced: u64,
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceReport {
    /// Expired records removed from the index.
    pub expired: u64,
    /// Log segments deleted.
    pub segments_deleted: u64,
    /// Live records copied forward out of old segments.
    pub records_copied: u64,
    /// Bytes of disk space given back.
    pub bytes_reclaimed: u64,
    /// Deleted segments whose blocks the file system freed all at once
    /// when they were closed, rather than cut down in steps first: in a
    /// store that never syncs (whose removals are not durable), or where
    /// a cut failed. Each such close can hold up the log's syncs for as
    /// long as freeing the whole file takes.
    pub segments_freed_whole: u64,
    /// Live records the in-memory store moved out of sparse memory, so
    /// that what a burst of expired records held could be freed.
    pub records_moved: u64,
    /// Bytes of memory the in-memory store's own structures gave back to
    /// the allocator: emptied record chunks and shrunk tables. (Responses
    /// are freed with their records and not counted here.)
    pub memory_released: u64,
    /// True when the pass stopped at its work bound and more remains.
    pub more_work: bool,
    /// Time the pass rested between the cuts of deleted segments, leaving
    /// the disk to requests' syncs; its work took the rest of its length.
    pub rested: Duration,
}

/// Storage under a [`Store`](crate::Store).
pub(crate) trait Engine: Send + Sync + 'static {
    /// Reads the record of `id` (expired or not) and applies the change that
    /// `decide` returns, atomically with respect to every other call on the
    /// same identity. `decide` may be called more than once (optimistic
    /// engines retry); only the last call's change is applied. Returns what
    /// must become durable before the caller acts on the decision: the
    /// change itself, or the record `decide` saw, as the store's durability
    /// asks. The caller passes it to [`wait`](Self::wait) or
    /// [`wait_async`](Self::wait_async).
    fn update(
        &self,
        id: Identity<'_>,
        decide: &mut dyn FnMut(Option<&Record>) -> Change,
    ) -> Result<Wait>;

    /// Blocks until `wait` is settled.
    fn wait(&self, wait: Wait) -> Result<()> {
        let _ = wait;
        Ok(())
    }

    /// Settles `wait` without blocking the calling thread where the engine
    /// can (the durable log's `Sync` waits).
    fn wait_async(&self, wait: Wait) -> WaitFuture<'_> {
        WaitFuture::Done(Some(self.wait(wait)))
    }

    /// Whether `update` and `get` themselves block on the disk, so that an
    /// async caller must run them off its executor (sled's `Sync` flush).
    /// Engines that hand back a [`Wait`] instead say no.
    fn blocks_in_update(&self) -> bool {
        false
    }

    /// Whether `update` calls `decide` at most once. Callers then move
    /// owned data (a response) into the change instead of cloning it for a
    /// retry that cannot come.
    fn decides_once(&self) -> bool {
        true
    }

    /// The record of `id`, expired or not, and what must be durable before
    /// it is shown (a record written but not yet synced).
    fn get(&self, id: Identity<'_>) -> Result<(Option<Record>, Wait)>;

    /// Removes records expired at `now` and reclaims their space, bounded in
    /// work per call.
    fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport>;

    /// Current figures.
    fn stats(&self) -> EngineStats;

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// The store's last handle is going and waits for a maintenance pass
    /// under way: work that paces itself to spare requests (the durable
    /// log's release of deleted segments) may finish at full speed.
    fn hurry(&self) {}

    /// The largest fencing token found in storage when it was opened, so
    /// new tokens continue above it.
    fn max_token(&self) -> u64 {
        0
    }
}
