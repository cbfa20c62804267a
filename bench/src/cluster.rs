//! The cluster part (issue 12, must-show 4): create → ALLOCATED one at a time and a
//! burst's throughput on a 3-node cluster on this machine, next to a single node
//! measured in the same run, and the failover time. Written to
//! `bench/results/cluster.json` and `cluster.md`.
//!
//! - Single node: one fishd, the same singles and burst as the cluster; measured
//!   before the cluster part and again after it (the node idles in between), and
//!   the better of the two is the reference, so a quieter moment on this shared
//!   machine favours the reference, never the cluster.
//! - Cluster: node `a` alone, then two join tokens from its admin API and nodes `b`
//!   and `c` started with `cluster: {join, joinToken}`; measured once `GET
//!   /api/v1/cluster` shows one leader and two voters on every node. Creates go to
//!   the three nodes in turn (singles) or from workers spread over them (burst), and
//!   each application is timed on a watch of the node it was sent to.
//! - Pool burst (issue 13, must-show 5): the same number of applications created
//!   through the three nodes at once, of a label whose `slots` let each node hold only
//!   a third of them and a tenth more at once, so the burst completes only if the
//!   election spreads it over all three; reported next to the single node's burst of
//!   the same size, with where each burst ran (`status.node` per application).
//! - Failover: the leader is killed with SIGKILL; the figure is the time from the
//!   signal to the first write (a label applied) a survivor accepts. Attempts go out
//!   every [`FAILOVER_POLL`] to the survivors in turn, each with its own deadline, so
//!   a hanging attempt never delays the next. The killed node is then started again
//!   without flags and the cluster is whole before the next run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::info;

use crate::alloc::{Burst, Single, Target, Tracker, burst_spread, label_yaml, singles_spread};
use crate::daemon::{self, Daemon, Join};
use crate::report::Target as Goal;
use crate::stats::{Latency, ratio, round3};

/// Nodes in the cluster.
const NODES: usize = 3;
/// Node names.
const NAMES: [&str; NODES] = ["a", "b", "c"];
/// Connections of a burst, on a single node and (spread) on the cluster.
const CONNECTIONS: usize = 16;
/// Bursts per side. A burst lasts about a second, and on this shared 2-core machine
/// one burst in a few runs at two thirds of its speed (another process woke up): the
/// median of three keeps such a burst from deciding either side's figure.
const BURST_ROUNDS: usize = 3;
/// Failover runs.
const FAILOVERS: usize = 3;
/// How often a write is tried on a survivor after the leader was killed.
const FAILOVER_POLL: Duration = Duration::from_millis(20);
/// Each failover write attempt's own deadline.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// The longest the cluster may take to (re)form.
const FORM_LIMIT: Duration = Duration::from_secs(60);
/// Untimed one-at-a-time allocations before the timed ones (first requests on new
/// connections, first pages read).
const WARMUP_SINGLES: usize = 3;

/// How much the part does.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sizes {
    /// One-at-a-time allocations timed per side.
    pub singles: usize,
    /// Applications in a burst.
    pub burst: usize,
    /// Bursts per side; a side's figures are those of its median burst.
    pub burst_rounds: usize,
    pub connections: usize,
    pub failovers: usize,
}

impl Sizes {
    pub fn new(quick: bool) -> Sizes {
        if quick {
            Sizes { singles: 20, burst: 200, burst_rounds: 1, connections: CONNECTIONS, failovers: 1 }
        } else {
            Sizes {
                singles: 100,
                burst: 1000,
                burst_rounds: BURST_ROUNDS,
                connections: CONNECTIONS,
                failovers: FAILOVERS,
            }
        }
    }
}

/// Everything the cluster part measured.
#[derive(Debug, Serialize)]
pub struct ClusterResults {
    pub meta: Meta,
    pub sizes: Sizes,
    /// The single-node reference: the better figure of its two measurements.
    pub single: Side,
    /// The single node measured before the cluster part.
    pub single_before: Side,
    /// The same node measured again after the cluster's singles and burst.
    pub single_after: Side,
    pub cluster: Side,
    /// The cluster's burst again with every connection on the leader: nothing is
    /// forwarded. Not a target figure (a pool's clients use every node); it shows how
    /// much of the gap to the single node is the followers' forwarding.
    pub leader_only: Option<LeaderOnly>,
    /// The burst that needs all three nodes.
    pub pool: Pool,
    /// Spawn of node `a` → one leader and two voters on every node.
    pub cluster_formed_ms: f64,
    pub failover: Failover,
    pub targets: Vec<Goal>,
}

