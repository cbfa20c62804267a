//! `GET /meta/v1/data`: a resource asks for its merged metadata.
//!
//! The caller is identified by the listener it came through (a virtual machine's own
//! metadata socket carries a [`ResourceUid`]), by its `Bearer` resource token (processes
//! get `FISH_META_TOKEN`), or by its source address, which must be the `ipAddr` of an
//! ALLOCATED application (containers). Nothing else can read another resource's
//! metadata. No user authentication: a resource holds no user credentials.

use std::net::{IpAddr, SocketAddr};

use api_types::{Application, Metadata, Phase};
use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::ApiQuery;

/// Set on a listener that only one application can reach (a virtual machine's metadata
/// socket): every request on it is that application's.
#[derive(Clone, Copy, Debug)]
pub struct ResourceUid(pub uuid::Uuid);

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
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<MetaQuery>,
) -> ApiResult<Response> {
    let app = match resource {
        Some(Extension(ResourceUid(uid))) => {
            tracing::info!(%uid, "metadata requested through the machine's socket");
            running(&state, uid)?
        }
        None => identify(&state, peer.map(|Extension(ConnectInfo(a))| a.ip()), &headers)?,
    };
    let data = merged_metadata(&state, &app)?;
    render(data, q.format.as_deref().unwrap_or("json"))
}

fn identify(state: &AppState, peer: Option<IpAddr>, headers: &HeaderMap) -> ApiResult<Application> {
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
    for uid in state.store.uids_in_phase(Phase::Allocated)? {
        let Some(app) = state.store.get_application_by_uid(uid)? else { continue };
        let matches = app
            .status
            .resource
            .as_ref()
            .and_then(|r| r.ip_addr.as_deref())
            .and_then(|a| a.parse::<IpAddr>().ok())
            .is_some_and(|a| a.to_canonical() == ip);
        if matches {
            return Ok(app);
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

/// Label metadata, overlaid by the application's, plus the `FISH_*` facts.
pub fn merged_metadata(state: &AppState, app: &Application) -> ApiResult<Metadata> {
    let uid = app.metadata.uid.ok_or_else(|| ApiError::Internal("stored application without uid".into()))?;
    let mut data = Metadata::new();
    let label = state.store.application_label(uid)?;
    if let Some(l) = &label {
        data.extend(l.spec.metadata.clone());
    }
    data.extend(app.spec.metadata.clone());
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    data.insert("FISH_APPLICATION".into(), s(app.metadata.name_str()));
    data.insert("FISH_APPLICATION_UID".into(), s(&uid.to_string()));
    data.insert("FISH_NODE".into(), s(app.status.node.as_deref().unwrap_or(&state.node_name)));
    data.insert("FISH_LABEL".into(), s(app.spec.label.name.as_str()));
    if let Some(v) = app.status.label_version {
        data.insert("FISH_LABEL_VERSION".into(), s(&v.to_string()));
    }
    Ok(data)
}

fn render(data: Metadata, format: &str) -> ApiResult<Response> {
    let (body, content_type) = match format {
        "json" => (serde_json::to_string(&data).map_err(|e| ApiError::Internal(e.to_string()))?, "application/json"),
        "env" => (to_env(&data), "text/plain; charset=utf-8"),
        "yaml" => (serde_saphyr::to_string(&data).map_err(|e| ApiError::Internal(e.to_string()))?, "application/yaml"),
        other => return Err(ApiError::BadRequest(format!("unknown format {other:?}: expected json, env or yaml"))),
    };
    let mut resp = body.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}

/// `KEY='value'` lines, sorted by key, each value quoted for a POSIX shell.
pub fn to_env(data: &Metadata) -> String {
    let mut out = String::new();
    for (k, v) in data {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(k);
        out.push('=');
        out.push_str(&shell_quote(&text));
        out.push('\n');
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_sorted_and_quoted() {
        let mut m = Metadata::new();
        m.insert("B".into(), serde_json::json!("it's"));
        m.insert("A".into(), serde_json::json!(3));
        assert_eq!(to_env(&m), "A='3'\nB='it'\\''s'\n");
    }
}
