//! The client side of a peer stream: one [`Link`] per peer, which opens the stream,
//! writes the calls queued on it and hands each answer to its caller.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{StatusCode, header};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::frame::{Decoder, Kind, frame, set_id};
use super::{
    COALESCE_BYTES, FRAMES, LINK_QUEUE, NO_STREAM_RETRY, OPEN_TIMEOUT, PING_AFTER, REOPEN_PAUSE, STALL, STREAM_PATH,
};
use crate::errors::error_chain;

/// Why a call over a link failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The peer has no stream route (an older version): call it per request.
    #[error("{0} has no stream route")]
    NoStream(String),
    /// Nothing could be connected to.
    #[error("cannot connect to {peer}: {why}")]
    Unreachable { peer: String, why: String },
    /// The stream could not be opened, or broke while the call waited (`why` says how).
    /// The peer may have run a call already written; the next call opens a new stream.
    #[error("stream to {peer}: {why}")]
    Network { peer: String, why: String },
    /// No answer within the caller's own timeout. The stream is kept (one slow answer is
    /// not a cut link, see [`STALL`]), and the peer may still run the call.
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
    /// Sends `frame` (from [`FrameBuf`](super::FrameBuf)) and waits at most `timeout` for its answer.
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
