//! Moves bytes both ways between a client and its target until both directions ended or
//! neither moved a byte for the idle timeout.
//!
//! Each direction runs on its own: it reads what its source has queued into a buffer of
//! its own and writes it to the destination; when its source ends it shuts down the
//! destination's write side (the FIN is forwarded) while the other direction keeps
//! flowing. A failed write ends the whole relay. Bytes are counted as delivered to the
//! destination.
//!
//! # Why a copy and not splice(2)
//! Until session 8 the bytes went socket → pipe → socket by splice(2), which never copies
//! them through user space. Measured on a bulk download (`benches/proxy.rs`, and an A/B
//! harness with both relays in one run), a copy through one reused buffer costs about a
//! quarter less CPU per byte and moves about a quarter more: splice hands the source
//! socket's pages on to the destination's queue, so a sender on this host cannot reuse
//! its socket's page fragments and writes every byte into memory not in cache, and the
//! reader reads from memory just as cold; the buffer here is read and written while it is
//! still in cache. The copies themselves are cheap next to that (issue 17, session 8).
//!
//! # Memory
//! A direction's buffer starts at [`BUF_MIN`] and becomes [`BUF_MAX`] the first time a read
//! fills it: an interactive connection keeps a small buffer, a bulk one gets the size that
//! moves it in few system calls at once (doubling step by step measured slower: a relay
//! that keeps up with its sender rarely fills a buffer, so it stayed small). It lives as
//! long as its direction. Bulk buffers are counted over all relays of the process
//! ([`BULK_BUDGET`]): past the budget a direction keeps its small buffer, slower but
//! never refused, so many parallel downloads cannot take the node's memory.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{Shutdown, shutdown};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::stream::Stream;

/// First buffer of a direction: what a request/response exchange needs in one read.
const BUF_MIN: usize = 64 * 1024;

/// Buffer of a bulk direction. On a bulk download 2 MiB reads measured a few points
/// faster than 1 MiB, and 256 KiB or 512 KiB a fifth slower (more system calls, wake-ups
/// and acknowledgements per byte); 4 MiB no faster than 2. A download holds one of these
/// and one [`BUF_MIN`] for its requests.
const BUF_MAX: usize = 2 << 20;

/// [`BUF_MAX`] buffers held at once by all relays of this process (128 MiB). A resource
/// may hold 128 connections, and a parallel download tool fills most of them.
const BULK_BUDGET: usize = 64;

/// The process's bulk buffers in use.
static BULK: Budget = Budget::new(BULK_BUDGET);

/// A count of buffers that may be held at once.
struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    const fn new(limit: usize) -> Budget {
        Budget { limit, used: AtomicUsize::new(0) }
    }

    /// One buffer's worth, if the budget has room; given back when the guard drops.
    fn take(&self) -> Option<BulkGuard<'_>> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.limit).then_some(n + 1))
            .ok()
            .map(|_| BulkGuard(self))
    }
}

/// One bulk buffer counted in its [`Budget`].
struct BulkGuard<'a>(&'a Budget);

impl Drop for BulkGuard<'_> {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Relays until both directions ended or the link was idle for `idle`; returns the bytes
/// delivered (client to target, target to client). `pending` is what the client sent after
/// its request, already read, to be delivered first.
pub async fn relay(client: Stream, target: Stream, pending: &[u8], idle: Duration) -> (u64, u64) {
    relay_in(&BULK, client, target, pending, idle).await
}

/// [`relay`] with the bulk buffers counted in `budget` (tests use a budget of their own).
async fn relay_in(budget: &Budget, client: Stream, mut target: Stream, pending: &[u8], idle: Duration) -> (u64, u64) {
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    if !pending.is_empty() {
        if target.write_all(pending).await.is_err() {
            return (0, 0);
        }
        up.store(pending.len() as u64, Ordering::Relaxed);
    }
    let last = Activity::new();
    let both = async {
        tokio::try_join!(pump(budget, &client, &target, &up, &last), pump(budget, &target, &client, &down, &last))
    };
    let quiet = async {
        loop {
            let deadline = last.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        ended = both => if let Err(e) = ended {
            tracing::debug!(error = %e, "proxy relay: a write failed; closing both ways");
        },
        () = quiet => tracing::debug!(?idle, "proxy relay idle; closing"),
    }
    (up.into_inner(), down.into_inner())
}

/// One direction: `from` to `to` until `from` ends (then `to`'s write side is shut down),
/// counting delivered bytes in `moved` and stamping `last` on every move. An error reading
/// `from` ends it as its end would; an error writing `to` is returned.
async fn pump(budget: &Budget, from: &Stream, to: &Stream, moved: &AtomicU64, last: &Activity) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_MIN];
    let mut bulk = None;
    loop {
        let n = match read(from, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        last.touch();
        let mut sent = 0;
        while sent < n {
            let m = write(to, &buf[sent..n]).await?;
            sent += m;
            moved.fetch_add(m as u64, Ordering::Relaxed);
            last.touch();
        }
        if n == buf.len() && bulk.is_none() {
            bulk = budget.take();
            if bulk.is_some() {
                buf = vec![0u8; BUF_MAX];
            }
        }
    }
    // The source ended: forward its FIN, keep the other direction open. A destination
    // already gone has nothing to be told.
    let _ = shutdown(to.as_fd().as_raw_fd(), Shutdown::Write);
    Ok(())
}

