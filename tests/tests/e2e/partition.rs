//! Partitions cut for real: fishd nodes in their own network namespaces, traffic
//! between them dropped by iptables, then healed (see `aquarium_e2e::netns`).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use aquarium_e2e::netns::{self, Net};
use aquarium_e2e::{TestDaemon, eventually};
use serde_json::json;

use crate::election::{
    NODES, Record, Records, applications, create_through, label_everywhere, node_config, now_ns, phase, wait_all,
};

const PORT: u16 = 8001;

/// Proves the harness with two real fishd nodes, the second joined to the first
/// across namespaces: reachable, then cut apart (while the test still reaches both),
/// then healed; and nothing of it left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_cut_and_heal_traffic_between_nodes() {
    if netns::require("namespaces_cut_and_heal_traffic_between_nodes").is_none() {
        return;
    }
    let net = Net::new(2).unwrap();
    let names: Vec<String> = (0..2).map(|i| net.ns(i).to_owned()).collect();
    let a = TestDaemon::start_in_netns(net.ns(0), net.ip(0), None, "nodeName: node-a\n").await.unwrap();
    let (status, body) = a.post("/api/v1/cluster/join-tokens", Some(json!({"ttl": "10m"}))).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let b = TestDaemon::start_in_netns(net.ns(1), net.ip(1), Some((&a, &token)), "nodeName: node-b\n").await.unwrap();
    assert!(b.data_dir().join("cluster.json").exists(), "b joined a across namespaces");

    let wait = Duration::from_secs(2);
    assert!(net.can_connect(1, net.ip(0), PORT, wait), "b reaches a");
    assert!(net.can_connect(0, net.ip(1), PORT, wait), "a reaches b");

    net.cut(1).unwrap();
    let short = Duration::from_millis(700);
    assert!(!net.can_connect(1, net.ip(0), PORT, short), "cut: b must not reach a");
    assert!(!net.can_connect(0, net.ip(1), PORT, short), "cut: a must not reach b");
    // The test process still reaches both, so a cut-off node's reads can be checked.
    let r = a.client.get(format!("{}/readyz", b.url)).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(a.get("/api/v1/whoami").await.unwrap().0, 200);

    net.heal(1).unwrap();
    assert!(net.can_connect(1, net.ip(0), PORT, wait), "healed: b reaches a");
    assert!(net.can_connect(0, net.ip(1), PORT, wait), "healed: a reaches b");

    drop(b);
    drop(a);
    drop(net);
    let left = String::from_utf8(Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).unwrap();
    for ns in names {
        assert!(!left.contains(&ns), "{ns} left behind: {left}");
    }
}

/// A label named `name`.
fn label(name: &str) -> String {
    format!(
        "kind: Label\nmetadata: {{name: {name}}}\nspec:\n  definitions: [{{driver: test, resources: {{cpu: 1, ram: 1}}}}]\n"
    )
}

/// A join token made on `d`.
async fn token(d: &TestDaemon) -> String {
    let (status, body) = d.post("/api/v1/cluster/join-tokens", Some(json!({"ttl": "10m"}))).await.unwrap();
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// How many voting members (the leader included) `d` sees.
async fn voters(d: &TestDaemon) -> usize {
    let Ok((200, c)) = d.get("/api/v1/cluster").await else { return 0 };
    c["members"].as_array().into_iter().flatten().filter(|m| m["role"] != "learner").count()
}

/// Three nodes in three namespaces; the leader is cut off from the other two. The cut
/// side (a minority of one) refuses writes with 503 within 10 s and keeps serving
/// reads; the majority elects a leader and takes writes; once healed, the cut node
/// has the majority's state, at the same resourceVersion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_minority_refuses_writes_serves_reads_and_converges_when_healed() {
    if netns::require("a_cut_off_minority_refuses_writes_serves_reads_and_converges_when_healed").is_none() {
        return;
    }
    let net = Net::new(3).unwrap();
    let a = TestDaemon::start_in_netns(net.ns(0), net.ip(0), None, "nodeName: node-a\n").await.unwrap();
    let b = TestDaemon::start_in_netns(net.ns(1), net.ip(1), Some((&a, &token(&a).await)), "nodeName: node-b\n")
        .await
        .unwrap();
    eventually("two voters", || async { voters(&a).await == 2 }).await.unwrap();
    let c = TestDaemon::start_in_netns(net.ns(2), net.ip(2), Some((&a, &token(&a).await)), "nodeName: node-c\n")
        .await
        .unwrap();
    eventually("three voters", || async { voters(&a).await == 3 }).await.unwrap();
    let nodes = [&a, &b, &c];
    assert_eq!(a.apply(&label("before-cut")).await.unwrap().0, 200);
    for d in nodes {
        eventually("the first label everywhere", || async { d.label_version("before-cut").await.is_some() })
            .await
            .unwrap();
    }

    let (_, status) = a.get("/api/v1/cluster").await.unwrap();
    let leader = ["node-a", "node-b", "node-c"].iter().position(|n| status["leader"] == *n).unwrap();
    net.cut(leader).unwrap();
    let cut = nodes[leader];
    let majority: Vec<&TestDaemon> = (0..3).filter(|i| *i != leader).map(|i| nodes[i]).collect();

    // The minority: a write is refused with 503 "no quorum" within 10 s...
    let started = std::time::Instant::now();
    let (code, body) = cut.apply(&label("on-the-minority")).await.unwrap();
    let refused_after = started.elapsed();
    assert_eq!(code, 503, "a cut-off node must refuse writes: {body}");
    assert!(body.to_string().contains("quorum"), "{body}");
    assert!(refused_after < Duration::from_secs(10), "refused after {refused_after:?}");
    eprintln!("minority write refused with 503 after {refused_after:?}");
    // ...while its reads are served.
    assert!(cut.label_version("before-cut").await.is_some(), "reads on the minority");
    assert_eq!(cut.get("/api/v1/labels").await.unwrap().0, 200);

    // The majority elects a leader of its own and takes writes.
    eventually("a write on the majority", || async {
        matches!(majority[0].apply(&label("on-the-majority")).await, Ok((200, _)))
    })
    .await
    .unwrap();
    eventually("the majority's write on its other node", || async {
        majority[1].label_version("on-the-majority").await.is_some()
    })
    .await
    .unwrap();

    // Healed: the cut node converges to the majority's state; the refused write never
    // appears; writes through it work again.
    net.heal(leader).unwrap();
    eventually("the healed node has the majority's write", || async {
        cut.label_version("on-the-majority").await == majority[0].label_version("on-the-majority").await
            && cut.label_version("on-the-majority").await.is_some()
    })
    .await
    .unwrap();
    assert!(cut.label_version("on-the-minority").await.is_none(), "a refused write must not appear");
    eventually("writes through the healed node", || async {
        matches!(cut.apply(&label("after-heal")).await, Ok((200, _)))
    })
    .await
    .unwrap();
    for d in nodes {
        eventually("the last write everywhere", || async { d.label_version("after-heal").await.is_some() })
            .await
            .unwrap();
    }
}

