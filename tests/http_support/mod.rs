//! A contacts-like axum server on a loopback port and a real HTTP client,
//! shared by the `http_*` integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idemlog::http::{IdempotencyLayer, Problem, ScopeRejection};
use idemlog::{Config, ManualClock, Store, Timestamp};
use tokio::sync::{mpsc, Mutex, Notify};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the handlers count and how tests steer them.
#[derive(Default)]
pub struct Probe {
    /// Executions of each handler that counts.
    pub executions: AtomicUsize,
    /// `/slow` announces it started here...
    pub entered: Mutex<Option<mpsc::UnboundedSender<()>>>,
    /// ...waits for this...
    pub release: Notify,
    /// ...and announces it finished here.
    pub finished: Mutex<Option<mpsc::UnboundedSender<()>>>,
    /// `/flaky` fails with 503 while this is above zero.
    pub failures_left: AtomicUsize,
    /// `/panic` panics while this is above zero.
    pub panics_left: AtomicUsize,
}

impl Probe {
    pub fn executions(&self) -> usize {
        self.executions.load(Ordering::SeqCst)
    }
}

/// The tenant is the bearer token; no token is a 401.
pub fn tenant_scope(parts: &http::request::Parts) -> Result<String, ScopeRejection> {
    parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| format!("tenant:{t}"))
        .ok_or_else(|| Problem::new(StatusCode::UNAUTHORIZED, "Bearer token required").into())
}

async fn create_contact(
    State(probe): State<Arc<Probe>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let tenant = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let echo = String::from_utf8_lossy(&body).into_owned();
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/json".to_owned()),
            ("location", format!("/contacts/{n}")),
            ("set-cookie", "session=abc".to_owned()),
            ("x-execution", n.to_string()),
        ],
        serde_json::json!({ "id": n, "tenant": tenant, "echo": echo }).to_string(),
    )
        .into_response()
}

async fn update_contact(
    State(probe): State<Arc<Probe>>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::OK,
        format!(
            "updated {id} (execution {n}): {}",
            String::from_utf8_lossy(&body)
        ),
    )
        .into_response()
}

async fn slow(State(probe): State<Arc<Probe>>, body: Bytes) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    // Register before announcing, so a release right after is not missed.
    let released = probe.release.notified();
    if let Some(tx) = probe.entered.lock().await.as_ref() {
        let _ = tx.send(());
    }
    released.await;
    if let Some(tx) = probe.finished.lock().await.as_ref() {
        let _ = tx.send(());
    }
    (
        StatusCode::CREATED,
        format!("slow execution {n}: {}", String::from_utf8_lossy(&body)),
    )
        .into_response()
}

async fn flaky(State(probe): State<Arc<Probe>>) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let left = probe.failures_left.load(Ordering::SeqCst);
    if left > 0 {
        probe.failures_left.store(left - 1, Ordering::SeqCst);
        return (StatusCode::SERVICE_UNAVAILABLE, format!("failure {n}")).into_response();
    }
    (StatusCode::CREATED, format!("done on execution {n}")).into_response()
}

async fn throttled(State(probe): State<Arc<Probe>>) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let left = probe.failures_left.load(Ordering::SeqCst);
    if left > 0 {
        probe.failures_left.store(left - 1, Ordering::SeqCst);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            format!("throttled {n}"),
        )
            .into_response();
    }
    (StatusCode::CREATED, format!("done on execution {n}")).into_response()
}

async fn panicky(State(probe): State<Arc<Probe>>) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    if probe
        .panics_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1))
        .is_ok()
    {
        panic!("injected handler panic");
    }
    (StatusCode::CREATED, format!("execution {n}")).into_response()
}

async fn status(State(probe): State<Arc<Probe>>, Path(code): Path<u16>) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, format!("status {code} execution {n}")).into_response()
}

async fn big(State(probe): State<Arc<Probe>>) -> Response {
    let n = probe.executions.fetch_add(1, Ordering::SeqCst) + 1;
    let mut body = vec![b'x'; 4000];
    body.extend_from_slice(format!("#{n}").as_bytes());
    (StatusCode::OK, body).into_response()
}

async fn list_contacts(State(probe): State<Arc<Probe>>) -> Response {
    probe.executions.fetch_add(1, Ordering::SeqCst);
    (StatusCode::OK, "[]").into_response()
}

/// The routes, without the idempotency layer.
pub fn routes(probe: Arc<Probe>) -> Router {
    Router::new()
        .route("/contacts", post(create_contact).get(list_contacts))
        .route("/contacts/{id}", patch(update_contact).put(update_contact))
        .route("/slow", post(slow))
        .route("/flaky", post(flaky))
        .route("/throttled", post(throttled))
        .route("/panic", post(panicky))
        .route("/status/{code}", post(status))
        .route("/big", post(big))
        .route("/health", get(|| async { "ok" }))
        .with_state(probe)
}

