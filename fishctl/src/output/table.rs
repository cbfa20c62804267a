//! Tables of `get`, kubectl-style: no borders, a header row, columns padded by spaces.

use api_types::{Application, Gate, Label, Node, User};
use comfy_table::{CellAlignment, ContentArrangement, Table, presets};
use time::OffsetDateTime;

use super::{age, short_duration};
use crate::client::one_line;
use crate::kind::Kind;

/// The longest MESSAGE shown in the narrow table; `-o wide` and `describe` show it all.
const MESSAGE_WIDTH: usize = 60;

/// An object kind fishctl can show as a table row.
pub trait Resource {
    /// The kind, for `kind/name` output and messages.
    const KIND: Kind;

    /// `metadata.name`.
    fn name(&self) -> &str;

    /// The column titles.
    fn headers(wide: bool) -> Vec<&'static str>;

    /// One row, as many cells as [`Resource::headers`].
    fn row(&self, wide: bool, now: OffsetDateTime) -> Vec<String>;

    /// The interesting state on one line, for piped watch output and `--wait` progress.
    fn summary(&self) -> String;
}

/// Renders `items` as a table; the header alone when there are none.
pub fn render_table<T: Resource>(items: &[T], wide: bool, now: OffsetDateTime) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(T::headers(wide));
    for item in items {
        table.add_row(item.row(wide, now));
    }
    for col in table.column_iter_mut() {
        col.set_padding((0, 3)).set_cell_alignment(CellAlignment::Left);
    }
    let mut out: String = table.lines().map(|l| l.trim_end().to_owned() + "\n").collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max.saturating_sub(3)).collect();
    t.push_str("...");
    t
}

fn or_dash(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

impl Resource for Application {
    const KIND: Kind = Kind::Application;

    fn name(&self) -> &str {
        self.metadata.name_str()
    }

    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "LABEL", "PHASE", "NODE", "AGE", "MESSAGE"];
        if wide {
            h.extend(["UID", "DEFINITION", "RESOURCE", "EXPIRES"]);
        }
        h
    }

    fn row(&self, wide: bool, now: OffsetDateTime) -> Vec<String> {
        let s = &self.status;
        let label = match (self.spec.label.version, s.label_version) {
            (None, Some(v)) => format!("{}:{v}", self.spec.label.name),
            _ => self.spec.label.to_string(),
        };
        let message = if wide { one_line(&s.message) } else { truncate(&s.message, MESSAGE_WIDTH) };
        let mut row = vec![
            self.name().to_owned(),
            label,
            s.phase.to_string(),
            or_dash(s.node.clone()),
            age(self.metadata.created_at, now),
            message,
        ];
        if wide {
            let resource = s.resource.as_ref();
            row.extend([
                or_dash(self.metadata.uid.map(|u| u.to_string())),
                or_dash(s.definition.map(|d| d.to_string())),
                or_dash(resource.map(|r| r.identifier.clone())),
                or_dash(resource.and_then(|r| r.expires_at).map(|t| expires(t, now))),
            ]);
        }
        row
    }

    fn summary(&self) -> String {
        let s = &self.status;
        let mut out = s.phase.to_string();
        if let Some(n) = &s.node {
            out.push_str(&format!(" node={n}"));
        }
        if !s.message.is_empty() {
            out.push(' ');
            out.push_str(&one_line(&s.message));
        }
        out
    }
}

/// `in 59m`, or `expired 3m ago`.
fn expires(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (at - now).whole_seconds();
    if secs >= 0 {
        format!("in {}", short_duration(secs as u64))
    } else {
        format!("{} ago", short_duration(secs.unsigned_abs()))
    }
}

fn drivers(label: &Label) -> String {
    let mut names: Vec<&str> = Vec::new();
    for d in &label.spec.definitions {
        if !names.contains(&d.driver.as_str()) {
            names.push(&d.driver);
        }
    }
    names.join(",")
}

impl Resource for Label {
    const KIND: Kind = Kind::Label;

    fn name(&self) -> &str {
        self.metadata.name_str()
    }

    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "VERSION", "DRIVERS", "AGE"]
    }

    fn row(&self, _wide: bool, now: OffsetDateTime) -> Vec<String> {
        vec![
            self.name().to_owned(),
            or_dash(self.metadata.version.map(|v| v.to_string())),
            drivers(self),
            age(self.metadata.created_at, now),
        ]
    }

    fn summary(&self) -> String {
        format!("version={} drivers={}", or_dash(self.metadata.version.map(|v| v.to_string())), drivers(self))
    }
}

impl Resource for Node {
    const KIND: Kind = Kind::Node;