/// When and where the part ran, and how busy the machine was.
#[derive(Debug, Serialize)]
pub struct Meta {
    pub date: String,
    pub git_commit: String,
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages at the start and end of the part.
    pub loadavg_start: [f64; 3],
    pub loadavg_end: [f64; 3],
    pub seconds: f64,
    pub quick: bool,
    pub notes: Vec<String>,
}

/// One side's figures: singles, then a burst.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub nodes: usize,
    /// Create → ALLOCATED (and deallocate → DEALLOCATED), one at a time.
    pub singles: Single,
    /// The median of the side's bursts (by create → ALLOCATED throughput).
    pub burst: Burst,
    /// Create → ALLOCATED throughput of each burst, in the order they ran.
    pub burst_rounds_apps_per_s: Vec<f64>,
    /// 1-minute load average when this side's measurement began.
    pub loadavg_1m: f64,
    /// Raft log entries the burst took (both directions), per application: what each
    /// node's state machine applied and each log appended, per application.
    pub burst_log_entries_per_app: f64,
    /// The cluster's leader after the burst (its requests are not forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The pool burst: the cluster's burst again, each node holding at most `room_per_node`.
#[derive(Clone, Debug, Serialize)]
pub struct Pool {
    /// How many of the burst's applications one node can hold at once.
    pub room_per_node: u32,
    /// `resources.slots` of the pool label (of each node's [`daemon::SLOTS`]).
    pub slots_each: u32,
    /// The figures, if every application was ALLOCATED in time.
    pub burst: Option<Burst>,
    /// Why not, if not: the burst's error, and where its applications were then
    /// (`status.node`; "(none)" for those never elected).
    pub failure: Option<String>,
    pub placement: BTreeMap<String, usize>,
    /// 1-minute load average when the pool burst began.
    pub loadavg_1m: f64,
}

/// The cluster's bursts with all connections on the leader.
#[derive(Clone, Debug, Serialize)]
pub struct LeaderOnly {
    pub leader: String,
    /// The median of the bursts (by create → ALLOCATED throughput).
    pub burst: Burst,
    /// Create → ALLOCATED throughput of each burst, in the order they ran.
    pub burst_rounds_apps_per_s: Vec<f64>,
}

/// The failover runs.
#[derive(Debug, Serialize)]
pub struct Failover {
    pub runs: Vec<FailoverRun>,
    /// Median of the runs' `write_accepted_ms`.
    pub median_ms: f64,
    pub max_ms: f64,
}

/// One kill of the leader.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverRun {
    pub killed: String,
    /// SIGKILL → a survivor reports a leader other than the killed node.
    pub leader_seen_ms: f64,
    pub new_leader: String,
    /// SIGKILL → the answer of the first write a survivor accepted.
    pub write_accepted_ms: f64,
    pub accepted_by: String,
    /// Attempts sent until then, and how the refused ones were answered.
    pub attempts: usize,
    pub refusals: Vec<String>,
    /// Restart of the killed node (no flags) → one leader and two voters everywhere.
    pub rejoined_ms: f64,
}

