//! The conformance suite: every backend must decide, fence, expire and
//! isolate tenants exactly alike (SPEC §3, §8).
//!
//! Each test is generic over a [`Harness`], which knows how to open a
//! backend and how time moves for it. Embedded backends run on a
//! [`ManualClock`], so time jumps and every boundary is checked to the
//! millisecond. A network backend whose server owns the clock (Redis) cannot
//! be moved: its tests use short real leases and TTLs and poll the server's
//! clock with a deadline until the instant a test needs has passed; they
//! never sleep for a guessed duration and then assert.
//!
//! A backend's test file runs the whole suite with
//! `conformance::suite!(make_harness_expression);`.

#![allow(dead_code)] // each test binary uses its own share of the helpers

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idemlog::{
    Backend, Bytes, Config, Error, Fingerprint, Fingerprinter, IdempotencyKey, Lease, ManualClock,
    Outcome, Record, RecordState, ReserveOptions, Timestamp,
};

/// What a backend's tests need from it.
pub trait Harness: Send + Sync + 'static {
    /// The backend under test.
    type B: Backend;

    /// A backend with an empty namespace of its own, deciding with
    /// `config`'s lease, TTL and limits. Harnesses with a manual clock put
    /// it into the config.
    fn open(&self, config: Config) -> impl Future<Output = Self::B> + Send;

    /// Drops `backend` and opens the same storage again (a process restart,
    /// or a reconnect for a server), or `None` when records do not outlive
    /// the backend (in memory).
    fn reopen(&self, backend: Self::B) -> impl Future<Output = Option<Self::B>> + Send;

    /// The backend's current time: the manual clock, or the server's clock.
    fn now(&self, backend: &Self::B) -> impl Future<Output = Timestamp> + Send;

    /// The clock tests move, when the backend takes its time from one.
    fn manual_clock(&self) -> Option<&ManualClock>;
}

/// Default lease of the suite's backends: long enough that a live lease
/// cannot run out during a test on a loaded machine, whatever the clock.
pub const LONG: Duration = Duration::from_secs(60);
/// Default TTL of the suite's backends.
pub const TTL: Duration = Duration::from_secs(3600);

/// A lease the test will let run out: free to jump over with a manual
/// clock, a few hundred milliseconds of real time otherwise.
pub fn short<H: Harness>(h: &H) -> Duration {
    if h.manual_clock().is_some() {
        Duration::from_secs(30)
    } else {
        Duration::from_millis(250)
    }
}

/// The suite's configuration.
pub fn config() -> Config {
    Config::builder()
        .lease(LONG)
        .ttl(TTL)
        .maintenance_interval(None)
        .build()
}

/// Lets the backend's time reach `t`: moves a manual clock there, or polls
/// the server's clock until it has passed `t` (failing after a deadline).
pub async fn advance_to<H: Harness>(h: &H, b: &H::B, t: Timestamp) {
    if let Some(clock) = h.manual_clock() {
        if clock.now_ms() < t.as_millis() {
            clock.set(t);
        }
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = h.now(b).await;
        if now >= t {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the backend's clock did not reach {t:?} within 10 s (now {now:?})"
        );
        let wait = t
            .saturating_duration_since(now)
            .min(Duration::from_millis(20));
        tokio::time::sleep(wait).await;
    }
}

trait ClockExt {
    fn now_ms(&self) -> u64;
}
impl ClockExt for ManualClock {
    fn now_ms(&self) -> u64 {
        idemlog::Clock::now(self).as_millis()
    }
}

pub fn key(scope: &str, key: &str) -> IdempotencyKey {
    IdempotencyKey::new(scope, key).expect("a valid test key")
}

pub fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_bytes(body.as_bytes())
}

pub async fn acquire<B: Backend>(
    b: &B,
    k: &IdempotencyKey,
    f: &Fingerprint,
    options: ReserveOptions,
) -> Lease {
    match b.reserve(k, f, options).await {
        Ok(Outcome::Acquired(lease)) => lease,
        other => panic!("expected Acquired for {k:?}, got {other:?}"),
    }
}

pub async fn record<B: Backend>(b: &B, k: &IdempotencyKey) -> Record {
    match b.lookup(k).await {
        Ok(Some(r)) => r,
        other => panic!("expected a record for {k:?}, got {other:?}"),
    }
}

fn assert_lease_lost(result: Result<(), Error>, held: u64, current: Option<u64>, what: &str) {
    assert!(
        matches!(result, Err(Error::LeaseLost { held: h, current: c }) if h == held && c == current),
        "{what}: expected LeaseLost {{ held: {held}, current: {current:?} }}, got {result:?}"
    );
}

// ---------------------------------------------------------------------------
// The decision table, row by row.

