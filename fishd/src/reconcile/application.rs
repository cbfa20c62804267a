//! Reconciling one application: allocate what is ELECTED here, watch what is
//! ALLOCATED, release what is asked to DEALLOCATE, and release leftovers nothing else
//! owns. (Finished applications are purged by [`super::retention`].)
//!
//! # Guarantees
//! - Never runs twice at once for one application (the queue ensures it).
//! - Status is written with compare-and-set on the phase: if a user deallocated an
//!   application while its allocation ran, the allocation's write is refused and the
//!   fresh resource is recorded on the application (DEALLOCATE), or as a leftover, and
//!   released; a release is retried until the driver confirms it, with the last
//!   failure in `status.message`.
//! - Every driver call has a deadline ([`crate::drivers::CallTimeouts`]); a call past it
//!   is a failed call with that reason.
//! - A panicking reconcile is caught, recorded in `status.message` and retried.
//! - Only the definition's own failures count as attempts: an unavailable driver, or
//!   secrets that cannot be minted now (a CI system's outage or rate limit), put the
//!   application back to NEW uncounted.
//!
//! # Assumptions
//! - Drivers allocate idempotently per uid, so an ELECTED application found after a
//!   crash can simply be allocated again.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use api_types::{Application, Label, Phase, ResourceStatus};
use futures::FutureExt;
use time::OffsetDateTime;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::queue::Queue;
use super::{Ctx, Leftover, backoff, transition};
use crate::drivers::{AllocateRequest, DriverError, DriverOp, ResourceState};
use crate::metadata::MintError;
use crate::store::{Command, Rejection, StoreError};

/// What to do after a reconcile: run again after this long, or wait for a trigger.
type Next = Option<Duration>;

/// Reconciles application `uid` as it is now. A panic inside is caught: it is logged,
/// recorded on the application and retried with backoff, so the uid is never stranded.
pub async fn reconcile(ctx: Arc<Ctx>, uid: Uuid) -> Next {
    match AssertUnwindSafe(reconcile_once(ctx.clone(), uid)).catch_unwind().await {
        Ok(next) => next,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            error!(%uid, panic = %what, "reconcile panicked; will retry");
            let n = ctx.failure(uid);
            if let Ok(Some(app)) = ctx.store.get_application_by_uid(uid) {
                let note = format!("reconcile failed unexpectedly ({what}); retrying");
                if let Err(e) = note_message(&ctx, &app, note).await {
                    warn!(%uid, error = %e, "could not record the panic");
                }
            }
            Some(backoff(n))
        }
    }
}

async fn reconcile_once(ctx: Arc<Ctx>, uid: Uuid) -> Next {
    let app = match ctx.store.get_application_by_uid(uid) {
        Ok(app) => app,
        Err(e) => {
            warn!(%uid, error = %e, "cannot read application");
            return Some(backoff(ctx.failure(uid)));
        }
    };
    disown(&ctx, uid, app.as_ref());
    let leftovers = release_leftovers(&ctx, uid, app.as_ref()).await;
    let Some(app) = app else {
        ctx.forget(uid);
        return leftovers;
    };
    let span = info_span!("reconcile", app = %app.metadata.name_str(), uid = %uid, phase = %app.status.phase);
    let mine = app.status.node.as_deref() == Some(ctx.node.name.as_str());
    let result = async {
        match app.status.phase {
            Phase::New => Ok(None),
            Phase::Elected if mine => allocate(&ctx, app).await,
            Phase::Allocated if mine => observe(&ctx, app).await,
            Phase::Deallocate if mine => release(&ctx, app).await,
            // Its purge is the retention loop's; leftovers were released above.
            Phase::Deallocated | Phase::Error => Ok(None),
            // Another node's application: not ours to touch.
            _ => Ok(None),
        }
    }
    .instrument(span)
    .await;
    let next = match result {
        Ok(next) => next,
        Err(e) => {
            warn!(%uid, error = %e, "reconcile failed; will retry");
            Some(backoff(ctx.failure(uid)))
        }
    };
    earliest(next, leftovers)
}

