//! The port `proxy.listen: auto` listens on, kept across restarts.
//!
//! A resource learns the proxy's address once, at allocation (`FISH_PROXY`,
//! `HTTPS_PROXY`, … in its environment), and an isolated network's firewall chain lets
//! exactly that port through. A resource adopted after a restart (fishd upgraded,
//! crashed, `kill -9`) keeps both, so the proxy must come back on the same port: the
//! port `auto` chose is kept in `<data-dir>/proxy.port` and bound again at every start.
//!
//! # Guarantees
//! - The remembered port is tried first; only when it cannot be bound (something else
//!   took it while fishd was down) is a new one chosen, with an error in the log
//!   naming both ports and what it breaks, and the new one is remembered.
//! - The file is written atomically and only when the port changed.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use tracing::{error, info, warn};

/// The file in the data dir that keeps the port.
pub const FILE: &str = "proxy.port";

/// The port the last start bound, if it was recorded (an unreadable or malformed file
/// counts as none).
pub fn remembered(data_dir: &Path) -> Option<u16> {
    std::fs::read_to_string(data_dir.join(FILE)).ok()?.trim().parse().ok().filter(|p| *p != 0)
}

/// Binds with `bind(port)` the remembered port, or a new one (`bind(0)`) when there is
/// none or it is taken, and remembers the port bound.
pub async fn bind_remembered<F, Fut, E>(data_dir: &Path, mut bind: F) -> Result<SocketAddr, E>
where
    F: FnMut(u16) -> Fut,
    Fut: Future<Output = Result<SocketAddr, E>>,
    E: std::fmt::Display,
{
    let kept = remembered(data_dir);
    let bound = match kept {
        Some(port) => match bind(port).await {
            Ok(addr) => {
                info!(port, "proxy listens on its port of the last start");
                addr
            }
            Err(e) => {
                let addr = bind(0).await?;
                error!(
                    old_port = port,
                    new_port = addr.port(),
                    error = %e,
                    "the proxy cannot listen on its port of the last start again and moved: resources allocated before this start still have FISH_PROXY/HTTPS_PROXY on port {port} and cannot reach the proxy; deallocate them or free port {port} and restart fishd"
                );
                addr
            }
        },
        None => bind(0).await?,
    };
    if kept != Some(bound.port())
        && let Err(e) = crate::fsutil::write_private(&data_dir.join(FILE), format!("{}\n", bound.port()).as_bytes())
    {
        warn!(port = bound.port(), error = %e, "cannot remember the proxy's port: the next start will choose another");
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Binds 127.0.0.1:`port` for real, keeping the listeners alive.
    fn binder(
        held: &std::sync::Mutex<Vec<std::net::TcpListener>>,
    ) -> impl FnMut(u16) -> std::future::Ready<std::io::Result<SocketAddr>> + '_ {
        move |port| {
            let r = std::net::TcpListener::bind(("127.0.0.1", port)).and_then(|l| {
                let a = l.local_addr()?;
                held.lock().unwrap().push(l);
                Ok(a)
            });
            std::future::ready(r)
        }
    }

    #[tokio::test]
    async fn the_first_start_chooses_a_port_and_the_next_ones_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::sync::Mutex::new(Vec::new());
        assert_eq!(remembered(dir.path()), None);
        let first = bind_remembered(dir.path(), binder(&held)).await.unwrap();
        assert_ne!(first.port(), 0);
        assert_eq!(remembered(dir.path()), Some(first.port()));
        // A restart: the old process (its listener) is gone; the same port again.
        held.lock().unwrap().clear();
        let again = bind_remembered(dir.path(), binder(&held)).await.unwrap();
        assert_eq!(again.port(), first.port());
        assert_eq!(remembered(dir.path()), Some(first.port()));
    }

    #[tokio::test]
    async fn a_taken_port_is_replaced_and_the_new_one_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::sync::Mutex::new(Vec::new());
        let first = bind_remembered(dir.path(), binder(&held)).await.unwrap();
        // Still held (someone else took it while fishd was down): a new port.
        let moved = bind_remembered(dir.path(), binder(&held)).await.unwrap();
        assert_ne!(moved.port(), first.port());
        assert_eq!(remembered(dir.path()), Some(moved.port()));
    }

    #[test]
    fn a_damaged_file_counts_as_no_port() {
        let dir = tempfile::tempdir().unwrap();
        for junk in ["", "0\n", "http\n", "70000\n"] {
            std::fs::write(dir.path().join(FILE), junk).unwrap();
            assert_eq!(remembered(dir.path()), None, "{junk:?}");
        }
        std::fs::write(dir.path().join(FILE), "40123\n").unwrap();
        assert_eq!(remembered(dir.path()), Some(40123));
    }
}
