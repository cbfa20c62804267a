//! `describe` pages: every fact about one object, as aligned `Key: value` lines and
//! small tables, the way `kubectl describe` reads.

use std::fmt::Write as _;

use api_types::{Application, Gate, Label, Metadata, Node};
use comfy_table::{ContentArrangement, Table, presets};
use time::OffsetDateTime;

use super::{age, short_duration, timestamp};

/// The column at which values start.
const KEY_WIDTH: usize = 16;

struct Page(String);

impl Page {
    fn field(&mut self, indent: usize, key: &str, value: impl std::fmt::Display) {
        let pad = KEY_WIDTH.saturating_sub(indent + key.len() + 1).max(1);
        let _ = writeln!(self.0, "{:indent$}{key}:{:pad$}{value}", "", "");
    }

    fn section(&mut self, indent: usize, key: &str) {
        let _ = writeln!(self.0, "{:indent$}{key}:", "");
    }

    fn table(&mut self, indent: usize, headers: &[&str], rows: Vec<Vec<String>>) {
        let mut t = Table::new();
        t.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
        t.set_header(headers.to_vec());
        for r in rows {
            t.add_row(r);
        }
        for c in t.column_iter_mut() {
            c.set_padding((0, 2));
        }
        for line in t.lines() {
            let _ = writeln!(self.0, "{:indent$}{}", "", line.trim_end());
        }
    }

    fn metadata(&mut self, indent: usize, key: &str, m: &Metadata) {
        if m.is_empty() {
            self.field(indent, key, "<none>");
            return;
        }
        self.section(indent, key);
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(self.0, "{:w$}{k}={v}", "", w = indent + 2);
        }
    }
}

fn when(t: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match t {
        Some(t) => format!("{} ({} ago)", timestamp(t), age(Some(t), now)),
        None => "<unknown>".into(),
    }
}

fn or_none(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "<none>".into())
}

/// The page of an application: spec, status, resource and the phase history with times.
pub fn application(app: &Application, now: OffsetDateTime) -> String {
    let mut p = Page(String::new());
    let m = &app.metadata;
    let s = &app.status;
    p.field(0, "Name", m.name_str());
    p.field(0, "UID", or_none(m.uid.map(|u| u.to_string())));
    p.field(0, "Owner", or_none(m.owner.clone()));
    p.field(0, "Created", when(m.created_at, now));
    let label = match (app.spec.label.version, s.label_version) {
        (None, Some(v)) => format!("{} (version {v})", app.spec.label.name),
        _ => app.spec.label.to_string(),
    };
    p.field(0, "Label", label);
    p.field(0, "Lifetime", or_none(app.spec.lifetime.map(|l| l.to_string())));
    p.metadata(0, "Metadata", &app.spec.metadata);
    p.field(0, "Phase", s.phase);
    p.field(0, "Node", or_none(s.node.clone()));
    p.field(0, "Definition", or_none(s.definition.map(|d| d.to_string())));
    if s.attempts > 0 {
        p.field(0, "Failed attempts", s.attempts);
    }
    p.field(0, "Message", or_none(Some(s.message.clone())));
    match &s.resource {
        None => p.field(0, "Resource", "<none>"),
        Some(r) => {
            p.section(0, "Resource");
            p.field(2, "Driver", or_none(Some(r.driver.clone())));
            p.field(2, "Identifier", &r.identifier);
            p.field(2, "IP address", or_none(r.ip_addr.clone()));
            p.field(2, "HW address", or_none(r.hw_addr.clone()));
            let expires = r.expires_at.map(|t| {
                let secs = (t - now).whole_seconds();
                let rel = if secs >= 0 {
                    format!("in {}", short_duration(secs as u64))
                } else {
                    format!("{} ago", short_duration(secs.unsigned_abs()))
                };
                format!("{} ({rel})", timestamp(t))
            });
            p.field(2, "Expires", or_none(expires));
            for (k, v) in &r.details {
                let v = v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
                p.field(2, k, v);
            }
        }
    }
    if s.history.is_empty() {
        p.field(0, "History", "<none>");
    } else {
        p.section(0, "History");
        let rows = s
            .history
            .iter()
            .map(|h| vec![h.phase.to_string(), timestamp(h.at), age(Some(h.at), now), h.message.clone()])
            .collect();
        p.table(2, &["PHASE", "AT", "AGE", "MESSAGE"], rows);
    }
    p.0
}

