//! The service: one request through the decision table.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, CONTENT_TYPE};
use http::{request, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::{read_limited, BoxError, ReadError, ResponseBody};
use super::layer::{ScopeFn, Settings, SkipIdempotency};
use super::problem::{Problem, ProblemKind};
use super::replay::from_stored;
use super::sf_string;
use super::trace::{identity_digest, KeyHash};
use super::wait::Waiters;
use crate::backend::Backend;
use crate::error::Error;
use crate::fingerprint::{Fingerprint, Fingerprinter};
use crate::identity::{IdempotencyKey, RoutePlacement};
use crate::store::{Lease, Outcome};

/// The service made by [`IdempotencyLayer`](super::IdempotencyLayer).
pub struct IdempotencyService<S, B> {
    inner: S,
    shared: Arc<Shared<B>>,
}

pub(super) struct Shared<B> {
    pub(super) backend: Arc<B>,
    pub(super) scope: ScopeFn,
    pub(super) settings: Arc<Settings>,
    pub(super) waiters: Arc<Waiters>,
}

impl<S, B> IdempotencyService<S, B> {
    pub(crate) fn new(
        inner: S,
        backend: Arc<B>,
        scope: ScopeFn,
        settings: Arc<Settings>,
        waiters: Arc<Waiters>,
    ) -> Self {
        IdempotencyService {
            inner,
            shared: Arc::new(Shared {
                backend,
                scope,
                settings,
                waiters,
            }),
        }
    }
}

impl<S: Clone, B> Clone for IdempotencyService<S, B> {
    fn clone(&self) -> Self {
        IdempotencyService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, B> fmt::Debug for IdempotencyService<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The future of [`IdempotencyService`].
pub type ResponseFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, B>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Backend,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        if !self.shared.covers(&parts) {
            let future = self.inner.call(Request::from_parts(parts, body));
            return Box::pin(async move { Ok(future.await?.map(ResponseBody::stream)) });
        }
        // The clone that was driven to readiness serves this request.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        Box::pin(Arc::clone(&self.shared).handle(inner, parts, body))
    }
}

/// The `tracing` target of the layer's events.
pub(super) const TARGET: &str = "idemlog::http";

impl<B: Backend> Shared<B> {
    fn covers(&self, parts: &request::Parts) -> bool {
        self.settings.methods.contains(&parts.method)
            && parts.extensions.get::<SkipIdempotency>().is_none()
            && !self.settings.skip.as_ref().is_some_and(|skip| skip(parts))
    }

    pub(super) fn problem(&self, kind: ProblemKind) -> Problem {
        Problem::of(kind, &self.settings.problem_type_base)
    }

    async fn handle<S, ReqBody, ResBody>(
        self: Arc<Self>,
        mut inner: S,
        parts: request::Parts,
        body: ReqBody,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Body + From<Bytes> + Send + 'static,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let settings = &self.settings;
        let header = settings.header_label.as_str();
        let client_key = match self.read_key(&parts.headers) {
            Ok(Some(key)) => key,
            Ok(None) if !settings.require_key => {
                let response = inner.call(Request::from_parts(parts, body)).await?;
                return Ok(response.map(ResponseBody::stream));
            }
            Ok(None) => {
                return Ok(answer(self.problem(ProblemKind::MissingKey).with_detail(
                    format!(
                        "{} {} requires an {header} header: send a new unique value for each \
                     logical write and the same value on its retries, as a quoted string \
                     such as {header}: \"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
                        parts.method,
                        parts.uri.path()
                    ),
                )))
            }
            Err((shown, reason)) => {
                return Ok(answer(
                    self.problem(ProblemKind::InvalidKey)
                        .with_detail(format!(
                            "the {header} header {shown} is malformed: {reason}"
                        ))
                        .with_key(shown),
                ))
            }
        };

        let scope = match (self.scope)(&parts) {
            Ok(scope) => scope,
            Err(rejection) => return Ok(rejection.into_response().map(ResponseBody::full)),
        };
        let method = parts.method.as_str();
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let limits = self.backend.limits();
        let key = match IdempotencyKey::for_route(
            scope,
            &client_key,
            method,
            target,
            settings.placement,
            limits,
        ) {
            Ok(key) => key,
            Err(e @ Error::ScopeTooLong { .. }) => {
                return Ok(answer(
                    self.problem(ProblemKind::InvalidScope)
                        .with_detail(format!("the request's idempotency scope is rejected: {e}"))
                        .with_key(client_key),
                ))
            }
            Err(e) => {
                return Ok(answer(
                    self.problem(ProblemKind::InvalidKey)
                        .with_detail(format!("the {header} \"{client_key}\" is rejected: {e}"))
                        .with_key(client_key),
                ))
            }
        };
        let hash = KeyHash::of(&key);

        let mut raw = Fingerprinter::raw();
        if settings.placement == RoutePlacement::Fingerprint {
            raw.route(method, target);
        }
        let bytes = match read_limited(body, settings.body_limit, &mut raw).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) => {
                return Ok(answer(
                    self.problem(ProblemKind::BodyTooLarge)
                        .with_detail(format!(
                            "the request body is over the limit of {} bytes for requests with an \
                             {header} (\"{client_key}\"): send a smaller body",
                            settings.body_limit
                        ))
                        .with_key(client_key),
                ))
            }
            Err(ReadError::Failed(e)) => {
                return Ok(answer(
                    self.problem(ProblemKind::BodyUnreadable)
                        .with_detail(format!(
                            "the request body with {header} \"{client_key}\" could not be read: {e}"
                        ))
                        .with_key(client_key),
                ))
            }
        };
        let fingerprint = self.fingerprint(&parts, raw, &bytes);

        let outcome = match self.reserve(&key, &fingerprint).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(target: TARGET, key_hash = %hash, error = %e, "idempotency store failed; request refused");
                return Ok(answer(
                    self.problem(ProblemKind::StoreUnavailable)
                        .with_detail(format!(
                            "the request with {header} \"{client_key}\" was not run because the \
                             idempotency store could not record it: retry later with the same key"
                        ))
                        .with_key(client_key),
                ));
            }
        };
        match outcome {
            Outcome::Acquired(lease) => {
                if lease.attempt > 1 {
                    tracing::info!(target: TARGET, key_hash = %hash, attempt = lease.attempt, "idempotency key taken over after its lease ran out");
                } else {
                    tracing::debug!(target: TARGET, key_hash = %hash, "idempotency key acquired");
                }
                let request = Request::from_parts(parts, ReqBody::from(bytes));
                self.run(inner, request, lease, hash, client_key).await
            }
            Outcome::Replay(replay) => match from_stored(&replay.response) {
                Ok(response) => {
                    tracing::debug!(target: TARGET, key_hash = %hash, attempts = replay.attempts, "idempotent response replayed");
                    Ok(response.map(ResponseBody::full))
                }
                Err(e) => {
                    tracing::error!(target: TARGET, key_hash = %hash, error = %e, "stored response cannot be replayed");
                    Ok(answer(
                        self.problem(ProblemKind::ReplayUnreadable)
                            .with_detail(format!(
                                "the stored response for {header} \"{client_key}\" could not be \
                                 read back; it was not written by this layer"
                            ))
                            .with_key(client_key),
                    ))
                }
            },
            Outcome::InProgress { retry_after, .. } => {
                let seconds = retry_after_seconds(retry_after);
                tracing::debug!(target: TARGET, key_hash = %hash, retry_after_s = seconds, "idempotent request still in progress");
                Ok(answer(
                    self.problem(ProblemKind::InFlight)
                        .with_detail(format!(
                            "a request with {header} \"{client_key}\" is still being processed: \
                             retry after {seconds} s to get its response"
                        ))
                        .with_key(client_key)
                        .with_retry_after(seconds),
                ))
            }
            Outcome::Conflict { in_flight } => {
                tracing::info!(target: TARGET, key_hash = %hash, in_flight, "idempotency key reused for another request");
                Ok(answer(
                    self.problem(ProblemKind::KeyReused)
                        .with_detail(format!(
                            "the {header} \"{client_key}\" was already used for a different request \
                             (another body, method or path): use a new key for a new request"
                        ))
                        .with_key(client_key),
                ))
            }
        }
    }

    /// The key's content, `None` when absent, or the value as shown to the
    /// client and why it is malformed.
    fn read_key(&self, headers: &HeaderMap) -> Result<Option<String>, (String, String)> {
        let mut values = headers.get_all(&self.settings.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let shown = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if values.next().is_some() {
            return Err((shown, "the header is sent more than once".to_owned()));
        }
        match sf_string::parse(value.as_bytes()) {
            Ok(key) => Ok(Some(key)),
            Err(sf_string::SfStringError::NotQuoted) if self.settings.accept_unquoted => {
                let bare = value.as_bytes().trim_ascii();
                match std::str::from_utf8(bare) {
                    Ok(text) if !text.contains(['"', '\\', ',', ';']) => Ok(Some(text.to_owned())),
                    _ => Err((
                        shown,
                        "an unquoted key must not contain quotes, backslashes, commas or semicolons"
                            .to_owned(),
                    )),
                }
            }
            Err(e) => Err((shown, e.to_string())),
        }
    }

    fn fingerprint(&self, parts: &request::Parts, raw: Fingerprinter, body: &Bytes) -> Fingerprint {
        if self.settings.json_fingerprint && is_json(&parts.headers) {
            let mut canonical = Fingerprinter::canonical_json();
            if self.settings.placement == RoutePlacement::Fingerprint {
                let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
                canonical.route(parts.method.as_str(), target);
            }
            canonical.update(body);
            // A body labelled JSON that is not JSON is the handler's to
            // reject; it is fingerprinted as bytes.
            if let Ok(fingerprint) = canonical.finish() {
                return fingerprint;
            }
        }
        raw.finish_raw()
    }

    /// Asks the store, waiting for an in-flight duplicate when configured.
    async fn reserve(
        &self,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
    ) -> crate::Result<Outcome<Lease>> {
        let options = self.settings.reserve;
        let Some(max_wait) = self.settings.wait else {
            return self.backend.reserve(key, fingerprint, options).await;
        };
        let deadline = tokio::time::Instant::now() + max_wait;
        let registration = self.waiters.register(identity_digest(key));
        loop {
            let mut notified = std::pin::pin!(registration.notify().notified());
            notified.as_mut().enable();
            let outcome = self.backend.reserve(key, fingerprint, options).await?;
            let Outcome::InProgress { retry_after, .. } = outcome else {
                return Ok(outcome);
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(outcome);
            }
            let nap = (deadline - now)
                .min(self.settings.wait_poll)
                .min(retry_after.max(Duration::from_millis(1)));
            // Woken by the owner's end, or time to ask again.
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }
}

pub(super) fn answer<B>(problem: Problem) -> Response<ResponseBody<B>> {
    problem.into_response().map(ResponseBody::full)
}

/// `Retry-After` in whole seconds, rounded up so the retry does not come
/// back before the lease runs out.
fn retry_after_seconds(d: Duration) -> u64 {
    u64::try_from(d.as_millis().div_ceil(1000)).unwrap_or(u64::MAX)
}

/// `application/json` or any `application/*+json`.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(60)), 60);
    }

    #[test]
    fn json_media_types() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, http::HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonl"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
