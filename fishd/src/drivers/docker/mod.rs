//! The `docker` driver: one container per application, through the Docker Engine API on
//! a local unix socket.
//!
//! An instance talks to one engine (`socket`); several instances (`docker`,
//! `docker/dev`) may share an engine or not. Everything an instance creates is named from
//! the application uid (`fish-<uid>`, `fish-<uid>-<disk>`) and labelled with the uid, the
//! node and the instance name, so a retried allocate finds what a crash left and
//! `list_owned` finds exactly this instance's objects. The engine may be down when fishd
//! starts: the client connects (and negotiates the API version) on first use and
//! [`DockerDriver::available`] says why it cannot.
//!
//! Containers sit on an internal network by default ([`network`]); they reach the node's
//! metadata endpoint at their network's gateway address. The runtime hands the driver a
//! [`MetaBinder`]; the driver binds the endpoint at a gateway when it first uses that
//! network (an engine down at start, a network recreated), so a container never gets
//! a `FISH_META_URL` nothing listens on.

mod container;
mod image;
mod network;
mod options;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use api_types::{Definition, FieldError, Network, NodeCapacity};
use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{API_DEFAULT_VERSION, Docker};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use container::{container_name, mount_point, volume_name};
pub use image::ImageStats;
pub use network::{ISOLATED, NAT};

use self::container::{Owner, allocated, create_body, state_of, uid_of};
use self::image::ImageStore;
use self::network::{NetworkInfo, Networks};
use self::options::DockerOptions;
use super::{AllocateRequest, Allocated, Driver, DriverError, NodeServices, OwnedResource, ResourceState};

/// Label: the uid of the application a container or volume was made for.
pub const LABEL_APPLICATION: &str = "aquarium.fish/application";
/// Label: the application's name, for humans reading `docker ps`.
pub const LABEL_NAME: &str = "aquarium.fish/name";
/// Label: the node that owns the object.
pub const LABEL_NODE: &str = "aquarium.fish/node";
/// Label: the driver instance (`docker`, `docker/dev`) that owns the object.
pub const LABEL_DRIVER: &str = "aquarium.fish/driver";
/// Label: on everything fishd creates, networks included.
pub const LABEL_MANAGED: &str = "aquarium.fish/managed";

/// Where engines listen unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// A healthy local engine answers a ping in milliseconds; two seconds tells "down" from
/// "busy" without stalling an election.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// First contact (version negotiation) may meet an engine that is still starting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The per-request limit bollard applies; loading a multi-gigabyte tarball takes minutes.
const REQUEST_TIMEOUT_SECS: u64 = 600;
/// Seconds a container gets between SIGTERM and SIGKILL on deallocation, as for processes.
const STOP_GRACE_SECS: i32 = 5;

/// One docker instance's configuration (`drivers: {docker: {...}}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerConfig {
    /// The engine's unix socket (`unix://` prefix allowed).
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Limits of this instance; what is left out comes from the engine (cpus, memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<DockerCapacity>,
    /// Networks are `<networkPrefix>-isolated` and `<networkPrefix>-nat`; nodes sharing
    /// an engine share them unless they say otherwise (tests use their own).
    #[serde(default = "default_network_prefix")]
    pub network_prefix: String,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig { socket: default_socket(), capacity: None, network_prefix: default_network_prefix() }
    }
}

fn default_network_prefix() -> String {
    network::DEFAULT_PREFIX.to_owned()
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

/// A configured limit; each part is optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DockerCapacity {
    /// Cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram: Option<u32>,
    /// Applications at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
}

/// Whether a Docker Engine answers on `socket` now; fishd enables a `docker` instance
/// without configuration when it does.
pub async fn detect(socket: &Path) -> bool {
    match tokio::time::timeout(CONNECT_TIMEOUT, negotiate(socket)).await {
        Ok(Ok(docker)) => matches!(tokio::time::timeout(PING_TIMEOUT, docker.ping()).await, Ok(Ok(_))),
        _ => false,
    }
}

