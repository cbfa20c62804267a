//! Reconciling one application: allocate what is ELECTED here, watch what is
//! ALLOCATED, release what is asked to DEALLOCATE, purge what has been finished
//! for longer than the retention.
//!
//! # Guarantees
//! - Never runs twice at once for one application (the queue ensures it).
//! - Status is written with compare-and-set on the phase: if a user deallocated an
//!   application while its allocation ran, the allocation's write is refused and the
//!   fresh resource is released at once, so nothing leaks.
//!
//! # Assumptions
//! - Drivers allocate idempotently per uid, so an ELECTED application found after a
//!   crash can simply be allocated again.

use std::sync::Arc;
use std::time::Duration;

use api_types::{Application, Label, Phase, ResourceStatus};
use time::OffsetDateTime;
use tracing::{Instrument, info, info_span, warn};
use uuid::Uuid;

use super::queue::Queue;
use super::{Ctx, backoff, transition};
use crate::drivers::{AllocateRequest, DriverError, ResourceState};
use crate::store::{Command, Rejection, StoreError};

/// What to do after a reconcile: run again after this long, or wait for a trigger.
type Next = Option<Duration>;

/// Reconciles application `uid` as it is now.
pub async fn reconcile(ctx: Arc<Ctx>, uid: Uuid) -> Next {
    let app = match ctx.store.get_application_by_uid(uid) {
        Ok(Some(app)) => app,
        Ok(None) => {
            ctx.forget(uid);
            return None;
        }
        Err(e) => {
            warn!(%uid, error = %e, "cannot read application");
            return Some(backoff(ctx.failure(uid)));
        }
    };
    let span = info_span!("reconcile", app = %app.metadata.name_str(), uid = %uid, phase = %app.status.phase);
    let mine = app.status.node.as_deref() == Some(ctx.node.name.as_str());
    let result = async {
        match app.status.phase {
            Phase::New => Ok(None),
            Phase::Elected if mine => allocate(&ctx, app).await,
            Phase::Allocated if mine => observe(&ctx, app).await,
            Phase::Deallocate if mine => release(&ctx, app).await,
            Phase::Deallocated | Phase::Error => retention(&ctx, app).await,
            // Another node's application: not ours to touch.
            _ => Ok(None),
        }
    }
    .instrument(span)
    .await;
    match result {
        Ok(next) => next,
        Err(e) => {
            warn!(%uid, error = %e, "reconcile failed; will retry");
            Some(backoff(ctx.failure(uid)))
        }
    }
}

/// Writes `status` if the application is still in `expect`. `Ok(false)`: it moved on.
async fn write(
    ctx: &Ctx,
    app: &Application,
    expect: Phase,
    status: api_types::ApplicationStatus,
) -> Result<bool, StoreError> {
    let uid = app.metadata.uid.unwrap_or_default();
    match ctx.store.execute(Command::SetApplicationStatus { uid, expect, status: Box::new(status) }).await? {
        Ok(_) => Ok(true),
        Err(Rejection::PhaseChanged { .. }) | Err(Rejection::NotFound(_)) => Ok(false),
        Err(other) => {
            warn!(%uid, error = %other, "status write refused");
            Ok(false)
        }
    }
}

fn label_of(ctx: &Ctx, uid: Uuid) -> Result<Option<Label>, StoreError> {
    ctx.store.application_label(uid)
}

/// Label metadata, overlaid by the application's, plus what fishd adds.
fn merged_metadata(ctx: &Ctx, app: &Application, label: &Label, uid: Uuid) -> api_types::Metadata {
    let mut m = label.spec.metadata.clone();
    m.extend(app.spec.metadata.clone());
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    m.insert("FISH_APPLICATION".into(), s(app.metadata.name_str()));
    m.insert("FISH_APPLICATION_UID".into(), s(&uid.to_string()));
    m.insert("FISH_NODE".into(), s(&ctx.node.name));
    m.insert("FISH_LABEL".into(), s(&format!("{}:{}", label.metadata.name_str(), label.metadata.version.unwrap_or(0))));
    m.insert("FISH_META_TOKEN".into(), s(&ctx.meta_tokens.issue(uid)));
    if !ctx.config.meta_url.is_empty() {
        m.insert("FISH_META_URL".into(), s(&ctx.config.meta_url));
    }
    if !ctx.config.meta_ca.is_empty() {
        m.insert("FISH_CA_CERT".into(), s(&ctx.config.meta_ca));
    }
    m
}

