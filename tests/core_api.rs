//! The core API against every engine: the decision table of SPEC §3, fencing,
//! takeover, TTL, limits, tenant isolation and counters.

mod common;

use std::time::Duration;

use common::{Engine, Harness, LEASE, START, TTL};
use idemlog::{
    Error, Fingerprint, IdempotencyKey, Limits, Outcome, RecordState, Reservation, ReserveOptions,
    Timestamp,
};

fn key(scope: &str, k: &str) -> IdempotencyKey {
    IdempotencyKey::new(scope, k).unwrap()
}

fn fp(body: &str) -> Fingerprint {
    Fingerprint::of_bytes(body.as_bytes())
}

fn acquire(h: &Harness, k: &IdempotencyKey, body: &str) -> Reservation {
    match h.store.reserve(k, &fp(body)).unwrap() {
        Outcome::Acquired(r) => r,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(offset_ms: u64) -> Timestamp {
    Timestamp::from_millis(START.as_millis() + offset_ms)
}

macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(super::Engine::Memory) } )*
        }
        mod durable {
            $( #[test] fn $name() { super::$name(super::Engine::Durable) } )*
        }
    };
}

engine_tests!(
    absent_record_is_acquired_then_replayed,
    in_flight_other_body_conflicts_and_never_shadows,
    in_flight_same_body_is_in_progress_with_retry_after,
    lease_over_is_taken_over_with_checkpoint_and_fencing,
    stale_holder_cannot_change_anything,
    completed_other_body_conflicts,
    completed_replays_until_its_expiry_instant,
    expired_record_counts_as_absent_and_maintenance_removes_it,
    abandoned_in_flight_record_expires_ttl_after_its_lease,
    expired_reservation_cannot_complete_before_maintenance,
    release_lets_the_retry_run_again,
    dropping_a_reservation_releases_it,
    extend_pushes_the_lease,
    per_call_lease_and_ttl,
    complete_with_ttl_overrides,
    lookup_shows_the_whole_record,
    response_limit_at_and_above,
    checkpoint_limit_at_and_above,
    key_and_scope_limits_follow_the_store_config,
    tenants_never_see_each_other,
    canonical_json_retries_replay,
    route_in_fingerprint_conflicts_route_in_scope_does_not,
    stats_count_every_outcome,
    into_lease_and_token_level_operations,
    fallback_fingerprint_bridges_algorithms,
);

fn absent_record_is_acquired_then_replayed(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let r = acquire(&h, &k, "body");
    assert_eq!(r.attempt(), 1);
    assert!(!r.is_takeover());
    assert_eq!(r.recovered_checkpoint(), None);
    assert_eq!(r.lease_until(), at(60_000));
    r.complete(&b"response-1"[..]).unwrap();
    h.advance(ms(5));
    match h.store.reserve(&k, &fp("body")).unwrap() {
        Outcome::Replay(replay) => {
            assert_eq!(&replay.response[..], b"response-1");
            assert_eq!(replay.completed_at, START);
            assert_eq!(replay.expires_at, at(3_600_000));
            assert_eq!(replay.attempts, 1);
        }
        other => panic!("expected Replay, got {other:?}"),
    }
}

fn in_flight_other_body_conflicts_and_never_shadows(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let first = acquire(&h, &k, "a");
    let token = first.fencing_token();
    let out = h.store.reserve(&k, &fp("b")).unwrap();
    assert!(
        matches!(out, Outcome::Conflict { in_flight: true }),
        "got {out:?}"
    );
    // Even after the lease ran out, another body conflicts and takes nothing over.
    h.advance(LEASE * 2);
    let out = h.store.reserve(&k, &fp("b")).unwrap();
    assert!(
        matches!(out, Outcome::Conflict { in_flight: true }),
        "got {out:?}"
    );
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert_eq!(rec.fencing_token(), token);
    assert_eq!(rec.fingerprint(), fp("a"));
    first.complete(&b"ok"[..]).unwrap();
}

fn in_flight_same_body_is_in_progress_with_retry_after(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let _held = acquire(&h, &k, "a");
    let out = h.store.reserve(&k, &fp("a")).unwrap();
    assert!(
        matches!(out, Outcome::InProgress { retry_after, attempt: 1 } if retry_after == LEASE),
        "got {out:?}"
    );
    h.advance(ms(59_999));
    let out = h.store.reserve(&k, &fp("a")).unwrap();
    assert!(
        matches!(out, Outcome::InProgress { retry_after, .. } if retry_after == ms(1)),
        "got {out:?}"
    );
}

