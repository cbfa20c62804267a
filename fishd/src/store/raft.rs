//! The store as openraft sees it: a redb-backed Raft log ([`LogStore`]) and a state
//! machine ([`StateMachine`]) over the store's tables, in the node's one redb file.
//!
//! # Invariants
//! - `apply` writes the replicated tables, `last_applied` and the membership of a whole
//!   batch of entries in one durable transaction: a restart never re-applies an entry
//!   and never sees state without the index it belongs to.
//! - `apply` fails only on storage errors. Business refusals are values
//!   ([`Applied::outcome`]); a command id seen before is answered with the stored
//!   answer and changes nothing (a retried forwarded write is not applied twice).
//! - Nothing here reads a clock or a random source: commands carry those.
//! - The watch history (`local_events`) is node-local and outside snapshots; installing a
//!   snapshot drops it and marks everything up to the snapshot as expired.
#![allow(clippy::result_large_err)] // openraft's StorageError is large; its traits dictate it

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::command::{Command, Outcome, Response};
use super::tables::*;
use super::{Event, StoreError, dump, state};

/// A node's Raft id. Derived from its name (see [`node_id_for`]), so every member can
/// compute any other's id and names stay the user-facing identity.
pub type NodeId = u64;

/// What membership remembers of a node: where its API (and Raft routes) listen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FishNode {
    pub name: String,
    /// `host:port` of its HTTPS API, which also serves `/raft/*` and `/cluster/*`.
    pub api: String,
}

/// One log entry's payload: a command and the id that makes it idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub id: Uuid,
    /// Kept as JSON text even inside binary encodings: the API types it holds use
    /// serde attributes only self-describing formats support, and old log entries
    /// must stay readable by newer binaries.
    #[serde(with = "as_json")]
    pub command: Command,
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The log index the entry was applied at.
    pub index: u64,
    #[serde(with = "as_json")]
    pub outcome: Outcome,
}

mod as_json {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(v).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let s = String::deserialize(d)?;
        serde_json::from_str(&s).map_err(D::Error::custom)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of Aquarium.
    pub TypeConfig: D = Proposal, R = Applied, Node = FishNode
);

/// The Raft instance of this node.
pub type Raft = openraft::Raft<TypeConfig>;

/// The Raft id of the node called `name`: the first 8 bytes of its name's SHA-256.
pub fn node_id_for(name: &str) -> NodeId {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b).max(1)
}

/// How many log indices a command id (and its answer) is remembered for deduplication:
/// far longer than a forwarded write is retried (seconds), small enough that the
/// answers kept do not make the file grow with churn.
const DEDUP_WINDOW: u64 = 3_000;

