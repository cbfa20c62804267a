//! Backups: a dump of the replicated tables from one read transaction, and the
//! restore that makes a new store from it.
//!
//! # Format (JSON lines, version 1)
//! ```text
//! {"aquariumBackup":1,"revision":1234,"createdAt":"2026-11-29T20:00:00Z"}
//! {"t":"labels","k":["ubuntu-ci",2],"v":{...the stored Label...}}
//! ...one line per table entry...
//! {"end":{"entries":812,"sha256":"<hex of every byte before this line>"}}
//! ```
//! Keys are JSON (strings, numbers, arrays for tuple keys; u128 uids as UUID
//! strings); values are the stored JSON objects, numbers, strings, or `null`.
//!
//! # Guarantees
//! - A dump is consistent: it reads one redb read transaction (a snapshot), so writes
//!   go on while it streams and none of them is half in it.
//! - It holds every replicated table ([`TABLES`]): labels (every version and the
//!   version counters), applications with their pinned labels and indexes, users with
//!   their password and token digests, nodes, applyset members, cluster join tokens
//!   (digests only). Not the watch history.
//! - A restore checks the trailer (entry count and SHA-256) before it commits: a
//!   truncated or altered file leaves nothing behind.
//! - [`TABLES`] is THE list of replicated tables: a Raft snapshot is this same dump
//!   ([`dump`] on any read transaction, [`load`] into any write transaction), so a
//!   table added to the state machine and forgotten here is missing from both.
//! - A Raft snapshot's header has no `createdAt` ([`Purpose::Snapshot`]): one state
//!   dumps to the same bytes every time, as a snapshot's id promises (a follower
//!   resuming a stream of that id may keep bytes of an earlier dump of it).
//! - A restored store is the start of a new cluster: its resourceVersions continue
//!   after the backup's revision (`revision_base`), never going back.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, WriteTransaction};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::applyset::APPLYSET_MEMBERS;
use super::ballots::BALLOTS;
use super::gates::{GATE_DELIVERIES, GATE_JOBS, GATE_RUNNERS};
use super::tables::*;
use super::{Store, StoreError};

/// Written in a restored data directory, so first start knows the users came from a
/// backup (and keeps their tokens instead of making a new admin token).
pub const RESTORED_MARKER: &str = "restored.json";
/// The format version written in the header.
pub const FORMAT: u64 = 1;
/// The replicated tables, by their names in the file: what a backup and a Raft
/// snapshot hold. Everything else (the Raft log, `local_*`) belongs to one node.
pub const TABLES: [&str; 19] = [
    "meta",
    "labels",
    "applications",
    "application_labels",
    "application_names",
    "application_by_phase",
    "application_by_label",
    "application_by_owner",
    "users",
    "tokens",
    "nodes",
    "applyset_members",
    "dedup",
    "dedup_by_index",
    "gate_deliveries",
    "gate_jobs",
    "gate_runners",
    "join_tokens",
    "ballots",
];

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the backup")]
    Write(#[source] std::io::Error),
    #[error("cannot read the backup")]
    Read(#[source] std::io::Error),
    #[error("line {line} of the backup: {message}")]
    Bad { line: usize, message: String },
    #[error("the backup is incomplete: {0}")]
    Truncated(String),
    #[error("refusing to restore into {0}: it is not empty (restore makes a new data directory)")]
    NotEmpty(PathBuf),
    #[error("cannot prepare {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<redb::Error> for BackupError {
    fn from(e: redb::Error) -> Self {
        BackupError::Store(StoreError::Db(e))
    }
}

macro_rules! from_redb_backup {
    ($($t:ty),*) => {$(
        impl From<$t> for BackupError {
            fn from(e: $t) -> Self {
                BackupError::Store(StoreError::Db(e.into()))
            }
        }
    )*};
}
from_redb_backup!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

/// What a dump or a restore held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The store revision of the snapshot.
    pub revision: u64,
    /// Table entries, every table counted.
    pub entries: u64,
    pub labels: u64,
    pub applications: u64,
    pub users: u64,
    pub nodes: u64,
}

