//! `fishctl whoami`: who the current context's token authenticates as.

use anyhow::Result;

use super::Env;
use crate::output::table::user_roles;

/// Prints the user, its roles, and where it was asked.
pub async fn run(env: &Env) -> Result<()> {
    let ctx = env.resolve()?;
    let client = crate::client::Client::new(&ctx)?;
    let user = client.whoami().await?;
    super::out(&format!(
        "user:     {}\nroles:    {}\ncontext:  {}\nserver:   {}\n",
        user.metadata.name_str(),
        user_roles(&user),
        ctx.name,
        client.server()
    ))?;
    Ok(())
}
