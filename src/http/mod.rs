//! The HTTP layer: a tower middleware that makes axum, hyper or any
//! tower-compatible server idempotent per
//! [draft-ietf-httpapi-idempotency-key-header-07], on any [`Backend`](crate::Backend).
//!
//! ```no_run
//! use axum::{routing::post, Router};
//! use idemlog::http::{IdempotencyLayer, Problem};
//! use idemlog::{Config, Store};
//! use http::StatusCode;
//!
//! let store = Store::in_memory(Config::default());
//! let idempotency = IdempotencyLayer::new(store, |request: &http::request::Parts| {
//!     // The scope: who is calling. Records of two scopes never meet.
//!     match request.headers.get("authorization").and_then(|v| v.to_str().ok()) {
//!         Some(token) => Ok(token.trim_start_matches("Bearer ").to_owned()),
//!         None => Err(Problem::new(StatusCode::UNAUTHORIZED, "Bearer token required").into()),
//!     }
//! });
//! let app: Router = Router::new()
//!     .route("/charges", post(|body: String| async move { format!("charged {body}") }))
//!     .layer(idempotency);
//! ```
//!
//! For each request whose method is covered (POST and PATCH by default):
//!
//! | request | answer |
//! |---|---|
//! | no `Idempotency-Key` (when required) | 400, type `…missing-key` |
//! | key not an sf-string, or over the store's key rules | 400, type `…invalid-key` |
//! | body over the limit | 413, type `…body-too-large` |
//! | new key | the handler runs; its response is stored per the [`StoragePolicy`] |
//! | same key, same request, completed | the stored response, with `Idempotent-Replayed: true` |
//! | same key, same request, still running | 409, type `…request-in-flight`, `Retry-After` (or a bounded wait for the replay) |
//! | same key, another request | 422, type `…key-reused` |
//! | the store fails | 503, type `…store-unavailable`; nothing ran |
//! | the handler panics | 500, type `…handler-failed`; the key is released |
//!
//! Each answer of the layer itself is an RFC 9457 `application/problem+json`
//! document with its own `type` ([`ProblemKind`]), a `title`, a `detail`
//! naming the key, and an `idempotency_key` member.
//!
//! **Identity.** The record is `(scope, key)`: the scope comes from the
//! extractor given to [`IdempotencyLayer::new`]. The route (method, path and
//! query) goes into the fingerprint by default, so the same key on another
//! route is a 422; [`RoutePlacement::Scope`](crate::RoutePlacement::Scope)
//! makes it a separate record instead.
//!
//! **Fingerprint.** Method, path and query (unless placed in the scope) and
//! the body, hashed as its chunks arrive. JSON bodies (`application/json`,
//! `application/*+json`) are fingerprinted in RFC 8785 canonical form, so
//! key order, whitespace and number spelling do not make false conflicts; a
//! JSON-typed body that does not parse is fingerprinted as raw bytes and
//! left to the handler to reject. The body is buffered (up to
//! [`body_limit`](IdempotencyLayer::body_limit)) and handed to the handler
//! unchanged; request trailers are not forwarded.
//!
//! **Replays** carry the stored status, headers and body. `Set-Cookie`,
//! `Date`, `Content-Length` (recomputed) and hop-by-hop headers
//! (`Connection` and the headers it names, `Keep-Alive`, `Proxy-*`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`) are neither stored nor replayed.
//!
//! **Disconnects.** The handler runs in a task of its own: a client that goes
//! away does not cancel it, its response is stored, and the retry replays it.
//! A handler that panics releases the key. The layer needs a tokio runtime.
//!
//! **Per route.** With axum, apply the layer with `Router::route_layer` on a
//! sub-router to cover only its routes, opt routes out with
//! [`skip_if`](IdempotencyLayer::skip_if) (axum's `MatchedPath` extension is
//! visible there), or insert the [`SkipIdempotency`] extension from an inner
//! middleware.
//!
//! **Bodies.** The wrapped service must take a request body that can be
//! built from the buffered bytes (`From<Bytes>`: axum's `Body`,
//! `http_body_util::Full<Bytes>`); with plain hyper, map `Incoming` into one
//! of those first.
//!
//! **Logs.** `tracing` events under the target `idemlog::http` for acquired,
//! taken over, replayed, in progress, conflict, stored and released
//! requests carry `key_hash` (16 hex digits of a blake3 of scope and key),
//! never the key itself.
//!
//! [draft-ietf-httpapi-idempotency-key-header-07]: https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/07/

mod body;
mod layer;
mod policy;
mod problem;
mod replay;
mod run;
mod service;
pub mod sf_string;
mod trace;
mod wait;

pub use body::{BoxError, ResponseBody};
pub use layer::{
    IdempotencyLayer, ScopeRejection, SkipIdempotency, DEFAULT_PROBLEM_TYPE_BASE, IDEMPOTENCY_KEY,
};
pub use policy::StoragePolicy;
pub use problem::{Problem, ProblemKind, PROBLEM_JSON};
pub use replay::IDEMPOTENT_REPLAYED;
pub use service::{IdempotencyService, ResponseFuture};
