//! Membership changes: a joining node becomes a learner, then a voter while the cluster
//! has fewer than `voters` (default 3); removing a voter promotes a learner.
//! [`RaftMembership`] is the join call's and the peer check's view of it.
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

/// The members that vote in every configuration of `m`: all voters once a change is
/// done; during a change (a joint configuration) only those in both the old and the
/// new set. A node being promoted is not yet a voter, and a cluster going from two
/// voters to three still needs both old ones until the change commits.
pub fn settled_voters(m: &openraft::Membership<NodeId, FishNode>) -> BTreeSet<NodeId> {
    let mut configs = m.get_joint_config().iter();
    let first = configs.next().cloned().unwrap_or_default();
    configs.fold(first, |acc, c| acc.intersection(c).copied().collect())
}

/// Whether a membership change is under way (a joint configuration).
pub fn changing(m: &openraft::Membership<NodeId, FishNode>) -> bool {
    m.get_joint_config().len() > 1
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
                    Some(n) => {
                        super::raft_net::call_leader(client, &n, "/cluster/members", CHANGE_TIMEOUT, &change).await
                    }
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

async fn apply_here(store: &Store, change: &MemberChange) -> Result<(), String> {
    let raft = store.raft();
    match change {
        MemberChange::Add { node, .. } => {
            // Not blocking: a joining node starts its Raft only after its join is
            // answered. The leader's promotion task makes it a voter once caught up.
            let id = node_id_for(&node.name);
            let m = store.raft().metrics().borrow().membership_config.clone();
            if m.membership().get_node(&id).is_none() {
                raft.add_learner(id, node.clone(), false).await.map_err(|e| e.to_string())?;
            }
            tracing::info!(node = %node.name, api = %node.api, "member added as a learner");
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

/// How often the leader looks for a learner to promote.
const PROMOTE_EVERY: Duration = Duration::from_secs(1);
/// A learner this close to the leader's log is caught up enough to vote.
const PROMOTE_LAG: u64 = 64;

/// The membership as the Raft log records it: what the peer check, the join call and
/// `get nodes` see on a node that runs the replicated store.
///
/// A node that joined but has not heard from the leader yet has no membership in its
/// log; until it does, it trusts the members it was told of when it joined (`seed`),
/// or the leader's first append would be refused by the peer check.
pub struct RaftMembership {
    store: Store,
    client: reqwest::Client,
    voters: usize,
    cluster_id: String,
    seed: Vec<api_types::JoinMember>,
}

impl RaftMembership {
    /// `client` reaches peers (cluster CA, this node's certificate); `voters` is the
    /// target number of voting members; `seed` the members learnt at join time.
    pub fn new(
        store: Store,
        client: reqwest::Client,
        voters: usize,
        cluster_id: String,
        seed: Vec<api_types::JoinMember>,
    ) -> Self {
        RaftMembership { store, client, voters: voters.max(1), cluster_id, seed }
    }

    fn log_has_members(&self) -> bool {
        self.store.raft().metrics().borrow().membership_config.membership().nodes().next().is_some()
    }

    /// While this node leads: promote caught-up learners until the cluster has its
    /// target number of voters. Joins add learners without waiting for them (the
    /// joining node starts its Raft only after the join answers), so promotion is
    /// done here, once the learner has replicated the log.
    pub async fn promote_learners(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(PROMOTE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let Some(learner) = self.learner_to_promote() else { continue };
            let r =
                self.store.raft().change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([learner])), false).await;
            match r {
                Ok(_) => tracing::info!(node = learner, "learner promoted to voter"),
                Err(e) => tracing::debug!(node = learner, error = %e, "learner promotion: retrying"),
            }
        }
    }

    fn learner_to_promote(&self) -> Option<NodeId> {
        let m = self.store.raft().metrics().borrow().clone();
        if m.current_leader != Some(self.store.node_id()) {
            return None;
        }
        let membership = m.membership_config.membership();
        // One change at a time: openraft refuses another while one is joint.
        if changing(membership) || membership.voter_ids().count() >= self.voters {
            return None;
        }
        let last = m.last_log_index.unwrap_or(0);
        let replication = m.replication.as_ref()?;
        membership
            .learner_ids()
            .filter(|id| {
                replication.get(id).and_then(|matched| matched.as_ref()).is_some_and(|l| l.index + PROMOTE_LAG >= last)
            })
            // Lowest id first: the choice is the same whichever node leads.
            .min()
    }
}

#[async_trait::async_trait]
impl super::membership::Membership for RaftMembership {
    fn is_member(&self, node: &str) -> bool {
        if self.log_has_members() { is_member(&self.store, node) } else { self.seed.iter().any(|m| m.name == node) }
    }

    async fn add_member(&self, node: &str, advertise: &str) -> Result<(), super::membership::MembershipError> {
        let node = FishNode { name: node.to_owned(), api: advertise.to_owned() };
        change(&self.store, &self.client, MemberChange::Add { node, voters: self.voters })
            .await
            .map_err(|e| super::membership::MembershipError(e.trim_start_matches("refused: ").to_owned()))
    }

    async fn remove_member(&self, node: &str) -> Result<(), super::membership::MembershipError> {
        change(&self.store, &self.client, MemberChange::Remove { name: node.to_owned(), voters: self.voters })
            .await
            .map_err(|e| super::membership::MembershipError(e.trim_start_matches("refused: ").to_owned()))
    }

    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    fn members(&self) -> Vec<api_types::JoinMember> {
        members(&self.store).into_iter().map(|(name, api)| api_types::JoinMember { name, api }).collect()
    }

    fn role(&self, node: &str) -> Option<String> {
        let m = self.store.raft().metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let (id, _) = membership.nodes().find(|(_, n)| n.name == node)?;
        let role = if m.current_leader == Some(*id) {
            "leader"
        } else if settled_voters(membership).contains(id) {
            "voter"
        } else {
            "learner"
        };
        Some(role.into())
    }
}
