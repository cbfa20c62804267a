//! `/api/v1/applications`: list, watch, get, create, deallocate, delete, resource and logs.
//!
//! A non-admin sees only its own applications: anyone else's answer 404, exactly
//! as if they did not exist.

use std::sync::Arc;
use std::time::Duration;

use api_types::{Application, List, Phase, ResourceStatus};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use super::apply::{apply_manifests, parse_one};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, read_body};
use super::stored::{ListBody, json_response};
use super::watch::{AddedLines, parse_resource_version, watch_response};
use super::{AppState, audit};
use crate::auth::AuthUser;
use crate::store::{AppFilter, Command, Event, Kind, Response as StoreResponse};

/// Query of `GET /api/v1/applications`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AppListQuery {
    /// Only applications in this phase (NEW, ELECTED, ALLOCATED, ...).
    #[param(value_type = Option<Phase>)]
    pub phase: Option<String>,
    /// Only applications of this label.
    pub label: Option<String>,
    /// Stream changes as newline-delimited JSON instead of answering a list.
    pub watch: Option<bool>,
    /// With `watch`: every change after this revision instead of the current objects.
    #[param(value_type = Option<u64>)]
    pub resource_version: Option<String>,
}

/// Query of the logs route.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Keep streaming new output until the application is DEALLOCATED or ERROR.
    pub follow: Option<bool>,
}

/// List applications (a non-admin gets only its own), or watch them.
#[utoipa::path(
    get, path = "/api/v1/applications", tag = "applications", params(AppListQuery),
    responses((status = 200, body = List<Application>,
        description = "an ApplicationList, or with watch=true a stream of WatchEvent lines")),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn list_applications(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<AppListQuery>,
) -> ApiResult<Response> {
    let phase = match q.phase.as_deref() {
        Some(p) => Some(p.parse::<Phase>().map_err(ApiError::BadRequest)?),
        None => None,
    };
    let filter = AppFilter { phase, label: q.label.clone(), owner: user.owner_filter() };
    // Checked even without `watch`: a malformed query is a 400, not silently ignored.
    let rv = parse_resource_version(q.resource_version.as_deref())?;
    if q.watch.unwrap_or(false) {
        let (p, l) = (phase, q.label.clone());
        let event_filter = Arc::new(move |e: &Event| {
            if p.is_none() && l.is_none() {
                return true;
            }
            let Some(f) = e.app_facts() else { return false };
            p.is_none_or(|p| f.phase == p) && l.as_deref().is_none_or(|l| f.label_name == l)
        });
        let store = state.store.clone();
        return watch_response(&state, &user, Kind::Application, rv, event_filter, move || {
            let mut initial = AddedLines::default();
            store.applications_json(&filter, &mut initial)?;
            Ok((initial.revision, initial.lines))
        });
    }
    // Each item is its stored JSON, as written: nothing is parsed and serialized again.
    let mut list = ListBody::new("Application");
    state.store.applications_json(&filter, &mut list)?;
    Ok(list.into_response())
}

/// The application `name_or_uid` if the caller may see it, else 404.
pub fn find_visible(state: &AppState, user: &AuthUser, name_or_uid: &str) -> ApiResult<Application> {
    match state.store.get_application(name_or_uid)? {
        Some(app) if user.may_see(app.metadata.owner.as_deref()) => Ok(app),
        _ => Err(ApiError::NotFound(format!("application {name_or_uid:?} not found"))),
    }
}

/// One application, by name or uid.
#[utoipa::path(
    get, path = "/api/v1/applications/{name}", tag = "applications",
    params(("name" = String, Path, description = "application name or uid")),
    responses((status = 200, body = Application), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_application(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    // Its stored JSON, as written (see `store::json`).
    match state.store.application_json(&name, user.owner_filter().as_deref())? {
        Some(json) => Ok(json_response(json)),
        None => Err(ApiError::NotFound(format!("application {name:?} not found"))),
    }
}

/// Create an application (201); the same name with the same spec answers 200.
#[utoipa::path(
    post, path = "/api/v1/applications", tag = "applications",
    request_body(content = Application, description = "an Application (JSON or YAML); the name may be omitted",
        example = json!({"apiVersion": "aquarium.fish/v1", "kind": "Application", "spec": {"label": "example"}})),
    responses(
        (status = 201, body = Application), (status = 200, body = Application, description = "already exists, same spec"),
        (status = 409, body = api_types::ErrorBody), (status = 422, body = api_types::ErrorBody,
            description = "invalid, or its label (version) does not exist"),
    ),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn create_application(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
    let m = parse_one(&headers, &bytes, "Application")?;
    let results = apply_manifests(&state, &user, vec![m]).await?;
    let r = results.into_iter().next().ok_or_else(|| ApiError::Internal("apply returned no result".into()))?;
    let app = find_visible(&state, &user, &r.name)?;
    let status = if r.action == api_types::ApplyAction::Unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(app)).into_response())
}

async fn deallocate(state: &AppState, user: &AuthUser, name: &str) -> ApiResult<(StatusCode, Json<Application>)> {
    let app = find_visible(state, user, name)?;
    let uid = app.metadata.uid.ok_or_else(|| ApiError::Internal("stored application without uid".into()))?;
    let outcome = state
        .store
        .execute(Command::RequestDeallocate { uid, by: user.name.clone(), now: OffsetDateTime::now_utc() })
        .await?;
    audit(
        user,
        "deallocate",
        "Application",
        app.metadata.name_str(),
        if outcome.is_ok() { "accepted" } else { "rejected" },
    );
    match outcome? {
        StoreResponse::Application(app) => Ok((StatusCode::ACCEPTED, Json(*app))),
        _ => Ok((StatusCode::ACCEPTED, Json(find_visible(state, user, name)?))),
    }
}