async fn allocate(ctx: &Ctx, app: Application) -> Result<Option<Duration>, StoreError> {
    let uid = app.metadata.uid.unwrap_or_default();
    let idx = app.status.definition.unwrap_or(0);
    let Some(label) = label_of(ctx, uid)? else {
        let s = transition(&app.status, Phase::Error, "the application's label snapshot is missing");
        write(ctx, &app, Phase::Elected, s).await?;
        return Ok(None);
    };
    let Some(def) = label.spec.definitions.get(idx).cloned() else {
        let s = transition(&app.status, Phase::Error, format!("label has no definition {idx}"));
        write(ctx, &app, Phase::Elected, s).await?;
        return Ok(None);
    };
    let Some(driver) = ctx.drivers.get(&def.driver).cloned() else {
        return fail_attempt(
            ctx,
            &app,
            idx,
            &def.driver,
            &DriverError::Invalid(format!("no driver {:?} is configured", def.driver)),
        )
        .await;
    };
    let req = AllocateRequest {
        uid,
        name: app.metadata.name_str().to_owned(),
        definition: def.clone(),
        metadata: merged_metadata(ctx, &app, &label, uid),
        node: ctx.node.name.clone(),
    };
    info!(driver = %def.driver, definition = idx, "allocating");
    let started = std::time::Instant::now();
    match driver.allocate(&req).await {
        Ok(a) => {
            let lifetime = effective_lifetime(ctx, &app, &def);
            let now = OffsetDateTime::now_utc();
            let mut s = transition(
                &app.status,
                Phase::Allocated,
                format!(
                    "allocated by driver {} as {} in {} ms",
                    def.driver,
                    a.identifier,
                    started.elapsed().as_millis()
                ),
            );
            s.resource = Some(ResourceStatus {
                driver: def.driver.clone(),
                identifier: a.identifier.clone(),
                ip_addr: a.ip_addr,
                hw_addr: a.hw_addr,
                expires_at: Some(now + lifetime),
                details: a.details,
            });
            if write(ctx, &app, Phase::Elected, s).await? {
                info!(identifier = %a.identifier, "allocated");
                observe_allocated(ctx, &app, &def.driver, now);
                ctx.clear_failures(uid);
                Ok(Some(ctx.config.inspect_interval.min(lifetime)))
            } else {
                // Deallocated while we allocated: release what we just made.
                info!(identifier = %a.identifier, "deallocated during allocation; releasing");
                if let Err(e) = driver.deallocate(uid, &a.identifier).await {
                    warn!(error = %e, "could not release a resource allocated after deallocation; retrying");
                    return Ok(Some(backoff(ctx.failure(uid))));
                }
                Ok(None)
            }
        }
        Err(DriverError::Unavailable(reason)) => {
            ctx.metrics.allocation_failed(&def.driver);
            // Not the definition's fault: back to NEW without counting an attempt.
            let mut s = transition(&app.status, Phase::New, format!("driver {} unavailable: {reason}", def.driver));
            s.node = None;
            if write(ctx, &app, Phase::Elected, s).await? {
                ctx.release_definition(uid);
            }
            ctx.wake_election();
            Ok(None)
        }
        Err(e) => {
            // Whatever a failed attempt left behind goes now, not at the next restart.
            if let Err(ce) = driver.deallocate(uid, "").await {
                warn!(error = %ce, "cleanup after a failed allocation failed");
            }
            fail_attempt(ctx, &app, idx, &def.driver, &e).await
        }
    }
}

async fn fail_attempt(
    ctx: &Ctx,
    app: &Application,
    idx: usize,
    driver: &str,
    e: &DriverError,
) -> Result<Option<Duration>, StoreError> {
    let attempts = app.status.attempts + 1;
    let reason = format!(
        "allocation attempt {attempts} of {} failed on node {} with definition {idx} ({driver}): {e}",
        ctx.config.allocation_retry, ctx.node.name
    );
    warn!(attempts, %reason, "allocation failed");
    ctx.metrics.allocation_failed(driver);
    let mut s = if attempts >= ctx.config.allocation_retry {
        transition(&app.status, Phase::Error, format!("{reason}; giving up"))
    } else {
        transition(&app.status, Phase::New, format!("{reason}; retrying"))
    };
    s.attempts = attempts;
    s.node = None;
    if write(ctx, app, Phase::Elected, s).await? {
        ctx.release_definition(app.metadata.uid.unwrap_or_default());
    }
    ctx.wake_election();
    Ok(None)
}

