//! One file per verb. Each is a thin adapter: parse the arguments, call the client,
//! render the answer. What they share (finding the config, waiting for phases) lives
//! here and in [`wait`].

pub mod apply;
pub mod backup;
pub mod complete;
pub mod completions;
pub mod config;
pub mod create;
pub mod deallocate;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod get;
pub mod logs;
pub mod maintenance;
pub mod rotate;
pub mod top;
pub mod version;
pub mod wait;
pub mod whoami;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::context::{Config, ResolvedContext, default_config_path};

/// The global flags every command may need to find its server.
#[derive(Clone, Debug, Default)]
pub struct Env {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
}

impl Env {
    /// The config file in use.
    pub fn config_path(&self) -> Result<PathBuf> {
        Ok(default_config_path(self.config.as_deref())?)
    }

    /// The config file and its parsed contents.
    pub fn load(&self) -> Result<(PathBuf, Config)> {
        let path = self.config_path()?;
        let cfg = Config::load(&path)?;
        Ok((path, cfg))
    }

    /// The context chosen by `--context` or the file's current context.
    pub fn resolve(&self) -> Result<ResolvedContext> {
        let (path, cfg) = self.load()?;
        Ok(cfg.resolve(self.context.as_deref(), &path)?)
    }

    /// A client for the chosen context.
    pub fn client(&self) -> Result<Client> {
        Ok(Client::new(&self.resolve()?)?)
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    let env = Env { config: cli.config, context: cli.context };
    match cli.command {
        Command::Apply(a) => apply::run(&env, a).await,
        Command::Get(a) => get::run(&env, a).await,
        Command::Describe(a) => describe::run(&env, a).await,
        Command::Deallocate(a) => deallocate::run(&env, a).await,
        Command::Delete(a) => delete::run(&env, a).await,
        Command::Create(a) => create::run(&env, a).await,
        Command::Maintenance(a) => maintenance::run(&env, a).await,
        Command::Logs(a) => logs::run(&env, a).await,
        Command::Whoami => whoami::run(&env).await,
        Command::Version => version::run(),
        Command::Completions(a) => completions::run(a),
        Command::Config(c) => config::run(&env, c),
        Command::Diff(a) => match diff::run(&env, a).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(Exit { code: diff::EXIT_CHANGES, message: None }.into()),
            Err(e) => Err(Exit { code: diff::EXIT_ERROR, message: Some(crate::error_line(&e)) }.into()),
        },
        Command::Backup { output } => backup::run(&env, &output).await,
        Command::Rotate { user, .. } => rotate::run(&env, user).await,
        Command::Top { .. } => top::run(&env).await,
    }
}

/// Ends fishctl with `code`, printing `message` (already an `error: ...` line) if any:
/// for commands whose exit codes say more than success or failure (`diff`).
#[derive(Debug, thiserror::Error)]
#[error("exit {code}")]
pub struct Exit {
    pub code: u8,
    pub message: Option<String>,
}

/// A command line clap accepted but that makes no sense (`--phase` on nodes); exits
/// with clap's usage-error code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Returns a [`UsageError`].
pub fn usage<T>(msg: impl Into<String>) -> Result<T> {
    Err(UsageError(msg.into()).into())
}

/// Writes `s` to stdout and flushes, so that piped output appears as it happens.
pub fn out(s: &str) -> std::io::Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.flush()
}

/// The file name shown for a path in messages.
pub fn shown(p: &Path) -> String {
    p.display().to_string()
}