/// The page of a label: its definitions in order, with resources and options.
pub fn label(label: &Label, now: OffsetDateTime) -> String {
    let mut p = Page(String::new());
    let m = &label.metadata;
    p.field(0, "Name", m.name_str());
    p.field(0, "Version", or_none(m.version.map(|v| v.to_string())));
    p.field(0, "UID", or_none(m.uid.map(|u| u.to_string())));
    p.field(0, "Owner", or_none(m.owner.clone()));
    p.field(0, "Created", when(m.created_at, now));
    if let Some(t) = label.spec.remove_at {
        p.field(0, "Remove at", timestamp(t));
    }
    p.metadata(0, "Metadata", &label.spec.metadata);
    p.section(0, "Definitions");
    for (i, d) in label.spec.definitions.iter().enumerate() {
        p.section(2, &format!("[{i}] {}", d.driver));
        let r = &d.resources;
        p.field(4, "CPU", r.cpu);
        p.field(4, "RAM", format!("{} GiB", r.ram));
        p.field(4, "Slots", r.slots());
        if r.cpu_overbook || r.ram_overbook {
            p.field(4, "Overbook", format!("cpu={} ram={}", r.cpu_overbook, r.ram_overbook));
        }
        p.field(4, "Network", r.network.as_str());
        if !r.allow.is_empty() {
            p.field(4, "Allow", r.allow.join(", "));
        }
        p.field(4, "Lifetime", or_none(r.lifetime.map(|l| l.to_string())));
        if !r.disks.is_empty() {
            let disks: Vec<String> = r.disks.iter().map(|(n, d)| format!("{n}={}GiB", d.size)).collect();
            p.field(4, "Disks", disks.join(", "));
        }
        if !r.node_filter.is_empty() {
            p.field(4, "Node filter", r.node_filter.join(", "));
        }
        for img in &d.images {
            let name = match (&img.name, &img.tag) {
                (Some(n), Some(t)) => format!("{n}:{t}"),
                (Some(n), None) => n.clone(),
                _ => img.url.clone().unwrap_or_default(),
            };
            p.field(4, "Image", name);
        }
        if !d.options.is_empty() {
            p.field(4, "Options", serde_json::Value::Object(d.options.clone()));
        }
    }
    p.0
}

/// The page of a node: address, capacity against allocation, and drivers.
pub fn node(node: &Node, now: OffsetDateTime) -> String {
    let mut p = Page(String::new());
    let s = &node.status;
    p.field(0, "Name", node.metadata.name_str());
    p.field(0, "Address", or_none(Some(s.address.clone())));
    p.field(0, "Version", or_none(Some(s.version.clone())));
    p.field(0, "Identifiers", if s.identifiers.is_empty() { "<none>".into() } else { s.identifiers.join(", ") });
    if !s.location.is_empty() {
        p.field(0, "Location", &s.location);
    }
    p.field(0, "Ready", s.ready);
    p.field(0, "Maintenance", s.maintenance);
    p.field(0, "Last seen", when(s.last_seen, now));
    p.section(0, "Capacity");
    p.table(
        2,
        &["RESOURCE", "ALLOCATED", "CAPACITY"],
        vec![
            vec!["cpu".into(), s.allocated.cpu.to_string(), s.capacity.cpu.to_string()],
            vec!["ram (GiB)".into(), s.allocated.ram.to_string(), s.capacity.ram.to_string()],
            vec!["slots".into(), s.allocated.slots.to_string(), s.capacity.slots.to_string()],
            vec!["applications".into(), s.allocated.applications.to_string(), "-".into()],
        ],
    );
    if s.drivers.is_empty() {
        p.field(0, "Drivers", "<none>");
    } else {
        p.section(0, "Drivers");
        let rows = s
            .drivers
            .iter()
            .map(|d| vec![d.name.clone(), d.available.to_string(), or_none(Some(d.reason.clone()))])
            .collect();
        p.table(2, &["NAME", "AVAILABLE", "REASON"], rows);
    }
    p.0
}

