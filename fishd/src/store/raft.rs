//! The store as openraft sees it: a redb-backed Raft log ([`LogStore`]) and a state
//! machine ([`StateMachine`]) over the store's tables, in the node's one redb file.
//!
//! # Invariants
//! - `apply` writes the replicated tables, `last_applied` and the membership of a whole
//!   batch of entries in one transaction, so state is never seen without the index it
//!   belongs to. That transaction is not fsynced on its own: the log already holds the
//!   entries durably, and the next durable commit in the file (the next `append`, vote,
//!   snapshot or purge) persists it too. After a crash `last_applied` is simply older,
//!   together with the state, and openraft applies the rest again from the log (apply
//!   is deterministic and deduplicated). One fsync per write, not two. The log is never
//!   purged past a durable `last_applied`: purging is itself a durable commit.
//! - `apply` fails only on storage errors. Business refusals are values
//!   ([`Applied::outcome`]); a command id seen before is answered with the stored
//!   answer and changes nothing (a retried forwarded write is not applied twice).
//! - Nothing here reads a clock or a random source: commands carry those.
//! - The in-memory [`super::holdings`] (which node holds which application) change with
//!   the commit that changes the applications, under one lock, and are rebuilt when a
//!   snapshot is installed.
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

use super::answers::Answers;
use super::command::{Command, Outcome};
use super::holdings::Holdings;
use super::tables::*;
use super::tokens::TokenCache;
use super::{Event, Kind, REVISION_BASE, StoreError, backup, dedup, state};

/// A node's Raft id. Derived from its name (see [`node_id_for`]), so every member can
/// compute any other's id and names stay the user-facing identity.
pub type NodeId = u64;

/// What membership remembers of a node: where its API (and Raft routes) listen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FishNode {
    pub name: String,
    /// `host:port` of its HTTPS API, which also serves `/raft/*` and `/cluster/*`.
    pub api: String,
}

/// A command and the id that makes it idempotent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    pub id: Uuid,
    pub command: CommandText,
}

impl Proposal {
    /// A proposal of `command` under a new id.
    pub fn new(command: &Command) -> Result<Proposal, StoreError> {
        Ok(Proposal { id: Uuid::now_v7(), command: CommandText::encode(command)? })
    }
}

/// A command as its JSON text, parsed only by the state machine that applies it.
///
/// JSON even inside binary encodings: the API types it holds use serde attributes only
/// self-describing formats support. Text in memory too, because an entry is encoded
/// and decoded many times on its way: the leader appends it, then reads it back from
/// the log once to apply it and once per follower it sends it to, each follower
/// decodes the request, appends it and reads it back to apply it. Parsing and printing
/// the command at each of those steps (seven parses and five prints per command in a
/// three-node cluster) was much of a node's work in a burst; now each node parses it
/// once, to apply it, and a retried (deduplicated) proposal not at all.
///
/// Encoded as a string holding the command's JSON, exactly as before this type
/// existed, so log entries, snapshots and peers of older and newer fishd read each
/// other. A command that does not parse fails the apply as a storage error, as an
/// unreadable log entry did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CommandText(String);

impl CommandText {
    /// The JSON text of `command`.
    pub fn encode(command: &Command) -> Result<CommandText, StoreError> {
        Ok(CommandText(serde_json::to_string(command)?))
    }

    /// The command this text holds.
    pub fn decode(&self) -> Result<Command, StoreError> {
        Ok(serde_json::from_str(&self.0)?)
    }
}

/// One log entry's payload: the proposals the leader had waiting when it wrote the
/// entry (a group commit: one log append and one fsync for all of them). Applied in
/// order; their changes share the entry's revision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposal>);

/// The state machine's answer to one proposal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// The log index of the entry it was applied in.
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
    pub TypeConfig: D = Batch, R = Vec<Applied>, Node = FishNode, SnapshotData = SnapshotData
);

