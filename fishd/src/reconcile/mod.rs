//! The reconciler: where the store's desired state meets the drivers' reality.
//!
//! Level-triggered: store events, a startup adoption pass and a periodic resync all
//! feed one [`queue`] keyed by application uid, and each reconcile looks only at the
//! application as it is now, so it does not matter why it runs or how often.
//! NEW applications are placed by the [`election`] pass, which runs alone and in
//! creation order, so capacity is never promised twice.

pub mod application;
pub mod capacity;
pub mod election;
pub mod queue;
pub mod retention;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_types::{ApplicationStatus, Definition, HistoryEntry, Label, NodeCapacity, Phase};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::drivers::{CallTimeouts, DriverError, DriverOp, Drivers};
use crate::meta_token::MetaTokens;
use crate::store::{Kind, Store, StoreError};

pub use capacity::Ledger;
use queue::Queue;

/// Tunables of the control loops.
#[derive(Clone, Debug)]
pub struct ReconcileConfig {
    /// Failed allocation attempts after which an application is ERROR.
    pub allocation_retry: u32,
    /// Lifetime of resources whose label and application set none.
    pub default_lifetime: Duration,
    /// How long DEALLOCATED and ERROR applications are kept.
    pub history_retention: Duration,
    /// Full pass over every application, making up for lost triggers.
    pub resync: Duration,
    /// How often an allocated resource is checked; bounds how late an exit is seen.
    pub inspect_interval: Duration,
    /// Deadlines of driver calls, per driver instance (missing: the defaults).
    pub timeouts: BTreeMap<String, CallTimeouts>,
    /// Reconciles at once; allocations can be slow (image loads), so more than cores.
    pub concurrency: usize,
    /// Where resources find the metadata endpoint (`FISH_META_URL`).
    pub meta_url: String,
    /// The CA that signed the endpoint's certificate (`FISH_CA_CERT`), so a resource
    /// can verify it instead of turning verification off.
    pub meta_ca: String,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            allocation_retry: 3,
            default_lifetime: Duration::from_secs(12 * 3600),
            history_retention: Duration::from_secs(24 * 3600),
            resync: Duration::from_secs(30),
            inspect_interval: Duration::from_secs(2),
            timeouts: BTreeMap::new(),
            concurrency: 64,
            meta_url: String::new(),
            meta_ca: String::new(),
        }
    }
}

/// Who this node is, for elections and status.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub identifiers: Vec<String>,
    pub capacity: NodeCapacity,
}

