//! `fishctl maintenance on|off NODE`.

use anyhow::Result;

use super::Env;
use crate::cli::{MaintenanceArgs, OnOff};

/// Switches maintenance of one node.
pub async fn run(env: &Env, args: MaintenanceArgs) -> Result<()> {
    let on = args.state == OnOff::On;
    env.client()?.set_maintenance(&args.node, on).await?;
    super::out(&format!("node/{} maintenance {}\n", args.node, if on { "on" } else { "off" }))?;
    Ok(())
}
