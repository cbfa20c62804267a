//! Three stores in one process, each behind its own HTTPS listener on loopback, talking
//! Raft over the real network code: replication, forwarding, failover, no quorum,
//! and a late learner fed by a snapshot.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::{Format, Manifest, parse_manifests};
use axum_server::tls_rustls::RustlsConfig;
use time::OffsetDateTime;
use uuid::Uuid;

use super::raft_membership::{self, MemberChange};
use super::raft_net::{HttpForward, HttpNetwork, peer_client};
use crate::store::{ApplyItem, Command, FishNode, Proposal, Store, StoreError, StoreOptions, UserRecord};

struct TestNode {
    store: Store,
    client: reqwest::Client,
    forward: Arc<HttpForward>,
    handle: axum_server::Handle<SocketAddr>,
}

impl TestNode {
    async fn stop(&self) {
        self.handle.shutdown();
        self.store.close().await;
    }
}

fn shared_ca(root: &Path) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    crate::tls::load_or_create(&root.join("ca"), "ca-holder", None).unwrap();
}

async fn start(root: &Path, name: &str, bootstrap: bool) -> TestNode {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(root.join("ca").join(f), dir.join(f)).unwrap();
    }
    let tls = crate::tls::load_or_create(&dir, name, Some("127.0.0.1")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = peer_client(crate::tls::peer_client_config(&dir).unwrap()).unwrap();
    let forward = Arc::new(HttpForward::new(client.clone()));
    let options = StoreOptions {
        event_history: 10_000,
        node: FishNode { name: name.into(), api: addr.to_string() },
        bootstrap,
        network: Some(Arc::new(HttpNetwork::new(client.clone()))),
        forward: Some(forward.clone()),
    };
    let store = Store::open_with(&dir.join("fish.redb"), options).await.unwrap();
    let handle = axum_server::Handle::new();
    let app: axum::Router = super::peer_routes(store.clone());
    let server = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls.server_config))
        .unwrap()
        .handle(handle.clone());
    tokio::spawn(async move { server.serve(app.into_make_service()).await });
    let membership =
        Arc::new(super::raft_membership::RaftMembership::new(store.clone(), client.clone(), 3, "test".into(), vec![]));
    tokio::spawn(membership.promote_learners(tokio_util::sync::CancellationToken::new()));
    TestNode { store, client, forward, handle }
}

