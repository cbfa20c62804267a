//! Partitions cut for real: fishd nodes in their own network namespaces, traffic
//! between them dropped by iptables, then healed (see `aquarium_e2e::netns`).

use std::process::Command;
use std::time::Duration;

use aquarium_e2e::netns::{self, Net};
use aquarium_e2e::{TestDaemon, eventually};
use serde_json::json;

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
