//! The decision table of SPEC §3 as pure functions: no I/O, no clock, no
//! locks. Every engine (in memory, the durable log, sled) calls these, and
//! the Redis script mirrors them rule by rule, so all backends decide alike.

use std::time::Duration;

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::fingerprint::{Fingerprint, StoredFingerprint};
use crate::identity::IdempotencyKey;
use crate::record::{Record, RecordState};

/// What `reserve` decides for a request, given the record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The caller gets the record: a new one, or a takeover of an in-flight
    /// record whose lease ran out.
    Acquire {
        /// True when an earlier reservation's lease ran out (takeover).
        takeover: bool,
    },
    /// Same request, completed and not expired: replay the stored response.
    Replay,
    /// Same request, still running under a live lease.
    InProgress {
        /// Time until the lease runs out.
        retry_after: Duration,
    },
    /// Another request reused the key.
    Conflict {
        /// Whether the earlier request is still in flight.
        in_flight: bool,
    },
}

/// The decision table. `found` is the record stored for the identity, if
/// any; an expired record counts as absent.
pub fn decide(found: Option<&Record>, request: &Fingerprint, now: Timestamp) -> Decision {
    let Some(record) = found.filter(|r| !r.is_expired(now)) else {
        return Decision::Acquire { takeover: false };
    };
    let same = request.matches_stored(&record.fingerprint);
    match record.state {
        RecordState::InFlight { .. } if !same => Decision::Conflict { in_flight: true },
        RecordState::InFlight { lease_until } if now < lease_until => Decision::InProgress {
            retry_after: lease_until.saturating_duration_since(now),
        },
        RecordState::InFlight { .. } => Decision::Acquire { takeover: true },
        RecordState::Completed { .. } if same => Decision::Replay,
        RecordState::Completed { .. } => Decision::Conflict { in_flight: false },
    }
}

/// What an `Acquire` writes, apart from the identity the engine already
/// has. The in-memory engine builds the record from it in its own memory,
/// or overwrites the expired or taken-over record in place, instead of
/// moving a whole record (184 bytes) through the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquisition {
    fingerprint: StoredFingerprint,
    created_at: Timestamp,
    lease_until: Timestamp,
    expires_at: Timestamp,
    token: u64,
    attempts: u32,
    checkpoint: Option<Box<Bytes>>,
}

impl Acquisition {
    /// The attempt this reservation is (1 for the first).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// When the new lease runs out.
    pub fn lease_until(&self) -> Timestamp {
        self.lease_until
    }

    /// The checkpoint carried over from an earlier attempt.
    pub fn checkpoint(&self) -> Option<&Bytes> {
        self.checkpoint.as_deref()
    }

    /// The in-flight record of `key`.
    pub fn into_record(self, key: &IdempotencyKey) -> Record {
        Record {
            key: key.clone(),
            fingerprint: self.fingerprint,
            state: RecordState::InFlight {
                lease_until: self.lease_until,
            },
            created_at: self.created_at,
            expires_at: self.expires_at,
            token: self.token,
            attempts: self.attempts,
            replays: 0,
            checkpoint: self.checkpoint,
        }
    }

    /// Makes `record` (of the same identity: an expired record or a
    /// takeover's) the in-flight record; its key stays.
    pub fn apply(self, record: &mut Record) {
        record.fingerprint = self.fingerprint;
        record.state = RecordState::InFlight {
            lease_until: self.lease_until,
        };
        record.created_at = self.created_at;
        record.expires_at = self.expires_at;
        record.token = self.token;
        record.attempts = self.attempts;
        record.replays = 0;
        record.checkpoint = self.checkpoint;
    }
}

