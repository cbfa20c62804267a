//! One long-lived stream per peer for Raft's appends and votes and for forwarded
//! write batches: frames instead of an HTTPS request per call.
//!
//! Each call used to be its own HTTP/2 request (`/raft/append`, `/cluster/write-batch`,
//! ...): per call, reqwest built a URL, headers, a task and timers, h2 sent HEADERS
//! (HPACK both ways), axum routed and extracted, and each answer was a few small
//! writes on the socket. In the 3-node burst that was ~0.25 core-ms per application,
//! ~17 % of the cluster's CPU (issue 12). Here a node opens, per peer, ONE request,
//! `POST /raft/stream`, whose request body and response body are both streams of
//! frames, and every call is a frame on it; whatever is queued at once goes in one
//! write.
//!
//! Why an HTTP/2 request and not a protocol of its own: it keeps the port, the mutual
//! TLS and the member check ([`crate::api::cluster::PeerNode`], made when the stream
//! opens and again for every frame, so a removed member is no longer served), and an
//! older node simply answers 404, on which the caller goes back to the per-call routes
//! for [`NO_STREAM_RETRY`]. Snapshots keep their route: large and rare.
//!
//! # Frames
//! `len: u32 LE | id: u64 LE | kind: u8 | body (len bytes)`. A request's body is the
//! postcard the per-call route takes; its answer carries the same id and kind and the
//! postcard that route answers, or [`Kind::Fail`] with a UTF-8 reason. Answers come in
//! the order they are ready (an append at once, a forwarded batch after its commit).
//! Id 0 is the stream's own: a [`Kind::Fail`] with id 0 says why the server closes it.
//!
//! # Invariants
//! - Bounded everywhere: a frame is at most [`MAX_FRAME`] (the per-call routes' body
//!   limit), a link queues at most [`LINK_QUEUE`] calls, a server runs at most
//!   [`FRAMES_IN_FLIGHT`] frames of a stream at once (then stops reading it: the
//!   client's writes wait on HTTP/2 flow control).
//! - A caller waits at most its own timeout; a call whose caller gave up before it was
//!   written is not sent.
//! - A stream that received nothing for [`STALL`] while calls wait (a cut link) is
//!   dropped, its calls fail, and the next call opens a new one; the link pings the
//!   peer after [`PING_AFTER`] of silence so a slow answer is not taken for a cut.
//! - A failed open is remembered for [`REOPEN_PAUSE`]: calls meanwhile fail at once
//!   with its error (`Unreachable` when nothing could be connected to).
//! - The link's own task opens the stream, so a slow first handshake (a restarted peer
//!   on a loaded host) completes even when the call that asked for it gives up
//!   (openraft gives an append a heartbeat's time).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::join_all;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::{Applied, NodeId, Proposal, Store, TypeConfig};

/// The route a stream is opened on.
pub const STREAM_PATH: &str = "/raft/stream";
const FRAMES: &str = "application/x-fish-frames";
/// Largest frame body: the per-call routes' body limit.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// `len` (4) + `id` (8) + `kind` (1).
const HEADER: usize = 13;
/// Calls queued on a link before callers wait for room.
pub const LINK_QUEUE: usize = 1024;
/// Frames of one stream a server handles at once.
pub const FRAMES_IN_FLIGHT: usize = 1024;
/// Queued frames are written together up to this size (one larger frame goes alone).
const COALESCE_BYTES: usize = 256 * 1024;
/// Silence (nothing received) while calls wait before the link pings the peer.
pub const PING_AFTER: Duration = Duration::from_secs(1);
/// Silence while calls wait after which the stream is taken as cut and dropped.
pub const STALL: Duration = Duration::from_secs(4);
/// Longest wait for a stream to open (its answer's headers).
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed open is remembered (calls fail at once meanwhile).
const REOPEN_PAUSE: Duration = Duration::from_millis(250);
/// How long a peer without the stream route (an older version) is called per request
/// before its stream is tried again (it may have been upgraded).
pub const NO_STREAM_RETRY: Duration = Duration::from_secs(60);

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Answered at once, with an empty body: liveness of the stream itself.
    Ping = 0,
    /// `AppendEntriesRequest` → `Result<AppendEntriesResponse, RaftError>`.
    Append = 1,
    /// `VoteRequest` → `Result<VoteResponse, RaftError>`.
    Vote = 2,
    /// `Vec<Proposal>` → `Vec<Result<Applied, String>>`, after their commit.
    WriteBatch = 3,
    /// An answer only: the request failed (body: why, UTF-8).
    Fail = 255,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Ping,
            1 => Kind::Append,
            2 => Kind::Vote,
            3 => Kind::WriteBatch,
            255 => Kind::Fail,
            _ => return None,
        })
    }
}

