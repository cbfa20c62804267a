//! Allocation and deallocation throughput and latency, observed the way a CI
//! server observes them: requests over HTTPS, outcomes from a watch.
//!
//! A [`Tracker`] holds one watch on applications (resumed from the current
//! revision, so it carries no initial snapshot) and stamps the moment each
//! application is first seen ALLOCATED and DEALLOCATED. A [`burst`] creates `n`
//! applications from `concurrency` connections at once, waits until every one is
//! ALLOCATED, then deallocates them all the same way.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::daemon::Daemon;
use crate::stats::{Latency, round3};

/// First sighting of each phase that matters, per application name.
#[derive(Default)]
struct Seen {
    allocated: HashMap<String, Instant>,
    deallocated: HashMap<String, Instant>,
    failure: Option<String>,
}

/// The fields of a watch line the tracker reads. Everything else is skipped unbuilt:
/// parsing each line into a whole `Value` was most of this process's tracking work,
/// and the CPU it takes is taken from the fishd processes sharing the cores (more so
/// on the cluster side, whose three watches each carry every application's events).
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(default, borrow)]
    object: LineObject<'a>,
}

#[derive(Default, Deserialize)]
struct LineObject<'a> {
    #[serde(default, borrow)]
    metadata: LineMeta<'a>,
    #[serde(default, borrow)]
    status: LineStatus<'a>,
}

#[derive(Default, Deserialize)]
struct LineMeta<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct LineStatus<'a> {
    #[serde(default, borrow)]
    phase: Option<Cow<'a, str>>,
}

/// A watch that stamps when applications reach ALLOCATED and DEALLOCATED.
pub struct Tracker {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

/// A phase the tracker stamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    Allocated,
    Deallocated,
}

