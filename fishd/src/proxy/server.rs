//! The proxy's listeners and one connection's life: handshake, identification, the
//! allow decision, the connection to the target, the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use api_types::AllowRule;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::stream::Stream;
use super::wire::{self, Reply, Target, WireError};
use super::{Client, Directory, ProxyLimits, ProxyMetrics, TOKEN_USER, local_leg, relay};

/// Why the proxy cannot listen.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The node's proxy: cheap to clone, every clone is the same proxy.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    directory: Arc<dyn Directory>,
    node_allow: Vec<AllowRule>,
    limits: ProxyLimits,
    metrics: ProxyMetrics,
    /// Relayed connections per resource.
    active: Mutex<HashMap<Uuid, usize>>,
    handshakes: Arc<Semaphore>,
    /// Shared listeners' addresses.
    shared: Mutex<Vec<SocketAddr>>,
    stop: CancellationToken,
}

/// What the client asked for, and how to answer it.
struct Request {
    http: bool,
    target: Target,
    token: Option<String>,
    /// Bytes the client sent after its request (its first payload).
    pending: Vec<u8>,
}

/// How a refused request is answered.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    NotAllowed,
    Unidentified,
    Busy,
    Unreachable,
    Refused,
}

impl Proxy {
    /// A proxy answering from `directory`, adding `node_allow` to every resource's rules.
    pub fn new(
        directory: Arc<dyn Directory>,
        node_allow: Vec<AllowRule>,
        limits: ProxyLimits,
        metrics: ProxyMetrics,
        stop: CancellationToken,
    ) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                directory,
                node_allow,
                limits,
                metrics,
                active: Mutex::new(HashMap::new()),
                handshakes: Arc::new(Semaphore::new(limits.handshakes)),
                shared: Mutex::new(Vec::new()),
                stop,
            }),
        }
    }

    /// Listens on `addr` for any resource (identified by token or source address);
    /// returns the bound address (port 0 picks one).
    pub async fn listen(&self, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| ProxyError::Listen { addr, source })?;
        let bound = listener.local_addr().map_err(|source| ProxyError::Listen { addr, source })?;
        self.inner.shared.lock().unwrap_or_else(|e| e.into_inner()).push(bound);
        tracing::info!(addr = %bound, "proxy listening");
        tokio::spawn(accept_loop(self.inner.clone(), listener, self.inner.stop.clone()));
        Ok(bound)
    }

    /// The addresses of the shared listeners.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.inner.shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Serves one connection as resource `owner`'s, for resources whose traffic reaches
    /// the host with no address of their own (a VM's user-mode network forwards from
    /// 127.0.0.1): the caller accepted it on a socket only that resource's relay can open
    /// (a unix socket in a directory of fishd's). A token naming another resource is
    /// refused, so one identity never speaks for another. Takes no TCP stream on
    /// purpose: any local process can connect to a loopback port.
    pub fn serve_stream(&self, stream: UnixStream, owner: Uuid) {
        let Ok(permit) = self.inner.handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%owner, "proxy: too many handshakes at once; connection closed");
            return;
        };
        tokio::spawn(serve(self.inner.clone(), stream.into(), Peer::Owned(owner), permit));
    }
}

/// Where a connection came from, which says who it may be.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// A TCP client: identified by its token, else by its source address.
    Addr(SocketAddr),
    /// A connection handed in for one resource.
    Owned(Uuid),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Addr(a) => a.fmt(f),
            Peer::Owned(uid) => write!(f, "the socket of {uid}"),
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = inner.handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "proxy: too many handshakes at once; connection closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        local_leg::unpace(&stream);
        tokio::spawn(serve(inner.clone(), stream.into(), Peer::Addr(peer), permit));
    }
}

async fn serve(inner: Arc<Inner>, mut stream: Stream, peer: Peer, permit: tokio::sync::OwnedSemaphorePermit) {
    let request = match tokio::time::timeout(inner.limits.handshake, handshake(&mut stream)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "proxy handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "proxy handshake timed out");
            return;
        }
    };
    drop(permit);
    let client = match (peer, &request.token) {
        (Peer::Addr(_), Some(token)) => inner.directory.by_token(token),
        (Peer::Addr(addr), None) => inner.directory.by_addr(addr.ip()),
        (Peer::Owned(uid), None) => inner.directory.by_uid(uid),
        (Peer::Owned(uid), Some(token)) => {
            inner.directory.by_token(token).filter(|c| c.uid == uid).and_then(|_| inner.directory.by_uid(uid))
        }
    };
    let Some(client) = client else {
        inner.metrics.denied("unknown");
        tracing::warn!(%peer, target = %request.target, "proxy refused a client that is no running resource");
        refuse(&mut stream, request.http, Refusal::Unidentified).await;
        return;
    };
    let span = tracing::info_span!("proxy", application = %client.name, uid = %client.uid);
    handle(inner, stream, request, client).instrument(span).await;
}

