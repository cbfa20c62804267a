//! `/api/v1/users`: list, watch, get, create, delete and token rotation.
//!
//! Tokens are shown exactly once: in the answer that creates the user and in the
//! answer that rotates its token. The store only ever sees their digests.

use std::sync::Arc;

use api_types::{List, Manifest, User};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::apply::{new_user_record, parse_one};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, read_body};
use super::nodes::WatchQuery;
use super::watch::{added_lines, parse_resource_version, watch_response};
use super::{AppState, audit};
use crate::auth::{AuthUser, secrets};
use crate::store::{Command, Kind, Response as StoreResponse};

/// The answer to a token rotation.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    pub user: String,
    /// The new token; the old one no longer works.
    pub token: String,
}

/// List users (admin), or watch them.
#[utoipa::path(
    get, path = "/api/v1/users", tag = "users", params(WatchQuery),
    responses((status = 200, body = List<User>, description = "a UserList, or with watch=true a stream of WatchEvent lines"),
        (status = 403, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> ApiResult<Response> {
    user.require_admin("list users")?;
    // Checked even without `watch`: a malformed query is a 400, not silently ignored.
    let rv = parse_resource_version(q.resource_version.as_deref())?;
    if q.watch.unwrap_or(false) {
        let store = state.store.clone();
        return watch_response(&state, &user, Kind::User, rv, Arc::new(|_| true), move || {
            let (rev, items) = store.list_users()?;
            Ok((rev, added_lines(&items)?))
        });
    }
    let (rev, items) = state.store.list_users()?;
    Ok(Json(List::new("User", rev, items)).into_response())
}

/// One user: an admin sees any, a user only itself.
#[utoipa::path(
    get, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = User), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Json<User>> {
    let not_found = || ApiError::NotFound(format!("user {name:?} not found"));
    if !user.is_admin() && user.name != name {
        return Err(not_found());
    }
    state.store.get_user(&name)?.map(|r| Json(r.user)).ok_or_else(not_found)
}

/// Create a user (admin, 201); the answer carries its token, once.
#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    request_body(content = User, description = "a User; `spec.password` is optional and stored hashed",
        example = json!({"apiVersion": "aquarium.fish/v1", "kind": "User", "metadata": {"name": "example-user"},
            "spec": {"roles": ["user"]}})),
    responses((status = 201, body = User, description = "the user, with `status.token`"),
        (status = 403, body = api_types::ErrorBody), (status = 409, body = api_types::ErrorBody),
        (status = 422, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn create_user(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    user.require_admin("create users")?;
    let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
    let Manifest::User(new) = parse_one(&headers, &bytes, "User")? else {
        return Err(ApiError::BadRequest("expected a User".into()));
    };
    let name = new.metadata.name_str().to_owned();
    let (record, token) = new_user_record(&state, new).await?;
    // One command that refuses a taken name: a check here and a write later would let
    // a concurrent duplicate overwrite the password and roles while answering 409.
    let command = Command::CreateUser { record: Box::new(record), uid: Uuid::now_v7(), now: OffsetDateTime::now_utc() };
    let outcome = state.store.execute(command).await?;
    audit(&user, "create", "User", &name, if outcome.is_ok() { "created" } else { "rejected" });
    let StoreResponse::User(created) = outcome? else {
        return Err(ApiError::Internal("creating a user answered something else".into()));
    };
    let mut created = *created;
    created.status.token = Some(token);
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Delete a user (admin). An admin cannot delete itself, so the node keeps one.
#[utoipa::path(
    delete, path = "/api/v1/users/{name}", tag = "users",
    params(("name" = String, Path, description = "user name")),
    responses((status = 204, description = "deleted"), (status = 403, body = api_types::ErrorBody),
        (status = 404, body = api_types::ErrorBody), (status = 409, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn delete_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    user.require_admin("delete users")?;
    if user.name == name {
        return Err(ApiError::Conflict("you cannot delete yourself".into()));
    }
    let outcome = state.store.execute(Command::DeleteUser { name: name.clone() }).await?;
    audit(&user, "delete", "User", &name, if outcome.is_ok() { "deleted" } else { "rejected" });
    outcome?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate a user's token (an admin any, a user its own): the old token stops working at once.
#[utoipa::path(
    post, path = "/api/v1/users/{name}/token", tag = "users",
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = TokenResponse), (status = 403, body = api_types::ErrorBody),
        (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn rotate_token(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Json<TokenResponse>> {
    if !user.is_admin() && user.name != name {
        // Like `get_user`: a user learns nothing about other users.
        return Err(ApiError::NotFound(format!("user {name:?} not found")));
    }
    let token = secrets::new_token().map_err(|e| ApiError::Internal(e.to_string()))?;
    let outcome = state
        .store
        .execute(Command::SetUserToken { name: name.clone(), token_digest: secrets::token_digest(&token) })
        .await?;
    audit(&user, "rotate-token", "User", &name, if outcome.is_ok() { "rotated" } else { "rejected" });
    outcome?;
    Ok(Json(TokenResponse { user: name, token }))
}