/// Runs the cluster part in `work` and returns its results.
pub async fn run(fishd: &Path, work: &Path, quick: bool) -> Result<ClusterResults> {
    let started = Instant::now();
    let loadavg_start = daemon::loadavg();
    let sizes = Sizes::new(quick);

    info!("cluster part: single node");
    let (mut single, _) = Daemon::start_node(fishd, &work.join("single"), "solo", None).await?;
    single.apply(&label_yaml("bench")).await?;
    single.use_ci_user("ci-solo").await?;
    let single_tracker = Tracker::start(&single).await?;
    let single_before = side(&[&single], &[&single_tracker], "before", sizes).await?;

    info!("cluster part: forming the cluster");
    let t0 = Instant::now();
    let mut nodes = form(fishd, work).await?;
    let cluster_formed_ms = ms(t0.elapsed());
    for d in &mut nodes {
        let name = format!("ci-{}", d.name);
        d.use_ci_user(&name).await?;
    }
    let refs: Vec<&Daemon> = nodes.iter().collect();
    refs[0].apply(&label_yaml("bench")).await?;
    // The label must be readable on every node before a create refers to it there.
    for d in &refs {
        wait_for(d, "/api/v1/labels/bench", Duration::from_secs(10)).await?;
    }
    let mut trackers = Vec::new();
    for d in &refs {
        trackers.push(Tracker::start(d).await?);
    }
    let tracker_refs: Vec<&Tracker> = trackers.iter().collect();
    info!("cluster part: cluster singles and burst");
    let cluster = side(&refs, &tracker_refs, "cluster", sizes).await?;
    info!("cluster part: pool burst");
    let pool = pool_burst(&refs, &tracker_refs, sizes).await?;
    info!("cluster part: bursts through the leader only");
    let leader_only = leader_only(&refs, &tracker_refs, cluster.leader.as_deref(), sizes).await?;
    drop(trackers);

    info!("cluster part: single node again");
    let single_after = side(&[&single], &[&single_tracker], "after", sizes).await?;
    drop(single_tracker);
    drop(single);

    let mut nodes = nodes;
    let mut runs = Vec::new();
    for run in 0..sizes.failovers {
        info!(run, "cluster part: failover");
        runs.push(failover(&mut nodes, run).await?);
    }
    let mut times: Vec<f64> = runs.iter().map(|r| r.write_accepted_ms).collect();
    times.sort_by(f64::total_cmp);
    let median_ms = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let max_ms = times.last().copied().unwrap_or(0.0);
    drop(nodes);

    let reference = better(&single_before, &single_after);
    let meta = Meta {
        date: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
        git_commit: crate::git_commit(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        loadavg_start,
        loadavg_end: daemon::loadavg(),
        seconds: round3(started.elapsed().as_secs_f64()),
        quick,
        notes: notes(sizes),
    };
    let mut r = ClusterResults {
        meta,
        sizes,
        single: reference,
        single_before,
        single_after,
        cluster,
        leader_only,
        pool,
        cluster_formed_ms,
        failover: Failover { runs, median_ms, max_ms },
        targets: Vec::new(),
    };
    r.targets = targets(&r);
    Ok(r)
}

fn notes(s: Sizes) -> Vec<String> {
    vec![
        "All fishd processes and the load generator share this machine's cores: the cluster runs three \
         processes where the single node runs one, which is part of what is measured."
            .to_owned(),
        format!(
            "Singles: {} one-at-a-time allocations (after {WARMUP_SINGLES} untimed), each deallocated before the \
             next; on the cluster they go to a, b, c in turn. Burst: {} applications from {} connections (on the \
             cluster spread over the three nodes), all ALLOCATED, then all deallocated; {} such bursts per side, \
             whose median (by throughput) gives the side's burst figures.",
            s.singles, s.burst, s.connections, s.burst_rounds
        ),
        "Each application is timed from its create request to the ALLOCATED event on a watch of the node \
         the request went to. The election decides which node allocates it: the placement table shows where \
         each burst ran."
            .to_owned(),
        "Applications are created, deallocated and watched as a CI user (not admin, no rate limit) per node, \
         so each watch carries its own applications only, as a CI server's does: every event reaches the load \
         generator once, on the cluster as on the single node (an admin watch per node would deliver it three \
         times)."
            .to_owned(),
        format!(
            "Pool burst (issue 13): {} applications through the three nodes at once, from {} connections, of a \
             label whose slots let one node hold at most {} of them (a third and a tenth more): the burst completes \
             only when all three nodes allocate. Compared with the single node's burst of the same size.",
            s.burst,
            s.connections,
            pool_room(s.burst)
        ),
        "The single node is measured before and after the cluster; its reference is the better figure of \
         the two (the higher throughput, the lower latency)."
            .to_owned(),
        format!(
            "Cluster through the leader only (not a target figure): the cluster's {} bursts again with all {} \
             connections on the leader, so no write is forwarded; a pool's clients use every node (the target's \
             row), this row shows how much of the gap to the single node is the followers' forwarding.",
            s.burst_rounds, s.connections
        ),
        format!(
            "Failover: SIGKILL of the leader → the first label applied on a survivor (attempts every {} ms, \
             each with a {} ms deadline, survivors in turn); {} runs, the killed node restarted without flags \
             between runs.",
            FAILOVER_POLL.as_millis(),
            ATTEMPT_TIMEOUT.as_millis(),
            s.failovers
        ),
    ]
}

fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1000.0)
}

