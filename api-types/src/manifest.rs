//! Parsing of manifests: one or more YAML documents, or JSON (an object or an array).
//!
//! Parsing is two-staged on purpose. The text is first read into untyped JSON values
//! under a budget (documents, depth, nodes, aliases), which is where syntax errors get
//! their line and column and where hostile input is stopped. Each value is then read
//! into its kind's type through `serde_path_to_error`, so a wrong type or an unknown key
//! is reported with its field path, and finally validated as a whole.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::API_VERSION;
use crate::application::Application;
use crate::label::Label;
use crate::meta::ObjectMeta;
use crate::user::User;
use crate::validate::{FieldError, Validate};

/// Largest body parsed, in bytes: the HTTP limit of the contract (10 MiB), enforced here
/// too so that every caller (fishctl reading files, tests, future transports) gets the same
/// bound, and so that the node and byte budgets below can be sized against it.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Most documents one apply may carry: a large manifest repository, not a flood.
pub const MAX_DOCUMENTS: usize = 1000;
/// Deepest nesting accepted; real manifests stay under 10.
pub const MAX_DEPTH: usize = 32;
/// Most nodes (scalars, keys and collections, after alias expansion) across one request.
/// A label is ~25 nodes, so 1000 documents fit four times over. Every node costs ~100 bytes
/// of heap and ~2 µs of parsing, so this bounds the parsed tree to ~10 MB (plus strings)
/// and the time to refuse a flood of tiny values to well under a second.
pub const MAX_NODES: usize = 100_000;
/// Most events (nodes) replayed by YAML aliases in one request; a "billion laughs" needs
/// millions. Reusing a 50-node definition 200 times stays under it, and replaying is the
/// slowest path of the parser (~10 µs an event in a debug build), so a bomb costs ~0.1 s.
pub const MAX_ALIAS_EVENTS: usize = 10_000;
/// Most aliases, and separately most anchors, in one request. serde-saphyr also refuses more
/// than 10 aliases per anchor once there are 100 aliases: a shape only bombs have.
pub const MAX_ALIASES: usize = 10_000;
/// Longest string value, in bytes. Large enough for a certificate chain, a script or a
/// cloud-init in driver options; anything bigger belongs behind an image `url`.
pub const MAX_SCALAR_BYTES: usize = 1024 * 1024;
/// Longest mapping key, in bytes. Metadata keys (environment variable names) are further
/// held to 256 by validation; no field or option name comes near this.
pub const MAX_KEY_BYTES: usize = 1024;
/// Most string bytes (values and keys, after alias expansion) in one request. Equal to the
/// body limit: aliases may then reuse text but never make the parsed strings larger than
/// the largest body that could spell them out.
pub const MAX_STRING_BYTES: usize = MAX_BODY_BYTES;

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
    if body.len() > MAX_BODY_BYTES {
        return Err(syntax(format!("body is {} bytes, larger than the limit of {MAX_BODY_BYTES} bytes", body.len())));
    }
    let text = std::str::from_utf8(body).map_err(|e| ManifestError::Syntax {
        message: format!("body is not valid UTF-8 (at byte {})", e.valid_up_to()),
        line: None,
        column: None,
    })?;
    TALLY.set(Tally::default());
    let docs = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let json_error = |e: serde_json::Error| ManifestError::Syntax {
                message: format!("invalid JSON: {e}"),
                line: Some(e.line() as u64),
                column: Some(e.column() as u64),
            };
            let Limited(v) = Limited::deserialize(&mut de).map_err(json_error)?;
            de.end().map_err(json_error)?;
            match v {
                Value::Array(items) => items,
                other => vec![other],
            }
        }
        Format::Yaml => parse_yaml(text)?.into_iter().map(|Limited(v)| v).collect(),
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

fn parse_yaml(text: &str) -> Result<Vec<Limited>, ManifestError> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = MAX_DOCUMENTS + 1;
    budget.max_depth = MAX_DEPTH + 1;
    budget.max_nodes = MAX_NODES;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ALIASES;
    budget.max_total_scalar_bytes = MAX_STRING_BYTES;
    // The scanner tracks flow levels before the parser counts depth; without this it reads
    // 255 levels of `{a: {a: …` and reports a bare "recursion limit exceeded".
    budget.flow_nesting_limit = MAX_DEPTH + 1;
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    // YAML 1.1 booleans would turn `name: no` into `false`; YAML 1.2 keeps the string.
    let options = serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: alias_limits,
        strict_booleans: true,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    serde_saphyr::from_multiple_with_options::<Limited>(text, options).map_err(|e| {
        let loc = e.location();
        ManifestError::Syntax {
            message: format!("invalid YAML: {}", yaml_message(&e)),
            line: loc.map(|l| l.line()),
            column: loc.map(|l| l.column()),
        }
    })
}