/// Row 1: no record → Acquired, a new in-flight record with a new token.
pub async fn row_absent_is_acquired<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-1"), fp("body"));
    let before = h.now(&b).await;
    let lease = acquire(&b, &k, &f, ReserveOptions::default()).await;
    assert_eq!(lease.key, k);
    assert_eq!(lease.attempt, 1);
    assert_eq!(lease.checkpoint, None);
    assert_eq!(lease.ttl, TTL);
    assert!(lease.token > 0, "tokens start above zero: {lease:?}");
    if h.manual_clock().is_some() {
        assert_eq!(lease.lease_until, before.saturating_add(LONG));
    } else {
        assert!(
            lease.lease_until >= before.saturating_add(LONG),
            "{lease:?}"
        );
    }

    let r = record(&b, &k).await;
    assert_eq!(r.key(), &k);
    assert!(f.matches(&r.fingerprint()), "{r:?}");
    assert_eq!(
        r.state(),
        &RecordState::InFlight {
            lease_until: lease.lease_until
        }
    );
    assert_eq!(r.fencing_token(), lease.token);
    assert_eq!(r.attempts(), 1);
    assert_eq!(r.replays(), 0);
    assert_eq!(r.checkpoint(), None);
    assert_eq!(r.response(), None);
    assert_eq!(r.completed_at(), None);
    assert!(
        r.created_at() >= before && r.created_at() < lease.lease_until,
        "{r:?}"
    );
    // An abandoned reservation is forgotten one TTL after its lease.
    assert_eq!(r.expires_at(), lease.lease_until.saturating_add(TTL));
}

/// Row 2: in flight, other fingerprint → Conflict { in_flight: true }, also
/// once the lease is over (a conflict never shadows the earlier request).
pub async fn row_in_flight_other_fingerprint_conflicts<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let k = key("tenant-1", "k-2");
    let lease = acquire(
        &b,
        &k,
        &fp("first"),
        ReserveOptions::default().lease(short(&h)),
    )
    .await;
    let before = record(&b, &k).await;
    let got = b
        .reserve(&k, &fp("second"), ReserveOptions::default())
        .await;
    assert!(
        matches!(got, Ok(Outcome::Conflict { in_flight: true })),
        "got {got:?}"
    );
    advance_to(&h, &b, lease.lease_until).await;
    let got = b
        .reserve(&k, &fp("second"), ReserveOptions::default())
        .await;
    assert!(
        matches!(got, Ok(Outcome::Conflict { in_flight: true })),
        "after the lease: got {got:?}"
    );
    assert_eq!(record(&b, &k).await, before, "a conflict changes nothing");
}

/// Row 3: in flight, same fingerprint, lease running → InProgress with
/// `retry_after = lease_until - now`.
pub async fn row_in_flight_same_fingerprint_is_in_progress<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-3"), fp("body"));
    let lease = acquire(&b, &k, &f, ReserveOptions::default()).await;
    let before = record(&b, &k).await;
    let got = b.reserve(&k, &f, ReserveOptions::default()).await;
    match got {
        Ok(Outcome::InProgress {
            retry_after,
            attempt: 1,
        }) => {
            if h.manual_clock().is_some() {
                assert_eq!(retry_after, LONG);
            } else {
                assert!(
                    retry_after <= LONG && retry_after > LONG - Duration::from_secs(10),
                    "{retry_after:?}"
                );
            }
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
    if let Some(clock) = h.manual_clock() {
        // One millisecond before the lease ends it is still running.
        clock.set(Timestamp::from_millis(lease.lease_until.as_millis() - 1));
        let got = b.reserve(&k, &f, ReserveOptions::default()).await;
        assert!(
            matches!(got, Ok(Outcome::InProgress { retry_after, attempt: 1 }) if retry_after == Duration::from_millis(1)),
            "1 ms before the lease ends: got {got:?}"
        );
    }
    assert_eq!(record(&b, &k).await, before, "InProgress changes nothing");
}

/// Row 4: in flight, same fingerprint, lease over → Acquired again: token
/// up, attempt + 1, the last checkpoint handed over; the stale holder is
/// fenced off and changes nothing.
pub async fn row_takeover_after_the_lease<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-4"), fp("body"));
    let old = acquire(&b, &k, &f, ReserveOptions::default().lease(short(&h))).await;
    b.checkpoint(&old, Bytes::from_static(b"phase-2: card charged"))
        .await
        .expect("checkpoint under a live lease");
    let created = record(&b, &k).await.created_at();

    advance_to(&h, &b, old.lease_until).await;
    let new = acquire(&b, &k, &f, ReserveOptions::default()).await;
    assert_eq!(new.attempt, 2);
    assert!(new.token > old.token, "token must rise: {old:?} → {new:?}");
    assert_eq!(
        new.checkpoint.as_deref(),
        Some(&b"phase-2: card charged"[..])
    );
    let taken = record(&b, &k).await;
    assert_eq!(taken.attempts(), 2);
    assert_eq!(taken.fencing_token(), new.token);
    assert_eq!(
        taken.created_at(),
        created,
        "a takeover keeps the creation time"
    );
    assert_eq!(taken.lease_until(), Some(new.lease_until));
    assert_eq!(
        taken.checkpoint().map(|c| &c[..]),
        Some(&b"phase-2: card charged"[..])
    );

    // The stale holder: every operation is refused and nothing changes.
    let mut stale = old.clone();
    assert_lease_lost(
        b.complete(&stale, Bytes::from_static(b"stale")).await,
        old.token,
        Some(new.token),
        "stale complete",
    );
    assert_lease_lost(
        b.checkpoint(&stale, Bytes::from_static(b"stale")).await,
        old.token,
        Some(new.token),
        "stale checkpoint",
    );
    assert_lease_lost(
        b.extend(&mut stale, LONG).await,
        old.token,
        Some(new.token),
        "stale extend",
    );
    assert_eq!(
        stale.lease_until, old.lease_until,
        "a refused extend leaves the lease as it was"
    );
    assert_lease_lost(
        b.release(&stale).await,
        old.token,
        Some(new.token),
        "stale release",
    );
    assert_eq!(
        record(&b, &k).await,
        taken,
        "stale operations change nothing"
    );

    // The new holder finishes; the replay reports two attempts.
    b.complete(&new, Bytes::from_static(b"done"))
        .await
        .expect("complete");
    match b.reserve(&k, &f, ReserveOptions::default()).await {
        Ok(Outcome::Replay(r)) => {
            assert_eq!(&r.response[..], b"done");
            assert_eq!(r.attempts, 2);
        }
        other => panic!("expected Replay, got {other:?}"),
    }
}

