//! Reads that hand out objects as their stored JSON, for the API to send as they are.
//!
//! # Guarantees
//! - The bytes are what the state machine wrote: `serde_json::to_vec` of the typed
//!   object (`Application`, `Label`) by the code that wrote it, so the same fields, in
//!   the same shape, as serializing what the typed reads return. Objects that came in
//!   through a snapshot or a restore are written back through their types on the way in
//!   (see [`super::backup`]), so they hold too.
//! - Filters are answered from the indexes; no object is parsed.
//!
//! - Objects written by an older fishd are rewritten through the current types once,
//!   when the store opens, if [`OBJECT_FORMAT`] changed since (see [`upgrade`]).
//!
//! # Assumptions
//! - Whoever changes how `Application`, `Label` or `Node` serializes (a new field, a
//!   rename, a default) bumps [`OBJECT_FORMAT`]: objects are sent as they were
//!   written, not as the current types would write them. A golden test holds this:
//!   it fails on a shape the committed file of the current format does not have.

use std::ops::Bound;

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::tables::*;
use super::{AppFilter, Store, StoreError, matching_uids, revision_in};

/// The serialized shape of stored objects; bump it when it changes (see the module).
/// `tests::the_object_format_matches_the_types` holds the shape of each format in
/// `testdata/object_format_<N>.json` and fails when the types no longer write it.
const OBJECT_FORMAT: u64 = 1;
/// `local_meta` key: the [`OBJECT_FORMAT`] the stored objects are in.
const OBJECT_FORMAT_KEY: &str = "object_format";

/// Objects read per write transaction by [`upgrade`] (at most that many rewritten):
/// a store whose every object changes shape (say 100,000 applications that came in
/// through an older snapshot) is rewritten in transactions of a few MB each, not in
/// one that holds every changed object and its dirty pages at once.
const UPGRADE_BATCH: usize = 1_000;

/// Rewrites every stored application, label and node through its type if they were
/// written in another [`OBJECT_FORMAT`] (or before there was one), so the API's stored
/// answers have the current shape. Deterministic: every node of a version rewrites
/// the same objects to the same bytes. A new store only records the format.
///
/// Runs before Raft starts, in transactions of [`UPGRADE_BATCH`] objects; the format
/// mark is set last, so a start cut short upgrades again (objects already in the
/// current shape are left as they are).
pub(super) fn upgrade(db: &Database) -> Result<(), StoreError> {
    upgrade_in_batches(db, UPGRADE_BATCH)
}

/// One table's objects rewritten `$batch` at a time: `$owned` makes an owned key (of
/// type `$okey`) from the key guard `$k`, `$borrowed` the table's key from the owned `$o`.
macro_rules! rewrite_table {
    ($db:expr, $batch:expr, $table:expr, $ty:ty, $key:ty, $okey:ty, |$k:ident| $owned:expr, |$o:ident| $borrowed:expr) => {{
        let mut rewritten = 0usize;
        let mut after: Option<$okey> = None;
        loop {
            let txn = $db.begin_write()?;
            let (read, last, changed) = {
                let mut t = txn.open_table($table)?;
                let entries = match &after {
                    Some($o) => t.range::<$key>((Bound::Excluded($borrowed), Bound::Unbounded))?,
                    None => t.range::<$key>(..)?,
                };
                let batch = reencode::<$ty, _>(entries.take($batch).map(|e| e.map(|($k, v)| ($owned, v))))?;
                for ($o, v) in &batch.changed {
                    t.insert($borrowed, v.as_slice())?;
                }
                (batch.read, batch.last, batch.changed.len())
            };
            if changed > 0 {
                txn.commit()?;
            } else {
                txn.abort()?;
            }
            rewritten += changed;
            if read < $batch {
                break;
            }
            after = last;
        }
        rewritten
    }};
}

/// [`upgrade`], `batch` objects per transaction.
pub(super) fn upgrade_in_batches(db: &Database, batch: usize) -> Result<(), StoreError> {
    let format = db.begin_read()?.open_table(LOCAL_META)?.get(OBJECT_FORMAT_KEY)?.map(|v| v.value());
    if format == Some(OBJECT_FORMAT) {
        return Ok(());
    }
    let batch = batch.max(1);
    let mut rewritten = 0usize;
    rewritten += rewrite_table!(db, batch, APPS, api_types::Application, u128, u128, |k| k.value(), |o| *o);
    rewritten += rewrite_table!(
        db,
        batch,
        LABELS,
        api_types::Label,
        (&str, u32),
        (String, u32),
        |k| (k.value().0.to_owned(), k.value().1),
        |o| (o.0.as_str(), o.1)
    );
    rewritten +=
        rewrite_table!(db, batch, NODES, api_types::Node, &str, String, |k| k.value().to_owned(), |o| o.as_str());
    let txn = db.begin_write()?;
    txn.open_table(LOCAL_META)?.insert(OBJECT_FORMAT_KEY, OBJECT_FORMAT)?;
    txn.commit()?;
    if rewritten > 0 {
        tracing::info!(rewritten, format = OBJECT_FORMAT, "stored objects rewritten in the current format");
    }
    Ok(())
}

