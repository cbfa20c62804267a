//! Tokens and passwords: how secrets are made, stored and checked.
//!
//! API tokens are random 256-bit secrets; only their SHA-256 digest is stored, so the
//! store never holds a usable credential and a token lookup is one index read.
//! Passwords are argon2id (OWASP parameters), stored as PHC strings so the parameters
//! can change later without breaking existing hashes.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Prefix of every token, so secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "fish_";

/// Why a secret could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the system random source failed: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// A new random API token: `fish_` and 64 hex digits (256 bits).
pub fn new_token() -> Result<String, SecretError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The hex SHA-256 of a token, as stored in `UserRecord::token_digest`.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether `token` hashes to `digest`, compared in constant time.
pub fn token_matches(token: &str, digest: &str) -> bool {
    token_digest(token).as_bytes().ct_eq(digest.as_bytes()).into()
}

/// An argon2id PHC string of `password` (m=19456 KiB, t=2, p=1: the OWASP choice,
/// about 25 ms per hash on one core). Slow: call it off the async runtime.
pub fn hash_password(password: &str) -> Result<String, SecretError> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| SecretError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `hash`. Slow, like [`hash_password`].
pub fn verify_password(password: &str, hash: &str) -> bool {
    argon2::Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_match_their_digest() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert!(token_matches(&a, &token_digest(&a)));
        assert!(!token_matches(&b, &token_digest(&a)));
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("x", "not a phc string"));
    }
}