/// Records the queue time (creation to `now`) and the allocation time (the current
/// attempt's ELECTED entry to `now`) of an application this node just allocated.
fn observe_allocated(ctx: &Ctx, app: &Application, driver: &str, now: OffsetDateTime) {
    let since = |t: Option<OffsetDateTime>| {
        t.map(|t| Duration::try_from(now - t).unwrap_or(Duration::ZERO)).unwrap_or(Duration::ZERO)
    };
    let elected = app.status.history.iter().rev().find(|h| h.phase == Phase::Elected).map(|h| h.at);
    ctx.metrics.allocated(app.spec.label.name.as_str(), driver, since(app.metadata.created_at), since(elected));
}

/// The shortest of the application's lifetime, the definition's, or the node default.
fn effective_lifetime(ctx: &Ctx, app: &Application, def: &api_types::Definition) -> Duration {
    let base = def.resources.lifetime.map(|l| l.get()).unwrap_or(ctx.config.default_lifetime);
    app.spec.lifetime.map(|l| l.get().min(base)).unwrap_or(base)
}

async fn observe(ctx: &Ctx, app: Application) -> Result<Option<Duration>, StoreError> {
    let uid = app.metadata.uid.unwrap_or_default();
    let Some(res) = app.status.resource.clone() else {
        let s = transition(&app.status, Phase::Error, "allocated without a resource record");
        write(ctx, &app, Phase::Allocated, s).await?;
        return Ok(None);
    };
    let now = OffsetDateTime::now_utc();
    if let Some(exp) = res.expires_at
        && exp <= now
    {
        let s = transition(&app.status, Phase::Deallocate, "lifetime expired");
        write(ctx, &app, Phase::Allocated, s).await?;
        return Ok(Some(Duration::ZERO));
    }
    let Some(driver) = ctx.drivers.get(&res.driver).cloned() else {
        let s = transition(
            &app.status,
            Phase::Error,
            format!("driver {} is no longer configured on this node", res.driver),
        );
        write(ctx, &app, Phase::Allocated, s).await?;
        return Ok(None);
    };
    let until_expiry = res
        .expires_at
        .map(|e| Duration::try_from(e - now).unwrap_or(Duration::ZERO))
        .unwrap_or(ctx.config.inspect_interval);
    let next = ctx.config.inspect_interval.min(until_expiry);
    match driver.inspect(uid, &res.identifier).await {
        Ok(ResourceState::Running) => {
            ctx.clear_failures(uid);
            Ok(Some(next))
        }
        Ok(ResourceState::Ended(how)) => {
            // Clean up what the resource left (work directory, container) before saying so.
            if let Err(e) = driver.deallocate(uid, &res.identifier).await {
                warn!(error = %e, "cleanup of an ended resource failed; retrying");
                return Ok(Some(backoff(ctx.failure(uid))));
            }
            let s = transition(&app.status, Phase::Deallocated, format!("resource ended by itself: {how}"));
            write(ctx, &app, Phase::Allocated, s).await?;
            Ok(None)
        }
        Ok(ResourceState::Lost(why)) => {
            if let Err(e) = driver.deallocate(uid, &res.identifier).await {
                warn!(error = %e, "cleanup of a lost resource failed");
            }
            let s = transition(&app.status, Phase::Error, format!("resource lost: {why}"));
            write(ctx, &app, Phase::Allocated, s).await?;
            Ok(None)
        }
        Err(e) => {
            warn!(error = %e, "inspect failed");
            Ok(Some(backoff(ctx.failure(uid)).max(next)))
        }
    }
}