/// Makes the node's metadata endpoint listen at an address (a network's gateway) if
/// it does not yet; called by the driver when a network is used. Errors say why not.
pub type MetaBinder = Arc<dyn Fn(SocketAddr) -> Result<(), String> + Send + Sync>;

/// A docker driver instance.
pub struct DockerDriver {
    name: String,
    owner: Owner,
    socket: PathBuf,
    configured: Option<DockerCapacity>,
    /// Connected and version-negotiated on first success; retried until then.
    client: tokio::sync::OnceCell<Docker>,
    /// The engine's (cpus, GiB of memory), once it has answered.
    engine: Mutex<Option<(u32, u32)>>,
    images: ImageStore,
    networks: Networks,
    /// The port of the metadata endpoint at each gateway; 0 until the runtime says.
    meta_port: AtomicU16,
    /// The port of the node's proxy at each gateway; 0 until the runtime says.
    proxy_port: AtomicU16,
    /// The node's proxy (from [`Driver::attach`]), bound at a gateway the runtime did not
    /// know at start (engine down then, network recreated since); the lock makes
    /// check-and-bind one step for concurrent allocations.
    proxy: OnceLock<crate::proxy::Proxy>,
    proxy_bind: tokio::sync::Mutex<()>,
    /// Binds the endpoint at a gateway; set by the runtime with the port.
    meta_binder: OnceLock<MetaBinder>,
}

impl DockerDriver {
    /// Creates instance `instance_name` of node `node_name`, caching image tarballs under
    /// `data_dir/docker/images`. Succeeds while the engine is down: the driver then
    /// reports itself unavailable until the engine answers.
    pub async fn connect(
        instance_name: String,
        config: DockerConfig,
        node_name: String,
        data_dir: &Path,
    ) -> Result<DockerDriver, DriverError> {
        let driver = DockerDriver {
            owner: Owner { node: node_name, instance: instance_name.clone() },
            name: instance_name,
            socket: config.socket,
            configured: config.capacity,
            client: tokio::sync::OnceCell::new(),
            engine: Mutex::new(None),
            images: ImageStore::new(data_dir.join("docker").join("images"))?,
            networks: Networks::new(config.network_prefix),
            meta_port: AtomicU16::new(0),
            proxy_port: AtomicU16::new(0),
            proxy: OnceLock::new(),
            proxy_bind: tokio::sync::Mutex::new(()),
            meta_binder: OnceLock::new(),
        };
        if let Err(reason) = driver.available().await {
            tracing::warn!(driver = %driver.name, %reason, "docker engine not reachable yet");
        }
        Ok(driver)
    }

    /// How often image tarballs were downloaded and loaded by this instance.
    pub fn image_stats(&self) -> ImageStats {
        self.images.stats()
    }

    /// Where the node must listen so that containers reach its metadata endpoint: the
    /// gateway (host) address of each aquarium network, with `port`. Creates the networks
    /// if needed and remembers `port`: containers allocated from now on get
    /// `FISH_META_URL=http://<gateway>:<port>/meta/v1/data`.
    ///
    /// Plain HTTP on purpose: the gateway address exists only on the host-only bridge,
    /// callers are identified by their source address there, and minimal images
    /// (busybox's wget) cannot speak TLS 1.2 with the ciphers rustls offers.
    ///
    /// The addresses change only if someone removes a network; the driver binds at a
    /// new one through [`DockerDriver::set_meta_endpoint`]'s binder when it first uses it.
    pub async fn meta_listen_addrs(&self, port: u16) -> Result<Vec<SocketAddr>, DriverError> {
        self.meta_port.store(port, Ordering::Relaxed);
        let docker = self.docker().await?;
        let mut addrs = Vec::new();
        for mode in [Network::Isolated, Network::Nat] {
            let network = self.networks.ensure(docker, mode, &self.ports()).await?;
            match network.gateway {
                Some(ip) => addrs.push(SocketAddr::new(ip, port)),
                None => tracing::warn!(network = %network.name, "docker network has no gateway address"),
            }
        }
        Ok(addrs)
    }

