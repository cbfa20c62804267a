//! Watch output: the set of objects a watch has seen, one line per change when piped,
//! and a table redrawn in place on a terminal.

use std::collections::BTreeMap;
use std::io::Write;

use api_types::WatchEventType;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use super::{OutputError, Resource, kind_name, name_of, render_table, typed};
use crate::client::WatchUpdate;

/// The objects a watch has seen, by name.
#[derive(Debug, Default)]
pub struct WatchState {
    objects: BTreeMap<String, Value>,
}

impl WatchState {
    /// Applies an update and returns the changes it really made. A resync after an
    /// expired watch becomes the difference between what we had and the new list, so
    /// nothing is shown twice and no deletion is missed.
    pub fn apply(&mut self, update: WatchUpdate) -> Vec<(WatchEventType, Value)> {
        match update {
            WatchUpdate::Event(WatchEventType::Deleted, obj) => match self.objects.remove(name_of(&obj)) {
                Some(_) => vec![(WatchEventType::Deleted, obj)],
                // Already gone (a resync saw it go first): nothing to show twice.
                None => Vec::new(),
            },
            WatchUpdate::Event(t, obj) => {
                self.objects.insert(name_of(&obj).to_owned(), obj.clone());
                vec![(t, obj)]
            }
            WatchUpdate::Resync(items) => {
                let mut changes = Vec::new();
                let mut next = BTreeMap::new();
                for obj in items {
                    let name = name_of(&obj).to_owned();
                    match self.objects.remove(&name) {
                        None => changes.push((WatchEventType::Added, obj.clone())),
                        Some(old) if !same_revision(&old, &obj) => {
                            changes.push((WatchEventType::Modified, obj.clone()))
                        }
                        Some(_) => {}
                    }
                    next.insert(name, obj);
                }
                changes.extend(std::mem::take(&mut self.objects).into_values().map(|o| (WatchEventType::Deleted, o)));
                self.objects = next;
                changes
            }
        }
    }

    /// The current objects, in name order.
    pub fn objects(&self) -> impl Iterator<Item = &Value> {
        self.objects.values()
    }

    /// The current objects as their type, in name order.
    pub fn typed<T: Resource + DeserializeOwned>(&self) -> Result<Vec<T>, OutputError> {
        self.objects.values().cloned().map(typed).collect()
    }
}

fn same_revision(a: &Value, b: &Value) -> bool {
    let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
    match (rv(a), rv(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `MODIFIED application/build-1 ALLOCATED node=host-a message`, one line per event.
pub fn event_line<T: Resource + DeserializeOwned>(event: WatchEventType, obj: &Value) -> Result<String, OutputError> {
    let kind = match event {
        WatchEventType::Added => "ADDED",
        WatchEventType::Modified => "MODIFIED",
        WatchEventType::Deleted => "DELETED",
        WatchEventType::Error => "ERROR",
    };
    let summary = typed::<T>(obj.clone())?.summary();
    Ok(format!("{kind} {} {summary}\n", kind_name(T::KIND, obj)))
}

/// A table kept on screen and redrawn in place after each change.
#[derive(Debug, Default)]
pub struct LiveTable {
    lines_drawn: usize,
}

impl LiveTable {
    /// Replaces what was drawn last with `table`. Lines are cut to the terminal's
    /// width, so that each takes one screen row and the next redraw erases exactly them.
    pub fn redraw(&mut self, out: &mut impl Write, table: &str, width: Option<usize>) -> std::io::Result<()> {
        let mut buf = String::new();
        if self.lines_drawn > 0 {
            // Cursor to the start of the first line drawn, then erase to the end of the screen.
            buf.push_str(&format!("\x1b[{}F\x1b[J", self.lines_drawn));
        }
        let mut n = 0;
        for line in table.lines() {
            let line: String = match width {
                Some(w) => line.chars().take(w.saturating_sub(1)).collect(),
                None => line.to_owned(),
            };
            buf.push_str(&line);
            buf.push('\n');
            n += 1;
        }
        out.write_all(buf.as_bytes())?;
        out.flush()?;
        self.lines_drawn = n;
        Ok(())
    }
}

/// Renders the current state as the live table.
pub fn state_table<T: Resource + DeserializeOwned>(
    state: &WatchState,
    wide: bool,
    now: OffsetDateTime,
) -> Result<String, OutputError> {
    Ok(render_table(&state.typed::<T>()?, wide, now))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::Application;
    use serde_json::json;

    fn obj(name: &str, rv: &str, phase: &str) -> Value {
        json!({"metadata": {"name": name, "resourceVersion": rv}, "spec": {"label": "l"}, "status": {"phase": phase}})
    }

    #[test]
    fn events_update_state() {
        let mut s = WatchState::default();
        s.apply(WatchUpdate::Event(WatchEventType::Added, obj("a", "1", "NEW")));
        s.apply(WatchUpdate::Event(WatchEventType::Added, obj("b", "2", "NEW")));
        s.apply(WatchUpdate::Event(WatchEventType::Modified, obj("a", "3", "ALLOCATED")));
        s.apply(WatchUpdate::Event(WatchEventType::Deleted, obj("b", "4", "DEALLOCATED")));
        let names: Vec<_> = s.objects().map(name_of).collect();
        assert_eq!(names, ["a"]);
        let apps: Vec<Application> = s.typed().unwrap();
        assert_eq!(apps[0].status.phase, api_types::Phase::Allocated);
    }

    #[test]
    fn resync_reports_only_differences() {
        let mut s = WatchState::default();
        s.apply(WatchUpdate::Event(WatchEventType::Added, obj("same", "1", "NEW")));
        s.apply(WatchUpdate::Event(WatchEventType::Added, obj("changed", "2", "NEW")));
        s.apply(WatchUpdate::Event(WatchEventType::Added, obj("gone", "3", "NEW")));
        let changes = s.apply(WatchUpdate::Resync(vec![
            obj("same", "1", "NEW"),
            obj("changed", "9", "ALLOCATED"),
            obj("new", "10", "NEW"),
        ]));
        let got: Vec<_> = changes.iter().map(|(t, o)| (*t, name_of(o).to_owned())).collect();
        assert_eq!(
            got,
            [
                (WatchEventType::Modified, "changed".to_owned()),
                (WatchEventType::Added, "new".to_owned()),
                (WatchEventType::Deleted, "gone".to_owned()),
            ]
        );
        let names: Vec<_> = s.objects().map(name_of).collect();
        assert_eq!(names, ["changed", "new", "same"]);
        assert!(s.apply(WatchUpdate::Event(WatchEventType::Deleted, obj("gone", "11", "NEW"))).is_empty());
    }

    #[test]
    fn event_lines() {
        let mut o = obj("build-1", "5", "ALLOCATED");
        o["status"]["node"] = "host-a".into();
        o["status"]["message"] = "allocated by test".into();
        assert_eq!(
            event_line::<Application>(WatchEventType::Modified, &o).unwrap(),
            "MODIFIED application/build-1 ALLOCATED node=host-a allocated by test\n"
        );
    }

    #[test]
    fn live_table_erases_what_it_drew() {
        let mut live = LiveTable::default();
        let mut out = Vec::new();
        live.redraw(&mut out, "A\nB\n", None).unwrap();
        live.redraw(&mut out, "A\nB\nC\n", Some(80)).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A\nB\n\x1b[2F\x1b[JA\nB\nC\n");
    }
}
