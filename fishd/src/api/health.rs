//! Liveness, readiness and `whoami`.

use std::sync::Arc;

use api_types::User;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::auth::AuthUser;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the node has started, the store answers, and fishd is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = String, content_type = "text/plain"),
    (status = 503, body = api_types::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> ApiResult<(StatusCode, &'static str)> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    if !state.started.load(std::sync::atomic::Ordering::Acquire) {
        return Err(ApiError::Unavailable("starting".into()));
    }
    state.store.revision().map_err(|e| {
        tracing::warn!(error = %e, "readiness check: the store does not answer");
        ApiError::Unavailable("the store does not answer".into())
    })?;
    Ok((StatusCode::OK, "ok"))
}

/// The caller's user.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "users",
    responses((status = 200, body = User), (status = 401, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = [])))]
pub async fn whoami(user: AuthUser) -> Json<User> {
    Json(Arc::unwrap_or_clone(user.user))
}