/// What [`reencode`] found in one batch of entries.
struct Reencoded<K> {
    /// The entries whose value, read as a `T` and written again, changes: key and new bytes.
    changed: Vec<(K, Vec<u8>)>,
    /// Entries read.
    read: usize,
    /// The key of the last entry read: the next batch starts after it.
    last: Option<K>,
}

/// Reads each entry as a `T` and writes it again, keeping the ones that change.
fn reencode<'a, T: Serialize + DeserializeOwned, K: Clone>(
    entries: impl Iterator<Item = Result<(K, redb::AccessGuard<'a, &'static [u8]>), redb::StorageError>>,
) -> Result<Reencoded<K>, StoreError> {
    let mut out = Reencoded { changed: Vec::new(), read: 0, last: None };
    for e in entries {
        let (k, v) = e?;
        out.read += 1;
        let bytes = serde_json::to_vec(&serde_json::from_slice::<T>(v.value())?)?;
        if bytes != v.value() {
            out.changed.push((k.clone(), bytes));
        }
        out.last = Some(k);
    }
    Ok(out)
}

/// Receives stored objects: first the revision they were read at, then each object's
/// JSON in order.
pub trait JsonSink {
    /// The store revision of the read; called once, before any object.
    fn revision(&mut self, revision: u64);
    /// One object's stored JSON.
    fn object(&mut self, json: &[u8]);
}

