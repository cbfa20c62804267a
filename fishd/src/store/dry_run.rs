//! Dry runs: a command applied by the real state machine in a write transaction
//! that is always aborted.
//!
//! # Guarantees
//! - Nothing is written: the transaction is aborted, never committed, and the command
//!   never enters the writer's queue (or, in a cluster, the replicated log).
//! - The answer is what the command would answer now, including the objects it would
//!   store, read back inside the same transaction (so server defaults, generated
//!   names and the next label version are the server's own).
//! - redb allows one write transaction at a time, so a dry run waits for (and holds
//!   off) the writer for the length of one command; it runs on a blocking thread.

use api_types::{ApplyAction, ApplyResult};
use redb::{Database, ReadableTable, WriteTransaction};

use super::command::{Command, Outcome, Response};
use super::state::{self, Tx, read_app, read_label, read_user};
use super::tables::*;
use super::{Store, StoreError};

impl Store {
    /// What `command` would do, with nothing written; for applies, the objects as they
    /// would be stored, one per result (`null` for a pruned one).
    pub async fn dry_run(&self, command: Command) -> Result<(Outcome, Vec<serde_json::Value>), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || dry_run(&db, command)).await.map_err(|_| StoreError::Closed)?
    }
}

fn dry_run(db: &Database, command: Command) -> Result<(Outcome, Vec<serde_json::Value>), StoreError> {
    let txn = db.begin_write()?;
    let result = (|| {
        // The next entry's revision is at least this (Raft's own entries may come first).
        let rev = txn.open_table(META)?.get("revision")?.map(|v| v.value()).unwrap_or(0) + 1;
        let mut tx = Tx { txn: &txn, rev, events: Vec::new(), held: Vec::new() };
        let outcome = state::apply(&mut tx, command)?;
        let objects = match &outcome {
            Ok(Response::Applied(results)) => {
                results.iter().map(|r| stored_object(&txn, r)).collect::<Result<Vec<_>, _>>()?
            }
            _ => Vec::new(),
        };
        Ok((outcome, objects))
    })();
    txn.abort()?;
    result
}

/// The object a result names, as the transaction holds it now.
fn stored_object(txn: &WriteTransaction, r: &ApplyResult) -> Result<serde_json::Value, StoreError> {
    if r.action == ApplyAction::Pruned {
        return Ok(serde_json::Value::Null);
    }
    Ok(match r.kind.as_str() {
        "Label" => serde_json::to_value(read_label(&txn.open_table(LABELS)?, &r.name, r.version)?)?,
        "Application" => match txn.open_table(APP_NAMES)?.get(r.name.as_str())?.map(|g| g.value()) {
            Some(uid) => serde_json::to_value(read_app(&txn.open_table(APPS)?, uid)?)?,
            None => serde_json::Value::Null,
        },
        // The stored user never carries the password or the token.
        "User" => serde_json::to_value(read_user(&txn.open_table(USERS)?, &r.name)?.map(|rec| rec.user))?,
        _ => serde_json::Value::Null,
    })
}
