//! This node's side of the election: what it can fit, sent as votes.
//!
//! The pass walks NEW applications in creation order (uid v7 order) and votes for each
//! whose definition fits now, reserving its resources before looking at the next one,
//! so nothing is promised twice. The state machine ([`crate::store::ballots`]) elects
//! when every ready node has voted (at once on a single node) and writes the waiting
//! reasons into `status.message`. The leader closes rounds a silent node holds up.

use std::collections::BTreeMap;
use std::time::Duration;

use api_types::{Application, Definition, NodeCapacity};
use futures::future::join_all;
use time::OffsetDateTime;
use uuid::Uuid;

use super::Ctx;
use super::capacity::{Ledger, Shortage, filter_matches, fits};
use crate::store::ballots::{BallotVote, Room, Vote};
use crate::store::holdings::HOLDING;
use crate::store::{Command, ElectionView, StoreError};

/// What the election decided for one application.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Elect this definition index.
    Elect(usize),
    /// Nothing fits now; the reason for the user.
    Wait(String),
}

/// Whether the node can ever run a definition (see `Driver::supports`).
pub type Supports<'a> = dyn Fn(&Definition) -> Result<(), String> + 'a;

/// Chooses the first definition, starting at `start` and wrapping round, that this
/// node can run now.
pub fn choose(
    definitions: &[Definition],
    start: usize,
    node: &super::NodeIdentity,
    ledger: &Ledger,
    driver_capacity: &BTreeMap<String, Option<NodeCapacity>>,
    availability: &BTreeMap<String, Result<(), String>>,
    supported: Option<&Supports<'_>>,
) -> Decision {
    let n = definitions.len();
    if n == 0 {
        return Decision::Wait("label has no definitions".into());
    }
    let mut reasons = Vec::new();
    let mut never = true;
    for k in 0..n {
        let i = (start + k) % n;
        let def = &definitions[i];
        let why = |m: &str| format!("definition {i} ({}): {m}", def.driver);
        let Some(dcap) = driver_capacity.get(&def.driver) else {
            reasons.push(why(&format!("no driver {:?} is configured on node {}", def.driver, node.name)));
            continue;
        };
        if let Some(Err(reason)) = availability.get(&def.driver) {
            never = false;
            reasons.push(why(&format!("driver unavailable: {reason}")));
            continue;
        }
        if let Err(m) = filter_matches(&def.resources.node_filter, &node.name, &node.identifiers) {
            reasons.push(why(&m));
            continue;
        }
        if let Some(Err(m)) = supported.map(|s| s(def)) {
            reasons.push(why(&m));
            continue;
        }
        let node_scope = format!("node {}", node.name);
        let mut result = fits(&def.resources, &node.capacity, &ledger.node, &node_scope);
        if result.is_ok()
            && let Some(cap) = dcap
        {
            let used = ledger.drivers.get(&def.driver).copied().unwrap_or_default();
            result = fits(&def.resources, cap, &used, &format!("driver {}", def.driver));
        }
        match result {
            Ok(()) => return Decision::Elect(i),
            Err(s) => {
                if matches!(s, Shortage::Busy(_)) {
                    never = false;
                }
                reasons.push(why(s.message()));
            }
        }
    }
    let prefix = if never { "can never fit on this node: " } else { "waiting for capacity: " };
    // Bounded: a label with thousands of definitions must not give every waiting
    // application a message of megabytes.
    let more = reasons.len().saturating_sub(MAX_REASONS);
    reasons.truncate(MAX_REASONS);
    let mut message = format!("{prefix}{}", reasons.join("; "));
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Decision::Wait(message)
}

/// Definitions' reasons shown in a waiting application's message; the rest are counted.
pub const MAX_REASONS: usize = 5;

