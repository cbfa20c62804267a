//! What the cluster looks like from this node: `GET /api/v1/cluster` and the Raft
//! metrics of `/metrics`. Read from openraft's metrics and the local store; no I/O to
//! other nodes.

use std::fmt::Write as _;

use api_types::{ClusterMember, ClusterStatus, MemberRole};
use openraft::ServerState;

use crate::store::{Store, StoreError};

/// The cluster's state as this node knows it.
pub fn cluster_status(store: &Store) -> Result<ClusterStatus, StoreError> {
    let m = store.raft().metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters = super::raft_membership::settled_voters(membership);
    let (_, nodes) = store.list_nodes()?;
    let mut members = Vec::new();
    let mut leader = None;
    for (id, node) in membership.nodes() {
        let role = if Some(*id) == m.current_leader {
            leader = Some(node.name.clone());
            MemberRole::Leader
        } else if voters.contains(id) {
            MemberRole::Voter
        } else {
            MemberRole::Learner
        };
        let record = nodes.iter().find(|n| n.metadata.name_str() == node.name);
        // As recorded: the leader writes whether it hears the node (see `liveness`).
        let last_seen = record.and_then(|n| n.status.last_seen);
        let ready = record.is_some_and(|n| n.status.ready);
        members.push(ClusterMember { name: node.name.clone(), role, api: node.api.clone(), ready, last_seen });
    }
    Ok(ClusterStatus {
        leader,
        term: m.current_term,
        commit_index: m.last_applied.map(|l| l.index).unwrap_or(0),
        node: store.node().name.clone(),
        members,
    })
}

/// The Raft gauges in Prometheus text format (`aquarium_raft_*`), appended to the
/// API's metrics.
pub fn render_metrics(store: &Store) -> String {
    let m = store.raft().metrics().borrow().clone();
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let last_log = m.last_log_index.unwrap_or(0);
    let leader = u8::from(m.state == ServerState::Leader);
    // Entries are applied once committed: what is applied here is known committed.
    let commit = applied;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = write!(
            out,
            "# HELP aquarium_raft_{name} {help}\n# TYPE aquarium_raft_{name} gauge\naquarium_raft_{name} {v}\n"
        );
    };
    gauge("term", "Current Raft term.", m.current_term);
    gauge("leader", "1 if this node is the Raft leader.", u64::from(leader));
    gauge("commit_index", "Highest log index known committed and applied here.", commit);
    gauge("apply_lag", "Log entries stored here but not yet applied.", last_log.saturating_sub(applied));
    out
}
