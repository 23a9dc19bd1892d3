//! Log-safe names for identities: keys are secrets of a kind (they can be
//! guessed from, and they let a caller read a stored response), so logs
//! carry a short hash instead.

use std::fmt;

use crate::identity::IdempotencyKey;

/// The first 8 bytes of blake3 over the length-framed scope and key, in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyHash([u8; 8]);

impl KeyHash {
    pub(crate) fn of(key: &IdempotencyKey) -> Self {
        let digest = identity_digest(key);
        let mut short = [0u8; 8];
        short.copy_from_slice(&digest[..8]);
        KeyHash(short)
    }
}

/// A digest of the whole identity, for in-process maps.
pub(crate) fn identity_digest(key: &IdempotencyKey) -> [u8; 32] {
    *key.digest("idemlog 2026-11 http layer identity digest")
        .as_bytes()
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_16_hex_digits_and_never_the_key() {
        let key = IdempotencyKey::new("tenant", "secret-key").unwrap();
        let shown = KeyHash::of(&key).to_string();
        assert_eq!(shown.len(), 16);
        assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!shown.contains("secret"));
        let other = IdempotencyKey::new("tenant2", "secret-key").unwrap();
        assert_ne!(KeyHash::of(&other).to_string(), shown);
    }
}
