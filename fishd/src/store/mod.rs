//! The store: one redb file per node, changed only by [`Command`]s that the Raft log
//! feeds to the state machine on every node (a single node is a one-member cluster).
//!
//! # Guarantees
//! - A command is acknowledged only after its log entry committed (on a quorum) and was
//!   applied durably on the node that answers (read-your-writes, also for writes a
//!   follower forwarded to the leader).
//! - Every object change gets the log index of its entry as `metadata.resourceVersion`:
//!   identical on every node. Several objects changed by one entry share it.
//! - An [`Event`] per change is kept (node-locally), the latest `watchHistory` of them
//!   (whole revisions), so a watch can resume from a recent revision on any node.
//! - Concurrent commands share a log entry (group commit): one append (one fsync) and
//!   one apply transaction for all of them.
//! - Live events are published after the commit, in revision order.
//! - Without a quorum a command fails with [`StoreError::Unavailable`] within
//!   [`WRITE_TIMEOUT`], never hangs.

mod answers;
mod applyset;
pub mod backup;
pub mod ballots;
mod command;
mod dedup;
pub mod derived;
mod dry_run;
mod event;
pub mod gates;
pub mod holdings;
mod join_tokens;
mod json;
pub mod raft;
mod state;
mod tables;
mod tokens;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use api_types::{Application, Label, Node, Phase, User};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

pub use applyset::check_set_name;
pub use backup::Summary;
pub use command::{ApplyItem, Command, Outcome, Rejection, Response, UserRecord};
pub use event::{AppFacts, Event, Kind};
pub use join_tokens::{JoinTokenRecord, unknown as unknown_join_token};
pub use json::JsonSink;
pub use raft::{Applied, Batch, CommandText, FishNode, NodeId, Proposal, Raft, TypeConfig, node_id_for};
use tables::*;

/// Default number of recent events kept for watches to resume from (the value and
/// its reason are in [`crate::defaults::EVENT_HISTORY`]).
pub const EVENT_HISTORY: u64 = crate::defaults::EVENT_HISTORY;
/// `meta` key: what a restored store adds to log indices to make resourceVersions
/// (the backup's revision), so they never go back after a restore. 0 otherwise.
pub(crate) const REVISION_BASE: &str = "revision_base";
/// Live events buffered per watcher before it is declared too slow (410).
const EVENT_CHANNEL: usize = 4096;
/// How long a command may wait for a leader (forwarded, or during an election)
/// before it is refused as unavailable.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(8);
/// A leader that heard from no quorum for this long refuses writes (503).
const QUORUM_LOST_AFTER: Duration = Duration::from_secs(3);
/// Longest a write may take on a leader that still has its quorum.
const SLOW_WRITE_LIMIT: Duration = Duration::from_secs(60);

