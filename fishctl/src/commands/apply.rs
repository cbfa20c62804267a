//! `fishctl apply -f FILE|DIR|- [-R] [--wait]`.
//!
//! Every document of every file goes to the server in one request, so that the server
//! validates all of them before it writes any: a manifest repository is applied whole
//! or not at all. The documents are checked here first as well, only so that an error
//! can name the file it is in.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use api_types::manifest::{manifest_from_value, parse_values};
use api_types::{ApplyAction, ApplyResult, Format, ManifestError, Phase};

use super::{Env, shown};
use crate::cli::{ApplyArgs, ManifestArgs};
use crate::client::{ClientError, one_line};

/// File name endings read from a directory.
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One input: where it came from and its text.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub origin: String,
    pub text: String,
}

/// Reads every manifest the arguments name into one body; an error if there is none.
pub fn manifest_body(m: &ManifestArgs) -> Result<String> {
    Ok(manifest_sources(m)?.0)
}

/// The body, and for each document the file it came from.
pub fn manifest_sources(m: &ManifestArgs) -> Result<(String, Vec<String>)> {
    let sources = read_sources(&m.files, m.recursive)?;
    let (body, origins) = build_body(&sources)?;
    if origins.is_empty() {
        bail!("no manifests found in {}", m.files.iter().map(|f| shown(f)).collect::<Vec<_>>().join(", "));
    }
    Ok((body, origins))
}

/// Applies the manifests, prints one line per document, and optionally waits.
pub async fn run(env: &Env, args: ApplyArgs) -> Result<()> {
    let (body, origins) = manifest_sources(&args.manifests)?;
    let client = env.client()?;
    let m = &args.manifests;
    let resp = client
        .apply_with(body, args.dry_run, m.applyset.as_deref(), m.prune)
        .await
        .map_err(|e| located(e, &origins))?;
    let suffix = if args.dry_run { " (dry run)" } else { "" };
    let lines: String = resp.results.iter().map(|r| result_line(r).replace('\n', &format!("{suffix}\n"))).collect();
    super::out(&lines)?;
    if args.wait && !args.dry_run {
        let apps: Vec<String> =
            resp.results.iter().filter(|r| r.kind == "Application").map(|r| r.name.clone()).collect();
        super::wait::wait_for(&client, &apps, Phase::Allocated, args.timeout).await?;
    }
    Ok(())
}

/// A server's verdict on the documents, prefixed with the file of the document it is
/// about (`document N: ...` when several were sent, else the only file), as the checks
/// made here are: the reader fixes a file, not a request.
pub fn located(e: ClientError, origins: &[String]) -> anyhow::Error {
    let ClientError::Api(body) = &e else { return e.into() };
    let numbered = body
        .message
        .strip_prefix("document ")
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| origins.get(n.wrapping_sub(1)));
    let single = origins.first().filter(|first| origins.iter().all(|o| o == *first));
    match numbered.or(single) {
        Some(origin) => anyhow::anyhow!("{origin}: {e}"),
        None => e.into(),
    }
}

/// `label/ubuntu-ci created (version 1)`, `application/build-7 unchanged`.
pub fn result_line(r: &ApplyResult) -> String {
    let mut line = format!("{}/{} {}", r.kind.to_lowercase(), r.name, r.action);
    if let (Some(v), ApplyAction::Created | ApplyAction::Configured) = (r.version, r.action) {
        line.push_str(&format!(" (version {v})"));
    }
    line.push('\n');
    line
}

/// Expands `-f` arguments: files as given, directories to their manifest files in
/// sorted order (with subdirectories when `recursive`), `-` to stdin.
pub fn expand_paths(args: &[PathBuf], recursive: bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in args {
        if p.as_os_str() == "-" {
            out.push(p.clone());
            continue;
        }
        let meta = std::fs::metadata(p).with_context(|| format!("cannot read {}", shown(p)))?;
        if meta.is_dir() {
            walk(p, recursive, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    if out.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return super::usage("- (stdin) may be given only once");
    }
    Ok(out)
}

fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read directory {}", shown(dir)))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot read directory {}", shown(dir)))?;
    entries.sort();
    for path in entries {
        let hidden = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            if recursive {
                walk(&path, recursive, out)?;
            }
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads every input named by the `-f` arguments.
pub fn read_sources(args: &[PathBuf], recursive: bool) -> Result<Vec<Source>> {
    expand_paths(args, recursive)?
        .into_iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
                Ok(Source { origin: "<stdin>".into(), text })
            } else {
                let text = std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", shown(&p)))?;
                Ok(Source { origin: shown(&p), text })
            }
        })
        .collect()
}

/// Whether a text holds no document at all: blank lines, comments and separators only.
fn is_blank_yaml(text: &str) -> bool {
    text.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
}

/// Checks every document and joins them into one YAML body (each document re-written
/// as JSON, which is YAML too, so the server sees exactly what was checked here).
/// Returns the body and, for each document in order, the file it came from.
pub fn build_body(sources: &[Source]) -> Result<(String, Vec<String>)> {
    let mut docs = Vec::new();
    let mut origins = Vec::new();
    for src in sources {
        if is_blank_yaml(&src.text) {
            continue;
        }
        let format = Format::detect(None, src.text.as_bytes());
        let values = parse_values(src.text.as_bytes(), format).map_err(|e| manifest_error(&src.origin, &e))?;
        for (i, value) in values.into_iter().enumerate() {
            manifest_from_value(i + 1, value.clone()).map_err(|e| manifest_error(&src.origin, &e))?;
            docs.push(serde_json::to_string(&value)?);
            origins.push(src.origin.clone());
        }
    }
    Ok((docs.join("\n---\n") + "\n", origins))
}

