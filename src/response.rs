//! A ready-made response type for HTTP-like replies.
//!
//! The core stores responses as opaque bytes. Applications and the HTTP layer
//! that store a status, headers and a body use [`StoredResponse`], whose
//! [`encode`](StoredResponse::encode) / [`decode`](StoredResponse::decode) use
//! an explicit little-endian layout (documented in `docs/FORMAT.md`), stable
//! across versions and platforms.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A response as stored for replay: status, headers in order, body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// Status code (an HTTP status, or any code the application uses).
    pub status: u16,
    /// Header names and values, in order; names may repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why stored bytes are not a [`StoredResponse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored response is malformed at byte {offset}: {reason}; it was not written by StoredResponse::encode")]
pub struct DecodeResponseError {
    /// Where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub reason: &'static str,
}

const VERSION: u8 = 1;

impl StoredResponse {
    /// A response with no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        StoredResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Layout: version `u8` = 1, status `u16`, header count `u32`, then per
    /// header name length `u32`, name, value length `u32`, value; then the
    /// body to the end. All integers little-endian.
    pub fn encode(&self) -> Bytes {
        let size = 7
            + self
                .headers
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>()
            + self.body.len();
        let mut out = Vec::with_capacity(size);
        out.push(VERSION);
        out.extend_from_slice(&self.status.to_le_bytes());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.body);
        Bytes::from(out)
    }

    /// Reads bytes written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeResponseError> {
        let mut r = Reader { bytes, pos: 0 };
        if r.take(1)?[0] != VERSION {
            return Err(DecodeResponseError {
                offset: 0,
                reason: "unknown version byte",
            });
        }
        let status = u16::from_le_bytes(r.array()?);
        let count = u32::from_le_bytes(r.array()?) as usize;
        // Each header takes at least 8 bytes: refuse counts the input cannot hold.
        if count > r.remaining() / 8 {
            return Err(r.error("header count larger than the data"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u32::from_le_bytes(r.array()?) as usize;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| r.error("header name is not UTF-8"))?
                .to_owned();
            let len = u32::from_le_bytes(r.array()?) as usize;
            headers.push((name, r.take(len)?.to_vec()));
        }
        let body = bytes[r.pos..].to_vec();
        Ok(StoredResponse {
            status,
            headers,
            body,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    fn error(&self, reason: &'static str) -> DecodeResponseError {
        DecodeResponseError {
            offset: self.pos,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeResponseError> {
        if n > self.remaining() {
            return Err(self.error("truncated"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeResponseError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let r = StoredResponse::new(201, b"{\"id\":1}".to_vec())
            .with_header("content-type", "application/json")
            .with_header("x-multi", vec![0u8, 255])
            .with_header("x-multi", Vec::new());
        assert_eq!(StoredResponse::decode(&r.encode()).unwrap(), r);
        let empty = StoredResponse::new(204, Vec::new());
        assert_eq!(StoredResponse::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn layout_is_little_endian_and_stable() {
        let r = StoredResponse::new(0x0102, b"B".to_vec()).with_header("n", b"v".to_vec());
        assert_eq!(
            &r.encode()[..],
            &[1, 0x02, 0x01, 1, 0, 0, 0, 1, 0, 0, 0, b'n', 1, 0, 0, 0, b'v', b'B']
        );
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_body() {
        let r = StoredResponse::new(200, b"body".to_vec()).with_header("a", b"b".to_vec());
        let bytes = r.encode();
        let header_end = bytes.len() - 4;
        for cut in 0..header_end {
            let err = StoredResponse::decode(&bytes[..cut]).unwrap_err();
            assert!(err.offset <= cut, "cut {cut}: {err:?}");
        }
        assert_eq!(
            StoredResponse::decode(&[2, 0, 0]).unwrap_err().reason,
            "unknown version byte"
        );
        // A huge header count does not allocate.
        assert_eq!(
            StoredResponse::decode(&[1, 200, 0, 255, 255, 255, 255])
                .unwrap_err()
                .reason,
            "header count larger than the data"
        );
    }
}
