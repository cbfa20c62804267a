//! `fishctl get KIND [NAME] [-o FORMAT] [-w] [--phase P] [--label L]`, and `get all`.
//!
//! With `--watch` it first shows the list as without it, then follows changes from the
//! list's `resourceVersion`: a table redrawn in place on a terminal, one line per change
//! when piped (JSON lines with `-o json`, YAML documents with `-o yaml`).

use std::io::IsTerminal;

use anyhow::Result;
use api_types::{Application, Gate, Label, Node, User, WatchEventType};
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;

use super::Env;
use crate::cli::{GetArgs, OutputFormat};
use crate::client::{Client, ListQuery, WatchUpdate, Watcher};
use crate::kind::{Kind, KindOrAll};
use crate::output::watch::{LiveTable, WatchState, event_line, state_table};
use crate::output::{Resource, kind_name, name_of, render_names, render_table, to_json, to_yaml, typed_all};

/// How often a live watch table re-renders to keep its AGE column current (ages show
/// seconds while young, so a second is the finest step a reader sees).
const AGE_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// The kinds `get all` shows, in this order (users are accounts, not workload).
const ALL_KINDS: [Kind; 3] = [Kind::Label, Kind::Application, Kind::Node];

/// Lists, shows or watches objects of one kind, or of every kind (`all`).
pub async fn run(env: &Env, args: GetArgs) -> Result<()> {
    let kind = match args.kind {
        KindOrAll::All => return get_all(env, &args).await,
        KindOrAll::Kind(k) => k,
    };
    if kind != Kind::Application && (args.phase.is_some() || args.label.is_some()) {
        return super::usage("--phase and --label apply to applications only");
    }
    if kind == Kind::Gate && args.watch {
        return super::usage("gates cannot be watched: they show their last pass; run `get gates` again");
    }
    let client = env.client()?;
    match kind {
        Kind::Gate => get::<Gate>(&client, &args).await,
        Kind::Label => get::<Label>(&client, &args).await,
        Kind::Application => get::<Application>(&client, &args).await,
        Kind::Node => get::<Node>(&client, &args).await,
        Kind::User => get::<User>(&client, &args).await,
    }
}

/// `get all`: the table (or names, or one List) of every workload kind, as kubectl does.
async fn get_all(env: &Env, args: &GetArgs) -> Result<()> {
    if args.name.is_some() || args.watch || args.phase.is_some() || args.label.is_some() {
        return super::usage("`get all` takes no name, --watch, --phase or --label; name a kind for those");
    }
    let client = env.client()?;
    let now = OffsetDateTime::now_utc();
    let mut sections = Vec::new();
    let mut everything = Vec::new();
    for kind in ALL_KINDS {
        let items = client.list(kind, &ListQuery::default()).await?.items;
        if items.is_empty() {
            continue;
        }
        let text = match (kind, args.output) {
            (_, OutputFormat::Json | OutputFormat::Yaml) => {
                everything.extend(items);
                continue;
            }
            (Kind::Label, o) => render::<Label>(&items, o, now)?,
            (Kind::Application, o) => render::<Application>(&items, o, now)?,
            (Kind::Node, o) => render::<Node>(&items, o, now)?,
            (Kind::User, o) => render::<User>(&items, o, now)?,
            (Kind::Gate, o) => render::<Gate>(&items, o, now)?,
        };
        sections.push(if is_table(args.output) { format!("{}:\n{text}", kind.plural()) } else { text });
    }
    let text = match args.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let list = serde_json::json!({"apiVersion": "aquarium.fish/v1", "kind": "List", "items": everything});
            render_value(&list, args.output)?
        }
        OutputFormat::Name => sections.concat(),
        _ => sections.join("\n"),
    };
    super::out(&text).map_err(Into::into)
}

fn query(args: &GetArgs) -> ListQuery {
    ListQuery { name: None, phase: args.phase, label: args.label.clone() }
}

async fn get<T: Resource + DeserializeOwned>(client: &Client, args: &GetArgs) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let (items, single, resource_version) = match &args.name {
        Some(name) => {
            let obj = client.get(T::KIND, name).await?;
            let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_owned);
            (vec![obj], true, rv)
        }
        None => {
            let list = client.list(T::KIND, &query(args)).await?;
            let rv = list.metadata.resource_version.clone();
            if !args.watch && matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
                // The List object itself, as kubectl prints it.
                return super::out(&render_value(&serde_json::to_value(&list)?, args.output)?).map_err(Into::into);
            }
            (list.items, false, Some(rv))
        }
    };
    let live = args.watch && std::io::stdout().is_terminal() && is_table(args.output);
    if !live {
        let first = match args.output {
            OutputFormat::Json | OutputFormat::Yaml if single && !args.watch => render_value(&items[0], args.output)?,
            _ if args.watch && !is_table(args.output) => {
                // Watch output is a stream of events; the initial objects are its first ADDED ones.
                items.iter().map(|o| watch_line::<T>(WatchEventType::Added, o, args.output)).collect::<Result<_>>()?
            }
            _ => render::<T>(&items, args.output, now)?,
        };
        super::out(&first)?;
    }
    if args.watch {
        watch::<T>(client, args, items, resource_version, live).await?;
    }
    Ok(())
}

