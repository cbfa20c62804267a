//! `fishctl logs application NAME [-f]`: the captured output of a resource, streamed.

use std::io::Write;

use anyhow::Result;

use super::Env;
use crate::cli::LogsArgs;

/// Copies the log stream to stdout until it ends (or Ctrl-C with `-f`).
pub async fn run(env: &Env, args: LogsArgs) -> Result<()> {
    let client = env.client()?;
    let mut stream = client.logs(&args.name, args.follow).await?;
    loop {
        let chunk = tokio::select! {
            c = stream.next() => c,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match chunk {
            Some(c) => {
                let mut o = std::io::stdout().lock();
                o.write_all(&c?)?;
                o.flush()?;
            }
            None => return Ok(()),
        }
    }
}
