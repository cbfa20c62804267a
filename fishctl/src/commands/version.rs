//! `fishctl version`: works without a config or a server.

use anyhow::Result;

/// The line `version` prints.
pub fn version_line() -> String {
    format!("fishctl {}\n", env!("CARGO_PKG_VERSION"))
}

/// Prints the client version.
pub fn run() -> Result<()> {
    super::out(&version_line())?;
    Ok(())
}
