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

use super::peer_stream::PeerLinks;
use super::raft_membership::{self, MemberChange};
use super::raft_net::{PeerForward, PeerNetwork, peer_client};
use crate::store::{ApplyItem, Command, FishNode, Proposal, Store, StoreError, StoreOptions, UserRecord};

struct TestNode {
    store: Store,
    client: reqwest::Client,
    links: PeerLinks,
    forward: Arc<PeerForward>,
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
    start_with(root, name, bootstrap, super::peer_routes).await
}

/// `name`'s data dir under `root`, holding the shared CA.
fn node_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(root.join("ca").join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Serves `app` over TLS with `dir`'s certificate on `listener`.
fn serve(
    dir: &Path,
    name: &str,
    listener: std::net::TcpListener,
    app: axum::Router,
) -> axum_server::Handle<SocketAddr> {
    let tls = crate::tls::load_or_create(dir, name, Some("127.0.0.1")).unwrap();
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(tls.server_config))
        .unwrap()
        .handle(handle.clone());
    tokio::spawn(async move { server.serve(app.into_make_service()).await });
    handle
}

fn listen() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A link from a node "me" to a fake peer serving `stream` on the stream route (both
/// with certificates of the shared CA under `root`), and the peer's server handle.
fn link_to_fake_peer(
    root: &Path,
    stream: axum::routing::MethodRouter,
) -> (Arc<super::peer_stream::Link>, axum_server::Handle<SocketAddr>) {
    shared_ca(root);
    let dir = node_dir(root, "peer");
    let (listener, addr) = listen();
    let handle = serve(&dir, "peer", listener, axum::Router::new().route(super::peer_stream::STREAM_PATH, stream));
    let me = node_dir(root, "me");
    crate::tls::load_or_create(&me, "me", Some("127.0.0.1")).unwrap();
    let links = PeerLinks::new(peer_client(crate::tls::peer_client_config(&me).unwrap()).unwrap());
    (links.to(&addr.to_string()), handle)
}

/// A vote frame carrying `text`, as a caller sends it.
fn vote_frame(text: &str) -> Vec<u8> {
    let mut f = super::peer_stream::FrameBuf::new();
    f.body_mut().extend_from_slice(text.as_bytes());
    f.finish(super::peer_stream::Kind::Vote).unwrap()
}

/// A fake peer's answer to `f`: its body back, under its id.
fn echo(f: &super::peer_stream::Frame) -> Vec<u8> {
    let mut b = super::peer_stream::FrameBuf::new();
    b.body_mut().extend_from_slice(&f.body);
    let mut bytes = b.finish(super::peer_stream::Kind::Vote).unwrap();
    bytes[4..12].copy_from_slice(&f.id.to_le_bytes());
    bytes
}

/// A node whose peer routes are `routes` (the current ones, or an older version's).
async fn start_with(root: &Path, name: &str, bootstrap: bool, routes: fn(Store) -> axum::Router) -> TestNode {
    let dir = node_dir(root, name);
    crate::tls::load_or_create(&dir, name, Some("127.0.0.1")).unwrap();
    let (listener, addr) = listen();
    let client = peer_client(crate::tls::peer_client_config(&dir).unwrap()).unwrap();
    let links = PeerLinks::new(client.clone());
    let forward = Arc::new(PeerForward::new(links.clone()));
    let options = StoreOptions {
        event_history: 10_000,
        node: FishNode { name: name.into(), api: addr.to_string() },
        bootstrap,
        network: Some(Arc::new(PeerNetwork::new(links.clone()))),
        forward: Some(forward.clone()),
    };
    let store = Store::open_with(&dir.join("fish.redb"), options).await.unwrap();
    let handle = serve(&dir, name, listener, routes(store.clone()));
    let membership =
        Arc::new(super::raft_membership::RaftMembership::new(store.clone(), client.clone(), 3, "test".into(), vec![]));
    tokio::spawn(membership.promote_learners(tokio_util::sync::CancellationToken::new()));
    TestNode { store, client, links, forward, handle }
}

/// The peer routes of a version before the stream (`/raft/stream` answers 404).
fn routes_without_stream(store: Store) -> axum::Router {
    use super::raft_net;
    use axum::routing::post;
    axum::Router::new()
        .route("/raft/append", post(raft_net::append))
        .route("/raft/vote", post(raft_net::vote))
        .route("/raft/snapshot", post(raft_net::snapshot))
        .route("/cluster/write", post(raft_net::write))
        .route("/cluster/write-batch", post(raft_net::write_batch))
        .route("/cluster/members", post(raft_membership::members_route))
        .with_state(store)
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

/// A node of an older version (no stream route) in a cluster with a newer one: the
/// newer one's appends to it, its forwarded writes and everything else go per request,
/// and the cluster works as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_stream_route_is_called_per_request() {
    let root = tempfile::tempdir().unwrap();
    shared_ca(root.path());
    let a = start(root.path(), "node-a", true).await;
    let old = start_with(root.path(), "node-old", false, routes_without_stream).await;
    add(&a, &old).await;
    a.store.execute(label("to-old", 1)).await.unwrap().unwrap();
    until_has(&old.store, "to-old").await;
    // The old node forwards to the new leader (on the leader's stream: its client is new).
    old.store.execute(label("from-old", 1)).await.unwrap().unwrap();
    until_has(&a.store, "from-old").await;
    assert_eq!(a.links.to(&old.store.node().api).opens(), 0, "no stream to a node without the route");
    assert!(old.links.to(&a.store.node().api).opens() >= 1, "the new leader's stream is used");
    old.stop().await;
    a.stop().await;
}

/// Answers on a stream come as they are ready, not in the order asked, and each
/// reaches its own caller; many calls share one stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_out_of_order_reach_their_callers() {
    use super::peer_stream::Decoder;
    let root = tempfile::tempdir().unwrap();
    // A peer that answers each pair of frames second first, echoing their bodies.
    async fn reversing(body: axum::body::Body) -> axum::response::Response {
        use futures::StreamExt;
        let out = async_stream::stream! {
            let mut data = body.into_data_stream();
            let mut decoder = Decoder::default();
            let mut held = Vec::new();
            while let Some(Ok(chunk)) = data.next().await {
                decoder.push(&chunk);
                while let Some(f) = decoder.next_frame().unwrap() {
                    held.push(f);
                    if held.len() == 2 {
                        for f in held.drain(..).rev() {
                            yield Ok::<_, std::convert::Infallible>(echo(&f));
                        }
                    }
                }
            }
        };
        axum::response::Response::new(axum::body::Body::from_stream(out))
    }
    let (link, handle) = link_to_fake_peer(root.path(), axum::routing::post(reversing));
    for round in 0..3 {
        let calls = (0..2).map(|i| {
            let link = link.clone();
            async move {
                let answer =
                    link.call(vote_frame(&format!("call {round}.{i}")), Duration::from_secs(10)).await.unwrap();
                String::from_utf8(answer.body().unwrap().to_vec()).unwrap()
            }
        });
        let answers = futures::future::join_all(calls).await;
        assert_eq!(answers, [format!("call {round}.0"), format!("call {round}.1")]);
    }
    assert_eq!(link.opens(), 1, "one stream for every call");
    handle.shutdown();
}

