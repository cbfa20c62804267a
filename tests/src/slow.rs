//! Raw clients for the connection-level defences: a TLS client that speaks bytes, not
//! HTTP, and a slow client that dribbles them, so a test can see when the server cuts it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a slow client ended.
#[derive(Debug)]
pub enum End {
    /// The server closed the connection this long after the client connected.
    Closed(Duration),
    /// Still open when the client gave up.
    Open,
}

/// Reads until the server closes (EOF or error) or `within` passes, while writing
/// one byte of `dribble` a second.
pub async fn dribble_until_closed<S>(mut s: S, dribble: &[u8], started: Instant, within: Duration) -> End
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = [0u8; 1024];
    let mut bytes = dribble.iter().copied();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let deadline = tokio::time::Instant::from_std(started + within);
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return End::Closed(started.elapsed()),
                Ok(_) => {}
            },
            _ = tick.tick() => {
                if let Some(b) = bytes.next()
                    && (s.write_all(&[b]).await.is_err() || s.flush().await.is_err())
                {
                    return End::Closed(started.elapsed());
                }
            }
            _ = tokio::time::sleep_until(deadline) => return End::Open,
        }
    }
}

/// A TLS client (HTTP/1.1 by ALPN) over `tcp`, trusting the CA in `ca_file` (a
/// node's `ca.crt`) for the name 127.0.0.1.
pub async fn tls(ca_file: &Path, tcp: TcpStream) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_alpn(ca_file, tcp, b"http/1.1").await
}

/// [`tls`] offering `alpn` (`b"h2"` for HTTP/2).
pub async fn tls_alpn(
    ca_file: &Path,
    tcp: TcpStream,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    crate::install_crypto();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca_file)?;
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.map_err(std::io::Error::other)?).map_err(std::io::Error::other)?;
    }
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
    connector.connect(name, tcp).await
}

/// Writes `request` and reads the answer's head (up to the blank line), or fails
/// after `within`.
pub async fn answer_head<S>(s: &mut S, request: &[u8], within: Duration) -> std::io::Result<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(request).await?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            Ok(Ok(_)) => {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed without an answer"));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in time")),
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
