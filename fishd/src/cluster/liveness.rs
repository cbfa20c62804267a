//! Which nodes are alive, from Raft's own traffic (contract section 8, "Failures").
//!
//! The leader sends every member an append at least every heartbeat (250 ms); the
//! network client records when each peer last answered one ([`PeerAcks`]). The leader's
//! [`Tracker`] compares that, every second, with `cluster.nodeTimeout` and proposes
//! [`Command::SetNodeReady`] when a node's recorded verdict is wrong, and only then: a
//! quiet cluster writes nothing to the log.
//!
//! # Invariants
//! - Only the leader proposes verdicts, and only while a quorum hears it; the leader
//!   itself is always heard.
//! - A new leader (a new term) waits `nodeTimeout` from its election before calling a
//!   node unheard: it has no history of acks yet. It may call a node heard at once.
//! - The recorded verdicts (`Store::unheard_nodes`) are what is compared against, so a
//!   leader change or a failed proposal is made up for at the next look.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::{Command, NodeId, Store};

/// How often the leader looks.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);
/// A leader that has not heard from a quorum for this long is cut off (as the store's
/// writes judge it) and judges nobody.
const CUT_OFF_AFTER: Duration = Duration::from_secs(3);

/// When each peer last answered one of this node's Raft calls. Written by the
/// network client, read by the leader's tracker; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PeerAcks(Arc<Mutex<HashMap<NodeId, Instant>>>);

impl PeerAcks {
    /// `node` answered now.
    pub fn ack(&self, node: NodeId) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(node, Instant::now());
    }

    /// When `node` last answered, if ever.
    pub fn last(&self, node: NodeId) -> Option<Instant> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&node).copied()
    }
}

/// What the tracker needs to know of the cluster at one look.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub me: NodeId,
    /// The current term while this node leads.
    pub leading: Option<u64>,
    /// Members that have a node record: id and name.
    pub members: Vec<(NodeId, String)>,
    /// Nodes the replicated state records as not heard.
    pub unheard: BTreeSet<String>,
}

/// A verdict to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub node: String,
    pub ready: bool,
    /// How long it has been silent (with `ready: false`); `None`: never heard by this leader.
    pub silent_for: Option<Duration>,
    pub reason: String,
}

/// Decides, at each look, which recorded verdicts are wrong.
pub struct Tracker {
    timeout: Duration,
    acks: PeerAcks,
    /// The term this node leads and when it was first seen leading it.
    led_since: Option<(u64, Instant)>,
}

impl Tracker {
    pub fn new(timeout: Duration, acks: PeerAcks) -> Tracker {
        Tracker { timeout, acks, led_since: None }
    }

    /// The changes to propose now.
    pub fn look(&mut self, view: &View, now: Instant) -> Vec<Change> {
        let Some(term) = view.leading else {
            self.led_since = None;
            return Vec::new();
        };
        let since = match self.led_since {
            Some((t, at)) if t == term => at,
            _ => {
                self.led_since = Some((term, now));
                now
            }
        };
        let grace_over = now.saturating_duration_since(since) >= self.timeout;
        let mut out = Vec::new();
        for (id, name) in &view.members {
            let last = self.acks.last(*id);
            let heard = *id == view.me || last.is_some_and(|t| now.saturating_duration_since(t) < self.timeout);
            if !heard && !grace_over {
                continue;
            }
            let recorded = !view.unheard.contains(name);
            if heard == recorded {
                continue;
            }
            let timeout = humantime::format_duration(self.timeout);
            out.push(if heard {
                Change { node: name.clone(), ready: true, silent_for: None, reason: "heard again".into() }
            } else {
                let silent_for = last.map(|t| now.saturating_duration_since(t));
                let reason = match silent_for {
                    Some(d) => format!(
                        "not heard from for {} (nodeTimeout {timeout})",
                        humantime::format_duration(Duration::from_secs(d.as_secs()))
                    ),
                    None => format!("not heard from since the leader was elected, {timeout} ago (nodeTimeout)"),
                };
                Change { node: name.clone(), ready: false, silent_for, reason }
            });
        }
        out
    }
}