/// Row 4's boundary: the lease is over at exactly `lease_until`.
pub async fn row_takeover_boundary_is_exact<H: Harness>(h: H) {
    let Some(clock) = h.manual_clock().cloned() else {
        return; // a server's clock cannot be stopped at a boundary
    };
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-4b"), fp("body"));
    let old = acquire(&b, &k, &f, ReserveOptions::default()).await;
    clock.set(Timestamp::from_millis(old.lease_until.as_millis() - 1));
    let got = b.reserve(&k, &f, ReserveOptions::default()).await;
    assert!(matches!(got, Ok(Outcome::InProgress { .. })), "got {got:?}");
    clock.set(old.lease_until);
    let new = acquire(&b, &k, &f, ReserveOptions::default()).await;
    assert_eq!(new.attempt, 2);
    assert_eq!(new.lease_until, old.lease_until.saturating_add(LONG));
}

/// Row 5: completed, other fingerprint → Conflict { in_flight: false }.
pub async fn row_completed_other_fingerprint_conflicts<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let k = key("tenant-1", "k-5");
    let lease = acquire(&b, &k, &fp("first"), ReserveOptions::default()).await;
    b.complete(&lease, Bytes::from_static(b"201 created"))
        .await
        .expect("complete");
    let before = record(&b, &k).await;
    let got = b
        .reserve(&k, &fp("second"), ReserveOptions::default())
        .await;
    assert!(
        matches!(got, Ok(Outcome::Conflict { in_flight: false })),
        "got {got:?}"
    );
    assert_eq!(record(&b, &k).await, before, "a conflict changes nothing");
}

/// Row 6: completed, same fingerprint, not expired → Replay of the stored
/// response, byte for byte; the record counts replays.
pub async fn row_completed_same_fingerprint_replays<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-6"), fp("body"));
    let lease = acquire(&b, &k, &f, ReserveOptions::default()).await;
    // Every byte value, so no layer may treat the response as text.
    let response: Bytes = (0..=255u8).chain(0..=255u8).collect::<Vec<u8>>().into();
    let before = h.now(&b).await;
    b.complete(&lease, response.clone())
        .await
        .expect("complete");
    let done = record(&b, &k).await;
    let completed_at = done.completed_at().expect("completed");
    assert!(completed_at >= before, "{done:?}");
    assert_eq!(done.expires_at(), completed_at.saturating_add(TTL));
    assert_eq!(done.response(), Some(&response));
    assert_eq!(done.checkpoint(), None, "completion drops the checkpoint");
    assert_eq!(done.fencing_token(), lease.token);

    for n in 1..=2u64 {
        match b.reserve(&k, &f, ReserveOptions::default()).await {
            Ok(Outcome::Replay(r)) => {
                assert_eq!(r.response, response);
                assert_eq!(r.completed_at, completed_at);
                assert_eq!(r.expires_at, completed_at.saturating_add(TTL));
                assert_eq!(r.attempts, 1);
            }
            other => panic!("replay {n}: expected Replay, got {other:?}"),
        }
        assert_eq!(record(&b, &k).await.replays(), n);
    }
}

