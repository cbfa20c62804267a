//! Sandbox (issue 17, contract section 10) through a real fishd, the real Docker Engine
//! and the host's real firewall: an isolated container reaches its metadata and the
//! node's proxy and nothing else of the host, a `nat` container reaches the host, the
//! proxy lets through exactly the allow list, and the firewall rules are repaired and
//! removed with their network.
//!
//! Every network and chain here is this test's own (`aq17-<n>` networks, so their
//! `AQ-<bridge>` chains too), and is removed at the end.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use aquarium_e2e::{TestDaemon, eventually, http_service};

/// Whether the test can run here; under CI a missing prerequisite fails the test.
fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success()) {
        missing.push("a Docker engine");
    }
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (for iptables)");
    }
    if !Command::new("iptables").args(["-w", "-S", "INPUT"]).output().is_ok_and(|o| o.status.success()) {
        missing.push("a working iptables");
    }
    if missing.is_empty() {
        return true;
    }
    aquarium_e2e::prerequisite("sandbox", false, &format!("sandbox tests need {}", missing.join(", ")))
}

fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(cmd).args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text.trim().to_owned())
}

/// Every IPv4 address of the host but loopback.
fn host_addrs() -> Vec<IpAddr> {
    let (_, out) = sh("ip", &["-o", "-4", "addr", "show"]);
    out.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback())
        .collect()
}

fn gateway(network: &str) -> IpAddr {
    let (ok, out) = sh("docker", &["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", network]);
    assert!(ok, "{out}");
    out.parse().unwrap()
}

fn bridge(network: &str) -> String {
    let (ok, id) = sh("docker", &["network", "inspect", "-f", "{{.Id}}", network]);
    assert!(ok, "{id}");
    format!("br-{}", &id[..12])
}

/// What a container gets from `http://addr/` (empty when it cannot connect).
fn fetch(container: &str, addr: &str) -> String {
    sh("docker", &["exec", container, "timeout", "3", "wget", "-q", "-O", "-", &format!("http://{addr}/")]).1
}

/// Sends raw bytes to `proxy` from inside `container`, keeping the connection open for
/// two seconds, and returns what came back as hex and as text.
fn raw(container: &str, proxy: &str, bytes: &str) -> (String, String) {
    let (host, port) = proxy.rsplit_once(':').unwrap();
    let script = format!(
        "(printf '{bytes}'; sleep 2) | nc -w 3 {host} {port} > /tmp/out; od -An -tx1 /tmp/out | tr -d ' \\n'; echo; cat /tmp/out"
    );
    let (_, out) = sh("docker", &["exec", container, "sh", "-c", &script]);
    let (hex, text) = out.split_once('\n').unwrap_or((&out, ""));
    (hex.to_owned(), text.to_owned())
}

/// A SOCKS5 greeting and CONNECT request by name, followed by an HTTP request.
fn socks_by_name(name: &str, port: u16) -> String {
    let [hi, lo] = port.to_be_bytes();
    format!(
        "\\x05\\x01\\x00\\x05\\x01\\x00\\x03\\x{:02x}{name}\\x{hi:02x}\\x{lo:02x}GET / HTTP/1.0\\r\\n\\r\\n",
        name.len()
    )
}

/// The same by IPv4 address.
fn socks_by_addr(ip: [u8; 4], port: u16) -> String {
    let [hi, lo] = port.to_be_bytes();
    let [a, b, c, d] = ip;
    format!(
        "\\x05\\x01\\x00\\x05\\x01\\x00\\x01\\x{a:02x}\\x{b:02x}\\x{c:02x}\\x{d:02x}\\x{hi:02x}\\x{lo:02x}GET / HTTP/1.0\\r\\n\\r\\n"
    )
}

fn env_of(container: &str, key: &str) -> String {
    sh("docker", &["exec", container, "sh", "-c", &format!("echo ${key}")]).1
}