/// Singles, then a burst, on `nodes`.
async fn side(nodes: &[&Daemon], trackers: &[&Tracker], tag: &str, sizes: Sizes) -> Result<Side> {
    let loadavg_1m = daemon::loadavg()[0];
    singles_spread(nodes, trackers, &format!("warm-{tag}"), "bench", WARMUP_SINGLES, 0).await?;
    let singles = singles_spread(nodes, trackers, &format!("single-{tag}"), "bench", sizes.singles, 0).await?;
    let targets = spread(nodes, sizes.connections)?;
    let mut rounds = Vec::new();
    for round in 0..sizes.burst_rounds {
        let stored = WARMUP_SINGLES + sizes.singles + round * sizes.burst;
        let index0 = commit_index(nodes[0]).await;
        let prefix = format!("burst-{tag}-{round}");
        let burst = burst_spread(nodes, trackers, &targets, &prefix, "bench", sizes.burst, stored, true).await?;
        let entries = commit_index(nodes[0]).await.saturating_sub(index0);
        rounds.push((burst, round3(entries as f64 / sizes.burst as f64)));
    }
    let (burst_rounds_apps_per_s, median) = median_round(rounds, |(b, _)| b);
    let Some((burst, burst_log_entries_per_app)) = median else {
        bail!("no burst was measured");
    };
    let leader = match nodes.len() {
        1 => None,
        _ => status(nodes[0]).await.ok().and_then(|v| v["leader"].as_str().map(str::to_owned)),
    };
    let create_p50_by_node: Vec<f64> = burst.allocate.request_latency_by_node.iter().map(|l| l.p50_ms).collect();
    info!(
        tag,
        p50 = singles.allocate.p50_ms,
        p99 = singles.allocate.p99_ms,
        apps_per_s = burst.allocate.apps_per_s,
        ?burst_rounds_apps_per_s,
        burst_log_entries_per_app,
        ?leader,
        ?create_p50_by_node,
        "side measured"
    );
    Ok(Side {
        nodes: nodes.len(),
        singles,
        burst,
        burst_rounds_apps_per_s,
        loadavg_1m,
        burst_log_entries_per_app,
        leader,
    })
}

/// Each round's create → ALLOCATED throughput in the order they ran, and the median
/// round by that throughput (none when no round ran).
fn median_round<T>(mut rounds: Vec<T>, burst: impl Fn(&T) -> &Burst) -> (Vec<f64>, Option<T>) {
    let in_order = rounds.iter().map(|r| burst(r).allocate.apps_per_s).collect();
    rounds.sort_by(|x, y| burst(x).allocate.apps_per_s.total_cmp(&burst(y).allocate.apps_per_s));
    let middle = rounds.len() / 2;
    (in_order, rounds.into_iter().nth(middle))
}

/// The node's Raft commit index (0 when it cannot say).
async fn commit_index(d: &Daemon) -> u64 {
    status(d).await.ok().and_then(|v| v["commitIndex"].as_u64()).unwrap_or(0)
}

/// `connections` request workers, each with its own connection, spread over `nodes`.
fn spread(nodes: &[&Daemon], connections: usize) -> Result<Vec<Target>> {
    (0..connections).map(|i| target(nodes, i % nodes.len())).collect()
}

/// A request worker with its own connection to `nodes[k]`.
fn target(nodes: &[&Daemon], k: usize) -> Result<Target> {
    let d = nodes[k];
    Ok(Target { client: d.new_client()?, base: d.url(""), token: d.client_token().to_owned(), node: k })
}

/// The cluster side's bursts again, every connection on the leader (none when the
/// leader is not known).
async fn leader_only(
    nodes: &[&Daemon],
    trackers: &[&Tracker],
    leader: Option<&str>,
    sizes: Sizes,
) -> Result<Option<LeaderOnly>> {
    let Some(k) = leader.and_then(|l| nodes.iter().position(|d| d.name == l)) else {
        return Ok(None);
    };
    let targets = (0..sizes.connections).map(|_| target(nodes, k)).collect::<Result<Vec<_>>>()?;
    // Stored before them: the cluster side's and the pool's.
    let stored = WARMUP_SINGLES + sizes.singles + (sizes.burst_rounds + 1) * sizes.burst;
    let mut rounds = Vec::new();
    for round in 0..sizes.burst_rounds {
        let prefix = format!("leader-{round}");
        rounds.push(burst_spread(nodes, trackers, &targets, &prefix, "bench", sizes.burst, stored, true).await?);
    }
    let (burst_rounds_apps_per_s, median) = median_round(rounds, |b| b);
    let Some(burst) = median else {
        bail!("no leader-only burst was measured");
    };
    let leader = nodes[k].name.clone();
    info!(leader, apps_per_s = burst.allocate.apps_per_s, ?burst_rounds_apps_per_s, "leader-only burst measured");
    Ok(Some(LeaderOnly { leader, burst, burst_rounds_apps_per_s }))
}

/// How many of a pool burst of `n` one node may hold at once: a third and a tenth
/// more, so no two nodes can take the whole burst.
fn pool_room(n: usize) -> u32 {
    u32::try_from(n.div_ceil(NODES) + n / 10).unwrap_or(u32::MAX).max(1)
}

