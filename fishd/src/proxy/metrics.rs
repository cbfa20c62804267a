//! The proxy's counters, exposed unprefixed as `aquarium_proxy_*` beside fishd's own.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelLabels {
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    label: String,
    /// `up` (resource to target) or `down`.
    direction: &'static str,
}

/// Refusals, relayed connections and bytes, by label.
#[derive(Clone, Debug, Default)]
pub struct ProxyMetrics {
    denied: Family<LabelLabels, Counter>,
    connections: Family<LabelLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
}

impl ProxyMetrics {
    /// Registers the counters in `registry` (prefixed `aquarium` by the caller).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("proxy_denied", "Proxy requests refused, by label", self.denied.clone());
        registry.register("proxy_connections", "Connections relayed by the proxy, by label", self.connections.clone());
        registry.register("proxy_bytes", "Bytes relayed by the proxy, by label and direction", self.bytes.clone());
    }

    /// One refusal for a resource of `label` (`unknown` when no resource was found).
    pub fn denied(&self, label: &str) {
        self.denied.get_or_create(&LabelLabels { label: label.to_owned() }).inc();
    }

    /// One relayed connection.
    pub fn connected(&self, label: &str) {
        self.connections.get_or_create(&LabelLabels { label: label.to_owned() }).inc();
    }

    /// Bytes relayed each way.
    pub fn relayed(&self, label: &str, up: u64, down: u64) {
        self.bytes.get_or_create(&BytesLabels { label: label.to_owned(), direction: "up" }).inc_by(up);
        self.bytes.get_or_create(&BytesLabels { label: label.to_owned(), direction: "down" }).inc_by(down);
    }
}
