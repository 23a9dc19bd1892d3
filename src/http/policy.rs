//! Which responses are stored for replay, and which release the key so the
//! client's retry runs the handler again.

use std::fmt;
use std::sync::Arc;

use http::response::Parts;
use http::StatusCode;

/// Decides whether a handler's response is stored.
///
/// A stored response is replayed to every retry with the same key until it
/// expires; a response that is not stored releases the key, so the retry
/// runs the handler again. The layer's own answers (problems) are never
/// stored, and a handler that panics always releases the key.
///
/// ```
/// use idemlog::http::StoragePolicy;
/// use http::StatusCode;
///
/// let default = StoragePolicy::default();
/// assert!(default.stores(StatusCode::CREATED));
/// assert!(default.stores(StatusCode::UNPROCESSABLE_ENTITY));
/// assert!(!default.stores(StatusCode::TOO_MANY_REQUESTS));
/// assert!(!default.stores(StatusCode::BAD_GATEWAY));
/// assert!(StoragePolicy::store_server_errors().stores(StatusCode::BAD_GATEWAY));
/// assert!(!StoragePolicy::success_only().stores(StatusCode::NOT_FOUND));
/// ```
#[derive(Clone, Default)]
pub struct StoragePolicy(Rule);

#[derive(Clone, Default)]
enum Rule {
    #[default]
    AllButRetryable,
    ServerErrorsToo,
    SuccessOnly,
    Custom(Arc<dyn Fn(&Parts) -> bool + Send + Sync>),
}

/// Statuses that say "try again" whatever the server did: never stored.
fn asks_for_retry(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 425 | 429)
}

impl StoragePolicy {
    /// The default: store every final response except 5xx, 408, 409, 425
    /// and 429, which release the key so the retry runs again.
    pub fn new() -> Self {
        StoragePolicy(Rule::AllButRetryable)
    }

    /// Also store 5xx responses (Stripe's choice: the handler began, so it may
    /// have had side effects; the client sees the same failure on retry
    /// instead of running the write twice). 408, 409, 425 and 429 still
    /// release the key.
    pub fn store_server_errors() -> Self {
        StoragePolicy(Rule::ServerErrorsToo)
    }

    /// Store 2xx responses only; every other status releases the key.
    pub fn success_only() -> Self {
        StoragePolicy(Rule::SuccessOnly)
    }

    /// Store when `predicate` says so. It sees the response's status and
    /// headers (a handler can mark a response with a header, for example).
    pub fn custom(predicate: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        StoragePolicy(Rule::Custom(Arc::new(predicate)))
    }

    /// Whether a response with `status` and no headers is stored.
    pub fn stores(&self, status: StatusCode) -> bool {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = status;
        self.should_store(&parts)
    }

    /// Whether the response with this head is stored.
    pub fn should_store(&self, response: &Parts) -> bool {
        let status = response.status;
        match &self.0 {
            Rule::AllButRetryable => !status.is_server_error() && !asks_for_retry(status),
            Rule::ServerErrorsToo => !asks_for_retry(status),
            Rule::SuccessOnly => status.is_success(),
            Rule::Custom(predicate) => predicate(response),
        }
    }
}

impl fmt::Debug for StoragePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            Rule::AllButRetryable => "AllButRetryable",
            Rule::ServerErrorsToo => "ServerErrorsToo",
            Rule::SuccessOnly => "SuccessOnly",
            Rule::Custom(_) => "Custom",
        };
        f.debug_tuple("StoragePolicy").field(&name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table() {
        let p = StoragePolicy::default();
        for code in [200, 201, 204, 301, 400, 401, 403, 404, 410, 422] {
            assert!(p.stores(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(!p.stores(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn server_errors_too_still_releases_retry_statuses() {
        let p = StoragePolicy::store_server_errors();
        for code in [201, 404, 500, 503] {
            assert!(p.stores(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [408, 409, 425, 429] {
            assert!(!p.stores(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn success_only_and_custom() {
        let p = StoragePolicy::success_only();
        assert!(p.stores(StatusCode::OK));
        assert!(!p.stores(StatusCode::BAD_REQUEST));
        let marked = StoragePolicy::custom(|r| !r.headers.contains_key("x-no-store"));
        let (mut parts, ()) = http::Response::new(()).into_parts();
        assert!(marked.should_store(&parts));
        parts
            .headers
            .insert("x-no-store", http::HeaderValue::from_static("1"));
        assert!(!marked.should_store(&parts));
    }
}
