//! What counts as "the same request": a record is identified by a scope
//! chosen by the application and the client's idempotency key.

use std::fmt;
use std::hash::{BuildHasher, DefaultHasher, Hasher, RandomState};
use std::sync::Arc;

use crate::config::Limits;
use crate::error::{Error, Result};

/// The identity of one logical write: `(scope, key)`.
///
/// * `scope` is the application's namespace: a tenant, organisation or
///   API-key id, optionally with the route. Records in two scopes never see
///   each other.
/// * `key` is the client's `Idempotency-Key`: 1 to 255 bytes of visible ASCII
///   (0x20..=0x7E, the RFC 8941 sf-string alphabet) by default.
///
/// Construction validates against [`Limits::default`]; a store with other
/// limits checks them again on every call, and [`IdempotencyKey::with_limits`]
/// or [`Store::key`](crate::Store::key) build keys against custom limits.
///
/// ```
/// use idemlog::IdempotencyKey;
/// let key = IdempotencyKey::new("tenant-42", "8e03978e-40d5-43e8-bc93-6894a57f9324")?;
/// assert_eq!(key.key(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
/// assert!(IdempotencyKey::new("tenant-42", "tab\there").is_err());
/// # Ok::<(), idemlog::Error>(())
/// ```
#[derive(Clone)]
pub struct IdempotencyKey(Packed);

// One buffer per key: `[scope length: u32 LE][scope][key]`. Equal bytes
// mean equal identities: the length prefix keeps "ab"+"c" apart from
// "a"+"bc".
const SCOPE_LEN_BYTES: usize = 4;

/// Packed identities up to this many bytes live in the key itself; a UUID
/// key under a scope of up to 22 bytes takes ≤ 62.
const INLINE: usize = 62;

/// A key's packed bytes. Most identities are short: kept inline, building a
/// key does not allocate (the allocation and its free were ~140 of the
/// ~3,100 instructions of an in-memory reserve + complete, by callgrind)
/// and a copy (lease, record) is a 64-byte copy rather than a shared count
/// bumped and dropped across threads.
/// Longer identities share one allocation.
#[derive(Clone)]
enum Packed {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(Arc<[u8]>),
}

const _: () = assert!(std::mem::size_of::<Packed>() == 64);

impl PartialEq for IdempotencyKey {
    fn eq(&self, other: &Self) -> bool {
        self.framed() == other.framed()
    }
}

impl Eq for IdempotencyKey {}

impl std::hash::Hash for IdempotencyKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.framed().hash(state);
    }
}

impl IdempotencyKey {
    /// Validates `scope` and `key` against the default [`Limits`].
    pub fn new(scope: impl AsRef<[u8]>, key: impl AsRef<str>) -> Result<Self> {
        Self::with_limits(scope, key, &Limits::default())
    }

    /// Validates `scope` and `key` against `limits`.
    pub fn with_limits(
        scope: impl AsRef<[u8]>,
        key: impl AsRef<str>,
        limits: &Limits,
    ) -> Result<Self> {
        let (scope, key) = (scope.as_ref(), key.as_ref());
        validate(scope, key, limits)?;
        Ok(Self::from_stored(scope, key))
    }

    /// Builds the identity of a request to `method path`, placing the route
    /// where `placement` says: in the scope (the same key on another route is
    /// a new record) or left for the fingerprint (the same key on another
    /// route is a conflict; see [`Fingerprinter::route`](crate::Fingerprinter::route)).
    pub fn for_route(
        scope: impl AsRef<[u8]>,
        key: impl AsRef<str>,
        method: &str,
        path: &str,
        placement: RoutePlacement,
        limits: &Limits,
    ) -> Result<Self> {
        match placement {
            RoutePlacement::Fingerprint => Self::with_limits(scope, key, limits),
            RoutePlacement::Scope => {
                let scope = scope.as_ref();
                let mut routed = Vec::with_capacity(scope.len() + method.len() + path.len() + 2);
                routed.extend_from_slice(scope);
                // 0x1F (unit separator) cannot appear in a method and keeps
                // "tenant" + "POST /a" apart from other splits of the bytes.
                routed.push(0x1F);
                routed.extend_from_slice(method.as_bytes());
                routed.push(b' ');
                routed.extend_from_slice(path.as_bytes());
                Self::with_limits(routed, key, limits)
            }
        }
    }

