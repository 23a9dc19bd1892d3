//! A reference model of one store: a `HashMap` of records and a clock,
//! written from the decision table of SPEC §3 without reusing idemlog's
//! decision code, so a bug there shows up as a disagreement.
//!
//! The key space is tiny (4 keys × 2 scopes, 3 bodies) so that operations
//! collide: conflicts, replays, takeovers and stale tokens are common.

#![allow(dead_code)] // each fuzz target uses a part of this module

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use idemlog::{
    Bytes, Error, Fingerprint, IdempotencyKey, Lease, Outcome, Record, RecordState, Store,
};

pub const KEYS: u8 = 4;
pub const SCOPES: u8 = 2;
pub const BODIES: u8 = 3;
pub const MAX_RESPONSE: usize = 16;
pub const MAX_CHECKPOINT: usize = 8;
pub const LEASE_MS: u64 = 30;
pub const TTL_MS: u64 = 100;
const MAX_HELD: usize = 12;

/// One step of a fuzzed sequence.
#[derive(Debug, Clone, Arbitrary)]
pub enum Step {
    Reserve {
        identity: u8,
        body: u8,
        lease: Option<u8>,
        ttl: Option<u8>,
    },
    Complete {
        lease: u8,
        response: u8,
        len: u8,
    },
    Release {
        lease: u8,
    },
    Extend {
        lease: u8,
        ms: u8,
    },
    Checkpoint {
        lease: u8,
        byte: u8,
        len: u8,
    },
    Lookup {
        identity: u8,
    },
    Advance {
        ms: u16,
    },
    Maintenance,
}

/// A record as the model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRecord {
    pub body: u8,
    pub in_flight_until: Option<u64>,
    pub completed: Option<(u64, Vec<u8>)>,
    pub created_at: u64,
    pub expires_at: u64,
    pub token: u64,
    pub attempts: u32,
    pub replays: u64,
    pub checkpoint: Option<Vec<u8>>,
}

/// The model: records by identity, plus the highest token seen per identity
/// (tokens must rise).
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub records: HashMap<(u8, u8), ModelRecord>,
    pub last_token: HashMap<(u8, u8), u64>,
    /// Whether an expired record may still be in the store: the durable
    /// index expires to the second, so maintenance may leave a record that
    /// expired to the millisecond, and its holder can still use its token.
    pub lenient_expired: bool,
}

pub fn identity_of(i: u8) -> (u8, u8) {
    (i % SCOPES, (i / SCOPES) % KEYS)
}

pub fn key(id: (u8, u8)) -> IdempotencyKey {
    IdempotencyKey::new(format!("scope-{}", id.0), format!("key-{}", id.1)).expect("valid key")
}