/// Shared context of every reconcile.
pub struct Ctx {
    pub store: Store,
    pub drivers: Arc<Drivers>,
    pub node: NodeIdentity,
    pub config: ReconcileConfig,
    pub meta_tokens: MetaTokens,
    /// Queue and allocation metrics this node observes (shared with `/metrics`).
    pub metrics: crate::telemetry::PoolMetrics,
    /// Per-application secrets handed to resources at allocation (gates register here).
    pub secrets: crate::metadata::SecretProviders,
    /// Cleared on drain: no new application is elected.
    accepting: AtomicBool,
    election: Notify,
    /// An application finished: the purge loop looks at when the next purge is due.
    purge: Notify,
    /// What this node's applications reserve, as of the last election pass.
    ledger: Mutex<Ledger>,
    /// Definitions of active applications elected on this node, so passes don't
    /// re-read them. An entry means "this node's, reserving this": it is written by
    /// the first election pass that finds the application held here (not cached yet,
    /// so that pass reads it) and removed when the application leaves the node (failed
    /// attempt, release, purge).
    definitions: Mutex<HashMap<Uuid, Definition>>,
    /// The label each NEW application was created with (immutable), as the last
    /// election pass read it: a pass runs after every creation and election, and in a
    /// cluster the NEW queue is deep (each waits for every node's vote), so parsing
    /// every label again each pass was much of a node's work in a burst. Kept for the
    /// NEW applications of the latest pass only.
    new_labels: Mutex<HashMap<Uuid, Arc<Label>>>,
    /// Consecutive failures per application, for backoff.
    failures: Mutex<HashMap<Uuid, u32>>,
    /// Last availability of each driver instance.
    availability: Mutex<BTreeMap<String, Result<(), String>>>,
    /// Resources to release that no application record accounts for (a failed
    /// attempt's remains whose cleanup failed, orphans found at start), per uid; the
    /// uid's reconcile releases them, retrying until the driver confirms.
    leftovers: Mutex<HashMap<Uuid, Vec<Leftover>>>,
    /// The resource this node's drivers hold for each application that was this node's
    /// when last seen (allocated here, or adopted at start). When the application stops
    /// being this node's while it runs (a node declared lost, its change arriving after
    /// a partition heals; the application purged), its reconcile releases the resource.
    held: Mutex<HashMap<Uuid, Leftover>>,
    /// Uids whose next MODIFIED event is a reconcile's own note (a message, same
    /// phase): not a reason to run again before the backoff it chose.
    own_writes: Mutex<HashSet<Uuid>>,
    /// Whether the leader hears a node now (set by the runtime from Raft's acks): a
    /// round closed at its deadline elects only among nodes heard, not one that died
    /// after voting and is not yet declared lost.
    heard: std::sync::OnceLock<Box<Heard>>,
    /// How a resource ended by itself, kept from its cleanup until DEALLOCATED is
    /// written: when that write fails (no quorum, a leader change) the next inspect
    /// finds the resource gone, and must still report how it ended, not "lost".
    ended: Mutex<HashMap<Uuid, String>>,
}

/// Whether this node hears the named node now.
type Heard = dyn Fn(&str) -> bool + Send + Sync;

/// A resource of a driver instance that must be released.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub driver: String,
    /// May be empty: drivers release by uid.
    pub identifier: String,
}

impl Ctx {
    /// A context; nothing runs until [`Controller::start`].
    pub fn new(
        store: Store,
        drivers: Arc<Drivers>,
        node: NodeIdentity,
        config: ReconcileConfig,
        meta_tokens: MetaTokens,
    ) -> Arc<Ctx> {
        Arc::new(Ctx {
            store,
            drivers,
            node,
            config,
            meta_tokens,
            metrics: Default::default(),
            secrets: Default::default(),
            accepting: AtomicBool::new(true),
            election: Notify::new(),
            purge: Notify::new(),
            ledger: Mutex::new(Ledger::default()),
            definitions: Mutex::new(HashMap::new()),
            new_labels: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            availability: Mutex::new(BTreeMap::new()),
            leftovers: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            own_writes: Mutex::new(HashSet::new()),
            ended: Mutex::new(HashMap::new()),
            heard: std::sync::OnceLock::new(),
        })
    }

    /// What this node's applications reserve now.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Each driver instance's availability as of the last election or probe.
    pub fn availability(&self) -> BTreeMap<String, Result<(), String>> {
        self.availability.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// Asks for an election pass soon.
    pub fn wake_election(&self) {
        self.election.notify_one();
    }

    /// Whether new applications are still elected here.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    fn failure(&self, uid: Uuid) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(uid).or_insert(0);
        *n += 1;
        *n
    }

