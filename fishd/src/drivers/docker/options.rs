//! The docker driver's part of a definition: `options` and `images`, checked once when a
//! label is created ([`validate`]) and parsed again at allocation ([`DockerOptions::parse`]).
//!
//! Both go through the same walk over the JSON map, so a definition that passed
//! validation always parses, and every problem carries the field path a user can find in
//! their YAML (`options.env.FOO`, `images[0].sum`).

use std::collections::BTreeMap;

use api_types::label::is_sha256_sum;
use api_types::{Definition, FieldError, Image};

/// The options a docker definition may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct DockerOptions {
    /// Replaces the image's command (`Cmd`); the image's entrypoint stays.
    pub command: Option<Vec<String>>,
    /// Extra environment; the merged metadata overrides it.
    pub env: BTreeMap<String, String>,
    /// Runs the container privileged; off unless asked for.
    pub privileged: bool,
}

impl DockerOptions {
    /// Parses `options`, or returns every problem found.
    pub fn parse(options: &serde_json::Map<String, serde_json::Value>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut out = DockerOptions::default();
        for (key, value) in options {
            let field = format!("options.{key}");
            match key.as_str() {
                "command" => out.command = parse_command(value, &field, &mut errors),
                "env" => out.env = parse_env(value, &field, &mut errors),
                "privileged" => match value {
                    serde_json::Value::Bool(b) => out.privileged = *b,
                    _ => push(&mut errors, field, "must be true or false"),
                },
                _ => push(&mut errors, field, "unknown option (expected command, env or privileged)"),
            }
        }
        if errors.is_empty() { Ok(out) } else { Err(errors) }
    }
}

fn push(errors: &mut Vec<FieldError>, field: impl Into<String>, message: impl Into<String>) {
    errors.push(FieldError { field: field.into(), message: message.into() });
}

fn parse_command(value: &serde_json::Value, field: &str, errors: &mut Vec<FieldError>) -> Option<Vec<String>> {
    let Some(items) = value.as_array() else {
        push(errors, field, "must be a list of strings (argv)");
        return None;
    };
    if items.is_empty() {
        push(errors, field, "must not be empty");
        return None;
    }
    let mut argv = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) => argv.push(s.to_owned()),
            None => push(errors, format!("{field}[{i}]"), "must be a string"),
        }
    }
    Some(argv)
}

fn parse_env(value: &serde_json::Value, field: &str, errors: &mut Vec<FieldError>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(map) = value.as_object() else {
        push(errors, field, "must be a map of variable names to values");
        return env;
    };
    for (key, value) in map {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            push(errors, format!("{field}.{key}"), "variable names must be non-empty and contain no '='");
            continue;
        }
        match value {
            serde_json::Value::Object(_) | serde_json::Value::Array(_) | serde_json::Value::Null => {
                push(errors, format!("{field}.{key}"), "must be a string, number or boolean")
            }
            other => {
                env.insert(key.clone(), env_value(other));
            }
        }
    }
    env
}

/// How a JSON value becomes an environment value: strings as they are, anything else
/// JSON-encoded (`3`, `true`, `{"a":1}`), so a resource can parse it back.
pub(super) fn env_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every problem with a docker definition's images and options, fields relative to the
/// definition.
pub(super) fn validate(definition: &Definition) -> Vec<FieldError> {
    let mut errors = match DockerOptions::parse(&definition.options) {
        Ok(_) => Vec::new(),
        Err(errors) => errors,
    };
    match definition.images.len() {
        0 => push(&mut errors, "images", "the docker driver needs one image"),
        1 => {}
        _ => push(&mut errors, "images", "the docker driver takes exactly one image"),
    }
    for (i, image) in definition.images.iter().enumerate() {
        validate_image(image, &format!("images[{i}]"), &mut errors);
    }
    errors
}