/// A frame that cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("cannot encode a frame: {0}")]
    Encode(String),
}

/// A frame being built: its header is filled in by [`FrameBuf::finish`] and the id by
/// the link, so the body is encoded once, in place.
pub struct FrameBuf(Vec<u8>);

impl FrameBuf {
    /// An empty frame, with room for the header.
    pub fn new() -> Self {
        FrameBuf(vec![0; HEADER])
    }

    /// The body so far, to append to.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }

    /// A frame of `kind` holding `value` in postcard.
    pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>, FrameError> {
        let buf = postcard::to_extend(value, FrameBuf::new().0).map_err(|e| FrameError::Encode(e.to_string()))?;
        FrameBuf(buf).finish(kind)
    }

    /// The frame's bytes, with `len` and `kind` set (id 0 until the link sets it).
    pub fn finish(mut self, kind: Kind) -> Result<Vec<u8>, FrameError> {
        let len = self.0.len() - HEADER;
        let len32 = u32::try_from(len).ok().filter(|&l| l as usize <= MAX_FRAME).ok_or(FrameError::TooLarge(len))?;
        self.0[0..4].copy_from_slice(&len32.to_le_bytes());
        self.0[12] = kind as u8;
        Ok(self.0)
    }
}

impl Default for FrameBuf {
    fn default() -> Self {
        Self::new()
    }
}

fn set_id(frame: &mut [u8], id: u64) {
    frame[4..12].copy_from_slice(&id.to_le_bytes());
}

/// A whole frame from raw parts (answers; the body is copied).
fn frame(id: u64, kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + body.len());
    f.extend_from_slice(&(body.len().min(MAX_FRAME) as u32).to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.push(kind as u8);
    f.extend_from_slice(&body[..body.len().min(MAX_FRAME)]);
    f
}

/// The answer `id` saying it failed, and why.
fn fail(id: u64, why: &str) -> Vec<u8> {
    frame(id, Kind::Fail, why.as_bytes())
}

/// One frame read from a stream.
#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    /// The raw kind (an unknown one is answered with a failure, not dropped).
    pub kind: u8,
    pub body: Bytes,
}

/// Most a [`Decoder`] reserves for a frame beyond the bytes that arrived; a larger
/// frame's buffer grows as its bytes come.
const RESERVE_AHEAD: usize = 1024 * 1024;

/// Splits a byte stream, in chunks as they come, into frames.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame, if it has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let mut head = &self.buf[..HEADER];
        let len = head.get_u32_le() as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER + len {
            // Room for what is announced, but no more than RESERVE_AHEAD before the
            // bytes arrive: a header alone must not pin 64 MiB (a peer that vanished
            // mid-frame would hold it as long as its stream lives).
            self.buf.reserve((HEADER + len - self.buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let mut head = self.buf.split_to(HEADER);
        head.advance(4);
        let id = head.get_u64_le();
        let kind = head.get_u8();
        let body = self.buf.split_to(len).freeze();
        Ok(Some(Frame { id, kind, body }))
    }
}

// ---------------------------------------------------------------- client side

/// Why a call over a link failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The peer has no stream route (an older version): call it per request.
    #[error("{0} has no stream route")]
    NoStream(String),
    /// Nothing could be connected to.
    #[error("cannot connect to {peer}: {why}")]
    Unreachable { peer: String, why: String },
    #[error("stream to {peer}: {why}")]
    Network { peer: String, why: String },
    #[error("no answer from {peer} within {after:?}")]
    Timeout { peer: String, after: Duration },
}

