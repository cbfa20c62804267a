//! The state machine: applies [`Command`]s to the redb tables.
//!
//! Each command first checks everything it needs and only then writes, so a
//! rejected command leaves nothing behind even when it shares a transaction with
//! others. Nothing here reads a clock or a random source: commands carry those.

mod apply;
mod liveness;
pub(super) use apply::apply_items;

use api_types::{Application, ApplicationStatus, FieldError, HistoryEntry, Label, Node, Phase, WatchEventType};
use redb::{Database, ReadableTable, WriteTransaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::command::{Command, Outcome, Rejection, Response, UserRecord};
use super::tables::*;
use super::{Event, Kind, StoreError, phase_code};

/// Creates every table, so readers never meet a missing one.
pub(super) fn init(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        txn.open_table(META)?;
        txn.open_table(LABELS)?;
        txn.open_table(APPS)?;
        txn.open_table(APP_LABELS)?;
        txn.open_table(APP_NAMES)?;
        txn.open_table(APP_BY_PHASE)?;
        txn.open_table(APP_BY_LABEL)?;
        txn.open_table(APP_BY_OWNER)?;
        txn.open_table(USERS)?;
        txn.open_table(TOKENS)?;
        txn.open_table(NODES)?;
        txn.open_table(JOIN_TOKENS)?;
        txn.open_table(super::ballots::BALLOTS)?;
        txn.open_table(super::applyset::APPLYSET_MEMBERS)?;
        txn.open_table(DEDUP)?;
        txn.open_table(DEDUP_BY_INDEX)?;
        txn.open_table(RAFT_LOG)?;
        txn.open_table(RAFT_META)?;
        txn.open_table(RAFT_SM)?;
        txn.open_table(RAFT_SNAPSHOT)?;
        txn.open_table(LOCAL_EVENTS)?;
        txn.open_table(LOCAL_META)?;
        txn.open_table(super::gates::GATE_DELIVERIES)?;
        txn.open_table(super::gates::GATE_JOBS)?;
        txn.open_table(super::gates::GATE_RUNNERS)?;
        txn.open_table(super::derived::LOCAL_FINISHED)?;
        txn.open_table(super::derived::LOCAL_PHASE_COUNTS)?;
    }
    // A store of an older fishd has no derived tables yet (once, O(stored)).
    if super::derived::ensure(&txn)? {
        tracing::info!("built the node-local application indexes (finished, phase counts)");
    }
    txn.commit()?;
    Ok(())
}

pub(super) struct Tx<'a> {
    pub(super) txn: &'a WriteTransaction,
    pub(super) rev: u64,
    pub(super) events: Vec<Event>,
    /// How the applications' holders changed, in order (see [`super::holdings`]).
    pub(super) held: Vec<super::holdings::Change>,
}

impl Tx<'_> {
    /// The revision of an object change: the log index of the entry being applied,
    /// shared by every object that entry changes.
    fn bump(&mut self) -> u64 {
        self.rev
    }

    fn emit(&mut self, kind: Kind, event_type: WatchEventType, object: serde_json::Value, owner: Option<String>) {
        self.events.push(Event::new(self.rev, kind, event_type, object, owner));
    }

    /// Like [`Tx::emit`], for an application just written as `stored` (its JSON bytes).
    fn emit_application(&mut self, event_type: WatchEventType, app: &Application, stored: Vec<u8>) {
        let facts = super::AppFacts::of(app);
        self.events.push(Event::of_application(self.rev, event_type, stored, facts, app.metadata.owner.clone()));
    }
}

/// Applies one command inside `txn` (committed by the caller) as the log entry at
/// `index`; the events of its changes are appended to `events`, how it changed the
/// applications' holders to `held`.
pub(super) fn apply_command(
    txn: &WriteTransaction,
    index: u64,
    cmd: Command,
    events: &mut Vec<Event>,
    held: &mut Vec<super::holdings::Change>,
) -> Result<Outcome, StoreError> {
    let mut tx = Tx { txn, rev: index, events: Vec::new(), held: Vec::new() };
    let outcome = apply(&mut tx, cmd)?;
    events.append(&mut tx.events);
    held.append(&mut tx.held);
    Ok(outcome)
}