/// A gate's page: where it listens, its routes with demand and supply, the jobs it
/// leaves waiting and why, its API budget and its last errors.
pub fn gate(g: &Gate, now: OffsetDateTime) -> String {
    let mut p = Page(String::new());
    let s = &g.status;
    p.field(0, "Name", g.metadata.name_str());
    p.field(0, "System", or_none(Some(s.system.clone())));
    p.field(0, "API", or_none(Some(s.api_url.clone())));
    p.field(0, "Scope", or_none(Some(s.scope.clone())));
    p.field(0, "Webhook", or_none(Some(s.webhook.clone())));
    p.field(0, "Registrations", s.registrations);
    p.field(0, "Last pass", when(s.last_pass, now));
    let budget = match (s.api.remaining, s.api.limit) {
        (Some(r), Some(l)) => format!("{r} of {l} left; {} calls made", s.api.calls),
        _ => format!("unknown; {} calls made", s.api.calls),
    };
    p.field(0, "API budget", budget);
    p.section(0, "Routes");
    let rows = s
        .routes
        .iter()
        .map(|r| {
            vec![
                r.label.clone(),
                r.labels.join(","),
                r.demand.to_string(),
                r.supply.to_string(),
                format!("{}/{}", r.live, r.max),
            ]
        })
        .collect();
    p.table(2, &["LABEL", "MATCH", "DEMAND", "SUPPLY", "LIVE/MAX"], rows);
    if s.waiting.is_empty() {
        p.field(0, "Waiting jobs", "<none>");
    } else {
        p.section(0, "Waiting jobs");
        let rows = s
            .waiting
            .iter()
            .map(|w| vec![w.id.to_string(), w.repository.clone(), format!("{}s", w.age_seconds), w.reason.clone()])
            .collect();
        p.table(2, &["JOB", "REPOSITORY", "AGE", "REASON"], rows);
    }
    if s.last_errors.is_empty() {
        p.field(0, "Last errors", "<none>");
    } else {
        p.section(0, "Last errors");
        for e in &s.last_errors {
            let _ = writeln!(p.0, "  {}  {}", timestamp(e.at), e.message);
        }
    }
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::table::tests::{NOW, app, label as mk_label, node as mk_node};

    #[test]
    fn application_page() {
        let page = application(&app("build-1", "ALLOCATED", Some("host-a"), "allocated"), NOW);
        assert_eq!(
            page,
            "\
Name:           build-1
UID:            0193a000-0000-7000-8000-000000000001
Owner:          alice
Created:        2026-11-21T11:55:00Z (5m ago)
Label:          ubuntu-ci (version 2)
Lifetime:       <none>
Metadata:       <none>
Phase:          ALLOCATED
Node:           host-a
Definition:     0
Message:        allocated
Resource:
  Driver:       test
  Identifier:   res-1
  IP address:   10.0.0.5
  HW address:   <none>
  Expires:      2026-11-21T13:55:00Z (in 115m)
History:
  PHASE      AT                    AGE  MESSAGE
  NEW        2026-11-21T11:55:00Z  5m   created
  ELECTED    2026-11-21T11:55:01Z  4m   elected node host-a
  ALLOCATED  2026-11-21T11:55:03Z  4m
"
        );
    }

    #[test]
    fn label_page() {
        let page = label(&mk_label("ubuntu-ci", 2, &["docker", "test"]), NOW);
        assert!(page.starts_with("Name:           ubuntu-ci\nVersion:        2\n"), "{page}");
        assert!(page.contains("Metadata:\n  CI=1\n"), "{page}");
        assert!(page.contains("Definitions:\n  [0] docker:\n    CPU:        1\n    RAM:        2 GiB\n"), "{page}");
        assert!(page.contains("  [1] test:\n"), "{page}");
        assert!(page.contains("    Lifetime:   1h\n"), "{page}");
    }

    #[test]
    fn node_page() {
        let page = node(&mk_node("host-a"), NOW);
        assert!(page.contains("Ready:          true\n"), "{page}");
        assert!(page.contains("  cpu           1          8\n"), "{page}");
        assert!(page.contains("  docker  false      no engine\n"), "{page}");
    }
}
