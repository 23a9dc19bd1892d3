//! Fingerprints: what makes two requests with one key "the same".
//!
//! A [`Fingerprint`] is a blake3 digest of the body plus whatever the
//! application mixes in (method, path, selected headers). The algorithm's id
//! travels with the digest and is stored on the record, so a later algorithm
//! never turns old retries into false conflicts: during a migration the
//! caller attaches the old algorithm's fingerprint with
//! [`Fingerprint::with_fallback`].

mod canonical_json;

pub use canonical_json::{canonicalize, canonicalize_into, CanonicalJsonError};

use std::fmt;

use crate::error::Result;

/// The fingerprint algorithms idemlog knows. The numeric id is stored on disk
/// and in remote backends and never changes meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum FingerprintAlgorithm {
    /// blake3 over the raw body bytes and the mixed-in parts.
    Blake3Raw = 1,
    /// blake3 over the RFC 8785 canonical form of a JSON body and the
    /// mixed-in parts: key order, whitespace and number spelling do not count.
    Blake3CanonicalJson = 2,
}

impl FingerprintAlgorithm {
    /// The stable numeric id.
    pub fn id(self) -> u8 {
        self as u8
    }

    /// The algorithm with numeric id `id`, if this build knows it.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            1 => Some(FingerprintAlgorithm::Blake3Raw),
            2 => Some(FingerprintAlgorithm::Blake3CanonicalJson),
            _ => None,
        }
    }

    fn context(self) -> &'static str {
        match self {
            FingerprintAlgorithm::Blake3Raw => "idemlog 2026-11 request fingerprint, raw body",
            FingerprintAlgorithm::Blake3CanonicalJson => {
                "idemlog 2026-11 request fingerprint, RFC 8785 canonical JSON body"
            }
        }
    }
}

/// The digest of a request, tagged with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    algorithm: FingerprintAlgorithm,
    digest: [u8; 32],
    fallback: Option<(FingerprintAlgorithm, [u8; 32])>,
}

impl Fingerprint {
    /// A fingerprint from its parts, as stored by a backend.
    pub fn from_parts(algorithm: FingerprintAlgorithm, digest: [u8; 32]) -> Self {
        Fingerprint {
            algorithm,
            digest,
            fallback: None,
        }
    }

    /// Fingerprint of a raw body, with nothing mixed in.
    pub fn of_bytes(body: &[u8]) -> Self {
        let mut f = Fingerprinter::raw();
        f.update(body);
        f.finish_raw()
    }

    /// Fingerprint of a JSON body in canonical form (RFC 8785), with nothing
    /// mixed in. Fails if the body is not valid JSON.
    pub fn of_json(body: &[u8]) -> Result<Self> {
        let mut f = Fingerprinter::canonical_json();
        f.update(body);
        f.finish()
    }

    /// The algorithm that produced the digest.
    pub fn algorithm(&self) -> FingerprintAlgorithm {
        self.algorithm
    }

    /// The 32-byte digest.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// Attaches the same request's fingerprint under another algorithm, used
    /// when compared against records stored under that algorithm (for
    /// example while moving a route from raw to canonical-JSON fingerprints).
    pub fn with_fallback(mut self, other: Fingerprint) -> Self {
        if other.algorithm != self.algorithm {
            self.fallback = Some((other.algorithm, other.digest));
        }
        self
    }

    /// The fallback fingerprint attached by [`Self::with_fallback`], for
    /// backends that compare fingerprints away from this type (the Redis
    /// script).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn fallback(&self) -> Option<Fingerprint> {
        self.fallback
            .map(|(algorithm, digest)| Fingerprint::from_parts(algorithm, digest))
    }

    /// The fingerprint stored on a record: the primary algorithm only.
    pub(crate) fn primary(&self) -> StoredFingerprint {
        StoredFingerprint {
            algorithm: self.algorithm,
            digest: self.digest,
        }
    }

    /// Whether this request matches a record stored with `stored` (its
    /// primary digest; a record keeps no fallback). A record under an
    /// algorithm this request has no digest for does not match.
    pub fn matches(&self, stored: &Fingerprint) -> bool {
        self.matches_stored(&stored.primary())
    }

    /// [`Self::matches`] on a record's own copy.
    pub(crate) fn matches_stored(&self, stored: &StoredFingerprint) -> bool {
        if stored.algorithm == self.algorithm {
            return stored.digest == self.digest;
        }
        match self.fallback {
            Some((algorithm, digest)) => algorithm == stored.algorithm && digest == stored.digest,
            None => false,
        }
    }
}

