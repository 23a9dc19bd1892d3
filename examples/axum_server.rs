//! A small contacts API behind the idempotency layer.
//!
//! ```text
//! cargo run --example axum_server -- [--addr 127.0.0.1:3000] [--data-dir DIR (default ./idemlog-data)]
//! cargo run --example axum_server --features redis -- --redis redis://127.0.0.1:6379/ [--addr ADDR]
//! ```
//!
//! With `--redis URL` the records live in that Redis (or Valkey) instead of
//! the durable log in `--data-dir` (then unused), so several copies of this server behind
//! a load balancer share them: a retry that lands on another server is
//! still answered from the first one's response (`tests/fleet_http.rs`).
//!
//! The tenant is the bearer token (`Authorization: Bearer <tenant>`): records
//! of two tenants never meet. `POST /contacts` creates a contact,
//! `PATCH /contacts/{id}` updates one, `GET /contacts` lists them. A
//! `?delay_ms=N` query parameter makes a write take N ms, to show the 409 of
//! a duplicate that arrives while the first is still running. See
//! `docs/HTTP.md` for curl commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{patch, post};
use axum::{Json, Router};
use idemlog::http::{IdempotencyLayer, Problem, ScopeRejection};
use idemlog::{Backend, Config, Durability, Store};
use serde::Deserialize;
use tokio::sync::Mutex;

#[derive(Debug, Clone, serde::Serialize, Deserialize)]
struct Contact {
    #[serde(default)]
    id: u64,
    name: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ContactPatch {
    name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delay {
    delay_ms: Option<u64>,
}

/// Contacts per tenant.
#[derive(Default)]
struct Contacts {
    next_id: u64,
    by_tenant: HashMap<String, Vec<Contact>>,
}

type AppState = Arc<Mutex<Contacts>>;

/// The tenant: the bearer token, or a 401.
fn tenant(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

fn unauthorized() -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, "Bearer token required")
        .with_detail("send Authorization: Bearer <tenant>")
}

/// A problem document as an axum response.
fn answer(problem: Problem) -> axum::response::Response {
    problem.into_response().map(axum::body::Body::from)
}

/// The idempotency scope: the same tenant the handlers use.
fn scope(request: &http::request::Parts) -> Result<String, ScopeRejection> {
    tenant(&request.headers).ok_or_else(|| unauthorized().into())
}

async fn pause(delay: &Delay) {
    if let Some(ms) = delay.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
}

async fn create(
    State(state): State<AppState>,
    Query(delay): Query<Delay>,
    headers: http::HeaderMap,
    Json(mut contact): Json<Contact>,
) -> axum::response::Response {
    let Some(tenant) = tenant(&headers) else {
        return answer(unauthorized());
    };
    pause(&delay).await;
    let mut contacts = state.lock().await;
    contacts.next_id += 1;
    contact.id = contacts.next_id;
    contacts
        .by_tenant
        .entry(tenant)
        .or_default()
        .push(contact.clone());
    (
        StatusCode::CREATED,
        [(http::header::LOCATION, format!("/contacts/{}", contact.id))],
        Json(contact),
    )
        .into_response()
}

async fn update(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Query(delay): Query<Delay>,
    headers: http::HeaderMap,
    Json(change): Json<ContactPatch>,
) -> axum::response::Response {
    let Some(tenant) = tenant(&headers) else {
        return answer(unauthorized());
    };
    pause(&delay).await;
    let mut contacts = state.lock().await;
    let found = contacts
        .by_tenant
        .get_mut(&tenant)
        .and_then(|list| list.iter_mut().find(|c| c.id == id));
    match found {
        Some(contact) => {
            if let Some(name) = change.name {
                contact.name = name;
            }
            if let Some(email) = change.email {
                contact.email = Some(email);
            }
            (StatusCode::OK, Json(contact.clone())).into_response()
        }
        None => answer(
            Problem::new(StatusCode::NOT_FOUND, "No such contact")
                .with_detail(format!("tenant has no contact {id}")),
        ),
    }
}

async fn list(State(state): State<AppState>, headers: http::HeaderMap) -> axum::response::Response {
    let Some(tenant) = tenant(&headers) else {
        return answer(unauthorized());
    };
    let contacts = state.lock().await;
    let list = contacts.by_tenant.get(&tenant).cloned().unwrap_or_default();
    Json(list).into_response()
}

struct Args {
    addr: SocketAddr,
    data_dir: Option<PathBuf>,
    redis: Option<String>,
}

fn args() -> Result<Args, String> {
    let default_addr = std::env::var("IDEMLOG_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let mut addr = default_addr;
    let mut data_dir = None;
    let mut redis = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--addr" => {
                addr = it
                    .next()
                    .ok_or("--addr needs a value such as 127.0.0.1:3000")?
            }
            "--data-dir" => {
                data_dir = Some(PathBuf::from(
                    it.next().ok_or("--data-dir needs a directory")?,
                ))
            }
            "--redis" => {
                redis = Some(
                    it.next()
                        .ok_or("--redis needs a URL such as redis://127.0.0.1:6379/")?,
                )
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; use --addr ADDR --data-dir DIR --redis URL"
                ))
            }
        }
    }
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not a socket address such as 127.0.0.1:3000: {e}"))?;
    Ok(Args {
        addr,
        data_dir,
        redis,
    })
}