/// Row 1, second half: a completed record counts as absent from exactly
/// `completed_at + ttl`; what follows is a fresh record.
pub async fn row_expired_completed_is_absent<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-7"), fp("body"));
    let ttl = short(&h);
    let lease = acquire(&b, &k, &f, ReserveOptions::default().ttl(ttl)).await;
    assert_eq!(lease.ttl, ttl);
    b.complete(&lease, Bytes::from_static(b"old"))
        .await
        .expect("complete");
    // With real time the record may already be gone when we look, so the
    // server's clock after completing bounds its expiry instead.
    let expires = match h.manual_clock() {
        Some(_) => record(&b, &k).await.expires_at(),
        None => h.now(&b).await.saturating_add(ttl),
    };
    if let Some(clock) = h.manual_clock() {
        clock.set(Timestamp::from_millis(expires.as_millis() - 1));
        let got = b.reserve(&k, &f, ReserveOptions::default()).await;
        assert!(
            matches!(got, Ok(Outcome::Replay(_))),
            "1 ms before expiry: got {got:?}"
        );
    }
    advance_to(&h, &b, expires).await;
    let got = b.lookup(&k).await;
    assert!(
        matches!(got, Ok(None)),
        "an expired record is not shown: {got:?}"
    );
    // Absent for any body: a different one is no conflict any more.
    let fresh = acquire(&b, &k, &fp("another body"), ReserveOptions::default()).await;
    assert_eq!(fresh.attempt, 1);
    assert_eq!(fresh.checkpoint, None);
    assert!(fresh.token > lease.token, "tokens rise across expiry");
}

/// An in-flight record nobody completes is forgotten `ttl` after its lease.
pub async fn abandoned_in_flight_record_expires<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let k = key("tenant-1", "k-8");
    let opts = ReserveOptions::default().lease(short(&h)).ttl(short(&h));
    let old = acquire(&b, &k, &fp("a"), opts).await;
    b.checkpoint(&old, Bytes::from_static(b"cp"))
        .await
        .expect("checkpoint");
    let expires = record(&b, &k).await.expires_at();
    assert_eq!(expires, old.lease_until.saturating_add(short(&h)));
    advance_to(&h, &b, expires).await;
    assert!(matches!(b.lookup(&k).await, Ok(None)));
    let fresh = acquire(&b, &k, &fp("b"), ReserveOptions::default()).await;
    assert_eq!(fresh.attempt, 1, "a fresh record, not a takeover");
    assert_eq!(fresh.checkpoint, None);
    assert!(fresh.token > old.token);
}

// ---------------------------------------------------------------------------
// Operations on a held reservation.

/// A released record is gone; the released lease is fenced off; the retry
/// runs again as a fresh first attempt with a higher token.
pub async fn release_lets_the_retry_run<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-9"), fp("body"));
    let first = acquire(&b, &k, &f, ReserveOptions::default()).await;
    b.release(&first).await.expect("release");
    assert!(matches!(b.lookup(&k).await, Ok(None)));
    assert_lease_lost(
        b.complete(&first, Bytes::from_static(b"late")).await,
        first.token,
        None,
        "complete after release",
    );
    assert_lease_lost(b.release(&first).await, first.token, None, "double release");
    assert!(
        matches!(b.lookup(&k).await, Ok(None)),
        "nothing was written"
    );
    let second = acquire(&b, &k, &f, ReserveOptions::default()).await;
    assert_eq!(second.attempt, 1);
    assert!(second.token > first.token);
    assert_lease_lost(
        b.complete(&first, Bytes::from_static(b"late")).await,
        first.token,
        Some(second.token),
        "released lease against the new holder",
    );
}

/// A completed response is never replaced, not even by its own holder.
pub async fn completing_twice_is_refused<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-10"), fp("body"));
    let lease = acquire(&b, &k, &f, ReserveOptions::default()).await;
    b.complete(&lease, Bytes::from_static(b"first"))
        .await
        .expect("complete");
    let done = record(&b, &k).await;
    assert_lease_lost(
        b.complete(&lease, Bytes::from_static(b"second")).await,
        lease.token,
        Some(lease.token),
        "second complete",
    );
    assert_lease_lost(
        b.checkpoint(&lease, Bytes::from_static(b"cp")).await,
        lease.token,
        Some(lease.token),
        "checkpoint after complete",
    );
    assert_lease_lost(
        b.release(&lease).await,
        lease.token,
        Some(lease.token),
        "release after complete",
    );
    assert_eq!(record(&b, &k).await, done);
}

