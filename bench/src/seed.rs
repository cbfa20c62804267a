//! Fast seeding: a bench node's data directory filled with `N` finished (DEALLOCATED)
//! applications, so that figures "with 100,000 stored" need not first create 100,000
//! through the API (about 3 minutes per 10,000 on this machine).
//!
//! Nothing is faked below the store: the applications are written with the very
//! commands the API and the reconciler send for one application's life, in the same
//! order, through fishd's own [`Store`] (so the same Raft log, snapshots, indexes,
//! ballots and event history): `Apply` (as `POST /api/v1/applications` does, owner
//! `admin`), the node's `Vote` (in commands of 256, as the election sends them), the
//! ALLOCATED status, `RequestDeallocate` and the DEALLOCATED status. The statuses are
//! those of a template application that really went through this fishd and the
//! `test` driver first, with its uid and times replaced. Only the batching differs a
//! little: [`IN_FLIGHT`] commands are in flight at once, so each log entry carries a
//! few dozen (fishd's group commit), about what a burst through the API makes.
//!
//! `fish-bench seed --dir D --stored N` prepares `D` (a fresh fishd is started there
//! once for its CA, admin user, label `bench` and the template, then stopped), seeds
//! it, and prints how to start fishd on it: `fishd --config D/fish.yml`. With
//! `--via-api` it creates the same applications through the API instead (bursts of
//! 1,000 over 16 connections), for comparing the file they leave.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use api_types::{Application, ApplicationStatus, Node, Phase};
use fishd::bootstrap::ADMIN;
use fishd::store::ballots::{BallotVote, Room, Vote};
use fishd::store::{ApplyItem, Command, FishNode, Response, Store, StoreOptions};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

use crate::alloc::{Stamp, Tracker, application, burst, label_yaml};
use crate::daemon::Daemon;
use crate::stats::round3;

/// The label every seeded (and benchmarked) application uses.
pub const LABEL: &str = "bench";
/// Names of seeded applications: `seeded-<i>`; `seeded-0` is the template.
const PREFIX: &str = "seeded";
/// Applications written per wave (each wave runs the five steps for all of them).
const WAVE: usize = 5_000;
/// Commands in flight at once by default. fishd puts every waiting proposal into the
/// next log entry (two entries in flight), and Raft keeps the last 100 entries after
/// each snapshot: thousands in flight make entries of 512 proposals and leave a log of
/// ~100 MB in the file (10× the bytes per application that real traffic leaves), so
/// this stays near what a burst through the API makes.
pub const IN_FLIGHT: usize = 64;
/// Votes per `Vote` command, as the election sends them.
const VOTES_PER_COMMAND: usize = 256;

/// What a seeding did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Seeded {
    /// Finished applications stored now (the template included).
    pub stored: usize,
    /// `store` (commands through fishd's Store) or `api` (bursts through the API).
    pub via: String,
    /// Time to write them (after the template), seconds.
    pub seconds: f64,
    /// Bytes of the redb file afterwards, and per stored application.
    pub store_bytes: u64,
    pub store_bytes_per_app: f64,
}

/// The statuses the template application had when ALLOCATED and when DEALLOCATED, as
/// JSON, with the uid they mention.
struct Template {
    uid: Uuid,
    allocated: Value,
    deallocated: Value,
}

impl Template {
    /// The template's status `which` for application `uid`: its uid replaced (the test
    /// driver's identifier is `test-<uid>`), history entry `i` at `times[i]` (the last
    /// time for any further entry), the resource's expiry as far past the allocation as
    /// the template's was.
    fn status(&self, which: &Value, uid: Uuid, times: &[OffsetDateTime]) -> Result<ApplicationStatus> {
        let text = serde_json::to_string(which)?
            .replace(&self.uid.simple().to_string(), &uid.simple().to_string())
            .replace(&self.uid.hyphenated().to_string(), &uid.hyphenated().to_string());
        let mut s: ApplicationStatus = serde_json::from_str(&text)?;
        let last = *times.last().context("no times")?;
        let allocated_at = s.history.iter().find(|h| h.phase == Phase::Allocated).map(|h| h.at);
        for (i, h) in s.history.iter_mut().enumerate() {
            h.at = times.get(i).copied().unwrap_or(last);
        }
        let new_allocated_at = s.history.iter().find(|h| h.phase == Phase::Allocated).map(|h| h.at);
        if let Some(r) = &mut s.resource
            && let (Some(e), Some(was), Some(now)) = (r.expires_at, allocated_at, new_allocated_at)
        {
            r.expires_at = Some(now + (e - was));
        }
        Ok(s)
    }
}

