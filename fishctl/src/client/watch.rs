//! A watch that survives fishd restarts and dropped connections.
//!
//! # Guarantees
//! - After a reconnect the watch resumes from the last `resourceVersion` seen, so no
//!   change is skipped and none is repeated (the server replays every change after it).
//! - When the server can no longer resume (an `ERROR` event with code 410), the
//!   watcher lists again and hands the whole list over as one [`WatchUpdate::Resync`],
//!   so the caller can replace its state rather than guess what it missed.
//!
//! # Assumptions
//! - `object.metadata.resourceVersion` of each event is the store revision of that change.

use std::time::Duration;

use api_types::{ErrorBody, WatchEventType};
use serde_json::Value;

use super::{Client, ClientError, EventStream, ListQuery};
use crate::kind::Kind;

/// First pause before reconnecting; a restarting fishd is usually back within a second.
const BACKOFF_START: Duration = Duration::from_millis(250);
/// Longest pause between reconnects, so a long outage still ends quickly once it's over.
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// What a [`Watcher`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchUpdate {
    /// One change, as the server sent it.
    Event(WatchEventType, Value),
    /// The complete current list, after the server expired our position: replace all state.
    Resync(Vec<Value>),
}

/// A reconnecting watch of one kind.
#[derive(Debug)]
pub struct Watcher {
    client: Client,
    kind: Kind,
    query: ListQuery,
    resource_version: Option<String>,
    stream: Option<EventStream>,
    backoff: Duration,
}

impl Watcher {
    /// A watch of `kind` that starts with the current objects (as `ADDED` events).
    pub fn new(client: Client, kind: Kind, query: ListQuery) -> Watcher {
        Watcher { client, kind, query, resource_version: None, stream: None, backoff: BACKOFF_START }
    }

    /// Resumes after store revision `rv` (a list's `resourceVersion`) instead of
    /// starting with the current objects.
    pub fn starting_at(mut self, rv: String) -> Watcher {
        self.resource_version = Some(rv);
        self
    }

    /// The last store revision seen.
    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// The next update; reconnects on its own, and fails only on errors that retrying
    /// cannot fix (a bad token, a kind the server does not watch, a broken event).
    pub async fn next(&mut self) -> Result<WatchUpdate, ClientError> {
        loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => match self.client.watch(self.kind, &self.query, self.resource_version.as_deref()).await {
                    Ok(s) => self.stream.insert(s),
                    Err(e) if e.is_transient() => {
                        self.pause(&e).await;
                        continue;
                    }
                    Err(ClientError::Api(body)) if body.code == 410 => return self.resync().await,
                    Err(e) => return Err(e),
                },
            };
            match stream.next().await {
                Some(Ok(ev)) => {
                    self.backoff = BACKOFF_START;
                    if ev.event_type == WatchEventType::Error {
                        self.stream = None;
                        let body: ErrorBody = serde_json::from_value(ev.object).map_err(|e| ClientError::Decode {
                            url: self.client.server().to_owned(),
                            message: format!("bad watch ERROR event: {e}"),
                        })?;
                        if body.code == 410 {
                            return self.resync().await;
                        }
                        return Err(ClientError::Api(body));
                    }
                    if let Some(rv) = resource_version_of(&ev.object) {
                        self.resource_version = Some(rv.to_owned());
                    }
                    return Ok(WatchUpdate::Event(ev.event_type, ev.object));
                }
                Some(Err(e)) if e.is_transient() => {
                    self.stream = None;
                    self.pause(&e).await;
                }
                Some(Err(e)) => return Err(e),
                None => {
                    // The server ended the stream (a restart, an idle timeout): resume at once
                    // the first time, with backoff if it keeps happening.
                    self.stream = None;
                    tracing::debug!(kind = self.kind.plural(), "watch closed by the server; resuming");
                    tokio::time::sleep(self.backoff / 4).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn resync(&mut self) -> Result<WatchUpdate, ClientError> {
        tracing::debug!(kind = self.kind.plural(), "watch position expired; listing again");
        loop {
            match self.client.list(self.kind, &self.query).await {
                Ok(list) => {
                    self.resource_version = Some(list.metadata.resource_version);
                    return Ok(WatchUpdate::Resync(list.items));
                }
                Err(e) if e.is_transient() => self.pause(&e).await,
                Err(e) => return Err(e),
            }
        }
    }

    async fn pause(&mut self, e: &ClientError) {
        tracing::warn!("{e}; retrying in {}", humantime::format_duration(self.backoff));
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// `object.metadata.resourceVersion`, if present.
pub fn resource_version_of(object: &Value) -> Option<&str> {
    object.pointer("/metadata/resourceVersion").and_then(Value::as_str)
}
