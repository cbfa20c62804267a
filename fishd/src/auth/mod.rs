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
//! - Failed authentications are limited per source address: past the limit, only a
//!   valid token is accepted from that address (429 otherwise), so passwords cannot
//!   be guessed online.
//! - Secrets are never logged.

pub mod secrets;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_types::User;
use axum::extract::{ConnectInfo, FromRequestParts};
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
    /// Failed authentications per source address.
    failures: RateLimiter<IpAddr>,
    watches: Mutex<HashMap<String, usize>>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            verify_permits: Semaphore::new(PASSWORD_VERIFY_PERMITS),
            password_cache: Mutex::new(HashMap::new()),
            rate: RateLimiter::default(),
            failures: RateLimiter::default(),
            watches: Mutex::new(HashMap::new()),
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
    /// caller's address: one that failed too often in the last minute gets 429 for
    /// anything but a valid token, so passwords cannot be guessed online.
    pub async fn authenticate(
        &self,
        state: &AppState,
        authorization: Option<&str>,
        source: Option<IpAddr>,
    ) -> Result<AuthUser, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized(
                "authentication required: send a Bearer token or Basic credentials".into(),
            ));
        };
        let failure_limit = state.limits.auth_failures_per_minute;
        let blocked = source.and_then(|ip| self.failures.retry_after(&ip, failure_limit, Instant::now()));
        let record = match parse_credentials(value) {
            // Tokens are 256-bit random secrets: checking one is cheap and tells a
            // guesser nothing, so a valid token works even from a blocked address
            // (a NAT shared with a misconfigured script must not lock everyone out).
            Some(Credentials::Bearer(token)) => self.by_token(state, token).await?,
            Some(Credentials::Basic { name, secret }) => {
                if blocked.is_some() {
                    self.by_token(state, &secret).await?.filter(|r| r.user.metadata.name_str() == name)
                } else {
                    self.by_basic(state, &name, &secret).await?
                }
            }
            None => None,
        };
        let Some(record) = record else {
            if let Some(retry_after_secs) = blocked {
                return Err(ApiError::TooManyRequests {
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
            return Err(ApiError::Unauthorized("invalid credentials".into()));
        };
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

/// "N per minute" as a token bucket per key: a key starts with N requests and
/// earns one back every 60/N seconds. Bursts are at most N, the long-run rate is
/// exactly N a minute, and a refused caller is told to the second when its next
/// request will pass (`Retry-After`), instead of waiting for a window to end.
#[derive(Debug)]
pub struct RateLimiter<K = String> {
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K> Default for RateLimiter<K> {
    fn default() -> Self {
        RateLimiter { buckets: Mutex::new(HashMap::new()) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The key's own limit as of its last request: pruning refills each bucket at its
    /// own rate, never at the rate of whoever happens to trigger the pruning.
    limit: u32,
}

const WINDOW: Duration = Duration::from_secs(60);
/// Keys tracked before full buckets (the same as absent ones) are dropped.
const MAX_KEYS: usize = 100_000;

impl Bucket {
    /// The bucket's tokens at `now`, refilled at `limit` per minute up to `limit`.
    fn refill(&mut self, limit: u32, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(limit) / WINDOW.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(limit));
        self.at = now;
    }

    /// Whole seconds until one token is there (at least 1).
    fn wait_secs(&self, limit: u32) -> u64 {
        let missing = (1.0 - self.tokens).max(0.0);
        // Less a hair, so float rounding cannot add a second: 20.000000001 is 20.
        ((missing * WINDOW.as_secs_f64() / f64::from(limit) - 1e-6).ceil() as u64).max(1)
    }
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// Counts one request; `limit` 0 means unlimited. Refused with 429 and the
    /// seconds until a request will pass.
    pub fn check(&self, key: &K, limit: u32, now: Instant) -> Result<(), ApiError> {
        match self.take(key, limit, now) {
            None => Ok(()),
            Some(retry_after_secs) => Err(ApiError::TooManyRequests {
                message: format!("rate limit of {limit} requests per minute exceeded"),
                retry_after_secs,
            }),
        }
    }

    /// Takes a token; `Some(seconds to wait)` when there is none.
    fn take(&self, key: &K, limit: u32, now: Instant) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_KEYS {
            b.retain(|_, bucket| {
                bucket.refill(bucket.limit, now);
                bucket.tokens < f64::from(bucket.limit)
            });
        }
        let bucket = b.entry(key.clone()).or_insert(Bucket { tokens: f64::from(limit), at: now, limit });
        bucket.limit = limit;
        bucket.refill(limit, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            None
        } else {
            Some(bucket.wait_secs(limit))
        }
    }

    /// Counts one event without refusing it (failed logins are counted, then judged
    /// by [`RateLimiter::retry_after`] on the next attempt).
    pub fn consume(&self, key: K, limit: u32, now: Instant) {
        let _ = self.take(&key, limit, now);
    }

    /// `Some(seconds)` while `key` has used up its budget; does not count.
    pub fn retry_after(&self, key: &K, limit: u32, now: Instant) -> Option<u64> {
        if limit == 0 {
            return None;
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = b.get_mut(key)?;
        bucket.refill(limit, now);
        (bucket.tokens < 1.0).then(|| bucket.wait_secs(limit))
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let authorization = match parts.headers.get(header::AUTHORIZATION) {
            Some(v) => Some(v.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?),
            None => None,
        };
        let source = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let user = state.auth.authenticate(state, authorization, source).await?;
        state.auth.check_rate(&user, state.limits.rate_limit_per_minute)?;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_bucket() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let a = "a".to_owned();
        assert!(r.check(&a, 2, t0).is_ok());
        assert!(r.check(&a, 2, t0).is_ok());
        match r.check(&a, 2, t0 + Duration::from_secs(10)) {
            // One request back every 30 s; 10 s of it are gone.
            Err(ApiError::TooManyRequests { retry_after_secs, .. }) => assert_eq!(retry_after_secs, 20),
            other => panic!("{other:?}"),
        }
        assert!(r.check(&"b".to_owned(), 2, t0).is_ok(), "limits are per user");
        assert!(r.check(&a, 2, t0 + Duration::from_secs(30)).is_ok(), "one earned back");
        assert!(r.check(&a, 2, t0 + Duration::from_secs(31)).is_err());
        assert!(r.check(&a, 2, t0 + Duration::from_secs(600)).is_ok(), "refilled");
        assert!(r.check(&a, 2, t0 + Duration::from_secs(600)).is_ok(), "up to the limit");
        assert!(r.check(&a, 2, t0 + Duration::from_secs(600)).is_err(), "and no further");
        assert!(r.check(&a, 0, t0).is_ok(), "0 = unlimited");
    }

    #[test]
    fn pruning_a_full_map_refills_each_key_at_its_own_limit() {
        let r = RateLimiter::default();
        let t0 = Instant::now();
        let slow = "slow".to_owned();
        assert!(r.check(&slow, 1, t0).is_ok());
        assert!(r.check(&slow, 1, t0).is_err(), "one a minute");
        for i in 0..MAX_KEYS {
            r.consume(format!("k{i}"), 1, t0);
        }
        // A caller with a high limit fills the map and triggers pruning a second later.
        let t1 = t0 + Duration::from_secs(1);
        assert!(r.check(&"fast".to_owned(), 100_000, t1).is_ok());
        assert!(r.check(&slow, 1, t1).is_err(), "pruning refilled a 1/min key at another caller's limit");
    }

    #[test]
    fn failures_block_until_earned_back() {
        let r: RateLimiter<IpAddr> = RateLimiter::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t0 = Instant::now();
        assert_eq!(r.retry_after(&ip, 3, t0), None, "unknown addresses are not blocked");
        for _ in 0..3 {
            r.consume(ip, 3, t0);
        }
        assert_eq!(r.retry_after(&ip, 3, t0), Some(20));
        assert_eq!(r.retry_after(&ip, 3, t0 + Duration::from_secs(20)), None);
        assert_eq!(r.retry_after(&ip, 0, t0), None, "0 = unlimited");
    }
}
