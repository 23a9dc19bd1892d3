//! The durable engine: an append-only log of checksummed frames in segment
//! files, an in-memory index of where each identity's record is, group
//! commit, recovery and space reclamation. `docs/FORMAT.md` has the byte
//! layout and the crash-safety arguments.
//!
//! * [`format`](mod@format) — bytes on disk;
//! * [`fs`] — the file I/O trait (public, for fault injection);
//! * [`segment`] — segment files;
//! * [`writer`] — the write path and the group-commit thread;
//! * [`prefill`] — zeros written ahead of the log before `Sync` syncs;
//! * [`index`] — the compact in-memory index;
//! * [`recovery`] — rebuilding the index on open;
//! * [`reclaim`] — expiry and deleting / compacting old segments;
//! * [`lock`] — one process per directory;
//! * [`engine`] — all of it behind the store's `Engine` trait.

pub(crate) mod engine;
pub(crate) mod format;
pub mod fs;
pub(crate) mod index;
pub(crate) mod lock;
pub(crate) mod prefill;
pub(crate) mod reclaim;
pub(crate) mod recovery;
pub(crate) mod segment;
pub(crate) mod table;
pub(crate) mod writer;

pub(crate) use engine::LogEngine;
pub(crate) use writer::DurableWait;
