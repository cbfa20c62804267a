//! Parsing of manifests: one or more YAML documents, or JSON (an object or an array).
//!
//! Parsing is two-staged on purpose. The text is first read into untyped JSON values
//! under a budget (documents, depth, nodes, aliases), which is where syntax errors get
//! their line and column and where hostile input is stopped. Each value is then read
//! into its kind's type through `serde_path_to_error`, so a wrong type or an unknown key
//! is reported with its field path, and finally validated as a whole.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::API_VERSION;
use crate::application::Application;
use crate::label::Label;
use crate::meta::ObjectMeta;
use crate::user::User;
use crate::validate::{FieldError, Validate};

/// Most documents one apply may carry: a large manifest repository, not a flood.
pub const MAX_DOCUMENTS: usize = 1000;
/// Deepest nesting accepted; real manifests stay under 10.
pub const MAX_DEPTH: usize = 32;
/// Most YAML nodes (scalars and collections) across one request.
pub const MAX_NODES: usize = 200_000;
/// Most alias expansions; a "billion laughs" document needs millions.
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// A parsed, validated document of a kind users may apply.
#[derive(Clone, Debug, PartialEq)]
// Parsed once per document and consumed at once, never stored in bulk: boxing would
// only make every match noisier.
#[allow(clippy::large_enum_variant)]
pub enum Manifest {
    Label(Label),
    Application(Application),
    User(User),
}

impl Manifest {
    /// `Label`, `Application` or `User`.
    pub fn kind(&self) -> &'static str {
        match self {
            Manifest::Label(_) => "Label",
            Manifest::Application(_) => "Application",
            Manifest::User(_) => "User",
        }
    }

    /// The document's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Manifest::Label(l) => &l.metadata,
            Manifest::Application(a) => &a.metadata,
            Manifest::User(u) => &u.metadata,
        }
    }
}

/// Why a request body is not a set of valid manifests.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    /// The text is not well-formed YAML or JSON, or breaks a parsing limit.
    #[error("{message}")]
    Syntax { message: String, line: Option<u64>, column: Option<u64> },
    /// Well-formed, but a document is not a valid object.
    #[error("document {document} ({kind} {name:?}) is invalid")]
    Invalid { document: usize, kind: String, name: String, errors: Vec<FieldError> },
}

/// The body's format, from its content type or its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

impl Format {
    /// JSON for `application/json` or a body starting with `{` or `[`; YAML otherwise.
    pub fn detect(content_type: Option<&str>, body: &[u8]) -> Format {
        if let Some(ct) = content_type {
            if ct.contains("json") {
                return Format::Json;
            }
            if ct.contains("yaml") {
                return Format::Yaml;
            }
        }
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// Parses every document of `body`, validating all of them; the first invalid one
/// is returned with all of its problems.
pub fn parse_manifests(body: &[u8], format: Format) -> Result<Vec<Manifest>, ManifestError> {
    let values = parse_values(body, format)?;
    values.into_iter().enumerate().map(|(i, v)| manifest_from_value(i + 1, v)).collect()
}

/// Reads `body` into untyped documents under the parsing limits.
pub fn parse_values(body: &[u8], format: Format) -> Result<Vec<Value>, ManifestError> {
    let text = std::str::from_utf8(body).map_err(|e| ManifestError::Syntax {
        message: format!("body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        line: None,
        column: None,
    })?;
    let docs = match format {
        Format::Json => {
            // serde_json stops at 128 levels of nesting on its own, so deep input
            // cannot overflow the stack; our shallower limit is checked after.
            let v: Value = serde_json::from_str(text).map_err(|e| ManifestError::Syntax {
                message: format!("invalid JSON: {e}"),
                line: Some(e.line() as u64),
                column: Some(e.column() as u64),
            })?;
            match v {
                Value::Array(items) => items,
                other => vec![other],
            }
        }
        Format::Yaml => parse_yaml(text)?,
    };
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    if docs.is_empty() {
        return Err(syntax("no documents in body"));
    }
    if docs.len() > MAX_DOCUMENTS {
        return Err(syntax(format!("too many documents: {} (at most {MAX_DOCUMENTS})", docs.len())));
    }
    for d in &docs {
        if depth(d) > MAX_DEPTH {
            return Err(syntax(format!("document nested deeper than {MAX_DEPTH} levels")));
        }
    }
    Ok(docs)
}

fn syntax(message: impl Into<String>) -> ManifestError {
    ManifestError::Syntax { message: message.into(), line: None, column: None }
}

fn parse_yaml(text: &str) -> Result<Vec<Value>, ManifestError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS + 1;
    budget.max_depth = MAX_DEPTH + 1;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = 10_000;
    budget.max_anchors = 10_000;
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    // YAML 1.1 booleans would turn `name: no` into `false`; YAML 1.2 keeps the string.
    let options = serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: alias_limits,
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
        let loc = e.location();
        ManifestError::Syntax {
            message: format!("invalid YAML: {}", first_line(&e.to_string())),
            line: loc.map(|l| l.line()),
            column: loc.map(|l| l.column()),
        }
    })
}

/// The YAML error's display carries a source snippet; the first line is the message.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_owned()
}

