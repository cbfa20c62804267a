//! Resource tokens: how a process proves which application it belongs to.
//!
//! A token is `<uid>.<hex HMAC-SHA256(node secret, uid)>`. It is derived, not stored,
//! so a resource adopted after a restart (or re-found by an idempotent allocate)
//! still holds a valid token, and no table has to be kept in step with resources.

use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// Issues and checks resource tokens with the node's secret.
#[derive(Clone)]
pub struct MetaTokens {
    secret: [u8; 32],
}

impl std::fmt::Debug for MetaTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaTokens(..)")
    }
}

impl MetaTokens {
    /// Tokens keyed by `secret`.
    pub fn new(secret: [u8; 32]) -> Self {
        MetaTokens { secret }
    }

    /// Reads `<dir>/meta.secret`, creating it (mode 0600) on first start.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join("meta.secret");
        match std::fs::read(&path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut secret = [0u8; 32];
                secret.copy_from_slice(&bytes);
                Ok(MetaTokens { secret })
            }
            Ok(_) => Err(std::io::Error::other(format!("{} is not 32 bytes", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
                crate::fsutil::write_private(&path, &secret)?;
                Ok(MetaTokens { secret })
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, uid: Uuid) -> HmacSha256 {
        // A 32-byte key is always a valid HMAC key.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(uid.as_bytes());
        mac
    }

    /// The token of application `uid`.
    pub fn issue(&self, uid: Uuid) -> String {
        format!("{}.{}", uid.simple(), hex::encode(self.mac(uid).finalize().into_bytes()))
    }

    /// The application a token belongs to, if it is genuine. Compared in constant time.
    pub fn verify(&self, token: &str) -> Option<Uuid> {
        let (uid, tag) = token.split_once('.')?;
        let uid = Uuid::try_parse(uid).ok()?;
        let tag = hex::decode(tag).ok()?;
        self.mac(uid).verify_slice(&tag).ok()?;
        Some(uid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_for_their_uid() {
        let t = MetaTokens::new([7; 32]);
        let a = Uuid::now_v7();
        let tok = t.issue(a);
        assert_eq!(t.verify(&tok), Some(a));
        let b = Uuid::now_v7();
        let forged = format!("{}.{}", b.simple(), tok.split_once('.').map(|x| x.1).unwrap_or(""));
        assert_eq!(t.verify(&forged), None);
        assert_eq!(MetaTokens::new([8; 32]).verify(&tok), None);
        assert_eq!(t.verify("garbage"), None);
    }
}
