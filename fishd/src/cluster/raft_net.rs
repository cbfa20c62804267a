//! Node-to-node Raft traffic: the client openraft uses to reach peers, the
//! forwarding of writes to the leader, and the routes that serve both.
//!
//! Appends, votes and forwarded write batches travel as frames on one stream per
//! peer ([`super::peer_stream`]); snapshots, membership changes, and every call to a
//! peer without the stream route (an older version) are an HTTPS request each.
//!
//! # Invariants
//! - Bodies are postcard (compact, fast for snapshot chunks); a command inside a log
//!   entry stays JSON text (see [`crate::store::Proposal`]). A frame's body is what
//!   the per-request route takes or answers.
//! - A peer that cannot be connected to is `Unreachable` (openraft backs off), any other
//!   transport failure is a `Network` error, and an error the peer's Raft returned is a
//!   `RemoteError`, so openraft reacts to each as it should.
//! - A forwarded write is applied by the leader's Raft only (never re-forwarded), so a
//!   write crosses at most one hop; its id makes a retry after an unknown outcome safe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::liveness::PeerAcks;
use super::peer_stream::{FrameBuf, Kind, Link, LinkError, PeerLinks};
use crate::store::{Applied, FishNode, Forward, NodeId, Proposal, Raft, Store, TypeConfig, WRITE_TIMEOUT};

const POSTCARD: &str = "application/x-postcard";
/// How long a peer request may run on after openraft stopped waiting for it.
const SLOW_PEER: Duration = Duration::from_secs(5);

/// Connects this node to its peers' streams and `/raft/*` routes.
#[derive(Clone)]
pub struct PeerNetwork {
    links: PeerLinks,
    acks: PeerAcks,
}

impl PeerNetwork {
    /// `links`' client must trust the cluster CA and present this node's certificate.
    pub fn new(links: PeerLinks) -> Self {
        PeerNetwork { links, acks: PeerAcks::default() }
    }

    /// Records in `acks` when each peer last answered (see [`crate::cluster::liveness`]).
    pub fn with_acks(mut self, acks: PeerAcks) -> Self {
        self.acks = acks;
        self
    }
}

/// The connection to one peer.
pub struct PeerConnection {
    client: reqwest::Client,
    link: Arc<Link>,
    target: NodeId,
    base: String,
    acks: PeerAcks,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &FishNode) -> PeerConnection {
        PeerConnection {
            client: self.links.client().clone(),
            link: self.links.to(&node.api),
            target,
            base: self.links.base(&node.api),
            acks: self.acks.clone(),
        }
    }
}

type RpcErr<E> = RPCError<NodeId, FishNode, RaftError<NodeId, E>>;

fn transport<E: std::error::Error>(e: reqwest::Error) -> RPCError<NodeId, FishNode, E> {
    if e.is_connect() { RPCError::Unreachable(Unreachable::new(&e)) } else { RPCError::Network(NetworkError::new(&e)) }
}

fn net<E: std::error::Error>(message: String) -> RPCError<NodeId, FishNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(message)))
}

