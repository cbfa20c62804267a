//! Per-user quotas of the API: requests per minute and open watches.
//!
//! These are about how much a caller may use, not about who it is, so they live in
//! `api` (which knows users only as authenticated [`AuthUser`]s) rather than in
//! `auth`; the token bucket itself is the leaf [`crate::ratelimit`]. Admins are not
//! rate limited (they must be able to repair a fleet under load) but do have a watch
//! limit like everyone else, since each watch holds a task and a receiver.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::AuthUser;
use crate::ratelimit::RateLimiter;

/// The request budget and open watches of each user.
#[derive(Debug, Default)]
pub struct Quotas {
    rate: RateLimiter,
    watches: Mutex<HashMap<String, usize>>,
}

impl Quotas {
    /// Counts one request of `user` against its per-minute limit (its own
    /// `rateLimit`, else `default_per_minute`; 0 = unlimited).
    pub fn check_rate(&self, user: &AuthUser, default_per_minute: u32) -> Result<(), ApiError> {
        if user.is_admin() {
            return Ok(());
        }
        let limit = user.user.spec.rate_limit.unwrap_or(default_per_minute);
        match self.rate.take(&user.name, limit, Instant::now()) {
            None => Ok(()),
            Some(retry_after_secs) => Err(ApiError::TooManyRequests {
                message: format!("rate limit of {limit} requests per minute exceeded"),
                retry_after_secs,
            }),
        }
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
        Ok(WatchGuard { quotas: self.clone(), user: user.to_owned() })
    }
}

/// One open watch; dropping it frees the slot.
#[derive(Debug)]
pub struct WatchGuard {
    quotas: Arc<Quotas>,
    user: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut w = self.quotas.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = w.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                w.remove(&self.user);
            }
        }
    }
}

/// Every `/api/` handler takes an [`AuthUser`]: authenticated by `auth`, then counted
/// against the caller's request quota.
impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let authorization = match parts.headers.get(header::AUTHORIZATION) {
            Some(v) => Some(v.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?),
            None => None,
        };
        let source = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let user =
            state.auth.authenticate(&state.store, authorization, source, state.limits.auth_failures_per_minute).await?;
        state.quotas.check_rate(&user, state.limits.rate_limit_per_minute)?;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use api_types::{Role, User, UserSpec};

    use super::*;

    fn user(name: &str, admin: bool) -> AuthUser {
        let role = if admin { Role::Admin } else { Role::User };
        let user = User {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: Default::default(),
            spec: UserSpec { roles: vec![role], ..Default::default() },
            status: Default::default(),
        };
        AuthUser { name: name.into(), user: Arc::new(user) }
    }

    #[test]
    fn watches_are_counted_per_user_and_freed_on_drop() {
        let q = Arc::new(Quotas::default());
        let a = q.open_watch("alice", 1).expect("first watch");
        assert!(matches!(q.open_watch("alice", 1), Err(ApiError::TooManyRequests { .. })));
        assert!(q.open_watch("bob", 1).is_ok(), "limits are per user");
        drop(a);
        assert!(q.open_watch("alice", 1).is_ok(), "a closed watch frees its slot");
    }

    #[test]
    fn admins_are_not_rate_limited() {
        let q = Quotas::default();
        let (admin, alice) = (user("root", true), user("alice", false));
        for _ in 0..5 {
            assert!(q.check_rate(&admin, 1).is_ok());
        }
        assert!(q.check_rate(&alice, 1).is_ok());
        assert!(matches!(q.check_rate(&alice, 1), Err(ApiError::TooManyRequests { .. })));
    }
}
