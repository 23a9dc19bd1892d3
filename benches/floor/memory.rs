//! The in-memory floor: the least a store shared by threads must do for one
//! reserve + complete pair, and nothing more.
//!
//! Each identity is hashed once with a keyed SipHash (what any store facing
//! client-chosen keys needs against hash flooding) and lives in one of 64
//! mutex-guarded shards, as idemlog's in-memory store shards. An entry keeps
//! what the decision table needs of it: the identity bytes, the request's
//! fingerprint, a fencing token, an expiry and the response (or, in the
//! `None` floor of `log.rs`, where its record was written); entries sit in
//! a growing vector per shard, the hash table holding only their hashes and
//! positions. There are no leases to extend, no takeovers, no expiry pass,
//! no checkpoints, no counters and no background thread, and a caller's
//! identity never leaves its stack.

use std::hash::{BuildHasher, RandomState};

use crossbeam_utils::CachePadded;
use hashbrown::HashTable;
use parking_lot::Mutex;

const SHARDS: usize = 64;

/// The longest scope + key the floor keeps (the comparison's take 44).
pub const MAX_IDENTITY: usize = 64;

/// The map: shards of entries, and the per-map hash key. A completed entry
/// keeps a `V`: the response itself in memory, or where a log wrote it.
pub struct FloorMap<V = Vec<u8>> {
    shards: Box<[CachePadded<Mutex<Shard<V>>>]>,
    hasher: RandomState,
}

struct Shard<V> {
    /// `(hash, position in entries)`.
    table: HashTable<(u64, u32)>,
    entries: Vec<Entry<V>>,
}

impl<V> Default for Shard<V> {
    fn default() -> Self {
        Shard {
            table: HashTable::new(),
            entries: Vec::new(),
        }
    }
}

struct Entry<V> {
    identity_len: u8,
    identity: [u8; MAX_IDENTITY],
    /// Kept, as a store must, for later requests to be compared with (a
    /// fresh key's pair only writes it into its log record, if it has one).
    fingerprint: [u8; 32],
    token: u64,
    expires_at_ms: u64,
    completion: Option<V>,
}

impl<V> Entry<V> {
    fn identity(&self) -> &[u8] {
        &self.identity[..usize::from(self.identity_len)]
    }
}

/// What `reserve` hands the caller to complete with.
pub struct Ticket {
    hash: u64,
    token: u64,
}

/// A scope and key packed side by side, on the caller's stack.
pub struct Identity {
    len: u8,
    bytes: [u8; MAX_IDENTITY],
}

impl Identity {
    pub fn new(scope: &[u8], key: &[u8]) -> Result<Identity, String> {
        let len = scope.len() + key.len();
        if len > MAX_IDENTITY {
            return Err(format!(
                "the floor keeps identities up to {MAX_IDENTITY} bytes; this one has {len}"
            ));
        }
        let mut bytes = [0; MAX_IDENTITY];
        bytes[..scope.len()].copy_from_slice(scope);
        bytes[scope.len()..len].copy_from_slice(key);
        Ok(Identity {
            len: len as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl<V> Default for FloorMap<V> {
    fn default() -> Self {
        FloorMap {
            shards: (0..SHARDS).map(|_| CachePadded::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl super::Floor for FloorMap<Vec<u8>> {
    fn reserve(
        &self,
        identity: &Identity,
        fingerprint: &[u8; 32],
        token: u64,
        expires_at_ms: u64,
    ) -> Result<Ticket, String> {
        self.reserve_logged(identity, fingerprint, token, expires_at_ms, || Ok(()))
    }

    fn complete(
        &self,
        identity: &Identity,
        ticket: &Ticket,
        response: Vec<u8>,
        expires_at_ms: u64,
    ) -> Result<(), String> {
        self.complete_with(identity, ticket, expires_at_ms, |_, _| Ok(response))
    }

    fn len(&self) -> usize {
        FloorMap::len(self)
    }
}

impl<V> FloorMap<V> {
    /// The shard takes middle bits of the hash: the table's buckets use the
    /// low ones and its tags the top seven, which must still vary within a
    /// shard.
    fn shard(&self, hash: u64) -> &Mutex<Shard<V>> {
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// Inserts an in-flight entry for `identity` unless one is there (the
    /// ticket carries the hash so `complete` does not hash again), then
    /// calls `log` under the shard's lock: a durable store writes its
    /// record there, so that two requests for one identity reach the log in
    /// the order they were decided.
    pub fn reserve_logged(
        &self,
        identity: &Identity,
        fingerprint: &[u8; 32],
        token: u64,
        expires_at_ms: u64,
        log: impl FnOnce() -> Result<(), String>,
    ) -> Result<Ticket, String> {
        let bytes = identity.as_bytes();
        let hash = self.hasher.hash_one(bytes);
        let mut shard = self.shard(hash).lock();
        let Shard { table, entries } = &mut *shard;
        let found = table.find(hash, |&(h, at)| {
            h == hash && entries[at as usize].identity() == bytes
        });
        if found.is_some() {
            return Err("the floor found a fresh key already reserved".into());
        }
        let at = u32::try_from(entries.len()).map_err(|_| "a floor shard is full")?;
        entries.push(Entry {
            identity_len: identity.len,
            identity: identity.bytes,
            fingerprint: *fingerprint,
            token,
            expires_at_ms,
            completion: None,
        });
        table.insert_unique(hash, (hash, at), |&(h, _)| h);
        log()?;
        Ok(Ticket { hash, token })
    }

    /// Completes the entry under the ticket's token, if it still holds,
    /// keeping what `complete` returns; it is called under the shard's lock
    /// with the entry's token and fingerprint.
    pub fn complete_with(
        &self,
        identity: &Identity,
        ticket: &Ticket,
        expires_at_ms: u64,
        complete: impl FnOnce(u64, &[u8; 32]) -> Result<V, String>,
    ) -> Result<(), String> {
        let bytes = identity.as_bytes();
        let mut shard = self.shard(ticket.hash).lock();
        let Shard { table, entries } = &mut *shard;
        let &(_, at) = table
            .find(ticket.hash, |&(h, at)| {
                h == ticket.hash && entries[at as usize].identity() == bytes
            })
            .ok_or("the floor lost a reserved key")?;
        let entry = &mut entries[at as usize];
        if entry.token != ticket.token || entry.completion.is_some() {
            return Err("the floor's entry is held by another token".into());
        }
        entry.completion = Some(complete(entry.token, &entry.fingerprint)?);
        entry.expires_at_ms = expires_at_ms;
        Ok(())
    }

    /// Entries held, over all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().table.len()).sum()
    }
}