fn lease_over_is_taken_over_with_checkpoint_and_fencing(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let mut first = acquire(&h, &k, "a");
    first.checkpoint(&b"charged:ch_1"[..]).unwrap();
    let old_token = first.fencing_token();
    h.advance(LEASE);
    let second = acquire(&h, &k, "a");
    assert!(second.fencing_token() > old_token, "tokens must increase");
    assert_eq!(second.attempt(), 2);
    assert!(second.is_takeover());
    assert_eq!(
        second.recovered_checkpoint().map(|b| &b[..]),
        Some(&b"charged:ch_1"[..])
    );
    assert_eq!(second.lease_until(), at(120_000));
    // A third takeover counts on.
    h.advance(LEASE);
    let third = acquire(&h, &k, "a");
    assert_eq!(third.attempt(), 3);
    assert!(third.fencing_token() > second.fencing_token());
    third.complete(&b"done"[..]).unwrap();
    let stale = second.complete(&b"late"[..]).unwrap_err();
    assert!(
        matches!(
            stale,
            Error::LeaseLost {
                current: Some(_),
                ..
            }
        ),
        "got {stale:?}"
    );
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert_eq!(rec.response().map(|b| &b[..]), Some(&b"done"[..]));
    assert_eq!(rec.attempts(), 3);
    assert_eq!(rec.created_at(), START);
    drop(first);
}

fn stale_holder_cannot_change_anything(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let mut stale = acquire(&h, &k, "a");
    h.advance(LEASE + ms(1));
    let mut owner = acquire(&h, &k, "a");
    owner.checkpoint(&b"owner"[..]).unwrap();
    let before = h.store.lookup(&k).unwrap().unwrap();

    let held = stale.fencing_token();
    for err in [
        stale.extend(LEASE).unwrap_err(),
        stale.checkpoint(&b"stale"[..]).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::LeaseLost { held: h, current: Some(c) } if h == held && c == owner.fencing_token()),
            "got {err:?}"
        );
    }
    let err = stale.complete(&b"stale"[..]).unwrap_err();
    assert!(
        matches!(err, Error::LeaseLost { held: h, .. } if h == held),
        "got {err:?}"
    );
    assert_eq!(
        h.store.lookup(&k).unwrap().unwrap(),
        before,
        "nothing changed"
    );
    // Releasing (explicitly or by drop) a stale reservation changes nothing either.
    let mut stale2 = acquire(&h, &key("t", "k2"), "a");
    stale2.checkpoint(&b"x"[..]).unwrap();
    h.advance(LEASE + ms(1));
    let owner2 = acquire(&h, &key("t", "k2"), "a");
    let err = stale2.release().unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "got {err:?}");
    let rec = h.store.lookup(&key("t", "k2")).unwrap().unwrap();
    assert_eq!(rec.fencing_token(), owner2.fencing_token());
    assert!(rec.is_in_flight());
    owner.complete(&b"ok"[..]).unwrap();
    owner2.complete(&b"ok"[..]).unwrap();
}

fn completed_other_body_conflicts(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    acquire(&h, &k, "a").complete(&b"ok"[..]).unwrap();
    let out = h.store.reserve(&k, &fp("b")).unwrap();
    assert!(
        matches!(out, Outcome::Conflict { in_flight: false }),
        "got {out:?}"
    );
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert_eq!(rec.response().map(|b| &b[..]), Some(&b"ok"[..]));
}

fn completed_replays_until_its_expiry_instant(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let r = acquire(&h, &k, "a");
    h.advance(ms(1_000));
    r.complete(&b"ok"[..]).unwrap(); // completed at START + 1 s
    h.advance(TTL - ms(1)); // one millisecond before expiry
    let out = h.store.reserve(&k, &fp("a")).unwrap();
    assert!(matches!(out, Outcome::Replay(_)), "got {out:?}");
    assert!(h.store.lookup(&k).unwrap().is_some());
    h.advance(ms(1)); // exactly completed_at + ttl
    assert!(
        h.store.lookup(&k).unwrap().is_none(),
        "expired records are absent"
    );
    let out = h.store.reserve(&k, &fp("a")).unwrap();
    assert!(
        matches!(&out, Outcome::Acquired(r) if r.attempt() == 1 && !r.is_takeover()),
        "got {out:?}"
    );
}