    /// The gateway addresses of both networks (created if needed), where the node's proxy
    /// must listen for containers; remembers `port` for the containers' environment and
    /// opens it in the isolated network's firewall chain.
    pub async fn proxy_listen_addrs(&self, port: u16) -> Result<Vec<SocketAddr>, DriverError> {
        self.proxy_port.store(port, Ordering::Relaxed);
        let docker = self.docker().await?;
        let mut addrs = Vec::new();
        for mode in [Network::Isolated, Network::Nat] {
            let network = self.networks.ensure(docker, mode, &self.ports()).await?;
            if let Some(ip) = network.gateway {
                addrs.push(SocketAddr::new(ip, port));
            }
        }
        Ok(addrs)
    }

    /// The gateway ports containers may open: metadata and proxy.
    fn ports(&self) -> Vec<u16> {
        [self.meta_port.load(Ordering::Relaxed), self.proxy_port.load(Ordering::Relaxed)]
            .into_iter()
            .filter(|p| *p != 0)
            .collect()
    }

    /// The proxy's address on `network`, bound there first if it is not yet: like the
    /// metadata URL, a container is never handed an address nothing listens on.
    async fn proxy_addr(&self, network: &NetworkInfo) -> Option<SocketAddr> {
        let port = self.proxy_port.load(Ordering::Relaxed);
        let gateway = network.gateway?;
        if port == 0 {
            return None;
        }
        let addr = SocketAddr::new(gateway, port);
        if let Some(proxy) = self.proxy.get() {
            let _one = self.proxy_bind.lock().await;
            if !proxy.addrs().contains(&addr)
                && let Err(e) = proxy.listen(addr).await
            {
                tracing::warn!(driver = %self.name, %addr, error = %e, "cannot serve the proxy on this network");
                return None;
            }
        }
        Some(addr)
    }

    /// Tells the driver the endpoint's port and how to bind it at a gateway. Until this
    /// is called, containers get no `FISH_META_URL`.
    pub fn set_meta_endpoint(&self, port: u16, binder: MetaBinder) {
        self.meta_port.store(port, Ordering::Relaxed);
        if self.meta_binder.set(binder).is_err() {
            tracing::warn!(driver = %self.name, "metadata endpoint binder set twice; keeping the first");
        }
    }

    /// The endpoint's URL on `network`, bound there first: a container is never handed
    /// an address nothing listens on (it gets none, and a warning is logged, instead).
    fn meta_url(&self, network: &NetworkInfo) -> Option<String> {
        let port = self.meta_port.load(Ordering::Relaxed);
        let gateway = network.gateway?;
        if port == 0 {
            return None;
        }
        let addr = SocketAddr::new(gateway, port);
        if let Some(bind) = self.meta_binder.get()
            && let Err(e) = bind(addr)
        {
            tracing::warn!(driver = %self.name, %addr, error = %e, "cannot serve the metadata endpoint on this network");
            return None;
        }
        Some(format!("http://{addr}/meta/v1/data"))
    }

    /// The engine client, connecting first if this is the first successful contact.
    async fn docker(&self) -> Result<&Docker, DriverError> {
        self.client
            .get_or_try_init(|| async {
                match tokio::time::timeout(CONNECT_TIMEOUT, negotiate(&self.socket)).await {
                    Ok(result) => result,
                    Err(_) => Err(DriverError::Unavailable(format!(
                        "docker engine at {} did not answer within {CONNECT_TIMEOUT:?}",
                        self.socket.display()
                    ))),
                }
            })
            .await
    }

