//! Wires the store, the drivers, the reconciler and the API into one running node,
//! and takes it down cleanly on SIGTERM or SIGINT.
//!
//! # Shutdown
//! The first signal drains: no new application is elected, running allocations and
//! deallocations finish, allocated resources are left running (the next start adopts
//! them), then the API stops; all within the grace period. A second signal exits at
//! once. With `drainAndDeallocate`, every application of the node is deallocated first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use api_types::{DriverStatus, Node, NodeStatus, ObjectMeta};
use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{self, ApiLimits, AppState};
use crate::config::{Config, ConfigError};
use crate::drivers::{self, CallTimeouts, Driver, Drivers};
use crate::meta_token::MetaTokens;
use crate::reconcile::{Controller, Ctx, NodeIdentity, ReconcileConfig};
use crate::store::{Command, Store, StoreError};

/// How often the node reports itself (heartbeat, drivers, capacity).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Command-line overrides of fish.yml.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub api: Option<SocketAddr>,
    pub node_name: Option<String>,
    pub drain_and_deallocate: bool,
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot prepare data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}")]
    /// See [`RunError::hint`] for what to do about it.
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("driver {name}: {message}")]
    Driver { name: String, message: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("first-start setup failed: {0}")]
    Bootstrap(String),
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
}

