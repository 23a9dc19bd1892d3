//! sled: idempotency records in a `sled::Tree` the application passes in
//! (feature `sled`), for applications that already keep their data in sled.
//!
//! The engine only finds and stores records; every decision is the store's
//! ([`crate::decision`]), so a sled-backed [`Store`] behaves exactly like the
//! in-memory one and passes the same conformance suite. Reservations are a
//! `compare_and_swap` loop: read the record, decide, swap in the result if
//! the record is still what was read, otherwise decide again.
//!
//! An application can complete a record in the same sled transaction that
//! writes its own data ([`Store::complete_in_sled_transaction`]), so the
//! data and the stored response commit together or not at all.
//!
//! # Layout
//!
//! The tree must be idemlog's alone (`db.open_tree("idempotency")`). Keys:
//!
//! * `0x00 "format"` → `"idemlog\0"`, then the layout version as `u32` LE
//!   (1). An unknown version is refused.
//! * `0x00 "tokens"` → `u64` LE: every fencing token handed out is below it.
//!   It is raised (by blocks) before a record with a higher token is
//!   written, so tokens keep rising after a reopen even when the records
//!   that held the highest tokens were released or expired.
//! * `0x01`, scope length `u32` LE, scope, key → the record. The prefix
//!   length makes the key injective: no two identities share a key.
//!
//! A record's value, all integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | layout version (1) |
//! | 1 | state: 0 in flight, 1 completed |
//! | 1 | fingerprint algorithm id |
//! | 32 | fingerprint digest |
//! | 8 | created_at (ms since the epoch) |
//! | 8 | expires_at |
//! | 8 | fencing token |
//! | 4 | attempts |
//! | 8 | replays |
//! | 8 | lease_until (in flight) or completed_at (completed) |
//! | 4 + n | scope length, scope |
//! | 4 + n | key length, key |
//! | 1 [+ 4 + n] | checkpoint present (0/1) [, length, checkpoint] |
//! | 4 + n | response length, response (completed records only) |
//!
//! The full identity is in the value too, and is checked against the key on
//! every read. Nothing may follow the last field.
//!
//! # Durability
//!
//! With [`Durability::Sync`] an operation returns after `Tree::flush`; calls
//! that arrive while a flush runs share the next one (group commit), and an
//! operation that reads a record written but not yet flushed flushes before
//! answering, so nothing is replayed before it is durable. `Buffered` and
//! `None` leave flushing to sled's own background flush
//! (`sled::Config::flush_every_ms`, 500 ms by default). A failed flush
//! poisons the engine: later operations fail until the tree is reopened.
//!
//! # Reopening
//!
//! Opening scans the tree once: it checks every record, finds the highest
//! token, and (unless [`Config::keep_leases_on_open`]) ends the leases of
//! records left in flight by the previous process, so their retries take
//! over at once with the last checkpoint.

use std::sync::atomic::{AtomicU64, Ordering};

use ::sled::transaction::{ConflictableTransactionError, TransactionalTree};
use ::sled::{IVec, Tree};
use bytes::Bytes;
use parking_lot::Mutex;

use crate::clock::Timestamp;
use crate::config::{Config, Durability};
use crate::decision;
use crate::error::{Error, Result};
use crate::fingerprint::{FingerprintAlgorithm, StoredFingerprint};
use crate::identity::IdempotencyKey;
use crate::record::{Record, RecordState};
use crate::store::engine::{
    Change, Engine, EngineStats, Identity, MaintenanceReport, Wait, WholeChange,
};
use crate::store::{Lease, Store};

const BACKEND: &str = "sled";
const FORMAT_KEY: &[u8] = b"\x00format";
const TOKENS_KEY: &[u8] = b"\x00tokens";
const MAGIC: &[u8; 8] = b"idemlog\0";
const FORMAT_VERSION: u32 = 1;
const RECORD_PREFIX: u8 = 0x01;
const RECORD_VERSION: u8 = 1;
/// Tokens reserved per write of the token ceiling.
const TOKEN_BLOCK: u64 = 1 << 20;
/// Records one maintenance pass looks at.
const MAINTENANCE_BATCH: usize = 4096;

