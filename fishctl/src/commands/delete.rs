//! `fishctl delete label|application|user|node NAME`. Deleting a node removes it from
//! the cluster (fishd refuses while it holds applications). Deleting a finished application
//! (DEALLOCATED, ERROR) removes it and frees its name, as kubectl's `delete` removes;
//! deleting an active one asks for its deallocation (`deallocate` is the verb for that).
//! Deleting a label says how many applications still run on it.

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
        DeleteKind::Node => Kind::Node,
    };
    if args.version.is_some() && kind != Kind::Label {
        return super::usage("--version applies to labels only");
    }
    let (status, body) = env.client()?.delete(kind, &args.name, args.version).await?;
    let what = match (kind, args.version) {
        (Kind::Application, _) if status == 202 => {
            "deallocation requested (delete it again once DEALLOCATED to remove it)".to_owned()
        }
        (Kind::Application, _) => "deleted".to_owned(),
        (Kind::Node, _) => "removed from the cluster".to_owned(),
        (_, Some(v)) => format!("version {v} deleted"),
        _ => "deleted".to_owned(),
    };
    let mut line = format!("{}/{} {what}", kind.singular(), args.name);
    if kind == Kind::Label {
        match body.get("applicationsRunning").and_then(serde_json::Value::as_u64) {
            Some(0) | None => {}
            Some(1) => line.push_str("; 1 application still runs on it (it keeps its pinned version)"),
            Some(n) => line.push_str(&format!("; {n} applications still run on it (they keep their pinned version)")),
        }
    }
    super::out(&format!("{line}\n"))?;
    Ok(())
}
