//! `fishctl deallocate application NAME... [--wait]`.

use anyhow::Result;
use api_types::Phase;

use super::Env;
use crate::cli::DeallocateArgs;

/// Asks for deallocation of each application, then optionally waits for DEALLOCATED.
pub async fn run(env: &Env, args: DeallocateArgs) -> Result<()> {
    let client = env.client()?;
    for name in &args.names {
        client.deallocate(name).await?;
        super::out(&format!("application/{name} deallocation requested\n"))?;
    }
    if args.wait {
        super::wait::wait_for(&client, &args.names, Phase::Deallocated, args.timeout).await?;
    }
    Ok(())
}
