//! The cluster's election, as state: every ready node votes through the log for the
//! NEW applications it can fit, and the state machine picks one winner by a rule that
//! every node computes alike from the committed votes (contract section 8, Election).
//!
//! Why votes in the log rather than "first node to claim it": a claim race lets the
//! fastest node take everything and gives no way to prefer the emptier node or to
//! steer a retry away from the node that just failed. With votes, the rule sees every
//! candidate at once: lowest definition index (counted from where the application's
//! retries rotate to), then the node it failed on fewest times, then the most free
//! room, then a tie-break seeded by the application's uid, so equal nodes share a
//! burst instead of one of them taking it all.
//!
//! A round closes when every ready node has voted, or — so one slow or silent node
//! does not hold the pool — when the leader sees it open longer than the vote
//! deadline and sends [`super::Command::CloseRounds`]. A node's `Fit` vote is a promise:
//! it keeps that room reserved until the round closes, so a node never wins more than
//! it can hold.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use api_types::{HistoryEntry, Node, Phase};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;
use super::command::{Outcome, Response};
use super::state::Tx;
use super::tables::{APPS, NODES};

/// uid of a NEW (or once NEW) application → its [`Ballot`] (see [`BALLOT_POSTCARD`]).
/// Replicated.
pub const BALLOTS: TableDefinition<u128, &[u8]> = TableDefinition::new("ballots");

/// The first byte of a ballot stored as postcard (the rest of its bytes).
///
/// Every node applies every node's vote on every application (nine ballot reads and
/// writes per application in a three-node cluster) and each election pass reads the
/// ballot of every NEW application: as JSON, those parses and prints were much of a
/// vote's work. A ballot an older fishd wrote is its JSON (first byte `{`) and still
/// reads; a backup or snapshot holds ballots as JSON ([`to_json`], [`from_json`]), as
/// before.
const BALLOT_POSTCARD: u8 = 0x01;

/// The votes of an application's current round, and what earlier rounds left.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ballot {
    /// Counts elections: a vote for an older round is stale and ignored.
    pub round: u32,
    /// When the first vote of this round was applied (the command's time).
    #[serde(default)]
    pub opened: Option<OffsetDateTime>,
    /// Node name → its vote in this round.
    pub votes: BTreeMap<String, Vote>,
    /// Node name → how many times the application came back from it (failed or
    /// unavailable attempts): the next round prefers another node.
    #[serde(default)]
    pub returned: BTreeMap<String, u32>,
}

/// One node's answer for one application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Vote {
    /// The node can run `definition` now and keeps the room for it until the round
    /// closes.
    Fit {
        definition: usize,
        /// Position of `definition` among the definitions tried, counted from where
        /// this attempt starts (retries rotate): the rule's first criterion.
        order: usize,
        driver: String,
        /// The node's free room before this application.
        free: Room,
    },
    /// The node cannot take it now; why, for the application's message.
    Wait { reason: String },
}

/// Free room of a node, compared slots first (how many more applications), then cpu,
/// then ram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Room {
    pub slots: u32,
    pub cpu: u32,
    pub ram: u32,
}

/// One vote as a node sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BallotVote {
    pub uid: Uuid,
    /// The [`Ballot::round`] the node saw when it voted.
    pub round: u32,
    pub vote: Vote,
}

/// What a node is, for the rule: whether its vote is awaited and whether it may win.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub name: String,
    pub ready: bool,
    pub maintenance: bool,
}

impl Voter {
    fn of(node: &Node) -> Voter {
        Voter {
            name: node.metadata.name_str().to_owned(),
            ready: node.status.ready,
            maintenance: node.status.maintenance,
        }
    }

    /// Ready and not in maintenance: may be elected.
    fn eligible(&self) -> bool {
        self.ready && !self.maintenance
    }
}

/// What the rule decided for one application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Elect {
        node: String,
        definition: usize,
        driver: String,
    },
    /// Keep waiting; `Some` is the message to show (every voter said why it cannot).
    Wait(Option<String>),
}

/// Reasons quoted in a waiting application's message; the rest are counted.
const MAX_QUOTED: usize = 5;

