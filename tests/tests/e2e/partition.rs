//! Partitions cut for real: fishd nodes in their own network namespaces, traffic
//! between them dropped by iptables, then healed (see `aquarium_e2e::netns`).

use std::process::Command;
use std::time::Duration;

use aquarium_e2e::TestDaemon;
use aquarium_e2e::netns::{self, Net};
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
