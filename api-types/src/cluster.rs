//! Cluster wire types: join tokens, and the join call between a new node and a member.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::duration::HumanDuration;

/// `POST /api/v1/cluster/join-tokens` body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// How long the token may be used (default 1h, at most 7d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "1h"))]
    pub ttl: Option<HumanDuration>,
}

/// A new join token: shown once, usable once, until `expires_at`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JoinToken {
    /// `aqjoin1.<CA SHA-256 fingerprint, hex>.<secret, hex>`.
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
}

/// `POST /cluster/join` body, sent by a node that wants to join.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// The joining node's name; its certificate's common name.
    pub node: String,
    /// `HOST:PORT` where the other members reach the new node.
    pub advertise: String,
    /// PEM certificate signing request made with the new node's own key.
    pub csr: String,
}

/// One member of the cluster, as the join answer lists them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JoinMember {
    pub name: String,
    /// `HOST:PORT` of its API (its advertise address).
    pub api: String,
}

/// The answer to a join: what the new node needs to be a member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    pub cluster_id: String,
    /// PEM: the new node's certificate, signed by the cluster CA.
    pub certificate: String,
    /// PEM: the cluster CA's certificate.
    pub ca_cert: String,
    /// PEM: the cluster CA's key, so every member can sign joins (see README, cluster).
    pub ca_key: String,
    pub members: Vec<JoinMember>,
}