/// A storage failure. Business outcomes are [`Rejection`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] redb::Error),
    #[error("stored object is corrupt")]
    Corrupt(#[from] serde_json::Error),
    #[error("stored Raft log entry is corrupt")]
    CorruptLog(#[from] postcard::Error),
    /// A ballot or a remembered answer stored as postcard that does not read back.
    #[error("stored record is corrupt")]
    CorruptRecord(#[source] postcard::Error),
    #[error("the store is shut down")]
    Closed,
    /// No leader with a quorum answered in time: the write may or may not happen.
    #[error("{0}")]
    Unavailable(String),
    #[error("raft: {0}")]
    Raft(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// A watch asked to resume from a revision older than the history kept.
#[derive(Debug, thiserror::Error)]
#[error("resourceVersion {requested} is too old: the oldest kept is {oldest}")]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

/// Filters of an application list.
#[derive(Clone, Debug, Default)]
pub struct AppFilter {
    pub phase: Option<Phase>,
    pub label: Option<String>,
    /// Only this owner's applications (non-admin callers).
    pub owner: Option<String>,
}

/// Sends a command to the leader when this node is not it (implemented over HTTPS by
/// the cluster layer; absent on a node that never has peers).
#[async_trait::async_trait]
pub trait Forward: Send + Sync {
    /// Has `leader` apply `proposal`; its answer carries the log index it was applied at.
    async fn forward(&self, leader: &FishNode, proposal: &Proposal) -> Result<Applied, String>;
}

/// How to open a store: who this node is, and how it reaches peers.
#[derive(Clone)]
pub struct StoreOptions {
    pub event_history: u64,
    /// This node as membership records it.
    pub node: FishNode,
    /// Form a one-member cluster on first start (false for a node that joins).
    pub bootstrap: bool,
    pub network: Option<Arc<dyn RaftNetworkBuilder>>,
    pub forward: Option<Arc<dyn Forward>>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            event_history: EVENT_HISTORY,
            node: FishNode { name: "local".into(), api: String::new() },
            bootstrap: true,
            network: None,
            forward: None,
        }
    }
}

/// Builds the Raft network of a node (the cluster layer's HTTPS client).
pub trait RaftNetworkBuilder: Send + Sync {
    /// Starts `raft` with `log` and `sm` and this builder's network.
    fn start(
        &self,
        id: NodeId,
        config: Arc<openraft::Config>,
        log: raft::LogStore,
        sm: raft::StateMachine,
    ) -> futures::future::BoxFuture<'static, Result<Raft, openraft::error::Fatal<NodeId>>>;
}

/// The network of a node that has no peers: every RPC target is unreachable.
struct Lonely;

impl openraft::RaftNetworkFactory<TypeConfig> for Lonely {
    type Network = Lonely;
    async fn new_client(&mut self, _target: NodeId, _node: &FishNode) -> Lonely {
        Lonely
    }
}

impl openraft::RaftNetwork<TypeConfig> for Lonely {
    async fn append_entries(
        &mut self,
        _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::AppendEntriesResponse<NodeId>,
        openraft::error::RPCError<NodeId, FishNode, openraft::error::RaftError<NodeId>>,
    > {
        Err(lonely())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<NodeId>,
        openraft::error::RPCError<
            NodeId,
            FishNode,
            openraft::error::RaftError<NodeId, openraft::error::InstallSnapshotError>,
        >,
    > {
        Err(lonely())
    }

    async fn vote(
        &mut self,
        _rpc: openraft::raft::VoteRequest<NodeId>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::VoteResponse<NodeId>,
        openraft::error::RPCError<NodeId, FishNode, openraft::error::RaftError<NodeId>>,
    > {
        Err(lonely())
    }
}

fn lonely<E: std::error::Error>() -> openraft::error::RPCError<NodeId, FishNode, E> {
    openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(&std::io::Error::other(
        "this node has no network to its peers",
    )))
}

/// The Raft settings of every node: heartbeats every 250 ms, elections after
/// 0.75–1.25 s of silence, snapshots every 1000 entries or 1 MiB of
/// log (see [`raft::LogGrowth`]) keeping 100 entries behind them, at most 64 entries
/// (each a group commit) per append RPC.
///
/// openraft gives every append RPC one heartbeat interval to answer. At 100 ms a
/// restarted follower whose first append truncates a stale entry and fsyncs on a
/// loaded disk never answered in time and never caught up; 250 ms leaves room for
/// that.
///
/// Failover ≈ `election_timeout_max` (followers refuse votes while the dead leader's
/// lease, that long, holds) + a random `min..max` wait: 1–2 s gave 3.1–4.0 s measured
/// (fish-bench, quiet machine); 0.75–1.25 s gives ≈ 2–2.5 s, with the minimum still
/// three heartbeats, so one late heartbeat on a loaded host starts no election.
pub fn raft_config() -> Result<Arc<openraft::Config>, StoreError> {
    let c = openraft::Config {
        cluster_name: "aquarium".into(),
        heartbeat_interval: 250,
        election_timeout_min: 750,
        election_timeout_max: 1250,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().map_err(|e| StoreError::Raft(e.to_string()))?))
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    raft: Raft,
    id: NodeId,
    node: FishNode,
    forward: Option<Arc<dyn Forward>>,
    events: broadcast::Sender<Arc<Event>>,
    /// The group-commit queue of writes this node leads (see [`Leading`]).
    leading: mpsc::Sender<Waiting>,
    /// Token digest → user, invalidated by the state machine (see [`tokens`]).
    tokens: Arc<tokens::TokenCache>,
    /// Which node holds which applications, kept by the state machine.
    holdings: Arc<holdings::Holdings>,
    /// Applications read one by one through [`Store::get_application_by_uid`] (the
    /// control loops' read): tests check that a pass reads O(active), not O(stored).
    app_reads: Arc<std::sync::atomic::AtomicU64>,
    /// Answers and the applied index, from the state machine as it commits.
    answers: Arc<answers::Answers>,
}

/// The NEW applications, their ballots and the applications a node holds (ELECTED,
/// ALLOCATED or DEALLOCATE on it), all as of one state: an application elected on the
/// node is either NEW with the node's committed vote in its ballot, or held; never
/// neither (which would let the node promise its room twice).
#[derive(Debug, Default, PartialEq)]
pub struct ElectionView {
    /// In creation order.
    pub new: Vec<Uuid>,
    /// The ballot of each of `new`, in the same order.
    pub ballots: Vec<ballots::Ballot>,
    /// In no particular order.
    pub held: Vec<Uuid>,
}

/// Most proposals in one log entry.
const MAX_BATCH: usize = 512;
/// Log entries of client writes a leader has in flight at once. While they are being
/// written, new proposals wait and go together in the next entry (group commit).
const WRITES_IN_FLIGHT: usize = 2;
/// Proposals waiting for a log entry before callers wait for room.
const PROPOSAL_QUEUE: usize = 4096;

/// openraft's refusal of a write.
type RaftWriteError = openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, FishNode>>;

/// Why this node could not commit a proposal as leader.
#[derive(Clone, Debug)]
enum LeadError {
    /// openraft refused: usually not the leader (then it names the one it knows).
    Raft(Box<RaftWriteError>),
    /// A leader without a quorum ack lately, or a write slower than [`SLOW_WRITE_LIMIT`].
    NoQuorum,
}

/// A proposal waiting for its log entry, and where its answer goes.
type Waiting = (Proposal, oneshot::Sender<Result<Applied, LeadError>>);

/// Writes proposals into the log as batches: each entry holds every proposal that was
/// waiting when it was started, so concurrent writers share one append (one fsync) and
/// one apply transaction, as the store's single writer did before Raft.
#[derive(Clone)]
struct Leading {
    raft: Raft,
    id: NodeId,
    answers: Arc<answers::Answers>,
}

impl Leading {
    async fn run(self, mut rx: mpsc::Receiver<Waiting>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else { return };
            let Some(first) = rx.recv().await else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let this = self.clone();
            tokio::spawn(async move {
                let proposals = Batch(batch.iter().map(|(p, _)| p.clone()).collect());
                let ids: Vec<Uuid> = batch.iter().map(|(p, _)| p.id).collect();
                let result = this.answered(proposals, &ids).await;
                this.answers.forget(ids);
                match result {
                    Ok(answers) if answers.len() == batch.len() => {
                        for ((_, reply), a) in batch.into_iter().zip(answers) {
                            let _ = reply.send(Ok(a));
                        }
                    }
                    Ok(answers) => {
                        tracing::error!(
                            sent = batch.len(),
                            answered = answers.len(),
                            "a log entry's answers do not match its proposals"
                        );
                        for (_, reply) in batch {
                            let _ = reply.send(Err(LeadError::NoQuorum));
                        }
                    }
                    Err(e) => {
                        for (_, reply) in batch {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
                drop(slot);
            });
        }
    }

    /// Commits `batch` (its proposals' `ids`, in order) and gives their answers: from
    /// the state machine as soon as it committed them (see [`answers`]), or openraft's
    /// when that comes first or the write fails.
    async fn answered(&self, batch: Batch, ids: &[Uuid]) -> Result<Vec<Applied>, LeadError> {
        let early = futures::future::join_all(ids.iter().map(|id| self.answers.expect(*id)));
        let write = self.write(batch);
        tokio::pin!(write);
        tokio::select! {
            r = &mut write => r,
            early = early => match early.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(answers) => Ok(answers),
                // A waiter was replaced (the same proposal written twice at once).
                Err(_) => write.await,
            },
        }
    }

    /// Runs `client_write` here. A leader that still hears from a quorum waits as long
    /// as the write takes (a loaded host is slow, not partitioned), up to
    /// [`SLOW_WRITE_LIMIT`]; one that lost its quorum gives up within
    /// [`QUORUM_LOST_AFTER`] plus a check interval.
    async fn write(&self, batch: Batch) -> Result<Vec<Applied>, LeadError> {
        let write = self.raft.client_write(batch);
        tokio::pin!(write);
        let limit = tokio::time::Instant::now() + SLOW_WRITE_LIMIT;
        loop {
            tokio::select! {
                r = &mut write => return r.map(|resp| resp.data).map_err(|e| LeadError::Raft(Box::new(e))),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if self.quorum_lost() || tokio::time::Instant::now() > limit {
                        return Err(LeadError::NoQuorum);
                    }
                }
            }
        }
    }

    /// Whether this node leads without hearing from a quorum lately (openraft 0.9 has
    /// no step-down: a cut-off leader stays leader). A lone voter never loses it.
    fn quorum_lost(&self) -> bool {
        quorum_lost(&self.raft, self.id)
    }
}

/// Whether node `id` leads without hearing from a quorum lately (see
/// [`Leading::quorum_lost`]).
fn quorum_lost(raft: &Raft, id: NodeId) -> bool {
    let m = raft.metrics().borrow().clone();
    let alone = m.membership_config.membership().voter_ids().all(|v| v == id);
    if alone || m.state != openraft::ServerState::Leader {
        return false;
    }
    m.millis_since_quorum_ack.is_none_or(|ms| ms > QUORUM_LOST_AFTER.as_millis() as u64)
}

impl Store {
    /// Opens (or creates) a single-node store at `path`.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions::default()).await
    }

    /// Like [`Store::open`], keeping the last `event_history` events for watch resumes.
    pub async fn open_with_history(path: &Path, event_history: u64) -> Result<Store, StoreError> {
        Store::open_with(path, StoreOptions { event_history, ..StoreOptions::default() }).await
    }

    /// Opens the store and starts this node's Raft. With `bootstrap`, a node that is
    /// not yet part of a cluster forms a one-member cluster of itself.
    pub async fn open_with(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let db = Arc::new(Database::create(path)?);
        state::init(&db)?;
        json::upgrade(&db)?;
        let id = {
            let txn = db.begin_write()?;
            let id = {
                let mut t = txn.open_table(LOCAL_META)?;
                let stored = t.get("node_id")?.map(|v| v.value());
                match stored {
                    Some(id) => id,
                    None => {
                        let id = node_id_for(&options.node.name);
                        t.insert("node_id", id)?;
                        id
                    }
                }
            };
            txn.commit()?;
            id
        };
        let (events, _) = broadcast::channel(EVENT_CHANNEL);
        let growth = Arc::new(raft::LogGrowth::default());
        let log = raft::LogStore::new(db.clone(), growth.clone());
        let tokens = Arc::new(tokens::TokenCache::default());
        let holdings = Arc::new(holdings::Holdings::default());
        holdings.load(&db)?;
        let answers = Arc::new(answers::Answers::default());
        let sm = raft::StateMachine::new(db.clone(), events.clone(), options.event_history, growth.clone())
            .with_token_cache(tokens.clone())
            .with_holdings(holdings.clone())
            .with_answers(answers.clone());
        if let Some(index) = raft::applied_index(&db)? {
            answers.applied_up_to(index);
        }
        let config = raft_config()?;
        let raft = match &options.network {
            Some(n) => n.start(id, config, log, sm).await,
            None => Raft::new(id, config, Lonely, log, sm).await,
        }
        .map_err(|e| StoreError::Raft(e.to_string()))?;
        let initialized = raft.is_initialized().await.map_err(|e| StoreError::Raft(e.to_string()))?;
        if !initialized && options.bootstrap {
            let members = BTreeMap::from([(id, options.node.clone())]);
            match raft.initialize(members).await {
                Ok(()) | Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {
                }
                Err(e) => return Err(StoreError::Raft(e.to_string())),
            }
            if restored(&db)? {
                fold_log_into_snapshot(&raft).await?;
            }
        }
        tokio::spawn(snapshot_when_the_log_grew(raft.clone(), growth));
        let (leading, rx) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(Leading { raft: raft.clone(), id, answers: answers.clone() }.run(rx));
        Ok(Store {
            db,
            raft,
            id,
            node: options.node,
            forward: options.forward,
            events,
            leading,
            tokens,
            holdings,
            app_reads: Arc::default(),
            answers,
        })
    }

    /// Stops this node's Raft and releases the database file.
    pub async fn close(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
    }

    /// This node's Raft instance (cluster routes, membership, metrics).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// This node's Raft id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// This node as membership records it.
    pub fn node(&self) -> &FishNode {
        &self.node
    }

    /// Applies one command on the cluster and answers once it is applied here.
    pub async fn execute(&self, command: Command) -> Result<Outcome, StoreError> {
        Ok(self.propose(Proposal::new(&command)?).await?.outcome)
    }

    /// Commits `proposal` through the leader (this node or, forwarded, another) within
    /// [`WRITE_TIMEOUT`]. Retries are safe: the proposal's id makes it idempotent.
    pub async fn propose(&self, proposal: Proposal) -> Result<Applied, StoreError> {
        let deadline = tokio::time::Instant::now() + WRITE_TIMEOUT;
        let no_quorum =
            || StoreError::Unavailable("no quorum: no leader accepted the write in time; retry later".into());
        // A follower that knows its leader sends the write there at once; asking its
        // own Raft first would only be told to, after waiting its turn behind the
        // appends Raft is busy with. Whatever goes wrong falls back to asking.
        let mut known = self.other_leader();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(no_quorum());
            }
            let leader = match known.take() {
                Some(leader) => Some(leader),
                None => match self.write_here(&proposal).await {
                    Ok(resp) => return Ok(resp),
                    Err(LeadError::NoQuorum) => return Err(no_quorum()),
                    Err(LeadError::Raft(e)) if e.forward_to_leader::<FishNode>().is_none() => {
                        return Err(StoreError::Raft(e.to_string()));
                    }
                    // Not the leader: the one it names, if it knows another.
                    Err(LeadError::Raft(e)) => self.named_leader(&e),
                },
            };
            if let (Some(leader), Some(fwd)) = (leader, &self.forward) {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, fwd.forward(&leader, &proposal)).await {
                    Err(_) => return Err(no_quorum()),
                    Ok(Ok(applied)) => {
                        self.wait_applied(applied.index, deadline).await?;
                        return Ok(applied);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(leader = %leader.name, error = %e, "forwarding a write failed; retrying")
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The leader a "not the leader" refusal names, when that is another member.
    fn named_leader(&self, e: &RaftWriteError) -> Option<FishNode> {
        let f = e.forward_to_leader::<FishNode>()?;
        match (&f.leader_id, &f.leader_node) {
            (Some(id), Some(node)) if *id != self.id => Some(node.clone()),
            _ => None,
        }
    }

    /// The leader as this node's Raft last saw it, when that is another member and
    /// this node follows (a candidate or a leader asks its own Raft).
    fn other_leader(&self) -> Option<FishNode> {
        self.forward.as_ref()?;
        let m = self.raft.metrics();
        let m = m.borrow();
        if !matches!(m.state, openraft::ServerState::Follower | openraft::ServerState::Learner) {
            return None;
        }
        let id = m.current_leader.filter(|id| *id != self.id)?;
        m.membership_config.membership().get_node(&id).cloned()
    }

    /// Commits `proposal` with this node as leader, in the next group-commit entry.
    async fn write_here(&self, proposal: &Proposal) -> Result<Applied, LeadError> {
        let (reply, answer) = oneshot::channel();
        self.leading.send((proposal.clone(), reply)).await.map_err(|_| LeadError::NoQuorum)?;
        answer.await.map_err(|_| LeadError::NoQuorum)?
    }

    /// Applies a write forwarded by a follower, on this node only (never forwarding it
    /// again): the answer, or why not (not the leader, no quorum).
    pub async fn write_as_leader(&self, proposal: &Proposal) -> Result<Applied, String> {
        // A command travels as its text (see `CommandText`) and is parsed only when
        // applied. One this node cannot read (a peer's bug, or a newer fishd's new
        // command) must be refused here: in the log it would fail the apply of every
        // node that reads it.
        if let Err(e) = proposal.command.decode() {
            return Err(format!("unreadable command: {e}"));
        }
        match self.write_here(proposal).await {
            Ok(applied) => Ok(applied),
            Err(LeadError::Raft(e)) => Err(e.to_string()),
            Err(LeadError::NoQuorum) => Err("no quorum: the write was not committed in time".into()),
        }
    }

    /// Waits until this node applied the entry at `index` (read-your-writes): told by
    /// the state machine as it commits (see [`answers`]), not by openraft's metrics,
    /// which its core task publishes only between log appends.
    pub async fn wait_applied(&self, index: u64, deadline: tokio::time::Instant) -> Result<(), StoreError> {
        let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(100));
        if self.answers.wait_applied(index, deadline).await {
            return Ok(());
        }
        Err(StoreError::Unavailable(format!(
            "no quorum: this node has not caught up with the leader: entry {index} not applied here in time"
        )))
    }

    /// Live events from now on; pair with [`Store::events_since`] to resume.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// How many live subscriptions are open (watches, waiting requests, loops).
    pub fn subscribers(&self) -> usize {
        self.events.receiver_count()
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    /// The current store revision.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        revision_in(&tx)
    }

    /// Every event after `revision`, oldest first.
    pub fn events_since(&self, revision: u64) -> Result<Result<(u64, Vec<Event>), Expired>, StoreError> {
        let tx = self.read()?;
        let current = revision_in(&tx)?;
        let cut = tx.open_table(LOCAL_META)?.get("events_cut")?.map(|v| v.value()).unwrap_or(0);
        if revision < cut && revision < current {
            return Ok(Err(Expired { requested: revision, oldest: cut + 1 }));
        }
        let table = tx.open_table(LOCAL_EVENTS)?;
        let mut out = Vec::new();
        for entry in table.range((revision + 1, 0)..)? {
            let (_, v) = entry?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(Ok((current, out)))
    }

    /// Labels (every version), optionally of one name, at the revision returned.
    pub fn list_labels(&self, name: Option<&str>) -> Result<(u64, Vec<Label>), StoreError> {
        let tx = self.read()?;
        let rev = revision_in(&tx)?;
        let table = tx.open_table(LABELS)?;
        let mut out = Vec::new();
        let range = match name {
            Some(n) => table.range((n, 0)..=(n, u32::MAX))?,
            None => table.range::<(&str, u32)>(..)?,
        };
        for entry in range {
            let (_, v) = entry?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok((rev, out))
    }

    /// One label version, or the latest.
    pub fn get_label(&self, name: &str, version: Option<u32>) -> Result<Option<Label>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(LABELS)?;
        state::read_label(&table, name, version)
    }

    /// Applications matching `filter`, in creation order, served from the indexes.
    pub fn list_applications(&self, filter: &AppFilter) -> Result<(u64, Vec<Application>), StoreError> {
        let tx = self.read()?;
        let rev = revision_in(&tx)?;
        let uids = matching_uids(&tx, filter)?;
        let apps = tx.open_table(APPS)?;
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            if let Some(v) = apps.get(uid)? {
                out.push(serde_json::from_slice(v.value())?);
            }
        }
        Ok((rev, out))
    }

    /// Uids of applications in `phase`, in creation order.
    pub fn uids_in_phase(&self, phase: Phase) -> Result<Vec<Uuid>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(APP_BY_PHASE)?;
        let p = phase_code(phase);
        let mut out = Vec::new();
        for e in t.range((p, 0u128)..=(p, u128::MAX))? {
            out.push(Uuid::from_u128(e?.0.value().1));
        }
        Ok(out)
    }

    /// What `node`'s election pass reads, all as of one state (see [`ElectionView`]).
    /// Costs O(NEW + held), not a scan of the active applications.
    pub fn election_view(&self, node: &str) -> Result<ElectionView, StoreError> {
        let (tx, held) = self.holdings.view(&self.db, node)?;
        let t = tx.open_table(APP_BY_PHASE)?;
        let p = phase_code(Phase::New);
        let mut new = Vec::new();
        for e in t.range((p, 0u128)..=(p, u128::MAX))? {
            new.push(Uuid::from_u128(e?.0.value().1));
        }
        let t = tx.open_table(ballots::BALLOTS)?;
        let ballots = new.iter().map(|&uid| ballots::read(&t, uid)).collect::<Result<_, _>>()?;
        Ok(ElectionView { new, ballots, held })
    }

    /// The applications `node` holds now (ELECTED, ALLOCATED or DEALLOCATE on it).
    pub fn held_by(&self, node: &str) -> Vec<Uuid> {
        self.holdings.held_by(node)
    }

    /// How many applications [`Store::get_application_by_uid`] has read so far.
    pub fn application_reads(&self) -> u64 {
        self.app_reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many applications are in `phase` (a counter, not a scan).
    pub fn count_in_phase(&self, phase: Phase) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(derived::LOCAL_PHASE_COUNTS)?;
        Ok(t.get(phase_code(phase))?.map(|v| v.value()).unwrap_or(0))
    }

    /// Up to `limit` finished (DEALLOCATED, ERROR) applications that finished at or
    /// before `cutoff`, those that finished first first: reads only them.
    pub fn finished_by(&self, cutoff: time::OffsetDateTime, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(derived::LOCAL_FINISHED)?;
        let mut out = Vec::new();
        for e in t.range((i64::MIN, 0u128)..=(derived::millis(cutoff), u128::MAX))?.take(limit) {
            out.push(Uuid::from_u128(e?.0.value().1));
        }
        Ok(out)
    }

    /// When the finished application that finished first did (the next purge is due
    /// `historyRetention` after it); `None` when none is finished.
    pub fn first_finished(&self) -> Result<Option<time::OffsetDateTime>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(derived::LOCAL_FINISHED)?;
        Ok(match t.first()? {
            Some((k, _)) => {
                let ms = i128::from(k.value().0);
                time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok()
            }
            None => None,
        })
    }

    /// One application by name or uid.
    pub fn get_application(&self, name_or_uid: &str) -> Result<Option<Application>, StoreError> {
        let tx = self.read()?;
        let uid = match name_or_uid.parse::<Uuid>() {
            Ok(u) => Some(u.as_u128()),
            Err(_) => tx.open_table(APP_NAMES)?.get(name_or_uid)?.map(|v| v.value()),
        };
        match uid {
            Some(uid) => state::read_app(&tx.open_table(APPS)?, uid),
            None => Ok(None),
        }
    }

    /// One application by uid.
    pub fn get_application_by_uid(&self, uid: Uuid) -> Result<Option<Application>, StoreError> {
        self.app_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tx = self.read()?;
        state::read_app(&tx.open_table(APPS)?, uid.as_u128())
    }

    /// The label version an application was created with (kept even if the label is deleted).
    pub fn application_label(&self, uid: Uuid) -> Result<Option<Label>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(APP_LABELS)?;
        Ok(match t.get(uid.as_u128())? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// A user by name, with its secrets' digests.
    pub fn get_user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let tx = self.read()?;
        state::read_user(&tx.open_table(USERS)?, name)
    }

    /// The user whose token has this hex SHA-256 digest. The lookup is by digest, so
    /// its timing says nothing about how close a guessed token is.
    pub fn user_by_token_digest(&self, digest: &str) -> Result<Option<UserRecord>, StoreError> {
        let tx = self.read()?;
        let name = match tx.open_table(TOKENS)?.get(digest)? {
            Some(n) => n.value().to_owned(),
            None => return Ok(None),
        };
        state::read_user(&tx.open_table(USERS)?, &name)
    }

    /// The user whose token has this hex SHA-256 digest, from memory when it was
    /// looked up before (see [`tokens`]: a change to any user is seen at once).
    pub fn token_user(&self, digest: &str) -> Result<Option<Arc<User>>, StoreError> {
        let generation = match self.tokens.get(digest) {
            Ok(user) => return Ok(Some(user)),
            Err(generation) => generation,
        };
        let Some(record) = self.user_by_token_digest(digest)? else { return Ok(None) };
        let user = Arc::new(record.user);
        self.tokens.fill(generation, digest, user.clone());
        Ok(Some(user))
    }

    /// Every user (without secrets).
    pub fn list_users(&self) -> Result<(u64, Vec<User>), StoreError> {
        let tx = self.read()?;
        let rev = revision_in(&tx)?;
        let mut out = Vec::new();
        for e in tx.open_table(USERS)?.range::<&str>(..)? {
            let rec: UserRecord = serde_json::from_slice(e?.1.value())?;
            out.push(rec.user);
        }
        Ok((rev, out))
    }

    /// Every node.
    pub fn list_nodes(&self) -> Result<(u64, Vec<Node>), StoreError> {
        let tx = self.read()?;
        let rev = revision_in(&tx)?;
        let mut out = Vec::new();
        for e in tx.open_table(NODES)?.range::<&str>(..)? {
            out.push(serde_json::from_slice(e?.1.value())?);
        }
        Ok((rev, out))
    }

    /// One node.
    pub fn get_node(&self, name: &str) -> Result<Option<Node>, StoreError> {
        let tx = self.read()?;
        Ok(match tx.open_table(NODES)?.get(name)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// The election ballots of `uids` (an empty one where none was opened yet).
    pub fn ballots(&self, uids: &[Uuid]) -> Result<Vec<ballots::Ballot>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(ballots::BALLOTS)?;
        uids.iter().map(|&uid| ballots::read(&t, uid)).collect()
    }

    /// NEW applications whose election round opened before `opened_before` and would
    /// elect a node if closed now (see [`ballots`]).
    pub fn overdue_rounds(
        &self,
        opened_before: time::OffsetDateTime,
        heard: Option<&[String]>,
    ) -> Result<Vec<Uuid>, StoreError> {
        let new = self.uids_in_phase(Phase::New)?;
        if new.is_empty() {
            return Ok(new);
        }
        ballots::overdue(&self.read()?, &new, opened_before, heard)
    }

    /// Whether this node leads the cluster now (a single node always does).
    pub fn is_leader(&self) -> bool {
        self.raft().metrics().borrow().state == openraft::ServerState::Leader
    }

    /// Whether this node leads and a quorum heard it within the last
    /// [`QUORUM_LOST_AFTER`]: a leader cut off from the others (openraft 0.9 leaders
    /// never step down) may no longer be the only one acting, and its view may be stale.
    pub fn leads_with_quorum(&self) -> bool {
        self.is_leader() && !quorum_lost(&self.raft, self.id)
    }

    /// Returns once [`Store::leads_with_quorum`] no longer holds (checked every 250 ms):
    /// leader-only work selects on it to stop at once when leadership is lost.
    pub async fn leadership_lost(&self) {
        while self.leads_with_quorum() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The join token with `digest`, if this cluster made it (see [`JoinTokenRecord`]).
    pub fn join_token(&self, digest: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        join_tokens::get(&self.read()?.open_table(JOIN_TOKENS)?, digest)
    }
}

/// Asks for a snapshot whenever the log grew past its bound (see [`raft::LogGrowth`]);
/// openraft then purges the log behind it. Ends when Raft stops.
async fn snapshot_when_the_log_grew(raft: Raft, growth: Arc<raft::LogGrowth>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if growth.snapshot_due() {
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            // Not again until this one is built (it resets the growth).
            let building = raft.metrics().borrow().snapshot;
            let _ = raft
                .wait(Some(Duration::from_secs(60)))
                .metrics(|m| m.snapshot != building || !growth.snapshot_due(), "snapshot built")
                .await;
        }
        if raft.metrics().borrow().running_state.is_err() {
            return;
        }
    }
}

/// Whether the store holds a restored backup (its state came from no log entry).
fn restored(db: &Database) -> Result<bool, StoreError> {
    let tx = db.begin_read()?;
    Ok(tx.open_table(META)?.get(REVISION_BASE)?.is_some_and(|v| v.value() > 0))
}

/// Snapshots a restored store and purges its log, so a node that joins later gets the
/// restored state as a snapshot instead of replaying a log that never held it.
async fn fold_log_into_snapshot(raft: &Raft) -> Result<(), StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Raft(format!("snapshot of the restored store: {e}"));
    let m = raft
        .wait(Some(WRITE_TIMEOUT))
        .metrics(|m| m.state == openraft::ServerState::Leader && m.last_applied.is_some(), "restored store leads")
        .await
        .map_err(|e| err(&e))?;
    let applied = m.last_applied;
    raft.trigger().snapshot().await.map_err(|e| err(&e))?;
    raft.wait(Some(WRITE_TIMEOUT))
        .metrics(|m| m.snapshot.is_some_and(|s| Some(s) >= applied), "snapshot of the restored store")
        .await
        .map_err(|e| err(&e))?;
    if let Some(last) = applied {
        raft.trigger().purge_log(last.index).await.map_err(|e| err(&e))?;
    }
    Ok(())
}

/// The uids of the applications matching every part of `filter`, in creation order:
/// the most selective index gives the candidates, the others are point lookups in
/// theirs (no object is read).
fn matching_uids(tx: &ReadTransaction, filter: &AppFilter) -> Result<Vec<u128>, StoreError> {
    let mut uids = Vec::new();
    if let Some(phase) = filter.phase {
        let t = tx.open_table(APP_BY_PHASE)?;
        let p = phase_code(phase);
        for e in t.range((p, 0u128)..=(p, u128::MAX))? {
            uids.push(e?.0.value().1);
        }
    } else if let Some(label) = &filter.label {
        let t = tx.open_table(APP_BY_LABEL)?;
        for e in t.range((label.as_str(), 0u128)..=(label.as_str(), u128::MAX))? {
            uids.push(e?.0.value().1);
        }
    } else if let Some(owner) = &filter.owner {
        let t = tx.open_table(APP_BY_OWNER)?;
        for e in t.range((owner.as_str(), 0u128)..=(owner.as_str(), u128::MAX))? {
            uids.push(e?.0.value().1);
        }
    } else {
        let t = tx.open_table(APPS)?;
        for e in t.range::<u128>(..)? {
            uids.push(e?.0.value());
        }
    }
    // The phase (if any) chose the candidates; label and owner may remain.
    if filter.phase.is_some()
        && let Some(label) = &filter.label
    {
        let t = tx.open_table(APP_BY_LABEL)?;
        uids = keep_indexed(uids, |uid| Ok(t.get((label.as_str(), uid))?.is_some()))?;
    }
    if (filter.phase.is_some() || filter.label.is_some())
        && let Some(owner) = &filter.owner
    {
        let t = tx.open_table(APP_BY_OWNER)?;
        uids = keep_indexed(uids, |uid| Ok(t.get((owner.as_str(), uid))?.is_some()))?;
    }
    uids.sort_unstable();
    Ok(uids)
}

fn keep_indexed(
    uids: Vec<u128>,
    mut indexed: impl FnMut(u128) -> Result<bool, StoreError>,
) -> Result<Vec<u128>, StoreError> {
    let mut kept = Vec::with_capacity(uids.len());
    for uid in uids {
        if indexed(uid)? {
            kept.push(uid);
        }
    }
    Ok(kept)
}

fn revision_in(tx: &ReadTransaction) -> Result<u64, StoreError> {
    Ok(tx.open_table(META)?.get("revision")?.map(|v| v.value()).unwrap_or(0))
}

/// The phase's key in the phase index.
pub(crate) fn phase_code(p: Phase) -> u8 {
    match p {
        Phase::New => 0,
        Phase::Elected => 1,
        Phase::Allocated => 2,
        Phase::Deallocate => 3,
        Phase::Deallocated => 4,
        Phase::Error => 5,
    }
}

#[cfg(test)]
mod ops_tests;
#[cfg(test)]
mod tests;