impl PeerConnection {
    /// `req` as a frame of `kind` on the peer's stream; per request to `path` when the
    /// peer has no stream (or `kind` is `None`).
    async fn call<Req, Resp, E>(
        &self,
        kind: Option<Kind>,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        if let Some(kind) = kind {
            let frame = FrameBuf::encode(kind, req).map_err(|e| net(format!("cannot encode the request: {e}")))?;
            let answer = match self.link.call(frame, option.hard_ttl()).await {
                Ok(answer) => answer,
                Err(LinkError::NoStream(_)) => return self.call_http(path, req, option).await,
                Err(e @ LinkError::Unreachable { .. }) => return Err(RPCError::Unreachable(Unreachable::new(&e))),
                Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
            };
            // The peer is alive: whatever its Raft said, it answered.
            self.acks.ack(self.target);
            let body = answer.body().map_err(|e| net(format!("{path} on the stream failed: {e}")))?;
            let r: Result<Resp, RaftError<NodeId, E>> =
                postcard::from_bytes(body).map_err(|e| net(format!("cannot decode the answer of {path}: {e}")))?;
            return r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)));
        }
        self.call_http(path, req, option).await
    }

    /// `req` as its own request to the peer's `path`.
    async fn call_http<Req, Resp, E>(&self, path: &str, req: &Req, option: &RPCOption) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = postcard::to_allocvec(req).map_err(|e| net(format!("cannot encode the request: {e}")))?;
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .timeout(option.hard_ttl().max(SLOW_PEER))
            .header(header::CONTENT_TYPE, POSTCARD)
            .body(body);
        // openraft gives an append a heartbeat's time (100 ms) and drops the call when it
        // runs out. A new connection (a peer restarted) can need longer for its TLS
        // handshake on a loaded host; dropped each time, it would never be made and the
        // peer would never hear from the leader again. Run the request in a task of its
        // own, so the connection is made and pooled for the next call even when this
        // one is given up. (A late append is harmless: appends are checked by term.)
        let (status, bytes) = tokio::spawn(async move {
            let resp = request.send().await?;
            let status = resp.status();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        })
        .await
        .map_err(|e| net(format!("the request to {path} failed: {e}")))?
        .map_err(transport)?;
        if !status.is_success() {
            return Err(net(format!("{path} answered {status}: {}", String::from_utf8_lossy(&bytes))));
        }
        // The peer is alive: whatever its Raft said, it answered.
        self.acks.ack(self.target);
        let r: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&bytes).map_err(|e| net(format!("cannot decode the answer of {path}: {e}")))?;
        r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Some(Kind::Append), "/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<openraft::error::InstallSnapshotError>> {
        self.call(None, "/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(Some(Kind::Vote), "/raft/vote", &rpc, &option).await
    }
}

impl crate::store::RaftNetworkBuilder for PeerNetwork {
    fn start(
        &self,
        id: NodeId,
        config: std::sync::Arc<openraft::Config>,
        log: crate::store::raft::LogStore,
        sm: crate::store::raft::StateMachine,
    ) -> futures::future::BoxFuture<'static, Result<Raft, openraft::error::Fatal<NodeId>>> {
        let net = self.clone();
        Box::pin(async move { Raft::new(id, config, net, log, sm).await })
    }
}

/// Forwards writes to the leader, several at once.
///
/// Writes forwarded concurrently share requests: each `forward` queues its proposal,
/// and a forwarder sends what is queued as one write-batch frame on the leader's
/// stream (or one `POST /cluster/write-batch` to a leader without it) (at most
/// [`FORWARD_BATCH`] proposals or [`FORWARD_BATCH_BYTES`]) as soon as one of its
/// [`FORWARDS_IN_FLIGHT`] requests is free: one alone goes at once; whatever queues
/// while all requests are out goes in the next one. The leader writes a batch's
/// proposals concurrently, so they share its log entries: the batching that counts
/// is the leader's group commit (the store's `Leading`), over every node's writes.
/// Each proposal keeps its id and each caller gets its own answer or error, so
/// [`crate::store::Store::propose`]'s deadline and retries are unchanged. A follower
/// forwarded ~3 writes per application in a burst (its creates, its votes, its status
/// writes), each its own TLS request: much of a cluster's CPU.
///
/// There is one forwarder per leader, so requests hung on a former leader (cut off,
/// not yet timed out) never hold up the writes forwarded to the new one.
pub struct PeerForward {
    links: PeerLinks,
    queues: std::sync::Mutex<std::collections::HashMap<FishNode, mpsc::Sender<Queued>>>,
    requests: Arc<AtomicU64>,
}

/// A proposal waiting for the forwarder, encoded, and where its answer goes.
struct Queued {
    body: Vec<u8>,
    reply: oneshot::Sender<Result<Applied, String>>,
}

/// Most proposals in one forwarded request.
pub const FORWARD_BATCH: usize = 256;
/// A request takes more proposals only while its body is smaller than this (one
/// larger proposal still goes, alone).
const FORWARD_BATCH_BYTES: usize = 1024 * 1024;
/// Forwarded requests out at once.
///
/// A forwarded request is answered once its proposals are applied on the leader: a
/// whole commit cycle (the leader's append, a follower's over the network, the apply).
/// With 2 out (as the leader has 2 log entries in flight), a follower's writes waited
/// here up to one such cycle before they were even sent, then a cycle on the leader:
/// about two where the leader's own writes take one. With more out, they reach the
/// leader's queue at once and join its next entry with everything else: fewer, larger
/// entries (each one an append and an fsync on every node, an AppendEntries per
/// follower, an apply transaction per node). Measured in the 3-node burst
/// (`fish-bench --only cluster`): 0.57 log entries per application with 2, 0.51 with
/// 8, 0.50 with 16. Bounded, so a follower cannot flood a slow leader with requests.
const FORWARDS_IN_FLIGHT: usize = 8;
/// Proposals waiting for the forwarder before callers wait for room.
const FORWARD_QUEUE: usize = 4096;