/// The `key:` lines of `fishctl describe application NAME` (keys as written, values
/// trimmed): what a user reads of the sandbox.
fn describe(d: &TestDaemon, name: &str) -> std::collections::BTreeMap<String, String> {
    let out = d.fishctl(&["describe", "application", name]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim_start().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Removes this test's networks and their chains, whatever the test left.
struct Networks(String);

impl Drop for Networks {
    fn drop(&mut self) {
        for mode in ["isolated", "nat"] {
            let name = format!("{}-{mode}", self.0);
            let (found, id) = sh("docker", &["network", "inspect", "-f", "{{.Id}}", &name]);
            if !found {
                continue;
            }
            let (_, ids) = sh("docker", &["ps", "-aq", "--filter", &format!("network={name}")]);
            for c in ids.lines().filter(|l| !l.is_empty()) {
                sh("docker", &["rm", "-f", c]);
            }
            sh("docker", &["network", "rm", &name]);
            let chain = format!("AQ-br-{}", id.get(..12).unwrap_or_default());
            for tool in ["iptables", "ip6tables"] {
                let (_, rules) = sh(tool, &["-w", "-S"]);
                for jump in rules.lines().filter(|l| l.starts_with("-A ") && l.ends_with(&format!("-j {chain}"))) {
                    let mut args = vec!["-w", "-D"];
                    args.extend(jump[3..].split_whitespace());
                    sh(tool, &args);
                }
                sh(tool, &["-w", "-F", &chain]);
                sh(tool, &["-w", "-X", &chain]);
            }
        }
    }
}

// Multi-threaded: the host services answer while the test blocks on `docker exec`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_containers_reach_only_metadata_and_the_allowed_proxy_targets() {
    if !prerequisites() {
        return;
    }
    let host_svc = http_service("0.0.0.0:0", "host-service").await;
    let target = http_service("127.0.0.1:0", "allowed-target").await;
    let prefix = format!("aq17-{}", std::process::id());
    let _cleanup = Networks(prefix.clone());
    let node = format!("sb-{}", std::process::id());
    let config = format!(
        "nodeName: {node}\ncapacity: {{cpu: 64, ram: 256, slots: 256}}\nresyncInterval: 1s\ndrivers:\n  docker: {{networkPrefix: {prefix}, capacity: {{cpu: 16, ram: 32}}}}\nproxy: {{allow: [\"never.invalid:1\"]}}\n"
    );
    let d = TestDaemon::start(&config).await.unwrap();
    let label = |name: &str, network: &str| {
        format!(
            "---\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  definitions:\n    - driver: docker\n      images: [{{name: aquarium-test/busybox, tag: latest}}]\n      resources: {{cpu: 1, ram: 1, network: {network:?}, allow: [\"localhost:{}\"]}}\n      options: {{command: [sleep, \"3600\"]}}\n",
            target.port()
        )
    };
    let app = |name: &str, label: &str| {
        format!("---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}}}\n")
    };
    let yaml =
        label("iso", "") + &label("out", "nat") + &app("iso-1", "iso") + &app("iso-2", "iso") + &app("nat-1", "out");
    let (code, body) = d.apply(&yaml).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let mut containers = Vec::new();
    for name in ["iso-1", "iso-2", "nat-1"] {
        let a = d.wait_phase(name, "ALLOCATED").await.unwrap();
        containers.push((
            format!("fish-{}", a["metadata"]["uid"].as_str().unwrap()),
            a["status"]["resource"]["ipAddr"].as_str().unwrap().to_owned(),
        ));
    }
    let (iso, iso_ip) = &containers[0];
    let (iso2, iso2_ip) = &containers[1];
    let (nat, _) = &containers[2];
    let iso_gw = gateway(&format!("{prefix}-isolated"));
    let nat_gw = gateway(&format!("{prefix}-nat"));
    let port = host_svc.port();

    // Both read their metadata on their gateway.
    for c in [iso, nat] {
        let url = env_of(c, "FISH_META_URL");
        let meta = sh("docker", &["exec", c, "timeout", "5", "wget", "-q", "-O", "-", &url]).1;
        assert!(meta.contains("FISH_APPLICATION"), "{c} could not read its metadata at {url}: {meta}");
    }

    // The isolated container reaches no host service: not on its gateway, not on any
    // other host address.
    let mut addrs: Vec<IpAddr> = host_addrs();
    addrs.extend([iso_gw, nat_gw]);
    addrs.sort();
    addrs.dedup();
    for ip in &addrs {
        let got = fetch(iso, &SocketAddr::new(*ip, port).to_string());
        assert!(!got.contains("host-service"), "isolated container reached the host service on {ip}: {got}");
    }
    // Control: the host service answers, and a nat container reaches it.
    assert!(fetch(nat, &SocketAddr::new(nat_gw, port).to_string()).contains("host-service"));

    // No container reaches another, even on its own network.
    let listen = "while true; do echo peer-answer | nc -l -p 9999; done";
    sh("docker", &["exec", "-d", iso2, "sh", "-c", listen]);
    eventually("the peer listener", || async {
        sh("docker", &["exec", iso2, "sh", "-c", "nc -w 2 127.0.0.1 9999 </dev/null"]).1.contains("peer-answer")
    })
    .await
    .unwrap();
    let (_, got) = sh("docker", &["exec", iso, "sh", "-c", &format!("nc -w 2 {iso2_ip} 9999 </dev/null")]);
    assert!(!got.contains("peer-answer"), "one container reached another: {got}");

    // Through the proxy: the allowed target, by HTTP CONNECT and SOCKS5 by name.
    let proxy = env_of(iso, "FISH_PROXY");
    assert_eq!(proxy, SocketAddr::new(iso_gw, proxy.rsplit(':').next().unwrap().parse().unwrap()).to_string());
    assert!(env_of(iso, "ALL_PROXY").starts_with("socks5h://"));
    // What describe tells the user: network mode, proxy address, allow list.
    let page = describe(&d, "iso-1");
    assert_eq!(page.get("network").map(String::as_str), Some("isolated"), "{page:?}");
    assert_eq!(page.get("proxy"), Some(&proxy), "{page:?}");
    assert_eq!(page.get("allow"), Some(&format!("localhost:{}", target.port())), "{page:?}");
    assert_eq!(describe(&d, "nat-1").get("network").map(String::as_str), Some("nat"));
    let connect = format!("CONNECT localhost:{} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n", target.port());
    let (_, text) = raw(iso, &proxy, &connect);
    assert!(text.contains("200 Connection established") && text.contains("allowed-target"), "{text}");
    let (hex, text) = raw(iso, &proxy, &socks_by_name("localhost", target.port()));
    assert!(hex.starts_with("05000500"), "{hex}");
    assert!(text.contains("allowed-target"), "{text}");

    // Refused: another port by name, the allowed port by address, and CONNECT likewise.
    let (hex, _) = raw(iso, &proxy, &socks_by_name("localhost", port));
    assert!(hex.starts_with("05000502"), "by name: {hex}");
    let (hex, _) = raw(iso, &proxy, &socks_by_addr([127, 0, 0, 1], target.port()));
    assert!(hex.starts_with("05000502"), "by address: {hex}");
    let (_, text) = raw(iso, &proxy, &format!("CONNECT 127.0.0.1:{} HTTP/1.1\\r\\n\\r\\n", target.port()));
    assert!(text.starts_with("HTTP/1.1 403"), "{text}");
    // Named in the log with the application, and counted.
    assert!(d.log().contains("proxy refused") && d.log().contains("iso-1"), "{}", d.log());
    let metrics = d.client.get(format!("{}/metrics", d.url)).bearer_auth(&d.token).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    let denied = metrics
        .lines()
        .find(|l| l.starts_with("aquarium_proxy_denied_total{label=\"iso\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(denied, Some(3), "{metrics}");
    assert!(metrics.contains("aquarium_proxy_bytes_total{label=\"iso\",direction=\"down\"}"), "{metrics}");
    let _ = iso_ip;

    // The rules: in place, repaired when deleted by hand, gone with the network.
    let chain = format!("AQ-{}", bridge(&format!("{prefix}-isolated")));
    let br = bridge(&format!("{prefix}-isolated"));
    assert!(sh("iptables", &["-w", "-C", "INPUT", "-i", &br, "-j", &chain]).0, "no INPUT jump to {chain}");
    sh("iptables", &["-w", "-D", "INPUT", "-i", &br, "-j", &chain]);
    sh("iptables", &["-w", "-F", &chain]);
    eventually("the deleted rules to be repaired", || async {
        sh("iptables", &["-w", "-C", "INPUT", "-i", &br, "-j", &chain]).0
            && sh("iptables", &["-w", "-S", &chain]).1.contains("REJECT")
    })
    .await
    .unwrap();
    assert!(!fetch(iso, &SocketAddr::new(iso_gw, port).to_string()).contains("host-service"));

    for name in ["iso-1", "iso-2", "nat-1"] {
        d.post(&format!("/api/v1/applications/{name}/deallocate"), None).await.unwrap();
        d.wait_phase(name, "DEALLOCATED").await.unwrap();
    }
    let nat_chain = format!("AQ-{}", bridge(&format!("{prefix}-nat")));
    for mode in ["isolated", "nat"] {
        let (ok, out) = sh("docker", &["network", "rm", &format!("{prefix}-{mode}")]);
        assert!(ok, "{out}");
    }
    eventually("the removed networks' chains to go", || async {
        let (_, rules) = sh("iptables", &["-w", "-S"]);
        !rules.contains(&chain) && !rules.contains(&nat_chain)
    })
    .await
    .unwrap();
}

/// The sandbox of a process resource: what its script found, read from its work dir.
struct Findings(std::path::PathBuf);

impl Findings {
    fn get(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default().trim().to_owned()
    }
}

fn process_prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root (network namespaces, users)");
    }
    for tool in ["ip", "iptables", "useradd", "curl", "nsenter"] {
        if !Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()) {
            missing.push(tool);
        }
    }
    if missing.is_empty() {
        return true;
    }
    aquarium_e2e::prerequisite("sandbox", false, &format!("process sandbox tests need {}", missing.join(", ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_processes_reach_only_metadata_and_the_proxy_as_a_user_of_their_own() {
    if !process_prerequisites() {
        return;
    }
    let host_svc = http_service("0.0.0.0:0", "host-service").await;
    let target = http_service("127.0.0.1:0", "allowed-target").await;
    let d = TestDaemon::start("drivers:\n  process: {gracePeriod: 2s}\n").await.unwrap();
    let port = host_svc.port();
    let mut addrs: Vec<String> = host_addrs().iter().map(ToString::to_string).collect();
    addrs.push("169.254.64.1".into());
    let script = format!(
        r#"curl -s -m 5 -H "Authorization: Bearer $FISH_META_TOKEN" "$FISH_META_URL" > meta.json
for a in {addrs}; do curl -s -m 3 --noproxy '*' "http://$a:{port}/" >> direct.txt; done
curl -s -m 5 --noproxy '' --proxy "$ALL_PROXY" http://localhost:{t}/ > socks.txt
curl -s -m 5 --noproxy '' -p --proxy "$HTTPS_PROXY" http://localhost:{t}/ > connect.txt
curl -s -m 5 --noproxy '' --proxy "$ALL_PROXY" http://localhost:{port}/; echo "rc=$?" > denied-name.txt
curl -s -m 5 --noproxy '' --proxy "$ALL_PROXY" http://127.0.0.1:{t}/; echo "rc=$?" > denied-addr.txt
id -u > uid.txt; id -un > user.txt
touch /etc/aq17-sandbox 2>/dev/null && echo yes > etc.txt || echo no > etc.txt
touch "$FISH_CA_CERT.aq17" 2>/dev/null && echo yes > datadir.txt || echo no > datadir.txt
touch /tmp/aq17-$$ && rm /tmp/aq17-$$ && echo yes > tmp.txt
echo here > own.txt
echo done > done.txt
exec sleep 3600"#,
        addrs = addrs.join(" "),
        t = target.port(),
    );
    let script = script.replace('\n', "\n            ");
    let yaml = format!(
        "---\nkind: Label\nmetadata: {{name: cell}}\nspec:\n  definitions:\n    - driver: process\n      resources: {{cpu: 1, ram: 1, allow: [\"localhost:{}\"]}}\n      options:\n        command:\n          - sh\n          - -c\n          - |\n            {script}\n---\nkind: Application\nmetadata: {{name: cell-1}}\nspec: {{label: cell}}\n",
        target.port()
    );
    let (code, body) = d.apply(&yaml).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("cell-1", "ALLOCATED").await.unwrap();
    let details = &a["status"]["resource"]["details"];
    let found = Findings(details["workdir"].as_str().unwrap().into());
    eventually("the sandboxed script to finish", || async { found.get("done.txt") == "done" }).await.unwrap();

    assert!(found.get("meta.json").contains("\"FISH_APPLICATION\":\"cell-1\""), "{}", found.get("meta.json"));
    assert_eq!(found.get("direct.txt"), "", "an isolated process reached the host service");
    assert_eq!(found.get("socks.txt"), "allowed-target");
    assert_eq!(found.get("connect.txt"), "allowed-target");
    assert_ne!(found.get("denied-name.txt"), "rc=0");
    assert_ne!(found.get("denied-addr.txt"), "rc=0");
    let log = d.log();
    // (The log may colour its keys: match the values only.)
    for refused in [format!("localhost:{port}"), format!("127.0.0.1:{}", target.port())] {
        assert!(
            log.lines().any(|l| l.contains("proxy refused") && l.contains("cell-1") && l.contains(&refused)),
            "{log}"
        );
    }

    // A user of its own, not root, that exists only while the resource does.
    let user = found.get("user.txt");
    assert_ne!(found.get("uid.txt"), "0");
    assert!(user.starts_with("fish-"), "{user}");
    assert_eq!(details["user"], user.as_str());
    assert_eq!(details["network"], "isolated");
    let page = describe(&d, "cell-1");
    assert_eq!(page.get("user"), Some(&user), "{page:?}");
    assert_eq!(page.get("network").map(String::as_str), Some("isolated"), "{page:?}");
    assert_eq!(page.get("allow"), Some(&format!("localhost:{}", target.port())), "{page:?}");
    assert!(page.get("proxy").is_some_and(|p| p.starts_with("169.254.64.1:")), "{page:?}");
    assert!(sh("id", &[&user]).0, "user {user} is missing while the process runs");
    assert_eq!((found.get("etc.txt"), found.get("datadir.txt")), ("no".into(), "no".into()));
    assert_eq!((found.get("tmp.txt"), found.get("own.txt")), ("yes".into(), "here".into()));

    assert_eq!(d.post("/api/v1/applications/cell-1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("cell-1", "DEALLOCATED").await.unwrap();
    assert!(!sh("id", &[&user]).0, "user {user} outlived its application");
    let ns = format!("fish-{}", a["metadata"]["uid"].as_str().unwrap());
    assert!(!sh("ip", &["netns", "list"]).1.contains(&ns), "namespace {ns} left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_isolated_process_still_reaches_the_proxy_after_kill_9_and_restart() {
    if !process_prerequisites() {
        return;
    }
    let target = http_service("127.0.0.1:0", "allowed-target").await;
    let mut d = TestDaemon::start("drivers:\n  process: {gracePeriod: 2s}\n").await.unwrap();
    // Through the proxy in its environment, again and again: "<n> <answer>".
    let script = format!(
        r#"i=0
while true; do
  i=$((i+1))
  r=$(curl -s -m 3 --noproxy '' -p --proxy "$HTTPS_PROXY" http://localhost:{t}/)
  echo "$i $r" > latest.tmp && mv latest.tmp latest.txt
  sleep 0.5
done"#,
        t = target.port()
    );
    let script = script.replace('\n', "\n            ");
    let yaml = format!(
        "---\nkind: Label\nmetadata: {{name: cell}}\nspec:\n  definitions:\n    - driver: process\n      resources: {{cpu: 1, ram: 1, allow: [\"localhost:{}\"]}}\n      options:\n        command:\n          - sh\n          - -c\n          - |\n            {script}\n---\nkind: Application\nmetadata: {{name: cell-1}}\nspec: {{label: cell}}\n",
        target.port()
    );
    let (code, body) = d.apply(&yaml).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("cell-1", "ALLOCATED").await.unwrap();
    let proxy = a["status"]["resource"]["details"]["proxy"].as_str().unwrap().to_owned();
    let found = Findings(a["status"]["resource"]["details"]["workdir"].as_str().unwrap().into());
    let count = |line: &str| line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    eventually("the proxy answers the process", || async { found.get("latest.txt").ends_with("allowed-target") })
        .await
        .unwrap();

    // A crash: the process runs on, fishd comes back and adopts it.
    d.kill9();
    d.start_again().await.unwrap();
    let a = d.wait_phase("cell-1", "ALLOCATED").await.unwrap();
    let before = count(&found.get("latest.txt"));
    let r = eventually("the adopted process reaches the proxy again", || async {
        let line = found.get("latest.txt");
        count(&line) > before + 1 && line.ends_with("allowed-target")
    })
    .await;
    if r.is_err() {
        panic!("after the restart: {:?} (proxy was {proxy})\n--- fishd log ---\n{}", found.get("latest.txt"), d.log());
    }
    assert_eq!(a["status"]["resource"]["details"]["proxy"].as_str(), Some(proxy.as_str()));
    let port = std::fs::read_to_string(d.data_dir().join("proxy.port")).unwrap();
    assert!(proxy.ends_with(&format!(":{}", port.trim())), "{proxy} vs proxy.port {port}");
    assert!(d.log().contains("proxy listens on its port of the last start"), "{}", d.log());

    assert_eq!(d.post("/api/v1/applications/cell-1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("cell-1", "DEALLOCATED").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_its_pids_limit_and_the_host_keeps_answering() {
    if !process_prerequisites() {
        return;
    }
    let d = TestDaemon::start("drivers:\n  process: {gracePeriod: 1s}\n").await.unwrap();
    let yaml = "---\nkind: Label\nmetadata: {name: bomb}\nspec:\n  definitions:\n    - driver: process\n      resources: {cpu: 1, ram: 1, pids: 40}\n      options:\n        command: [sh, -c, 'b() { b | b & }; b; sleep 3600']\n---\nkind: Application\nmetadata: {name: bomb-1}\nspec: {label: bomb}\n";
    let (code, body) = d.apply(yaml).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("bomb-1", "ALLOCATED").await.unwrap();
    let uid = a["metadata"]["uid"].as_str().unwrap().to_owned();
    // The cgroup holding the limit: v2 where it has the pids controller, else v1.
    let groups = [
        format!("/sys/fs/cgroup/unified/aquarium/process/{uid}"),
        format!("/sys/fs/cgroup/aquarium/process/{uid}"),
        format!("/sys/fs/cgroup/pids/aquarium/process/{uid}"),
    ];
    let group = groups
        .iter()
        .find(|g| std::path::Path::new(g).join("pids.max").exists())
        .unwrap_or_else(|| panic!("no pids cgroup among {groups:?}"))
        .clone();
    assert_eq!(std::fs::read_to_string(format!("{group}/pids.max")).unwrap().trim(), "40");
    // The bomb reaches its limit, and goes no further.
    let current = || {
        std::fs::read_to_string(format!("{group}/pids.current")).unwrap_or_default().trim().parse::<u32>().unwrap_or(0)
    };
    eventually("the bomb to reach its limit", || async { current() >= 35 }).await.unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        assert!(current() <= 40, "{} tasks over a limit of 40", current());
        // The host and fishd still answer promptly.
        let t = std::time::Instant::now();
        assert_eq!(d.get("/healthz").await.unwrap().0, 200);
        assert!(t.elapsed() < Duration::from_secs(5), "fishd took {:?} to answer", t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(d.post("/api/v1/applications/bomb-1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("bomb-1", "DEALLOCATED").await.unwrap();
    assert!(!std::path::Path::new(&group).exists(), "cgroup {group} left behind");
}

/// Review s4 M8: the chain of an isolated process's veth is checked at every resync like a
/// docker network's: flushed and unhooked by hand while the process runs, it comes back
/// (and the process is cut off from the host again); a chain whose veth is gone (a
/// removal that failed) is deleted, on a node with no docker driver; deallocation
/// removes the process's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_process_chain_deleted_by_hand_is_repaired_at_the_next_resync() {
    if !process_prerequisites() {
        return;
    }
    let host_svc = http_service("0.0.0.0:0", "host-service").await;
    let d = TestDaemon::start("resyncInterval: 1s\ndrivers:\n  process: {gracePeriod: 1s}\n").await.unwrap();
    // "<n> <answer>": what the host service told it, again and again (empty: blocked).
    let script = format!(
        r#"i=0
while true; do
  i=$((i+1))
  r=$(curl -s -m 2 --noproxy '*' http://169.254.64.1:{port}/)
  echo "$i $r" > latest.tmp && mv latest.tmp latest.txt
  sleep 0.2
done"#,
        port = host_svc.port()
    );
    let script = script.replace('\n', "\n            ");
    let yaml = format!(
        "---\nkind: Label\nmetadata: {{name: cell}}\nspec:\n  definitions:\n    - driver: process\n      resources: {{cpu: 1, ram: 1}}\n      options:\n        command:\n          - sh\n          - -c\n          - |\n            {script}\n---\nkind: Application\nmetadata: {{name: cell-1}}\nspec: {{label: cell}}\n"
    );
    let (code, body) = d.apply(&yaml).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("cell-1", "ALLOCATED").await.unwrap();
    let uid = a["metadata"]["uid"].as_str().unwrap().replace('-', "");
    let veth = format!("aqh{}", &uid[20..]);
    let chain = format!("AQ-{veth}");
    let found = Findings(a["status"]["resource"]["details"]["workdir"].as_str().unwrap().into());
    let count = |line: &str| line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    eventually("the process to probe the host", || async { count(&found.get("latest.txt")) > 1 }).await.unwrap();
    assert!(!found.get("latest.txt").contains("host-service"), "{}", found.get("latest.txt"));
    let hooked = || sh("iptables", &["-w", "-C", "INPUT", "-i", &veth, "-j", &chain]).0;
    let rules = || sh("iptables", &["-w", "-S", &chain]).1;
    assert!(hooked() && rules().contains("REJECT"), "{}", rules());

    // By hand: the jump deleted, the chain flushed.
    assert!(sh("iptables", &["-w", "-D", "INPUT", "-i", &veth, "-j", &chain]).0);
    assert!(sh("iptables", &["-w", "-F", &chain]).0);
    eventually("the process chain to be repaired", || async { hooked() && rules().contains("REJECT") }).await.unwrap();
    let repaired = count(&found.get("latest.txt"));
    eventually("the process to probe again", || async { count(&found.get("latest.txt")) > repaired + 2 })
        .await
        .unwrap();
    assert!(!found.get("latest.txt").contains("host-service"), "reached the host after the repair");
    assert!(d.log().contains("firewall chain differs") || d.log().contains("firewall jump installed"), "{}", d.log());

    // A chain left by a failed removal: its veth does not exist.
    let stale = "AQ-aqh0000deadbeef";
    sh("iptables", &["-w", "-N", stale]);
    assert!(sh("iptables", &["-w", "-A", stale, "-j", "RETURN"]).0);
    assert!(sh("iptables", &["-w", "-A", "INPUT", "-i", "aqh0000deadbeef", "-j", stale]).0);
    eventually("the stale chain to be collected", || async { !sh("iptables", &["-w", "-S"]).1.contains(stale) })
        .await
        .unwrap();

    assert_eq!(d.post("/api/v1/applications/cell-1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("cell-1", "DEALLOCATED").await.unwrap();
    assert!(!sh("iptables", &["-w", "-S"]).1.contains(&chain), "{chain} outlived its process");
}