/// Names our limit rather than serde-saphyr's budget field when a budget stops the parse;
/// otherwise the first line of the error (its display carries a source snippet after it).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::{Error as E, budget::BudgetBreach as B};
    let mut inner = e;
    while let E::WithSnippet { error, .. } | E::AliasError { error, .. } = inner {
        inner = error;
    }
    match inner {
        E::Budget { breach, .. } => match breach {
            B::Documents { .. } => format!("too many documents (at most {MAX_DOCUMENTS})"),
            B::Depth { .. } => format!("document nested deeper than {MAX_DEPTH} levels"),
            B::Nodes { .. } => format!("too many nodes (at most {MAX_NODES})"),
            B::ScalarBytes { .. } => format!("strings total more than {MAX_STRING_BYTES} bytes"),
            B::Aliases { .. } | B::Anchors { .. } | B::AliasAnchorRatio { .. } => {
                format!("too many aliases or anchors (at most {MAX_ALIASES} of each, and 10 aliases per anchor)")
            }
            other => format!("parsing limit exceeded: {other:?}"),
        },
        E::AliasReplayLimitExceeded { .. } | E::AliasExpansionLimitExceeded { .. } => {
            format!("aliases expand to more than {MAX_ALIAS_EVENTS} nodes")
        }
        _ => {
            let line = without_position(&first_line(&e.to_string()));
            // The scanner's flow nesting limit (set to our depth limit) has no variant of its own.
            if line.contains("recursion limit exceeded") {
                format!("document nested deeper than {MAX_DEPTH} levels")
            } else {
                line
            }
        }
    }
}

/// serde-saphyr's display starts `error: line L column C: `; the position is in
/// [`ManifestError::Syntax`]'s own fields, shown once by whoever prints it.
fn without_position(line: &str) -> String {
    let rest = line.strip_prefix("error: ").unwrap_or(line);
    let Some(after) = rest.strip_prefix("line ") else { return rest.to_owned() };
    // `L column C: message`
    let mut parts = after.splitn(2, ": ");
    match (parts.next(), parts.next()) {
        (Some(pos), Some(msg)) if pos.split(" column ").all(|n| n.parse::<u64>().is_ok()) => msg.to_owned(),
        _ => rest.to_owned(),
    }
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

/// What the tree built so far has cost, checked as each node is built, so that a limit
/// stops the parser before the memory is spent: a 1 MiB anchor replayed by 10,000 aliases
/// would otherwise become 10 GB of strings before any check on the finished tree ran.
#[derive(Clone, Copy, Default)]
struct Tally {
    nodes: usize,
    string_bytes: usize,
    /// Collections currently open around the node being built.
    open: usize,
}

thread_local! {
    // serde-saphyr has no `DeserializeSeed` entry point for multiple documents, so the
    // tally cannot travel in a seed; a parse runs on one thread from start to end and
    // `parse_values` resets it first.
    static TALLY: Cell<Tally> = const { Cell::new(Tally { nodes: 0, string_bytes: 0, open: 0 }) };
}

/// A JSON value read under [`TALLY`]; the same for both formats.
struct Limited(Value);

impl Tally {
    /// Counts one node of `string_bytes` bytes at the current nesting level.
    fn node<E: de::Error>(string_bytes: usize) -> Result<(), E> {
        let mut t = TALLY.get();
        t.nodes += 1;
        t.string_bytes = t.string_bytes.saturating_add(string_bytes);
        TALLY.set(t);
        // One more level than a document may have: a JSON body may wrap its documents in
        // an array. The exact per-document depth is checked on the finished documents.
        if t.open + 1 > MAX_DEPTH + 1 {
            return Err(E::custom(format!("document nested deeper than {MAX_DEPTH} levels")));
        }
        if t.nodes > MAX_NODES {
            return Err(E::custom(format!("too many nodes (at most {MAX_NODES})")));
        }
        if t.string_bytes > MAX_STRING_BYTES {
            return Err(E::custom(format!("strings total more than {MAX_STRING_BYTES} bytes")));
        }
        Ok(())
    }

    fn scalar<E: de::Error>(s: &str) -> Result<(), E> {
        if s.len() > MAX_SCALAR_BYTES {
            return Err(E::custom(format!("a string is {} bytes, longer than {MAX_SCALAR_BYTES}", s.len())));
        }
        Tally::node(s.len())
    }

    fn key<E: de::Error>(k: &str) -> Result<(), E> {
        if k.len() > MAX_KEY_BYTES {
            return Err(E::custom(format!("a key is {} bytes, longer than {MAX_KEY_BYTES}", k.len())));
        }
        Tally::node(k.len())
    }

    fn enter() {
        TALLY.with(|c| c.set(Tally { open: c.get().open + 1, ..c.get() }));
    }

    fn leave() {
        TALLY.with(|c| c.set(Tally { open: c.get().open.saturating_sub(1), ..c.get() }));
    }
}

impl<'de> Deserialize<'de> for Limited {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LimitedVisitor).map(Limited)
    }
}

