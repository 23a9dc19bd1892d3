//! The retrying client against the contacts server, with injected faults.

#![cfg(feature = "client")]

mod http_support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_support::*;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use idemlog::client::{stable_key, ClientError, IdempotentClient, RetryPolicy};
use idemlog::http::IdempotencyLayer;
use tower::ServiceExt;

/// A client whose sleeps are recorded and return at once.
fn recording_client(policy: RetryPolicy) -> (IdempotentClient, Arc<Mutex<Vec<Duration>>>) {
    let slept = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&slept);
    let client = IdempotentClient::new().policy(policy).sleeper(move |d| {
        record.lock().unwrap().push(d);
        async {}
    });
    (client, slept)
}

fn post(addr: std::net::SocketAddr, path: &str, body: &'static str) -> http::Request<Bytes> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("authorization", "Bearer alice")
        .header("content-type", "application/json")
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(5)
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(400))
}

#[tokio::test]
async fn retries_5xx_with_jittered_backoff_until_success() {
    let s = start(|l| l).await;
    s.probe.failures_left.store(3, Ordering::SeqCst);
    let (client, slept) = recording_client(policy());
    let key = stable_key("crm", "contact.created", "c-1", "sync");
    let delivery = client
        .send(&key, post(s.addr, "/flaky", "{}"))
        .await
        .unwrap();
    assert_eq!(delivery.response.status(), 201);
    assert_eq!(delivery.attempts, 4);
    assert_eq!(&delivery.response.body()[..], b"done on execution 4");
    let slept = slept.lock().unwrap().clone();
    assert_eq!(slept.len(), 3);
    for (i, (d, cap)) in slept.iter().zip([100u64, 200, 400]).enumerate() {
        assert!(
            *d <= Duration::from_millis(cap),
            "retry {}: {d:?} > {cap} ms",
            i + 1
        );
    }
    // The 503s released the key each time; the success is stored: sending
    // the same key again replays without running.
    let again = client
        .send(&key, post(s.addr, "/flaky", "{}"))
        .await
        .unwrap();
    assert!(again.replayed());
    assert_eq!(again.attempts, 1);
    assert_eq!(s.probe.executions(), 4);
}

