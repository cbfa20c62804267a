//! Who is calling: `Authorization: Bearer <token>`, or Basic `user:token` / `user:password`.
//!
//! # Guarantees
//! - A token is checked by its SHA-256 digest, in the store's in-memory token cache
//!   (one index read the first time; the cache forgets every token as soon as any user
//!   changes, on whichever node the change was proposed).
//! - A password is checked with argon2id on the blocking pool, at most
//!   [`PASSWORD_VERIFY_PERMITS`] at once, so a flood of Basic-password requests queues
//!   instead of eating every core; a successful check is remembered for
//!   [`PASSWORD_CACHE_TTL`] keyed by a digest of user, password and stored hash, so a
//!   changed password is never served from the cache.
//! - Failed authentications are limited per source address: past the limit, only a
//!   valid token is accepted from that address (429 otherwise), so passwords cannot
//!   be guessed online.
//! - Secrets are never logged.
//!
//! Layering: `auth` sits between `api` and `store`. It reads users from the store and
//! answers with its own [`AuthError`]; `api` turns that into HTTP and owns the per-user
//! request quotas and watch counts (`api::limits`), which are not about who is calling.

pub mod secrets;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::User;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::ratelimit::RateLimiter;
use crate::store::{Store, StoreError};

/// argon2id verifications running at once: each takes ~25 ms of one core and 19 MiB.
pub const PASSWORD_VERIFY_PERMITS: usize = 2;
/// How long a request waits for a verification slot before getting 503.
const PASSWORD_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a verified password is trusted without argon2 again.
pub const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept in the password cache; it is cleared when full (it only saves time).
const PASSWORD_CACHE_MAX: usize = 10_000;

/// Why a caller was not let in, or a password could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or wrong ones.
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but without the role the operation needs.
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed attempts from the caller's address.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    /// Every password-check slot stayed busy, or fishd is stopping.
    #[error("{0}")]
    Busy(String),
    /// Reading the user failed.
    #[error("reading users failed")]
    Store(#[from] StoreError),
    /// Hashing a password failed.
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    /// The blocking password task failed (a panic in argon2 or a cancelled runtime).
    #[error("{what} failed")]
    Task {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The authenticated caller, extracted by every `/api/` handler.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub name: String,
    /// Shared with the token cache: authenticating copies nothing.
    pub user: Arc<User>,
}

impl AuthUser {
    /// Whether the caller has the admin role.
    pub fn is_admin(&self) -> bool {
        self.user.is_admin()
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), AuthError> {
        if self.is_admin() { Ok(()) } else { Err(AuthError::Forbidden(format!("only an admin may {what}"))) }
    }

    /// The owner filter for this caller: `None` for admins (everything), else itself.
    pub fn owner_filter(&self) -> Option<String> {
        if self.is_admin() { None } else { Some(self.name.clone()) }
    }

    /// Whether the caller may see an object owned by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.is_admin() || owner == Some(self.name.as_str())
    }
}

/// Shared authentication state: the verification queue, the password cache and the
/// failed attempts per source address.
#[derive(Debug)]
pub struct Auth {
    verify_permits: Semaphore,
    password_cache: Mutex<HashMap<[u8; 32], Instant>>,
    /// Failed authentications per source address.
    failures: RateLimiter<IpAddr>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            verify_permits: Semaphore::new(PASSWORD_VERIFY_PERMITS),
            password_cache: Mutex::new(HashMap::new()),
            failures: RateLimiter::default(),
        }
    }
}

/// What a request presented.
enum Credentials<'a> {
    Bearer(&'a str),
    Basic { name: String, secret: String },
}