/// When a byte last moved either way. Atomic rather than a `Cell` only so the relay's
/// future stays `Send`: both directions run in one task.
struct Activity {
    since: Instant,
    nanos: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { since: Instant::now(), nanos: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }
}

async fn read(from: &Stream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn write(to: &Stream, buf: &[u8]) -> io::Result<usize> {
    loop {
        to.writable().await?;
        match to.try_write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Every test finishes far below this; a hang fails instead of stalling the suite.
    const LIMIT: Duration = Duration::from_secs(30);

    /// Both ends of one loopback connection: (the outside party, the proxy's side).
    async fn connection() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let outside = TcpStream::connect(l.local_addr().expect("address")).await.expect("connect");
        let (inside, _) = l.accept().await.expect("accept");
        (outside, inside)
    }

    /// Bytes that differ along the stream, so a lost, doubled or reordered piece shows.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Several MiB each way (past any socket buffer and the largest relay buffer), the
    /// client's FIN reaching the target while the target's answer has not started, a
    /// client reading in small slow pieces, and the counts the metrics get.
    #[tokio::test]
    async fn a_relay_moves_both_ways_and_forwards_each_fin() {
        relays_both_ways_and_forwards_each_fin(&Budget::new(BULK_BUDGET)).await;
    }

    /// With the bulk budget spent, a relay still moves everything, through its small
    /// buffers.
    #[tokio::test]
    async fn a_relay_past_the_bulk_budget_moves_everything_through_small_buffers() {
        let spent = Budget::new(0);
        assert!(spent.take().is_none());
        relays_both_ways_and_forwards_each_fin(&spent).await;
    }

    #[test]
    fn the_bulk_budget_counts_buffers_held_and_given_back() {
        let budget = Budget::new(2);
        let (a, b) = (budget.take(), budget.take());
        assert!(a.is_some() && b.is_some());
        assert!(budget.take().is_none(), "a third buffer past a budget of two");
        drop(a);
        assert!(budget.take().is_some(), "a buffer given back makes room");
    }

    async fn relays_both_ways_and_forwards_each_fin(budget: &Budget) {
        tokio::time::timeout(LIMIT, async {
            let (mut client, client_side) = connection().await;
            let (mut target, target_side) = connection().await;
            let up = pattern(3 * 1024 * 1024 + 17, 1);
            let down = pattern(5 * 1024 * 1024 + 3, 2);
            let parties = async {
                client.write_all(&up).await.expect("client writes");
                client.shutdown().await.expect("client FIN");
                let mut got = Vec::new();
                target.read_to_end(&mut got).await.expect("target reads");
                assert!(got.starts_with(b"early ") && got[6..] == up[..], "the target got other bytes");
                // Half-closed: the client's FIN arrived, the other way still flows.
                target.write_all(&down).await.expect("target answers after the client's FIN");
                target.shutdown().await.expect("target FIN");
                let mut got = Vec::new();
                let mut piece = vec![0u8; 64 * 1024];
                loop {
                    let n = client.read(&mut piece).await.expect("client reads");
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&piece[..n]);
                    // A slow reader: the relay meets a full socket and must wait, not spin or drop.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                assert!(got == down, "the client got {} other bytes", got.len());
            };
            let relayed = relay_in(budget, client_side.into(), target_side.into(), b"early ", Duration::from_secs(10));
            let (counts, ()) = tokio::join!(relayed, parties);
            assert_eq!(counts, (up.len() as u64 + 6, down.len() as u64), "bytes counted");
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn a_relay_closes_both_ends_after_the_idle_timeout_and_not_before() {
        tokio::time::timeout(LIMIT, async {
            let (mut client, client_side) = connection().await;
            let (mut target, target_side) = connection().await;
            let idle = Duration::from_millis(300);
            let relayed = relay(client_side.into(), target_side.into(), b"", idle);
            // One byte each way early on: the timeout counts from the last one.
            let parties = async {
                client.write_all(b"?").await.expect("write");
                let mut one = [0u8; 1];
                target.read_exact(&mut one).await.expect("read");
                // The relay moves the last byte after this instant.
                let before_last = Instant::now();
                target.write_all(b"!").await.expect("write");
                client.read_exact(&mut one).await.expect("read");
                before_last
            };
            let (counts, before_last) = tokio::join!(relayed, parties);
            assert_eq!(counts, (1, 1));
            assert!(Instant::now() >= before_last + idle, "closed before the idle timeout");
            let mut rest = Vec::new();
            assert_eq!(client.read_to_end(&mut rest).await.expect("client sees the close"), 0);
            assert_eq!(target.read_to_end(&mut rest).await.expect("target sees the close"), 0);
        })
        .await
        .expect("timed out");
    }
}
