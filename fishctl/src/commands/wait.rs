//! `--wait`: follow applications until each reaches a phase, with a spinner on a
//! terminal and one line per change when piped.
//!
//! It watches (the same reconnecting watch as `get -w`) and falls back to polling when
//! the server refuses the watch. It fails when an application ends in ERROR, ends in
//! another final phase than the one awaited, or when the timeout passes.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use api_types::{Application, Phase, WatchEventType};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::client::{Client, ClientError, ListQuery, WatchUpdate, Watcher};
use crate::kind::Kind;
use crate::output::Resource;

/// How often the polling fallback asks; an allocation takes seconds at least.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Where one application stands.
#[derive(Clone, Debug, PartialEq)]
enum State {
    Waiting(String),
    Done,
    Failed(String),
}

/// Shows progress: spinners, or plain lines.
enum Progress {
    Bars { _multi: MultiProgress, bars: BTreeMap<String, ProgressBar> },
    Lines { start: Instant },
}

impl Progress {
    fn new(names: &[String]) -> Progress {
        if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
            return Progress::Lines { start: Instant::now() };
        }
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = names
            .iter()
            .map(|n| {
                let bar = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                bar.set_message(format!("application/{n} waiting"));
                bar.enable_steady_tick(Duration::from_millis(120));
                (n.clone(), bar)
            })
            .collect();
        Progress::Bars { _multi: multi, bars }
    }

    fn update(&self, name: &str, summary: &str, state: &State) {
        match self {
            Progress::Bars { bars, .. } => {
                if let Some(bar) = bars.get(name) {
                    let msg = format!("application/{name} {summary}");
                    match state {
                        State::Waiting(_) => bar.set_message(msg),
                        State::Done => bar.finish_with_message(format!("✓ {msg}")),
                        State::Failed(_) => bar.abandon_with_message(format!("✗ {msg}")),
                    }
                }
            }
            Progress::Lines { start } => {
                let _ = super::out(&format!("application/{name} {summary} ({:.1}s)\n", start.elapsed().as_secs_f64()));
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bars { bars, .. } = self {
            for bar in bars.values().filter(|b| !b.is_finished()) {
                bar.abandon();
            }
        }
    }
}

/// What reaching `phase` means for an application waiting for `target`.
fn judge(app: &Application, target: Phase) -> State {
    let phase = app.status.phase;
    let msg = if app.status.message.is_empty() { String::new() } else { format!(": {}", app.status.message) };
    if phase == target {
        State::Done
    } else if phase == Phase::Error {
        State::Failed(format!("ended in ERROR{msg}"))
    } else if phase.is_terminal() {
        State::Failed(format!("ended {phase}{msg} instead of {target}"))
    } else {
        State::Waiting(phase.to_string())
    }
}

fn matches(name: &str, obj: &Value) -> bool {
    let field = |p: &str| obj.pointer(p).and_then(Value::as_str) == Some(name);
    field("/metadata/name") || field("/metadata/uid")
}

/// Tracks every application until each is done or failed.
struct Tracker {
    target: Phase,
    states: BTreeMap<String, State>,
    progress: Progress,
}

impl Tracker {
    fn observe(&mut self, event: WatchEventType, obj: &Value) {
        let Some(key) = self.states.keys().find(|k| matches(k, obj)).cloned() else { return };
        if !matches!(self.states.get(&key), Some(State::Waiting(_))) {
            return;
        }
        let (state, summary) = if event == WatchEventType::Deleted {
            // Purged after retention: that is as deallocated as it gets.
            let s = if self.target == Phase::Deallocated { State::Done } else { State::Failed("was deleted".into()) };
            (s, "deleted".to_owned())
        } else {
            match serde_json::from_value::<Application>(obj.clone()) {
                Ok(app) => (judge(&app, self.target), app.summary()),
                Err(e) => (State::Failed(format!("unreadable answer: {e}")), "unreadable".to_owned()),
            }
        };
        if self.states.get(&key) != Some(&state) {
            self.progress.update(&key, &summary, &state);
            self.states.insert(key, state);
        }
    }

    fn pending(&self) -> Vec<&String> {
        self.states.iter().filter(|(_, s)| matches!(s, State::Waiting(_))).map(|(k, _)| k).collect()
    }

    fn result(&self) -> Result<()> {
        let failures: Vec<String> = self
            .states
            .iter()
            .filter_map(|(k, s)| match s {
                State::Failed(why) => Some(format!("application/{k} {why}")),
                _ => None,
            })
            .collect();
        if failures.is_empty() { Ok(()) } else { bail!("{}", failures.join("; ")) }
    }
}

/// Waits until every application in `names` is in `target`.
pub async fn wait_for(client: &Client, names: &[String], target: Phase, timeout: Duration) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let mut tracker = Tracker {
        target,
        states: names.iter().map(|n| (n.clone(), State::Waiting("?".into()))).collect(),
        progress: Progress::new(names),
    };
    let outcome = tokio::time::timeout(timeout, follow(client, &mut tracker)).await;
    tracker.progress.finish();
    match outcome {
        Ok(Ok(())) => tracker.result(),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let pending: Vec<String> = tracker
                .states
                .iter()
                .filter_map(|(k, s)| match s {
                    State::Waiting(p) => Some(format!("application/{k} ({p})")),
                    _ => None,
                })
                .collect();
            tracker.result()?;
            bail!("timed out after {} waiting for {}", humantime::format_duration(timeout), pending.join(", "))
        }
    }
}