fn validate_image(image: &Image, at: &str, errors: &mut Vec<FieldError>) {
    if image.name.is_none() && image.url.is_none() {
        push(errors, at, "needs a name or a url");
    }
    if let Some(name) = &image.name {
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            push(errors, format!("{at}.name"), "must be an image reference such as busybox or repo/name");
        }
        if image.tag.is_some() && has_tag_or_digest(name) {
            push(errors, format!("{at}.tag"), "the name already carries a tag or digest");
        }
    }
    if let Some(tag) = &image.tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            push(errors, format!("{at}.tag"), "must be letters, digits, '_', '.' and '-' (at most 128)");
        }
    }
    if let Some(sum) = &image.sum
        && !is_sha256_sum(sum)
    {
        push(errors, format!("{at}.sum"), "must be sha256:<64 hex digits>");
    }
    if let Some(url) = &image.url {
        if let Err(message) = crate::drivers::download::Source::parse(url) {
            push(errors, format!("{at}.url"), message);
        }
        if image.sum.is_none() {
            push(errors, format!("{at}.sum"), "is required with url: a downloaded image is loaded only once verified");
        }
    }
}

/// Whether an image reference already names a tag (`repo:tag`, but not `host:5000/repo`)
/// or a digest (`repo@sha256:..`).
pub(super) fn has_tag_or_digest(name: &str) -> bool {
    name.contains('@') || name.rsplit('/').next().is_some_and(|last| last.contains(':'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::Resources;
    use serde_json::json;

    fn definition(options: serde_json::Value, images: Vec<Image>) -> Definition {
        Definition {
            driver: "docker".into(),
            images,
            resources: Resources::default(),
            options: options.as_object().cloned().unwrap(),
        }
    }

    fn named(name: &str) -> Image {
        Image { name: Some(name.into()), tag: None, url: None, sum: None }
    }

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn parses_every_option() {
        let options = json!({"command": ["sh", "-c", "exit 3"], "env": {"A": "x", "N": 3}, "privileged": true});
        let parsed = DockerOptions::parse(options.as_object().unwrap()).unwrap();
        assert_eq!(parsed.command.unwrap(), ["sh", "-c", "exit 3"]);
        assert_eq!(parsed.env["A"], "x");
        assert_eq!(parsed.env["N"], "3");
        assert!(parsed.privileged);
    }

    #[test]
    fn reports_each_bad_option_by_path() {
        let options = json!({"foo": 1, "command": ["ok", 2], "env": {"B": {"x": 1}}, "privileged": "yes"});
        let errors = validate(&definition(options, vec![named("busybox")]));
        let mut got = fields(&errors);
        got.sort();
        assert_eq!(got, ["options.command[1]", "options.env.B", "options.foo", "options.privileged"]);
    }

    #[test]
    fn checks_images() {
        let bad_sum = Image { name: None, tag: None, url: Some("file:///x.tar".into()), sum: Some("md5:1".into()) };
        let no_sum = Image { name: None, tag: None, url: Some("/x.tar".into()), sum: None };
        let relative = Image { url: Some("x.tar".into()), ..bad_sum.clone() };
        let empty = Image { name: None, tag: None, url: None, sum: None };
        let double_tag = Image { tag: Some("1".into()), ..named("busybox:latest") };
        assert_eq!(fields(&validate(&definition(json!({}), vec![bad_sum]))), ["images[0].sum"]);
        assert_eq!(fields(&validate(&definition(json!({}), vec![no_sum]))), ["images[0].sum"]);
        assert!(fields(&validate(&definition(json!({}), vec![relative]))).contains(&"images[0].url"));
        assert_eq!(fields(&validate(&definition(json!({}), vec![empty]))), ["images[0]"]);
        assert_eq!(fields(&validate(&definition(json!({}), vec![double_tag]))), ["images[0].tag"]);
        assert_eq!(fields(&validate(&definition(json!({}), vec![]))), ["images"]);
        assert!(validate(&definition(json!({}), vec![named("localhost:5000/busybox")])).is_empty());
    }

    #[test]
    fn tags_and_digests_are_told_apart_from_registry_ports() {
        assert!(has_tag_or_digest("busybox:1"));
        assert!(has_tag_or_digest("busybox@sha256:00"));
        assert!(!has_tag_or_digest("localhost:5000/busybox"));
        assert!(has_tag_or_digest("localhost:5000/busybox:2"));
    }

    #[test]
    fn the_example_manifest_is_valid() {
        let text = include_str!("../../../../manifests/docker/busybox.yaml");
        let manifests = api_types::parse_manifests(text.as_bytes(), api_types::Format::Yaml).unwrap();
        let api_types::Manifest::Label(label) = &manifests[0] else { panic!("first document is not a Label") };
        for def in &label.spec.definitions {
            assert_eq!(validate(def), []);
        }
        assert_eq!(manifests[1].kind(), "Application");
    }
}
