//! Rendering of objects: tables, YAML, JSON, `kind/name` lines, describe pages and
//! watch output.
//!
//! Every renderer is a pure function of the objects and of `now`, returning a string,
//! so that the tests can pin the exact text users see.

pub mod describe;
pub mod table;
pub mod watch;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use crate::kind::Kind;

pub use table::{Resource, render_table};

/// Why an object could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot read {kind} from the server's answer: {message}")]
    Decode { kind: &'static str, message: String },
    #[error("cannot render YAML: {0}")]
    Yaml(String),
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Reads an untyped object from the server into its type.
pub fn typed<T: Resource + DeserializeOwned>(value: Value) -> Result<T, OutputError> {
    serde_json::from_value(value).map_err(|e| OutputError::Decode { kind: T::KIND.singular(), message: e.to_string() })
}

/// Reads a list of untyped objects into their type.
pub fn typed_all<T: Resource + DeserializeOwned>(values: Vec<Value>) -> Result<Vec<T>, OutputError> {
    values.into_iter().map(typed).collect()
}

/// Pretty JSON with a final newline.
pub fn to_json<T: Serialize>(v: &T) -> Result<String, OutputError> {
    let mut s = serde_json::to_string_pretty(v)?;
    s.push('\n');
    Ok(s)
}

/// YAML, as `fishctl apply` reads it back.
pub fn to_yaml<T: Serialize>(v: &T) -> Result<String, OutputError> {
    let mut s = serde_saphyr::to_string(v).map_err(|e| OutputError::Yaml(e.to_string()))?;
    if !s.ends_with('\n') {
        s.push('\n');
    }
    Ok(s)
}

/// `kind/name`, the way kubectl names objects.
pub fn kind_name(kind: Kind, value: &Value) -> String {
    format!("{}/{}", kind.singular(), name_of(value))
}

/// `metadata.name` of an untyped object, or its uid when it has no name.
pub fn name_of(value: &Value) -> &str {
    value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .or_else(|| value.pointer("/metadata/uid").and_then(Value::as_str))
        .unwrap_or("")
}

/// `-o name` output: one `kind/name` a line.
pub fn render_names(kind: Kind, values: &[Value]) -> String {
    values.iter().map(|v| kind_name(kind, v) + "\n").collect()
}

/// A kubectl-like age: `42s`, `5m`, `3h`, `2d`, from the largest unit that fits.
pub fn age(since: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match since {
        Some(t) => short_duration((now - t).whole_seconds().max(0) as u64),
        None => "<unknown>".into(),
    }
}

/// `90` → `1m`, `7200` → `2h`: one unit, rounded down, as in kubectl's AGE column.
pub fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// RFC 3339 with second precision, for describe pages.
pub fn timestamp(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ages_use_one_unit() {
        let now = datetime!(2026-11-21 12:00:00 UTC);
        assert_eq!(age(Some(datetime!(2026-11-21 11:59:18 UTC)), now), "42s");
        assert_eq!(age(Some(datetime!(2026-11-21 11:55:00 UTC)), now), "5m");
        assert_eq!(age(Some(datetime!(2026-11-21 09:00:00 UTC)), now), "3h");
        assert_eq!(age(Some(datetime!(2026-11-18 12:00:00 UTC)), now), "3d");
        // A clock a little behind the server's must not print negative ages.
        assert_eq!(age(Some(datetime!(2026-11-21 12:00:05 UTC)), now), "0s");
        assert_eq!(age(None, now), "<unknown>");
    }

    #[test]
    fn names_and_formats() {
        let v = serde_json::json!({"metadata": {"name": "build-1"}, "spec": {"label": "x"}});
        assert_eq!(render_names(Kind::Application, std::slice::from_ref(&v)), "application/build-1\n");
        assert!(to_json(&v).unwrap().ends_with("}\n"));
        let y = to_yaml(&v).unwrap();
        assert!(y.contains("name: build-1"), "{y}");
    }

    /// `get -o yaml` output must apply again unchanged: strings that look like numbers
    /// or booleans stay strings.
    #[test]
    fn yaml_output_applies_again() {
        let label = crate::output::table::tests::label("no", 2, &["test"]);
        let mut v = serde_json::to_value(&label).unwrap();
        v["metadata"]["resourceVersion"] = "7".into();
        v["spec"]["metadata"]["ON"] = "yes".into();
        let yaml = to_yaml(&v).unwrap();
        let back = api_types::parse_manifests(yaml.as_bytes(), api_types::Format::Yaml).unwrap();
        let api_types::Manifest::Label(l) = &back[0] else { panic!("{back:?}") };
        assert_eq!(l.metadata.name_str(), "no");
        assert_eq!(l.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(l.spec.metadata["ON"], "yes");
        assert_eq!(l.spec.definitions, label.spec.definitions);
    }
}