impl Store {
    /// A store whose records live in `tree`, a sled tree of idemlog's own
    /// (`db.open_tree("idempotency")`) beside the application's data.
    ///
    /// Opening scans the tree once (see the [module docs](crate::backend::sled)).
    /// Fails if the tree holds data idemlog did not write, a layout version
    /// this build does not know, or a corrupt record.
    ///
    /// ```
    /// use idemlog::{Config, Fingerprint, Outcome, Store};
    ///
    /// let db = sled::Config::new().temporary(true).open().unwrap();
    /// let store = Store::with_sled_tree(db.open_tree("idempotency").unwrap(), Config::default())?;
    /// let key = store.key("tenant-1", "order-7f3a")?;
    /// let fp = Fingerprint::of_bytes(b"body");
    /// let Outcome::Acquired(r) = store.reserve(&key, &fp)? else { unreachable!() };
    /// r.complete(b"201 created".to_vec())?;
    /// assert!(matches!(store.reserve(&key, &fp)?, Outcome::Replay(_)));
    /// # Ok::<(), idemlog::Error>(())
    /// ```
    pub fn with_sled_tree(tree: Tree, config: Config) -> Result<Store> {
        let now = config.clock.now();
        let engine = SledEngine::open(tree, &config, now)?;
        Ok(Store::with_engine(Box::new(engine), "sled", config))
    }

    /// Completes `lease` inside a sled transaction over the store's tree, so
    /// that the application's own writes in the same transaction and the
    /// stored response commit together. `records` must be the transactional
    /// view of the tree the store was opened with.
    ///
    /// Fails the transaction with `Abort(Error::LeaseLost)` if the lease is
    /// no longer current (nothing of the transaction is written then), and
    /// with `Abort(Error::ResponseTooLarge)` over the limit. With
    /// [`Durability::Sync`] the transaction flushes before it returns.
    /// Completions made here are not counted in [`Stats::completed`](crate::Stats::completed).
    ///
    /// See `examples/sled_transaction.rs`.
    pub fn complete_in_sled_transaction(
        &self,
        records: &TransactionalTree,
        lease: &Lease,
        response: Bytes,
    ) -> std::result::Result<(), ConflictableTransactionError<Error>> {
        let config = self.config();
        let limit = config.limits.max_response_len;
        if response.len() > limit {
            return Err(ConflictableTransactionError::Abort(
                Error::ResponseTooLarge {
                    len: response.len(),
                    limit,
                },
            ));
        }
        let key = record_key(&lease.key);
        let found = match records.get(&key)? {
            Some(value) => Some(
                decode(&value)
                    .and_then(|r| check_identity(r, &lease.key))
                    .map_err(ConflictableTransactionError::Abort)?,
            ),
            None => None,
        };
        let held = decision::authorize(found.as_ref(), lease.token, config.clock.now())
            .map_err(ConflictableTransactionError::Abort)?;
        let done = decision::completed_record(held, response, config.clock.now(), lease.ttl);
        let value = encode(&done).map_err(ConflictableTransactionError::Abort)?;
        records.insert(key, value)?;
        if config.durability == Durability::Sync {
            records.flush();
        }
        Ok(())
    }
}

/// The [`Engine`] on a sled tree.
pub(crate) struct SledEngine {
    tree: Tree,
    sync: bool,
    /// Tokens below this are covered by the stored ceiling.
    token_ceiling: AtomicU64,
    ceiling_lock: Mutex<()>,
    /// The highest token found when the tree was opened.
    opened_max_token: u64,
    /// Successful writes, and how many of them a finished flush covers.
    written: AtomicU64,
    flushed: AtomicU64,
    flush_lock: Mutex<()>,
    poisoned: Mutex<Option<String>>,
    /// Where the next maintenance pass resumes.
    cursor: Mutex<Vec<u8>>,
}

