//! `/api/v1/gates`: what each CI gate sees and does (contract section 12). Gates are
//! configured in fish.yml, so this is read-only; the state is the gate's last pass.

use api_types::{Gate, List};
use axum::Json;
use axum::extract::{Path, State};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::auth::AuthUser;

/// List gates: routes with demand and supply, waiting jobs with the reason, API
/// budget, last errors.
#[utoipa::path(
    get, path = "/api/v1/gates", tag = "gates",
    responses((status = 200, body = List<Gate>, description = "a GateList")),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn list_gates(State(state): State<AppState>, _user: AuthUser) -> ApiResult<Json<List<Gate>>> {
    let rev = state.store.revision()?;
    Ok(Json(List::new("Gate", rev, state.gates.list())))
}

/// One gate.
#[utoipa::path(
    get, path = "/api/v1/gates/{name}", tag = "gates",
    params(("name" = String, Path, description = "gate name")),
    responses((status = 200, body = Gate), (status = 404, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn get_gate(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(name): Path<String>,
) -> ApiResult<Json<Gate>> {
    state
        .gates
        .list()
        .into_iter()
        .find(|g| g.metadata.name_str() == name)
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("gate {name:?} not found")))
}