/// A snapshot's bytes, made only when they are read.
///
/// A snapshot is the replicated tables as one redb read transaction sees them (MVCC:
/// writes go on, none is half in it): building one costs nothing but that transaction,
/// and the dump ([`backup::dump`], O(stored)) is made only if a follower needs it sent.
/// Building a full copy of the state every thousand log entries, and storing it in the
/// file, made each allocation cost more the more applications were stored, and start-up
/// read the whole copy into memory (openraft asks for the current snapshot at start).
///
/// The id of a snapshot names the entry it ends at (openraft's storage suite wants
/// one state's current snapshot to keep its id), so each dump of one state must be the
/// same bytes ([`backup::Purpose::Snapshot`]: no time in the header). Receiving, the
/// stream ends where its last write ended (`poll_shutdown` truncates there): openraft
/// restarts a stream of the same id at offset 0 over the old buffer, and a shorter
/// second stream must not keep the first one's tail.
pub struct SnapshotData(Lazy);

enum Lazy {
    /// Not dumped yet: what it is a snapshot of.
    Pending(Box<redb::ReadTransaction>),
    Ready(Cursor<Vec<u8>>),
}

impl Default for SnapshotData {
    fn default() -> Self {
        SnapshotData(Lazy::Ready(Cursor::new(Vec::new())))
    }
}

impl Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Lazy::Pending(_) => f.write_str("SnapshotData(not dumped yet)"),
            Lazy::Ready(c) => write!(f, "SnapshotData({} bytes)", c.get_ref().len()),
        }
    }
}

impl SnapshotData {
    fn of(tx: redb::ReadTransaction) -> Self {
        SnapshotData(Lazy::Pending(Box::new(tx)))
    }

    /// The bytes, dumped now if they were not yet.
    fn cursor(&mut self) -> std::io::Result<&mut Cursor<Vec<u8>>> {
        if let Lazy::Pending(tx) = &self.0 {
            let mut data = Vec::new();
            backup::dump_for(tx, &mut data, backup::Purpose::Snapshot)
                .map_err(|e| std::io::Error::other(format!("snapshot: {e}")))?;
            self.0 = Lazy::Ready(Cursor::new(data));
        }
        match &mut self.0 {
            Lazy::Ready(c) => Ok(c),
            Lazy::Pending(_) => Err(std::io::Error::other("snapshot not dumped")),
        }
    }

    /// All the bytes.
    pub fn into_bytes(mut self) -> std::io::Result<Vec<u8>> {
        self.cursor()?;
        match self.0 {
            Lazy::Ready(c) => Ok(c.into_inner()),
            Lazy::Pending(_) => Err(std::io::Error::other("snapshot not dumped")),
        }
    }
}