impl SledEngine {
    fn open(tree: Tree, config: &Config, now: Timestamp) -> Result<Self> {
        let name = String::from_utf8_lossy(&tree.name()).into_owned();
        match tree.get(FORMAT_KEY).map_err(storage)? {
            Some(v) => check_format(&v, &name)?,
            None => {
                if !tree.is_empty() {
                    return Err(backend_error(format!(
                        "the sled tree {name:?} holds data that idemlog did not write: give idemlog a tree of its own, such as db.open_tree(\"idempotency\")"
                    )));
                }
                let mut format = MAGIC.to_vec();
                format.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
                tree.insert(FORMAT_KEY, format).map_err(storage)?;
            }
        }
        let ceiling = match tree.get(TOKENS_KEY).map_err(storage)? {
            Some(v) => u64::from_le_bytes(v.as_ref().try_into().map_err(|_| {
                backend_error(format!(
                    "the token ceiling of sled tree {name:?} is {} bytes instead of 8: the tree was written by something other than idemlog",
                    v.len()
                ))
            })?),
            None => 0,
        };
        let mut max_token = ceiling;
        for entry in tree.scan_prefix([RECORD_PREFIX]) {
            let (key, value) = entry.map_err(storage)?;
            let record = decode_at(&key, &value)?;
            max_token = max_token.max(record.token);
            if !config.keep_leases_on_open {
                // The previous owner is gone: let a retry take over now.
                if let RecordState::InFlight { lease_until } = record.state {
                    if lease_until > now {
                        let ended = Record {
                            state: RecordState::InFlight { lease_until: now },
                            ..record
                        };
                        tree.compare_and_swap(&key, Some(&value), Some(encode(&ended)?))
                            .map_err(storage)?
                            .map_err(|_| {
                                backend_error(format!(
                                    "the sled tree {name:?} changed while idemlog opened it: open each tree in one store only"
                                ))
                            })?;
                    }
                }
            }
        }
        if config.durability == Durability::Sync {
            tree.flush().map_err(storage)?;
        }
        Ok(SledEngine {
            tree,
            sync: config.durability == Durability::Sync,
            token_ceiling: AtomicU64::new(ceiling),
            ceiling_lock: Mutex::new(()),
            opened_max_token: max_token,
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: Mutex::new(()),
            poisoned: Mutex::new(None),
            cursor: Mutex::new(vec![RECORD_PREFIX]),
        })
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.poisoned.lock() {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Raises the stored ceiling above `token` before a record carries it.
    fn cover_token(&self, token: u64) -> Result<()> {
        if token < self.token_ceiling.load(Ordering::Acquire) {
            return Ok(());
        }
        let _guard = self.ceiling_lock.lock();
        if token < self.token_ceiling.load(Ordering::Acquire) {
            return Ok(());
        }
        let ceiling = token.saturating_add(TOKEN_BLOCK);
        self.tree
            .insert(TOKENS_KEY, &ceiling.to_le_bytes())
            .map_err(storage)?;
        self.token_ceiling.store(ceiling, Ordering::Release);
        Ok(())
    }

    /// With `Durability::Sync`, makes every write so far durable, sharing
    /// one flush among concurrent callers.
    fn sync_written(&self) -> Result<()> {
        if !self.sync {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        if self.flushed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let _guard = self.flush_lock.lock();
        if self.flushed.load(Ordering::Acquire) >= target {
            return Ok(()); // the flush we waited for covered us
        }
        let covered = self.written.load(Ordering::Acquire);
        if let Err(e) = self.tree.flush() {
            let cause = format!("flushing the sled tree failed: {e}");
            self.poisoned.lock().get_or_insert(cause);
            return Err(storage(e));
        }
        self.flushed.fetch_max(covered, Ordering::AcqRel);
        Ok(())
    }
}

impl Engine for SledEngine {
    /// Compare-and-swap retries call `decide` again after a lost race.
    fn decides_once(&self) -> bool {
        false
    }

    /// The `Sync` flush runs inside `update` and `get`.
    fn blocks_in_update(&self) -> bool {
        self.sync
    }

    fn update(
        &self,
        id: Identity<'_>,
        decide: &mut dyn FnMut(Option<&Record>) -> Change,
    ) -> Result<Wait> {
        self.check_poison()?;
        let key = record_key(id.key);
        loop {
            let current = self.tree.get(&key).map_err(storage)?;
            let found = match &current {
                Some(value) => Some(check_identity(decode_at(&key, value)?, id.key)?),
                None => None,
            };
            let change = decide(found.as_ref()).into_whole(id.key, found.as_ref());
            let (new, durable): (Option<IVec>, bool) = match change {
                WholeChange::Keep => {
                    // What `decide` saw must be durable before we answer.
                    return self.sync_written().map(|()| Wait::Ready);
                }
                WholeChange::Replayed => match found {
                    Some(mut r) => {
                        // The replay count is a statistic: written, but not
                        // worth a flush of its own.
                        r.replays = r.replays.saturating_add(1);
                        (Some(encode(&r)?.into()), false)
                    }
                    None => return self.sync_written().map(|()| Wait::Ready),
                },
                WholeChange::Put(record) => {
                    self.cover_token(record.token)?;
                    (Some(encode(&record)?.into()), true)
                }
                WholeChange::Remove => (None, true),
            };
            match self
                .tree
                .compare_and_swap(&key, current.as_ref(), new)
                .map_err(storage)?
            {
                Ok(()) => {
                    if durable {
                        self.written.fetch_add(1, Ordering::AcqRel);
                    }
                    return self.sync_written().map(|()| Wait::Ready);
                }
                // Another writer changed the record since we read it:
                // decide again on what is there now.
                Err(_) => continue,
            }
        }
    }

    fn get(&self, id: Identity<'_>) -> Result<(Option<Record>, Wait)> {
        let key = record_key(id.key);
        match self.tree.get(&key).map_err(storage)? {
            Some(value) => {
                let record = check_identity(decode_at(&key, &value)?, id.key)?;
                self.sync_written()?;
                Ok((Some(record), Wait::Ready))
            }
            None => Ok((None, Wait::Ready)),
        }
    }

    fn maintain(&self, now: Timestamp) -> Result<MaintenanceReport> {
        self.check_poison()?;
        let mut report = MaintenanceReport::default();
        let mut cursor = self.cursor.lock();
        let mut next = None;
        for (seen, entry) in self.tree.range(cursor.clone()..).enumerate() {
            let (key, value) = entry.map_err(storage)?;
            if key.first() != Some(&RECORD_PREFIX) {
                break;
            }
            if seen == MAINTENANCE_BATCH {
                next = Some(key.to_vec());
                break;
            }
            if decode_at(&key, &value)?.is_expired(now) {
                // Only if unchanged: a new request may have replaced it.
                if self
                    .tree
                    .compare_and_swap(&key, Some(&value), None as Option<&[u8]>)
                    .map_err(storage)?
                    .is_ok()
                {
                    report.expired += 1;
                }
            }
        }
        report.more_work = next.is_some();
        *cursor = next.unwrap_or_else(|| vec![RECORD_PREFIX]);
        if report.expired > 0 {
            self.written.fetch_add(1, Ordering::AcqRel);
            self.sync_written()?;
        }
        Ok(report)
    }

    /// Counts by a scan of the tree: for monitoring, not per request.
    fn stats(&self) -> EngineStats {
        let mut stats = EngineStats::default();
        for (key, value) in self.tree.scan_prefix([RECORD_PREFIX]).flatten() {
            stats.live_records += 1;
            stats.bytes_live += (key.len() + value.len()) as u64;
            if value.get(1) == Some(&0) {
                stats.in_flight += 1;
            }
        }
        stats
    }

    fn flush(&self) -> Result<()> {
        self.tree.flush().map(drop).map_err(storage)
    }

    fn max_token(&self) -> u64 {
        self.opened_max_token
    }
}

impl Drop for SledEngine {
    fn drop(&mut self) {
        // Best effort: sled flushes on its own schedule as well.
        let _ = self.tree.flush();
    }
}

fn backend_error(message: String) -> Error {
    Error::Backend {
        backend: BACKEND,
        message,
        source: None,
    }
}

fn storage(e: sled::Error) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("sled failed ({e}); check the disk and the database directory"),
        source: Some(Box::new(e)),
    }
}

fn check_format(v: &[u8], tree: &str) -> Result<()> {
    if v.len() != 12 || &v[..8] != MAGIC {
        return Err(backend_error(format!(
            "the sled tree {tree:?} is not an idemlog tree (bad format marker): give idemlog a tree of its own"
        )));
    }
    let version = u32::from_le_bytes([v[8], v[9], v[10], v[11]]);
    if version != FORMAT_VERSION {
        return Err(backend_error(format!(
            "the sled tree {tree:?} has idemlog layout version {version}, but this build reads only version {FORMAT_VERSION}: upgrade idemlog to open it"
        )));
    }
    Ok(())
}

/// `0x01`, scope length (u32 LE), scope, key.
fn record_key(key: &IdempotencyKey) -> Vec<u8> {
    let (scope, k) = (key.scope(), key.key().as_bytes());
    let mut out = Vec::with_capacity(5 + scope.len() + k.len());
    out.push(RECORD_PREFIX);
    out.extend_from_slice(&len32(scope.len()).to_le_bytes());
    out.extend_from_slice(scope);
    out.extend_from_slice(k);
    out
}

/// Scope and key lengths are bounded by [`crate::Limits`]; lengths are
/// checked against u32 in `encode`, which every stored record went through.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn check_identity(record: Record, key: &IdempotencyKey) -> Result<Record> {
    if record.key != *key {
        return Err(backend_error(format!(
            "the sled record stored under the key of {key:?} names {:?}: the tree was changed by something other than idemlog",
            record.key
        )));
    }
    Ok(record)
}