impl PeerForward {
    pub fn new(links: PeerLinks) -> Self {
        PeerForward { links, queues: Default::default(), requests: Arc::default() }
    }

    /// Batches sent to leaders so far (frames on a stream, or requests).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The queue of `leader`'s forwarder, started on first use (inside the runtime).
    /// Kept for the process's life: a cluster has few members to lead.
    fn queue(&self, leader: &FishNode) -> mpsc::Sender<Queued> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(leader.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(FORWARD_QUEUE);
                tokio::spawn(forwarder(self.links.clone(), leader.clone(), self.requests.clone(), rx));
                tx
            })
            .clone()
    }
}

#[async_trait::async_trait]
impl Forward for PeerForward {
    async fn forward(&self, leader: &FishNode, proposal: &Proposal) -> Result<Applied, String> {
        let body = postcard::to_allocvec(proposal).map_err(|e| e.to_string())?;
        let (reply, answer) = oneshot::channel();
        let queue = self.queue(leader);
        queue.send(Queued { body, reply }).await.map_err(|_| "the forwarder stopped".to_owned())?;
        answer.await.map_err(|_| "the forwarder dropped the write".to_owned())?
    }
}

/// Takes what is queued for `leader`, a batch per free request slot (see
/// [`PeerForward`]).
async fn forwarder(links: PeerLinks, leader: FishNode, requests: Arc<AtomicU64>, mut rx: mpsc::Receiver<Queued>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT));
    // One taken from the queue that did not fit the last batch (past the byte
    // budget): it opens the next.
    let mut next: Option<Queued> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let first = match next.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = first.body.len();
        let mut batch = vec![first];
        while batch.len() < FORWARD_BATCH && bytes < FORWARD_BATCH_BYTES {
            match rx.try_recv() {
                Ok(q) if bytes + q.body.len() <= FORWARD_BATCH_BYTES => {
                    bytes += q.body.len();
                    batch.push(q);
                }
                Ok(q) => {
                    next = Some(q);
                    break;
                }
                Err(_) => break,
            }
        }
        let (links, leader, requests) = (links.clone(), leader.clone(), requests.clone());
        tokio::spawn(async move {
            send_batch(&links, &leader, &requests, batch).await;
            drop(slot);
        });
    }
}

/// Sends `batch` to `leader` and hands each caller its answer.
async fn send_batch(links: &PeerLinks, leader: &FishNode, requests: &AtomicU64, mut batch: Vec<Queued>) {
    // A caller past its deadline has given up (and was told no quorum): not sent.
    batch.retain(|q| !q.reply.is_closed());
    if batch.is_empty() {
        return;
    }
    requests.fetch_add(1, Ordering::Relaxed);
    let mut frame = FrameBuf::new();
    append_batch_body(frame.body_mut(), batch.iter().map(|q| q.body.as_slice()));
    let answers = match frame.finish(Kind::WriteBatch) {
        Ok(frame) => match links.to(&leader.api).call(frame, WRITE_TIMEOUT).await {
            Err(LinkError::NoStream(_)) => return send_batch_http(links.client(), leader, requests, batch).await,
            Err(e) => Err(e.to_string()),
            Ok(answer) => answer.body().and_then(|body| decode_answers(body, batch.len())),
        },
        Err(e) => Err(e.to_string()),
    };
    hand_out(batch, answers);
}

/// The answers to a batch of `n` forwarded writes.
fn decode_answers(body: &[u8], n: usize) -> Result<Vec<Result<Applied, String>>, String> {
    match postcard::from_bytes::<Vec<Result<Applied, String>>>(body) {
        Ok(answers) if answers.len() == n => Ok(answers),
        Ok(answers) => Err(format!("the leader answered {} of {n} forwarded writes", answers.len())),
        Err(e) => Err(format!("cannot decode the leader's answer: {e}")),
    }
}

