//! Throughput of a bulk download through the node's proxy, next to the same download
//! direct, in one run (issue 17: target ≥ 80 %).
//!
//! A loopback server sends `MIB` MiB (default 1024) to each client as fast as it can;
//! the client reads it all (sender and reader: the same blocking code on threads of
//! their own for both paths, outside the proxy's runtime), once directly and once through the proxy (SOCKS5, by address,
//! the client identified by its source address as a container is), alternating `RUNS`
//! times (default 3), and the best of each is compared. The proxy is fishd's own
//! (`fishd::proxy::Proxy`), in this process. Writes `bench/results/proxy.json`.
//!
//! Run: `cargo bench --workspace --bench proxy` (MIB=4096 RUNS=5 to change the sizes).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fishd::proxy::{Client, Directory, Proxy, ProxyLimits, ProxyMetrics};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Every loopback caller is one resource allowed loopback.
struct Loopback;

impl Directory for Loopback {
    fn by_addr(&self, ip: IpAddr) -> Option<Client> {
        ip.is_loopback().then(|| Client {
            uid: Uuid::nil(),
            name: "bench".into(),
            label: "bench".into(),
            allow: vec!["127.0.0.1:*".parse().expect("rule")],
        })
    }
    fn by_token(&self, _: &str) -> Option<Client> {
        None
    }
    fn by_uid(&self, _: Uuid) -> Option<Client> {
        None
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends `bytes` to every connection, then closes it. Blocking code on threads of its
/// own, outside the proxy's runtime: in production the sender, fishd and the reader are
/// separate processes, so the proxy never shares its worker threads with them.
fn source(bytes: u64) -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                use std::io::Write;
                let chunk = vec![0x5au8; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });
    Ok(addr)
}

/// Reads a connection to its end, blocking, with the same buffer for both paths.
fn drain(mut s: std::net::TcpStream) -> Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn direct(target: SocketAddr) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let n = drain(std::net::TcpStream::connect(target)?)?;
    Ok((n, start.elapsed()))
}

fn proxied(proxy: SocketAddr, target: SocketAddr) -> Result<(u64, Duration)> {
    use std::io::{Read, Write};
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(proxy)?;
    let SocketAddr::V4(t) = target else { anyhow::bail!("v4 target expected") };
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend_from_slice(&t.ip().octets());
    hello.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&hello)?;
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply)?;
    ensure!(reply[..4] == [5, 0, 5, 0], "proxy refused: {reply:?}");
    let n = drain(s)?;
    Ok((n, start.elapsed()))
}

fn mib_s(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() -> Result<()> {
    let mib = env("MIB", 1024);
    let runs = env("RUNS", 3).max(1);
    let bytes = mib << 20;
    let target = source(bytes)?;
    let proxy = Proxy::new(
        Arc::new(Loopback),
        Vec::new(),
        ProxyLimits::default(),
        ProxyMetrics::default(),
        CancellationToken::new(),
    );
    let proxy_addr = proxy.listen("127.0.0.1:0".parse()?).await?;
    let (mut best_direct, mut best_proxy) = (0f64, 0f64);
    // Per run, direct and proxied back to back: on a shared machine the median of these
    // says more than best/best, which pairs two different moments.
    let mut ratios: Vec<f64> = Vec::new();
    let mut samples = Vec::new();
    for run in 0..runs {
        let (n, took) = tokio::task::spawn_blocking(move || direct(target)).await??;
        ensure!(n == bytes, "direct read {n} of {bytes} bytes");
        let d = mib_s(n, took);
        let (n, took) = tokio::task::spawn_blocking(move || proxied(proxy_addr, target)).await??;
        ensure!(n == bytes, "proxied read {n} of {bytes} bytes");
        let p = mib_s(n, took);
        println!("run {run}: direct {d:.0} MiB/s, proxy {p:.0} MiB/s ({:.0} %)", 100.0 * p / d);
        samples.push(serde_json::json!({"direct_mib_s": d, "proxy_mib_s": p}));
        ratios.push(p / d);
        best_direct = best_direct.max(d);
        best_proxy = best_proxy.max(p);
    }
    let ratio = best_proxy / best_direct;
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("median of per-run ratios: {:.1} %", median * 100.0);
    println!(
        "best: direct {best_direct:.0} MiB/s, proxy {best_proxy:.0} MiB/s: {:.1} % (target >= 80 %)",
        ratio * 100.0
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = serde_json::json!({
        "benchmark": "proxy bulk download, loopback, SOCKS5 by address vs direct",
        "command": "cargo bench --workspace --bench proxy",
        "bytes_per_download": bytes,
        "runs": samples,
        "best_direct_mib_s": best_direct,
        "best_proxy_mib_s": best_proxy,
        "proxy_over_direct": ratio,
        "median_run_ratio": median,
        "target": 0.8,
        "loadavg_at_end": load.trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/proxy.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