/// Three nodes in three namespaces with the fish.yml lines `configs` (naming them
/// node-a, node-b, node-c), b and c joined through a; once a sees three voters.
async fn three_in_namespaces(net: &Net, configs: [&str; 3]) -> [TestDaemon; 3] {
    let a = TestDaemon::start_in_netns(net.ns(0), net.ip(0), None, configs[0]).await.unwrap();
    let b = TestDaemon::start_in_netns(net.ns(1), net.ip(1), Some((&a, &token(&a).await)), configs[1]).await.unwrap();
    eventually("two voters", || async { voters(&a).await == 2 }).await.unwrap();
    let c = TestDaemon::start_in_netns(net.ns(2), net.ip(2), Some((&a, &token(&a).await)), configs[2]).await.unwrap();
    eventually("three voters", || async { voters(&a).await == 3 }).await.unwrap();
    [a, b, c]
}

/// Whether process `pid` is alive (a zombie is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// `d`'s commit index, once it stops moving (its view of the store is frozen).
async fn settled_commit_index(d: &TestDaemon) -> u64 {
    let index = || async { d.get("/api/v1/cluster").await.ok().and_then(|(_, c)| c["commitIndex"].as_u64()) };
    let started = Instant::now();
    let mut last = index().await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = index().await;
        if let Some(i) = now
            && now == last
        {
            return i;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{}'s commit index kept moving", d.node_name());
        last = now;
    }
}

