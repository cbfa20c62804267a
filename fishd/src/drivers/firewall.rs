//! Host firewall rules that make an isolated resource's isolation hold on the host side.
//!
//! Docker's `internal` flag only removes the route out: the host's own services stay
//! reachable from the bridge (the INPUT path), on the gateway and on every other host
//! address; a process's network namespace reaches the host through its veth the same
//! way. So each such interface (an aquarium docker network's bridge, a process's
//! host-side veth) gets a chain of fishd's own, `AQ-<interface>`, in the
//! filter table (through `iptables`, which is what the engine itself uses on this kind
//! of host; `iptables-nft` and `iptables-legacy` both speak it):
//!
//! - jumped to from `INPUT` for an isolated network: established flows pass, new TCP
//!   connections to the gateway's metadata and proxy ports pass, everything else is
//!   rejected (TCP reset, ICMP otherwise), whatever host address it was sent to;
//! - jumped to from `DOCKER-USER` (or `FORWARD` where the engine made none) for both
//!   networks: traffic from one container of the bridge to another is dropped, and an
//!   isolated network forwards nothing at all.
//! - an isolated network's IPv6 traffic to the host (link-local addresses) is rejected
//!   by the same chain name in `ip6tables`, where that tool exists.
//!
//! # Guarantees
//! - [`Firewall::ensure`] is idempotent: it compares the chain with what it should be
//!   and rewrites it only if it differs (a rule deleted by hand is put back), and
//!   inserts a missing jump at the top of its hook.
//! - A chain is replaced in one `iptables-restore --noflush` transaction, never
//!   flushed and refilled rule by rule: there is no moment without its rules, and a
//!   rule the kernel refuses (xtables lock timeout, a missing module) leaves the old
//!   chain whole.
//! - Several fishd on one host may share a network (test nodes do, on one engine):
//!   each opens its own ports and keeps the gateway ports already open that something
//!   on the host still listens on, so no node closes another's; ports whose listener is
//!   gone are closed at the next pass.
//! - [`Firewall::collect`] removes the chains (and their jumps) of bridges that no
//!   longer exist, so removing the network removes its rules at the next pass.
//!
//! # Assumptions
//! - The chain name belongs to fishd: nothing else writes `AQ-*` chains.
//! - fishd runs as root; without it every call fails and the driver says why.

use std::net::IpAddr;

use super::DriverError;

/// Prefix of every chain fishd writes; `AQ-` + a bridge name fits iptables' 28 bytes.
pub const CHAIN_PREFIX: &str = "AQ-";

/// What one network's rules must let through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The host-side interface: a docker bridge (`br-0123456789ab`) or a process veth.
    pub bridge: String,
    /// The host's address on the bridge.
    pub gateway: Option<IpAddr>,
    /// An isolated network (INPUT restricted, nothing forwarded) rather than `nat`.
    pub isolated: bool,
    /// TCP ports on the gateway containers may open (metadata, proxy); 0s are ignored.
    pub ports: Vec<u16>,
}

impl Policy {
    /// The chain's name.
    pub fn chain(&self) -> String {
        chain_of(&self.bridge)
    }

