//! Node liveness in the replicated state (contract section 8, "Failures").
//!
//! A node's `status.ready` combines two verdicts, each kept as a mark in `meta` so
//! either can change without knowing the other's last value:
//! - the leader's: the node answered Raft's traffic within `nodeTimeout`
//!   (`unheard-node/<name>` while it did not; [`Command::SetNodeReady`]);
//! - the node's own: it takes new applications (`draining-node/<name>` while it
//!   drains; its `PutNode` reports `ready: false` then).
//!
//! `ready` = heard and not draining. A node found unheard loses, in the same step, its
//! ELECTED, ALLOCATED and DEALLOCATE applications to ERROR "node lost: <name>": the
//! contract names the first two; a DEALLOCATE one goes too, because its release can no
//! longer be confirmed and a dead node holding it could never be removed (`DeleteNode`
//! refuses while it holds applications). A node that comes back releases whatever it
//! still runs for them (the reconciler's `disown`/`adopt`).
//!
//! [`Command::SetNodeReady`]: super::super::command::Command::SetNodeReady

use std::collections::BTreeSet;

use api_types::{HistoryEntry, Node, Phase, WatchEventType};
use redb::{ReadableTable, WriteTransaction};
use time::OffsetDateTime;

use super::super::command::{Outcome, Rejection, Response};
use super::super::tables::*;
use super::super::{Kind, Store, StoreError};
use super::{Tx, write_app};

const UNHEARD: &str = "unheard-node/";
const DRAINING: &str = "draining-node/";

fn unheard_key(node: &str) -> String {
    format!("{UNHEARD}{node}")
}

fn draining_key(node: &str) -> String {
    format!("{DRAINING}{node}")
}

fn marked(txn: &WriteTransaction, key: &str) -> Result<bool, StoreError> {
    Ok(txn.open_table(META)?.get(key)?.is_some())
}

fn mark(txn: &WriteTransaction, key: &str, on: bool, rev: u64) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META)?;
    if on {
        if meta.get(key)?.is_none() {
            meta.insert(key, rev)?;
        }
    } else {
        meta.remove(key)?;
    }
    Ok(())
}

/// Records what the node says of itself in its `PutNode` (its `ready`: it takes new
/// applications) and returns its `status.ready`: that, and heard by the leader.
pub(super) fn reported_ready(tx: &Tx<'_>, node: &str, accepting: bool) -> Result<bool, StoreError> {
    mark(tx.txn, &draining_key(node), !accepting, tx.rev)?;
    Ok(accepting && !marked(tx.txn, &unheard_key(node))?)
}

/// Forgets both marks of a node removed from the cluster.
pub(super) fn forget(tx: &Tx<'_>, node: &str) -> Result<(), StoreError> {
    mark(tx.txn, &unheard_key(node), false, tx.rev)?;
    mark(tx.txn, &draining_key(node), false, tx.rev)
}

/// The leader's verdict on `name`: heard within `nodeTimeout` (`ready`) or not. On
/// "not heard", the node's active applications go to ERROR "node lost" at `now`.
/// Idempotent: a repeated verdict changes nothing.
pub(super) fn set_node_ready(
    tx: &mut Tx<'_>,
    name: &str,
    ready: bool,
    reason: &str,
    last_seen: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    let mut node: Node = match tx.txn.open_table(NODES)?.get(name)? {
        Some(v) => serde_json::from_slice(v.value())?,
        None => return Ok(Err(Rejection::NotFound(format!("node {name:?} not found")))),
    };
    let changed = marked(tx.txn, &unheard_key(name))? == ready;
    mark(tx.txn, &unheard_key(name), !ready, tx.rev)?;
    let was = node.clone();
    node.status.ready = ready && !marked(tx.txn, &draining_key(name))?;
    // A repeated verdict (a retried proposal) changes nothing, `lastSeen` included.
    if changed
        && let Some(t) = last_seen
        && node.status.last_seen.is_none_or(|cur| cur < t)
    {
        node.status.last_seen = Some(t);
    }
    if node != was {
        let rev = tx.bump();
        node.metadata.resource_version = Some(rev.to_string());
        tx.txn.open_table(NODES)?.insert(name, serde_json::to_vec(&node)?.as_slice())?;
        tx.emit(Kind::Node, WatchEventType::Modified, serde_json::to_value(&node)?, None);
    }
    if !ready {
        lose_applications(tx, name, reason, now)?;
    }
    Ok(Ok(Response::Node(Box::new(node))))
}

