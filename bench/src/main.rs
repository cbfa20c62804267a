//! `fish-bench`: the benchmark suite. It starts real release `fishd` processes (the
//! binary next to this one), drives them over HTTPS, and writes every figure next
//! to a reference measured in the same run, so that the ratios hold even on a noisy
//! machine: `bench/results/latest.json` and `bench/results/latest.md`.
//!
//! Not part of `cargo test`: run it with `scripts/bench.sh` (or
//! `cargo run --release -p fish-bench` after building fishd in release).
//!
//! Three nodes, each fresh, so one part's leftovers never weigh on another's:
//! - `api`: idle footprint, then the HTTP figures (healthz, GET, list of 1,000, POST)
//!   at 1, 16 and 64 connections, sampling its memory under that load.
//! - `small`: the scale point at 100 stored applications, and watch fan-out
//!   (1 watcher as reference, then 100).
//! - `scale`: the allocation burst of 1,000 applications on an empty node, then
//!   more bursts of 1,000 up to 10,000 stored applications, the scale points at
//!   1,000 and 10,000, the footprint with 10,000, and a timed restart.

mod alloc;
mod ceiling;
mod daemon;
mod fanout;
mod load;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tracing::info;

use alloc::{Tracker, burst, label_yaml, singles};
use daemon::Daemon;
use load::{LoadResult, closed_loop};
use report::*;
use stats::{Latency, ratio, round3};

/// Runs the benchmark suite against release fishd processes and writes the results.
#[derive(Parser, Debug)]
#[command(name = "fish-bench", about)]
struct Args {
    /// Where the results go [default: bench/results of this workspace].
    #[arg(long)]
    out: Option<PathBuf>,
    /// The fishd binary [default: the one next to this executable].
    #[arg(long)]
    fishd: Option<PathBuf>,
    /// Seconds each load point is measured (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    window: f64,
    /// The largest scale point (stored applications).
    #[arg(long, default_value_t = 10_000)]
    scale_max: usize,
    /// A smoke run: short windows, 2,000 applications at most; results go to
    /// `quick.json`/`quick.md` instead of `latest.*`.
    #[arg(long)]
    quick: bool,
}

/// Connections used to create and deallocate applications in bursts.
const BURST_CONNECTIONS: usize = 16;
/// Applications allocated one at a time at each scale point.
const SINGLES: usize = 20;
/// Full lists timed at each scale point.
const LIST_SAMPLES: usize = 10;
/// Rounds of the watch fan-out.
const FAN_ROUNDS: usize = 100;
/// The concurrencies of the API figures.
const CONCURRENCY: [usize; 3] = [1, 16, 64];

fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    {
        use tracing_subscriber::filter::Targets;
        use tracing_subscriber::prelude::*;
        let filter = std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .init();
    }
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let load_start = daemon::loadavg();
    let fishd = match &args.fishd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("executable without a directory")?.join("fishd"),
    };
    if !fishd.exists() {
        bail!("{} is missing: build it with `cargo build --release -p fishd`", fishd.display());
    }
    let out = args.out.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    let window = Duration::from_secs_f64(if args.quick { 1.0 } else { args.window });
    let scale_max = if args.quick { args.scale_max.min(2_000) } else { args.scale_max };
    let work = tempfile::tempdir()?;
    info!(fishd = %fishd.display(), work = %work.path().display(), "fish-bench starting");

    let ceiling_window = window.min(Duration::from_secs(2));
    let ceiling_dir = work.path().join("ceiling");
    info!("store ceiling");
    let ceiling_at_start = ceiling::measure(&ceiling_dir, ceiling_window).await?;
    info!(?ceiling_at_start, "store ceiling measured");

    let (api, footprint_api) =
        api_node(&fishd, &work.path().join("api"), window, ceiling_at_start.redb_commits_per_s).await?;
    let (small_point, fan1, fan100, restart_small) = small_node(&fishd, &work.path().join("small")).await?;
    // Again, right before the allocation burst it is the reference of.
    let ceiling = ceiling::measure(&ceiling_dir, ceiling_window).await?;
    info!(?ceiling, "store ceiling measured again");
    let scale = scale_node(&fishd, &work.path().join("scale"), scale_max, &ceiling_dir, ceiling_window).await?;
    // fsync-bound figures swing with the other writers on this disk: the burst is
    // read against the higher of the ceilings measured just before and just after it.
    let redb_reference = ceiling.redb_commits_per_s.max(scale.ceiling_after.redb_commits_per_s);

    let mut scale_points = vec![small_point];
    scale_points.extend(scale.points.clone());
    let headline = scale.bursts.first().cloned().context("no allocation burst ran")?;
    let load_end = daemon::loadavg();
    let results = Results {
        meta: Meta {
            date: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
            git_commit: git_commit(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            loadavg_start: load_start,
            loadavg_end: load_end,
            suite_seconds: round3(started.elapsed().as_secs_f64()),
            window_seconds: window.as_secs_f64(),
            quick: args.quick,
            notes: notes(args.quick, scale_max),
        },
        ceiling: ceiling.clone(),
        ceiling_at_start,
        ceiling_after_burst: scale.ceiling_after.clone(),
        api,
        allocation: Allocation {
            burst: headline.clone(),
            redb_reference,
            alloc_ratio_to_redb: ratio(headline.allocate.apps_per_s, redb_reference),
            dealloc_ratio_to_redb: ratio(headline.deallocate.apps_per_s, redb_reference),
            more_bursts: scale.bursts[1..].to_vec(),
        },
        watch: Watch {
            ratio_p99: ratio(fan100.last_watcher.p99_ms, fan1.last_watcher.p99_ms),
            fan_out: fan100,
            reference_one_watcher: fan1,
        },
        footprint: Footprint {
            idle_rss_mb: footprint_api.idle_rss_mb,
            api_load_rss_mb: footprint_api.load_rss_mb,
            api_load_peak_rss_mb: footprint_api.load_peak_rss_mb,
            stored_10k_rss_mb: scale.rss_mb,
            stored_10k_rss_after_restart_mb: scale.rss_after_restart_mb,
            stored: scale.stored,
            startup_fresh_ms: footprint_api.startup_fresh_ms,
            startup_small_ms: restart_small.0,
            startup_small_stored: restart_small.1,
            startup_stored_ms: scale.startup_ms,
            store_bytes_fresh: footprint_api.store_bytes_fresh,
            store_bytes_stored: scale.store_bytes,
            store_bytes_per_app: scale.store_bytes_per_app,
            app_json_bytes: scale.app_json_bytes,
        },
        scale: scale_points,
        targets: Vec::new(),
    };
    let results = results.with_targets();
    let stem = if args.quick { "quick" } else { "latest" };
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(out.join(format!("{stem}.md")), results.markdown())?;
    info!(out = %out.display(), seconds = started.elapsed().as_secs(), "results written");
    Ok(())
}

fn notes(quick: bool, scale_max: usize) -> Vec<String> {
    let mut n = vec![
        "The load generator runs in-process on the same 2 cores as fishd: every throughput is a \
         shared-machine figure, and client_cores/fishd_cores say who used the CPU."
            .to_owned(),
        format!(
            "Bursts create and deallocate over {BURST_CONNECTIONS} connections; the scale node grows in \
             bursts of 1,000 (each allocated, then deallocated) so at most 1,000 are ALLOCATED at once."
        ),
        format!("{SINGLES} one-at-a-time allocations and {LIST_SAMPLES} full lists per scale point."),
        "Durable commits swing with the other writers on this shared disk: the allocation burst is read \
         against the higher of the redb ceilings measured just before and just after it."
            .to_owned(),
        format!(
            "API points: each figure and its /healthz reference run in {SLICES} interleaved slices of a third of \
             the window each, merged."
        ),
    ];
    if quick {
        n.push(format!("Quick run: 1 s windows and at most {scale_max} stored applications."));
    }
    n
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=7"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn mb(kib: Option<u64>) -> f64 {
    round3(kib.unwrap_or(0) as f64 * 1024.0 / 1e6)
}