/// Encodes a record in the layout of the module docs.
pub(crate) fn encode(r: &Record) -> Result<Vec<u8>> {
    let too_long = |what: &str, len: usize| {
        backend_error(format!(
            "the {what} is {len} bytes, more than the 4 GiB a sled record can hold: lower the limits in Config::limits"
        ))
    };
    let length = |what: &str, len: usize| u32::try_from(len).map_err(|_| too_long(what, len));
    let (scope, key) = (r.key.scope(), r.key.key().as_bytes());
    let (state, time, response) = match &r.state {
        RecordState::InFlight { lease_until } => (0u8, *lease_until, None),
        RecordState::Completed {
            completed_at,
            response,
        } => (1u8, *completed_at, Some(response)),
    };
    let size = 79
        + 4
        + scope.len()
        + 4
        + key.len()
        + 1
        + r.checkpoint.as_ref().map_or(0, |c| 4 + c.len())
        + response.map_or(0, |b| 4 + b.len());
    let mut out = Vec::with_capacity(size);
    out.push(RECORD_VERSION);
    out.push(state);
    out.push(r.fingerprint.algorithm().id());
    out.extend_from_slice(r.fingerprint.digest());
    out.extend_from_slice(&r.created_at.as_millis().to_le_bytes());
    out.extend_from_slice(&r.expires_at.as_millis().to_le_bytes());
    out.extend_from_slice(&r.token.to_le_bytes());
    out.extend_from_slice(&r.attempts.to_le_bytes());
    out.extend_from_slice(&r.replays.to_le_bytes());
    out.extend_from_slice(&time.as_millis().to_le_bytes());
    out.extend_from_slice(&length("scope", scope.len())?.to_le_bytes());
    out.extend_from_slice(scope);
    out.extend_from_slice(&length("key", key.len())?.to_le_bytes());
    out.extend_from_slice(key);
    match &r.checkpoint {
        Some(c) => {
            out.push(1);
            out.extend_from_slice(&length("checkpoint", c.len())?.to_le_bytes());
            out.extend_from_slice(c);
        }
        None => out.push(0),
    }
    if let Some(body) = response {
        out.extend_from_slice(&length("response", body.len())?.to_le_bytes());
        out.extend_from_slice(body);
    }
    Ok(out)
}