/// Moves `node`'s ELECTED, ALLOCATED and DEALLOCATE applications to ERROR.
fn lose_applications(tx: &mut Tx<'_>, node: &str, reason: &str, now: OffsetDateTime) -> Result<(), StoreError> {
    let lost = super::held_by(tx, node)?;
    for mut app in lost {
        let old = app.status.phase;
        let message = match old {
            Phase::Deallocate => format!("node lost: {node} ({reason}) while releasing the resource"),
            _ => format!("node lost: {node} ({reason})"),
        };
        app.status.phase = Phase::Error;
        app.status.message = message.clone();
        app.status.history.push(HistoryEntry { phase: Phase::Error, at: now, message });
        write_app(tx, app, old)?;
    }
    Ok(())
}

impl Store {
    /// The nodes the replicated state records as not heard by the leader lately.
    pub fn unheard_nodes(&self) -> Result<BTreeSet<String>, StoreError> {
        let tx = self.read()?;
        let mut out = BTreeSet::new();
        for e in tx.open_table(META)?.range(UNHEARD..)? {
            let (k, _) = e?;
            match k.value().strip_prefix(UNHEARD) {
                Some(name) => out.insert(name.to_owned()),
                None => break,
            };
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use api_types::{Application, ObjectMeta};
    use uuid::Uuid;

    use super::super::super::tests::{items, store};
    use super::*;
    use crate::store::Command;

    fn node(name: &str, accepting: bool) -> Node {
        let mut n = Node {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: ObjectMeta { name: name.parse().ok(), ..Default::default() },
            status: Default::default(),
        };
        n.status.ready = accepting;
        n
    }

    async fn put(s: &Store, n: Node) {
        s.execute(Command::PutNode { node: Box::new(n) }).await.unwrap().unwrap();
    }

    async fn verdict(s: &Store, name: &str, ready: bool, now: OffsetDateTime) -> Outcome {
        let cmd = Command::SetNodeReady {
            node: name.into(),
            ready,
            reason: "not heard from for 15s".into(),
            last_seen: Some(now - time::Duration::seconds(15)),
            now,
        };
        s.execute(cmd).await.unwrap()
    }

    /// Puts NEW application `name` in `phase` on `node`.
    async fn place(s: &Store, name: &str, phase: Phase, node: Option<&str>) -> Uuid {
        let a = s.get_application(name).unwrap().unwrap();
        let mut st = a.status.clone();
        st.phase = phase;
        st.node = node.map(str::to_owned);
        let uid = a.metadata.uid.unwrap();
        s.execute(Command::SetApplicationStatus { uid, expect: Phase::New, status: Box::new(st), expect_node: None })
            .await
            .unwrap()
            .unwrap();
        uid
    }

    fn app(s: &Store, name: &str) -> Application {
        s.get_application(name).unwrap().unwrap()
    }

    /// A node found unheard is not ready and its ELECTED, ALLOCATED and DEALLOCATE
    /// applications are ERROR "node lost: c" with a history entry at the verdict's
    /// time, in the same step; other nodes' and NEW applications are untouched; the
    /// same verdict again changes nothing.
    #[tokio::test]
    async fn a_lost_node_loses_its_applications_once() {
        let (_d, s) = store().await;
        put(&s, node("b", true)).await;
        put(&s, node("c", true)).await;
        let mut yaml =
            "kind: Label\nmetadata: {name: l}\nspec: {definitions: [{driver: test, resources: {cpu: 1, ram: 1}}]}\n"
                .to_owned();
        for a in ["c-elected", "c-allocated", "c-releasing", "b-allocated", "waiting"] {
            yaml += &format!("---\nkind: Application\nmetadata: {{name: {a}}}\nspec: {{label: l}}\n");
        }
        s.execute(Command::Apply { items: items(&yaml), owner: "admin".into(), now: OffsetDateTime::now_utc() })
            .await
            .unwrap()
            .unwrap();
        place(&s, "c-elected", Phase::Elected, Some("c")).await;
        place(&s, "c-allocated", Phase::Allocated, Some("c")).await;
        place(&s, "c-releasing", Phase::Deallocate, Some("c")).await;
        place(&s, "b-allocated", Phase::Allocated, Some("b")).await;
        assert!(s.get_node("c").unwrap().unwrap().status.ready);

        let now = OffsetDateTime::now_utc();
        let rev = s.revision().unwrap();
        verdict(&s, "c", false, now).await.unwrap();
        assert!(s.revision().unwrap() > rev);
        let c = s.get_node("c").unwrap().unwrap();
        assert!(!c.status.ready);
        assert_eq!(c.status.last_seen, Some(now - time::Duration::seconds(15)));
        assert_eq!(s.unheard_nodes().unwrap(), BTreeSet::from(["c".to_owned()]));
        for name in ["c-elected", "c-allocated", "c-releasing"] {
            let a = app(&s, name);
            assert_eq!(a.status.phase, Phase::Error, "{name}");
            assert!(a.status.message.contains("node lost: c"), "{name}: {}", a.status.message);
            let last = a.status.history.last().unwrap();
            assert_eq!((last.phase, last.at), (Phase::Error, now), "{name}");
            assert_eq!(a.status.node.as_deref(), Some("c"), "{name}: where it was lost");
        }
        assert_eq!(app(&s, "b-allocated").status.phase, Phase::Allocated);
        assert_eq!(app(&s, "waiting").status.phase, Phase::New);
        assert!(s.get_node("b").unwrap().unwrap().status.ready);

        // Idempotent: nothing changes, no object gets a new resourceVersion.
        let before: Vec<_> = s.list_applications(&Default::default()).unwrap().1;
        let node_rv = s.get_node("c").unwrap().unwrap().metadata.resource_version;
        verdict(&s, "c", false, now + time::Duration::seconds(5)).await.unwrap();
        assert_eq!(s.list_applications(&Default::default()).unwrap().1, before);
        assert_eq!(s.get_node("c").unwrap().unwrap().metadata.resource_version, node_rv);
        assert!(matches!(verdict(&s, "nobody", false, now).await, Err(Rejection::NotFound(_))));
    }

    /// `ready` is heard AND accepting, whichever of the two changes last.
    #[tokio::test]
    async fn ready_needs_the_leader_to_hear_the_node_and_the_node_to_accept() {
        let (_d, s) = store().await;
        let ready = |s: &Store| s.get_node("c").unwrap().unwrap().status.ready;
        put(&s, node("c", true)).await;
        assert!(ready(&s));
        let now = OffsetDateTime::now_utc();
        verdict(&s, "c", false, now).await.unwrap();
        assert!(!ready(&s));
        // Its own report (restarted, accepting) does not make it ready: the leader must hear it.
        put(&s, node("c", true)).await;
        assert!(!ready(&s));
        verdict(&s, "c", true, now).await.unwrap();
        assert!(ready(&s));
        // Draining: not ready, though heard; heard again while draining: still not.
        put(&s, node("c", false)).await;
        assert!(!ready(&s));
        verdict(&s, "c", true, now).await.unwrap();
        assert!(!ready(&s));
        put(&s, node("c", true)).await;
        assert!(ready(&s));
        // Removed and joined again: no verdict of the old record is left.
        verdict(&s, "c", false, now).await.unwrap();
        s.execute(Command::DeleteNode { node: "c".into() }).await.unwrap().unwrap();
        assert!(s.unheard_nodes().unwrap().is_empty());
    }
}
