//! One pool, three nodes (contract section 8, "Election"; issue 13 must-show 2): real
//! fishd processes on loopback share the work of a burst created through all three
//! APIs at once. The resources are real processes that write down their own start and
//! end, so what is checked is what actually ran: every application started exactly
//! once, on one node, and no node ever ran more at once than its capacity. A
//! `nodeFilter` pins a label to one node; a definition that fails on one node lands on
//! another.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aquarium_e2e::{TestDaemon, eventually};
use serde_json::{Value, json};

use crate::cluster::three_nodes_with;

/// Slots of every node: room for this many resources at once (each takes one).
pub(crate) const CAPACITY: usize = 20;

/// The node names of the three-node tests.
pub(crate) const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// The fish.yml lines of node `name`: room for [`CAPACITY`] resources, the process
/// driver (inspected every 250 ms, so an exit is noticed soon), and the test driver
/// with the settings `test`.
pub(crate) fn node_config(name: &str, test: &str) -> String {
    format!(
        "nodeName: {name}\ncapacity: {{cpu: 64, ram: 256, slots: {CAPACITY}}}\ninspectInterval: 250ms\n\
         drivers:\n  process: {{gracePeriod: 2s}}\n  test: {test}\n"
    )
}

/// One line a recording process wrote.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub app: String,
    pub node: String,
    pub start: bool,
    /// Wall-clock nanoseconds (`date +%s%N`): every node runs on this machine.
    pub at: u128,
}

/// One run of an application's process: where, and when it started and ended.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    pub node: String,
    pub start: u128,
    pub end: Option<u128>,
}

/// A shared file where every resource of a recording label writes
/// `<application> <node> start|end <ns>` (`FISH_APPLICATION` and `FISH_NODE` from its
/// environment), one append per line.
pub(crate) struct Records {
    dir: tempfile::TempDir,
}

impl Records {
    pub(crate) fn new() -> Records {
        Records { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("runs.log")
    }

    /// A label whose process records its start, runs `secs` seconds (`None`: until it
    /// is deallocated, or until these records are dropped), records its end and exits;
    /// pinned by `node_filter` if given.
    pub(crate) fn label(&self, name: &str, node_filter: Option<&str>, secs: Option<u32>) -> String {
        let log = self.path();
        let record = format!("r() {{ echo \"$FISH_APPLICATION $FISH_NODE $1 $(date +%s%N)\" >> {}; }}", log.display());
        let body = match secs {
            Some(s) => format!("r start\nsleep {s}\nr end"),
            // Process resources outlive their fishd by design (a restarted node adopts
            // them), so a test that ends (or panics) with one allocated would leave it
            // running: it stops on its own once the test's directory is gone.
            None => format!("r start\nwhile [ -d {} ]; do sleep 1; done", self.dir.path().display()),
        };
        let script = format!("{record}\n{body}").replace('\n', "\n            ");
        let filter = node_filter.map(|f| format!(", nodeFilter: [\"{f}\"]")).unwrap_or_default();
        // Root runs the process as root (not as a user made for it): it writes the shared file.
        let user = if nix::unistd::geteuid().is_root() { "\n        user: root" } else { "" };
        format!(
            "---\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  definitions:\n    - driver: process\n      \
             resources: {{cpu: 1, ram: 1, network: host{filter}}}\n      options:{user}\n        command:\n          \
             - sh\n          - -c\n          - |\n            {script}\n"
        )
    }

    /// Every line written so far, in time order.
    pub(crate) fn read(&self) -> Vec<Record> {
        let text = std::fs::read_to_string(self.path()).unwrap_or_default();
        let mut out: Vec<Record> = text
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f.len() == 4 && (f[2] == "start" || f[2] == "end"), "a torn or foreign record: {l:?}");
                Record {
                    app: f[0].to_owned(),
                    node: f[1].to_owned(),
                    start: f[2] == "start",
                    at: f[3].parse().unwrap_or_else(|_| panic!("a bad time in {l:?}")),
                }
            })
            .collect();
        // At one instant an end goes before a start: never counts two at once that were not.
        out.sort_by_key(|r| (r.at, r.start));
        out
    }

    /// The runs of every application, from its records.
    pub(crate) fn runs(&self) -> BTreeMap<String, Vec<Run>> {
        let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
        for r in self.read() {
            let of = runs.entry(r.app.clone()).or_default();
            if r.start {
                of.push(Run { node: r.node, start: r.at, end: None });
            } else {
                let run = of.iter_mut().find(|x| x.node == r.node && x.end.is_none());
                let run = run.unwrap_or_else(|| panic!("{} ended on {} without a start", r.app, r.node));
                run.end = Some(r.at);
            }
        }
        runs
    }

    /// Per node, the most processes that ran there at once.
    pub(crate) fn most_at_once(&self) -> BTreeMap<String, usize> {
        let mut now: BTreeMap<String, usize> = BTreeMap::new();
        let mut most: BTreeMap<String, usize> = BTreeMap::new();
        for r in self.read() {
            let n = now.entry(r.node.clone()).or_default();
            if r.start {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
            let m = most.entry(r.node).or_default();
            *m = (*m).max(*n);
        }
        most
    }
}

