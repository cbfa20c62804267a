//! The results file: every figure with its reference and their ratio, the targets
//! they are held to, and a Markdown rendering for people.

use std::fmt::Write;

use serde::Serialize;

use crate::alloc::Burst;
use crate::ceiling::Ceiling;
use crate::fanout::FanOut;
use crate::load::LoadResult;
use crate::stats::{Latency, ratio, round3};

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Results {
    pub meta: Meta,
    /// Measured just before the allocation burst; the allocation ratios use it.
    pub ceiling: Ceiling,
    /// Measured at the start, just before the API figures; the POST ratios use it.
    pub ceiling_at_start: Ceiling,
    /// Measured just after the allocation burst.
    pub ceiling_after_burst: Ceiling,
    pub api: Vec<ApiPoint>,
    pub allocation: Allocation,
    pub watch: Watch,
    pub footprint: Footprint,
    pub scale: Vec<ScalePoint>,
    pub targets: Vec<Target>,
}

/// When, where and how the run happened.
#[derive(Debug, Serialize)]
pub struct Meta {
    pub date: String,
    pub git_commit: String,
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages when the suite started and ended: the
    /// machine is shared, and this says how busy it was.
    pub loadavg_start: [f64; 3],
    pub loadavg_end: [f64; 3],
    pub suite_seconds: f64,
    pub window_seconds: f64,
    pub quick: bool,
    pub notes: Vec<String>,
}

/// One endpoint at one concurrency, next to `/healthz` at the same concurrency.
#[derive(Debug, Serialize)]
pub struct ApiPoint {
    pub endpoint: String,
    #[serde(flatten)]
    pub result: LoadResult,
    pub healthz_rps: f64,
    pub ratio_to_healthz: f64,
    /// For writes: the ratio to durable redb commits/s, their natural ceiling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_redb_commits: Option<f64>,
}

impl ApiPoint {
    pub fn new(endpoint: &str, result: &LoadResult, healthz: &LoadResult, redb: Option<f64>) -> ApiPoint {
        ApiPoint {
            endpoint: endpoint.to_owned(),
            result: result.clone(),
            healthz_rps: healthz.rps,
            ratio_to_healthz: ratio(result.rps, healthz.rps),
            ratio_to_redb_commits: redb.map(|c| ratio(result.rps, c)),
        }
    }
}

/// The allocation figures, next to the store's ceiling.
#[derive(Debug, Serialize)]
pub struct Allocation {
    /// 1,000 applications on an empty node.
    pub burst: Burst,
    /// The higher of the redb ceilings just before and just after the burst.
    pub redb_reference: f64,
    pub alloc_ratio_to_redb: f64,
    pub dealloc_ratio_to_redb: f64,
    /// The bursts that grew the scale node, each with how many were stored before.
    pub more_bursts: Vec<Burst>,
}

/// Watch fan-out, next to the same with one watcher.
#[derive(Debug, Serialize)]
pub struct Watch {
    pub fan_out: FanOut,
    pub reference_one_watcher: FanOut,
    pub ratio_p99: f64,
}

/// Memory, start-up and disk.
#[derive(Debug, Serialize)]
pub struct Footprint {
    /// MB are 10^6 bytes throughout.
    pub idle_rss_mb: f64,
    /// Highest RSS sampled (every 100 ms) during the API load.
    pub api_load_rss_mb: f64,
    /// The kernel's high-water mark of the API node at the end of its load.
    pub api_load_peak_rss_mb: f64,
    pub stored_10k_rss_mb: f64,
    pub stored_10k_rss_after_restart_mb: f64,
    pub stored: usize,
    /// First start: includes creating the CA, keys and the admin user.
    pub startup_fresh_ms: f64,
    /// Restart (SIGTERM, spawn, until `/readyz` answers) of the small node.
    pub startup_small_ms: f64,
    pub startup_small_stored: usize,
    /// Restart of the scale node with `stored` applications.
    pub startup_stored_ms: f64,
    pub store_bytes_fresh: u64,
    pub store_bytes_stored: u64,
    pub store_bytes_per_app: f64,
    /// One stored application as the API returns it (JSON), for comparison.
    pub app_json_bytes: usize,
}

/// Cost at one number of stored applications.
#[derive(Clone, Debug, Serialize)]
pub struct ScalePoint {
    pub stored: usize,
    /// `GET /api/v1/applications` (every application).
    pub list_all: Latency,
    pub list_all_bytes: usize,
    /// `GET /api/v1/applications?phase=ALLOCATED` (served from the phase index; empty).
    pub list_phase_allocated: Latency,
    /// One application at a time: create → ALLOCATED.
    pub allocate: Latency,
    pub deallocate: Latency,
    /// p50 here over p50 at the smallest point.
    pub ratio_list_to_first: f64,
    pub ratio_allocate_to_first: f64,
}

