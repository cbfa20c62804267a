//! Prometheus metrics: requests by route and status, their latency, and gauges the
//! runtime sets (applications by phase).

use std::time::{Duration, Instant};

use api_types::Phase;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The registry and the metrics the API owns.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Metrics named `aquarium_*` (the proxy's), which the contract names without
    /// fishd's prefix.
    aquarium: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    applications: Family<PhaseLabels, Gauge>,
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
    /// The API's metrics in a new registry.
    pub fn new() -> Self {
        Self::with_registry(|_| {})
    }

    /// Like [`Metrics::new`], letting the caller register its own metrics too.
    pub fn with_registry(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::with_prefix("fishd");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram as fn() -> Histogram);
        let applications = Family::<PhaseLabels, Gauge>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer (headers) by route", latency.clone());
        registry.register("applications", "Applications stored, by phase", applications.clone());
        extra(&mut registry);
        Metrics { registry, aquarium: Registry::with_prefix("aquarium"), requests, latency, applications }
    }

    /// Adds metrics named `aquarium_*` (registered by `extra`).
    pub fn with_aquarium(mut self, extra: impl FnOnce(&mut Registry)) -> Self {
        extra(&mut self.aquarium);
        self
    }

    /// Sets the number of applications in `phase` (called by the runtime).
    pub fn set_applications(&self, phase: Phase, count: i64) {
        self.applications.get_or_create(&PhaseLabels { phase: phase.as_str().to_owned() }).set(count);
    }

    fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        let (method, route) = (method.to_owned(), route.to_owned());
        self.requests.get_or_create(&RequestLabels { method: method.clone(), route: route.clone(), status }).inc();
        self.latency.get_or_create(&RouteLabels { method, route }).observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        let encoded = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.aquarium))
            .and_then(|()| encode_eof(&mut out));
        if let Err(e) = encoded {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Middleware counting every routed request by its route template (not its path,
/// so names and uids don't explode the label set).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "other".into());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    state.metrics.observe(&method, &route, resp.status().as_u16(), start.elapsed());
    resp
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, body = String, content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
