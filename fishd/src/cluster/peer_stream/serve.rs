//! The server side of a peer stream: `POST /raft/stream` reads a peer's frames, runs
//! each as its per-call route would, and writes the answers as they are ready.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{Decoder, FrameBuf, Kind, frame, set_id};
use super::{COALESCE_BYTES, FRAMES, FRAMES_IN_FLIGHT};
use crate::store::{Applied, NodeId, Proposal, Store, TypeConfig};

/// The answer `id` saying it failed, and why.
fn fail(id: u64, why: &str) -> Vec<u8> {
    frame(id, Kind::Fail, why.as_bytes())
}

/// Who opened a stream, as the peer check saw it: checked again for every frame (a
/// removed member is no longer served), and the server's shutdown (open streams end
/// so a graceful shutdown does not wait for them).
#[derive(Clone)]
pub struct PeerSession {
    /// The peer as its certificate named it: for the log line and the closing reason
    /// when it is no longer a member.
    pub peer: String,
    /// Asked before each frame: a stream lives long, so the check made when it opened
    /// would keep serving a member removed since.
    pub still_member: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The server's shutdown: a stream never ends on its own, so it ends with this
    /// rather than holding up a graceful shutdown.
    pub shutdown: CancellationToken,
}

/// `POST /raft/stream`: frames in, answers out as they are ready (see the module).
pub async fn serve(State(store): State<Store>, session: Option<axum::Extension<PeerSession>>, body: Body) -> Response {
    let session = session.map(|s| s.0);
    let shutdown = session.as_ref().map(|s| s.shutdown.clone()).unwrap_or_default();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(FRAMES_IN_FLIGHT);
    let done = shutdown.child_token();
    tokio::spawn(read_frames(store, session, body, tx, done.clone()));
    let out = futures::stream::unfold((rx, done), |(mut rx, done)| async move {
        let first = tokio::select! {
            f = rx.recv() => f?,
            _ = done.cancelled() => return None,
        };
        let mut buf = first;
        while buf.len() < COALESCE_BYTES {
            let Ok(more) = rx.try_recv() else { break };
            buf.extend_from_slice(&more);
        }
        Some((Ok::<_, Infallible>(Bytes::from(buf)), (rx, done)))
    });
    ([(header::CONTENT_TYPE, FRAMES)], Body::from_stream(out)).into_response()
}

/// Reads a stream's frames and starts each; ends with the request body, a bad frame,
/// the peer's removal or the shutdown (`done`).
async fn read_frames(
    store: Store,
    session: Option<PeerSession>,
    body: Body,
    tx: mpsc::Sender<Vec<u8>>,
    done: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(FRAMES_IN_FLIGHT));
    let mut data = body.into_data_stream();
    let mut decoder = Decoder::default();
    loop {
        let chunk = tokio::select! {
            c = data.next() => c,
            _ = done.cancelled() => return,
        };
        let Some(Ok(chunk)) = chunk else { return };
        decoder.push(&chunk);
        loop {
            let f = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(fail(0, &e.to_string())).await;
                    return;
                }
            };
            if let Some(s) = &session
                && !(s.still_member)()
            {
                tracing::warn!(peer = %s.peer, "closed the stream of a node that is no longer a member");
                let _ = tx.send(fail(0, &format!("node {:?} is not a member of this cluster", s.peer))).await;
                return;
            }
            match Kind::from_u8(f.kind) {
                Some(Kind::Ping) => {
                    if tx.send(frame(f.id, Kind::Ping, &[])).await.is_err() {
                        return;
                    }
                }
                Some(kind @ (Kind::Append | Kind::Vote | Kind::WriteBatch)) => {
                    let Ok(slot) = slots.clone().acquire_owned().await else { return };
                    let (store, tx) = (store.clone(), tx.clone());
                    tokio::spawn(async move {
                        let answer = answer(&store, f.id, kind, &f.body).await;
                        let _ = tx.send(answer).await;
                        drop(slot);
                    });
                }
                _ => {
                    if tx.send(fail(f.id, &format!("unknown frame kind {}", f.kind))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// The answer frame to request `id`: what the per-call route of `kind` would answer.
async fn answer(store: &Store, id: u64, kind: Kind, body: &[u8]) -> Vec<u8> {
    fn decode<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
        postcard::from_bytes(body).map_err(|e| format!("the frame is not a valid postcard message: {e}"))
    }
    let encoded = match kind {
        Kind::Append => match decode::<AppendEntriesRequest<TypeConfig>>(body) {
            Ok(req) => FrameBuf::encode(kind, &store.raft().append_entries(req).await),
            Err(e) => return fail(id, &e),
        },
        Kind::Vote => match decode::<VoteRequest<NodeId>>(body) {
            Ok(req) => FrameBuf::encode(kind, &store.raft().vote(req).await),
            Err(e) => return fail(id, &e),
        },
        Kind::WriteBatch => match decode::<Vec<Proposal>>(body) {
            Ok(ps) if ps.len() > crate::cluster::raft_net::FORWARD_BATCH => {
                return fail(
                    id,
                    &format!("{} writes in one batch; at most {}", ps.len(), crate::cluster::raft_net::FORWARD_BATCH),
                );
            }
            Ok(ps) => {
                let answers: Vec<Result<Applied, String>> = join_all(ps.iter().map(|p| store.write_as_leader(p))).await;
                FrameBuf::encode(kind, &answers)
            }
            Err(e) => return fail(id, &e),
        },
        Kind::Ping | Kind::Fail => return fail(id, "not a request"),
    };
    match encoded {
        Ok(mut f) => {
            set_id(&mut f, id);
            f
        }
        Err(e) => fail(id, &e.to_string()),
    }
}