/// The pool label: one simulated resource taking `slots` of a node's slots.
fn pool_label(name: &str, slots: u32) -> String {
    format!(
        "apiVersion: aquarium.fish/v1\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  definitions:\n    \
         - driver: test\n      resources: {{cpu: 1, ram: 1, slots: {slots}, lifetime: 12h}}\n"
    )
}

/// The pool burst on the cluster: `sizes.burst` applications through all nodes at
/// once, each node holding at most [`pool_room`] of them. A burst that does not
/// complete is a result too (an election that leaves room unused stalls it): it is
/// reported with where its applications were, and the part goes on.
async fn pool_burst(nodes: &[&Daemon], trackers: &[&Tracker], sizes: Sizes) -> Result<Pool> {
    let slots_each = daemon::SLOTS / pool_room(sizes.burst);
    let room_per_node = daemon::SLOTS / slots_each;
    let first = nodes.first().context("no nodes")?;
    first.apply(&pool_label("bench-pool", slots_each)).await?;
    for d in nodes {
        wait_for(d, "/api/v1/labels/bench-pool", Duration::from_secs(10)).await?;
    }
    let loadavg_1m = daemon::loadavg()[0];
    let targets = spread(nodes, sizes.connections)?;
    // Stored before it on the cluster: the cluster side's warm-up, singles and burst.
    let stored = WARMUP_SINGLES + sizes.singles + sizes.burst;
    match burst_spread(nodes, trackers, &targets, "pool", "bench-pool", sizes.burst, stored, true).await {
        Ok(burst) => {
            info!(
                apps_per_s = burst.allocate.apps_per_s,
                p50 = burst.allocate.latency.p50_ms,
                p99 = burst.allocate.latency.p99_ms,
                placement = ?burst.placement,
                "pool burst measured"
            );
            let placement = burst.placement.clone().unwrap_or_default();
            Ok(Pool { room_per_node, slots_each, burst: Some(burst), failure: None, placement, loadavg_1m })
        }
        Err(e) => {
            let placement = crate::alloc::placement(first, "bench-pool", "pool").await?;
            tracing::warn!(error = %format!("{e:#}"), ?placement, "the pool burst did not complete");
            Ok(Pool { room_per_node, slots_each, burst: None, failure: Some(format!("{e:#}")), placement, loadavg_1m })
        }
    }
}

/// The single-node reference: the better of each figure measured before and after.
fn better(a: &Side, b: &Side) -> Side {
    let mut r = if a.burst.allocate.apps_per_s >= b.burst.allocate.apps_per_s { a.clone() } else { b.clone() };
    let lower = |x: &Latency, y: &Latency| if x.p50_ms <= y.p50_ms { *x } else { *y };
    r.singles.allocate = lower(&a.singles.allocate, &b.singles.allocate);
    r.singles.deallocate = lower(&a.singles.deallocate, &b.singles.deallocate);
    r
}