fn depth(v: &Value) -> usize {
    // Iterative, so that measuring a deep document cannot itself overflow the stack.
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Reads one untyped document (1-based `document`) into its kind and validates it.
pub fn manifest_from_value(document: usize, value: Value) -> Result<Manifest, ManifestError> {
    let obj = value.as_object();
    let kind = obj.and_then(|o| o.get("kind")).and_then(Value::as_str).unwrap_or("").to_owned();
    let name = obj
        .and_then(|o| o.get("metadata"))
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let invalid = |errors: Vec<FieldError>| ManifestError::Invalid {
        document,
        kind: if kind.is_empty() { "object".into() } else { kind.clone() },
        name: name.clone(),
        errors,
    };
    let Some(obj) = obj else {
        return Err(invalid(vec![fe("", "a document must be a mapping with kind, metadata and spec")]));
    };
    match obj.get("apiVersion") {
        None => {}
        Some(Value::String(s)) if s == API_VERSION => {}
        Some(other) => {
            return Err(invalid(vec![fe("apiVersion", format!("must be {API_VERSION:?}, got {other}"))]));
        }
    }
    let manifest = match kind.as_str() {
        "Label" => typed::<Label>(value).map(Manifest::Label),
        "Application" => typed::<Application>(value).map(Manifest::Application),
        "User" => typed::<User>(value).map(Manifest::User),
        "" => Err(vec![fe("kind", "is required (Label, Application or User)")]),
        other => Err(vec![fe("kind", format!("unknown kind {other:?}: expected Label, Application or User"))]),
    }
    .map_err(invalid)?;
    let checked = match &manifest {
        Manifest::Label(l) => l.validate(),
        Manifest::Application(a) => a.validate(),
        Manifest::User(u) => u.validate(),
    };
    checked.map_err(invalid)?;
    Ok(manifest)
}

fn fe(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.to_owned(), message: message.into() }
}

/// Deserializes into `T`, turning the first serde error into a field error with its path.
pub fn typed<T: DeserializeOwned>(value: Value) -> Result<T, Vec<FieldError>> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        vec![FieldError { field, message: e.into_inner().to_string() }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::Phase;

    const LABEL: &str = r#"
apiVersion: aquarium.fish/v1
kind: Label
metadata: {name: ubuntu-ci}
spec:
  definitions:
    - driver: test
      resources: {cpu: 2, ram: 4, lifetime: 2h}
  metadata: {A: "1"}
---
kind: Application
metadata: {name: build-1}
spec: {label: "ubuntu-ci:1", metadata: {JENKINS_AGENT_SECRET: s}}
"#;

    fn parse(s: &str) -> Result<Vec<Manifest>, ManifestError> {
        parse_manifests(s.as_bytes(), Format::detect(None, s.as_bytes()))
    }

    #[test]
    fn parses_multi_document_yaml() {
        let docs = parse(LABEL).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(docs.len(), 2);
        let Manifest::Label(l) = &docs[0] else { panic!("not a label") };
        assert_eq!(l.spec.definitions[0].resources.cpu, 2);
        let Manifest::Application(a) = &docs[1] else { panic!("not an application") };
        assert_eq!(a.spec.label.version, Some(1));
        assert_eq!(a.status.phase, Phase::New);
    }

    #[test]
    fn round_trips_through_json() {
        let docs = parse(LABEL).unwrap_or_else(|e| panic!("{e:?}"));
        let Manifest::Label(l) = &docs[0] else { panic!("not a label") };
        let json = serde_json::to_string(l).unwrap_or_else(|e| panic!("{e}"));
        assert!(json.contains("\"apiVersion\":\"aquarium.fish/v1\""), "{json}");
        let back = parse(&json).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(back[0], docs[0]);
    }

    #[test]
    fn unknown_key_names_its_path() {
        let bad = LABEL.replace("cpu: 2", "cpux: 2");
        match parse(&bad) {
            Err(ManifestError::Invalid { document: 1, errors, .. }) => {
                assert_eq!(errors[0].field, "spec.definitions[0].resources.cpux");
                assert!(errors[0].message.contains("cpux"), "{:?}", errors);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_type_names_its_path() {
        let bad = LABEL.replace("cpu: 2", "cpu: two");
        match parse(&bad) {
            Err(ManifestError::Invalid { errors, .. }) => {
                assert_eq!(errors[0].field, "spec.definitions[0].resources.cpu");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_reports_every_problem() {
        let bad =
            LABEL.replace("driver: test", "driver: \"Bad Driver\"").replace("lifetime: 2h", "lifetime: 0s, slots: 0");
        match parse(&bad) {
            Err(ManifestError::Invalid { errors, .. }) => {
                let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
                assert!(fields.contains(&"spec.definitions[0].driver"), "{fields:?}");
                assert!(fields.contains(&"spec.definitions[0].resources.slots"), "{fields:?}");
                assert!(fields.contains(&"spec.definitions[0].resources.lifetime"), "{fields:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        match parse("kind: Label\nmetadata: {name: x\n") {
            Err(ManifestError::Syntax { line: Some(_), .. }) => {}
            other => panic!("{other:?}"),
        }
        match parse("{\"kind\": }") {
            Err(ManifestError::Syntax { line: Some(1), column: Some(_), .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        assert!(matches!(parse("kind: Label\nkind: User\n"), Err(ManifestError::Syntax { .. })));
    }

    #[test]
    fn alias_bomb_is_rejected_quickly() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            s.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let start = std::time::Instant::now();
        assert!(matches!(parse(&s), Err(ManifestError::Syntax { .. })));
        assert!(start.elapsed().as_secs() < 2);
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse(&deep), Err(ManifestError::Syntax { .. })));
        let deep_yaml = format!("a: {}1{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(parse(&deep_yaml), Err(ManifestError::Syntax { .. })));
    }

    #[test]
    fn yaml_1_2_booleans() {
        let s = "kind: User\nmetadata: {name: no}\n";
        let docs = parse(s).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(docs[0].metadata().name_str(), "no");
    }

    #[test]
    fn invalid_utf8_is_a_syntax_error() {
        assert!(matches!(parse_manifests(b"kind: \xff\xfe", Format::Yaml), Err(ManifestError::Syntax { .. })));
    }
}
