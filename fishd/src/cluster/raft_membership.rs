//! Membership changes: a joining node becomes a learner, then a voter while the cluster
//! has fewer than `voters` (default 3); removing a voter promotes a learner.
//!
//! # Invariants
//! - Only the leader changes membership; any node forwards the request to it over
//!   `/cluster/members` (one hop, like writes).
//! - A node is a learner before it votes: it has caught up with the log (or a
//!   snapshot) first, so a new voter never slows commits by replaying from zero.
//! - Changes are one at a time (openraft refuses concurrent ones); callers retry.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::store::{FishNode, NodeId, Store, node_id_for};

/// Default number of voting members.
pub const DEFAULT_VOTERS: usize = 3;
/// How long a membership change may take (a learner catching up included).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A membership change asked of the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum MemberChange {
    Add { node: FishNode, voters: usize },
    Remove { name: String, voters: usize },
}

fn voters_of(store: &Store) -> (BTreeSet<NodeId>, Vec<NodeId>) {
    let m = store.raft().metrics().borrow().membership_config.clone();
    let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
    let learners: Vec<NodeId> = m.membership().learner_ids().collect();
    (voters, learners)
}

/// Whether `name` is a member (voter or learner) in this node's view.
pub fn is_member(store: &Store, name: &str) -> bool {
    let m = store.raft().metrics().borrow().membership_config.clone();
    m.membership().nodes().any(|(_, n)| n.name == name)
}

/// Every member as (name, api).
pub fn members(store: &Store) -> Vec<(String, String)> {
    let m = store.raft().metrics().borrow().membership_config.clone();
    m.membership().nodes().map(|(_, n)| (n.name.clone(), n.api.clone())).collect()
}

/// Applies `change` on the leader: this node if it leads, else forwarded.
pub async fn change(store: &Store, client: &reqwest::Client, change: MemberChange) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + CHANGE_TIMEOUT;
    loop {
        let leader = store.raft().metrics().borrow().current_leader;
        let r = match leader {
            Some(id) if id == store.node_id() => apply_here(store, &change).await,
            Some(id) => {
                let node = store.raft().metrics().borrow().membership_config.membership().get_node(&id).cloned();
                match node {
                    Some(n) => forward(client, &n, &change).await,
                    None => Err("the leader is not in the membership".into()),
                }
            }
            None => Err("no leader is known".into()),
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline && retryable(&e) => {
                tracing::debug!(error = %e, "membership change: retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn retryable(e: &str) -> bool {
    !e.starts_with("refused:")
}

async fn forward(client: &reqwest::Client, leader: &FishNode, change: &MemberChange) -> Result<(), String> {
    let body = postcard::to_allocvec(change).map_err(|e| e.to_string())?;
    let resp = client
        .post(format!("https://{}/cluster/members", leader.api))
        .timeout(CHANGE_TIMEOUT)
        .header(header::CONTENT_TYPE, "application/x-postcard")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
    postcard::from_bytes::<Result<(), String>>(&bytes).map_err(|e| e.to_string())?
}

async fn apply_here(store: &Store, change: &MemberChange) -> Result<(), String> {
    let raft = store.raft();
    match change {
        MemberChange::Add { node, voters } => {
            let id = node_id_for(&node.name);
            let (current, _) = voters_of(store);
            if !current.contains(&id) {
                raft.add_learner(id, node.clone(), true).await.map_err(|e| e.to_string())?;
            }
            let (current, _) = voters_of(store);
            if current.len() < *voters && !current.contains(&id) {
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tracing::info!(node = %node.name, api = %node.api, "member added");
            Ok(())
        }
        MemberChange::Remove { name, voters } => {
            let id = node_id_for(name);
            let (current, learners) = voters_of(store);
            if current.contains(&id) {
                if current.len() == 1 {
                    return Err(format!("refused: {name} is the only voter; a cluster cannot remove its last voter"));
                }
                // Promote a learner first, so the voter count never dips below target.
                if current.len() <= *voters
                    && let Some(l) = learners.iter().find(|l| **l != id)
                {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*l])), false)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            let m = store.raft().metrics().borrow().membership_config.clone();
            if m.membership().get_node(&id).is_some() {
                raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            tracing::info!(node = %name, "member removed");
            Ok(())
        }
    }
}

/// `POST /cluster/members`: a member forwards a membership change to the leader.
pub async fn members_route(State(store): State<Store>, body: Bytes) -> Response {
    let change: MemberChange = match postcard::from_bytes(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("body is not a membership change: {e}")).into_response(),
    };
    let r: Result<(), String> = if store.raft().metrics().borrow().current_leader == Some(store.node_id()) {
        apply_here(&store, &change).await
    } else {
        Err("this node is not the leader".into())
    };
    match postcard::to_allocvec(&r) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/x-postcard")], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
