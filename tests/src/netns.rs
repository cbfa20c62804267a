//! Network namespaces for partition tests: every node in its own namespace, joined
//! by veth pairs to one bridge, so a test can cut a node off for real (packets
//! dropped by iptables inside its namespace) and heal it, not just kill processes.
//!
//! # Guarantees
//! - Everything is named `aq12-*` (namespaces) or `aq12b*`/`aq12v*` (links) with this
//!   process's id, and removed when the [`Net`] drops, also when the test panics.
//!   Leftovers of a killed test run (their pid gone) are removed on the next start.
//! - Addresses are ones this harness creates, in a `10.212.N.0/24` no interface or
//!   route on the host uses yet; the bridge has `.254`, node `i` has `.(i+1)`.
//!   The test process reaches every node through the bridge, even a cut-off one:
//!   a cut drops only traffic between nodes, so the cut node still serves reads.
//! - The one host change besides the links: a FORWARD rule accepting traffic from the
//!   bridge to itself (Docker's DROP policy would stop bridged frames), removed with it.
//! - Needs root, `ip` and `iptables`. Under `CI=true` a missing prerequisite is a
//!   failure; elsewhere the test is skipped, saying so.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Makes names unique among harnesses of one test process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A bridge and namespaces with one node each.
pub struct Net {
    id: String,
    bridge: String,
    subnet: u8,
    namespaces: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}

/// Why partition tests cannot run here, if they cannot.
pub fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("network namespace tests need root".into());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        if !found.is_ok_and(|o| o.status.success()) {
            return Some(format!("network namespace tests need `{tool}` (scripts/install-deps.sh installs it)"));
        }
    }
    None
}

/// `Some(())` if the test may run; `None` (after saying why) if it must skip
/// outside CI. Goes through the shared [`crate::prerequisite`] check: under `CI=true`
/// a missing prerequisite is a failure (`AQUARIUM_SKIP=netns` opts out).
pub fn require(test: &str) -> Option<()> {
    let Some(why) = missing_prerequisite() else {
        return Some(());
    };
    crate::prerequisite("netns", false, &format!("{test}: {why}"));
    None
}

/// Removes namespaces and links of harnesses whose process is gone.
fn sweep_leftovers() {
    let alive = |pid: &str| pid.parse::<i32>().is_ok_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists());
    if let Ok(list) = ip(&["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            // aq12-<pid>x<n>-<i>
            if let Some(pid) = ns.strip_prefix("aq12-").and_then(|r| r.split('x').next())
                && !alive(pid)
            {
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for name in list.lines().filter_map(|l| l.split(':').nth(1)).map(|n| n.trim().split('@').next().unwrap_or("")) {
            // aq12b<pid>x<n>: bridges of dead harnesses (their veths went with the namespaces).
            if let Some(pid) = name.strip_prefix("aq12b").and_then(|r| r.split('x').next())
                && !alive(pid)
            {
                let _ = run(Command::new("iptables").args(forward_rule("-D", name)));
                let _ = ip(&["link", "del", name]);
            }
            // aq12v<pid>x<n>h<i>: a host veth end whose namespace outlived its harness.
            if let Some(pid) = name.strip_prefix("aq12v").and_then(|r| r.split('x').next())
                && !alive(pid)
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

/// A /24 in 10.212.0.0/16 that no host address or route mentions yet.
fn free_subnet() -> Result<u8> {
    let used = format!("{}{}", ip(&["-4", "addr"])?, ip(&["-4", "route"])?);
    let start = (std::process::id() % 200) as u8;
    (0..=250u8)
        .map(|k| start.wrapping_add(k) % 250 + 1)
        .find(|n| !used.contains(&format!("10.212.{n}.")))
        .context("no free 10.212.N.0/24 subnet")
}

impl Net {
    /// A bridge and `nodes` namespaces, each with one address and loopback up.
    pub fn new(nodes: usize) -> Result<Net> {
        sweep_leftovers();
        let id = format!("{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let subnet = free_subnet()?;
        let mut net = Net { bridge: format!("aq12b{id}"), id, subnet, namespaces: Vec::new() };
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("10.212.{subnet}.254/24"), "dev", &net.bridge])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        // With br_netfilter, bridged frames go through the host's FORWARD chain, whose
        // policy Docker sets to DROP: let this bridge's own traffic through (one rule,
        // naming only this bridge; removed on drop).
        run(Command::new("iptables").args(forward_rule("-I", &net.bridge)))?;
        for i in 0..nodes {
            let ns = format!("aq12-{}-{i}", net.id);
            ip(&["netns", "add", &ns])?;
            net.namespaces.push(ns.clone());
            let (host, peer) = (format!("aq12v{}h{i}", net.id), format!("aq12v{}p{i}", net.id));
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", &ns])?;
            ip(&["link", "set", &host, "master", &net.bridge])?;
            ip(&["link", "set", &host, "up"])?;
            let addr = format!("{}/24", net.ip(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", &peer])?;
            ip(&["-n", &ns, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// The namespace of node `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.namespaces[i]
    }

    /// The address of node `i`.
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 212, self.subnet, i as u8 + 1)
    }

    /// A command that runs `program` inside node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(i)]).arg(program);
        c
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["netns", "exec", self.ns(i), "iptables"]).args(args))
    }

    /// Cuts node `i` off from every other node (both directions); the test process
    /// (on the bridge address) still reaches it.
    pub fn cut(&self, i: usize) -> Result<()> {
        for j in (0..self.namespaces.len()).filter(|&j| j != i) {
            let peer = self.ip(j).to_string();
            self.iptables(i, &["-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
            self.iptables(i, &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Undoes [`Net::cut`] for node `i`.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.iptables(i, &["-F", "INPUT"])?;
        self.iptables(i, &["-F", "OUTPUT"])?;
        Ok(())
    }

    /// Whether a TCP connection from node `from`'s namespace to `to`:`port` opens
    /// within `within` (a real connect, as a peer would make).
    pub fn can_connect(&self, from: usize, to: Ipv4Addr, port: u16, within: Duration) -> bool {
        let secs = format!("{:.1}", within.as_secs_f64());
        Command::new("ip")
            .args(["netns", "exec", self.ns(from), "timeout", &secs, "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{to}/{port}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

/// The host FORWARD rule that lets `bridge`'s traffic through, to insert or delete.
fn forward_rule<'a>(op: &'a str, bridge: &'a str) -> [&'a str; 8] {
    [op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("iptables").args(forward_rule("-D", &self.bridge))) {
            eprintln!("netns: cannot remove the FORWARD rule of {}: {e}", self.bridge);
        }
        // Deleting a namespace kills its veth end, and the pair with it.
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("netns: cannot delete {ns}: {e}");
            }
        }
        if let Err(e) = ip(&["link", "del", &self.bridge]) {
            eprintln!("netns: cannot delete {}: {e}", self.bridge);
        }
    }
}
