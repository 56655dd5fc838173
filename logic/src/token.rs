//! Device tokens: 32 random bytes as lowercase hex, stored only as their SHA-256.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;

/// Length of a token's text: two hex digits per byte.
pub const TOKEN_LEN: usize = TOKEN_BYTES * 2;

/// Returns a fresh token from the thread-local CSPRNG (`rand::rng()`, ChaCha12 seeded by the
/// operating system).
pub fn generate() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Returns the SHA-256 of a token's text.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares a presented token with a stored digest in constant time.
pub fn matches(token: &str, stored: &[u8; 32]) -> bool {
    digest_matches(&digest(token), stored)
}

/// Compares two token digests in constant time.
pub fn digest_matches(digest: &[u8; 32], stored: &[u8; 32]) -> bool {
    digest.ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_lowercase_hex() {
        let token = generate();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[test]
    fn generated_tokens_differ() {
        assert_ne!(generate(), generate());
    }

    #[test]
    fn token_matches_only_its_digest() {
        let token = generate();
        let stored = digest(&token);
        assert!(matches(&token, &stored));
        assert!(!matches(&generate(), &stored));
    }
}