impl Tracker {
    /// Opens the watch from the store's current revision.
    pub async fn start(d: &Daemon) -> Result<Tracker> {
        let rv = d.revision().await?;
        let r = d
            .new_client()?
            .get(d.url(&format!("/api/v1/applications?watch=true&resourceVersion={rv}")))
            .bearer_auth(d.client_token())
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("watch failed: {}", r.status());
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            let mut body = r.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(chunk) = body.next().await {
                let now = Instant::now();
                let Ok(chunk) = chunk else { break };
                buf.extend_from_slice(&chunk);
                let mut start = 0;
                while let Some(len) = buf[start..].iter().position(|b| *b == b'\n') {
                    let line = &buf[start..start + len];
                    start += len + 1;
                    let mut seen = s.lock().unwrap_or_else(|e| e.into_inner());
                    match serde_json::from_slice::<Line>(line) {
                        Ok(ev) if ev.event_type != "ERROR" => {
                            let name = ev.object.metadata.name.unwrap_or_default();
                            match ev.object.status.phase.as_deref() {
                                Some("ALLOCATED") => {
                                    seen.allocated.entry(name.into_owned()).or_insert(now);
                                }
                                Some("DEALLOCATED") | Some("ERROR") => {
                                    seen.deallocated.entry(name.into_owned()).or_insert(now);
                                }
                                _ => {}
                            }
                        }
                        // An ERROR line's object is a status, not an application.
                        _ => {
                            if let Ok(ev) = serde_json::from_slice::<Value>(line)
                                && ev["type"] == "ERROR"
                            {
                                seen.failure = Some(format!("the tracking watch was closed: {}", ev["object"]));
                                return;
                            }
                        }
                    }
                }
                buf.drain(..start);
            }
            s.lock().unwrap_or_else(|e| e.into_inner()).failure.get_or_insert("the tracking watch ended".into());
        });
        Ok(Tracker { seen, task })
    }

    /// Waits until every name has `stamp`, up to `limit`; returns their stamps.
    pub async fn wait(&self, names: &[String], stamp: Stamp, limit: Duration) -> Result<Vec<Instant>> {
        let deadline = Instant::now() + limit;
        loop {
            {
                let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(f) = &seen.failure {
                    bail!("{f}");
                }
                let map = match stamp {
                    Stamp::Allocated => &seen.allocated,
                    Stamp::Deallocated => &seen.deallocated,
                };
                let got: Vec<Instant> = names.iter().filter_map(|n| map.get(n).copied()).collect();
                if got.len() == names.len() {
                    return Ok(got);
                }
                if Instant::now() > deadline {
                    bail!("only {} of {} applications reached {stamp:?} within {limit:?}", got.len(), names.len());
                }
            }
            // Waiting only: the stamps come from the watch task, not from this poll.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An application of `label` named `name`, as JSON.
pub fn application(name: &str, label: &str) -> Value {
    json!({"apiVersion": "aquarium.fish/v1", "kind": "Application",
           "metadata": {"name": name}, "spec": {"label": label}})
}

/// The benchmark label: one simulated resource of the `test` driver (latency 0).
pub fn label_yaml(name: &str) -> String {
    format!(
        "apiVersion: aquarium.fish/v1\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  definitions:\n    \
         - driver: test\n      resources: {{cpu: 1, ram: 1, lifetime: 12h}}\n"
    )
}

/// One direction of a burst.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    /// Applications per second, from the first request sent to the last one seen
    /// in the target phase.
    pub apps_per_s: f64,
    /// How fast the API took the requests (requests per second until the last answer).
    pub requests_per_s: f64,
    /// Per application: request sent → target phase seen on the watch.
    pub latency: Latency,
    pub seconds: f64,
    /// Per node the requests went to (on a cluster): request sent → its answer. A
    /// burst is as fast as its requests are answered, so this shows which path (the
    /// leader's own writes, or a follower's forwarded ones) holds it back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub request_latency_by_node: Vec<Latency>,
}

/// A burst of `n` applications created and then deallocated.
#[derive(Clone, Debug, Serialize)]
pub struct Burst {
    pub applications: usize,
    pub concurrency: usize,
    /// Applications stored before the burst began.
    pub stored_before: usize,
    /// Creation → ALLOCATED.
    pub allocate: Flow,
    /// Deallocation request → DEALLOCATED.
    pub deallocate: Flow,
    /// fishd's CPU use over the whole burst, in cores.
    pub fishd_cores: f64,
    /// How many of the burst each node was elected for (its `status.node`), when
    /// asked for; read once all were ALLOCATED, outside the timed flows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<BTreeMap<String, usize>>,
}

/// Where a request worker sends: its own client (connection) and the node it talks to.
#[derive(Clone)]
pub struct Target {
    pub client: reqwest::Client,
    /// `https://HOST:PORT` of the node.
    pub base: String,
    pub token: String,
    /// The node's index in the list of nodes (and of their trackers).
    pub node: usize,
}

impl Target {
    /// One target per client, all on `d` (node 0).
    pub fn all_on(d: &Daemon, clients: &[reqwest::Client]) -> Vec<Target> {
        clients
            .iter()
            .map(|c| Target { client: c.clone(), base: d.url(""), token: d.client_token().to_owned(), node: 0 })
            .collect()
    }
}

/// What [`fan_requests`] did: per name, when its request was sent and to which node;
/// and the instant of the last answer.
struct Fanned {
    sent: Vec<Instant>,
    node: Vec<usize>,
    /// Request sent → answer read.
    took: Vec<Duration>,
    answered: Instant,
}

/// Sends `path(name)` with `body(name)` for every name from `targets` at once (each
/// worker takes the next name as soon as its previous answer is read). With `on`,
/// name `i` goes only to a worker of node `on[i]` (each client acts on what it made:
/// a user sees and deallocates only its own applications).
async fn fan_requests(
    targets: &[Target],
    names: &[String],
    path: fn(&str) -> String,
    body: impl Fn(&str) -> Value + Send + Sync + 'static,
    expect: u16,
    on: Option<&[usize]>,
) -> Result<Fanned> {
    let node_count = targets.iter().map(|t| t.node + 1).max().unwrap_or(0);
    // Per node: the names its workers take and the next one; without `on`, one queue
    // of every name shared by all of them.
    let queue_of = |mine: Vec<usize>| Arc::new((AtomicUsize::new(0), mine));
    let queues: Vec<Arc<(AtomicUsize, Vec<usize>)>> = match on {
        None => vec![queue_of((0..names.len()).collect()); node_count],
        Some(on) => {
            (0..node_count).map(|k| queue_of((0..names.len()).filter(|i| on.get(*i) == Some(&k)).collect())).collect()
        }
    };
    let names: Arc<Vec<String>> = Arc::new(names.to_vec());
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for t in targets {
        let queue = queues[t.node].clone();
        let (t, names, body) = (t.clone(), names.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent: Vec<(usize, Instant, Duration)> = Vec::new();
            while let Some(&i) = queue.1.get(queue.0.fetch_add(1, Ordering::Relaxed)) {
                let Some(name) = names.get(i) else { break };
                let t0 = Instant::now();
                let r = t
                    .client
                    .post(format!("{}{}", t.base, path(name)))
                    .bearer_auth(&t.token)
                    .json(&body(name))
                    .send()
                    .await?;
                let code = r.status().as_u16();
                if code != expect {
                    let text = r.text().await.unwrap_or_default();
                    bail!("{} on {} answered {code}, expected {expect}: {text}", path(name), t.base);
                }
                r.bytes().await?;
                sent.push((i, t0, t0.elapsed()));
            }
            Ok::<_, anyhow::Error>((t.node, sent, Instant::now()))
        }));
    }
    let mut stamps = vec![None; names.len()];
    let mut nodes = vec![0; names.len()];
    let mut took = vec![Duration::ZERO; names.len()];
    let mut last = Instant::now();
    for t in tasks {
        let (node, sent, end) = t.await.context("request worker panicked")??;
        for (i, t0, d) in sent {
            stamps[i] = Some(t0);
            nodes[i] = node;
            took[i] = d;
        }
        last = end.max(last);
    }
    let stamps: Option<Vec<Instant>> = stamps.into_iter().collect();
    Ok(Fanned { sent: stamps.context("a request was not sent")?, node: nodes, took, answered: last })
}

