//! `fishctl delete label|application|user NAME`. Deleting an application asks for its
//! deallocation; the record stays until its history retention ends.

use anyhow::Result;

use super::Env;
use crate::cli::{DeleteArgs, DeleteKind};
use crate::kind::Kind;

/// Deletes one object.
pub async fn run(env: &Env, args: DeleteArgs) -> Result<()> {
    let kind = match args.kind {
        DeleteKind::Label => Kind::Label,
        DeleteKind::Application => Kind::Application,
        DeleteKind::User => Kind::User,
    };
    if args.version.is_some() && kind != Kind::Label {
        return super::usage("--version applies to labels only");
    }
    env.client()?.delete(kind, &args.name, args.version).await?;
    let what = match (kind, args.version) {
        (Kind::Application, _) => "deallocation requested".to_owned(),
        (_, Some(v)) => format!("version {v} deleted"),
        _ => "deleted".to_owned(),
    };
    super::out(&format!("{}/{} {what}\n", kind.singular(), args.name))?;
    Ok(())
}
