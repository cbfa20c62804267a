//! redb table layout. Objects are JSON; every list the API serves has an index.
//!
//! Replicated tables (changed only by applying log entries, copied by snapshots) come
//! first; Raft's log and the `local_*` tables belong to this node alone.

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
/// hex SHA-256 of a cluster join token → `JoinTokenRecord` JSON. Replicated state.
pub const JOIN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("join_tokens");
/// command id → the answer a command got (see `dedup`: postcard, objects by key; or
/// JSON `Applied` as an older fishd wrote it), so a retried command (a forwarded write
/// whose outcome was unknown) is answered again, not applied twice. Replicated; the
/// latest proposals only.
pub const DEDUP: TableDefinition<u128, &[u8]> = TableDefinition::new("dedup");
/// (log index, command id): the pruning order of [`DEDUP`].
pub const DEDUP_BY_INDEX: TableDefinition<(u64, u128), ()> = TableDefinition::new("dedup_by_index");

// Raft's own tables (node-local: never in a snapshot).
/// log index → `Entry`: a `LOG_POSTCARD` byte and postcard (see `raft`), or JSON as
/// an older fishd wrote it.
pub const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `last_purged` → JSON.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// `last_applied`, `last_membership` → JSON; written in the same transaction as the
/// replicated tables they describe.
pub const RAFT_SM: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_sm");
/// Unused since a snapshot is a read transaction of the state (see
/// [`super::raft::SnapshotData`]); what an older fishd stored here is emptied by the
/// next snapshot.
pub const RAFT_SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

// Node-local tables.
/// (revision, n) → Event JSON: the recent changes a watch resumes from. Several
/// objects changed by one log entry share its revision (n orders them).
pub const LOCAL_EVENTS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("local_events");
/// `events_cut`: events at or below it were dropped (a watch from there gets 410);
/// `node_id`: this node's Raft id.
pub const LOCAL_META: TableDefinition<&str, u64> = TableDefinition::new("local_meta");