/// Ask for deallocation (202); idempotent.
#[utoipa::path(
    post, path = "/api/v1/applications/{name}/deallocate", tag = "applications",
    params(("name" = String, Path, description = "application name or uid")),
    responses((status = 202, body = Application), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn deallocate_application(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Application>)> {
    deallocate(&state, &user, &name).await
}

/// An active application: ask for deallocation (202), as the deallocate route does. A
/// DEALLOCATED or ERROR one: remove it now (200, the removed object), so its name is free
/// again and its kept log goes with it (contract section 3).
#[utoipa::path(
    delete, path = "/api/v1/applications/{name}", tag = "applications",
    params(("name" = String, Path, description = "application name or uid")),
    responses((status = 202, body = Application, description = "deallocation requested"),
        (status = 200, body = Application, description = "a finished application, removed"),
        (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn delete_application(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<Application>)> {
    let app = find_visible(&state, &user, &name)?;
    if !app.status.phase.is_terminal() {
        return deallocate(&state, &user, &name).await;
    }
    // Terminal phases never change again, so nothing can race this removal.
    let uid = app.metadata.uid.ok_or_else(|| ApiError::Internal("stored application without uid".into()))?;
    let outcome = state.store.execute(Command::PurgeApplication { uid }).await?;
    audit(
        &user,
        "delete",
        "Application",
        app.metadata.name_str(),
        if outcome.is_ok() { "removed" } else { "rejected" },
    );
    outcome?;
    Ok((StatusCode::OK, Json(app)))
}

/// The allocated resource (404 until ALLOCATED).
#[utoipa::path(
    get, path = "/api/v1/applications/{name}/resource", tag = "applications",
    params(("name" = String, Path, description = "application name or uid")),
    responses((status = 200, body = ResourceStatus), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_resource(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Json<ResourceStatus>> {
    let app = find_visible(&state, &user, &name)?;
    match (app.status.phase, app.status.resource) {
        (Phase::Allocated | Phase::Deallocate, Some(r)) => Ok(Json(r)),
        (phase, _) => Err(ApiError::NotFound(format!("application {name:?} has no resource: it is {phase}"))),
    }
}

/// The log of `app`'s resource, if its driver captures one and it exists yet.
async fn open_log(state: &AppState, app: &Application, uid: uuid::Uuid) -> ApiResult<Option<tokio::fs::File>> {
    let driver_name = match (&app.status.resource, app.status.definition) {
        (Some(r), _) if !r.driver.is_empty() => r.driver.clone(),
        (_, Some(i)) => match state.store.application_label(uid)?.and_then(|l| l.spec.definitions.get(i).cloned()) {
            Some(d) => d.driver,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    let Some(path) = state.drivers.get(&driver_name).and_then(|d| d.log_path(uid)) else { return Ok(None) };
    Ok(tokio::fs::File::open(&path).await.ok())
}

/// The resource's captured output, kept until the application is removed;
/// `?follow=true` waits for the output to appear and streams until the application ends.
#[utoipa::path(
    get, path = "/api/v1/applications/{name}/logs", tag = "applications",
    params(("name" = String, Path, description = "application name or uid"), LogsQuery),
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 404, body = api_types::ErrorBody, description = "no such application, or no logs")),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_logs(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> ApiResult<Response> {
    let follow = q.follow.unwrap_or(false);
    let mut app = find_visible(&state, &user, &name)?;
    let uid = app.metadata.uid.ok_or_else(|| ApiError::Internal("stored application without uid".into()))?;
    // With `follow`, an application whose resource has not written anything yet is
    // waited for (as `kubectl logs -f` waits for a container), until it ends.
    let file = loop {
        match open_log(&state, &app, uid).await? {
            Some(file) => break file,
            None if follow && !app.status.phase.is_terminal() => {
                tokio::select! {
                    _ = state.shutdown.cancelled() => return Err(ApiError::Unavailable("fishd is shutting down".into())),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
                app = find_visible(&state, &user, &name)?;
            }
            None => {
                let why = if app.status.phase.is_terminal() { "captured no output" } else { "has no output yet" };
                return Err(ApiError::NotFound(format!("application {name:?} {why}")));
            }
        }
    };
    let follow = q.follow.unwrap_or(false);
    let store = state.store.clone();
    let shutdown = state.shutdown.clone();
    let stream = async_stream::stream! {
        let mut file = file;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match file.read(&mut buf).await {
                Ok(0) => {
                    if !follow {
                        break;
                    }
                    let ended = match store.get_application_by_uid(uid) {
                        Ok(Some(a)) => a.status.phase.is_terminal(),
                        _ => true,
                    };
                    if ended {
                        // One last read: output written just before the end.
                        match file.read(&mut buf).await {
                            Ok(n) if n > 0 => { yield Ok(Bytes::copy_from_slice(&buf[..n])); continue; }
                            _ => break,
                        }
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
                Ok(n) => yield Ok::<Bytes, std::io::Error>(Bytes::copy_from_slice(&buf[..n])),
                Err(e) => { yield Err(e); break; }
            }
        }
    };
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    Ok(resp)
}