    /// The application's scope bytes.
    pub fn scope(&self) -> &[u8] {
        &self.framed()[SCOPE_LEN_BYTES..SCOPE_LEN_BYTES + self.scope_len()]
    }

    /// The client's key.
    pub fn key(&self) -> &str {
        // Every constructor takes the key as a `str`, so the bytes are UTF-8
        // (and, once validated, visible ASCII).
        std::str::from_utf8(self.key_bytes()).unwrap_or_default()
    }

    /// The client's key as bytes.
    pub(crate) fn key_bytes(&self) -> &[u8] {
        &self.framed()[SCOPE_LEN_BYTES + self.scope_len()..]
    }

    /// The packed identity, `[scope length: u32 LE][scope][key]`: equal
    /// bytes, equal identities.
    pub(crate) fn framed(&self) -> &[u8] {
        match &self.0 {
            Packed::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Packed::Shared(bytes) => bytes,
        }
    }

    /// Whether the packed bytes live in the key itself (no allocation).
    #[cfg(test)]
    pub(crate) fn is_inline(&self) -> bool {
        matches!(self.0, Packed::Inline { .. })
    }

    /// How many values share this key's bytes: 1 for an inline key, which
    /// shares nothing (tests of what holds keys).
    #[cfg(test)]
    pub(crate) fn holders(&self) -> usize {
        match &self.0 {
            Packed::Inline { .. } => 1,
            Packed::Shared(bytes) => Arc::strong_count(bytes),
        }
    }

    fn scope_len(&self) -> usize {
        let mut len = [0u8; SCOPE_LEN_BYTES];
        len.copy_from_slice(&self.framed()[..SCOPE_LEN_BYTES]);
        u32::from_le_bytes(len) as usize
    }

    /// blake3 in derive-key mode (`context` names the use) over the
    /// length-framed identity: the one framing every unkeyed identity digest
    /// shares, so "ab"+"c" and "a"+"bc" never meet.
    #[cfg_attr(not(any(feature = "http", feature = "redis")), allow(dead_code))]
    pub(crate) fn digest(&self, context: &str) -> blake3::Hash {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&(self.scope().len() as u64).to_le_bytes());
        h.update(self.scope());
        h.update(self.key().as_bytes());
        h.finalize()
    }

    /// Checks this identity against a store's limits, which may be stricter or
    /// looser than the ones it was built with.
    pub(crate) fn check(&self, limits: &Limits) -> Result<()> {
        // The alphabet was checked when the key was built (or written, for
        // stored keys) and no limit changes it: only the lengths can differ.
        check_lengths(self.scope().len(), self.key_bytes().len(), limits)
    }

    /// Builds a key from parts without validating them: `with_limits`
    /// validated them, or the store did when they were written.
    pub(crate) fn from_stored(scope: &[u8], key: &str) -> Self {
        let len = SCOPE_LEN_BYTES + scope.len() + key.len();
        if len <= INLINE {
            let mut bytes = [0u8; INLINE];
            fill_framed(&mut bytes[..len], scope, key.as_bytes());
            // `len` ≤ 62 here.
            let len = len as u8;
            IdempotencyKey(Packed::Inline { len, bytes })
        } else {
            let shared = with_framed(scope, key.as_bytes(), |framed| Arc::from(framed));
            IdempotencyKey(Packed::Shared(shared))
        }
    }
}

/// Calls `use_framed` with `[scope length: u32 LE][scope][key]`, the bytes
/// of a key and of its identity hash. Usual identities are assembled on the
/// stack; larger ones in a `Vec`.
fn with_framed<T>(scope: &[u8], key: &[u8], use_framed: impl FnOnce(&[u8]) -> T) -> T {
    let len = SCOPE_LEN_BYTES + scope.len() + key.len();
    let fill = |buf: &mut [u8]| fill_framed(buf, scope, key);
    let mut stack = [0u8; 320];
    if len <= stack.len() {
        fill(&mut stack[..len]);
        use_framed(&stack[..len])
    } else {
        let mut heap = vec![0u8; len];
        fill(&mut heap);
        use_framed(&heap)
    }
}

