//! [`Event`]: one object change, as the state machine publishes it to watches and to
//! the node's own loops, and as the watch history keeps it.
//!
//! Every node applies every change and publishes its event, and in a cluster that is
//! three times the work of a single node for the same applications. So an application
//! written from its typed form carries its stored JSON bytes (which the watch line and
//! the history copy) and the few [`AppFacts`] the loops read on every event; the JSON
//! tree of the object is built only when something asks for it ([`Event::object`]),
//! which in a burst is almost never.

use std::borrow::Cow;
use std::sync::OnceLock;

use api_types::{Application, Phase, WatchEventType};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Which kind of object an event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Label,
    Application,
    Node,
    User,
}

/// One object change.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Record")]
pub struct Event {
    pub revision: u64,
    pub kind: Kind,
    pub event_type: WatchEventType,
    /// The object after the change; for DELETED, the object as it was, with the
    /// deletion's revision as its `resourceVersion`. Parsed from `stored` when first
    /// asked for (see the module); set at once when the event has no stored bytes.
    object: OnceLock<serde_json::Value>,
    /// For applications: the owner, so watches can filter without parsing.
    pub owner: Option<String>,
    /// For an application written from its typed form: what the loops read (else
    /// read from the object).
    facts: Option<AppFacts>,
    /// The event as a watch stream line, encoded by the first watcher that sends it
    /// and shared by all the others (see [`Event::watch_line`]).
    line: OnceLock<bytes::Bytes>,
    /// The object as its table stores it (`serde_json::to_vec` of the typed object),
    /// when the change wrote it so: the watch history and the watch line copy these
    /// bytes instead of printing the object again.
    stored: Option<Vec<u8>>,
}

/// What the reconcile trigger (on every node, for every application event) and the
/// watch filters read of an application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFacts {
    pub uid: Uuid,
    pub phase: Phase,
    /// `status.node`: the node it is elected to, if any.
    pub node: Option<String>,
    /// The name of the label it asks for (`spec.label` without a version).
    pub label_name: String,
}

impl AppFacts {
    /// The facts of `app`; `None` without a uid (never so for a stored application).
    pub fn of(app: &Application) -> Option<AppFacts> {
        Some(AppFacts {
            uid: app.metadata.uid?,
            phase: app.status.phase,
            node: app.status.node.clone(),
            label_name: app.spec.label.name.as_str().to_owned(),
        })
    }

    /// The facts read from an application's JSON; `None` when it has no valid uid or
    /// phase.
    fn from_json(object: &serde_json::Value) -> Option<AppFacts> {
        Some(AppFacts {
            uid: object.pointer("/metadata/uid")?.as_str().and_then(|u| Uuid::try_parse(u).ok())?,
            phase: object.pointer("/status/phase")?.as_str()?.parse().ok()?,
            node: object.pointer("/status/node").and_then(|n| n.as_str()).map(str::to_owned),
            label_name: object
                .pointer("/spec/label")
                .and_then(|l| l.as_str())
                .and_then(|l| l.split(':').next())
                .unwrap_or_default()
                .to_owned(),
        })
    }
}

impl Event {
    /// A change of `object`, given as JSON.
    pub fn new(
        revision: u64,
        kind: Kind,
        event_type: WatchEventType,
        object: serde_json::Value,
        owner: Option<String>,
    ) -> Event {
        Event {
            revision,
            kind,
            event_type,
            object: OnceLock::from(object),
            owner,
            facts: None,
            line: OnceLock::new(),
            stored: None,
        }
    }

    /// A change of an application just written as `stored` (its JSON bytes).
    pub(super) fn of_application(
        revision: u64,
        event_type: WatchEventType,
        stored: Vec<u8>,
        facts: Option<AppFacts>,
        owner: Option<String>,
    ) -> Event {
        Event {
            revision,
            kind: Kind::Application,
            event_type,
            object: OnceLock::new(),
            owner,
            facts,
            line: OnceLock::new(),
            stored: Some(stored),
        }
    }

    /// The object (see [`Event`]'s field).
    pub fn object(&self) -> &serde_json::Value {
        self.object.get_or_init(|| {
            // Bytes this process printed from a typed object: they parse.
            self.stored.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default()
        })
    }

    /// Whether the object came as its stored bytes (an application written typed).
    #[cfg(test)]
    pub(crate) fn has_stored_bytes(&self) -> bool {
        self.stored.is_some()
    }

