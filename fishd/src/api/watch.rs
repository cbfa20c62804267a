//! Watch streaming shared by every list route: newline-delimited JSON
//! [`WatchEvent`]s.
//!
//! # Guarantees
//! - Nothing is lost between the initial state and the live events: the live
//!   subscription is taken *before* the snapshot (or the history) is read, and live
//!   events at or below the snapshot's revision are skipped.
//! - Nothing is dropped silently: a watcher whose live channel overflowed, or who
//!   resumes from a revision older than the kept history, gets a final `ERROR` event
//!   with code 410 and the stream ends; it lists again and resumes.
//! - A watch ends when the rights it was opened with change: on any change to its
//!   user's record (roles, token, password, rate limit) or the user's deletion, it gets a final
//!   `ERROR` 410 and ends, so the client lists again, authenticated again. Otherwise a
//!   demoted admin would go on seeing every user's applications, and a rotated or
//!   deleted token would keep an open stream.
//! - The stream ends when fishd shuts down.

use std::sync::Arc;

use api_types::{ErrorBody, ErrorReason, WatchEvent, WatchEventType};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::BytesMut;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::AppState;
use super::error::ApiError;
use crate::auth::AuthUser;
use crate::store::{Event, JsonSink, Kind, StoreError};

/// Decides whether an event (its kind already matched) goes to this watcher.
pub type EventFilter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// Parses `?resourceVersion=`. The document types it as an integer, so an empty
/// value is refused like any other non-number (it used to mean "absent", which a
/// client cannot tell from "resume from nothing").
pub fn parse_resource_version(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None => Ok(None),
        // Revisions fit an int64 (as documented); anything beyond is not one of ours.
        Some(s) => s
            .parse::<i64>()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("resourceVersion {s:?} is not a revision number"))),
    }
}

/// Largest piece the initial ADDED lines are sent in (a slice of one buffer, no copy).
const INITIAL_CHUNK: usize = 64 * 1024;

/// Waiting live events sent together stop at about this many bytes.
const COALESCE: usize = 64 * 1024;

/// What one live event means for a watcher.
enum Step {
    Skip,
    Send(Bytes),
    /// The last thing it gets, then the stream ends.
    End(Bytes),
}

/// Appends the ADDED line of `object` (JSON, e.g. as stored) to `buf`: the bytes
/// `serde_json` gives for `WatchEvent { type: ADDED, object }` and a newline.
pub fn push_added(buf: &mut Vec<u8>, object: &[u8]) {
    buf.extend_from_slice(br#"{"type":"ADDED","object":"#);
    buf.extend_from_slice(object);
    buf.extend_from_slice(b"}\n");
}

/// The ADDED lines of a watch's initial state, as the store hands over the objects'
/// stored JSON.
#[derive(Debug, Default)]
pub struct AddedLines {
    pub revision: u64,
    pub lines: Vec<u8>,
}

impl JsonSink for AddedLines {
    fn revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    fn object(&mut self, json: &[u8]) {
        push_added(&mut self.lines, json);
    }
}

/// The ADDED lines of typed objects (kinds not served from stored JSON).
pub fn added_lines<T: serde::Serialize>(items: &[T]) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    for item in items {
        push_added(&mut buf, &serde_json::to_vec(item)?);
    }
    Ok(buf)
}

