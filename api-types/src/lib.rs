//! Serde types of every Aquarium object, shared by `fishd` and `fishctl`.
//!
//! This crate is data and parsing only: it knows no runtime, HTTP stack or storage.
//! Names, durations and phases are types that check themselves while deserializing,
//! manifests reject unknown keys, and [`validate`] returns every problem of an object
//! at once, each with the field path a user can find in their YAML.

pub mod allow;
pub mod application;
pub mod cluster;
pub mod cluster_status;
pub mod duration;
pub mod gate;
pub mod label;
pub mod manifest;
pub mod meta;
pub mod name;
pub mod node;
pub mod user;
pub mod validate;
pub mod wire;

pub use allow::{AllowRule, AllowRuleError};
pub use application::{Application, ApplicationSpec, ApplicationStatus, HistoryEntry, LabelRef, Phase, ResourceStatus};
pub use cluster::{JoinMember, JoinRequest, JoinResponse, JoinToken, JoinTokenRequest};
pub use cluster_status::{ClusterMember, ClusterStatus, MemberRole};
pub use duration::HumanDuration;
pub use gate::{ApiBudget, Gate, GateError, GateRoute, GateStatus, WaitingJob};
pub use label::{Definition, Disk, Image, Label, LabelSpec, Network, Resources};
pub use manifest::{Format, Manifest, ManifestError, parse_manifests};
pub use meta::{API_VERSION, ObjectMeta};
pub use name::{Name, NameError};
pub use node::{DriverStatus, Node, NodeCapacity, NodeStatus};
pub use user::{Role, User, UserSpec, UserStatus};
pub use validate::{FieldError, Validate};
pub use wire::{
    ApplyAction, ApplyResponse, ApplyResult, ErrorBody, ErrorReason, List, ListMeta, WatchEvent, WatchEventType,
};

/// Free-form metadata handed to resources: string keys, JSON values.
pub type Metadata = std::collections::BTreeMap<String, serde_json::Value>;
