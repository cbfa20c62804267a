//! Node-local tables derived from the replicated applications, so that what runs
//! regularly costs O(active applications), never O(stored):
//! - [`LOCAL_FINISHED`]: every DEALLOCATED or ERROR application by the time it
//!   finished — the purge order. The leader reads only the due head of it, instead of
//!   every finished application sitting in the reconcile queue with a timer.
//! - [`LOCAL_PHASE_COUNTS`]: how many applications each phase holds (the gauges).
//!
//! # Invariants
//! - Written by the state machine in the transaction that changes the applications
//!   (creation, every phase change through `write_app`, purge), so they are never seen
//!   out of step with them, also after a crash (the replay rewrites both together).
//! - Not replicated and not in snapshots or backups: installing a snapshot or
//!   restoring a backup rebuilds them from the loaded applications ([`rebuild`], in
//!   the same transaction), and so does opening a store made by an older fishd (no
//!   [`DERIVED_VERSION`] mark in `local_meta`).

use api_types::{Application, Phase};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use time::OffsetDateTime;

use super::tables::{APPS, LOCAL_META};
use super::{StoreError, phase_code};

/// (unix milliseconds it finished at, uid) of every DEALLOCATED or ERROR application.
pub const LOCAL_FINISHED: TableDefinition<(i64, u128), ()> = TableDefinition::new("local_finished");
/// phase code → applications in that phase.
pub const LOCAL_PHASE_COUNTS: TableDefinition<u8, u64> = TableDefinition::new("local_phase_counts");
/// `local_meta` key of the version the derived tables were built with.
const MARK: &str = "derived_version";
/// Bumped whenever what the tables hold changes: a store marked with another version
/// rebuilds them at open.
pub const DERIVED_VERSION: u64 = 1;

/// When a finished application finished: its last history entry (its creation if it
/// has none). Its purge is due `historyRetention` after this.
pub fn finished_at(app: &Application) -> OffsetDateTime {
    app.status.history.last().map(|h| h.at).or(app.metadata.created_at).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The key time of [`LOCAL_FINISHED`].
pub fn millis(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(if t.year() < 1970 { i64::MIN } else { i64::MAX })
}

fn uid_of(app: &Application) -> u128 {
    app.metadata.uid.map(|u| u.as_u128()).unwrap_or_default()
}

fn add_count(txn: &WriteTransaction, phase: Phase, delta: i64) -> Result<(), StoreError> {
    add_counts(txn, &[(phase, delta)])
}

/// Adds each delta to its phase's count, opening the table once (a table open and
/// close is a good part of a small write's redb work).
fn add_counts(txn: &WriteTransaction, deltas: &[(Phase, i64)]) -> Result<(), StoreError> {
    let mut t = txn.open_table(LOCAL_PHASE_COUNTS)?;
    for &(phase, delta) in deltas {
        let code = phase_code(phase);
        let cur = t.get(code)?.map(|v| v.value()).unwrap_or(0);
        t.insert(code, cur.saturating_add_signed(delta))?;
    }
    Ok(())
}

/// A new application (NEW).
pub(super) fn created(txn: &WriteTransaction, app: &Application) -> Result<(), StoreError> {
    add_count(txn, app.status.phase, 1)?;
    if app.status.phase.is_terminal() {
        txn.open_table(LOCAL_FINISHED)?.insert((millis(finished_at(app)), uid_of(app)), ())?;
    }
    Ok(())
}

/// `new` replaces `old` (the stored version, needed only when `old` was finished:
/// its key in [`LOCAL_FINISHED`]). Call before the new version is written.
pub(super) fn changed(txn: &WriteTransaction, old_phase: Phase, new: &Application) -> Result<(), StoreError> {
    let uid = uid_of(new);
    if old_phase.is_terminal() {
        // Rare (a note on a finished application): the old key needs the stored version.
        let old: Option<Application> = match txn.open_table(APPS)?.get(uid)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        };
        if let Some(old) = old {
            txn.open_table(LOCAL_FINISHED)?.remove((millis(finished_at(&old)), uid))?;
        }
    }
    if new.status.phase.is_terminal() {
        txn.open_table(LOCAL_FINISHED)?.insert((millis(finished_at(new)), uid), ())?;
    }
    if old_phase != new.status.phase {
        add_counts(txn, &[(old_phase, -1), (new.status.phase, 1)])?;
    }
    Ok(())
}