    fn name(&self) -> &str {
        self.metadata.name_str()
    }

    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "ROLE", "READY", "MAINTENANCE", "CPU", "RAM", "SLOTS", "APPS"]
    }

    fn row(&self, _wide: bool, _now: OffsetDateTime) -> Vec<String> {
        let s = &self.status;
        vec![
            self.name().to_owned(),
            or_dash(s.role.clone()),
            yes_no(s.ready),
            on_off(s.maintenance),
            format!("{}/{}", s.allocated.cpu, s.capacity.cpu),
            format!("{}/{}", s.allocated.ram, s.capacity.ram),
            format!("{}/{}", s.allocated.slots, s.capacity.slots),
            s.allocated.applications.to_string(),
        ]
    }

    fn summary(&self) -> String {
        let s = &self.status;
        format!(
            "ready={} maintenance={} slots={}/{} apps={}",
            yes_no(s.ready),
            on_off(s.maintenance),
            s.allocated.slots,
            s.capacity.slots,
            s.allocated.applications
        )
    }
}

fn yes_no(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.into()
}

fn roles(user: &User) -> String {
    let r: Vec<&str> = user
        .spec
        .roles
        .iter()
        .map(|r| match r {
            api_types::Role::Admin => "admin",
            api_types::Role::User => "user",
        })
        .collect();
    if r.is_empty() { "-".into() } else { r.join(",") }
}

impl Resource for User {
    const KIND: Kind = Kind::User;

    fn name(&self) -> &str {
        self.metadata.name_str()
    }

    fn headers(_wide: bool) -> Vec<&'static str> {
        vec!["NAME", "ROLES"]
    }

    fn row(&self, _wide: bool, _now: OffsetDateTime) -> Vec<String> {
        vec![self.name().to_owned(), roles(self)]
    }

    fn summary(&self) -> String {
        format!("roles={}", roles(self))
    }
}

impl Resource for Gate {
    const KIND: Kind = Kind::Gate;

    fn name(&self) -> &str {
        self.metadata.name_str()
    }

    fn headers(wide: bool) -> Vec<&'static str> {
        let mut h = vec!["NAME", "SCOPE", "DEMAND", "SUPPLY", "LIVE", "WAITING", "API LEFT", "LAST ERROR"];
        if wide {
            h.extend(["ROUTES", "REGISTRATIONS", "WEBHOOK"]);
        }
        h
    }

    fn row(&self, wide: bool, _now: OffsetDateTime) -> Vec<String> {
        let s = &self.status;
        let sum = |f: fn(&api_types::GateRoute) -> u32| s.routes.iter().map(f).sum::<u32>().to_string();
        let mut r = vec![
            self.name().to_owned(),
            or_dash(Some(s.scope.clone())),
            sum(|r| r.demand),
            sum(|r| r.supply),
            sum(|r| r.live),
            s.waiting.len().to_string(),
            or_dash(s.api.remaining.map(|n| n.to_string())),
            truncate(&or_dash(s.last_errors.last().map(|e| e.message.clone())), MESSAGE_WIDTH),
        ];
        if wide {
            r.push(s.routes.iter().map(|r| format!("{}({}/{})", r.label, r.live, r.max)).collect::<Vec<_>>().join(","));
            r.push(s.registrations.to_string());
            r.push(s.webhook.clone());
        }
        r
    }

    fn summary(&self) -> String {
        let s = &self.status;
        let demand: u32 = s.routes.iter().map(|r| r.demand).sum();
        let supply: u32 = s.routes.iter().map(|r| r.supply).sum();
        format!("demand={demand} supply={supply} waiting={}", s.waiting.len())
    }
}