/// Nanoseconds since the epoch, the clock of the records.
pub(crate) fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// Waits until every node serves label `name`.
pub(crate) async fn label_everywhere(nodes: &[&TestDaemon], name: &str) {
    for d in nodes {
        eventually(&format!("label {name} on {}", d.node_name()), || async { d.label_version(name).await.is_some() })
            .await
            .unwrap();
    }
}

/// Creates applications `names` of `label` at once: `workers` concurrent requests on
/// each of `nodes`, each taking the next name when its last create was answered.
pub(crate) async fn create_through(nodes: &[&TestDaemon], label: &str, names: &[String], workers: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(names.to_vec());
    let mut set = tokio::task::JoinSet::new();
    for d in nodes {
        for _ in 0..workers {
            let (client, url, token, node) = (d.client.clone(), d.url.clone(), d.token.clone(), d.node_name());
            let (next, names, label) = (next.clone(), names.clone(), label.to_owned());
            set.spawn(async move {
                while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let body = json!({"apiVersion": "aquarium.fish/v1", "kind": "Application",
                                      "metadata": {"name": name}, "spec": {"label": label}});
                    let r = client
                        .post(format!("{url}/api/v1/applications"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("create {name} through {node}: {e}"));
                    let code = r.status().as_u16();
                    assert_eq!(code, 201, "create {name} through {node}: {}", r.text().await.unwrap_or_default());
                }
            });
        }
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// The applications of `label` as `d` serves them, by name.
pub(crate) async fn applications(d: &TestDaemon, label: &str) -> BTreeMap<String, Value> {
    let (code, list) = d.get(&format!("/api/v1/applications?label={label}")).await.unwrap();
    assert_eq!(code, 200, "{list}");
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["metadata"]["name"].as_str().unwrap_or_default().to_owned(), a.clone()))
        .collect()
}

/// The phase of an application as JSON.
pub(crate) fn phase(app: &Value) -> &str {
    app["status"]["phase"].as_str().unwrap_or_default()
}

