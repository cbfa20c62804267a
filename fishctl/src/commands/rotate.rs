//! `fishctl rotate token [USER]`: a new API token, the old one refused at once.
//!
//! Your own token (no USER, or your own name) is also written into the current
//! context of the config file, so the next command keeps working; another user's
//! (admin) is only printed, once, for you to hand over.

use anyhow::Result;

use super::Env;

/// Rotates and prints the new token on stdout.
pub async fn run(env: &Env, user: Option<String>) -> Result<()> {
    let (path, mut cfg) = env.load()?;
    let ctx = cfg.resolve(env.context.as_deref(), &path)?;
    let client = crate::client::Client::new(&ctx)?;
    let me = client.whoami().await?.metadata.name_str().to_owned();
    let name = user.unwrap_or_else(|| me.clone());
    let (name, token) = client.rotate_token(&name).await?;
    super::out(&format!("{token}\n"))?;
    if name == me
        && let Some(c) = cfg.contexts.get_mut(&ctx.name)
    {
        c.token = Some(token);
        cfg.save(&path)?;
        eprintln!("updated the token of context {:?} in {}", ctx.name, path.display());
    }
    Ok(())
}