/// `FILE: document N (Label "x") is invalid: field: problem; ...` on one line.
fn manifest_error(origin: &str, e: &ManifestError) -> anyhow::Error {
    let msg = match e {
        ManifestError::Syntax { message, line: Some(l), column: Some(c) } => {
            format!("{message} (line {l}, column {c})")
        }
        ManifestError::Syntax { message, .. } => message.clone(),
        ManifestError::Invalid { errors, .. } => {
            let details: Vec<String> = errors.iter().map(ToString::to_string).collect();
            format!("{e}: {}", details.join("; "))
        }
    };
    anyhow::anyhow!(one_line(&format!("{origin}: {msg}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LABEL: &str = "kind: Label\nmetadata: {name: small}\nspec:\n  definitions:\n    - driver: test\n      resources: {cpu: 1, ram: 1}\n";
    const APP: &str = "kind: Application\nmetadata: {name: build-1}\nspec: {label: small}\n";

    #[test]
    fn result_lines() {
        let r = |kind: &str, name: &str, version, action| ApplyResult {
            kind: kind.into(),
            name: name.into(),
            version,
            action,
        };
        assert_eq!(
            result_line(&r("Label", "ubuntu-ci", Some(1), ApplyAction::Created)),
            "label/ubuntu-ci created (version 1)\n"
        );
        assert_eq!(result_line(&r("Label", "x", Some(2), ApplyAction::Configured)), "label/x configured (version 2)\n");
        assert_eq!(result_line(&r("Label", "x", Some(2), ApplyAction::Unchanged)), "label/x unchanged\n");
        assert_eq!(
            result_line(&r("Application", "build-7", None, ApplyAction::Unchanged)),
            "application/build-7 unchanged\n"
        );
    }

    #[test]
    fn directories_expand_sorted_and_recursive() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("b.yaml"), APP).unwrap();
        std::fs::write(d.join("a.yml"), LABEL).unwrap();
        std::fs::write(d.join("c.json"), "{}").unwrap();
        std::fs::write(d.join("README.md"), "no").unwrap();
        std::fs::write(d.join(".hidden.yaml"), "no").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/z.yaml"), APP).unwrap();
        let names = |paths: Vec<PathBuf>| -> Vec<String> {
            paths.iter().map(|p| p.strip_prefix(d).unwrap().display().to_string()).collect()
        };
        assert_eq!(names(expand_paths(&[d.into()], false).unwrap()), ["a.yml", "b.yaml", "c.json"]);
        assert_eq!(names(expand_paths(&[d.into()], true).unwrap()), ["a.yml", "b.yaml", "c.json", "sub/z.yaml"]);
        assert!(expand_paths(&[d.join("missing.yaml")], false).is_err());
        assert!(expand_paths(&["-".into(), "-".into()], false).is_err());
    }

    #[test]
    fn body_joins_every_document() {
        let sources = [
            Source { origin: "a.yaml".into(), text: format!("{LABEL}---\n{APP}") },
            Source { origin: "empty.yaml".into(), text: "# nothing here\n---\n".into() },
            Source {
                origin: "b.json".into(),
                text: r#"[{"kind":"Application","metadata":{"name":"build-2"},"spec":{"label":"small"}},
                          {"kind":"Application","spec":{"label":"small:1"}}]"#
                    .into(),
            },
        ];
        let (body, origins) = build_body(&sources).unwrap();
        assert_eq!(origins, ["a.yaml", "a.yaml", "b.json", "b.json"]);
        let parsed = api_types::parse_manifests(body.as_bytes(), Format::Yaml).unwrap();
        let names: Vec<_> = parsed.iter().map(|m| (m.kind(), m.metadata().name_str().to_owned())).collect();
        assert_eq!(
            names,
            [
                ("Label", "small".into()),
                ("Application", "build-1".into()),
                ("Application", "build-2".into()),
                ("Application", "".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let bad = LABEL.replace("cpu: 1", "cpu: -1");
        let e = build_body(&[Source { origin: "m/label.yaml".into(), text: bad }]).unwrap_err().to_string();
        assert!(
            e.starts_with("m/label.yaml: document 1 (Label \"small\") is invalid: spec.definitions[0].resources.cpu: "),
            "{e}"
        );
        let e = build_body(&[Source { origin: "x.yaml".into(), text: "kind: [".into() }]).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml: invalid YAML") && !e.contains('\n'), "{e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod located_tests {
    use super::*;

    fn api(message: &str) -> ClientError {
        ClientError::Api(api_types::ErrorBody {
            code: 422,
            reason: api_types::ErrorReason::Invalid,
            message: message.into(),
            details: vec![],
        })
    }

    #[test]
    fn server_errors_name_the_file_of_their_document() {
        let origins = ["a.yaml".to_owned(), "b.yaml".to_owned()];
        let e = located(api("document 2: label \"x\" is invalid"), &origins).to_string();
        assert!(e.starts_with("b.yaml: document 2: "), "{e}");
        let e = located(api("label \"x\" is invalid"), &origins[..1]).to_string();
        assert!(e.starts_with("a.yaml: label "), "{e}");
        let e = located(api("label \"x\" is invalid"), &origins).to_string();
        assert!(e.starts_with("label "), "no file is guessed: {e}");
    }
}
