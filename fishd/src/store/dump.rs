//! A consistent copy of every replicated table: the Raft snapshot's content, and the
//! shape a backup can reuse.
//!
//! # Invariants
//! - [`dump`] reads one redb read transaction, so the copy is of one applied log index.
//! - [`restore`] replaces every replicated table inside the caller's write transaction;
//!   node-local tables (`local_*`, the Raft log and vote) are never touched.
//! - Object values stay the JSON text they are stored as, so the dump is readable and
//!   survives field additions; the dump itself is JSON with a format number.

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::tables::*;

/// The dump format this build writes and reads.
pub const DUMP_FORMAT: u32 = 1;

/// Every replicated table, row by row (keys in table order).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Dump {
    pub format: u32,
    pub meta: Vec<(String, u64)>,
    pub labels: Vec<((String, u32), String)>,
    pub applications: Vec<(u128, String)>,
    pub application_labels: Vec<(u128, String)>,
    pub application_names: Vec<(String, u128)>,
    pub application_by_phase: Vec<(u8, u128)>,
    pub application_by_label: Vec<(String, u128)>,
    pub application_by_owner: Vec<(String, u128)>,
    pub users: Vec<(String, String)>,
    pub tokens: Vec<(String, String)>,
    pub nodes: Vec<(String, String)>,
    pub dedup: Vec<(u128, String)>,
    pub dedup_by_index: Vec<(u64, u128)>,
}

fn text(bytes: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(bytes.to_vec()).map_err(|e| StoreError::Corrupt(serde::de::Error::custom(e)))
}

/// Copies every replicated table as seen by `tx`.
pub fn dump(tx: &ReadTransaction) -> Result<Dump, StoreError> {
    let mut d = Dump { format: DUMP_FORMAT, ..Dump::default() };
    for e in tx.open_table(META)?.iter()? {
        let (k, v) = e?;
        d.meta.push((k.value().to_owned(), v.value()));
    }
    for e in tx.open_table(LABELS)?.iter()? {
        let (k, v) = e?;
        let (n, ver) = k.value();
        d.labels.push(((n.to_owned(), ver), text(v.value())?));
    }
    for e in tx.open_table(APPS)?.iter()? {
        let (k, v) = e?;
        d.applications.push((k.value(), text(v.value())?));
    }
    for e in tx.open_table(APP_LABELS)?.iter()? {
        let (k, v) = e?;
        d.application_labels.push((k.value(), text(v.value())?));
    }
    for e in tx.open_table(APP_NAMES)?.iter()? {
        let (k, v) = e?;
        d.application_names.push((k.value().to_owned(), v.value()));
    }
    for e in tx.open_table(APP_BY_PHASE)?.iter()? {
        d.application_by_phase.push(e?.0.value());
    }
    for e in tx.open_table(APP_BY_LABEL)?.iter()? {
        let k = e?.0;
        let (l, u) = k.value();
        d.application_by_label.push((l.to_owned(), u));
    }
    for e in tx.open_table(APP_BY_OWNER)?.iter()? {
        let k = e?.0;
        let (o, u) = k.value();
        d.application_by_owner.push((o.to_owned(), u));
    }
    for e in tx.open_table(USERS)?.iter()? {
        let (k, v) = e?;
        d.users.push((k.value().to_owned(), text(v.value())?));
    }
    for e in tx.open_table(TOKENS)?.iter()? {
        let (k, v) = e?;
        d.tokens.push((k.value().to_owned(), v.value().to_owned()));
    }
    for e in tx.open_table(NODES)?.iter()? {
        let (k, v) = e?;
        d.nodes.push((k.value().to_owned(), text(v.value())?));
    }
    for e in tx.open_table(DEDUP)?.iter()? {
        let (k, v) = e?;
        d.dedup.push((k.value(), text(v.value())?));
    }
    for e in tx.open_table(DEDUP_BY_INDEX)?.iter()? {
        let (k, v) = e?;
        d.dedup_by_index.push((k.value(), v.value()));
    }
    Ok(d)
}

/// Replaces every replicated table with the dump's rows.
pub fn restore(txn: &WriteTransaction, d: &Dump) -> Result<(), StoreError> {
    if d.format != DUMP_FORMAT {
        return Err(StoreError::Corrupt(serde::de::Error::custom(format!(
            "dump format {} is not {DUMP_FORMAT}, the one this fishd reads",
            d.format
        ))));
    }
    let mut t = txn.open_table(META)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.meta {
        t.insert(k.as_str(), *v)?;
    }
    let mut t = txn.open_table(LABELS)?;
    t.retain(|_, _| false)?;
    for ((n, ver), v) in &d.labels {
        t.insert((n.as_str(), *ver), v.as_bytes())?;
    }
    let mut t = txn.open_table(APPS)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.applications {
        t.insert(*k, v.as_bytes())?;
    }
    let mut t = txn.open_table(APP_LABELS)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.application_labels {
        t.insert(*k, v.as_bytes())?;
    }
    let mut t = txn.open_table(APP_NAMES)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.application_names {
        t.insert(k.as_str(), *v)?;
    }
    let mut t = txn.open_table(APP_BY_PHASE)?;
    t.retain(|_, _| false)?;
    for k in &d.application_by_phase {
        t.insert(*k, ())?;
    }
    let mut t = txn.open_table(APP_BY_LABEL)?;
    t.retain(|_, _| false)?;
    for (l, u) in &d.application_by_label {
        t.insert((l.as_str(), *u), ())?;
    }
    let mut t = txn.open_table(APP_BY_OWNER)?;
    t.retain(|_, _| false)?;
    for (o, u) in &d.application_by_owner {
        t.insert((o.as_str(), *u), ())?;
    }
    let mut t = txn.open_table(USERS)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.users {
        t.insert(k.as_str(), v.as_bytes())?;
    }
    let mut t = txn.open_table(TOKENS)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.tokens {
        t.insert(k.as_str(), v.as_str())?;
    }
    let mut t = txn.open_table(NODES)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.nodes {
        t.insert(k.as_str(), v.as_bytes())?;
    }
    let mut t = txn.open_table(DEDUP)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.dedup {
        t.insert(*k, v.as_bytes())?;
    }
    let mut t = txn.open_table(DEDUP_BY_INDEX)?;
    t.retain(|_, _| false)?;
    for (k, v) in &d.dedup_by_index {
        t.insert(*k, *v)?;
    }
    Ok(())
}