impl tokio::io::AsyncRead for SnapshotData {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().cursor() {
            Ok(c) => std::pin::Pin::new(c).poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for SnapshotData {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut().cursor() {
            Ok(c) => std::pin::Pin::new(c).poll_write(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// The end of a received stream: what lies after the last write is left from an
    /// earlier stream of the same id, and goes.
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Lazy::Ready(c) = &mut self.get_mut().0 {
            let end = c.position();
            c.get_mut().truncate(usize::try_from(end).unwrap_or(usize::MAX));
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncSeek for SnapshotData {
    fn start_seek(self: std::pin::Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        std::pin::Pin::new(self.get_mut().cursor()?).start_seek(position)
    }

    fn poll_complete(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<u64>> {
        match self.get_mut().cursor() {
            Ok(c) => std::pin::Pin::new(c).poll_complete(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

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

/// How many of the latest command ids (and their answers) are remembered for
/// deduplication: more than the writes of the seconds a forwarded write is retried
/// for, few enough that the answers kept do not make the file grow with churn. A count
/// of proposals, not of log indices: one entry may hold hundreds of them.
const DEDUP_KEEP: u64 = 1_000;
/// How far past [`DEDUP_KEEP`] the table may grow before the oldest are forgotten, all
/// at once: forgetting a few on every apply dirtied the tables' oldest pages in every
/// transaction, pages the next durable log commit then had to write.
const DEDUP_SLACK: u64 = 256;

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
    f().map_err(|e| crate::errors::error_chain(&e))
}

/// The first byte of a log entry stored as postcard (the rest of its bytes).
///
/// Each entry is read back many times (by the leader once to apply it and once per
/// follower it sends it to), and as JSON each read parsed the entry and unescaped every
/// command's text again, each append escaped it. Postcard copies the command text as it
/// is. Entries an older fishd wrote are their JSON, which starts with `{`, and still
/// read (a log is read back until a snapshot folds it in, so both kinds meet in one
/// log after an upgrade). An older fishd cannot read a log this one wrote.
const LOG_POSTCARD: u8 = 0x01;

/// A log entry as it is stored (see [`LOG_POSTCARD`]).
fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_extend(entry, vec![LOG_POSTCARD])?)
}

/// A stored log entry, of this fishd (postcard) or of an older one (JSON).
fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    match bytes.split_first() {
        Some((&LOG_POSTCARD, rest)) => Ok(postcard::from_bytes(rest)?),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// Log bytes written since the last snapshot, which decide when the next one is due:
/// openraft's policy counts entries, but one entry of a group commit may hold hundreds
/// of commands, so a count alone lets the log (and the file) grow with load.
#[derive(Debug, Default)]
pub struct LogGrowth {
    appended: AtomicU64,
}

/// The log may grow to this many bytes before a snapshot folds it in (a snapshot costs
/// one read transaction, see [`SnapshotData`], so this bounds the log, not the work).
const LOG_BYTES_BEFORE_SNAPSHOT: u64 = 1024 * 1024;

impl LogGrowth {
    /// Whether the log grew enough since the last snapshot to take another.
    pub fn snapshot_due(&self) -> bool {
        self.appended.load(Ordering::Relaxed) > LOG_BYTES_BEFORE_SNAPSHOT
    }

    fn snapshot_taken(&self) {
        self.appended.store(0, Ordering::Relaxed);
    }
}

/// The Raft log, vote and purge marker, in the node's redb file.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    growth: Arc<LogGrowth>,
}

impl LogStore {
    pub fn new(db: Arc<Database>, growth: Arc<LogGrowth>) -> Self {
        LogStore { db, growth }
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
                out.push(decode_entry(e?.1.value())?);
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
                Some((_, v)) => Some(decode_entry(v.value())?.log_id),
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
            let mut bytes = 0;
            {
                let mut t = txn.open_table(RAFT_LOG)?;
                for e in entries {
                    let v = encode_entry(&e)?;
                    bytes += v.len() as u64;
                    t.insert(e.log_id.index, v.as_slice())?;
                }
            }
            txn.commit()?;
            self.growth.appended.fetch_add(bytes, Ordering::Relaxed);
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

/// What one apply transaction did, once committed.
struct ApplyResult {
    /// Per entry, the answer of each of its proposals (openraft's response).
    answers: Vec<Vec<Applied>>,
    /// The proposals' ids, in the order of `answers` flattened.
    ids: Vec<Uuid>,
    /// The index of the last entry applied.
    last_applied: Option<u64>,
    events: Vec<Event>,
}

/// The state machine: the store's replicated tables, fed by committed entries.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    events: broadcast::Sender<Arc<Event>>,
    /// Events of watch history kept (node-local), whole revisions at a time.
    history: u64,
    growth: Arc<LogGrowth>,
    /// Emptied whenever an applied entry or an installed snapshot changed users.
    tokens: Arc<TokenCache>,
    /// Changed with every commit that changes applications' holders.
    holdings: Arc<Holdings>,
    /// Told each commit's answers and applied index (see [`super::answers`]).
    answers: Arc<Answers>,
}

impl StateMachine {
    pub(super) fn new(
        db: Arc<Database>,
        events: broadcast::Sender<Arc<Event>>,
        history: u64,
        growth: Arc<LogGrowth>,
    ) -> Self {
        StateMachine {
            db,
            events,
            history: history.max(1),
            growth,
            tokens: Arc::default(),
            holdings: Arc::default(),
            answers: Arc::default(),
        }
    }

    /// This state machine telling `answers` (the store's) what each commit applied.
    pub(super) fn with_answers(mut self, answers: Arc<Answers>) -> Self {
        self.answers = answers;
        self
    }

    /// This state machine keeping `holdings` (the store's) in step with its commits.
    pub(super) fn with_holdings(mut self, holdings: Arc<Holdings>) -> Self {
        self.holdings = holdings;
        self
    }

    /// This state machine invalidating `tokens` (the store's cache) on user changes.
    pub(super) fn with_token_cache(mut self, tokens: Arc<TokenCache>) -> Self {
        self.tokens = tokens;
        self
    }

    fn applied(&self) -> Result<AppliedState, String> {
        db(|| {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(RAFT_SM)?;
            let last = last_applied(&t)?;
            let membership = match t.get("last_membership")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => StoredMembership::default(),
            };
            Ok((last, membership))
        })
    }

    fn apply_entries(&self, entries: Vec<Entry<TypeConfig>>) -> Result<ApplyResult, StoreError> {
        let mut txn = self.db.begin_write()?;
        // Durable through the log (see the module's invariants).
        txn.set_durability(redb::Durability::None).map_err(|e| StoreError::Raft(e.to_string()))?;
        let mut out = Vec::with_capacity(entries.len());
        let mut ids = Vec::new();
        let mut events = Vec::new();
        let mut held = Vec::new();
        let mut last_applied = None;
        let mut membership = None;
        // A restored store's log restarts at 1; its revisions go on after the backup's.
        let base = txn.open_table(META)?.get(REVISION_BASE)?.map(|v| v.value()).unwrap_or(0);
        // Open once for the whole batch (no command touches them): opening and closing
        // a table for each proposal was a good part of an apply's redb work.
        let mut seen_ids = txn.open_table(DEDUP)?;
        let mut by_index = txn.open_table(DEDUP_BY_INDEX)?;
        for entry in entries {
            let index = entry.log_id.index;
            last_applied = Some(entry.log_id);
            let batch = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    Vec::new()
                }
                EntryPayload::Normal(Batch(b)) => b,
            };
            let mut answers = Vec::with_capacity(batch.len());
            for p in batch {
                let key = p.id.as_u128();
                ids.push(p.id);
                let seen = seen_ids.get(key)?.map(|v| v.value().to_vec());
                let answer = match seen {
                    Some(bytes) => dedup::recall(&txn, &bytes)?,
                    None => {
                        let command = p.command.decode()?;
                        let outcome = state::apply_command(&txn, index + base, command, &mut events, &mut held)?;
                        let answer = Applied { index, outcome };
                        seen_ids.insert(key, dedup::remember(&answer)?.as_slice())?;
                        by_index.insert((index, key), ())?;
                        answer
                    }
                };
                answers.push(answer);
            }
            out.push(answers);
        }
        // Forget the oldest command ids beyond the window (deterministic: the same
        // entries leave the same tables on every node).
        {
            let excess = by_index.len()?.saturating_sub(DEDUP_KEEP);
            if excess >= DEDUP_SLACK {
                let mut old = Vec::new();
                for e in by_index.iter()?.take(excess as usize) {
                    old.push(e?.0.value());
                }
                for (index, id) in old {
                    by_index.remove((index, id))?;
                    seen_ids.remove(id)?;
                }
            }
        }
        drop((seen_ids, by_index));
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
                t.insert((e.revision, n), e.history_bytes()?.as_slice())?;
            }
            // Keep the latest `history` events, dropping whole revisions only (a watch
            // resumes after a revision, so it must have all of a revision or none).
            // They are dropped once an eighth more has gathered, not a few on every
            // apply (see `DEDUP_SLACK`): a watch may resume from a little further back.
            let excess = t.len()?.saturating_sub(self.history);
            if excess > self.history / 8 {
                let mut cut = 0;
                if let Some(e) = t.iter()?.nth(excess as usize - 1) {
                    cut = e?.0.value().0;
                }
                t.retain_in(..=(cut, u32::MAX), |_, _| false)?;
                txn.open_table(LOCAL_META)?.insert("events_cut", cut)?;
            }
        }
        self.holdings.commit(held, || Ok(txn.commit()?))?;
        Ok(ApplyResult { answers: out, ids, last_applied: last_applied.map(|l| l.index), events })
    }

    /// A snapshot of the state as it is now (see [`SnapshotData`]): its meta and the
    /// read transaction its bytes come from, both from one view. `None` before
    /// anything was applied. Its id names the entry it ends at, so the same state
    /// always has the same id.
    fn snapshot_now(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let tx = self.db.begin_read()?;
        let (last_log_id, last_membership) = {
            let sm = tx.open_table(RAFT_SM)?;
            let last_log_id: Option<LogId<NodeId>> = match sm.get("last_applied")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => None,
            };
            let last_membership: StoredMembership<NodeId, FishNode> = match sm.get("last_membership")? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => StoredMembership::default(),
            };
            (last_log_id, last_membership)
        };
        let Some(last) = last_log_id else { return Ok(None) };
        let snapshot_id = format!("{}-{}", last.leader_id, last.index);
        let meta = SnapshotMeta { last_log_id: Some(last), last_membership, snapshot_id };
        Ok(Some(Snapshot { meta, snapshot: Box::new(SnapshotData::of(tx)) }))
    }

    fn build(&self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let snapshot = match self.snapshot_now()? {
            Some(s) => s,
            // Nothing applied yet: an empty state.
            None => {
                let meta = SnapshotMeta {
                    last_log_id: None,
                    last_membership: StoredMembership::default(),
                    snapshot_id: "-".into(),
                };
                Snapshot { meta, snapshot: Box::new(SnapshotData::of(self.db.begin_read()?)) }
            }
        };
        // What a snapshot of an older fishd left in the file.
        let old = self.db.begin_read()?.open_table(RAFT_SNAPSHOT)?.len()?;
        if old > 0 {
            let txn = self.db.begin_write()?;
            txn.open_table(RAFT_SNAPSHOT)?.retain(|_, _| false)?;
            txn.commit()?;
        }
        // The log may now be purged behind it: start counting its growth again.
        self.growth.snapshot_taken();
        Ok(snapshot)
    }

    fn install(&self, meta: &SnapshotMeta<NodeId, FishNode>, data: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        backup::load(&txn, data).map_err(snapshot_err)?;
        {
            let mut sm = txn.open_table(RAFT_SM)?;
            sm.insert("last_applied", serde_json::to_vec(&meta.last_log_id)?.as_slice())?;
            sm.insert("last_membership", serde_json::to_vec(&meta.last_membership)?.as_slice())?;
            // The state now is the snapshot (see [`SnapshotData`]); nothing is kept apart.
            txn.open_table(RAFT_SNAPSHOT)?.retain(|_, _| false)?;
            // The changes the snapshot folds in were never seen here as events.
            txn.open_table(LOCAL_EVENTS)?.retain(|_, _| false)?;
            let base = txn.open_table(META)?.get(REVISION_BASE)?.map(|v| v.value()).unwrap_or(0);
            let cut = meta.last_log_id.map(|l| l.index + base).unwrap_or(0);
            txn.open_table(LOCAL_META)?.insert("events_cut", cut)?;
        }
        self.holdings.commit_and_reload(&self.db, || Ok(txn.commit()?))?;
        // Any user may have changed.
        self.tokens.invalidate();
        if let Some(last) = meta.last_log_id {
            self.answers.applied_up_to(last.index);
        }
        self.growth.snapshot_taken();
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            bytes = data.len(),
            "installed a snapshot of the replicated state"
        );
        Ok(())
    }

