//! One container per application: what it is created with, and what its state means.
//!
//! Everything here is pure (request in, Docker API body out; inspect in, state out), so
//! it is tested without an engine. Containers and volumes are named from the
//! application uid and labelled with the application, the node and the driver instance:
//! names make a retried allocate find what a crash left, labels let `list_owned` find
//! everything this instance owns, and keep two instances on one engine apart.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HostConfig, Mount, MountType,
};
use uuid::Uuid;

use super::network::NetworkInfo;
use super::options::{DockerOptions, env_value};
use super::{LABEL_APPLICATION, LABEL_DRIVER, LABEL_MANAGED, LABEL_NAME, LABEL_NODE};
use crate::drivers::{AllocateRequest, Allocated, ResourceState};

/// Bytes in the GiB that `resources.ram` and disk sizes count in.
const GIB: i64 = 1 << 30;

/// The container of an application.
pub fn container_name(uid: Uuid) -> String {
    format!("fish-{uid}")
}

/// The volume of one of an application's disks.
pub fn volume_name(uid: Uuid, disk: &str) -> String {
    format!("fish-{uid}-{disk}")
}

/// Where a disk is mounted inside the container.
pub fn mount_point(disk: &str) -> String {
    format!("/mnt/{disk}")
}

/// Who owns an object: written as labels on containers and volumes.
#[derive(Clone, Debug)]
pub(super) struct Owner {
    pub node: String,
    pub instance: String,
}

impl Owner {
    /// The labels of an object made for `uid`.
    pub fn labels(&self, uid: Uuid, app_name: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
            (LABEL_APPLICATION.to_owned(), uid.to_string()),
            (LABEL_NAME.to_owned(), app_name.to_owned()),
            (LABEL_NODE.to_owned(), self.node.clone()),
            (LABEL_DRIVER.to_owned(), self.instance.clone()),
        ])
    }

    /// Label filters matching everything this owner made (`label=k=v`, all must match).
    pub fn filters(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_owned(),
            vec![format!("{LABEL_NODE}={}", self.node), format!("{LABEL_DRIVER}={}", self.instance)],
        )])
    }

    /// Whether labels found on an object say it is ours.
    pub fn owns(&self, labels: Option<&HashMap<String, String>>) -> bool {
        labels.is_some_and(|l| l.get(LABEL_NODE) == Some(&self.node) && l.get(LABEL_DRIVER) == Some(&self.instance))
    }
}

/// The uid an object was made for, from its labels.
pub(super) fn uid_of(labels: Option<&HashMap<String, String>>) -> Option<Uuid> {
    labels?.get(LABEL_APPLICATION)?.parse().ok()
}

/// Where a container finds the node: its metadata URL and the proxy on its gateway.
#[derive(Clone, Debug, Default)]
pub(super) struct Endpoints {
    pub meta_url: Option<String>,
    pub proxy: Option<std::net::SocketAddr>,
}