/// Seeds `dir` (a bench node's directory: `fish.yml`, `data/`) up to `stored` finished
/// applications. Starts fishd there first if it never ran (fresh CA, admin, label),
/// and runs the template application through it.
pub async fn seed(fishd: &Path, dir: &Path, stored: usize, via_api: bool, in_flight: usize) -> Result<Seeded> {
    if stored == 0 {
        bail!("--stored must be at least 1 (the template application)");
    }
    let (template, node_name) = prepare(fishd, dir).await?;
    let started = Instant::now();
    if via_api {
        let (d, _) = Daemon::attach(fishd, dir).await?;
        let tracker = Tracker::start(&d).await?;
        let clients = (0..16).map(|_| d.new_client()).collect::<Result<Vec<_>>>()?;
        let mut done = 1;
        let mut chunk = 0;
        while done < stored {
            let n = 1000.min(stored - done);
            info!(done, n, "seeding through the API");
            burst(&d, &tracker, &clients, &format!("{PREFIX}-api{chunk}"), LABEL, n, done).await?;
            chunk += 1;
            done += n;
        }
        drop(tracker);
        let mut d = d;
        d.stop().await?;
    } else {
        write_store(&dir.join("data"), &node_name, &template, stored, in_flight.max(1)).await?;
    }
    let seconds = round3(started.elapsed().as_secs_f64());
    let store_bytes = std::fs::metadata(dir.join("data").join("fish.redb"))?.len();
    Ok(Seeded {
        stored,
        via: if via_api { "api" } else { "store" }.into(),
        seconds,
        store_bytes,
        store_bytes_per_app: round3(store_bytes as f64 / stored as f64),
    })
}

/// Starts fishd on `dir` (fresh, or as it is), applies the label, runs the template
/// application `seeded-0` to DEALLOCATED and stops fishd again. Returns the template
/// and the node's name.
async fn prepare(fishd: &Path, dir: &Path) -> Result<(Template, String)> {
    let fresh = !dir.join("data").join("fish.redb").exists();
    let (mut d, _) = if fresh { Daemon::start(fishd, dir).await? } else { Daemon::attach(fishd, dir).await? };
    d.apply(&label_yaml(LABEL)).await?;
    let name = format!("{PREFIX}-0");
    let tracker = Tracker::start(&d).await?;
    let (code, v) = d.get(&format!("/api/v1/applications/{name}")).await?;
    if code == 200 {
        bail!("{} holds {name} already: seed a fresh directory", dir.display());
    }
    let (code, v2) = d.post("/api/v1/applications", &application(&name, LABEL)).await?;
    if code != 201 {
        bail!("creating the template application: {code} {v2} ({v})");
    }
    let names = [name.clone()];
    tracker.wait(&names, Stamp::Allocated, Duration::from_secs(60)).await?;
    let (_, allocated) = d.get(&format!("/api/v1/applications/{name}")).await?;
    let (code, v) = d.post(&format!("/api/v1/applications/{name}/deallocate"), &Value::Null).await?;
    if code != 202 {
        bail!("deallocating the template application: {code} {v}");
    }
    tracker.wait(&names, Stamp::Deallocated, Duration::from_secs(60)).await?;
    let (_, deallocated) = d.get(&format!("/api/v1/applications/{name}")).await?;
    drop(tracker);
    d.stop().await?;
    let uid: Uuid = allocated["metadata"]["uid"].as_str().context("template without uid")?.parse()?;
    if allocated["status"]["phase"] != "ALLOCATED" || deallocated["status"]["phase"] != "DEALLOCATED" {
        bail!("the template application did not go ALLOCATED, then DEALLOCATED: {allocated} {deallocated}");
    }
    let template = Template { uid, allocated: allocated["status"].clone(), deallocated: deallocated["status"].clone() };
    Ok((template, d.name.clone()))
}