/// A store on a manual clock, so leases never run out unless a test moves it.
pub fn store(max_response_len: usize) -> (Store, ManualClock) {
    let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
    let config = Config::builder()
        .clock(clock.clone())
        .lease(Duration::from_secs(30))
        .max_response_len(max_response_len)
        .maintenance_interval(None)
        .build();
    (Store::in_memory(config), clock)
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub probe: Arc<Probe>,
    pub store: Store,
    pub clock: ManualClock,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app` on a fresh loopback port.
pub async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, task)
}

/// The contacts server behind an idempotency layer built by `configure`.
pub async fn start(
    configure: impl FnOnce(IdempotencyLayer<Store>) -> IdempotencyLayer<Store>,
) -> TestServer {
    start_with_limit(1 << 20, configure).await
}

pub async fn start_with_limit(
    max_response_len: usize,
    configure: impl FnOnce(IdempotencyLayer<Store>) -> IdempotencyLayer<Store>,
) -> TestServer {
    let (store, clock) = store(max_response_len);
    start_with_store(store, clock, configure).await
}

/// The contacts server over a given store.
pub async fn start_with_store(
    store: Store,
    clock: ManualClock,
    configure: impl FnOnce(IdempotencyLayer<Store>) -> IdempotencyLayer<Store>,
) -> TestServer {
    let probe = Arc::new(Probe::default());
    let layer = configure(IdempotencyLayer::new(store.clone(), tenant_scope));
    let app = routes(Arc::clone(&probe)).layer(layer);
    let (addr, task) = serve(app).await;
    TestServer {
        addr,
        probe,
        store,
        clock,
        task,
    }
}

pub type Body = BoxBody<Bytes, BoxError>;

/// A real HTTP/1.1 client over TCP.
pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// A body in chunks with no declared length (sent chunked).
pub fn chunked(chunks: Vec<Bytes>) -> Body {
    Chunks(chunks.into()).boxed()
}

struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Poll::Ready(
            self.get_mut()
                .0
                .pop_front()
                .map(|c| Ok(http_body::Frame::data(c))),
        )
    }
}

/// A response read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// Asserts a problem document of the given status and type slug.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, slug: &str) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "{self:?}");
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{self:?}"
        );
        let doc = self.json();
        assert_eq!(doc["type"], format!("urn:idemlog:problem:{slug}"), "{doc}");
        assert_eq!(doc["status"], status, "{doc}");
        assert!(
            doc["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{doc}"
        );
        doc
    }
}

/// A request builder with the usual headers.
pub struct Call {
    pub method: http::Method,
    pub path: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Option<Body>,
}

pub fn call(method: &str, path: &str) -> Call {
    Call {
        method: method.parse().unwrap(),
        path: path.to_owned(),
        headers: vec![("authorization".into(), b"Bearer alice".to_vec())],
        body: None,
    }
}

impl Call {
    /// Adds an `Idempotency-Key` sent as an sf-string.
    pub fn key(self, key: &str) -> Self {
        let quoted = idemlog::http::sf_string::serialize(key).unwrap();
        self.header("idempotency-key", quoted.as_bytes())
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn tenant(mut self, tenant: &str) -> Self {
        self.headers.retain(|(n, _)| n != "authorization");
        self.header("authorization", format!("Bearer {tenant}"))
    }

    pub fn anonymous(mut self) -> Self {
        self.headers.retain(|(n, _)| n != "authorization");
        self
    }

    pub fn json(self, body: &str) -> Self {
        let mut c = self.header("content-type", "application/json");
        c.body = Some(full(body.to_owned()));
        c
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = Some(body);
        self
    }

    pub fn request(self, addr: SocketAddr) -> http::Request<Body> {
        let mut builder = http::Request::builder()
            .method(self.method)
            .uri(format!("http://{addr}{}", self.path));
        for (name, value) in self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(self.body.unwrap_or_else(|| full(Bytes::new())))
            .unwrap()
    }

    /// Sends the request over TCP and reads the whole response.
    pub async fn send(self, addr: SocketAddr) -> Answer {
        let response = client().request(self.request(addr)).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// Waits for a signal, failing the test instead of hanging if it never comes.
pub async fn signal(rx: &mut mpsc::UnboundedReceiver<()>, what: &str) {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
        .unwrap_or_else(|| panic!("channel closed waiting for: {what}"));
}

/// Routes `/slow`'s start and end signals to the returned receivers.
pub async fn watch_slow(
    probe: &Probe,
) -> (mpsc::UnboundedReceiver<()>, mpsc::UnboundedReceiver<()>) {
    let (etx, erx) = mpsc::unbounded_channel();
    let (ftx, frx) = mpsc::unbounded_channel();
    *probe.entered.lock().await = Some(etx);
    *probe.finished.lock().await = Some(ftx);
    (erx, frx)
}