/// The cluster as the tracker's loop sees and changes it.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    fn view(&self) -> Result<View, String>;
    async fn propose(&self, change: &Change) -> Result<(), String>;
}

/// The real cluster: this node's store and Raft.
pub struct StoreCluster(pub Store);

#[async_trait::async_trait]
impl Cluster for StoreCluster {
    fn view(&self) -> Result<View, String> {
        let m = self.0.raft().metrics().borrow().clone();
        // A leader cut off from the majority (openraft 0.9 does not step down) hears
        // nobody and could commit no verdict: it judges nobody, and its grace starts
        // again once a quorum answers.
        let me = self.0.node_id();
        let alone = m.membership_config.membership().voter_ids().all(|v| v == me);
        let heard_by_quorum =
            alone || m.millis_since_quorum_ack.is_some_and(|ms| ms <= CUT_OFF_AFTER.as_millis() as u64);
        let leading = (m.state == openraft::ServerState::Leader && heard_by_quorum).then_some(m.current_term);
        if leading.is_none() {
            return Ok(View { me: self.0.node_id(), ..View::default() });
        }
        let (_, records) = self.0.list_nodes().map_err(|e| e.to_string())?;
        let recorded: BTreeSet<&str> = records.iter().map(|n| n.metadata.name_str()).collect();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .filter(|(_, n)| recorded.contains(n.name.as_str()))
            .map(|(id, n)| (*id, n.name.clone()))
            .collect();
        let unheard = self.0.unheard_nodes().map_err(|e| e.to_string())?;
        Ok(View { me: self.0.node_id(), leading, members, unheard })
    }