    /// For an application's event: its uid, phase, node and label.
    pub fn app_facts(&self) -> Option<Cow<'_, AppFacts>> {
        if self.kind != Kind::Application {
            return None;
        }
        match &self.facts {
            Some(f) => Some(Cow::Borrowed(f)),
            None => AppFacts::from_json(self.object()).map(Cow::Owned),
        }
    }

    /// This event as one line of a watch stream (`WatchEvent` JSON and a newline),
    /// encoded once: every watcher of a live event holds the same `Arc<Event>`, so a
    /// thousand watchers cost one serialization.
    pub fn watch_line(&self) -> bytes::Bytes {
        self.line
            .get_or_init(|| {
                /// `api_types::WatchEvent`, borrowing the object instead of copying it.
                #[derive(Serialize)]
                struct Line<'a> {
                    #[serde(rename = "type")]
                    event_type: WatchEventType,
                    object: &'a serde_json::Value,
                }
                let mut v = match self.stored.as_deref() {
                    Some(raw) => {
                        let mut v = Vec::with_capacity(raw.len() + 40);
                        v.extend_from_slice(b"{\"type\":");
                        if serde_json::to_writer(&mut v, &self.event_type).is_err() {
                            return bytes::Bytes::new();
                        }
                        v.extend_from_slice(b",\"object\":");
                        v.extend_from_slice(raw);
                        v.push(b'}');
                        v
                    }
                    None => serde_json::to_vec(&Line { event_type: self.event_type, object: self.object() })
                        .unwrap_or_default(),
                };
                v.push(b'\n');
                bytes::Bytes::from(v)
            })
            .clone()
    }

    /// This event as the watch history stores it: its JSON, with the object's stored
    /// bytes copied in when there are some. Reads back as `serde_json::to_vec` of the
    /// event would (the fields in another order).
    pub(crate) fn history_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let Some(raw) = self.stored.as_deref() else { return serde_json::to_vec(self) };
        /// The event's fields but its object.
        #[derive(Serialize)]
        struct Head<'a> {
            revision: u64,
            kind: Kind,
            event_type: WatchEventType,
            owner: &'a Option<String>,
        }
        let head = Head { revision: self.revision, kind: self.kind, event_type: self.event_type, owner: &self.owner };
        let mut v = Vec::with_capacity(raw.len() + 96);
        serde_json::to_writer(&mut v, &head)?;
        // `{...}` of the head: its closing brace gives way to the object.
        v.pop();
        v.extend_from_slice(b",\"object\":");
        v.extend_from_slice(raw);
        v.push(b'}');
        Ok(v)
    }
}

/// Equal when they say the same: how the object is held (built or still bytes) and
/// whether the line was encoded yet are not part of what an event says.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.revision, self.kind, self.event_type, &self.owner)
            == (other.revision, other.kind, other.event_type, &other.owner)
            && self.object() == other.object()
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        RecordRef {
            revision: self.revision,
            kind: self.kind,
            event_type: self.event_type,
            object: self.object(),
            owner: &self.owner,
        }
        .serialize(serializer)
    }
}

/// An [`Event`] as JSON (the watch history's record).
#[derive(Serialize)]
struct RecordRef<'a> {
    revision: u64,
    kind: Kind,
    event_type: WatchEventType,
    object: &'a serde_json::Value,
    owner: &'a Option<String>,
}

/// [`RecordRef`], read back.
#[derive(Deserialize)]
struct Record {
    revision: u64,
    kind: Kind,
    event_type: WatchEventType,
    object: serde_json::Value,
    #[serde(default)]
    owner: Option<String>,
}

impl From<Record> for Event {
    fn from(r: Record) -> Event {
        Event::new(r.revision, r.kind, r.event_type, r.object, r.owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Application {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aquarium.fish/v1", "kind": "Application",
            "metadata": {"name": "a", "uid": "0190a7e8-0000-7000-8000-000000000001", "resourceVersion": "7"},
            "spec": {"label": "ci:2"},
            "status": {"phase": "ELECTED", "node": "b"}
        }))
        .unwrap()
    }

    #[test]
    fn an_application_event_reads_the_same_from_its_bytes_as_from_its_json() {
        let app = app();
        let facts = AppFacts::of(&app).unwrap();
        let lazy = Event::of_application(
            7,
            WatchEventType::Modified,
            serde_json::to_vec(&app).unwrap(),
            Some(facts.clone()),
            None,
        );
        let eager =
            Event::new(7, Kind::Application, WatchEventType::Modified, serde_json::to_value(&app).unwrap(), None);
        assert_eq!(lazy.app_facts().as_deref(), Some(&facts));
        assert_eq!(eager.app_facts().as_deref(), Some(&facts));
        assert_eq!(facts.node.as_deref(), Some("b"));
        assert_eq!(facts.label_name, "ci");
        assert_eq!(lazy.object(), eager.object());
        assert_eq!(lazy, eager);
        let line: serde_json::Value = serde_json::from_slice(&lazy.watch_line()).unwrap();
        assert_eq!(line, serde_json::from_slice::<serde_json::Value>(&eager.watch_line()).unwrap());
        let kept: Event = serde_json::from_slice(&lazy.history_bytes().unwrap()).unwrap();
        assert_eq!(kept, eager);
    }

    #[test]
    fn other_kinds_have_no_application_facts() {
        let e = Event::new(1, Kind::Label, WatchEventType::Added, serde_json::json!({"metadata": {"name": "x"}}), None);
        assert!(e.app_facts().is_none());
    }
}