/// Each caller gets its answer, or all hear why the whole batch failed (and retry on
/// their own).
fn hand_out(batch: Vec<Queued>, answers: Result<Vec<Result<Applied, String>>, String>) {
    match answers {
        Ok(answers) => batch.into_iter().zip(answers).for_each(|(q, a)| drop(q.reply.send(a))),
        Err(e) => batch.into_iter().for_each(|q| drop(q.reply.send(Err(e.clone())))),
    }
}

/// Sends `batch` to a `leader` without the stream route, per request.
async fn send_batch_http(client: &reqwest::Client, leader: &FishNode, requests: &AtomicU64, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let q = batch.remove(0);
        let _ = q.reply.send(send_one(client, leader, q.body).await);
        return;
    }
    let mut body = Vec::new();
    append_batch_body(&mut body, batch.iter().map(|q| q.body.as_slice()));
    let answers = match post_leader(client, leader, "/cluster/write-batch", WRITE_TIMEOUT, body).await {
        Ok(bytes) => decode_answers(&bytes, batch.len()),
        // A leader of an older version has no batch route: one request each.
        Err(Post::Status(StatusCode::NOT_FOUND, _)) => {
            let singles = batch.into_iter().map(|q| async move {
                requests.fetch_add(1, Ordering::Relaxed);
                let _ = q.reply.send(send_one(client, leader, q.body).await);
            });
            join_all(singles).await;
            return;
        }
        Err(e) => Err(e.to_string()),
    };
    hand_out(batch, answers);
}

/// One encoded proposal to the leader's `/cluster/write`.
async fn send_one(client: &reqwest::Client, leader: &FishNode, body: Vec<u8>) -> Result<Applied, String> {
    let bytes = post_leader(client, leader, "/cluster/write", WRITE_TIMEOUT, body).await.map_err(|e| e.to_string())?;
    postcard::from_bytes::<Result<Applied, String>>(&bytes).map_err(|e| e.to_string())?
}

/// Appends to `body` the postcard encoding of a `Vec<Proposal>` from its proposals'
/// encodings: a sequence is its length (a varint, as a `u64` is encoded) then its
/// elements.
fn append_batch_body<'a>(body: &mut Vec<u8>, parts: impl ExactSizeIterator<Item = &'a [u8]>) {
    let mut len = [0u8; 10];
    if let Ok(len) = postcard::to_slice(&(parts.len() as u64), &mut len) {
        body.extend_from_slice(len);
    }
    parts.for_each(|p| body.extend_from_slice(p));
}

/// Why a request to the leader failed.
#[derive(Debug)]
enum Post {
    /// Not sent, or no answer.
    Transport(String),
    /// The leader answered with an error status.
    Status(StatusCode, String),
}

impl std::fmt::Display for Post {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Post::Transport(e) => f.write_str(e),
            Post::Status(status, body) => write!(f, "{status}: {body}"),
        }
    }
}

/// Posts `body` (postcard) to the leader's `path` within `timeout`; the answer's
/// body when its status is a success.
async fn post_leader(
    client: &reqwest::Client,
    leader: &FishNode,
    path: &str,
    timeout: Duration,
    body: Vec<u8>,
) -> Result<Bytes, Post> {
    let resp = client
        .post(format!("https://{}{path}", leader.api))
        .timeout(timeout)
        .header(header::CONTENT_TYPE, POSTCARD)
        .body(body)
        .send()
        .await
        .map_err(|e| Post::Transport(e.to_string()))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| Post::Transport(e.to_string()))?;
    if !status.is_success() {
        return Err(Post::Status(status, String::from_utf8_lossy(&bytes).into_owned()));
    }
    Ok(bytes)
}

/// Sends `req` to the leader's `path` (postcard both ways) and answers what the leader
/// answered: the one hop of a forwarded write or membership change.
pub(super) async fn call_leader<Req: Serialize, Resp: DeserializeOwned>(
    client: &reqwest::Client,
    leader: &FishNode,
    path: &str,
    timeout: Duration,
    req: &Req,
) -> Result<Resp, String> {
    let body = postcard::to_allocvec(req).map_err(|e| e.to_string())?;
    let bytes = post_leader(client, leader, path, timeout, body).await.map_err(|e| e.to_string())?;
    postcard::from_bytes::<Result<Resp, String>>(&bytes).map_err(|e| e.to_string())?
}

