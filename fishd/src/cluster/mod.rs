//! The cluster: many fishd nodes, one replicated store (contract section 8).
//!
//! - [`token`]: join tokens, single-use and expiring, carrying the CA fingerprint.
//! - [`membership`]: who the members are, as the peer check and the join call see it.
//! - [`join`]: the joining node's side of the join, and what it keeps in the data dir.
//! - [`raft_net`] carries Raft and forwarded writes between nodes, most of it as
//!   frames on one stream per peer ([`peer_stream`]); [`raft_membership`]
//!   changes the Raft membership; [`status`] answers what the cluster looks like.
//! - [`liveness`]: which nodes are alive, from Raft's own traffic; the leader records
//!   changes only.

pub mod join;
pub mod liveness;
pub mod membership;
pub mod peer_stream;
pub mod raft_membership;
pub mod raft_net;
pub mod status;
pub mod token;

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
        .route(peer_stream::STREAM_PATH, post(peer_stream::serve))
        .route("/cluster/write", post(raft_net::write))
        .route("/cluster/write-batch", post(raft_net::write_batch))
        .route("/cluster/members", post(raft_membership::members_route))
        .with_state(store)
}

#[cfg(test)]
mod tests;
