//! `GET /meta/v1/data`: a resource asks for its merged metadata.
//!
//! The caller is identified by the listener it came through (a virtual machine's own
//! metadata socket carries a [`ResourceUid`]), by its `Bearer` resource token (processes
//! get `FISH_META_TOKEN`), or by its source address, which must be the `ipAddr` of an
//! ALLOCATED (or DEALLOCATE) application (containers). Nothing else can read another
//! resource's metadata. No user authentication: a resource holds no user credentials.
//!
//! A container may ask as soon as it starts, before its allocation is recorded: a
//! request from an address no application has yet waits (up to [`ADDRESS_WAIT`]) for
//! one to be recorded with it, instead of a 404 the caller would have to retry.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use api_types::{Application, Metadata, Phase};
use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use crate::store::Kind;

/// How long a request from an unknown address waits for an allocation to record it:
/// longer than a driver takes from starting a container to answering.
pub const ADDRESS_WAIT: Duration = Duration::from_secs(5);
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;

/// Set on a listener that only one application can reach (a virtual machine's metadata
/// socket): every request on it is that application's.
#[derive(Clone, Copy, Debug)]
pub struct ResourceUid(pub uuid::Uuid);

/// Variables a listener adds to its application's metadata, over the metadata's own
/// keys: what only the driver knows (a virtual machine's proxy address, which a
/// container gets in its environment instead).
#[derive(Clone, Debug, Default)]
pub struct ResourceVars(pub std::sync::Arc<std::collections::BTreeMap<String, String>>);

/// Query of the metadata route.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetaQuery {
    /// `json` (default), `env` (`KEY='value'` lines, sorted) or `yaml`.
    pub format: Option<String>,
}

/// The caller's merged metadata: label metadata, overlaid by the application's,
/// plus `FISH_APPLICATION`, `FISH_APPLICATION_UID`, `FISH_NODE` and `FISH_LABEL`.
#[utoipa::path(
    get, path = "/meta/v1/data", tag = "meta", params(MetaQuery),
    responses((status = 200, body = Object, description = "merged metadata"),
        (status = 400, body = api_types::ErrorBody, description = "an unknown `format`"),
        (status = 404, body = api_types::ErrorBody,
            description = "no running resource has the caller's address or token (a forged token included)")),
    // Optional: without a token the caller is found by its source address.
    security((), ("resource_token" = []))
)]
pub async fn meta_data(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    resource: Option<Extension<ResourceUid>>,
    vars: Option<Extension<ResourceVars>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<MetaQuery>,
) -> ApiResult<Response> {
    let app = match resource {
        Some(Extension(ResourceUid(uid))) => {
            tracing::info!(%uid, "metadata requested through the machine's socket");
            running(&state, uid)?
        }
        None => identify(&state, peer.map(|Extension(ConnectInfo(a))| a.ip()), &headers).await?,
    };
    let mut data = merged_metadata(&state, &app)?;
    if let Some(Extension(ResourceVars(vars))) = vars {
        data.extend(vars.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))));
    }
    render(data, q.format.as_deref().unwrap_or("json"))
}

async fn identify(state: &AppState, peer: Option<IpAddr>, headers: &HeaderMap) -> ApiResult<Application> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    if let Some(token) = bearer {
        let uid =
            // A forged or foreign token learns nothing, not even that it is malformed: 404.
            state.meta_tokens.verify(token).ok_or_else(|| ApiError::NotFound("no running resource has this token".into()))?;
        return running(state, uid);
    }
    let Some(ip) = peer.map(|ip| ip.to_canonical()) else {
        return Err(ApiError::NotFound("the caller's address is unknown".into()));
    };
    // Subscribed before looking, so an allocation recorded in between is seen.
    let mut changes = state.store.subscribe();
    if let Some(app) = by_address(state, ip)? {
        return Ok(app);
    }
    let deadline = tokio::time::Instant::now() + ADDRESS_WAIT;
    loop {
        let change = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            change = tokio::time::timeout_at(deadline, changes.recv()) => change,
        };
        match change {
            Err(_) | Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                if let Some(app) = by_address(state, ip)? {
                    return Ok(app);
                }
            }
            Ok(Ok(e)) if e.kind == Kind::Application => {
                if let Ok(app) = serde_json::from_value::<Application>(e.object().clone())
                    && has_address(&app, ip)
                {
                    return Ok(app);
                }
            }
            Ok(Ok(_)) => {}
        }
    }
    Err(ApiError::NotFound(format!("no allocated resource has the address {ip}")))
}

/// Application `uid` while it holds a resource. A resource may ask while its allocation
/// is still being recorded (ELECTED).
fn running(state: &AppState, uid: uuid::Uuid) -> ApiResult<Application> {
    match state.store.get_application_by_uid(uid)? {
        Some(app) if matches!(app.status.phase, Phase::Elected | Phase::Allocated | Phase::Deallocate) => Ok(app),
        _ => Err(ApiError::NotFound("no running application holds this resource".into())),
    }
}

/// The application holding a resource at `ip`, if any.
fn by_address(state: &AppState, ip: IpAddr) -> ApiResult<Option<Application>> {
    for phase in [Phase::Allocated, Phase::Deallocate] {
        for uid in state.store.uids_in_phase(phase)? {
            let Some(app) = state.store.get_application_by_uid(uid)? else { continue };
            if has_address(&app, ip) {
                return Ok(Some(app));
            }
        }
    }
    Ok(None)
}

fn has_address(app: &Application, ip: IpAddr) -> bool {
    matches!(app.status.phase, Phase::Allocated | Phase::Deallocate)
        && app
            .status
            .resource
            .as_ref()
            .and_then(|r| r.ip_addr.as_deref())
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|a| a.to_canonical() == ip)
}

/// Label metadata, overlaid by the application's, plus the `FISH_*` facts: the same
/// builder as the resource's environment ([`crate::metadata::merged`]).
pub fn merged_metadata(state: &AppState, app: &Application) -> ApiResult<Metadata> {
    let uid = app.metadata.uid.ok_or_else(|| ApiError::Internal("stored application without uid".into()))?;
    let label = state.store.application_label(uid)?;
    let mut data = crate::metadata::merged(label.as_ref(), app, &state.node_name);
    data.extend(state.secrets.current(app));
    Ok(data)
}

fn render(data: Metadata, format: &str) -> ApiResult<Response> {
    let (body, content_type) = match format {
        "json" => (serde_json::to_string(&data).map_err(|e| ApiError::Internal(e.to_string()))?, "application/json"),
        "env" => (crate::metadata::to_env(&data), "text/plain; charset=utf-8"),
        "yaml" => (serde_saphyr::to_string(&data).map_err(|e| ApiError::Internal(e.to_string()))?, "application/yaml"),
        other => return Err(ApiError::BadRequest(format!("unknown format {other:?}: expected json, env or yaml"))),
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}
