//! redb table layout. Objects are JSON; every list the API serves has an index.

use redb::TableDefinition;

/// Store-wide counters: `revision`, and `label_max/<name>` (label version numbers are
/// never reused, even after a version is deleted).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (name, version) → Label JSON.
pub const LABELS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("labels");
/// uid → Application JSON. uids are v7, so key order is creation order.
pub const APPS: TableDefinition<u128, &[u8]> = TableDefinition::new("applications");
/// uid → the Label the application resolved at creation (pinned, survives label deletion).
pub const APP_LABELS: TableDefinition<u128, &[u8]> = TableDefinition::new("application_labels");
/// name → uid: application names are unique among stored applications.
pub const APP_NAMES: TableDefinition<&str, u128> = TableDefinition::new("application_names");
/// (phase, uid): the reconciler's and `?phase=` lists.
pub const APP_BY_PHASE: TableDefinition<(u8, u128), ()> = TableDefinition::new("application_by_phase");
/// (label name, uid): `?label=` lists.
pub const APP_BY_LABEL: TableDefinition<(&str, u128), ()> = TableDefinition::new("application_by_label");
/// (owner, uid): what a non-admin user may list.
pub const APP_BY_OWNER: TableDefinition<(&str, u128), ()> = TableDefinition::new("application_by_owner");
/// name → UserRecord JSON.
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// hex SHA-256 of a token → user name.
pub const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// name → Node JSON.
pub const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// revision → Event JSON: the recent changes a watch resumes from.
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// hex SHA-256 of a cluster join token → `JoinTokenRecord` JSON. Replicated state.
pub const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
