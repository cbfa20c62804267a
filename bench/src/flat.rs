//! Allocation with many finished applications stored (issue 15): one node with none
//! stored and one per seeded count (10,000 and 100,000 by default, written fast by
//! [`crate::seed`]), all running at once, so the bursts compare side by side.
//!
//! - Start-up of the largest node on its seeded files: time to `/readyz`, resident
//!   memory then and once it settled, how long it kept a core busy afterwards.
//! - Rounds: in each, one burst of 1,000 (16 connections, create → ALLOCATED, then
//!   deallocate → DEALLOCATED) on each node in turn, each only after every node is
//!   idle again. The node with none stored removes its 1,000 after each burst, so it
//!   stays at none. A node's figure is the median of its rounds; the ratio is to the
//!   node with none stored.
//! - One at a time: create → ALLOCATED on the node with none and on the largest.
//! - Lists on the seeded nodes: every application (10,000 only: at 100,000 the answer
//!   is ~110 MB) and `?phase=ALLOCATED` (index-served).
//! - The redb file per stored application: seeded, after the bursts, after a restart.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tracing::info;

use crate::alloc::{Burst, Single, Tracker, burst, label_yaml, singles};
use crate::daemon::Daemon;
use crate::seed::{LABEL, Seeded};
use crate::stats::{Latency, ratio, round3};

/// Bursts of this many applications.
pub const BURST: usize = 1_000;
/// Connections a burst uses.
pub const CONNECTIONS: usize = 16;
/// The longest wait for the nodes to go idle before a burst.
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// One node of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct FlatNode {
    /// Finished applications stored before its first burst.
    pub stored: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seeded: Option<Seeded>,
    pub bursts: Vec<Burst>,
    /// Seconds waited before each burst until every node was idle (at most
    /// [`IDLE_LIMIT`]): long waits mean a node works in the background (a resync pass).
    pub idle_waits_s: Vec<f64>,
    /// Median over its bursts, create → ALLOCATED, applications per second.
    pub allocate_apps_per_s: f64,
    /// The same over the node with none stored.
    pub ratio_to_none: f64,
    pub deallocate_apps_per_s: f64,
    pub deallocate_ratio_to_none: f64,
    /// One application at a time, after the bursts (on the node with none and the largest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single: Option<Single>,
    /// `GET /api/v1/applications` (every application), when measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_all: Option<Latency>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_all_bytes: Option<usize>,
    /// `GET /api/v1/applications?phase=ALLOCATED` (index-served; empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list_phase_allocated: Option<Latency>,
}

/// Start-up and disk of the largest node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Startup {
    pub stored: usize,
    /// First start on the seeded files: spawn → `/readyz` answers.
    pub first_start_ms: f64,
    /// Resident memory when `/readyz` first answered (MB = 10^6 bytes).
    pub rss_at_ready_mb: f64,
    /// Resident memory once it went idle after the start (or after 60 s).
    pub rss_settled_mb: f64,
    /// The kernel's high-water mark then.
    pub peak_rss_settled_mb: f64,
    /// How long after `/readyz` fishd kept using CPU (over 5 % of a core) before it was idle.
    pub busy_after_ready_s: f64,
    /// Restart (SIGTERM, spawn, `/readyz`) after the bursts.
    pub restart_ms: f64,
    pub rss_after_restart_mb: f64,
    pub restart_busy_after_ready_s: f64,
    pub rss_after_restart_settled_mb: f64,
    /// The redb file as seeded, after the bursts and after the restart, and per stored
    /// application (the bursts' own applications count as stored).
    pub store_bytes_seeded: u64,
    pub store_bytes_per_app_seeded: f64,
    pub store_bytes_after_bursts: u64,
    pub stored_after_bursts: usize,
    pub store_bytes_per_app_after_bursts: f64,
    pub store_bytes_after_restart: u64,
    pub store_bytes_per_app_after_restart: f64,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Flat {
    pub rounds: usize,
    pub burst_applications: usize,
    pub connections: usize,
    /// The node with none stored first, then the seeded ones by size.
    pub nodes: Vec<FlatNode>,
    pub startup: Startup,
    /// One at a time p50: with none stored over the largest (1 = flat).
    pub single_ratio_p50: f64,
}