/// `app` (as stored) is purged.
pub(super) fn removed(txn: &WriteTransaction, app: &Application) -> Result<(), StoreError> {
    add_count(txn, app.status.phase, -1)?;
    if app.status.phase.is_terminal() {
        txn.open_table(LOCAL_FINISHED)?.remove((millis(finished_at(app)), uid_of(app)))?;
    }
    Ok(())
}

/// Builds the derived tables again from the applications in `txn` (O(stored): after
/// a snapshot install, a restore, or an upgrade only) and marks them current.
pub fn rebuild(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(LOCAL_FINISHED)?.retain(|_, _| false)?;
    txn.open_table(LOCAL_PHASE_COUNTS)?.retain(|_, _| false)?;
    let mut counts = [0u64; Phase::ALL.len()];
    {
        let apps = txn.open_table(APPS)?;
        let mut fin = txn.open_table(LOCAL_FINISHED)?;
        for e in apps.iter()? {
            let (k, v) = e?;
            let app: Application = serde_json::from_slice(v.value())?;
            counts[usize::from(phase_code(app.status.phase))] += 1;
            if app.status.phase.is_terminal() {
                fin.insert((millis(finished_at(&app)), k.value()), ())?;
            }
        }
    }
    {
        let mut t = txn.open_table(LOCAL_PHASE_COUNTS)?;
        for phase in Phase::ALL {
            t.insert(phase_code(phase), counts[usize::from(phase_code(phase))])?;
        }
    }
    txn.open_table(LOCAL_META)?.insert(MARK, DERIVED_VERSION)?;
    Ok(())
}