async fn release(ctx: &Ctx, app: Application) -> Result<Option<Duration>, StoreError> {
    let uid = app.metadata.uid.unwrap_or_default();
    let why = app.status.message.clone();
    if let Some(res) = app.status.resource.clone() {
        let Some(driver) = ctx.drivers.get(&res.driver).cloned() else {
            let s = transition(
                &app.status,
                Phase::Error,
                format!("cannot release: driver {} is not configured", res.driver),
            );
            write(ctx, &app, Phase::Deallocate, s).await?;
            return Ok(None);
        };
        if let Err(e) = driver.deallocate(uid, &res.identifier).await {
            let n = ctx.failure(uid);
            if n >= ctx.config.deallocate_retries {
                let s = transition(
                    &app.status,
                    Phase::Error,
                    format!("could not release resource {} after {n} attempts: {e}", res.identifier),
                );
                write(ctx, &app, Phase::Deallocate, s).await?;
                return Ok(None);
            }
            warn!(error = %e, attempt = n, "deallocation failed; retrying");
            return Ok(Some(backoff(n)));
        }
    }
    let s = transition(&app.status, Phase::Deallocated, format!("resource released ({why})"));
    if write(ctx, &app, Phase::Deallocate, s).await? {
        info!("deallocated");
        ctx.forget(uid);
        ctx.wake_election();
    }
    Ok(None)
}

async fn retention(ctx: &Ctx, app: Application) -> Result<Option<Duration>, StoreError> {
    let uid = app.metadata.uid.unwrap_or_default();
    let finished =
        app.status.history.last().map(|h| h.at).or(app.metadata.created_at).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let due = finished + ctx.config.history_retention;
    let now = OffsetDateTime::now_utc();
    if due <= now {
        ctx.store.execute(Command::PurgeApplication { uid }).await?.ok();
        ctx.forget(uid);
        return Ok(None);
    }
    Ok(Some(Duration::try_from(due - now).unwrap_or(Duration::ZERO)))
}

/// After a start: releases resources the drivers own for applications that are gone
/// or finished (orphans), and queues every application with work left, so ELECTED
/// ones are allocated (idempotently) and ALLOCATED ones adopted.
pub async fn adopt(ctx: &Ctx, queue: &Queue) {
    for (name, driver) in ctx.drivers.iter() {
        let owned = match driver.list_owned().await {
            Ok(o) => o,
            Err(e) => {
                warn!(driver = %name, error = %e, "cannot list owned resources; orphans stay until the next start");
                continue;
            }
        };
        for r in owned {
            let keep = match ctx.store.get_application_by_uid(r.uid) {
                Ok(Some(app)) => {
                    app.status.node.as_deref() == Some(ctx.node.name.as_str())
                        && matches!(app.status.phase, Phase::Elected | Phase::Allocated | Phase::Deallocate)
                }
                Ok(None) => false,
                // Unsure: keep it; the next start tries again.
                Err(_) => true,
            };
            if keep {
                info!(driver = %name, uid = %r.uid, identifier = %r.identifier, "adopted resource");
            } else {
                info!(driver = %name, uid = %r.uid, identifier = %r.identifier, "removing orphaned resource");
                if let Err(e) = driver.deallocate(r.uid, &r.identifier).await {
                    warn!(driver = %name, uid = %r.uid, error = %e, "could not remove orphaned resource");
                }
            }
        }
    }
    for phase in Phase::ALL {
        if phase == Phase::New {
            continue;
        }
        if let Ok(uids) = ctx.store.uids_in_phase(phase) {
            uids.into_iter().for_each(|u| queue.now(u));
        }
    }
    ctx.wake_election();
}

/// Removes temporary label versions whose `removeAt` has passed. Applications keep
/// the version they pinned (their label snapshot), so this never breaks one.
pub async fn remove_due_labels(ctx: &Ctx) {
    let Ok((_, labels)) = ctx.store.list_labels(None) else { return };
    let now = OffsetDateTime::now_utc();
    for l in labels {
        if l.spec.remove_at.is_some_and(|t| t <= now) {
            let name = l.metadata.name_str().to_owned();
            let cmd = Command::DeleteLabel { name: name.clone(), version: l.metadata.version };
            match ctx.store.execute(cmd).await {
                Ok(_) => info!(label = %name, version = ?l.metadata.version, "removed temporary label"),
                Err(e) => warn!(label = %name, error = %e, "could not remove temporary label"),
            }
        }
    }
}