fn postcard_response<T: Serialize>(v: &T) -> Response {
    match postcard::to_allocvec(v) {
        Ok(b) => ([(header::CONTENT_TYPE, POSTCARD)], b).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")).into_response(),
    }
}

#[allow(clippy::result_large_err)] // the error is the response itself, built once
fn decode<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    postcard::from_bytes(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("body is not a valid postcard message: {e}")).into_response())
}

/// `POST /raft/append`.
pub async fn append(State(store): State<Store>, body: Bytes) -> Response {
    let req: AppendEntriesRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    postcard_response(&store.raft().append_entries(req).await)
}

/// `POST /raft/vote`.
pub async fn vote(State(store): State<Store>, body: Bytes) -> Response {
    let req: VoteRequest<NodeId> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    postcard_response(&store.raft().vote(req).await)
}

/// `POST /raft/snapshot`: one chunk of a snapshot.
pub async fn snapshot(State(store): State<Store>, body: Bytes) -> Response {
    let req: InstallSnapshotRequest<TypeConfig> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    postcard_response(&store.raft().install_snapshot(req).await)
}

/// `POST /cluster/write`: a follower forwards a write; this node applies it if it
/// leads (never forwarding again), and answers with the entry's index.
pub async fn write(State(store): State<Store>, body: Bytes) -> Response {
    let p: Proposal = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let r = store.write_as_leader(&p).await;
    postcard_response(&r)
}

/// `POST /cluster/write-batch`: writes a follower forwarded together (see
/// [`PeerForward`]); each is applied as by `/cluster/write`, all concurrently, so they
/// share log entries. The answers are in the proposals' order.
pub async fn write_batch(State(store): State<Store>, body: Bytes) -> Response {
    let ps: Vec<Proposal> = match decode(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if ps.len() > FORWARD_BATCH {
        let m = format!("{} writes in one batch; at most {FORWARD_BATCH}", ps.len());
        return (StatusCode::BAD_REQUEST, m).into_response();
    }
    let answers: Vec<Result<Applied, String>> = join_all(ps.iter().map(|p| store.write_as_leader(p))).await;
    postcard_response(&answers)
}

/// An HTTPS client for peers from [`crate::tls::peer_client_config`]: it trusts the
/// cluster CA only and presents this node's certificate (mutual TLS).
///
/// HTTP/2 keep-alive pings close a connection whose peer stopped answering (a cut
/// link drops packets without a reset): a stream dropped as stalled is then reopened
/// on a new connection, not on the pooled dead one, so traffic resumes as soon as
/// the link heals instead of at TCP's next backed-off retransmission.
pub fn peer_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    use super::peer_stream::{PING_AFTER, STALL};
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(PING_AFTER)
        .http2_keep_alive_timeout(STALL)
        .http2_keep_alive_while_idle(true)
        .build()
        .map_err(|e| format!("HTTPS client: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::Command;

    /// The batch body built from the proposals' own encodings is what the route decodes.
    #[test]
    fn a_batch_body_decodes_as_the_proposals() {
        for n in [1usize, 2, 127, 128, 300] {
            let ps: Vec<Proposal> =
                (0..n).map(|i| Proposal::new(&Command::DeleteUser { name: format!("u{i}") }).unwrap()).collect();
            let parts: Vec<Vec<u8>> = ps.iter().map(|p| postcard::to_allocvec(p).unwrap()).collect();
            let mut body = Vec::new();
            append_batch_body(&mut body, parts.iter().map(Vec::as_slice));
            let back: Vec<Proposal> = postcard::from_bytes(&body).unwrap();
            assert_eq!(back.len(), n);
            for (i, (p, q)) in ps.iter().zip(&back).enumerate() {
                assert_eq!(p.id, q.id);
                let command = q.command.decode().unwrap();
                assert!(matches!(&command, Command::DeleteUser { name } if *name == format!("u{i}")), "{q:?}");
            }
        }
    }
}
