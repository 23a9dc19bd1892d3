//! The one error type of idemlog.
//!
//! Losing a race is not an error: [`reserve`](crate::Store::reserve) answers
//! with an [`Outcome`](crate::Outcome). `Err` is kept for what the caller must
//! act on: input that breaks a limit, a reservation whose lease was taken
//! over, I/O failures, corrupt or foreign files.

use std::path::PathBuf;

pub use crate::fingerprint::CanonicalJsonError;

/// Shorthand for `Result<T, idemlog::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in idemlog. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The client's idempotency key is empty.
    #[error("the idempotency key is empty: send a key of 1 to {limit} visible ASCII characters")]
    EmptyKey {
        /// The configured maximum key length in bytes.
        limit: usize,
    },

    /// The client's idempotency key is longer than the configured limit.
    #[error("the idempotency key is {len} bytes long, over the limit of {limit} bytes (Limits::max_key_len): send a shorter key, such as a UUID")]
    KeyTooLong {
        /// The key's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The key contains a byte outside visible ASCII (0x20..=0x7E).
    #[error("the idempotency key has byte 0x{byte:02x} at position {position}, outside the allowed alphabet of visible ASCII (0x20..=0x7E, as in an RFC 8941 sf-string): use letters, digits and punctuation only")]
    InvalidKeyByte {
        /// The offending byte.
        byte: u8,
        /// Its position in the key, from 0.
        position: usize,
    },

    /// The scope is longer than the configured limit.
    #[error("the scope is {len} bytes long, over the limit of {limit} bytes (Limits::max_scope_len): use a shorter tenant or route identifier, or raise the limit")]
    ScopeTooLong {
        /// The scope's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A response is larger than the configured limit.
    #[error("the response is {len} bytes, over the storage limit of {limit} bytes (Limits::max_response_len): raise the limit or do not store this response")]
    ResponseTooLarge {
        /// The response's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A checkpoint is larger than the configured limit.
    #[error("the checkpoint is {len} bytes, over the limit of {limit} bytes (Limits::max_checkpoint_len): store a smaller recovery point, such as an id and a phase")]
    CheckpointTooLarge {
        /// The checkpoint's length in bytes.
        len: usize,
        /// The configured limit.
        limit: usize,
    },

    /// Writing would take the store over its configured disk budget.
    #[error("the store would use {needed} bytes on disk, over its budget of {budget} bytes (Config::disk_budget): lower the TTL, run maintenance, or raise the budget")]
    DiskBudgetExceeded {
        /// The configured budget in bytes.
        budget: u64,
        /// The bytes the store would use after this write.
        needed: u64,
    },

    /// The reservation no longer holds the record: its lease ran out and
    /// another caller took the record over, or the record was released or
    /// expired. Nothing was changed.
    #[error("this reservation lost its lease (fencing token {held}, current {}): another caller owns the record now, so do not store or send this result", current.map_or_else(|| "none: the record was released or expired".to_string(), |t| t.to_string()))]
    LeaseLost {
        /// The fencing token this reservation holds.
        held: u64,
        /// The record's current fencing token, if the record still exists.
        current: Option<u64>,
    },

    /// A body declared as JSON could not be canonicalized for fingerprinting.
    #[error("cannot fingerprint the body as canonical JSON: {0}")]
    CanonicalJson(#[from] CanonicalJsonError),

    /// An I/O operation on the data directory failed.
    #[error("{context}: {source}")]
    Io {
        /// What idemlog was doing, naming the file.
        context: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A data file failed its checksum or framing checks somewhere other than
    /// a torn tail.
    #[error("{} is corrupt at byte offset {offset}: {reason}; restore the directory from a backup, or open it with Config::repair to move the damaged file aside", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first bad byte or frame.
        offset: u64,
        /// What check failed.
        reason: String,
    },

    /// A file in the data directory is not an idemlog file.
    #[error("{} is not an idemlog data file (bad magic number): point Store::open at a directory that only idemlog writes to", file.display())]
    NotIdemlogFile {
        /// The foreign file.
        file: PathBuf,
    },

    /// A data file was written by a newer format version.
    #[error("{} has format version {found}, but this build of idemlog reads only version {supported}: upgrade idemlog to open it", file.display())]
    UnsupportedFormatVersion {
        /// The file.
        file: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },

    /// Another store (in this or another process) has the directory open.
    #[error("the data directory {} is locked by another open store (in this or another process): close that store first, or give each process its own directory", dir.display())]
    Locked {
        /// The data directory.
        dir: PathBuf,
    },

    /// The data directory path exists but cannot be used as one.
    #[error("{} cannot be used as a data directory: {reason}", path.display())]
    BadDirectory {
        /// The path given to `Store::open`.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },

    /// A write or sync failed earlier, so the store no longer accepts writes.
    #[error("the store is poisoned after an earlier failure ({cause}) and accepts no more writes: drop it and reopen the directory, which recovers every acknowledged operation")]
    Poisoned {
        /// The failure that poisoned the store.
        cause: String,
    },

    /// A remote backend (Redis, ...) failed or answered something unexpected.
    #[error("the {backend} backend failed: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What went wrong and what to check.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

impl Error {
    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the caller's input broke a rule or a limit (a client error,
    /// in HTTP terms), as opposed to a failure of the store.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::EmptyKey { .. }
                | Error::KeyTooLong { .. }
                | Error::InvalidKeyByte { .. }
                | Error::ScopeTooLong { .. }
                | Error::ResponseTooLarge { .. }
                | Error::CheckpointTooLarge { .. }
                | Error::CanonicalJson(_)
        )
    }
}

/// A sticky failure (SPEC §4): once set, every check fails with the first
/// cause recorded. The store and the durable log each keep one.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    set: std::sync::atomic::AtomicBool,
    cause: parking_lot::Mutex<Option<String>>,
}

impl Poison {
    pub(crate) fn is_set(&self) -> bool {
        self.set.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Fails with `Poisoned` once set. Inlined, with the failure out of
    /// line: it runs several times per operation, where a call cost more
    /// than the flag's load.
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_set() {
            return Err(self.error());
        }
        Ok(())
    }

    #[cold]
    fn error(&self) -> Error {
        let cause = self.cause.lock().clone().unwrap_or_default();
        Error::Poisoned { cause }
    }

    /// Sets the poison, keeping the first cause if one was recorded, and
    /// returns the error callers see from now on.
    pub(crate) fn set(&self, cause: String) -> Error {
        let cause = self.cause.lock().get_or_insert(cause).clone();
        self.set.store(true, std::sync::atomic::Ordering::Release);
        Error::Poisoned { cause }
    }
}
