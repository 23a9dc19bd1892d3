//! The decision table of SPEC §3 as pure functions: no I/O, no clock, no
//! locks. Every engine (in memory, the durable log, sled) calls these, and
//! the Redis script mirrors them rule by rule, so all backends decide alike.

use std::time::Duration;

use bytes::Bytes;

use crate::clock::Timestamp;
use crate::error::Error;
use crate::fingerprint::Fingerprint;
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
    let same = request.matches(&record.fingerprint);
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

/// The in-flight record an `Acquire` writes. On takeover the attempt count
/// goes up and the last checkpoint carries over to the new owner; `token`
/// must be greater than any token the identity had.
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
    let lease_until = now.saturating_add(lease);
    let previous = found.filter(|_| takeover);
    Record {
        key: key.clone(),
        fingerprint: request.primary(),
        state: RecordState::InFlight { lease_until },
        created_at: previous.map_or(now, |r| r.created_at),
        expires_at: lease_until.saturating_add(ttl),
        token,
        attempts: previous.map_or(1, |r| r.attempts.saturating_add(1)),
        replays: 0,
        checkpoint: previous.and_then(|r| r.checkpoint.clone()),
    }
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

/// The record after `complete`: the response stored, the TTL running.
pub fn completed_record(held: &Record, response: Bytes, now: Timestamp, ttl: Duration) -> Record {
    // Field by field rather than `..held.clone()`, which cloned the state
    // and the checkpoint only to drop them (~110 instructions per complete).
    Record {
        key: held.key.clone(),
        fingerprint: held.fingerprint,
        state: RecordState::Completed {
            completed_at: now,
            response,
        },
        created_at: held.created_at,
        expires_at: now.saturating_add(ttl),
        token: held.token,
        attempts: held.attempts,
        replays: held.replays,
        checkpoint: None,
    }
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
        checkpoint: Some(checkpoint),
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
        assert_eq!(next.checkpoint.as_deref(), Some(&b"phase-2"[..]));
        assert_eq!(next.lease_until(), Some(t(130_000)));
        let fresh = acquired_record(Some(&r), false, &key(), &fp, t(70_000), LEASE, TTL, 9);
        assert_eq!((fresh.attempts, fresh.checkpoint.clone()), (1, None));
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