/// An answer: its kind ([`Kind::Fail`] or the request's) and body.
#[derive(Debug)]
pub struct Answer {
    pub kind: u8,
    pub body: Bytes,
}

impl Answer {
    /// The body, when the peer answered the request (not [`Kind::Fail`]).
    pub fn body(&self) -> Result<&[u8], String> {
        if self.kind == Kind::Fail as u8 {
            Err(String::from_utf8_lossy(&self.body).into_owned())
        } else {
            Ok(&self.body)
        }
    }
}

type Reply = oneshot::Sender<Result<Answer, LinkError>>;

/// The links to peers, one per address, shared by the Raft client and the forwarder
/// so a pair of nodes has one stream each way. Cheap to clone.
#[derive(Clone)]
pub struct PeerLinks(Arc<LinksInner>);

struct LinksInner {
    client: reqwest::Client,
    scheme: &'static str,
    links: Mutex<HashMap<String, Arc<Link>>>,
}

impl PeerLinks {
    /// `client` must trust the cluster CA and present this node's certificate.
    pub fn new(client: reqwest::Client) -> Self {
        Self::with_scheme(client, "https")
    }

    /// Links over `scheme` (`http` in tests without TLS).
    pub fn with_scheme(client: reqwest::Client, scheme: &'static str) -> Self {
        PeerLinks(Arc::new(LinksInner { client, scheme, links: Mutex::default() }))
    }

    /// The client for the per-request routes.
    pub fn client(&self) -> &reqwest::Client {
        &self.0.client
    }

    /// `https://{api}`: where the per-request routes of the node at `api` are.
    pub fn base(&self, api: &str) -> String {
        format!("{}://{api}", self.0.scheme)
    }

    /// The link to the node serving at `api` (`HOST:PORT`), started on first use
    /// (inside the runtime). Kept for the process's life: a cluster has few members.
    pub fn to(&self, api: &str) -> Arc<Link> {
        let mut links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        links
            .entry(api.to_owned())
            .or_insert_with(|| {
                let (out, rx) = mpsc::channel(LINK_QUEUE);
                let shared = Arc::new(Shared {
                    base: self.base(api),
                    pending: Mutex::default(),
                    next_id: AtomicU64::new(1),
                    no_stream_until: Mutex::default(),
                    down: Mutex::default(),
                    opens: AtomicU64::new(0),
                });
                tokio::spawn(supervise(self.0.client.clone(), shared.clone(), rx));
                Arc::new(Link { out, shared })
            })
            .clone()
    }
}

/// The stream to one peer, opened on the first call and again after it ends.
pub struct Link {
    out: mpsc::Sender<Out>,
    shared: Arc<Shared>,
}

/// A call to write: its id and its whole frame.
struct Out {
    id: u64,
    frame: Vec<u8>,
}

struct Shared {
    base: String,
    /// Calls waiting for their answer, by id.
    pending: Mutex<HashMap<u64, Reply>>,
    next_id: AtomicU64,
    /// The peer answered 404 to the stream: per request until then.
    no_stream_until: Mutex<Option<Instant>>,
    /// The last open failed: calls fail with this until then.
    down: Mutex<Option<(Instant, LinkError)>>,
    /// Streams opened so far.
    opens: AtomicU64,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Reply>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiting(&self, id: u64) -> bool {
        self.pending().get(&id).is_some_and(|r| !r.is_closed())
    }

