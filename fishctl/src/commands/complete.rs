//! `fishctl [--config F] [--context C] __complete -- WORDS...`: the object names that
//! may go where the next word of `fishctl WORDS...` is, one a line, read from the
//! server as kubectl does. The scripts in `completions/` call it (see
//! [`super::completions`]) and fall back to their static completion when it prints
//! nothing. It is recognised before clap parses ([`invocation`]), so it is in no
//! `--help` and no completion script offers it.
//!
//! It must never get in the way of typing: any failure (no config, server down,
//! not a name position) prints nothing and exits 0, and the server gets
//! [`TIMEOUT`] at most.

use std::time::Duration;

use anyhow::Result;
use clap::{CommandFactory, ValueEnum};

use super::Env;
use crate::cli::Cli;
use crate::client::ListQuery;
use crate::kind::Kind;

/// How long a completion may wait for the server: a shell that hangs on Tab is
/// worse than one that offers nothing.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Where the next word goes, when it is an object name: its kind.
pub fn name_position(words: &[String]) -> Option<Kind> {
    let cli = Cli::command();
    // Positionals of the command line, without options and their values.
    let mut positionals: Vec<&str> = Vec::new();
    let mut iter = words.iter().map(String::as_str);
    while let Some(w) = iter.next() {
        if w == "--" {
            positionals.extend(iter.by_ref());
            break;
        }
        if w.starts_with('-') && w.len() > 1 {
            if !w.contains('=') && takes_value(&cli, positionals.first().copied(), w) {
                iter.next();
            }
            continue;
        }
        positionals.push(w);
    }
    let (verb, rest) = positionals.split_first()?;
    let kind = |s: &str| Kind::from_str(s, false).ok();
    match (*verb, rest) {
        ("get" | "describe" | "delete", [k]) => kind(k),
        ("deallocate", [k, ..]) => kind(k).filter(|k| *k == Kind::Application),
        ("logs", []) => Some(Kind::Application),
        ("logs", [k]) => kind(k).filter(|k| *k == Kind::Application),
        ("maintenance", [_on_off]) => Some(Kind::Node),
        ("rotate", [_token]) => Some(Kind::User),
        _ => None,
    }
}

/// Whether option `flag` (of the subcommand `verb`, or global) takes a value.
fn takes_value(cli: &clap::Command, verb: Option<&str>, flag: &str) -> bool {
    let sub = verb.and_then(|v| cli.find_subcommand(v));
    let args = cli.get_arguments().chain(sub.into_iter().flat_map(|s| s.get_arguments()));
    for arg in args {
        let long = flag.strip_prefix("--").is_some_and(|l| arg.get_long() == Some(l));
        let short = flag.strip_prefix('-').and_then(|s| s.chars().next()).is_some_and(|c| arg.get_short() == Some(c))
            && flag.len() == 2;
        if long || short {
            return arg.get_action().takes_values();
        }
    }
    false
}

/// `Some((env, words))` when the command line is a `__complete` call: only the global
/// `--config`/`--context` before it, and the words after it (a leading `--` dropped).
pub fn invocation(args: impl IntoIterator<Item = std::ffi::OsString>) -> Option<(Env, Vec<String>)> {
    let args: Vec<String> = args.into_iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    let at = args.iter().position(|a| a == "__complete")?;
    let globals = &args[..at];
    let mut i = 0;
    while i < globals.len() {
        match globals[i].as_str() {
            "--config" | "--context" => i += 2,
            g if g.starts_with("--config=") || g.starts_with("--context=") => i += 1,
            _ => return None,
        }
    }
    let env = Env { config: flag(globals, "--config").map(Into::into), context: flag(globals, "--context") };
    let mut words = args[at + 1..].to_vec();
    if words.first().is_some_and(|w| w == "--") {
        words.remove(0);
    }
    Some((env, words))
}

/// Prints the names for the word after `words`; nothing on any failure.
pub async fn run(env: &Env, words: Vec<String>) -> Result<()> {
    let Some(kind) = name_position(&words) else { return Ok(()) };
    let env = Env {
        config: env.config.clone().or_else(|| flag(&words, "--config").map(Into::into)),
        context: env.context.clone().or_else(|| flag(&words, "--context")),
    };
    let Ok(client) = env.client() else { return Ok(()) };
    let Ok(Ok(list)) = tokio::time::timeout(TIMEOUT, client.list(kind, &ListQuery::default())).await else {
        return Ok(());
    };
    let mut out = String::new();
    for item in &list.items {
        if let Some(name) = item["metadata"]["name"].as_str() {
            out.push_str(name);
            out.push('\n');
        }
    }
    super::out(&out)?;
    Ok(())
}

/// The value of `--name VALUE` or `--name=VALUE` in `words` (the user's own
/// `--config`/`--context` on the line being completed).
fn flag(words: &[String], name: &str) -> Option<String> {
    let mut iter = words.iter();
    while let Some(w) = iter.next() {
        if w == name {
            return iter.next().cloned();
        }
        if let Some(v) = w.strip_prefix(name).and_then(|v| v.strip_prefix('=')) {
            return Some(v.to_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: &str) -> Option<Kind> {
        name_position(&line.split_whitespace().map(String::from).collect::<Vec<_>>())
    }

    #[test]
    fn names_are_completed_where_kubectl_completes_them() {
        assert_eq!(at("get applications"), Some(Kind::Application));
        assert_eq!(at("get apps -o yaml"), Some(Kind::Application), "an option and its value are skipped");
        assert_eq!(at("--context prod get -o wide labels"), Some(Kind::Label));
        assert_eq!(at("describe node"), Some(Kind::Node));
        assert_eq!(at("delete user"), Some(Kind::User));
        assert_eq!(at("deallocate app a b"), Some(Kind::Application), "deallocate takes several names");
        assert_eq!(at("logs"), Some(Kind::Application), "the kind may be left out");
        assert_eq!(at("logs -f application"), Some(Kind::Application));
        assert_eq!(at("maintenance on"), Some(Kind::Node));
        assert_eq!(at("rotate token"), Some(Kind::User));
    }

    #[test]
    fn elsewhere_nothing_is_offered() {
        for line in ["", "get", "get all", "get apps x", "describe", "logs app x", "apply -f", "version"] {
            assert_eq!(at(line), None, "{line:?}");
        }
    }

    #[test]
    fn only_a_complete_call_is_taken_for_one() {
        let os = |line: &str| line.split_whitespace().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let (env, words) = invocation(os("fishctl --config /c.yaml __complete -- get apps")).expect("a call");
        assert_eq!(env.config.as_deref(), Some(std::path::Path::new("/c.yaml")));
        assert_eq!(words, ["get", "apps"]);
        assert!(invocation(os("fishctl get apps")).is_none());
        assert!(invocation(os("fishctl get apps __complete")).is_none(), "a name that happens to be __complete");
    }

    #[test]
    fn the_line_s_own_config_and_context_are_used() {
        let words: Vec<String> = ["--context=prod", "get", "--config", "/c.yaml", "apps"].map(String::from).into();
        assert_eq!(flag(&words, "--context").as_deref(), Some("prod"));
        assert_eq!(flag(&words, "--config").as_deref(), Some("/c.yaml"));
    }
}
