//! The client side of idempotency, for Rust callers: stable keys derived from
//! the facts of a write, and a sender that retries with the same key and
//! body until the server gives a final answer.
//!
//! ```no_run
//! use idemlog::client::{stable_key, IdempotentClient};
//! use bytes::Bytes;
//!
//! # async fn run() -> Result<(), idemlog::client::ClientError> {
//! let client = IdempotentClient::new();
//! // The same invoice event always maps to the same key, so a crashed and
//! // restarted worker that sends it again is recognised by the server.
//! let key = stable_key("billing", "invoice.paid", "inv_42", "send-receipt");
//! let request = http::Request::post("http://127.0.0.1:3000/receipts")
//!     .header("content-type", "application/json")
//!     .body(Bytes::from_static(br#"{"invoice":"inv_42"}"#))
//!     .expect("a valid request");
//! let delivery = client.send(&key, request).await?;
//! println!("{} after {} attempt(s)", delivery.response.status(), delivery.attempts);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_service::Service;

use crate::http::{sf_string, BoxError, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
use crate::identity::IdempotencyKey;

/// A key derived from what identifies a write at its source: the system it
/// comes from, the event, the object it acts on and the action. The same
/// facts always give the same key, across processes and restarts, so a
/// redelivered event or a restarted job reuses it; any change in one fact
/// gives another key. Keys are 32 lowercase hex digits (128 bits of a
/// length-framed blake3 hash), inside every server's key alphabet.
///
/// ```
/// use idemlog::client::stable_key;
/// let a = stable_key("stripe", "evt_1", "cus_9", "provision");
/// assert_eq!(a, stable_key("stripe", "evt_1", "cus_9", "provision"));
/// assert_ne!(a, stable_key("stripe", "evt_1", "cus_9", "deprovision"));
/// assert_eq!(a.len(), 32);
/// ```
pub fn stable_key(source: &str, event: &str, target: &str, action: &str) -> String {
    let mut h = blake3::Hasher::new_derive_key("idemlog 2026-11 client stable idempotency key");
    for part in [source, event, target, action] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How often and how long to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Most attempts in all, the first included (default 5).
    pub max_attempts: u32,
    /// Backoff before the first retry, doubled for each further one
    /// (default 100 ms).
    pub base_delay: Duration,
    /// Largest backoff (default 10 s).
    pub max_delay: Duration,
    /// Longest `Retry-After` honoured; a server asking for more ends the
    /// retries and its answer is returned (default 60 s).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Sets the most attempts (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Sets the first backoff.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }
    /// Sets the largest backoff.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }
    /// Sets the longest `Retry-After` honoured.
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// The backoff ceiling before retry number `retry` (1 for the first):
    /// `min(max_delay, base_delay * 2^(retry-1))`. The delay slept is drawn
    /// uniformly from `0..=ceiling` (full jitter), so that clients that
    /// failed together do not retry together.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }
}

/// Whether an answer with `status` is worth retrying with the same key:
/// 408, 409 (the first request is still running), 425, 429 and every 5xx.
/// A server using idemlog's default storage policy releases the key for
/// exactly these, so the retry runs the write or gets its replay.
pub fn is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

type SleepFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
type SleepFn = Arc<dyn Fn(Duration) -> SleepFuture + Send + Sync>;

/// Why a request was not delivered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The key cannot be sent as an `Idempotency-Key`.
    #[error("cannot send this idempotency key: {0}")]
    InvalidKey(#[source] crate::Error),
    /// Every attempt failed before a response arrived.
    #[error("no response after {attempts} attempt(s): {source}; the server may or may not have run the request, so retry later with the same key")]
    Network {
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: BoxError,
    },
}

/// A final answer and how many attempts it took.
#[derive(Debug)]
pub struct Delivery {
    /// The last response, read whole. Its status may still be retryable if
    /// the attempts ran out or the server asked to wait too long.
    pub response: Response<Bytes>,
    /// Attempts made, the first included.
    pub attempts: u32,
}

impl Delivery {
    /// Whether the server answered with a stored response
    /// (`Idempotent-Replayed: true`): the write had run before.
    pub fn replayed(&self) -> bool {
        self.response
            .headers()
            .get(IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    }
}

/// The default transport: hyper's pooled HTTP/1 client over TCP.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends requests with an idempotency key and retries them, with the same key
/// and the same body, on network errors and retryable statuses
/// ([`is_retryable`]), with bounded exponential backoff and full jitter; a
/// `Retry-After` (seconds, or an HTTP-date measured from the response's `Date`)
/// replaces the backoff. Any other status is final.
///
/// The transport is any tower service (hyper's client by default), and the
/// sleeping is injectable ([`sleeper`](Self::sleeper)), so tests run without
/// waiting.
pub struct IdempotentClient<S = HttpClient> {
    service: S,
    policy: RetryPolicy,
    header: HeaderName,
    sleep: SleepFn,
    jitter: Arc<Jitter>,
}

impl<S: Clone> Clone for IdempotentClient<S> {
    fn clone(&self) -> Self {
        IdempotentClient {
            service: self.service.clone(),
            policy: self.policy.clone(),
            header: self.header.clone(),
            sleep: Arc::clone(&self.sleep),
            jitter: Arc::clone(&self.jitter),
        }
    }
}

impl<S> fmt::Debug for IdempotentClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentClient")
            .field("policy", &self.policy)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl IdempotentClient<HttpClient> {
    /// A client over hyper's HTTP/1 client (plain `http://` URLs), with the
    /// default [`RetryPolicy`]. Must be used inside a tokio runtime.
    pub fn new() -> Self {
        Self::with_service(Client::builder(TokioExecutor::new()).build_http())
    }
}

impl Default for IdempotentClient<HttpClient> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> IdempotentClient<S> {
    /// A client over any transport: a tower service taking
    /// `Request<Full<Bytes>>` (for example hyper-util's client with a TLS
    /// connector).
    pub fn with_service(service: S) -> Self {
        IdempotentClient {
            service,
            policy: RetryPolicy::default(),
            header: IDEMPOTENCY_KEY,
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
            jitter: Arc::new(Jitter::seeded()),
        }
    }

    /// Sets the retry policy.
    pub fn policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sends the key in this header instead of `Idempotency-Key`.
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Replaces the sleeping between attempts (tokio's timer by default):
    /// tests pass a function that records the delay and returns at once.
    pub fn sleeper<F, Fut>(mut self, sleep: F) -> Self
    where
        F: Fn(Duration) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.sleep = Arc::new(move |d| Box::pin(sleep(d)));
        self
    }

    /// Sends `request` with `key` until a final answer, a retryable answer
    /// after the last attempt, or a network error after the last attempt.
    /// Every attempt carries the same key (as an RFC 8941 sf-string) and the
    /// same body.
    pub async fn send<RB>(
        &self,
        key: &str,
        request: Request<Bytes>,
    ) -> Result<Delivery, ClientError>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone,
        S::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        IdempotencyKey::new("", key).map_err(ClientError::InvalidKey)?;
        let quoted = sf_string::serialize(key)
            .and_then(|q| HeaderValue::from_str(&q).ok())
            .ok_or_else(|| {
                // The key rules above admit only what an sf-string carries.
                ClientError::InvalidKey(crate::Error::EmptyKey { limit: 255 })
            })?;
        let (mut head, body) = request.into_parts();
        head.headers.insert(self.header.clone(), quoted);

        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut copy = Request::new(Full::new(body.clone()));
            *copy.method_mut() = head.method.clone();
            *copy.uri_mut() = head.uri.clone();
            *copy.version_mut() = head.version;
            *copy.headers_mut() = head.headers.clone();

            let last = attempt >= self.policy.max_attempts;
            match self.attempt(copy).await {
                Err(error) if last => {
                    return Err(ClientError::Network {
                        attempts: attempt,
                        source: error,
                    })
                }
                Err(_) => {
                    let delay = self.jitter.below(self.policy.ceiling(attempt));
                    (self.sleep)(delay).await;
                }
                Ok(response) => {
                    let status = response.status();
                    if !is_retryable(status) || last {
                        return Ok(Delivery {
                            response,
                            attempts: attempt,
                        });
                    }
                    let delay = match retry_after(&response, std::time::SystemTime::now()) {
                        Some(wait) if wait > self.policy.max_retry_after => {
                            return Ok(Delivery {
                                response,
                                attempts: attempt,
                            })
                        }
                        Some(wait) => wait,
                        None => self.jitter.below(self.policy.ceiling(attempt)),
                    };
                    (self.sleep)(delay).await;
                }
            }
        }
    }

    async fn attempt<RB>(&self, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, BoxError>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<RB>> + Clone,
        S::Error: Into<BoxError>,
        RB: Body,
        RB::Error: Into<BoxError>,
    {
        let mut service = self.service.clone();
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let response = service.call(request).await.map_err(Into::into)?;
        let (head, body) = response.into_parts();
        // A body cut off mid-way is a network error like any other.
        let body = body.collect().await.map_err(Into::into)?.to_bytes();
        Ok(Response::from_parts(head, body))
    }
}

/// `Retry-After` as delta-seconds or as an HTTP-date. A date is measured
/// from the response's own `Date` header when it has one, so both instants
/// come from the server's clock and a skewed client clock does not stretch
/// or skip the wait; without `Date` it is measured from `now`. A date
/// already past means no wait.
fn retry_after<B>(response: &Response<B>, now: std::time::SystemTime) -> Option<Duration> {
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let value = header(RETRY_AFTER)?;
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let from = header(http::header::DATE)
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or(now);
    Some(at.duration_since(from).unwrap_or(Duration::ZERO))
}

/// A small xorshift generator seeded from the OS, for jitter only.
struct Jitter(AtomicU64);

impl Jitter {
    fn seeded() -> Self {
        // A fixed odd seed if the OS has no randomness: jitter gets worse,
        // retries still work.
        let seed = getrandom::u64().unwrap_or(0x9E37_79B9_7F4A_7C15) | 1;
        Jitter(AtomicU64::new(seed))
    }

    fn next(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        loop {
            let mut y = x;
            y ^= y << 13;
            y ^= y >> 7;
            y ^= y << 17;
            match self
                .0
                .compare_exchange_weak(x, y, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return y,
                Err(current) => x = current,
            }
        }
    }

    /// A duration drawn uniformly from `0..=ceiling`, in microseconds.
    fn below(&self, ceiling: Duration) -> Duration {
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        if micros == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.next() % micros.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_keys_are_framed_and_in_the_key_alphabet() {
        let k = stable_key("a", "b", "c", "d");
        assert_eq!(k.len(), 32);
        assert!(k
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(k, stable_key("a", "b", "c", "d"));
        assert_ne!(
            k,
            stable_key("ab", "", "c", "d"),
            "framing keeps parts apart"
        );
        assert_ne!(k, stable_key("a", "b", "d", "c"));
        assert!(IdempotencyKey::new("", &k).is_ok());
    }

    #[test]
    fn backoff_ceiling_doubles_and_is_capped() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_secs(1));
        let ceilings: Vec<u128> = (1..=6).map(|r| p.ceiling(r).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.ceiling(200), Duration::from_secs(1), "no overflow");
    }

    #[test]
    fn jitter_stays_below_the_ceiling_and_varies() {
        let j = Jitter::seeded();
        let ceiling = Duration::from_millis(50);
        let draws: Vec<Duration> = (0..200).map(|_| j.below(ceiling)).collect();
        assert!(draws.iter().all(|d| *d <= ceiling));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(distinct.len() > 100, "full jitter spreads retries");
        assert_eq!(j.below(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn retryable_statuses() {
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 201, 400, 401, 404, 413, 422] {
            assert!(!is_retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn retry_after_reads_delta_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:00:00 GMT").unwrap();
        let with = |headers: &[(&'static str, &'static str)]| {
            let mut r = Response::new(());
            for (name, value) in headers {
                r.headers_mut().insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            retry_after(&r, now)
        };
        assert_eq!(with(&[("retry-after", "7")]), Some(Duration::from_secs(7)));
        assert_eq!(with(&[("retry-after", " 0 ")]), Some(Duration::ZERO));
        // A date against the client's clock when the response has no Date...
        assert_eq!(
            with(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            Some(Duration::from_secs(28 * 60))
        );
        // ...and against the server's own Date when it has one, whatever
        // the client's clock says.
        assert_eq!(
            with(&[
                ("retry-after", "Wed, 21 Oct 2015 09:00:30 GMT"),
                ("date", "Wed, 21 Oct 2015 09:00:00 GMT"),
            ]),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            with(&[("retry-after", "Wed, 21 Oct 2015 06:00:00 GMT")]),
            Some(Duration::ZERO),
            "a date already past means no wait"
        );
        assert_eq!(with(&[("retry-after", "soon")]), None);
        assert_eq!(retry_after(&Response::new(()), now), None);
    }
}
