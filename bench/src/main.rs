//! `fish-bench`: the benchmark suite. It starts real release `fishd` processes (the
//! binary next to this one), drives them over HTTPS, and writes every figure next
//! to a reference measured in the same run, so that the ratios hold even on a noisy
//! machine: `bench/results/latest.json` and `bench/results/latest.md`.
//!
//! Not part of `cargo test` (nor of CI): run it with `scripts/bench.sh` (or
//! `cargo run --release -p fish-bench` after building fishd in release).
//!
//! The main part, each node fresh so one part's leftovers never weigh on another's:
//! - `api`: idle footprint, then the HTTP figures (healthz, GET, list of 1,000, POST)
//!   at 1, 16 and 64 connections, sampling its memory under that load.
//! - `small`: the scale point at 100 stored applications, and watch fan-out
//!   (1 watcher as reference, then 100 and 1,000).
//! - `flat` (see [`flat`]): nodes with none, 10,000 and 100,000 finished applications
//!   stored (seeded fast, see [`seed`]), running side by side: bursts of 1,000 on each
//!   in rounds, one at a time, lists, start-up and the redb file of the largest.
//!
//! Then the cluster part (see [`cluster`]): a single node next to a 3-node cluster,
//! and failover; written to `bench/results/cluster.json` and `cluster.md`.
//! `--only main` or `--only cluster` runs one of the two.
//!
//! `--check` is the regression gate (see [`check`]): a quick main part whose ratios
//! are compared with the committed `latest.json`; it fails when one dropped by more
//! than 25 %.

mod alloc;
mod ceiling;
mod check;
mod cluster;
mod daemon;
mod fanout;
mod flat;
mod load;
mod report;
mod seed;
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
    /// The finished applications the `flat` nodes are seeded with, ascending
    /// [default: 10000,100000; with --quick: 1000,5000].
    #[arg(long, value_delimiter = ',')]
    stored: Option<Vec<usize>>,
    /// Rounds of bursts in the `flat` part [default: 3; with --quick or --check: 2].
    #[arg(long)]
    rounds: Option<usize>,
    /// A smoke run: 1 s windows, fewer stored applications; results go to
    /// `quick.json`/`quick.md` instead of `latest.*`.
    #[arg(long)]
    quick: bool,
    /// The regression gate: a quick main part (1 s windows, 2 rounds, the committed
    /// stored counts) written to `check.json`/`check.md`, its ratios compared with
    /// `latest.json`; exits 1 when one dropped by more than 25 %.
    #[arg(long, conflicts_with_all = ["quick", "only"])]
    check: bool,
    /// With --check: compare this results file (e.g. bench/results/check.json) instead
    /// of running anything.
    #[arg(long, requires = "check")]
    compare: Option<PathBuf>,
    /// Run only this part: `main` (latest.*) or `cluster` (cluster.*; a quick run
    /// writes quick-cluster.*).
    #[arg(long, value_enum)]
    only: Option<Part>,
    #[command(subcommand)]
    command: Option<Sub>,
}

/// Tools beside the suite.
#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Fills a bench node's directory with finished applications, fast (see
    /// `bench/src/seed.rs`), then prints how to start fishd on it.
    Seed {
        /// The node's directory: `fish.yml` and `data/` go there (created if missing;
        /// fishd is started there once for its CA, admin and label).
        #[arg(long)]
        dir: PathBuf,
        /// Finished (DEALLOCATED) applications it holds afterwards.
        #[arg(long)]
        stored: usize,
        /// Create them through the API (bursts of 1,000 over 16 connections) instead
        /// of through the store: slow, for comparing the file real traffic leaves.
        #[arg(long)]
        via_api: bool,
        /// Print only the result as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Commands in flight at once while seeding: about twice the proposals each
        /// log entry carries (fishd's group commit).
        #[arg(long, default_value_t = seed::IN_FLIGHT)]
        in_flight: usize,
    },
    /// Bursts on one fresh node, one after another (each removes its applications
    /// afterwards): for profiling how a node's allocation rate moves with the work it
    /// has done. Prints each round's rates; `--perf-round K` records round K with
    /// `perf record -g` into `perf-round-K.data` in the work directory.
    Bursts {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[arg(long, default_value_t = flat::BURST)]
        size: usize,
        /// The work directory (kept); a temporary one when missing.
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        perf_round: Option<usize>,
        /// Run on the node that ran in this directory before (a seeded one, see `seed`)
        /// instead of a fresh one.
        #[arg(long)]
        attach: Option<PathBuf>,
        /// After each round, this many applications one at a time (create → ALLOCATED
        /// p50/p99 printed): the suite's one-at-a-time figure in seconds, not minutes.
        #[arg(long, default_value_t = 0)]
        singles: usize,
    },
}