/// Loads the definition an active application reserves, through the context's cache.
async fn reserved_definition(ctx: &Ctx, app: &Application) -> Result<Option<Definition>, StoreError> {
    let Some(uid) = app.metadata.uid else { return Ok(None) };
    if let Some(d) = ctx.definitions.lock().unwrap_or_else(|e| e.into_inner()).get(&uid) {
        return Ok(Some(d.clone()));
    }
    let Some(idx) = app.status.definition else { return Ok(None) };
    let Some(label) = ctx.store.application_label(uid)? else { return Ok(None) };
    let def = label.spec.definitions.get(idx).cloned();
    if let Some(d) = &def {
        ctx.definitions.lock().unwrap_or_else(|e| e.into_inner()).insert(uid, d.clone());
    }
    Ok(def)
}

/// What this node's ELECTED, ALLOCATED and DEALLOCATE applications reserve now.
pub async fn current_ledger(ctx: &Ctx) -> Result<Ledger, StoreError> {
    ledger_of(ctx, ctx.store.held_by(&ctx.node.name)).await
}

/// What the applications this node holds (`held`: ELECTED, ALLOCATED or DEALLOCATE
/// here, see [`Store::election_view`](crate::store::Store::election_view)) reserve.
///
/// One elected here has its definition cached (see `Ctx::definitions`): reserving it
/// needs no read, so a pass costs a map lookup per application this node holds. The
/// pass runs after every creation and every deallocation; it used to scan every active
/// application of the cluster (in a three-node cluster two thirds of them other
/// nodes') and that scan was much of a node's election work in a burst.
async fn ledger_of(ctx: &Ctx, held: Vec<Uuid>) -> Result<Ledger, StoreError> {
    let mut ledger = Ledger::default();
    let uncached: Vec<Uuid> = {
        let defs = ctx.definitions.lock().unwrap_or_else(|e| e.into_inner());
        held.into_iter()
            .filter(|uid| match defs.get(uid) {
                Some(def) => {
                    ledger.reserve(def);
                    false
                }
                None => true,
            })
            .collect()
    };
    for uid in uncached {
        let Some(app) = ctx.store.get_application_by_uid(uid)? else { continue };
        // As read now, a newer state than `held`'s: one that left this node since
        // (back to NEW, finished) holds nothing here any more.
        if app.status.node.as_deref() != Some(ctx.node.name.as_str()) || !HOLDING.contains(&app.status.phase) {
            continue;
        }
        if let Some(def) = reserved_definition(ctx, &app).await? {
            ledger.reserve(&def);
        }
    }
    Ok(ledger)
}

/// Probes every driver instance; the answers are kept for the Node status.
pub async fn probe_drivers(ctx: &Ctx) -> BTreeMap<String, Result<(), String>> {
    let probes = ctx.drivers.iter().map(|(name, d)| async move { (name.clone(), d.available().await) });
    let availability: BTreeMap<_, _> = join_all(probes).await.into_iter().collect();
    *ctx.availability.lock().unwrap_or_else(|e| e.into_inner()) = availability.clone();
    availability
}

/// This node's free room as the vote rule compares it.
fn room(capacity: &NodeCapacity, ledger: &Ledger) -> Room {
    Room {
        slots: capacity.slots.saturating_sub(ledger.node.slots),
        cpu: capacity.cpu.saturating_sub(ledger.node.cpu),
        ram: capacity.ram.saturating_sub(ledger.node.ram),
    }
}

