//! `/api/v1/labels`: list, watch, get, create and delete labels.

use api_types::{Label, List};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

use super::apply::{apply_manifests, parse_one};
use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, read_body};
use super::stored::{ListBody, json_response};
use super::watch::{AddedLines, object_name, parse_resource_version, watch_response};
use super::{AppState, audit};
use crate::auth::AuthUser;
use crate::store::{Command, Kind};

/// Query of `GET /api/v1/labels`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct LabelListQuery {
    /// Only versions of this label.
    pub name: Option<String>,
    /// Stream changes as newline-delimited JSON instead of answering a list.
    pub watch: Option<bool>,
    /// With `watch`: every change after this revision instead of the current objects.
    #[param(value_type = Option<u64>)]
    pub resource_version: Option<String>,
}

/// Query naming one label version.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionQuery {
    /// A label version; the latest when absent.
    pub version: Option<u32>,
}

/// List labels (every version), or watch them.
#[utoipa::path(
    get, path = "/api/v1/labels", tag = "labels", params(LabelListQuery),
    responses((status = 200, body = List<Label>, description = "a LabelList, or with watch=true a stream of WatchEvent lines")),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn list_labels(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<LabelListQuery>,
) -> ApiResult<Response> {
    // Checked even without `watch`: a malformed query is a 400, not silently ignored.
    let rv = parse_resource_version(q.resource_version.as_deref())?;
    if q.watch.unwrap_or(false) {
        let name = q.name.clone();
        let filter = Arc::new(move |e: &crate::store::Event| name.as_deref().is_none_or(|n| object_name(e) == n));
        let store = state.store.clone();
        return watch_response(&state, &user, Kind::Label, rv, filter, move || {
            let mut initial = AddedLines::default();
            store.labels_json(q.name.as_deref(), &mut initial)?;
            Ok((initial.revision, initial.lines))
        });
    }
    // Each item is its stored JSON, as written: nothing is parsed and serialized again.
    let mut list = ListBody::new("Label");
    state.store.labels_json(q.name.as_deref(), &mut list)?;
    Ok(list.into_response())
}

/// One label: the latest version, or `?version=N`.
#[utoipa::path(
    get, path = "/api/v1/labels/{name}", tag = "labels",
    params(("name" = String, Path, description = "label name"), VersionQuery),
    responses((status = 200, body = Label), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_label(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> ApiResult<Response> {
    // By name (nearly always): its stored JSON, as written (see `store::json`).
    if let Some(json) = state.store.label_json(&name, q.version)? {
        return Ok(json_response(json));
    }
    find(&state, &name, q.version).map(|l| Json(l).into_response())
}

fn find(state: &AppState, name_or_uid: &str, version: Option<u32>) -> ApiResult<Label> {
    if let Some(l) = state.store.get_label(name_or_uid, version)? {
        return Ok(l);
    }
    // `<name>` may be a uid: labels are few, so a scan is fine.
    if let Ok(uid) = name_or_uid.parse::<uuid::Uuid>() {
        let (_, all) = state.store.list_labels(None)?;
        if let Some(l) = all.into_iter().find(|l| l.metadata.uid == Some(uid)) {
            return Ok(l);
        }
    }
    Err(ApiError::NotFound(match version {
        Some(v) => format!("label {name_or_uid:?} has no version {v}"),
        None => format!("label {name_or_uid:?} not found"),
    }))
}

/// Create a label, or a new version of one (201); an identical spec answers 200.
#[utoipa::path(
    post, path = "/api/v1/labels", tag = "labels",
    request_body(content = Label, description = "a Label (JSON or YAML)",
        example = json!({"apiVersion": "aquarium.fish/v1", "kind": "Label", "metadata": {"name": "example"},
            "spec": {"definitions": [{"driver": "test", "resources": {"cpu": 1, "ram": 1}}]}})),
    responses(
        (status = 201, body = Label, description = "created, or a new version"),
        (status = 200, body = Label, description = "the latest version already has this spec"),
        (status = 403, body = api_types::ErrorBody), (status = 409, body = api_types::ErrorBody),
        (status = 422, body = api_types::ErrorBody),
    ),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn create_label(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    user.require_admin("create labels")?;
    let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
    let m = parse_one(&headers, &bytes, "Label")?;
    let results = apply_manifests(&state, &user, vec![m]).await?;
    let r = results.into_iter().next().ok_or_else(|| ApiError::Internal("apply returned no result".into()))?;
    let label = find(&state, &r.name, r.version)?;
    let status = if r.action == api_types::ApplyAction::Unchanged { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(label)).into_response())
}

/// What a label deletion did, and what it did not: applications of the label keep
/// running on the version they pinned, and a person deleting a label in use should know.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelDeleted {
    pub name: String,
    /// The version deleted; absent when every version was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Applications of the deleted version(s) that are not finished; they keep it.
    pub applications_running: usize,
}

/// Delete a label, or one version of it (admin). Applications keep their pinned version;
/// the answer says how many are still running on it.
#[utoipa::path(
    delete, path = "/api/v1/labels/{name}", tag = "labels",
    params(("name" = String, Path, description = "label name"), VersionQuery),
    responses((status = 200, body = LabelDeleted, description = "deleted"), (status = 403, body = api_types::ErrorBody),
        (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn delete_label(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> ApiResult<Json<LabelDeleted>> {
    user.require_admin("delete labels")?;
    let name = match name.parse::<uuid::Uuid>() {
        Ok(_) => find(&state, &name, None)?.metadata.name_str().to_owned(),
        Err(_) => name,
    };
    let filter = crate::store::AppFilter { label: Some(name.clone()), ..Default::default() };
    let (_, apps) = state.store.list_applications(&filter)?;
    let applications_running = apps
        .iter()
        .filter(|a| !a.status.phase.is_terminal())
        .filter(|a| q.version.is_none() || a.status.label_version == q.version)
        .count();
    let outcome = state.store.execute(Command::DeleteLabel { name: name.clone(), version: q.version }).await?;
    audit(&user, "delete", "Label", &name, if outcome.is_ok() { "deleted" } else { "rejected" });
    outcome?;
    Ok(Json(LabelDeleted { name, version: q.version, applications_running }))
}
