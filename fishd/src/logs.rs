//! Logs of finished resources, kept until their application is removed.
//!
//! A driver that captures output moves the log of a resource it releases to
//! `<data_dir>/logs/<uid>.log` ([`keep`]), so `fishctl logs` still answers for a
//! DEALLOCATED or ERROR application. The [`janitor`] removes a kept log when its
//! application leaves the store (purged after `historyRetention`, or deleted), and sweeps
//! logs whose application is gone at start and every [`SWEEP`] (events missed while
//! fishd was down, or while a subscriber lagged).
//!
//! Invariant: a kept log is named by the application's uid, so a new application that
//! reuses a name never shows the output of the old one.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::store::{Kind, Store};
use api_types::WatchEventType;

/// How often logs of applications that are gone are swept, besides the events: rare,
/// since events remove almost all of them at once.
pub const SWEEP: Duration = Duration::from_secs(600);

/// The directory of kept logs.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("logs")
}

/// Where the log of application `uid` is kept once its resource is released.
pub fn kept_path(data_dir: &Path, uid: Uuid) -> PathBuf {
    dir(data_dir).join(format!("{uid}.log"))
}

/// Moves a released resource's log from `live` to its kept place. A missing `live`
/// is fine (nothing was captured, or a retry after a crash already moved it).
pub fn keep(data_dir: &Path, uid: Uuid, live: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir(data_dir))?;
    match std::fs::rename(live, kept_path(data_dir, uid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remove(data_dir: &Path, uid: Uuid) {
    match std::fs::remove_file(kept_path(data_dir, uid)) {
        Ok(()) => debug!(%uid, "kept log removed"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => warn!(%uid, error = %e, "cannot remove a kept log"),
    }
}

/// Removes the kept logs whose application is no longer in the store.
pub fn sweep(store: &Store, data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir(data_dir)) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(uid) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<Uuid>().ok()) else {
            continue;
        };
        if matches!(store.get_application_by_uid(uid), Ok(None)) {
            remove(data_dir, uid);
        }
    }
}

/// Removes kept logs as their applications leave the store, until `stop`.
pub async fn janitor(store: Store, data_dir: PathBuf, stop: CancellationToken) {
    let mut events = store.subscribe();
    sweep(&store, &data_dir);
    let mut tick = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => sweep(&store, &data_dir),
            ev = events.recv() => match ev {
                Ok(ev) if ev.kind == Kind::Application && ev.event_type == WatchEventType::Deleted => {
                    let uid = ev.object().pointer("/metadata/uid").and_then(|u| u.as_str()).and_then(|u| u.parse().ok());
                    if let Some(uid) = uid {
                        remove(&data_dir, uid);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => sweep(&store, &data_dir),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keep_moves_the_log_and_tolerates_a_missing_one() {
        let d = tempfile::tempdir().unwrap();
        let uid = Uuid::now_v7();
        let live = d.path().join("output.log");
        std::fs::write(&live, "hello\n").unwrap();
        keep(d.path(), uid, &live).unwrap();
        assert!(!live.exists());
        assert_eq!(std::fs::read_to_string(kept_path(d.path(), uid)).unwrap(), "hello\n");
        keep(d.path(), uid, &live).unwrap();
        assert!(kept_path(d.path(), uid).exists(), "a retry must not lose the kept log");
    }

    #[tokio::test]
    async fn sweep_removes_logs_of_applications_not_in_the_store() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(&d.path().join("fish.redb")).await.unwrap();
        let uid = Uuid::now_v7();
        std::fs::create_dir_all(dir(d.path())).unwrap();
        std::fs::write(kept_path(d.path(), uid), "x").unwrap();
        std::fs::write(dir(d.path()).join("not-a-uid.txt"), "x").unwrap();
        sweep(&store, d.path());
        assert!(!kept_path(d.path(), uid).exists());
        assert!(dir(d.path()).join("not-a-uid.txt").exists(), "only kept logs are swept");
    }
}
