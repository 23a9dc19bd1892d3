//! The optional bounded wait for an in-flight duplicate.

#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::Router;
use http_body_util::BodyExt;
use http_support::*;
use idemlog::http::IdempotencyLayer;
use tower::ServiceExt;

/// Yields until the store has answered `n` reserves with InProgress.
async fn until_in_progress(store: &idemlog::Store, n: u64) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while store.stats().in_progress < n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the duplicate never reached the store");
}

#[tokio::test]
async fn a_waiting_duplicate_gets_the_replay_instead_of_a_409() {
    let s = start(|l| l.wait_for_in_flight(Duration::from_secs(20))).await;
    let (mut entered, _finished) = watch_slow(&s.probe).await;
    let addr = s.addr;
    let first = tokio::spawn(async move { call("POST", "/slow").key("w").send(addr).await });
    signal(&mut entered, "first in the handler").await;
    let dup = tokio::spawn(async move { call("POST", "/slow").key("w").send(addr).await });
    until_in_progress(&s.store, 1).await;

    s.probe.release.notify_one();
    let (first, dup) = (first.await.unwrap(), dup.await.unwrap());
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert_eq!(dup.status, 201, "{dup:?}");
    assert!(dup.replayed(), "{dup:?}");
    assert_eq!(dup.body, first.body);
    assert_eq!(s.probe.executions(), 1);
}

fn request(key: &str) -> http::Request<AxumBody> {
    http::Request::post("/slow")
        .header("authorization", "Bearer alice")
        .header("idempotency-key", format!("\"{key}\""))
        .body(AxumBody::empty())
        .unwrap()
}

async fn status_and_replayed(app: Router, key: &str) -> (u16, bool, String) {
    let response = app.oneshot(request(key)).await.unwrap();
    let status = response.status().as_u16();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let _ = response.into_body().collect().await.unwrap();
    (status, replayed, retry_after)
}

// Tokio's clock is paused: the wait's deadline passes without real time.
#[tokio::test(start_paused = true)]
async fn the_wait_is_bounded_and_ends_in_a_409() {
    let (store, _clock) = store(1 << 20);
    let probe = Arc::new(Probe::default());
    let (mut entered, _finished) = watch_slow(&probe).await;
    let app = routes(Arc::clone(&probe)).layer(
        IdempotencyLayer::new(store.clone(), tenant_scope)
            .wait_for_in_flight(Duration::from_secs(5)),
    );
    let first = tokio::spawn(status_and_replayed(app.clone(), "b"));
    signal(&mut entered, "first in the handler").await;

    let started = tokio::time::Instant::now();
    let (status, replayed, retry_after) = status_and_replayed(app.clone(), "b").await;
    assert_eq!((status, replayed), (409, false));
    assert_eq!(retry_after, "30", "the store's clock did not move");
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(started.elapsed() < Duration::from_secs(6));
    // Several polls happened while waiting.
    assert!(store.stats().in_progress >= 10, "{:?}", store.stats());

    probe.release.notify_one();
    assert_eq!(first.await.unwrap(), (201, false, String::new()));
    assert_eq!(probe.executions(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_owner_in_another_process_is_noticed_by_polling() {
    let (store, _clock) = store(1 << 20);
    let probe = Arc::new(Probe::default());
    let (mut entered, _finished) = watch_slow(&probe).await;
    // Two layers over one store share no in-process notifications, as two
    // server processes on one shared store would not.
    let owner_app =
        routes(Arc::clone(&probe)).layer(IdempotencyLayer::new(store.clone(), tenant_scope));
    let waiter_app = routes(Arc::clone(&probe)).layer(
        IdempotencyLayer::new(store.clone(), tenant_scope)
            .wait_for_in_flight(Duration::from_secs(10))
            .wait_poll_interval(Duration::from_millis(250)),
    );
    let first = tokio::spawn(status_and_replayed(owner_app, "p"));
    signal(&mut entered, "owner in the handler").await;
    let waiter = tokio::spawn(status_and_replayed(waiter_app, "p"));
    until_in_progress(&store, 1).await;
    probe.release.notify_one();
    assert_eq!(first.await.unwrap(), (201, false, String::new()));
    let started = tokio::time::Instant::now();
    let (status, replayed, _) = waiter.await.unwrap();
    assert_eq!((status, replayed), (201, true));
    assert!(started.elapsed() <= Duration::from_millis(250), "next poll");
    assert_eq!(probe.executions(), 1);
}

/// The layer extends a held lease every third of its length while the
/// handler runs: a duplicate arriving after the original lease would have
/// run out is still answered 409, and the request runs once. Both clocks
/// are driven by hand: tokio's (the heartbeat's timer) and the store's (the
/// lease's end).
#[tokio::test(start_paused = true)]
async fn a_handler_slower_than_its_lease_keeps_it() {
    let (store, clock) = store(1 << 20);
    let probe = Arc::new(Probe::default());
    let (mut entered, _finished) = watch_slow(&probe).await;
    let app = routes(Arc::clone(&probe))
        .layer(IdempotencyLayer::new(store.clone(), tenant_scope).lease(Duration::from_secs(3)));
    let first = tokio::spawn(status_and_replayed(app.clone(), "h"));
    signal(&mut entered, "first in the handler").await;
    let key = idemlog::IdempotencyKey::new("tenant:alice", "h").unwrap();
    let lease_until = || {
        store
            .lookup(&key)
            .unwrap()
            .and_then(|r| r.lease_until())
            .expect("in flight")
    };
    let granted = lease_until();

    // Three rounds: 2 s of store time, then the heartbeat's 1 s timer.
    for round in 1..=3u64 {
        clock.advance(Duration::from_secs(2));
        tokio::time::advance(Duration::from_millis(1_001)).await;
        let want = granted.saturating_add(Duration::from_secs(2 * round));
        // Tokio's clock is paused, so the bound is in yields, not time: the
        // extension is a task step or two away.
        let mut yields = 0;
        while lease_until() != want {
            yields += 1;
            assert!(
                yields < 100_000,
                "round {round}: lease not extended to {want:?}"
            );
            tokio::task::yield_now().await;
        }
    }
    // 6 s after a 3 s lease was granted, a retry still finds it held.
    let dup = tokio::time::timeout(
        Duration::from_secs(20),
        status_and_replayed(app.clone(), "h"),
    )
    .await
    .expect("the duplicate took the request over and ran it again");
    assert_eq!((dup.0, dup.1), (409, false), "{dup:?}");

    probe.release.notify_one();
    assert_eq!(first.await.unwrap(), (201, false, String::new()));
    assert_eq!(probe.executions(), 1);
}
