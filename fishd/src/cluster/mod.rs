//! The cluster: many fishd nodes sharing one replicated store.
//!
//! `raft_net` carries Raft and forwarded writes between nodes; `status` answers what the
//! cluster looks like (leader, members, metrics).

pub mod membership;
pub mod raft_net;
pub mod status;
