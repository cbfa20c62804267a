//! fishd's configuration: `fish.yml`, overridden by command-line flags, with
//! defaults that serve a single node with no configuration at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::{HumanDuration, NodeCapacity};
use serde::Deserialize;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// `capacity:` in fish.yml; each field overrides detection.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CapacityConfig {
    pub cpu: Option<u32>,
    pub ram: Option<u32>,
    pub slots: Option<u32>,
}

/// The whole of fish.yml. Unknown keys are errors: a typo must not silently fall
/// back to a default.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub api: Option<SocketAddr>,
    /// Matched by `nodeFilter`, with the node name.
    #[serde(default)]
    pub identifiers: Vec<String>,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub capacity: CapacityConfig,
    #[serde(default = "default_lifetime")]
    pub default_lifetime: HumanDuration,
    #[serde(default = "default_retry")]
    pub allocation_retry: u32,
    #[serde(default = "default_retention")]
    pub history_retention: HumanDuration,
    /// Requests per minute per non-admin user; 0 = unlimited.
    #[serde(default = "default_rate_limit")]
    pub rate_limit: u32,
    /// How long a client may take for its TLS handshake, to start a request, and to
    /// send each request's headers; slower clients are disconnected (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How often an idle HTTP/2 connection is pinged, and how long its answer may take
    /// before the connection is closed (see [`crate::defaults::HTTP2_KEEP_ALIVE`]).
    #[serde(default = "default_http2_keep_alive")]
    pub http2_keep_alive: HumanDuration,
    /// Open API connections at once; more are closed as soon as they are accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Failed authentications per minute per source address before that address is
    /// answered 429 (valid tokens still work); 0 = unlimited.
    #[serde(default = "default_auth_failure_limit")]
    pub auth_failure_limit: u32,
    /// Open watches per user; more are answered 429.
    #[serde(default = "default_max_watches")]
    pub max_watches_per_user: usize,
    /// How long a shutdown may take to finish in-flight work.
    #[serde(default = "default_grace")]
    pub grace_period: HumanDuration,
    /// On shutdown, deallocate everything first instead of leaving it for the next start.
    #[serde(default)]
    pub drain_and_deallocate: bool,
    /// Recent changes kept so a watch can resume from a `resourceVersion`; older
    /// resumes get 410 and list again. Bounds the event history's share of the file.
    #[serde(default = "default_watch_history")]
    pub watch_history: u64,
    /// How often each allocated resource is inspected: bounds how late an exit or a
    /// lost resource is noticed, at one driver call per resource per interval.
    #[serde(default = "default_inspect")]
    pub inspect_interval: HumanDuration,
    /// Full reconcile pass interval.
    #[serde(default = "default_resync")]
    pub resync_interval: HumanDuration,
    /// When present, exactly these driver instances are enabled, each with its own
    /// settings (`docker/dev` is a second instance of `docker`).
    #[serde(default)]
    pub drivers: Option<BTreeMap<String, serde_json::Value>>,
    /// CI gates (contract section 12), checked by [`crate::gates::config::parse`].
    #[serde(default)]
    pub gates: Option<serde_json::Value>,
    /// Cluster settings (contract section 8).
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// The egress proxy of isolated resources (contract section 10).
    #[serde(default)]
    pub proxy: ProxyConfig,
}

/// `proxy:` in fish.yml.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// `auto`: on 127.0.0.1 (processes, with their token) and on every docker network's
    /// gateway; `off`; or one `ADDR:PORT`.
    #[serde(default = "default_proxy_listen")]
    pub listen: String,
    /// Rules every resource of this node may use, on top of its definition's `allow`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// A relayed connection with no traffic for this long is closed.
    #[serde(default = "default_proxy_idle")]
    pub idle_timeout: HumanDuration,
    /// Time a client has for its greeting and request.
    #[serde(default = "default_proxy_handshake")]
    pub handshake_timeout: HumanDuration,
    /// Relayed connections one resource may hold at once.
    #[serde(default = "default_proxy_per_resource")]
    pub max_connections_per_resource: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).unwrap_or_else(|_| unreachable!("defaults deserialize"))
    }
}

impl ProxyConfig {
    /// The limits this configuration sets.
    pub fn limits(&self) -> crate::proxy::ProxyLimits {
        crate::proxy::ProxyLimits {
            idle: self.idle_timeout.get(),
            handshake: self.handshake_timeout.get(),
            per_resource: self.max_connections_per_resource,
            ..crate::proxy::ProxyLimits::default()
        }
    }

    /// The parsed node rules.
    pub fn rules(&self) -> Result<Vec<api_types::AllowRule>, ConfigError> {
        self.allow
            .iter()
            .enumerate()
            .map(|(i, r)| r.parse().map_err(|e| ConfigError::Invalid(format!("proxy.allow[{i}]: {e}"))))
            .collect()
    }

