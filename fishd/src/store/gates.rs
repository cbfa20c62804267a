//! Gate state: what a CI gate has seen (delivery GUIDs, jobs) and holds (runner
//! registrations per application), changed only by gate commands.
//!
//! # Guarantees
//! - A delivery GUID is applied once: a second delivery of it changes nothing, so a
//!   redelivery, or one event reaching repo, org and App hooks, counts once.
//! - A job's rank only moves forward (waiting 0 < queued 1 < in_progress 2 <
//!   completed 3): a late `queued` after `in_progress` changes nothing.
//! - Every input that is not deterministic (the time) is carried by the command, so a
//!   replicated log applies the same change on every node.
//! - Gate commands change no object: they take no revision and emit no watch event.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;
use super::command::{Outcome, Response};
use super::state::Tx;

/// (gate, delivery GUID) → unix seconds first seen.
pub const GATE_DELIVERIES: TableDefinition<(&str, &str), i64> = TableDefinition::new("gate_deliveries");
/// (gate, job id) → [`GateJob`] JSON.
pub const GATE_JOBS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("gate_jobs");
/// (gate, application uid) → [`GateRunner`] JSON.
pub const GATE_RUNNERS: TableDefinition<(&str, u128), &[u8]> = TableDefinition::new("gate_runners");

/// Job ranks: an event never lowers one.
pub mod rank {
    pub const WAITING: u8 = 0;
    pub const QUEUED: u8 = 1;
    pub const IN_PROGRESS: u8 = 2;
    pub const COMPLETED: u8 = 3;
}

/// One `workflow_job` event as a gate command carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateJobEvent {
    pub id: u64,
    pub repo: String,
    pub run_id: u64,
    /// Lower-cased `runs-on` labels.
    pub labels: Vec<String>,
    pub rank: u8,
    /// The runner that took it (`in_progress`, `completed`); ignored while queued.
    pub runner_name: Option<String>,
    pub conclusion: Option<String>,
}

/// A job as the gate knows it: the latest event that moved it forward (flattened:
/// the stored JSON is one flat object), and when it was first and last seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateJob {
    #[serde(flatten)]
    pub event: GateJobEvent,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated: OffsetDateTime,
}

/// A runner registration the gate made for one of its applications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRunner {
    pub runner_name: String,
    pub runner_id: u64,
    /// The job whose demand made the application (not necessarily the one it runs).
    pub job_id: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// Seen online at the CI system.
    pub online: bool,
    /// Seen busy, or named by a job event: it took a job.
    pub busy: bool,
}

/// Records one delivery: nothing if its GUID was seen, else the job moves forward.
pub(super) fn event(
    tx: &mut Tx<'_>,
    gate: &str,
    guid: &str,
    ev: GateJobEvent,
    now: OffsetDateTime,
) -> Result<Outcome, StoreError> {
    {
        let mut seen = tx.txn.open_table(GATE_DELIVERIES)?;
        if !guid.is_empty() {
            if seen.get((gate, guid))?.is_some() {
                return Ok(Ok(Response::Done));
            }
            seen.insert((gate, guid), now.unix_timestamp())?;
        }
    }
    let mut jobs = tx.txn.open_table(GATE_JOBS)?;
    let existing: Option<GateJob> = match jobs.get((gate, ev.id))? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    };
    let job = match existing {
        Some(mut j) => {
            let known = &mut j.event;
            if ev.rank <= known.rank {
                return Ok(Ok(Response::Done));
            }
            known.rank = ev.rank;
            if ev.rank >= rank::IN_PROGRESS && ev.runner_name.is_some() {
                known.runner_name = ev.runner_name;
            }
            if ev.conclusion.is_some() {
                known.conclusion = ev.conclusion;
            }
            if known.labels.is_empty() {
                known.labels = ev.labels;
            }
            j.updated = now;
            j
        }
        None => {
            let mut event = ev;
            if event.rank < rank::IN_PROGRESS {
                event.runner_name = None;
            }
            GateJob { event, first_seen: now, updated: now }
        }
    };
    jobs.insert((gate, job.id), serde_json::to_vec(&job)?.as_slice())?;
    Ok(Ok(Response::Done))
}

/// A job reads as its event (`job.rank`, `job.labels`): the two were one list of
/// fields written twice.
impl std::ops::Deref for GateJob {
    type Target = GateJobEvent;
    fn deref(&self) -> &GateJobEvent {
        &self.event
    }
}

/// Writes (or with `None` removes) the runner record of application `uid`.
pub(super) fn put_runner(
    tx: &mut Tx<'_>,
    gate: &str,
    uid: Uuid,
    runner: Option<GateRunner>,
) -> Result<Outcome, StoreError> {
    let mut t = tx.txn.open_table(GATE_RUNNERS)?;
    match runner {
        Some(r) => {
            t.insert((gate, uid.as_u128()), serde_json::to_vec(&r)?.as_slice())?;
        }
        None => {
            t.remove((gate, uid.as_u128()))?;
        }
    }
    Ok(Ok(Response::Done))
}

/// Drops jobs, and delivery GUIDs seen before `deliveries_before`.
pub(super) fn forget(
    tx: &mut Tx<'_>,
    gate: &str,
    jobs: &[u64],
    deliveries_before: Option<OffsetDateTime>,
) -> Result<Outcome, StoreError> {
    {
        let mut t = tx.txn.open_table(GATE_JOBS)?;
        for id in jobs {
            t.remove((gate, *id))?;
        }
    }
    if let Some(before) = deliveries_before {
        let cut = before.unix_timestamp();
        let mut t = tx.txn.open_table(GATE_DELIVERIES)?;
        let mut old = Vec::new();
        for e in t.range((gate, "")..)? {
            let (k, v) = e?;
            let (g, guid) = k.value();
            if g != gate {
                break;
            }
            if v.value() < cut {
                old.push(guid.to_owned());
            }
        }
        for guid in old {
            t.remove((gate, guid.as_str()))?;
        }
    }
    Ok(Ok(Response::Done))
}

impl super::Store {
    /// Every job of `gate`, by id.
    pub fn gate_jobs(&self, gate: &str) -> Result<Vec<GateJob>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(GATE_JOBS)?;
        let mut out = Vec::new();
        for e in t.range((gate, 0)..=(gate, u64::MAX))? {
            out.push(serde_json::from_slice(e?.1.value())?);
        }
        Ok(out)
    }

    /// Every runner record of `gate`, by application uid.
    pub fn gate_runners(&self, gate: &str) -> Result<Vec<(Uuid, GateRunner)>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(GATE_RUNNERS)?;
        let mut out = Vec::new();
        for e in t.range((gate, 0)..=(gate, u128::MAX))? {
            let (k, v) = e?;
            out.push((Uuid::from_u128(k.value().1), serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    /// The runner record of one application.
    pub fn gate_runner(&self, gate: &str, uid: Uuid) -> Result<Option<GateRunner>, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(GATE_RUNNERS)?;
        Ok(match t.get((gate, uid.as_u128()))? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Whether `gate` recorded delivery `guid`.
    pub fn gate_delivery_seen(&self, gate: &str, guid: &str) -> Result<bool, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(GATE_DELIVERIES)?;
        Ok(t.get((gate, guid))?.is_some())
    }

    /// How many delivery GUIDs `gate` remembers.
    pub fn gate_deliveries(&self, gate: &str) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let t = tx.open_table(GATE_DELIVERIES)?;
        let mut n = 0;
        for e in t.range((gate, "")..)? {
            if e?.0.value().0 != gate {
                break;
            }
            n += 1;
        }
        Ok(n)
    }
}