impl Summary {
    fn count(&mut self, table: &str) {
        self.entries += 1;
        match table {
            "labels" => self.labels += 1,
            "applications" => self.applications += 1,
            "users" => self.users += 1,
            "nodes" => self.nodes += 1,
            _ => {}
        }
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn line(&mut self, v: &Value) -> Result<(), BackupError> {
        let mut bytes = serde_json::to_vec(v).map_err(StoreError::Corrupt)?;
        bytes.push(b'\n');
        self.hash.update(&bytes);
        self.inner.write_all(&bytes).map_err(BackupError::Write)
    }
}

impl Store {
    /// Writes a consistent backup to `out` while the store keeps serving (blocking:
    /// call it on a blocking thread).
    pub fn backup(&self, out: impl Write) -> Result<Summary, BackupError> {
        let tx = self.db.begin_read()?;
        dump(&tx, out)
    }
}

fn uid_str(u: u128) -> Value {
    Value::String(Uuid::from_u128(u).to_string())
}

fn json_of(bytes: &[u8]) -> Result<Value, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}

/// What a dump is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A user's backup: its header says when it was made.
    Backup,
    /// A Raft snapshot: a function of the state alone, so every dump of one state is
    /// the same bytes (openraft keeps a snapshot's id for one state, and a follower
    /// resumes or restarts a stream by that id).
    Snapshot,
}

/// Dumps every table of [`TABLES`] as the transaction sees it, as a backup.
pub fn dump<W: Write>(tx: &ReadTransaction, out: W) -> Result<Summary, BackupError> {
    dump_for(tx, out, Purpose::Backup)
}

