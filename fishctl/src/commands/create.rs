//! `fishctl create user NAME [--role admin|user]`: the token is printed this once.
//! `fishctl create join-token [--ttl 1h]`: the join token alone on stdout, for scripts.

use anyhow::{Context as _, Result};
use api_types::{Name, ObjectMeta, User, UserSpec};

use super::Env;
use crate::cli::{CreateArgs, CreateCommand};

/// Creates the user and prints its token.
pub async fn run(env: &Env, args: CreateArgs) -> Result<()> {
    match args.what {
        CreateCommand::User { name, role } => {
            let parsed: Name = name.parse().with_context(|| format!("invalid user name {name:?}"))?;
            let user = User {
                api_version: Default::default(),
                kind: Default::default(),
                metadata: ObjectMeta::named(parsed),
                spec: UserSpec { roles: vec![role.into()], password: None, rate_limit: None },
                status: Default::default(),
            };
            let created = env.client()?.create_user(&user).await?;
            super::out(&created_lines(&name, created.status.token.as_deref()))?;
            Ok(())
        }
        CreateCommand::JoinToken { ttl } => {
            let token = env.client()?.create_join_token(Some(ttl)).await?;
            super::out(&format!("{}\n", token.token))?;
            Ok(())
        }
    }
}

/// `user/NAME created` and the token, which the server shows only this once.
pub fn created_lines(name: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("user/{name} created\ntoken: {t}\n(the token is shown only now: store it safely)\n"),
        None => format!("user/{name} created\n(the server returned no token)\n"),
    }
}