    /// Learns the engine's cpus and memory, once.
    async fn learn_engine(&self, docker: &Docker) {
        if self.engine.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
            return;
        }
        match tokio::time::timeout(PING_TIMEOUT, docker.info()).await {
            Ok(Ok(info)) => {
                let cpus = info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
                let gib = info.mem_total.and_then(|m| u32::try_from(m >> 30).ok()).unwrap_or(0);
                *self.engine.lock().unwrap_or_else(|e| e.into_inner()) = Some((cpus, gib));
            }
            Ok(Err(e)) => tracing::warn!(driver = %self.name, error = %e, "docker info failed"),
            Err(_) => tracing::warn!(driver = %self.name, "docker info timed out"),
        }
    }

    /// The container for `uid`, if there is one; an error if it is not ours.
    async fn existing(&self, docker: &Docker, uid: Uuid) -> Result<Option<Allocated>, DriverError> {
        let name = container_name(uid);
        let inspect = match docker.inspect_container(&name, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(engine_error("inspecting the container", e)),
        };
        let labels = inspect.config.as_ref().and_then(|c| c.labels.as_ref());
        if !self.owner.owns(labels) {
            return Err(DriverError::failed(format!(
                "container {name} exists but belongs to another node or driver instance"
            )));
        }
        if inspect.state.as_ref().and_then(|s| s.status.as_ref()) == Some(&ContainerStateStatusEnum::CREATED) {
            // Created by an allocation that crashed before starting it: finish the job.
            docker.start_container(&name, None).await.map_err(|e| engine_error("starting the container", e))?;
            let inspect =
                docker.inspect_container(&name, None).await.map_err(|e| engine_error("inspecting the container", e))?;
            return Ok(Some(allocated(&inspect)));
        }
        // Running, or ended by itself: the next inspect tells the reconciler which.
        Ok(Some(allocated(&inspect)))
    }

    async fn create(&self, docker: &Docker, req: &AllocateRequest) -> Result<Allocated, DriverError> {
        let options = DockerOptions::parse(&req.definition.options).map_err(invalid_fields)?;
        let image = req
            .definition
            .images
            .first()
            .ok_or_else(|| DriverError::Invalid("images: the docker driver needs one image".into()))?;
        let image = self.images.resolve(docker, image).await?;
        let network = self.networks.ensure(docker, req.definition.resources.network, &self.ports()).await?;
        for disk in req.definition.resources.disks.keys() {
            let volume = VolumeCreateRequest {
                name: Some(volume_name(req.uid, disk)),
                labels: Some(self.owner.labels(req.uid, &req.name)),
                ..Default::default()
            };
            docker
                .create_volume(volume)
                .await
                .map_err(|e| engine_error(&format!("creating volume for disk {disk}"), e))?;
        }
        let name = container_name(req.uid);
        let endpoints =
            container::Endpoints { meta_url: self.meta_url(&network), proxy: self.proxy_addr(&network).await };
        let body = create_body(req, &self.owner, &options, &image, &network, &endpoints);
        let create = CreateContainerOptionsBuilder::default().name(&name).build();
        match docker.create_container(Some(create), body).await {
            Ok(_) => {}
            // Another allocate of this uid got there first: use its container.
            Err(e) if status_of(&e) == Some(409) => {
                return self.existing(docker, req.uid).await?.ok_or_else(|| {
                    DriverError::failed(format!("container {name} conflicted on create but is not there"))
                });
            }
            Err(e) => {
                self.remove_all(docker, req.uid, "").await.ok();
                return Err(engine_error("creating the container", e));
            }
        }
        if let Err(e) = docker.start_container(&name, None).await {
            // Leave nothing half-made behind; the next attempt starts clean.
            self.remove_all(docker, req.uid, "").await.ok();
            return Err(engine_error("starting the container", e));
        }
        let inspect =
            docker.inspect_container(&name, None).await.map_err(|e| engine_error("inspecting the container", e))?;
        tracing::info!(driver = %self.name, uid = %req.uid, container = %name, %image, network = %network.name, "container started");
        Ok(allocated(&inspect))
    }

    /// Stops and removes the container(s) of `uid` and its volumes; fine if none is there.
    async fn remove_all(&self, docker: &Docker, uid: Uuid, identifier: &str) -> Result<(), DriverError> {
        let name = container_name(uid);
        let mut targets = vec![name.as_str()];
        if !identifier.is_empty() && identifier != name {
            targets.insert(0, identifier);
        }
        for target in targets {
            remove_container(docker, target).await?;
        }
        let mut filters = self.owner.filters();
        if let Some(labels) = filters.get_mut("label") {
            labels.push(format!("{LABEL_APPLICATION}={uid}"));
        }
        let volumes = docker
            .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
            .await
            .map_err(|e| engine_error("listing volumes", e))?;
        for volume in volumes.volumes.unwrap_or_default() {
            let options = RemoveVolumeOptionsBuilder::default().force(true).build();
            match docker.remove_volume(&volume.name, Some(options)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(engine_error(&format!("removing volume {}", volume.name), e)),
            }
        }
        Ok(())
    }
}