/// Clients with a connection each.
fn clients(d: &Daemon, n: usize) -> Result<Vec<reqwest::Client>> {
    (0..n).map(|_| d.new_client()).collect()
}

/// Waits until no application is NEW or ELECTED (background allocation is done).
async fn settle(d: &Daemon) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut busy = 0;
        for phase in ["NEW", "ELECTED"] {
            let (code, v) = d.get(&format!("/api/v1/applications?phase={phase}")).await?;
            if code != 200 {
                bail!("list failed: {code}");
            }
            busy += v["items"].as_array().map(Vec::len).unwrap_or(0);
        }
        if busy == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{busy} applications still waiting for allocation after 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The highest resident memory seen while a sampler runs.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kib = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max_kib.clone());
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                if let Some(kib) = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    m.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        RssSampler { stop, max_kib, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max_kib.load(Ordering::Relaxed)
    }
}

struct ApiFootprint {
    idle_rss_mb: f64,
    load_rss_mb: f64,
    load_peak_rss_mb: f64,
    startup_fresh_ms: f64,
    store_bytes_fresh: u64,
}

/// Answers whether a request got `expect` and its whole body was read.
async fn check(r: reqwest::Result<reqwest::Response>, expect: u16) -> bool {
    match r {
        Ok(r) => r.status().as_u16() == expect && r.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// What a load point sends.
#[derive(Clone, Copy, Debug)]
enum Req {
    Healthz,
    Get,
    List,
    Post,
}

/// One slice of load of `kind` from `clients`.
async fn slice(
    d: &Daemon,
    clients: &[reqwest::Client],
    kind: Req,
    tag: usize,
    warm: Duration,
    window: Duration,
) -> LoadResult {
    let pid = d.pid().unwrap_or(0);
    let cpu = move || daemon::cpu_seconds_of(&format!("/proc/{pid}/stat"));
    let (base, token) = (d.url.clone(), d.token.clone());
    let c = clients.len();
    closed_loop(clients, warm, window, cpu, move |cl, w, seq| {
        let (base, token) = (base.clone(), token.clone());
        async move {
            let r = match kind {
                Req::Healthz => cl.get(format!("{base}/healthz")).send().await,
                Req::Get => cl.get(format!("{base}/api/v1/applications/listed-0")).bearer_auth(token).send().await,
                Req::List => cl.get(format!("{base}/api/v1/applications?label=listed")).bearer_auth(token).send().await,
                Req::Post => {
                    let body = alloc::application(&format!("post-{c}-{tag}-{w}-{seq}"), "bench");
                    cl.post(format!("{base}/api/v1/applications")).bearer_auth(token).json(&body).send().await
                }
            };
            check(r, if matches!(kind, Req::Post) { 201 } else { 200 }).await
        }
    })
    .await
}

/// Slices a load point is split into, interleaved with its reference.
const SLICES: usize = 3;

/// The `api` node: idle footprint, then the HTTP figures.
async fn api_node(fishd: &Path, dir: &Path, window: Duration, redb: f64) -> Result<(Vec<ApiPoint>, ApiFootprint)> {
    info!("api node: starting");
    let (d, startup) = Daemon::start(fishd, dir).await?;
    // Idle: after start-up work (bootstrap, first heartbeat) is over.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_mb = mb(d.rss_kib());
    let store_bytes_fresh = d.store_bytes();
    d.apply(&(label_yaml("bench") + "---\n" + &label_yaml("listed"))).await?;
    let tracker = Tracker::start(&d).await?;
    let all = clients(&d, 64)?;
    info!("api node: storing the 1,000 applications to list");
    burst(&d, &tracker, &all[..BURST_CONNECTIONS], "listed", "listed", 1000, 0).await?;

    let pid = d.pid().context("fishd is not running")?;
    let sampler = RssSampler::start(pid);
    let mut points = Vec::new();
    let part = window / SLICES as u32;
    for c in CONCURRENCY {
        let cs = &all[..c];
        info!(concurrency = c, "api node: healthz, GET, list");
        let (mut h, mut g, mut l) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..SLICES {
            let warm = if i == 0 { load::WARMUP } else { load::REWARM };
            h.push(slice(&d, cs, Req::Healthz, i, warm, part).await);
            g.push(slice(&d, cs, Req::Get, i, warm, part).await);
            l.push(slice(&d, cs, Req::List, i, warm, part).await);
        }
        let healthz = LoadResult::merge(&h);
        points.push(ApiPoint::new("GET /healthz", &healthz, &healthz, None));
        points.push(ApiPoint::new("GET /api/v1/applications/<name>", &LoadResult::merge(&g), &healthz, None));
        points.push(ApiPoint::new(
            "GET /api/v1/applications?label= (1,000 items)",
            &LoadResult::merge(&l),
            &healthz,
            None,
        ));
    }
    // POST last: every create starts an allocation in the background, so each slice
    // is followed by a wait until they are all done.
    for c in CONCURRENCY {
        let cs = &all[..c];
        info!(concurrency = c, "api node: healthz, POST");
        let (mut h, mut p) = (Vec::new(), Vec::new());
        for i in 0..SLICES {
            let warm = if i == 0 { load::WARMUP } else { load::REWARM };
            h.push(slice(&d, cs, Req::Healthz, i, warm, part).await);
            p.push(slice(&d, cs, Req::Post, i, warm, part).await);
            settle(&d).await?;
        }
        let healthz = LoadResult::merge(&h);
        points.push(ApiPoint::new("POST /api/v1/applications", &LoadResult::merge(&p), &healthz, Some(redb)));
    }
    let load_rss_kib = sampler.finish().await;
    let footprint = ApiFootprint {
        idle_rss_mb,
        load_rss_mb: mb(Some(load_rss_kib)),
        load_peak_rss_mb: mb(d.peak_rss_kib()),
        startup_fresh_ms: round3(startup.as_secs_f64() * 1000.0),
        store_bytes_fresh,
    };
    Ok((points, footprint))
}

/// Times full lists (and an index-served empty list) and one-at-a-time allocations.
async fn scale_point(d: &Daemon, tracker: &Tracker, tag: &str, stored: usize) -> Result<ScalePoint> {
    info!(stored, "scale point");
    let mut full = Vec::new();
    let mut bytes = 0;
    // One untimed list first: the first read of the pages after the bursts.
    d.get("/api/v1/applications").await?;
    for _ in 0..LIST_SAMPLES {
        let t0 = Instant::now();
        let r = d.client.get(d.url("/api/v1/applications")).bearer_auth(&d.token).send().await?;
        if r.status() != 200 {
            bail!("list: {}", r.status());
        }
        bytes = r.bytes().await?.len();
        full.push(t0.elapsed());
    }
    let mut filtered = Vec::new();
    for _ in 0..LIST_SAMPLES {
        let t0 = Instant::now();
        let (code, _) = d.get("/api/v1/applications?phase=ALLOCATED").await?;
        if code != 200 {
            bail!("list: {code}");
        }
        filtered.push(t0.elapsed());
    }
    let single = singles(d, tracker, &format!("single-{tag}"), "bench", SINGLES, stored).await?;
    Ok(ScalePoint {
        stored,
        list_all: Latency::of(full),
        list_all_bytes: bytes,
        list_phase_allocated: Latency::of(filtered),
        allocate: single.allocate,
        deallocate: single.deallocate,
        ratio_list_to_first: 0.0,
        ratio_allocate_to_first: 0.0,
    })
}

/// The `small` node: the scale point at 100, watch fan-out, a restart for reference.
async fn small_node(fishd: &Path, dir: &Path) -> Result<(ScalePoint, fanout::FanOut, fanout::FanOut, (f64, usize))> {
    info!("small node: starting");
    let (mut d, _) = Daemon::start(fishd, dir).await?;
    d.apply(&label_yaml("bench")).await?;
    let tracker = Tracker::start(&d).await?;
    let cs = clients(&d, BURST_CONNECTIONS)?;
    burst(&d, &tracker, &cs, "fill", "bench", 100, 0).await?;
    let point = scale_point(&d, &tracker, "100", 100).await?;
    info!("small node: watch fan-out, 1 watcher");
    let one = fanout::fan_out(&d, &tracker, "one", 1, FAN_ROUNDS).await?;
    info!("small node: watch fan-out, 100 watchers");
    let hundred = fanout::fan_out(&d, &tracker, "hundred", 100, FAN_ROUNDS).await?;
    let stored = 100 + SINGLES + 2 * FAN_ROUNDS;
    drop(tracker);
    let restart = d.restart().await?;
    Ok((point, one, hundred, (round3(restart.as_secs_f64() * 1000.0), stored)))
}

struct ScaleNode {
    bursts: Vec<alloc::Burst>,
    ceiling_after: ceiling::Ceiling,
    points: Vec<ScalePoint>,
    stored: usize,
    rss_mb: f64,
    rss_after_restart_mb: f64,
    startup_ms: f64,
    store_bytes: u64,
    store_bytes_per_app: f64,
    app_json_bytes: usize,
}

/// The `scale` node: the headline burst, growth to `max` stored applications.
async fn scale_node(
    fishd: &Path,
    dir: &Path,
    max: usize,
    ceiling_dir: &Path,
    ceiling_window: Duration,
) -> Result<ScaleNode> {
    info!("scale node: starting");
    let (mut d, _) = Daemon::start(fishd, dir).await?;
    d.apply(&label_yaml("bench")).await?;
    let tracker = Tracker::start(&d).await?;
    let cs = clients(&d, BURST_CONNECTIONS)?;
    let mut stored = 0;
    let mut bursts = Vec::new();
    let mut points = Vec::new();
    let marks = [1_000, max];
    let mut chunk = 0;
    let mut ceiling_after = None;
    while stored < max {
        let n = 1000.min(max - stored);
        info!(stored, n, "scale node: burst");
        bursts.push(burst(&d, &tracker, &cs, &format!("chunk{chunk}"), "bench", n, stored).await?);
        chunk += 1;
        stored += n;
        if ceiling_after.is_none() {
            ceiling_after = Some(ceiling::measure(ceiling_dir, ceiling_window).await?);
            info!(?ceiling_after, "store ceiling measured after the burst");
        }
        if marks.contains(&stored) {
            points.push(scale_point(&d, &tracker, &stored.to_string(), stored).await?);
            stored += SINGLES;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_mb = mb(d.rss_kib());
    let (_, one) = d.get("/api/v1/applications/chunk0-0").await?;
    let app_json_bytes = serde_json::to_vec(&one)?.len();
    drop(tracker);
    info!(stored, "scale node: restart");
    let startup = d.restart().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_restart_mb = mb(d.rss_kib());
    let store_bytes = d.store_bytes();
    Ok(ScaleNode {
        bursts,
        ceiling_after: ceiling_after.context("no burst ran")?,
        points,
        stored,
        rss_mb,
        rss_after_restart_mb,
        startup_ms: round3(startup.as_secs_f64() * 1000.0),
        store_bytes,
        store_bytes_per_app: round3(store_bytes as f64 / stored.max(1) as f64),
        app_json_bytes,
    })
}