fn expired_record_counts_as_absent_and_maintenance_removes_it(e: Engine) {
    let h = Harness::new(e);
    for i in 0..10 {
        acquire(&h, &key("t", &format!("k{i}")), "a")
            .complete(&b"ok"[..])
            .unwrap();
    }
    h.advance(ms(10));
    acquire(&h, &key("t", "late"), "a")
        .complete(&b"ok"[..])
        .unwrap();
    assert_eq!(h.store.stats().live_records, 11);
    h.advance(TTL - ms(10));
    let report = h.store.run_maintenance().unwrap();
    assert_eq!(report.expired, 10);
    let stats = h.store.stats();
    assert_eq!(stats.live_records, 1);
    assert_eq!(stats.expired, 10);
    // An expired record of another body is absent: the new request acquires.
    let other = key("t", "k3");
    assert!(matches!(
        h.store.reserve(&other, &fp("zzz")).unwrap(),
        Outcome::Acquired(_)
    ));
    assert!(h.store.lookup(&key("t", "late")).unwrap().is_some());
}

fn abandoned_in_flight_record_expires_ttl_after_its_lease(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let abandoned = acquire(&h, &k, "a").into_lease();
    h.advance(LEASE + TTL - ms(1));
    assert_eq!(h.store.run_maintenance().unwrap().expired, 0);
    assert!(h.store.lookup(&k).unwrap().is_some());
    h.advance(ms(1));
    assert_eq!(h.store.run_maintenance().unwrap().expired, 1);
    assert_eq!(h.store.stats().in_flight, 0);
    let err = h
        .store
        .complete_lease(&abandoned, "late".into())
        .unwrap_err();
    assert!(
        matches!(err, Error::LeaseLost { current: None, .. }),
        "got {err:?}"
    );
}

fn expired_reservation_cannot_complete_before_maintenance(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let mut held = acquire(&h, &k, "a").into_lease();
    h.advance(LEASE + TTL - ms(1));
    // One millisecond before expiry the holder still owns the record.
    h.store.extend_lease(&mut held, ms(0)).unwrap();
    let expires_at = h.store.lookup(&k).unwrap().unwrap().expires_at();
    h.clock.set(expires_at);
    // At the expiry instant the record counts as absent on every engine,
    // whether or not maintenance has removed it yet.
    for err in [
        h.store.complete_lease(&held, "late".into()).unwrap_err(),
        h.store.checkpoint_lease(&held, "late".into()).unwrap_err(),
        h.store.release_lease(&held).unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::LeaseLost { current: None, .. }),
            "got {err:?}"
        );
    }
    assert!(h.store.lookup(&k).unwrap().is_none());
    assert!(matches!(
        h.store.reserve(&k, &fp("b")).unwrap(),
        Outcome::Acquired(_)
    ));
}

fn release_lets_the_retry_run_again(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let first = acquire(&h, &k, "a");
    let t1 = first.fencing_token();
    first.release().unwrap();
    assert!(h.store.lookup(&k).unwrap().is_none());
    let second = acquire(&h, &k, "a");
    assert!(second.fencing_token() > t1);
    assert_eq!(second.attempt(), 1);
    second.complete(&b"ok"[..]).unwrap();
    assert_eq!(h.store.stats().released, 1);
}

fn dropping_a_reservation_releases_it(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    {
        let _r = acquire(&h, &k, "a");
        assert_eq!(h.store.stats().in_flight, 1);
    }
    assert!(h.store.lookup(&k).unwrap().is_none());
    assert_eq!(h.store.stats().in_flight, 0);
    assert!(matches!(
        h.store.reserve(&k, &fp("b")).unwrap(),
        Outcome::Acquired(_)
    ));
}

