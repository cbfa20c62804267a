//! The `options` of a `process` definition, checked field by field so that a user sees
//! every mistake at once, each at its path in the definition.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use api_types::FieldError;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Keys a `process` definition's options may have.
const KNOWN: [&str; 4] = ["command", "workdir", "env", "user"];

/// A definition's options, once valid.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessOptions {
    /// argv: the program and its arguments, run without a shell.
    pub command: Vec<String>,
    /// Working directory template: relative to the application's directory, or absolute.
    /// `{uid}`, `{name}` and `{node}` are replaced. Default: `work`.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Environment of the process, under the merged metadata.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Runs the process as this user when fishd runs as root.
    #[serde(default)]
    pub user: Option<String>,
}

impl ProcessOptions {
    /// Parses options already checked by [`validate`]; the error says every problem.
    pub fn parse(options: &Map<String, Value>) -> Result<ProcessOptions, String> {
        let errors = validate(options);
        if !errors.is_empty() {
            return Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "));
        }
        serde_json::from_value(Value::Object(options.clone())).map_err(|e| format!("options: {e}"))
    }
}

/// Every problem with `options`, with paths relative to the definition.
pub fn validate(options: &Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut push = |field: String, message: &str| errors.push(FieldError { field, message: message.to_string() });
    for key in options.keys() {
        if !KNOWN.contains(&key.as_str()) {
            push(format!("options.{key}"), "unknown option of the process driver (known: command, workdir, env, user)");
        }
    }
    match options.get("command") {
        None => push("options.command".into(), "is required: the argv list to run, e.g. [sh, -c, 'sleep 60']"),
        Some(Value::Array(argv)) => {
            if argv.is_empty() {
                push("options.command".into(), "must not be empty");
            }
            for (i, arg) in argv.iter().enumerate() {
                match arg {
                    Value::String(s) if i == 0 && s.is_empty() => {
                        push(format!("options.command[{i}]"), "the program must not be empty")
                    }
                    Value::String(s) if s.contains('\0') => {
                        push(format!("options.command[{i}]"), "must not contain a NUL byte")
                    }
                    Value::String(_) => {}
                    _ => push(format!("options.command[{i}]"), "must be a string"),
                }
            }
        }
        Some(_) => push("options.command".into(), "must be a list of strings (argv), e.g. [sh, -c, 'sleep 60']"),
    }
    match options.get("workdir") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) => {
            if let Err(e) = check_workdir(t) {
                push("options.workdir".into(), &e);
            }
        }
        Some(_) => push("options.workdir".into(), "must be a string"),
    }
    match options.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(env)) => {
            for (k, v) in env {
                if !is_env_name(k) {
                    push(format!("options.env.{k}"), "must be letters, digits and '_', not starting with a digit");
                }
                match v {
                    Value::String(s) if s.contains('\0') => push(format!("options.env.{k}"), "must not contain NUL"),
                    Value::String(_) => {}
                    _ => push(format!("options.env.{k}"), "must be a string"),
                }
            }
        }
        Some(_) => push("options.env".into(), "must be a map of variable names to strings"),
    }
    match options.get("user") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if !u.is_empty() && !u.contains(['/', ':', '\0']) => {}
        Some(_) => push("options.user".into(), "must be a user name"),
    }
    errors
}

/// Fills a workdir template.
pub fn render_workdir(template: &str, uid: &str, name: &str, node: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or("unclosed '{' in workdir")? + open;
        out.push_str(match &rest[open + 1..close] {
            "uid" => uid,
            "name" => name,
            "node" => node,
            other => return Err(format!("unknown placeholder {{{other}}} (known: {{uid}}, {{name}}, {{node}})")),
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn check_workdir(template: &str) -> Result<(), String> {
    if template.is_empty() {
        return Err("must not be empty".into());
    }
    let filled = render_workdir(template, "u", "n", "h")?;
    if Path::new(&filled).components().any(|c| c == Component::ParentDir) {
        return Err("must not contain '..'".into());
    }
    Ok(())
}

/// A name that `sh` and `env` accept as a variable.
pub fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && !key.as_bytes()[0].is_ascii_digit()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errs(v: Value) -> Vec<String> {
        validate(v.as_object().unwrap()).iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn good_options_pass() {
        let o = json!({"command": ["sh", "-c", "true"], "workdir": "w/{uid}", "env": {"A": "1"}, "user": "nobody"});
        assert!(errs(o.clone()).is_empty());
        assert_eq!(ProcessOptions::parse(o.as_object().unwrap()).unwrap().command.len(), 3);
    }

    #[test]
    fn bad_options_name_their_field() {
        assert_eq!(errs(json!({})), ["options.command"]);
        assert_eq!(errs(json!({"command": "sleep 1"})), ["options.command"]);
        assert_eq!(errs(json!({"command": ["a", 1]})), ["options.command[1]"]);
        assert_eq!(errs(json!({"command": ["a"], "colour": 1})), ["options.colour"]);
        assert_eq!(errs(json!({"command": ["a"], "workdir": "../x"})), ["options.workdir"]);
        assert_eq!(errs(json!({"command": ["a"], "workdir": "{home}"})), ["options.workdir"]);
        assert_eq!(errs(json!({"command": ["a"], "env": {"1X": "a", "Y": 2}})), ["options.env.1X", "options.env.Y"]);
    }

    #[test]
    fn renders_workdir() {
        assert_eq!(render_workdir("/srv/{name}-{uid}", "U", "N", "H").unwrap(), "/srv/N-U");
    }
}
