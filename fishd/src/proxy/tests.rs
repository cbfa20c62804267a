//! The proxy against real sockets on loopback: refusals in each protocol, hostile and
//! slow clients, the per-resource cap and the idle timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::*;

/// Every test finishes far below this; a hang fails instead of stalling the suite.
const LIMIT: Duration = Duration::from_secs(20);

/// Loopback callers are one resource, allowed `allow`.
struct OneResource {
    allow: Vec<&'static str>,
}

impl Directory for OneResource {
    fn by_addr(&self, ip: IpAddr) -> Option<Client> {
        ip.is_loopback().then(|| Client {
            uid: Uuid::nil(),
            name: "app-1".into(),
            label: "lbl".into(),
            allow: self.allow.iter().map(|r| r.parse().expect("rule")).collect(),
        })
    }
    fn by_token(&self, _token: &str) -> Option<Client> {
        None
    }
    fn by_uid(&self, _uid: Uuid) -> Option<Client> {
        None
    }
}

async fn proxy(allow: Vec<&'static str>, limits: ProxyLimits) -> (SocketAddr, ProxyMetrics) {
    let metrics = ProxyMetrics::default();
    let p = Proxy::new(Arc::new(OneResource { allow }), Vec::new(), limits, metrics.clone(), CancellationToken::new());
    let addr = p.listen("127.0.0.1:0".parse().expect("address")).await.expect("listen");
    (addr, metrics)
}

/// A target that answers `hello` to every connection and keeps it open.
async fn target() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hello").await;
                let mut buf = [0u8; 64];
                while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
        }
    });
    addr
}

fn socks_connect(addr: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = addr else { panic!("v4 only") };
    let mut m = vec![5, 1, 0, 5, 1, 0, 1];
    m.extend_from_slice(&v4.ip().octets());
    m.extend_from_slice(&v4.port().to_be_bytes());
    m
}

async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.expect("read");
    buf
}

/// Reads until the peer closes; the bytes it sent.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

