//! fishctl, the Aquarium CLI, as a library: the binary is `main.rs` calling [`main`].
//!
//! - [`cli`] declares every verb and flag (clap derive);
//! - [`context`] finds the config file and picks a context;
//! - [`client`] is the typed HTTPS client of fishd's API, with a reconnecting watch;
//! - [`commands`] holds one thin adapter per verb;
//! - [`output`] renders tables, YAML, JSON, describe pages and watch output.

pub mod cli;
pub mod client;
pub mod commands;
pub mod context;
pub mod kind;
pub mod output;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for every failure after the command line was understood.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of usage errors, the same clap uses for the ones it finds.
pub const EXIT_USAGE: u8 = 2;

/// Parses the command line, runs it, and prints an error as one line on stderr.
///
/// The rustls crypto provider must be installed before this is called.
pub fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // The completion scripts' call: never an error, never output but names.
    if let Some((env, words)) = commands::complete::invocation(std::env::args_os()) {
        let _ = runtime.block_on(commands::complete::run(&env, words));
        return ExitCode::SUCCESS;
    }
    let cli = cli::Cli::parse();
    init_tracing();
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<commands::Exit>().is_some() => {
            let exit = e.downcast_ref::<commands::Exit>();
            if let Some(m) = exit.and_then(|x| x.message.as_deref()) {
                eprintln!("{m}");
            }
            ExitCode::from(exit.map(|x| x.code).unwrap_or(EXIT_FAILURE))
        }
        Err(e) => {
            eprintln!("{}", error_line(&e));
            let usage = e.downcast_ref::<commands::UsageError>().is_some();
            ExitCode::from(if usage { EXIT_USAGE } else { EXIT_FAILURE })
        }
    }
}

/// `error: <what failed>: <why>`, always one line, never a backtrace.
pub fn error_line(e: &anyhow::Error) -> String {
    format!("error: {}", client::one_line(&format!("{e:#}")))
}

/// `fishctl get apps | head -1` closes the pipe early; that is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Warnings (a watch reconnecting) go to stderr without timestamps; `FISHCTL_LOG=debug`
/// shows more.
fn init_tracing() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    // `level` or `target=level,...` (`Targets`, not the regex-based EnvFilter: a lighter build).
    let filter = std::env::var("FISHCTL_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::WARN));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).without_time().with_target(false);
    let _ = tracing_subscriber::registry().with(layer).with(filter).try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::{ErrorBody, ErrorReason, FieldError};

    #[test]
    fn api_errors_render_as_one_line() {
        let body = ErrorBody {
            code: 422,
            reason: ErrorReason::Invalid,
            message: "label \"x\" is invalid".into(),
            details: vec![
                FieldError { field: "spec.definitions[0].resources.cpu".into(), message: "must be > 0".into() },
                FieldError { field: "spec.definitions[0].driver".into(), message: "no node has driver \"vm\"".into() },
            ],
        };
        let e = anyhow::Error::from(client::ClientError::Api(body));
        assert_eq!(
            error_line(&e),
            "error: label \"x\" is invalid: spec.definitions[0].resources.cpu: must be > 0; \
             spec.definitions[0].driver: no node has driver \"vm\""
        );
    }

    #[test]
    fn chained_errors_render_once_each() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let e = anyhow::Error::from(context::ContextError::Read { path: "/c.yaml".into(), source: io });
        assert_eq!(error_line(&e), "error: cannot read config /c.yaml: permission denied");
        let e = anyhow::anyhow!("multi\nline").context("outer");
        assert_eq!(error_line(&e), "error: outer: multi line");
    }

    #[test]
    fn broken_pipe_is_quiet() {
        let e = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }
}
