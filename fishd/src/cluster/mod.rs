//! The cluster: many fishd nodes, one replicated store (contract section 8).
//!
//! - [`token`]: join tokens, single-use and expiring, carrying the CA fingerprint.
//! - [`membership`]: who the members are, as the peer check and the join call see it.
//! - [`join`]: the joining node's side of the join, and what it keeps in the data dir.

pub mod join;
pub mod membership;
pub mod token;
