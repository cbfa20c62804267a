//! The HTTPS REST API of the contract (section 3).
//!
//! Handlers only read the store and submit commands; they never call drivers
//! (driver *validation* of label definitions is pure and allowed).

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::drivers::Drivers;
use crate::meta_token::MetaTokens;
use crate::store::Store;

/// Limits of the API, each with the reason for its default in [`ApiLimits::default`].
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Request bodies above this get 413 (contract: 10 MiB).
    pub max_body_bytes: usize,
    /// Requests per minute per non-admin user; 0 = unlimited (`rateLimit` in fish.yml).
    pub rate_limit_per_minute: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { max_body_bytes: 10 * 1024 * 1024, rate_limit_per_minute: 600 }
    }
}

/// Everything a handler may use; one concrete struct of cheap clones.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// This node's name.
    pub node_name: String,
    /// Configured driver instances, to validate label definitions and find logs.
    pub drivers: Arc<Drivers>,
    pub meta_tokens: MetaTokens,
    pub limits: ApiLimits,
    /// Cancelled when fishd shuts down: open watches end.
    pub shutdown: CancellationToken,
}
