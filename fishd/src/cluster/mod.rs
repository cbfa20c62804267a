//! The cluster: many fishd nodes sharing one replicated store.
//!
//! `raft_net` carries Raft and forwarded writes between nodes; `status` answers what the
//! cluster looks like (leader, members, metrics).

pub mod raft_membership;
pub mod raft_net;
pub mod status;

use axum::Router;
use axum::routing::post;

use crate::store::Store;

/// The node-to-node routes: Raft RPCs, forwarded writes and membership changes.
/// Callers must be members (mutual TLS with the cluster CA; see the peer check).
pub fn peer_routes<S>(store: Store) -> Router<S> {
    Router::new()
        .route("/raft/append", post(raft_net::append))
        .route("/raft/vote", post(raft_net::vote))
        .route("/raft/snapshot", post(raft_net::snapshot))
        .route("/cluster/write", post(raft_net::write))
        .route("/cluster/members", post(raft_membership::members_route))
        .with_state(store)
}

#[cfg(test)]
mod tests;