    /// The rules of the IPv4 chain, as `iptables -S CHAIN` prints them.
    pub fn rules_v4(&self) -> Vec<String> {
        let chain = self.chain();
        let br = &self.bridge;
        let mut rules = vec![format!("-N {chain}")];
        // Container to container on the same bridge: never (both modes).
        rules.push(format!("-A {chain} -i {br} -o {br} -j DROP"));
        rules.push(format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
        if self.isolated {
            if let Some(IpAddr::V4(gw)) = self.gateway {
                let mut ports: Vec<u16> = self.ports.iter().copied().filter(|p| *p != 0).collect();
                ports.sort_unstable();
                ports.dedup();
                for port in ports {
                    rules.push(format!("-A {chain} -d {gw}/32 -i {br} -p tcp -m tcp --dport {port} -j ACCEPT"));
                }
            }
            rules.push(format!("-A {chain} -p tcp -j REJECT --reject-with tcp-reset"));
            rules.push(format!("-A {chain} -j REJECT --reject-with icmp-port-unreachable"));
        }
        rules
    }

    /// The rules of the IPv6 chain (isolated networks only): nothing to the host.
    pub fn rules_v6(&self) -> Vec<String> {
        let chain = self.chain();
        let br = &self.bridge;
        vec![
            format!("-N {chain}"),
            format!("-A {chain} -i {br} -o {br} -j DROP"),
            format!("-A {chain} -p tcp -j REJECT --reject-with tcp-reset"),
            format!("-A {chain} -j REJECT --reject-with icmp6-port-unreachable"),
        ]
    }
}

/// The chain of a bridge.
pub fn chain_of(bridge: &str) -> String {
    format!("{CHAIN_PREFIX}{bridge}")
}

/// Runs `iptables`/`ip6tables`.
#[derive(Clone, Debug)]
pub struct Firewall {
    v4: String,
    v6: Option<String>,
}

impl Default for Firewall {
    fn default() -> Self {
        let v6 = which("ip6tables").then(|| "ip6tables".to_owned());
        Firewall { v4: "iptables".into(), v6 }
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file())
}

impl Firewall {
    /// Makes the network's rules what `policy` says; repairs them when they differ.
    pub async fn ensure(&self, policy: &Policy) -> Result<(), DriverError> {
        let chain = policy.chain();
        let mut policy = policy.clone();
        if let (Some(gw), Ok(current)) = (policy.gateway, run(&self.v4, &["-w", "-S", &chain]).await) {
            let listening = listening_ports(gw);
            policy.ports.extend(open_ports(&current).into_iter().filter(|p| listening.contains(p)));
        }
        let policy = &policy;
        self.converge(&self.v4, &chain, &policy.rules_v4()).await?;
        self.hook(&self.v4, &forward_hook(&self.v4).await, &policy.bridge, &chain).await?;
        if policy.isolated {
            self.hook(&self.v4, "INPUT", &policy.bridge, &chain).await?;
        }
        if let Some(v6) = &self.v6
            && policy.isolated
        {
            // IPv6 may be off in the kernel: a failure here leaves no v6 path to guard.
            let done = async {
                self.converge(v6, &chain, &policy.rules_v6()).await?;
                self.hook(v6, "INPUT", &policy.bridge, &chain).await
            };
            if let Err(e) = done.await {
                tracing::debug!(error = %e, "no ip6tables rules for {chain}");
            }
        }
        Ok(())
    }

    /// Removes the rules of an interface now (its resource is being removed).
    pub async fn remove(&self, bridge: &str) -> Result<(), DriverError> {
        let chain = chain_of(bridge);
        for tool in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            let Ok(listing) = run(tool, &["-w", "-S"]).await else { continue };
            if chains(&listing).contains(&chain) {
                self.remove_chain(tool, &listing, &chain).await?;
            }
        }
        Ok(())
    }