/// One target of the issue, with the figure measured.
#[derive(Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub target: String,
    pub measured: String,
    pub met: bool,
}

fn target(name: &str, target: &str, measured: String, met: bool) -> Target {
    Target { name: name.into(), target: target.into(), measured, met }
}

impl Results {
    /// Fills the scale ratios and the targets.
    pub fn with_targets(mut self) -> Results {
        if let Some(first) = self.scale.first().cloned() {
            for p in &mut self.scale {
                p.ratio_list_to_first = ratio(p.list_all.p50_ms, first.list_all.p50_ms);
                p.ratio_allocate_to_first = ratio(p.allocate.p50_ms, first.allocate.p50_ms);
            }
        }
        let mut t = Vec::new();
        for p in self.api.iter().filter(|p| p.endpoint == "GET /api/v1/applications/<name>") {
            t.push(target(
                &format!("authenticated GET at {} connections", p.result.concurrency),
                ">= 50% of /healthz",
                format!("{:.0}% ({:.0} vs {:.0} req/s)", p.ratio_to_healthz * 100.0, p.result.rps, p.healthz_rps),
                p.ratio_to_healthz >= 0.5,
            ));
        }
        let a = &self.allocation;
        t.push(target(
            "allocation throughput (1,000 apps)",
            ">= 25% of durable redb commits/s",
            format!(
                "{:.0}% ({:.0} apps/s vs {:.0} commits/s)",
                a.alloc_ratio_to_redb * 100.0,
                a.burst.allocate.apps_per_s,
                a.redb_reference
            ),
            a.alloc_ratio_to_redb >= 0.25,
        ));
        if let Some(first) = self.scale.first() {
            t.push(target(
                "p50 create -> ALLOCATED, one at a time (test driver)",
                "< 20 ms",
                format!("{:.1} ms ({} stored)", first.allocate.p50_ms, first.stored),
                first.allocate.p50_ms < 20.0,
            ));
        }
        t.push(target(
            "p50 create -> ALLOCATED within the 1,000 burst",
            "(no target; queueing included)",
            format!("{:.1} ms", a.burst.allocate.latency.p50_ms),
            true,
        ));
        t.push(target(
            "idle RSS",
            "< 30 MB",
            format!("{:.1} MB", self.footprint.idle_rss_mb),
            self.footprint.idle_rss_mb < 30.0,
        ));
        let w = &self.watch.fan_out;
        t.push(target(
            &format!("watch fan-out p99, {} watchers", w.watchers),
            "< 50 ms",
            format!("{:.1} ms", w.last_watcher.p99_ms),
            w.last_watcher.p99_ms < 50.0,
        ));
        self.targets = t;
        self
    }