/// Answers a watch of `kind`: the current objects (from `snapshot`: its revision and
/// their ADDED lines, see [`push_added`]), or every change after `resource_version`,
/// then live changes.
pub fn watch_response(
    state: &AppState,
    user: &AuthUser,
    kind: Kind,
    resource_version: Option<u64>,
    filter: EventFilter,
    snapshot: impl FnOnce() -> Result<(u64, Vec<u8>), StoreError>,
) -> Result<Response, ApiError> {
    let guard = state.quotas.open_watch(&user.name, state.limits.max_watches_per_user)?;
    // Subscribe first: anything committed after this point reaches `live`.
    let mut live = state.store.subscribe();
    let admin = user.is_admin();
    let me = user.name.clone();
    let caller = user.name.clone();
    let visible = move |e: &Event| {
        e.kind == kind && (admin || kind != Kind::Application || e.owner.as_deref() == Some(me.as_str())) && filter(e)
    };
    let mut initial: Vec<u8> = Vec::new();
    let mut expired: Option<String> = None;
    let seen = match resource_version {
        Some(rv) => match state.store.events_since(rv)? {
            Ok((current, events)) => {
                for e in events.iter().filter(|e| visible(e)) {
                    initial.extend_from_slice(&e.watch_line());
                }
                current.max(rv)
            }
            Err(e) => {
                expired = Some(format!("{e}; list again and watch from the list's resourceVersion"));
                0
            }
        },
        None => {
            let (rev, lines) = snapshot()?;
            initial = lines;
            rev
        }
    };
    let mut initial = Bytes::from(initial);
    let shutdown = state.shutdown.clone();
    let step = move |e: &Event| {
        // Committed after the caller was authenticated (this subscription came
        // later), whatever its revision.
        if e.kind == Kind::User && object_name(e) == caller {
            let message =
                format!("user {caller:?} changed or was deleted; list again with valid credentials and watch again");
            return Step::End(line(&expired_event(message)));
        }
        if e.revision <= seen || !visible(e) {
            return Step::Skip;
        }
        // Encoded once, shared by every watcher of this event.
        Step::Send(e.watch_line())
    };
    let stream = async_stream::stream! {
        let _guard = guard;
        while !initial.is_empty() {
            let piece = initial.split_to(initial.len().min(INITIAL_CHUNK));
            yield Ok::<Bytes, std::convert::Infallible>(piece);
        }
        if let Some(message) = expired {
            yield Ok(line(&expired_event(message)));
            return;
        }
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = live.recv() => next,
            };
            // Events already waiting go out with this one, in one write: in a burst a
            // frame per event (one TLS record, one system call each) was most of what a
            // watch cost, and a cluster node streams every node's changes.
            let mut out = BytesMut::new();
            let mut end = None;
            let mut next = Some(next);
            while let Some(n) = next.take() {
                match n {
                    Ok(e) => match step(&e) {
                        Step::Skip => {}
                        Step::Send(b) => out.extend_from_slice(&b),
                        Step::End(b) => end = Some(b),
                    },
                    Err(RecvError::Lagged(n)) => {
                        let message = format!("watch fell {n} events behind and was closed; list again and resume");
                        end = Some(line(&expired_event(message)));
                    }
                    // Nothing more to say: an empty last piece is not sent.
                    Err(RecvError::Closed) => end = Some(Bytes::new()),
                }
                if end.is_none() && out.len() < COALESCE {
                    next = match live.try_recv() {
                        Ok(e) => Some(Ok(e)),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
                    };
                }
            }
            if !out.is_empty() {
                yield Ok(out.freeze());
            }
            if let Some(last) = end {
                if !last.is_empty() {
                    yield Ok(last);
                }
                break;
            }
        }
    };
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

fn expired_event(message: String) -> WatchEvent {
    let body = ErrorBody::new(ErrorReason::Expired, message);
    WatchEvent {
        event_type: WatchEventType::Error,
        object: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
    }
}

fn line(e: &WatchEvent) -> Bytes {
    let mut v = serde_json::to_vec(e).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The value of `metadata.name` of an event's object.
pub fn object_name(e: &Event) -> &str {
    e.object().pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_resource_version_is_refused_like_any_non_number() {
        assert_eq!(parse_resource_version(None).ok(), Some(None));
        assert_eq!(parse_resource_version(Some("42")).ok(), Some(Some(42)));
        for bad in ["", " ", "-1", "x", "99999999999999999999"] {
            match parse_resource_version(Some(bad)) {
                Err(ApiError::BadRequest(m)) => assert!(m.contains("resourceVersion"), "{m}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }
}