async fn handle(inner: Arc<Inner>, mut stream: Stream, request: Request, client: Client) {
    let Some(_slot) = Slot::take(&inner, client.uid) else {
        tracing::warn!(target = %request.target, limit = inner.limits.per_resource, "proxy connection limit reached");
        refuse(&mut stream, request.http, Refusal::Busy).await;
        return;
    };
    let rules: Vec<&AllowRule> = client.allow.iter().chain(inner.node_allow.iter()).collect();
    let decided = tokio::time::timeout(inner.limits.connect, decide(&rules, &request.target)).await;
    let candidates = match decided {
        Ok(Ok(candidates)) => candidates,
        Ok(Err(Refusal::NotAllowed)) => {
            inner.metrics.denied(&client.label);
            tracing::warn!(target = %request.target, label = %client.label, "proxy refused: not in the allow list");
            refuse(&mut stream, request.http, Refusal::NotAllowed).await;
            return;
        }
        Ok(Err(other)) => {
            tracing::info!(target = %request.target, "proxy: target name does not resolve");
            refuse(&mut stream, request.http, other).await;
            return;
        }
        Err(_) => {
            tracing::info!(target = %request.target, "proxy: resolving the target timed out");
            refuse(&mut stream, request.http, Refusal::Unreachable).await;
            return;
        }
    };
    let Some(upstream) = connect(&candidates, inner.limits.connect).await else {
        tracing::info!(target = %request.target, "proxy: target refused or unreachable");
        refuse(&mut stream, request.http, Refusal::Refused).await;
        return;
    };
    let ok: &[u8] =
        if request.http { b"HTTP/1.1 200 Connection established\r\n\r\n" } else { &wire::reply(Reply::Succeeded) };
    if stream.write_all(ok).await.is_err() {
        return;
    }
    inner.metrics.connected(&client.label);
    tracing::debug!(target = %request.target, "proxy relaying");
    let (up, down) = relay::relay(stream, upstream.into(), &request.pending, inner.limits.idle).await;
    inner.metrics.relayed(&client.label, up, down);
    tracing::debug!(target = %request.target, up, down, "proxy relay ended");
}

/// A relayed connection counted against its resource's cap while it lives.
struct Slot {
    inner: Arc<Inner>,
    uid: Uuid,
}

impl Slot {
    fn take(inner: &Arc<Inner>, uid: Uuid) -> Option<Slot> {
        let mut active = inner.active.lock().unwrap_or_else(|e| e.into_inner());
        let n = active.entry(uid).or_insert(0);
        if *n >= inner.limits.per_resource {
            return None;
        }
        *n += 1;
        Some(Slot { inner: inner.clone(), uid })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = active.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                active.remove(&self.uid);
            }
        }
    }
}

/// The addresses the client may be connected to for `target`, or why not. A name
/// allowed by a name rule goes wherever it resolves; otherwise only resolved addresses
/// an address rule allows remain. A name no rule could allow is refused unresolved.
async fn decide(rules: &[&AllowRule], target: &Target) -> Result<Vec<SocketAddr>, Refusal> {
    let port = target.port();
    match target {
        Target::Addr(addr) => {
            if rules.iter().any(|r| r.allows_addr(addr.ip(), port)) {
                Ok(vec![*addr])
            } else {
                Err(Refusal::NotAllowed)
            }
        }
        Target::Name(name, _) => {
            let by_name = rules.iter().any(|r| r.allows_name(name, port));
            let any_addr_rule = rules.iter().any(|r| r.is_address_rule());
            if !by_name && !any_addr_rule {
                return Err(Refusal::NotAllowed);
            }
            let resolved: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), port)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) if by_name => return Err(Refusal::Unreachable),
                Err(_) => return Err(Refusal::NotAllowed),
            };
            let allowed: Vec<SocketAddr> = if by_name {
                resolved
            } else {
                resolved.into_iter().filter(|a| rules.iter().any(|r| r.allows_addr(a.ip(), port))).collect()
            };
            match allowed.is_empty() {
                true if by_name => Err(Refusal::Unreachable),
                true => Err(Refusal::NotAllowed),
                false => Ok(allowed),
            }
        }
    }
}