/// Writes `[scope length: u32 LE][scope][key]` into `buf`, which is exactly
/// that long.
fn fill_framed(buf: &mut [u8], scope: &[u8], key: &[u8]) {
    // Scopes are bounded by `Limits::max_scope_len`, far below 4 GiB; a
    // larger one could not be built past `validate`.
    let scope_len = u32::try_from(scope.len()).unwrap_or(u32::MAX);
    buf[..SCOPE_LEN_BYTES].copy_from_slice(&scope_len.to_le_bytes());
    buf[SCOPE_LEN_BYTES..SCOPE_LEN_BYTES + scope.len()].copy_from_slice(scope);
    buf[SCOPE_LEN_BYTES + scope.len()..].copy_from_slice(key);
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyKey")
            .field("scope", &String::from_utf8_lossy(self.scope()))
            .field("key", &self.key())
            .finish()
    }
}

fn validate(scope: &[u8], key: &str, limits: &Limits) -> Result<()> {
    check_lengths(scope.len(), key.len(), limits)?;
    let visible = |b: &u8| (0x20..=0x7E).contains(b);
    // The common case (a valid key) in one branch-free pass the compiler
    // vectorises; the position is looked for only when there is an error.
    let outside = key
        .as_bytes()
        .iter()
        .fold(false, |acc, b| acc | !visible(b));
    if outside {
        if let Some((position, &byte)) =
            key.as_bytes().iter().enumerate().find(|(_, b)| !visible(b))
        {
            return Err(Error::InvalidKeyByte { byte, position });
        }
    }
    Ok(())
}

fn check_lengths(scope_len: usize, key_len: usize, limits: &Limits) -> Result<()> {
    if scope_len > limits.max_scope_len {
        return Err(Error::ScopeTooLong {
            len: scope_len,
            limit: limits.max_scope_len,
        });
    }
    if key_len == 0 {
        return Err(Error::EmptyKey {
            limit: limits.max_key_len,
        });
    }
    if key_len > limits.max_key_len {
        return Err(Error::KeyTooLong {
            len: key_len,
            limit: limits.max_key_len,
        });
    }
    Ok(())
}

/// Where the request's route (method and path) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoutePlacement {
    /// Route in the fingerprint (the default, as Stripe does): reusing a key
    /// on another method or path is a conflict.
    #[default]
    Fingerprint,
    /// Route in the scope: the same key on another route is a separate record.
    Scope,
}

/// A store-local hash of an identity: where to look, never proof of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdentityHash {
    /// Hash for the shard's table.
    pub(crate) table: u64,
    /// Independent bits choosing the shard, so that the table's own bits stay
    /// uniformly distributed inside every shard.
    pub(crate) shard: u32,
}

/// The per-store key of identity hashes: SipHash-1-3 with random keys
/// (std's `RandomState`, the hash-flooding defence of std's `HashMap`).
/// Clients who choose keys cannot aim them at one shard or bucket without
/// it, and it never leaves the process (recovery recomputes every hash).
#[derive(Clone, Debug, Default)]
pub(crate) struct IdentityHasher(RandomState);

impl IdentityHasher {
    /// A hasher with fresh random keys.
    pub(crate) fn new() -> Self {
        IdentityHasher(RandomState::new())
    }

    /// The hash of `id`.
    pub(crate) fn hash(&self, id: &IdempotencyKey) -> IdentityHash {
        // The key's bytes are already framed (scope length first).
        self.finish(|h| h.write(id.framed()))
    }

    /// The hash of an identity given as its stored parts (recovery reads
    /// them from disk without building a key): the same as [`Self::hash`]
    /// of the key they make.
    pub(crate) fn hash_parts(&self, scope: &[u8], key: &[u8]) -> IdentityHash {
        // Fed in one write, exactly as `hash` feeds a key's bytes.
        with_framed(scope, key, |framed| self.finish(|h| h.write(framed)))
    }