#[tokio::test]
async fn honours_retry_after_and_gives_up_when_it_is_too_long() {
    let s = start(|l| l).await;
    s.probe.failures_left.store(2, Ordering::SeqCst);
    let (client, slept) = recording_client(policy());
    let delivery = client
        .send("t-1", post(s.addr, "/throttled", "{}"))
        .await
        .unwrap();
    assert_eq!(delivery.response.status(), 201);
    assert_eq!(delivery.attempts, 3);
    assert_eq!(*slept.lock().unwrap(), [Duration::from_secs(7); 2]);

    s.probe.failures_left.store(1, Ordering::SeqCst);
    let (impatient, slept) = recording_client(policy().max_retry_after(Duration::from_secs(5)));
    let delivery = impatient
        .send("t-2", post(s.addr, "/throttled", "{}"))
        .await
        .unwrap();
    assert_eq!(
        delivery.response.status(),
        429,
        "a 7 s wait is over the 5 s allowed"
    );
    assert_eq!(delivery.attempts, 1);
    assert!(slept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn other_4xx_are_final() {
    let s = start(|l| l).await;
    let (client, slept) = recording_client(policy());
    let delivery = client
        .send("f-1", post(s.addr, "/status/404", "{}"))
        .await
        .unwrap();
    assert_eq!(
        (delivery.response.status().as_u16(), delivery.attempts),
        (404, 1)
    );
    // A key reused for another body: 422, not retried.
    client
        .send("f-2", post(s.addr, "/contacts", r#"{"a":1}"#))
        .await
        .unwrap();
    let reuse = client
        .send("f-2", post(s.addr, "/contacts", r#"{"a":2}"#))
        .await
        .unwrap();
    assert_eq!((reuse.response.status().as_u16(), reuse.attempts), (422, 1));
    assert!(slept.lock().unwrap().is_empty());
}

#[tokio::test]
async fn attempts_are_bounded() {
    let s = start(|l| l).await;
    s.probe.failures_left.store(100, Ordering::SeqCst);
    let (client, slept) = recording_client(policy().max_attempts(3));
    let delivery = client
        .send("b-1", post(s.addr, "/flaky", "{}"))
        .await
        .unwrap();
    assert_eq!(
        (delivery.response.status().as_u16(), delivery.attempts),
        (503, 3)
    );
    assert_eq!(slept.lock().unwrap().len(), 2);
    assert_eq!(s.probe.executions(), 3);
}

#[tokio::test]
async fn a_409_in_flight_is_retried_after_its_retry_after_and_replays() {
    let s = start(|l| l).await;
    let (mut entered, _finished) = watch_slow(&s.probe).await;
    let addr = s.addr;
    let first = tokio::spawn(async move {
        call("POST", "/slow")
            .key("slow-1")
            .json("{}")
            .send(addr)
            .await
    });
    signal(&mut entered, "first in the handler").await;

    // The client's "sleep" is when the first request finishes.
    let slept = Arc::new(Mutex::new(Vec::new()));
    let (record, probe, store) = (Arc::clone(&slept), Arc::clone(&s.probe), s.store.clone());
    let client = IdempotentClient::new().policy(policy()).sleeper(move |d| {
        record.lock().unwrap().push(d);
        let (probe, store) = (Arc::clone(&probe), store.clone());
        async move {
            probe.release.notify_one();
            let key = store.key("tenant:alice", "slow-1").unwrap();
            while store.lookup(&key).unwrap().is_none_or(|r| r.is_in_flight()) {
                tokio::task::yield_now().await;
            }
        }
    });
    let delivery = client
        .send("slow-1", post(s.addr, "/slow", "{}"))
        .await
        .unwrap();
    assert_eq!(delivery.response.status(), 201);
    assert!(delivery.replayed());
    assert_eq!(delivery.attempts, 2);
    assert_eq!(
        *slept.lock().unwrap(),
        [Duration::from_secs(30)],
        "the lease's Retry-After"
    );
    assert_eq!(first.await.unwrap().body, delivery.response.body());
    assert_eq!(s.probe.executions(), 1);
}

/// The contacts server behind a fault: the first `drops` requests run to
/// completion, then their connection is closed instead of answered, as if
/// the response were lost on the way back.
async fn start_dropping(
    drops: usize,
) -> (
    std::net::SocketAddr,
    Arc<Probe>,
    tokio::task::JoinHandle<()>,
) {
    let (store, _clock) = store(1 << 20);
    let probe = Arc::new(Probe::default());
    let app = routes(Arc::clone(&probe)).layer(IdempotencyLayer::new(store, tenant_scope));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let drops = Arc::new(AtomicUsize::new(drops));
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (app, drops) = (app.clone(), Arc::clone(&drops));
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (app, drops) = (app.clone(), Arc::clone(&drops));
                    async move {
                        let response = app
                            .oneshot(request.map(axum::body::Body::new))
                            .await
                            .unwrap_or_else(|e: Infallible| match e {});
                        let dropped = drops
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |d| d.checked_sub(1))
                            .is_ok();
                        if dropped {
                            return Err("injected fault: connection dropped");
                        }
                        Ok(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, probe, task)
}

#[tokio::test]
async fn lost_responses_are_retried_and_the_write_runs_once() {
    let (addr, probe, server) = start_dropping(2).await;
    let (client, slept) = recording_client(policy());
    let key = stable_key("shop", "order.paid", "o-77", "create-contact");
    let delivery = client
        .send(&key, post(addr, "/contacts", r#"{"name":"Ada"}"#))
        .await
        .unwrap();
    assert_eq!(delivery.response.status(), 201);
    assert_eq!(delivery.attempts, 3);
    assert!(
        delivery.replayed(),
        "the third attempt gets the stored answer"
    );
    assert_eq!(slept.lock().unwrap().len(), 2);
    assert_eq!(
        probe.executions(),
        1,
        "same key and body each time: one write"
    );
    server.abort();
}

#[tokio::test]
async fn network_errors_after_the_last_attempt_are_an_error() {
    // A port with nothing listening.
    let addr = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let (client, slept) = recording_client(policy().max_attempts(3));
    let err = client
        .send("n-1", post(addr, "/contacts", "{}"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Network { attempts: 3, .. }),
        "got {err:?}"
    );
    assert!(err.to_string().contains("same key"), "{err}");
    assert_eq!(slept.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn invalid_keys_are_refused_before_sending() {
    let (client, _) = recording_client(policy());
    let addr = "127.0.0.1:9".parse().unwrap();
    for key in ["", "tab\there", "é"] {
        let err = client
            .send(key, post(addr, "/contacts", "{}"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::InvalidKey(_)),
            "{key:?}: got {err:?}"
        );
    }
}