fn extend_pushes_the_lease(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let mut r = acquire(&h, &k, "a");
    h.advance(ms(50_000));
    r.extend(ms(30_000)).unwrap();
    assert_eq!(r.lease_until(), at(80_000));
    h.advance(ms(20_000)); // past the first lease, inside the extended one
    let out = h.store.reserve(&k, &fp("a")).unwrap();
    assert!(
        matches!(out, Outcome::InProgress { retry_after, .. } if retry_after == ms(10_000)),
        "got {out:?}"
    );
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert_eq!(rec.lease_until(), Some(at(80_000)));
    assert_eq!(rec.expires_at(), at(80_000 + 3_600_000));
    r.complete(&b"ok"[..]).unwrap();
}

fn per_call_lease_and_ttl(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let opts = ReserveOptions::default().lease(ms(500)).ttl(ms(2_000));
    let Outcome::Acquired(r) = h.store.reserve_with(&k, &fp("a"), opts).unwrap() else {
        panic!("expected Acquired")
    };
    assert_eq!(r.lease_until(), at(500));
    h.advance(ms(100));
    r.complete(&b"ok"[..]).unwrap();
    h.advance(ms(1_999));
    assert!(matches!(
        h.store.reserve(&k, &fp("a")).unwrap(),
        Outcome::Replay(_)
    ));
    h.advance(ms(1));
    assert!(matches!(
        h.store.reserve(&k, &fp("a")).unwrap(),
        Outcome::Acquired(_)
    ));
}

fn complete_with_ttl_overrides(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    acquire(&h, &k, "a")
        .complete_with_ttl(&b"ok"[..], ms(10))
        .unwrap();
    assert_eq!(h.store.lookup(&k).unwrap().unwrap().expires_at(), at(10));
    h.advance(ms(10));
    assert!(h.store.lookup(&k).unwrap().is_none());
}

fn lookup_shows_the_whole_record(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    assert!(h.store.lookup(&k).unwrap().is_none());
    let mut r = acquire(&h, &k, "a");
    r.checkpoint(&b"cp"[..]).unwrap();
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert_eq!(rec.key(), &k);
    assert!(rec.is_in_flight());
    assert_eq!(
        rec.state(),
        &RecordState::InFlight {
            lease_until: at(60_000)
        }
    );
    assert_eq!(rec.fingerprint(), fp("a"));
    assert_eq!(rec.created_at(), START);
    assert_eq!(rec.completed_at(), None);
    assert_eq!(rec.checkpoint().map(|b| &b[..]), Some(&b"cp"[..]));
    assert_eq!(rec.attempts(), 1);
    assert_eq!(rec.fencing_token(), r.fencing_token());
    h.advance(ms(250));
    r.complete(&b"resp"[..]).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            h.store.reserve(&k, &fp("a")).unwrap(),
            Outcome::Replay(_)
        ));
    }
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert!(!rec.is_in_flight());
    assert_eq!(rec.completed_at(), Some(at(250)));
    assert_eq!(rec.expires_at(), at(250 + 3_600_000));
    assert_eq!(rec.response().map(|b| &b[..]), Some(&b"resp"[..]));
    assert_eq!(
        rec.checkpoint(),
        None,
        "a completed record drops its checkpoint"
    );
    assert_eq!(rec.replays(), 3);
    assert_eq!(rec.lease_until(), None);
}

fn response_limit_at_and_above(e: Engine) {
    let h = Harness::with(e, |c| c.max_response_len(16));
    let r = acquire(&h, &key("t", "below"), "a");
    r.complete(vec![1u8; 15]).unwrap();
    let r = acquire(&h, &key("t", "at"), "a");
    r.complete(vec![1u8; 16]).unwrap();
    let r = acquire(&h, &key("t", "above"), "a");
    let err = r.complete(vec![1u8; 17]).unwrap_err();
    assert!(
        matches!(err, Error::ResponseTooLarge { len: 17, limit: 16 }),
        "got {err:?}"
    );
    assert!(err.is_invalid_input());
    // The too-large response was not stored and the key was released.
    assert!(h.store.lookup(&key("t", "above")).unwrap().is_none());
}

fn checkpoint_limit_at_and_above(e: Engine) {
    let h = Harness::with(e, |c| c.max_checkpoint_len(8));
    let mut r = acquire(&h, &key("t", "k"), "a");
    r.checkpoint(vec![0u8; 7]).unwrap();
    r.checkpoint(vec![1u8; 8]).unwrap();
    let err = r.checkpoint(vec![2u8; 9]).unwrap_err();
    assert!(
        matches!(err, Error::CheckpointTooLarge { len: 9, limit: 8 }),
        "got {err:?}"
    );
    let rec = h.store.lookup(&key("t", "k")).unwrap().unwrap();
    assert_eq!(rec.checkpoint().map(|b| b.to_vec()), Some(vec![1u8; 8]));
    r.complete(&b"ok"[..]).unwrap();
}

