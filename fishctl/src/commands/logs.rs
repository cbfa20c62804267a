//! `fishctl logs [application] NAME [-f]`: the captured output of a resource, streamed.
//! The kind may be left out (kubectl's `logs NAME`): applications are the only kind
//! with logs.

use std::io::Write;

use anyhow::Result;

use clap::ValueEnum;

use super::Env;
use crate::cli::{DeallocateKind, LogsArgs};

/// The application named by `[application] NAME`.
fn target(args: &LogsArgs) -> Result<&str> {
    match args.target.as_slice() {
        [name] => Ok(name),
        [kind, name] if DeallocateKind::from_str(kind, true).is_ok() => Ok(name),
        [kind, _] => super::usage(format!("logs: {kind:?} has no logs; only applications do (app)")),
        _ => super::usage("logs: name one application"),
    }
}

/// Copies the log stream to stdout until it ends (or Ctrl-C with `-f`).
pub async fn run(env: &Env, args: LogsArgs) -> Result<()> {
    let name = target(&args)?;
    let client = env.client()?;
    let mut stream = client.logs(name, args.follow).await?;
    let mut written = 0usize;
    loop {
        let chunk = tokio::select! {
            c = stream.next() => c,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match chunk {
            Some(c) => {
                let c = c?;
                written += c.len();
                let mut o = std::io::stdout().lock();
                o.write_all(&c)?;
                o.flush()?;
            }
            None => {
                if written == 0 && !args.follow {
                    eprintln!("application {name:?} has written nothing yet (use -f to wait for its output)");
                }
                return Ok(());
            }
        }
    }
}