/// What an `Acquire` writes. On takeover the attempt count goes up and the
/// last checkpoint carries over to the new owner; `token` must be greater
/// than any token the identity had.
pub fn acquisition(
    found: Option<&Record>,
    takeover: bool,
    request: &Fingerprint,
    now: Timestamp,
    lease: Duration,
    ttl: Duration,
    token: u64,
) -> Acquisition {
    let lease_until = now.saturating_add(lease);
    let previous = found.filter(|_| takeover);
    Acquisition {
        fingerprint: request.primary(),
        created_at: previous.map_or(now, |r| r.created_at),
        lease_until,
        expires_at: lease_until.saturating_add(ttl),
        token,
        attempts: previous.map_or(1, |r| r.attempts.saturating_add(1)),
        checkpoint: previous.and_then(|r| r.checkpoint.clone()),
    }
}

/// The in-flight record an `Acquire` writes (see [`acquisition`]).
#[allow(clippy::too_many_arguments)] // each is one column of the decision table
pub fn acquired_record(
    found: Option<&Record>,
    takeover: bool,
    key: &IdempotencyKey,
    request: &Fingerprint,
    now: Timestamp,
    lease: Duration,
    ttl: Duration,
    token: u64,
) -> Record {
    acquisition(found, takeover, request, now, lease, ttl, token).into_record(key)
}

/// Checks that `token` is the record's current fencing token at `now`. A
/// record that is gone, expired (it counts as absent, whether or not
/// maintenance has removed it yet), completed, or held under another token
/// rejects the holder.
pub fn authorize(found: Option<&Record>, token: u64, now: Timestamp) -> Result<&Record, Error> {
    match found {
        Some(r) if r.is_expired(now) => Err(Error::LeaseLost {
            held: token,
            current: None,
        }),
        Some(r) if r.token == token && r.is_in_flight() => Ok(r),
        Some(r) => Err(Error::LeaseLost {
            held: token,
            current: Some(r.token),
        }),
        None => Err(Error::LeaseLost {
            held: token,
            current: None,
        }),
    }
}

/// What `complete` changes in the record it holds: the response stored and
/// the TTL running from now. Engines that keep records in memory apply it in
/// place ([`Completion::apply`]) instead of building and moving a whole new
/// record; the others apply it to their copy of the record they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The response to store.
    pub response: Bytes,
    /// When `complete` stored it.
    pub completed_at: Timestamp,
    /// When the completed record expires.
    pub expires_at: Timestamp,
}

impl Completion {
    /// Turns the held in-flight record into the completed one; every other
    /// field (key, fingerprint, token, attempts, replays) stays.
    pub fn apply(self, record: &mut Record) {
        record.state = RecordState::Completed {
            completed_at: self.completed_at,
            response: self.response,
        };
        record.expires_at = self.expires_at;
        record.checkpoint = None;
    }

    /// The completed record made from the held one, for engines that store
    /// whole records.
    pub fn applied_to(self, held: &Record) -> Record {
        // Field by field rather than `held.clone()` then `apply`, which
        // cloned the state and the checkpoint only to drop them (~110
        // instructions).
        Record {
            key: held.key.clone(),
            fingerprint: held.fingerprint,
            state: RecordState::Completed {
                completed_at: self.completed_at,
                response: self.response,
            },
            created_at: held.created_at,
            expires_at: self.expires_at,
            token: held.token,
            attempts: held.attempts,
            replays: held.replays,
            checkpoint: None,
        }
    }
}

/// The change `complete` makes at `now`, with the completed record kept for
/// `ttl`.
pub fn completion(response: Bytes, now: Timestamp, ttl: Duration) -> Completion {
    Completion {
        response,
        completed_at: now,
        expires_at: now.saturating_add(ttl),
    }
}

/// The record after `complete`: the response stored, the TTL running.
pub fn completed_record(held: &Record, response: Bytes, now: Timestamp, ttl: Duration) -> Record {
    completion(response, now, ttl).applied_to(held)
}

/// The record after `extend`: a new lease from `now`.
pub fn extended_record(held: &Record, now: Timestamp, lease: Duration, ttl: Duration) -> Record {
    let lease_until = now.saturating_add(lease);
    Record {
        state: RecordState::InFlight { lease_until },
        expires_at: lease_until.saturating_add(ttl),
        ..held.clone()
    }
}