/// Connects to `socket` and settles on an API version both sides speak (the stubs are
/// for 1.53; Debian 12's engine speaks 1.41).
async fn negotiate(socket: &Path) -> Result<Docker, DriverError> {
    let path = socket
        .to_str()
        .ok_or_else(|| DriverError::Invalid(format!("docker socket path {} is not UTF-8", socket.display())))?;
    let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
        .map_err(|e| DriverError::Unavailable(e.to_string()))?;
    docker.negotiate_version().await.map_err(|e| DriverError::Unavailable(format!("docker engine at {path}: {e}")))
}

/// Stop with a grace period, then remove with its anonymous volumes; gone is fine.
async fn remove_container(docker: &Docker, target: &str) -> Result<(), DriverError> {
    let stop = StopContainerOptionsBuilder::default().t(STOP_GRACE_SECS).build();
    match docker.stop_container(target, Some(stop)).await {
        Ok(()) => {}
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) if status_of(&e) == Some(304) => {}
        Err(e) => tracing::warn!(container = target, error = %e, "stop failed; removing by force"),
    }
    let remove = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
    match docker.remove_container(target, Some(remove)).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(engine_error(&format!("removing container {target}"), e)),
    }
}

#[async_trait]
impl Driver for DockerDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, definition: &Definition) -> Vec<FieldError> {
        options::validate(definition)
    }

    fn attach(&self, services: &NodeServices) {
        if let Some(proxy) = &services.proxy
            && self.proxy.set(proxy.clone()).is_err()
        {
            tracing::warn!(driver = %self.name, "attached twice; keeping the first proxy");
        }
    }

    /// Checks and repairs the networks' firewall rules, and deletes those of removed
    /// networks.
    async fn enforce(&self) -> Result<(), DriverError> {
        let docker = self.docker().await?;
        self.networks.enforce(docker, &self.ports()).await
    }

    async fn available(&self) -> Result<(), String> {
        let docker = self.docker().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("docker engine at {}: {e}", self.socket.display())),
            Err(_) => {
                return Err(format!(
                    "docker engine at {} did not answer within {PING_TIMEOUT:?}",
                    self.socket.display()
                ));
            }
        }
        self.learn_engine(docker).await;
        Ok(())
    }

    /// The configured limit, completed by the engine's cpus and memory; a part neither
    /// configured nor known (slots, or cpu/ram before the engine answered) is `u32::MAX`,
    /// i.e. no limit.
    fn capacity(&self) -> Option<NodeCapacity> {
        let engine = *self.engine.lock().unwrap_or_else(|e| e.into_inner());
        if self.configured.is_none() && engine.is_none() {
            return None;
        }
        let configured = self.configured.unwrap_or_default();
        Some(NodeCapacity {
            cpu: configured.cpu.or(engine.map(|e| e.0)).unwrap_or(u32::MAX),
            ram: configured.ram.or(engine.map(|e| e.1)).unwrap_or(u32::MAX),
            slots: configured.slots.unwrap_or(u32::MAX),
            applications: 0,
        })
    }

    async fn allocate(&self, req: &AllocateRequest) -> Result<Allocated, DriverError> {
        let docker = self.docker().await?;
        let mut allocated = match self.existing(docker, req.uid).await? {
            Some(found) => {
                tracing::info!(driver = %self.name, uid = %req.uid, "container already there; adopting it");
                found
            }
            None => self.create(docker, req).await?,
        };
        // What `fishctl describe` shows of the sandbox.
        let resources = &req.definition.resources;
        let details = &mut allocated.details;
        details.insert("network".into(), resources.network.as_str().into());
        let network = self.networks.ensure(docker, resources.network, &self.ports()).await?;
        if let Some(proxy) = self.proxy_addr(&network).await {
            details.insert("proxy".into(), proxy.to_string().into());
        }
        if !resources.allow.is_empty() {
            details.insert("allow".into(), resources.allow.join(", ").into());
        }
        Ok(allocated)
    }

    async fn inspect(&self, uid: Uuid, identifier: &str) -> Result<ResourceState, DriverError> {
        let docker = self.docker().await?;
        let name = container_name(uid);
        let target = if identifier.is_empty() { name.as_str() } else { identifier };
        match docker.inspect_container(target, None).await {
            Ok(inspect) => Ok(state_of(&inspect)),
            Err(e) if is_not_found(&e) => Ok(ResourceState::Lost("container disappeared".into())),
            Err(e) => Err(engine_error("inspecting the container", e)),
        }
    }

    async fn deallocate(&self, uid: Uuid, identifier: &str) -> Result<(), DriverError> {
        let docker = self.docker().await?;
        self.remove_all(docker, uid, identifier).await?;
        tracing::info!(driver = %self.name, %uid, "container and volumes removed");
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<OwnedResource>, DriverError> {
        let docker = self.docker().await?;
        let filters = self.owner.filters();
        let containers = docker
            .list_containers(Some(ListContainersOptionsBuilder::default().all(true).filters(&filters).build()))
            .await
            .map_err(|e| engine_error("listing containers", e))?;
        let mut owned = Vec::new();
        let mut seen = BTreeSet::new();
        for c in containers {
            if let (Some(uid), Some(id)) = (uid_of(c.labels.as_ref()), c.id) {
                seen.insert(uid);
                owned.push(OwnedResource { uid, identifier: id });
            }
        }
        // Volumes whose container never got made (a crash between the two) are owned too.
        let volumes = docker
            .list_volumes(Some(ListVolumesOptionsBuilder::default().filters(&filters).build()))
            .await
            .map_err(|e| engine_error("listing volumes", e))?;
        for volume in volumes.volumes.unwrap_or_default() {
            if let Some(uid) = uid_of(Some(&volume.labels))
                && seen.insert(uid)
            {
                owned.push(OwnedResource { uid, identifier: container_name(uid) });
            }
        }
        Ok(owned)
    }
}

/// Every field problem as one `Invalid` message.
fn invalid_fields(errors: Vec<FieldError>) -> DriverError {
    DriverError::Invalid(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

pub(super) fn is_not_found(e: &BollardError) -> bool {
    status_of(e) == Some(404)
}

/// An engine error at `step`: a transport failure means the engine is unavailable; an
/// answer with an error status is a failure worth retrying.
pub(super) fn engine_error(step: &str, e: BollardError) -> DriverError {
    match e {
        BollardError::DockerResponseServerError { status_code, ref message } => {
            DriverError::failed(format!("{step}: {message} (HTTP {status_code})"))
        }
        BollardError::SocketNotFoundError(_)
        | BollardError::HyperLegacyError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::HttpClientError { .. } => DriverError::Unavailable(format!("{step}: {e}")),
        other => DriverError::with_source(step.to_owned(), other),
    }
}