/// `extend` moves the lease from the backend's now; InProgress follows it,
/// and a takeover waits for the extended lease.
pub async fn extend_moves_the_lease<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-11"), fp("body"));
    let mut lease = acquire(&b, &k, &f, ReserveOptions::default().lease(short(&h))).await;
    let first_until = lease.lease_until;
    let before = h.now(&b).await;
    b.extend(&mut lease, LONG).await.expect("extend");
    assert!(
        lease.lease_until >= before.saturating_add(LONG),
        "{lease:?}"
    );
    if h.manual_clock().is_some() {
        assert_eq!(lease.lease_until, before.saturating_add(LONG));
    }
    let r = record(&b, &k).await;
    assert_eq!(r.lease_until(), Some(lease.lease_until));
    assert_eq!(r.expires_at(), lease.lease_until.saturating_add(TTL));
    assert_eq!(r.fencing_token(), lease.token, "extend keeps the token");
    // Past the first lease, the extended one still runs.
    advance_to(&h, &b, first_until).await;
    let got = b.reserve(&k, &f, ReserveOptions::default()).await;
    assert!(
        matches!(got, Ok(Outcome::InProgress { attempt: 1, .. })),
        "got {got:?}"
    );
    b.complete(&lease, Bytes::from_static(b"ok"))
        .await
        .expect("complete after extend");
}

/// A holder whose lease ran out but whom nobody took over still owns the
/// record: its token is current.
pub async fn late_completion_without_takeover_succeeds<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-12"), fp("body"));
    let lease = acquire(&b, &k, &f, ReserveOptions::default().lease(short(&h))).await;
    advance_to(&h, &b, lease.lease_until).await;
    b.complete(&lease, Bytes::from_static(b"late but fine"))
        .await
        .expect("complete");
    match b.reserve(&k, &f, ReserveOptions::default()).await {
        Ok(Outcome::Replay(r)) => assert_eq!(&r.response[..], b"late but fine"),
        other => panic!("expected Replay, got {other:?}"),
    }
}

/// Checkpoints replace each other; the last one is handed over.
pub async fn last_checkpoint_is_handed_over<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-13"), fp("body"));
    let first = acquire(&b, &k, &f, ReserveOptions::default().lease(short(&h))).await;
    b.checkpoint(&first, Bytes::from_static(b"one"))
        .await
        .expect("checkpoint 1");
    b.checkpoint(&first, Bytes::from_static(b"two"))
        .await
        .expect("checkpoint 2");
    assert_eq!(
        record(&b, &k).await.checkpoint().map(|c| &c[..]),
        Some(&b"two"[..])
    );
    advance_to(&h, &b, first.lease_until).await;
    let second = acquire(&b, &k, &f, ReserveOptions::default().lease(short(&h))).await;
    assert_eq!(second.checkpoint.as_deref(), Some(&b"two"[..]));
    // A takeover of a takeover: the count keeps rising.
    b.checkpoint(&second, Bytes::from_static(b"three"))
        .await
        .expect("checkpoint 3");
    advance_to(&h, &b, second.lease_until).await;
    let third = acquire(&b, &k, &f, ReserveOptions::default()).await;
    assert_eq!(third.attempt, 3);
    assert!(third.token > second.token && second.token > first.token);
    assert_eq!(third.checkpoint.as_deref(), Some(&b"three"[..]));
}

/// Fencing tokens strictly increase per identity across release and reuse.
pub async fn tokens_strictly_increase<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let (k, f) = (key("tenant-1", "k-14"), fp("body"));
    let mut last = 0;
    for _ in 0..20 {
        let lease = acquire(&b, &k, &f, ReserveOptions::default()).await;
        assert!(lease.token > last, "{} after {last}", lease.token);
        last = lease.token;
        b.release(&lease).await.expect("release");
    }
}

/// A request fingerprinted under a new algorithm still replays a record
/// stored under the old one when it carries the old digest as a fallback.
pub async fn fallback_fingerprint_matches_old_records<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let k = key("tenant-1", "k-15");
    let body = br#"{"a":1}"#;
    let raw = Fingerprint::of_bytes(body);
    let lease = acquire(&b, &k, &raw, ReserveOptions::default()).await;
    b.complete(&lease, Bytes::from_static(b"ok"))
        .await
        .expect("complete");
    let json = Fingerprint::of_json(body).expect("json");
    let got = b.reserve(&k, &json, ReserveOptions::default()).await;
    assert!(
        matches!(got, Ok(Outcome::Conflict { in_flight: false })),
        "no fallback: {got:?}"
    );
    let migrating = json.with_fallback(raw);
    let got = b.reserve(&k, &migrating, ReserveOptions::default()).await;
    assert!(
        matches!(got, Ok(Outcome::Replay(_))),
        "with fallback: {got:?}"
    );
    // The route counts in the fingerprint.
    let k2 = key("tenant-1", "k-15b");
    let mut post = Fingerprinter::raw();
    post.route("POST", "/v1/charges").update(body);
    let mut put = Fingerprinter::raw();
    put.route("PUT", "/v1/charges").update(body);
    let (post, put) = (post.finish().expect("raw"), put.finish().expect("raw"));
    let _held = acquire(&b, &k2, &post, ReserveOptions::default()).await;
    let got = b.reserve(&k2, &put, ReserveOptions::default()).await;
    assert!(
        matches!(got, Ok(Outcome::Conflict { in_flight: true })),
        "got {got:?}"
    );
}

// ---------------------------------------------------------------------------
// Limits and typed errors.