fn earliest(a: Next, b: Next) -> Next {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
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
    // The node as this reconcile saw it: a write from a node whose view is stale never
    // lands on an application elected elsewhere since.
    let expect_node = app.status.node.clone();
    let cmd = Command::SetApplicationStatus { uid, expect, status: Box::new(status), expect_node };
    match ctx.store.execute(cmd).await? {
        Ok(_) => Ok(true),
        Err(Rejection::PhaseChanged { .. } | Rejection::NodeChanged { .. } | Rejection::NotFound(_)) => Ok(false),
        Err(other) => {
            warn!(%uid, error = %other, "status write refused");
            Ok(false)
        }
    }
}

/// Shows `message` on the application without changing its phase, and without the
/// write re-triggering this reconcile at once (the caller returns its own backoff).
async fn note_message(ctx: &Ctx, app: &Application, message: String) -> Result<bool, StoreError> {
    if app.status.message == message {
        return Ok(true);
    }
    let uid = app.metadata.uid.unwrap_or_default();
    let mut s = app.status.clone();
    s.message = message;
    ctx.expect_own_write(uid);
    let written = write(ctx, app, app.status.phase, s).await;
    if !matches!(written, Ok(true)) {
        // No event will come to consume the mark.
        ctx.is_own_write(uid);
    }
    written
}

fn label_of(ctx: &Ctx, uid: Uuid) -> Result<Option<Label>, StoreError> {
    ctx.store.application_label(uid)
}

/// The driver of the definition the application was elected with.
fn definition_driver(ctx: &Ctx, app: &Application) -> Option<String> {
    let uid = app.metadata.uid?;
    let label = label_of(ctx, uid).ok()??;
    label.spec.definitions.get(app.status.definition.unwrap_or(0)).map(|d| d.driver.clone())
}

/// Whether `app`, as it is now, may hold a resource of driver instance `driver` on this
/// node: then that resource is the phase handler's business, not an orphan.
fn holds(ctx: &Ctx, app: &Application, driver: &str) -> bool {
    if app.status.node.as_deref() != Some(ctx.node.name.as_str()) {
        return false;
    }
    match app.status.phase {
        Phase::Allocated | Phase::Deallocate => match &app.status.resource {
            Some(r) => r.driver == driver,
            None => definition_driver(ctx, app).as_deref() == Some(driver),
        },
        Phase::Elected => definition_driver(ctx, app).as_deref() == Some(driver),
        Phase::New | Phase::Deallocated | Phase::Error => false,
    }
}

/// Hands the resource this node holds for `uid` to the leftovers (released next) once
/// the application is no longer this node's: moved to ERROR because the node was
/// declared lost, finished or elected elsewhere while this node was cut off, purged.
fn disown(ctx: &Ctx, uid: Uuid, app: Option<&Application>) {
    let Some(held) = ctx.held(uid) else { return };
    if app.is_some_and(|a| holds(ctx, a, &held.driver)) {
        return;
    }
    let (name, phase, node) = match app {
        Some(a) => (a.metadata.name_str().to_owned(), a.status.phase.to_string(), a.status.node.clone()),
        None => (uid.to_string(), "purged".to_owned(), None),
    };
    info!(
        app = %name, %uid, %phase, node = node.as_deref().unwrap_or("none"), driver = %held.driver,
        identifier = %held.identifier,
        "releasing the resource of application {name}: it is no longer this node's"
    );
    ctx.unhold(uid);
    ctx.add_leftovers(uid, vec![held]);
}

