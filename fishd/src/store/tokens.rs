//! Token digest → user, in memory, so authenticating a token reads no table.
//!
//! # Guarantees
//! - A rotated or deleted token, or a changed user (roles, rate limit), is never served
//!   from the cache once the change is applied on this node, whoever proposed it (the
//!   local API, a forwarded write, or an entry replicated from another leader): the
//!   state machine calls [`TokenCache::invalidate`] after committing any log entry that
//!   changed a user (every such change emits a [`Kind::User`](super::Kind) event) and
//!   after installing a snapshot, before its apply returns (so before the write it
//!   carries is answered).
//! - A lookup that read the tables before an invalidation never fills the cache after
//!   it: a fill carries the generation it started at and is dropped if that moved on.
//!
//! # Assumptions
//! - Users change rarely, so dropping every entry on any user change costs nothing
//!   worth tracking per digest.
//! - Only valid tokens are cached: a flood of wrong tokens reads the table each time
//!   (and is limited per address by `auth`), it cannot grow the cache.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use api_types::User;

/// Entries kept; the cache is emptied when full (users are few: this is a bound, not
/// a working-set size).
const MAX_ENTRIES: usize = 10_000;

/// The cache; one per store, shared with its state machine.
#[derive(Debug, Default)]
pub struct TokenCache {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Moves on at every invalidation.
    generation: u64,
    /// Hex SHA-256 of a token → its user.
    users: HashMap<String, Arc<User>>,
}

impl TokenCache {
    /// The cached user of `digest`, or the current generation to fill it with.
    pub fn get(&self, digest: &str) -> Result<Arc<User>, u64> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.users.get(digest).cloned().ok_or(inner.generation)
    }

    /// Remembers `user` for `digest`, read from the tables after [`TokenCache::get`]
    /// returned `generation`; ignored if an invalidation came in between.
    pub fn fill(&self, generation: u64, digest: &str, user: Arc<User>) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != generation {
            return;
        }
        if inner.users.len() >= MAX_ENTRIES {
            inner.users.clear();
        }
        inner.users.insert(digest.to_owned(), user);
    }

    /// Forgets every entry (a user or token changed).
    pub fn invalidate(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.generation += 1;
        inner.users.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Arc<User> {
        Arc::new(User {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: Default::default(),
            spec: Default::default(),
            status: Default::default(),
        })
    }

    #[test]
    fn a_fill_that_started_before_an_invalidation_is_dropped() {
        let c = TokenCache::default();
        let Err(generation) = c.get("d") else { panic!("empty cache hit") };
        c.invalidate();
        c.fill(generation, "d", user());
        assert!(c.get("d").is_err(), "a stale read must not be cached");
        let Err(generation) = c.get("d") else { panic!("empty cache hit") };
        c.fill(generation, "d", user());
        assert!(c.get("d").is_ok());
        c.invalidate();
        assert!(c.get("d").is_err());
    }
}
