//! Prometheus metrics: requests by route and status and their latency (`fishd_http_*`),
//! and the pool metrics of contract section 9 (`aquarium_*`, see [`crate::telemetry`]).

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;
use crate::telemetry::PoolMetrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The registry and the metrics the API owns.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    /// The `aquarium_*` metrics; the reconciler observes a clone of the same families.
    pub pool: PoolMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~16 s: from a token check to a slow apply.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Metrics {
    /// The API's metrics and fresh pool metrics in a new registry.
    pub fn new() -> Self {
        Self::with_registry(PoolMetrics::default(), |_| {})
    }

    /// A registry holding the HTTP metrics, `pool`, and whatever `extra` registers in
    /// the `aquarium_`-prefixed sub-registry (register `raft_term`, it is exported as
    /// `aquarium_raft_term`).
    pub fn with_registry(pool: PoolMetrics, extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        {
            let http = registry.sub_registry_with_prefix("fishd");
            http.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
            http.register("http_request_duration_seconds", "Time to answer (headers) by route", latency.clone());
        }
        let aquarium = registry.sub_registry_with_prefix("aquarium");
        pool.register(aquarium);
        extra(aquarium);
        Metrics { registry, requests, latency, pool }
    }

    fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        // One pair of strings serves both lookups (the families copy a key only when
        // they first see it).
        let request = RequestLabels { method: method.to_owned(), route: route.to_owned(), status };
        self.requests.get_or_create(&request).inc();
        let RequestLabels { method, route, .. } = request;
        self.latency.get_or_create(&RouteLabels { method, route }).observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Middleware counting every routed request by its route template (not its path,
/// so names and uids don't explode the label set).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("other", MatchedPath::as_str);
    state.metrics.observe(method.as_str(), route, resp.status().as_u16(), start.elapsed());
    resp
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    let raft = crate::cluster::status::render_metrics(&state.store);
    // OpenMetrics ends with `# EOF`: the Raft gauges go before it.
    match text.rfind("# EOF") {
        Some(at) => text.insert_str(at, &raft),
        None => text.push_str(&raft),
    }
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