    /// Every waiting call fails with `e`.
    fn fail_all(&self, e: &LinkError) {
        let pending = std::mem::take(&mut *self.pending());
        for (_, reply) in pending {
            let _ = reply.send(Err(e.clone()));
        }
    }

    fn network(&self, why: impl Into<String>) -> LinkError {
        LinkError::Network { peer: self.base.clone(), why: why.into() }
    }
}

/// Takes a call's id out of the pending map when the call ends, whatever way.
struct Forget<'a>(&'a Shared, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.pending().remove(&self.1);
    }
}

impl Link {
    /// Sends `frame` (from [`FrameBuf`]) and waits at most `timeout` for its answer.
    /// [`LinkError::NoStream`]: the peer is older; call its per-request route.
    pub async fn call(&self, mut frame: Vec<u8>, timeout: Duration) -> Result<Answer, LinkError> {
        let s = &self.shared;
        let now = Instant::now();
        if s.no_stream_until.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|until| now < until) {
            return Err(LinkError::NoStream(s.base.clone()));
        }
        if let Some((until, e)) = &*s.down.lock().unwrap_or_else(|e| e.into_inner())
            && now < *until
        {
            return Err(e.clone());
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        set_id(&mut frame, id);
        let (reply, answer) = oneshot::channel();
        s.pending().insert(id, reply);
        let _forget = Forget(s, id);
        let wait = async {
            self.out.send(Out { id, frame }).await.map_err(|_| s.network("the link stopped"))?;
            answer.await.map_err(|_| s.network("the call was dropped"))?
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| LinkError::Timeout { peer: s.base.clone(), after: timeout })?
    }

    /// Streams opened so far (tests: one for many calls; a new one after a cut).
    pub fn opens(&self) -> u64 {
        self.shared.opens.load(Ordering::Relaxed)
    }
}

/// Opens the stream when there is a call to send, drives it until it ends, and again.
async fn supervise(client: reqwest::Client, s: Arc<Shared>, mut calls: mpsc::Receiver<Out>) {
    loop {
        let Some(first) = calls.recv().await else { return };
        if !s.waiting(first.id) {
            continue;
        }
        let body = match open(&client, &s, first.frame).await {
            Ok(opened) => opened,
            Err(e) => {
                if let LinkError::NoStream(_) = e {
                    tracing::info!(peer = %s.base, "the peer has no stream route: calling it per request");
                    *s.no_stream_until.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(Instant::now() + NO_STREAM_RETRY);
                } else {
                    *s.down.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((Instant::now() + REOPEN_PAUSE, e.clone()));
                }
                s.fail_all(&e);
                continue;
            }
        };
        s.opens.fetch_add(1, Ordering::Relaxed);
        let why = drive(&s, body, &mut calls).await;
        tracing::debug!(peer = %s.base, %why, "stream closed");
        s.fail_all(&s.network(why));
    }
}

/// An open stream: where its request frames go, and its answers.
struct Opened {
    frames: mpsc::Sender<Bytes>,
    answers: reqwest::Response,
}