/// Waits until every name reached `stamp` on the tracker of the node its request
/// went to; returns the stamps in the order of `names`.
async fn wait_each(
    trackers: &[&Tracker],
    names: &[String],
    fanned: &Fanned,
    stamp: Stamp,
    limit: Duration,
) -> Result<Vec<Instant>> {
    let mut out = vec![None; names.len()];
    for (k, tracker) in trackers.iter().enumerate() {
        let idx: Vec<usize> = (0..names.len()).filter(|i| fanned.node[*i] == k).collect();
        let mine: Vec<String> = idx.iter().map(|i| names[*i].clone()).collect();
        let got = tracker.wait(&mine, stamp, limit).await?;
        for (i, at) in idx.into_iter().zip(got) {
            out[i] = Some(at);
        }
    }
    let out: Option<Vec<Instant>> = out.into_iter().collect();
    out.context("a request went to a node without a tracker")
}

fn flow(fanned: &Fanned, reached: &[Instant]) -> Flow {
    let (sent, answered) = (&fanned.sent, fanned.answered);
    let first = sent.iter().min().copied().unwrap_or_else(Instant::now);
    let last = reached.iter().max().copied().unwrap_or(first);
    let secs = (last - first).as_secs_f64().max(1e-9);
    let latencies = sent.iter().zip(reached).map(|(s, r)| r.saturating_duration_since(*s)).collect();
    Flow {
        apps_per_s: round3(sent.len() as f64 / secs),
        requests_per_s: round3(sent.len() as f64 / (answered - first).as_secs_f64().max(1e-9)),
        latency: Latency::of(latencies),
        seconds: round3(secs),
        request_latency_by_node: by_node(fanned),
    }
}

/// Request latencies per node, when the requests went to more than one.
fn by_node(fanned: &Fanned) -> Vec<Latency> {
    let nodes = fanned.node.iter().max().map_or(0, |n| n + 1);
    if nodes < 2 {
        return Vec::new();
    }
    (0..nodes)
        .map(|k| {
            let mine = fanned.node.iter().zip(&fanned.took).filter(|(n, _)| **n == k).map(|(_, d)| *d);
            Latency::of(mine.collect())
        })
        .collect()
}

/// How long a burst of `n` may take in each direction before the suite gives up.
fn limit(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(50 * n as u64)
}

/// Creates `n` applications `<prefix>-<i>` of `label` from `clients` at once, waits
/// for all to be ALLOCATED, then deallocates them all and waits for DEALLOCATED.
pub async fn burst(
    d: &Daemon,
    tracker: &Tracker,
    clients: &[reqwest::Client],
    prefix: &str,
    label: &str,
    n: usize,
    stored_before: usize,
) -> Result<Burst> {
    burst_spread(&[d], &[tracker], &Target::all_on(d, clients), prefix, label, n, stored_before, false).await
}

