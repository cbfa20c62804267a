//! One GitHub Actions gate: records webhook events, turns per-route demand into
//! applications, registers a just-in-time runner for each allocation, and cleans up
//! registrations at GitHub.
//!
//! # Guarantees
//! - The gate never calls a driver: it creates and deallocates applications with the
//!   same commands a user's request makes (owner `gate:github/<name>`).
//! - Counting is per route: a JIT runner is not bound to a job (GitHub gives any
//!   queued job to any idle runner whose labels cover it), so demand = queued jobs of
//!   the route, supply = live applications whose runner has not taken a job.
//! - An idle runner is retired only after `DELETE` of its registration succeeded; a
//!   422 means it just took a job, and it is kept.
//! - The JIT config is minted at allocation (nothing is registered for applications
//!   still waiting), handed to that resource only, kept out of every stored object,
//!   and no longer served once the runner took a job.
//! - A registration GitHub cannot make now (outage, 5xx, rate limit, spent budget)
//!   costs the application no attempt: the gate's applications wait in NEW until it
//!   may call again, so an outage never burns a job's applications.
//! - Every pass reads the state as it is now (level-triggered): running it again, or
//!   after a crash at any point, creates nothing twice; application names come from
//!   job ids and runner names from application uids.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use api_types::{
    Application, ApplicationSpec, Gate, GateError, GateRoute, GateStatus, Metadata, ObjectMeta, Phase, WaitingJob,
};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use super::config::{GENERIC_LABELS, GithubConfig};
use super::github::{Deleted, Github, GithubError, Retry};
use super::metrics::GateMetrics;
use crate::metadata::{Hold, MintError};
use crate::store::gates::{GateJob, GateJobEvent, GateRunner, rank};
use crate::store::{AppFilter, ApplyItem, Command, Store, StoreError};

/// The environment key of the runner's config (what `run.sh` reads).
pub const JIT_KEY: &str = "ACTIONS_RUNNER_INPUT_JITCONFIG";
/// Errors kept for `GET /api/v1/gates`.
const KEPT_ERRORS: usize = 10;
/// Failed applications (allocation error, runner never online) for one job before
/// the gate stops trying: a broken label or image must not loop for ever. An
/// application whose runner ran some job (maybe another one: runners are not bound
/// to jobs) is no failure, so a burst where runners keep taking each other's jobs
/// never exhausts a job's attempts.
const MAX_ATTEMPTS_PER_JOB: usize = 10;
/// A bound on the names tried for one job (`-r<n>`), far above any real need.
const MAX_NAMES_PER_JOB: u32 = 10_000;
/// Completed jobs are kept this long, so a late `queued` of theirs changes nothing.
const KEEP_FINISHED: Duration = Duration::from_secs(24 * 3600);
/// Delivery GUIDs are kept this long (GitHub redelivers only by hand, within days).
const KEEP_DELIVERIES: Duration = Duration::from_secs(72 * 3600);
/// A job queued longer than this is dropped (GitHub cancels it after 24-48 h).
const MAX_QUEUED: Duration = Duration::from_secs(48 * 3600);
/// Stale-job lookups per sync: they cost API calls, and missed events are rare.
const STALE_CHECKS: usize = 5;
/// How long a runner group id is trusted.
const GROUP_TTL: Duration = Duration::from_secs(3600);

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Github(#[from] GithubError),
}

/// Why a registration failed, before it is sorted into "not now" and "refused".
enum Mint {
    /// A definite failure of ours (no route, a runner of this name already busy).
    Refused(String),
    /// A GitHub call failed.
    Github(GithubError),
    /// The store could not record the registration (it was deleted again at GitHub).
    Store(String),
}

/// The hold after `n` consecutive outages: 2 s, 4 s, 8 s … at most a minute.
fn outage_wait(n: u32) -> Duration {
    Duration::from_secs(2u64 << n.saturating_sub(1).min(5)).min(Duration::from_secs(60))
}

/// The hold after the `n`th consecutive 403 on a registration: 1, 2, 4, 8, then 15 min.
fn denied_wait(n: u32) -> Duration {
    Duration::from_secs(60u64 << n.saturating_sub(1).min(4)).min(Duration::from_secs(900))
}

/// A GitHub gate.
pub struct GithubGate {
    pub name: String,
    pub config: GithubConfig,
    /// `gate:github/<name>`: the owner of its applications.
    pub owner: String,
    prefix: String,
    pub github: Github,
    pub(super) store: Store,
    wake: Notify,
    status: Mutex<GateStatus>,
    errors: Mutex<VecDeque<GateError>>,
    blobs: Mutex<HashMap<Uuid, String>>,
    secret_dir: PathBuf,
    pub(super) metrics: GateMetrics,
    pub(super) recover: Mutex<super::recover::RecoverState>,
    group: Mutex<Option<(u64, Instant)>>,
    last_sync: Mutex<Option<Instant>>,
    /// The webhook listener's address once bound (`listen` may name port 0).
    pub bound: Mutex<Option<std::net::SocketAddr>>,
    /// While GitHub cannot register runners (outage, rate limit, spent budget), the
    /// gate's applications wait in NEW: why, and until when.
    hold: Mutex<Option<Hold>>,
    /// Consecutive registrations that failed for an outage (5xx, transport), for the
    /// backoff.
    outages: Mutex<u32>,
    /// Consecutive registrations refused for a missing permission (403), for the backoff.
    denials: Mutex<u32>,
}

