//! Copies bytes both ways between a client and its target until both sides are done or
//! neither has sent a byte for the idle timeout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Per-direction buffer: large enough that a bulk download moves in few syscalls.
const BUF: usize = 64 * 1024;

/// Relays until both directions ended or the link was idle for `idle`; returns the bytes
/// sent (client to target, target to client). `pending` is what the client sent after
/// its request, already read, to be delivered first.
pub async fn relay(client: TcpStream, target: TcpStream, pending: &[u8], idle: Duration) -> (u64, u64) {
    let (mut cr, mut cw) = client.into_split();
    let (mut tr, mut tw) = target.into_split();
    let mut up = 0u64;
    let mut down = 0u64;
    if !pending.is_empty() {
        if tw.write_all(pending).await.is_err() {
            return (0, 0);
        }
        up += pending.len() as u64;
    }
    let mut ubuf = vec![0u8; BUF];
    let mut dbuf = vec![0u8; BUF];
    let (mut up_open, mut down_open) = (true, true);
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    while up_open || down_open {
        tokio::select! {
            r = cr.read(&mut ubuf), if up_open => match r {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = tw.shutdown().await;
                }
                Ok(n) => {
                    if tw.write_all(&ubuf[..n]).await.is_err() { break; }
                    up += n as u64;
                }
            },
            r = tr.read(&mut dbuf), if down_open => match r {
                Ok(0) | Err(_) => {
                    down_open = false;
                    let _ = cw.shutdown().await;
                }
                Ok(n) => {
                    if cw.write_all(&dbuf[..n]).await.is_err() { break; }
                    down += n as u64;
                }
            },
            _ = &mut idle_timer => {
                tracing::debug!(?idle, "proxy relay idle; closing");
                break;
            }
        }
        idle_timer.as_mut().reset(tokio::time::Instant::now() + idle);
    }
    (up, down)
}
