//! `/api/v1/nodes`: list, watch, get, maintenance mode, and removal from the cluster.
//!
//! `status.allocated` of a listed or fetched node is computed from the store's
//! applications when serving, so it never lags a phase change; watches carry the
//! node's own heartbeat record.

use std::collections::BTreeMap;
use std::sync::Arc;

use api_types::{List, Node, NodeCapacity, Phase};
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::extract::{ApiQuery, parse_body, read_body};
use super::watch::{added_lines, parse_resource_version, watch_response};
use super::{AppState, audit};
use crate::auth::AuthUser;
use crate::store::{Command, Kind, Response as StoreResponse};

/// Query of `GET /api/v1/nodes` (and of the users list).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Stream changes as newline-delimited JSON instead of answering a list.
    pub watch: Option<bool>,
    /// With `watch`: every change after this revision instead of the current objects.
    #[param(value_type = Option<u64>)]
    pub resource_version: Option<String>,
}

/// Body of `POST /api/v1/nodes/{name}/maintenance`.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// In maintenance a node takes no new applications and keeps the ones it runs.
    pub enabled: bool,
}

/// List nodes, or watch them.
#[utoipa::path(
    get, path = "/api/v1/nodes", tag = "nodes", params(WatchQuery),
    responses((status = 200, body = List<Node>, description = "a NodeList, or with watch=true a stream of WatchEvent lines")),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn list_nodes(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> ApiResult<Response> {
    // Checked even without `watch`: a malformed query is a 400, not silently ignored.
    let rv = parse_resource_version(q.resource_version.as_deref())?;
    if q.watch.unwrap_or(false) {
        let store = state.store.clone();
        return watch_response(&state, &user, Kind::Node, rv, Arc::new(|_| true), move || {
            let (rev, items) = store.list_nodes()?;
            Ok((rev, added_lines(&items)?))
        });
    }
    let (rev, mut items) = state.store.list_nodes()?;
    let usage = allocated_by_node(&state)?;
    for n in &mut items {
        n.status.allocated = usage.get(n.metadata.name_str()).copied().unwrap_or_default();
        with_role(&state, n);
    }
    Ok(Json(List::new("Node", rev, items)).into_response())
}

/// Fills in `status.role` from the current membership.
fn with_role(state: &AppState, node: &mut Node) {
    node.status.role = state.cluster.membership.role(node.metadata.name_str());
}

/// What each node holds now, from the store's applications (ELECTED, ALLOCATED and
/// DEALLOCATE ones reserve their definition's resources, as the election counts them),
/// so `get nodes` is current the moment a phase changes rather than at the next heartbeat.
fn allocated_by_node(state: &AppState) -> ApiResult<BTreeMap<String, NodeCapacity>> {
    let mut usage: BTreeMap<String, NodeCapacity> = BTreeMap::new();
    for phase in [Phase::Elected, Phase::Allocated, Phase::Deallocate] {
        for uid in state.store.uids_in_phase(phase)? {
            let Some(app) = state.store.get_application_by_uid(uid)? else { continue };
            let (Some(node), Some(i)) = (app.status.node, app.status.definition) else { continue };
            let Some(label) = state.store.application_label(uid)? else { continue };
            let Some(def) = label.spec.definitions.get(i) else { continue };
            let u = usage.entry(node).or_default();
            u.cpu = u.cpu.saturating_add(def.resources.cpu);
            u.ram = u.ram.saturating_add(def.resources.ram);
            u.slots = u.slots.saturating_add(def.resources.slots());
            u.applications += 1;
        }
    }
    Ok(usage)
}

fn find(state: &AppState, name_or_uid: &str) -> ApiResult<Node> {
    let mut node = match state.store.get_node(name_or_uid)? {
        Some(n) => n,
        None => {
            let uid = name_or_uid.parse::<uuid::Uuid>().ok();
            let (_, all) = state.store.list_nodes()?;
            all.into_iter()
                .find(|n| uid.is_some() && n.metadata.uid == uid)
                .ok_or_else(|| ApiError::NotFound(format!("node {name_or_uid:?} not found")))?
        }
    };
    node.status.allocated = allocated_by_node(state)?.remove(node.metadata.name_str()).unwrap_or_default();
    with_role(state, &mut node);
    Ok(node)
}

/// One node.
#[utoipa::path(
    get, path = "/api/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path, description = "node name or uid")),
    responses((status = 200, body = Node), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_node(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Json<Node>> {
    Ok(Json(find(&state, &name)?))
}

/// Turn maintenance on or off (admin).
#[utoipa::path(
    post, path = "/api/v1/nodes/{name}/maintenance", tag = "nodes",
    params(("name" = String, Path, description = "node name or uid")),
    request_body = MaintenanceRequest,
    responses((status = 200, body = Node), (status = 403, body = api_types::ErrorBody),
        (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn set_maintenance(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Node>> {
    user.require_admin("change maintenance mode")?;
    let bytes = read_body(&headers, body, state.limits.max_body_bytes).await?;
    let req: MaintenanceRequest = parse_body(&headers, &bytes, "maintenance request")?;
    let node = find(&state, &name)?;
    let node_name = node.metadata.name_str().to_owned();
    let outcome =
        state.store.execute(Command::SetMaintenance { node: node_name.clone(), enabled: req.enabled }).await?;
    let action = if req.enabled { "maintenance-on" } else { "maintenance-off" };
    audit(&user, action, "Node", &node_name, if outcome.is_ok() { "done" } else { "rejected" });
    match outcome? {
        StoreResponse::Node(n) => Ok(Json(*n)),
        _ => find(&state, &node_name).map(Json),
    }
}

/// Remove a node from the cluster (admin): it leaves the Raft membership (a learner
/// takes a removed voter's place) and its record is deleted. Refused with 409 while
/// it holds applications, and for the cluster's last voter.
#[utoipa::path(
    delete, path = "/api/v1/nodes/{name}", tag = "nodes",
    params(("name" = String, Path, description = "node name")),
    responses((status = 204, description = "removed"), (status = 403, body = api_types::ErrorBody),
        (status = 404, body = api_types::ErrorBody), (status = 409, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn delete_node(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    user.require_admin("remove nodes")?;
    let member = state.cluster.membership.is_member(&name);
    if !member && state.store.get_node(&name)?.is_none() {
        return Err(ApiError::NotFound(format!("node {name:?} not found")));
    }
    // Checked before the membership changes (and again, linearizably, by the command):
    // a node holding applications stays a member, so nothing it runs is orphaned.
    let held = allocated_by_node(&state)?.remove(&name).map(|u| u.applications).unwrap_or(0);
    if held > 0 {
        audit(&user, "delete", "Node", &name, "rejected");
        return Err(ApiError::Conflict(format!(
            "node {name:?} still holds {held} application(s); deallocate them (or drain the node) first"
        )));
    }
    if member {
        state.cluster.membership.remove_member(&name).await.map_err(|e| ApiError::Conflict(e.to_string()))?;
    }
    let outcome = state.store.execute(Command::DeleteNode { node: name.clone() }).await?;
    audit(&user, "delete", "Node", &name, if outcome.is_ok() { "deleted" } else { "rejected" });
    outcome?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// The cluster as this node sees it: leader, term, commit index, members.
#[utoipa::path(
    get, path = "/api/v1/cluster", tag = "nodes",
    responses((status = 200, body = api_types::ClusterStatus)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_cluster(State(state): State<AppState>, _user: AuthUser) -> ApiResult<Json<api_types::ClusterStatus>> {
    Ok(Json(crate::cluster::status::cluster_status(&state.store)?))
}