    /// Where to listen: `None` for `auto`, `Some(None)` for `off`, `Some(addr)` else.
    pub fn listen_addr(&self) -> Result<Option<Option<SocketAddr>>, ConfigError> {
        match self.listen.as_str() {
            "auto" => Ok(None),
            "off" => Ok(Some(None)),
            other => other
                .parse()
                .map(|a| Some(Some(a)))
                .map_err(|_| ConfigError::Invalid(format!("proxy.listen: {other:?} is not auto, off or ADDR:PORT"))),
        }
    }
}

/// `cluster:` in fish.yml.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// `HOST:PORT` of any member, to join through on the first start.
    #[serde(default)]
    pub join: Option<String>,
    /// The join token an admin made (`fishctl create join-token`).
    #[serde(default)]
    pub join_token: Option<String>,
    /// `HOST:PORT` where other nodes reach this one; default: the API address.
    #[serde(default)]
    pub advertise: Option<String>,
    /// How many nodes vote; later ones are learners.
    #[serde(default = "default_voters")]
    pub voters: u32,
    /// A node silent this long is not ready.
    #[serde(default = "default_node_timeout")]
    pub node_timeout: HumanDuration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            join: None,
            join_token: None,
            advertise: None,
            voters: default_voters(),
            node_timeout: default_node_timeout(),
        }
    }
}

fn default_voters() -> u32 {
    3
}
fn default_node_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}

/// Whether `s` looks like `HOST:PORT` with a port number.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

fn default_proxy_listen() -> String {
    "auto".into()
}
fn default_proxy_idle() -> HumanDuration {
    HumanDuration(crate::proxy::ProxyLimits::default().idle)
}
fn default_proxy_handshake() -> HumanDuration {
    HumanDuration(crate::proxy::ProxyLimits::default().handshake)
}
fn default_proxy_per_resource() -> usize {
    crate::proxy::ProxyLimits::default().per_resource
}

fn default_lifetime() -> HumanDuration {
    HumanDuration(Duration::from_secs(12 * 3600))
}
fn default_retry() -> u32 {
    3
}
fn default_retention() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_rate_limit() -> u32 {
    crate::defaults::RATE_LIMIT_PER_MINUTE
}
fn default_http2_keep_alive() -> HumanDuration {
    HumanDuration(crate::defaults::HTTP2_KEEP_ALIVE)
}

fn default_header_read_timeout() -> HumanDuration {
    HumanDuration(crate::defaults::HEADER_READ_TIMEOUT)
}
fn default_max_connections() -> usize {
    crate::defaults::MAX_CONNECTIONS
}
fn default_auth_failure_limit() -> u32 {
    crate::defaults::AUTH_FAILURES_PER_MINUTE
}
fn default_max_watches() -> usize {
    crate::defaults::MAX_WATCHES_PER_USER
}
fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_watch_history() -> u64 {
    crate::defaults::EVENT_HISTORY
}
fn default_inspect() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_resync() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}

impl Default for Config {
    fn default() -> Self {
        // An empty document gives every default.
        serde_json::from_value(serde_json::json!({})).unwrap_or_else(|_| unreachable!("defaults deserialize"))
    }
}

/// The longest lifetime or retention fishd accepts (about ten years): far beyond
/// any CI job, far below what overflows a timestamp.
pub const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Default slots when neither config nor a driver says: enough for a CI host's
/// agents, few enough that a runaway client cannot start thousands of processes.
pub const DEFAULT_SLOTS: u32 = 64;

