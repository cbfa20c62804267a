//! How a guest reaches its metadata, identified as its own application.
//!
//! QEMU's user network forwards every guest connection to `10.0.2.100:80` to a fresh
//! relay process (`guestfwd=...-cmd:socat - UNIX-CONNECT:<dir>/meta.sock`), and fishd
//! serves the metadata endpoint on that application's own socket. The socket, not an
//! address or a token, says who is asking: only this machine's relay connects to it
//! (the directory is fishd's, mode 0700), so a guest can read its own metadata and no
//! other. The runtime provides the server ([`MetaServer`]); the driver binds the socket
//! when it starts a machine, again when it adopts one after a restart, and stops
//! serving when the machine is released. Drivers never touch the store: the server the
//! runtime hands in does.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Serves the node's metadata endpoint on `listener` to application `uid`, with the
/// variables only the driver knows added (the guest's proxy address), until the token
/// is cancelled. Provided by the runtime, which owns the store.
pub type MetaServer = Arc<dyn Fn(UnixListener, Uuid, BTreeMap<String, String>, CancellationToken) + Send + Sync>;

/// The sockets being served, by application.
#[derive(Default)]
pub struct MetaSockets {
    server: OnceLock<MetaServer>,
    served: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl MetaSockets {
    /// Sets the server once; later calls are ignored.
    pub fn set_server(&self, server: MetaServer) {
        let _ = self.server.set(server);
    }

    /// Serves `uid` on `path`, adding `vars`, unless it is already served; a no-op
    /// before the runtime set the server (it serves every running machine when it does).
    pub fn serve(&self, uid: Uuid, path: &Path, vars: BTreeMap<String, String>) -> std::io::Result<()> {
        let Some(server) = self.server.get() else { return Ok(()) };
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if served.contains_key(&uid) {
            return Ok(());
        }
        let listener = bind_fresh(path)?;
        let stop = CancellationToken::new();
        server(listener, uid, vars, stop.clone());
        served.insert(uid, stop);
        tracing::debug!(%uid, path = %path.display(), "serving metadata to the machine");
        Ok(())
    }

    /// Stops serving `uid` (its socket file goes with the machine's directory).
    pub fn stop(&self, uid: Uuid) {
        if let Some(stop) = self.served.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid) {
            stop.cancel();
        }
    }
}

/// Binds a unix socket at `path`, replacing a socket file left by an earlier fishd
/// (nobody listens on it any more).
pub fn bind_fresh(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// The relay command QEMU runs per guest connection: `socat` to the socket, the path
/// quoted for the shell-like parsing QEMU applies.
pub fn relay_command(socat: &Path, socket: &Path) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    format!("{} -t 30 - UNIX-CONNECT:{}", quote(socat), quote(socket))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn serves_each_application_on_its_own_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sockets = MetaSockets::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // Before the server is set: nothing is bound.
        sockets.serve(a, &dir.path().join("a.sock"), BTreeMap::new()).unwrap();
        assert!(!dir.path().join("a.sock").exists());
        sockets.set_server(Arc::new(|listener: UnixListener, uid: Uuid, _vars, stop: CancellationToken| {
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        Ok((mut s, _)) = listener.accept() => { let _ = s.write_all(uid.to_string().as_bytes()).await; }
                    }
                }
            });
        }));
        sockets.serve(a, &dir.path().join("a.sock"), BTreeMap::new()).unwrap();
        sockets.serve(a, &dir.path().join("a.sock"), BTreeMap::new()).unwrap();
        sockets.serve(b, &dir.path().join("b.sock"), BTreeMap::new()).unwrap();
        for (uid, name) in [(a, "a.sock"), (b, "b.sock")] {
            let mut s = tokio::net::UnixStream::connect(dir.path().join(name)).await.unwrap();
            let mut got = String::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut got)).await.unwrap().unwrap();
            assert_eq!(got, uid.to_string());
        }
        sockets.stop(a);
        sockets.stop(a);
    }

    #[test]
    fn relay_quotes_paths() {
        assert_eq!(
            relay_command(Path::new("/usr/bin/socat"), Path::new("/d/it's/meta.sock")),
            r"'/usr/bin/socat' -t 30 - UNIX-CONNECT:'/d/it'\''s/meta.sock'"
        );
    }
}