impl Auth {
    /// Checks `Authorization` and returns the user it names. `source` is the
    /// caller's address: one that failed more than `failure_limit` times in the last
    /// minute (0 = no limit) gets 429 for anything but a valid token, so passwords
    /// cannot be guessed online.
    pub async fn authenticate(
        &self,
        store: &Store,
        authorization: Option<&str>,
        source: Option<IpAddr>,
        failure_limit: u32,
    ) -> Result<AuthUser, AuthError> {
        let Some(value) = authorization else {
            return Err(AuthError::Unauthorized(
                "authentication required: send a Bearer token or Basic credentials".into(),
            ));
        };
        let blocked = source.and_then(|ip| self.failures.retry_after(&ip, failure_limit, Instant::now()));
        let user = match parse_credentials(value) {
            // Tokens are 256-bit random secrets: checking one is cheap and tells a
            // guesser nothing, so a valid token works even from a blocked address
            // (a NAT shared with a misconfigured script must not lock everyone out).
            Some(Credentials::Bearer(token)) => self.by_token(store, token)?,
            Some(Credentials::Basic { name, secret }) => {
                if blocked.is_some() {
                    self.by_token(store, &secret)?.filter(|u| u.metadata.name_str() == name)
                } else {
                    self.by_basic(store, &name, &secret).await?
                }
            }
            None => None,
        };
        let Some(user) = user else {
            if let Some(retry_after_secs) = blocked {
                return Err(AuthError::TooManyRequests {
                    message: format!(
                        "too many failed authentications from this address (limit {failure_limit} per minute)"
                    ),
                    retry_after_secs,
                });
            }
            if let Some(ip) = source {
                self.failures.consume(ip, failure_limit, Instant::now());
                tracing::info!(target: "audit", source = %ip, outcome = "unauthenticated", "authentication failed");
            }
            return Err(AuthError::Unauthorized("invalid credentials".into()));
        };
        Ok(AuthUser { name: user.metadata.name_str().to_owned(), user })
    }

    fn by_token(&self, store: &Store, token: &str) -> Result<Option<Arc<User>>, AuthError> {
        if token.is_empty() {
            return Ok(None);
        }
        Ok(store.token_user(&secrets::token_digest(token))?)
    }

    async fn by_basic(&self, store: &Store, name: &str, secret: &str) -> Result<Option<Arc<User>>, AuthError> {
        // Fast path: the secret is the user's token.
        if let Some(user) = self.by_token(store, secret)? {
            return Ok((user.metadata.name_str() == name).then_some(user));
        }
        let Some(rec) = store.get_user(name)? else { return Ok(None) };
        let Some(hash) = rec.password_hash.clone() else { return Ok(None) };
        let key = cache_key(name, secret, &hash);
        if self.cached(&key) {
            return Ok(Some(Arc::new(rec.user)));
        }
        let _permit = tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, self.verify_permits.acquire())
            .await
            .map_err(|_| AuthError::Busy("too many password checks at once; retry, or use a token".into()))?
            .map_err(|_| AuthError::Busy("shutting down".into()))?;
        let password = secret.to_owned();
        let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&password, &hash))
            .await
            .map_err(|e| AuthError::Task { what: "password check", source: Box::new(e) })?;
        if !ok {
            return Ok(None);
        }
        let mut cache = self.password_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PASSWORD_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Instant::now());
        Ok(Some(Arc::new(rec.user)))
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let cache = self.password_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).is_some_and(|at| at.elapsed() < PASSWORD_CACHE_TTL)
    }

    /// Runs a password hash under the same limit as verifications.
    pub async fn hash_password(&self, password: String) -> Result<String, AuthError> {
        let _permit = tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, self.verify_permits.acquire())
            .await
            .map_err(|_| AuthError::Busy("too many password operations at once; retry".into()))?
            .map_err(|_| AuthError::Busy("shutting down".into()))?;
        tokio::task::spawn_blocking(move || secrets::hash_password(&password))
            .await
            .map_err(|e| AuthError::Task { what: "password hashing", source: Box::new(e) })?
            .map_err(AuthError::from)
    }
}

/// Splits an `Authorization` value; `None` when it is neither Bearer nor Basic
/// `name:secret`.
fn parse_credentials(value: &str) -> Option<Credentials<'_>> {
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        let token = rest.trim();
        return (!token.is_empty()).then_some(Credentials::Bearer(token));
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, secret) = decoded.split_once(':')?;
    Some(Credentials::Basic { name: name.to_owned(), secret: secret.to_owned() })
}

fn cache_key(name: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [name, password, hash] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}