fn key_and_scope_limits_follow_the_store_config(e: Engine) {
    let h = Harness::with(e, |c| c.max_key_len(4).max_scope_len(2));
    assert!(h.store.key("ab", "abcd").is_ok());
    let err = h.store.key("ab", "abcde").unwrap_err();
    assert!(
        matches!(err, Error::KeyTooLong { len: 5, limit: 4 }),
        "got {err:?}"
    );
    let err = h.store.key("abc", "a").unwrap_err();
    assert!(
        matches!(err, Error::ScopeTooLong { len: 3, limit: 2 }),
        "got {err:?}"
    );
    // A key built under the default limits is checked against the store's.
    let err = h.store.reserve(&key("t", "abcdef"), &fp("a")).unwrap_err();
    assert!(
        matches!(err, Error::KeyTooLong { len: 6, limit: 4 }),
        "got {err:?}"
    );
    let err = h.store.lookup(&key("tenant", "a")).unwrap_err();
    assert!(
        matches!(err, Error::ScopeTooLong { len: 6, limit: 2 }),
        "got {err:?}"
    );
    assert_eq!(h.store.stats().live_records, 0);
    // Looser limits than the defaults work through Store::key.
    let h = Harness::with(e, |c| {
        c.limits(Limits {
            max_key_len: 300,
            ..Limits::default()
        })
    });
    let long = h.store.key("t", "k".repeat(300)).unwrap();
    assert!(matches!(
        h.store.reserve(&long, &fp("a")).unwrap(),
        Outcome::Acquired(_)
    ));
}

fn tenants_never_see_each_other(e: Engine) {
    let h = Harness::new(e);
    let a = key("tenant-a", "same-key");
    let b = key("tenant-b", "same-key");
    acquire(&h, &a, "body")
        .complete(&b"a's secret"[..])
        .unwrap();
    // Same key, same body, other tenant: a new record, never a replay.
    let rb = acquire(&h, &b, "body");
    assert!(h.store.lookup(&b).unwrap().unwrap().is_in_flight());
    rb.complete(&b"b's answer"[..]).unwrap();
    let Outcome::Replay(ra) = h.store.reserve(&a, &fp("body")).unwrap() else {
        panic!()
    };
    let Outcome::Replay(rb) = h.store.reserve(&b, &fp("body")).unwrap() else {
        panic!()
    };
    assert_eq!(&ra.response[..], b"a's secret");
    assert_eq!(&rb.response[..], b"b's answer");
    // Scopes are compared whole: "ab"+"c" is not "a"+"bc".
    acquire(&h, &key("ab", "c"), "x")
        .complete(&b"1"[..])
        .unwrap();
    assert!(h.store.lookup(&key("a", "bc")).unwrap().is_none());
}

