//! Responses to and from their stored form.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION};
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode};

use crate::response::{DecodeResponseError, StoredResponse};

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Whether a header is kept in the stored response. Not kept: `Set-Cookie`
/// (a session must not be handed to whoever replays), `Date` (the replay
/// gets its own), `Content-Length` (recomputed from the stored body), the
/// hop-by-hop headers of RFC 9110 §7.6.1 and any header the response's
/// `Connection` header names.
pub(crate) fn is_replayable(name: &HeaderName, connection_named: &[String]) -> bool {
    let n = name.as_str();
    !(matches!(
        n,
        "set-cookie"
            | "date"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    ) || n.starts_with("proxy-")
        || connection_named.iter().any(|c| c == n))
}

fn connection_named(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The stored form of a response head and its body.
pub(crate) fn to_stored(parts: &Parts, body: &Bytes) -> StoredResponse {
    let named = connection_named(&parts.headers);
    StoredResponse {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| is_replayable(name, &named))
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect(),
        body: body.to_vec(),
    }
}

/// Why a stored response cannot be replayed.
#[derive(Debug)]
pub(crate) enum ReplayError {
    Decode(DecodeResponseError),
    Invalid(&'static str),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Decode(e) => e.fmt(f),
            ReplayError::Invalid(what) => write!(f, "stored response has an invalid {what}"),
        }
    }
}

/// The replay of stored bytes, marked `Idempotent-Replayed: true`.
pub(crate) fn from_stored(stored: &[u8]) -> Result<Response<Bytes>, ReplayError> {
    let stored = StoredResponse::decode(stored).map_err(ReplayError::Decode)?;
    let mut response = Response::new(Bytes::from(stored.body));
    *response.status_mut() =
        StatusCode::from_u16(stored.status).map_err(|_| ReplayError::Invalid("status"))?;
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ReplayError::Invalid("header name"))?;
        let value =
            HeaderValue::from_bytes(&value).map_err(|_| ReplayError::Invalid("header value"))?;
        headers.append(name, value);
    }
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_end_to_end_headers_only_and_replays_them_in_order() {
        let response = Response::builder()
            .status(201)
            .header("content-type", "application/json")
            .header("location", "/contacts/7")
            .header("set-cookie", "session=secret")
            .header("date", "Tue, 01 Jan 2030 00:00:00 GMT")
            .header("connection", "keep-alive, x-hop")
            .header("keep-alive", "timeout=5")
            .header("x-hop", "1")
            .header("transfer-encoding", "chunked")
            .header("proxy-authenticate", "Basic")
            .header("upgrade", "h2c")
            .header("trailer", "x-sum")
            .header("te", "trailers")
            .header("content-length", "12")
            .header("x-multi", "a")
            .header("x-multi", "b")
            .body(())
            .unwrap();
        let (parts, ()) = response.into_parts();
        let stored = to_stored(&parts, &Bytes::from_static(b"{\"id\":7}"));
        let names: Vec<&str> = stored.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location", "x-multi", "x-multi"]);

        let replay = from_stored(&stored.encode()).unwrap();
        assert_eq!(replay.status(), StatusCode::CREATED);
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(replay.headers()["location"], "/contacts/7");
        let multi: Vec<_> = replay.headers().get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
        assert!(replay.headers().get("set-cookie").is_none());
        assert_eq!(&replay.body()[..], b"{\"id\":7}");
    }

    #[test]
    fn foreign_bytes_are_an_error_not_a_panic() {
        let err = from_stored(b"\x07garbage").unwrap_err();
        assert!(matches!(err, ReplayError::Decode(_)), "got {err:?}");
        let bad_status = StoredResponse::new(42, Vec::new()).encode();
        let err = from_stored(&bad_status).unwrap_err();
        assert!(matches!(err, ReplayError::Invalid("status")), "got {err:?}");
    }
}
