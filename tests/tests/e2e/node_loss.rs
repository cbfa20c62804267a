//! A node lost and a node drained, with three real fishd on loopback (contract section
//! 8, "Failures"; issue 13 must-show 3): a node killed with -9 has its applications
//! ERROR "node lost" within `nodeTimeout` + 5 s and takes nothing new; restarted
//! without join flags it is ready again and the processes of those applications are
//! gone. A node cut off past nodeTimeout releases them once healed, without a restart.
//! A drained node deallocates its own applications only; an idle cluster writes nothing.

use std::time::{Duration, Instant};

use aquarium_e2e::netns::{self, Net};
use aquarium_e2e::{TestDaemon, eventually};
use serde_json::Value;

use crate::cluster::three_nodes_with;

/// `cluster.nodeTimeout` of these clusters.
const NODE_TIMEOUT: Duration = Duration::from_secs(5);

fn config(name: &str) -> String {
    format!(
        "nodeName: {name}\ndrivers:\n  process: {{gracePeriod: 1s}}\n  test: {{}}\ncluster: {{nodeTimeout: {}s}}\n",
        NODE_TIMEOUT.as_secs()
    )
}

/// A label whose one definition sleeps with the process driver on node `node`, for as
/// long as the directory `while_dir` exists: a process still running when the test
/// ends (a node killed for good keeps what it ran) ends with the test's directory.
fn sleeper_on(label: &str, node: &str, while_dir: &std::path::Path) -> String {
    let user = if nix::unistd::geteuid().is_root() { "\n        user: root" } else { "" };
    let dir = while_dir.display();
    format!(
        "---\nkind: Label\nmetadata: {{name: {label}}}\nspec:\n  definitions:\n    - driver: process\n      resources: {{cpu: 1, ram: 1, network: host, nodeFilter: [{node}]}}\n      options:{user}\n        command: [sh, -c, \"while [ -d {dir} ]; do sleep 1; done\"]\n"
    )
}

/// A label of the test driver that any node can run.
const ANYWHERE: &str = "---\nkind: Label\nmetadata: {name: anywhere}\nspec: {definitions: [{driver: test, resources: {cpu: 1, ram: 1}}]}\n";