/// [`burst`] over several nodes: each worker of `targets` sends to its node, and
/// each application's phases are seen on the watch of the node it was sent to (as
/// the client that sent it would see them). `nodes[k]` has the tracker `trackers[k]`;
/// the CPU figure is the sum over `nodes`. With `place`, the result says how many
/// applications each node was elected for.
#[allow(clippy::too_many_arguments)]
pub async fn burst_spread(
    nodes: &[&Daemon],
    trackers: &[&Tracker],
    targets: &[Target],
    prefix: &str,
    label: &str,
    n: usize,
    stored_before: usize,
    place: bool,
) -> Result<Burst> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let cpu = || nodes.iter().map(|d| d.cpu_seconds()).sum::<Option<f64>>();
    let cpu0 = cpu();
    let t0 = Instant::now();
    let owned = label.to_owned();
    let created =
        fan_requests(targets, &names, |_| "/api/v1/applications".into(), move |n| application(n, &owned), 201, None)
            .await?;
    let allocated = wait_each(trackers, &names, &created, Stamp::Allocated, limit(n)).await?;
    let allocate = flow(&created, &allocated);
    let placement = match (place, nodes.first()) {
        (true, Some(d)) => Some(placement(d, label, prefix).await?),
        _ => None,
    };
    // Each node's clients deallocate what they created: a CI user may act only on its own.
    let path = |n: &str| format!("/api/v1/applications/{n}/deallocate");
    let freed = fan_requests(targets, &names, path, |_| Value::Null, 202, Some(&created.node)).await?;
    let deallocated = wait_each(trackers, &names, &freed, Stamp::Deallocated, limit(n)).await?;
    let deallocate = flow(&freed, &deallocated);
    let fishd_cores = match (cpu0, cpu()) {
        (Some(a), Some(b)) => round3((b - a) / t0.elapsed().as_secs_f64()),
        _ => 0.0,
    };
    Ok(Burst {
        applications: n,
        concurrency: targets.len(),
        stored_before,
        allocate,
        deallocate,
        fishd_cores,
        placement,
    })
}

/// How many applications `<prefix>-*` of `label` each node was elected for, as `d`
/// lists them.
pub async fn placement(d: &Daemon, label: &str, prefix: &str) -> Result<BTreeMap<String, usize>> {
    let (code, list) = d.get(&format!("/api/v1/applications?label={label}")).await?;
    if code != 200 {
        bail!("listing the applications of {label} on {}: {code} {list}", d.name);
    }
    let mut per_node = BTreeMap::new();
    let start = format!("{prefix}-");
    for a in list["items"].as_array().into_iter().flatten() {
        if a["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(&start)) {
            let node = a["status"]["node"].as_str().unwrap_or("(none)").to_owned();
            *per_node.entry(node).or_default() += 1;
        }
    }
    Ok(per_node)
}

/// One application at a time, on an otherwise idle node: the latency a single CI
/// job sees.
#[derive(Clone, Debug, Serialize)]
pub struct Single {
    pub stored_before: usize,
    /// Creation request sent → ALLOCATED seen.
    pub allocate: Latency,
    /// Deallocation request sent → DEALLOCATED seen.
    pub deallocate: Latency,
}

/// Allocates and deallocates `k` applications one after the other.
pub async fn singles(
    d: &Daemon,
    tracker: &Tracker,
    prefix: &str,
    label: &str,
    k: usize,
    stored_before: usize,
) -> Result<Single> {
    singles_spread(&[d], &[tracker], prefix, label, k, stored_before).await
}

/// [`singles`] over several nodes in turn: application `i` is created and
/// deallocated on `nodes[i % len]` and timed on that node's tracker.
pub async fn singles_spread(
    nodes: &[&Daemon],
    trackers: &[&Tracker],
    prefix: &str,
    label: &str,
    k: usize,
    stored_before: usize,
) -> Result<Single> {
    let mut alloc = Vec::new();
    let mut dealloc = Vec::new();
    for i in 0..k {
        let (d, tracker) = (nodes[i % nodes.len()], trackers[i % trackers.len()]);
        let name = format!("{prefix}-{i}");
        let names = [name.clone()];
        let t0 = Instant::now();
        let (code, v) = d.post_as_client("/api/v1/applications", &application(&name, label)).await?;
        if code != 201 {
            bail!("create {name} on {}: {code} {v}", d.name);
        }
        let at = tracker.wait(&names, Stamp::Allocated, Duration::from_secs(30)).await?;
        alloc.push(at[0] - t0);
        let t0 = Instant::now();
        let (code, v) = d.post_as_client(&format!("/api/v1/applications/{name}/deallocate"), &Value::Null).await?;
        if code != 202 {
            bail!("deallocate {name} on {}: {code} {v}", d.name);
        }
        let at = tracker.wait(&names, Stamp::Deallocated, Duration::from_secs(30)).await?;
        dealloc.push(at[0] - t0);
    }
    Ok(Single { stored_before, allocate: Latency::of(alloc), deallocate: Latency::of(dealloc) })
}