/// Waits until every running node uses under 5 % of a core over 300 ms (at most
/// `limit`); returns how long that took.
pub async fn quiesce(nodes: &[&Daemon], limit: Duration) -> f64 {
    let t0 = Instant::now();
    loop {
        let before: Vec<Option<f64>> = nodes.iter().map(|d| d.cpu_seconds()).collect();
        let window = Duration::from_millis(300);
        tokio::time::sleep(window).await;
        let busy = nodes.iter().zip(before).any(|(d, b)| match (b, d.cpu_seconds()) {
            (Some(a), Some(b)) => (b - a) / window.as_secs_f64() > 0.05,
            _ => false,
        });
        if !busy || t0.elapsed() > limit {
            return round3(t0.elapsed().as_secs_f64());
        }
    }
}

fn mb(kib: Option<u64>) -> f64 {
    round3(kib.unwrap_or(0) as f64 * 1024.0 / 1e6)
}

/// Seeds `dir` with `stored` finished applications in a child `fish-bench seed`
/// (the store's file lock goes with that process).
async fn seed_child(fishd: &Path, dir: &Path, stored: usize) -> Result<Seeded> {
    let exe = std::env::current_exe()?;
    info!(stored, dir = %dir.display(), "seeding");
    let out = tokio::process::Command::new(exe)
        .arg("--fishd")
        .arg(fishd)
        .args(["seed", "--json", "--stored", &stored.to_string(), "--dir"])
        .arg(dir)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await?;
    if !out.status.success() {
        bail!("seeding {stored} applications failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().context("the seed printed nothing")?;
    let seeded: Seeded = serde_json::from_str(line)?;
    info!(?seeded, "seeded");
    Ok(seeded)
}

/// Removes the finished applications `<prefix>-0..n` (DELETE, 200) over `clients`.
async fn remove(d: &Daemon, clients: &[reqwest::Client], prefix: &str, n: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in clients {
        let (c, next, base, token, prefix) = (c.clone(), next.clone(), d.url(""), d.token.clone(), prefix.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let r = c.delete(format!("{base}/api/v1/applications/{prefix}-{i}")).bearer_auth(&token).send().await?;
                if r.status() != 200 {
                    bail!("removing {prefix}-{i}: {}", r.status());
                }
                r.bytes().await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Full lists and index-served lists, `samples` each.
async fn lists(d: &Daemon, samples: usize, all: bool) -> Result<(Option<Latency>, Option<usize>, Latency)> {
    let mut full = Vec::new();
    let mut bytes = None;
    if all {
        // One untimed list first: the first read of the pages after the bursts.
        d.get("/api/v1/applications").await?;
        for _ in 0..samples {
            let t0 = Instant::now();
            let r = d.client.get(d.url("/api/v1/applications")).bearer_auth(&d.token).send().await?;
            if r.status() != 200 {
                bail!("list: {}", r.status());
            }
            bytes = Some(r.bytes().await?.len());
            full.push(t0.elapsed());
        }
    }
    let mut filtered = Vec::new();
    for _ in 0..samples {
        let t0 = Instant::now();
        let (code, _) = d.get("/api/v1/applications?phase=ALLOCATED").await?;
        if code != 200 {
            bail!("list: {code}");
        }
        filtered.push(t0.elapsed());
    }
    Ok((all.then(|| Latency::of(full)), bytes, Latency::of(filtered)))
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    round3(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// How the comparison runs.
pub struct Plan {
    /// Seeded counts, ascending (the largest gets the start-up figures).
    pub stored: Vec<usize>,
    pub rounds: usize,
    /// One-at-a-time allocations on the node with none and on the largest.
    pub singles: usize,
    pub list_samples: usize,
    /// Full lists only up to this many stored.
    pub list_all_max: usize,
}

/// Runs the comparison in `work` (a fresh directory per node).
pub async fn run(fishd: &Path, work: &Path, plan: &Plan) -> Result<Flat> {
    let mut seeded = Vec::new();
    for &n in &plan.stored {
        seeded.push(seed_child(fishd, &work.join(format!("flat-{n}")), n).await?);
    }
    let largest = *plan.stored.last().context("no seeded node")?;

    // Start-up of the largest alone, on its seeded files.
    let mut startup = Startup { stored: largest, ..Startup::default() };
    let big_dir = work.join(format!("flat-{largest}"));
    startup.store_bytes_seeded = seeded.last().map(|s| s.store_bytes).unwrap_or(0);
    startup.store_bytes_per_app_seeded = ratio(startup.store_bytes_seeded as f64, largest as f64);
    info!(stored = largest, "flat: starting the largest node");
    let (mut big, took) = Daemon::attach(fishd, &big_dir).await?;
    startup.first_start_ms = round3(took.as_secs_f64() * 1000.0);
    startup.rss_at_ready_mb = mb(big.rss_kib());
    startup.busy_after_ready_s = quiesce(&[&big], Duration::from_secs(60)).await;
    startup.rss_settled_mb = mb(big.rss_kib());
    startup.peak_rss_settled_mb = mb(big.peak_rss_kib());
    info!(?startup, "flat: the largest node started");

    // The others: none stored (fresh) and the smaller seeded ones.
    let (none, _) = Daemon::start(fishd, &work.join("flat-0")).await?;
    none.apply(&label_yaml(LABEL)).await?;
    let mut others = Vec::new();
    for &n in &plan.stored[..plan.stored.len() - 1] {
        let (d, _) = Daemon::attach(fishd, &work.join(format!("flat-{n}"))).await?;
        others.push(d);
    }
    // In burst order: none, the smaller seeded ones, the largest.
    let mut order: Vec<&Daemon> = vec![&none];
    order.extend(others.iter());
    order.push(&big);
    let stored: Vec<usize> = std::iter::once(0).chain(plan.stored.iter().copied()).collect();
    let mut trackers = Vec::new();
    let mut clients = Vec::new();
    for d in &order {
        trackers.push(Tracker::start(d).await?);
        clients.push((0..CONNECTIONS).map(|_| d.new_client()).collect::<Result<Vec<_>>>()?);
    }
    let mut bursts: Vec<Vec<Burst>> = vec![Vec::new(); order.len()];
    let mut waits: Vec<Vec<f64>> = vec![Vec::new(); order.len()];
    let mut added = vec![0usize; order.len()];
    for round in 0..plan.rounds {
        for (k, d) in order.iter().enumerate() {
            let waited = quiesce(&order, IDLE_LIMIT).await;
            waits[k].push(waited);
            let prefix = format!("flat{}-r{round}", stored[k]);
            info!(round, stored = stored[k] + added[k], waited, "flat: burst");
            let b = burst(d, &trackers[k], &clients[k], &prefix, LABEL, BURST, stored[k] + added[k]).await?;
            info!(apps_per_s = b.allocate.apps_per_s, "flat: burst done");
            bursts[k].push(b);
            if k == 0 {
                remove(d, &clients[k], &prefix, BURST).await?;
            } else {
                added[k] += BURST;
            }
        }
    }

    let mut nodes = Vec::new();
    for (k, b) in bursts.into_iter().enumerate() {
        let alloc = median(b.iter().map(|x| x.allocate.apps_per_s).collect());
        let dealloc = median(b.iter().map(|x| x.deallocate.apps_per_s).collect());
        nodes.push(FlatNode {
            stored: stored[k],
            seeded: if k == 0 { None } else { seeded.get(k - 1).cloned() },
            bursts: b,
            idle_waits_s: std::mem::take(&mut waits[k]),
            allocate_apps_per_s: alloc,
            ratio_to_none: 0.0,
            deallocate_apps_per_s: dealloc,
            deallocate_ratio_to_none: 0.0,
            single: None,
            list_all: None,
            list_all_bytes: None,
            list_phase_allocated: None,
        });
    }
    let (a0, d0) = (nodes[0].allocate_apps_per_s, nodes[0].deallocate_apps_per_s);
    for n in &mut nodes {
        n.ratio_to_none = ratio(n.allocate_apps_per_s, a0);
        n.deallocate_ratio_to_none = ratio(n.deallocate_apps_per_s, d0);
    }

    // One at a time, on the node with none stored and on the largest.
    let last = order.len() - 1;
    for k in [0, last] {
        quiesce(&order, IDLE_LIMIT).await;
        let s = singles(
            order[k],
            &trackers[k],
            &format!("single-flat{}", stored[k]),
            LABEL,
            plan.singles,
            stored[k] + added[k],
        )
        .await?;
        info!(stored = stored[k], p50_ms = s.allocate.p50_ms, "flat: one at a time");
        nodes[k].single = Some(s);
        added[k] += plan.singles;
    }
    // Lists on the seeded nodes.
    for k in 1..order.len() {
        quiesce(&order, IDLE_LIMIT).await;
        let (all, bytes, phase) = lists(order[k], plan.list_samples, stored[k] <= plan.list_all_max).await?;
        nodes[k].list_all = all;
        nodes[k].list_all_bytes = bytes;
        nodes[k].list_phase_allocated = Some(phase);
    }
    let single_ratio_p50 = match (&nodes[0].single, &nodes[last].single) {
        (Some(a), Some(b)) => ratio(a.allocate.p50_ms, b.allocate.p50_ms),
        _ => 0.0,
    };

    // Disk after the bursts, then a restart of the largest, alone.
    startup.stored_after_bursts = largest + added[last];
    startup.store_bytes_after_bursts = big.store_bytes();
    startup.store_bytes_per_app_after_bursts =
        ratio(startup.store_bytes_after_bursts as f64, startup.stored_after_bursts as f64);
    drop(trackers);
    drop(order);
    drop(none);
    drop(others);
    info!("flat: restarting the largest node");
    let took = big.restart().await?;
    startup.restart_ms = round3(took.as_secs_f64() * 1000.0);
    startup.rss_after_restart_mb = mb(big.rss_kib());
    startup.restart_busy_after_ready_s = quiesce(&[&big], Duration::from_secs(60)).await;
    startup.rss_after_restart_settled_mb = mb(big.rss_kib());
    startup.store_bytes_after_restart = big.store_bytes();
    startup.store_bytes_per_app_after_restart =
        ratio(startup.store_bytes_after_restart as f64, startup.stored_after_bursts as f64);
    big.stop().await?;

    Ok(Flat {
        rounds: plan.rounds,
        burst_applications: BURST,
        connections: CONNECTIONS,
        nodes,
        startup,
        single_ratio_p50,
    })
}

/// `fish-bench bursts`: `rounds` bursts of `size` on one fresh node in `dir`, or on
/// the node of `attach` (see the subcommand's help).
/// What the `bursts` tool runs in each round.
#[derive(Clone, Copy, Debug)]
pub struct BurstsPlan {
    pub rounds: usize,
    /// Applications per burst (0: none).
    pub size: usize,
    /// The round recorded with `perf record -g`.
    pub perf_round: Option<usize>,
    /// Applications one at a time after the burst (0: none).
    pub singles: usize,
}

pub async fn bursts(fishd: &Path, dir: Option<&Path>, attach: Option<&Path>, plan: BurstsPlan) -> Result<()> {
    let BurstsPlan { rounds, size, perf_round, singles: k } = plan;
    let temp = tempfile::tempdir()?;
    let work = dir.unwrap_or(temp.path()).to_owned();
    let d = match attach {
        Some(node) => Daemon::attach(fishd, node).await?.0,
        None => {
            let (d, _) = Daemon::start(fishd, &work.join("node")).await?;
            d.apply(&label_yaml(LABEL)).await?;
            d
        }
    };
    let tracker = Tracker::start(&d).await?;
    let clients = (0..CONNECTIONS).map(|_| d.new_client()).collect::<Result<Vec<_>>>()?;
    info!(pid = ?d.pid(), work = %work.display(), "bursts: node started");
    for round in 0..rounds {
        let waited = quiesce(&[&d], IDLE_LIMIT).await;
        let perf = match (perf_round, d.pid()) {
            (Some(k), Some(pid)) if k == round => {
                let out = work.join(format!("perf-round-{round}.data"));
                Some(
                    tokio::process::Command::new("perf")
                        .args(["record", "-g", "-o"])
                        .arg(&out)
                        .args(["-p", &pid.to_string()])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .context("perf record")?,
                )
            }
            _ => None,
        };
        // Unique per run: an attached node keeps the applications of earlier runs.
        let prefix = format!("run{}-round{round}", std::process::id());
        let b = if size > 0 { Some(burst(&d, &tracker, &clients, &prefix, LABEL, size, 0).await?) } else { None };
        if k > 0 {
            quiesce(&[&d], IDLE_LIMIT).await;
            let s = singles(&d, &tracker, &format!("{prefix}-single"), LABEL, k, 0).await?;
            info!(
                round,
                samples = s.allocate.samples,
                p50_ms = s.allocate.p50_ms,
                p99_ms = s.allocate.p99_ms,
                "bursts: one at a time, create -> ALLOCATED"
            );
        }
        if let Some(mut p) = perf {
            if let Some(id) = p.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(id as i32), nix::sys::signal::Signal::SIGINT);
            }
            p.wait().await?;
        }
        let Some(b) = b else { continue };
        remove(&d, &clients, &prefix, size).await?;
        info!(
            round,
            waited,
            allocate_apps_per_s = b.allocate.apps_per_s,
            deallocate_apps_per_s = b.deallocate.apps_per_s,
            fishd_cores = b.fishd_cores,
            rss_mb = mb(d.rss_kib()),
            store_mb = d.store_bytes() as f64 / 1e6,
            "bursts: round done"
        );
    }
    Ok(())
}