/// A link idle for longer than the stall time is not taken for a cut one when the
/// next call comes: its silence counts from that call, so an answer slower than the
/// link's check interval still reaches it, on the same stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_a_quiet_spell_is_answered_on_the_same_stream() {
    use super::peer_stream::{Decoder, PING_AFTER, STALL};
    let root = tempfile::tempdir().unwrap();
    // A peer that echoes each frame after longer than the link's check interval.
    async fn slow_echo(body: axum::body::Body) -> axum::response::Response {
        use futures::StreamExt;
        let out = async_stream::stream! {
            let mut data = body.into_data_stream();
            let mut decoder = Decoder::default();
            while let Some(Ok(chunk)) = data.next().await {
                decoder.push(&chunk);
                while let Some(f) = decoder.next_frame().unwrap() {
                    tokio::time::sleep(PING_AFTER).await;
                    yield Ok::<_, std::convert::Infallible>(echo(&f));
                }
            }
        };
        axum::response::Response::new(axum::body::Body::from_stream(out))
    }
    let (link, handle) = link_to_fake_peer(root.path(), axum::routing::post(slow_echo));
    let first = link.call(vote_frame("first"), STALL).await.unwrap();
    assert_eq!(first.body().unwrap(), b"first");
    // Quiet for longer than the stall time: nothing sent, nothing heard.
    tokio::time::sleep(STALL + PING_AFTER).await;
    let after = link.call(vote_frame("after a quiet spell"), STALL).await;
    let after = after.unwrap_or_else(|e| panic!("the call after a quiet spell failed: {e}"));
    assert_eq!(after.body().unwrap(), b"after a quiet spell");
    assert_eq!(link.opens(), 1, "the idle stream was kept");
    handle.shutdown();
}

