//! Drivers: the only code that touches real resources.
//!
//! A driver instance allocates, inspects and deallocates resources of its kind and can
//! list the ones it owns, so the reconciler can adopt them after a restart and remove
//! orphans. Drivers never touch the store: the reconciler hands them what they need
//! and records what they answer. Every external object a driver creates is named from
//! the application uid, so a retried `allocate` after a crash finds what the crash
//! left instead of creating a second resource.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api_types::{Definition, FieldError, HumanDuration, Metadata, NodeCapacity};
use async_trait::async_trait;
use serde::Deserialize;
use uuid::Uuid;

pub mod docker;
pub mod download;
pub mod firewall;
pub mod process;
pub mod qemu;
pub mod test;

/// Everything a driver needs to allocate one resource.
#[derive(Clone, Debug)]
pub struct AllocateRequest {
    /// The application's uid; external objects are named from it.
    pub uid: Uuid,
    /// The application's name, for humans reading `docker ps` or `ps`.
    pub name: String,
    /// The definition chosen by the election.
    pub definition: Definition,
    /// Label metadata overlaid by the application's, plus `FISH_APPLICATION`,
    /// `FISH_NODE` and `FISH_META_TOKEN`.
    pub metadata: Metadata,
    /// The node's name, recorded on owned objects (e.g. a container label).
    pub node: String,
}

/// What a driver allocated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allocated {
    /// The driver's own id: container id, pid, simulated resource name.
    pub identifier: String,
    pub ip_addr: Option<String>,
    pub hw_addr: Option<String>,
    /// Facts worth showing in `describe` (pid, container name, log path).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// What a driver observes of a resource it allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceState {
    /// Still there and running.
    Running,
    /// Ended by itself; the message says how (`exited with code 3`).
    Ended(String),
    /// Vanished without us releasing it.
    Lost(String),
}

/// A resource a driver finds on the host and owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedResource {
    /// The application the resource was allocated for.
    pub uid: Uuid,
    pub identifier: String,
}

/// What the node offers resources besides the driver itself: where its metadata
/// endpoint and proxy listen. Handed to every driver by [`Driver::attach`] once the
/// runtime has bound them.
#[derive(Clone)]
pub struct NodeServices {
    /// The metadata endpoint's port on every address the node serves it (docker
    /// gateways, the process gateway); 0 when not served there.
    pub meta_port: u16,
    /// The proxy's port on those addresses; 0 when the proxy is off.
    pub proxy_port: u16,
    /// The proxy, for drivers that hand it connections of one resource
    /// ([`crate::proxy::Proxy::serve_stream`], e.g. a VM behind user-mode networking).
    pub proxy: Option<crate::proxy::Proxy>,
    /// The host address isolated processes reach from their network namespace, with
    /// the metadata endpoint and the proxy bound on it; `None` where fishd cannot make
    /// network namespaces (not root), so isolated processes cannot run.
    pub process_gateway: Option<std::net::IpAddr>,
}

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The definition cannot work on this driver (bad options, missing image, bad sum).
    /// Retrying the same definition will fail the same way.
    #[error("{0}")]
    Invalid(String),
    /// The driver's backend is not reachable now (engine down, socket missing).
    #[error("driver unavailable: {0}")]
    Unavailable(String),
    /// Anything else; worth retrying.
    #[error("{message}")]
    Failed {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl DriverError {
    /// A failure with a message and no underlying cause.
    pub fn failed(message: impl Into<String>) -> Self {
        DriverError::Failed { message: message.into(), source: None }
    }

    /// A failure caused by `source`.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        DriverError::Failed { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// A driver instance.
///
/// # Guarantees the reconciler gives
/// - Never two calls for one application at once.
/// - `deallocate` may be called for a resource whose `allocate` never finished, or
///   twice: it must tolerate both and succeed when nothing is left.
///
/// # What a driver must guarantee
/// - `allocate` is idempotent per `uid`: calling it again after a crash returns the
///   resource already there (or replaces a half-made one), never a second resource.
/// - `list_owned` lists every resource this instance owns on this node, so orphans can
///   be removed after a restart.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The instance name, e.g. `docker` or `docker/dev`.
    fn name(&self) -> &str;

    /// Checks a definition's options and images when a label is created; each error's
    /// field is relative to the definition (`options.command`, `images[0].sum`).
    fn validate(&self, definition: &Definition) -> Vec<FieldError>;

    /// Whether this node can ever run `definition` with this driver, and why not (e.g. an
    /// isolated process needs network namespaces, so root). An `Err` makes the
    /// application "can never fit" on this node, with the reason. Cheap: called on
    /// every election.
    fn supports(&self, _definition: &Definition) -> Result<(), String> {
        Ok(())
    }

    /// Learns where the node's metadata endpoint and proxy are, once they are bound.
    fn attach(&self, _services: &NodeServices) {}

    /// Whether the backend answers now, and why not. Cheap: called on every election.
    async fn available(&self) -> Result<(), String>;

    /// Checks and repairs what keeps this instance's resources isolated on the host (the
    /// firewall chains of docker networks and of isolated processes' veths), and deletes
    /// what is left of removed ones. The runtime calls it at start and every
    /// `resyncInterval`, so a rule deleted by hand or a flushed table comes back.
    async fn enforce(&self) -> Result<(), DriverError> {
        Ok(())
    }

    /// This instance's own limit, on top of the node's capacity (the test driver's
    /// configured capacity, a docker engine's cpus and memory). `None`: no limit.
    fn capacity(&self) -> Option<NodeCapacity> {
        None
    }

    /// Creates the resource for `req.uid`, or returns the one already there.
    async fn allocate(&self, req: &AllocateRequest) -> Result<Allocated, DriverError>;

    /// Observes the resource.
    async fn inspect(&self, uid: Uuid, identifier: &str) -> Result<ResourceState, DriverError>;

    /// Releases the resource and everything made for it. Succeeds when nothing is left.
    async fn deallocate(&self, uid: Uuid, identifier: &str) -> Result<(), DriverError>;

    /// Every resource this instance owns on this node.
    async fn list_owned(&self) -> Result<Vec<OwnedResource>, DriverError>;

    /// What the node reports about this instance besides availability (the qemu
    /// driver: which accelerator its machines get). Empty: nothing to say.
    fn info(&self) -> String {
        String::new()
    }

    /// Where the resource's captured output is, for drivers that capture it.
    fn log_path(&self, _uid: Uuid) -> Option<PathBuf> {
        None
    }

    /// The longest `deallocate` may wait on its way to a kill (a grace period, then the
    /// kill). The node refuses a `timeouts.deallocate` shorter than this at start: such
    /// a deadline would cut every slow stop short, before the kill. Zero: no such wait.
    fn deallocate_time(&self) -> Duration {
        Duration::ZERO
    }
}

/// The driver instances of a node, by instance name.
pub type Drivers = BTreeMap<String, Arc<dyn Driver>>;

/// A driver call, named for its deadline and for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverOp {
    Allocate,
    Inspect,
    Deallocate,
    ListOwned,
}