/// Opens the stream with `first` as its first frame.
async fn open(client: &reqwest::Client, s: &Shared, first: Vec<u8>) -> Result<Opened, LinkError> {
    let (frames, rx) = mpsc::channel::<Bytes>(16);
    let _ = frames.try_send(Bytes::from(first));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        let b = rx.recv().await?;
        Some((Ok::<_, Infallible>(b), rx))
    });
    let send = client
        .post(format!("{}{STREAM_PATH}", s.base))
        .header(header::CONTENT_TYPE, FRAMES)
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let resp = match tokio::time::timeout(OPEN_TIMEOUT, send).await {
        Err(_) => return Err(s.network(format!("no answer to opening the stream within {OPEN_TIMEOUT:?}"))),
        Ok(Err(e)) if e.is_connect() => {
            return Err(LinkError::Unreachable { peer: s.base.clone(), why: error_chain(&e) });
        }
        Ok(Err(e)) => return Err(s.network(error_chain(&e))),
        Ok(Ok(r)) => r,
    };
    match resp.status() {
        StatusCode::OK => Ok(Opened { frames, answers: resp }),
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => Err(LinkError::NoStream(s.base.clone())),
        status => {
            let text = tokio::time::timeout(Duration::from_secs(1), resp.text()).await;
            let text = text.ok().and_then(Result::ok).unwrap_or_default();
            Err(s.network(format!("{STREAM_PATH} answered {status}: {text}")))
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Writes queued calls and watches the answers until the stream ends; says why it did.
async fn drive(s: &Arc<Shared>, opened: Opened, calls: &mut mpsc::Receiver<Out>) -> String {
    let Opened { frames, answers } = opened;
    let heard = Arc::new(Mutex::new(Instant::now()));
    let mut reader = tokio::spawn(read_answers(answers, s.clone(), heard.clone()));
    let _abort = AbortOnDrop(reader.abort_handle());
    let mut tick = tokio::time::interval(PING_AFTER / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When calls began to wait after the link was idle. Silence counts from then:
    // an idle link hears nothing and sends no pings, so `heard` alone would make the
    // first call after a quiet spell look like a cut link.
    let mut waiting_since: Option<Instant> = None;
    loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(first) = call else { return "the node stops".into() };
                let Some(batch) = coalesce(s, first, calls) else { continue };
                match tokio::time::timeout(STALL, frames.send(batch)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return "the request body was dropped".into(),
                    Err(_) => return format!("nothing could be written for {STALL:?}"),
                }
                waiting_since.get_or_insert_with(Instant::now);
            }
            why = &mut reader => return why.unwrap_or_else(|e| format!("the reader failed: {e}")),
            _ = tick.tick() => {
                if s.pending().is_empty() {
                    waiting_since = None;
                    continue;
                }
                let heard_for = heard.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                let silent = waiting_since.map_or(heard_for, |since| heard_for.min(since.elapsed()));
                if silent >= STALL {
                    return format!("nothing received for {silent:?} while calls wait");
                }
                if silent >= PING_AFTER {
                    let _ = frames.try_send(Bytes::from(frame(0, Kind::Ping, &[])));
                }
            }
        }
    }
}

/// `first` and whatever else is queued now, as one write (calls whose caller gave up
/// are left out); `None` if none is left.
fn coalesce(s: &Shared, first: Out, calls: &mut mpsc::Receiver<Out>) -> Option<Bytes> {
    let mut buf: Option<Vec<u8>> = s.waiting(first.id).then_some(first.frame);
    while buf.as_ref().is_none_or(|b| b.len() < COALESCE_BYTES) {
        let Ok(next) = calls.try_recv() else { break };
        if !s.waiting(next.id) {
            continue;
        }
        match &mut buf {
            Some(b) => b.extend_from_slice(&next.frame),
            None => buf = Some(next.frame),
        }
    }
    buf.map(Bytes::from)
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands each answer to its caller; says why the answers ended.
async fn read_answers(answers: reqwest::Response, s: Arc<Shared>, heard: Arc<Mutex<Instant>>) -> String {
    let mut chunks = answers.bytes_stream();
    let mut decoder = Decoder::default();
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return format!("reading failed: {}", error_chain(&e)),
        };
        *heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        decoder.push(&chunk);
        loop {
            let f = match decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return e.to_string(),
            };
            if f.id == 0 {
                if f.kind == Kind::Fail as u8 {
                    return format!("closed by the peer: {}", String::from_utf8_lossy(&f.body));
                }
                continue;
            }
            if let Some(reply) = s.pending().remove(&f.id) {
                let _ = reply.send(Ok(Answer { kind: f.kind, body: f.body }));
            }
        }
    }
    "the peer ended the stream".into()
}

// ---------------------------------------------------------------- server side