/// A stream on which nothing comes back while a call waits (a cut link) is dropped
/// after the stall time, its call fails, and the next call opens a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_dropped_and_reopened() {
    use super::peer_stream::{FrameBuf, Kind, LinkError, STALL};
    let root = tempfile::tempdir().unwrap();
    // Opens streams, never answers anything on them (not even pings).
    async fn silent(_body: axum::body::Body) -> axum::response::Response {
        let never = futures::stream::pending::<Result<Vec<u8>, std::convert::Infallible>>();
        axum::response::Response::new(axum::body::Body::from_stream(never))
    }
    let (link, handle) = link_to_fake_peer(root.path(), axum::routing::post(silent));
    let ping = || FrameBuf::new().finish(Kind::Ping).unwrap();
    let start = Instant::now();
    let e = link.call(ping(), STALL * 3).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(&e, LinkError::Network { why, .. } if why.contains("nothing received")), "{e}");
    assert!(took >= STALL && took < STALL * 2, "dropped after {took:?}");
    let e = link.call(ping(), Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(e, LinkError::Timeout { .. }), "{e}");
    let start = Instant::now();
    while link.opens() < 2 {
        assert!(start.elapsed() < Duration::from_secs(10), "no new stream for the next call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.shutdown();
}

/// The member check holds for every frame, not only when the stream opened: once the
/// peer is no longer a member its stream is closed with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_stream_is_no_longer_served() {
    use super::peer_stream::{FrameBuf, Kind, LinkError, PeerSession};
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    shared_ca(root.path());
    let a = start(root.path(), "node-a", true).await;
    let member = Arc::new(AtomicBool::new(true));
    let session = PeerSession {
        peer: "node-b".into(),
        still_member: Arc::new({
            let member = member.clone();
            move || member.load(Ordering::Relaxed)
        }),
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    let (listener, addr) = listen();
    let app = super::peer_routes(a.store.clone()).layer(axum::Extension(session));
    let handle = serve(&root.path().join("node-a"), "node-a", listener, app);
    let b = node_dir(root.path(), "node-b");
    crate::tls::load_or_create(&b, "node-b", Some("127.0.0.1")).unwrap();
    let links = PeerLinks::new(peer_client(crate::tls::peer_client_config(&b).unwrap()).unwrap());
    let link = links.to(&addr.to_string());
    let ping = || FrameBuf::new().finish(Kind::Ping).unwrap();
    let answer = link.call(ping(), Duration::from_secs(10)).await.unwrap();
    assert_eq!(answer.kind, Kind::Ping as u8);
    member.store(false, Ordering::Relaxed);
    let e = link.call(ping(), Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(&e, LinkError::Network { why, .. } if why.contains("not a member")), "{e}");
    handle.shutdown();
    a.stop().await;
}
