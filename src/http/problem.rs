//! Answers of the layer itself, as RFC 9457 `application/problem+json`.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

/// The media type of every answer the layer makes itself.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The cases the layer answers itself. Each has its own `type` URI
/// (`{type base}{slug}`), so clients can tell them apart by machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// 400: the method requires an `Idempotency-Key` and none was sent.
    MissingKey,
    /// 400: the `Idempotency-Key` is not an sf-string, or breaks the
    /// store's key rules (length, alphabet).
    InvalidKey,
    /// 400: the scope derived from the request is over the store's limit.
    InvalidScope,
    /// 422: the key was used before for a different request.
    KeyReused,
    /// 409: the first request with this key is still running.
    InFlight,
    /// 413: the body is larger than the layer buffers.
    BodyTooLarge,
    /// 400: the request body could not be read.
    BodyUnreadable,
    /// 503: the store could not decide the request; nothing ran.
    StoreUnavailable,
    /// 500: the handler panicked; the key was released, a retry runs again.
    HandlerFailed,
    /// 500: a stored response could not be decoded for replay.
    ReplayUnreadable,
}

impl ProblemKind {
    /// The last part of the `type` URI, such as `missing-key`.
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::MissingKey => "missing-key",
            ProblemKind::InvalidKey => "invalid-key",
            ProblemKind::InvalidScope => "invalid-scope",
            ProblemKind::KeyReused => "key-reused",
            ProblemKind::InFlight => "request-in-flight",
            ProblemKind::BodyTooLarge => "body-too-large",
            ProblemKind::BodyUnreadable => "body-unreadable",
            ProblemKind::StoreUnavailable => "store-unavailable",
            ProblemKind::HandlerFailed => "handler-failed",
            ProblemKind::ReplayUnreadable => "replay-unreadable",
        }
    }

    /// The HTTP status of this case.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::MissingKey
            | ProblemKind::InvalidKey
            | ProblemKind::InvalidScope
            | ProblemKind::BodyUnreadable => StatusCode::BAD_REQUEST,
            ProblemKind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ProblemKind::InFlight => StatusCode::CONFLICT,
            ProblemKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ProblemKind::HandlerFailed | ProblemKind::ReplayUnreadable => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The short, fixed summary of this case.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::MissingKey => "Idempotency-Key header required",
            ProblemKind::InvalidKey => "Idempotency-Key header malformed",
            ProblemKind::InvalidScope => "Idempotency scope too long",
            ProblemKind::KeyReused => "Idempotency-Key reused for a different request",
            ProblemKind::InFlight => "Request with this Idempotency-Key still in progress",
            ProblemKind::BodyTooLarge => "Request body too large",
            ProblemKind::BodyUnreadable => "Request body could not be read",
            ProblemKind::StoreUnavailable => "Idempotency store unavailable",
            ProblemKind::HandlerFailed => "Request handler failed",
            ProblemKind::ReplayUnreadable => "Stored response could not be replayed",
        }
    }
}

/// An RFC 9457 problem document: the layer's own answers, and a convenient
/// way for a scope extractor to build its rejection.
///
/// ```
/// use idemlog::http::Problem;
/// use http::StatusCode;
///
/// let response = Problem::new(StatusCode::UNAUTHORIZED, "Bearer token required")
///     .with_type("https://api.example.com/problems/unauthorized")
///     .with_detail("send Authorization: Bearer <token>")
///     .into_response();
/// assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    status: StatusCode,
    type_uri: Option<String>,
    title: String,
    detail: Option<String>,
    key: Option<String>,
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem with a status and a title; `type` defaults to `about:blank`.
    pub fn new(status: StatusCode, title: impl Into<String>) -> Self {
        Problem {
            status,
            type_uri: None,
            title: title.into(),
            detail: None,
            key: None,
            retry_after: None,
        }
    }

    /// The problem of one of the layer's cases, with its type under `type_base`.
    pub(crate) fn of(kind: ProblemKind, type_base: &str) -> Self {
        Problem::new(kind.status(), kind.title()).with_type(format!("{type_base}{}", kind.slug()))
    }

    /// Sets the `type` URI.
    pub fn with_type(mut self, type_uri: impl Into<String>) -> Self {
        self.type_uri = Some(type_uri.into());
        self
    }

    /// Sets the human-readable `detail`.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds the `idempotency_key` extension member.
    pub(crate) fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a `Retry-After` header of `seconds`.
    pub(crate) fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON document.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        doc.insert(
            "type".into(),
            self.type_uri.as_deref().unwrap_or("about:blank").into(),
        );
        doc.insert("title".into(), self.title.clone().into());
        doc.insert("status".into(), self.status.as_u16().into());
        if let Some(detail) = &self.detail {
            doc.insert("detail".into(), detail.clone().into());
        }
        if let Some(key) = &self.key {
            doc.insert("idempotency_key".into(), key.clone().into());
        }
        serde_json::Value::Object(doc)
    }

    /// The response: status, `Content-Type: application/problem+json`,
    /// `Retry-After` when set, and the JSON document.
    pub fn into_response(self) -> Response<Bytes> {
        let body = Bytes::from(self.to_json().to_string());
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_type_and_its_status() {
        let kinds = [
            ProblemKind::MissingKey,
            ProblemKind::InvalidKey,
            ProblemKind::InvalidScope,
            ProblemKind::KeyReused,
            ProblemKind::InFlight,
            ProblemKind::BodyTooLarge,
            ProblemKind::BodyUnreadable,
            ProblemKind::StoreUnavailable,
            ProblemKind::HandlerFailed,
            ProblemKind::ReplayUnreadable,
        ];
        let slugs: std::collections::HashSet<_> = kinds.iter().map(|k| k.slug()).collect();
        assert_eq!(slugs.len(), kinds.len());
        assert_eq!(ProblemKind::InFlight.status(), StatusCode::CONFLICT);
        assert_eq!(
            ProblemKind::KeyReused.status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }

    #[test]
    fn document_carries_type_title_status_detail_and_key() {
        let response = Problem::of(ProblemKind::InFlight, "https://docs.example/p/")
            .with_detail("still running")
            .with_key("k-1")
            .with_retry_after(3)
            .into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[RETRY_AFTER], "3");
        let doc: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(doc["type"], "https://docs.example/p/request-in-flight");
        assert_eq!(doc["status"], 409);
        assert_eq!(doc["detail"], "still running");
        assert_eq!(doc["idempotency_key"], "k-1");
        assert_eq!(
            doc["title"],
            "Request with this Idempotency-Key still in progress"
        );
    }
}