    fn clear_failures(&self, uid: Uuid) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    }

    fn forget(&self, uid: Uuid) {
        self.clear_failures(uid);
        self.release_definition(uid);
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    }

    /// Notes (`Some`) or forgets (`None`) how `uid`'s resource ended by itself.
    fn set_ended(&self, uid: Uuid, how: Option<String>) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        match how {
            Some(h) => ended.insert(uid, h),
            None => ended.remove(&uid),
        };
    }

    fn ended(&self, uid: Uuid) -> Option<String> {
        self.ended.lock().unwrap_or_else(|e| e.into_inner()).get(&uid).cloned()
    }

    fn add_leftovers(&self, uid: Uuid, list: Vec<Leftover>) {
        let mut all = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        let mine = all.entry(uid).or_default();
        for l in list {
            if !mine.contains(&l) {
                mine.push(l);
            }
        }
    }

    fn take_leftovers(&self, uid: Uuid) -> Vec<Leftover> {
        self.leftovers.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid).unwrap_or_default()
    }

    /// Whether a change of application `uid` (now in `phase`, elected to `node`) gives this
    /// node's reconcile anything to do. A waiting application, or one active or
    /// finished on another node, does not, unless this node still holds or must release
    /// something of it: in a cluster, reading and parsing each of those on every node
    /// for every change was most of a follower's work in a burst. Purging finished ones
    /// is the [`retention`] loop's, not the queue's.
    fn concerns(&self, uid: Uuid, phase: Phase, node: Option<&str>) -> bool {
        let holds =
            || self.holds_resource(uid) || self.leftovers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&uid);
        if phase.is_terminal() {
            // Finished: only a resource still held here (or left over) is work.
            holds()
        } else {
            node == Some(self.node.name.as_str()) || holds()
        }
    }

    /// Asks the purge loop to look at the finished applications again soon.
    pub fn wake_purge(&self) {
        self.purge.notify_one();
    }

    /// Sets how this node tells whether it hears another (once; later calls are ignored).
    pub fn set_heard(&self, heard: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let _ = self.heard.set(Box::new(heard));
    }

    /// The recorded nodes this node hears now; `None` when it cannot tell.
    fn heard_nodes(&self) -> Option<Vec<String>> {
        let heard = self.heard.get()?;
        let (_, nodes) = self.store.list_nodes().ok()?;
        Some(nodes.iter().map(|n| n.metadata.name_str().to_owned()).filter(|n| heard(n)).collect())
    }

    /// Records that a driver holds `resource` for `uid` on this node.
    fn hold(&self, uid: Uuid, resource: Leftover) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, resource);
    }

    /// The resource is released (or handed to the leftovers).
    fn unhold(&self, uid: Uuid) {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    }

    /// Whether a driver of this node holds a resource for `uid`, as far as this node knows.
    pub fn holds_resource(&self, uid: Uuid) -> bool {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&uid)
    }

    fn held_uids(&self) -> Vec<Uuid> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    fn held(&self, uid: Uuid) -> Option<Leftover> {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).get(&uid).cloned()
    }

    fn expect_own_write(&self, uid: Uuid) {
        self.own_writes.lock().unwrap_or_else(|e| e.into_inner()).insert(uid);
    }

    /// Whether this event is the reconcile's own note for `uid` (consumed once).
    fn is_own_write(&self, uid: Uuid) -> bool {
        self.own_writes.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid)
    }

    /// Runs one call of driver instance `driver` under its deadline; past it, the call
    /// is dropped (cancelled) and fails with that reason.
    pub async fn call<T>(
        &self,
        driver: &str,
        op: DriverOp,
        call: impl std::future::Future<Output = Result<T, DriverError>>,
    ) -> Result<T, DriverError> {
        let limit = self.config.timeouts.get(driver).copied().unwrap_or_default().of(op);
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(DriverError::failed(format!(
                "driver {driver}: {op} did not finish within {}",
                humantime::format_duration(limit)
            ))),
        }
    }

    /// Whether this node is the Raft leader: pool-wide chores (purging finished
    /// applications, removing due labels) are done by the leader alone, not once per node.
    pub fn leads(&self) -> bool {
        self.store.raft().metrics().borrow().state == openraft::ServerState::Leader
    }

    /// The applications in `phases` whose `status.node` is this node (unreadable ones
    /// are skipped: the caller's next look finds them).
    pub fn mine_in(&self, phases: &[Phase]) -> Vec<Uuid> {
        let mut out = Vec::new();
        for phase in phases {
            for uid in self.store.uids_in_phase(*phase).unwrap_or_default() {
                if let Ok(Some(app)) = self.store.get_application_by_uid(uid)
                    && app.status.node.as_deref() == Some(self.node.name.as_str())
                {
                    out.push(uid);
                }
            }
        }
        out
    }

    /// The labels of the NEW applications `uids` (`None`: gone), read once per
    /// application; the cache keeps only these.
    fn new_labels(&self, uids: &[Uuid]) -> Result<Vec<Option<Arc<Label>>>, StoreError> {
        let mut cache = self.new_labels.lock().unwrap_or_else(|e| e.into_inner());
        let keep: HashSet<&Uuid> = uids.iter().collect();
        cache.retain(|uid, _| keep.contains(uid));
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            if let Some(label) = cache.get(uid) {
                out.push(Some(label.clone()));
                continue;
            }
            let label = self.store.application_label(*uid)?.map(Arc::new);
            if let Some(l) = &label {
                cache.insert(*uid, l.clone());
            }
            out.push(label);
        }
        Ok(out)
    }

    /// The application no longer reserves anything on this node.
    fn release_definition(&self, uid: Uuid) {
        self.definitions.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    }
}