    fn finish(&self, feed: impl FnOnce(&mut DefaultHasher)) -> IdentityHash {
        let mut h = self.0.build_hasher();
        feed(&mut h);
        let table = h.finish();
        IdentityHash {
            table,
            // Bits the shard tables do not use: their buckets take low bits
            // and their control bytes the top 7; the durable index keeps
            // the low 24.
            shard: (table >> 32) as u32 & 0x00FF_FFFF,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(key: usize, scope: usize) -> Limits {
        Limits {
            max_key_len: key,
            max_scope_len: scope,
            ..Limits::default()
        }
    }

    /// Keys are packed into one buffer: parts read back exactly on both the
    /// stack-assembled and the heap-assembled paths, and the framing keeps
    /// splits of the same bytes apart.
    #[test]
    fn packed_parts_read_back_and_stay_apart() {
        for scope_len in [0, 1, 12, 283, 284, 1024] {
            let scope: Vec<u8> = (0..scope_len).map(|i| (i % 251) as u8).collect();
            for key in ["k", &"x".repeat(32), &"~".repeat(255)] {
                let built = IdempotencyKey::with_limits(&scope, key, &limits(255, 1024)).unwrap();
                assert_eq!(built.scope(), &scope[..], "scope of {scope_len} bytes");
                assert_eq!(built.key(), key);
                assert_eq!(built, IdempotencyKey::from_stored(&scope, key));
            }
        }
        let ab_c = IdempotencyKey::new("ab", "c").unwrap();
        let a_bc = IdempotencyKey::new("a", "bc").unwrap();
        assert_ne!(ab_c, a_bc);
        assert_ne!(std_hash(&ab_c), std_hash(&a_bc));
        assert_ne!(ab_c.digest("t"), a_bc.digest("t"));
    }

    fn std_hash(key: &IdempotencyKey) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<DefaultHasher>::default().hash_one(key)
    }

    /// Identities up to 62 packed bytes are kept in the key, longer ones
    /// in a shared allocation: on both sides of the boundary the parts read
    /// back, clones compare and hash equal, and a clone of a shared key
    /// shares it.
    #[test]
    fn inline_and_shared_keys_behave_alike() {
        // Packed length: 4 + 2 (scope) + key length.
        for key_len in [1, 55, 56, 57, 58, 254] {
            let key = "k".repeat(key_len);
            let built = IdempotencyKey::new("ab", &key).unwrap();
            let inline = 6 + key_len <= INLINE;
            assert_eq!(built.is_inline(), inline, "key of {key_len} bytes");
            assert_eq!((built.scope(), built.key()), (&b"ab"[..], key.as_str()));
            let copy = built.clone();
            assert_eq!(copy, built);
            assert_eq!(std_hash(&copy), std_hash(&built));
            assert_eq!(built.holders(), if inline { 1 } else { 2 });
            let other = IdempotencyKey::new("ab", format!("{key}x")).unwrap();
            assert_ne!(other, built);
        }
    }

    /// A store re-checks a key built under other limits: lengths against its
    /// own limits (the alphabet cannot differ).
    #[test]
    fn store_limits_recheck_lengths_of_keys_built_elsewhere() {
        let key = IdempotencyKey::new("tenant", "k".repeat(40)).unwrap();
        assert!(key.check(&limits(40, 6)).is_ok());
        assert!(matches!(
            key.check(&limits(39, 6)),
            Err(Error::KeyTooLong { len: 40, limit: 39 })
        ));
        assert!(matches!(
            key.check(&limits(40, 5)),
            Err(Error::ScopeTooLong { len: 6, limit: 5 })
        ));
    }

    #[test]
    fn identity_hash_is_the_same_from_a_key_and_from_its_parts() {
        let hasher = IdentityHasher::new();
        for (scope, key) in [
            (0usize, 1usize),
            (10, 30),
            (40, 80),
            (300, 255),
            (1024, 255),
        ] {
            let scope = vec![b's'; scope];
            let key = "k".repeat(key);
            let built = IdempotencyKey::with_limits(&scope, &key, &limits(255, 1024)).unwrap();
            assert_eq!(
                hasher.hash(&built),
                hasher.hash_parts(&scope, key.as_bytes()),
                "scope {} key {}",
                scope.len(),
                key.len()
            );
        }
    }

    #[test]
    fn key_length_at_below_and_above_the_limit() {
        let l = limits(8, 16);
        assert!(IdempotencyKey::with_limits("s", "1234567", &l).is_ok());
        assert!(IdempotencyKey::with_limits("s", "12345678", &l).is_ok());
        let err = IdempotencyKey::with_limits("s", "123456789", &l).unwrap_err();
        assert!(
            matches!(err, Error::KeyTooLong { len: 9, limit: 8 }),
            "got {err:?}"
        );
    }

    #[test]
    fn default_key_limit_is_255() {
        assert!(IdempotencyKey::new("", "k".repeat(255)).is_ok());
        let err = IdempotencyKey::new("", "k".repeat(256)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::KeyTooLong {
                    len: 256,
                    limit: 255
                }
            ),
            "got {err:?}"
        );
    }