/// The idempotency store: the durable log in `--data-dir` (default
/// `./idemlog-data`), with buffered durability so a request does not wait for
/// an fsync; `Store::in_memory(Config::default())` is the one-line swap for a
/// cache-only server.
fn open_store(data_dir: Option<&std::path::Path>) -> idemlog::Result<Store> {
    let dir = data_dir.unwrap_or(std::path::Path::new("idemlog-data"));
    let config = Config::builder()
        .durability(Durability::Buffered {
            max_delay: std::time::Duration::from_millis(10),
        })
        .build();
    Store::open(dir, config)
}

/// The app on the records a fleet shares: the Redis at `url`, which keeps
/// time and expiry itself, so the servers' clocks need not agree. Fails
/// with the exit code and the message.
#[cfg(feature = "redis")]
async fn redis_app(url: &str) -> Result<Router, (i32, String)> {
    match idemlog::backend::redis::RedisBackend::connect(url, Config::default()).await {
        Ok(backend) => Ok(app(backend)),
        Err(e) => Err((1, format!("cannot use the Redis at {url}: {e}"))),
    }
}

#[cfg(not(feature = "redis"))]
async fn redis_app(_url: &str) -> Result<Router, (i32, String)> {
    Err((
        2,
        "--redis needs the Redis backend, which this build lacks: rebuild with --features redis"
            .into(),
    ))
}

/// The app: contacts routes behind the idempotency layer, on any backend.
fn app<B: Backend>(backend: B) -> Router {
    let idempotency = IdempotencyLayer::<B>::new(backend, scope);
    Router::new()
        .route("/contacts", post(create).get(list))
        .route("/contacts/{id}", patch(update))
        .layer(idempotency)
        .with_state(AppState::default())
}

#[tokio::main]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let app = match &args.redis {
        Some(url) => match redis_app(url).await {
            Ok(app) => app,
            Err((code, message)) => {
                eprintln!("error: {message}");
                std::process::exit(code);
            }
        },
        None => match open_store(args.data_dir.as_deref()) {
            Ok(store) => app(store),
            Err(e) => {
                eprintln!("error: cannot open the idempotency store: {e}");
                std::process::exit(1);
            }
        },
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.addr);
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("contacts API listening on http://{addr}"),
        Err(_) => println!("contacts API listening on http://{}", args.addr),
    }
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("error: server stopped: {e}");
        std::process::exit(1);
    }
}
