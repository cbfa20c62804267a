//! The two networks containers sit on, created on demand.
//!
//! `aquarium-isolated` (the default) is an `internal` bridge: Docker gives its containers
//! no default route, so anything outside the subnet is unreachable at once, while the
//! bridge's gateway address, which belongs to the host, still answers. That is where the
//! node's metadata endpoint must listen. `aquarium-nat` is a plain bridge with outbound
//! NAT. Both disable inter-container traffic, so one application cannot reach another.
//!
//! The bridge's isolation is made to hold on the host side by a firewall chain of
//! fishd's own per network ([`crate::drivers::firewall`]): checked before every container is
//! put on the network (once per network and ports) and again at every
//! [`Networks::enforce`] pass, which also deletes the chains of removed networks.
//!
//! Engines accept two networks of one name when two creations race (seen with Docker 28:
//! two fishd starting together), and then start no container on that name ("ambiguous").
//! So creation is serialized within this process and, should another process race us,
//! every caller settles on the same network, the oldest of that name, and removes the
//! younger ones that no container uses.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use api_types::Network;
use bollard::Docker;
use bollard::models::NetworkCreateRequest;
use bollard::query_parameters::ListNetworksOptionsBuilder;

use super::{LABEL_MANAGED, engine_error, is_not_found};
use crate::drivers::DriverError;
use crate::drivers::firewall::{Firewall, Policy};

/// The network of the default, isolated, mode.
pub const ISOLATED: &str = "aquarium-isolated";
/// The network of `network: nat`.
pub const NAT: &str = "aquarium-nat";
/// The default prefix of network names (`aquarium-isolated`, `aquarium-nat`).
pub const DEFAULT_PREFIX: &str = "aquarium";
/// Where engines report a bridge's interface name, when it was chosen at creation.
const BRIDGE_NAME_OPTION: &str = "com.docker.network.bridge.name";

/// The docker network for a network mode, under `prefix`. `host` is refused for docker
/// when a label is created; should one get here, it gets the safe network.
pub(super) fn network_name(prefix: &str, mode: Network) -> String {
    match mode {
        Network::Isolated | Network::Host => format!("{prefix}-isolated"),
        Network::Nat => format!("{prefix}-nat"),
    }
}

/// A network ready for containers.
#[derive(Clone, Debug)]
pub(super) struct NetworkInfo {
    pub name: String,
    pub id: String,
    /// The bridge interface on the host.
    pub bridge: String,
    /// The host's address on the bridge, if the engine reports one.
    pub gateway: Option<IpAddr>,
}

/// Creates networks once per process at a time, and keeps their firewall rules.
pub(super) struct Networks {
    prefix: String,
    create: tokio::sync::Mutex<()>,
    firewall: Firewall,
    /// (network id, ports) whose rules were checked since the last enforce pass.
    verified: std::sync::Mutex<HashSet<(String, Vec<u16>)>>,
}

impl Networks {
    /// Networks named `<prefix>-isolated` and `<prefix>-nat`.
    pub fn new(prefix: String) -> Networks {
        Networks {
            prefix,
            create: tokio::sync::Mutex::new(()),
            firewall: Firewall::default(),
            verified: std::sync::Mutex::new(HashSet::new()),
        }
    }

    /// The network for `mode`, created if missing, its firewall rules in place with
    /// `ports` (metadata, proxy) open on its gateway.
    pub async fn ensure(&self, docker: &Docker, mode: Network, ports: &[u16]) -> Result<NetworkInfo, DriverError> {
        let info = self.ensure_network(docker, mode).await?;
        let key = (info.id.clone(), ports.to_vec());
        if self.verified.lock().unwrap_or_else(|e| e.into_inner()).contains(&key) {
            return Ok(info);
        }
        self.firewall.ensure(&policy(&info, mode, ports)).await.map_err(|e| {
            DriverError::failed(format!("cannot install the firewall rules of network {}: {e}", info.name))
        })?;
        self.verified.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
        Ok(info)
    }

    /// Checks and repairs the rules of both networks where they exist (creating none),
    /// and deletes the chains of networks that were removed.
    pub async fn enforce(&self, docker: &Docker, ports: &[u16]) -> Result<(), DriverError> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.firewall.collect().await?;
        for mode in [Network::Isolated, Network::Nat] {
            let name = network_name(&self.prefix, mode);
            if let Some(found) = find(docker, &name).await? {
                let info = checked(name, mode, found)?;
                self.firewall.ensure(&policy(&info, mode, ports)).await?;
                self.verified.lock().unwrap_or_else(|e| e.into_inner()).insert((info.id, ports.to_vec()));
            }
        }
        Ok(())
    }

    async fn ensure_network(&self, docker: &Docker, mode: Network) -> Result<NetworkInfo, DriverError> {
        let name = network_name(&self.prefix, mode);
        if let Some(found) = find(docker, &name).await? {
            return checked(name, mode, found);
        }
        let _guard = self.create.lock().await;
        if let Some(found) = find(docker, &name).await? {
            return checked(name, mode, found);
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(mode != Network::Nat),
            options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".into(), "false".into())])),
            labels: Some(HashMap::from([(LABEL_MANAGED.into(), "true".into())])),
            ..Default::default()
        };
        docker.create_network(request).await.map_err(|e| engine_error(&format!("creating network {name}"), e))?;
        tracing::info!(network = %name, "docker network created");
        let found = find(docker, &name)
            .await?
            .ok_or_else(|| DriverError::failed(format!("network {name} vanished right after it was created")))?;
        checked(name, mode, found)
    }
}

