//! Node-to-node Raft traffic: the HTTPS client openraft uses to reach peers, the
//! forwarding of writes to the leader, and the routes that serve both.
//!
//! # Invariants
//! - Bodies are postcard (compact, fast for snapshot chunks); a command inside a log
//!   entry stays JSON text (see [`crate::store::Proposal`]).
//! - A peer that cannot be connected to is `Unreachable` (openraft backs off), any other
//!   transport failure is a `Network` error, and an error the peer's Raft returned is a
//!   `RemoteError`, so openraft reacts to each as it should.
//! - A forwarded write is applied by the leader's Raft only (never re-forwarded), so a
//!   write crosses at most one hop; its id makes a retry after an unknown outcome safe.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use openraft::error::{NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::liveness::PeerAcks;
use crate::store::{Applied, FishNode, Forward, NodeId, Proposal, Raft, Store, TypeConfig, WRITE_TIMEOUT};

const POSTCARD: &str = "application/x-postcard";
/// How long a peer request may run on after openraft stopped waiting for it.
const SLOW_PEER: Duration = Duration::from_secs(5);

/// Connects this node to its peers' `/raft/*` routes.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    acks: PeerAcks,
}

impl HttpNetwork {
    /// `client` must trust the cluster CA and present this node's certificate.
    pub fn new(client: reqwest::Client) -> Self {
        HttpNetwork { client, acks: PeerAcks::default() }
    }

    /// Records in `acks` when each peer last answered (see [`crate::cluster::liveness`]).
    pub fn with_acks(mut self, acks: PeerAcks) -> Self {
        self.acks = acks;
        self
    }
}

/// The connection to one peer.
pub struct HttpPeer {
    client: reqwest::Client,
    target: NodeId,
    base: String,
    acks: PeerAcks,
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = HttpPeer;

    async fn new_client(&mut self, target: NodeId, node: &FishNode) -> HttpPeer {
        HttpPeer { client: self.client.clone(), target, base: format!("https://{}", node.api), acks: self.acks.clone() }
    }
}

type RpcErr<E> = RPCError<NodeId, FishNode, RaftError<NodeId, E>>;

fn transport<E: std::error::Error>(e: reqwest::Error) -> RPCError<NodeId, FishNode, E> {
    if e.is_connect() { RPCError::Unreachable(Unreachable::new(&e)) } else { RPCError::Network(NetworkError::new(&e)) }
}

fn net<E: std::error::Error>(message: String) -> RPCError<NodeId, FishNode, E> {
    RPCError::Network(NetworkError::new(&std::io::Error::other(message)))
}

impl HttpPeer {
    async fn call<Req, Resp, E>(&self, path: &str, req: &Req, option: &RPCOption) -> Result<Resp, RpcErr<E>>
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

impl RaftNetwork<TypeConfig> for HttpPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<openraft::error::InstallSnapshotError>> {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}

impl crate::store::RaftNetworkBuilder for HttpNetwork {
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

/// Forwards writes to the leader's `/cluster/write`.
pub struct HttpForward {
    client: reqwest::Client,
}

impl HttpForward {
    pub fn new(client: reqwest::Client) -> Self {
        HttpForward { client }
    }
}

#[async_trait::async_trait]
impl Forward for HttpForward {
    async fn forward(&self, leader: &FishNode, proposal: &Proposal) -> Result<Applied, String> {
        call_leader(&self.client, leader, "/cluster/write", WRITE_TIMEOUT, proposal).await
    }
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
    let resp = client
        .post(format!("https://{}{path}", leader.api))
        .timeout(timeout)
        .header(header::CONTENT_TYPE, POSTCARD)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
    }
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

/// An HTTPS client for peers from [`crate::tls::peer_client_config`]: it trusts the
/// cluster CA only and presents this node's certificate (mutual TLS).
pub fn peer_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTPS client: {e}"))
}