pub fn fingerprint(body: u8) -> Fingerprint {
    Fingerprint::of_bytes(format!("body-{body}").as_bytes())
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

/// A held lease and the identity it belongs to.
#[derive(Debug, Clone)]
pub struct Held {
    pub id: (u8, u8),
    pub lease: Lease,
}

/// Whether an error is the storage failing (as opposed to an answer the
/// model predicts: a lost lease, a limit).
pub fn is_storage_failure(e: &Error) -> bool {
    matches!(
        e,
        Error::Io { .. }
            | Error::Poisoned { .. }
            | Error::Corrupt { .. }
            | Error::DiskBudgetExceeded { .. }
    )
}

/// Splits a storage failure off a result, leaving answers to compare.
fn answer(r: idemlog::Result<()>) -> Result<idemlog::Result<()>, Error> {
    match r {
        Err(e) if is_storage_failure(&e) => Err(e),
        other => Ok(other),
    }
}

/// Runs one step on the store and the model and panics on any disagreement.
/// `now` is the clock value both see. A storage failure is returned before
/// the model changes: the step's effect is then unknown.
pub fn apply(
    store: &Store,
    model: &mut Model,
    held: &mut Vec<Held>,
    step: &Step,
    now: u64,
) -> Result<(), Error> {
    match *step {
        Step::Reserve {
            identity,
            body,
            lease,
            ttl,
        } => {
            let id = identity_of(identity);
            let body = body % BODIES;
            let lease_ms = lease.map_or(LEASE_MS, |l| 1 + u64::from(l % 64));
            let ttl_ms = ttl.map_or(TTL_MS, |t| 1 + u64::from(t));
            let mut options = idemlog::ReserveOptions::default();
            if lease.is_some() {
                options = options.lease(ms(lease_ms));
            }
            if ttl.is_some() {
                options = options.ttl(ms(ttl_ms));
            }
            let got = store
                .reserve_with(&key(id), &fingerprint(body), options)
                .map(|o| o.map(|r| r.into_lease()))?;
            model_reserve(model, held, id, body, lease_ms, ttl_ms, now, got);
        }
        Step::Complete {
            lease,
            response,
            len,
        } => {
            let Some(h) = pick(held, lease) else {
                return Ok(());
            };
            let bytes = vec![response; usize::from(len % (MAX_RESPONSE as u8 + 4))];
            let got = answer(store.complete_lease(&h.lease, Bytes::from(bytes.clone())))?;
            if bytes.len() > MAX_RESPONSE {
                assert!(
                    matches!(got, Err(Error::ResponseTooLarge { .. })),
                    "got {got:?}"
                );
                return Ok(());
            }
            if removed_while_expired(model, &h, &got, now) {
                return Ok(());
            }
            let expected = authorize(model, &h, now);
            same_result(&got, &expected, "complete");
            if expected.is_ok() {
                let r = model.records.get_mut(&h.id).expect("authorized");
                r.in_flight_until = None;
                r.completed = Some((now, bytes));
                r.expires_at = now + duration_ms(h.lease.ttl);
                r.checkpoint = None;
            }
        }
        Step::Release { lease } => {
            let Some(h) = pick(held, lease) else {
                return Ok(());
            };
            let got = answer(store.release_lease(&h.lease))?;
            if removed_while_expired(model, &h, &got, now) {
                return Ok(());
            }
            let expected = authorize(model, &h, now);
            same_result(&got, &expected, "release");
            if expected.is_ok() {
                model.records.remove(&h.id);
            }
        }
        Step::Extend { lease, ms: by } => {
            let n = held.len();
            if n == 0 {
                return Ok(());
            }
            let i = usize::from(lease) % n;
            let by = 1 + u64::from(by % 64);
            let h = held[i].clone();
            let got = answer(store.extend_lease(&mut held[i].lease, ms(by)))?;
            if removed_while_expired(model, &h, &got, now) {
                return Ok(());
            }
            let expected = authorize(model, &h, now);
            same_result(&got, &expected, "extend");
            if expected.is_ok() {
                let r = model.records.get_mut(&h.id).expect("authorized");
                r.in_flight_until = Some(now + by);
                r.expires_at = now + by + duration_ms(h.lease.ttl);
                assert_eq!(held[i].lease.lease_until.as_millis(), now + by);
            }
        }
        Step::Checkpoint { lease, byte, len } => {
            let Some(h) = pick(held, lease) else {
                return Ok(());
            };
            let bytes = vec![byte; usize::from(len % (MAX_CHECKPOINT as u8 + 3))];
            let got = answer(store.checkpoint_lease(&h.lease, Bytes::from(bytes.clone())))?;
            if bytes.len() > MAX_CHECKPOINT {
                assert!(
                    matches!(got, Err(Error::CheckpointTooLarge { .. })),
                    "got {got:?}"
                );
                return Ok(());
            }
            if removed_while_expired(model, &h, &got, now) {
                return Ok(());
            }
            let expected = authorize(model, &h, now);
            same_result(&got, &expected, "checkpoint");
            if expected.is_ok() {
                model.records.get_mut(&h.id).expect("authorized").checkpoint = Some(bytes);
            }
        }
        Step::Lookup { identity } => {
            let id = identity_of(identity);
            let got = store.lookup(&key(id))?;
            let expected = model.records.get(&id).filter(|r| now < r.expires_at);
            same_record(id, got.as_ref(), expected, now);
        }
        Step::Advance { .. } | Step::Maintenance => {}
    }
    Ok(())
}

/// The identity a step works on (for lease steps, the lease's).
pub fn step_identity(step: &Step, held: &[Held]) -> Option<(u8, u8)> {
    match *step {
        Step::Reserve { identity, .. } | Step::Lookup { identity } => Some(identity_of(identity)),
        Step::Complete { lease, .. }
        | Step::Release { lease }
        | Step::Extend { lease, .. }
        | Step::Checkpoint { lease, .. } => pick(held, lease).map(|h| h.id),
        Step::Advance { .. } | Step::Maintenance => None,
    }
}

/// The model record of a record read back from a store.
pub fn from_record(r: &Record) -> ModelRecord {
    let body = (0..BODIES)
        .find(|&b| r.fingerprint() == fingerprint(b))
        .expect("a record's fingerprint is one of the bodies");
    ModelRecord {
        body,
        in_flight_until: r.lease_until().map(|t| t.as_millis()),
        completed: r
            .completed_at()
            .map(|t| (t.as_millis(), r.response().expect("completed").to_vec())),
        created_at: r.created_at().as_millis(),
        expires_at: r.expires_at().as_millis(),
        token: r.fencing_token(),
        attempts: r.attempts(),
        replays: r.replays(),
        checkpoint: r.checkpoint().map(|c| c.to_vec()),
    }
}

/// What a reopen at `now` does to the model: expired records are gone,
/// leases of the previous process are over, replay counts restart.
pub fn model_reboot(model: &mut Model, now: u64) {
    model.records.retain(|_, r| now < r.expires_at);
    for r in model.records.values_mut() {
        if let Some(until) = &mut r.in_flight_until {
            *until = (*until).min(now);
        }
        r.replays = 0;
    }
}

fn pick(held: &[Held], i: u8) -> Option<Held> {
    if held.is_empty() {
        None
    } else {
        Some(held[usize::from(i) % held.len()].clone())
    }
}

pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).expect("small durations")
}

