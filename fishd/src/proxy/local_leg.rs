//! The leg of a relayed connection between the proxy and the resource: a socket the proxy
//! accepted from a resource of this node.
//!
//! # Congestion control: not paced
//! That leg never leaves the host. A container reaches the proxy over its docker bridge,
//! an isolated process over its veth pair, a VM through its user-mode network on
//! loopback: the round trip is microseconds and nothing on the way drops packets for
//! congestion, so a congestion controller has nothing to learn there. A host running bbr
//! (`net.ipv4.tcp_congestion_control = bbr`, as this project's machines do) paces every
//! socket, and with no `fq` qdisc TCP paces internally: an hrtimer armed per burst, the
//! sending thread woken by it later. On a zero-RTT link that pacing only adds wake-ups
//! and gaps: on a bulk download the relay's writes to the resource waited on their own
//! pacing timer. With this leg unpaced a bulk download through the proxy went from a
//! median 87 % of the same download direct to 116 % (`benches/proxy.rs`, eleven alternated
//! rounds on a bbr host, ahead in every one; issue 17, session 10).
//!
//! So the proxy gives this leg cubic, the kernel's classic default, which does not pace,
//! or reno where cubic is not built or not permitted (an unprivileged fishd may only
//! choose from `net.ipv4.tcp_allowed_congestion_control`, which always holds reno). The
//! leg to the target keeps the host's choice: it crosses real networks, where the
//! controller is the operator's decision. Where the host default already is cubic this
//! changes nothing.

use socket2::SockRef;
use tokio::net::TcpStream;

/// Congestion controls that do not pace, in order of preference.
const UNPACED: [&str; 2] = ["cubic", "reno"];

/// Gives `stream`, a connection from a resource of this node, a congestion control
/// that does not pace (see the module doc). If the kernel refuses every one the socket
/// keeps the host's default: slower on a bbr host, never wrong.
pub(super) fn unpace(stream: &TcpStream) {
    let socket = SockRef::from(stream);
    for name in UNPACED {
        match socket.set_tcp_congestion(name.as_bytes()) {
            Ok(()) => return,
            Err(e) => tracing::debug!(congestion = name, error = %e, "proxy: the kernel refused a congestion control"),
        }
    }
}
