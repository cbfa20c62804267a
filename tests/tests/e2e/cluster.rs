//! Three real fishd processes on loopback, one cluster (contract section 8): nodes
//! join with tokens, every node serves the whole API from one replicated store, a
//! killed leader is replaced, a node that missed writes catches up, and a cluster
//! stopped whole comes back without join flags.

use std::time::{Duration, Instant};

use aquarium_e2e::{TestDaemon, eventually};
use serde_json::Value;

use crate::join::join_token;

/// A label named `name` carrying `pad` bytes of metadata (log volume).
fn label(name: &str, pad: usize) -> String {
    format!(
        "kind: Label\nmetadata: {{name: {name}}}\nspec:\n  metadata: {{pad: \"{}\"}}\n  definitions: [{{driver: test, resources: {{cpu: 1, ram: 1}}}}]\n",
        "x".repeat(pad)
    )
}

/// `GET /api/v1/cluster` of `d`.
async fn cluster(d: &TestDaemon) -> Value {
    let (code, body) = d.get("/api/v1/cluster").await.unwrap();
    assert_eq!(code, 200, "{body}");
    body
}

/// Whether `d` sees one leader and two other voters.
async fn formed(d: &TestDaemon) -> bool {
    let Ok((200, c)) = d.get("/api/v1/cluster").await else { return false };
    let roles: Vec<&str> = c["members"].as_array().into_iter().flatten().filter_map(|m| m["role"].as_str()).collect();
    roles.len() == 3
        && roles.iter().filter(|r| **r == "leader").count() == 1
        && roles.iter().filter(|r| **r == "voter").count() == 2
}

/// Node A starts alone; B joins through A and C through B (a follower: its token use
/// and membership change are forwarded to the leader). Returns once all three see a
/// leader and two voters.
async fn three_nodes() -> [TestDaemon; 3] {
    three_nodes_with(["nodeName: node-a\n", "nodeName: node-b\n", "nodeName: node-c\n"]).await
}

/// [`three_nodes`] with each node's own fish.yml lines (which name it `node-a`,
/// `node-b` and `node-c`).
pub(crate) async fn three_nodes_with(configs: [&str; 3]) -> [TestDaemon; 3] {
    let a = TestDaemon::start(configs[0]).await.unwrap();
    let b = TestDaemon::start_joining(&a, &join_token(&a, "10m"), configs[1]).await.unwrap();
    eventually("node-b promoted to voter", || async {
        cluster(&a).await["members"].as_array().unwrap().iter().any(|m| m["name"] == "node-b" && m["role"] == "voter")
    })
    .await
    .unwrap();
    let c = TestDaemon::start_joining(&b, &join_token(&a, "10m"), configs[2]).await.unwrap();
    for d in [&a, &b, &c] {
        eventually("a leader and two voters", || formed(d)).await.unwrap();
    }
    [a, b, c]
}

/// Which of `nodes` leads, as the first one that answers says.
async fn leader_index(nodes: &[&TestDaemon]) -> usize {
    for d in nodes {
        if let Ok((200, c)) = d.get("/api/v1/cluster").await
            && let Some(name) = c["leader"].as_str()
        {
            return nodes.iter().position(|n| n.node_name() == name).unwrap();
        }
    }
    panic!("no node knows a leader");
}

