//! The store: one redb file, changed only by [`Command`]s applied by the state machine.
//!
//! # Guarantees
//! - A command is acknowledged only after its transaction committed durably.
//! - Every object change gets the next store revision, which becomes its
//!   `metadata.resourceVersion`, and an [`Event`] kept for [`EVENT_HISTORY`] revisions
//!   so a watch can resume from a recent revision.
//! - Commands are applied by one writer thread, which takes every command waiting when
//!   it starts a transaction (group commit): concurrent writers share one fsync.
//! - Live events are published after the commit, in revision order.

mod applyset;
pub mod backup;
mod command;
mod dry_run;
pub mod gates;
mod join_tokens;
mod state;
mod tables;

use std::path::Path;
use std::sync::Arc;

use api_types::{Application, Label, Node, Phase, User, WatchEventType};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

pub use applyset::check_set_name;
pub use backup::Summary;
pub use command::{ApplyItem, Command, Outcome, Rejection, Response, UserRecord};
use tables::*;

/// Default number of recent events kept for watches to resume from (the value and
/// its reason are in [`crate::defaults::EVENT_HISTORY`]).
pub const EVENT_HISTORY: u64 = crate::defaults::EVENT_HISTORY;
/// Most commands applied in one transaction.
const MAX_BATCH: usize = 512;
/// Live events buffered per watcher before it is declared too slow (410).
const EVENT_CHANNEL: usize = 4096;
/// Commands waiting for the writer before callers wait for room.
const COMMAND_QUEUE: usize = 4096;

/// A storage failure. Business outcomes are [`Rejection`]s, not errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Db(#[from] redb::Error),
    #[error("stored object is corrupt")]
    Corrupt(#[from] serde_json::Error),
    #[error("the store is shut down")]
    Closed,
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

/// Which kind of object an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Label,
    Application,
    Node,
    User,
}

/// One object change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub revision: u64,
    pub kind: Kind,
    pub event_type: WatchEventType,
    /// The object after the change; for DELETED, the object as it was, with the
    /// deletion's revision as its `resourceVersion`.
    pub object: serde_json::Value,
    /// For applications: the owner, so watches can filter without parsing.
    pub owner: Option<String>,
}

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

struct WriteRequest {
    command: Command,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: mpsc::Sender<WriteRequest>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Store {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_history(path, EVENT_HISTORY)
    }

    /// Like [`Store::open`], keeping the last `event_history` events for watch resumes.
    pub fn open_with_history(path: &Path, event_history: u64) -> Result<Store, StoreError> {
        let db = Arc::new(Database::create(path)?);
        state::init(&db)?;
        let (events, _) = broadcast::channel(EVENT_CHANNEL);
        let (writer, rx) = mpsc::channel(COMMAND_QUEUE);
        let thread_db = db.clone();
        let thread_events = events.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(&thread_db, rx, &thread_events, event_history.max(1)))
            .map_err(|e| StoreError::Db(redb::Error::Io(e)))?;
        Ok(Store { db, writer, events })
    }

    /// Applies one command durably.
    pub async fn execute(&self, command: Command) -> Result<Outcome, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriteRequest { command, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        let table = tx.open_table(EVENTS)?;
        let oldest = table.first()?.map(|(k, _)| k.value()).unwrap_or(current + 1);
        if revision < current && revision + 1 < oldest {
            return Ok(Err(Expired { requested: revision, oldest }));
        }
        let mut out = Vec::new();
        for entry in table.range(revision + 1..)? {
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

    /// Applications matching `filter`, in creation order, served from an index.
    pub fn list_applications(&self, filter: &AppFilter) -> Result<(u64, Vec<Application>), StoreError> {
        let tx = self.read()?;
        let rev = revision_in(&tx)?;
        let uids = self.filtered_uids(&tx, filter)?;
        let apps = tx.open_table(APPS)?;
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            if let Some(v) = apps.get(uid)? {
                let app: Application = serde_json::from_slice(v.value())?;
                let keep = filter.phase.is_none_or(|p| app.status.phase == p)
                    && filter.label.as_deref().is_none_or(|l| app.spec.label.name.as_str() == l)
                    && filter.owner.as_deref().is_none_or(|o| app.metadata.owner.as_deref() == Some(o));
                if keep {
                    out.push(app);
                }
            }
        }
        Ok((rev, out))
    }

    /// The uids the most selective index gives for `filter` (the other filters are
    /// applied on the objects).
    fn filtered_uids(&self, tx: &ReadTransaction, filter: &AppFilter) -> Result<Vec<u128>, StoreError> {
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
        uids.sort_unstable();
        Ok(uids)
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

fn writer_loop(
    db: &Database,
    mut rx: mpsc::Receiver<WriteRequest>,
    events: &broadcast::Sender<Arc<Event>>,
    history: u64,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let commands: Vec<Command> = batch.iter().map(|r| r.command.clone()).collect();
        match state::apply_batch(db, commands, history) {
            Ok((outcomes, new_events)) => {
                for (req, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = req.reply.send(Ok(outcome));
                }
                for e in new_events {
                    // No receivers is fine: nobody is watching.
                    let _ = events.send(Arc::new(e));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store transaction failed");
                for req in batch {
                    let _ = req.reply.send(Err(StoreError::Closed));
                }
            }
        }
    }
}

#[cfg(test)]
mod ops_tests;
#[cfg(test)]
mod tests;