/// GETs `path` on `d` until it answers 200.
async fn wait_for(d: &Daemon, path: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((200, _)) = d.get(path).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{path} was not readable on {} within {limit:?}", d.name);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts node `a`, then `b` and `c` joining it with tokens from its admin API;
/// returns them once the cluster has one leader and two voters everywhere.
async fn form(fishd: &Path, work: &Path) -> Result<Vec<Daemon>> {
    let (a, _) = Daemon::start_node(fishd, &work.join(NAMES[0]), NAMES[0], None).await?;
    let mut nodes = vec![a];
    for name in &NAMES[1..] {
        let a = &nodes[0];
        let (code, v) = a.post("/api/v1/cluster/join-tokens", &json!({"ttl": "10m"})).await?;
        if code != 201 {
            bail!("join token: {code} {v}");
        }
        let token = v["token"].as_str().context("join token answer without a token")?.to_owned();
        let join = Join { via: a.addr(), token, admin_token: a.token.clone(), ca: a.ca_pem() };
        let (d, _) = Daemon::start_node(fishd, &work.join(name), name, Some(join)).await?;
        nodes.push(d);
    }
    let refs: Vec<&Daemon> = nodes.iter().collect();
    wait_formed(&refs, FORM_LIMIT).await?;
    Ok(nodes)
}

/// `GET /api/v1/cluster` of `d`: its body, or what went wrong.
async fn status(d: &Daemon) -> Result<Value, String> {
    match d.get("/api/v1/cluster").await {
        Ok((200, v)) => Ok(v),
        Ok((code, v)) => Err(format!("{code} {v}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// The leader's name if `v` shows one leader and the rest voters, [`NODES`] in all.
fn whole(v: &Value) -> Option<String> {
    let members = v["members"].as_array()?;
    let role = |r: &str| members.iter().filter(|m| m["role"] == r).count();
    if members.len() != NODES || role("leader") != 1 || role("voter") != NODES - 1 {
        return None;
    }
    v["leader"].as_str().map(str::to_owned)
}

/// Waits until every node in `nodes` reports the same leader and the whole
/// membership as voters; returns the leader's name.
async fn wait_formed(nodes: &[&Daemon], limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let mut leaders = Vec::new();
        let mut seen = Vec::new();
        for d in nodes {
            let v = status(d).await;
            leaders.push(v.as_ref().ok().and_then(whole));
            seen.push(format!("{}: {}", d.name, v.unwrap_or_else(Value::String)));
        }
        if let Some(Some(l)) = leaders.first()
            && leaders.iter().all(|x| x.as_ref() == Some(l))
        {
            return Ok(l.clone());
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not show one leader and {} voters on every node within {limit:?}; last seen:\n{}",
                NODES - 1,
                seen.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One failover run: kill the leader, time the first accepted write, restart it.
async fn failover(nodes: &mut [Daemon], run: usize) -> Result<FailoverRun> {
    let refs: Vec<&Daemon> = nodes.iter().collect();
    let leader = wait_formed(&refs, FORM_LIMIT).await?;
    let k = nodes.iter().position(|d| d.name == leader).with_context(|| format!("unknown leader {leader:?}"))?;
    // Clients with short deadlines and their connections open before the kill.
    let mut survivors = Vec::new();
    for (i, d) in nodes.iter().enumerate().filter(|(i, _)| *i != k) {
        let client = d.client_with_timeout(ATTEMPT_TIMEOUT)?;
        client.get(d.url("/healthz")).send().await?.bytes().await?;
        survivors.push((i, d.url(""), d.token.clone(), client));
    }
    let status_clients: Vec<(String, String, reqwest::Client)> =
        survivors.iter().map(|(i, _, token, c)| (nodes[*i].url("/api/v1/cluster"), token.clone(), c.clone())).collect();

    let killed_at = nodes[k].kill9()?;
    info!(run, killed = %leader, "leader killed");
    let seen = tokio::spawn(leader_seen(status_clients, leader.clone(), killed_at));

    let mut set = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(FAILOVER_POLL);
    let mut attempts = 0;
    let mut refusals: Vec<String> = Vec::new();
    let limit = Duration::from_secs(60);
    let (write_ms, by) = loop {
        tokio::select! {
            _ = tick.tick() => {
                if killed_at.elapsed() > limit {
                    bail!("no survivor accepted a write within {limit:?} of killing the leader; refusals: {refusals:?}");
                }
                let (i, base, token, client) = survivors[attempts % survivors.len()].clone();
                let yaml = label_yaml(&format!("failover-{run}-{attempts}"));
                attempts += 1;
                set.spawn(async move {
                    let r = client
                        .post(format!("{base}/api/v1/apply"))
                        .bearer_auth(&token)
                        .header("content-type", "application/yaml")
                        .body(yaml)
                        .send()
                        .await;
                    let at = Instant::now();
                    match r {
                        Ok(r) if r.status().is_success() => Ok((i, at)),
                        Ok(r) => {
                            let code = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            Err(format!("{code} {}", body.chars().take(120).collect::<String>()))
                        }
                        Err(e) => Err(if e.is_timeout() { "timeout".to_owned() } else { format!("{e}") }),
                    }
                });
            }
            Some(done) = set.join_next(), if !set.is_empty() => {
                match done {
                    Ok(Ok((i, at))) => break (ms(at - killed_at), nodes[i].name.clone()),
                    Ok(Err(e)) => {
                        if !refusals.contains(&e) && refusals.len() < 10 {
                            refusals.push(e);
                        }
                    }
                    Err(e) => bail!("a write attempt panicked: {e}"),
                }
            }
        }
    };
    set.abort_all();
    let (leader_seen_ms, new_leader) = seen.await.context("leader watcher panicked")??;
    info!(run, write_ms, by = %by, leader_seen_ms, new_leader = %new_leader, "failover measured");

    let t0 = Instant::now();
    nodes[k].start_again().await?;
    let refs: Vec<&Daemon> = nodes.iter().collect();
    wait_formed(&refs, FORM_LIMIT).await?;
    let rejoined_ms = ms(t0.elapsed());
    Ok(FailoverRun {
        killed: leader,
        leader_seen_ms,
        new_leader,
        write_accepted_ms: write_ms,
        accepted_by: by,
        attempts,
        refusals,
        rejoined_ms,
    })
}

/// Polls the survivors' `GET /api/v1/cluster` until one names a leader other than
/// `old`; returns the time since `killed_at` and the new leader's name.
async fn leader_seen(
    survivors: Vec<(String, String, reqwest::Client)>,
    old: String,
    killed_at: Instant,
) -> Result<(f64, String)> {
    let limit = Duration::from_secs(60);
    loop {
        for (url, token, c) in &survivors {
            let Ok(r) = c.get(url).bearer_auth(token).send().await else { continue };
            let at = Instant::now();
            let Ok(v) = r.json::<Value>().await else { continue };
            if let Some(l) = v["leader"].as_str()
                && l != old
            {
                return Ok((ms(at - killed_at), l.to_owned()));
            }
        }
        if killed_at.elapsed() > limit {
            bail!("no survivor named a new leader within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The targets of must-show 4, each with its reference.
fn targets(r: &ClusterResults) -> Vec<Goal> {
    let (s, c) = (&r.single, &r.cluster);
    let throughput = ratio(c.burst.allocate.apps_per_s, s.burst.allocate.apps_per_s);
    vec![
        Goal {
            name: "cluster p50 create -> ALLOCATED, one at a time".into(),
            target: "< 30 ms".into(),
            measured: format!(
                "{:.1} ms (p99 {:.1} ms; single node p50 {:.1} / p99 {:.1} ms)",
                c.singles.allocate.p50_ms,
                c.singles.allocate.p99_ms,
                s.singles.allocate.p50_ms,
                s.singles.allocate.p99_ms
            ),
            met: c.singles.allocate.p50_ms < 30.0,
        },
        Goal {
            name: format!("cluster burst throughput ({} apps) create -> ALLOCATED", c.burst.applications),
            target: ">= 50% of the single node".into(),
            measured: format!(
                "{:.0}% ({:.0} vs {:.0} apps/s)",
                throughput * 100.0,
                c.burst.allocate.apps_per_s,
                s.burst.allocate.apps_per_s
            ),
            met: throughput >= 0.5,
        },
        Goal {
            name: format!("failover: kill -9 leader -> write accepted (median of {})", r.failover.runs.len()),
            target: "< 3 s".into(),
            measured: format!(
                "{:.0} ms (runs: {})",
                r.failover.median_ms,
                r.failover.runs.iter().map(|x| format!("{:.0}", x.write_accepted_ms)).collect::<Vec<_>>().join(", ")
            ),
            met: r.failover.median_ms < 3000.0 && !r.failover.runs.is_empty(),
        },
    ]
}

impl ClusterResults {
    /// The readable table.
    pub fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(s, "# fish-bench cluster results (issue 12 must-show 4, issue 13 must-show 5)\n");
        let _ = writeln!(
            s,
            "{} · commit `{}` · {} CPUs · load average {:.2} / {:.2} / {:.2} at start, {:.2} / {:.2} / {:.2} at end · \
             {:.0} s{}\n",
            m.date,
            m.git_commit,
            m.cpus,
            m.loadavg_start[0],
            m.loadavg_start[1],
            m.loadavg_start[2],
            m.loadavg_end[0],
            m.loadavg_end[1],
            m.loadavg_end[2],
            m.seconds,
            if m.quick { " · QUICK RUN" } else { "" }
        );
        for n in &m.notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s, "\n## Targets\n\n| figure | target | measured | met |\n|---|---|---|---|");
        for t in &self.targets {
            let _ =
                writeln!(s, "| {} | {} | {} | {} |", t.name, t.target, t.measured, if t.met { "yes" } else { "NO" });
        }
        let sides = [
            ("single node, before", &self.single_before),
            ("3-node cluster", &self.cluster),
            ("single node, after", &self.single_after),
            ("single-node reference (better of the two)", &self.single),
        ];
        let _ = writeln!(
            s,
            "\n## One at a time (test driver, latency 0)\n\n\
             | side | nodes | load 1 min | create → ALLOCATED p50 ms | p99 ms | max ms | deallocate → DEALLOCATED \
             p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|"
        );
        for (name, x) in sides {
            let (a, d) = (&x.singles.allocate, &x.singles.deallocate);
            let _ = writeln!(
                s,
                "| {name} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                x.nodes, x.loadavg_1m, a.p50_ms, a.p99_ms, a.max_ms, d.p50_ms, d.p99_ms
            );
        }
        let _ = writeln!(
            s,
            "\n## Burst ({} applications, {} connections)\n\n\
             | side | create → ALLOCATED apps/s | ratio to reference | p50 ms | p99 ms | create requests/s | \
             deallocate → DEALLOCATED apps/s | fishd cores (all nodes) |\n|---|---|---|---|---|---|---|---|",
            self.sizes.burst, self.sizes.connections
        );
        let pool_name = format!("3-node pool burst (≤ {} per node)", self.pool.room_per_node);
        let bursts = sides.iter().map(|(name, x)| (name.to_string(), Some(&x.burst)));
        let leader_only = self.leader_only.as_ref().map(|l| {
            (
                format!("3-node cluster, every connection on the leader ({}; not a target figure)", l.leader),
                Some(&l.burst),
            )
        });
        for (name, b) in bursts.chain(leader_only).chain([(pool_name, self.pool.burst.as_ref())]) {
            let Some(b) = b else {
                let why = self.pool.failure.as_deref().unwrap_or("no figures").replace('|', "/").replace('\n', " ");
                let _ = writeln!(s, "| {name} | DID NOT COMPLETE: {why} | | | | | | |");
                continue;
            };
            let _ = writeln!(
                s,
                "| {name} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.0} | {:.2} |",
                b.allocate.apps_per_s,
                ratio(b.allocate.apps_per_s, self.single.burst.allocate.apps_per_s),
                b.allocate.latency.p50_ms,
                b.allocate.latency.p99_ms,
                b.allocate.requests_per_s,
                b.deallocate.apps_per_s,
                b.fishd_cores
            );
        }
        let rounds = |r: &[f64]| r.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "\nEach burst's create → ALLOCATED apps/s, in order (the median is the side's figure): single node before \
             {}; 3-node cluster {}; single node after {}{}.",
            rounds(&self.single_before.burst_rounds_apps_per_s),
            rounds(&self.cluster.burst_rounds_apps_per_s),
            rounds(&self.single_after.burst_rounds_apps_per_s),
            self.leader_only
                .as_ref()
                .map(|l| format!("; cluster through the leader only {}", rounds(&l.burst_rounds_apps_per_s)))
                .unwrap_or_default()
        );
        let by_node = &self.cluster.burst.allocate.request_latency_by_node;
        if by_node.len() == NODES {
            let leader = self.cluster.leader.as_deref().unwrap_or("?");
            let cell = |k: usize| format!("{} {:.1} / {:.1}", NAMES[k], by_node[k].p50_ms, by_node[k].p99_ms);
            let _ = writeln!(
                s,
                "\nCluster burst, create request → answer p50 / p99 ms by the node it went to (leader {leader}; \
                 a follower forwards its writes to the leader and answers once it applied them): {}, {}, {}.",
                cell(0),
                cell(1),
                cell(2)
            );
        }
        let _ = writeln!(
            s,
            "\n## Where the cluster's bursts ran (applications elected per node)\n\n\
             | burst | a | b | c | not elected |\n|---|---|---|---|---|"
        );
        let empty = BTreeMap::new();
        let cluster_placement = self.cluster.burst.placement.as_ref().unwrap_or(&empty);
        let leader_placement = self.leader_only.as_ref().and_then(|l| l.burst.placement.as_ref()).unwrap_or(&empty);
        for (name, p) in [
            ("3-node cluster", cluster_placement),
            ("3-node cluster, leader only", leader_placement),
            ("3-node pool burst", &self.pool.placement),
        ] {
            let on = |n: &str| p.get(n).copied().unwrap_or(0);
            let _ =
                writeln!(s, "| {name} | {} | {} | {} | {} |", on(NAMES[0]), on(NAMES[1]), on(NAMES[2]), on("(none)"));
        }
        let f = &self.failover;
        let _ = writeln!(
            s,
            "\n## Failover (SIGKILL of the leader)\n\nCluster formed (spawn of a → one leader, two voters everywhere): \
             {:.0} ms.\n\n\
             | run | killed | new leader seen ms | new leader | write accepted ms | accepted by | attempts | \
             refusals seen | restarted node back ms |\n|---|---|---|---|---|---|---|---|---|",
            self.cluster_formed_ms
        );
        for (i, r) in f.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {:.0} |",
                i + 1,
                r.killed,
                r.leader_seen_ms,
                r.new_leader,
                r.write_accepted_ms,
                r.accepted_by,
                r.attempts,
                r.refusals.join("; ").replace('|', "/").replace('\n', " "),
                r.rejoined_ms
            );
        }
        let _ = writeln!(s, "\nMedian **{:.0} ms**, max {:.0} ms.", f.median_ms, f.max_ms);
        s
    }
}
