//! The gates' metrics (`aquarium_gate_*`): jobs seen per action, runners created and
//! retired, registration failures, API calls and remaining budget, queued-job age.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `{gate}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub gate: String,
}

/// `{gate,action}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub gate: String,
    pub action: String,
}

/// `{gate,call}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub gate: String,
    pub call: String,
}

/// Shared by every gate; families share state when cloned.
#[derive(Clone, Debug, Default)]
pub struct GateMetrics {
    jobs_seen: Family<ActionLabels, Counter>,
    runners_created: Family<GateLabels, Counter>,
    runners_retired: Family<GateLabels, Counter>,
    registration_failures: Family<GateLabels, Counter>,
    api_calls: Family<CallLabels, Counter>,
    api_remaining: Family<GateLabels, Gauge>,
    queued_age: Family<GateLabels, Gauge>,
    waiting: Family<GateLabels, Gauge>,
    deliveries_recovered: Family<GateLabels, Counter>,
}

fn g(gate: &str) -> GateLabels {
    GateLabels { gate: gate.to_owned() }
}

impl GateMetrics {
    /// Registers every family in `r` (the `aquarium_` sub-registry).
    pub fn register(&self, r: &mut Registry) {
        r.register("gate_jobs_seen", "workflow_job events accepted, by action", self.jobs_seen.clone());
        r.register("gate_runners_created", "Just-in-time runners registered", self.runners_created.clone());
        r.register("gate_runners_retired", "Runner registrations removed by the gate", self.runners_retired.clone());
        r.register(
            "gate_registration_failures",
            "Failed or timed-out runner registrations",
            self.registration_failures.clone(),
        );
        r.register("gate_api_calls", "Calls to the CI system's API, by call", self.api_calls.clone());
        r.register("gate_api_remaining", "x-ratelimit-remaining of the last answer", self.api_remaining.clone());
        r.register("gate_queued_job_age_seconds", "Age of the oldest queued job", self.queued_age.clone());
        r.register("gate_waiting_jobs", "Queued jobs without a runner", self.waiting.clone());
        r.register(
            "gate_deliveries_recovered",
            "Webhook deliveries that never reached fishd, replayed from the delivery log",
            self.deliveries_recovered.clone(),
        );
    }

    pub fn job_seen(&self, gate: &str, action: &str) {
        self.jobs_seen.get_or_create(&ActionLabels { gate: gate.into(), action: action.into() }).inc();
    }
    pub fn runner_created(&self, gate: &str) {
        self.runners_created.get_or_create(&g(gate)).inc();
    }
    pub fn runner_retired(&self, gate: &str) {
        self.runners_retired.get_or_create(&g(gate)).inc();
    }
    pub fn registration_failed(&self, gate: &str) {
        self.registration_failures.get_or_create(&g(gate)).inc();
    }
    pub fn api_call(&self, gate: &str, call: &str) {
        self.api_calls.get_or_create(&CallLabels { gate: gate.into(), call: call.into() }).inc();
    }
    pub fn api_remaining(&self, gate: &str, n: i64) {
        self.api_remaining.get_or_create(&g(gate)).set(n);
    }
    pub fn delivery_recovered(&self, gate: &str) {
        self.deliveries_recovered.get_or_create(&g(gate)).inc();
    }
    pub fn queue(&self, gate: &str, oldest_seconds: i64, waiting: i64) {
        self.queued_age.get_or_create(&g(gate)).set(oldest_seconds);
        self.waiting.get_or_create(&g(gate)).set(waiting);
    }
}
