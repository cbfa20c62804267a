//! The node's egress proxy: the only way out of an isolated resource (contract section 10).
//!
//! One listener speaks both SOCKS5 (names resolved here, `socks5h`) and HTTP `CONNECT`,
//! told apart by the first byte. A connection is attributed to a resource by, in order:
//! the resource token it presents (SOCKS5 username/password with the token as password,
//! or `Proxy-Authorization: Basic` of `fish:<token>`; processes), the unix socket a
//! driver accepted it on for one resource ([`Proxy::serve_stream`]; VMs whose traffic
//! arrives from a user-mode network stack), or its source address (containers).
//! It may then reach exactly what its definition's `resources.allow` and the node's
//! `proxy.allow` allow; everything else is refused with the protocol's own error
//! (SOCKS5 reply 2, HTTP 403), logged with the application's name and counted in
//! `aquarium_proxy_denied_total{label}`.
//!
//! # Bounds
//! Every client must finish its handshake within [`ProxyLimits::handshake`]; each
//! message has a small maximum size ([`wire`]); a resource holds at most
//! [`ProxyLimits::per_resource`] relayed connections; a relay with no byte either way for
//! [`ProxyLimits::idle`] is closed.
//!
//! # Relaying
//! Once a request is allowed, each direction is read into a buffer of its own and written
//! out (`relay`). Not splice(2): on a bulk download it measured a quarter slower, because
//! handing socket pages on keeps every byte out of cache (see `relay`'s module doc).
//! The leg to the resource is never paced, whatever the host's congestion control: it is
//! local, and bbr's pacing there only costs wake-ups (`local_leg`).

mod directory;
mod local_leg;
mod metrics;
pub mod port;
mod relay;
mod server;
mod stream;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub use directory::{Client, Directory, StoreDirectory};
pub use metrics::ProxyMetrics;
pub use server::{Proxy, ProxyError};

/// The user name a process puts before its token in a proxy URL.
pub const TOKEN_USER: &str = "fish";

/// Limits of the proxy, each with the reason for its default.
#[derive(Clone, Copy, Debug)]
pub struct ProxyLimits {
    /// Time to send the greeting, authentication and request: a real client needs one
    /// round trip; ten seconds covers a loaded machine and frees slow-loris sockets.
    pub handshake: Duration,
    /// Time to open the connection to the target (and resolve its name).
    pub connect: Duration,
    /// A relay with no traffic either way this long is closed; five minutes outlasts
    /// any build tool's pause between requests on a kept-alive connection.
    pub idle: Duration,
    /// Relayed connections one resource may hold at once; a parallel download tool
    /// opens a few dozen, a runaway loop thousands.
    pub per_resource: usize,
    /// Connections at once in the handshake, over all clients.
    pub handshakes: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            idle: Duration::from_secs(300),
            per_resource: 128,
            handshakes: 1024,
        }
    }
}

/// The variables that tell a resource where its proxy is: `FISH_PROXY` (`host:port`),
/// `ALL_PROXY` (SOCKS5 with remote names), `HTTPS_PROXY` and `HTTP_PROXY` (HTTP
/// CONNECT), their lower-case forms, and `NO_PROXY` naming the proxy's host so the
/// metadata endpoint beside it is asked directly. With a token, the URLs carry it as
/// `fish:<token>@`. Plain-HTTP `http_proxy` is left out on purpose: minimal clients
/// (busybox wget) honour it without honouring `no_proxy`, and would send their
/// metadata request to the proxy, which relays only CONNECT.
pub fn environment(proxy: SocketAddr, token: Option<&str>) -> BTreeMap<String, String> {
    let creds = token.map(|t| format!("{TOKEN_USER}:{t}@")).unwrap_or_default();
    let host = proxy.ip().to_string();
    let socks = format!("socks5h://{creds}{proxy}");
    let http = format!("http://{creds}{proxy}");
    let no_proxy = format!("{host},localhost,127.0.0.1");
    BTreeMap::from([
        ("FISH_PROXY".to_owned(), proxy.to_string()),
        ("ALL_PROXY".to_owned(), socks.clone()),
        ("all_proxy".to_owned(), socks),
        ("HTTPS_PROXY".to_owned(), http.clone()),
        ("https_proxy".to_owned(), http.clone()),
        ("HTTP_PROXY".to_owned(), http),
        ("NO_PROXY".to_owned(), no_proxy.clone()),
        ("no_proxy".to_owned(), no_proxy),
    ])
}
