//! Defaults that fish.yml ([`crate::config`]) and the layers using them share, each
//! with the reason for its value.
//!
//! A leaf, so that `config` can name a default without importing `api` or `store`
//! (arrows point inward) and the value is still written once.

use std::time::Duration;

/// Requests per minute per non-admin user (`rateLimit`): a busy CI agent polls a few
/// times a second at most; a runaway script is stopped within a minute.
pub const RATE_LIMIT_PER_MINUTE: u32 = 600;
/// Open watches per user (`maxWatchesPerUser`): a CI server watching a handful of
/// kinds, with room for reconnects; each holds a task and a broadcast receiver.
pub const MAX_WATCHES_PER_USER: usize = 32;
/// TLS handshake, first request and each request's headers (`headerReadTimeout`):
/// slowloris protection; a real client sends headers in milliseconds.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an HTTP/2 connection that sent nothing is pinged, and how long its
/// answer may take (`http2KeepAlive`): a client or peer that vanished without closing
/// (cut off, powered down) holds a watch slot, a connection slot and, for a peer, its
/// Raft stream until TCP gives up, which for an idle connection is never. With 20 s
/// it is dropped within 40 s, at the cost of one small frame per idle connection
/// every 20 s.
pub const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(20);
/// Open API connections (`maxConnections`): well under the usual 1024 open files,
/// which fishd also needs for the store, logs and drivers; far more than a CI fleet's
/// agents need.
pub const MAX_CONNECTIONS: usize = 512;
/// Failed authentications per minute per source address (`authFailureLimit`): a
/// human mistyping, or a script with a stale token retrying, stays far below this; an
/// online password guesser gets 20 tries a minute.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 20;
/// Recent store events kept for watches to resume from (`watchHistory`); older
/// resumes get 410. At ~1 KiB an event this bounds the history to ~10 MiB of the file.
pub const EVENT_HISTORY: u64 = 10_000;
