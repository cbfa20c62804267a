//! Who is calling: `Authorization: Bearer <token>`, or Basic `user:token` / `user:password`.
//!
//! # Guarantees
//! - A token is checked by one index read of its SHA-256 digest (microseconds).
//! - A password is checked with argon2id on the blocking pool, at most
//!   [`PASSWORD_VERIFY_PERMITS`] at once, so a flood of Basic-password requests queues
//!   instead of eating every core; a successful check is remembered for
//!   [`PASSWORD_CACHE_TTL`] keyed by a digest of user, password and stored hash, so a
//!   changed password is never served from the cache.
//! - Non-admin users are rate limited per minute ([`RateLimiter`]).
//! - Secrets are never logged.

pub mod secrets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::User;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::store::UserRecord;

/// argon2id verifications running at once: each takes ~25 ms of one core and 19 MiB.
pub const PASSWORD_VERIFY_PERMITS: usize = 2;
/// How long a request waits for a verification slot before getting 503.
const PASSWORD_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a verified password is trusted without argon2 again.
pub const PASSWORD_CACHE_TTL: Duration = Duration::from_secs(300);
/// Entries kept in the password cache; it is cleared when full (it only saves time).
const PASSWORD_CACHE_MAX: usize = 10_000;

/// The authenticated caller, extracted by every `/api/` handler.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub name: String,
    pub user: User,
}

impl AuthUser {
    /// Whether the caller has the admin role.
    pub fn is_admin(&self) -> bool {
        self.user.is_admin()
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self, what: &str) -> Result<(), ApiError> {
        if self.is_admin() { Ok(()) } else { Err(ApiError::Forbidden(format!("only an admin may {what}"))) }
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

/// Shared authentication state: the verification queue, the password cache, the
/// per-user rate limits and the per-user watch counts.
#[derive(Debug)]
pub struct Auth {
    verify_permits: Semaphore,
    password_cache: Mutex<HashMap<[u8; 32], Instant>>,
    rate: RateLimiter,
    watches: Mutex<HashMap<String, usize>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            verify_permits: Semaphore::new(PASSWORD_VERIFY_PERMITS),
            password_cache: Mutex::new(HashMap::new()),
            rate: RateLimiter::default(),
            watches: Mutex::new(HashMap::new()),
        }
    }
}