/// Exponential backoff: 1 s, 2 s, 4 s … capped at a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

/// The metadata handed to a resource at allocation: the merged metadata (the same
/// builder `/meta/v1/data` uses) plus how to reach the endpoint (`FISH_META_TOKEN`,
/// `FISH_META_URL`, `FISH_CA_CERT`).
pub fn request_metadata(
    ctx: &Ctx,
    app: &api_types::Application,
    label: &api_types::Label,
    uid: Uuid,
) -> api_types::Metadata {
    let mut m = crate::metadata::merged(Some(label), app, &ctx.node.name);
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    m.insert("FISH_META_TOKEN".into(), s(&ctx.meta_tokens.issue(uid)));
    if !ctx.config.meta_url.is_empty() {
        m.insert("FISH_META_URL".into(), s(&ctx.config.meta_url));
    }
    if !ctx.config.meta_ca.is_empty() {
        m.insert("FISH_CA_CERT".into(), s(&ctx.config.meta_ca));
    }
    m
}

/// `status` moved to `phase`, with the transition in the history.
pub fn transition(status: &ApplicationStatus, phase: Phase, message: impl Into<String>) -> ApplicationStatus {
    let message = message.into();
    let mut s = status.clone();
    s.phase = phase;
    s.message = message.clone();
    s.history.push(HistoryEntry { phase, at: OffsetDateTime::now_utc(), message });
    s
}

/// The running control loops.
pub struct Controller {
    ctx: Arc<Ctx>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Controller {
    /// Adopts what the drivers own, then starts the queue, the election loop, the
    /// event trigger and the resync timer.
    pub async fn start(ctx: Arc<Ctx>) -> Controller {
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let work_ctx = ctx.clone();
        let (queue, _) = queue::start(ctx.config.concurrency, tracker.clone(), stop.clone(), move |uid| {
            application::reconcile(work_ctx.clone(), uid)
        });
        application::adopt(&ctx, &queue).await;
        tokio::spawn(election_loop(ctx.clone(), stop.clone()));
        tokio::spawn(election::close_overdue_loop(ctx.clone(), stop.clone()));
        tokio::spawn(trigger_loop(ctx.clone(), queue.clone(), stop.clone()));
        tokio::spawn(resync_loop(ctx.clone(), queue.clone(), stop.clone()));
        tokio::spawn(retention::purge_loop(ctx.clone(), stop.clone()));
        Controller { ctx, tracker, stop }
    }

    /// Stops electing new applications; running work goes on.
    pub fn stop_accepting(&self) {
        self.ctx.accepting.store(false, Ordering::SeqCst);
    }

    /// Asks every active application of this node to deallocate (`--drain-and-deallocate`).
    /// Only this node's: another node's work, and the pool's NEW applications (no
    /// node's yet), are not a draining node's to end.
    pub async fn deallocate_all(&self) {
        for uid in self.ctx.mine_in(&[Phase::Elected, Phase::Allocated]) {
            let cmd = crate::store::Command::RequestDeallocate {
                uid,
                by: format!("node {} draining", self.ctx.node.name),
                now: OffsetDateTime::now_utc(),
            };
            if let Err(e) = self.ctx.store.execute(cmd).await {
                tracing::warn!(%uid, error = %e, "could not request deallocation while draining");
            }
        }
    }

    /// Whether this node still has applications holding or acquiring resources.
    pub fn has_active(&self) -> bool {
        !self.ctx.mine_in(&[Phase::Elected, Phase::Allocated, Phase::Deallocate]).is_empty()
    }

    /// Stops starting reconciles and waits up to `grace` for the running ones
    /// (allocations, deallocations) to finish. Returns whether they all did.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait()).await.is_ok()
    }
}