#[tokio::test]
async fn allowed_targets_relay_and_others_are_refused_in_each_protocol() {
    tokio::time::timeout(LIMIT, async {
        let t = target().await;
        let (p, metrics) = proxy(vec!["127.0.0.1:*"], ProxyLimits::default()).await;
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(&socks_connect(t)).await.expect("write");
        assert_eq!(read_n(&mut s, 2).await, [5, 0]);
        assert_eq!(read_n(&mut s, 10).await[..2], [5, 0]);
        assert_eq!(read_n(&mut s, 5).await, b"hello");

        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(b"CONNECT 127.0.0.2:9 HTTP/1.1\r\n\r\n").await.expect("write");
        let answer = String::from_utf8(until_closed(&mut s).await).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");

        let mut s = TcpStream::connect(p).await.expect("connect");
        let mut m = vec![5, 1, 0, 5, 1, 0, 3, 11];
        m.extend_from_slice(b"example.org\x01\xbb");
        s.write_all(&m).await.expect("write");
        assert_eq!(read_n(&mut s, 2).await, [5, 0]);
        assert_eq!(read_n(&mut s, 10).await[..2], [5, 2], "a name no rule allows is refused unresolved");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &{
            let mut r = prometheus_client::registry::Registry::with_prefix("aquarium");
            metrics.register(&mut r);
            r
        })
        .expect("encode");
        assert!(text.contains("aquarium_proxy_denied_total{label=\"lbl\"} 2"), "{text}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn malformed_greetings_and_oversized_names_are_answered_and_closed() {
    tokio::time::timeout(LIMIT, async {
        let (p, _) = proxy(vec!["*.org:*"], ProxyLimits::default()).await;
        // SOCKS4, TLS, a greeting with no method: closed without a relay.
        for hello in [&[4u8, 1, 0, 80, 127, 0, 0, 1, 0][..], &[0x16, 3, 1, 0, 5][..], &[5, 0][..]] {
            let mut s = TcpStream::connect(p).await.expect("connect");
            s.write_all(hello).await.expect("write");
            assert!(until_closed(&mut s).await.is_empty(), "{hello:?} got an answer");
        }
        // Only methods the proxy does not speak: 0xff, then closed.
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(&[5, 1, 0x80]).await.expect("write");
        assert_eq!(until_closed(&mut s).await, [5, 0xff]);
        // BIND: "command not supported".
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(&[5, 1, 0, 5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).await.expect("write");
        let answer = until_closed(&mut s).await;
        assert_eq!(answer[..4], [5, 0, 5, 7], "{answer:?}");
        // A name with a byte no host name has.
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(&[5, 1, 0, 5, 1, 0, 3, 3, b'a', 0, b'b', 0, 80]).await.expect("write");
        assert_eq!(until_closed(&mut s).await[..4], [5, 0, 5, 1]);
        // An HTTP target name longer than any host name, and a head past the limit.
        let mut s = TcpStream::connect(p).await.expect("connect");
        let long = format!("CONNECT {}.org:443 HTTP/1.1\r\n\r\n", "a".repeat(300));
        s.write_all(long.as_bytes()).await.expect("write");
        let answer = String::from_utf8(until_closed(&mut s).await).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let mut s = TcpStream::connect(p).await.expect("connect");
        // Exactly one byte past the limit and no end of head: all of it is read, then refused.
        let mut huge = b"CONNECT a.org:443 HTTP/1.1\r\nX: ".to_vec();
        huge.resize(wire::MAX_HTTP_HEAD + 1, b'b');
        s.write_all(&huge).await.expect("write");
        let answer = String::from_utf8_lossy(&until_closed(&mut s).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        // A plain-HTTP request: only CONNECT is relayed.
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(b"GET http://a.org/ HTTP/1.1\r\n\r\n").await.expect("write");
        let answer = String::from_utf8(until_closed(&mut s).await).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn slow_clients_are_dropped_after_the_handshake_timeout() {
    tokio::time::timeout(LIMIT, async {
        let limits = ProxyLimits { handshake: Duration::from_millis(300), ..ProxyLimits::default() };
        let (p, _) = proxy(vec!["127.0.0.1:*"], limits).await;
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(&[5, 1]).await.expect("write");
        assert!(until_closed(&mut s).await.is_empty());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_resource_holds_at_most_its_cap_and_idle_relays_close() {
    tokio::time::timeout(LIMIT, async {
        let t = target().await;
        let limits = ProxyLimits { per_resource: 1, idle: Duration::from_millis(500), ..ProxyLimits::default() };
        let (p, _) = proxy(vec!["127.0.0.1:*"], limits).await;
        let mut first = TcpStream::connect(p).await.expect("connect");
        first.write_all(&socks_connect(t)).await.expect("write");
        assert_eq!(read_n(&mut first, 12).await[..4], [5, 0, 5, 0]);
        let mut second = TcpStream::connect(p).await.expect("connect");
        second.write_all(&socks_connect(t)).await.expect("write");
        assert_eq!(until_closed(&mut second).await[..4], [5, 0, 5, 1], "over the cap");
        // Idle: the first relay closes by itself, and frees its slot.
        let started = std::time::Instant::now();
        assert_eq!(until_closed(&mut first).await, b"hello");
        assert!(started.elapsed() < Duration::from_secs(10));
        let mut third = TcpStream::connect(p).await.expect("connect");
        third.write_all(&socks_connect(t)).await.expect("write");
        assert_eq!(read_n(&mut third, 12).await[..4], [5, 0, 5, 0]);
    })
    .await
    .expect("test timed out");
}

/// Two resources known by uid and token, none by address: what a VM's socket meets.
struct TwoResources {
    a: Uuid,
    b: Uuid,
}

impl TwoResources {
    fn client(&self, uid: Uuid) -> Client {
        let name = if uid == self.a { "vm-a" } else { "vm-b" };
        Client { uid, name: name.into(), label: "vm".into(), allow: vec!["127.0.0.1:*".parse().expect("rule")] }
    }
}

impl Directory for TwoResources {
    fn by_addr(&self, _ip: IpAddr) -> Option<Client> {
        None
    }
    fn by_token(&self, token: &str) -> Option<Client> {
        match token {
            "token-a" => Some(self.client(self.a)),
            "token-b" => Some(self.client(self.b)),
            _ => None,
        }
    }
    fn by_uid(&self, uid: Uuid) -> Option<Client> {
        (uid == self.a || uid == self.b).then(|| self.client(uid))
    }
}

/// `CONNECT` to `t` over a connection handed to the proxy as `owner`'s; the answer.
async fn connect_as(p: &Proxy, owner: Uuid, t: SocketAddr, auth: Option<&str>) -> String {
    let (mut ours, theirs) = tokio::net::UnixStream::pair().expect("socket pair");
    p.serve_stream(theirs, owner);
    let auth = auth.map(|a| format!("Proxy-Authorization: Basic {a}\r\n")).unwrap_or_default();
    ours.write_all(format!("CONNECT {t} HTTP/1.1\r\n{auth}\r\n").as_bytes()).await.expect("write");
    // Until the target's greeting came through, or the proxy closed.
    let mut answer = Vec::new();
    let mut piece = [0u8; 64];
    while !answer.ends_with(b"hello") {
        let n = ours.read(&mut piece).await.expect("read");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&piece[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_handed_in_stream_is_its_owner_and_nobody_else() {
    tokio::time::timeout(LIMIT, async {
        let t = target().await;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let metrics = ProxyMetrics::default();
        let p = Proxy::new(
            Arc::new(TwoResources { a, b }),
            Vec::new(),
            ProxyLimits::default(),
            metrics,
            CancellationToken::new(),
        );
        let shared = p.listen("127.0.0.1:0".parse().expect("address")).await.expect("listen");
        let answer = connect_as(&p, a, t, None).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello"), "{answer}");
        // Its own token is fine; another resource's token never speaks for it.
        let own = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "fish:token-a");
        let answer = connect_as(&p, a, t, Some(&own)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let other = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "fish:token-b");
        let answer = connect_as(&p, a, t, Some(&other)).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        // Over TCP, with no token, a local process is nobody.
        let mut s = TcpStream::connect(shared).await.expect("connect");
        s.write_all(format!("CONNECT {t} HTTP/1.1\r\n\r\n").as_bytes()).await.expect("write");
        let answer = String::from_utf8(until_closed(&mut s).await).expect("utf-8");
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    })
    .await
    .expect("test timed out");
}

/// The congestion control of each established socket `filter` selects, as an operator
/// sees it: `ss -tin` prints it among each socket's flags.
async fn congestion_controls(filter: &str) -> Vec<String> {
    let known = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").expect("read sysctl");
    let known: Vec<&str> = known.split_whitespace().collect();
    let mut ss = tokio::process::Command::new("ss");
    ss.args(["-H", "-t", "-i", "-n", "state", "established"]).args(filter.split_whitespace());
    let out = ss.output().await.expect("ss (iproute2) runs");
    assert!(out.status.success(), "ss {filter}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().filter(|word| known.contains(word)).map(str::to_owned).collect()
}

#[tokio::test]
async fn the_leg_to_the_resource_is_not_paced_and_the_leg_to_the_target_keeps_the_host_default() {
    tokio::time::timeout(LIMIT, async {
        let t = target().await;
        let (p, _) = proxy(vec!["127.0.0.1:*"], ProxyLimits::default()).await;
        let mut s = TcpStream::connect(p).await.expect("connect");
        s.write_all(&socks_connect(t)).await.expect("write");
        assert_eq!(read_n(&mut s, 12).await[..4], [5, 0, 5, 0]);
        assert_eq!(read_n(&mut s, 5).await, b"hello", "relayed");
        // Both legs are up while the relay runs. The proxy's end of the resource's leg:
        let client = s.local_addr().expect("address").port();
        let leg = congestion_controls(&format!("( sport = :{} and dport = :{client} )", p.port())).await;
        assert!(leg == ["cubic"] || leg == ["reno"], "the resource's leg uses {leg:?}");
        // The proxy's connection to the target is the only one to the target's port.
        let host = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").expect("read sysctl");
        let upstream = congestion_controls(&format!("( dport = :{} )", t.port())).await;
        assert_eq!(upstream, [host.trim()], "the target's leg");
    })
    .await
    .expect("test timed out");
}