pub(super) fn apply(tx: &mut Tx<'_>, cmd: Command) -> Result<Outcome, StoreError> {
    match cmd {
        Command::Apply { items, owner, now } => apply::apply_items(tx, items, &owner, now),
        Command::CreateUser { record, uid, now } => create_user(tx, *record, uid, now),
        Command::RequestDeallocate { uid, by, now } => request_deallocate(tx, uid, &by, now),
        Command::SetApplicationStatus { uid, expect, status, expect_node } => {
            set_status(tx, uid, expect, expect_node, *status)
        }
        Command::PurgeApplication { uid } => purge(tx, uid),
        Command::DeleteLabel { name, version } => delete_label(tx, &name, version),
        Command::SetUserToken { name, token_digest } => set_token(tx, &name, token_digest),
        Command::DeleteUser { name } => delete_user(tx, &name),
        Command::PutNode { node } => put_node(tx, *node),
        Command::SetNodeReady { node, ready, reason, last_seen, now } => {
            liveness::set_node_ready(tx, &node, ready, &reason, last_seen, now)
        }
        Command::SetMaintenance { node, enabled } => set_maintenance(tx, &node, enabled),
        Command::DeleteNode { node } => delete_node(tx, &node),
        Command::CreateJoinToken { digest, expires_at, created_by, now } => {
            super::join_tokens::create(tx.txn, &digest, expires_at, &created_by, now)
        }
        Command::ConsumeJoinToken { digest, node, key, now } => {
            let outcome = super::join_tokens::consume(tx.txn, &digest, &node, &key, now)?;
            if outcome.is_ok() {
                tx.txn.open_table(META)?.remove(removed_key(&node).as_str())?;
            }
            Ok(outcome)
        }
        Command::ApplySet { set, prune, items, owner, now } => {
            super::applyset::apply_set(tx, &set, prune, items, &owner, now)
        }
        Command::Vote { node, votes, now } => super::ballots::vote(tx, &node, votes, now),
        Command::CloseRounds { uids, now, heard } => super::ballots::close(tx, uids, now, heard.as_deref()),
        Command::GateEvent { gate, guid, job, now } => super::gates::event(tx, &gate, &guid, *job, now),
        Command::GatePutRunner { gate, uid, runner } => super::gates::put_runner(tx, &gate, uid, runner.map(|r| *r)),
        Command::GateForget { gate, jobs, deliveries_before } => {
            super::gates::forget(tx, &gate, &jobs, deliveries_before)
        }
    }
}

