//! Applysets: the labels and users a GitOps directory applied under one name, so a
//! later apply of the same set can delete (prune) what left the directory.
//!
//! # Guarantees
//! - Membership is recorded by the same command that applies the objects, in the same
//!   transaction: a member exists only if an apply under its set succeeded.
//! - A prune deletes only members of the set being applied; objects applied outside
//!   the set (or under another set) are never touched.
//! - Everything is checked before anything is written: a prune that would delete the
//!   user applying it is refused, and nothing of the apply is kept.
//! - Applications are not members: they are requests, deallocated, never pruned.

use std::collections::BTreeSet;

use api_types::{ApplyAction, ApplyResult};
use redb::{ReadableTable, TableDefinition};
use time::OffsetDateTime;

use super::StoreError;
use super::command::{ApplyItem, Outcome, Rejection, Response};
use super::state::{Tx, apply_items, delete_label, delete_user};

/// (set, kind, name) → (): the members of each applyset.
pub const APPLYSET_MEMBERS: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("applyset_members");

/// The member an apply item makes, if its kind can be one.
fn member_of(item: &ApplyItem) -> Option<(String, String)> {
    match item {
        ApplyItem::Label { label, .. } => Some(("Label".into(), label.metadata.name_str().to_owned())),
        ApplyItem::User { record, .. } => Some(("User".into(), record.user.metadata.name_str().to_owned())),
        ApplyItem::Application { .. } => None,
    }
}

/// The members of `set` recorded in the transaction, as (kind, name).
pub(super) fn members<T: ReadableTable<(&'static str, &'static str, &'static str), ()>>(
    table: &T,
    set: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for e in table.range((set, "", "")..)? {
        let (k, _) = e?;
        let (s, kind, name) = k.value();
        if s != set {
            break;
        }
        out.push((kind.to_owned(), name.to_owned()));
    }
    Ok(out)
}

/// Applies `items` under `set`, recording labels and users as members, and with
/// `prune` deletes the members that `items` no longer hold.
pub(super) fn apply_set(
    tx: &mut Tx<'_>,
    set: &str,
    prune: bool,
    items: Vec<ApplyItem>,
    owner: &str,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    let wanted: BTreeSet<(String, String)> = items.iter().filter_map(member_of).collect();
    let to_prune: Vec<(String, String)> = if prune {
        let table = tx.txn.open_table(APPLYSET_MEMBERS)?;
        members(&table, set)?.into_iter().filter(|m| !wanted.contains(m)).collect()
    } else {
        Vec::new()
    };
    if to_prune.iter().any(|(kind, name)| kind == "User" && name == owner) {
        return Ok(Err(Rejection::Conflict(format!(
            "applyset {set:?} would prune user {owner:?}, the user applying it; apply it as another admin"
        ))));
    }
    let mut results = match apply_items(tx, items, owner, now)? {
        Ok(Response::Applied(results)) => results,
        other => return Ok(other),
    };
    {
        let mut table = tx.txn.open_table(APPLYSET_MEMBERS)?;
        for (kind, name) in &wanted {
            table.insert((set, kind.as_str(), name.as_str()), ())?;
        }
        for (kind, name) in &to_prune {
            table.remove((set, kind.as_str(), name.as_str()))?;
        }
    }
    for (kind, name) in to_prune {
        let outcome = match kind.as_str() {
            "Label" => delete_label(tx, &name, None)?,
            "User" => delete_user(tx, &name)?,
            _ => continue,
        };
        // Already deleted by hand: the membership goes, nothing is reported.
        if outcome.is_ok() {
            results.push(ApplyResult { kind, name, version: None, action: ApplyAction::Pruned });
        }
    }
    Ok(Ok(Response::Applied(results)))
}

/// Checks an applyset name: it is a key in the store and a word on a command line.
pub fn check_set_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_');
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    if !name.chars().all(ok_char) {
        return Err("may contain only lowercase letters, digits, '-', '.' and '_'".into());
    }
    Ok(())
}