impl RunError {
    /// What the person starting fishd can do about this error, when there is
    /// something obvious: a busy port names the flag and the setting that move it.
    pub fn hint(&self) -> Option<String> {
        match self {
            RunError::Listen { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => Some(format!(
                "another process listens on {addr}: choose another address with --api ADDR \
                 (or `api:` in fish.yml; the quickstart reads FISH_API, e.g. FISH_API=127.0.0.1:8002)"
            )),
            _ => None,
        }
    }
}

/// Loads the configuration and applies the overrides.
pub fn configure(o: &Overrides) -> Result<Config, RunError> {
    let mut config = match &o.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if o.data_dir.is_some() {
        config.data_dir = o.data_dir.clone();
    }
    if o.api.is_some() {
        config.api = o.api;
    }
    if o.node_name.is_some() {
        config.node_name = o.node_name.clone();
    }
    if o.drain_and_deallocate {
        config.drain_and_deallocate = true;
    }
    config.validate()?;
    Ok(config)
}

/// Builds the configured driver instances, or the defaults: `process` always,
/// `docker` when an engine answers. Docker instances are also returned typed, for
/// the metadata listeners they need.
pub async fn build_drivers(
    config: &Config,
    data_dir: &Path,
    node: &str,
) -> Result<(Drivers, Vec<Arc<drivers::docker::DockerDriver>>), RunError> {
    let entries: Vec<(String, serde_json::Value)> = match &config.drivers {
        Some(m) => {
            m.iter().map(|(k, v)| (k.clone(), if v.is_null() { serde_json::json!({}) } else { v.clone() })).collect()
        }
        None => {
            let mut v = vec![("process".to_string(), serde_json::json!({}))];
            if drivers::docker::detect(Path::new(drivers::docker::DEFAULT_SOCKET)).await {
                v.push(("docker".to_string(), serde_json::json!({})));
            } else {
                info!("no Docker engine answers; the docker driver is not enabled");
            }
            v
        }
    };
    let mut out = Drivers::new();
    let mut dockers = Vec::new();
    for (name, mut value) in entries {
        // `timeouts` is the reconciler's business (see `driver_timeouts`), not the driver's.
        if let Some(settings) = value.as_object_mut() {
            settings.remove("timeouts");
        }
        let bad = |message: String| RunError::Driver { name: name.clone(), message };
        let driver: Arc<dyn Driver> = match name.split('/').next().unwrap_or("") {
            "test" => Arc::new(
                drivers::test::TestDriver::new(name.clone(), settings(&name, value)?, data_dir)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "process" => Arc::new(
                drivers::process::ProcessDriver::new(name.clone(), settings(&name, value)?, data_dir)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "docker" => {
                let d = Arc::new(
                    drivers::docker::DockerDriver::connect(
                        name.clone(),
                        settings(&name, value)?,
                        node.to_owned(),
                        data_dir,
                    )
                    .await
                    .map_err(|e| bad(e.to_string()))?,
                );
                dockers.push(d.clone());
                d
            }
            other => return Err(bad(format!("unknown driver kind {other:?}"))),
        };
        info!(driver = %name, "driver enabled");
        out.insert(name, driver);
    }
    Ok((out, dockers))
}

/// The deadlines of each configured driver instance's calls (`drivers.<name>.timeouts`),
/// each bounded so a typo cannot mean "forever".
pub fn driver_timeouts(config: &Config) -> Result<BTreeMap<String, CallTimeouts>, RunError> {
    let mut out = BTreeMap::new();
    for (name, value) in config.drivers.iter().flatten() {
        let Some(t) = value.get("timeouts") else { continue };
        let timeouts: CallTimeouts = settings(&format!("{name}.timeouts"), t.clone())?;
        timeouts
            .check()
            .map_err(|m| RunError::Driver { name: name.clone(), message: format!("drivers.{name}.{m}") })?;
        out.insert(name.clone(), timeouts);
    }
    Ok(out)
}

/// A driver's settings from its `drivers.<name>` entry, errors naming the field.
fn settings<T: serde::de::DeserializeOwned>(name: &str, value: serde_json::Value) -> Result<T, RunError> {
    serde_path_to_error::deserialize(value).map_err(|e| RunError::Driver {
        name: name.to_owned(),
        message: format!("drivers.{name}.{}: {}", e.path(), e.inner()),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Containers cannot reach the API on loopback: serve the metadata endpoint on the
/// gateway address of each docker network (plain HTTP on the host-only bridge, where
/// callers are identified by their source address). Bound now where the engine
/// answers; otherwise (engine down at start, network recreated) by the driver through
/// the binder, when a container is first put on that network.
async fn serve_meta_on_docker_networks(
    dockers: &[Arc<drivers::docker::DockerDriver>],
    port: u16,
    state: &AppState,
    stop: CancellationToken,
) {
    let binder = meta_binder(state.clone(), stop);
    for d in dockers {
        d.set_meta_endpoint(port, binder.clone());
        match d.meta_listen_addrs(port).await {
            Ok(addrs) => {
                for addr in addrs {
                    if let Err(e) = binder(addr) {
                        warn!(%addr, error = %e, "cannot listen for containers' metadata requests");
                    }
                }
            }
            Err(e) => {
                info!(driver = %d.name(), error = %e, "metadata endpoint for containers bound once the engine answers")
            }
        }
    }
}

/// Binds the metadata router at an address once (later calls for it are no-ops).
fn meta_binder(state: AppState, stop: CancellationToken) -> drivers::docker::MetaBinder {
    let bound = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    Arc::new(move |addr: SocketAddr| {
        let mut bound = bound.lock().unwrap_or_else(|e| e.into_inner());
        if bound.contains(&addr) {
            return Ok(());
        }
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| e.to_string())?;
        std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(|e| e.to_string())?;
        bound.insert(addr);
        let router = api::meta_router(state.clone());
        let stop = stop.clone();
        info!(%addr, "metadata endpoint for containers");
        tokio::spawn(async move {
            let app = router.into_make_service_with_connect_info::<SocketAddr>();
            let r = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await;
            if let Err(e) = r {
                warn!(%addr, error = %e, "metadata listener failed");
            }
        });
        Ok(())
    })
}

/// How often the gauges of `/metrics` are set from the store; a scrape interval is
/// typically 15-60 s, so this is never the stale part.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the applications-by-phase and node capacity gauges current for /metrics.
async fn gauge_loop(store: Store, metrics: crate::telemetry::PoolMetrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for phase in api_types::Phase::ALL {
            if let Ok(uids) = store.uids_in_phase(phase) {
                metrics.set_applications(phase, uids.len() as i64);
            }
        }
        if let Ok((_, nodes)) = store.list_nodes() {
            metrics.set_nodes(&nodes);
        }
    }
}

fn prepare_data_dir(dir: &Path) -> Result<PathBuf, RunError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| RunError::DataDir { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    dir.canonicalize().map_err(err)
}

/// Runs a node until a signal stops it.
pub async fn run(overrides: Overrides) -> Result<(), RunError> {
    let config = configure(&overrides)?;
    let node_name = config.node_name();
    let data_dir = prepare_data_dir(&config.data_dir())?;
    let store = Store::open_with_history(&data_dir.join("fish.redb"), config.watch_history)?;
    let meta_tokens =
        MetaTokens::load_or_create(&data_dir).map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;

    let listener =
        std::net::TcpListener::bind(config.api()).map_err(|source| RunError::Listen { addr: config.api(), source })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen { addr: config.api(), source })?;
    let tls = crate::tls::load_or_create(&data_dir, &node_name, Some(&addr.ip().to_string()))
        .map_err(|e| RunError::Tls(error_chain(&e)))?;
    crate::bootstrap::bootstrap(&store, &data_dir, &node_name, addr, &tls.ca_cert_path)
        .await
        .map_err(|e| RunError::Bootstrap(error_chain(&e)))?;

    let (drivers, dockers) = build_drivers(&config, &data_dir, &node_name).await?;
    let drivers = Arc::new(drivers);
    let node =
        NodeIdentity { name: node_name.clone(), identifiers: config.identifiers.clone(), capacity: config.capacity() };
    let rc = ReconcileConfig {
        allocation_retry: config.allocation_retry,
        default_lifetime: config.default_lifetime.get(),
        history_retention: config.history_retention.get(),
        resync: config.resync_interval.get(),
        inspect_interval: config.inspect_interval.get(),
        meta_url: format!("https://{addr}/meta/v1/data"),
        meta_ca: data_dir.join("ca.crt").display().to_string(),
        timeouts: driver_timeouts(&config)?,
        ..ReconcileConfig::default()
    };
    let ctx = Ctx::new(store.clone(), drivers.clone(), node, rc, meta_tokens.clone());
    let gate_metrics = crate::gates::GateMetrics::default();
    let gates_config = match &config.gates {
        Some(v) => crate::gates::config::parse(v).map_err(|e| RunError::Config(ConfigError::Invalid(e)))?,
        None => Default::default(),
    };
    let gates = Arc::new(
        crate::gates::Gates::build(&gates_config, &store, &data_dir, &gate_metrics)
            .map_err(|e| RunError::Config(ConfigError::Invalid(e)))?,
    );
    ctx.secrets.register(Arc::new(crate::gates::GateSecrets(gates.clone())));
    // The node record exists before the first election reads its maintenance flag.
    heartbeat(&ctx, &config, addr).await;
    let controller = Controller::start(ctx.clone()).await;
    let beat = CancellationToken::new();
    tokio::spawn(heartbeat_loop(ctx.clone(), config.clone(), addr, beat.clone()));

    let api_stop = CancellationToken::new();
    let limits = ApiLimits {
        rate_limit_per_minute: config.rate_limit,
        header_read_timeout: config.header_read_timeout.get(),
        max_connections: config.max_connections,
        auth_failures_per_minute: config.auth_failure_limit,
        max_watches_per_user: config.max_watches_per_user,
        ..ApiLimits::default()
    };
    let mut state =
        AppState::new(store.clone(), node_name.clone(), drivers.clone(), meta_tokens, limits, api_stop.clone());
    state.metrics = Arc::new(api::Metrics::with_registry(ctx.metrics.clone(), |r| gate_metrics.register(r)));
    state.secrets = ctx.secrets.clone();
    state.gates = gates.clone();
    gates.start(tls.server_config.clone(), beat.clone()).map_err(|e| RunError::Config(ConfigError::Invalid(e)))?;
    let metrics = ctx.metrics.clone();
    serve_meta_on_docker_networks(&dockers, addr.port(), &state, api_stop.clone()).await;
    let mut server = tokio::spawn(api::serve(state, listener, tls.server_config, api_stop.clone()));
    tokio::spawn(gauge_loop(store.clone(), metrics, beat.clone()));
    tokio::spawn(crate::logs::janitor(store.clone(), data_dir.clone(), beat.clone()));
    info!(node = %node_name, api = %addr, data_dir = %data_dir.display(), drivers = ?drivers.keys().collect::<Vec<_>>(), "fishd ready");

    let mut term = signal(SignalKind::terminate()).map_err(RunError::Serve)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Serve)?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
        r = &mut server => {
            error!("API server stopped unexpectedly");
            return match r { Ok(Ok(())) => Ok(()), Ok(Err(e)) => Err(RunError::Serve(e)), Err(e) => Err(RunError::Serve(std::io::Error::other(e))) };
        }
    }
    let grace = config.grace_period.get();
    let drain = async {
        controller.stop_accepting();
        let deadline = tokio::time::Instant::now() + grace;
        if config.drain_and_deallocate {
            info!("deallocating every application of this node before exiting");
            controller.deallocate_all().await;
            while controller.has_active() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !controller.shutdown(left).await {
            warn!("grace period over with reconciles still running; they resume at the next start");
        }
        beat.cancel();
        api_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    };
    tokio::select! {
        _ = drain => info!("drained; exiting"),
        _ = term.recv() => warn!("second signal: exiting now"),
        _ = int.recv() => warn!("second signal: exiting now"),
    }
    report_left_running(&store, &node_name);
    Ok(())
}

/// Says, as fishd's last words, how many resources of this node outlive it: stopping
/// a demo should not leave work running silently.
fn report_left_running(store: &Store, node: &str) {
    let mut left = Vec::new();
    for phase in [api_types::Phase::Elected, api_types::Phase::Allocated, api_types::Phase::Deallocate] {
        for uid in store.uids_in_phase(phase).unwrap_or_default() {
            if let Ok(Some(app)) = store.get_application_by_uid(uid)
                && app.status.node.as_deref() == Some(node)
            {
                left.push(app.metadata.name_str().to_owned());
            }
        }
    }
    if left.is_empty() {
        info!("nothing left running");
    } else {
        warn!(
            applications = ?left,
            "{} resource(s) left running; the next start of this node adopts them \
             (stop with drainAndDeallocate / --drain-and-deallocate to release them instead)",
            left.len()
        );
    }
}

async fn heartbeat_loop(ctx: Arc<Ctx>, config: Config, addr: SocketAddr, stop: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => heartbeat(&ctx, &config, addr).await,
        }
    }
}

/// Writes this node's status: drivers, capacity, what is allocated, last seen.
async fn heartbeat(ctx: &Ctx, config: &Config, addr: SocketAddr) {
    let availability = crate::reconcile::election::probe_drivers(ctx).await;
    let ledger = crate::reconcile::election::current_ledger(ctx).await.unwrap_or_default();
    let node = Node {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: ObjectMeta { name: ctx.node.name.parse().ok(), ..Default::default() },
        status: NodeStatus {
            address: addr.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            identifiers: config.identifiers.clone(),
            location: config.location.clone(),
            drivers: availability
                .into_iter()
                .map(|(name, a)| DriverStatus { name, available: a.is_ok(), reason: a.err().unwrap_or_default() })
                .collect(),
            capacity: ctx.node.capacity,
            allocated: ledger.node.as_capacity(),
            maintenance: false,
            ready: ctx.accepting(),
            last_seen: Some(OffsetDateTime::now_utc()),
        },
    };
    if let Err(e) = ctx.store.execute(Command::PutNode { node: Box::new(node) }).await {
        warn!(error = %e, "could not record the node's status");
    }
}
