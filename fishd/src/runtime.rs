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
use crate::errors::error_chain;
use crate::meta_token::MetaTokens;
use crate::proxy::{Proxy, ProxyMetrics, StoreDirectory};
use crate::reconcile::{Controller, Ctx, NodeIdentity, ReconcileConfig};
use crate::store::{Command, FishNode, Store, StoreError, StoreOptions};

/// How often the node looks at what it reports of itself (drivers, capacity, what it
/// holds, whether it takes work); it writes only what changed. Whether it is alive is
/// the leader's to say, from Raft's traffic (`cluster::liveness`).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How recently a node must have answered this node's Raft calls to count as heard.
const HEARD_WITHIN: Duration = Duration::from_secs(1);

/// Command-line overrides of fish.yml.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub api: Option<SocketAddr>,
    pub node_name: Option<String>,
    pub drain_and_deallocate: bool,
    /// `--join HOST:PORT`: a member to join through (first start only).
    pub join: Option<String>,
    /// `--join-token`.
    pub join_token: Option<String>,
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
    /// One line naming the problem (a bad, used, expired or forged token, ...).
    #[error(transparent)]
    Join(#[from] crate::cluster::join::JoinError),
    #[error("first-start setup failed: {0}")]
    Bootstrap(String),
    #[error("API server failed")]
    Serve(#[source] std::io::Error),
    #[error("proxy: {0}")]
    Proxy(String),
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
    if o.join.is_some() {
        config.cluster.join = o.join.clone();
    }
    if o.join_token.is_some() {
        config.cluster.join_token = o.join_token.clone();
    }
    config.validate()?;
    Ok(config)
}

/// Docker instances, typed, for the metadata listeners they need.
type Dockers = Vec<Arc<drivers::docker::DockerDriver>>;
/// Qemu instances, typed, for the metadata sockets they need.
type Qemus = Vec<Arc<drivers::qemu::QemuDriver>>;

/// Builds the configured driver instances, or the defaults: `process` always,
/// `docker` when an engine answers. Docker and qemu instances are also returned typed,
/// for the metadata listeners they need.
pub async fn build_drivers(
    config: &Config,
    data_dir: &Path,
    node: &str,
) -> Result<(Drivers, Dockers, Qemus), RunError> {
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
    let mut qemus = Vec::new();
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
            "qemu" => {
                let q = Arc::new(
                    drivers::qemu::QemuDriver::new(name.clone(), settings(&name, value)?, data_dir)
                        .map_err(|e| bad(e.to_string()))?,
                );
                qemus.push(q.clone());
                q
            }
            other => return Err(bad(format!("unknown driver kind {other:?}"))),
        };
        info!(driver = %name, "driver enabled");
        out.insert(name, driver);
    }
    Ok((out, dockers, qemus))
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

/// Refuses a `timeouts.deallocate` shorter than what a driver may need to stop its
/// resource gracefully and then kill it ([`Driver::deallocate_time`]): the deadline
/// would end every slow stop before the kill, and the retry would start over.
pub fn check_deallocate_time(drivers: &Drivers, timeouts: &BTreeMap<String, CallTimeouts>) -> Result<(), RunError> {
    for (name, driver) in drivers {
        let needed = driver.deallocate_time();
        let limit = timeouts.get(name).copied().unwrap_or_default().deallocate;
        if limit.get() < needed {
            return Err(RunError::Driver {
                name: name.clone(),
                message: format!(
                    "drivers.{name}.timeouts.deallocate: {limit} is shorter than a deallocation may take \
                     ({}: its gracePeriod, then the kill); raise it or shorten gracePeriod",
                    api_types::HumanDuration(needed)
                ),
            });
        }
    }
    Ok(())
}

