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

use std::time::Duration;

mod frame;
mod link;
mod serve;

pub use frame::{Decoder, Frame, FrameBuf, FrameError, Kind};
pub use link::{Answer, Link, LinkError, PeerLinks};
pub use serve::{PeerSession, serve};

/// The route a stream is opened on.
pub const STREAM_PATH: &str = "/raft/stream";
const FRAMES: &str = "application/x-fish-frames";
/// Largest frame body: the per-call routes' body limit.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// `len` (4) + `id` (8) + `kind` (1).
const HEADER: usize = 13;
/// Calls queued on a link before callers wait for room: bounded, so calls to a slow or
/// stalled peer push back on their callers instead of piling up in memory.
pub const LINK_QUEUE: usize = 1024;
/// Frames of one stream a server handles at once: past this it stops reading the stream,
/// so a busy peer's writes wait on HTTP/2 flow control instead of spawning without bound.
pub const FRAMES_IN_FLIGHT: usize = 1024;
/// Queued frames are written together up to this size (one larger frame goes alone):
/// one write for a burst of small calls, without copying a whole backlog into one buffer
/// before any of it is sent.
const COALESCE_BYTES: usize = 256 * 1024;
/// Silence (nothing received) while calls wait before the link pings the peer.
pub const PING_AFTER: Duration = Duration::from_secs(1);
/// Silence while calls wait after which the stream is taken as cut and dropped. A cut
/// link gives no error, so without this its calls would only ever time out; it is several
/// [`PING_AFTER`]s, so a live peer has answered a ping long before.
pub const STALL: Duration = Duration::from_secs(4);
/// Longest wait for a stream to open (its answer's headers). The link's task waits even
/// when the call that asked for it gave up, so a slow first handshake completes; bounded, because the
/// link's queued calls wait behind it.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed open is remembered (calls fail at once meanwhile), so a burst of
/// calls to a down peer does not try (and wait for) one open each.
const REOPEN_PAUSE: Duration = Duration::from_millis(250);
/// How long a peer without the stream route (an older version) is called per request
/// before its stream is tried again (it may have been upgraded).
pub const NO_STREAM_RETRY: Duration = Duration::from_secs(60);
