//! Gate: how a CI system's demand becomes applications (contract section 12).
//!
//! Gates are configured in fish.yml, not applied: this document is their observed
//! state only, served by `GET /api/v1/gates` and shown by `fishctl get gates`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::meta::{ApiVersion, ObjectMeta, literal_marker};

literal_marker!(
    /// `kind: Gate`.
    GateKind = "Gate"
);

/// A gate document (read-only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Gate {
    #[serde(default)]
    pub api_version: ApiVersion,
    #[serde(default)]
    pub kind: GateKind,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: GateStatus,
}

/// What a gate sees and does.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    /// `github`.
    #[serde(default)]
    pub system: String,
    /// The CI system's API base URL.
    #[serde(default)]
    pub api_url: String,
    /// `org acme`, `repo acme/app` or `enterprise acme-ent`.
    #[serde(default)]
    pub scope: String,
    /// Where webhooks are received (`https://ADDR/PATH`).
    #[serde(default)]
    pub webhook: String,
    #[serde(default)]
    pub routes: Vec<GateRoute>,
    /// Queued jobs without a runner, oldest first, each with the reason.
    #[serde(default)]
    pub waiting: Vec<WaitingJob>,
    /// Runner registrations the gate holds at the CI system.
    #[serde(default)]
    pub registrations: u32,
    /// The CI system's API budget as last reported.
    #[serde(default)]
    pub api: ApiBudget,
    /// The most recent errors, newest last (e.g. a missing permission named from a 403).
    #[serde(default)]
    pub last_errors: Vec<GateError>,
    /// When the gate last finished a pass.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_pass: Option<OffsetDateTime>,
}

/// One route: which jobs it takes, and how many runners it wants and has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GateRoute {
    /// The runner labels of this route (a job matches when its labels are a subset).
    #[serde(rename = "match")]
    pub labels: Vec<String>,
    /// The Aquarium label its applications use.
    pub label: String,
    pub max: u32,
    /// Queued jobs.
    pub demand: u32,
    /// Live applications whose runner has not taken a job.
    pub supply: u32,
    /// Live applications of this route, busy ones included.
    pub live: u32,
}

/// A queued job the gate has not covered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WaitingJob {
    pub id: u64,
    pub repository: String,
    pub labels: Vec<String>,
    /// Seconds since the gate first saw it.
    pub age_seconds: u64,
    pub reason: String,
}

/// Rate-limit figures from the CI system's last answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApiBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Unix seconds when the budget resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<u64>,
    /// Calls this gate made since it started.
    #[serde(default)]
    pub calls: u64,
}

/// One error the gate met.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GateError {
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    pub message: String,
}
