//! How a guest reaches the node's proxy, identified as its own application.
//!
//! QEMU's user network makes every connection of the guest from the host's loopback, so
//! the proxy cannot tell machines apart by address, and a guest holds no token. The
//! guest's proxy address ([`GUEST_PROXY`]) is forwarded like its metadata: one `socat`
//! per connection to `<dir>/proxy.sock`, and fishd hands each connection accepted there
//! to the proxy as that application's ([`Proxy::serve_stream`]). The socket is the
//! identity: it sits in the machine's directory (fishd's, mode 0700), and the hop never
//! goes over TCP, where any local process could connect. It is also the stable part:
//! QEMU's command line cannot change after start, and a later fishd binds the same path
//! again when it adopts the machine.
//! The guest learns the address from its metadata (`FISH_PROXY`, `ALL_PROXY`,
//! `HTTPS_PROXY`, ..., [`guest_environment`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::machine::META_GUEST_ADDR;
use crate::proxy::Proxy;

/// Where a guest finds the node's proxy: next to its metadata address (10.0.2.100), on
/// the port HTTP proxies usually have. SOCKS5 and HTTP `CONNECT` on the same port.
pub const GUEST_PROXY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 101)), 3128);

/// The proxy variables a guest gets in its metadata, as a container gets them in its
/// environment; `NO_PROXY` also names the metadata address, which is asked directly.
pub fn guest_environment() -> BTreeMap<String, String> {
    let mut env = crate::proxy::environment(GUEST_PROXY, None);
    let no_proxy = format!("{META_GUEST_ADDR},{},localhost,127.0.0.1", GUEST_PROXY.ip());
    env.insert("NO_PROXY".into(), no_proxy.clone());
    env.insert("no_proxy".into(), no_proxy);
    env
}

/// The proxy sockets being served, by application.
#[derive(Default)]
pub struct ProxySockets {
    proxy: OnceLock<Proxy>,
    served: Mutex<HashMap<Uuid, CancellationToken>>,
}

impl ProxySockets {
    /// Sets the node's proxy once; later calls are ignored (and say so).
    pub fn set_proxy(&self, proxy: Proxy) {
        if self.proxy.set(proxy).is_err() {
            tracing::warn!("the qemu driver was attached twice; keeping the first proxy");
        }
    }

    /// Whether the node runs a proxy the guests can reach.
    pub fn enabled(&self) -> bool {
        self.proxy.get().is_some()
    }

    /// Relays `path` to the proxy as application `uid`, unless already done; a no-op
    /// without a proxy (the guest's proxy connections are then refused by `socat`).
    pub fn serve(&self, uid: Uuid, path: &Path) -> std::io::Result<()> {
        let Some(proxy) = self.proxy.get() else { return Ok(()) };
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if served.contains_key(&uid) {
            return Ok(());
        }
        let listener = super::meta::bind_fresh(path)?;
        let stop = CancellationToken::new();
        tokio::spawn(relay_loop(proxy.clone(), uid, listener, stop.clone()));
        served.insert(uid, stop);
        tracing::debug!(%uid, path = %path.display(), "relaying the machine's proxy connections");
        Ok(())
    }

    /// Stops accepting for `uid` (the socket file goes with the machine's directory;
    /// relays already open end with the machine's connections).
    pub fn stop(&self, uid: Uuid) {
        if let Some(stop) = self.served.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid) {
            stop.cancel();
        }
    }
}

async fn relay_loop(proxy: Proxy, uid: Uuid, listener: UnixListener, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(%uid, error = %e, "cannot accept a proxy connection from the machine");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        proxy.serve_stream(stream, uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_ask_the_metadata_address_directly() {
        let env = guest_environment();
        assert_eq!(env["FISH_PROXY"], "10.0.2.101:3128");
        assert_eq!(env["ALL_PROXY"], "socks5h://10.0.2.101:3128");
        assert!(env["NO_PROXY"].starts_with("10.0.2.100,10.0.2.101,"), "{}", env["NO_PROXY"]);
        assert!(!env.contains_key("http_proxy"));
    }
}
