//! Node: one fishd instance, as the pool sees it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::meta::{ApiVersion, ObjectMeta, literal_marker};

literal_marker!(
    /// `kind: Node`.
    NodeKind = "Node"
);

/// A node document. Nodes are written by fishd only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Node {
    #[serde(default)]
    pub api_version: ApiVersion,
    #[serde(default)]
    pub kind: NodeKind,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: NodeStatus,
}

/// What a node reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub identifiers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub location: String,
    #[serde(default)]
    pub drivers: Vec<DriverStatus>,
    #[serde(default)]
    pub capacity: NodeCapacity,
    #[serde(default)]
    pub allocated: NodeCapacity,
    #[serde(default)]
    pub maintenance: bool,
    #[serde(default)]
    pub ready: bool,
    /// Its part in the cluster (`leader`, `voter`, `learner`), filled in by the node
    /// that answers from its current membership; not stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_seen: Option<OffsetDateTime>,
}

/// A driver instance on a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DriverStatus {
    pub name: String,
    pub available: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What the driver says about itself (the qemu driver: `accel: kvm` or `accel: tcg (...)`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub info: String,
}

/// Cpu (cores), ram (GiB), slots and application count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NodeCapacity {
    pub cpu: u32,
    pub ram: u32,
    pub slots: u32,
    #[serde(default)]
    pub applications: u32,
}