/// Renders the roles of a user, for `whoami`.
pub fn user_roles(user: &User) -> String {
    roles(user)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use time::macros::datetime;

    pub const NOW: OffsetDateTime = datetime!(2026-11-21 12:00:00 UTC);

    pub fn app(name: &str, phase: &str, node: Option<&str>, message: &str) -> Application {
        let mut v = serde_json::json!({
            "apiVersion": "aquarium.fish/v1",
            "kind": "Application",
            "metadata": {"name": name, "uid": "0193a000-0000-7000-8000-000000000001",
                         "createdAt": "2026-11-21T11:55:00Z", "resourceVersion": "7", "owner": "alice"},
            "spec": {"label": "ubuntu-ci"},
            "status": {"phase": phase, "labelVersion": 2, "message": message,
                       "history": [{"phase": "NEW", "at": "2026-11-21T11:55:00Z", "message": "created"}]}
        });
        if let Some(n) = node {
            v["status"]["node"] = n.into();
            v["status"]["definition"] = 0.into();
            v["status"]["resource"] = serde_json::json!({
                "driver": "test", "identifier": "res-1", "ipAddr": "10.0.0.5",
                "expiresAt": "2026-11-21T13:55:00Z"
            });
            v["status"]["history"].as_array_mut().unwrap().extend([
                serde_json::json!({"phase": "ELECTED", "at": "2026-11-21T11:55:01Z", "message": "elected node host-a"}),
                serde_json::json!({"phase": "ALLOCATED", "at": "2026-11-21T11:55:03Z"}),
            ]);
        }
        serde_json::from_value(v).unwrap()
    }

    pub fn label(name: &str, version: u32, drivers: &[&str]) -> Label {
        let defs: Vec<_> = drivers
            .iter()
            .map(|d| serde_json::json!({"driver": d, "resources": {"cpu": 1, "ram": 2, "lifetime": "1h"}}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "kind": "Label",
            "metadata": {"name": name, "version": version, "createdAt": "2026-11-20T12:00:00Z"},
            "spec": {"definitions": defs, "metadata": {"CI": "1"}}
        }))
        .unwrap()
    }

    pub fn node(name: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "kind": "Node",
            "metadata": {"name": name},
            "status": {"address": "https://127.0.0.1:8001", "version": "0.1.0", "identifiers": ["linux"],
                       "drivers": [{"name": "test", "available": true},
                                   {"name": "docker", "available": false, "reason": "no engine"}],
                       "capacity": {"cpu": 8, "ram": 32, "slots": 4, "applications": 0},
                       "allocated": {"cpu": 1, "ram": 1, "slots": 1, "applications": 1},
                       "maintenance": false, "ready": true}
        }))
        .unwrap()
    }

    #[test]
    fn applications_table() {
        let apps = [
            app("build-1", "ALLOCATED", Some("host-a"), ""),
            app("build-2", "NEW", None, "no node fits: cpu short on host-a (needs 4, 1 free)"),
        ];
        assert_eq!(
            render_table(&apps, false, NOW),
            "\
NAME      LABEL         PHASE       NODE     AGE   MESSAGE
build-1   ubuntu-ci:2   ALLOCATED   host-a   5m
build-2   ubuntu-ci:2   NEW         -        5m    no node fits: cpu short on host-a (needs 4, 1 free)
"
        );
    }

    #[test]
    fn applications_wide_table() {
        let apps = [app("build-1", "ALLOCATED", Some("host-a"), "")];
        assert_eq!(
            render_table(&apps, true, NOW),
            "\
NAME      LABEL         PHASE       NODE     AGE   MESSAGE   UID                                    DEFINITION   RESOURCE   EXPIRES
build-1   ubuntu-ci:2   ALLOCATED   host-a   5m              0193a000-0000-7000-8000-000000000001   0            res-1      in 115m
"
        );
    }

    #[test]
    fn long_messages_are_cut_in_the_narrow_table() {
        let long = "x".repeat(100);
        let t = render_table(&[app("b", "NEW", None, &long)], false, NOW);
        assert!(t.contains(&format!("{}...", "x".repeat(MESSAGE_WIDTH - 3))), "{t}");
        assert!(!t.contains(&long));
    }

    #[test]
    fn labels_table() {
        let labels = [label("ubuntu-ci", 2, &["docker", "docker", "test"]), label("small", 1, &["test"])];
        assert_eq!(
            render_table(&labels, false, NOW),
            "\
NAME        VERSION   DRIVERS       AGE
ubuntu-ci   2         docker,test   24h
small       1         test          24h
"
        );
    }

    #[test]
    fn nodes_table() {
        let mut n1 = node("host-a");
        n1.status.role = Some("leader".into());
        let mut n2 = node("host-b");
        n2.status.maintenance = true;
        n2.status.ready = false;
        assert_eq!(
            render_table(&[n1, n2], false, NOW),
            "\
NAME     ROLE     READY   MAINTENANCE   CPU   RAM    SLOTS   APPS
host-a   leader   True    off           1/8   1/32   1/4     1
host-b   -        False   on            1/8   1/32   1/4     1
"
        );
    }

    #[test]
    fn users_table_and_empty_tables() {
        let admin: User = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "admin"}, "spec": {"roles": ["admin"]}
        }))
        .unwrap();
        assert_eq!(render_table(&[admin], false, NOW), "NAME    ROLES\nadmin   admin\n");
        assert_eq!(render_table::<User>(&[], false, NOW), "NAME   ROLES\n");
    }

    #[test]
    fn summaries() {
        assert_eq!(app("b", "ALLOCATED", Some("host-a"), "ok").summary(), "ALLOCATED node=host-a ok");
        assert_eq!(label("l", 3, &["test"]).summary(), "version=3 drivers=test");
        assert_eq!(node("n").summary(), "ready=True maintenance=off slots=1/4 apps=1");
    }
}