/// Waits until every one of `names` (of `label`, as `d` serves them) is in one of
/// `phases`, up to `limit`; returns them. On time out, says how many are where.
pub(crate) async fn wait_all(
    d: &TestDaemon,
    label: &str,
    names: &[String],
    phases: &[&str],
    limit: Duration,
) -> BTreeMap<String, Value> {
    let started = Instant::now();
    loop {
        let apps = applications(d, label).await;
        let done = names.iter().filter(|n| apps.get(*n).is_some_and(|a| phases.contains(&phase(a)))).count();
        if done == names.len() {
            return apps;
        }
        if started.elapsed() > limit {
            let mut by_phase: BTreeMap<&str, usize> = BTreeMap::new();
            for n in names {
                *by_phase.entry(apps.get(n).map(phase).unwrap_or("missing")).or_default() += 1;
            }
            let stuck: Vec<String> = names
                .iter()
                .filter_map(|n| apps.get(n))
                .filter(|a| !phases.contains(&phase(a)))
                .take(3)
                .map(|a| format!("{:#}", a["status"]))
                .collect();
            panic!(
                "after {limit:?} on {}: {done} of {} applications of {label} are {phases:?}; by phase {by_phase:?}; \
                 e.g. {}",
                d.node_name(),
                names.len(),
                stuck.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Checks that each of `names` ran exactly once, to its end, on the node its status
/// names (as in `apps`); returns how many ran on each node.
pub(crate) fn ran_once_each(
    records: &Records,
    names: &[String],
    apps: &BTreeMap<String, Value>,
) -> BTreeMap<String, usize> {
    let runs = records.runs();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for n in names {
        let r = runs.get(n).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(r.len(), 1, "{n} must have started exactly once, its runs: {r:?}");
        assert!(r[0].end.is_some_and(|end| end >= r[0].start), "{n} never recorded its end: {r:?}");
        assert_eq!(apps[n]["status"]["node"], r[0].node.as_str(), "{n} ran on the node its status names");
        *per_node.entry(r[0].node.clone()).or_default() += 1;
    }
    per_node
}

/// Must-show 2: a burst of 300 applications created through all three nodes at once,
/// with room for 60 at a time in the cluster (20 per node), each a process that runs
/// about a second and ends by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_300_through_three_nodes_runs_each_once_never_over_capacity() {
    let records = Records::new();
    let configs = NODES.map(|n| node_config(n, "{}"));
    let [a, b, c] = three_nodes_with(configs.each_ref().map(String::as_str)).await;
    let nodes = [&a, &b, &c];
    let (code, body) = a.apply(&records.label("burst", None, Some(1))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    label_everywhere(&nodes, "burst").await;

    let names: Vec<String> = (0..300).map(|i| format!("burst-{i}")).collect();
    let started = Instant::now();
    create_through(&nodes, "burst", &names, 4).await;
    let created = started.elapsed();
    let apps = wait_all(&a, "burst", &names, &["DEALLOCATED", "ERROR"], Duration::from_secs(150)).await;
    let elapsed = started.elapsed();
    let rate = names.len() as f64 / elapsed.as_secs_f64();
    eprintln!(
        "burst: {} applications created through 3 nodes in {created:.1?}, all ended in {elapsed:.1?} ({rate:.1} apps/s)",
        names.len()
    );

    // None lost: every one ran and ended by itself.
    for n in &names {
        let s = &apps[n]["status"];
        assert_eq!(s["phase"], "DEALLOCATED", "{n}: {s:#}");
        assert!(s["message"].as_str().unwrap_or_default().contains("exited with code 0"), "{n}: {s:#}");
    }
    // Each started exactly once, on one node, the one its status names.
    let per_node = ran_once_each(&records, &names, &apps);
    let most = records.most_at_once();
    eprintln!("burst: ran per node {per_node:?}; most at once per node {most:?} (capacity {CAPACITY})");
    // No node ever ran more at once than its capacity; the work was shared.
    for (node, m) in &most {
        assert!(*m <= CAPACITY, "{node} ran {m} processes at once, its capacity is {CAPACITY}");
    }
    for node in NODES {
        assert!(per_node.get(node).is_some_and(|k| *k > 0), "{node} ran none of the burst: {per_node:?}");
    }
}

/// Must-show 2: a label whose `nodeFilter` names one node (a glob on node names) runs
/// only there, even when that node is full and the others idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_filter_pins_a_label_to_one_node_even_when_it_is_full() {
    let records = Records::new();
    let configs = NODES.map(|n| node_config(n, "{}"));
    let [a, b, c] = three_nodes_with(configs.each_ref().map(String::as_str)).await;
    let nodes = [&a, &b, &c];
    let (code, body) = a.apply(&records.label("pinned", Some("*-b"), Some(1))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    label_everywhere(&nodes, "pinned").await;

    // 30 through every node: more than node-b holds at once, so some must wait for it
    // while node-a and node-c have room.
    let pinned: Vec<String> = (0..30).map(|i| format!("pinned-{i}")).collect();
    let started = Instant::now();
    create_through(&nodes, "pinned", &pinned, 2).await;
    let apps = wait_all(&c, "pinned", &pinned, &["DEALLOCATED", "ERROR"], Duration::from_secs(90)).await;
    eprintln!("pinned: {} applications ran on node-b in {:.1?}", pinned.len(), started.elapsed());
    for n in &pinned {
        assert_eq!(apps[n]["status"]["phase"], "DEALLOCATED", "{n}: {:#}", apps[n]["status"]);
    }
    let per_node = ran_once_each(&records, &pinned, &apps);
    assert_eq!(per_node.keys().collect::<Vec<_>>(), ["node-b"], "pinned to node-b, ran on {per_node:?}");
    let most = records.most_at_once();
    assert!(most["node-b"] <= CAPACITY, "node-b ran {} at once, capacity {CAPACITY}", most["node-b"]);
}

/// Must-show 2: a definition whose allocation fails on node-a (its test driver fails
/// every allocation) ends ALLOCATED on another node, the failed attempt in its history
/// naming node-a. node-a has twice the room of the others, so the election tries it
/// first; a failed attempt there sends the application back to NEW and the next round
/// prefers a node where it has not failed (`allocationRetry` is 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_failing_on_one_node_lands_on_another() {
    let roomy = format!("capacity: {{cpu: 128, ram: 512, slots: {}}}", 2 * CAPACITY);
    let configs = [
        node_config(NODES[0], "{faults: {allocate: {fail: 1}}}")
            .replace(&format!("capacity: {{cpu: 64, ram: 256, slots: {CAPACITY}}}"), &roomy),
        node_config(NODES[1], "{}"),
        node_config(NODES[2], "{}"),
    ];
    assert!(configs[0].contains(&roomy), "{}", configs[0]);
    let [a, b, c] = three_nodes_with(configs.each_ref().map(String::as_str)).await;
    let nodes = [&a, &b, &c];
    let flaky = "---\nkind: Label\nmetadata: {name: flaky-on-a}\nspec:\n  definitions:\n    - driver: test\n      \
                 resources: {cpu: 1, ram: 1}\n";
    let (code, body) = a.apply(flaky).await.unwrap();
    assert_eq!(code, 200, "{body}");
    label_everywhere(&nodes, "flaky-on-a").await;

    let flaky: Vec<String> = (0..6).map(|i| format!("flaky-{i}")).collect();
    create_through(&nodes, "flaky-on-a", &flaky, 1).await;
    let apps = wait_all(&b, "flaky-on-a", &flaky, &["ALLOCATED", "ERROR"], Duration::from_secs(60)).await;
    let mut failed_on_a = BTreeSet::new();
    for n in &flaky {
        let s = &apps[n]["status"];
        assert_eq!(s["phase"], "ALLOCATED", "{n} must end ALLOCATED on another node: {s:#}");
        assert_ne!(s["node"], "node-a", "{n}: {s:#}");
        let history = s["history"].as_array().unwrap();
        let elected: Vec<&Value> = history.iter().filter(|h| h["phase"] == "ELECTED").collect();
        let last = elected.last().unwrap_or_else(|| panic!("{n} has no ELECTED entry: {s:#}"));
        assert!(
            last["message"].as_str().unwrap_or_default().contains(s["node"].as_str().unwrap()),
            "{n}: its last attempt's entry names the node it runs on: {s:#}"
        );
        // Every attempt on node-a failed, and the entry that says so names node-a.
        for (i, h) in history.iter().enumerate() {
            let on_a = h["phase"] == "ELECTED" && h["message"].as_str().unwrap_or_default().contains("node-a");
            if on_a {
                let next = history.get(i + 1).unwrap_or_else(|| panic!("{n}: nothing after an attempt on node-a"));
                let m = next["message"].as_str().unwrap_or_default();
                assert!(next["phase"] == "NEW" && m.contains("node-a") && m.contains("fail"), "{n}: {s:#}");
                failed_on_a.insert(n.clone());
            }
        }
    }
    eprintln!("flaky-on-a: attempts failed on node-a for {failed_on_a:?}, all ALLOCATED on node-b or node-c");
    assert!(!failed_on_a.is_empty(), "no application was tried on node-a: nothing shows a failure moving on");
}

/// Contract sections 2 and 8: 60 applications that stay ALLOCATED (test driver) for
/// the cluster's 60 slots are all allocated, 20 on each node: no node believes itself
/// full while it has room, none takes more than it holds. The 61st waits NEW with the
/// short resource in its message, and is allocated, on the node that has room again,
/// as soon as one application there is deallocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_fills_to_its_capacity_and_the_next_waits_until_room_frees() {
    let configs = NODES.map(|n| node_config(n, "{}"));
    let [a, b, c] = three_nodes_with(configs.each_ref().map(String::as_str)).await;
    let nodes = [&a, &b, &c];
    let held = "---\nkind: Label\nmetadata: {name: held}\nspec:\n  definitions:\n    - driver: test\n      \
                resources: {cpu: 1, ram: 1}\n";
    let (code, body) = a.apply(held).await.unwrap();
    assert_eq!(code, 200, "{body}");
    label_everywhere(&nodes, "held").await;

    let names: Vec<String> = (0..3 * CAPACITY).map(|i| format!("held-{i}")).collect();
    let started = Instant::now();
    create_through(&nodes, "held", &names, 2).await;
    let apps = wait_all(&a, "held", &names, &["ALLOCATED", "ERROR"], Duration::from_secs(45)).await;
    eprintln!("pool: {} applications ALLOCATED in {:.1?}", names.len(), started.elapsed());
    let mut per_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for n in &names {
        let s = &apps[n]["status"];
        assert_eq!(s["phase"], "ALLOCATED", "{n}: {s:#}");
        per_node.entry(s["node"].as_str().unwrap().to_owned()).or_default().push(n.clone());
    }
    for node in NODES {
        let on = per_node.get(node).map(Vec::len).unwrap_or(0);
        assert_eq!(on, CAPACITY, "{node} holds {on}; every node must fill to its {CAPACITY} slots: {per_node:?}");
    }

    // One more: it fits nowhere now, so it waits and says what is short.
    let (code, body) = b.apply("kind: Application\nmetadata: {name: one-more}\nspec: {label: held}\n").await.unwrap();
    assert_eq!(code, 200, "{body}");
    eventually("one-more to say why it waits", || async {
        let s = a.application("one-more").await.unwrap()["status"].clone();
        s["message"].as_str().is_some_and(|m| m.contains("slots"))
    })
    .await
    .unwrap();
    let waiting = a.application("one-more").await.unwrap();
    assert_eq!(waiting["status"]["phase"], "NEW", "no room anywhere: {:#}", waiting["status"]);

    // Room frees on node-c: it goes there.
    let freed = &per_node["node-c"][0];
    let (code, body) = a.post(&format!("/api/v1/applications/{freed}/deallocate"), None).await.unwrap();
    assert_eq!(code, 202, "{body}");
    let app = c.wait_phase("one-more", "ALLOCATED").await.unwrap();
    assert_eq!(app["status"]["node"], "node-c", "{:#}", app["status"]);
}