/// Dumps every table of [`TABLES`] as the transaction sees it, for `purpose`.
pub fn dump_for<W: Write>(tx: &ReadTransaction, out: W, purpose: Purpose) -> Result<Summary, BackupError> {
    let mut w = Hashing { inner: out, hash: Sha256::new() };
    let revision = tx.open_table(META)?.get("revision")?.map(|v| v.value()).unwrap_or(0);
    let header = match purpose {
        Purpose::Backup => {
            let created = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            json!({"aquariumBackup": FORMAT, "revision": revision, "createdAt": created})
        }
        Purpose::Snapshot => json!({"aquariumBackup": FORMAT, "revision": revision}),
    };
    w.line(&header)?;
    let mut sum = Summary { revision, ..Summary::default() };
    let mut put = |w: &mut Hashing<W>, t: &str, k: Value, v: Value| -> Result<(), BackupError> {
        sum.count(t);
        w.line(&json!({"t": t, "k": k, "v": v}))
    };
    for e in tx.open_table(META)?.iter()? {
        let (k, v) = e?;
        put(&mut w, "meta", json!(k.value()), json!(v.value()))?;
    }
    for e in tx.open_table(LABELS)?.iter()? {
        let (k, v) = e?;
        let (name, version) = k.value();
        put(&mut w, "labels", json!([name, version]), json_of(v.value())?)?;
    }
    for (t, def) in [("applications", APPS), ("application_labels", APP_LABELS)] {
        for e in tx.open_table(def)?.iter()? {
            let (k, v) = e?;
            put(&mut w, t, uid_str(k.value()), json_of(v.value())?)?;
        }
    }
    for e in tx.open_table(APP_NAMES)?.iter()? {
        let (k, v) = e?;
        put(&mut w, "application_names", json!(k.value()), uid_str(v.value()))?;
    }
    for e in tx.open_table(APP_BY_PHASE)?.iter()? {
        let (k, _) = e?;
        let (p, u) = k.value();
        put(&mut w, "application_by_phase", json!([p, uid_str(u)]), Value::Null)?;
    }
    for (t, def) in [("application_by_label", APP_BY_LABEL), ("application_by_owner", APP_BY_OWNER)] {
        for e in tx.open_table(def)?.iter()? {
            let (k, _) = e?;
            let (s, u) = k.value();
            put(&mut w, t, json!([s, uid_str(u)]), Value::Null)?;
        }
    }
    for (t, def) in [("users", USERS), ("nodes", NODES)] {
        for e in tx.open_table(def)?.iter()? {
            let (k, v) = e?;
            put(&mut w, t, json!(k.value()), json_of(v.value())?)?;
        }
    }
    for e in tx.open_table(TOKENS)?.iter()? {
        let (k, v) = e?;
        put(&mut w, "tokens", json!(k.value()), json!(v.value()))?;
    }
    for e in tx.open_table(APPLYSET_MEMBERS)?.iter()? {
        let (k, _) = e?;
        let (s, kind, name) = k.value();
        put(&mut w, "applyset_members", json!([s, kind, name]), Value::Null)?;
    }
    for e in tx.open_table(DEDUP)?.iter()? {
        let (k, v) = e?;
        put(&mut w, "dedup", uid_str(k.value()), super::dedup::to_json(v.value())?)?;
    }
    for e in tx.open_table(DEDUP_BY_INDEX)?.iter()? {
        let (k, _) = e?;
        let (i, u) = k.value();
        put(&mut w, "dedup_by_index", json!([i, uid_str(u)]), Value::Null)?;
    }
    for e in tx.open_table(GATE_DELIVERIES)?.iter()? {
        let (k, v) = e?;
        let (gate, guid) = k.value();
        put(&mut w, "gate_deliveries", json!([gate, guid]), json!(v.value()))?;
    }
    for e in tx.open_table(GATE_JOBS)?.iter()? {
        let (k, v) = e?;
        let (gate, id) = k.value();
        put(&mut w, "gate_jobs", json!([gate, id]), json_of(v.value())?)?;
    }
    for e in tx.open_table(GATE_RUNNERS)?.iter()? {
        let (k, v) = e?;
        let (gate, u) = k.value();
        put(&mut w, "gate_runners", json!([gate, uid_str(u)]), json_of(v.value())?)?;
    }
    for e in tx.open_table(JOIN_TOKENS)?.iter()? {
        let (k, v) = e?;
        put(&mut w, "join_tokens", json!(k.value()), json_of(v.value())?)?;
    }
    for e in tx.open_table(BALLOTS)?.iter()? {
        let (k, v) = e?;
        put(&mut w, "ballots", uid_str(k.value()), super::ballots::to_json(v.value())?)?;
    }
    let digest = hex(&w.hash.clone().finalize());
    let trailer = json!({"end": {"entries": sum.entries, "sha256": digest}});
    let mut bytes = serde_json::to_vec(&trailer).map_err(StoreError::Corrupt)?;
    bytes.push(b'\n');
    w.inner.write_all(&bytes).map_err(BackupError::Write)?;
    w.inner.flush().map_err(BackupError::Write)?;
    Ok(sum)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a new data directory `dir` holding the store of the backup read from `input`.
/// Refuses a directory that exists and is not empty; on any error, removes what it made.
pub fn restore(dir: &Path, input: impl BufRead) -> Result<Summary, BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let dir_err = |source| BackupError::Dir { path: dir.to_owned(), source };
    let existed = dir.exists();
    if existed && std::fs::read_dir(dir).map_err(dir_err)?.next().is_some() {
        return Err(BackupError::NotEmpty(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(dir_err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    let path = dir.join("fish.redb");
    let result = (|| {
        let db = Database::create(&path)?;
        super::state::init(&db)?;
        let txn = db.begin_write()?;
        let sum = load(&txn, input)?;
        // Command ids belong to the old cluster's log; the new log starts at 1, and its
        // resourceVersions go on after the backup's.
        txn.open_table(DEDUP)?.retain(|_, _| false)?;
        txn.open_table(DEDUP_BY_INDEX)?.retain(|_, _| false)?;
        txn.open_table(META)?.insert(super::REVISION_BASE, sum.revision)?;
        txn.commit()?;
        let marker = json!({"revision": sum.revision, "entries": sum.entries,
            "restoredAt": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()});
        crate::fsutil::write_private(&dir.join(RESTORED_MARKER), marker.to_string().as_bytes())
            .map_err(|source| BackupError::Dir { path: dir.join(RESTORED_MARKER), source })?;
        Ok(sum)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(dir.join(RESTORED_MARKER));
        if !existed {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result
}

/// Replaces the replicated tables of `txn` with the backup read from `input`; the
/// caller commits only if this returns `Ok` (the trailer was checked).
pub fn load(txn: &WriteTransaction, input: impl BufRead) -> Result<Summary, BackupError> {
    clear(txn)?;
    let mut hash = Sha256::new();
    let mut sum = Summary::default();
    let mut header = false;
    let mut ended = None;
    for (i, line) in input.split(b'\n').enumerate() {
        let n = i + 1;
        let mut raw = line.map_err(BackupError::Read)?;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let bad = |message: String| BackupError::Bad { line: n, message };
        if ended.is_some() {
            return Err(bad("data after the end line".into()));
        }
        let v: Value = serde_json::from_slice(&raw).map_err(|e| bad(format!("not JSON: {e}")))?;
        if let Some(end) = v.get("end") {
            ended = Some(end.clone());
            continue;
        }
        raw.push(b'\n');
        hash.update(&raw);
        if !header {
            match v.get("aquariumBackup").and_then(Value::as_u64) {
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(bad(format!("backup format {other} is not supported (this fishd reads {FORMAT})")));
                }
                None => return Err(bad("not an Aquarium backup (no aquariumBackup header)".into())),
            }
            sum.revision = v.get("revision").and_then(Value::as_u64).unwrap_or(0);
            header = true;
            continue;
        }
        let table = v.get("t").and_then(Value::as_str).ok_or_else(|| bad("missing \"t\"".into()))?;
        let k = v.get("k").ok_or_else(|| bad("missing \"k\"".into()))?;
        let val = v.get("v").unwrap_or(&Value::Null);
        insert(txn, table, k, val).map_err(|e| match e {
            Entry::Bad(m) => bad(format!("table {table}: {m}")),
            Entry::Store(e) => BackupError::Store(e),
        })?;
        sum.count(table);
    }
    if !header {
        return Err(BackupError::Truncated("the file is empty".into()));
    }
    let end = ended.ok_or_else(|| BackupError::Truncated("no end line (the transfer was cut short?)".into()))?;
    let want_entries = end.get("entries").and_then(Value::as_u64);
    let want_sha = end.get("sha256").and_then(Value::as_str).unwrap_or("");
    if want_entries != Some(sum.entries) {
        return Err(BackupError::Truncated(format!(
            "{} entries read, the end line says {want_entries:?}",
            sum.entries
        )));
    }
    if want_sha != hex(&hash.finalize()) {
        return Err(BackupError::Truncated("the SHA-256 of the content does not match the end line".into()));
    }
    // The node-local indexes of the applications now loaded.
    super::derived::rebuild(txn)?;
    Ok(sum)
}

enum Entry {
    Bad(String),
    Store(StoreError),
}

impl<E: Into<StoreError>> From<E> for Entry {
    fn from(e: E) -> Self {
        Entry::Store(e.into())
    }
}

fn s(v: &Value) -> Result<&str, Entry> {
    v.as_str().ok_or_else(|| Entry::Bad(format!("{v} is not a string")))
}

fn num(v: &Value) -> Result<u64, Entry> {
    v.as_u64().ok_or_else(|| Entry::Bad(format!("{v} is not a number")))
}

fn uid(v: &Value) -> Result<u128, Entry> {
    s(v)?.parse::<Uuid>().map(|u| u.as_u128()).map_err(|e| Entry::Bad(format!("{v} is not a uid: {e}")))
}

fn pair(v: &Value) -> Result<(&Value, &Value), Entry> {
    match v.as_array().map(Vec::as_slice) {
        Some([a, b]) => Ok((a, b)),
        _ => Err(Entry::Bad(format!("{v} is not a pair"))),
    }
}

fn object(v: &Value) -> Result<Vec<u8>, Entry> {
    serde_json::to_vec(an_object(v)?).map_err(|e| Entry::Store(e.into()))
}

/// `v`, if it is a JSON object.
fn an_object(v: &Value) -> Result<&Value, Entry> {
    if !v.is_object() {
        return Err(Entry::Bad("the value is not an object".into()));
    }
    Ok(v)
}

/// An object of kind `T` as the state machine writes it: through its type, so the
/// API can send stored objects as they are (see [`super::json`]), also after a restore
/// or snapshot from another version or whose key order a `Value` changed.
fn typed<T: serde::Serialize + serde::de::DeserializeOwned>(v: &Value) -> Result<Vec<u8>, Entry> {
    let t: T = serde_json::from_value(v.clone()).map_err(|e| Entry::Bad(format!("not a valid object: {e}")))?;
    serde_json::to_vec(&t).map_err(|e| Entry::Store(e.into()))
}

fn insert(txn: &WriteTransaction, table: &str, k: &Value, v: &Value) -> Result<(), Entry> {
    match table {
        "meta" => {
            txn.open_table(META)?.insert(s(k)?, num(v)?)?;
        }
        "labels" => {
            let (name, version) = pair(k)?;
            let version = u32::try_from(num(version)?).map_err(|_| Entry::Bad("version out of range".into()))?;
            txn.open_table(LABELS)?.insert((s(name)?, version), typed::<api_types::Label>(v)?.as_slice())?;
        }
        "applications" => {
            txn.open_table(APPS)?.insert(uid(k)?, typed::<api_types::Application>(v)?.as_slice())?;
        }
        "application_labels" => {
            txn.open_table(APP_LABELS)?.insert(uid(k)?, object(v)?.as_slice())?;
        }
        "application_names" => {
            txn.open_table(APP_NAMES)?.insert(s(k)?, uid(v)?)?;
        }
        "application_by_phase" => {
            let (p, u) = pair(k)?;
            let p = u8::try_from(num(p)?).map_err(|_| Entry::Bad("phase out of range".into()))?;
            txn.open_table(APP_BY_PHASE)?.insert((p, uid(u)?), ())?;
        }
        "application_by_label" | "application_by_owner" => {
            let def = if table == "application_by_label" { APP_BY_LABEL } else { APP_BY_OWNER };
            let (a, u) = pair(k)?;
            txn.open_table(def)?.insert((s(a)?, uid(u)?), ())?;
        }
        "users" => {
            txn.open_table(USERS)?.insert(s(k)?, object(v)?.as_slice())?;
        }
        "nodes" => {
            txn.open_table(NODES)?.insert(s(k)?, typed::<api_types::Node>(v)?.as_slice())?;
        }
        "tokens" => {
            txn.open_table(TOKENS)?.insert(s(k)?, s(v)?)?;
        }
        "applyset_members" => match k.as_array().map(Vec::as_slice) {
            Some([a, b, c]) => {
                txn.open_table(APPLYSET_MEMBERS)?.insert((s(a)?, s(b)?, s(c)?), ())?;
            }
            _ => return Err(Entry::Bad(format!("{k} is not a (set, kind, name) triple"))),
        },
        "dedup" => {
            txn.open_table(DEDUP)?.insert(uid(k)?, super::dedup::from_json(an_object(v)?)?.as_slice())?;
        }
        "dedup_by_index" => {
            let (i, u) = pair(k)?;
            txn.open_table(DEDUP_BY_INDEX)?.insert((num(i)?, uid(u)?), ())?;
        }
        "gate_deliveries" => {
            let (gate, guid) = pair(k)?;
            let seen = v.as_i64().ok_or_else(|| Entry::Bad(format!("{v} is not a time")))?;
            txn.open_table(GATE_DELIVERIES)?.insert((s(gate)?, s(guid)?), seen)?;
        }
        "gate_jobs" => {
            let (gate, id) = pair(k)?;
            txn.open_table(GATE_JOBS)?.insert((s(gate)?, num(id)?), object(v)?.as_slice())?;
        }
        "gate_runners" => {
            let (gate, u) = pair(k)?;
            txn.open_table(GATE_RUNNERS)?.insert((s(gate)?, uid(u)?), object(v)?.as_slice())?;
        }
        "join_tokens" => {
            txn.open_table(JOIN_TOKENS)?.insert(s(k)?, object(v)?.as_slice())?;
        }
        "ballots" => {
            let ballot =
                super::ballots::from_json(an_object(v)?).map_err(|e| Entry::Bad(format!("not a valid ballot: {e}")))?;
            txn.open_table(BALLOTS)?.insert(uid(k)?, ballot.as_slice())?;
        }
        other => return Err(Entry::Bad(format!("unknown table {other:?}"))),
    }
    Ok(())
}

/// Empties every table a backup holds, and the watch history (whose revisions the
/// loaded state no longer matches).
fn clear(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(META)?.retain(|_, _| false)?;
    txn.open_table(LABELS)?.retain(|_, _| false)?;
    txn.open_table(APPS)?.retain(|_, _| false)?;
    txn.open_table(APP_LABELS)?.retain(|_, _| false)?;
    txn.open_table(APP_NAMES)?.retain(|_, _| false)?;
    txn.open_table(APP_BY_PHASE)?.retain(|_, _| false)?;
    txn.open_table(APP_BY_LABEL)?.retain(|_, _| false)?;
    txn.open_table(APP_BY_OWNER)?.retain(|_, _| false)?;
    txn.open_table(USERS)?.retain(|_, _| false)?;
    txn.open_table(TOKENS)?.retain(|_, _| false)?;
    txn.open_table(NODES)?.retain(|_, _| false)?;
    txn.open_table(APPLYSET_MEMBERS)?.retain(|_, _| false)?;
    txn.open_table(DEDUP)?.retain(|_, _| false)?;
    txn.open_table(DEDUP_BY_INDEX)?.retain(|_, _| false)?;
    txn.open_table(LOCAL_EVENTS)?.retain(|_, _| false)?;
    txn.open_table(GATE_DELIVERIES)?.retain(|_, _| false)?;
    txn.open_table(GATE_JOBS)?.retain(|_, _| false)?;
    txn.open_table(GATE_RUNNERS)?.retain(|_, _| false)?;
    txn.open_table(JOIN_TOKENS)?.retain(|_, _| false)?;
    txn.open_table(BALLOTS)?.retain(|_, _| false)?;
    Ok(())
}
