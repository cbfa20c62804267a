//! The merged metadata of an application: the label's metadata, overlaid by the
//! application's, plus the `FISH_*` facts fishd adds.
//!
//! One builder for both ways a resource gets it (its environment at allocation, and
//! `GET /meta/v1/data`), so the two always agree.

use api_types::{Application, Label, Metadata};

/// The merged metadata of `app`, whose pinned label is `label`, elected on `node`
/// (used when the application records no node).
pub fn merged(label: Option<&Label>, app: &Application, node: &str) -> Metadata {
    let mut m = Metadata::new();
    if let Some(l) = label {
        m.extend(l.spec.metadata.clone());
    }
    m.extend(app.spec.metadata.clone());
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    m.insert("FISH_APPLICATION".into(), s(app.metadata.name_str()));
    if let Some(uid) = app.metadata.uid {
        m.insert("FISH_APPLICATION_UID".into(), s(&uid.to_string()));
    }
    m.insert("FISH_NODE".into(), s(app.status.node.as_deref().unwrap_or(node)));
    m.insert("FISH_LABEL".into(), s(app.spec.label.name.as_str()));
    if let Some(v) = app.status.label_version.or_else(|| label.and_then(|l| l.metadata.version)) {
        m.insert("FISH_LABEL_VERSION".into(), s(&v.to_string()));
    }
    m
}