impl Auth {
    /// Checks `Authorization` and returns the user it names.
    pub async fn authenticate(&self, state: &AppState, authorization: Option<&str>) -> Result<AuthUser, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized(
                "authentication required: send a Bearer token or Basic credentials".into(),
            ));
        };
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let record = if scheme.eq_ignore_ascii_case("bearer") {
            self.by_token(state, rest.trim()).await?
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::Unauthorized("malformed Basic credentials".into()))?;
            let (name, secret) =
                decoded.split_once(':').ok_or_else(|| ApiError::Unauthorized("malformed Basic credentials".into()))?;
            self.by_basic(state, name, secret).await?
        } else {
            None
        };
        let record = record.ok_or_else(|| ApiError::Unauthorized("invalid credentials".into()))?;
        Ok(AuthUser { name: record.user.metadata.name_str().to_owned(), user: record.user })
    }

    async fn by_token(&self, state: &AppState, token: &str) -> Result<Option<UserRecord>, ApiError> {
        if token.is_empty() {
            return Ok(None);
        }
        Ok(state.store.user_by_token_digest(&secrets::token_digest(token))?)
    }

    async fn by_basic(&self, state: &AppState, name: &str, secret: &str) -> Result<Option<UserRecord>, ApiError> {
        // Fast path: the secret is the user's token.
        if let Some(rec) = self.by_token(state, secret).await? {
            return Ok((rec.user.metadata.name_str() == name).then_some(rec));
        }
        let Some(rec) = state.store.get_user(name)? else { return Ok(None) };
        let Some(hash) = rec.password_hash.clone() else { return Ok(None) };
        let key = cache_key(name, secret, &hash);
        if self.cached(&key) {
            return Ok(Some(rec));
        }
        let _permit = tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, self.verify_permits.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("too many password checks at once; retry, or use a token".into()))?
            .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
        let password = secret.to_owned();
        let ok = tokio::task::spawn_blocking(move || secrets::verify_password(&password, &hash))
            .await
            .map_err(|e| ApiError::Internal(format!("password check failed: {e}")))?;
        if !ok {
            return Ok(None);
        }
        let mut cache = self.password_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= PASSWORD_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Instant::now());
        Ok(Some(rec))
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        let cache = self.password_cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).is_some_and(|at| at.elapsed() < PASSWORD_CACHE_TTL)
    }

    /// Runs a password hash under the same limit as verifications.
    pub async fn hash_password(&self, password: String) -> Result<String, ApiError> {
        let _permit = tokio::time::timeout(PASSWORD_QUEUE_TIMEOUT, self.verify_permits.acquire())
            .await
            .map_err(|_| ApiError::Unavailable("too many password operations at once; retry".into()))?
            .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
        tokio::task::spawn_blocking(move || secrets::hash_password(&password))
            .await
            .map_err(|e| ApiError::Internal(format!("password hashing failed: {e}")))?
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Counts one request of `user` against its per-minute limit.
    pub fn check_rate(&self, user: &AuthUser, default_per_minute: u32) -> Result<(), ApiError> {
        if user.is_admin() {
            return Ok(());
        }
        let limit = user.user.spec.rate_limit.unwrap_or(default_per_minute);
        self.rate.check(&user.name, limit, Instant::now())
    }

    /// Registers one more open watch of `user`, refused beyond `max`.
    pub fn open_watch(self: &Arc<Self>, user: &str, max: usize) -> Result<WatchGuard, ApiError> {
        let mut w = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let n = w.entry(user.to_owned()).or_default();
        if *n >= max {
            return Err(ApiError::TooManyRequests {
                message: format!("{user} already has {max} open watches; close one first"),
                retry_after_secs: 5,
            });
        }
        *n += 1;
        Ok(WatchGuard { auth: self.clone(), user: user.to_owned() })
    }
}

/// One open watch; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchGuard {
    auth: Arc<Auth>,
    user: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut w = self.auth.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.user);
            }
        }
    }
}

fn cache_key(name: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [name, password, hash] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// A fixed one-minute window per user: simple, and exact enough for "N per minute".
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl RateLimiter {
    /// Counts one request; `limit` 0 means unlimited.
    pub fn check(&self, user: &str, limit: u32, now: Instant) -> Result<(), ApiError> {
        if limit == 0 {
            return Ok(());
        }
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if w.len() > 100_000 {
            w.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
        }
        let (start, count) = w.entry(user.to_owned()).or_insert((now, 0));
        if now.duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        if *count >= limit {
            let wait = WINDOW.saturating_sub(now.duration_since(*start));
            return Err(ApiError::TooManyRequests {
                message: format!("rate limit of {limit} requests per minute exceeded"),
                retry_after_secs: wait.as_secs().max(1) + u64::from(wait.subsec_nanos() > 0),
            });
        }
        *count += 1;
        Ok(())
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let authorization = match parts.headers.get(header::AUTHORIZATION) {
            Some(v) => Some(v.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?),
            None => None,
        };
        let user = state.auth.authenticate(state, authorization).await?;
        state.auth.check_rate(&user, state.limits.rate_limit_per_minute)?;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_window() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        assert!(r.check("a", 2, t0).is_ok());
        assert!(r.check("a", 2, t0).is_ok());
        match r.check("a", 2, t0 + Duration::from_secs(10)) {
            Err(ApiError::TooManyRequests { retry_after_secs, .. }) => assert_eq!(retry_after_secs, 50),
            other => panic!("{other:?}"),
        }
        assert!(r.check("b", 2, t0).is_ok(), "limits are per user");
        assert!(r.check("a", 2, t0 + WINDOW).is_ok(), "a new window starts");
        assert!(r.check("a", 0, t0).is_ok(), "0 = unlimited");
    }
}