/// A driver's settings from its `drivers.<name>` entry, errors naming the field.
fn settings<T: serde::de::DeserializeOwned>(name: &str, value: serde_json::Value) -> Result<T, RunError> {
    serde_path_to_error::deserialize(value).map_err(|e| RunError::Driver {
        name: name.to_owned(),
        message: format!("drivers.{name}.{}: {}", e.path(), e.inner()),
    })
}

/// Containers cannot reach the API on loopback: serve the metadata endpoint on the
/// gateway address of each docker network (plain HTTP on the host-only bridge, where
/// callers are identified by their source address). Bound now where the engine
/// answers; otherwise (engine down at start, network recreated) by the driver through
/// the binder, when a container is first put on that network.
async fn serve_meta_on_docker_networks(
    dockers: &[Arc<drivers::docker::DockerDriver>],
    port: u16,
    binder: &drivers::docker::MetaBinder,
) {
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

/// Virtual machines reach the metadata endpoint through a unix socket of their own
/// (see `drivers::qemu`): every request on it is that application's.
fn serve_meta_to_machines(qemus: &[Arc<drivers::qemu::QemuDriver>], state: &AppState, stop: &CancellationToken) {
    for q in qemus {
        let state = state.clone();
        let node_stop = stop.clone();
        q.set_meta_server(Arc::new(move |listener, uid, vars, machine_stop| {
            let router = api::meta_router(state.clone())
                .layer(axum::Extension(api::meta::ResourceUid(uid)))
                .layer(axum::Extension(api::meta::ResourceVars(Arc::new(vars))));
            let (node_stop, machine_stop) = (node_stop.clone(), machine_stop.clone());
            tokio::spawn(async move {
                let done = async move {
                    tokio::select! {
                        _ = node_stop.cancelled() => {}
                        _ = machine_stop.cancelled() => {}
                    }
                };
                if let Err(e) = axum::serve(listener, router).with_graceful_shutdown(done).await {
                    warn!(%uid, error = %e, "metadata socket of a machine failed");
                }
            });
        }));
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
        info!(%addr, "metadata endpoint for resources");
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

/// Where isolated processes reach the node: the process gateway, with the metadata
/// endpoint and the proxy bound on it. `None` (with the reason logged) where fishd
/// cannot make network namespaces, or runs no process driver.
async fn serve_process_gateway(
    drivers: &Drivers,
    meta_port: u16,
    proxy: &Proxy,
    proxy_port: Option<u16>,
    binder: &drivers::docker::MetaBinder,
) -> Option<std::net::IpAddr> {
    if !drivers.keys().any(|n| n.split('/').next() == Some("process")) {
        return None;
    }
    let gateway = match tokio::task::spawn_blocking(drivers::process::netns::ensure_gateway).await {
        Ok(Ok(gw)) => std::net::IpAddr::V4(gw),
        Ok(Err(reason)) => {
            info!(%reason, "isolated processes cannot run on this node");
            return None;
        }
        Err(e) => {
            warn!(error = %e, "process gateway setup panicked");
            return None;
        }
    };
    let meta = SocketAddr::new(gateway, meta_port);
    if let Err(e) = binder(meta) {
        warn!(addr = %meta, error = %e, "isolated processes will not reach the metadata endpoint");
    }
    if let Some(port) = proxy_port
        && let Err(e) = proxy.listen(SocketAddr::new(gateway, port)).await
    {
        warn!(error = %error_chain(&e), "isolated processes will not reach the proxy");
    }
    Some(gateway)
}

/// Starts the proxy's shared listeners: `auto` binds 127.0.0.1 on the port of the last
/// start (kept in the data dir, so adopted resources keep their proxy address; a free
/// port the first time) and the same port on every docker network's gateway, which it
/// tells the docker drivers so containers get it in their environment and their
/// network's firewall chain lets it through.
async fn start_proxy(
    proxy: &Proxy,
    listen: Option<Option<SocketAddr>>,
    dockers: &[Arc<drivers::docker::DockerDriver>],
    data_dir: &Path,
) -> Result<Option<SocketAddr>, RunError> {
    let bound = match listen {
        Some(None) => {
            info!("proxy off (proxy.listen: off): isolated resources reach only their metadata");
            return Ok(None);
        }
        Some(Some(addr)) => {
            return proxy.listen(addr).await.map(Some).map_err(|e| RunError::Proxy(error_chain(&e)));
        }
        None => {
            crate::proxy::port::bind_remembered(data_dir, |port| proxy.listen(SocketAddr::from(([127, 0, 0, 1], port))))
                .await
                .map_err(|e| RunError::Proxy(error_chain(&e)))?
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for d in dockers {
        let addrs = match d.proxy_listen_addrs(bound.port()).await {
            Ok(a) => a,
            Err(e) => {
                warn!(driver = %d.name(), error = %e, "containers will not reach the proxy");
                continue;
            }
        };
        for addr in addrs {
            if seen.insert(addr)
                && let Err(e) = proxy.listen(addr).await
            {
                warn!(%addr, error = %error_chain(&e), "containers of this network will not reach the proxy");
            }
        }
    }
    Ok(Some(bound))
}

/// Checks and repairs the drivers' firewall rules (docker networks, isolated processes'
/// veths) at start and every `every`, deleting those of networks and veths removed since.
async fn firewall_loop(drivers: Vec<Arc<dyn Driver>>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for d in &drivers {
            if let Err(e) = d.enforce().await {
                warn!(driver = %d.name(), error = %e, "firewall rules not checked");
            }
        }
    }
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
        // Counters the store keeps per phase: no scan of 100,000 finished applications.
        for phase in api_types::Phase::ALL {
            if let Ok(n) = store.count_in_phase(phase) {
                metrics.set_applications(phase, i64::try_from(n).unwrap_or(i64::MAX));
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

/// Opens the node's store: its Raft reaches peers through `client` (mutual TLS,
/// trusting only the cluster CA).
async fn open_store(
    config: &Config,
    data_dir: &Path,
    node: FishNode,
    client: &reqwest::Client,
    bootstrap: bool,
    acks: &crate::cluster::liveness::PeerAcks,
) -> Result<Store, RunError> {
    // One stream per peer, shared by Raft and the forwarder.
    let links = crate::cluster::peer_stream::PeerLinks::new(client.clone());
    let options = StoreOptions {
        event_history: config.watch_history,
        node,
        bootstrap,
        network: Some(Arc::new(crate::cluster::raft_net::PeerNetwork::new(links.clone()).with_acks(acks.clone()))),
        forward: Some(Arc::new(crate::cluster::raft_net::PeerForward::new(links))),
    };
    Ok(Store::open_with(&data_dir.join("fish.redb"), options).await?)
}

/// Runs a node until a signal stops it.
pub async fn run(overrides: Overrides) -> Result<(), RunError> {
    let config = configure(&overrides)?;
    let node_name = config.node_name();
    let data_dir = prepare_data_dir(&config.data_dir())?;
    let listener =
        std::net::TcpListener::bind(config.api()).map_err(|source| RunError::Listen { addr: config.api(), source })?;
    let addr = listener.local_addr().map_err(|source| RunError::Listen { addr: config.api(), source })?;
    let advertise = config.cluster.advertise.clone().unwrap_or_else(|| addr.to_string());
    let mut names = crate::tls::wanted_names(&node_name, Some(&addr.ip().to_string()));
    if let Some((host, _)) = advertise.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !names.iter().any(|n| n == host) && !host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            names.push(host.to_owned());
        }
    }
    let joined = match crate::cluster::join::Joined::load(&data_dir)? {
        Some(j) => {
            if config.cluster.join.is_some() {
                info!(cluster = %j.cluster_id, "already a member: the join settings are not needed any more");
            }
            Some(j)
        }
        None => match (&config.cluster.join, &config.cluster.join_token) {
            (Some(via), Some(token)) => {
                Some(crate::cluster::join::join(&data_dir, via, token, &node_name, &advertise, names.clone()).await?)
            }
            _ => None,
        },
    };
    let meta_tokens =
        MetaTokens::load_or_create(&data_dir).map_err(|source| RunError::DataDir { path: data_dir.clone(), source })?;
    let tls =
        crate::tls::load_or_create_for(&data_dir, &node_name, names).map_err(|e| RunError::Tls(error_chain(&e)))?;
    // A joined node waits for the cluster's leader to replicate to it; only a node
    // that joined nobody forms its own one-member cluster.
    let peer_tls = crate::tls::peer_client_config(&data_dir).map_err(|e| RunError::Tls(error_chain(&e)))?;
    let peer_client = crate::cluster::raft_net::peer_client(peer_tls).map_err(RunError::Tls)?;
    let me = FishNode { name: node_name.clone(), api: advertise.clone() };
    let acks = crate::cluster::liveness::PeerAcks::default();
    let store = open_store(&config, &data_dir, me, &peer_client, joined.is_none(), &acks).await?;
    // A joined node gets its users from the cluster: a local admin would be a second,
    // different one.
    if joined.is_none() {
        crate::bootstrap::bootstrap(&store, &data_dir, &node_name, addr, &tls.ca_cert_path)
            .await
            .map_err(|e| RunError::Bootstrap(error_chain(&e)))?;
    }

    let proxy_metrics = ProxyMetrics::default();
    let proxy = Proxy::new(
        Arc::new(StoreDirectory::new(store.clone(), meta_tokens.clone())),
        config.proxy.rules()?,
        config.proxy.limits(),
        proxy_metrics.clone(),
        CancellationToken::new(),
    );
    let (drivers, dockers, qemus) = build_drivers(&config, &data_dir, &node_name).await?;
    let drivers = Arc::new(drivers);
    let node = NodeIdentity { name: node_name.clone(), identifiers: identifiers(&config), capacity: config.capacity() };
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
    check_deallocate_time(&drivers, &rc.timeouts)?;
    let ctx = Ctx::new(store.clone(), drivers.clone(), node, rc, meta_tokens.clone());
    {
        // Four heartbeats without an answer: not heard now (for rounds closed at their
        // deadline; being declared lost takes `cluster.nodeTimeout`).
        let (acks, me) = (acks.clone(), node_name.clone());
        ctx.set_heard(move |name| {
            name == me || acks.last(crate::store::node_id_for(name)).is_some_and(|t| t.elapsed() < HEARD_WITHIN)
        });
    }
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
    let beat = CancellationToken::new();

    let api_stop = CancellationToken::new();
    let limits = ApiLimits {
        rate_limit_per_minute: config.rate_limit,
        header_read_timeout: config.header_read_timeout.get(),
        http2_keep_alive: config.http2_keep_alive.get(),
        max_connections: config.max_connections,
        auth_failures_per_minute: config.auth_failure_limit,
        max_watches_per_user: config.max_watches_per_user,
        ..ApiLimits::default()
    };
    let membership = Arc::new(crate::cluster::raft_membership::RaftMembership::new(
        store.clone(),
        peer_client,
        config.cluster.voters as usize,
        crate::cluster::membership::cluster_id_from_ca(&tls.ca_fingerprint),
        joined.map(|j| j.members).unwrap_or_default(),
    ));
    tokio::spawn(membership.clone().promote_learners(beat.clone()));
    let cluster = api::cluster::ClusterCtx::new(membership, &tls, data_dir.clone());
    let state =
        AppState::new(store.clone(), node_name.clone(), drivers.clone(), meta_tokens.clone(), limits, api_stop.clone())
            .with_cluster(cluster)
            .with(|s| {
                s.metrics = Arc::new(api::Metrics::with_registry(ctx.metrics.clone(), |r| {
                    proxy_metrics.register(r);
                    gate_metrics.register(r);
                }));
                s.secrets = ctx.secrets.clone();
                s.gates = gates.clone();
            });
    gates.start(tls.server_config.clone(), beat.clone()).map_err(|e| RunError::Config(ConfigError::Invalid(e)))?;
    let metrics = ctx.metrics.clone();
    let binder = meta_binder(state.clone(), api_stop.clone());
    serve_meta_on_docker_networks(&dockers, addr.port(), &binder).await;
    let proxy_addr = start_proxy(&proxy, config.proxy.listen_addr()?, &dockers, &data_dir).await?;
    let proxy_port = proxy_addr.map(|a| a.port());
    let process_gateway = serve_process_gateway(&drivers, addr.port(), &proxy, proxy_port, &binder).await;
    let services = drivers::NodeServices {
        meta_port: addr.port(),
        proxy_port: proxy_port.unwrap_or(0),
        proxy: proxy_port.is_some().then(|| proxy.clone()),
        process_gateway,
    };
    for d in drivers.values() {
        d.attach(&services);
    }
    // After attach: a machine's metadata names the proxy when there is one.
    serve_meta_to_machines(&qemus, &state, &api_stop);
    tokio::spawn(firewall_loop(drivers.values().cloned().collect(), config.resync_interval.get(), beat.clone()));
    // Serve first, then write: in a cluster a write is answered once this node has
    // applied it, which needs the leader to reach this node's /raft routes. A node
    // that wrote before serving (a restarted member, a joined node) waited out every
    // startup write's deadline.
    state.started.store(false, std::sync::atomic::Ordering::Release);
    let started = state.started.clone();
    let mut server = tokio::spawn(api::serve(state, listener, tls.server_config, api_stop.clone()));
    // The node record exists before the first election reads its maintenance flag.
    // Written at every start, also unchanged: answered once applied here, it means this
    // node has caught up with the log before adopting what its drivers hold, so what the
    // cluster decided while it was away (its applications given up as "node lost") is
    // known, and their resources are released rather than adopted.
    let reported = report(&ctx, &config, addr).await;
    let controller = Controller::start(ctx.clone()).await;
    started.store(true, std::sync::atomic::Ordering::Release);
    tokio::spawn(report_loop(ctx.clone(), config.clone(), addr, reported, beat.clone()));
    let tracker = crate::cluster::liveness::Tracker::new(config.cluster.node_timeout.get(), acks);
    tokio::spawn(crate::cluster::liveness::run(
        crate::cluster::liveness::StoreCluster(store.clone()),
        tracker,
        crate::cluster::liveness::LOOK_EVERY,
        beat.clone(),
    ));
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
        // Say so at once (not ready: no vote, no election here), without holding up the drain.
        let (c, cfg) = (ctx.clone(), config.clone());
        tokio::spawn(async move { report(&c, &cfg, addr).await });
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
        store.close().await;
    };
    tokio::select! {
        _ = drain => info!("drained; exiting"),
        _ = term.recv() => warn!("second signal: exiting now"),
        _ = int.recv() => warn!("second signal: exiting now"),
    }
    report_left_running(&store, &node_name);
    Ok(())
}

/// What `nodeFilter` globs match besides the node name: the configured identifiers,
/// then the detected operating system and architecture (`linux`, `x86_64`, as Rust
/// names them), unless configured already.
pub fn identifiers(config: &Config) -> Vec<String> {
    let mut out = config.identifiers.clone();
    for detected in [std::env::consts::OS, std::env::consts::ARCH] {
        if !out.iter().any(|i| i == detected) {
            out.push(detected.to_owned());
        }
    }
    out
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

async fn report_loop(
    ctx: Arc<Ctx>,
    config: Config,
    addr: SocketAddr,
    mut last: Option<NodeStatus>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = self_report(&ctx, &config, addr).await;
        if last.as_ref().is_some_and(|l| same_report(l, &now.status)) {
            continue;
        }
        if write_report(&ctx, now.clone()).await {
            last = Some(now.status);
        }
    }
}

/// Whether two reports say the same, whenever they were made.
fn same_report(a: &NodeStatus, b: &NodeStatus) -> bool {
    let mut a = a.clone();
    a.last_seen = b.last_seen;
    &a == b
}

/// Writes this node's report now; returns it if it was recorded.
async fn report(ctx: &Ctx, config: &Config, addr: SocketAddr) -> Option<NodeStatus> {
    let node = self_report(ctx, config, addr).await;
    let status = node.status.clone();
    write_report(ctx, node).await.then_some(status)
}

async fn write_report(ctx: &Ctx, node: Node) -> bool {
    match ctx.store.execute(Command::PutNode { node: Box::new(node) }).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            warn!(error = %e, "the node's status was refused");
            false
        }
        Err(e) => {
            warn!(error = %e, "could not record the node's status");
            false
        }
    }
}

/// What this node says of itself: drivers, capacity, what it holds, and (as `ready`)
/// whether it takes new applications. The stored `ready` also needs the leader to hear
/// it (`cluster::liveness`).
async fn self_report(ctx: &Ctx, config: &Config, addr: SocketAddr) -> Node {
    let availability = crate::reconcile::election::probe_drivers(ctx).await;
    let ledger = crate::reconcile::election::current_ledger(ctx).await.unwrap_or_default();
    Node {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: ObjectMeta { name: ctx.node.name.parse().ok(), ..Default::default() },
        status: NodeStatus {
            address: addr.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            identifiers: ctx.node.identifiers.clone(),
            location: config.location.clone(),
            drivers: availability
                .into_iter()
                .map(|(name, a)| DriverStatus {
                    info: ctx.drivers.get(&name).map(|d| d.info()).unwrap_or_default(),
                    name,
                    available: a.is_ok(),
                    reason: a.err().unwrap_or_default(),
                })
                .collect(),
            capacity: ctx.node.capacity,
            allocated: ledger.node.as_capacity(),
            maintenance: false,
            ready: ctx.accepting(),
            role: None,
            last_seen: Some(OffsetDateTime::now_utc()),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_process(process: serde_json::Value) -> Config {
        serde_json::from_value(serde_json::json!({ "drivers": { "process": process } })).unwrap()
    }

    /// A grace period longer than the deallocate deadline is refused at start, naming
    /// the field; the defaults of the process driver fit the default deadline.
    #[tokio::test]
    async fn a_deallocate_deadline_shorter_than_the_grace_period_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = with_process(serde_json::json!({"gracePeriod": "10m", "cgroups": false}));
        let (drivers, _, _) = build_drivers(&config, dir.path(), "n1").await.unwrap();
        let err = check_deallocate_time(&drivers, &driver_timeouts(&config).unwrap()).unwrap_err().to_string();
        assert!(err.contains("drivers.process.timeouts.deallocate: 5m is shorter"), "{err}");

        let config = with_process(
            serde_json::json!({"gracePeriod": "10m", "cgroups": false, "timeouts": {"deallocate": "11m"}}),
        );
        let (drivers, _, _) = build_drivers(&config, dir.path(), "n1").await.unwrap();
        check_deallocate_time(&drivers, &driver_timeouts(&config).unwrap()).unwrap();

        let config = with_process(serde_json::json!({"cgroups": false}));
        let (drivers, _, _) = build_drivers(&config, dir.path(), "n1").await.unwrap();
        check_deallocate_time(&drivers, &driver_timeouts(&config).unwrap()).unwrap();
    }

    /// `nodeFilter` matches the detected os and arch besides the configured
    /// identifiers, each once.
    #[test]
    fn identifiers_add_the_detected_os_and_arch_once() {
        let config = Config { identifiers: vec!["gpu".into(), std::env::consts::OS.into()], ..Config::default() };
        assert_eq!(identifiers(&config), vec!["gpu", std::env::consts::OS, std::env::consts::ARCH]);
    }
}
