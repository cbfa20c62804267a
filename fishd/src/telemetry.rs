//! The pool metrics of contract section 9: how long applications wait and how
//! allocations go, and what every node has and uses.
//!
//! The reconciler observes the histograms and counters at the moment it writes an
//! allocation (or a failed attempt) of its own node, so in a cluster each allocation is
//! counted once, by the node that made it; summing over nodes gives the pool. The
//! gauges are set from the stored nodes and applications (the same on every node).
//! Families share their state when cloned, so [`PoolMetrics::register`] hands clones to
//! a registry and the reconciler keeps observing its own copy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use api_types::{Node, Phase};

/// `{label}` of the queue-time histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelLabels {
    pub label: String,
}

/// `{driver}` of the allocation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriverLabels {
    pub driver: String,
}

/// `{node,resource}` of the capacity gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeResourceLabels {
    pub node: String,
    pub resource: String,
}

/// `{node}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

/// `{phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Queue times run from milliseconds (an idle pool) to hours (a pool out of capacity
/// for a night): 10 ms .. ~5.8 h in 20 doublings.
fn queue_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 22))
}

/// Allocations run from a millisecond (test driver) to minutes (an image pull, a VM
/// boot): 1 ms .. ~17 min.
fn allocation_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 21))
}

/// The metrics of the pool; cheap to share behind an `Arc`.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    /// `aquarium_queue_seconds{label}`: NEW -> ALLOCATED.
    pub queue_seconds: HistogramFamily<LabelLabels>,
    /// `aquarium_allocation_seconds{driver}`: ELECTED -> ALLOCATED.
    pub allocation_seconds: HistogramFamily<DriverLabels>,
    /// `aquarium_allocation_failures_total{driver}`.
    pub allocation_failures: Family<DriverLabels, Counter>,
    /// `aquarium_applications{phase}`.
    pub applications: Family<PhaseLabels, Gauge>,
    /// `aquarium_node_capacity{node,resource}`.
    pub node_capacity: Family<NodeResourceLabels, Gauge>,
    /// `aquarium_node_used{node,resource}`.
    pub node_used: Family<NodeResourceLabels, Gauge>,
    /// `aquarium_node_ready{node}`: 1 when ready, 0 when NotReady (an alert's input).
    pub node_ready: Family<NodeLabels, Gauge>,
    /// `aquarium_node_maintenance{node}`: 1 in maintenance.
    pub node_maintenance: Family<NodeLabels, Gauge>,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        PoolMetrics {
            queue_seconds: Family::new_with_constructor(queue_histogram as fn() -> Histogram),
            allocation_seconds: Family::new_with_constructor(allocation_histogram as fn() -> Histogram),
            allocation_failures: Family::default(),
            applications: Family::default(),
            node_capacity: Family::default(),
            node_used: Family::default(),
            node_ready: Family::default(),
            node_maintenance: Family::default(),
        }
    }
}

impl PoolMetrics {
    /// Registers every metric in `registry`, which should carry the `aquarium` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("queue_seconds", "Time from NEW to ALLOCATED, by label", self.queue_seconds.clone());
        registry.register(
            "allocation_seconds",
            "Time from ELECTED to ALLOCATED (the driver's allocation), by driver",
            self.allocation_seconds.clone(),
        );
        registry.register(
            "allocation_failures",
            "Failed allocation attempts on this node, by driver",
            self.allocation_failures.clone(),
        );
        registry.register("applications", "Applications stored, by phase", self.applications.clone());
        registry.register("node_capacity", "Capacity of each node (cpu, ram GiB, slots)", self.node_capacity.clone());
        registry.register(
            "node_used",
            "Capacity in use on each node (cpu, ram GiB, slots, applications)",
            self.node_used.clone(),
        );
        registry.register("node_ready", "1 when the node is ready, 0 when NotReady", self.node_ready.clone());
        registry.register("node_maintenance", "1 when the node is in maintenance", self.node_maintenance.clone());
    }

    /// An application of `label` became ALLOCATED by `driver`: `queued` after its
    /// creation, `allocating` after its election.
    pub fn allocated(&self, label: &str, driver: &str, queued: std::time::Duration, allocating: std::time::Duration) {
        self.queue_seconds.get_or_create(&LabelLabels { label: label.to_owned() }).observe(queued.as_secs_f64());
        self.allocation_seconds
            .get_or_create(&DriverLabels { driver: driver.to_owned() })
            .observe(allocating.as_secs_f64());
    }

    /// An allocation attempt with `driver` failed.
    pub fn allocation_failed(&self, driver: &str) {
        self.allocation_failures.get_or_create(&DriverLabels { driver: driver.to_owned() }).inc();
    }

    /// Sets the number of applications in `phase`.
    pub fn set_applications(&self, phase: Phase, count: i64) {
        self.applications.get_or_create(&PhaseLabels { phase: phase.as_str().to_owned() }).set(count);
    }

    /// Sets the capacity gauges from the stored nodes; nodes that are gone disappear.
    pub fn set_nodes(&self, nodes: &[Node]) {
        self.node_capacity.clear();
        self.node_used.clear();
        self.node_ready.clear();
        self.node_maintenance.clear();
        for n in nodes {
            let node = n.metadata.name_str().to_owned();
            let (cap, used) = (&n.status.capacity, &n.status.allocated);
            for (resource, total, inuse) in [
                ("cpu", cap.cpu, used.cpu),
                ("ram", cap.ram, used.ram),
                ("slots", cap.slots, used.slots),
                ("applications", cap.slots, used.applications),
            ] {
                let labels = NodeResourceLabels { node: node.clone(), resource: resource.to_owned() };
                if resource != "applications" {
                    self.node_capacity.get_or_create(&labels).set(i64::from(total));
                }
                self.node_used.get_or_create(&labels).set(i64::from(inuse));
            }
            let labels = NodeLabels { node };
            self.node_ready.get_or_create(&labels).set(i64::from(n.status.ready));
            self.node_maintenance.get_or_create(&labels).set(i64::from(n.status.maintenance));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_aquarium_prefix() {
        let m = PoolMetrics::default();
        let mut reg = Registry::with_prefix("aquarium");
        m.register(&mut reg);
        m.allocated("ubuntu", "test", std::time::Duration::from_millis(30), std::time::Duration::from_millis(2));
        m.allocation_failed("test");
        m.set_applications(Phase::New, 3);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("encode");
        for want in [
            "aquarium_queue_seconds_count{label=\"ubuntu\"} 1",
            "aquarium_allocation_seconds_count{driver=\"test\"} 1",
            "aquarium_allocation_failures_total{driver=\"test\"} 1",
            "aquarium_applications{phase=\"NEW\"} 3",
        ] {
            assert!(out.contains(want), "{want} missing in\n{out}");
        }
    }
}
