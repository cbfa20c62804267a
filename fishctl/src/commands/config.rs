//! `fishctl config get-contexts | use-context NAME | current-context`: reads and edits
//! the config file without talking to any server.

use anyhow::Result;
use comfy_table::{ContentArrangement, Table, presets};

use super::Env;
use crate::cli::ConfigCommand;
use crate::context::Config;

/// Runs a `config` subcommand.
pub fn run(env: &Env, cmd: ConfigCommand) -> Result<()> {
    let (path, mut cfg) = env.load()?;
    match cmd {
        ConfigCommand::GetContexts => super::out(&contexts_table(&cfg))?,
        ConfigCommand::CurrentContext => {
            let ctx = cfg.resolve(env.context.as_deref(), &path)?;
            super::out(&format!("{}\n", ctx.name))?;
        }
        ConfigCommand::UseContext { name } => {
            cfg.use_context(&name, &path)?;
            cfg.save(&path)?;
            super::out(&format!("switched to context {name:?}\n"))?;
        }
    }
    Ok(())
}

/// CURRENT, NAME, SERVER, USER; the current context is starred.
pub fn contexts_table(cfg: &Config) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(["CURRENT", "NAME", "SERVER", "USER"]);
    for (name, c) in &cfg.contexts {
        let current = if cfg.current_context.as_deref() == Some(name) { "*" } else { "" };
        t.add_row([current, name.as_str(), c.server.as_str(), c.user.as_deref().unwrap_or("")]);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
    }
    t.lines().map(|l| l.trim_end().to_owned() + "\n").collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn contexts_table_marks_current() {
        let cfg = Config::parse(
            "current_context: b\ncontexts:\n  a: {server: https://a:8001, user: admin}\n  b: {server: https://b:8001}\n",
        )
        .unwrap();
        assert_eq!(
            contexts_table(&cfg),
            "CURRENT   NAME   SERVER           USER\n          a      https://a:8001   admin\n*         b      https://b:8001\n"
        );
    }
}