/// The rule. `force`: the round's deadline passed, so the voters who have not voted
/// are not waited for. Pure: the same ballot and voters give the same answer on every
/// node.
pub fn decide(uid: Uuid, ballot: &Ballot, voters: &[Voter], force: bool) -> Verdict {
    let all_voted = voters.iter().filter(|v| v.ready).all(|v| ballot.votes.contains_key(&v.name));
    // Only a node with a ready record may win. Before any node has written its record
    // (a fresh single node; the loops' own tests) a vote is proof enough that it runs.
    let eligible = |name: &str| match voters.iter().find(|v| v.name == name) {
        Some(v) => v.eligible(),
        None => voters.is_empty(),
    };
    let best = ballot
        .votes
        .iter()
        .filter(|(node, _)| eligible(node))
        .filter_map(|(node, vote)| match vote {
            Vote::Fit { definition, order, driver, free } => Some((node, *definition, *order, driver, *free)),
            Vote::Wait { .. } => None,
        })
        .min_by_key(|(node, _, order, _, free)| {
            (*order, ballot.returned.get(*node).copied().unwrap_or(0), Reverse(*free), tie_break(uid, node))
        });
    match best {
        Some((node, definition, _, driver, _)) if all_voted || force => {
            Verdict::Elect { node: node.clone(), definition, driver: driver.clone() }
        }
        // A candidate exists: the round is still open, the message stays.
        Some(_) => Verdict::Wait(None),
        None => Verdict::Wait(waiting_message(ballot, voters)),
    }
}

/// Why nobody can take the application: each voter's reason (alone, as it said it, when
/// there is one voter), and who has not voted yet.
fn waiting_message(ballot: &Ballot, voters: &[Voter]) -> Option<String> {
    let reasons: Vec<(&String, &String)> = ballot
        .votes
        .iter()
        .filter_map(|(n, v)| match v {
            Vote::Wait { reason } => Some((n, reason)),
            Vote::Fit { .. } => None,
        })
        .collect();
    let missing: Vec<&str> =
        voters.iter().filter(|v| v.ready && !ballot.votes.contains_key(&v.name)).map(|v| v.name.as_str()).collect();
    if reasons.is_empty() {
        return None;
    }
    if reasons.len() == 1 && missing.is_empty() {
        return Some(reasons[0].1.clone());
    }
    let mut parts: Vec<String> = reasons.iter().take(MAX_QUOTED).map(|(n, r)| format!("node {n}: {r}")).collect();
    if reasons.len() > MAX_QUOTED {
        parts.push(format!("and {} more nodes", reasons.len() - MAX_QUOTED));
    }
    let mut message = format!("no node can take it now: {}", parts.join("; "));
    if !missing.is_empty() {
        message.push_str(&format!("; not yet voted: {}", missing.join(", ")));
    }
    Some(message)
}

/// FNV-1a over the uid and the node name: stable across builds and platforms, unlike
/// std's hasher, and different per application, so ties go to different nodes.
fn tie_break(uid: Uuid, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in uid.as_bytes().iter().chain(node.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(super) fn read<T: ReadableTable<u128, &'static [u8]>>(table: &T, uid: Uuid) -> Result<Ballot, StoreError> {
    match table.get(uid.as_u128())? {
        Some(v) => decode(v.value()),
        None => Ok(Ballot::default()),
    }
}

fn write(tx: &Tx<'_>, uid: Uuid, ballot: &Ballot) -> Result<(), StoreError> {
    tx.txn.open_table(BALLOTS)?.insert(uid.as_u128(), encode(ballot)?.as_slice())?;
    Ok(())
}

/// A ballot as it is stored (see [`BALLOT_POSTCARD`]).
fn encode(ballot: &Ballot) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(ballot, vec![BALLOT_POSTCARD]).map_err(StoreError::CorruptRecord)
}