struct LimitedVisitor;

impl<'de> Visitor<'de> for LimitedVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML or JSON value")
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Tally::node(0)?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        Tally::node(0)?;
        Ok(Value::from(n))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        Tally::node(0)?;
        Ok(Value::from(n))
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<Value, E> {
        match (i64::try_from(n), u64::try_from(n)) {
            (Ok(i), _) => self.visit_i64(i),
            (_, Ok(u)) => self.visit_u64(u),
            _ => Err(E::custom(format!("integer {n} is out of range"))),
        }
    }

    fn visit_u128<E: de::Error>(self, n: u128) -> Result<Value, E> {
        match u64::try_from(n) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!("integer {n} is out of range"))),
        }
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        Tally::node(0)?;
        // Like serde_json: NaN and infinities (YAML `.nan`, `.inf`) have no JSON form.
        Ok(Value::from(n))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Tally::scalar(s)?;
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E: de::Error>(self, s: String) -> Result<Value, E> {
        Tally::scalar(&s)?;
        Ok(Value::String(s))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Tally::node(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Limited::deserialize(d).map(|Limited(v)| v)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        Tally::node(0)?;
        Tally::enter();
        let mut items = Vec::new();
        while let Some(Limited(v)) = seq.next_element()? {
            items.push(v);
        }
        Tally::leave();
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        Tally::node(0)?;
        Tally::enter();
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            Tally::key(&k)?;
            let Limited(v) = map.next_value()?;
            // serde_json keeps the last of duplicate keys without a word; a manifest
            // with two `kind`s is a mistake in either format.
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key {:?}", truncate(&k))));
            }
            out.insert(k, v);
        }
        Tally::leave();
        Ok(Value::Object(out))
    }
}

/// At most 64 bytes of `s`, for error messages that quote input.
fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    fn float_metadata_round_trips_through_json() {
        // Metadata values are stored and served as JSON, then re-applied: a float must come
        // back as the same f64 (serde_json's default float parser can be 1 ulp off).
        let values = [
            "-1.1193133179981887e-17",
            "1.2345678901234567e-100",
            "0.30000000000000004",
            "9007199254740993.0",
            "2.2250738585072014e-308",
        ];
        for v in values {
            let yaml = format!("kind: Application\nmetadata: {{name: a}}\nspec: {{label: l, metadata: {{F: {v}}}}}\n");
            let docs = parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
            let Manifest::Application(a) = &docs[0] else { panic!("not an application") };
            let json = serde_json::to_string(a).unwrap_or_else(|e| panic!("{e}"));
            let back = parse(&json).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(back[0], docs[0], "{v} became {json}");
        }
    }

    #[test]
    fn any_float_round_trips_through_json_text() {
        // What the fuzz target's round trip relies on, over many bit patterns.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let f = f64::from_bits(x);
            if !f.is_finite() {
                continue;
            }
            let text = serde_json::to_string(&f).unwrap_or_else(|e| panic!("{e}"));
            let back: f64 = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back.to_bits(), f.to_bits(), "{text}");
        }
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
        // The position is said once, in its fields, and the message does not say "error".
        match parse("kind: Label\nmetadata: {name: x\nspec: [\n") {
            Err(ManifestError::Syntax { message, line: Some(_), column: Some(_) }) => {
                assert!(!message.contains("error") && !message.contains("line "), "{message}");
                assert!(message.starts_with("invalid YAML: "), "{message}");
            }
            other => panic!("{other:?}"),
        }
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
