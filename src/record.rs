//! A stored record: the state of one identity.

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::fingerprint::{Fingerprint, StoredFingerprint};
use crate::identity::IdempotencyKey;

/// Where a record stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Reserved by a caller whose lease runs until `lease_until`.
    InFlight {
        /// When the lease runs out and a retry may take the record over.
        lease_until: Timestamp,
    },
    /// Finished, with the response to replay.
    Completed {
        /// When `complete` stored the response.
        completed_at: Timestamp,
        /// The stored response, opaque to idemlog.
        response: Bytes,
    },
}

/// One identity's record, as [`Store::lookup`](crate::Store::lookup) shows it
/// and as storage engines keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub(crate) key: IdempotencyKey,
    pub(crate) fingerprint: StoredFingerprint,
    pub(crate) state: RecordState,
    pub(crate) created_at: Timestamp,
    pub(crate) expires_at: Timestamp,
    pub(crate) token: u64,
    pub(crate) attempts: u32,
    pub(crate) replays: u64,
    /// Boxed: few records carry one, and inline it would add 24 bytes to
    /// every record the in-memory store keeps.
    pub(crate) checkpoint: Option<Box<Bytes>>,
}

impl Record {
    /// The record's identity.
    pub fn key(&self) -> &IdempotencyKey {
        &self.key
    }
    /// The fingerprint of the request that created it (its primary
    /// algorithm's digest; a record keeps no fallback).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.to_fingerprint()
    }
    /// In flight or completed.
    pub fn state(&self) -> &RecordState {
        &self.state
    }
    /// True while a reservation holds (or last held) it.
    pub fn is_in_flight(&self) -> bool {
        matches!(self.state, RecordState::InFlight { .. })
    }
    /// When the first reservation was made.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }
    /// When the response was stored, for a completed record.
    pub fn completed_at(&self) -> Option<Timestamp> {
        match self.state {
            RecordState::Completed { completed_at, .. } => Some(completed_at),
            RecordState::InFlight { .. } => None,
        }
    }
    /// When the lease runs out, for an in-flight record.
    pub fn lease_until(&self) -> Option<Timestamp> {
        match self.state {
            RecordState::InFlight { lease_until } => Some(lease_until),
            RecordState::Completed { .. } => None,
        }
    }
    /// The instant from which the record counts as absent: `completed_at +
    /// ttl` for a completed record; for an in-flight record `lease_until +
    /// ttl`, after which an abandoned reservation is forgotten.
    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }
    /// The current fencing token: only the reservation holding it may change
    /// the record. Tokens strictly increase per identity.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }
    /// How many reservations have held this record (1 + takeovers).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// How many times the response was replayed (durable stores count since
    /// the directory was opened).
    pub fn replays(&self) -> u64 {
        self.replays
    }
    /// The stored response, for a completed record.
    pub fn response(&self) -> Option<&Bytes> {
        match &self.state {
            RecordState::Completed { response, .. } => Some(response),
            RecordState::InFlight { .. } => None,
        }
    }
    /// The last checkpoint of an in-flight record.
    pub fn checkpoint(&self) -> Option<&Bytes> {
        self.checkpoint.as_deref()
    }
    /// Whether the record counts as absent at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::Record;

    /// The in-memory store keeps one `Record` per identity in its slab: a
    /// field that grows it costs every record. 184 bytes on 64-bit
    /// targets: the inline key (64), fingerprint, state with the response
    /// handle, times, counters and the boxed checkpoint.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_record_stays_within_184_bytes() {
        assert!(
            std::mem::size_of::<Record>() <= 184,
            "a Record takes {} bytes",
            std::mem::size_of::<Record>()
        );
    }
}