/// The parts of the suite, each with its own results file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    Main,
    Cluster,
}

/// Connections used to create and deallocate applications in bursts.
const BURST_CONNECTIONS: usize = flat::CONNECTIONS;
/// Applications allocated one at a time at each scale point.
const SINGLES: usize = 20;
/// The `flat` part's seeded counts, unless `--stored` says otherwise.
const STORED: [usize; 2] = [10_000, 100_000];
const STORED_QUICK: [usize; 2] = [1_000, 5_000];
/// Full lists are timed on seeded nodes up to this many stored (at 100,000 one answer
/// is ~110 MB).
const LIST_ALL_MAX: usize = 10_000;
/// Full lists timed at each scale point.
const LIST_SAMPLES: usize = 10;
/// Rounds of the watch fan-out (100, so p99 is not simply the slowest round).
const FAN_ROUNDS: usize = 100;
/// Watchers of the fan-out figures; the reference is one watcher.
const FAN_WATCHERS: [usize; 2] = [100, 1_000];
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
            // The store's Raft (the ceiling, the seeding) says a lot at INFO.
            .unwrap_or_else(|| {
                Targets::new().with_default(tracing::Level::INFO).with_target("openraft", tracing::Level::WARN)
            });
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(filter)
            .init();
    }
    let args = Args::parse();
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let fishd = match &args.fishd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.parent().context("executable without a directory")?.join("fishd"),
    };
    if !fishd.exists() {
        bail!("{} is missing: build it with `cargo build --release -p fishd`", fishd.display());
    }
    if let Some(Sub::Seed { dir, stored, via_api, json, in_flight }) = &args.command {
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let seeded = seed::seed(&fishd, &dir, *stored, *via_api, *in_flight).await?;
        if *json {
            println!("{}", serde_json::to_string(&seeded)?);
        } else {
            println!(
                "{} finished applications in {} ({} via {} in {:.1} s); redb file {:.1} MB, {:.0} bytes per application.\n\
                 Start fishd on it: {} --config {}",
                seeded.stored,
                dir.display(),
                seeded.stored - 1,
                seeded.via,
                seeded.seconds,
                seeded.store_bytes as f64 / 1e6,
                seeded.store_bytes_per_app,
                fishd.display(),
                dir.join("fish.yml").display()
            );
        }
        return Ok(());
    }
    if let Some(Sub::Bursts { rounds, size, dir, perf_round, attach, singles }) = &args.command {
        let plan = flat::BurstsPlan { rounds: *rounds, size: *size, perf_round: *perf_round, singles: *singles };
        return flat::bursts(&fishd, dir.as_deref(), attach.as_deref(), plan).await;
    }
    let out = args.out.clone().unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results"));
    if args.check {
        let now = match &args.compare {
            Some(file) => check::ratios_of(file)?,
            None => run_main(&args, &fishd, &out).await?.ratios,
        };
        let ok = check::compare(&out.join("latest.json"), &now)?;
        if !ok {
            std::process::exit(1);
        }
        return Ok(());
    }
    if args.only != Some(Part::Cluster) {
        run_main(&args, &fishd, &out).await?;
    }
    if args.only != Some(Part::Main) {
        let work = tempfile::tempdir()?;
        info!(fishd = %fishd.display(), work = %work.path().display(), "fish-bench cluster part starting");
        let results = cluster::run(&fishd, work.path(), args.quick).await?;
        let stem = if args.quick { "quick-cluster" } else { "cluster" };
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(&results)? + "\n")?;
        std::fs::write(out.join(format!("{stem}.md")), results.markdown())?;
        for t in &results.targets {
            info!(figure = %t.name, target = %t.target, measured = %t.measured, met = t.met, "cluster target");
        }
        info!(out = %out.display(), "cluster results written");
    }
    Ok(())
}