fn serr(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> StorageError<NodeId> {
    StorageError::from_io_error(subject, verb, std::io::Error::other(e.to_string()))
}

fn log_err(verb: ErrorVerb) -> impl Fn(String) -> StorageError<NodeId> {
    move |e| serr(ErrorSubject::Logs, verb, e)
}

fn sm_err(verb: ErrorVerb) -> impl Fn(String) -> StorageError<NodeId> {
    move |e| serr(ErrorSubject::StateMachine, verb, e)
}

/// Runs a redb closure, flattening any redb/serde error into a message.
fn db<T>(f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, String> {
    f().map_err(|e| {
        let mut s = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    })
}

/// The Raft log, vote and purge marker, in the node's redb file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        LogStore { db }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        db(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(RAFT_META)?;
            Ok(match t.get(key)? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            })
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        db(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(RAFT_LOG)?;
            let mut out = Vec::new();
            for e in t.range::<u64>(range)? {
                out.push(serde_json::from_slice(e?.1.value())?);
            }
            Ok(out)
        })
        .map_err(log_err(ErrorVerb::Read))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.meta("last_purged").map_err(log_err(ErrorVerb::Read))?;
        let last = db(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(RAFT_LOG)?;
            Ok(match t.last()? {
                Some((_, v)) => Some(serde_json::from_slice::<Entry<TypeConfig>>(v.value())?.log_id),
                None => None,
            })
        })
        .map_err(log_err(ErrorVerb::Read))?;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last.or(last_purged) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        db(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(RAFT_META)?.insert("vote", serde_json::to_vec(vote)?.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .map_err(|e| serr(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.meta("vote").map_err(|e| serr(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let r = db(|| {
            let txn = self.db.begin_write()?;
            {
                let mut t = txn.open_table(RAFT_LOG)?;
                for e in entries {
                    t.insert(e.log_id.index, serde_json::to_vec(&e)?.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        });
        match r {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.clone())));
                Err(serr(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        db(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(RAFT_LOG)?.retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .map_err(log_err(ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        db(|| {
            let txn = self.db.begin_write()?;
            txn.open_table(RAFT_META)?.insert("last_purged", serde_json::to_vec(&log_id)?.as_slice())?;
            txn.open_table(RAFT_LOG)?.retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .map_err(log_err(ErrorVerb::Delete))
    }
}

/// `last_applied` and the membership it includes.
type AppliedState = (Option<LogId<NodeId>>, StoredMembership<NodeId, FishNode>);

/// The state machine: the store's replicated tables, fed by committed entries.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    events: broadcast::Sender<Arc<Event>>,
    /// Revisions of watch history kept (node-local).
    history: u64,
    snapshot_seq: Arc<AtomicU64>,
}

impl StateMachine {
    pub(super) fn new(db: Arc<Database>, events: broadcast::Sender<Arc<Event>>, history: u64) -> Self {
        StateMachine { db, events, history: history.max(1), snapshot_seq: Arc::new(AtomicU64::new(0)) }
    }

    fn applied(&self) -> Result<AppliedState, String> {
        db(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(RAFT_SM)?;
            let last = match t.get("last_applied")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => None,
            };
            let membership = match t.get("last_membership")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => StoredMembership::default(),
            };
            Ok((last, membership))
        })
    }

    fn apply_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<(Vec<Applied>, Vec<Event>), StoreError> {
        let txn = self.db.begin_write()?;
        let mut out = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        let mut last_index = 0;
        for entry in entries {
            let index = entry.log_id.index;
            last_index = index;
            last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Ok(Response::Done),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Ok(Response::Done)
                }
                EntryPayload::Normal(p) => {
                    let key = p.id.as_u128();
                    let seen = txn.open_table(DEDUP)?.get(key)?.map(|v| v.value().to_vec());
                    match seen {
                        Some(bytes) => {
                            let first: Applied = serde_json::from_slice(&bytes)?;
                            out.push(first);
                            continue;
                        }
                        None => {
                            let outcome = state::apply_command(&txn, index, p.command, &mut events)?;
                            let answer = Applied { index, outcome };
                            txn.open_table(DEDUP)?.insert(key, serde_json::to_vec(&answer)?.as_slice())?;
                            txn.open_table(DEDUP_BY_INDEX)?.insert(index, key)?;
                            out.push(answer);
                            continue;
                        }
                    }
                }
            };
            out.push(Applied { index, outcome });
        }
        // Forget command ids that fell out of the window (deterministic: by index).
        let cut = last_index.saturating_sub(DEDUP_WINDOW);
        if cut > 0 {
            let mut by_index = txn.open_table(DEDUP_BY_INDEX)?;
            let mut old = Vec::new();
            for e in by_index.range(..cut)? {
                old.push(e?.1.value());
            }
            if !old.is_empty() {
                by_index.retain_in(..cut, |_, _| false)?;
                let mut ids = txn.open_table(DEDUP)?;
                for id in old {
                    ids.remove(id)?;
                }
            }
        }
        {
            let mut sm = txn.open_table(RAFT_SM)?;
            sm.insert("last_applied", serde_json::to_vec(&last_applied)?.as_slice())?;
            if let Some(m) = &membership {
                sm.insert("last_membership", serde_json::to_vec(m)?.as_slice())?;
            }
        }
        if let Some(last) = events.last() {
            txn.open_table(META)?.insert("revision", last.revision)?;
            let mut t = txn.open_table(LOCAL_EVENTS)?;
            let mut n = 0u32;
            let mut prev = 0;
            for e in &events {
                n = if e.revision == prev { n + 1 } else { 0 };
                prev = e.revision;
                t.insert((e.revision, n), serde_json::to_vec(e)?.as_slice())?;
            }
            let cut = last.revision.saturating_sub(self.history);
            let mut local = txn.open_table(LOCAL_META)?;
            let old_cut = local.get("events_cut")?.map(|v| v.value()).unwrap_or(0);
            if cut > old_cut {
                t.retain_in(..=(cut, u32::MAX), |_, _| false)?;
                local.insert("events_cut", cut)?;
            }
        }
        txn.commit()?;
        Ok((out, events))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let tx = self.db.begin_read()?;
        let sm = tx.open_table(RAFT_SM)?;
        let last_log_id: Option<LogId<NodeId>> = match sm.get("last_applied")? {
            Some(v) => serde_json::from_slice(v.value())?,
            None => None,
        };
        let last_membership: StoredMembership<NodeId, FishNode> = match sm.get("last_membership")? {
            Some(v) => serde_json::from_slice(v.value())?,
            None => StoredMembership::default(),
        };
        let data = serde_json::to_vec(&dump::dump(&tx)?)?;
        drop(sm);
        drop(tx);
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_log_id {
            Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
            None => format!("--{seq}"),
        };
        let meta = SnapshotMeta { last_log_id, last_membership, snapshot_id };
        self.save_snapshot(&meta, &data)?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }

    fn save_snapshot(&self, meta: &SnapshotMeta<NodeId, FishNode>, data: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(RAFT_SNAPSHOT)?;
            t.insert("meta", serde_json::to_vec(meta)?.as_slice())?;
            t.insert("data", data)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn install(&self, meta: &SnapshotMeta<NodeId, FishNode>, data: &[u8]) -> Result<(), StoreError> {
        let d: dump::Dump = serde_json::from_slice(data)?;
        let txn = self.db.begin_write()?;
        dump::restore(&txn, &d)?;
        {
            let mut sm = txn.open_table(RAFT_SM)?;
            sm.insert("last_applied", serde_json::to_vec(&meta.last_log_id)?.as_slice())?;
            sm.insert("last_membership", serde_json::to_vec(&meta.last_membership)?.as_slice())?;
            let mut t = txn.open_table(RAFT_SNAPSHOT)?;
            t.insert("meta", serde_json::to_vec(meta)?.as_slice())?;
            t.insert("data", data)?;
            // The changes the snapshot folds in were never seen here as events.
            txn.open_table(LOCAL_EVENTS)?.retain(|_, _| false)?;
            let cut = meta.last_log_id.map(|l| l.index).unwrap_or(0);
            txn.open_table(LOCAL_META)?.insert("events_cut", cut)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RAFT_SNAPSHOT)?;
        let (Some(meta), Some(data)) = (t.get("meta")?, t.get("data")?) else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, FishNode> = serde_json::from_slice(meta.value())?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(data.value().to_vec())) }))
    }
}

fn flatten(e: StoreError) -> String {
    db::<()>(|| Err(e)).err().unwrap_or_default()
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        self.build().map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Write, flatten(e)))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, FishNode>), StorageError<NodeId>> {
        self.applied().map_err(sm_err(ErrorVerb::Read))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let (out, events) = self.apply_entries(entries).map_err(|e| {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store transaction failed");
            serr(ErrorSubject::StateMachine, ErrorVerb::Write, flatten(e))
        })?;
        for e in events {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(e));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, FishNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        self.install(meta, &data)
            .map_err(|e| serr(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, flatten(e)))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.current().map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Read, flatten(e)))
    }
}

/// Number of entries in the Raft log (for tests and metrics).
pub fn log_len(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_read()?;
    Ok(tx.open_table(RAFT_LOG)?.len()?)
}

#[cfg(test)]
mod conformance {
    //! openraft's storage conformance suite against the redb storage.
    #![allow(clippy::unwrap_used)]

    use super::*;

    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().map_err(|e| serr(ErrorSubject::Store, ErrorVerb::Write, e))?;
            let database = Arc::new(
                Database::create(dir.path().join("fish.redb"))
                    .map_err(|e| serr(ErrorSubject::Store, ErrorVerb::Write, e))?,
            );
            state::init(&database).map_err(|e| serr(ErrorSubject::Store, ErrorVerb::Write, flatten(e)))?;
            let (events, _) = broadcast::channel(16);
            Ok((dir, LogStore::new(database.clone()), StateMachine::new(database, events, 100)))
        }
    }

    /// Plain `#[test]`: the suite starts its own runtime.
    #[test]
    fn openraft_storage_suite_passes() {
        openraft::testing::Suite::test_all(Builder).unwrap();
    }
}