/// Releases what drivers hold for `uid` that the application does not account for (a
/// failed attempt's remains whose cleanup failed, an orphan found at start). Returns
/// when to try again if some release failed.
async fn release_leftovers(ctx: &Ctx, uid: Uuid, app: Option<&Application>) -> Next {
    let leftovers = ctx.take_leftovers(uid);
    if leftovers.is_empty() {
        return None;
    }
    let mut failed = Vec::new();
    for l in leftovers {
        if app.is_some_and(|a| holds(ctx, a, &l.driver)) {
            continue;
        }
        let Some(driver) = ctx.drivers.get(&l.driver).cloned() else { continue };
        match ctx.call(&l.driver, DriverOp::Deallocate, driver.deallocate(uid, &l.identifier)).await {
            Ok(()) => info!(%uid, driver = %l.driver, identifier = %l.identifier, "released leftover resource"),
            Err(e) => {
                warn!(%uid, driver = %l.driver, identifier = %l.identifier, error = %e, "could not release leftover resource; retrying");
                failed.push(l);
            }
        }
    }
    if failed.is_empty() {
        return None;
    }
    ctx.add_leftovers(uid, failed);
    Some(backoff(ctx.failure(uid)))
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
    let mut metadata = super::request_metadata(ctx, &app, &label, uid);
    // Secrets (a gate's runner config) go to this attempt's resource only, never into
    // the stored application.
    match ctx.secrets.mint(&app).await {
        Ok(secrets) => metadata.extend(secrets),
        // An outage or a rate limit of the system behind the secrets: not this
        // attempt's fault, so it is not counted (it would burn the application's
        // attempts while the outage lasts); the election waits for the provider's hold.
        Err(MintError::NotNow(why)) => {
            info!(reason = %why, "allocation postponed: its secrets cannot be minted now");
            return postpone(ctx, &app, format!("allocation postponed, not counted as an attempt: {why}")).await;
        }
        Err(MintError::Refused(e)) => {
            return fail_attempt(ctx, &app, idx, &def.driver, &DriverError::failed(e)).await;
        }
    }
    let req = AllocateRequest {
        uid,
        name: app.metadata.name_str().to_owned(),
        definition: def.clone(),
        metadata,
        node: ctx.node.name.clone(),
    };
    info!(driver = %def.driver, definition = idx, "allocating");
    let started = std::time::Instant::now();
    match ctx.call(&def.driver, DriverOp::Allocate, driver.allocate(&req)).await {
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
            let resource = ResourceStatus {
                driver: def.driver.clone(),
                identifier: a.identifier.clone(),
                ip_addr: a.ip_addr,
                hw_addr: a.hw_addr,
                expires_at: Some(
                    now.checked_add(lifetime.try_into().unwrap_or(time::Duration::MAX)).unwrap_or(max_time()),
                ),
                details: a.details,
            };
            s.resource = Some(resource.clone());
            // Held from the moment the driver made it, not from the write: if the write
            // fails (cut off from the majority) and the application is declared lost
            // meanwhile, the resource must still be released when the node returns.
            ctx.hold(uid, Leftover { driver: def.driver.clone(), identifier: a.identifier.clone() });
            if write(ctx, &app, Phase::Elected, s).await? {
                info!(identifier = %a.identifier, "allocated");
                observe_allocated(ctx, &app, &def.driver, now);
                ctx.clear_failures(uid);
                return Ok(Some(ctx.config.inspect_interval.min(lifetime)));
            }
            // Deallocation was asked while we allocated: put what we made on the record
            // of its release, or, if the application is gone or finished, among the
            // leftovers; either way the next reconcile releases it until the driver confirms.
            info!(identifier = %a.identifier, "deallocation requested during allocation; releasing");
            let recorded = match ctx.store.get_application_by_uid(uid)? {
                Some(cur) if cur.status.phase == Phase::Deallocate && cur.status.resource.is_none() => {
                    let mut s = cur.status.clone();
                    s.resource = Some(resource);
                    write(ctx, &cur, Phase::Deallocate, s).await?
                }
                _ => false,
            };
            if !recorded {
                ctx.add_leftovers(uid, vec![Leftover { driver: def.driver.clone(), identifier: a.identifier }]);
            }
            Ok(Some(Duration::ZERO))
        }
        Err(DriverError::Unavailable(reason)) => {
            ctx.metrics.allocation_failed(&def.driver);
            postpone(ctx, &app, format!("driver {} unavailable: {reason}", def.driver)).await
        }
        Err(e) => {
            // Whatever a failed attempt left behind goes now, not at the next restart;
            // if that fails too, it is a leftover retried until the driver confirms.
            let mut next = None;
            if let Err(ce) = ctx.call(&def.driver, DriverOp::Deallocate, driver.deallocate(uid, "")).await {
                warn!(error = %ce, "cleanup after a failed allocation failed; retrying it");
                ctx.add_leftovers(uid, vec![Leftover { driver: def.driver.clone(), identifier: String::new() }]);
                next = Some(backoff(ctx.failure(uid)));
            }
            Ok(earliest(fail_attempt(ctx, &app, idx, &def.driver, &e).await?, next))
        }
    }
}

