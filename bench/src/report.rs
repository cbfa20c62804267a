//! The results file: every figure with its reference and their ratio, the targets
//! they are held to, and a Markdown rendering for people.

use std::fmt::Write;

use serde::Serialize;

use crate::alloc::Burst;
use crate::ceiling::Ceiling;
use crate::fanout::FanOut;
use crate::flat::Flat;
use crate::load::LoadResult;
use crate::stats::{Latency, ratio};

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
    /// Bursts, one at a time, lists, start-up and disk with many stored (issue 15).
    pub flat: Flat,
    pub watch: Watch,
    pub footprint: Footprint,
    /// The small node's point (100 stored); the seeded nodes' are in `flat`.
    pub scale: Vec<ScalePoint>,
    pub targets: Vec<Target>,
    /// The ratios `fish-bench --check` compares (each higher is better).
    pub ratios: Vec<GateRatio>,
}

/// One ratio the regression gate compares with the committed run.
#[derive(Clone, Debug, Serialize)]
pub struct GateRatio {
    pub figure: String,
    pub value: f64,
    /// Whether a drop of more than 25 % fails the gate (false: shown only).
    pub gated: bool,
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

/// The allocation figures of the node with none stored, next to the store's ceiling.
#[derive(Debug, Serialize)]
pub struct Allocation {
    /// The first burst of 1,000 applications on the node with none stored.
    pub burst: Burst,
    /// Medians over its rounds (see `flat`).
    pub allocate_apps_per_s: f64,
    pub deallocate_apps_per_s: f64,
    /// The higher of the redb ceilings just before and just after the bursts.
    pub redb_reference: f64,
    pub alloc_ratio_to_redb: f64,
    pub dealloc_ratio_to_redb: f64,
}

/// Watch fan-out, next to the same with one watcher.
#[derive(Debug, Serialize)]
pub struct Watch {
    /// The widest fan-out (1,000 watchers).
    pub fan_out: FanOut,
    pub reference_one_watcher: FanOut,
    /// The widest's last-watcher p99 over the reference's.
    pub ratio_p99: f64,
    /// Narrower fan-outs measured too (100 watchers).
    pub more: Vec<FanOut>,
}

/// Memory, start-up and disk of the small nodes (the largest node's are in `flat.startup`).
#[derive(Debug, Serialize)]
pub struct Footprint {
    /// MB are 10^6 bytes throughout.
    pub idle_rss_mb: f64,
    /// Highest RSS sampled (every 100 ms) during the API load.
    pub api_load_rss_mb: f64,
    /// The kernel's high-water mark of the API node at the end of its load.
    pub api_load_peak_rss_mb: f64,
    /// First start: includes creating the CA, keys and the admin user.
    pub startup_fresh_ms: f64,
    /// Restart (SIGTERM, spawn, until `/readyz` answers) of the small node.
    pub startup_small_ms: f64,
    pub startup_small_stored: usize,
    pub store_bytes_fresh: u64,
    /// The small node's redb file after its restart.
    pub store_bytes_small: u64,
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
    /// Fills the scale ratios, the targets and the gate's ratios.
    pub fn with_targets(mut self) -> Results {
        if let Some(first) = self.scale.first().cloned() {
            for p in &mut self.scale {
                p.ratio_list_to_first = ratio(p.list_all.p50_ms, first.list_all.p50_ms);
                p.ratio_allocate_to_first = ratio(p.allocate.p50_ms, first.allocate.p50_ms);
            }
        }
        let mut t = Vec::new();
        let mut g = Vec::new();
        let f = &self.flat;
        let none = f.nodes.first();
        // 1. Bursts with many stored.
        for n in f.nodes.iter().skip(1) {
            t.push(target(
                &format!("burst create -> ALLOCATED with {} stored (1,000 apps, 16 conns)", n.stored),
                ">= 80% of none stored",
                format!(
                    "{:.0}% ({:.0} vs {:.0} apps/s)",
                    n.ratio_to_none * 100.0,
                    n.allocate_apps_per_s,
                    none.map(|x| x.allocate_apps_per_s).unwrap_or(0.0)
                ),
                n.ratio_to_none >= 0.8,
            ));
            g.push(gate(&format!("burst create -> ALLOCATED, {} stored / none", n.stored), n.ratio_to_none, true));
        }
        // 2. One at a time with the most stored.
        if let Some(big) = f.nodes.last()
            && let Some(single) = &big.single
        {
            t.push(target(
                &format!("p50 create -> ALLOCATED, one at a time, {} stored", big.stored),
                "< 5 ms",
                format!(
                    "{:.1} ms (none stored: {:.1} ms)",
                    single.allocate.p50_ms,
                    none.and_then(|n| n.single.as_ref()).map(|s| s.allocate.p50_ms).unwrap_or(0.0)
                ),
                single.allocate.p50_ms < 5.0,
            ));
            g.push(gate(&format!("one at a time p50: none / {} stored", big.stored), f.single_ratio_p50, true));
        }
        // 3. List and GET.
        for p in self.api.iter().filter(|p| p.endpoint.starts_with("GET /api/v1/applications?label=")) {
            if p.result.concurrency == 1 {
                t.push(target(
                    "list of 1,000 applications, 1 connection (p50)",
                    "<= 3 ms",
                    format!("{:.2} ms ({:.0} req/s)", p.result.latency.p50_ms, p.result.rps),
                    p.result.latency.p50_ms <= 3.0,
                ));
                // Unrounded: the ratio is near 0.01, where three decimals lose too much.
                g.push(gate("list of 1,000 / /healthz at 1 connection (req/s)", p.result.rps / p.healthz_rps, true));
            }
        }
        for p in self.api.iter().filter(|p| p.endpoint == "GET /api/v1/applications/<name>") {
            t.push(target(
                &format!("authenticated GET at {} connections", p.result.concurrency),
                ">= 80% of /healthz",
                format!("{:.0}% ({:.0} vs {:.0} req/s)", p.ratio_to_healthz * 100.0, p.result.rps, p.healthz_rps),
                p.ratio_to_healthz >= 0.8,
            ));
            g.push(gate(&format!("GET / /healthz at {} connections", p.result.concurrency), p.ratio_to_healthz, true));
        }
        // 4. Watch fan-out.
        let w = &self.watch;
        t.push(target(
            &format!("watch fan-out, last watcher p99, {} watchers", w.fan_out.watchers),
            "< 100 ms",
            format!(
                "{:.1} ms (1 watcher: {:.1} ms)",
                w.fan_out.last_watcher.p99_ms, w.reference_one_watcher.last_watcher.p99_ms
            ),
            w.fan_out.last_watcher.p99_ms < 100.0,
        ));
        g.push(gate(
            &format!("watch p99: 1 watcher / {} watchers", w.fan_out.watchers),
            ratio(w.reference_one_watcher.last_watcher.p99_ms, w.fan_out.last_watcher.p99_ms),
            true,
        ));
        for m in &w.more {
            t.push(target(
                &format!("watch fan-out, last watcher p99, {} watchers", m.watchers),
                "< 50 ms",
                format!("{:.1} ms", m.last_watcher.p99_ms),
                m.last_watcher.p99_ms < 50.0,
            ));
        }
        // 5. Start-up, memory and disk with the most stored.
        let s = &f.startup;
        t.push(target(
            &format!("start-up with {} stored (spawn -> /readyz)", s.stored),
            "< 1 s",
            format!("{:.0} ms (restart after the bursts: {:.0} ms)", s.first_start_ms, s.restart_ms),
            s.first_start_ms < 1000.0 && s.restart_ms < 1000.0,
        ));
        let rss = s.rss_at_ready_mb.max(s.rss_settled_mb);
        t.push(target(
            &format!("RSS after start-up with {} stored", s.stored),
            "< 100 MB",
            format!(
                "{:.1} MB at /readyz, {:.1} MB once idle ({:.1} s busy after /readyz)",
                s.rss_at_ready_mb, s.rss_settled_mb, s.busy_after_ready_s
            ),
            rss < 100.0,
        ));
        t.push(target(
            "redb file per stored application (seeded / after the bursts / after a restart)",
            "(reported)",
            format!(
                "{:.0} / {:.0} / {:.0} bytes",
                s.store_bytes_per_app_seeded, s.store_bytes_per_app_after_bursts, s.store_bytes_per_app_after_restart
            ),
            true,
        ));
        g.push(gate(
            &format!("start-up: {} stored / {} stored", self.footprint.startup_small_stored, s.stored),
            ratio(self.footprint.startup_small_ms, s.first_start_ms),
            false,
        ));
        // Earlier targets that still hold.
        let a = &self.allocation;
        t.push(target(
            "allocation throughput, none stored (1,000 apps)",
            ">= 25% of durable redb commits/s",
            format!(
                "{:.0}% ({:.0} apps/s vs {:.0} commits/s)",
                a.alloc_ratio_to_redb * 100.0,
                a.allocate_apps_per_s,
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
            "idle RSS",
            "< 30 MB",
            format!("{:.1} MB", self.footprint.idle_rss_mb),
            self.footprint.idle_rss_mb < 30.0,
        ));
        self.targets = t;
        self.ratios = g;
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
        let _ = writeln!(s, "\n## Targets (issue 15 first)\n\n| figure | target | measured | met |\n|---|---|---|---|");
        for t in &self.targets {
            let _ =
                writeln!(s, "| {} | {} | {} | {} |", t.name, t.target, t.measured, if t.met { "yes" } else { "NO" });
        }
        let _ = writeln!(
            s,
            "\n## Ratios the regression gate compares (`fish-bench --check`; higher is better)\n\n\
             | figure | value | gated |\n|---|---|---|"
        );
        for r in &self.ratios {
            let _ = writeln!(s, "| {} | {} | {} |", r.figure, figure(r.value), if r.gated { "yes" } else { "no" });
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
        let f = &self.flat;
        let _ = writeln!(
            s,
            "\n## Allocation with none, {} stored (test driver, latency 0; reference: the node with none stored)\n\n\
             {} rounds; in each, a burst of {} applications over {} connections on each node in turn. The store's \
             ceiling: **{:.0}** durable redb commits/s (one writer, 256 B), the higher of the ceilings just before \
             the bursts ({:.0}) and just after them ({:.0}); the node with none stored allocates at {:.2}× that. \
             fishd store commands/s just before: {:.0} one at a time, {:.0} from 64 callers (group commit). At \
             the start of the run: {:.0} redb commits/s.\n\n\
             | stored | create → ALLOCATED apps/s (median) | ratio to none | deallocate apps/s (median) | ratio to none | rounds (create apps/s) | waited for idle (s) |\n\
             |---|---|---|---|---|---|---|",
            f.nodes.iter().skip(1).map(|n| n.stored.to_string()).collect::<Vec<_>>().join(" and "),
            f.rounds,
            f.burst_applications,
            f.connections,
            self.allocation.redb_reference,
            c.redb_commits_per_s,
            self.ceiling_after_burst.redb_commits_per_s,
            self.allocation.alloc_ratio_to_redb,
            c.store_commands_per_s_serial,
            c.store_commands_per_s_grouped,
            self.ceiling_at_start.redb_commits_per_s,
        );
        for n in &f.nodes {
            let rounds: Vec<String> = n.bursts.iter().map(|b| format!("{:.0}", b.allocate.apps_per_s)).collect();
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {} |",
                n.stored,
                n.allocate_apps_per_s,
                n.ratio_to_none,
                n.deallocate_apps_per_s,
                n.deallocate_ratio_to_none,
                rounds.join(", "),
                n.idle_waits_s.iter().map(|w| format!("{w:.1}")).collect::<Vec<_>>().join(", ")
            );
        }
        let _ = writeln!(
            s,
            "\n| burst | stored before | direction | apps/s | p50 ms | p99 ms | requests/s | fishd cores |\n\
             |---|---|---|---|---|---|---|---|"
        );
        for n in &f.nodes {
            for b in &n.bursts {
                burst_rows(&mut s, b);
            }
        }

        let w = &self.watch;
        let _ = writeln!(
            s,
            "\n## Watch fan-out (create sent → event at the watcher; reference: one watcher)\n\n\
             | watchers | rounds | last watcher p50 ms | last watcher p99 ms | first watcher p50 ms | \
             create round trip p50 ms |\n|---|---|---|---|---|---|"
        );
        for f in std::iter::once(&w.reference_one_watcher).chain(&w.more).chain([&w.fan_out]) {
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

        let fp = &self.footprint;
        let st = &f.startup;
        let _ = writeln!(
            s,
            "\n## Footprint and start-up (MB = 10^6 bytes)\n\n| figure | value | reference |\n|---|---|---|\n\
             | RSS idle (fresh node) | {:.1} MB | |\n\
             | RSS under the API load (max sampled / kernel peak) | {:.1} / {:.1} MB | idle: {:.1} MB ({:.1}×) |\n\
             | start-up, first start (CA, keys, admin user) | {:.0} ms | |\n\
             | start-up with {} stored (first start on the seeded files / restart after the bursts) | {:.0} / {:.0} ms | restart with {} stored: {:.0} ms |\n\
             | busy after /readyz (over 5 % of a core), first start / restart | {:.1} / {:.1} s | |\n\
             | RSS with {} stored: at /readyz / once idle / kernel peak | {:.1} / {:.1} / {:.1} MB | idle fresh node: {:.1} MB |\n\
             | RSS after the restart with {} stored: at /readyz / once idle | {:.1} / {:.1} MB | |\n\
             | redb file seeded with {} | {:.1} MB ({:.0} bytes per application) | fresh file {:.1} MB; one application as JSON: {} bytes |\n\
             | redb file after the bursts ({} stored) | {:.1} MB ({:.0} bytes per application) | |\n\
             | redb file after the restart | {:.1} MB ({:.0} bytes per application) | small node ({} stored): {:.1} MB |",
            fp.idle_rss_mb,
            fp.api_load_rss_mb,
            fp.api_load_peak_rss_mb,
            fp.idle_rss_mb,
            ratio(fp.api_load_rss_mb, fp.idle_rss_mb),
            fp.startup_fresh_ms,
            st.stored,
            st.first_start_ms,
            st.restart_ms,
            fp.startup_small_stored,
            fp.startup_small_ms,
            st.busy_after_ready_s,
            st.restart_busy_after_ready_s,
            st.stored,
            st.rss_at_ready_mb,
            st.rss_settled_mb,
            st.peak_rss_settled_mb,
            fp.idle_rss_mb,
            st.stored_after_bursts,
            st.rss_after_restart_mb,
            st.rss_after_restart_settled_mb,
            st.stored,
            st.store_bytes_seeded as f64 / 1e6,
            st.store_bytes_per_app_seeded,
            fp.store_bytes_fresh as f64 / 1e6,
            fp.app_json_bytes,
            st.stored_after_bursts,
            st.store_bytes_after_bursts as f64 / 1e6,
            st.store_bytes_per_app_after_bursts,
            st.store_bytes_after_restart as f64 / 1e6,
            st.store_bytes_per_app_after_restart,
            fp.startup_small_stored,
            fp.store_bytes_small as f64 / 1e6,
        );
        if let Some(seeded) = f.nodes.iter().filter_map(|n| n.seeded.as_ref()).next_back() {
            let _ =
                writeln!(s, "\nSeeding {} applications through the store took {:.1} s.", seeded.stored, seeded.seconds);
        }

        let _ = writeln!(
            s,
            "\n## Scale curve\n\n\
             | stored | list all p50 ms | list bytes | list ?phase=ALLOCATED p50 ms | \
             allocate p50 ms (one at a time) | allocate p99 ms | deallocate p50 ms |\n\
             |---|---|---|---|---|---|---|"
        );
        let ms = |l: Option<&Latency>| l.map(|l| format!("{:.2}", l.p50_ms)).unwrap_or_else(|| "—".into());
        for p in &self.scale {
            let _ = writeln!(
                s,
                "| {} | {:.2} | {} | {:.2} | {:.1} | {:.1} | {:.1} |",
                p.stored,
                p.list_all.p50_ms,
                p.list_all_bytes,
                p.list_phase_allocated.p50_ms,
                p.allocate.p50_ms,
                p.allocate.p99_ms,
                p.deallocate.p50_ms
            );
        }
        for n in &f.nodes {
            let single = n.single.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} |",
                n.stored,
                ms(n.list_all.as_ref()),
                n.list_all_bytes.map(|b| b.to_string()).unwrap_or_else(|| "—".into()),
                ms(n.list_phase_allocated.as_ref()),
                single.map(|x| format!("{:.1}", x.allocate.p50_ms)).unwrap_or_else(|| "—".into()),
                single.map(|x| format!("{:.1}", x.allocate.p99_ms)).unwrap_or_else(|| "—".into()),
                single.map(|x| format!("{:.1}", x.deallocate.p50_ms)).unwrap_or_else(|| "—".into()),
            );
        }
        s
    }
}

/// A ratio with four significant digits.
pub fn figure(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let decimals = (3 - x.abs().log10().floor() as i32).clamp(0, 8) as usize;
    format!("{x:.decimals$}")
}

fn gate(figure: &str, value: f64, gated: bool) -> GateRatio {
    GateRatio { figure: figure.into(), value, gated }
}

fn burst_rows(s: &mut String, b: &Burst) {
    for (dir, f) in [("create → ALLOCATED", &b.allocate), ("deallocate → DEALLOCATED", &b.deallocate)] {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.2} |",
            b.applications,
            b.stored_before,
            dir,
            f.apps_per_s,
            f.latency.p50_ms,
            f.latency.p99_ms,
            f.requests_per_s,
            b.fishd_cores
        );
    }
}