fn app(name: &str, label: &str) -> String {
    format!("---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}}}\n")
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// The member `name` as `GET /api/v1/cluster` on `d` shows it.
async fn member(d: &TestDaemon, name: &str) -> Value {
    let (code, c) = d.get("/api/v1/cluster").await.unwrap();
    assert_eq!(code, 200, "{c}");
    c["members"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap_or(Value::Null)
}

/// The READY column of `name` in `fishctl get nodes` run against `d`.
fn ready_column(d: &TestDaemon, via: &TestDaemon, name: &str) -> String {
    let out = d.fishctl_with(via, &["get", "nodes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    let col = header.iter().position(|h| *h == "READY").unwrap_or_else(|| panic!("no READY column: {table}"));
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(col))
        .unwrap_or_else(|| panic!("no row for {name}: {table}"))
        .to_owned()
}

/// How many voting members (the leader included) `d` sees.
async fn voters(d: &TestDaemon) -> usize {
    let Ok((200, c)) = d.get("/api/v1/cluster").await else { return 0 };
    c["members"].as_array().into_iter().flatten().filter(|m| m["role"] != "learner").count()
}

/// A join token made on `d`.
async fn token(d: &TestDaemon) -> String {
    let (code, body) = d.post("/api/v1/cluster/join-tokens", Some(serde_json::json!({"ttl": "10m"}))).await.unwrap();
    assert_eq!(code, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// Which node leads, as `d` says.
async fn leader(d: &TestDaemon) -> String {
    let (_, c) = d.get("/api/v1/cluster").await.unwrap();
    c["leader"].as_str().unwrap_or_default().to_owned()
}

/// Kill -9 a node holding two sleeping processes: both applications are ERROR "node
/// lost: <node>" within nodeTimeout + 5 s, the node is not ready (API and fishctl), an
/// application pinned to it waits NEW with a reason while one for any node is
/// allocated elsewhere; restarted without join flags it is ready again, its old
/// processes are gone, and it runs the application that waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_applications_fail_and_it_releases_them_when_it_returns() {
    let configs = [config("node-a"), config("node-b"), config("node-c")];
    let mut nodes = three_nodes_with([&configs[0], &configs[1], &configs[2]]).await;
    // The victim is a follower: a leader's death adds an election before its
    // successor (after a grace of nodeTimeout) can judge it; that is the failover tests'.
    let lead = leader(&nodes[0]).await;
    let v = nodes.iter().rposition(|n| n.node_name() != lead).unwrap();
    let victim = nodes[v].node_name();
    let obs = (v + 1) % 3;
    let running = tempfile::tempdir().unwrap();
    let (code, body) = nodes[obs].apply(&(sleeper_on("on-victim", &victim, running.path()) + ANYWHERE)).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let mut pids = Vec::new();
    for name in ["lost-1", "lost-2"] {
        assert_eq!(nodes[obs].apply(&app(name, "on-victim")).await.unwrap().0, 200);
        let a = nodes[obs].wait_phase(name, "ALLOCATED").await.unwrap();
        assert_eq!(a["status"]["node"], victim.as_str(), "{a}");
        let pid: i32 = a["status"]["resource"]["identifier"].as_str().and_then(|p| p.parse().ok()).expect("pid");
        assert!(alive(pid));
        pids.push(pid);
    }
    eventually("the victim ready", || async { member(&nodes[obs], &victim).await["ready"] == true }).await.unwrap();

    nodes[v].kill9();
    let killed = Instant::now();
    for pid in &pids {
        assert!(alive(*pid), "the process {pid} outlives its fishd (kill -9)");
    }
    let within = NODE_TIMEOUT + Duration::from_secs(5);
    let lost_message = format!("node lost: {victim}");
    loop {
        let mut lost = 0;
        for name in ["lost-1", "lost-2"] {
            let a = nodes[obs].application(name).await.unwrap();
            let msg = a["status"]["message"].as_str().unwrap_or_default();
            if a["status"]["phase"] == "ERROR" {
                assert!(msg.contains(&lost_message), "{name}: {a}");
                lost += 1;
            }
        }
        if lost == 2 {
            break;
        }
        assert!(killed.elapsed() < within, "applications not ERROR {within:?} after the kill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let measured = killed.elapsed();
    eprintln!(
        "node loss: both applications ERROR \"{lost_message}\" {measured:?} after kill -9 (nodeTimeout {NODE_TIMEOUT:?})"
    );

    // Not ready, the same on every survivor, in the API and in fishctl.
    for d in nodes.iter().filter(|n| n.node_name() != victim) {
        eventually("the victim not ready", || async { member(d, &victim).await["ready"] == false }).await.unwrap();
        assert_eq!(ready_column(d, &nodes[obs], &victim), "False");
    }
    let node: Value = nodes[obs].get(&format!("/api/v1/nodes/{victim}")).await.unwrap().1;
    assert_eq!(node["status"]["ready"], false, "{node}");

    // Nothing new goes to it: an application pinned to it waits; another runs elsewhere.
    assert_eq!(
        nodes[obs].apply(&(app("waits-for-victim", "on-victim") + &app("runs-elsewhere", "anywhere"))).await.unwrap().0,
        200
    );
    let elsewhere = nodes[obs].wait_phase("runs-elsewhere", "ALLOCATED").await.unwrap();
    assert_ne!(elsewhere["status"]["node"], victim.as_str(), "{elsewhere}");
    eventually("the pinned application says why it waits", || async {
        let a = nodes[obs].application("waits-for-victim").await.unwrap();
        a["status"]["phase"] == "NEW" && !a["status"]["message"].as_str().unwrap_or_default().is_empty()
    })
    .await
    .unwrap();
    let waiting = nodes[obs].application("waits-for-victim").await.unwrap();
    assert_eq!(waiting["status"]["phase"], "NEW", "{waiting}");
    eprintln!("waiting for the lost node: {}", waiting["status"]["message"]);

    // Back, with the same data dir and no join flags: ready again, the old processes gone.
    nodes[v].start_again().await.unwrap();
    assert!(!std::fs::read_to_string(nodes[v].config_path()).unwrap().contains("join"), "no join flags");
    let restarted = Instant::now();
    let back = nodes[v].node_name();
    let deadline = Duration::from_secs(30);
    while member(&nodes[obs], &back).await["ready"] != true {
        assert!(restarted.elapsed() < deadline, "{back} not ready {deadline:?} after its restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("node back: ready {:?} after its restart", restarted.elapsed());
    eventually("the lost applications' processes gone", || async { pids.iter().all(|p| !alive(*p)) }).await.unwrap();
    let log = nodes[v].log();
    assert!(
        log.contains("lost-1")
            && (log.contains("removing orphaned resource") || log.contains("releasing the resource")),
        "the release names the application:\n{log}"
    );
    for name in ["lost-1", "lost-2"] {
        assert_eq!(nodes[obs].application(name).await.unwrap()["status"]["phase"], "ERROR", "stays ERROR");
    }
    // Ready means it takes work again: the application that waited for it runs there.
    let ran = nodes[obs].wait_phase("waits-for-victim", "ALLOCATED").await.unwrap();
    assert_eq!(ran["status"]["node"], back.as_str(), "{ran}");
}

/// A node stopped with `--drain-and-deallocate` (SIGTERM) deallocates its own
/// applications and nobody else's: another node's keeps running, and NEW applications
/// (no node's yet) keep waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_deallocates_only_its_own_applications() {
    let names = ["nodeName: node-a\n", "nodeName: node-b\n", "nodeName: node-c\n"];
    let mut nodes = three_nodes_with(names).await;
    let lead = leader(&nodes[0]).await;
    let v = nodes.iter().rposition(|n| n.node_name() != lead).unwrap();
    let drained = nodes[v].node_name();
    let other = (v + 1) % 3;
    let kept = nodes[other].node_name();
    let pinned = |label: &str, node: &str| {
        format!(
            "---\nkind: Label\nmetadata: {{name: {label}}}\nspec: {{definitions: [{{driver: test, resources: {{cpu: 1, ram: 1, nodeFilter: [{node}]}}}}]}}\n"
        )
    };
    let yaml = pinned("on-drained", &drained)
        + &pinned("on-kept", &kept)
        + &pinned("on-nobody", "no-such-node")
        + &app("drained-1", "on-drained")
        + &app("kept-1", "on-kept")
        + &app("nobodys-1", "on-nobody");
    assert_eq!(nodes[other].apply(&yaml).await.unwrap().0, 200);
    // Every node is also known by its os and arch: `describe node` shows them, and a
    // nodeFilter naming them places an application on some node.
    let described = nodes[other].fishctl_with(&nodes[other], &["describe", "node", &kept]);
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    for id in [std::env::consts::OS, std::env::consts::ARCH] {
        assert!(described.contains(id), "{id} missing in\n{described}");
    }
    let by_platform = format!(
        "---\nkind: Label\nmetadata: {{name: by-platform}}\nspec: {{definitions: [{{driver: test, resources: {{cpu: 1, ram: 1, nodeFilter: [\"{}\", \"{}*\"]}}}}]}}\n{}",
        std::env::consts::OS,
        &std::env::consts::ARCH[..3],
        app("by-platform-1", "by-platform")
    );
    assert_eq!(nodes[other].apply(&by_platform).await.unwrap().0, 200);
    nodes[other].wait_phase("by-platform-1", "ALLOCATED").await.unwrap();
    nodes[other].wait_phase("drained-1", "ALLOCATED").await.unwrap();
    nodes[other].wait_phase("kept-1", "ALLOCATED").await.unwrap();
    eventually("the unplaceable application says why it waits", || async {
        let a = nodes[other].application("nobodys-1").await.unwrap();
        !a["status"]["message"].as_str().unwrap_or_default().is_empty()
    })
    .await
    .unwrap();

    let (status, took) = nodes[v].sigterm(Duration::from_secs(30)).await.unwrap();
    assert!(status.success(), "{status}");
    eprintln!("{drained} drained and exited in {took:?}");
    let d = nodes[other].wait_phase("drained-1", "DEALLOCATED").await.unwrap();
    assert!(d["status"]["message"].as_str().unwrap_or_default().contains("draining"), "{d}");
    let k = nodes[other].application("kept-1").await.unwrap();
    assert_eq!((k["status"]["phase"].as_str(), k["status"]["node"].as_str()), (Some("ALLOCATED"), Some(kept.as_str())));
    assert_eq!(nodes[other].application("nobodys-1").await.unwrap()["status"]["phase"], "NEW");
}

/// Liveness writes nothing while nothing changes: an idle cluster's log does not grow
/// (no heartbeat entries), though the leader keeps judging every node ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_writes_nothing_to_its_log() {
    let names = ["nodeName: node-a\n", "nodeName: node-b\n", "nodeName: node-c\n"];
    let nodes = three_nodes_with(names).await;
    let index = |c: &Value| c["commitIndex"].as_u64().unwrap();
    let everyone_ready = |c: &Value| c["members"].as_array().unwrap().iter().all(|m| m["ready"] == true);
    // Settle: each node's start report and whatever the joins left to write.
    let mut last = index(&nodes[0].get("/api/v1/cluster").await.unwrap().1);
    let mut quiet_since = Instant::now();
    let started = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(12) {
        assert!(started.elapsed() < Duration::from_secs(60), "the log never went quiet");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = index(&nodes[0].get("/api/v1/cluster").await.unwrap().1);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        }
    }
    let (_, before) = nodes[0].get("/api/v1/cluster").await.unwrap();
    assert!(everyone_ready(&before), "{before}");
    tokio::time::sleep(Duration::from_secs(25)).await;
    let (_, after) = nodes[0].get("/api/v1/cluster").await.unwrap();
    assert_eq!(index(&after), index(&before), "log entries written by an idle cluster: {before} -> {after}");
    assert!(everyone_ready(&after), "{after}");
}

/// A follower cut off (network namespaces) for longer than nodeTimeout: the majority
/// declares it lost and its application ERROR "node lost" while its process keeps
/// running (cut off, it cannot know). Healed, it learns it through the log and, still
/// running (no restart), releases the process, and is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_past_node_timeout_releases_its_resources_when_healed() {
    if netns::require("a_node_cut_off_past_node_timeout_releases_its_resources_when_healed").is_none() {
        return;
    }
    let net = Net::new(3).unwrap();
    let configs = ["node-a", "node-b", "node-c"].map(config);
    let a = TestDaemon::start_in_netns(net.ns(0), net.ip(0), None, &configs[0]).await.unwrap();
    let b = TestDaemon::start_in_netns(net.ns(1), net.ip(1), Some((&a, &token(&a).await)), &configs[1]).await.unwrap();
    eventually("two voters", || async { voters(&a).await == 2 }).await.unwrap();
    let c = TestDaemon::start_in_netns(net.ns(2), net.ip(2), Some((&a, &token(&a).await)), &configs[2]).await.unwrap();
    eventually("three voters", || async { voters(&a).await == 3 }).await.unwrap();
    let mut nodes = [a, b, c];

    let lead = leader(&nodes[0]).await;
    let v = nodes.iter().rposition(|n| n.node_name() != lead).unwrap();
    let victim = nodes[v].node_name();
    let obs = (0..3).find(|i| nodes[*i].node_name() == lead).unwrap();
    let running = tempfile::tempdir().unwrap();
    let yaml = sleeper_on("on-victim", &victim, running.path()) + &app("cut-1", "on-victim");
    assert_eq!(nodes[obs].apply(&yaml).await.unwrap().0, 200);
    let allocated = nodes[obs].wait_phase("cut-1", "ALLOCATED").await.unwrap();
    assert_eq!(allocated["status"]["node"], victim.as_str(), "{allocated}");
    let pid: i32 = allocated["status"]["resource"]["identifier"].as_str().and_then(|p| p.parse().ok()).unwrap();

    net.cut(v).unwrap();
    let cut = Instant::now();
    let within = NODE_TIMEOUT + Duration::from_secs(5);
    loop {
        let a = nodes[obs].application("cut-1").await.unwrap();
        if a["status"]["phase"] == "ERROR" {
            let msg = a["status"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains(&format!("node lost: {victim}")), "{a}");
            break;
        }
        assert!(cut.elapsed() < within, "cut-1 not ERROR {within:?} after the cut: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("cut off: cut-1 ERROR \"node lost: {victim}\" {:?} after the cut", cut.elapsed());
    assert_eq!(member(&nodes[obs], &victim).await["ready"], false);
    assert!(alive(pid), "cut off, {victim} keeps what it runs");

    net.heal(v).unwrap();
    let healed = Instant::now();
    eventually("the process of cut-1 released once healed", || async { !alive(pid) }).await.unwrap();
    eprintln!("healed: the process of cut-1 gone {:?} after the heal", healed.elapsed());
    eventually("the victim ready again", || async { member(&nodes[obs], &victim).await["ready"] == true })
        .await
        .unwrap();
    let log = nodes[v].log();
    assert!(log.contains("releasing the resource of application cut-1"), "no release line naming cut-1:\n{log}");
    assert!(nodes[v].is_running(), "released while running, without a restart");
}