/// Back to NEW without counting an attempt: not the definition's fault (its driver's
/// backend is down, or the secrets' provider says "not now"). The election places it
/// again when the driver is available and no provider holds it.
async fn postpone(ctx: &Ctx, app: &Application, message: String) -> Result<Option<Duration>, StoreError> {
    let mut s = transition(&app.status, Phase::New, message);
    s.node = None;
    if write(ctx, app, Phase::Elected, s).await? {
        ctx.release_definition(app.metadata.uid.unwrap_or_default());
    }
    ctx.wake_election();
    Ok(None)
}

/// The latest time `OffsetDateTime` can carry, for expiries past it.
fn max_time() -> OffsetDateTime {
    time::PrimitiveDateTime::MAX.assume_utc()
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
    ctx.hold(uid, Leftover { driver: res.driver.clone(), identifier: res.identifier.clone() });
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
    // Ended and cleaned up before, but DEALLOCATED could not be written then.
    let inspected = match ctx.ended(uid) {
        Some(how) => Ok(ResourceState::Ended(how)),
        None => ctx.call(&res.driver, DriverOp::Inspect, driver.inspect(uid, &res.identifier)).await,
    };
    match inspected {
        Ok(ResourceState::Running) => {
            ctx.clear_failures(uid);
            Ok(Some(next))
        }
        Ok(ResourceState::Ended(how)) => {
            // Clean up what the resource left (work directory, container) before saying so.
            ctx.set_ended(uid, Some(how.clone()));
            if let Err(e) = ctx.call(&res.driver, DriverOp::Deallocate, driver.deallocate(uid, &res.identifier)).await {
                warn!(error = %e, "cleanup of an ended resource failed; retrying");
                return Ok(Some(backoff(ctx.failure(uid))));
            }
            ctx.unhold(uid);
            let s = transition(&app.status, Phase::Deallocated, format!("resource ended by itself: {how}"));
            // A failed write keeps `how` for the retry; a refused one means the
            // application moved on (deallocated meanwhile): either way this is done.
            write(ctx, &app, Phase::Allocated, s).await?;
            ctx.set_ended(uid, None);
            Ok(None)
        }
        Ok(ResourceState::Lost(why)) => {
            ctx.unhold(uid);
            let mut next = None;
            if let Err(e) = ctx.call(&res.driver, DriverOp::Deallocate, driver.deallocate(uid, &res.identifier)).await {
                warn!(error = %e, "cleanup of a lost resource failed; retrying it");
                ctx.add_leftovers(uid, vec![Leftover { driver: res.driver.clone(), identifier: res.identifier }]);
                next = Some(backoff(ctx.failure(uid)));
            }
            let s = transition(&app.status, Phase::Error, format!("resource lost: {why}"));
            write(ctx, &app, Phase::Allocated, s).await?;
            Ok(next)
        }
        Err(e) => {
            warn!(error = %e, "inspect failed");
            Ok(Some(backoff(ctx.failure(uid)).max(next)))
        }
    }
}