    #[test]
    fn empty_key_is_rejected() {
        let err = IdempotencyKey::new("s", "").unwrap_err();
        assert!(matches!(err, Error::EmptyKey { limit: 255 }), "got {err:?}");
    }

    #[test]
    fn key_alphabet_is_visible_ascii() {
        assert!(IdempotencyKey::new("", " ~!\"#azAZ09").is_ok());
        for (key, byte, position) in [
            ("a\tb", 0x09u8, 1usize),
            ("\u{7f}", 0x7f, 0),
            ("é", 0xc3, 0),
            ("ab\n", 0x0a, 2),
        ] {
            let err = IdempotencyKey::new("", key).unwrap_err();
            assert!(
                matches!(err, Error::InvalidKeyByte { byte: b, position: p } if b == byte && p == position),
                "{key:?}: got {err:?}"
            );
        }
    }

    #[test]
    fn scope_length_at_below_and_above_the_limit() {
        let l = limits(255, 4);
        assert!(IdempotencyKey::with_limits("", "k", &l).is_ok());
        assert!(IdempotencyKey::with_limits("abcd", "k", &l).is_ok());
        let err = IdempotencyKey::with_limits("abcde", "k", &l).unwrap_err();
        assert!(
            matches!(err, Error::ScopeTooLong { len: 5, limit: 4 }),
            "got {err:?}"
        );
        assert!(IdempotencyKey::new(vec![0u8; 1024], "k").is_ok());
        assert!(matches!(
            IdempotencyKey::new(vec![0u8; 1025], "k"),
            Err(Error::ScopeTooLong {
                len: 1025,
                limit: 1024
            })
        ));
    }

    #[test]
    fn route_in_scope_separates_routes() {
        let l = Limits::default();
        let a =
            IdempotencyKey::for_route("t", "k", "POST", "/a", RoutePlacement::Scope, &l).unwrap();
        let b =
            IdempotencyKey::for_route("t", "k", "POST", "/b", RoutePlacement::Scope, &l).unwrap();
        let c = IdempotencyKey::for_route("t", "k", "POST", "/a", RoutePlacement::Fingerprint, &l)
            .unwrap();
        let d = IdempotencyKey::for_route("t", "k", "POST", "/b", RoutePlacement::Fingerprint, &l)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(c, d);
        assert_eq!(a.scope(), b"t\x1fPOST /a");
    }

    #[test]
    fn identity_hash_depends_on_the_store_and_the_framing() {
        let k1 = IdempotencyKey::new("ab", "c").unwrap();
        let k2 = IdempotencyKey::new("a", "bc").unwrap();
        let (h1, h2) = (IdentityHasher::new(), IdentityHasher::new());
        assert_ne!(h1.hash(&k1), h1.hash(&k2));
        assert_ne!(h1.hash(&k1), h2.hash(&k1));
        assert_eq!(h1.hash(&k1), h1.clone().hash(&k1.clone()));
    }
}
