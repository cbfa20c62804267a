//! The module arrows of fishd, checked: which top-level module may name which.
//!
//! `STYLE.md` asks that dependencies point inward (api → auth → store; drivers never
//! touch the store; only `runtime` wires everything). Rust lets any module name any
//! other, so this test reads every `crate::<module>` path in the sources (in `use`
//! lines and inline, comments excluded) and compares them with [`ALLOWED`]. A new
//! arrow is a decision: add it to the table, where a reviewer sees it, and keep the
//! table acyclic (the test checks that too).

#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of `fishd` and the modules it may name. `runtime` wires
/// everything; `lib`/`main` (they only declare and call) and this check are not listed.
const ALLOWED: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("errors", &[]),
    ("fsutil", &[]),
    ("metadata", &[]),
    ("ratelimit", &[]),
    ("telemetry", &[]),
    ("store", &["defaults", "errors", "fsutil"]),
    ("tls", &["fsutil"]),
    // The accept loop reads a peer certificate's common name once per connection.
    ("listener", &["tls"]),
    ("meta_token", &["fsutil"]),
    ("auth", &["ratelimit", "store"]),
    ("logs", &["store"]),
    ("proxy", &["fsutil", "meta_token", "store"]),
    ("gates", &["defaults", "fsutil", "listener", "metadata", "store"]),
    ("bootstrap", &["auth", "fsutil", "store"]),
    ("cluster", &["auth", "errors", "fsutil", "store", "tls"]),
    ("config", &["defaults", "gates", "proxy"]),
    ("drivers", &["logs", "metadata", "proxy"]),
    ("reconcile", &["drivers", "meta_token", "metadata", "store", "telemetry"]),
    (
        "api",
        &[
            "auth",
            "cluster",
            "defaults",
            "drivers",
            "gates",
            "listener",
            "meta_token",
            "metadata",
            "ratelimit",
            "store",
            "telemetry",
            "tls",
        ],
    ),
    (
        "runtime",
        &[
            "api",
            "bootstrap",
            "cluster",
            "config",
            "defaults",
            "drivers",
            "errors",
            "gates",
            "logs",
            "meta_token",
            "metadata",
            "proxy",
            "reconcile",
            "store",
            "telemetry",
            "tls",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The `.rs` files of top-level module `module` (`src/<module>.rs` and `src/<module>/**`).
fn files_of(module: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let file = src().join(format!("{module}.rs"));
    if file.is_file() {
        out.push(file);
    }
    let mut dirs = vec![src().join(module)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// The top-level modules `text` names through `crate::`, with the first line naming each.
fn named_modules(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: the first segment of each item.
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(|item| item.trim().split("::").next().unwrap_or("")).collect()
            } else {
                vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or("")]
            };
            for name in names.into_iter().filter(|n| !n.is_empty()) {
                out.entry(name.to_owned()).or_insert_with(|| line.trim().to_owned());
            }
        }
    }
    out
}

#[test]
fn every_module_names_only_the_modules_the_table_allows() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(m, deps)| (*m, deps.iter().copied().collect())).collect();
    let mut top_level: BTreeSet<String> = BTreeSet::new();
    for entry in std::fs::read_dir(src()).expect("fishd/src is readable").flatten() {
        let name = entry.file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
        if !matches!(name.as_str(), "lib" | "main" | "layering") {
            top_level.insert(name);
        }
    }
    let unlisted: Vec<&String> = top_level.iter().filter(|m| !allowed.contains_key(m.as_str())).collect();
    assert!(unlisted.is_empty(), "modules missing from layering::ALLOWED (add each with its arrows): {unlisted:?}");

    let mut wrong = Vec::new();
    for module in &top_level {
        for file in files_of(module) {
            let text = std::fs::read_to_string(&file).expect("a source file is readable");
            for (name, line) in named_modules(&text) {
                if name == *module || !top_level.contains(&name) {
                    continue;
                }
                if !allowed[module.as_str()].contains(name.as_str()) {
                    let rel = file.strip_prefix(src()).unwrap_or(&file).display().to_string();
                    wrong.push(format!("{module} → {name} (src/{rel}: {line})"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "arrows not in layering::ALLOWED:\n  {}", wrong.join("\n  "));
}

#[test]
fn the_allowed_arrows_point_inward_only() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    // Depth-first search for a cycle; `path` is the current chain.
    fn visit<'a>(
        m: &'a str,
        allowed: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = path.iter().position(|p| *p == m) {
            panic!("the arrows form a cycle: {} → {m}", path[at..].join(" → "));
        }
        if !done.insert(m) {
            return;
        }
        path.push(m);
        for dep in allowed.get(m).copied().unwrap_or_default() {
            visit(dep, allowed, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for m in allowed.keys() {
        visit(m, &allowed, &mut Vec::new(), &mut done);
    }
    // The arrows the issue names, stated plainly.
    let reaches = |from: &str, to: &str| allowed[from].contains(&to);
    assert!(reaches("api", "auth") && reaches("auth", "store"), "api → auth → store");
    assert!(!reaches("auth", "api") && !reaches("store", "auth") && !reaches("store", "api"));
    assert!(!reaches("config", "api") && !reaches("config", "store"), "config names defaults, not layers");
    assert!(!reaches("drivers", "store") && !reaches("drivers", "api"), "drivers never touch the store or HTTP");
}

#[test]
fn crate_paths_are_found_in_use_groups_and_inline_but_not_in_comments() {
    let found = named_modules(
        "use crate::{api::AppState, store};\nlet x = crate::defaults::MAX;\n/// see [`crate::runtime`]\n",
    );
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, ["api", "defaults", "store"]);
}
