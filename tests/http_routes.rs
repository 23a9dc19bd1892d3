//! Per-route opt-in and opt-out with axum routers, and the layer's knobs.

#![cfg(feature = "http")]

mod http_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::routing::post;
use axum::Router;
use http_support::*;
use idemlog::http::{IdempotencyLayer, SkipIdempotency};

fn counting(counter: &Arc<AtomicUsize>) -> axum::routing::MethodRouter {
    let counter = Arc::clone(counter);
    post(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { format!("run {n}") }
    })
}

#[tokio::test]
async fn route_layer_on_a_sub_router_covers_only_its_routes() {
    let (store, _clock) = store(1 << 20);
    let counter = Arc::new(AtomicUsize::new(0));
    let protected = Router::new()
        .route("/payments", counting(&counter))
        .route_layer(IdempotencyLayer::new(store, tenant_scope));
    let app = Router::new()
        .route("/webhooks", counting(&counter))
        .merge(protected);
    let (addr, server) = serve(app).await;

    call("POST", "/payments")
        .send(addr)
        .await
        .assert_problem(400, "missing-key");
    let a = call("POST", "/payments").key("k").send(addr).await;
    let b = call("POST", "/payments").key("k").send(addr).await;
    assert!(b.replayed() && a.body == b.body);
    // The other route is not covered: no key needed, every call runs.
    let w1 = call("POST", "/webhooks").send(addr).await;
    let w2 = call("POST", "/webhooks").key("k").send(addr).await;
    assert_eq!((w1.text(), w2.text()), ("run 2".into(), "run 3".into()));
    assert!(!w2.replayed());
    server.abort();
}

#[tokio::test]
async fn skip_if_opts_routes_out_by_their_matched_path() {
    let (store, _clock) = store(1 << 20);
    let counter = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store, tenant_scope).skip_if(|request| {
        request
            .extensions
            .get::<MatchedPath>()
            .is_some_and(|p| p.as_str().starts_with("/internal/"))
    });
    let app = Router::new()
        .route("/orders", counting(&counter))
        .route("/internal/{job}", counting(&counter))
        .layer(layer);
    let (addr, server) = serve(app).await;
    call("POST", "/orders")
        .send(addr)
        .await
        .assert_problem(400, "missing-key");
    let internal = call("POST", "/internal/reindex").send(addr).await;
    assert_eq!(internal.status, 200, "{internal:?}");
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    server.abort();
}

#[tokio::test]
async fn the_skip_extension_opts_a_request_out() {
    let (store, _clock) = store(1 << 20);
    let counter = Arc::new(AtomicUsize::new(0));
    // An outer middleware (an admin bypass, say) marks the request.
    let app = Router::new()
        .route("/orders", counting(&counter))
        .layer(IdempotencyLayer::new(store, tenant_scope))
        .layer(middleware::from_fn(
            |mut request: Request, next: Next| async move {
                if request.headers().contains_key("x-replay-tool") {
                    request.extensions_mut().insert(SkipIdempotency);
                }
                next.run(request).await
            },
        ));
    let (addr, server) = serve(app).await;
    let marked = call("POST", "/orders")
        .header("x-replay-tool", "1")
        .send(addr)
        .await;
    assert_eq!(marked.status, 200);
    call("POST", "/orders")
        .send(addr)
        .await
        .assert_problem(400, "missing-key");
    server.abort();
}

#[tokio::test]
async fn header_name_and_problem_type_base_are_configurable() {
    let (store, _clock) = store(1 << 20);
    let counter = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store, tenant_scope)
        .header_name(http::HeaderName::from_static("x-request-key"))
        .problem_type_base("https://api.example.com/docs/problems#");
    let app = Router::new()
        .route("/orders", counting(&counter))
        .layer(layer);
    let (addr, server) = serve(app).await;

    let missing = call("POST", "/orders").key("k").send(addr).await;
    assert_eq!(missing.status, 400);
    let doc = missing.json();
    assert_eq!(
        doc["type"],
        "https://api.example.com/docs/problems#missing-key"
    );
    assert!(
        doc["detail"].as_str().unwrap().contains("x-request-key"),
        "{doc}"
    );
    let a = call("POST", "/orders")
        .header("x-request-key", "\"k\"")
        .send(addr)
        .await;
    let b = call("POST", "/orders")
        .header("x-request-key", "\"k\"")
        .send(addr)
        .await;
    assert_eq!(a.status, 200);
    assert!(b.replayed());
    server.abort();
}

/// What an authentication middleware leaves for the handlers.
#[derive(Clone)]
struct Account(String);

#[tokio::test]
async fn scope_from_an_extension_set_by_the_auth_layer() {
    let (store, _clock) = store(1 << 20);
    let counter = Arc::new(AtomicUsize::new(0));
    let layer = IdempotencyLayer::new(store, |request: &http::request::Parts| {
        request
            .extensions
            .get::<Account>()
            .map(|a| a.0.clone())
            .ok_or_else(|| {
                idemlog::http::Problem::new(http::StatusCode::UNAUTHORIZED, "not signed in").into()
            })
    });
    // The auth layer runs first (outermost) and maps API keys to accounts.
    let app = Router::new()
        .route("/orders", counting(&counter))
        .layer(layer)
        .layer(middleware::from_fn(
            |mut request: Request, next: Next| async move {
                let account = match request
                    .headers()
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                {
                    Some("key-a1") | Some("key-a2") => Some(Account("acct-a".into())),
                    Some("key-b") => Some(Account("acct-b".into())),
                    _ => None,
                };
                if let Some(account) = account {
                    request.extensions_mut().insert(account);
                }
                next.run(request).await
            },
        ));
    let (addr, server) = serve(app).await;
    let send = |api_key: &'static str| {
        call("POST", "/orders")
            .anonymous()
            .header("x-api-key", api_key)
            .key("k")
            .send(addr)
    };
    let a1 = send("key-a1").await;
    // Another API key of the same account shares its records.
    let a2 = send("key-a2").await;
    assert!(a2.replayed() && a2.body == a1.body, "{a2:?}");
    let b = send("key-b").await;
    assert!(!b.replayed(), "another account is another scope");
    assert_eq!(counter.load(Ordering::SeqCst), 2);
    let none = send("wrong").await;
    assert_eq!(none.status, 401);
    server.abort();
}
