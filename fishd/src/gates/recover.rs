//! Delivery replay (`webhook.recoverDeliveries`): GitHub never redelivers a webhook
//! by itself, so a `queued` lost while fishd was down, restarting or unreachable
//! would leave its job without a runner. The gate reads the hook's delivery log
//! (GitHub's deliveries API) and applies every `workflow_job` delivery that fishd
//! never acknowledged, as if it had just arrived.
//!
//! # Guarantees
//! - A delivery is applied at most once: it is recorded under its own GUID, so one
//!   that did arrive (or a later manual redelivery) changes nothing twice.
//! - A delivery fishd answered 2xx is never fetched: fishd answers 2xx only after the
//!   event is committed (or deliberately ignored).
//! - Cheap when nothing was lost: one list call per `every`; the log is read only
//!   down to the newest delivery already examined (in memory; after a restart, back
//!   to 72 h or [`MAX_PAGES`] pages).
//!
//! # Assumptions
//! - Delivery ids grow with time (GitHub's are sequential), so "newer than the last
//!   one examined" is an id comparison.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tracing::{info, warn};

use super::config::Scope;
use super::gate::{GithubGate, PassError};
use super::github::DeliveryItem;
use super::webhook::parse_job;

/// Pages (of 100) read in one go: a log longer than that is examined over later rounds.
const MAX_PAGES: usize = 10;
/// Deliveries fetched one by one per round: replay yields to runner calls.
const MAX_FETCHES: usize = 50;
/// How far back the first round after a start looks (GitHub keeps 3 days of log).
const LOOKBACK: Duration = Duration::from_secs(72 * 3600);

/// What the replay remembers between rounds.
#[derive(Debug, Default)]
pub struct RecoverState {
    /// The newest delivery id examined and settled.
    floor: Option<u64>,
    last: Option<Instant>,
}

impl GithubGate {
    /// The hook whose log is read: `/orgs/o/hooks/N`, `/repos/o/r/hooks/N` or `/app/hook`.
    fn hook_path(&self) -> Option<String> {
        let r = self.config.webhook.recover_deliveries.as_ref()?;
        if r.app {
            return Some("/app/hook".into());
        }
        match (&self.github.scope, r.hook_id) {
            (Scope::Repo(_) | Scope::Org(_), Some(id)) => Some(format!("{}/hooks/{id}", self.github.scope.path())),
            _ => None,
        }
    }

    /// Whether a replay round is due now (and marks it started).
    pub(super) fn recover_due(&self) -> bool {
        let Some(r) = self.config.webhook.recover_deliveries.as_ref() else { return false };
        let mut st = self.recover.lock().unwrap_or_else(|e| e.into_inner());
        let due = st.last.is_none_or(|t| t.elapsed() >= r.every.get());
        if due {
            st.last = Some(Instant::now());
        }
        due
    }

    /// One replay round: read the log down to the last examined delivery, and apply
    /// the `workflow_job` deliveries fishd never acknowledged, oldest first.
    pub(super) async fn recover(&self) -> Result<usize, PassError> {
        let Some(hook) = self.hook_path() else { return Ok(0) };
        let floor = self.recover.lock().unwrap_or_else(|e| e.into_inner()).floor;
        let horizon = OffsetDateTime::now_utc() - LOOKBACK;
        let mut items: Vec<DeliveryItem> = Vec::new();
        let mut cursor: Option<String> = None;
        'pages: for _ in 0..MAX_PAGES {
            let (page, next) = self.github.list_deliveries(&hook, cursor.as_deref()).await?;
            for it in page {
                if floor.is_some_and(|f| it.id <= f) || it.delivered_at.is_some_and(|t| t < horizon) {
                    break 'pages;
                }
                items.push(it);
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        // Oldest first, so the floor can move up as each one is settled.
        items.reverse();
        let acknowledged: HashSet<&str> =
            items.iter().filter(|i| (200..300).contains(&i.status_code)).map(|i| i.guid.as_str()).collect();
        let mut settled = floor;
        let mut fetched = 0;
        let mut applied = 0;
        let mut done_guids: HashSet<&str> = HashSet::new();
        for it in &items {
            let missed = it.event == "workflow_job"
                && !acknowledged.contains(it.guid.as_str())
                && !done_guids.contains(it.guid.as_str())
                && !self.store.gate_delivery_seen(&self.name, &it.guid)?;
            if missed {
                if fetched >= MAX_FETCHES {
                    break;
                }
                fetched += 1;
                let payload = match self.github.delivery_payload(&hook, it.id).await {
                    Ok(p) => p,
                    Err(e) => {
                        self.note_error(format!("replaying webhook delivery {}: {e}", it.id));
                        break;
                    }
                };
                match parse_job(&payload) {
                    Some((action, job)) => {
                        info!(gate = %self.name, delivery = it.id, guid = %it.guid, job = job.id, %action,
                            "replaying a webhook delivery that never reached fishd");
                        self.record(&it.guid, &action, job).await?;
                        self.metrics.delivery_recovered(&self.name);
                        applied += 1;
                    }
                    None => warn!(gate = %self.name, delivery = it.id, "a logged workflow_job delivery without a job"),
                }
                done_guids.insert(it.guid.as_str());
            }
            settled = Some(settled.map_or(it.id, |s| s.max(it.id)));
        }
        self.recover.lock().unwrap_or_else(|e| e.into_inner()).floor = settled;
        Ok(applied)
    }
}