/// Decodes a record read under `key`, and checks it belongs there.
fn decode_at(key: &[u8], value: &[u8]) -> Result<Record> {
    let record = decode(value)?;
    if record_key(&record.key) != key {
        return Err(backend_error(format!(
            "the sled record under key {:?} names {:?}: the tree was changed by something other than idemlog",
            String::from_utf8_lossy(key),
            record.key
        )));
    }
    Ok(record)
}

/// Decodes bytes written by [`encode`]; any other bytes are an error naming
/// the offset.
pub(crate) fn decode(value: &[u8]) -> Result<Record> {
    let mut r = Reader {
        bytes: value,
        pos: 0,
    };
    let version = r.u8()?;
    if version != RECORD_VERSION {
        return Err(r.corrupt("unknown record version"));
    }
    let state = r.u8()?;
    let algorithm = FingerprintAlgorithm::from_id(r.u8()?).ok_or_else(|| {
        r.corrupt("fingerprint algorithm unknown to this build (upgrade idemlog)")
    })?;
    let digest: [u8; 32] = r.array()?;
    let created_at = Timestamp::from_millis(r.u64()?);
    let expires_at = Timestamp::from_millis(r.u64()?);
    let token = r.u64()?;
    let attempts = u32::from_le_bytes(r.array()?);
    let replays = r.u64()?;
    let time = Timestamp::from_millis(r.u64()?);
    let scope = r.sized()?;
    let key_bytes = r.sized()?;
    let key = std::str::from_utf8(key_bytes).map_err(|_| r.corrupt("key is not UTF-8"))?;
    let checkpoint = match r.u8()? {
        0 => None,
        1 => Some(Bytes::copy_from_slice(r.sized()?)),
        _ => return Err(r.corrupt("bad checkpoint flag")),
    };
    let state = match state {
        0 => RecordState::InFlight { lease_until: time },
        1 => RecordState::Completed {
            completed_at: time,
            response: Bytes::copy_from_slice(r.sized()?),
        },
        _ => return Err(r.corrupt("bad state")),
    };
    if r.pos != value.len() {
        return Err(r.corrupt("bytes after the last field"));
    }
    Ok(Record {
        key: IdempotencyKey::from_stored(scope, key),
        fingerprint: StoredFingerprint::from_parts(algorithm, digest),
        state,
        created_at,
        expires_at,
        token,
        attempts,
        replays,
        checkpoint: checkpoint.map(Box::new),
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, reason: &str) -> Error {
        backend_error(format!(
            "a record in the sled tree is corrupt at byte {} of its value: {reason}; restore the tree from a backup or remove that record",
            self.pos
        ))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.bytes.len() - self.pos {
            return Err(self.corrupt("truncated"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn sized(&mut self) -> Result<&'a [u8]> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fingerprint::Fingerprint;

    fn sample(state: RecordState, checkpoint: Option<&'static [u8]>) -> Record {
        Record {
            key: IdempotencyKey::new([0u8, 1, 0xff], "key-1").unwrap(),
            fingerprint: Fingerprint::of_bytes(b"body").primary(),
            state,
            created_at: Timestamp::from_millis(1),
            expires_at: Timestamp::from_millis(0x0102_0304_0506_0708),
            token: u64::MAX - 1,
            attempts: 3,
            replays: 9,
            checkpoint: checkpoint.map(|c| Box::new(Bytes::from_static(c))),
        }
    }

    #[test]
    fn records_round_trip() {
        for r in [
            sample(
                RecordState::InFlight {
                    lease_until: Timestamp::from_millis(5),
                },
                Some(b"cp"),
            ),
            sample(
                RecordState::InFlight {
                    lease_until: Timestamp::MAX,
                },
                None,
            ),
            sample(
                RecordState::Completed {
                    completed_at: Timestamp::from_millis(7),
                    response: Bytes::from_static(b"\x00\xffresponse"),
                },
                None,
            ),
            sample(
                RecordState::Completed {
                    completed_at: Timestamp::from_millis(7),
                    response: Bytes::new(),
                },
                None,
            ),
        ] {
            let bytes = encode(&r).unwrap();
            assert_eq!(decode(&bytes).unwrap(), r);
            assert_eq!(decode_at(&record_key(&r.key), &bytes).unwrap(), r);
        }
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let r = sample(
            RecordState::InFlight {
                lease_until: Timestamp::from_millis(0x11),
            },
            None,
        );
        let b = encode(&r).unwrap();
        assert_eq!(&b[..3], &[1, 0, 1]);
        assert_eq!(&b[3..35], r.fingerprint.digest());
        assert_eq!(&b[35..43], &1u64.to_le_bytes());
        assert_eq!(&b[43..51], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[51..59], &(u64::MAX - 1).to_le_bytes());
        assert_eq!(&b[59..63], &[3, 0, 0, 0]);
        assert_eq!(&b[63..71], &9u64.to_le_bytes());
        assert_eq!(&b[71..79], &0x11u64.to_le_bytes());
        assert_eq!(&b[79..86], &[3, 0, 0, 0, 0, 1, 0xff]);
        assert_eq!(&b[86..95], b"\x05\x00\x00\x00key-1");
        assert_eq!(&b[95..], &[0]);
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_an_error() {
        let r = sample(
            RecordState::Completed {
                completed_at: Timestamp::from_millis(7),
                response: Bytes::from_static(b"resp"),
            },
            Some(b"cp"),
        );
        let bytes = encode(&r).unwrap();
        for cut in 0..bytes.len() {
            let got = decode(&bytes[..cut]);
            assert!(
                matches!(
                    got,
                    Err(Error::Backend {
                        backend: "sled",
                        ..
                    })
                ),
                "cut {cut}: {got:?}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut bad_version = bytes;
        bad_version[0] = 2;
        let err = decode(&bad_version).unwrap_err().to_string();
        assert!(err.contains("unknown record version"), "{err}");
    }

    #[test]
    fn keys_cannot_collide_across_scope_and_key_splits() {
        let a = record_key(&IdempotencyKey::new("ab", "c").unwrap());
        let b = record_key(&IdempotencyKey::new("a", "bc").unwrap());
        assert_ne!(a, b);
        // A record moved under another identity's key is refused.
        let r = sample(
            RecordState::InFlight {
                lease_until: Timestamp::from_millis(5),
            },
            None,
        );
        let got = decode_at(&a, &encode(&r).unwrap());
        assert!(matches!(got, Err(Error::Backend { .. })), "got {got:?}");
    }

    #[test]
    fn foreign_trees_and_newer_versions_are_refused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let foreign = db.open_tree("app-data").unwrap();
        foreign.insert(b"user:1", b"alice").unwrap();
        let got = Store::with_sled_tree(foreign, Config::default());
        assert!(
            matches!(&got, Err(Error::Backend { backend: "sled", message, .. }) if message.contains("did not write")),
            "got {got:?}"
        );
        let newer = db.open_tree("newer").unwrap();
        let mut marker = MAGIC.to_vec();
        marker.extend_from_slice(&2u32.to_le_bytes());
        newer.insert(FORMAT_KEY, marker).unwrap();
        let got = Store::with_sled_tree(newer, Config::default());
        assert!(
            matches!(&got, Err(Error::Backend { backend: "sled", message, .. }) if message.contains("version 2")),
            "got {got:?}"
        );
    }

    #[test]
    fn maintenance_removes_expired_records_in_bounded_passes() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let clock = crate::ManualClock::new(Timestamp::from_millis(1_000));
        let config = Config::builder()
            .clock(clock.clone())
            .ttl(Duration::from_secs(1))
            .maintenance_interval(None)
            .build();
        let store = Store::with_sled_tree(db.open_tree("idem").unwrap(), config).unwrap();
        let n = MAINTENANCE_BATCH + 10;
        for i in 0..n {
            let key = store.key("t", format!("k{i}")).unwrap();
            let crate::Outcome::Acquired(r) =
                store.reserve(&key, &Fingerprint::of_bytes(b"x")).unwrap()
            else {
                panic!("fresh key");
            };
            r.complete(Bytes::new()).unwrap();
        }
        let keep = store.key("t", "kept").unwrap();
        let crate::Outcome::Acquired(kept) =
            store.reserve(&keep, &Fingerprint::of_bytes(b"x")).unwrap()
        else {
            panic!("fresh key");
        };
        assert_eq!(store.stats().live_records, n as u64 + 1);
        clock.advance(Duration::from_secs(1));
        let first = store.run_maintenance().unwrap();
        assert_eq!(
            (first.expired, first.more_work),
            (MAINTENANCE_BATCH as u64, true)
        );
        let second = store.run_maintenance().unwrap();
        assert_eq!((second.expired, second.more_work), (10, false));
        let stats = store.stats();
        assert_eq!((stats.live_records, stats.in_flight), (1, 1));
        kept.complete(Bytes::from_static(b"ok")).unwrap();
    }
}