impl Config {
    /// Reads `path` (YAML).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let value: serde_json::Value = serde_saphyr::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        let value = if value.is_null() { serde_json::json!({}) } else { value };
        serde_path_to_error::deserialize(value)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: format!("{}: {}", e.path(), e.inner()) })
    }

    /// The node name: configured, else the host name.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
        })
    }

    /// The data directory: configured, else `./fish-data`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("fish-data"))
    }

    /// The API address: configured, else `127.0.0.1:8001`.
    pub fn api(&self) -> SocketAddr {
        self.api.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8001)))
    }

    /// The node's capacity: configured values over detected ones.
    pub fn capacity(&self) -> NodeCapacity {
        let cpu = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        NodeCapacity {
            cpu: self.capacity.cpu.unwrap_or(cpu),
            ram: self.capacity.ram.unwrap_or_else(detect_ram_gib),
            slots: self.capacity.slots.unwrap_or(DEFAULT_SLOTS),
            applications: 0,
        }
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(n) = &self.node_name {
            n.parse::<api_types::Name>().map_err(|e| ConfigError::Invalid(format!("nodeName {n:?}: {e}")))?;
        }
        if self.allocation_retry == 0 {
            return Err(ConfigError::Invalid("allocationRetry must be at least 1".into()));
        }
        // Every duration is bounded: `now + defaultLifetime` must stay a time, and an
        // interval of zero (a busy loop) or of years (never) is a typo.
        const DAY: u64 = 24 * 3600;
        for (field, value, most) in [
            ("defaultLifetime", self.default_lifetime, MAX_LIFETIME),
            ("historyRetention", self.history_retention, MAX_LIFETIME),
            ("headerReadTimeout", self.header_read_timeout, Duration::from_secs(3600)),
            ("http2KeepAlive", self.http2_keep_alive, Duration::from_secs(3600)),
            ("gracePeriod", self.grace_period, Duration::from_secs(DAY)),
            ("inspectInterval", self.inspect_interval, Duration::from_secs(DAY)),
            ("resyncInterval", self.resync_interval, Duration::from_secs(DAY)),
        ] {
            if value.get().is_zero() || value.get() > most {
                return Err(ConfigError::Invalid(format!(
                    "{field} must be more than 0 and at most {}",
                    humantime::format_duration(most)
                )));
            }
        }
        if let Some(g) = &self.gates {
            crate::gates::config::parse(g).map_err(ConfigError::Invalid)?;
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid("maxConnections must be at least 1".into()));
        }
        let c = &self.cluster;
        for (key, v) in [("cluster.join", &c.join), ("cluster.advertise", &c.advertise)] {
            if let Some(v) = v
                && !is_host_port(v)
            {
                return Err(ConfigError::Invalid(format!("{key} {v:?}: must be HOST:PORT")));
            }
        }
        match (&c.join, &c.join_token) {
            (Some(_), None) => {
                return Err(ConfigError::Invalid("cluster.join needs cluster.joinToken (--join-token)".into()));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid("cluster.joinToken needs cluster.join (--join HOST:PORT)".into()));
            }
            _ => {}
        }
        if c.voters == 0 {
            return Err(ConfigError::Invalid("cluster.voters must be at least 1".into()));
        }
        if c.node_timeout.get().is_zero() {
            return Err(ConfigError::Invalid("cluster.nodeTimeout must be more than 0".into()));
        }
        self.proxy.rules()?;
        self.proxy.listen_addr()?;
        if self.proxy.max_connections_per_resource == 0 {
            return Err(ConfigError::Invalid("proxy.maxConnectionsPerResource must be at least 1".into()));
        }
        if self.proxy.idle_timeout.get().is_zero() || self.proxy.handshake_timeout.get().is_zero() {
            return Err(ConfigError::Invalid(
                "proxy.idleTimeout and proxy.handshakeTimeout must be more than 0".into(),
            ));
        }
        if let Some(d) = &self.drivers {
            for name in d.keys() {
                let kind = name.split('/').next().unwrap_or("");
                if !matches!(kind, "test" | "process" | "docker" | "qemu") {
                    return Err(ConfigError::Invalid(format!(
                        "drivers.{name}: unknown driver {kind:?} (known: test, process, docker, qemu)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Total memory in whole GiB, from /proc/meminfo.
fn detect_ram_gib() -> u32 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| (kb / (1024 * 1024)) as u32)
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::default();
        assert_eq!(c.allocation_retry, 3);
        assert_eq!(c.api().port(), 8001);
        assert!(c.capacity().cpu >= 1);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fish.yml");
        std::fs::write(&p, "nodeName: a\nallocationRetries: 3\n").unwrap();
        let e = Config::load(&p).unwrap_err().to_string();
        assert!(e.contains("allocationRetries"), "{e}");
        std::fs::write(&p, "nodeName: a\ncapacity: {cpu: 2}\ndrivers: {test: {}, \"test/b\": {}}\n").unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.capacity().cpu, 2);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn cluster_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fish.yml");
        std::fs::write(
            &p,
            "cluster: {join: \"h:8001\", joinToken: t, advertise: \"10.0.0.1:8001\", voters: 5, nodeTimeout: 20s}\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.cluster.voters, 5);
        assert_eq!(c.cluster.node_timeout.get(), Duration::from_secs(20));
        std::fs::write(&p, "cluster: {joins: x}\n").unwrap();
        assert!(Config::load(&p).unwrap_err().to_string().contains("joins"));
        for (yaml, key) in [
            ("cluster: {join: \"nohost\", joinToken: t}", "cluster.join"),
            ("cluster: {join: \"h:1\"}", "cluster.joinToken"),
            ("cluster: {advertise: \"h:0\"}", "cluster.advertise"),
            ("cluster: {voters: 0}", "cluster.voters"),
        ] {
            std::fs::write(&p, yaml).unwrap();
            let e = Config::load(&p).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        assert_eq!(Config::default().cluster.voters, 3);
    }

    #[test]
    fn unbounded_default_lifetime_is_refused_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fish.yml");
        // Parses as a duration, but `now + defaultLifetime` would overflow a timestamp.
        std::fs::write(&p, "defaultLifetime: 100000000years\n").unwrap();
        let e = Config::load(&p).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("defaultLifetime"), "{e}");
        std::fs::write(&p, "resyncInterval: 0s\n").unwrap();
        let e = Config::load(&p).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("resyncInterval"), "{e}");
        std::fs::write(&p, "defaultLifetime: 30d\nhistoryRetention: 7d\n").unwrap();
        assert!(Config::load(&p).unwrap().validate().is_ok());
    }
}