/// The record after `checkpoint`.
pub fn checkpointed_record(held: &Record, checkpoint: Bytes) -> Record {
    Record {
        checkpoint: Some(Box::new(checkpoint)),
        ..held.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(60);
    const TTL: Duration = Duration::from_secs(3600);

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn key() -> IdempotencyKey {
        IdempotencyKey::new("tenant", "key-1").unwrap()
    }

    fn in_flight(fp: &Fingerprint, at: Timestamp) -> Record {
        acquired_record(None, false, &key(), fp, at, LEASE, TTL, 7)
    }

    #[test]
    fn absent_record_is_acquired() {
        let fp = Fingerprint::of_bytes(b"a");
        assert_eq!(
            decide(None, &fp, t(0)),
            Decision::Acquire { takeover: false }
        );
    }

    #[test]
    fn in_flight_with_other_fingerprint_conflicts_even_after_the_lease() {
        let r = in_flight(&Fingerprint::of_bytes(b"a"), t(0));
        let other = Fingerprint::of_bytes(b"b");
        assert_eq!(
            decide(Some(&r), &other, t(1)),
            Decision::Conflict { in_flight: true }
        );
        assert_eq!(
            decide(Some(&r), &other, t(60_000)),
            Decision::Conflict { in_flight: true }
        );
    }

    #[test]
    fn in_flight_same_fingerprint_is_in_progress_until_the_lease_ends() {
        let fp = Fingerprint::of_bytes(b"a");
        let r = in_flight(&fp, t(1_000));
        assert_eq!(
            decide(Some(&r), &fp, t(1_000)),
            Decision::InProgress {
                retry_after: Duration::from_secs(60)
            }
        );
        assert_eq!(
            decide(Some(&r), &fp, t(60_999)),
            Decision::InProgress {
                retry_after: Duration::from_millis(1)
            }
        );
        assert_eq!(
            decide(Some(&r), &fp, t(61_000)),
            Decision::Acquire { takeover: true }
        );
    }

    #[test]
    fn takeover_carries_checkpoint_and_counts_attempts() {
        let fp = Fingerprint::of_bytes(b"a");
        let r = checkpointed_record(&in_flight(&fp, t(0)), Bytes::from_static(b"phase-2"));
        let next = acquired_record(Some(&r), true, &key(), &fp, t(70_000), LEASE, TTL, 8);
        assert_eq!(next.attempts, 2);
        assert_eq!(next.token, 8);
        assert_eq!(next.created_at, t(0));
        assert_eq!(next.checkpoint(), Some(&Bytes::from_static(b"phase-2")));
        assert_eq!(next.lease_until(), Some(t(130_000)));
        let fresh = acquired_record(Some(&r), false, &key(), &fp, t(70_000), LEASE, TTL, 9);
        assert_eq!((fresh.attempts, fresh.checkpoint.clone()), (1, None));
    }

    /// The in-memory engine overwrites an expired or taken-over record in
    /// place; the result must be the record the other engines store,
    /// whatever the old one carried (a response, replays, a checkpoint).
    #[test]
    fn acquisition_in_place_equals_the_acquired_record() {
        let fp = Fingerprint::of_bytes(b"a");
        let other = Fingerprint::of_bytes(b"b");
        let mut done = completed_record(
            &in_flight(&other, t(0)),
            Bytes::from_static(b"ok"),
            t(5),
            TTL,
        );
        done.replays = 4;
        let stale = checkpointed_record(&in_flight(&fp, t(0)), Bytes::from_static(b"phase-1"));
        for (old, takeover) in [(done, false), (stale.clone(), true), (stale, false)] {
            let now = t(4_000_000);
            let whole = acquired_record(Some(&old), takeover, &key(), &fp, now, LEASE, TTL, 11);
            let mut in_place = old.clone();
            acquisition(Some(&old), takeover, &fp, now, LEASE, TTL, 11).apply(&mut in_place);
            assert_eq!(in_place, whole, "takeover: {takeover}");
            assert_eq!(in_place.replays, 0);
            assert_eq!(in_place.lease_until(), Some(t(4_060_000)));
            assert_eq!(in_place.attempts, if takeover { 2 } else { 1 });
            assert_eq!(in_place.checkpoint.is_some(), takeover);
        }
    }

    /// Engines that complete in place and engines that store a new record
    /// must end with the same record, whatever the held one carried (a
    /// checkpoint, replays, a takeover's attempts).
    #[test]
    fn completion_in_place_equals_the_completed_record() {
        let fp = Fingerprint::of_bytes(b"a");
        let first = in_flight(&fp, t(0));
        let mut held = acquired_record(Some(&first), true, &key(), &fp, t(61_000), LEASE, TTL, 8);
        held = checkpointed_record(&held, Bytes::from_static(b"phase-2"));
        held.replays = 3;
        let response = Bytes::from_static(b"done");
        let whole = completed_record(&held, response.clone(), t(70_000), TTL);
        let mut in_place = held.clone();
        completion(response, t(70_000), TTL).apply(&mut in_place);
        assert_eq!(in_place, whole);
        assert_eq!(
            (in_place.attempts, in_place.token, in_place.replays),
            (2, 8, 3)
        );
        assert_eq!(in_place.checkpoint, None);
        assert_eq!(in_place.completed_at(), Some(t(70_000)));
        assert_eq!(in_place.expires_at, t(70_000 + 3_600_000));
        assert_eq!(in_place.created_at, t(0));
    }

    #[test]
    fn completed_replays_until_expiry_and_conflicts_on_other_bodies() {
        let fp = Fingerprint::of_bytes(b"a");
        let done = completed_record(&in_flight(&fp, t(0)), Bytes::from_static(b"ok"), t(10), TTL);
        assert_eq!(decide(Some(&done), &fp, t(10)), Decision::Replay);
        assert_eq!(decide(Some(&done), &fp, t(3_600_009)), Decision::Replay);
        assert_eq!(
            decide(Some(&done), &Fingerprint::of_bytes(b"b"), t(11)),
            Decision::Conflict { in_flight: false }
        );
        // Expired at exactly completed_at + ttl: absent, for any body.
        assert_eq!(
            decide(Some(&done), &fp, t(3_600_010)),
            Decision::Acquire { takeover: false }
        );
        assert_eq!(
            decide(Some(&done), &Fingerprint::of_bytes(b"b"), t(3_600_010)),
            Decision::Acquire { takeover: false }
        );
    }

    #[test]
    fn abandoned_in_flight_record_expires_ttl_after_its_lease() {
        let fp = Fingerprint::of_bytes(b"a");
        let r = in_flight(&fp, t(0));
        assert_eq!(r.expires_at(), t(60_000 + 3_600_000));
        assert_eq!(
            decide(Some(&r), &Fingerprint::of_bytes(b"b"), r.expires_at()),
            Decision::Acquire { takeover: false }
        );
    }

    #[test]
    fn authorize_accepts_only_the_current_token_of_an_in_flight_record() {
        let fp = Fingerprint::of_bytes(b"a");
        let r = in_flight(&fp, t(0));
        assert!(authorize(Some(&r), 7, t(0)).is_ok());
        let err = authorize(Some(&r), 6, t(0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LeaseLost {
                    held: 6,
                    current: Some(7)
                }
            ),
            "got {err:?}"
        );
        let err = authorize(None, 7, t(0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::LeaseLost {
                    held: 7,
                    current: None
                }
            ),
            "got {err:?}"
        );
        let done = completed_record(&r, Bytes::new(), t(1), TTL);
        assert!(matches!(
            authorize(Some(&done), 7, t(2)),
            Err(Error::LeaseLost { .. })
        ));
    }

    #[test]
    fn extend_moves_lease_and_expiry() {
        let fp = Fingerprint::of_bytes(b"a");
        let r = extended_record(&in_flight(&fp, t(0)), t(50_000), LEASE, TTL);
        assert_eq!(r.lease_until(), Some(t(110_000)));
        assert_eq!(r.expires_at(), t(110_000 + 3_600_000));
    }
}