fn canonical_json_retries_replay(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "json");
    let first =
        Fingerprint::of_json(br#"{"amount":1200,"currency":"eur","meta":{"a":1,"b":[1,2]}}"#)
            .unwrap();
    let Outcome::Acquired(r) = h.store.reserve(&k, &first).unwrap() else {
        panic!()
    };
    r.complete(&b"created"[..]).unwrap();
    let retry = Fingerprint::of_json(
        b"{ \"meta\": {\"b\": [1.0, 2e0], \"a\": 1}, \"currency\": \"eur\", \"amount\": 1.2e3 }",
    )
    .unwrap();
    let out = h.store.reserve(&k, &retry).unwrap();
    assert!(
        matches!(&out, Outcome::Replay(r) if &r.response[..] == b"created"),
        "got {out:?}"
    );
    let changed =
        Fingerprint::of_json(br#"{"amount":1201,"currency":"eur","meta":{"a":1,"b":[1,2]}}"#)
            .unwrap();
    assert!(matches!(
        h.store.reserve(&k, &changed).unwrap(),
        Outcome::Conflict { in_flight: false }
    ));
}

fn route_in_fingerprint_conflicts_route_in_scope_does_not(e: Engine) {
    use idemlog::{Fingerprinter, RoutePlacement};
    let h = Harness::new(e);
    let limits = Limits::default();
    let fp_for = |method: &str, path: &str, placement| {
        let mut f = Fingerprinter::raw();
        if placement == RoutePlacement::Fingerprint {
            f.route(method, path);
        }
        f.update(b"{}");
        f.finish().unwrap()
    };
    for placement in [RoutePlacement::Fingerprint, RoutePlacement::Scope] {
        let k1 = IdempotencyKey::for_route("t", "k", "POST", "/a", placement, &limits).unwrap();
        let k2 = IdempotencyKey::for_route("t", "k", "POST", "/b", placement, &limits).unwrap();
        let Outcome::Acquired(r) = h
            .store
            .reserve(&k1, &fp_for("POST", "/a", placement))
            .unwrap()
        else {
            panic!()
        };
        r.complete(&b"a"[..]).unwrap();
        let out = h
            .store
            .reserve(&k2, &fp_for("POST", "/b", placement))
            .unwrap();
        match placement {
            RoutePlacement::Fingerprint => {
                assert!(
                    matches!(out, Outcome::Conflict { in_flight: false }),
                    "got {out:?}"
                )
            }
            RoutePlacement::Scope => assert!(matches!(out, Outcome::Acquired(_)), "got {out:?}"),
        }
        h.advance(TTL); // start the next placement from a clean slate
    }
}

fn stats_count_every_outcome(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let first = acquire(&h, &k, "a"); // acquired 1
    let _ = h.store.reserve(&k, &fp("a")).unwrap(); // in progress 1
    let _ = h.store.reserve(&k, &fp("b")).unwrap(); // conflict 1
    h.advance(LEASE);
    let second = acquire(&h, &k, "a"); // acquired 2, takeover 1
    second.complete(&b"ok"[..]).unwrap(); // completed 1
    let _ = h.store.reserve(&k, &fp("a")).unwrap(); // replayed 1
    let _ = h.store.reserve(&k, &fp("a")).unwrap(); // replayed 2
    drop(first); // stale: release fails, not counted
    acquire(&h, &key("t", "k2"), "a").release().unwrap(); // acquired 3, released 1
    let s = h.store.stats();
    assert_eq!(
        (
            s.acquired,
            s.in_progress,
            s.conflicts,
            s.takeovers,
            s.completed,
            s.replayed,
            s.released
        ),
        (3, 1, 1, 1, 1, 2, 1),
        "{s:?}"
    );
    assert_eq!((s.live_records, s.in_flight), (1, 0));
}

fn into_lease_and_token_level_operations(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let mut lease = acquire(&h, &k, "a").into_lease();
    // into_lease disarms the release on drop: the record is still in flight.
    assert!(h.store.lookup(&k).unwrap().unwrap().is_in_flight());
    h.store.checkpoint_lease(&lease, "cp".into()).unwrap();
    h.advance(ms(10));
    h.store.extend_lease(&mut lease, ms(1_000)).unwrap();
    assert_eq!(lease.lease_until, at(1_010));
    h.store.complete_lease(&lease, "done".into()).unwrap();
    let err = h.store.complete_lease(&lease, "again".into()).unwrap_err();
    assert!(
        matches!(err, Error::LeaseLost { .. }),
        "a completed response is never replaced: {err:?}"
    );
    let rec = h.store.lookup(&k).unwrap().unwrap();
    assert_eq!(rec.response().map(|b| &b[..]), Some(&b"done"[..]));
}

fn fallback_fingerprint_bridges_algorithms(e: Engine) {
    let h = Harness::new(e);
    let k = key("t", "k1");
    let body = br#"{"a": 1}"#;
    let Outcome::Acquired(r) = h.store.reserve(&k, &Fingerprint::of_bytes(body)).unwrap() else {
        panic!()
    };
    r.complete(&b"old"[..]).unwrap();
    let json = Fingerprint::of_json(body).unwrap();
    assert!(matches!(
        h.store.reserve(&k, &json).unwrap(),
        Outcome::Conflict { .. }
    ));
    let migrating = json.with_fallback(Fingerprint::of_bytes(body));
    assert!(matches!(
        h.store.reserve(&k, &migrating).unwrap(),
        Outcome::Replay(_)
    ));
}