/// The network named exactly `name` that every caller settles on, if any: the oldest
/// (then the lowest id). Younger ones of ours are removed, so the name becomes usable
/// again; one a container already uses is left (the engine refuses), and said.
async fn find(docker: &Docker, name: &str) -> Result<Option<bollard::models::Network>, DriverError> {
    let filters = HashMap::from([("name", vec![name])]);
    let options = ListNetworksOptionsBuilder::default().filters(&filters).build();
    let mut networks: Vec<_> = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| engine_error("listing networks", e))?
        .into_iter()
        // The name filter matches substrings.
        .filter(|n| n.name.as_deref() == Some(name))
        .collect();
    networks.sort_by_cached_key(settling_order);
    let mut networks = networks.into_iter();
    let kept = networks.next();
    for younger in networks {
        let (Some(id), true) = (younger.id.as_deref(), is_ours(&younger)) else { continue };
        match docker.remove_network(id).await {
            Ok(()) => {
                tracing::info!(network = %name, %id, "removed a duplicate docker network left by a racing creation")
            }
            // Already gone: another racer removed it.
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(network = %name, %id, error = %e, "cannot remove a duplicate docker network"),
        }
    }
    Ok(kept)
}

/// Oldest first; a creation time the engine did not give (or we cannot read) sorts last,
/// and the id breaks ties, so every caller orders the same list the same way.
fn settling_order(n: &bollard::models::Network) -> (bool, Option<time::OffsetDateTime>, Option<String>) {
    let created = n
        .created
        .as_deref()
        .and_then(|c| time::OffsetDateTime::parse(c, &time::format_description::well_known::Rfc3339).ok());
    (created.is_none(), created, n.id.clone())
}

fn is_ours(n: &bollard::models::Network) -> bool {
    n.labels.as_ref().and_then(|l| l.get(LABEL_MANAGED)).is_some_and(|v| v == "true")
}

/// Refuses a network of our name that lost its isolation: a container put there would
/// have a route out that its label does not allow.
fn checked(name: String, mode: Network, network: bollard::models::Network) -> Result<NetworkInfo, DriverError> {
    if mode != Network::Nat && network.internal != Some(true) {
        return Err(DriverError::failed(format!(
            "docker network {name} exists but is not internal; remove it (docker network rm {name}) so fishd \
             recreates it isolated"
        )));
    }
    let id = network.id.ok_or_else(|| DriverError::failed(format!("network {name} has no id")))?;
    let bridge = network
        .options
        .as_ref()
        .and_then(|o| o.get(BRIDGE_NAME_OPTION))
        .cloned()
        .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)));
    let gateway = network
        .ipam
        .and_then(|ipam| ipam.config)
        .into_iter()
        .flatten()
        .filter_map(|config| config.gateway)
        .find_map(|gw| gw.split('/').next().and_then(|ip| ip.parse::<IpAddr>().ok()));
    Ok(NetworkInfo { name, id, bridge, gateway })
}

fn policy(info: &NetworkInfo, mode: Network, ports: &[u16]) -> Policy {
    Policy { bridge: info.bridge.clone(), gateway: info.gateway, isolated: mode != Network::Nat, ports: ports.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, created: Option<&str>) -> bollard::models::Network {
        bollard::models::Network { id: Some(id.into()), created: created.map(Into::into), ..Default::default() }
    }

    #[test]
    fn racers_settle_on_the_oldest_network_whatever_order_the_engine_lists() {
        let listed = [
            net("aaa", Some("2026-11-30T23:54:53.384288035Z")),
            net("zzz", Some("2026-11-30T23:54:53.38188Z")),
            net("000", None),
            net("bbb", Some("2026-11-30T23:54:53.384288035Z")),
        ];
        for rotation in 0..listed.len() {
            let mut l = listed.to_vec();
            l.rotate_left(rotation);
            l.sort_by_cached_key(settling_order);
            let ids: Vec<_> = l.iter().filter_map(|n| n.id.as_deref()).collect();
            // Fewer fraction digits is an earlier time, not a later string; unknown last.
            assert_eq!(ids, ["zzz", "aaa", "bbb", "000"]);
        }
    }
}