fn is_table(o: OutputFormat) -> bool {
    matches!(o, OutputFormat::Table | OutputFormat::Wide)
}

/// Renders a list the way `get` without `--watch` shows it.
pub fn render<T: Resource + DeserializeOwned>(
    items: &[Value],
    output: OutputFormat,
    now: OffsetDateTime,
) -> Result<String> {
    Ok(match output {
        OutputFormat::Table | OutputFormat::Wide => {
            render_table(&typed_all::<T>(items.to_vec())?, output == OutputFormat::Wide, now)
        }
        OutputFormat::Name => render_names(T::KIND, items),
        OutputFormat::Json | OutputFormat::Yaml => render_value(&Value::Array(items.to_vec()), output)?,
    })
}

fn render_value(v: &Value, output: OutputFormat) -> Result<String> {
    Ok(if output == OutputFormat::Yaml { to_yaml(v)? } else { to_json(v)? })
}

/// One change in piped watch output.
pub fn watch_line<T: Resource + DeserializeOwned>(
    t: WatchEventType,
    obj: &Value,
    output: OutputFormat,
) -> Result<String> {
    Ok(match output {
        OutputFormat::Table | OutputFormat::Wide => event_line::<T>(t, obj)?,
        OutputFormat::Name => format!("{}\n", kind_name(T::KIND, obj)),
        OutputFormat::Json => {
            let ev = api_types::WatchEvent { event_type: t, object: obj.clone() };
            serde_json::to_string(&ev)? + "\n"
        }
        OutputFormat::Yaml => {
            let ev = api_types::WatchEvent { event_type: t, object: obj.clone() };
            format!("---\n{}", to_yaml(&ev)?)
        }
    })
}

async fn watch<T: Resource + DeserializeOwned>(
    client: &Client,
    args: &GetArgs,
    initial: Vec<Value>,
    resource_version: Option<String>,
    live: bool,
) -> Result<()> {
    let wanted = |obj: &Value| args.name.as_deref().is_none_or(|n| name_of(obj) == n || uid_of(obj) == Some(n));
    let mut state = WatchState::default();
    state.apply(WatchUpdate::Resync(initial));
    let mut watcher = Watcher::new(client.clone(), T::KIND, query(args));
    if let Some(rv) = resource_version {
        watcher = watcher.starting_at(rv);
    }
    let mut table = LiveTable::default();
    // A terminal that reports 0 columns (a pty nobody sized, some serial consoles)
    // has an unknown width, not room for nothing: clipping to 0 drew empty lines.
    let width = comfy_table::Table::new().width().map(usize::from).filter(|w| *w > 0);
    let wide = args.output == OutputFormat::Wide;
    let mut drawn = String::new();
    if live {
        drawn = state_table::<T>(&state, wide, OffsetDateTime::now_utc())?;
        table.redraw(&mut std::io::stdout(), &drawn, width)?;
    }
    // The AGE column ticks between events: the live table is redrawn when it would change.
    let mut tick = tokio::time::interval(AGE_TICK);
    loop {
        let update = tokio::select! {
            u = watcher.next() => u?,
            _ = tick.tick(), if live => {
                let now_drawn = state_table::<T>(&state, wide, OffsetDateTime::now_utc())?;
                if now_drawn != drawn {
                    table.redraw(&mut std::io::stdout(), &now_drawn, width)?;
                    drawn = now_drawn;
                }
                continue;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let update = match update {
            WatchUpdate::Event(_, ref obj) if !wanted(obj) => continue,
            WatchUpdate::Resync(items) => WatchUpdate::Resync(items.into_iter().filter(|o| wanted(o)).collect()),
            other => other,
        };
        let changes = state.apply(update);
        if live {
            drawn = state_table::<T>(&state, wide, OffsetDateTime::now_utc())?;
            table.redraw(&mut std::io::stdout(), &drawn, width)?;
        } else {
            let lines: String =
                changes.iter().map(|(t, o)| watch_line::<T>(*t, o, args.output)).collect::<Result<_>>()?;
            super::out(&lines)?;
        }
    }
}

fn uid_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/uid").and_then(Value::as_str)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::output::typed;

    #[test]
    fn watch_lines_per_format() {
        let obj = serde_json::json!({"metadata": {"name": "n1"}, "status": {"ready": true,
            "capacity": {"cpu": 2, "ram": 4, "slots": 2}, "allocated": {"cpu": 0, "ram": 0, "slots": 0}}});
        let line = |o| watch_line::<Node>(WatchEventType::Added, &obj, o).unwrap();
        assert_eq!(line(OutputFormat::Table), "ADDED node/n1 ready=True maintenance=off slots=0/2 apps=0\n");
        assert_eq!(line(OutputFormat::Name), "node/n1\n");
        let json: Value = serde_json::from_str(&line(OutputFormat::Json)).unwrap();
        assert_eq!(json["type"], "ADDED");
        assert_eq!(json["object"]["metadata"]["name"], "n1");
        assert!(line(OutputFormat::Yaml).starts_with("---\ntype: ADDED\n"), "{}", line(OutputFormat::Yaml));
    }

    #[test]
    fn typed_decoding_errors_name_the_kind() {
        let e = typed::<Application>(serde_json::json!({"metadata": {}})).unwrap_err().to_string();
        assert!(e.starts_with("cannot read application from the server's answer: "), "{e}");
    }
}