    /// Removes the rules of every `AQ-*` chain whose interface is gone; returns their names.
    pub async fn collect(&self) -> Result<Vec<String>, DriverError> {
        let mut removed = Vec::new();
        for tool in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            let listing = match run(tool, &["-w", "-S"]).await {
                Ok(out) => out,
                Err(e) if tool != &self.v4 => {
                    tracing::debug!(error = %e, "{tool} cannot list rules");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for chain in chains(&listing) {
                let bridge = &chain[CHAIN_PREFIX.len()..];
                if std::path::Path::new("/sys/class/net").join(bridge).exists() {
                    continue;
                }
                self.remove_chain(tool, &listing, &chain).await?;
                removed.push(chain);
            }
        }
        Ok(removed)
    }

    async fn remove_chain(&self, tool: &str, listing: &str, chain: &str) -> Result<(), DriverError> {
        for line in listing.lines() {
            // `-A INPUT -i br-x -j AQ-br-x`: delete by spec.
            if let Some(spec) = line.strip_prefix("-A ")
                && line.ends_with(&format!(" -j {chain}"))
            {
                let mut args = vec!["-w", "-D"];
                args.extend(spec.split_whitespace());
                run(tool, &args).await?;
            }
        }
        run(tool, &["-w", "-F", chain]).await?;
        run(tool, &["-w", "-X", chain]).await?;
        tracing::info!(%chain, "firewall chain of a removed network deleted");
        Ok(())
    }

    /// Replaces `chain` (made if missing) by `want` when its rules differ, in one
    /// `iptables-restore --noflush` transaction: the kernel goes from the old rules
    /// straight to the new ones, never through an empty chain (which would let an
    /// isolated interface reach every host service) or a half-built one, and a rule it
    /// refuses leaves the old chain as it was.
    async fn converge(&self, tool: &str, chain: &str, want: &[String]) -> Result<(), DriverError> {
        let have = match run(tool, &["-w", "-S", chain]).await {
            Ok(out) => out.lines().filter(|l| l.starts_with('-')).map(str::to_owned).collect::<Vec<_>>(),
            Err(_) => Vec::new(),
        };
        if have == want {
            return Ok(());
        }
        if have.len() > 1 {
            tracing::info!(%chain, "firewall chain differs from what it must be (changed ports, or edited by hand); replacing it");
        }
        let restore = format!("{tool}-restore");
        run_with_input(&restore, &["-w", "--noflush"], &replacement(chain, want)).await.map(|_| ())
    }

    /// Puts `-i bridge -j chain` at the top of `hook` unless it is there.
    async fn hook(&self, tool: &str, hook: &str, bridge: &str, chain: &str) -> Result<(), DriverError> {
        if run(tool, &["-w", "-C", hook, "-i", bridge, "-j", chain]).await.is_ok() {
            return Ok(());
        }
        tracing::info!(%chain, %hook, "firewall jump installed");
        run(tool, &["-w", "-I", hook, "1", "-i", bridge, "-j", chain]).await.map(|_| ())
    }
}

/// `DOCKER-USER` when the engine made it (it is evaluated before the engine's own
/// forwarding rules, and the engine keeps it first), else `FORWARD`.
async fn forward_hook(tool: &str) -> String {
    match run(tool, &["-w", "-S", "DOCKER-USER"]).await {
        Ok(_) => "DOCKER-USER".into(),
        Err(_) => "FORWARD".into(),
    }
}

/// The ports a chain listing opens (`--dport N -j ACCEPT`).
fn open_ports(listing: &str) -> Vec<u16> {
    listing
        .lines()
        .filter(|l| l.ends_with("-j ACCEPT"))
        .filter_map(|l| l.split_once("--dport ")?.1.split_whitespace().next()?.parse().ok())
        .collect()
}

/// TCP ports something on the host listens on at exactly `ip` (a fishd's metadata
/// endpoint or proxy; a service on every address does not count), from `/proc/net/tcp`
/// of fishd's own network namespace.
fn listening_ports(ip: IpAddr) -> Vec<u16> {
    let IpAddr::V4(want) = ip else { return Vec::new() };
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else { return Vec::new() };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Field 3 is the state; 0A is LISTEN.
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (addr, port) = f.get(1)?.split_once(':')?;
            let addr = std::net::Ipv4Addr::from(u32::from_str_radix(addr, 16).ok()?.to_le_bytes());
            (addr == want).then(|| u16::from_str_radix(port, 16).ok()).flatten()
        })
        .collect()
}

/// The `AQ-*` chains of a `-S` listing.
fn chains(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with(CHAIN_PREFIX))
        .map(str::to_owned)
        .collect()
}

