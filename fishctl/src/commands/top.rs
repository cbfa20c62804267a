//! `fishctl top nodes`: per node, cpu, ram and slots used of total, allocated
//! applications, and the queue (applications elected to it, not yet allocated),
//! like `kubectl top nodes`; then how many applications wait for a node.

use anyhow::Result;
use api_types::{Application, Node, Phase};
use comfy_table::{ContentArrangement, Table, presets};

use super::Env;
use crate::client::ListQuery;
use crate::kind::Kind;

/// Prints the table.
pub async fn run(env: &Env) -> Result<()> {
    let client = env.client()?;
    let nodes: Vec<Node> = typed(client.list(Kind::Node, &ListQuery::default()).await?.items);
    let phase = |p| ListQuery { phase: Some(p), ..ListQuery::default() };
    let elected: Vec<Application> = typed(client.list(Kind::Application, &phase(Phase::Elected)).await?.items);
    let waiting = client.list(Kind::Application, &phase(Phase::New)).await?.items.len();
    super::out(&render(&nodes, &elected, waiting))?;
    Ok(())
}

fn typed<T: serde::de::DeserializeOwned>(items: Vec<serde_json::Value>) -> Vec<T> {
    items.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect()
}

fn used_of(used: u32, total: u32) -> String {
    if total == 0 {
        format!("{used}/0")
    } else {
        format!("{used}/{total} ({}%)", u64::from(used) * 100 / u64::from(total))
    }
}

/// NAME, CPU, RAM(GiB), SLOTS, ALLOCATED, QUEUED, READY; then the pool's queue.
pub fn render(nodes: &[Node], elected: &[Application], waiting: usize) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
    t.set_header(["NAME", "CPU", "RAM(GiB)", "SLOTS", "ALLOCATED", "QUEUED", "READY"]);
    for n in nodes {
        let name = n.metadata.name_str();
        let (cap, used) = (&n.status.capacity, &n.status.allocated);
        let queued = elected.iter().filter(|a| a.status.node.as_deref() == Some(name)).count();
        let ready = match (n.status.ready, n.status.maintenance) {
            (_, true) => "Maintenance",
            (true, false) => "Ready",
            (false, false) => "NotReady",
        };
        t.add_row([
            name.to_owned(),
            used_of(used.cpu, cap.cpu),
            used_of(used.ram, cap.ram),
            used_of(used.slots, cap.slots),
            used.applications.to_string(),
            queued.to_string(),
            ready.to_owned(),
        ]);
    }
    for c in t.column_iter_mut() {
        c.set_padding((0, 3));
    }
    let mut out: String = t.lines().map(|l| l.trim_end().to_owned() + "\n").collect();
    out.push_str(&format!("waiting for a node (NEW): {waiting}\n"));
    out
}
