//! `GET /api/v1/cluster`: who leads, and every member's role and health.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A member's part in the Raft group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    Leader,
    Voter,
    Learner,
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterMember {
    pub name: String,
    pub role: MemberRole,
    /// `HOST:PORT` of its API (its advertise address).
    pub api: String,
    /// Its node status' `ready`: the leader heard it within `nodeTimeout` and it takes
    /// new applications (not draining).
    pub ready: bool,
    /// When it was last recorded seen: its own last report, or the leader's last
    /// change of its readiness (no periodic heartbeat is written).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_seen: Option<OffsetDateTime>,
}

/// The cluster as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The leader's name, if one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    pub term: u64,
    pub commit_index: u64,
    /// The node that answered.
    pub node: String,
    pub members: Vec<ClusterMember>,
}
