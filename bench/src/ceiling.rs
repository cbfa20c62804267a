//! The store's own ceiling, measured in the same run and on the same filesystem as
//! fishd's data: how many durable redb commits per second one writer gets, and how
//! many commands per second fishd's [`Store`] applies, one at a time and with group
//! commit. Allocation throughput is read against these.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use fishd::store::{Command, Store};
use redb::TableDefinition;
use serde::Serialize;

use crate::stats::round3;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("ceiling");
/// A small write: the size of one index entry plus a short object.
const VALUE_BYTES: usize = 256;
/// Commits before the measured window.
const WARMUP: Duration = Duration::from_millis(500);

/// The store's ceilings.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// One 256-byte insert per durable commit, one writer.
    pub redb_commits_per_s: f64,
    /// fishd `Store::execute` of one small command (a node heartbeat), one at a time:
    /// a durable commit plus fishd's JSON, indexes and event history.
    pub store_commands_per_s_serial: f64,
    /// The same from 64 tasks at once: the writer thread's group commit.
    pub store_commands_per_s_grouped: f64,
}

/// Durable redb commits per second for `window`.
pub fn redb_commits(dir: &Path, window: Duration) -> Result<f64> {
    let db = redb::Database::create(dir.join("ceiling.redb"))?;
    let value = [7u8; VALUE_BYTES];
    // A fresh file grows with its first commits, and growing costs extra syncs: warm
    // it up so the figure is the steady state fishd's (grown) file sees.
    let mut n = 0u64;
    let warm = Instant::now();
    while warm.elapsed() < WARMUP {
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?.insert(n, &value[..])?;
        tx.commit()?;
        n += 1;
    }
    let start = Instant::now();
    let first = n;
    while start.elapsed() < window {
        let tx = db.begin_write()?;
        {
            let mut t = tx.open_table(TABLE)?;
            t.insert(n, &value[..])?;
        }
        tx.commit()?;
        n += 1;
    }
    Ok(round3((n - first) as f64 / start.elapsed().as_secs_f64()))
}

fn heartbeat() -> Result<Command> {
    let node: api_types::Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "ceiling"}}))?;
    Ok(Command::PutNode { node: Box::new(node) })
}

/// fishd store commands per second from `tasks` concurrent callers for `window`.
async fn store_commands(store: &Store, tasks: usize, window: Duration) -> Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, done, cmd) = (store.clone(), done.clone(), heartbeat()?);
        handles.push(tokio::spawn(async move {
            while start.elapsed() < window {
                store.execute(cmd.clone()).await?.ok();
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(round3(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()))
}

/// Measures every ceiling in `dir` (a fresh directory on fishd's filesystem).
pub async fn measure(dir: &Path, window: Duration) -> Result<Ceiling> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let d = dir.to_owned();
    let redb_commits_per_s = tokio::task::spawn_blocking(move || redb_commits(&d, window)).await??;
    let store = Store::open(&dir.join("store.redb")).await?;
    let store_commands_per_s_serial = store_commands(&store, 1, window).await?;
    let store_commands_per_s_grouped = store_commands(&store, 64, window).await?;
    Ok(Ceiling { redb_commits_per_s, store_commands_per_s_serial, store_commands_per_s_grouped })
}
