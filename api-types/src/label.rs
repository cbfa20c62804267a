//! Label: an immutable, versioned description of a resource.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::Metadata;
use crate::duration::HumanDuration;
use crate::meta::{ApiVersion, ObjectMeta, literal_marker};
use crate::validate::{Validate, Violations};

literal_marker!(
    /// `kind: Label`.
    LabelKind = "Label"
);

/// A label document. Each applied spec that differs from the latest is a new version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Label {
    #[serde(default)]
    pub api_version: ApiVersion,
    #[serde(default)]
    pub kind: LabelKind,
    /// `name` is required.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(required = true, schema_with = crate::meta::named_meta_schema))]
    pub metadata: ObjectMeta,
    pub spec: LabelSpec,
    /// Labels have no observed state; accepted (and ignored) so that `get -o yaml`
    /// output can be applied again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub status: Option<serde_json::Value>,
}

/// What a label describes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSpec {
    /// Tried in order: the first that fits on an elected node is used. At least one.
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub definitions: Vec<Definition>,
    /// Handed to every resource of this label, under the application's own metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Metadata,
    /// A temporary label is removed by the system at this time.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub remove_at: Option<OffsetDateTime>,
}

/// One way to build the resource: a driver instance, images, resources and options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Definition {
    /// Driver instance: `docker`, or `docker/dev` for a second configured instance.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[a-z0-9-]+(/[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
    )]
    pub driver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    pub resources: Resources,
    /// Driver-specific; validated by the driver when the label is created.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl Definition {
    /// The driver kind: the part of `driver` before any `/`.
    pub fn driver_kind(&self) -> &str {
        self.driver.split('/').next().unwrap_or("")
    }
}

/// An image a driver starts the resource from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Where to load the image from when the engine does not have it (http(s) or file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `sha256:<hex>` of what `url` serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
}

/// What one resource takes from a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    /// Cores.
    #[serde(default)]
    pub cpu: u32,
    /// GiB.
    #[serde(default)]
    pub ram: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<String, Disk>,
    #[serde(default)]
    pub network: Network,
    /// What the resource may reach through the node's proxy (section 10):
    /// `host:port`, `*.suffix:port`, `CIDR:port`, with `*` for any port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// The most processes (tasks) the resource may run at once, where the driver can
    /// enforce it (process: cgroup `pids.max`); the driver's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Globs on the node name and its identifiers; every one must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_filter: Vec<String>,
    /// Node slots this resource takes (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cpu_overbook: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ram_overbook: bool,
    /// Defaults to the node's `defaultLifetime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<HumanDuration>,
}

impl Resources {
    /// Slots taken, with the default of one.
    pub fn slots(&self) -> u32 {
        self.slots.unwrap_or(1)
    }
}

/// A disk attached to the resource.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// GiB.
    pub size: u32,
}

/// Network access of a resource.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Network {
    /// No route out (the default): `"isolated"`; `""` is accepted on input for it.
    #[default]
    #[serde(rename = "isolated", alias = "")]
    Isolated,
    /// Outbound access allowed: `"nat"`.
    #[serde(rename = "nat")]
    Nat,
    /// The host's own network, on purpose (`process` only): `"host"`.
    #[serde(rename = "host")]
    Host,
}

impl Network {
    /// The mode as written in a label (`isolated` for `""`, so a human can read it).
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Isolated => "isolated",
            Network::Nat => "nat",
            Network::Host => "host",
        }
    }
}

/// The longest lifetime a label may ask for; longer is almost always a typo (`200d`).
const MAX_LIFETIME_SECS: u64 = 366 * 24 * 3600;

impl Validate for Label {
    fn validate_into(&self, v: &mut Violations) {
        if self.metadata.name.is_none() {
            v.push("metadata.name", "is required");
        }
        let spec = &self.spec;
        if spec.definitions.is_empty() {
            v.push("spec.definitions", "must have at least one definition");
        }
        for (i, def) in spec.definitions.iter().enumerate() {
            let at = format!("spec.definitions[{i}]");
            validate_driver_ref(&def.driver, &format!("{at}.driver"), v);
            let r = &def.resources;
            if r.slots == Some(0) {
                v.push(format!("{at}.resources.slots"), "must be > 0");
            }
            if r.pids == Some(0) {
                v.push(format!("{at}.resources.pids"), "must be > 0");
            }
            if r.network == Network::Host && def.driver_kind() != "process" {
                v.push(format!("{at}.resources.network"), "\"host\" is for the process driver only");
            }
            for (j, rule) in r.allow.iter().enumerate() {
                if let Err(e) = rule.parse::<crate::AllowRule>() {
                    v.push(format!("{at}.resources.allow[{j}]"), e.to_string());
                }
            }
            for (name, disk) in &r.disks {
                if name.parse::<crate::Name>().is_err() {
                    v.push(
                        format!("{at}.resources.disks.{name}"),
                        "disk name may contain only letters, digits, '-', '_' and '.'",
                    );
                }
                if disk.size == 0 {
                    v.push(format!("{at}.resources.disks.{name}.size"), "must be > 0");
                }
            }
            for (j, glob) in r.node_filter.iter().enumerate() {
                if glob.is_empty() {
                    v.push(format!("{at}.resources.nodeFilter[{j}]"), "must not be empty");
                }
            }
            if let Some(l) = r.lifetime {
                if l.get().is_zero() {
                    v.push(format!("{at}.resources.lifetime"), "must be > 0");
                } else if l.get().as_secs() > MAX_LIFETIME_SECS {
                    v.push(format!("{at}.resources.lifetime"), "must be at most 366d");
                }
            }
            for (j, img) in def.images.iter().enumerate() {
                if let Some(sum) = &img.sum
                    && !is_sha256_sum(sum)
                {
                    v.push(format!("{at}.images[{j}].sum"), "must be sha256:<64 hex digits>");
                }
                if img.name.is_none() && img.url.is_none() {
                    v.push(format!("{at}.images[{j}]"), "needs a name or a url");
                }
            }
        }
        for key in spec.metadata.keys() {
            validate_metadata_key(key, &format!("spec.metadata.{key}"), v);
        }
    }
}

/// `sha256:` followed by 64 hex digits.
pub fn is_sha256_sum(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn validate_driver_ref(driver: &str, field: &str, v: &mut Violations) {
    let mut parts = driver.splitn(2, '/');
    let kind = parts.next().unwrap_or("");
    let ok_kind = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_instance = parts.next().is_none_or(|i| i.parse::<crate::Name>().is_ok());
    if !ok_kind || !ok_instance {
        v.push(field, "must be a driver name such as \"docker\" or \"docker/dev\"");
    }
}

/// Metadata keys become environment variables, so they must be valid shell names.
pub(crate) fn validate_metadata_key(key: &str, field: &str, v: &mut Violations) {
    let ok = !key.is_empty()
        && key.len() <= 256
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        v.push(field, "metadata keys must be letters, digits and '_', not starting with a digit");
    }
}