impl std::fmt::Display for DriverOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverOp::Allocate => "allocate",
            DriverOp::Inspect => "inspect",
            DriverOp::Deallocate => "deallocate",
            DriverOp::ListOwned => "list owned resources",
        })
    }
}

/// The longest any driver call may be given; more is a typo, not a plan.
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long each driver call may take (`drivers.<name>.timeouts` in fish.yml). A call
/// past its deadline is a failed call with that reason, so a stalled image download
/// cannot hold a reconcile slot (and its image lock) forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallTimeouts {
    /// Image downloads and loads are slow: 30 minutes by default.
    #[serde(default = "default_allocate")]
    pub allocate: HumanDuration,
    /// One look at a resource: 1 minute.
    #[serde(default = "default_inspect")]
    pub inspect: HumanDuration,
    /// Graceful stops, then kills: 5 minutes.
    #[serde(default = "default_deallocate")]
    pub deallocate: HumanDuration,
    /// Listing at start: 2 minutes.
    #[serde(default = "default_list_owned")]
    pub list_owned: HumanDuration,
}

fn default_allocate() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 60))
}
fn default_inspect() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_deallocate() -> HumanDuration {
    HumanDuration(Duration::from_secs(5 * 60))
}
fn default_list_owned() -> HumanDuration {
    HumanDuration(Duration::from_secs(2 * 60))
}

impl Default for CallTimeouts {
    fn default() -> Self {
        CallTimeouts {
            allocate: default_allocate(),
            inspect: default_inspect(),
            deallocate: default_deallocate(),
            list_owned: default_list_owned(),
        }
    }
}

impl CallTimeouts {
    /// The deadline of one call.
    pub fn of(&self, op: DriverOp) -> Duration {
        match op {
            DriverOp::Allocate => self.allocate.get(),
            DriverOp::Inspect => self.inspect.get(),
            DriverOp::Deallocate => self.deallocate.get(),
            DriverOp::ListOwned => self.list_owned.get(),
        }
    }

    /// Refuses a zero deadline or one over [`MAX_CALL_TIMEOUT`], naming the field.
    pub fn check(&self) -> Result<(), String> {
        for (field, d) in [
            ("allocate", self.allocate),
            ("inspect", self.inspect),
            ("deallocate", self.deallocate),
            ("listOwned", self.list_owned),
        ] {
            if d.get().is_zero() || d.get() > MAX_CALL_TIMEOUT {
                return Err(format!("timeouts.{field}: must be more than 0 and at most 24h"));
            }
        }
        Ok(())
    }
}