/// A fingerprint as a record keeps it: one algorithm and its digest. A
/// record never keeps a fallback, so this takes 33 bytes where a
/// [`Fingerprint`] takes 68; the in-memory store holds one per record.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StoredFingerprint {
    algorithm: FingerprintAlgorithm,
    digest: [u8; 32],
}

impl StoredFingerprint {
    /// A stored fingerprint from its parts, as a backend reads them.
    pub(crate) fn from_parts(algorithm: FingerprintAlgorithm, digest: [u8; 32]) -> Self {
        StoredFingerprint { algorithm, digest }
    }

    /// The algorithm it was computed with.
    pub(crate) fn algorithm(&self) -> FingerprintAlgorithm {
        self.algorithm
    }

    /// The 32-byte digest.
    pub(crate) fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The public form.
    pub(crate) fn to_fingerprint(self) -> Fingerprint {
        Fingerprint::from_parts(self.algorithm, self.digest)
    }
}

impl fmt::Debug for StoredFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_fingerprint(), f)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({:?}, ", self.algorithm)?;
        for b in &self.digest[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// Builds a [`Fingerprint`] incrementally: mix in the route and selected
/// headers, then feed the body in chunks as it streams in.
///
/// The parts are hashed separately from the body and each is length-framed,
/// so the order of `route`/`header` calls relative to `update` does not
/// matter and no two different splits of the same bytes collide.
///
/// ```
/// use idemlog::{Fingerprinter, Fingerprint};
///
/// let mut f = Fingerprinter::canonical_json();
/// f.route("POST", "/v1/charges");
/// f.update(br#"{"amount": 1.0, "#);
/// f.update(br#""currency": "eur"}"#);
/// let a = f.finish()?;
///
/// let mut g = Fingerprinter::canonical_json();
/// g.route("POST", "/v1/charges");
/// g.update(br#"{"currency":"eur","amount":1}"#);
/// assert_eq!(a, g.finish()?);
/// # Ok::<(), idemlog::Error>(())
/// ```
#[derive(Clone)]
pub struct Fingerprinter {
    algorithm: FingerprintAlgorithm,
    parts: blake3::Hasher,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Raw(Box<blake3::Hasher>),
    Json(Vec<u8>),
}

impl Fingerprinter {
    /// A fingerprinter over raw body bytes.
    pub fn raw() -> Self {
        Self::new(FingerprintAlgorithm::Blake3Raw)
    }

    /// A fingerprinter over the canonical form of a JSON body. The body is
    /// buffered until [`finish`](Self::finish), since canonical form needs the
    /// whole value.
    pub fn canonical_json() -> Self {
        Self::new(FingerprintAlgorithm::Blake3CanonicalJson)
    }

    /// A fingerprinter for `algorithm`.
    pub fn new(algorithm: FingerprintAlgorithm) -> Self {
        let body = match algorithm {
            FingerprintAlgorithm::Blake3Raw => Body::Raw(Box::default()),
            FingerprintAlgorithm::Blake3CanonicalJson => Body::Json(Vec::new()),
        };
        Fingerprinter {
            algorithm,
            parts: blake3::Hasher::new_derive_key(algorithm.context()),
            body,
        }
    }

    /// Mixes in the request's method and path (the Stripe-like default, where
    /// the same key on another route is a conflict).
    pub fn route(&mut self, method: &str, path: &str) -> &mut Self {
        self.part(b'R', method.as_bytes());
        self.part(b'P', path.as_bytes());
        self
    }

    /// Mixes in one header (or any other named value the application wants
    /// to count). Names are compared as given: lowercase them first for HTTP.
    pub fn header(&mut self, name: &str, value: &[u8]) -> &mut Self {
        self.part(b'H', name.as_bytes());
        self.part(b'V', value);
        self
    }

    fn part(&mut self, tag: u8, bytes: &[u8]) {
        self.parts.update(&[tag]);
        self.parts.update(&(bytes.len() as u64).to_le_bytes());
        self.parts.update(bytes);
    }

    /// Feeds the next chunk of the body.
    pub fn update(&mut self, chunk: &[u8]) -> &mut Self {
        match &mut self.body {
            Body::Raw(h) => {
                h.update(chunk);
            }
            Body::Json(buf) => buf.extend_from_slice(chunk),
        }
        self
    }

    /// The finished fingerprint. Fails only for a canonical-JSON fingerprint
    /// of a body that is not valid JSON.
    pub fn finish(self) -> Result<Fingerprint> {
        let body_digest = match self.body {
            Body::Raw(h) => h.finalize(),
            Body::Json(buf) => {
                let canonical = canonicalize(&buf)?;
                blake3::hash(&canonical)
            }
        };
        Ok(Self::combine(self.algorithm, self.parts, body_digest))
    }

    pub(crate) fn finish_raw(self) -> Fingerprint {
        match self.body {
            Body::Raw(h) => Self::combine(self.algorithm, self.parts, h.finalize()),
            // Only called on a raw fingerprinter.
            Body::Json(_) => unreachable!("finish_raw on a canonical-JSON fingerprinter"),
        }
    }

    fn combine(
        algorithm: FingerprintAlgorithm,
        mut parts: blake3::Hasher,
        body: blake3::Hash,
    ) -> Fingerprint {
        parts.update(b"B");
        parts.update(body.as_bytes());
        Fingerprint::from_parts(algorithm, *parts.finalize().as_bytes())
    }
}

impl fmt::Debug for Fingerprinter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fingerprinter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_raw_equals_one_shot() {
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut f = Fingerprinter::raw();
        for chunk in body.chunks(333) {
            f.update(chunk);
        }
        assert_eq!(f.finish().unwrap(), Fingerprint::of_bytes(&body));
    }

    #[test]
    fn any_changed_byte_changes_the_fingerprint() {
        let a = Fingerprint::of_bytes(b"amount=100");
        assert_ne!(a, Fingerprint::of_bytes(b"amount=101"));
        assert_ne!(a, Fingerprint::of_bytes(b"amount=100 "));
    }

    #[test]
    fn route_and_headers_count() {
        let fp = |m: &str, p: &str, h: Option<(&str, &[u8])>| {
            let mut f = Fingerprinter::raw();
            f.route(m, p).update(b"{}");
            if let Some((n, v)) = h {
                f.header(n, v);
            }
            f.finish().unwrap()
        };
        let base = fp("POST", "/a", None);
        assert_eq!(base, fp("POST", "/a", None));
        assert_ne!(base, fp("PATCH", "/a", None));
        assert_ne!(base, fp("POST", "/b", None));
        assert_ne!(base, fp("POST", "/a", Some(("x-account", b"1"))));
        // Framing: moving a byte between method and path is another request.
        assert_ne!(fp("POS", "T/a", None), base);
    }

    #[test]
    fn canonical_json_ignores_spelling_but_not_values() {
        let a = Fingerprint::of_json(br#"{"b":[1,2,{"z":true,"a":null}],"a":1.0}"#).unwrap();
        let b =
            Fingerprint::of_json(b" { \"a\" : 1e0 ,\n\"b\":[1, 2.0, {\"a\":null, \"z\":true}] } ")
                .unwrap();
        assert_eq!(a, b);
        for changed in [
            br#"{"b":[1,2,{"z":true,"a":null}],"a":2}"#.as_slice(),
            br#"{"b":[2,1,{"z":true,"a":null}],"a":1}"#,
            br#"{"b":[1,2,{"z":false,"a":null}],"a":1}"#,
            br#"{"b":[1,2,{"z":true,"a":null}],"a":"1"}"#,
            br#"{"b":[1,2,{"z":true,"a":null}],"A":1}"#,
        ] {
            assert_ne!(
                a,
                Fingerprint::of_json(changed).unwrap(),
                "{}",
                String::from_utf8_lossy(changed)
            );
        }
    }

    #[test]
    fn canonical_json_rejects_invalid_json_with_typed_error() {
        let err = Fingerprint::of_json(b"{\"a\":").unwrap_err();
        assert!(matches!(err, crate::Error::CanonicalJson(_)), "got {err:?}");
        assert!(err.is_invalid_input());
    }

    #[test]
    fn algorithms_never_compare_equal_and_fallback_bridges_them() {
        let body = br#"{"a":1}"#;
        let raw = Fingerprint::of_bytes(body);
        let json = Fingerprint::of_json(body).unwrap();
        assert_ne!(raw.digest(), json.digest());
        assert!(!json.matches(&raw));
        let migrating = json.with_fallback(raw);
        assert!(migrating.matches(&raw));
        assert!(migrating.matches(&json));
        assert!(!migrating.matches(&Fingerprint::of_bytes(b"{\"a\":2}")));
        assert_eq!(migrating.primary().to_fingerprint(), json);
    }

    #[test]
    fn algorithm_ids_round_trip() {
        for a in [
            FingerprintAlgorithm::Blake3Raw,
            FingerprintAlgorithm::Blake3CanonicalJson,
        ] {
            assert_eq!(FingerprintAlgorithm::from_id(a.id()), Some(a));
        }
        assert_eq!(FingerprintAlgorithm::from_id(0), None);
        assert_eq!(FingerprintAlgorithm::from_id(3), None);
    }
}