/// The model's answer to an operation under a held token.
fn authorize(model: &Model, h: &Held, now: u64) -> Result<(), Option<u64>> {
    match model.records.get(&h.id) {
        Some(r) if now >= r.expires_at => Err(None),
        Some(r) if r.token == h.lease.token && r.in_flight_until.is_some() => Ok(()),
        Some(r) => Err(Some(r.token)),
        None => Err(None),
    }
}

/// Whether the store's answer for a held token is explained by an expired
/// record that maintenance has removed (see `Model::lenient_expired`); if so
/// the model forgets the record too.
fn removed_while_expired(model: &mut Model, h: &Held, got: &idemlog::Result<()>, now: u64) -> bool {
    let expired = model
        .records
        .get(&h.id)
        .is_some_and(|r| now >= r.expires_at);
    if model.lenient_expired
        && expired
        && matches!(got, Err(Error::LeaseLost { current: None, .. }))
    {
        model.records.remove(&h.id);
        return true;
    }
    false
}

fn same_result(got: &idemlog::Result<()>, expected: &Result<(), Option<u64>>, what: &str) {
    match (got, expected) {
        (Ok(()), Ok(())) => {}
        (Err(Error::LeaseLost { current, .. }), Err(e)) if current == e => {}
        _ => panic!("{what}: store answered {got:?}, model expected {expected:?}"),
    }
}

#[allow(clippy::too_many_arguments)]
fn model_reserve(
    model: &mut Model,
    held: &mut Vec<Held>,
    id: (u8, u8),
    body: u8,
    lease_ms: u64,
    ttl_ms: u64,
    now: u64,
    got: Outcome<Lease>,
) {
    let live = model
        .records
        .get(&id)
        .filter(|r| now < r.expires_at)
        .cloned();
    let takeover = match &live {
        None => None,
        Some(r) if r.body != body => {
            let in_flight = r.in_flight_until.is_some();
            assert!(
                matches!(got, Outcome::Conflict { in_flight: f } if f == in_flight),
                "reserve {id:?} body {body}: expected Conflict {{ in_flight: {in_flight} }} over {r:?}, got {got:?}"
            );
            return;
        }
        Some(r) => match (&r.in_flight_until, &r.completed) {
            (Some(until), _) if now < *until => {
                assert!(
                    matches!(got, Outcome::InProgress { retry_after, attempt }
                        if duration_ms(retry_after) == until - now && attempt == r.attempts),
                    "reserve {id:?}: expected InProgress for {}ms, attempt {}, got {got:?}",
                    until - now,
                    r.attempts
                );
                return;
            }
            (Some(_), _) => Some(r.clone()),
            (None, Some((completed_at, response))) => {
                let Outcome::Replay(replay) = &got else {
                    panic!("reserve {id:?}: expected Replay of {response:?}, got {got:?}");
                };
                assert_eq!(&replay.response[..], &response[..], "replayed bytes differ");
                assert_eq!(replay.completed_at.as_millis(), *completed_at);
                assert_eq!(replay.expires_at.as_millis(), r.expires_at);
                assert_eq!(replay.attempts, r.attempts);
                model.records.get_mut(&id).expect("live").replays += 1;
                return;
            }
            (None, None) => unreachable!("a model record is in flight or completed"),
        },
    };
    let Outcome::Acquired(lease) = got else {
        panic!(
            "reserve {id:?} body {body}: expected Acquired (takeover: {}), got {got:?}",
            takeover.is_some()
        );
    };
    let previous = model.last_token.get(&id).copied().unwrap_or(0);
    assert!(
        lease.token > previous,
        "token {} not above {previous}",
        lease.token
    );
    model.last_token.insert(id, lease.token);
    let attempts = takeover.as_ref().map_or(1, |r| r.attempts + 1);
    let checkpoint = takeover.as_ref().and_then(|r| r.checkpoint.clone());
    assert_eq!(lease.attempt, attempts, "attempt");
    assert_eq!(
        lease.checkpoint.as_deref(),
        checkpoint.as_deref(),
        "handed-over checkpoint"
    );
    assert_eq!(lease.lease_until.as_millis(), now + lease_ms, "lease_until");
    assert_eq!(duration_ms(lease.ttl), ttl_ms, "ttl");
    model.records.insert(
        id,
        ModelRecord {
            body,
            in_flight_until: Some(now + lease_ms),
            completed: None,
            created_at: takeover.as_ref().map_or(now, |r| r.created_at),
            expires_at: now + lease_ms + ttl_ms,
            token: lease.token,
            attempts,
            replays: 0,
            checkpoint,
        },
    );
    held.push(Held { id, lease });
    if held.len() > MAX_HELD {
        held.remove(0);
    }
}

