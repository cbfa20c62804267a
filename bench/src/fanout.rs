//! Watch fan-out: `W` watchers, each a separate client with its own connection (as
//! `W` CI servers would be), all watching applications; one application is created
//! per round, and the round's figure is the time from sending that create to the
//! moment the *last* watcher has its ADDED event. Rounds run one after the other,
//! each after the previous application is ALLOCATED, so they do not overlap.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::alloc::{Stamp, Tracker, application};
use crate::daemon::Daemon;
use crate::stats::Latency;

/// How an ADDED event's type appears in a watch line.
const ADDED: &[u8] = b"\"ADDED\"";

/// Open watches a user may hold (fishd's `max_watches_per_user` is 32).
const WATCHES_PER_USER: usize = 25;

/// One fan-out measurement.
#[derive(Clone, Debug, Serialize)]
pub struct FanOut {
    pub watchers: usize,
    pub rounds: usize,
    /// Create sent → the last watcher's event.
    pub last_watcher: Latency,
    /// Create sent → the first watcher's event.
    pub first_watcher: Latency,
    /// Create sent → its 201 answer (the durable commit plus the HTTP round trip).
    pub create_round_trip: Latency,
}

/// Creates `users` admin users and returns their tokens: each user may hold only
/// [`WATCHES_PER_USER`]-odd watches, so many watchers need several users.
async fn watch_users(d: &Daemon, prefix: &str, users: usize) -> Result<Vec<String>> {
    let mut tokens = Vec::new();
    for u in 0..users {
        let body = json!({"apiVersion": "aquarium.fish/v1", "kind": "User",
                          "metadata": {"name": format!("{prefix}-{u}")}, "spec": {"roles": ["admin"]}});
        let (code, v) = d.post("/api/v1/users", &body).await?;
        if code != 201 {
            bail!("create user: {code} {v}");
        }
        tokens.push(v["status"]["token"].as_str().context("new user without a token")?.to_owned());
    }
    Ok(tokens)
}

/// Runs `rounds` rounds with `watchers` watchers.
pub async fn fan_out(d: &Daemon, tracker: &Tracker, tag: &str, watchers: usize, rounds: usize) -> Result<FanOut> {
    let tokens = watch_users(d, &format!("watch-{tag}"), watchers.div_ceil(WATCHES_PER_USER)).await?;
    let rv = d.revision().await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let r = d
            .new_client()?
            .get(d.url(&format!("/api/v1/applications?watch=true&resourceVersion={rv}")))
            .bearer_auth(&tokens[w / WATCHES_PER_USER])
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("watcher {w}: {}", r.status());
        }
        let tx = tx.clone();
        let prefix = format!("fan-{tag}-");
        tasks.push(tokio::spawn(async move {
            let mut body = r.bytes_stream();
            let mut buf: Vec<u8> = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                // Stamped on arrival, before any parsing.
                let now = Instant::now();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    // Only ADDED events count: skip the others (MODIFIED as each is
                    // allocated) unparsed, so 1,000 watchers cost this process less CPU.
                    if !line.windows(ADDED.len()).any(|w| w == ADDED) {
                        continue;
                    }
                    let Ok(ev) = serde_json::from_slice::<Value>(&line) else { continue };
                    let name = ev["object"]["metadata"]["name"].as_str().unwrap_or_default();
                    if ev["type"] == "ADDED" && name.starts_with(&prefix) && tx.send((name.to_owned(), now)).is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(tx);
    let mut last = Vec::new();
    let mut first = Vec::new();
    let mut round_trip = Vec::new();
    for r in 0..rounds {
        let name = format!("fan-{tag}-{r}");
        let t0 = Instant::now();
        let (code, v) = d.post("/api/v1/applications", &application(&name, "bench")).await?;
        round_trip.push(t0.elapsed());
        if code != 201 {
            bail!("create {name}: {code} {v}");
        }
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got.len() < watchers {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((n, at))) if n == name => got.push(at),
                Ok(Some(_)) => {}
                Ok(None) => bail!("every watcher ended"),
                Err(_) => bail!("round {r}: only {} of {watchers} watchers saw {name} within 30 s", got.len()),
            }
        }
        last.push(got.iter().max().copied().unwrap_or(t0) - t0);
        first.push(got.iter().min().copied().unwrap_or(t0) - t0);
        // The application's own allocation must not overlap the next round.
        tracker.wait(&[name], Stamp::Allocated, Duration::from_secs(30)).await?;
    }
    for t in tasks {
        t.abort();
    }
    Ok(FanOut {
        watchers,
        rounds,
        last_watcher: Latency::of(last),
        first_watcher: Latency::of(first),
        create_round_trip: Latency::of(round_trip),
    })
}