/// The main suite: the `api`, `small` and `flat` parts (see the module docs).
async fn run_main(args: &Args, fishd: &Path, out: &Path) -> Result<Results> {
    let started = Instant::now();
    let load_start = daemon::loadavg();
    let fishd = fishd.to_owned();
    let short = args.quick || args.check;
    let window = Duration::from_secs_f64(if short { 1.0 } else { args.window });
    let stored = match &args.stored {
        Some(s) => s.clone(),
        None if args.quick => STORED_QUICK.to_vec(),
        None => STORED.to_vec(),
    };
    if stored.is_empty() || stored.windows(2).any(|w| w[0] >= w[1]) || stored[0] == 0 {
        bail!("--stored wants ascending counts above 0, e.g. 10000,100000");
    }
    let plan = flat::Plan {
        stored: stored.clone(),
        rounds: args.rounds.unwrap_or(if short { 2 } else { 3 }).max(1),
        singles: SINGLES,
        list_samples: LIST_SAMPLES,
        list_all_max: LIST_ALL_MAX,
    };
    let work = tempfile::tempdir()?;
    info!(fishd = %fishd.display(), work = %work.path().display(), "fish-bench starting");

    let ceiling_window = window.min(Duration::from_secs(2));
    let ceiling_dir = work.path().join("ceiling");
    info!("store ceiling");
    let ceiling_at_start = ceiling::measure(&ceiling_dir, ceiling_window).await?;
    info!(?ceiling_at_start, "store ceiling measured");

    let (api, footprint_api) =
        api_node(&fishd, &work.path().join("api"), window, ceiling_at_start.redb_commits_per_s).await?;
    let small = small_node(&fishd, &work.path().join("small")).await?;
    // Again, right before the allocation bursts they are the reference of.
    let ceiling = ceiling::measure(&ceiling_dir, ceiling_window).await?;
    info!(?ceiling, "store ceiling measured again");
    let flat = flat::run(&fishd, &work.path().join("flat"), &plan).await?;
    let ceiling_after = ceiling::measure(&ceiling_dir, ceiling_window).await?;
    info!(?ceiling_after, "store ceiling measured after the bursts");
    // fsync-bound figures swing with the other writers on this disk: the bursts are
    // read against the higher of the ceilings measured just before and just after them.
    let redb_reference = ceiling.redb_commits_per_s.max(ceiling_after.redb_commits_per_s);
    let none = flat.nodes.first().context("no flat node")?;
    let headline = none.bursts.first().cloned().context("no allocation burst ran")?;
    let allocation = Allocation {
        burst: headline,
        allocate_apps_per_s: none.allocate_apps_per_s,
        deallocate_apps_per_s: none.deallocate_apps_per_s,
        redb_reference,
        alloc_ratio_to_redb: ratio(none.allocate_apps_per_s, redb_reference),
        dealloc_ratio_to_redb: ratio(none.deallocate_apps_per_s, redb_reference),
    };

    let load_end = daemon::loadavg();
    let (one, fans) = small.fans.split_first().context("no fan-out ran")?;
    let widest = fans.last().context("no fan-out ran")?.clone();
    let results = Results {
        meta: Meta {
            date: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
            git_commit: git_commit(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            loadavg_start: load_start,
            loadavg_end: load_end,
            suite_seconds: round3(started.elapsed().as_secs_f64()),
            window_seconds: window.as_secs_f64(),
            quick: short,
            notes: notes(short, &plan),
        },
        ceiling: ceiling.clone(),
        ceiling_at_start,
        ceiling_after_burst: ceiling_after,
        api,
        allocation,
        watch: Watch {
            ratio_p99: ratio(widest.last_watcher.p99_ms, one.last_watcher.p99_ms),
            fan_out: widest,
            reference_one_watcher: one.clone(),
            more: fans[..fans.len() - 1].to_vec(),
        },
        footprint: Footprint {
            idle_rss_mb: footprint_api.idle_rss_mb,
            api_load_rss_mb: footprint_api.load_rss_mb,
            api_load_peak_rss_mb: footprint_api.load_peak_rss_mb,
            startup_fresh_ms: footprint_api.startup_fresh_ms,
            startup_small_ms: small.restart_ms,
            startup_small_stored: small.restart_stored,
            store_bytes_fresh: footprint_api.store_bytes_fresh,
            store_bytes_small: small.store_bytes,
            app_json_bytes: small.app_json_bytes,
        },
        flat,
        scale: vec![small.point],
        targets: Vec::new(),
        ratios: Vec::new(),
    };
    let results = results.with_targets();
    let stem = if args.check {
        "check"
    } else if args.quick {
        "quick"
    } else {
        "latest"
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(&results)? + "\n")?;
    std::fs::write(out.join(format!("{stem}.md")), results.markdown())?;
    info!(out = %out.display(), stem, seconds = started.elapsed().as_secs(), "results written");
    Ok(results)
}

fn notes(short: bool, plan: &flat::Plan) -> Vec<String> {
    let stored: Vec<String> = plan.stored.iter().map(|n| n.to_string()).collect();
    let mut n = vec![
        "The load generator runs in-process on the same 2 cores as fishd: every throughput is a \
         shared-machine figure, and client_cores/fishd_cores say who used the CPU."
            .to_owned(),
        format!(
            "Flat part: nodes with 0 and {} finished applications stored (seeded through fishd's Store with \
             the commands the API and the reconciler send), running at once. {} rounds; in each, a burst of \
             1,000 over {BURST_CONNECTIONS} connections on each node in turn, each only once every node is \
             idle. The node with none stored removes its 1,000 after each burst. Figures are medians over \
             the rounds.",
            stored.join(" and "),
            plan.rounds
        ),
        format!("{SINGLES} one-at-a-time allocations and {LIST_SAMPLES} lists per point."),
        "Durable commits swing with the other writers on this shared disk: the bursts are read \
         against the higher of the redb ceilings measured just before and just after them."
            .to_owned(),
        format!(
            "API points: each figure and its /healthz reference run in {SLICES} interleaved slices of a third of \
             the window each, merged."
        ),
    ];
    if short {
        n.push("Quick run: 1 s windows.".to_owned());
    }
    n
}

/// Raises the soft limit of open files to the hard one: the fan-out holds 1,000
/// connections here and 1,000 in fishd (which inherits the limit).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        eprintln!("cannot raise the open-files limit from {soft} to {hard}: {e}");
    }
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