/// One election pass: this node's votes for every NEW application (see
/// [`crate::store::ballots`] for the rule that turns votes into an election).
///
/// Applications are visited in creation order, reserving as it goes, so this node
/// promises its room to the oldest applications first (later ones that fit may still
/// go first: backfill). A `Fit` vote already committed is a promise kept: its room is
/// reserved before anything else and the vote is not sent again. Only votes that
/// differ from the committed ones are sent, all in one command.
pub async fn pass(ctx: &Ctx) -> Result<(), StoreError> {
    // NEW, its ballots and what this node holds, as of one state. An application
    // becomes ELECTED here only through a Fit vote of this node, committed before this
    // pass (a pass waits for its votes to be applied here): while NEW that vote in its
    // ballot reserves its room (below), once elected the ledger does. Read apart, an
    // election between the reads could leave it in neither.
    let ElectionView { new, ballots, held } = ctx.store.election_view(&ctx.node.name)?;
    let mut ledger = ledger_of(ctx, held).await?;
    *ctx.ledger.lock().unwrap_or_else(|e| e.into_inner()) = ledger.clone();
    if new.is_empty() {
        return Ok(());
    }
    let me = ctx.node.name.as_str();
    let availability = probe_drivers(ctx).await;
    let driver_capacity: BTreeMap<String, Option<NodeCapacity>> =
        ctx.drivers.iter().map(|(n, d)| (n.clone(), d.capacity())).collect();
    let maintenance = ctx.store.get_node(me)?.is_some_and(|n| n.status.maintenance);
    let supports = |def: &Definition| match ctx.drivers.get(&def.driver) {
        Some(d) => d.supports(def),
        None => Ok(()),
    };
    // Promises first: the room of every committed Fit vote stays reserved. A node that
    // stopped taking work (draining, maintenance) withdraws them: its votes become Wait.
    let taking = ctx.accepting() && !maintenance;
    let labels = ctx.new_labels(&new)?;
    let mut promised = vec![false; new.len()];
    for (k, (ballot, label)) in ballots.iter().zip(&labels).enumerate().filter(|_| taking) {
        if let Some(Vote::Fit { definition, .. }) = ballot.votes.get(me)
            && let Some(label) = label
            && let Some(def) = label.spec.definitions.get(*definition)
        {
            ledger.reserve(def);
            promised[k] = true;
        }
    }
    let mut votes = Vec::new();
    for (((uid, ballot), label), promised) in new.into_iter().zip(ballots).zip(labels).zip(promised) {
        if promised {
            continue;
        }
        let Some(label) = label else { continue };
        let Some(app) = ctx.store.get_application_by_uid(uid)? else { continue };
        let start = app.status.attempts as usize;
        let decision = if !ctx.accepting() {
            Decision::Wait(format!("node {me} is shutting down and takes no new applications"))
        } else if maintenance {
            Decision::Wait(format!("node {me} is in maintenance"))
        } else if let Some(reason) = ctx.secrets.hold(&app) {
            // Its secrets cannot be minted now (a CI system's outage or rate limit).
            Decision::Wait(reason)
        } else {
            choose(&label.spec.definitions, start, &ctx.node, &ledger, &driver_capacity, &availability, Some(&supports))
        };
        let vote = match decision {
            Decision::Elect(i) => {
                let def = &label.spec.definitions[i];
                let free = room(&ctx.node.capacity, &ledger);
                ledger.reserve(def);
                let n = label.spec.definitions.len();
                Vote::Fit { definition: i, order: (i + n - start % n) % n, driver: def.driver.clone(), free }
            }
            Decision::Wait(reason) => Vote::Wait { reason },
        };
        if ballot.votes.get(me) != Some(&vote) {
            votes.push(BallotVote { uid, round: ballot.round, vote });
        }
    }
    if votes.is_empty() {
        return Ok(());
    }
    // In commands of at most VOTES_PER_COMMAND, concurrently (they share log entries
    // by group commit): a queue of tens of thousands would otherwise make one entry of
    // megabytes, applied in one transaction and sent whole to every follower.
    let now = OffsetDateTime::now_utc();
    let writes = votes
        .chunks(VOTES_PER_COMMAND)
        .map(|chunk| ctx.store.execute(Command::Vote { node: me.to_owned(), votes: chunk.to_vec(), now }));
    for r in join_all(writes).await {
        // A refusal cannot happen (stale votes are skipped, as values); a lost quorum
        // is the caller's retry.
        r?.ok();
    }
    Ok(())
}

/// Votes per `Command::Vote`: a reason is bounded (see [`MAX_REASONS`]), so a command
/// stays well under a megabyte.
const VOTES_PER_COMMAND: usize = 256;

/// How long a round may stay open waiting for nodes that have not voted.
pub const VOTE_DEADLINE: Duration = Duration::from_secs(1);
/// How often the leader looks for overdue rounds.
const CLOSE_EVERY: Duration = Duration::from_millis(250);