    async fn propose(&self, change: &Change) -> Result<(), String> {
        let now = OffsetDateTime::now_utc();
        let last_seen = match change.silent_for {
            Some(d) => time::Duration::try_from(d).ok().and_then(|d| now.checked_sub(d)),
            None if change.ready => Some(now),
            None => None,
        };
        let cmd = Command::SetNodeReady {
            node: change.node.clone(),
            ready: change.ready,
            reason: change.reason.clone(),
            last_seen,
            now,
        };
        match self.0.execute(cmd).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(rejected)) => Err(rejected.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Looks every `every` until `stop`, proposing each change once it is seen.
pub async fn run(cluster: impl Cluster, mut tracker: Tracker, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let view = match cluster.view() {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "cannot read the cluster's state for the liveness check");
                continue;
            }
        };
        for change in tracker.look(&view, Instant::now()) {
            if change.ready {
                info!(node = %change.node, "node {} is heard again: ready", change.node);
            } else {
                warn!(node = %change.node, reason = %change.reason, "node lost: {}", change.node);
            }
            if let Err(e) = cluster.propose(&change).await {
                warn!(node = %change.node, error = %e, "could not record the node's liveness; trying again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A cluster of nodes 1 (this one), 2 and 3 whose verdicts live in memory.
    #[derive(Clone, Default)]
    struct Fake {
        view: Arc<Mutex<View>>,
        proposed: Arc<Mutex<Vec<(Duration, Change)>>>,
        started: Arc<Mutex<Option<Instant>>>,
    }

    impl Fake {
        fn new(term: Option<u64>) -> Fake {
            let f = Fake::default();
            *f.view.lock().unwrap() = View {
                me: 1,
                leading: term,
                members: vec![(1, "a".into()), (2, "b".into()), (3, "c".into())],
                unheard: BTreeSet::new(),
            };
            *f.started.lock().unwrap() = Some(Instant::now());
            f
        }

        fn proposed(&self) -> Vec<(u64, String, bool)> {
            self.proposed.lock().unwrap().iter().map(|(at, c)| (at.as_secs(), c.node.clone(), c.ready)).collect()
        }
    }

    #[async_trait::async_trait]
    impl Cluster for Fake {
        fn view(&self) -> Result<View, String> {
            Ok(self.view.lock().unwrap().clone())
        }
        async fn propose(&self, change: &Change) -> Result<(), String> {
            let at = Instant::now().duration_since(self.started.lock().unwrap().unwrap());
            self.proposed.lock().unwrap().push((at, change.clone()));
            let mut v = self.view.lock().unwrap();
            if change.ready {
                v.unheard.remove(&change.node);
            } else {
                v.unheard.insert(change.node.clone());
            }
            Ok(())
        }
    }

    /// Answers for `nodes` every 250 ms (as to the leader's heartbeats) while `on`.
    fn answer(acks: &PeerAcks, nodes: Vec<NodeId>, on: Arc<std::sync::atomic::AtomicBool>) {
        let acks = acks.clone();
        tokio::spawn(async move {
            loop {
                if on.load(std::sync::atomic::Ordering::SeqCst) {
                    nodes.iter().for_each(|n| acks.ack(*n));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    fn start(fake: &Fake, acks: &PeerAcks) -> CancellationToken {
        let stop = CancellationToken::new();
        let tracker = Tracker::new(Duration::from_secs(15), acks.clone());
        tokio::spawn(run(fake.clone(), tracker, LOOK_EVERY, stop.clone()));
        stop
    }

    /// A node that goes silent is declared lost once, within nodeTimeout and a look;
    /// nothing more is written while nothing changes; when it answers again it is
    /// declared ready once.
    #[tokio::test(start_paused = true)]
    async fn silence_is_recorded_once_and_so_is_the_return() {
        let fake = Fake::new(Some(1));
        let acks = PeerAcks::default();
        let b_on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        answer(&acks, vec![3], Arc::new(true.into()));
        answer(&acks, vec![2], b_on.clone());
        let _stop = start(&fake, &acks);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fake.proposed(), vec![], "everyone answers: nothing to write");

        b_on.store(false, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        let p = fake.proposed();
        assert_eq!(p.len(), 1, "{p:?}");
        let (at, node, ready) = p[0].clone();
        assert_eq!((node.as_str(), ready), ("b", false));
        assert!((45..=47).contains(&at), "declared lost at {at} s, silent since 30 s, nodeTimeout 15 s");
        let change = fake.proposed.lock().unwrap()[0].1.clone();
        assert!(change.reason.contains("not heard from for 15s"), "{}", change.reason);
        assert!(change.silent_for.is_some_and(|d| d >= Duration::from_secs(15)));

        b_on.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let p = fake.proposed();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[1].1.as_str(), p[1].2), ("b", true));
        assert!((90..=91).contains(&p[1].0), "ready again at {} s, answering since 90 s", p[1].0);
    }

    /// A new leader waits nodeTimeout from its election before declaring a node it
    /// never heard lost; a follower declares nothing; a node recorded lost that answers
    /// the new leader is ready again at its first look.
    #[tokio::test(start_paused = true)]
    async fn a_new_leader_gives_silent_nodes_a_grace_of_node_timeout() {
        let fake = Fake::new(None);
        fake.view.lock().unwrap().unheard.insert("c".into());
        let acks = PeerAcks::default();
        answer(&acks, vec![3], Arc::new(true.into()));
        let _stop = start(&fake, &acks);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fake.proposed(), vec![], "a follower proposes nothing");

        // Elected at 30 s: c answers, b never does.
        fake.view.lock().unwrap().leading = Some(2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let p = fake.proposed();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].1.as_str(), p[0].2), ("c", true));
        assert!((30..=31).contains(&p[0].0), "c ready at {} s, the election at 30 s", p[0].0);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let p = fake.proposed();
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p[1].1.as_str(), p[1].2), ("b", false));
        assert!((45..=46).contains(&p[1].0), "b lost at {} s: elected at 30 s + nodeTimeout 15 s", p[1].0);
        let change = fake.proposed.lock().unwrap()[1].1.clone();
        assert_eq!(change.silent_for, None);

        // Another election (term 3): b is still recorded lost, no second write.
        fake.view.lock().unwrap().leading = Some(3);
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(fake.proposed().len(), 2, "{:?}", fake.proposed());
    }
}