/// Adds `node` to the cluster, asking `via` (forwarded if `via` does not lead).
async fn add(via: &TestNode, node: &TestNode) {
    let change = MemberChange::Add { node: node.store.node().clone(), voters: 3 };
    raft_membership::change(&via.store, &via.client, change).await.unwrap();
    // A joined node is a learner until the leader sees it caught up and promotes it.
    let start = Instant::now();
    let id = node.store.node_id();
    let voting = || {
        let m = via.store.raft().metrics().borrow().membership_config.clone();
        !raft_membership::changing(m.membership()) && raft_membership::settled_voters(m.membership()).contains(&id)
    };
    while !voting() {
        assert!(start.elapsed() < Duration::from_secs(20), "{} was never promoted to voter", node.store.node().name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn label(name: &str, cpu: u32) -> Command {
    let yaml = format!(
        "kind: Label\nmetadata: {{name: {name}}}\nspec: {{definitions: [{{driver: test, resources: {{cpu: {cpu}, ram: 1}}}}]}}\n"
    );
    let items = parse_manifests(yaml.as_bytes(), Format::Yaml)
        .unwrap()
        .into_iter()
        .map(|m| match m {
            Manifest::Label(label) => ApplyItem::Label { label, uid: Uuid::now_v7() },
            _ => unreachable!(),
        })
        .collect();
    Command::Apply { items, owner: "admin".into(), now: OffsetDateTime::now_utc() }
}

/// Waits until `store` has the label (any version), at most 10 s.
async fn until_has(store: &Store, name: &str) -> Duration {
    let start = Instant::now();
    while store.get_label(name, None).unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "label {name} never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_forward_fail_over_and_refuse_without_quorum() {
    let root = tempfile::tempdir().unwrap();
    shared_ca(root.path());
    let a = start(root.path(), "node-a", true).await;
    let b = start(root.path(), "node-b", false).await;
    let c = start(root.path(), "node-c", false).await;
    a.store.execute(label("first", 1)).await.unwrap().unwrap();
    add(&a, &b).await;
    add(&b, &c).await; // asked of a follower: forwarded to the leader
    let status = super::status::cluster_status(&c.store).unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");
    assert_eq!(status.leader.as_deref(), Some("node-a"));
    assert!(raft_membership::is_member(&c.store, "node-b"));
    assert!(!raft_membership::is_member(&c.store, "node-x"));

    // Replicated, and the same resourceVersion everywhere.
    until_has(&c.store, "first").await;
    let rv = |s: &Store, n: &str| s.get_label(n, None).unwrap().unwrap().metadata.resource_version;
    assert_eq!(rv(&a.store, "first"), rv(&c.store, "first"));

    // A write on a follower is forwarded, and readable there at once.
    c.store.execute(label("from-c", 1)).await.unwrap().unwrap();
    assert!(c.store.get_label("from-c", None).unwrap().is_some(), "read-your-writes on the follower");
    until_has(&a.store, "from-c").await;
    until_has(&b.store, "from-c").await;
    assert_eq!(rv(&a.store, "from-c"), rv(&b.store, "from-c"));

    // The leader stops: a survivor accepts writes again within 5 s.
    a.stop().await;
    let start = Instant::now();
    loop {
        match b.store.execute(label("after-failover", 1)).await {
            Ok(r) => {
                r.unwrap();
                break;
            }
            Err(StoreError::Unavailable(_)) => assert!(start.elapsed() < Duration::from_secs(5), "no failover"),
            Err(e) => panic!("{e}"),
        }
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    tracing::info!(?took, "failover");
    until_has(&c.store, "after-failover").await;

    // Two of three gone: a write is refused as unavailable within 10 s.
    c.stop().await;
    let start = Instant::now();
    let r = b.store.execute(label("no-quorum", 1)).await;
    assert!(matches!(r, Err(StoreError::Unavailable(ref m)) if m.contains("no quorum")), "{r:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_learner_catches_up_from_a_snapshot() {
    let root = tempfile::tempdir().unwrap();
    shared_ca(root.path());
    let a = start(root.path(), "node-a", true).await;
    // 1,200 writes from 20 concurrent writers (group commit folds them into fewer
    // entries than the snapshot policy's 1,000, so the snapshot is asked for below).
    let mut tasks = Vec::new();
    for w in 0..20 {
        let s = a.store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..60 {
                s.execute(label(&format!("l{w}-{i}"), 1)).await.unwrap().unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let raft = a.store.raft();
    let last = raft.metrics().borrow().last_applied;
    raft.trigger().snapshot().await.unwrap();
    raft.wait(Some(Duration::from_secs(20))).metrics(|m| m.snapshot >= last, "snapshot built").await.unwrap();
    raft.trigger().purge_log(last.map(|l| l.index).unwrap_or(0)).await.unwrap();
    raft.wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.purged.is_some(), "log purged behind the snapshot")
        .await
        .unwrap();
    let d = start(root.path(), "node-d", false).await;
    add(&a, &d).await;
    until_has(&d.store, "l19-59").await;
    assert_eq!(d.store.list_labels(None).unwrap().1.len(), 1200);
    assert!(d.store.raft().metrics().borrow().snapshot.is_some(), "node-d was fed a snapshot");
    d.stop().await;
    a.stop().await;
}

/// The token cache is emptied by the state machine, so a change that reaches a node
/// through the replicated log (not its own API) takes effect there as it is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotated_or_deleted_through_the_log_stops_working_on_a_follower_at_once() {
    let root = tempfile::tempdir().unwrap();
    shared_ca(root.path());
    let a = start(root.path(), "node-a", true).await;
    let b = start(root.path(), "node-b", false).await;
    add(&a, &b).await;
    // Written on the leader; `b` only ever sees the entries.
    let on_a_then_applied_on_b = |command: Command| {
        let (a, b) = (a.store.clone(), b.store.clone());
        async move {
            let applied = a.propose(Proposal::new(&command).unwrap()).await.unwrap();
            assert!(applied.outcome.is_ok(), "{:?}", applied.outcome);
            b.wait_applied(applied.index, tokio::time::Instant::now() + Duration::from_secs(10)).await.unwrap();
        }
    };
    let user: api_types::User =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "carol"}, "spec": {"roles": ["user"]}}))
            .unwrap();
    let record = UserRecord { user, password_hash: None, token_digest: "digest-1".into() };
    let now = OffsetDateTime::now_utc();
    on_a_then_applied_on_b(Command::CreateUser { record: Box::new(record), uid: Uuid::now_v7(), now }).await;
    for _ in 0..2 {
        assert!(b.store.token_user("digest-1").unwrap().is_some(), "the new user's token works on b");
    }
    on_a_then_applied_on_b(Command::SetUserToken { name: "carol".into(), token_digest: "digest-2".into() }).await;
    assert!(b.store.token_user("digest-1").unwrap().is_none(), "the rotated token still works on b");
    assert!(b.store.token_user("digest-2").unwrap().is_some());
    on_a_then_applied_on_b(Command::DeleteUser { name: "carol".into() }).await;
    assert!(b.store.token_user("digest-2").unwrap().is_none(), "the deleted user's token still works on b");
    b.stop().await;
    a.stop().await;
}

/// Writes forwarded concurrently from a follower travel together (one request per
/// batch), yet each caller gets its own answer: its write applied and readable there,
/// or its own refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_forwarded_writes_share_requests_and_each_gets_its_own_answer() {
    const WRITES: usize = 300;
    let root = tempfile::tempdir().unwrap();
    shared_ca(root.path());
    let a = start(root.path(), "node-a", true).await;
    let b = start(root.path(), "node-b", false).await;
    add(&a, &b).await;
    let before = b.forward.requests();
    let writes = (0..WRITES).map(|i| {
        let s = b.store.clone();
        tokio::spawn(async move {
            if i % 3 == 2 {
                // Refused by the state machine: the refusal names this caller's uid.
                let uid = Uuid::now_v7();
                let cmd = Command::RequestDeallocate { uid, by: "test".into(), now: OffsetDateTime::now_utc() };
                let e = s.execute(cmd).await.unwrap().unwrap_err();
                assert!(e.to_string().contains(&uid.to_string()), "{e} (for {uid})");
            } else {
                let name = format!("fw-{i}");
                s.execute(label(&name, 1)).await.unwrap().unwrap();
                assert!(s.get_label(&name, None).unwrap().is_some(), "{name}: read-your-writes on the follower");
            }
        })
    });
    for w in futures::future::join_all(writes).await {
        w.unwrap();
    }
    let requests = b.forward.requests() - before;
    tracing::info!(requests, "forwarded requests for {WRITES} writes");
    assert!(requests > 0 && requests < WRITES as u64 / 2, "{requests} requests for {WRITES} writes");
    until_has(&a.store, &format!("fw-{}", WRITES - 2)).await;
    assert_eq!(a.store.list_labels(None).unwrap().1.len(), WRITES - WRITES / 3);
    b.stop().await;
    a.stop().await;
}