/// Writes applications `seeded-1` .. `seeded-<stored - 1>` into the store in `data`
/// (fishd not running), in waves of [`WAVE`].
async fn write_store(data: &Path, node_name: &str, template: &Template, stored: usize, in_flight: usize) -> Result<()> {
    let options = StoreOptions {
        node: FishNode { name: node_name.to_owned(), api: String::new() },
        bootstrap: false,
        ..StoreOptions::default()
    };
    let store = Store::open_with(&data.join("fish.redb"), options).await?;
    // The node stopped, so it is recorded as not taking work: say it is ready again
    // (as fishd does when it starts), so its votes elect it.
    let (_, nodes) = store.list_nodes()?;
    let node: Node = nodes
        .into_iter()
        .find(|n| n.metadata.name_str() == node_name)
        .with_context(|| format!("node {node_name} is not in the store"))?;
    let mut ready = node.clone();
    ready.status.ready = true;
    expect_ok(store.execute(Command::PutNode { node: Box::new(ready) }).await?, "mark the node ready")?;

    let t0 = Instant::now();
    let mut next = 1;
    while next < stored {
        let n = WAVE.min(stored - next);
        wave(&store, node_name, template, next, n, in_flight).await?;
        next += n;
        info!(stored = next, seconds = t0.elapsed().as_secs(), "seeded");
    }
    expect_ok(store.execute(Command::PutNode { node: Box::new(node) }).await?, "restore the node")?;
    store.close().await;
    Ok(())
}

fn expect_ok(outcome: fishd::store::Outcome, what: &str) -> Result<Response> {
    outcome.map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Runs `commands` with `in_flight` of them at once; every one must succeed.
async fn run_all(store: &Store, what: &str, commands: Vec<Command>, in_flight: usize) -> Result<()> {
    let mut results = futures::stream::iter(commands.into_iter().map(|c| {
        let store = store.clone();
        async move { store.execute(c).await }
    }))
    .buffer_unordered(in_flight);
    while let Some(r) = results.next().await {
        expect_ok(r?, what)?;
    }
    Ok(())
}

/// One application's life for `seeded-<first>` .. `seeded-<first + n - 1>`, step by
/// step for all of them; each step's commands carry the step's time.
async fn wave(store: &Store, node: &str, template: &Template, first: usize, n: usize, in_flight: usize) -> Result<()> {
    let uids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
    let mut times = vec![OffsetDateTime::now_utc()];
    let mut creates = Vec::with_capacity(n);
    for (i, uid) in uids.iter().enumerate() {
        let app: Application = serde_json::from_value(application(&format!("{PREFIX}-{}", first + i), LABEL))?;
        creates.push(Command::Apply {
            items: vec![ApplyItem::Application { app, uid: *uid }],
            owner: ADMIN.into(),
            now: times[0],
        });
    }
    run_all(store, "create", creates, in_flight).await?;

    let free = Room { slots: crate::daemon::SLOTS, cpu: 1_000_000, ram: 1_000_000 };
    let votes: Vec<BallotVote> = uids
        .iter()
        .map(|uid| BallotVote {
            uid: *uid,
            round: 0,
            vote: Vote::Fit { definition: 0, order: 0, driver: "test".into(), free },
        })
        .collect();
    times.push(OffsetDateTime::now_utc());
    let votes = votes
        .chunks(VOTES_PER_COMMAND)
        .map(|c| Command::Vote { node: node.to_owned(), votes: c.to_vec(), now: times[1] })
        .collect();
    run_all(store, "vote", votes, in_flight).await?;
    if let Some(uid) = uids.first() {
        let app = store.get_application_by_uid(*uid)?.context("a seeded application is missing")?;
        if app.status.phase != Phase::Elected {
            bail!("the node's vote did not elect it: {} {}", app.status.phase, app.status.message);
        }
    }

    // One status write per application, as the node's reconciler sends it: from
    // `expect` to the template's `recorded` status, with this seed's times.
    let moves = |expect: Phase, recorded, times: &[OffsetDateTime]| -> Result<Vec<Command>> {
        uids.iter()
            .map(|uid| {
                Ok(Command::SetApplicationStatus {
                    uid: *uid,
                    expect,
                    status: Box::new(template.status(recorded, *uid, times)?),
                    expect_node: Some(node.to_owned()),
                })
            })
            .collect()
    };

    times.push(OffsetDateTime::now_utc());
    run_all(store, "allocate", moves(Phase::Elected, &template.allocated, &times)?, in_flight).await?;

    times.push(OffsetDateTime::now_utc());
    let release =
        uids.iter().map(|uid| Command::RequestDeallocate { uid: *uid, by: ADMIN.into(), now: times[3] }).collect();
    run_all(store, "deallocate", release, in_flight).await?;

    times.push(OffsetDateTime::now_utc());
    run_all(store, "release", moves(Phase::Deallocate, &template.deallocated, &times)?, in_flight).await
}
