//! The two networks containers sit on, created on demand.
//!
//! `aquarium-isolated` (the default) is an `internal` bridge: Docker gives its containers
//! no default route, so anything outside the subnet is unreachable at once, while the
//! bridge's gateway address, which belongs to the host, still answers. That is where the
//! node's metadata endpoint must listen. `aquarium-nat` is a plain bridge with outbound
//! NAT. Both disable inter-container traffic, so one application cannot reach another.
//!
//! Old engines (API < 1.44) accept two networks of one name, so creation is serialized
//! within this process and, should another process race us, every caller settles on the
//! same network: the one of that name with the lowest id.

use std::collections::HashMap;
use std::net::IpAddr;

use api_types::Network;
use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::{LABEL_MANAGED, engine_error};
use crate::drivers::DriverError;

/// The network of the default, isolated, mode.
pub const ISOLATED: &str = "aquarium-isolated";
/// The network of `network: nat`.
pub const NAT: &str = "aquarium-nat";

/// The docker network for a network mode.
pub(super) fn network_name(mode: Network) -> &'static str {
    match mode {
        Network::Isolated => ISOLATED,
        Network::Nat => NAT,
    }
}

/// A network ready for containers.
#[derive(Clone, Debug)]
pub(super) struct NetworkInfo {
    pub name: &'static str,
    pub id: String,
    /// The host's address on the bridge, if the engine reports one.
    pub gateway: Option<IpAddr>,
}

/// Creates networks once per process at a time.
#[derive(Default)]
pub(super) struct Networks {
    create: tokio::sync::Mutex<()>,
}

impl Networks {
    /// The network for `mode`, created if missing.
    pub async fn ensure(&self, docker: &Docker, mode: Network) -> Result<NetworkInfo, DriverError> {
        let name = network_name(mode);
        if let Some(found) = find(docker, name).await? {
            return checked(name, mode, found);
        }
        let _guard = self.create.lock().await;
        if let Some(found) = find(docker, name).await? {
            return checked(name, mode, found);
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".into()),
            internal: Some(mode == Network::Isolated),
            options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".into(), "false".into())])),
            labels: Some(HashMap::from([(LABEL_MANAGED.into(), "true".into())])),
            ..Default::default()
        };
        docker.create_network(request).await.map_err(|e| engine_error(&format!("creating network {name}"), e))?;
        tracing::info!(network = name, "docker network created");
        let found = find(docker, name)
            .await?
            .ok_or_else(|| DriverError::failed(format!("network {name} vanished right after it was created")))?;
        checked(name, mode, found)
    }
}

/// The network named exactly `name` with the lowest id, if any.
async fn find(docker: &Docker, name: &str) -> Result<Option<bollard::models::Network>, DriverError> {
    let filters = HashMap::from([("name", vec![name])]);
    let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
    let mut networks: Vec<_> = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| engine_error("listing networks", e))?
        .into_iter()
        .filter(|n| n.name.as_deref() == Some(name))
        .collect();
    // The name filter matches substrings, and duplicates are possible: pick one the same
    // way every racer does.
    networks.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(networks.into_iter().next())
}

/// Refuses a network of our name that lost its isolation: a container put there would
/// have a route out that its label does not allow.
fn checked(name: &'static str, mode: Network, network: bollard::models::Network) -> Result<NetworkInfo, DriverError> {
    if mode == Network::Isolated && network.internal != Some(true) {
        return Err(DriverError::failed(format!(
            "docker network {name} exists but is not internal; remove it (docker network rm {name}) so fishd \
             recreates it isolated"
        )));
    }
    let id = network.id.ok_or_else(|| DriverError::failed(format!("network {name} has no id")))?;
    let gateway = network
        .ipam
        .and_then(|ipam| ipam.config)
        .into_iter()
        .flatten()
        .filter_map(|config| config.gateway)
        .find_map(|gw| gw.split('/').next().and_then(|ip| ip.parse::<IpAddr>().ok()));
    Ok(NetworkInfo { name, id, gateway })
}