/// What the `small` node measured.
struct Small {
    point: ScalePoint,
    /// One watcher, then [`FAN_WATCHERS`].
    fans: Vec<fanout::FanOut>,
    restart_ms: f64,
    restart_stored: usize,
    store_bytes: u64,
    app_json_bytes: usize,
}

/// The `small` node: the scale point at 100, watch fan-out, a restart for reference.
async fn small_node(fishd: &Path, dir: &Path) -> Result<Small> {
    info!("small node: starting");
    let (mut d, _) = Daemon::start(fishd, dir).await?;
    d.apply(&label_yaml("bench")).await?;
    let tracker = Tracker::start(&d).await?;
    let cs = clients(&d, BURST_CONNECTIONS)?;
    burst(&d, &tracker, &cs, "fill", "bench", 100, 0).await?;
    let point = scale_point(&d, &tracker, "100", 100).await?;
    let (_, one) = d.get("/api/v1/applications/fill-0").await?;
    let app_json_bytes = serde_json::to_vec(&one)?.len();
    let mut fans = Vec::new();
    for w in std::iter::once(1).chain(FAN_WATCHERS) {
        info!(watchers = w, "small node: watch fan-out");
        fans.push(fanout::fan_out(&d, &tracker, &format!("w{w}"), w, FAN_ROUNDS).await?);
    }
    let stored = 100 + SINGLES + fans.len() * FAN_ROUNDS;
    drop(tracker);
    let restart = d.restart().await?;
    let store_bytes = d.store_bytes();
    Ok(Small {
        point,
        fans,
        restart_ms: round3(restart.as_secs_f64() * 1000.0),
        restart_stored: stored,
        store_bytes,
        app_json_bytes,
    })
}