    /// The readable table.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.meta;
        let _ = writeln!(s, "# fish-bench results\n");
        let _ = writeln!(
            s,
            "{} · commit `{}` · {} CPUs · load average {:.2} / {:.2} / {:.2} at start, {:.2} / {:.2} / {:.2} at end · \
             suite {:.0} s · {} s windows{}\n",
            m.date,
            m.git_commit,
            m.cpus,
            m.loadavg_start[0],
            m.loadavg_start[1],
            m.loadavg_start[2],
            m.loadavg_end[0],
            m.loadavg_end[1],
            m.loadavg_end[2],
            m.suite_seconds,
            m.window_seconds,
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

        let _ = writeln!(
            s,
            "\n## API (requests/s; reference: `/healthz` on the same server at the same concurrency)\n\n\
             | endpoint | conns | req/s | /healthz req/s | ratio | p50 ms | p99 ms | errors | fishd cores | client cores |\n\
             |---|---|---|---|---|---|---|---|---|---|"
        );
        for p in &self.api {
            let r = &p.result;
            let extra = match p.ratio_to_redb_commits {
                Some(x) => format!(" ({x:.2} of redb commits/s)"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.0} | {:.2}{} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
                p.endpoint,
                r.concurrency,
                r.rps,
                p.healthz_rps,
                p.ratio_to_healthz,
                extra,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.errors,
                r.fishd_cores,
                r.client_cores
            );
        }

        let c = &self.ceiling;
        let _ = writeln!(
            s,
            "\n## Allocation (test driver, latency 0; reference: the store's ceiling in this run)\n\n\
             Reference: **{:.0}** durable redb commits/s (one writer, 256 B), the higher of the ceilings \
             just before the first burst ({:.0}) and just after it ({:.0}). fishd store commands/s just before: \
             {:.0} one at a time, {:.0} from 64 callers (group commit). At the start of the run: {:.0} redb \
             commits/s, {:.0} and {:.0} store commands/s.\n\n\
             | burst | stored before | conns | direction | apps/s | ratio to redb commits/s | p50 ms | p99 ms | \
             requests/s | fishd cores |\n|---|---|---|---|---|---|---|---|---|---|",
            self.allocation.redb_reference,
            c.redb_commits_per_s,
            self.ceiling_after_burst.redb_commits_per_s,
            c.store_commands_per_s_serial,
            c.store_commands_per_s_grouped,
            self.ceiling_at_start.redb_commits_per_s,
            self.ceiling_at_start.store_commands_per_s_serial,
            self.ceiling_at_start.store_commands_per_s_grouped
        );
        let bursts = std::iter::once(&self.allocation.burst).chain(&self.allocation.more_bursts);
        for b in bursts {
            for (dir, f) in [("create → ALLOCATED", &b.allocate), ("deallocate → DEALLOCATED", &b.deallocate)] {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.0} | {:.2} |",
                    b.applications,
                    b.stored_before,
                    b.concurrency,
                    dir,
                    f.apps_per_s,
                    ratio(f.apps_per_s, self.allocation.redb_reference),
                    f.latency.p50_ms,
                    f.latency.p99_ms,
                    f.requests_per_s,
                    b.fishd_cores
                );
            }
        }

        let w = &self.watch;
        let _ = writeln!(
            s,
            "\n## Watch fan-out (create sent → event at the watcher; reference: one watcher)\n\n\
             | watchers | rounds | last watcher p50 ms | last watcher p99 ms | first watcher p50 ms | \
             create round trip p50 ms |\n|---|---|---|---|---|---|"
        );
        for f in [&w.reference_one_watcher, &w.fan_out] {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                f.watchers,
                f.rounds,
                f.last_watcher.p50_ms,
                f.last_watcher.p99_ms,
                f.first_watcher.p50_ms,
                f.create_round_trip.p50_ms
            );
        }
        let _ = writeln!(s, "\np99 ratio, {} watchers / 1: **{:.2}**", w.fan_out.watchers, w.ratio_p99);

        let f = &self.footprint;
        let _ = writeln!(
            s,
            "\n## Footprint (MB = 10^6 bytes)\n\n| figure | value | reference |\n|---|---|---|\n\
             | RSS idle (fresh node) | {:.1} MB | |\n\
             | RSS under the API load (max sampled / kernel peak) | {:.1} / {:.1} MB | idle: {:.1} MB ({:.1}×) |\n\
             | RSS with {} stored applications (after the bursts / after a restart) | {:.1} / {:.1} MB | idle: {:.1} MB |\n\
             | start-up, first start (CA, keys, admin user) | {:.0} ms | |\n\
             | start-up (restart) with {} stored | {:.0} ms | with {} stored: {:.0} ms ({:.1}×) |\n\
             | redb file with {} stored | {:.1} MB ({:.0} bytes per application) | fresh file {:.1} MB; one application as JSON: {} bytes |",
            f.idle_rss_mb,
            f.api_load_rss_mb,
            f.api_load_peak_rss_mb,
            f.idle_rss_mb,
            ratio(f.api_load_rss_mb, f.idle_rss_mb),
            f.stored,
            f.stored_10k_rss_mb,
            f.stored_10k_rss_after_restart_mb,
            f.idle_rss_mb,
            f.startup_fresh_ms,
            f.stored,
            f.startup_stored_ms,
            f.startup_small_stored,
            f.startup_small_ms,
            ratio(f.startup_stored_ms, f.startup_small_ms),
            f.stored,
            round3(f.store_bytes_stored as f64 / 1e6),
            f.store_bytes_per_app,
            round3(f.store_bytes_fresh as f64 / 1e6),
            f.app_json_bytes
        );

        let _ = writeln!(
            s,
            "\n## Scale curve (reference: the smallest point)\n\n\
             | stored | list all p50 ms | list bytes | ratio | list ?phase=ALLOCATED p50 ms | \
             allocate p50 ms (one at a time) | allocate p99 ms | ratio | deallocate p50 ms |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        for p in &self.scale {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.2} | {:.1} |",
                p.stored,
                p.list_all.p50_ms,
                p.list_all_bytes,
                p.ratio_list_to_first,
                p.list_phase_allocated.p50_ms,
                p.allocate.p50_ms,
                p.allocate.p99_ms,
                p.ratio_allocate_to_first,
                p.deallocate.p50_ms
            );
        }
        s
    }
}