async fn election_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.config.resync);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ctx.election.notified() => {}
            _ = ctx.secrets.hold_ended() => {}
            _ = tick.tick() => {}
        }
        if let Err(e) = election::pass(&ctx).await {
            tracing::error!(error = %e, "election pass failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            ctx.wake_election();
        }
    }
}

async fn trigger_loop(ctx: Arc<Ctx>, queue: Queue, stop: CancellationToken) {
    let mut events = ctx.store.subscribe();
    loop {
        let ev = tokio::select! {
            _ = stop.cancelled() => return,
            ev = events.recv() => ev,
        };
        match ev {
            Ok(ev) => match ev.kind {
                Kind::Application => {
                    let facts = ev.app_facts();
                    let phase = facts.as_ref().map(|f| f.phase);
                    if let Some(f) = &facts {
                        let uid = f.uid;
                        match ev.event_type {
                            api_types::WatchEventType::Deleted => {
                                ctx.forget(uid);
                                // Purged while this node still runs its resource: release it.
                                if ctx.holds_resource(uid) {
                                    queue.now(uid);
                                }
                            }
                            // A reconcile's own note: it already chose when to run again.
                            api_types::WatchEventType::Modified if ctx.is_own_write(uid) => {}
                            _ if ctx.concerns(uid, f.phase, f.node.as_deref()) => queue.now(uid),
                            _ => {}
                        }
                    }
                    // A new application, capacity freed, or a round closed (this node's
                    // promise to it is released): the election may place something.
                    if matches!(phase, Some(Phase::New | Phase::Elected | Phase::Deallocated | Phase::Error)) {
                        ctx.wake_election();
                    }
                    if phase.is_some_and(Phase::is_terminal) {
                        ctx.wake_purge();
                    }
                }
                Kind::Node => ctx.wake_election(),
                Kind::Label | Kind::User => {}
            },
            // Missed events are made up for by a resync (finished applications need
            // none: their purge is due by the store's index, not by an event).
            Err(RecvError::Lagged(_)) => {
                resync(&ctx, &queue);
                ctx.wake_purge();
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn resync_loop(ctx: Arc<Ctx>, queue: Queue, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.config.resync);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        resync(&ctx, &queue);
        application::remove_due_labels(&ctx).await;
    }
}

/// Queues every application that has something left to happen.
fn resync(ctx: &Ctx, queue: &Queue) {
    // Not finished applications: nothing happens to them but their purge (see
    // [`retention`]), and there may be 100,000 of them.
    for phase in [Phase::Elected, Phase::Allocated, Phase::Deallocate] {
        match ctx.store.uids_in_phase(phase) {
            Ok(uids) => uids.into_iter().for_each(|u| queue.now(u)),
            Err(e) => tracing::error!(error = %e, "resync could not list applications"),
        }
    }
    // Resources this node runs whose application may have moved on unseen: a snapshot
    // installed after a partition brings the new state without events.
    ctx.held_uids().into_iter().for_each(|u| queue.now(u));
    ctx.wake_election();
}
