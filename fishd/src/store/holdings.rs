//! Node-local and in memory: the applications each node holds now (ELECTED,
//! ALLOCATED or DEALLOCATE on it), so a node's election pass finds its own at a
//! lookup instead of scanning every active application of the cluster (two thirds of
//! them other nodes' in a three-node cluster) after every event batch.
//!
//! # Invariants
//! - Changed only by the state machine, with what the transaction it commits changed
//!   (see [`Holdings::commit`]), and rebuilt from the stored applications when the
//!   store opens and when a snapshot is installed.
//! - A commit and its change of the holdings happen under one lock, and a reader opens
//!   its read transaction under that lock ([`Holdings::view`]): the holdings it gets
//!   are those of exactly the state that transaction reads, never older or newer.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use api_types::Phase;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable};
use uuid::Uuid;

use super::tables::{APP_BY_PHASE, APPS};
use super::{StoreError, phase_code, state};

/// The phases in which an application holds (or is acquiring, or releasing) room on
/// its node.
pub const HOLDING: [Phase; 3] = [Phase::Elected, Phase::Allocated, Phase::Deallocate];

/// An application's holder after a change: `None` when it holds nothing anywhere
/// (NEW, finished, purged).
pub type Change = (Uuid, Option<String>);

/// The holder of an application in `phase` on `node` (see [`Change`]).
pub fn holder(phase: Phase, node: Option<&str>) -> Option<String> {
    if HOLDING.contains(&phase) { node.map(str::to_owned) } else { None }
}

/// Which node holds which applications (see the module).
#[derive(Default)]
pub struct Holdings(Mutex<Held>);

#[derive(Default)]
struct Held {
    node_of: HashMap<Uuid, String>,
    by_node: HashMap<String, HashSet<Uuid>>,
}

impl Held {
    fn set(&mut self, uid: Uuid, holder: Option<String>) {
        if let Some(old) = self.node_of.remove(&uid)
            && let Some(set) = self.by_node.get_mut(&old)
        {
            set.remove(&uid);
        }
        if let Some(node) = holder {
            self.by_node.entry(node.clone()).or_default().insert(uid);
            self.node_of.insert(uid, node);
        }
    }

    /// The holdings stored in `tx` (O(active applications): at open and at a snapshot
    /// install only).
    fn read<T: ReadableTable<(u8, u128), ()>, A: ReadableTable<u128, &'static [u8]>>(
        idx: &T,
        apps: &A,
    ) -> Result<Held, StoreError> {
        let mut held = Held::default();
        for phase in HOLDING {
            let code = phase_code(phase);
            for e in idx.range((code, 0)..=(code, u128::MAX))? {
                let uid = e?.0.value().1;
                if let Some(app) = state::read_app(apps, uid)? {
                    held.set(Uuid::from_u128(uid), holder(app.status.phase, app.status.node.as_deref()));
                }
            }
        }
        Ok(held)
    }
}

impl Holdings {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the holdings with those stored in `db` now.
    pub fn load(&self, db: &Database) -> Result<(), StoreError> {
        let mut held = self.lock();
        let tx = db.begin_read()?;
        *held = Held::read(&tx.open_table(APP_BY_PHASE)?, &tx.open_table(APPS)?)?;
        Ok(())
    }

    /// Runs `commit` (the commit of the transaction that made `changes`, in their
    /// order) and, if it succeeds, applies the changes, both under the lock.
    pub fn commit<T>(
        &self,
        changes: Vec<Change>,
        commit: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut held = self.lock();
        let out = commit()?;
        for (uid, holder) in changes {
            held.set(uid, holder);
        }
        Ok(out)
    }

    /// Runs `commit` (of a transaction that replaced the applications wholesale: a
    /// snapshot install) and, if it succeeds, rebuilds the holdings from the stored
    /// state, both under the lock.
    pub fn commit_and_reload(
        &self,
        db: &Database,
        commit: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut held = self.lock();
        commit()?;
        let tx = db.begin_read()?;
        *held = Held::read(&tx.open_table(APP_BY_PHASE)?, &tx.open_table(APPS)?)?;
        Ok(())
    }

    /// The applications `node` holds now.
    pub fn held_by(&self, node: &str) -> Vec<Uuid> {
        self.lock().by_node.get(node).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }

    /// A read transaction of the state as it is now and the applications `node` holds
    /// in it.
    pub fn view(&self, db: &Database, node: &str) -> Result<(ReadTransaction, Vec<Uuid>), StoreError> {
        let held = self.lock();
        let tx = db.begin_read()?;
        let uids = held.by_node.get(node).map(|s| s.iter().copied().collect()).unwrap_or_default();
        Ok((tx, uids))
    }
}