pub(super) fn read_label<T: ReadableTable<(&'static str, u32), &'static [u8]>>(
    table: &T,
    name: &str,
    version: Option<u32>,
) -> Result<Option<Label>, StoreError> {
    let found = match version {
        Some(v) => table.get((name, v))?.map(|g| g.value().to_vec()),
        None => table.range((name, 0)..=(name, u32::MAX))?.next_back().transpose()?.map(|(_, v)| v.value().to_vec()),
    };
    Ok(match found {
        Some(bytes) => Some(serde_json::from_slice(&bytes)?),
        None => None,
    })
}

pub(super) fn read_app<T: ReadableTable<u128, &'static [u8]>>(
    table: &T,
    uid: u128,
) -> Result<Option<Application>, StoreError> {
    Ok(match table.get(uid)? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

pub(super) fn read_user<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
    name: &str,
) -> Result<Option<UserRecord>, StoreError> {
    Ok(match table.get(name)? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

fn invalid(kind: &str, name: &str, field: &str, message: String) -> Rejection {
    Rejection::Invalid {
        message: format!("{} {name:?} is invalid", kind.to_lowercase()),
        errors: vec![FieldError { field: field.into(), message }],
    }
}

fn write_user(
    tx: &mut Tx<'_>,
    mut record: UserRecord,
    old_digest: Option<String>,
    created: bool,
) -> Result<api_types::User, StoreError> {
    let rev = tx.bump();
    record.user.metadata.resource_version = Some(rev.to_string());
    record.user.spec.password = None;
    record.user.status.token = None;
    let name = record.user.metadata.name_str().to_owned();
    {
        let mut tokens = tx.txn.open_table(TOKENS)?;
        if let Some(old) = old_digest {
            tokens.remove(old.as_str())?;
        }
        tokens.insert(record.token_digest.as_str(), name.as_str())?;
    }
    tx.txn.open_table(USERS)?.insert(name.as_str(), serde_json::to_vec(&record)?.as_slice())?;
    let t = if created { WatchEventType::Added } else { WatchEventType::Modified };
    tx.emit(Kind::User, t, serde_json::to_value(&record.user)?, None);
    Ok(record.user)
}

/// Writes `app` over its stored version, moving its phase index entry if needed.
pub(super) fn write_app(tx: &mut Tx<'_>, mut app: Application, old_phase: Phase) -> Result<Application, StoreError> {
    let rev = tx.bump();
    app.metadata.resource_version = Some(rev.to_string());
    let uid = app.metadata.uid.map(|u| u.as_u128()).unwrap_or_default();
    super::derived::changed(tx.txn, old_phase, &app)?;
    if old_phase != app.status.phase {
        let mut idx = tx.txn.open_table(APP_BY_PHASE)?;
        idx.remove((phase_code(old_phase), uid))?;
        idx.insert((phase_code(app.status.phase), uid), ())?;
    }
    let stored = serde_json::to_vec(&app)?;
    tx.txn.open_table(APPS)?.insert(uid, stored.as_slice())?;
    if let Some(u) = app.metadata.uid {
        tx.held.push((u, super::holdings::holder(app.status.phase, app.status.node.as_deref())));
    }
    tx.emit_application(WatchEventType::Modified, &app, stored);
    Ok(app)
}

pub(super) fn load_app(tx: &Tx<'_>, uid: Uuid) -> Result<Option<Application>, StoreError> {
    read_app(&tx.txn.open_table(APPS)?, uid.as_u128())
}

fn request_deallocate(tx: &mut Tx<'_>, uid: Uuid, by: &str, now: OffsetDateTime) -> Result<Outcome, StoreError> {
    let Some(mut app) = load_app(tx, uid)? else {
        return Ok(Err(Rejection::NotFound(format!("application {uid} not found"))));
    };
    let old = app.status.phase;
    let (phase, message) = match old {
        Phase::New => (Phase::Deallocated, format!("deallocated by {by} before allocation; nothing to release")),
        // Its allocation may be running (or have run before a crash): the elected node
        // releases whatever it made, retrying until its driver confirms.
        Phase::Elected => (Phase::Deallocate, format!("deallocation requested by {by} during allocation")),
        Phase::Allocated => (Phase::Deallocate, format!("deallocation requested by {by}")),
        // Already going or gone: idempotent.
        Phase::Deallocate | Phase::Deallocated | Phase::Error => return Ok(Ok(Response::Application(Box::new(app)))),
    };
    if old == Phase::New {
        super::ballots::forget(tx, uid)?;
    }
    app.status.phase = phase;
    app.status.message = message.clone();
    app.status.history.push(HistoryEntry { phase, at: now, message });
    let app = write_app(tx, app, old)?;
    Ok(Ok(Response::Application(Box::new(app))))
}

fn set_status(
    tx: &mut Tx<'_>,
    uid: Uuid,
    expect: Phase,
    expect_node: Option<String>,
    status: ApplicationStatus,
) -> Result<Outcome, StoreError> {
    let Some(mut app) = load_app(tx, uid)? else {
        return Ok(Err(Rejection::NotFound(format!("application {uid} not found"))));
    };
    let old = app.status.phase;
    if old != expect {
        return Ok(Err(Rejection::PhaseChanged { expected: expect, actual: old }));
    }
    if expect_node.is_some() && expect_node != app.status.node {
        return Ok(Err(Rejection::NodeChanged { expected: expect_node, actual: app.status.node }));
    }
    if app.status == status {
        return Ok(Ok(Response::Application(Box::new(app))));
    }
    if old == Phase::Elected
        && status.phase == Phase::New
        && let Some(node) = &app.status.node
    {
        super::ballots::returned(tx, uid, node)?;
    }
    app.status = status;
    let app = write_app(tx, app, old)?;
    Ok(Ok(Response::Application(Box::new(app))))
}

fn purge(tx: &mut Tx<'_>, uid: Uuid) -> Result<Outcome, StoreError> {
    let Some(app) = load_app(tx, uid)? else {
        return Ok(Ok(Response::Done));
    };
    let key = uid.as_u128();
    let owner = app.metadata.owner.clone().unwrap_or_default();
    tx.txn.open_table(APPS)?.remove(key)?;
    tx.txn.open_table(APP_LABELS)?.remove(key)?;
    tx.txn.open_table(APP_NAMES)?.remove(app.metadata.name_str())?;
    tx.txn.open_table(APP_BY_PHASE)?.remove((phase_code(app.status.phase), key))?;
    tx.txn.open_table(APP_BY_LABEL)?.remove((app.spec.label.name.as_str(), key))?;
    tx.txn.open_table(APP_BY_OWNER)?.remove((owner.as_str(), key))?;
    super::derived::removed(tx.txn, &app)?;
    super::ballots::forget(tx, uid)?;
    tx.held.push((uid, None));
    emit_deleted(tx, Kind::Application, serde_json::to_value(&app)?, Some(owner));
    Ok(Ok(Response::Done))
}

pub(super) fn delete_label(tx: &mut Tx<'_>, name: &str, version: Option<u32>) -> Result<Outcome, StoreError> {
    let mut removed = Vec::new();
    {
        let mut labels = tx.txn.open_table(LABELS)?;
        let keys: Vec<u32> = match version {
            Some(v) => vec![v],
            None => {
                let mut ks = Vec::new();
                for e in labels.range((name, 0)..=(name, u32::MAX))? {
                    ks.push(e?.0.value().1);
                }
                ks
            }
        };
        for v in keys {
            if let Some(old) = labels.remove((name, v))? {
                removed.push(serde_json::from_slice::<serde_json::Value>(old.value())?);
            }
        }
    }
    if removed.is_empty() {
        let what = match version {
            Some(v) => format!("label {name:?} version {v} not found"),
            None => format!("label {name:?} not found"),
        };
        return Ok(Err(Rejection::NotFound(what)));
    }
    for obj in removed {
        emit_deleted(tx, Kind::Label, obj, None);
    }
    Ok(Ok(Response::Done))
}

/// Records a deletion: it takes the next revision, and the object (shown as it was)
/// carries that revision as its `resourceVersion`. A deletion is a change: a client
/// resuming from the revision it last saw must not be sent the deletion again.
fn emit_deleted(tx: &mut Tx<'_>, kind: Kind, mut object: serde_json::Value, owner: Option<String>) {
    let rev = tx.bump();
    if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("resourceVersion".into(), rev.to_string().into());
    }
    tx.emit(kind, WatchEventType::Deleted, object, owner);
}

/// Creates a user, or refuses if the name is taken: the check and the write are one
/// command, so two concurrent creations cannot both pass the check.
fn create_user(tx: &mut Tx<'_>, mut record: UserRecord, uid: Uuid, now: OffsetDateTime) -> Result<Outcome, StoreError> {
    let name = record.user.metadata.name_str().to_owned();
    if read_user(&tx.txn.open_table(USERS)?, &name)?.is_some() {
        return Ok(Err(Rejection::Conflict(format!(
            "user {name:?} already exists (rotate its token, or apply it to change it)"
        ))));
    }
    record.user.metadata = api_types::ObjectMeta {
        name: record.user.metadata.name.clone(),
        uid: Some(uid),
        created_at: Some(now),
        ..Default::default()
    };
    let user = write_user(tx, record, None, true)?;
    Ok(Ok(Response::User(Box::new(user))))
}

fn set_token(tx: &mut Tx<'_>, name: &str, token_digest: String) -> Result<Outcome, StoreError> {
    let Some(mut record) = read_user(&tx.txn.open_table(USERS)?, name)? else {
        return Ok(Err(Rejection::NotFound(format!("user {name:?} not found"))));
    };
    let old = std::mem::replace(&mut record.token_digest, token_digest);
    write_user(tx, record, Some(old), false)?;
    Ok(Ok(Response::Done))
}

pub(super) fn delete_user(tx: &mut Tx<'_>, name: &str) -> Result<Outcome, StoreError> {
    let Some(record) = read_user(&tx.txn.open_table(USERS)?, name)? else {
        return Ok(Err(Rejection::NotFound(format!("user {name:?} not found"))));
    };
    tx.txn.open_table(USERS)?.remove(name)?;
    tx.txn.open_table(TOKENS)?.remove(record.token_digest.as_str())?;
    emit_deleted(tx, Kind::User, serde_json::to_value(&record.user)?, None);
    Ok(Ok(Response::Done))
}

/// The `meta` key that marks `node` as removed from the cluster: its late heartbeats
/// (in flight when it was removed, or from a node still running after removal) must
/// not bring its record back. A new join of that name clears it.
pub(super) fn removed_key(node: &str) -> String {
    format!("removed-node/{node}")
}

fn put_node(tx: &mut Tx<'_>, mut node: Node) -> Result<Outcome, StoreError> {
    let name = node.metadata.name_str().to_owned();
    if tx.txn.open_table(META)?.get(removed_key(&name).as_str())?.is_some() {
        return Ok(Err(Rejection::Conflict(format!(
            "node {name:?} was removed from the cluster; stop it, or join it again with a new token"
        ))));
    }
    let existing: Option<Node> = match tx.txn.open_table(NODES)?.get(name.as_str())? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    };
    // The node reports `ready` as "takes new applications"; stored, it also says
    // whether the leader hears it (see `liveness`).
    node.status.ready = liveness::reported_ready(tx, &name, node.status.ready)?;
    if let Some(cur) = &existing {
        // Maintenance is an admin's decision, not the node's report.
        node.status.maintenance = cur.status.maintenance;
        // When it was last seen is the latest of its reports and the leader's verdicts.
        node.status.last_seen = node.status.last_seen.max(cur.status.last_seen);
        node.metadata.uid = cur.metadata.uid;
        node.metadata.created_at = cur.metadata.created_at;
        let mut a = cur.clone();
        let mut b = node.clone();
        a.metadata.resource_version = None;
        b.metadata.resource_version = None;
        if a == b {
            return Ok(Ok(Response::Node(Box::new(cur.clone()))));
        }
    }
    let rev = tx.bump();
    node.metadata.resource_version = Some(rev.to_string());
    tx.txn.open_table(NODES)?.insert(name.as_str(), serde_json::to_vec(&node)?.as_slice())?;
    let t = if existing.is_some() { WatchEventType::Modified } else { WatchEventType::Added };
    tx.emit(Kind::Node, t, serde_json::to_value(&node)?, None);
    Ok(Ok(Response::Node(Box::new(node))))
}

/// The applications `node` holds: ELECTED, ALLOCATED or DEALLOCATE on it.
pub(super) fn held_by(tx: &Tx<'_>, node: &str) -> Result<Vec<Application>, StoreError> {
    let apps = tx.txn.open_table(APPS)?;
    let idx = tx.txn.open_table(APP_BY_PHASE)?;
    let mut held = Vec::new();
    for phase in [Phase::Elected, Phase::Allocated, Phase::Deallocate] {
        let code = phase_code(phase);
        for e in idx.range((code, 0)..=(code, u128::MAX))? {
            let (k, _) = e?;
            if let Some(app) = read_app(&apps, k.value().1)?
                && app.status.node.as_deref() == Some(node)
            {
                held.push(app);
            }
        }
    }
    Ok(held)
}

fn delete_node(tx: &mut Tx<'_>, name: &str) -> Result<Outcome, StoreError> {
    let held: Vec<String> = held_by(tx, name)?.iter().map(|a| a.metadata.name_str().to_owned()).collect();
    if !held.is_empty() {
        let shown: Vec<_> = held.iter().take(5).map(String::as_str).collect();
        let more =
            if held.len() > shown.len() { format!(" and {} more", held.len() - shown.len()) } else { String::new() };
        return Ok(Err(Rejection::Conflict(format!(
            "node {name:?} still holds {} application(s): {}{more}; deallocate them (or drain the node) first",
            held.len(),
            shown.join(", ")
        ))));
    }
    let removed: Option<Node> = match tx.txn.open_table(NODES)?.remove(name)? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    };
    if let Some(node) = removed {
        emit_deleted(tx, Kind::Node, serde_json::to_value(&node)?, None);
    }
    liveness::forget(tx, name)?;
    super::ballots::strip_node(tx, name)?;
    let rev = tx.bump();
    tx.txn.open_table(META)?.insert(removed_key(name).as_str(), rev)?;
    Ok(Ok(Response::Done))
}

fn set_maintenance(tx: &mut Tx<'_>, name: &str, enabled: bool) -> Result<Outcome, StoreError> {
    let mut node: Node = match tx.txn.open_table(NODES)?.get(name)? {
        Some(v) => serde_json::from_slice(v.value())?,
        None => return Ok(Err(Rejection::NotFound(format!("node {name:?} not found")))),
    };
    if node.status.maintenance == enabled {
        return Ok(Ok(Response::Node(Box::new(node))));
    }
    node.status.maintenance = enabled;
    let rev = tx.bump();
    node.metadata.resource_version = Some(rev.to_string());
    tx.txn.open_table(NODES)?.insert(name, serde_json::to_vec(&node)?.as_slice())?;
    tx.emit(Kind::Node, WatchEventType::Modified, serde_json::to_value(&node)?, None);
    Ok(Ok(Response::Node(Box::new(node))))
}