/// Whether two records agree at `now` on all that `same_record` compares: a
/// lease that is over on both sides counts as equal whenever it ended (a
/// reopen voids leases in memory only, at its own open time).
pub fn same_at(a: Option<&ModelRecord>, b: Option<&ModelRecord>, now: u64) -> bool {
    let seen = |r: Option<&ModelRecord>| {
        r.cloned().map(|mut r| {
            r.in_flight_until = r.in_flight_until.map(|until| until.max(now));
            r
        })
    };
    seen(a) == seen(b)
}

/// Compares a looked-up record with the model's at time `now`. A lease that
/// is over on both sides is not compared: a reopen voids leases in memory
/// only, so the instant shown for an over lease may differ between opens,
/// while every decision (takeover, no `InProgress`) is the same.
pub fn same_record(id: (u8, u8), got: Option<&Record>, expected: Option<&ModelRecord>, now: u64) {
    match (got, expected) {
        (None, None) => {}
        (Some(r), Some(m)) => {
            assert_eq!(r.key(), &key(id));
            assert_eq!(
                r.fingerprint(),
                fingerprint(m.body),
                "fingerprint of {id:?}"
            );
            assert_eq!(
                r.created_at().as_millis(),
                m.created_at,
                "created_at of {id:?}"
            );
            assert_eq!(
                r.expires_at().as_millis(),
                m.expires_at,
                "expires_at of {id:?}"
            );
            assert_eq!(r.fencing_token(), m.token, "token of {id:?}");
            assert_eq!(r.attempts(), m.attempts, "attempts of {id:?}");
            assert_eq!(r.replays(), m.replays, "replays of {id:?}");
            assert_eq!(
                r.checkpoint().map(|c| &c[..]),
                m.checkpoint.as_deref(),
                "checkpoint of {id:?}"
            );
            match (r.state(), &m.in_flight_until, &m.completed) {
                (RecordState::InFlight { lease_until }, Some(until), None) => {
                    if lease_until.as_millis() > now || *until > now {
                        assert_eq!(lease_until.as_millis(), *until, "lease of {id:?}")
                    }
                }
                (
                    RecordState::Completed {
                        completed_at,
                        response,
                    },
                    None,
                    Some((at, bytes)),
                ) => {
                    assert_eq!(completed_at.as_millis(), *at, "completed_at of {id:?}");
                    assert_eq!(&response[..], &bytes[..], "response of {id:?}");
                }
                (state, _, _) => panic!("{id:?}: store has {state:?}, model has {m:?}"),
            }
        }
        _ => panic!("lookup {id:?}: store has {got:?}, model has {expected:?}"),
    }
}

/// Removes what maintenance at `now` must remove; returns how many.
pub fn model_maintain(model: &mut Model, now: u64) -> u64 {
    let before = model.records.len();
    model.records.retain(|_, r| now < r.expires_at);
    (before - model.records.len()) as u64
}

/// Checks every identity and the store's record counts against the model.
/// Counts are exact only for an engine that expires to the millisecond in
/// its index (the in-memory one; the durable index rounds to seconds).
pub fn compare_all(store: &Store, model: &Model, now: u64, exact_counts: bool) {
    for i in 0..SCOPES * KEYS {
        let id = identity_of(i);
        let got = store
            .lookup(&key(id))
            .unwrap_or_else(|e| panic!("lookup failed: {e}"));
        same_record(
            id,
            got.as_ref(),
            model.records.get(&id).filter(|r| now < r.expires_at),
            now,
        );
    }
    if !exact_counts {
        return;
    }
    let stats = store.stats();
    assert_eq!(
        stats.live_records,
        model.records.len() as u64,
        "live records"
    );
    let in_flight = model
        .records
        .values()
        .filter(|r| r.in_flight_until.is_some())
        .count();
    assert_eq!(stats.in_flight, in_flight as u64, "records in flight");
}
