//! Application: a request for one resource, and the phases it goes through.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::Metadata;
use crate::duration::HumanDuration;
use crate::label::validate_metadata_key;
use crate::meta::{ApiVersion, ObjectMeta, literal_marker};
use crate::name::Name;
use crate::validate::{Validate, Violations};

literal_marker!(
    /// `kind: Application`.
    ApplicationKind = "Application"
);

/// An application document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Application {
    #[serde(default)]
    pub api_version: ApiVersion,
    #[serde(default)]
    pub kind: ApplicationKind,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: ApplicationSpec,
    /// Written only by fishd; whatever a user sends here is ignored.
    #[serde(default)]
    pub status: ApplicationStatus,
}

/// What the user asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSpec {
    /// `name` (the latest version at creation) or `name:version`.
    pub label: LabelRef,
    /// Merged over the label's metadata.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Metadata,
    /// At most the label's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<HumanDuration>,
}

/// A reference to a label: `name` or `name:version`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelRef {
    pub name: Name,
    pub version: Option<u32>,
}

impl FromStr for LabelRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, version) = match s.split_once(':') {
            Some((n, v)) => {
                let v: u32 =
                    v.parse().map_err(|_| format!("invalid label version {v:?}: must be a positive integer"))?;
                if v == 0 {
                    return Err("label version must be >= 1".into());
                }
                (n, Some(v))
            }
            None => (s, None),
        };
        let name = name.parse::<Name>().map_err(|e| format!("invalid label name {name:?}: {e}"))?;
        Ok(LabelRef { name, version })
    }
}

impl fmt::Display for LabelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}:{v}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

impl Serialize for LabelRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LabelRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The phases of the contract's state machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    #[default]
    New,
    Elected,
    Allocated,
    Deallocate,
    Deallocated,
    Error,
}

impl Phase {
    /// Every phase, in lifecycle order.
    pub const ALL: [Phase; 6] =
        [Phase::New, Phase::Elected, Phase::Allocated, Phase::Deallocate, Phase::Deallocated, Phase::Error];

    /// DEALLOCATED and ERROR: nothing more will happen to this application.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Deallocated | Phase::Error)
    }

    /// The upper-case name used in YAML, JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "NEW",
            Phase::Elected => "ELECTED",
            Phase::Allocated => "ALLOCATED",
            Phase::Deallocate => "DEALLOCATE",
            Phase::Deallocated => "DEALLOCATED",
            Phase::Error => "ERROR",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL.into_iter().find(|p| p.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            format!("unknown phase {s:?}: expected one of NEW, ELECTED, ALLOCATED, DEALLOCATE, DEALLOCATED, ERROR")
        })
    }
}

/// What fishd observed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<usize>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceStatus>,
    /// Failed allocation attempts so far, across definitions and nodes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// When the application was asked to deallocate, while it still held a resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deallocate_requested: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The resource a driver allocated for an application.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The driver instance that owns it, e.g. `docker/dev`.
    #[serde(default)]
    pub driver: String,
    /// The driver's own id: a container id, a pid, a simulated resource name.
    pub identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hw_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub expires_at: Option<OffsetDateTime>,
    /// Driver-specific facts worth showing (pid, container name, log path).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// One phase transition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub phase: Phase,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl Validate for Application {
    fn validate_into(&self, v: &mut Violations) {
        if let Some(l) = self.spec.lifetime
            && l.get().is_zero()
        {
            v.push("spec.lifetime", "must be > 0");
        }
        for key in self.spec.metadata.keys() {
            validate_metadata_key(key, &format!("spec.metadata.{key}"), v);
        }
    }
}

crate::meta::string_schema!(
    LabelRef,
    pattern = "^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?(:[0-9]{1,9})?$",
    max_length = crate::name::MAX_NAME_LEN + 10
);
