//! Who the cluster's members are, as the node-to-node peer check and the join call
//! need to know it.
//!
//! A running node uses [`crate::cluster::raft_membership::RaftMembership`], the Raft
//! log's membership; [`LocalMembership`] is the in-memory stand-in of API unit tests.
//! Both answer [`Membership::is_member`] from memory, since it runs on every
//! node-to-node request.

use std::collections::BTreeMap;
use std::sync::Mutex;

use api_types::JoinMember;

/// Why a node could not be added.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MembershipError(pub String);

/// The cluster's membership. `is_member` gates `/raft/*` and `/cluster/*`.
#[async_trait::async_trait]
pub trait Membership: Send + Sync + 'static {
    /// Whether `node` is a current member (voter or learner).
    fn is_member(&self, node: &str) -> bool;
    /// Adds `node`, reachable at `advertise` (`HOST:PORT`), to the cluster; returns
    /// once the membership change is committed.
    async fn add_member(&self, node: &str, advertise: &str) -> Result<(), MembershipError>;
    /// Removes `node` from the cluster; returns once the change is committed.
    async fn remove_member(&self, node: &str) -> Result<(), MembershipError>;
    /// A stable id of the cluster, the same on every member.
    fn cluster_id(&self) -> String;
    /// Every member with its API address.
    fn members(&self) -> Vec<JoinMember>;
    /// `leader`, `voter` or `learner`; `None` for a non-member.
    fn role(&self, node: &str) -> Option<String>;
}

/// The cluster id derived from the CA fingerprint: stable, the same on every member,
/// and needing no state of its own.
pub fn cluster_id_from_ca(ca_fingerprint: &str) -> String {
    format!("aq-{}", &ca_fingerprint[..ca_fingerprint.len().min(16)])
}

/// A membership without raft: this node, and the nodes that joined through it
/// since it started.
pub struct LocalMembership {
    cluster_id: String,
    /// This node: without raft it leads its own one-node cluster.
    me: String,
    members: Mutex<BTreeMap<String, String>>,
}

impl LocalMembership {
    /// A one-node membership of `node` at `advertise`.
    pub fn new(cluster_id: String, node: &str, advertise: &str) -> Self {
        LocalMembership {
            cluster_id,
            me: node.to_owned(),
            members: Mutex::new(BTreeMap::from([(node.to_owned(), advertise.to_owned())])),
        }
    }
}

#[async_trait::async_trait]
impl Membership for LocalMembership {
    fn is_member(&self, node: &str) -> bool {
        self.members.lock().map(|m| m.contains_key(node)).unwrap_or(false)
    }

    async fn add_member(&self, node: &str, advertise: &str) -> Result<(), MembershipError> {
        let mut m = self.members.lock().map_err(|_| MembershipError("membership lock poisoned".into()))?;
        m.insert(node.to_owned(), advertise.to_owned());
        Ok(())
    }

    async fn remove_member(&self, node: &str) -> Result<(), MembershipError> {
        let mut m = self.members.lock().map_err(|_| MembershipError("membership lock poisoned".into()))?;
        m.remove(node);
        Ok(())
    }

    fn cluster_id(&self) -> String {
        self.cluster_id.clone()
    }

    fn members(&self) -> Vec<JoinMember> {
        self.members
            .lock()
            .map(|m| m.iter().map(|(name, api)| JoinMember { name: name.clone(), api: api.clone() }).collect())
            .unwrap_or_default()
    }

    fn role(&self, node: &str) -> Option<String> {
        if node == self.me { Some("leader".into()) } else { self.is_member(node).then(|| "learner".into()) }
    }
}
