//! Purging finished applications once `historyRetention` has passed.
//!
//! The store keeps finished applications in the order they finished (a node-local
//! index, see [`crate::store::derived`]); the leader reads only the head of it that
//! is due, and sleeps until the next one is. A finished application costs nothing
//! while it waits: it is in no queue, has no timer, and is never read before its purge
//! (at start-up too: 100,000 stored, finished applications are not touched).
//!
//! One purge for the pool, not one per node: the leader's. Every node runs the loop,
//! so whoever leads next takes over at once.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Ctx;
use crate::store::{Command, StoreError};

/// Applications read (and purged) per look; more wait for the next one, at once.
pub const PURGE_BATCH: usize = 256;

/// Runs until `stop`: purges what is due, then waits for the next due time, a
/// finished application (`Ctx::wake_purge`) or the resync interval.
pub async fn purge_loop(ctx: Arc<Ctx>, stop: CancellationToken) {
    loop {
        let wait = match purge_due(&ctx).await {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "could not purge finished applications; retrying");
                Duration::from_secs(1)
            }
        };
        if wait.is_zero() {
            // A full batch: more may be due. Let the rest of the node run in between.
            tokio::task::yield_now().await;
            if stop.is_cancelled() {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ctx.purge.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Purges (on the leader) the finished applications that are due, up to
/// [`PURGE_BATCH`]; returns how long until the next look (zero: a full batch, look
/// again at once).
pub async fn purge_due(ctx: &Ctx) -> Result<Duration, StoreError> {
    let idle = ctx.config.resync;
    if !ctx.leads() {
        return Ok(idle);
    }
    let retention = time::Duration::try_from(ctx.config.history_retention).unwrap_or(time::Duration::MAX);
    let now = OffsetDateTime::now_utc();
    let cutoff = now.checked_sub(retention).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let due = ctx.store.finished_by(cutoff, PURGE_BATCH)?;
    if !due.is_empty() {
        // Concurrently: they share log entries (group commit).
        let purges = due.iter().map(|&uid| ctx.store.execute(Command::PurgeApplication { uid }));
        for r in join_all(purges).await {
            r?.ok();
        }
        if due.len() == PURGE_BATCH {
            return Ok(Duration::ZERO);
        }
    }
    Ok(match ctx.store.first_finished()? {
        Some(first) => {
            let at = first.checked_add(retention).unwrap_or(now + idle);
            // At least 1 ms: a key rounded down to the millisecond is due a moment
            // after it was not quite due yet.
            Duration::try_from(at - now).unwrap_or(Duration::ZERO).clamp(Duration::from_millis(1), idle)
        }
        None => idle,
    })
}
