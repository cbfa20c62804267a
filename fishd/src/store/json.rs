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
//!   written, not as the current types would write them.

use redb::{Database, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::tables::*;
use super::{AppFilter, Store, StoreError, matching_uids, revision_in};

/// The serialized shape of stored objects; bump it when it changes (see the module).
const OBJECT_FORMAT: u64 = 1;
/// `local_meta` key: the [`OBJECT_FORMAT`] the stored objects are in.
const OBJECT_FORMAT_KEY: &str = "object_format";

/// Rewrites every stored application, label and node through its type if they were
/// written in another [`OBJECT_FORMAT`] (or before there was one), so the API's stored
/// answers have the current shape. Deterministic: every node of a version rewrites
/// the same objects to the same bytes. A new store only records the format.
pub(super) fn upgrade(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    {
        let mut local = txn.open_table(LOCAL_META)?;
        if local.get(OBJECT_FORMAT_KEY)?.map(|v| v.value()) == Some(OBJECT_FORMAT) {
            return Ok(());
        }
        let mut rewritten = 0usize;
        {
            let mut t = txn.open_table(APPS)?;
            let changed = reencode::<api_types::Application, _>(t.iter()?.map(|e| e.map(|(k, v)| (k.value(), v))))?;
            rewritten += changed.len();
            for (k, v) in changed {
                t.insert(k, v.as_slice())?;
            }
        }
        {
            let mut t = txn.open_table(LABELS)?;
            let changed = reencode::<api_types::Label, _>(
                t.iter()?.map(|e| e.map(|(k, v)| ((k.value().0.to_owned(), k.value().1), v))),
            )?;
            rewritten += changed.len();
            for ((name, version), v) in changed {
                t.insert((name.as_str(), version), v.as_slice())?;
            }
        }
        {
            let mut t = txn.open_table(NODES)?;
            let changed = reencode::<api_types::Node, _>(t.iter()?.map(|e| e.map(|(k, v)| (k.value().to_owned(), v))))?;
            rewritten += changed.len();
            for (k, v) in changed {
                t.insert(k.as_str(), v.as_slice())?;
            }
        }
        local.insert(OBJECT_FORMAT_KEY, OBJECT_FORMAT)?;
        if rewritten > 0 {
            tracing::info!(rewritten, format = OBJECT_FORMAT, "stored objects rewritten in the current format");
        }
    }
    txn.commit()?;
    Ok(())
}

/// The entries whose value, read as a `T` and written again, changes: key and new bytes.
fn reencode<'a, T: Serialize + DeserializeOwned, K>(
    entries: impl Iterator<Item = Result<(K, redb::AccessGuard<'a, &'static [u8]>), redb::StorageError>>,
) -> Result<Vec<(K, Vec<u8>)>, StoreError> {
    let mut changed = Vec::new();
    for e in entries {
        let (k, v) = e?;
        let bytes = serde_json::to_vec(&serde_json::from_slice::<T>(v.value())?)?;
        if bytes != v.value() {
            changed.push((k, bytes));
        }
    }
    Ok(changed)
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