/// Rebuilds the derived tables if they were not built by this version (a store of an
/// older fishd); otherwise nothing.
pub(super) fn ensure(txn: &WriteTransaction) -> Result<bool, StoreError> {
    let mark = txn.open_table(LOCAL_META)?.get(MARK)?.map(|v| v.value());
    if mark == Some(DERIVED_VERSION) {
        return Ok(false);
    }
    rebuild(txn)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use api_types::HistoryEntry;
    use redb::{Database, ReadableDatabase};
    use uuid::Uuid;

    use super::*;
    use crate::store::tests::items;
    use crate::store::{Command, Store, backup};

    /// Phase counts and finished keys.
    type Derived = (Vec<(u8, u64)>, Vec<(i64, u128)>);

    fn stored(db: &Database) -> Derived {
        let tx = db.begin_read().unwrap();
        let counts = tx.open_table(LOCAL_PHASE_COUNTS).unwrap();
        let fin = tx.open_table(LOCAL_FINISHED).unwrap();
        (
            counts.iter().unwrap().map(|e| e.map(|(k, v)| (k.value(), v.value())).unwrap()).collect(),
            fin.iter().unwrap().map(|e| e.map(|(k, _)| k.value()).unwrap()).collect(),
        )
    }

    /// What a rebuild from the applications makes (in a transaction not committed).
    fn rebuilt(db: &Database) -> Derived {
        let txn = db.begin_write().unwrap();
        rebuild(&txn).unwrap();
        let counts = txn.open_table(LOCAL_PHASE_COUNTS).unwrap();
        let fin = txn.open_table(LOCAL_FINISHED).unwrap();
        (
            counts.iter().unwrap().map(|e| e.map(|(k, v)| (k.value(), v.value())).unwrap()).collect(),
            fin.iter().unwrap().map(|e| e.map(|(k, _)| k.value()).unwrap()).collect(),
        )
    }

    const LABEL: &str =
        "kind: Label\nmetadata: {name: l}\nspec: {definitions: [{driver: test, resources: {cpu: 1, ram: 1}}]}\n";

    /// `n` NEW applications `<prefix>-<i>`; their uids.
    async fn create(s: &Store, prefix: &str, n: usize) -> Vec<Uuid> {
        let yaml: String = (0..n)
            .map(|i| format!("---\nkind: Application\nmetadata: {{name: {prefix}-{i}}}\nspec: {{label: l}}\n"))
            .collect();
        let now = OffsetDateTime::now_utc();
        s.execute(Command::Apply { items: items(&yaml), owner: "admin".into(), now }).await.unwrap().unwrap();
        (0..n).map(|i| s.get_application(&format!("{prefix}-{i}")).unwrap().unwrap().metadata.uid.unwrap()).collect()
    }

    /// Moves `uid` from `from` to `to` with a history entry at `at`.
    async fn finish(s: &Store, uid: Uuid, from: Phase, to: Phase, at: OffsetDateTime) {
        let mut status = s.get_application_by_uid(uid).unwrap().unwrap().status;
        status.phase = to;
        status.history.push(HistoryEntry { phase: to, at, message: "test".into() });
        let cmd = Command::SetApplicationStatus { uid, expect: from, status: Box::new(status), expect_node: None };
        s.execute(cmd).await.unwrap().unwrap();
    }

    async fn store_with_history() -> (tempfile::TempDir, Store, Vec<Uuid>) {
        let (dir, s) = crate::store::tests::store().await;
        s.execute(Command::Apply { items: items(LABEL), owner: "admin".into(), now: OffsetDateTime::now_utc() })
            .await
            .unwrap()
            .unwrap();
        let uids = create(&s, "a", 6).await;
        let t0 = OffsetDateTime::now_utc();
        let at = |s: i64| t0 + time::Duration::seconds(s);
        // Finished out of creation order: the index is by finish time.
        finish(&s, uids[0], Phase::New, Phase::Deallocated, at(30)).await;
        finish(&s, uids[1], Phase::New, Phase::Error, at(10)).await;
        let cmd = Command::RequestDeallocate { uid: uids[2], by: "t".into(), now: at(20) };
        s.execute(cmd).await.unwrap().unwrap();
        finish(&s, uids[3], Phase::New, Phase::Elected, at(1)).await;
        // A note on a finished application moves its key (its last history entry).
        finish(&s, uids[0], Phase::Deallocated, Phase::Deallocated, at(40)).await;
        s.execute(Command::PurgeApplication { uid: uids[1] }).await.unwrap().unwrap();
        (dir, s, uids)
    }

    #[tokio::test]
    async fn derived_tables_follow_every_change_of_the_applications() {
        let (_d, s, uids) = store_with_history().await;
        assert_eq!(s.count_in_phase(Phase::New).unwrap(), 2);
        assert_eq!(s.count_in_phase(Phase::Elected).unwrap(), 1);
        assert_eq!(s.count_in_phase(Phase::Deallocated).unwrap(), 2);
        assert_eq!(s.count_in_phase(Phase::Error).unwrap(), 0, "the purged one is not counted");
        let far = OffsetDateTime::now_utc() + time::Duration::hours(1);
        assert_eq!(s.finished_by(far, 10).unwrap(), vec![uids[2], uids[0]], "in the order they finished");
        assert_eq!(s.finished_by(far, 1).unwrap(), vec![uids[2]], "at most the limit");
        let before = OffsetDateTime::now_utc() + time::Duration::seconds(25);
        assert_eq!(s.finished_by(before, 10).unwrap(), vec![uids[2]], "only those due");
        let first = s.first_finished().unwrap().unwrap();
        let t2 = finished_at(&s.get_application_by_uid(uids[2]).unwrap().unwrap());
        assert_eq!(millis(first), millis(t2));
        assert_eq!(stored(&s.db), rebuilt(&s.db), "kept in step with the applications");
    }

    #[tokio::test]
    async fn derived_tables_are_rebuilt_after_a_restore_and_an_upgrade() {
        let (dir, s, _) = store_with_history().await;
        let want = stored(&s.db);
        // A restore (what a snapshot install does too: `backup::load`).
        let mut buf = Vec::new();
        s.backup(&mut buf).unwrap();
        let restored = dir.path().join("restored");
        backup::restore(&restored, buf.as_slice()).unwrap();
        let r = Store::open(&restored.join("fish.redb")).await.unwrap();
        assert_eq!(stored(&r.db), want);
        assert_eq!(r.count_in_phase(Phase::Deallocated).unwrap(), 2);
        r.close().await;
        // A store of a fishd without them: built when it opens.
        let path = dir.path().join("fish.redb");
        s.close().await;
        drop(s);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(LOCAL_FINISHED).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(LOCAL_PHASE_COUNTS).unwrap().retain(|_, _| false).unwrap();
            txn.open_table(LOCAL_META).unwrap().remove(MARK).unwrap();
            txn.commit().unwrap();
        }
        let s = Store::open(&path).await.unwrap();
        assert_eq!(stored(&s.db), want);
    }
}