/// Issue 13 must-show 4: a burst of 100 short processes is under way on three nodes in
/// namespaces when the leader is cut off. While cut, it starts nothing for an
/// application it did not already hold, and the processes it runs keep running; the
/// majority goes on. Healed, every application ends DEALLOCATED or ERROR with a reason,
/// and none ran twice (the processes' own records say so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_during_a_burst_starts_nothing_new_keeps_what_it_runs_and_nothing_runs_twice() {
    if netns::require("a_node_cut_off_during_a_burst_starts_nothing_new_keeps_what_it_runs_and_nothing_runs_twice")
        .is_none()
    {
        return;
    }
    /// How long the cut lasts at least: well past an election, short of `nodeTimeout`.
    const CUT_FOR: Duration = Duration::from_secs(8);
    let records = Records::new();
    let net = Net::new(3).unwrap();
    let configs = NODES.map(|n| node_config(n, "{}"));
    let nodes = three_in_namespaces(&net, configs.each_ref().map(String::as_str)).await;
    let all: Vec<&TestDaemon> = nodes.iter().collect();

    // One long-running process pinned to each node, and the short ones of the burst.
    let mut yaml = records.label("short", None, Some(2));
    for n in NODES {
        yaml += &records.label(&format!("keep-{n}"), Some(n), None);
        yaml += &format!("---\nkind: Application\nmetadata: {{name: keep-{n}}}\nspec: {{label: keep-{n}}}\n");
    }
    let (code, body) = nodes[0].apply(&yaml).await.unwrap();
    assert_eq!(code, 200, "{body}");
    label_everywhere(&all, "short").await;
    let mut keepers = Vec::new();
    for n in NODES {
        let app = nodes[0].wait_phase(&format!("keep-{n}"), "ALLOCATED").await.unwrap();
        assert_eq!(app["status"]["node"], n, "{app}");
        let pid: i32 = app["status"]["resource"]["identifier"].as_str().and_then(|p| p.parse().ok()).unwrap();
        keepers.push(pid);
    }

    let burst: Vec<String> = (0..100).map(|i| format!("short-{i}")).collect();
    let started = Instant::now();
    create_through(&all, "short", &burst, 3).await;
    let of_burst = |r: &&Record| r.app.starts_with("short-");
    eventually("ten processes of the burst started", || async {
        records.read().iter().filter(of_burst).filter(|r| r.start).count() >= 10
    })
    .await
    .unwrap();

    // Cut the leader off.
    let (_, status) = nodes[0].get("/api/v1/cluster").await.unwrap();
    let k = NODES.iter().position(|n| status["leader"] == *n).unwrap();
    net.cut(k).unwrap();
    let (cut_at, cut_clock) = (now_ns(), Instant::now());
    let cut = &nodes[k];
    let cut_name = NODES[k];
    let ended = records.read().iter().filter(of_burst).filter(|r| !r.start).count();
    assert!(ended < burst.len(), "the burst must still be under way at the cut ({ended} ended)");
    eprintln!("cut {cut_name} (the leader) {:.1?} into the burst, {ended} processes ended", started.elapsed());

    // The cut node's view is frozen now: what it holds is all it may start while cut.
    settled_commit_index(cut).await;
    let held: BTreeSet<String> = applications(cut, "short")
        .await
        .into_iter()
        .filter(|(_, a)| a["status"]["node"] == cut_name && ["ELECTED", "ALLOCATED", "DEALLOCATE"].contains(&phase(a)))
        .map(|(n, _)| n)
        .collect();

    // The majority goes on without it.
    let majority: Vec<&TestDaemon> = (0..3).filter(|i| *i != k).map(|i| &nodes[i]).collect();
    let on_majority = |r: &Record| r.start && r.at > cut_at && r.app.starts_with("short-") && r.node != cut_name;
    eventually("a process started on the majority after the cut", || async { records.read().iter().any(on_majority) })
        .await
        .unwrap();
    // The cut lasts CUT_FOR whatever the test waited for above: time for a misstep.
    tokio::time::sleep(CUT_FOR.saturating_sub(cut_clock.elapsed())).await;

    // While cut: it started nothing new, and what it ran before still runs.
    let started_while_cut: BTreeSet<String> =
        records.read().into_iter().filter(|r| r.start && r.node == cut_name && r.at > cut_at).map(|r| r.app).collect();
    let new: Vec<&String> = started_while_cut.difference(&held).collect();
    assert!(new.is_empty(), "{cut_name}, cut off, started {new:?}, which it did not hold at the cut ({held:?})");
    for (n, pid) in NODES.iter().zip(&keepers) {
        assert!(alive(*pid), "keep-{n} (pid {pid}) stopped during the cut of {cut_name}");
    }
    eprintln!(
        "while cut {:.1?}: {cut_name} held {} applications of the burst and started {} of them",
        cut_clock.elapsed(),
        held.len(),
        started_while_cut.len()
    );

    // Healed: every application ends, on every node's view, and none ran twice.
    net.heal(k).unwrap();
    let limit = Duration::from_secs(90);
    let apps = wait_all(majority[0], "short", &burst, &["DEALLOCATED", "ERROR"], limit).await;
    wait_all(cut, "short", &burst, &["DEALLOCATED", "ERROR"], limit).await;
    eprintln!("after the heal, all {} ended {:.1?} after the burst began", burst.len(), started.elapsed());
    let runs = records.runs();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for n in &burst {
        let s = &apps[n]["status"];
        let r = runs.get(n).map(Vec::as_slice).unwrap_or_default();
        assert!(r.len() <= 1, "{n} started more than once: {r:?}; {s:#}");
        if s["phase"] == "ERROR" {
            let why = s["message"].as_str().unwrap_or_default();
            assert!(!why.is_empty(), "{n}: an ERROR without a reason: {s:#}");
            // A process that ran to its end ended by itself (contract section 2), even when
            // its node could not write that at once (cut off, a leader change).
            assert!(
                !(r.first().is_some_and(|run| run.end.is_some()) && why.starts_with("resource lost")),
                "{n} ran to its end but is ERROR: {s:#}"
            );
            // Grouped by reason, paths left out (they name the application).
            let reason: Vec<&str> = why.split(' ').map(|w| if w.contains('/') { "…" } else { w }).collect();
            let ran = if r.is_empty() { "never ran" } else { "ran" };
            *errors.entry(format!("{ran} on {}: {}", s["node"], reason.join(" "))).or_default() += 1;
        } else {
            assert_eq!(r.len(), 1, "{n} is DEALLOCATED: it ran, once: {s:#}");
            assert_eq!(s["node"], r[0].node.as_str(), "{n} ran on the node its status names");
        }
    }
    let errored: usize = errors.values().sum();
    eprintln!("after the heal: {} DEALLOCATED, {errored} ERROR: {errors:#?}", burst.len() - errored);
}
