//! A closed-loop load generator: `N` workers, each with its own connection, each
//! sending its next request as soon as the previous answer is read. Throughput is
//! the number of requests that finished inside the measured window divided by its
//! length; a warm-up before it opens the connections and fills caches.
//!
//! A figure and its reference are measured in interleaved slices (reference,
//! figure, reference, figure...) and each side's slices are merged, so a change in
//! the machine's load during the run weighs on both alike.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::{Latency, round3};

/// How long workers run before the first slice of a point opens (new connections).
pub const WARMUP: Duration = Duration::from_millis(500);
/// Before later slices: the connections are open already.
pub const REWARM: Duration = Duration::from_millis(100);

/// One load point: an endpoint at a concurrency.
#[derive(Clone, Debug, Serialize)]
pub struct LoadResult {
    pub concurrency: usize,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub latency: Latency,
    /// fishd's CPU use during the window, in cores.
    pub fishd_cores: f64,
    /// The load generator's own CPU use during the window, in cores (it shares the
    /// machine with fishd).
    pub client_cores: f64,
    /// Raw samples, kept for merging slices.
    #[serde(skip)]
    samples: Vec<Duration>,
    #[serde(skip)]
    cpu: (f64, f64),
}

impl LoadResult {
    /// One result from slices of the same point.
    pub fn merge(slices: &[LoadResult]) -> LoadResult {
        let seconds: f64 = slices.iter().map(|r| r.seconds).sum();
        let samples: Vec<Duration> = slices.iter().flat_map(|r| r.samples.iter().copied()).collect();
        let cpu = slices.iter().fold((0.0, 0.0), |a, r| (a.0 + r.cpu.0, a.1 + r.cpu.1));
        let per_s = |x: f64| if seconds > 0.0 { round3(x / seconds) } else { 0.0 };
        LoadResult {
            concurrency: slices.first().map(|r| r.concurrency).unwrap_or(0),
            seconds: round3(seconds),
            requests: samples.len() as u64,
            errors: slices.iter().map(|r| r.errors).sum(),
            rps: per_s(samples.len() as f64),
            latency: Latency::of(samples.clone()),
            fishd_cores: per_s(cpu.0),
            client_cores: per_s(cpu.1),
            samples,
            cpu,
        }
    }
}

/// Runs `request(client, worker, seq)` from `clients.len()` workers for
/// `warmup` + `window`. `request` answers whether the request succeeded.
/// `fishd_cpu` reads fishd's CPU seconds so far.
pub async fn closed_loop<F, Fut>(
    clients: &[reqwest::Client],
    warmup: Duration,
    window: Duration,
    fishd_cpu: impl Fn() -> Option<f64>,
    request: F,
) -> LoadResult
where
    F: Fn(reqwest::Client, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let request = Arc::new(request);
    let start = Instant::now();
    let open = start + warmup;
    let close = open + window;
    let mut tasks = Vec::new();
    for (w, client) in clients.iter().enumerate() {
        let client = client.clone();
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut done: Vec<(Duration, bool)> = Vec::new();
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= close {
                    break;
                }
                let ok = request(client.clone(), w, seq).await;
                let t1 = Instant::now();
                seq += 1;
                if t1 >= open && t1 < close {
                    done.push((t1 - t0, ok));
                }
            }
            done
        }));
    }
    // CPU counters are read at the window's edges, so warm-up work is not counted.
    tokio::time::sleep_until(open.into()).await;
    let (f0, c0) = (fishd_cpu(), crate::daemon::own_cpu_seconds());
    tokio::time::sleep_until(close.into()).await;
    let (f1, c1) = (fishd_cpu(), crate::daemon::own_cpu_seconds());
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        for (d, ok) in t.await.unwrap_or_default() {
            if ok {
                latencies.push(d);
            } else {
                errors += 1;
            }
        }
    }
    let secs = window.as_secs_f64();
    let used = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let cpu = (used(f0, f1), used(c0, c1));
    LoadResult {
        concurrency: clients.len(),
        seconds: secs,
        requests: latencies.len() as u64,
        errors,
        rps: round3(latencies.len() as f64 / secs),
        latency: Latency::of(latencies.clone()),
        fishd_cores: round3(cpu.0 / secs),
        client_cores: round3(cpu.1 / secs),
        samples: latencies,
        cpu,
    }
}