/// The `iptables-restore` input that replaces `chain` by the `-A` rules of `want`.
/// Declaring a chain (`:NAME - [0:0]`) flushes it, or makes it, within the
/// transaction; `--noflush` leaves every other chain alone.
fn replacement(chain: &str, want: &[String]) -> String {
    let mut text = format!("*filter\n:{chain} - [0:0]\n");
    for rule in want.iter().filter(|r| r.starts_with("-A ")) {
        text.push_str(rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// Runs `tool` with `input` on its standard input.
async fn run_with_input(tool: &str, args: &[&str], input: &str) -> Result<String, DriverError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| DriverError::with_source(format!("running {tool}"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| DriverError::with_source(format!("writing to {tool}"), e))?;
    }
    let out = child.wait_with_output().await.map_err(|e| DriverError::with_source(format!("running {tool}"), e))?;
    if !out.status.success() {
        return Err(DriverError::failed(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn run(tool: &str, args: &[&str]) -> Result<String, DriverError> {
    let out = tokio::process::Command::new(tool)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| DriverError::with_source(format!("running {tool}"), e))?;
    if !out.status.success() {
        return Err(DriverError::failed(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(isolated: bool) -> Policy {
        Policy {
            bridge: "br-0123456789ab".into(),
            gateway: Some("172.30.0.1".parse().expect("address")),
            isolated,
            ports: vec![8001, 0, 40000, 8001],
        }
    }

    #[test]
    fn isolated_chain_lets_only_the_gateway_ports_in() {
        let rules = policy(true).rules_v4();
        assert_eq!(rules[0], "-N AQ-br-0123456789ab");
        let accepts: Vec<_> = rules.iter().filter(|r| r.contains("--dport")).collect();
        assert_eq!(accepts.len(), 2, "{rules:?}");
        assert!(accepts[0].contains("-d 172.30.0.1/32") && accepts[0].ends_with("--dport 8001 -j ACCEPT"));
        assert!(rules.last().is_some_and(|r| r.contains("REJECT")));
    }

    #[test]
    fn nat_chain_only_stops_container_to_container() {
        let rules = policy(false).rules_v4();
        assert!(rules.iter().any(|r| r.contains("-i br-0123456789ab -o br-0123456789ab -j DROP")));
        assert!(!rules.iter().any(|r| r.contains("REJECT")));
    }

    #[test]
    fn open_ports_are_read_back_from_a_listing() {
        let listing = policy(true).rules_v4().join("\n");
        assert_eq!(open_ports(&listing), vec![8001, 40000]);
    }

    #[test]
    fn a_listener_is_found_in_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        assert!(listening_ports("127.0.0.1".parse().expect("address")).contains(&port));
    }

    #[test]
    fn the_replacement_declares_the_chain_then_appends_every_rule() {
        let p = policy(true);
        let text = replacement(&p.chain(), &p.rules_v4());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["*filter", ":AQ-br-0123456789ab - [0:0]"]);
        assert_eq!(lines.last(), Some(&"COMMIT"));
        assert_eq!(lines.len(), 2 + p.rules_v4().len() - 1 + 1, "every -A rule, no -N: {text}");
        assert!(lines[2..lines.len() - 1].iter().all(|l| l.starts_with("-A AQ-br-0123456789ab ")), "{text}");
    }

    /// The rules of `chain` as `iptables -S` prints them (empty when it does not exist).
    fn listed(chain: &str) -> Vec<String> {
        let out = std::process::Command::new("iptables").args(["-w", "-S", chain]).output().expect("iptables");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('-')).map(str::to_owned).collect()
    }

    /// Deletes the test's chain however the test ends.
    struct Scratch(String);

    impl Drop for Scratch {
        fn drop(&mut self) {
            for op in ["-F", "-X"] {
                let _ = std::process::Command::new("iptables").args(["-w", op, &self.0]).output();
            }
        }
    }

    #[tokio::test]
    async fn a_rule_the_kernel_refuses_leaves_the_old_chain_intact() {
        let ready = nix::unistd::geteuid().is_root()
            && std::process::Command::new("iptables-restore")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
        if !aquarium_e2e::prerequisite("firewall", ready, "the firewall test needs root and iptables-restore") {
            return;
        }
        // The chain of `lo`: an interface that always exists, so a concurrent `collect`
        // (docker tests) never takes it for a removed network's; no jump leads to it.
        let mut p = policy(true);
        p.bridge = "lo".into();
        let chain = p.chain();
        let _scratch = Scratch(chain.clone());
        let fw = Firewall::default();
        fw.converge("iptables", &chain, &p.rules_v4()).await.expect("first install");
        let old = listed(&chain);
        assert_eq!(old, p.rules_v4());
        // New ports, with a rule the kernel refuses in the middle (a target that does not exist).
        p.ports = vec![9001];
        let mut bad = p.rules_v4();
        bad.insert(3, format!("-A {chain} -j AQ-NO-SUCH-TARGET"));
        let e = fw.converge("iptables", &chain, &bad).await.expect_err("a refused rule fails the replacement");
        assert!(e.to_string().contains("iptables-restore"), "{e}");
        assert_eq!(listed(&chain), old, "the old chain must stay whole, not flushed or half-built");
        // A good set replaces it in one step.
        fw.converge("iptables", &chain, &p.rules_v4()).await.expect("replacement");
        assert_eq!(listed(&chain), p.rules_v4());
    }

    #[test]
    fn chains_are_found_in_a_listing() {
        let listing = "-P INPUT ACCEPT\n-N DOCKER\n-N AQ-br-1\n-A INPUT -i br-1 -j AQ-br-1\n";
        assert_eq!(chains(listing), vec!["AQ-br-1".to_owned()]);
    }
}