/// A stored ballot, of this fishd (postcard) or of an older one (JSON).
fn decode(bytes: &[u8]) -> Result<Ballot, StoreError> {
    match bytes.split_first() {
        Some((&BALLOT_POSTCARD, rest)) => postcard::from_bytes(rest).map_err(StoreError::CorruptRecord),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// A stored ballot as a backup holds it: its JSON.
pub(super) fn to_json(bytes: &[u8]) -> Result<serde_json::Value, StoreError> {
    Ok(serde_json::to_value(decode(bytes)?)?)
}

/// A backup's ballot (JSON) as it is stored.
pub(super) fn from_json(v: &serde_json::Value) -> Result<Vec<u8>, StoreError> {
    encode(&serde_json::from_value(v.clone())?)
}

/// Every node record, as the rule sees it.
pub(super) fn voters<T: ReadableTable<&'static str, &'static [u8]>>(nodes: &T) -> Result<Vec<Voter>, StoreError> {
    let mut out = Vec::new();
    for e in nodes.range::<&str>(..)? {
        let node: Node = serde_json::from_slice(e?.1.value())?;
        out.push(Voter::of(&node));
    }
    Ok(out)
}

/// For a forced close: a node the leader does not hear now counts as not ready (its
/// votes neither awaited nor eligible), whatever its record says until it is declared lost.
fn only_heard(mut voters: Vec<Voter>, heard: Option<&[String]>) -> Vec<Voter> {
    if let Some(heard) = heard {
        for v in &mut voters {
            v.ready &= heard.contains(&v.name);
        }
    }
    voters
}

/// `Command::Vote`: records `node`'s votes and settles each application they complete.
pub(super) fn vote(
    tx: &mut Tx<'_>,
    node: &str,
    votes: Vec<BallotVote>,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    if tx.txn.open_table(super::tables::META)?.get(super::state::removed_key(node).as_str())?.is_some() {
        // A removed node still running: its votes are not counted.
        return Ok(Ok(Response::Done));
    }
    let voters = voters(&tx.txn.open_table(NODES)?)?;
    for v in votes {
        if !is_new(tx, v.uid)? {
            continue;
        }
        let mut ballot = read(&tx.txn.open_table(BALLOTS)?, v.uid)?;
        if ballot.round != v.round || ballot.votes.get(node) == Some(&v.vote) {
            continue;
        }
        ballot.opened.get_or_insert(now);
        ballot.votes.insert(node.to_owned(), v.vote);
        settle(tx, v.uid, ballot, &voters, now, false)?;
    }
    Ok(Ok(Response::Done))
}

/// `Command::CloseRounds`: the deadline of these rounds passed; elect among the votes
/// there are.
pub(super) fn close(
    tx: &mut Tx<'_>,
    uids: Vec<Uuid>,
    now: OffsetDateTime,
    heard: Option<&[String]>,
) -> Result<Outcome, StoreError> {
    let voters = only_heard(voters(&tx.txn.open_table(NODES)?)?, heard);
    for uid in uids {
        if !is_new(tx, uid)? {
            continue;
        }
        let ballot = read(&tx.txn.open_table(BALLOTS)?, uid)?;
        settle(tx, uid, ballot, &voters, now, true)?;
    }
    Ok(Ok(Response::Done))
}

/// Whether `uid` is a NEW application, from the phase index: a vote or a close
/// touches the application itself (parsing it) only when the round changes it.
fn is_new(tx: &Tx<'_>, uid: Uuid) -> Result<bool, StoreError> {
    let key = (super::phase_code(Phase::New), uid.as_u128());
    Ok(tx.txn.open_table(super::tables::APP_BY_PHASE)?.get(key)?.is_some())
}

/// Applies the rule to `uid`'s ballot: elects (the application moves to ELECTED and
/// the next round begins) or records the ballot, with the waiting message if it
/// changed. `uid` is NEW (see [`is_new`]).
fn settle(
    tx: &mut Tx<'_>,
    uid: Uuid,
    mut ballot: Ballot,
    voters: &[Voter],
    now: OffsetDateTime,
    force: bool,
) -> Result<(), StoreError> {
    match decide(uid, &ballot, voters, force) {
        Verdict::Elect { node, definition, driver } => {
            let Some(mut app) = super::state::load_app(tx, uid)? else { return Ok(()) };
            let message = format!("elected node {node} with definition {definition} ({driver})");
            app.status.phase = Phase::Elected;
            app.status.message = message.clone();
            app.status.history.push(HistoryEntry { phase: Phase::Elected, at: now, message });
            app.status.node = Some(node);
            app.status.definition = Some(definition);
            ballot.round += 1;
            ballot.votes.clear();
            ballot.opened = None;
            write(tx, uid, &ballot)?;
            super::state::write_app(tx, app, Phase::New)?;
        }
        Verdict::Wait(message) => {
            write(tx, uid, &ballot)?;
            if let Some(m) = message
                && let Some(mut app) = super::state::load_app(tx, uid)?
                && m != app.status.message
            {
                app.status.message = m;
                super::state::write_app(tx, app, Phase::New)?;
            }
        }
    }
    Ok(())
}

/// The application came back to NEW from `node` (a failed or unavailable attempt):
/// the next round prefers other nodes.
pub(super) fn returned(tx: &Tx<'_>, uid: Uuid, node: &str) -> Result<(), StoreError> {
    let mut ballot = read(&tx.txn.open_table(BALLOTS)?, uid)?;
    *ballot.returned.entry(node.to_owned()).or_default() += 1;
    ballot.votes.clear();
    ballot.opened = None;
    write(tx, uid, &ballot)
}

/// `node` left the cluster: its votes in open rounds go, so a forced close never elects
/// a node that no longer exists.
pub(super) fn strip_node(tx: &Tx<'_>, node: &str) -> Result<(), StoreError> {
    let mut table = tx.txn.open_table(BALLOTS)?;
    let mut changed = Vec::new();
    for e in table.iter()? {
        let (k, v) = e?;
        let mut ballot = decode(v.value())?;
        if ballot.votes.remove(node).is_some() {
            changed.push((k.value(), encode(&ballot)?));
        }
    }
    for (k, bytes) in changed {
        table.insert(k, bytes.as_slice())?;
    }
    Ok(())
}

/// The application is gone or will never be elected again.
pub(super) fn forget(tx: &Tx<'_>, uid: Uuid) -> Result<(), StoreError> {
    tx.txn.open_table(BALLOTS)?.remove(uid.as_u128())?;
    Ok(())
}

/// NEW applications whose round has been open since before `opened_before` and that
/// the rule would elect if the round closed now: what the leader closes.
pub(super) fn overdue(
    tx: &redb::ReadTransaction,
    uids: &[Uuid],
    opened_before: OffsetDateTime,
    heard: Option<&[String]>,
) -> Result<Vec<Uuid>, StoreError> {
    let voters = only_heard(voters(&tx.open_table(NODES)?)?, heard);
    let ballots = tx.open_table(BALLOTS)?;
    let apps = tx.open_table(APPS)?;
    let mut out = Vec::new();
    for &uid in uids {
        let ballot = read(&ballots, uid)?;
        if ballot.opened.is_none_or(|t| t >= opened_before) {
            continue;
        }
        if apps.get(uid.as_u128())?.is_none() {
            continue;
        }
        if matches!(decide(uid, &ballot, &voters, true), Verdict::Elect { .. }) {
            out.push(uid);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voter(name: &str) -> Voter {
        Voter { name: name.into(), ready: true, maintenance: false }
    }

    fn fit(order: usize, slots: u32) -> Vote {
        Vote::Fit { definition: order, order, driver: "test".into(), free: Room { slots, cpu: 4, ram: 8 } }
    }

    fn wait(reason: &str) -> Vote {
        Vote::Wait { reason: reason.into() }
    }

    fn ballot(votes: &[(&str, Vote)]) -> Ballot {
        Ballot { votes: votes.iter().map(|(n, v)| (n.to_string(), v.clone())).collect(), ..Default::default() }
    }

    fn elected(o: Verdict) -> String {
        match o {
            Verdict::Elect { node, .. } => node,
            other => panic!("not elected: {other:?}"),
        }
    }

    #[test]
    fn lowest_definition_then_most_room_wins() {
        let uid = Uuid::now_v7();
        let voters = [voter("a"), voter("b"), voter("c")];
        let b = ballot(&[("a", fit(1, 9)), ("b", fit(0, 1)), ("c", fit(0, 5))]);
        assert_eq!(elected(decide(uid, &b, &voters, false)), "c");
    }

    #[test]
    fn a_node_the_application_came_back_from_loses_to_another() {
        let uid = Uuid::now_v7();
        let voters = [voter("a"), voter("b")];
        let mut b = ballot(&[("a", fit(0, 9)), ("b", fit(0, 1))]);
        b.returned.insert("a".into(), 1);
        assert_eq!(elected(decide(uid, &b, &voters, false)), "b");
    }

    #[test]
    fn ties_are_broken_by_the_uid_so_a_burst_spreads() {
        let voters = [voter("a"), voter("b"), voter("c")];
        let b = ballot(&[("a", fit(0, 3)), ("b", fit(0, 3)), ("c", fit(0, 3))]);
        let mut wins = BTreeMap::new();
        for _ in 0..300 {
            let uid = Uuid::now_v7();
            let w = elected(decide(uid, &b, &voters, false));
            // Deterministic: the same uid always picks the same node.
            assert_eq!(elected(decide(uid, &b, &voters, false)), w);
            *wins.entry(w).or_insert(0) += 1;
        }
        assert_eq!(wins.len(), 3, "{wins:?}");
        assert!(wins.values().all(|&n| n > 50), "{wins:?}");
    }

    #[test]
    fn the_round_waits_for_every_ready_node_unless_forced() {
        let uid = Uuid::now_v7();
        let voters = [voter("a"), voter("b"), voter("silent")];
        let b = ballot(&[("a", fit(0, 1)), ("b", wait("busy"))]);
        assert_eq!(decide(uid, &b, &voters, false), Verdict::Wait(None));
        assert_eq!(elected(decide(uid, &b, &voters, true)), "a");
        // A node that is not ready is not waited for.
        let voters = [voter("a"), voter("b"), Voter { ready: false, ..voter("silent") }];
        assert_eq!(elected(decide(uid, &b, &voters, false)), "a");
    }

    #[test]
    fn nodes_in_maintenance_or_not_ready_never_win() {
        let uid = Uuid::now_v7();
        let voters = [Voter { maintenance: true, ..voter("a") }, Voter { ready: false, ..voter("b") }, voter("c")];
        let b = ballot(&[("a", fit(0, 9)), ("b", fit(0, 9)), ("c", wait("full"))]);
        // Their Fit votes do not count; the one reason left is shown as it was given.
        assert_eq!(decide(uid, &b, &voters, true), Verdict::Wait(Some("full".into())));
    }

    #[test]
    fn a_node_without_a_record_wins_only_when_no_node_has_one() {
        let uid = Uuid::now_v7();
        // A removed node (no record any more) that voted before it went never wins.
        let b = ballot(&[("gone", fit(0, 9)), ("a", wait("full"))]);
        assert_eq!(decide(uid, &b, &[voter("a")], true), Verdict::Wait(Some("full".into())));
        // Before any node has written its record, the vote itself is enough.
        assert_eq!(elected(decide(uid, &ballot(&[("fresh", fit(0, 1))]), &[], false)), "fresh");
    }

    #[test]
    fn the_waiting_message_quotes_every_node_or_the_one_alone() {
        let uid = Uuid::now_v7();
        let one = [voter("a")];
        let b = ballot(&[("a", wait("waiting for capacity: 0 of 2 slots free"))]);
        assert_eq!(decide(uid, &b, &one, false), Verdict::Wait(Some("waiting for capacity: 0 of 2 slots free".into())));
        let three = [voter("a"), voter("b"), voter("c")];
        let b = ballot(&[("a", wait("full")), ("b", wait("nodeFilter"))]);
        match decide(uid, &b, &three, false) {
            Verdict::Wait(Some(m)) => {
                assert!(m.contains("node a: full") && m.contains("node b: nodeFilter"), "{m}");
                assert!(m.ends_with("not yet voted: c"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }
}
