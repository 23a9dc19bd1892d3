//! A client that goes away does not cancel the handler: its response is
//! stored and the retry replays it.

#![cfg(feature = "http")]

mod http_support;

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use http_support::*;
use idemlog::http::IdempotencyLayer;
use tokio::sync::mpsc;

/// Reports when the server drops a request's future before it finished,
/// which is what a disconnect does to the service stack.
struct DropAlarm(Option<mpsc::UnboundedSender<()>>);

impl DropAlarm {
    /// The future finished: dropping it now is no alarm.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DropAlarm {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn handler_completes_after_the_client_disconnects_and_the_retry_replays() {
    let (store, _clock) = store(1 << 20);
    let probe = Arc::new(Probe::default());
    let (mut entered, mut finished) = watch_slow(&probe).await;
    let (cancel_tx, mut cancelled) = mpsc::unbounded_channel();
    let app = routes(Arc::clone(&probe))
        // A retry that arrives between the handler's end and the store's
        // write waits for it (woken in-process) instead of getting a 409.
        .layer(
            IdempotencyLayer::new(store.clone(), tenant_scope)
                .wait_for_in_flight(std::time::Duration::from_secs(20)),
        )
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let alarm = DropAlarm(Some(cancel_tx.clone()));
            async move {
                let response: Response = next.run(request).await;
                alarm.disarm();
                response
            }
        }));
    let (addr, server) = serve(app).await;

    let client = tokio::spawn(async move {
        call("POST", "/slow")
            .key("gone")
            .json(r#"{"name":"Ada"}"#)
            .send(addr)
            .await
    });
    signal(&mut entered, "handler started").await;
    // The client gives up mid-request: its connection closes.
    client.abort();
    assert!(client.await.unwrap_err().is_cancelled());
    signal(&mut cancelled, "server dropped the request's future").await;

    // The handler, parked all this time, still runs to the end.
    probe.release.notify_one();
    signal(&mut finished, "handler finished").await;

    // The retry replays what the abandoned request produced.
    let retry = call("POST", "/slow")
        .key("gone")
        .json(r#"{"name":"Ada"}"#)
        .send(addr)
        .await;
    assert_eq!(retry.status, 201, "{retry:?}");
    assert!(retry.replayed(), "{retry:?}");
    assert_eq!(retry.text(), r#"slow execution 1: {"name":"Ada"}"#);
    assert_eq!(probe.executions(), 1);
    let key = store.key("tenant:alice", "gone").unwrap();
    let record = store.lookup(&key).unwrap().unwrap();
    assert_eq!(record.replays(), 1);
    server.abort();
}
