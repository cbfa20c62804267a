//! Connection-level defences of every TLS listener (the API, the gates' webhooks), below HTTP: a cap on open connections, and a deadline
//! for a client to start talking once its TLS handshake is done.
//!
//! # Guarantees
//! - At most `max_connections` TLS connections are open at once; one more is closed
//!   as soon as it is accepted (before its handshake), so a flood of idle sockets
//!   cannot exhaust fishd's file descriptors or memory.
//! - A TLS handshake must finish within the header read timeout.
//! - After the handshake, the first bytes of the request must arrive within the
//!   header read timeout too: hyper's HTTP/1 header timeout only starts once the
//!   protocol is known, and the protocol sniffing before it (HTTP/1 or the HTTP/2
//!   preface) has no deadline of its own. Once the bytes show HTTP/1, hyper's
//!   `header_read_timeout` takes over for every request of the connection; once the
//!   24-byte HTTP/2 preface is in, HTTP/2's own flow applies.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsAcceptor;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use rustls_pki_types::CertificateDer;

/// The verified client certificate of the connection, if the client sent one, and its
/// common name: what the node-to-node peer check (`api::cluster::PeerNode`) reads from
/// a request.
///
/// The name is read once per connection, not per request: a peer sends all its Raft
/// messages and forwarded writes over one connection, and parsing its certificate for
/// each of them was about 1 % of a cluster node's work in a burst.
#[derive(Clone, Debug, Default)]
pub struct PeerCert {
    pub cert: Option<Arc<CertificateDer<'static>>>,
    /// `None` without a certificate, or when it has no UTF-8 common name.
    pub common_name: Option<Arc<str>>,
}

impl PeerCert {
    /// The peer of a connection that presented `cert` (verified).
    pub fn of(cert: Option<Arc<CertificateDer<'static>>>) -> PeerCert {
        let common_name = cert.as_deref().and_then(|c| crate::tls::common_name(c.as_ref())).map(Arc::from);
        PeerCert { cert, common_name }
    }
}

/// What every HTTP/2 connection starts with (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// TLS with a connection cap and a first-bytes deadline; see the module docs.
#[derive(Clone)]
pub struct GuardedAcceptor {
    tls: RustlsAcceptor,
    permits: Arc<Semaphore>,
    first_bytes: Duration,
}

impl GuardedAcceptor {
    /// `timeout` bounds the handshake and, separately, the wait for the first bytes.
    pub fn new(tls: RustlsAcceptor, max_connections: usize, timeout: Duration) -> Self {
        GuardedAcceptor {
            tls: tls.handshake_timeout(timeout),
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            first_bytes: timeout,
        }
    }
}

type AcceptFuture<T, S> = Pin<Box<dyn Future<Output = io::Result<(Guarded<T>, S)>> + Send>>;
/// The TLS stream of an accepted connection.
type Tls<S> = <RustlsAcceptor as Accept<TcpStream, S>>::Stream;

impl<S: Send + 'static> Accept<TcpStream, S> for GuardedAcceptor {
    type Stream = Guarded<Tls<S>>;
    type Service = WithPeer<S>;
    type Future = AcceptFuture<Tls<S>, WithPeer<S>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Logged at debug: under a flood, one line per refused socket would be a
            // second attack, on the log.
            tracing::debug!(peer = ?stream.peer_addr().ok(), "connection limit reached: closing a new connection");
            return Box::pin(std::future::ready(Err(io::Error::other("connection limit reached"))));
        };
        // TCP_NODELAY: under Nagle, the last segment of a response larger than one
        // segment waits for the client's delayed ACK (~40 ms); fish-bench saw every list
        // of 100 applications take 44 ms that way.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let handshake = self.tls.accept(stream, service);
        let first_bytes = self.first_bytes;
        Box::pin(async move {
            let (tls, service) = handshake.await?;
            // rustls verified it against the cluster CA during the handshake.
            let peer =
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned()));
            let service = WithPeer { inner: service, peer: PeerCert::of(peer) };
            Ok((Guarded::new(tls, permit, first_bytes), service))
        })
    }
}

/// A connection's service that hands every request the connection's verified
/// client certificate, for the node-to-node peer check.
#[derive(Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: PeerCert,
}

impl<B, S: tower::Service<axum::http::Request<B>>> tower::Service<axum::http::Request<B>> for WithPeer<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}

/// A connection holding its slot until dropped, and failing its reads if the
/// client has not started a request within the deadline.
pub struct Guarded<T> {
    inner: T,
    _permit: OwnedSemaphorePermit,
    /// Running until the first bytes decide the protocol.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How much of the HTTP/2 preface the bytes so far match.
    matched: usize,
}

impl<T> Guarded<T> {
    fn new(inner: T, permit: OwnedSemaphorePermit, first_bytes: Duration) -> Self {
        Guarded { inner, _permit: permit, deadline: Some(Box::pin(tokio::time::sleep(first_bytes))), matched: 0 }
    }

    /// Follows the bytes read against the HTTP/2 preface; the deadline ends once
    /// they leave it (HTTP/1: hyper's header timeout runs from here) or complete it.
    fn saw(&mut self, bytes: &[u8]) {
        if self.deadline.is_none() {
            return;
        }
        for b in bytes {
            if H2_PREFACE.get(self.matched) != Some(b) {
                self.deadline = None;
                return;
            }
            self.matched += 1;
            if self.matched == H2_PREFACE.len() {
                self.deadline = None;
                return;
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.saw(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.deadline = None;
                tracing::debug!("client sent no request in time after the TLS handshake: closing");
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time")))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn permit() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_the_handshake_is_cut() {
        let (client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, permit(), Duration::from_secs(2));
        let mut buf = [0u8; 8];
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http1_byte_ends_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, permit(), Duration::from_secs(2));
        client.write_all(b"G").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.unwrap(), 1);
        // From here hyper's header timeout rules; this layer waits forever.
        let waited = tokio::time::timeout(Duration::from_secs(60), g.read(&mut buf)).await;
        assert!(waited.is_err(), "the read should still be pending");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dribbled_h2_preface_is_cut() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, permit(), Duration::from_secs(2));
        client.write_all(b"PRI * ").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.unwrap(), 6);
        assert_eq!(g.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // A full preface in time ends the deadline.
        let (mut client, server) = tokio::io::duplex(64);
        let mut g = Guarded::new(server, permit(), Duration::from_secs(2));
        client.write_all(H2_PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(g.read(&mut buf).await.unwrap(), H2_PREFACE.len());
        assert!(g.deadline.is_none());
    }
}