    /// The snapshot openraft sends a follower that is behind the log: the state as
    /// it is now (always at or after the last snapshot built, whose log is purged).
    fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        self.snapshot_now()
    }
}

/// A snapshot that cannot be written or read back, as a store error.
fn snapshot_err(e: backup::BackupError) -> StoreError {
    match e {
        backup::BackupError::Store(e) => e,
        other => StoreError::Raft(format!("snapshot: {other}")),
    }
}

fn flatten(e: StoreError) -> String {
    crate::errors::error_chain(&e)
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

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let ApplyResult { answers: out, ids, last_applied, events } = self.apply_entries(entries).map_err(|e| {
            tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store transaction failed");
            serr(ErrorSubject::StateMachine, ErrorVerb::Write, flatten(e))
        })?;
        // Committed: a rotated or deleted token must fail from now on, before the
        // write is answered (see `tokens`).
        if events.iter().any(|e| e.kind == Kind::User) {
            self.tokens.invalidate();
        }
        for e in events {
            // No receivers is fine: nobody is watching.
            let _ = self.events.send(Arc::new(e));
        }
        if let Some(index) = last_applied {
            self.answers.applied(index, ids.into_iter().zip(out.iter().flatten()));
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, FishNode>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError<NodeId>> {
        let sig = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_bytes().map_err(|e| serr(sig(), ErrorVerb::Read, e))?;
        self.install(meta, &data).map_err(|e| serr(sig(), ErrorVerb::Write, flatten(e)))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.current().map_err(|e| serr(ErrorSubject::Snapshot(None), ErrorVerb::Read, flatten(e)))
    }
}

/// The index of the last entry the stored state reflects (`None`: nothing applied).
pub fn applied_index(db: &Database) -> Result<Option<u64>, StoreError> {
    let tx = db.begin_read()?;
    Ok(last_applied(&tx.open_table(RAFT_SM)?)?.map(|l| l.index))
}

fn last_applied<T: ReadableTable<&'static str, &'static [u8]>>(t: &T) -> Result<Option<LogId<NodeId>>, StoreError> {
    Ok(match t.get("last_applied")? {
        Some(v) => serde_json::from_slice(v.value())?,
        None => None,
    })
}

/// Number of entries in the Raft log (for tests and metrics).
pub fn log_len(db: &Database) -> Result<u64, StoreError> {
    let tx = db.begin_read()?;
    Ok(tx.open_table(RAFT_LOG)?.len()?)
}

#[cfg(test)]
mod log_format {
    //! Log entries of an older fishd (JSON, the command as a JSON string) and of this
    //! one (postcard) in one log, as after an upgrade.
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use openraft::Membership;

    use super::*;

    /// `Proposal` as fishd defined it before [`CommandText`].
    #[derive(Serialize)]
    struct OldProposal {
        id: Uuid,
        #[serde(with = "as_json")]
        command: Command,
    }

    fn delete_user(name: &str) -> Command {
        Command::DeleteUser { name: name.into() }
    }

    fn normal(index: u64, names: &[&str]) -> Entry<TypeConfig> {
        let proposals = names.iter().map(|n| Proposal::new(&delete_user(n)).unwrap()).collect();
        Entry { log_id: openraft::testing::log_id(2, 7, index), payload: EntryPayload::Normal(Batch(proposals)) }
    }

    fn membership(index: u64) -> Entry<TypeConfig> {
        let node = |n: &str| FishNode { name: n.into(), api: format!("{n}:8001") };
        let m = Membership::new(vec![BTreeSet::from([7, 8])], BTreeMap::from([(7, node("a")), (8, node("b"))]));
        Entry { log_id: openraft::testing::log_id(2, 7, index), payload: EntryPayload::Membership(m) }
    }

    /// What openraft and `apply` see of an entry: its id and, for a batch, each
    /// proposal's id and command.
    fn seen(e: &Entry<TypeConfig>) -> String {
        match &e.payload {
            EntryPayload::Normal(Batch(ps)) => {
                let ps: Vec<_> = ps.iter().map(|p| format!("{} {:?}", p.id, p.command.decode().unwrap())).collect();
                format!("{} {ps:?}", e.log_id)
            }
            other => format!("{} {other:?}", e.log_id),
        }
    }

    /// A proposal is encoded as before `CommandText`, in JSON (log entries of older
    /// fishd, and their answers) and in postcard (requests between peers of both).
    #[test]
    fn a_proposal_is_encoded_as_before() {
        let new = Proposal::new(&delete_user("u")).unwrap();
        let old = OldProposal { id: new.id, command: delete_user("u") };
        assert_eq!(serde_json::to_string(&new).unwrap(), serde_json::to_string(&old).unwrap());
        assert_eq!(postcard::to_allocvec(&new).unwrap(), postcard::to_allocvec(&old).unwrap());
    }

    /// A log an older fishd wrote in JSON, appended to by this one, reads whole and in order.
    #[tokio::test]
    async fn old_json_entries_and_new_postcard_entries_read_in_one_log() {
        let dir = tempfile::tempdir().unwrap();
        let database = Arc::new(Database::create(dir.path().join("fish.redb")).unwrap());
        state::init(&database).unwrap();
        let entries = [normal(1, &["a", "b"]), membership(2), normal(3, &["c"]), membership(4), normal(5, &["d"])];
        let txn = database.begin_write().unwrap();
        {
            let mut t = txn.open_table(RAFT_LOG).unwrap();
            for e in &entries[..2] {
                // Written as an older fishd did: `serde_json::to_vec` of the entry.
                let json = serde_json::to_vec(e).unwrap();
                assert_eq!(json[0], b'{');
                t.insert(e.log_id.index, json.as_slice()).unwrap();
            }
            for e in &entries[2..] {
                t.insert(e.log_id.index, encode_entry(e).unwrap().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
        let mut log = LogStore::new(database, Arc::default());
        let read = log.try_get_log_entries(1..=5).await.unwrap();
        assert_eq!(read.iter().map(seen).collect::<Vec<_>>(), entries.iter().map(seen).collect::<Vec<_>>());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(entries[4].log_id));
    }
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
            let growth = Arc::new(LogGrowth::default());
            Ok((dir, LogStore::new(database.clone(), growth.clone()), StateMachine::new(database, events, 100, growth)))
        }
    }

    /// Plain `#[test]`: the suite starts its own runtime.
    #[test]
    fn openraft_storage_suite_passes() {
        openraft::testing::Suite::test_all(Builder).unwrap();
    }
}

#[cfg(test)]
mod snapshot_stream {
    //! A snapshot sent to a follower in chunks, through openraft's own receiving path
    //! (`Raft::install_snapshot`, which is `Chunked::receive_snapshot`).
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use openraft::raft::InstallSnapshotRequest;

    use super::*;
    use crate::store::{Store, StoreOptions};

    const CHUNK: usize = 97;

    /// A leader holding a label and an application, and a follower that has nothing.
    async fn leader_and_follower() -> (tempfile::TempDir, Store, Store) {
        let dir = tempfile::tempdir().unwrap();
        let leader = Store::open(&dir.path().join("leader.redb")).await.unwrap();
        let yaml = "kind: Label\nmetadata: {name: l}\nspec: {definitions: [{driver: test, resources: {cpu: 1, ram: 1}}]}\n\
                    ---\nkind: Application\nmetadata: {name: a}\nspec: {label: l}\n";
        let items = crate::store::tests::items(yaml);
        let now = time::OffsetDateTime::now_utc();
        leader.execute(Command::Apply { items, owner: "admin".into(), now }).await.unwrap().unwrap();
        let options = StoreOptions {
            node: FishNode { name: "follower".into(), api: String::new() },
            bootstrap: false,
            ..StoreOptions::default()
        };
        let follower = Store::open_with(&dir.path().join("follower.redb"), options).await.unwrap();
        (dir, leader, follower)
    }

    /// The leader's current snapshot, as `get_current_snapshot` gives it.
    fn current(leader: &Store) -> (SnapshotMeta<NodeId, FishNode>, Vec<u8>) {
        let (events, _) = broadcast::channel(16);
        let sm = StateMachine::new(leader.db.clone(), events, 100, Arc::default());
        let s = sm.current().unwrap().unwrap();
        (s.meta, s.snapshot.into_bytes().unwrap())
    }

    /// Sends `bytes` as the snapshot `meta` from offset 0, the chunks up to `upto` bytes
    /// only (a transfer that failed there) or all of them, the last one `done`.
    async fn send(
        leader: &Store,
        to: &Store,
        meta: &SnapshotMeta<NodeId, FishNode>,
        bytes: &[u8],
        upto: Option<usize>,
    ) {
        let vote = leader.raft().metrics().borrow().vote;
        let end = upto.unwrap_or(bytes.len());
        let mut offset = 0;
        while offset < end {
            let next = (offset + CHUNK).min(end);
            let req = InstallSnapshotRequest {
                vote,
                meta: meta.clone(),
                offset: offset as u64,
                data: bytes[offset..next].to_vec(),
                done: upto.is_none() && next == end,
            };
            to.raft().install_snapshot(req).await.unwrap();
            offset = next;
        }
    }

    async fn installed(follower: &Store, meta: &SnapshotMeta<NodeId, FishNode>) {
        let index = meta.last_log_id.map(|l| l.index);
        follower.raft().wait(Some(Duration::from_secs(10))).applied_index(index, "snapshot installed").await.unwrap();
        assert_eq!(follower.get_application("a").unwrap().unwrap().metadata.name_str(), "a");
        assert_eq!(follower.get_label("l", None).unwrap().unwrap().metadata.version, Some(1));
    }

    /// A quiet cluster: replication gets the current snapshot again after a transfer
    /// failed partway, with the same id (it names the same entry).
    #[tokio::test]
    async fn a_snapshot_stream_restarted_with_the_same_id_installs() {
        within(async {
            let (_d, leader, follower) = leader_and_follower().await;
            let (meta, first) = current(&leader);
            let (meta2, second) = current(&leader);
            assert_eq!(meta2, meta);
            assert!(first == second, "two dumps of one state differ; a restarted stream of that id would mix them");
            send(&leader, &follower, &meta, &first, Some(first.len() * 2 / 3)).await;
            send(&leader, &follower, &meta2, &second, None).await;
            installed(&follower, &meta).await;
            leader.close().await;
            follower.close().await;
        })
        .await;
    }

    /// Whatever the first stream left after the end of the second goes: a restarted
    /// stream that is shorter installs.
    #[tokio::test]
    async fn a_shorter_restarted_snapshot_stream_leaves_no_tail() {
        within(async {
            let (_d, leader, follower) = leader_and_follower().await;
            let (meta, bytes) = current(&leader);
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"{\"left\":\"from an earlier stream\"}\n".repeat(8).as_slice());
            send(&leader, &follower, &meta, &longer, Some(longer.len())).await;
            send(&leader, &follower, &meta, &bytes, None).await;
            installed(&follower, &meta).await;
            leader.close().await;
            follower.close().await;
        })
        .await;
    }

    /// What a snapshot brings is held: the follower's holdings are those of the state
    /// it installed (no entry applied there changed them).
    #[tokio::test]
    async fn an_installed_snapshot_brings_its_holdings() {
        within(async {
            let (_d, leader, follower) = leader_and_follower().await;
            let app = leader.get_application("a").unwrap().unwrap();
            let uid = app.metadata.uid.unwrap();
            let mut status = app.status.clone();
            status.phase = api_types::Phase::Elected;
            status.node = Some("node-x".into());
            let expect = api_types::Phase::New;
            let elect = Command::SetApplicationStatus { uid, expect, status: Box::new(status), expect_node: None };
            leader.execute(elect).await.unwrap().unwrap();
            assert!(follower.election_view("node-x").unwrap().held.is_empty());
            let (meta, bytes) = current(&leader);
            send(&leader, &follower, &meta, &bytes, None).await;
            let index = meta.last_log_id.map(|l| l.index);
            follower
                .raft()
                .wait(Some(Duration::from_secs(10)))
                .applied_index(index, "snapshot installed")
                .await
                .unwrap();
            assert_eq!(follower.election_view("node-x").unwrap().held, vec![uid]);
            leader.close().await;
            follower.close().await;
        })
        .await;
    }

    async fn within(test: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(Duration::from_secs(60), test).await.expect("the test took over 60 s");
    }
}