/// A gate application as a pass sees it.
struct Live {
    uid: Uuid,
    name: String,
    phase: Phase,
    route: Option<usize>,
    runner: String,
    allocated_at: Option<OffsetDateTime>,
}

/// Whether `name` is `base` or one of its `-r<n>` replacements.
fn name_of_job(name: &str, base: &str) -> bool {
    name == base || name.strip_prefix(base).and_then(|r| r.strip_prefix("-r")).is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Whether a gate application was a failed attempt: its allocation failed, or its
/// runner never came online (the gate's own reasons, kept in the history).
fn failed_attempt(app: &Application) -> bool {
    app.status.phase == Phase::Error || app.status.history.iter().any(|h| h.message.contains("never came online"))
}

fn since(now: OffsetDateTime, t: OffsetDateTime) -> Duration {
    Duration::try_from(now - t).unwrap_or(Duration::ZERO)
}

impl GithubGate {
    /// A gate; nothing runs until [`GithubGate::run`].
    pub fn new(
        name: &str,
        config: GithubConfig,
        store: Store,
        data_dir: &std::path::Path,
        metrics: GateMetrics,
    ) -> Result<GithubGate, String> {
        let scope = config.scope()?;
        let auth = match (&config.auth.token, &config.auth.app) {
            (Some(t), _) => super::github::Auth::TokenFile(t.file.clone()),
            (None, Some(a)) => {
                let issuer = match (&a.client_id, a.app_id) {
                    (Some(c), _) => super::app_auth::Issuer::ClientId(c.clone()),
                    (None, Some(id)) => super::app_auth::Issuer::AppId(id),
                    (None, None) => return Err("auth.app: give clientId or appId".into()),
                };
                let app = super::app_auth::AppAuth::load(issuer, a.installation_id, &a.private_key_file)?;
                super::github::Auth::App(Box::new(app))
            }
            (None, None) => return Err("auth: give token or app".into()),
        };
        let github = Github::new(
            name,
            &config.api_url,
            config.ca_file.as_deref(),
            auth,
            scope,
            config.api_budget.map(|b| b.per_hour),
            metrics.clone(),
        )?;
        let secret_dir = data_dir.join("gates").join(format!("github-{name}"));
        std::fs::create_dir_all(&secret_dir).map_err(|e| format!("{}: {e}", secret_dir.display()))?;
        Ok(GithubGate {
            name: name.to_owned(),
            owner: format!("gate:github/{name}"),
            prefix: config.prefix(name),
            config,
            github,
            store,
            wake: Notify::new(),
            status: Mutex::new(GateStatus::default()),
            errors: Mutex::new(VecDeque::new()),
            blobs: Mutex::new(HashMap::new()),
            secret_dir,
            metrics,
            recover: Mutex::new(Default::default()),
            group: Mutex::new(None),
            last_sync: Mutex::new(None),
            bound: Mutex::new(None),
            hold: Mutex::new(None),
            outages: Mutex::new(0),
            denials: Mutex::new(0),
        })
    }

    /// The runner name of application `uid`: `<prefix>-<12 hex>` from the uid's random
    /// tail (its head is a timestamp, shared by applications made in one millisecond).
    pub fn runner_name(&self, uid: Uuid) -> String {
        let hex = uid.simple().to_string();
        format!("{}-{}", self.prefix, &hex[hex.len() - 12..])
    }

    /// The webhook secrets, read now (so a rotated file takes effect at once).
    pub fn hook_secrets(&self) -> Vec<Vec<u8>> {
        self.config
            .webhook
            .secrets
            .iter()
            .filter_map(|f| match std::fs::read(&f.file) {
                Ok(s) => Some(s.trim_ascii().to_vec()),
                Err(e) => {
                    warn!(gate = %self.name, file = %f.file.display(), error = %e, "cannot read a webhook secret");
                    None
                }
            })
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Remembers an error for the status (consecutive repeats once).
    pub fn note_error(&self, message: impl Into<String>) {
        let message = message.into();
        let mut e = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if e.back().is_some_and(|last| last.message == message) {
            if let Some(last) = e.back_mut() {
                last.at = OffsetDateTime::now_utc();
            }
            return;
        }
        e.push_back(GateError { at: OffsetDateTime::now_utc(), message });
        while e.len() > KEPT_ERRORS {
            e.pop_front();
        }
    }

    /// The first route whose labels cover `labels`, if the job names a label beyond
    /// the generic ones.
    pub fn route_of(&self, labels: &[String]) -> Option<usize> {
        if labels.is_empty() || labels.iter().all(|l| GENERIC_LABELS.contains(&l.as_str())) {
            return None;
        }
        self.config.routes.iter().position(|r| {
            let m: HashSet<String> = r.labels.iter().map(|l| l.to_lowercase()).collect();
            labels.iter().all(|l| m.contains(l))
        })
    }

    fn repo_allowed(&self, repo: &str) -> bool {
        self.config.repositories.is_empty()
            || self.config.repositories.iter().any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(repo)))
    }

    /// Records a verified `workflow_job` delivery, if it concerns this gate: a job one
    /// of its routes takes, or one of its runners ran. Returns once it is committed.
    pub async fn record(&self, guid: &str, action: &str, job: GateJobEvent) -> Result<(), StoreError> {
        let ours = job.runner_name.as_deref().is_some_and(|n| n.starts_with(&format!("{}-", self.prefix)));
        if !ours && (!self.repo_allowed(&job.repo) || self.route_of(&job.labels).is_none()) {
            return Ok(());
        }
        let cmd = Command::GateEvent {
            gate: self.name.clone(),
            guid: guid.to_owned(),
            job: Box::new(job),
            now: OffsetDateTime::now_utc(),
        };
        self.store.execute(cmd).await?.ok();
        self.metrics.job_seen(&self.name, action);
        self.wake.notify_one();
        Ok(())
    }

    /// Runs passes until `stop`: on every event of its own, every change to its
    /// applications, and at least every few seconds.
    ///
    /// In a cluster every node runs this loop (any node may become leader) but only
    /// the Raft leader, heard by a quorum, passes and replays deliveries: two nodes
    /// must never both create a job's replacement, retire or delete the same runners,
    /// or replay one delivery. Leadership is checked at every tick, and a pass or
    /// replay in flight is dropped as soon as it is lost (it is level-triggered, as
    /// after a kill -9: the new leader's next pass reads what was committed from the
    /// store and carries on). Followers keep receiving and recording webhooks
    /// (replicated commands) and only drop the runner configs their own resources no
    /// longer need.
    pub async fn run(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut changes = self.store.subscribe();
        let every = self.config.reconcile_every.get().min(Duration::from_secs(5));
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
                ev = changes.recv() => match ev {
                    Ok(e) if e.owner.as_deref() == Some(self.owner.as_str()) => {}
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
            // Coalesce a burst of changes into one pass.
            while let Ok(e) = changes.try_recv() {
                let _ = e;
            }
            if !self.store.leads_with_quorum() {
                self.forget_spent_blobs();
                continue;
            }
            tokio::select! {
                _ = self.leader_work() => {}
                _ = self.store.leadership_lost() => {
                    info!(gate = %self.name, "no longer the leader; its passes stop here");
                }
            }
        }
    }

    /// One tick of the leader's work: a pass, and a delivery replay when due.
    async fn leader_work(&self) {
        let full = {
            let mut last = self.last_sync.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.is_none_or(|t| t.elapsed() >= self.config.reconcile_every.get());
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if let Err(e) = self.pass(full).await {
            warn!(gate = %self.name, error = %e, "gate pass failed; retrying");
            self.note_error(e.to_string());
        }
        if self.recover_due() {
            match self.recover().await {
                Ok(0) => {}
                Ok(n) => info!(gate = %self.name, replayed = n, "replayed missed webhook deliveries"),
                Err(e) => {
                    warn!(gate = %self.name, error = %e, "reading the webhook delivery log failed; retrying");
                    self.note_error(format!("recovering deliveries: {e}"));
                }
            }
        }
    }

    async fn group_id(&self) -> Result<u64, GithubError> {
        let Some(name) = self.config.scope.runner_group.clone() else { return Ok(1) };
        if let Some((id, at)) = *self.group.lock().unwrap_or_else(|e| e.into_inner())
            && at.elapsed() < GROUP_TTL
        {
            return Ok(id);
        }
        let id = self.github.runner_group_id(&name).await?;
        *self.group.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, Instant::now()));
        Ok(id)
    }

    fn live_view(&self, app: &Application) -> Live {
        let uid = app.metadata.uid.unwrap_or_default();
        Live {
            uid,
            name: app.metadata.name_str().to_owned(),
            phase: app.status.phase,
            route: app.spec.metadata.get("FISH_GATE_ROUTE").and_then(|v| v.as_str()).and_then(|s| s.parse().ok()),
            runner: self.runner_name(uid),
            allocated_at: app.status.history.iter().rev().find(|h| h.phase == Phase::Allocated).map(|h| h.at),
        }
    }

    async fn deallocate(&self, uid: Uuid, why: &str) -> Result<(), StoreError> {
        let cmd =
            Command::RequestDeallocate { uid, by: format!("{} ({why})", self.owner), now: OffsetDateTime::now_utc() };
        self.store.execute(cmd).await?.ok();
        Ok(())
    }

    /// The runner config minted for `uid`, from memory or (after a restart) its file.
    fn blob(&self, uid: Uuid) -> Option<String> {
        self.blobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&uid)
            .cloned()
            .or_else(|| std::fs::read_to_string(self.secret_dir.join(format!("{uid}.jit"))).ok())
    }

    fn forget_blob(&self, uid: Uuid) {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        let _ = std::fs::remove_file(self.secret_dir.join(format!("{uid}.jit")));
    }

    /// On a follower (the leader's pass does it as it goes): drops the runner configs
    /// this node minted that no resource may read any more, because their application
    /// is no longer being allocated or running, or their runner took a job (the
    /// [`GithubGate::current`] rules). A config being minted is safe: its application
    /// is ELECTED and its runner record, written after the config, is not busy.
    fn forget_spent_blobs(&self) {
        let mut uids: HashSet<Uuid> = self.blobs.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
        if let Ok(dir) = std::fs::read_dir(&self.secret_dir) {
            for e in dir.flatten() {
                let name = e.file_name();
                if let Some(uid) = name.to_str().and_then(|n| n.strip_suffix(".jit")).and_then(|u| u.parse().ok()) {
                    uids.insert(uid);
                }
            }
        }
        if uids.is_empty() {
            return;
        }
        let filter = AppFilter { owner: Some(self.owner.clone()), ..Default::default() };
        let Ok((_, apps)) = self.store.list_applications(&filter) else { return };
        let live: HashSet<Uuid> = apps
            .iter()
            .filter(|a| matches!(a.status.phase, Phase::New | Phase::Elected | Phase::Allocated))
            .filter_map(|a| a.metadata.uid)
            .collect();
        for uid in uids {
            let spent =
                !live.contains(&uid) || matches!(self.store.gate_runner(&self.name, uid), Ok(Some(r)) if r.busy);
            if spent {
                self.forget_blob(uid);
            }
        }
    }

    /// One level-triggered pass; `full` adds the calls to GitHub (runner list, stale jobs).
    pub async fn pass(&self, full: bool) -> Result<(), PassError> {
        let now = OffsetDateTime::now_utc();
        let jobs = self.store.gate_jobs(&self.name)?;
        let mut runners: HashMap<Uuid, GateRunner> = self.store.gate_runners(&self.name)?.into_iter().collect();
        let filter = AppFilter { owner: Some(self.owner.clone()), ..Default::default() };
        let (_, apps) = self.store.list_applications(&filter)?;
        // Every name in use, and whether that application was a failed attempt.
        let names: HashMap<String, bool> =
            apps.iter().map(|a| (a.metadata.name_str().to_owned(), failed_attempt(a))).collect();
        let live: Vec<Live> = apps
            .iter()
            .filter(|a| matches!(a.status.phase, Phase::New | Phase::Elected | Phase::Allocated))
            .map(|a| self.live_view(a))
            .collect();

        // Runners named by job events took a job: no longer supply, no longer served.
        let taken: HashMap<&str, &GateJob> = jobs
            .iter()
            .filter(|j| j.rank >= rank::IN_PROGRESS)
            .filter_map(|j| j.runner_name.as_deref().map(|n| (n, j)))
            .collect();
        for (uid, r) in runners.iter_mut() {
            if !r.busy && taken.contains_key(r.runner_name.as_str()) {
                r.busy = true;
                self.put_runner(*uid, Some(r.clone())).await?;
                self.forget_blob(*uid);
            }
        }
        // `completed` naming our runner: its job is done, so is its application.
        for l in &live {
            if taken.get(l.runner.as_str()).is_some_and(|j| j.rank == rank::COMPLETED) {
                info!(gate = %self.name, app = %l.name, "its runner's job completed; deallocating");
                self.deallocate(l.uid, "job completed").await?;
            }
        }
        let used = |l: &Live| taken.contains_key(l.runner.as_str()) || runners.get(&l.uid).is_some_and(|r| r.busy);

        // Per-route counts.
        let mut queued: Vec<&GateJob> = jobs.iter().filter(|j| j.rank == rank::QUEUED).collect();
        queued.sort_by_key(|j| (j.first_seen, j.id));
        let mut routes_status = Vec::new();
        let mut waiting = Vec::new();
        for (idx, route) in self.config.routes.iter().enumerate() {
            let demand: Vec<&GateJob> =
                queued.iter().copied().filter(|j| self.route_of(&j.labels) == Some(idx)).collect();
            let mine: Vec<&Live> = live.iter().filter(|l| l.route == Some(idx)).collect();
            let supply: Vec<&Live> = mine.iter().copied().filter(|l| !used(l)).collect();
            let mut live_n = mine.len() as u32;
            let mut supply_n = supply.len() as u32;
            if demand.len() as u32 > supply_n {
                for job in demand.iter().skip(supply.len()) {
                    if live_n >= route.max {
                        waiting.push(self.waiting(
                            job,
                            now,
                            format!("route {} is at max ({live_n} of {})", route.label, route.max),
                        ));
                        continue;
                    }
                    match self.create_for(job, idx, &names).await {
                        Ok(Some(name)) => {
                            info!(gate = %self.name, app = %name, job = job.id, "created an application for a queued job");
                            live_n += 1;
                            supply_n += 1;
                        }
                        Ok(None) => waiting.push(self.waiting(
                            job,
                            now,
                            format!("gave up after {MAX_ATTEMPTS_PER_JOB} failed applications for this job"),
                        )),
                        Err(e) => {
                            self.note_error(format!("creating an application for job {}: {e}", job.id));
                            waiting.push(self.waiting(job, now, format!("cannot create its application: {e}")));
                        }
                    }
                }
            } else if supply_n > demand.len() as u32 {
                let surplus = supply_n - demand.len() as u32;
                let retired = self.retire(&supply, surplus, &runners, now).await?;
                supply_n -= retired;
                live_n -= retired;
            }
            routes_status.push(GateRoute {
                labels: route.labels.clone(),
                label: route.label.clone(),
                max: route.max,
                demand: demand.len() as u32,
                supply: supply_n,
                live: live_n,
            });
        }

        // Registrations of applications that are gone, or going: remove them at GitHub.
        let live_uids: HashSet<Uuid> = live.iter().map(|l| l.uid).collect();
        for (uid, r) in runners.clone() {
            if live_uids.contains(&uid) {
                continue;
            }
            if taken.get(r.runner_name.as_str()).is_some_and(|j| j.rank == rank::COMPLETED) {
                // Its job completed: GitHub removed the ephemeral registration itself.
                // No call (it would be a 404 per job); the runner list of the next sync
                // removes it in the rare case it is still there.
                self.put_runner(uid, None).await?;
                self.forget_blob(uid);
                runners.remove(&uid);
                continue;
            }
            match self.github.delete_runner(r.runner_id).await {
                Ok(Deleted::Removed | Deleted::Gone) => {
                    info!(gate = %self.name, runner = %r.runner_name, "registration removed");
                    self.metrics.runner_retired(&self.name);
                    self.put_runner(uid, None).await?;
                    self.forget_blob(uid);
                    runners.remove(&uid);
                }
                Ok(Deleted::Busy) => {
                    // Still running a job whose resource is gone; GitHub ends it. Retry next pass.
                    if since(now, r.registered_at) > self.job_lifetime() {
                        self.put_runner(uid, None).await?;
                        self.forget_blob(uid);
                    }
                }
                Err(e) => self.note_error(format!("removing runner {}: {e}", r.runner_name)),
            }
        }

        // Runners that never came online: replaced.
        for l in live.iter().filter(|l| l.phase == Phase::Allocated) {
            let Some(r) = runners.get(&l.uid) else { continue };
            if r.online
                || r.busy
                || taken.contains_key(l.runner.as_str())
                || since(now, r.registered_at) < self.config.register_timeout.get()
            {
                continue;
            }
            match self.github.delete_runner(r.runner_id).await {
                Ok(Deleted::Busy) => {
                    let mut r = r.clone();
                    r.busy = true;
                    self.put_runner(l.uid, Some(r)).await?;
                }
                Ok(_) => {
                    warn!(gate = %self.name, app = %l.name, "runner never came online; replacing it");
                    self.metrics.registration_failed(&self.name);
                    self.note_error(format!(
                        "runner {} of {} never came online within registerTimeout; replaced",
                        r.runner_name, l.name
                    ));
                    self.deallocate(l.uid, "runner never came online").await?;
                }
                Err(e) => self.note_error(format!("removing runner {}: {e}", r.runner_name)),
            }
        }

        if full {
            self.sync(&jobs, now).await?;
        }
        self.forget_old(&jobs, now, full).await?;

        let oldest = queued.first().map(|j| since(now, j.first_seen).as_secs() as i64).unwrap_or(0);
        self.metrics.queue(&self.name, oldest, waiting.len() as i64);
        let mut st = self.status.lock().unwrap_or_else(|e| e.into_inner());
        st.routes = routes_status;
        st.waiting = waiting;
        st.registrations = runners.len() as u32;
        st.last_pass = Some(now);
        Ok(())
    }

    fn job_lifetime(&self) -> Duration {
        self.config.job_lifetime.map(|d| d.get()).unwrap_or(Duration::from_secs(6 * 3600))
    }

    fn waiting(&self, job: &GateJob, now: OffsetDateTime, reason: String) -> WaitingJob {
        WaitingJob {
            id: job.id,
            repository: job.repo.clone(),
            labels: job.labels.clone(),
            age_seconds: since(now, job.first_seen).as_secs(),
            reason,
        }
    }

    async fn put_runner(&self, uid: Uuid, r: Option<GateRunner>) -> Result<(), StoreError> {
        let cmd = Command::GatePutRunner { gate: self.name.clone(), uid, runner: r.map(Box::new) };
        self.store.execute(cmd).await?.ok();
        Ok(())
    }

    /// Creates an application for `job` on route `idx`, named from the job id (the
    /// next ones get `-r<n>`); `None` once the job had its share of failed attempts.
    async fn create_for(
        &self,
        job: &GateJob,
        idx: usize,
        taken: &HashMap<String, bool>,
    ) -> Result<Option<String>, String> {
        let base = format!("gh-{}-{}", self.name, job.id);
        let name_of = |n: u32| if n == 0 { base.clone() } else { format!("{base}-r{n}") };
        let failed = taken.iter().filter(|(n, failed)| **failed && name_of_job(n, &base)).count();
        if failed >= MAX_ATTEMPTS_PER_JOB {
            return Ok(None);
        }
        let Some(name) = (0..MAX_NAMES_PER_JOB).map(name_of).find(|n| !taken.contains_key(n)) else {
            return Ok(None);
        };
        let route = &self.config.routes[idx];
        let uid = Uuid::now_v7();
        let s = |v: String| serde_json::Value::String(v);
        let mut metadata = Metadata::new();
        metadata.insert("GITHUB_URL".into(), s(self.github_url()));
        metadata.insert("GITHUB_RUNNER_NAME".into(), s(self.runner_name(uid)));
        metadata.insert("GITHUB_RUNNER_LABELS".into(), s(route.labels.join(",")));
        metadata.insert("FISH_GITHUB_JOB_ID".into(), s(job.id.to_string()));
        metadata.insert("FISH_GATE_ROUTE".into(), s(idx.to_string()));
        let app = Application {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: ObjectMeta::named(name.parse().map_err(|e| format!("name {name:?}: {e}"))?),
            spec: ApplicationSpec {
                label: route.label.parse().map_err(|e: String| format!("routes[{idx}].label: {e}"))?,
                metadata,
                lifetime: self.config.job_lifetime,
            },
            status: Default::default(),
        };
        let cmd = Command::Apply {
            items: vec![ApplyItem::Application { app, uid }],
            owner: self.owner.clone(),
            now: OffsetDateTime::now_utc(),
        };
        match self.store.execute(cmd).await {
            Ok(Ok(_)) => Ok(Some(name)),
            Ok(Err(rejection)) => Err(rejection.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The web URL runners register against (the API URL without `/api/v3` or `api.`).
    fn github_url(&self) -> String {
        let api = self.config.api_url.trim_end_matches('/');
        if let Some(host) = api.strip_suffix("/api/v3") { host.to_owned() } else { api.replace("://api.", "://") }
    }

    /// Retires up to `surplus` of `supply`: NEW ones first (nothing registered), then
    /// allocated ones idle longer than `idleTimeout`, never-online before online. Each
    /// registration is deleted first; a 422 keeps the runner (it just took a job).
    async fn retire(
        &self,
        supply: &[&Live],
        surplus: u32,
        runners: &HashMap<Uuid, GateRunner>,
        now: OffsetDateTime,
    ) -> Result<u32, PassError> {
        let mut order: Vec<&&Live> = supply.iter().filter(|l| l.phase == Phase::New).collect();
        let mut idle: Vec<&&Live> = supply
            .iter()
            .filter(|l| l.phase == Phase::Allocated)
            .filter(|l| l.allocated_at.is_some_and(|t| since(now, t) >= self.config.idle_timeout.get()))
            .collect();
        idle.sort_by_key(|l| runners.get(&l.uid).map(|r| r.online));
        order.extend(idle);
        let mut retired = 0;
        for l in order {
            if retired >= surplus {
                break;
            }
            if l.phase == Phase::Allocated {
                let Some(r) = runners.get(&l.uid) else { continue };
                match self.github.delete_runner(r.runner_id).await {
                    Ok(Deleted::Busy) => {
                        info!(gate = %self.name, app = %l.name, "surplus runner took a job as it was retired; keeping it");
                        let mut r = r.clone();
                        r.busy = true;
                        self.put_runner(l.uid, Some(r)).await?;
                        continue;
                    }
                    Ok(_) => {
                        self.metrics.runner_retired(&self.name);
                        self.put_runner(l.uid, None).await?;
                        self.forget_blob(l.uid);
                    }
                    Err(e) => {
                        self.note_error(format!("retiring runner {}: {e}", r.runner_name));
                        continue;
                    }
                }
            }
            info!(gate = %self.name, app = %l.name, "retiring a surplus application");
            self.deallocate(l.uid, "no queued job needs it").await?;
            retired += 1;
        }
        Ok(retired)
    }

    /// The calls to GitHub of a full pass: our runners' state, orphan registrations,
    /// and jobs queued too long.
    async fn sync(&self, jobs: &[GateJob], now: OffsetDateTime) -> Result<(), PassError> {
        let listed = match self.github.list_runners(&format!("{}-", self.prefix)).await {
            Ok(l) => l,
            Err(e) => {
                self.note_error(format!("listing runners: {e}"));
                return Ok(());
            }
        };
        // The store is read after the list, not at the start of the pass: every
        // registration listed was made for an application committed before it (the
        // pass itself creates some, and allocations mint concurrently), so a runner
        // registered a moment ago is never taken for an orphan.
        let runners: HashMap<Uuid, GateRunner> = self.store.gate_runners(&self.name)?.into_iter().collect();
        let runners = &runners;
        let filter = AppFilter { owner: Some(self.owner.clone()), ..Default::default() };
        let (_, apps) = self.store.list_applications(&filter)?;
        let live: Vec<Live> = apps
            .iter()
            .filter(|a| matches!(a.status.phase, Phase::New | Phase::Elected | Phase::Allocated))
            .map(|a| self.live_view(a))
            .collect();
        let by_name: HashMap<&str, &Live> = live.iter().map(|l| (l.runner.as_str(), l)).collect();
        let listed_names: HashSet<&str> = listed.iter().map(|r| r.name.as_str()).collect();
        for r in &listed {
            match by_name.get(r.name.as_str()) {
                None => {
                    // Ours by name, but no live application: an orphan.
                    let record = runners.values().any(|x| x.runner_id == r.id);
                    if !record && !r.busy {
                        match self.github.delete_runner(r.id).await {
                            Ok(_) => info!(gate = %self.name, runner = %r.name, "removed an orphan registration"),
                            Err(e) => self.note_error(format!("removing orphan runner {}: {e}", r.name)),
                        }
                    }
                }
                Some(l) => {
                    if let Some(rec) = runners.get(&l.uid) {
                        let online = rec.online || r.status == "online";
                        let busy = rec.busy || r.busy;
                        if online != rec.online || busy != rec.busy {
                            let mut rec = rec.clone();
                            rec.online = online;
                            rec.busy = busy;
                            if busy {
                                self.forget_blob(l.uid);
                            }
                            self.put_runner(l.uid, Some(rec)).await?;
                        }
                    }
                }
            }
        }
        // Registered, but gone at GitHub: consumed by a job (done), or removed by GitHub.
        for l in live.iter().filter(|l| l.phase == Phase::Allocated) {
            let Some(rec) = runners.get(&l.uid) else { continue };
            if listed_names.contains(rec.runner_name.as_str()) {
                continue;
            }
            if rec.busy || rec.online {
                self.deallocate(l.uid, "its runner registration is gone").await?;
            } else if since(now, rec.registered_at) >= self.config.register_timeout.get() {
                self.metrics.registration_failed(&self.name);
                self.deallocate(l.uid, "its runner registration is gone and it never came online").await?;
            }
        }
        // Jobs queued too long: ask GitHub (a lost `completed`, or a cancellation).
        let mut stale: Vec<&GateJob> = jobs
            .iter()
            .filter(|j| j.rank <= rank::QUEUED && since(now, j.updated) >= self.config.stale_after.get())
            .collect();
        stale.sort_by_key(|j| j.updated);
        for j in stale.into_iter().take(STALE_CHECKS) {
            match self.github.job_status(&j.repo, j.id).await {
                Ok(Some(s)) if s == "queued" || s == "waiting" => {}
                Ok(status) => {
                    let r = match status.as_deref() {
                        Some("in_progress") => rank::IN_PROGRESS,
                        _ => rank::COMPLETED,
                    };
                    info!(gate = %self.name, job = j.id, status = ?status, "a stale queued job is no longer queued");
                    if status.is_none() {
                        // A 404 is a deleted run, or a token without Actions: read on this
                        // repository: say so, since the job leaves demand either way.
                        self.note_error(format!(
                            "job {} of {}: GitHub answers 404 (the run was deleted, or the token lacks Actions: read on {}); dropped from demand",
                            j.id, j.repo, j.repo
                        ));
                    }
                    let ev = GateJobEvent {
                        id: j.id,
                        repo: j.repo.clone(),
                        run_id: j.run_id,
                        labels: j.labels.clone(),
                        rank: r,
                        runner_name: None,
                        conclusion: None,
                    };
                    let cmd =
                        Command::GateEvent { gate: self.name.clone(), guid: String::new(), job: Box::new(ev), now };
                    self.store.execute(cmd).await?.ok();
                }
                Err(e) => self.note_error(format!("checking stale job {}: {e}", j.id)),
            }
        }
        Ok(())
    }

    /// Drops finished jobs after a day, queued ones after 48 h, and old delivery GUIDs.
    async fn forget_old(&self, jobs: &[GateJob], now: OffsetDateTime, full: bool) -> Result<(), StoreError> {
        let old: Vec<u64> = jobs
            .iter()
            .filter(|j| {
                (j.rank >= rank::COMPLETED && since(now, j.updated) > KEEP_FINISHED)
                    || (j.rank < rank::COMPLETED && since(now, j.first_seen) > MAX_QUEUED)
            })
            .map(|j| j.id)
            .collect();
        if old.is_empty() && !full {
            return Ok(());
        }
        let before = full.then(|| now - KEEP_DELIVERIES);
        let cmd = Command::GateForget { gate: self.name.clone(), jobs: old, deliveries_before: before };
        self.store.execute(cmd).await?.ok();
        Ok(())
    }

    /// Registers the JIT runner of an allocation attempt of `app` and returns its config.
    ///
    /// An outage, a timeout, a 5xx or a rate limit at GitHub (or the gate's spent
    /// `apiBudget`) is [`MintError::NotNow`]: the gate then holds its applications
    /// until GitHub's `retry-after`, the rate-limit reset or the budget's next free
    /// call, or for a backoff (2 s doubling to a minute) after an outage, so a short
    /// outage costs no job its attempts. Only a definite refusal is
    /// [`MintError::Refused`].
    ///
    /// Minting runs on the node elected for `app` (its resource reads the config there),
    /// which in a cluster is often not the leader that runs the passes. It depends on no
    /// pass state: the runner record comes from the store, the config from this node's
    /// memory or disk (another node's earlier attempt has none here and registers again,
    /// through the 409 path), and the hold, the outage count and the runner-group cache
    /// are this node's own, about the calls this node makes.
    pub async fn mint(&self, app: &Application) -> Result<Metadata, MintError> {
        let refused = |e: String| {
            self.metrics.registration_failed(&self.name);
            self.note_error(e.clone());
            MintError::Refused(format!("gate {}: {e}", self.name))
        };
        let e = match self.register(app).await {
            Ok(m) => {
                *self.outages.lock().unwrap_or_else(|e| e.into_inner()) = 0;
                *self.denials.lock().unwrap_or_else(|e| e.into_inner()) = 0;
                return Ok(m);
            }
            Err(e) => e,
        };
        let (what, wait) = match e {
            Mint::Refused(e) => return Err(refused(e)),
            Mint::Github(e) => match e.retry() {
                // A 403 that is no rate limit: the credential lacks a permission (named
                // in the message). Every attempt would get the same answer until someone
                // fixes it, so it is no refusal of this application (that would burn the
                // job's attempts and end in "gave up"): the gate holds, backing off from
                // a minute, and says which permission is missing.
                Retry::Never if e.status() == Some(403) => {
                    self.metrics.registration_failed(&self.name);
                    (e.to_string(), self.denied_backoff())
                }
                Retry::Never => return Err(refused(e.to_string())),
                Retry::After(wait) => (e.to_string(), wait),
                Retry::Backoff => (e.to_string(), self.outage_backoff()),
            },
            Mint::Store(what) => (what, self.outage_backoff()),
        };
        Err(self.hold_for(what, wait))
    }

    /// The wait after one more consecutive outage: 2 s, doubling, at most a minute.
    fn outage_backoff(&self) -> Duration {
        let mut n = self.outages.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_add(1);
        outage_wait(*n)
    }

    /// The wait after one more consecutive permission refusal (403): a minute,
    /// doubling, at most a quarter of an hour.
    fn denied_backoff(&self) -> Duration {
        let mut n = self.denials.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_add(1);
        denied_wait(*n)
    }

    /// Holds the gate's allocations for `wait` because of `what`; the answer to the
    /// attempt that found it.
    fn hold_for(&self, what: String, wait: Duration) -> MintError {
        let at = OffsetDateTime::now_utc() + wait;
        let at = at.replace_nanosecond(0).unwrap_or(at);
        let reason = format!(
            "gate {}: GitHub cannot register runners now ({what}); retrying after {:02}:{:02}:{:02} UTC",
            self.name,
            at.hour(),
            at.minute(),
            at.second()
        );
        warn!(gate = %self.name, wait_s = wait.as_secs(), %what, "runner registration postponed");
        self.note_error(format!("runner registration postponed {} s: {what}", wait.as_secs()));
        let until = tokio::time::Instant::now() + wait;
        let mut hold = self.hold.lock().unwrap_or_else(|e| e.into_inner());
        // Concurrent attempts each find the outage: keep the latest end.
        if hold.as_ref().is_none_or(|h| h.until <= until) {
            *hold = Some(Hold { reason: reason.clone(), until });
        }
        MintError::NotNow(reason)
    }

    /// While registrations are postponed: why, and until when.
    pub fn hold(&self) -> Option<Hold> {
        self.hold.lock().unwrap_or_else(|e| e.into_inner()).clone().filter(|h| h.until > tokio::time::Instant::now())
    }

    /// The registration itself; errors say whether GitHub gave a definite answer.
    async fn register(&self, app: &Application) -> Result<Metadata, Mint> {
        let uid = app.metadata.uid.ok_or(Mint::Refused("application without uid".into()))?;
        let name = self.runner_name(uid);
        let idx: usize = app
            .spec
            .metadata
            .get("FISH_GATE_ROUTE")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse().ok())
            .filter(|i| *i < self.config.routes.len())
            .ok_or(Mint::Refused("the application names no route of this gate".into()))?;
        // Allocated again after a crash, or retried after a failed attempt: the runner
        // registered then is still ours and its config still valid until it takes a job.
        if let Ok(Some(rec)) = self.store.gate_runner(&self.name, uid)
            && rec.runner_name == name
            && !rec.busy
            && let Some(blob) = self.blob(uid)
        {
            info!(gate = %self.name, runner = %name, "reusing the runner registered for an earlier attempt");
            let mut m = Metadata::new();
            m.insert(JIT_KEY.into(), serde_json::Value::String(blob));
            return Ok(m);
        }
        let labels: Vec<String> = self.config.routes[idx].labels.clone();
        let job_id = app.spec.metadata.get("FISH_GITHUB_JOB_ID").and_then(|v| v.as_str()).and_then(|s| s.parse().ok());
        let gh = Mint::Github;
        let group = self.group_id().await.map_err(gh)?;
        let jit = match self.github.generate_jitconfig(&name, group, &labels).await {
            Ok(j) => j,
            Err(e) if e.status() == Some(409) => {
                // An earlier attempt registered this name and its answer was lost (or
                // an earlier allocation attempt of this application failed after it).
                let existing = self.github.runner_by_name(&name).await.map_err(gh)?;
                match existing {
                    Some(r) if r.busy || r.status == "online" => {
                        return Err(Mint::Refused(format!(
                            "runner {name} is registered and {} already",
                            if r.busy { "busy" } else { "online" }
                        )));
                    }
                    Some(r) => {
                        info!(gate = %self.name, runner = %name, "replacing an earlier registration of this runner");
                        self.github.delete_runner(r.id).await.map_err(gh)?;
                    }
                    None => {}
                }
                self.github.generate_jitconfig(&name, group, &labels).await.map_err(gh)?
            }
            Err(e) => return Err(gh(e)),
        };
        let record = GateRunner {
            runner_name: name.clone(),
            runner_id: jit.runner.id,
            job_id: job_id.unwrap_or(0),
            registered_at: OffsetDateTime::now_utc(),
            online: false,
            busy: false,
        };
        // The config first, then the record: a record always has its config.
        let path = self.secret_dir.join(format!("{uid}.jit"));
        if let Err(e) = crate::fsutil::write_private(&path, jit.encoded.as_bytes()) {
            warn!(gate = %self.name, error = %e, "cannot keep the runner config on disk; served from memory only");
        }
        self.blobs.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, jit.encoded.clone());
        if let Err(e) = self.put_runner(uid, Some(record)).await {
            let _ = self.github.delete_runner(jit.runner.id).await;
            self.forget_blob(uid);
            return Err(Mint::Store(format!("recording runner {name}: {e}")));
        }
        self.metrics.runner_created(&self.name);
        info!(gate = %self.name, runner = %name, id = jit.runner.id, app = %app.metadata.name_str(), "registered a just-in-time runner");
        let mut m = Metadata::new();
        m.insert(JIT_KEY.into(), serde_json::Value::String(jit.encoded));
        Ok(m)
    }

    /// The runner config `app`'s resource may still read: while it is being allocated
    /// or allocated, and its runner has not taken a job.
    pub fn current(&self, app: &Application) -> Metadata {
        let mut m = Metadata::new();
        let Some(uid) = app.metadata.uid else { return m };
        if !matches!(app.status.phase, Phase::Elected | Phase::Allocated) {
            return m;
        }
        match self.store.gate_runner(&self.name, uid) {
            Ok(Some(r)) if !r.busy => {}
            _ => return m,
        }
        if let Some(b) = self.blob(uid) {
            m.insert(JIT_KEY.into(), serde_json::Value::String(b));
        }
        m
    }

    /// The gate as `GET /api/v1/gates` shows it.
    pub fn view(&self) -> Gate {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner()).clone();
        status.system = "github".into();
        status.api_url = self.config.api_url.clone();
        status.scope = self.github.scope.to_string();
        let addr = self.bound.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(self.config.webhook.listen);
        status.webhook = format!("https://{addr}{}", self.config.webhook.path);
        status.api = super::github::budget_view(&self.github);
        status.last_errors = self.errors.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        Gate {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: ObjectMeta { name: self.name.parse().ok(), ..Default::default() },
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_back_off_from_two_seconds_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|n| outage_wait(n).as_secs()).collect();
        assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn permission_refusals_back_off_from_a_minute_to_a_quarter_hour() {
        let waits: Vec<u64> = (1..=7).map(|n| denied_wait(n).as_secs()).collect();
        assert_eq!(waits, vec![60, 120, 240, 480, 900, 900, 900]);
    }
}