async fn follow(client: &Client, tracker: &mut Tracker) -> Result<()> {
    // One look first, so that applications already there (or already gone) count at once.
    poll_once(client, tracker).await?;
    let mut watcher = Watcher::new(client.clone(), Kind::Application, ListQuery::default());
    while !tracker.pending().is_empty() {
        match watcher.next().await {
            Ok(WatchUpdate::Event(t, obj)) => tracker.observe(t, &obj),
            Ok(WatchUpdate::Resync(items)) => {
                for obj in &items {
                    tracker.observe(WatchEventType::Modified, obj);
                }
            }
            Err(e) if watch_unsupported(&e) => {
                tracing::debug!("watch refused ({e}); polling instead");
                return poll(client, tracker).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A server (or proxy) that does not stream: worth falling back to polling.
fn watch_unsupported(e: &ClientError) -> bool {
    matches!(e.api_code(), Some(400 | 404 | 405 | 406 | 501)) || matches!(e, ClientError::Decode { .. })
}

async fn poll(client: &Client, tracker: &mut Tracker) -> Result<()> {
    while !tracker.pending().is_empty() {
        tokio::time::sleep(POLL_EVERY).await;
        poll_once(client, tracker).await?;
    }
    Ok(())
}

async fn poll_once(client: &Client, tracker: &mut Tracker) -> Result<()> {
    let pending: Vec<String> = tracker.pending().into_iter().cloned().collect();
    for name in pending {
        match client.get(Kind::Application, &name).await {
            Ok(obj) => tracker.observe(WatchEventType::Modified, &obj),
            Err(ClientError::Api(b)) if b.code == 404 => {
                let obj = serde_json::json!({"metadata": {"name": name}});
                tracker.observe(WatchEventType::Deleted, &obj);
            }
            Err(e) if e.is_transient() => tracing::warn!("{e}; retrying"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn app(phase: &str, message: &str) -> Application {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a"}, "spec": {"label": "l"}, "status": {"phase": phase, "message": message}
        }))
        .unwrap()
    }

    #[test]
    fn judging_phases() {
        assert_eq!(judge(&app("ALLOCATED", ""), Phase::Allocated), State::Done);
        assert_eq!(judge(&app("ELECTED", ""), Phase::Allocated), State::Waiting("ELECTED".into()));
        assert_eq!(
            judge(&app("ERROR", "driver failed"), Phase::Allocated),
            State::Failed("ended in ERROR: driver failed".into())
        );
        assert_eq!(
            judge(&app("DEALLOCATED", "exited with code 0"), Phase::Allocated),
            State::Failed("ended DEALLOCATED: exited with code 0 instead of ALLOCATED".into())
        );
        assert_eq!(judge(&app("DEALLOCATE", ""), Phase::Deallocated), State::Waiting("DEALLOCATE".into()));
        assert_eq!(judge(&app("DEALLOCATED", ""), Phase::Deallocated), State::Done);
    }

    #[test]
    fn tracker_collects_failures() {
        let mut t = Tracker {
            target: Phase::Allocated,
            states: [("a".to_owned(), State::Waiting("?".into())), ("b".to_owned(), State::Waiting("?".into()))].into(),
            progress: Progress::Lines { start: Instant::now() },
        };
        let obj = |name: &str, phase: &str| serde_json::json!({"metadata": {"name": name}, "spec": {"label": "l"}, "status": {"phase": phase, "message": "m"}});
        t.observe(WatchEventType::Modified, &obj("other", "ERROR"));
        t.observe(WatchEventType::Modified, &obj("a", "ALLOCATED"));
        assert_eq!(t.pending(), ["b"]);
        t.observe(WatchEventType::Modified, &obj("b", "ERROR"));
        assert!(t.pending().is_empty());
        assert_eq!(t.result().unwrap_err().to_string(), "application/b ended in ERROR: m");
    }
}