pub async fn limits_are_typed_errors<H: Harness>(h: H) {
    let mut cfg = config();
    cfg.limits.max_key_len = 8;
    cfg.limits.max_scope_len = 6;
    cfg.limits.max_response_len = 100;
    cfg.limits.max_checkpoint_len = 10;
    let b = h.open(cfg).await;
    assert_eq!(b.limits().max_response_len, 100);
    let f = fp("body");

    let long_key = key("tenant", "123456789");
    let got = b.reserve(&long_key, &f, ReserveOptions::default()).await;
    assert!(
        matches!(got, Err(Error::KeyTooLong { len: 9, limit: 8 })),
        "got {got:?}"
    );
    let got = b.lookup(&long_key).await;
    assert!(
        matches!(got, Err(Error::KeyTooLong { len: 9, limit: 8 })),
        "got {got:?}"
    );
    let long_scope = key("tenant-7", "k");
    let got = b.reserve(&long_scope, &f, ReserveOptions::default()).await;
    assert!(
        matches!(got, Err(Error::ScopeTooLong { len: 8, limit: 6 })),
        "got {got:?}"
    );
    assert!(got.unwrap_err().is_invalid_input());

    let k = key("tenant", "12345678");
    let lease = acquire(&b, &k, &f, ReserveOptions::default()).await;
    let got = b.checkpoint(&lease, Bytes::from(vec![7u8; 11])).await;
    assert!(
        matches!(got, Err(Error::CheckpointTooLarge { len: 11, limit: 10 })),
        "got {got:?}"
    );
    let got = b.complete(&lease, Bytes::from(vec![7u8; 101])).await;
    assert!(
        matches!(
            got,
            Err(Error::ResponseTooLarge {
                len: 101,
                limit: 100
            })
        ),
        "got {got:?}"
    );
    // Nothing was stored and the lease still holds.
    let r = record(&b, &k).await;
    assert!(r.is_in_flight() && r.checkpoint().is_none(), "{r:?}");
    b.checkpoint(&lease, Bytes::from(vec![7u8; 10]))
        .await
        .expect("checkpoint at the limit");
    b.complete(&lease, Bytes::from(vec![9u8; 100]))
        .await
        .expect("response at the limit");
    assert_eq!(record(&b, &k).await.response().map(|r| r.len()), Some(100));

    // The empty response is a response.
    let k2 = key("tenant", "empty");
    let lease = acquire(&b, &k2, &f, ReserveOptions::default()).await;
    b.complete(&lease, Bytes::new())
        .await
        .expect("empty response");
    match b.reserve(&k2, &f, ReserveOptions::default()).await {
        Ok(Outcome::Replay(r)) => assert!(r.response.is_empty()),
        other => panic!("expected Replay of an empty response, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Tenant isolation.

/// The same key in two scopes is two records; scope and key bytes cannot be
/// re-split into another identity.
pub async fn scopes_never_see_each_other<H: Harness>(h: H) {
    let b = h.open(config()).await;
    let f = fp("body");
    let a = key("tenant-a", "order-1");
    let c = key("tenant-b", "order-1");
    let la = acquire(&b, &a, &f, ReserveOptions::default()).await;
    let lc = acquire(&b, &c, &f, ReserveOptions::default()).await;
    b.complete(&la, Bytes::from_static(b"A"))
        .await
        .expect("complete a");
    assert!(
        record(&b, &c).await.is_in_flight(),
        "b is untouched by a's completion"
    );
    // A lease of one scope cannot touch the other scope's record.
    let mut forged = lc.clone();
    forged.key = a.clone();
    let got = b.complete(&forged, Bytes::from_static(b"forged")).await;
    assert!(matches!(got, Err(Error::LeaseLost { .. })), "got {got:?}");
    b.complete(&lc, Bytes::from_static(b"B"))
        .await
        .expect("complete b");
    assert_eq!(
        record(&b, &a).await.response().map(|r| &r[..]),
        Some(&b"A"[..])
    );
    assert_eq!(
        record(&b, &c).await.response().map(|r| &r[..]),
        Some(&b"B"[..])
    );
    assert_eq!(record(&b, &a).await.key(), &a);
    assert_eq!(record(&b, &c).await.key(), &c);

    // ("ab", "c") and ("a", "bc") are different identities.
    let x = key("ab", "c");
    let y = key("a", "bc");
    let lx = acquire(&b, &x, &f, ReserveOptions::default()).await;
    let got = b.reserve(&y, &f, ReserveOptions::default()).await;
    assert!(matches!(got, Ok(Outcome::Acquired(_))), "got {got:?}");
    b.release(&lx).await.expect("release");

    // Binary scopes and the empty scope are scopes like any other.
    let bin = IdempotencyKey::new([0u8, 0xff, b'{', b'}', b':'], "order-1").expect("binary scope");
    let empty = key("", "order-1");
    let lb = acquire(&b, &bin, &f, ReserveOptions::default()).await;
    let le = acquire(&b, &empty, &f, ReserveOptions::default()).await;
    b.complete(&lb, Bytes::from_static(b"bin"))
        .await
        .expect("complete bin");
    b.complete(&le, Bytes::from_static(b"empty"))
        .await
        .expect("complete empty");
    assert_eq!(record(&b, &bin).await.key(), &bin);
    assert_eq!(
        record(&b, &empty).await.response().map(|r| &r[..]),
        Some(&b"empty"[..])
    );
}

// ---------------------------------------------------------------------------
// Reopening.

/// Records outlive the backend instance: completed responses replay the
/// same bytes, in-flight records keep token, checkpoint and attempt count,
/// and new tokens continue above the old ones.
pub async fn records_survive_reopen<H: Harness>(h: H) {
    let mut cfg = config();
    cfg.keep_leases_on_open = true;
    let b = h.open(cfg).await;
    let f = fp("body");
    let done = key("tenant-1", "done");
    let flying = key("tenant-1", "flying");
    let l1 = acquire(&b, &done, &f, ReserveOptions::default()).await;
    b.complete(&l1, Bytes::from_static(b"kept"))
        .await
        .expect("complete");
    let l2 = acquire(&b, &flying, &f, ReserveOptions::default().lease(short(&h))).await;
    b.checkpoint(&l2, Bytes::from_static(b"cp"))
        .await
        .expect("checkpoint");
    let done_before = record(&b, &done).await;
    let flying_before = record(&b, &flying).await;

    let Some(b) = h.reopen(b).await else {
        return; // records do not outlive this backend
    };
    let done_after = record(&b, &done).await;
    assert_eq!(done_after.response(), done_before.response());
    assert_eq!(done_after.expires_at(), done_before.expires_at());
    assert_eq!(done_after.fencing_token(), done_before.fencing_token());
    let flying_after = record(&b, &flying).await;
    assert_eq!(flying_after.state(), flying_before.state());
    assert_eq!(flying_after.checkpoint(), flying_before.checkpoint());
    assert_eq!(flying_after.fencing_token(), l2.token);
    match b.reserve(&done, &f, ReserveOptions::default()).await {
        Ok(Outcome::Replay(r)) => assert_eq!(&r.response[..], b"kept"),
        other => panic!("expected Replay after reopen, got {other:?}"),
    }
    advance_to(&h, &b, l2.lease_until).await;
    let taken = acquire(&b, &flying, &f, ReserveOptions::default()).await;
    assert_eq!(taken.attempt, 2);
    assert_eq!(taken.checkpoint.as_deref(), Some(&b"cp"[..]));
    assert!(
        taken.token > l2.token.max(l1.token),
        "tokens continue above the old ones"
    );
    let fresh = acquire(&b, &key("tenant-1", "new"), &f, ReserveOptions::default()).await;
    assert!(
        fresh.token > l2.token.max(l1.token),
        "tokens continue above the old ones"
    );
    assert_lease_lost(
        b.complete(&l2, Bytes::from_static(b"stale")).await,
        l2.token,
        Some(taken.token),
        "pre-reopen lease after takeover",
    );
}

// ---------------------------------------------------------------------------
// Concurrency.

/// Many tasks race on few keys: at most one holds a valid lease per key at
/// any time, each logical write completes exactly once, and every replay
/// returns the one stored response. Some holders release instead of
/// completing (a failure that is not cached), so keys change hands.
pub async fn concurrent_duplicates_have_one_holder<H: Harness>(h: H) {
    const TASKS: usize = 24;
    const KEYS: usize = 4;
    // Generations of fresh keys, so the race for a new key is run often.
    const GENERATIONS: usize = 25;
    const ALL: usize = KEYS * GENERATIONS;
    let b = Arc::new(h.open(config()).await);
    let holders: Arc<Vec<AtomicU32>> = Arc::new((0..ALL).map(|_| AtomicU32::new(0)).collect());
    let completions: Arc<Vec<AtomicU32>> = Arc::new((0..ALL).map(|_| AtomicU32::new(0)).collect());
    let releases = Arc::new(AtomicU64::new(0));
    let seen: Arc<Mutex<HashMap<usize, Vec<Bytes>>>> = Arc::default();

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (b, holders, completions, releases, seen) = (
            Arc::clone(&b),
            Arc::clone(&holders),
            Arc::clone(&completions),
            Arc::clone(&releases),
            Arc::clone(&seen),
        );
        tasks.push(tokio::spawn(async move {
            for round in 0..ALL {
                let i = round / KEYS * KEYS + (t + round) % KEYS;
                let (k, f) = (
                    key("tenant-c", &format!("key-{i}")),
                    fp(&format!("body-{i}")),
                );
                let mut polls = 0u32;
                loop {
                    polls += 1;
                    assert!(polls < 100_000, "task {t} starved on key {i}");
                    match b.reserve(&k, &f, ReserveOptions::default()).await {
                        Ok(Outcome::Acquired(lease)) => {
                            let before = holders[i].fetch_add(1, Ordering::SeqCst);
                            assert_eq!(before, 0, "two valid holders of key {i}");
                            tokio::task::yield_now().await;
                            holders[i].fetch_sub(1, Ordering::SeqCst);
                            // Every third acquisition fails uncached and
                            // releases, so the key is acquired again.
                            if (t + polls as usize).is_multiple_of(3) {
                                b.release(&lease).await.expect("release of a held lease");
                                releases.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let response = Bytes::from(format!("resp-{i}-{}", lease.token));
                            b.complete(&lease, response.clone())
                                .await
                                .expect("complete of a held lease");
                            completions[i].fetch_add(1, Ordering::SeqCst);
                            seen.lock().unwrap().entry(i).or_default().push(response);
                            break;
                        }
                        Ok(Outcome::Replay(r)) => {
                            seen.lock().unwrap().entry(i).or_default().push(r.response);
                            break;
                        }
                        Ok(Outcome::InProgress { .. }) => tokio::task::yield_now().await,
                        other => panic!("task {t} key {i}: unexpected {other:?}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    for i in 0..ALL {
        assert_eq!(
            completions[i].load(Ordering::SeqCst),
            1,
            "key {i} completed once"
        );
        let k = key("tenant-c", &format!("key-{i}"));
        let stored = record(&*b, &k)
            .await
            .response()
            .cloned()
            .expect("completed");
        let answers = &seen[&i];
        assert_eq!(answers.len(), TASKS, "every task got an answer for key {i}");
        assert!(
            answers.iter().all(|a| *a == stored),
            "key {i}: every answer is the one stored response {stored:?}: {answers:?}"
        );
    }
}

/// Many tasks race for fresh keys and then to take over one expired lease:
/// exactly one wins each race (the takeover with attempt 2); the rest see
/// the key in progress; the stale holder is fenced.
pub async fn concurrent_takeover_has_one_winner<H: Harness>(h: H) {
    const TASKS: usize = 16;
    let b = Arc::new(h.open(config()).await);
    // Fresh identities race for the first reservation, many times.
    for round in 0..20 {
        let k = key("tenant-t", &format!("fresh-{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (b, barrier, k) = (Arc::clone(&b), Arc::clone(&barrier), k.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                b.reserve(&k, &fp("body"), ReserveOptions::default()).await
            }));
        }
        let mut acquired = 0;
        for task in tasks {
            match task.await.expect("task panicked") {
                Ok(Outcome::Acquired(_)) => acquired += 1,
                Ok(Outcome::InProgress { attempt: 1, .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(acquired, 1, "round {round}: exactly one first reservation");
    }
    let (k, f) = (key("tenant-t", "k"), fp("body"));
    let old = acquire(&*b, &k, &f, ReserveOptions::default().lease(short(&h))).await;
    advance_to(&h, &*b, old.lease_until).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (b, barrier, k) = (Arc::clone(&b), Arc::clone(&barrier), k.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            b.reserve(&k, &f, ReserveOptions::default()).await
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task panicked") {
            Ok(Outcome::Acquired(lease)) => winners.push(lease),
            Ok(Outcome::InProgress { attempt: 2, .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one takeover: {winners:?}");
    let new = &winners[0];
    assert_eq!(new.attempt, 2);
    assert_lease_lost(
        b.complete(&old, Bytes::from_static(b"stale")).await,
        old.token,
        Some(new.token),
        "stale holder after a raced takeover",
    );
    b.complete(new, Bytes::from_static(b"fresh"))
        .await
        .expect("complete");
    assert_eq!(
        record(&*b, &k).await.response().map(|r| &r[..]),
        Some(&b"fresh"[..])
    );
}

/// Runs every test of the suite against the harness built by `$make`.
macro_rules! suite {
    ($make:expr) => {
        $crate::conformance::suite!(@tests $make;
            row_absent_is_acquired,
            row_in_flight_other_fingerprint_conflicts,
            row_in_flight_same_fingerprint_is_in_progress,
            row_takeover_after_the_lease,
            row_takeover_boundary_is_exact,
            row_completed_other_fingerprint_conflicts,
            row_completed_same_fingerprint_replays,
            row_expired_completed_is_absent,
            abandoned_in_flight_record_expires,
            release_lets_the_retry_run,
            completing_twice_is_refused,
            extend_moves_the_lease,
            late_completion_without_takeover_succeeds,
            last_checkpoint_is_handed_over,
            tokens_strictly_increase,
            fallback_fingerprint_matches_old_records,
            limits_are_typed_errors,
            scopes_never_see_each_other,
            records_survive_reopen,
            concurrent_duplicates_have_one_holder,
            concurrent_takeover_has_one_winner,
        );
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                conformance::$name($make).await;
            }
        )*
    };
}
pub(crate) use suite;

#[cfg(feature = "redis")]
pub mod redis_server;
