//! GitHub App authentication (`auth.app`): the App's private key signs a short JWT
//! (RS256), which buys an installation access token (1 h at GitHub); the token is
//! what every runner call sends.
//!
//! # Guarantees
//! - The private key is read once, at start, and kept in memory only; a key GitHub
//!   issues (PKCS#1 PEM, `BEGIN RSA PRIVATE KEY`) and PKCS#8 PEM are both taken, and
//!   anything else is an error naming `auth.app.privateKeyFile`.
//! - A JWT is valid for at most 10 minutes as GitHub requires: `iat` is 60 s in the
//!   past (GitHub's advice against clock drift) and `exp` 9 minutes ahead.
//! - A token is refreshed before it expires: at 5 minutes before, or halfway
//!   through a shorter life; a 401 drops it at once (see [`AppAuth::invalidate`]).
//!
//! Signing uses `ring` (already in the tree through rustls), not a second crypto stack.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use time::OffsetDateTime;

/// Refresh a token this long before it expires (GARM and ARC use the same margin).
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// GitHub refuses App JWTs valid for more than 10 minutes; 9 leaves room for drift.
const JWT_LIFE: i64 = 9 * 60;
/// `iat` this far in the past, so a GitHub clock slightly behind ours accepts it.
const JWT_BACKDATE: i64 = 60;

/// Who the App is: its client id (recommended by GitHub) or its numeric app id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Issuer {
    ClientId(String),
    AppId(u64),
}

/// An installation token and its life.
#[derive(Clone, Debug)]
struct Cached {
    token: String,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

/// One App installation's credentials.
pub struct AppAuth {
    issuer: Issuer,
    /// The installation whose token is used (`/app/installations/{id}/access_tokens`).
    pub installation_id: u64,
    key: RsaKeyPair,
    rng: ring::rand::SystemRandom,
    cached: Mutex<Option<Cached>>,
    /// One refresh at a time: calls waiting on a refresh reuse its token.
    pub(super) refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth").field("issuer", &self.issuer).field("installation_id", &self.installation_id).finish()
    }
}

impl AppAuth {
    /// Reads the App's private key from `path` (PEM, PKCS#1 or PKCS#8 RSA).
    pub fn load(issuer: Issuer, installation_id: u64, path: &Path) -> Result<AppAuth, String> {
        let at = |m: String| format!("auth.app.privateKeyFile {}: {m}", path.display());
        let pem = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| at(format!("no PEM private key ({e:?})")))?;
        let key = match &der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            _ => return Err(at("not an RSA key (GitHub App keys are RSA)".into())),
        }
        .map_err(|e| at(format!("not a usable RSA key: {e}")))?;
        Ok(AppAuth {
            issuer,
            installation_id,
            key,
            rng: ring::rand::SystemRandom::new(),
            cached: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// A JWT for the App itself, signed RS256, valid from a minute ago for 9 minutes.
    pub fn jwt(&self, now: OffsetDateTime) -> Result<String, String> {
        let iat = now.unix_timestamp() - JWT_BACKDATE;
        let iss = match &self.issuer {
            Issuer::ClientId(c) => json!(c),
            Issuer::AppId(id) => json!(id),
        };
        let header = B64URL.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = B64URL.encode(json!({"iat": iat, "exp": now.unix_timestamp() + JWT_LIFE, "iss": iss}).to_string());
        let signing_input = format!("{header}.{claims}");
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, signing_input.as_bytes(), &mut sig)
            .map_err(|_| "signing the GitHub App JWT failed".to_owned())?;
        Ok(format!("{signing_input}.{}", B64URL.encode(sig)))
    }

    /// The cached installation token, unless it is missing or due for refresh.
    pub fn current(&self, now: OffsetDateTime) -> Option<String> {
        let c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let c = c.as_ref()?;
        let life = Duration::try_from(c.expires_at - c.issued_at).unwrap_or(Duration::ZERO);
        let margin = REFRESH_BEFORE.min(life / 2);
        (now + margin < c.expires_at).then(|| c.token.clone())
    }

    /// Keeps a token GitHub issued at `now`.
    pub fn keep(&self, token: String, expires_at: OffsetDateTime, now: OffsetDateTime) {
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cached { token, issued_at: now, expires_at });
    }

    /// Drops the token (GitHub answered 401: revoked, or expired early).
    pub fn invalidate(&self, token: &str) {
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if c.as_ref().is_some_and(|c| c.token == token) {
            *c = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_pem_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "not a key").expect("write");
        let err = AppAuth::load(Issuer::AppId(1), 2, &path).expect_err("refused");
        assert!(err.contains("auth.app.privateKeyFile"), "{err}");
        let err = AppAuth::load(Issuer::AppId(1), 2, &dir.path().join("missing.pem")).expect_err("refused");
        assert!(err.contains("missing.pem"), "{err}");
    }
}