/// Who opened a stream, as the peer check saw it: checked again for every frame (a
/// removed member is no longer served), and the server's shutdown (open streams end
/// so a graceful shutdown does not wait for them).
#[derive(Clone)]
pub struct PeerSession {
    pub peer: String,
    pub still_member: Arc<dyn Fn() -> bool + Send + Sync>,
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
            Ok(ps) if ps.len() > super::raft_net::FORWARD_BATCH => {
                return fail(
                    id,
                    &format!("{} writes in one batch; at most {}", ps.len(), super::raft_net::FORWARD_BATCH),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(id: u64, kind: Kind, body: &[u8]) -> Vec<u8> {
        let mut f = FrameBuf::new();
        f.body_mut().extend_from_slice(body);
        let mut f = f.finish(kind).unwrap();
        set_id(&mut f, id);
        f
    }

    /// A header announcing a large body reserves a bounded buffer until the body comes,
    /// and the frame still decodes whole once it has.
    #[test]
    fn a_large_frame_is_buffered_as_it_arrives() {
        let body = vec![7u8; 8 * RESERVE_AHEAD];
        let frame = request(9, Kind::Append, &body);
        let mut d = Decoder::default();
        d.push(&frame[..HEADER]);
        assert!(d.next_frame().unwrap().is_none());
        assert!(d.buf.capacity() <= HEADER + 2 * RESERVE_AHEAD, "reserved {} bytes ahead", d.buf.capacity());
        d.push(&frame[HEADER..]);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.id, f.kind, f.body.len()), (9, Kind::Append as u8, body.len()));
    }

    /// Frames written back to back come out whole and in order, however the bytes are
    /// cut into chunks on the way.
    #[test]
    fn frames_cut_anywhere_decode_whole() {
        let frames: Vec<Vec<u8>> = (1..=20u64)
            .map(|i| {
                request(
                    i,
                    if i.is_multiple_of(2) { Kind::Vote } else { Kind::WriteBatch },
                    &vec![i as u8; i as usize * 37],
                )
            })
            .collect();
        let all: Vec<u8> = frames.concat();
        for cut in [1, 2, 7, 13, 64, 1000, all.len()] {
            let mut d = Decoder::default();
            let mut got = Vec::new();
            for chunk in all.chunks(cut) {
                d.push(chunk);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 20, "cut {cut}");
            for (i, f) in got.iter().enumerate() {
                let n = i as u64 + 1;
                assert_eq!(f.id, n);
                assert_eq!(f.kind, if n.is_multiple_of(2) { Kind::Vote as u8 } else { Kind::WriteBatch as u8 });
                assert_eq!(&f.body[..], &vec![n as u8; n as usize * 37][..]);
            }
        }
    }

    /// A length over the limit is refused from the header alone (not buffered), and a
    /// frame that large is not built.
    #[test]
    fn a_frame_over_the_limit_is_refused() {
        let mut d = Decoder::default();
        let mut head = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        head.extend_from_slice(&[0; 9]);
        d.push(&head);
        assert!(matches!(d.next_frame(), Err(FrameError::TooLarge(n)) if n == MAX_FRAME + 1));
        let mut f = FrameBuf::new();
        f.body_mut().resize(HEADER + MAX_FRAME + 1, 0);
        assert!(matches!(f.finish(Kind::Append), Err(FrameError::TooLarge(_))));
    }

    /// A frame encoded in place reads back as the value.
    #[test]
    fn an_encoded_frame_holds_its_value() {
        let value = vec![Ok::<u64, String>(7), Err("no".into())];
        let mut f = FrameBuf::encode(Kind::WriteBatch, &value).unwrap();
        set_id(&mut f, 42);
        let mut d = Decoder::default();
        d.push(&f);
        let got = d.next_frame().unwrap().unwrap();
        assert_eq!((got.id, got.kind), (42, Kind::WriteBatch as u8));
        assert_eq!(postcard::from_bytes::<Vec<Result<u64, String>>>(&got.body).unwrap(), value);
        assert!(d.next_frame().unwrap().is_none());
    }
}