/// On the leader: closes rounds open longer than [`VOTE_DEADLINE`], so a node that is
/// slow, or dead but not yet declared lost, does not hold the pool. Elsewhere it idles.
pub async fn close_overdue_loop(ctx: std::sync::Arc<Ctx>, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(CLOSE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !ctx.store.is_leader() {
            continue;
        }
        let now = OffsetDateTime::now_utc();
        let before = now - VOTE_DEADLINE;
        let heard = ctx.heard_nodes();
        let uids = match ctx.store.overdue_rounds(before, heard.as_deref()) {
            Ok(u) if u.is_empty() => continue,
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open election rounds");
                continue;
            }
        };
        tracing::debug!(rounds = uids.len(), "closing election rounds past their deadline");
        if let Err(e) = ctx.store.execute(Command::CloseRounds { uids, now, heard }).await {
            tracing::warn!(error = %e, "cannot close the overdue election rounds");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::reconcile::NodeIdentity;

    fn def(driver: &str, cpu: u32) -> Definition {
        serde_json::from_value(serde_json::json!({"driver": driver, "resources": {"cpu": cpu, "ram": 1}})).unwrap()
    }

    fn node() -> NodeIdentity {
        NodeIdentity {
            name: "host-a".into(),
            identifiers: vec!["linux".into()],
            capacity: NodeCapacity { cpu: 4, ram: 8, slots: 8, applications: 0 },
        }
    }

    fn drivers(names: &[&str]) -> BTreeMap<String, Option<NodeCapacity>> {
        names.iter().map(|n| (n.to_string(), None)).collect()
    }

    #[test]
    fn first_fitting_definition_wins_and_retries_rotate() {
        let defs = vec![def("test", 8), def("test", 2), def("test", 1)];
        let d = drivers(&["test"]);
        let none = BTreeMap::new();
        assert_eq!(choose(&defs, 0, &node(), &Ledger::default(), &d, &none, None), Decision::Elect(1));
        assert_eq!(choose(&defs, 2, &node(), &Ledger::default(), &d, &none, None), Decision::Elect(2));
        // Wraps round.
        assert_eq!(choose(&defs, 3, &node(), &Ledger::default(), &d, &none, None), Decision::Elect(1));
    }

    #[test]
    fn reasons_name_every_definition() {
        let defs = vec![def("docker", 1), def("test", 99)];
        match choose(&defs, 0, &node(), &Ledger::default(), &drivers(&["test"]), &BTreeMap::new(), None) {
            Decision::Wait(m) => {
                assert!(m.starts_with("can never fit"), "{m}");
                assert!(m.contains("definition 0 (docker): no driver"), "{m}");
                assert!(m.contains("definition 1 (test): node host-a has 4 cpu in total"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_message_of_a_label_with_thousands_of_definitions_is_bounded() {
        let defs: Vec<Definition> = (0..10_000).map(|_| def("test", 99)).collect();
        match choose(&defs, 0, &node(), &Ledger::default(), &drivers(&["test"]), &BTreeMap::new(), None) {
            Decision::Wait(m) => {
                assert!(m.len() < 2_000, "{} bytes", m.len());
                assert!(m.contains("definition 0 (test)"), "{m}");
                assert!(m.ends_with(&format!("; and {} more", 10_000 - MAX_REASONS)), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn busy_node_waits_and_driver_capacity_counts() {
        let defs = vec![def("test", 3)];
        let mut ledger = Ledger::default();
        ledger.reserve(&def("test", 2));
        match choose(&defs, 0, &node(), &ledger, &drivers(&["test"]), &BTreeMap::new(), None) {
            Decision::Wait(m) => assert!(m.starts_with("waiting for capacity"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut capped = drivers(&["test"]);
        capped.insert("test".into(), Some(NodeCapacity { cpu: 1, ram: 8, slots: 8, applications: 0 }));
        assert!(matches!(
            choose(&[def("test", 2)], 0, &node(), &Ledger::default(), &capped, &BTreeMap::new(), None),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn unavailable_driver_waits_with_its_reason() {
        let mut av = BTreeMap::new();
        av.insert("test".to_string(), Err("engine down".to_string()));
        match choose(&[def("test", 1)], 0, &node(), &Ledger::default(), &drivers(&["test"]), &av, None) {
            Decision::Wait(m) => assert!(m.contains("engine down") && m.starts_with("waiting"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