/// The container's environment: the definition's `env`, overlaid by the merged metadata
/// (strings as they are, other values JSON-encoded), overlaid by `FISH_META_URL` and the
/// proxy variables (`FISH_PROXY`, `ALL_PROXY`, `HTTPS_PROXY`, `HTTP_PROXY`, with
/// `NO_PROXY` naming the gateway so metadata requests go straight to it).
pub(super) fn environment(
    options: &DockerOptions,
    metadata: &api_types::Metadata,
    endpoints: &Endpoints,
) -> Vec<String> {
    let mut env: std::collections::BTreeMap<String, String> =
        options.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, value) in metadata {
        env.insert(key.clone(), env_value(value));
    }
    if let Some(url) = &endpoints.meta_url {
        env.insert("FISH_META_URL".into(), url.to_owned());
    }
    if let Some(proxy) = endpoints.proxy {
        env.extend(crate::proxy::environment(proxy, None));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The body of `POST /containers/create` for an allocation.
pub(super) fn create_body(
    req: &AllocateRequest,
    owner: &Owner,
    options: &DockerOptions,
    image: &str,
    network: &NetworkInfo,
    endpoints: &Endpoints,
) -> ContainerCreateBody {
    let resources = &req.definition.resources;
    let memory = (resources.ram > 0).then(|| i64::from(resources.ram) * GIB);
    let mounts = resources
        .disks
        .keys()
        .map(|disk| Mount {
            target: Some(mount_point(disk)),
            source: Some(volume_name(req.uid, disk)),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: options.command.clone(),
        env: Some(environment(options, &req.metadata, endpoints)),
        labels: Some(owner.labels(req.uid, &req.name)),
        host_config: Some(HostConfig {
            nano_cpus: (resources.cpu > 0).then(|| i64::from(resources.cpu) * 1_000_000_000),
            memory,
            // No swap beyond the limit: `ram` is what the resource gets.
            memory_swap: memory,
            privileged: Some(options.privileged),
            mounts: (!mounts.is_empty()).then_some(mounts),
            network_mode: Some(network.id.clone()),
            // A tiny init as PID 1 forwards SIGTERM and reaps zombies, so a stop takes
            // milliseconds instead of the whole grace period for images whose command
            // ignores signals as PID 1 (`sleep`).
            init: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What an inspected container's state means to the reconciler.
pub(super) fn state_of(inspect: &ContainerInspectResponse) -> ResourceState {
    let Some(state) = &inspect.state else {
        return ResourceState::Lost("container has no state".into());
    };
    match state.status {
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED)
        | Some(ContainerStateStatusEnum::RESTARTING) => ResourceState::Running,
        Some(ContainerStateStatusEnum::CREATED) => {
            ResourceState::Ended("container was created but never started".into())
        }
        Some(ContainerStateStatusEnum::REMOVING) => ResourceState::Lost("container is being removed".into()),
        _ if state.running == Some(true) => ResourceState::Running,
        _ => {
            let code = state.exit_code.unwrap_or(-1);
            let message = if state.oom_killed == Some(true) {
                format!("killed: out of memory (exited with code {code})")
            } else {
                format!("exited with code {code}")
            };
            match state.error.as_deref().filter(|e| !e.is_empty()) {
                Some(error) => ResourceState::Ended(format!("{message}: {error}")),
                None => ResourceState::Ended(message),
            }
        }
    }
}

/// What the reconciler records of an allocated container.
pub(super) fn allocated(inspect: &ContainerInspectResponse) -> Allocated {
    let endpoint = inspect.network_settings.as_ref().and_then(|s| s.networks.as_ref()).and_then(|networks| {
        let mut endpoints: Vec<_> = networks.iter().collect();
        endpoints.sort_by(|a, b| a.0.cmp(b.0));
        endpoints.into_iter().find(|(_, e)| e.ip_address.as_deref().is_some_and(|ip| !ip.is_empty()))
    });
    let non_empty = |s: Option<&String>| s.filter(|s| !s.is_empty()).cloned();
    let mut details = serde_json::Map::new();
    if let Some(name) = &inspect.name {
        details.insert("container".into(), name.trim_start_matches('/').into());
    }
    if let Some(image) = inspect.config.as_ref().and_then(|c| c.image.as_ref()) {
        details.insert("image".into(), image.clone().into());
    }
    if let Some((network, _)) = endpoint {
        details.insert("network".into(), network.clone().into());
    }
    Allocated {
        identifier: inspect.id.clone().unwrap_or_default(),
        ip_addr: endpoint.and_then(|(_, e)| non_empty(e.ip_address.as_ref())),
        hw_addr: endpoint.and_then(|(_, e)| non_empty(e.mac_address.as_ref())),
        details,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::{Definition, Disk, Resources};
    use bollard::models::ContainerState;
    use serde_json::json;

    fn request() -> AllocateRequest {
        let mut resources = Resources { cpu: 2, ram: 1, ..Default::default() };
        resources.disks.insert("data".into(), Disk { size: 1 });
        AllocateRequest {
            uid: Uuid::nil(),
            name: "app".into(),
            definition: Definition { driver: "docker".into(), images: vec![], resources, options: Default::default() },
            metadata: [("A".to_owned(), json!("meta")), ("N".to_owned(), json!({"x": 1}))].into(),
            node: "n1".into(),
        }
    }

    #[test]
    fn metadata_overrides_options_env_and_meta_url_wins() {
        let options = DockerOptions {
            env: [("A".into(), "opt".into()), ("B".into(), "opt".into())].into(),
            ..Default::default()
        };
        let endpoints = Endpoints { meta_url: Some("https://gw/meta".into()), proxy: None };
        let env = environment(&options, &request().metadata, &endpoints);
        assert_eq!(env, ["A=meta", "B=opt", "FISH_META_URL=https://gw/meta", r#"N={"x":1}"#]);
        let endpoints = Endpoints { meta_url: None, proxy: Some("172.30.0.1:9000".parse().expect("address")) };
        let env = environment(&options, &request().metadata, &endpoints);
        assert!(env.contains(&"ALL_PROXY=socks5h://172.30.0.1:9000".to_owned()), "{env:?}");
        assert!(env.contains(&"NO_PROXY=172.30.0.1,localhost,127.0.0.1".to_owned()), "{env:?}");
    }

    #[test]
    fn limits_mounts_and_labels() {
        let owner = Owner { node: "n1".into(), instance: "docker/dev".into() };
        let net = NetworkInfo {
            name: "aquarium-isolated".into(),
            id: "netid".into(),
            bridge: "br-netid".into(),
            gateway: None,
        };
        let body = create_body(&request(), &owner, &DockerOptions::default(), "img:1", &net, &Endpoints::default());
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(2_000_000_000));
        assert_eq!(host.memory, Some(1 << 30));
        assert_eq!(host.network_mode.as_deref(), Some("netid"));
        assert_eq!(host.privileged, Some(false));
        let mount = &host.mounts.unwrap()[0];
        assert_eq!(mount.target.as_deref(), Some("/mnt/data"));
        assert_eq!(mount.source.as_deref(), Some("fish-00000000-0000-0000-0000-000000000000-data"));
        let labels = body.labels.unwrap();
        assert!(owner.owns(Some(&labels)));
        assert_eq!(uid_of(Some(&labels)), Some(Uuid::nil()));
    }

    #[test]
    fn exit_codes_become_messages() {
        let inspect = |status, code, oom| ContainerInspectResponse {
            state: Some(ContainerState {
                status: Some(status),
                exit_code: Some(code),
                oom_killed: Some(oom),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(state_of(&inspect(ContainerStateStatusEnum::RUNNING, 0, false)), ResourceState::Running);
        assert_eq!(
            state_of(&inspect(ContainerStateStatusEnum::EXITED, 3, false)),
            ResourceState::Ended("exited with code 3".into())
        );
        assert_eq!(
            state_of(&inspect(ContainerStateStatusEnum::EXITED, 137, true)),
            ResourceState::Ended("killed: out of memory (exited with code 137)".into())
        );
    }
}