impl Store {
    /// The stored JSON of one application, by name or uid; `None` also when `owner` is
    /// given and does not own it (a non-admin cannot tell it exists).
    pub fn application_json(&self, name_or_uid: &str, owner: Option<&str>) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let uid = match name_or_uid.parse::<Uuid>() {
            Ok(u) => Some(u.as_u128()),
            Err(_) => tx.open_table(APP_NAMES)?.get(name_or_uid)?.map(|v| v.value()),
        };
        let Some(uid) = uid else { return Ok(None) };
        if let Some(owner) = owner
            && tx.open_table(APP_BY_OWNER)?.get((owner, uid))?.is_none()
        {
            return Ok(None);
        }
        Ok(tx.open_table(APPS)?.get(uid)?.map(|v| v.value().to_vec()))
    }

    /// Gives `sink` the stored JSON of every application matching `filter`, in
    /// creation order.
    pub fn applications_json(&self, filter: &AppFilter, sink: &mut impl JsonSink) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        sink.revision(revision_in(&tx)?);
        let uids = matching_uids(&tx, filter)?;
        let apps = tx.open_table(APPS)?;
        for uid in uids {
            if let Some(v) = apps.get(uid)? {
                sink.object(v.value());
            }
        }
        Ok(())
    }

    /// The stored JSON of one label version, or of its latest.
    pub fn label_json(&self, name: &str, version: Option<u32>) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(LABELS)?;
        Ok(match version {
            Some(v) => t.get((name, v))?.map(|g| g.value().to_vec()),
            None => t.range((name, 0)..=(name, u32::MAX))?.next_back().transpose()?.map(|(_, v)| v.value().to_vec()),
        })
    }

    /// Gives `sink` the stored JSON of every label version (of `name` only, if given),
    /// by name and version.
    pub fn labels_json(&self, name: Option<&str>, sink: &mut impl JsonSink) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        sink.revision(revision_in(&tx)?);
        let t = tx.open_table(LABELS)?;
        let range = match name {
            Some(n) => t.range((n, 0)..=(n, u32::MAX))?,
            None => t.range::<(&str, u32)>(..)?,
        };
        for e in range {
            sink.object(e?.1.value());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use api_types::application::ApplicationKind;
    use api_types::label::LabelKind;
    use api_types::meta::ApiVersion;
    use api_types::node::NodeKind;
    use api_types::*;
    use serde_json::json;
    use time::OffsetDateTime;

    use super::OBJECT_FORMAT;

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).unwrap()
    }

    fn meta(name: &str, version: Option<u32>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.parse().unwrap()),
            uid: Some(uuid::Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0001)),
            created_at: Some(at(1_764_000_000)),
            resource_version: Some("42".into()),
            owner: Some("alice".into()),
            version,
        }
    }

    /// Every field set, written out with no `..Default::default()`: a new field does
    /// not compile here until it is set too, and then shows in the shape.
    fn application() -> Application {
        Application {
            api_version: ApiVersion,
            kind: ApplicationKind,
            metadata: meta("a", None),
            spec: ApplicationSpec {
                label: "l:2".parse().unwrap(),
                metadata: [("KEY".to_owned(), json!("value"))].into(),
                lifetime: Some("2h".parse().unwrap()),
            },
            status: ApplicationStatus {
                phase: Phase::Allocated,
                label_version: Some(2),
                node: Some("node-1".into()),
                definition: Some(0),
                message: "allocated".into(),
                resource: Some(ResourceStatus {
                    driver: "docker/dev".into(),
                    identifier: "c0ffee".into(),
                    ip_addr: Some("10.0.0.2".into()),
                    hw_addr: Some("02:00:00:00:00:02".into()),
                    expires_at: Some(at(1_764_007_200)),
                    details: [("pid".to_owned(), json!(1234))].into_iter().collect(),
                }),
                attempts: 1,
                deallocate_requested: Some("2026-11-24T17:00:00Z".into()),
                history: vec![HistoryEntry { phase: Phase::New, at: at(1_764_000_000), message: "created".into() }],
            },
        }
    }

    fn label() -> Label {
        Label {
            api_version: ApiVersion,
            kind: LabelKind,
            metadata: meta("l", Some(2)),
            spec: LabelSpec {
                definitions: vec![Definition {
                    driver: "docker/dev".into(),
                    images: vec![Image {
                        name: Some("ubuntu".into()),
                        tag: Some("24.04".into()),
                        url: Some("https://example.com/ubuntu.tar".into()),
                        sum: Some(format!("sha256:{}", "0".repeat(64))),
                    }],
                    resources: Resources {
                        cpu: 2,
                        ram: 4,
                        disks: [("data".to_owned(), Disk { size: 10 })].into(),
                        network: Network::Nat,
                        allow: vec!["example.com:443".into()],
                        pids: Some(512),
                        node_filter: vec!["node-*".into()],
                        slots: Some(2),
                        cpu_overbook: true,
                        ram_overbook: true,
                        lifetime: Some("1d".parse().unwrap()),
                    },
                    options: [("privileged".to_owned(), json!(false))].into_iter().collect(),
                }],
                metadata: [("LABEL_KEY".to_owned(), json!(1))].into(),
                remove_at: Some(at(1_764_086_400)),
            },
            status: Some(json!({"any": "thing"})),
        }
    }

    fn node() -> Node {
        let capacity = NodeCapacity { cpu: 8, ram: 32, slots: 4, applications: 1 };
        Node {
            api_version: ApiVersion,
            kind: NodeKind,
            metadata: meta("node-1", None),
            status: NodeStatus {
                address: "10.0.0.1:8001".into(),
                version: "0.1.0".into(),
                identifiers: vec!["linux".into()],
                location: "rack-1".into(),
                drivers: vec![DriverStatus {
                    name: "docker/dev".into(),
                    available: false,
                    reason: "no socket".into(),
                    info: "accel: kvm".into(),
                }],
                capacity,
                allocated: capacity,
                maintenance: true,
                ready: true,
                role: Some("leader".into()),
                last_seen: Some(at(1_764_000_100)),
            },
        }
    }

    #[derive(serde::Serialize)]
    struct Shapes {
        application: Application,
        label: Label,
        node: Node,
    }

    fn golden_path(format: u64) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("src/store/testdata/object_format_{format}.json"))
    }

    /// The shape the stored objects have is the one [`OBJECT_FORMAT`] names: a change
    /// to the types without a bump would leave every object written before it in the
    /// old shape, served as it is (see the module). `UPDATE_GOLDEN=1` writes the file of
    /// a new format; the file of a format that was committed is never rewritten.
    #[test]
    fn the_object_format_matches_the_types() {
        let shapes = Shapes { application: application(), label: label(), node: node() };
        let mut now = serde_json::to_string_pretty(&shapes).unwrap();
        now.push('\n');
        let path = golden_path(OBJECT_FORMAT);
        let committed = std::fs::read_to_string(&path).ok();
        let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
        match committed {
            Some(c) if c == now => {}
            Some(c) => {
                let (old, new) = (c.lines().collect::<Vec<_>>(), now.lines().collect::<Vec<_>>());
                let at = old.iter().zip(&new).position(|(a, b)| a != b).unwrap_or(old.len().min(new.len()));
                panic!(
                    "the serialized shape of Application, Label or Node is no longer the one of OBJECT_FORMAT \
                     {OBJECT_FORMAT} ({}, line {}: {:?} now {:?}): bump OBJECT_FORMAT in fishd/src/store/json.rs and \
                     regenerate with UPDATE_GOLDEN=1 (stored objects are served as they were written; only a new \
                     format rewrites them when the store opens)",
                    path.display(),
                    at + 1,
                    old.get(at).unwrap_or(&""),
                    new.get(at).unwrap_or(&"")
                )
            }
            None if update => std::fs::write(&path, now).unwrap(),
            None => panic!(
                "{} is missing: after bumping OBJECT_FORMAT, regenerate it with UPDATE_GOLDEN=1 \
                 (e.g. UPDATE_GOLDEN=1 cargo nextest run --workspace -E 'test(the_object_format_matches_the_types)') \
                 and commit it",
                path.display()
            ),
        }
    }
}