async fn release(ctx: &Ctx, app: Application) -> Result<Option<Duration>, StoreError> {
    let uid = app.metadata.uid.unwrap_or_default();
    // Why it is being released: the message of the move to DEALLOCATE (later messages
    // may be failed attempts).
    let why = app
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.phase == Phase::Deallocate)
        .map(|h| h.message.clone())
        .unwrap_or_else(|| app.status.message.clone());
    // No resource record: deallocated while its allocation ran, which may have made
    // something (or may still, after a crash): release by uid.
    let target = match &app.status.resource {
        Some(r) => Some((r.driver.clone(), r.identifier.clone())),
        None => definition_driver(ctx, &app).map(|d| (d, String::new())),
    };
    if let Some((name, identifier)) = target {
        let Some(driver) = ctx.drivers.get(&name).cloned() else {
            let s = transition(&app.status, Phase::Error, format!("cannot release: driver {name} is not configured"));
            write(ctx, &app, Phase::Deallocate, s).await?;
            return Ok(None);
        };
        if let Err(e) = ctx.call(&name, DriverOp::Deallocate, driver.deallocate(uid, &identifier)).await {
            // Retried until the driver confirms: giving up would leak the resource.
            let n = ctx.failure(uid);
            let wait = backoff(n);
            warn!(error = %e, attempt = n, "deallocation failed; retrying");
            let note = format!("release attempt {n} failed: {e}; retrying in {} s ({why})", wait.as_secs());
            note_message(ctx, &app, note).await?;
            return Ok(Some(wait));
        }
    }
    ctx.unhold(uid);
    let s = transition(&app.status, Phase::Deallocated, format!("resource released ({why})"));
    if write(ctx, &app, Phase::Deallocate, s).await? {
        info!("deallocated");
        ctx.forget(uid);
        ctx.wake_election();
    }
    Ok(None)
}

/// After a start: queues the release of resources the drivers own for applications
/// that are gone, finished, or placed with another driver or node (orphans), and
/// queues every application with work left, so ELECTED ones are allocated
/// (idempotently) and ALLOCATED ones adopted. Only active ones: finished ones wait
/// for their purge without being read (see [`super::retention`]), NEW ones for the
/// election pass.
pub async fn adopt(ctx: &Ctx, queue: &Queue) {
    for (name, driver) in ctx.drivers.iter() {
        let owned = match ctx.call(name, DriverOp::ListOwned, driver.list_owned()).await {
            Ok(o) => o,
            Err(e) => {
                warn!(driver = %name, error = %e, "cannot list owned resources; orphans stay until the next start");
                continue;
            }
        };
        for r in owned {
            let (keep, app) = match ctx.store.get_application_by_uid(r.uid) {
                Ok(Some(app)) => (holds(ctx, &app, name), Some(app)),
                Ok(None) => (false, None),
                // Unsure: keep it; the next start tries again.
                Err(_) => (true, None),
            };
            let app_name = app.as_ref().map(|a| a.metadata.name_str().to_owned()).unwrap_or_default();
            if keep {
                info!(driver = %name, app = %app_name, uid = %r.uid, identifier = %r.identifier, "adopted resource");
                ctx.hold(r.uid, Leftover { driver: name.clone(), identifier: r.identifier });
            } else {
                // Gone, finished, or another node's now (this node was declared lost).
                let (phase, node) = match &app {
                    Some(a) => (a.status.phase.to_string(), a.status.node.clone().unwrap_or_default()),
                    None => ("gone".to_owned(), String::new()),
                };
                info!(
                    driver = %name, app = %app_name, uid = %r.uid, identifier = %r.identifier, %phase, %node,
                    "removing orphaned resource: its application is not this node's"
                );
                ctx.add_leftovers(r.uid, vec![Leftover { driver: name.clone(), identifier: r.identifier }]);
                queue.now(r.uid);
            }
        }
    }
    for phase in [Phase::Elected, Phase::Allocated, Phase::Deallocate] {
        if let Ok(uids) = ctx.store.uids_in_phase(phase) {
            uids.into_iter().for_each(|u| queue.now(u));
        }
    }
    ctx.wake_election();
}

/// Removes temporary label versions whose `removeAt` has passed. Applications keep
/// the version they pinned (their label snapshot), so this never breaks one.
pub async fn remove_due_labels(ctx: &Ctx) {
    if !ctx.leads() {
        return;
    }
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