/// How many labels `d` lists.
async fn count(d: &TestDaemon) -> usize {
    d.get("/api/v1/labels").await.ok().and_then(|(_, l)| l["items"].as_array().map(Vec::len)).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_store_with_one_token_and_one_ca() {
    let [a, b, c] = three_nodes().await;

    // A write on any node is readable there at once (read-your-writes), and on the
    // others within a second, with the same resourceVersion everywhere.
    for (i, writer) in [&a, &b, &c].into_iter().enumerate() {
        let name = format!("written-on-{i}");
        let (code, body) = writer.apply(&label(&name, 0)).await.unwrap();
        assert_eq!(code, 200, "{body}");
        let acked = Instant::now();
        let rv = writer.label_version(&name).await.expect("readable at once on the node that took the write");
        for other in [&a, &b, &c] {
            loop {
                if let Some(seen) = other.label_version(&name).await {
                    assert_eq!(seen, rv, "one resourceVersion on every node");
                    break;
                }
                assert!(
                    acked.elapsed() < Duration::from_secs(1),
                    "{name} not on {} a second after it was acknowledged",
                    other.node_name()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    // One admin token and one ca.crt (A's) work on every node; so does fishctl.
    for d in [&b, &c] {
        let r = a.client.get(format!("{}/api/v1/labels", d.url)).bearer_auth(&a.token).send().await.unwrap();
        assert_eq!(r.status(), 200, "A's token and CA on {}", d.node_name());
        let out = d.fishctl_with(&a, &["get", "labels"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("written-on-2"));
    }

    // A watch opened on C from a resourceVersion listed on A receives a change made on B.
    let (_, list) = a.get("/api/v1/labels").await.unwrap();
    let rv = list["metadata"]["resourceVersion"].as_str().unwrap().to_owned();
    let mut watch = c.watch(&format!("/api/v1/labels?watch=true&resourceVersion={rv}")).await.unwrap();
    assert_eq!(b.apply(&label("seen-through-c", 0)).await.unwrap().0, 200);
    let event = watch.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(event["type"], "ADDED", "{event}");
    assert_eq!(event["object"]["metadata"]["name"], "seen-through-c", "the first change after {rv}: {event}");

    // get nodes shows every member with its role, from any node.
    let out = c.fishctl_with(&a, &["get", "nodes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    for n in ["node-a", "node-b", "node-c"] {
        assert!(table.contains(n), "{table}");
    }
    assert!(table.contains("ROLE") && table.contains("leader") && table.contains("voter"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_within_seconds_of_the_leader_killed() {
    let [a, b, c] = three_nodes().await;
    let mut nodes = [a, b, c];
    let leader = leader_index(&nodes.iter().collect::<Vec<_>>()).await;
    let survivor = (leader + 1) % 3;
    nodes[leader].kill9();
    let killed = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = tokio::time::timeout(Duration::from_secs(2), nodes[survivor].apply(&label("after-failover", 0))).await;
        if let Ok(Ok((200, _))) = r {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(5), "no write accepted 5 s after the leader died ({r:?})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failover = killed.elapsed();
    eprintln!("failover: the first write accepted {failover:?} after kill -9 of the leader ({attempts} attempts)");
    let other = 3 - leader - survivor;
    eventually("the write on the other survivor", || async {
        nodes[other].label_version("after-failover").await.is_some()
    })
    .await
    .unwrap();

    // The old leader comes back with no flags, as a follower, and catches up.
    nodes[leader].start_again().await.unwrap();
    let back = &nodes[leader];
    eventually("the old leader has the write made without it", || async {
        back.label_version("after-failover").await.is_some()
    })
    .await
    .unwrap();
    eventually("three members again", || formed(back)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_1000_writes_catches_up_and_a_stopped_cluster_comes_back_whole() {
    let [a, b, c] = three_nodes().await;
    let mut nodes = [a, b, c];
    let leader = leader_index(&nodes.iter().collect::<Vec<_>>()).await;
    let stopped = (leader + 1) % 3;
    nodes[stopped].sigterm(Duration::from_secs(30)).await.unwrap();

    // 1,000 writes while it is away, 2 KB each: past the snapshot threshold, so the
    // leader snapshots and purges its log, and the stopped node gets a snapshot.
    let writers: Vec<usize> = (0..3).filter(|i| *i != stopped).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let d = &nodes[writers[w % 2]];
        let (url, token, client) = (d.url.clone(), d.token.clone(), d.client.clone());
        tasks.spawn(async move {
            for i in 0..125 {
                let body = label(&format!("w{w}-{i}"), 2048);
                let r = client
                    .post(format!("{url}/api/v1/apply"))
                    .bearer_auth(&token)
                    .header("content-type", "application/yaml")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(count(&nodes[leader]).await, 1000);

    nodes[stopped].start_again().await.unwrap();
    let late = &nodes[stopped];
    eventually("the stopped node serves all 1,000", || async { count(late).await == 1000 }).await.unwrap();
    assert!(
        late.log().contains("installed a snapshot of the replicated state"),
        "the log was purged, so the node must have caught up from a snapshot:\n{}",
        late.log()
    );

    // All three stopped, then started again with no join flags: every object is back.
    for d in nodes.iter_mut() {
        d.sigterm(Duration::from_secs(30)).await.unwrap();
    }
    let [x, y, z] = &mut nodes;
    let (rx, ry, rz) = tokio::join!(x.start_again(), y.start_again(), z.start_again());
    rx.unwrap();
    ry.unwrap();
    rz.unwrap();
    for d in &nodes {
        assert!(!std::fs::read_to_string(d.config_path()).unwrap().contains("cluster:"), "no join flags");
        eventually("every label back", || async { count(d).await == 1000 }).await.unwrap();
        eventually("one leader and two voters again", || formed(d)).await.unwrap();
    }
    assert_eq!(nodes[0].apply(&label("after-restart", 0)).await.unwrap().0, 200, "writes work again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_removed_only_once_it_holds_nothing_and_a_learner_takes_its_vote() {
    let [a, b, c] = three_nodes().await;
    // A fourth node stays a learner: the cluster has its three voters.
    let d = TestDaemon::start_joining(&a, &join_token(&a, "10m"), "nodeName: node-d\n").await.unwrap();
    let role = |of: &'static str| {
        let get = a.get("/api/v1/cluster");
        async move {
            let (_, c) = get.await.unwrap();
            c["members"].as_array().unwrap().iter().find(|m| m["name"] == of).map(|m| m["role"].clone())
        }
    };
    eventually("node-d a learner", || async { role("node-d").await == Some("learner".into()) }).await.unwrap();

    // An application pinned to node-c.
    let pinned = "kind: Label\nmetadata: {name: on-c}\nspec:\n  definitions:\n    - driver: test\n      resources: {cpu: 1, ram: 1, nodeFilter: [node-c]}\n";
    assert_eq!(a.apply(pinned).await.unwrap().0, 200);
    let app = "kind: Application\nmetadata: {name: held-by-c}\nspec: {label: on-c}\n";
    assert_eq!(b.apply(app).await.unwrap().0, 200);
    let allocated = a.wait_phase("held-by-c", "ALLOCATED").await.unwrap();
    assert_eq!(allocated["status"]["node"], "node-c", "{allocated}");

    // Refused while it holds the application, with the reason.
    let out = b.fishctl_with(&a, &["delete", "node", "node-c"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("held-by-c") || err.contains("holds"), "{err}");
    assert_eq!(role("node-c").await, Some("voter".into()), "still a member");

    // Once it holds nothing it is removed, and the learner takes its vote.
    assert_eq!(a.post("/api/v1/applications/held-by-c/deallocate", None).await.unwrap().0, 202);
    a.wait_phase("held-by-c", "DEALLOCATED").await.unwrap();
    let out = b.fishctl_with(&a, &["delete", "node", "node-c"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    eventually("node-c gone and node-d a voter", || async {
        role("node-c").await.is_none() && role("node-d").await == Some("voter".into())
    })
    .await
    .unwrap();
    // d reads its own copy, which may not have applied the deletion yet.
    eventually("node-c's record deleted on node-d too", || async {
        let (_, nodes) = d.get("/api/v1/nodes").await.unwrap();
        !nodes.to_string().contains("\"node-c\"")
    })
    .await
    .unwrap();
    drop(c);
}
