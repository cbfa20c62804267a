//! Join tokens: `aqjoin1.<CA fingerprint>.<secret>`.
//!
//! The fingerprint (hex SHA-256 of the cluster CA certificate) lets the joining node
//! pin the CA before it sends the token anywhere; the secret (256 random bits, hex)
//! is what makes the token hard to guess. Only the SHA-256 of the whole token is
//! stored, through `Command::CreateJoinToken`, so the replicated store never holds a
//! usable token.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::auth::secrets::SecretError;

/// The token's version prefix, so a newer format can be told apart.
pub const PREFIX: &str = "aqjoin1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    ca_fingerprint: String,
    raw: String,
}

/// Why a string is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("join token is malformed: {0}")]
pub struct Malformed(String);

impl JoinToken {
    /// A new random token for a cluster whose CA has `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Result<JoinToken, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        let raw = format!("{PREFIX}.{ca_fingerprint}.{}", hex::encode(bytes));
        Ok(JoinToken { ca_fingerprint: ca_fingerprint.to_owned(), raw })
    }

    /// The hex SHA-256 of the CA certificate the token was made for.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    /// The hex SHA-256 of the whole token: the key it is stored under.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.raw.as_bytes()))
    }

    /// The token text, to show once to the admin who made it.
    pub fn reveal(&self) -> &str {
        &self.raw
    }
}

/// Never prints the secret.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({PREFIX}.{}.…)", self.ca_fingerprint)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl FromStr for JoinToken {
    type Err = Malformed;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut parts = s.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(PREFIX), Some(fp), Some(secret), None) => {
                if !is_hex64(fp) {
                    return Err(Malformed("the CA fingerprint is not 64 lowercase hex digits".into()));
                }
                if !is_hex64(secret) {
                    return Err(Malformed("the secret is not 64 lowercase hex digits".into()));
                }
                Ok(JoinToken { ca_fingerprint: fp.to_owned(), raw: s.to_owned() })
            }
            (Some(p), _, _, _) if p != PREFIX => Err(Malformed(format!("it does not start with {PREFIX}."))),
            _ => Err(Malformed(format!("expected {PREFIX}.<fingerprint>.<secret>"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let fp = "ab".repeat(32);
        let t = JoinToken::generate(&fp).unwrap();
        let back: JoinToken = t.reveal().parse().unwrap();
        assert_eq!(back, t);
        assert_eq!(back.ca_fingerprint(), fp);
        assert_eq!(back.digest().len(), 64);
        assert_ne!(JoinToken::generate(&fp).unwrap().digest(), t.digest());
        assert!(!format!("{t:?}").contains(&t.reveal()[80..]), "Debug hides the secret");
        for bad in ["", "fish_abc", "aqjoin1.zz.zz", &format!("aqjoin1.{fp}"), &format!("aqjoin2.{fp}.{fp}")] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.starts_with("join token is malformed"), "{bad}: {e}");
        }
    }
}
