//! The HTTPS REST API of the contract (section 3).
//!
//! Handlers only read the store and submit commands; they never call drivers
//! (driver *validation* of label definitions is pure and allowed, and so is asking a
//! driver where a resource's log file is).
//!
//! Layout: one file per resource (`labels`, `applications`, `nodes`, `users`,
//! `apply`), shared watch streaming in `watch`, request plumbing (body limit, query
//! parsing) in `extract`, the route table in `router` and the server in [`serve`].

pub mod applications;
pub mod apply;
pub mod backup;
pub mod cluster;
pub mod error;
pub mod extract;
pub mod gates;
pub mod health;
pub mod labels;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod nodes;
pub mod openapi;
pub mod router;
pub mod stored;
pub mod ui;
pub mod users;
pub mod watch;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::drivers::Drivers;
use crate::meta_token::MetaTokens;
use crate::store::Store;

pub use error::{ApiError, ApiResult};
pub use metrics::Metrics;
pub use router::{meta_router, router};

/// Limits of the API, each with the reason for its default in [`ApiLimits::default`].
#[derive(Clone, Debug)]
pub struct ApiLimits {
    /// Request bodies above this get 413 (contract: 10 MiB).
    pub max_body_bytes: usize,
    /// Requests per minute per non-admin user; 0 = unlimited (`rateLimit` in fish.yml).
    pub rate_limit_per_minute: u32,
    /// Open watches per user; each holds a task and a broadcast receiver.
    pub max_watches_per_user: usize,
    /// How long a client may take for its TLS handshake, then to start a request,
    /// then to send each request's headers (slowloris); `headerReadTimeout` in fish.yml.
    pub header_read_timeout: Duration,
    /// An idle HTTP/2 connection is pinged this often and closed when the ping is not
    /// answered within as long again (`http2KeepAlive`).
    pub http2_keep_alive: Duration,
    /// Open connections at once; more are closed on accept (`maxConnections`).
    pub max_connections: usize,
    /// Failed authentications per minute per source address before that address
    /// gets 429 for anything but a valid token (`authFailureLimit`); 0 = unlimited.
    pub auth_failures_per_minute: u32,
    /// How long in-flight requests get to finish once shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        use crate::defaults;
        ApiLimits {
            max_body_bytes: 10 * 1024 * 1024,
            rate_limit_per_minute: defaults::RATE_LIMIT_PER_MINUTE,
            max_watches_per_user: defaults::MAX_WATCHES_PER_USER,
            header_read_timeout: defaults::HEADER_READ_TIMEOUT,
            http2_keep_alive: defaults::HTTP2_KEEP_ALIVE,
            max_connections: defaults::MAX_CONNECTIONS,
            auth_failures_per_minute: defaults::AUTH_FAILURES_PER_MINUTE,
            // Well inside fishd's 10 s grace period.
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Everything a handler may use. Every extractor and middleware of every request
/// clones it, so it is one `Arc`: cloning the parts themselves (a store handle, names,
/// a cancellation token, a dozen `Arc`s) cost a few percent of an authenticated GET.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    /// This node's name.
    pub node_name: String,
    /// Configured driver instances, to validate label definitions and find logs.
    pub drivers: Arc<Drivers>,
    pub meta_tokens: MetaTokens,
    pub limits: ApiLimits,
    /// Cancelled when fishd shuts down: open watches end.
    pub shutdown: CancellationToken,
    /// Password checks and failed-login limits.
    pub auth: Arc<Auth>,
    /// Per-user request limits and watch counts.
    pub quotas: Arc<limits::Quotas>,
    /// Request metrics and the gauges the runtime sets.
    pub metrics: Arc<Metrics>,
    /// Per-application secrets a resource may read from `/meta/v1/data`.
    pub secrets: crate::metadata::SecretProviders,
    /// The gates' observed state, for `GET /api/v1/gates`.
    pub gates: Arc<crate::gates::Gates>,
    /// Membership, CA and join signing; see [`cluster`].
    pub cluster: Arc<cluster::ClusterCtx>,
    /// Set once the node's reconcilers run: `/readyz` answers 503 "starting" before.
    /// (The API serves from the start: the cluster's leader must reach a starting node.)
    pub started: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    /// A state with fresh authentication bookkeeping and metrics.
    pub fn new(
        store: Store,
        node_name: String,
        drivers: Arc<Drivers>,
        meta_tokens: MetaTokens,
        limits: ApiLimits,
        shutdown: CancellationToken,
    ) -> Self {
        let node_name_for_cluster = node_name.clone();
        AppState(Arc::new(Shared {
            store,
            node_name,
            drivers,
            meta_tokens,
            limits,
            shutdown,
            auth: Arc::new(Auth::default()),
            quotas: Arc::default(),
            metrics: Arc::new(Metrics::new()),
            secrets: Default::default(),
            gates: Default::default(),
            cluster: Arc::new(cluster::ClusterCtx::none(&node_name_for_cluster)),
            started: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }))
    }

    /// This state with the cluster context `cluster` (the runtime's, with a CA).
    pub fn with_cluster(self, cluster: cluster::ClusterCtx) -> Self {
        self.with(|s| s.cluster = Arc::new(cluster))
    }

    /// This state with `change` made to its parts: for assembling it before it is
    /// shared (a part changed later would be copied, not changed for its holders).
    pub fn with(mut self, change: impl FnOnce(&mut Shared)) -> Self {
        change(Arc::make_mut(&mut self.0));
        self
    }
}

/// Serves the API over TLS on `listener` (already bound, maybe to port 0) until
/// `shutdown` is cancelled; then stops accepting, gives in-flight requests
/// `limits.shutdown_grace`, and returns.
pub async fn serve(
    state: AppState,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // tokio panics (debug) on a blocking socket.
    listener.set_nonblocking(true)?;
    let grace = state.limits.shutdown_grace;
    let header_timeout = state.limits.header_read_timeout;
    let keep_alive = state.limits.http2_keep_alive;
    let acceptor = crate::listener::GuardedAcceptor::new(
        axum_server::tls_rustls::RustlsAcceptor::new(RustlsConfig::from_config(tls)),
        state.limits.max_connections,
        header_timeout,
    );
    let app = router(state);
    let handle = axum_server::Handle::new();
    let mut server = axum_server::from_tcp(listener)?.acceptor(acceptor).handle(handle.clone());
    server.http_builder().http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    server
        .http_builder()
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(keep_alive))
        .keep_alive_timeout(keep_alive);
    let stopper = {
        let handle = handle.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!(grace = ?grace, "API shutting down: no new connections");
            handle.graceful_shutdown(Some(grace));
        })
    };
    let result = server.serve(app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    stopper.abort();
    result
}

/// Records one mutation in the audit log (target `audit`). Never pass secrets.
pub fn audit(user: &crate::auth::AuthUser, action: &str, kind: &str, name: &str, outcome: &str) {
    tracing::info!(target: "audit", user = %user.name, action, kind, name, outcome);
}