async fn connect(candidates: &[SocketAddr], within: std::time::Duration) -> Option<TcpStream> {
    for addr in candidates {
        if let Ok(Ok(s)) = tokio::time::timeout(within, TcpStream::connect(addr)).await {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
    }
    None
}

/// Answers a refusal in the client's protocol, then closes.
async fn refuse(stream: &mut Stream, http: bool, why: Refusal) {
    let bytes: Vec<u8> = if http {
        let (status, text) = match why {
            Refusal::NotAllowed => ("403 Forbidden", "not in this resource's allow list"),
            Refusal::Unidentified => ("403 Forbidden", "no running resource has this address or token"),
            Refusal::Busy => ("429 Too Many Requests", "this resource holds too many proxy connections"),
            Refusal::Unreachable => ("504 Gateway Timeout", "the target does not resolve or answer"),
            Refusal::Refused => ("502 Bad Gateway", "the target refused the connection"),
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
            text.len() + 1
        )
        .into_bytes()
    } else {
        let code = match why {
            Refusal::NotAllowed | Refusal::Unidentified => Reply::NotAllowed,
            Refusal::Busy => Reply::GeneralFailure,
            Refusal::Unreachable => Reply::HostUnreachable,
            Refusal::Refused => Reply::ConnectionRefused,
        };
        wire::reply(code).to_vec()
    };
    let _ = stream.write_all(&bytes).await;
    let _ = stream.shutdown().await;
}

/// Reads more bytes into `buf`, refusing to grow it past `max`.
async fn read_more(stream: &mut Stream, buf: &mut Vec<u8>, max: usize) -> std::io::Result<()> {
    if buf.len() >= max {
        return Err(std::io::Error::other("message too long"));
    }
    let mut chunk = [0u8; 1024];
    let room = (max - buf.len()).min(chunk.len());
    let n = stream.read(&mut chunk[..room]).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

/// Parses one message with `parse`, reading as needed; the message is removed from `buf`.
async fn next_message<T>(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    max: usize,
    parse: fn(&[u8]) -> wire::Parsed<T>,
) -> std::io::Result<Result<T, WireError>> {
    loop {
        match parse(buf) {
            Ok(Some((value, used))) => {
                buf.drain(..used);
                return Ok(Ok(value));
            }
            Ok(None) => read_more(stream, buf, max).await?,
            Err(e) => return Ok(Err(e)),
        }
    }
}

/// The greeting, authentication and request of either protocol. Protocol errors are
/// answered here, in the client's protocol; the `Err` says why the connection ends.
async fn handshake(stream: &mut Stream) -> std::io::Result<Request> {
    let mut buf = Vec::with_capacity(512);
    read_more(stream, &mut buf, wire::MAX_HTTP_HEAD + 1).await?;
    match buf.first().copied() {
        Some(wire::SOCKS5) => socks_handshake(stream, buf).await,
        Some(b) if b.is_ascii_uppercase() => http_handshake(stream, buf).await,
        // SOCKS4 (0x04), TLS (0x16) or noise: nothing this proxy speaks; close at once.
        other => Err(std::io::Error::other(format!("first byte {other:?} is neither SOCKS5 nor an HTTP method"))),
    }
}

/// Largest SOCKS5 messages: greeting 2+255, RFC 1929 3+255+255, request 7+255.
const SOCKS_MAX: usize = 3 + 255 + 255;

async fn socks_handshake(stream: &mut Stream, mut buf: Vec<u8>) -> std::io::Result<Request> {
    let greeting =
        next_message(stream, &mut buf, SOCKS_MAX, wire::parse_greeting).await?.map_err(std::io::Error::other)?;
    let method = greeting.choose();
    stream.write_all(&[wire::SOCKS5, method]).await?;
    if method == wire::METHOD_UNACCEPTABLE {
        return Err(std::io::Error::other("no acceptable authentication method"));
    }
    let mut token = None;
    if method == wire::METHOD_USERPASS {
        let (_user, pass) =
            next_message(stream, &mut buf, SOCKS_MAX, wire::parse_userpass).await?.map_err(std::io::Error::other)?;
        // Accepted here; a token that names no running resource is refused at the request.
        stream.write_all(&[1, 0]).await?;
        token = Some(pass);
    }
    match next_message(stream, &mut buf, SOCKS_MAX, wire::parse_request).await? {
        Ok(target) => Ok(Request { http: false, target, token, pending: buf }),
        Err(e) => {
            let code = match e {
                WireError::Command(_) => Reply::CommandNotSupported,
                WireError::AddressType(_) => Reply::AddressTypeNotSupported,
                _ => Reply::GeneralFailure,
            };
            let _ = stream.write_all(&wire::reply(code)).await;
            Err(std::io::Error::other(e))
        }
    }
}

async fn http_handshake(stream: &mut Stream, mut buf: Vec<u8>) -> std::io::Result<Request> {
    match next_message(stream, &mut buf, wire::MAX_HTTP_HEAD + 1, wire::parse_http_head).await {
        Ok(Ok(connect)) => {
            let token = connect.authorization.as_deref().and_then(basic_token);
            Ok(Request { http: true, target: connect.target, token, pending: buf })
        }
        Ok(Err(e)) => {
            let status = match e {
                WireError::Method(_) => "405 Method Not Allowed",
                WireError::HeadTooLong => "431 Request Header Fields Too Large",
                _ => "400 Bad Request",
            };
            let text = e.to_string();
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
                text.len() + 1
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            Err(std::io::Error::other(e))
        }
        Err(e) if e.to_string() == "message too long" => {
            let _ =
                stream.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n").await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// The token in `Basic base64(fish:<token>)` (any user name is accepted).
fn basic_token(value: &str) -> Option<String> {
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, token) = decoded.split_once(':')?;
    if user != TOKEN_USER {
        tracing::debug!(user, "proxy credentials with an unexpected user name; using the password as token");
    }
    Some(token.to_owned())
}
