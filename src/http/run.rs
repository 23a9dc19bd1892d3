//! Running the handler for a held lease: in tasks of its own, so that a
//! client that goes away cancels nothing, then storing or releasing.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::{collect_limited, BoxError, Collected, ResponseBody};
use super::problem::ProblemKind;
use super::replay::to_stored;
use super::service::{answer, Shared, TARGET};
use super::trace::{identity_digest, KeyHash};
use crate::backend::Backend;
use crate::error::Error;
use crate::store::Lease;

impl<B: Backend> Shared<B> {
    /// Runs the handler for a held lease in a task of its own, so that a
    /// client that goes away does not cancel it, then stores or releases.
    pub(super) async fn run<S, ReqBody, ResBody>(
        self: Arc<Self>,
        mut inner: S,
        request: Request<ReqBody>,
        lease: Lease,
        hash: KeyHash,
        client_key: String,
    ) -> Result<Response<ResponseBody<ResBody>>, S::Error>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let policy = self.settings.policy.clone();
        let limit = self.backend.limits().max_response_len;
        let lease_for = self
            .settings
            .reserve
            .lease
            .unwrap_or_else(|| self.backend.default_lease());
        let shared = Arc::clone(&self);
        // Everything the application provides (handler, response body,
        // storage predicate) runs in `handler`, so a panic there is a
        // JoinError to the driver, which always stores or releases.
        let driver = tokio::spawn(async move {
            let handler = tokio::spawn(async move {
                let response = inner.call(request).await?;
                let (parts, body) = response.into_parts();
                if !policy.should_store(&parts) {
                    return Ok(Handled::NotStored(parts, body));
                }
                let collected = collect_limited(body, limit).await;
                Ok(Handled::Collected(parts, collected))
            });
            let (handled, lease) = shared.heartbeat(handler, lease, lease_for, hash).await;
            let driven = shared.settle(handled, &lease, hash).await;
            if shared.settings.wait.is_some() {
                shared.waiters.finished(&identity_digest(&lease.key));
            }
            driven
        });
        match driver.await {
            Ok(Driven::Response(response)) => Ok(response),
            Ok(Driven::Failed(e)) => Err(e),
            Ok(Driven::Panicked) | Err(_) => Ok(answer(
                self.problem(ProblemKind::HandlerFailed)
                    .with_detail(format!(
                        "the handler failed while processing the request with {} \"{client_key}\"; \
                         nothing was stored, so a retry with the same key runs it again",
                        self.settings.header_label
                    ))
                    .with_key(client_key),
            )),
        }
    }

    /// Waits for the handler, extending the lease every third of its length
    /// meanwhile, so a handler slower than the lease is not taken over by a
    /// retry while it still runs. A lease found lost (the store's clock
    /// passed it before an extension landed, or another request took it
    /// over) is not extended again; storing the response will then fail
    /// with `LeaseLost` and change nothing.
    async fn heartbeat<T>(
        &self,
        mut handler: tokio::task::JoinHandle<T>,
        mut lease: Lease,
        lease_for: Duration,
        hash: KeyHash,
    ) -> (Result<T, tokio::task::JoinError>, Lease) {
        let every = (lease_for / 3).max(Duration::from_millis(1));
        loop {
            let Ok(joined) = tokio::time::timeout(every, &mut handler).await else {
                match self.backend.extend(&mut lease, lease_for).await {
                    Ok(()) => {
                        tracing::trace!(target: TARGET, key_hash = %hash, "lease extended while the handler runs")
                    }
                    Err(e @ Error::LeaseLost { .. }) => {
                        tracing::warn!(target: TARGET, key_hash = %hash, error = %e, "lease lost while the handler runs: a retry may run the request again");
                        return (handler.await, lease);
                    }
                    Err(e) => {
                        tracing::warn!(target: TARGET, key_hash = %hash, error = %e, "lease could not be extended; trying again")
                    }
                }
                continue;
            };
            return (joined, lease);
        }
    }

    /// Stores or releases the lease by what the handler did.
    async fn settle<ResBody, E>(
        &self,
        handled: Result<Result<Handled<ResBody>, E>, tokio::task::JoinError>,
        lease: &Lease,
        hash: KeyHash,
    ) -> Driven<ResBody, E>
    where
        ResBody: Body,
        ResBody::Error: Into<BoxError>,
    {
        match handled {
            Err(join) => {
                let why = if join.is_panic() {
                    "the handler panicked"
                } else {
                    "the handler was cancelled"
                };
                self.release(lease, hash, why).await;
                Driven::Panicked
            }
            Ok(Err(e)) => {
                self.release(lease, hash, "the service returned an error")
                    .await;
                Driven::Failed(e)
            }
            Ok(Ok(Handled::NotStored(parts, body))) => {
                self.release(lease, hash, "the storage policy does not store this status")
                    .await;
                Driven::Response(Response::from_parts(parts, ResponseBody::stream(body)))
            }
            Ok(Ok(Handled::Collected(parts, Collected::Complete(body)))) => {
                let encoded = to_stored(&parts, &body).encode();
                let limit = self.backend.limits().max_response_len;
                if encoded.len() > limit {
                    tracing::warn!(target: TARGET, key_hash = %hash, len = encoded.len(), limit, "response over the store's limit is answered but not stored; the key is released");
                    self.release(lease, hash, "the response is over the storage limit")
                        .await;
                } else {
                    match self.backend.complete(lease, encoded).await {
                        Ok(()) => {
                            tracing::debug!(target: TARGET, key_hash = %hash, status = parts.status.as_u16(), "idempotent response stored")
                        }
                        Err(e) => {
                            tracing::error!(target: TARGET, key_hash = %hash, error = %e, "idempotent response could not be stored; it is answered anyway")
                        }
                    }
                }
                Driven::Response(Response::from_parts(parts, ResponseBody::full(body)))
            }
            Ok(Ok(Handled::Collected(parts, partial))) => {
                tracing::warn!(target: TARGET, key_hash = %hash, reason = partial.reason(), "response cannot be stored and is answered as is; the key is released");
                self.release(lease, hash, partial.reason()).await;
                Driven::Response(Response::from_parts(
                    parts,
                    ResponseBody::from_collected(partial),
                ))
            }
        }
    }

    async fn release(&self, lease: &Lease, hash: KeyHash, why: &str) {
        match self.backend.release(lease).await {
            Ok(()) => {
                tracing::debug!(target: TARGET, key_hash = %hash, reason = why, "idempotency key released")
            }
            Err(e) => {
                tracing::warn!(target: TARGET, key_hash = %hash, reason = why, error = %e, "idempotency key could not be released; it frees when its lease runs out")
            }
        }
    }
}

/// What the handler task hands the driver.
enum Handled<B> {
    NotStored(http::response::Parts, B),
    Collected(http::response::Parts, Collected<B>),
}

/// What the driver hands the request's future (moved once, so its size
/// does not matter).
#[allow(clippy::large_enum_variant)]
enum Driven<B, E> {
    Response(Response<ResponseBody<B>>),
    Failed(E),
    Panicked,
}
