//! The qemu driver through a real fishd and real QEMU (issue 16), under TCG here: the
//! guest is Debian's cloud kernel with a busybox initramfs (scripts/qemu-test-guest.sh)
//! that fetches its metadata over the isolated network and prints it to the console.
//!
//! QEMU missing fails these tests under `CI=true` and skips them (saying so) elsewhere
//! ([`aquarium_e2e::prerequisite`]; `AQUARIUM_SKIP=qemu` opts out).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aquarium_e2e::{TestDaemon, http_service};
use sha2::{Digest, Sha256};

/// A TCG boot takes ~5 s on a quiet machine and several times that on a loaded one.
const BOOT: Duration = Duration::from_secs(150);

/// The test guest: (kernel, initramfs, base image), built on first use.
fn guest() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let have = |p: &str| Path::new("/usr/bin").join(p).exists() || Path::new("/usr/local/bin").join(p).exists();
    let missing: Vec<&str> = ["qemu-system-x86_64", "qemu-img", "socat"].into_iter().filter(|p| !have(p)).collect();
    let why = format!("{missing:?} not installed (scripts/install-deps.sh installs them)");
    if !aquarium_e2e::prerequisite("qemu", missing.is_empty(), &why) {
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned();
    let out = root.join("target/qemu-test");
    let status = Command::new("bash").arg(root.join("scripts/qemu-test-guest.sh")).arg(&out).status().unwrap();
    assert!(status.success(), "scripts/qemu-test-guest.sh failed");
    Some((out.join("vmlinuz"), out.join("initramfs.cpio.gz"), out.join("base.qcow2")))
}

/// Sends `request` on a machine's unix socket and reads the answer to its end.
async fn through_socket(socket: &Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn sha256(path: &Path) -> String {
    format!("sha256:{}", hex(&Sha256::digest(std::fs::read(path).unwrap())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CONFIG: &str = "allocationRetry: 1\ndrivers:\n  qemu: {gracePeriod: 10s}\n  test: {}\n";

/// A label booting the test guest from `image` (url and sum) with `extra` kernel arguments.
fn label(name: &str, kernel: &Path, initrd: &Path, image: &Path, sum: &str, extra: &str) -> String {
    label_allowing(name, kernel, initrd, image, sum, extra, &[])
}

/// [`label`] whose machines may reach `allow` through the node's proxy.
fn label_allowing(
    name: &str,
    kernel: &Path,
    initrd: &Path,
    image: &Path,
    sum: &str,
    extra: &str,
    allow: &[String],
) -> String {
    format!(
        "---\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  metadata: {{FROM_LABEL: label-value}}\n  definitions:\n    - driver: qemu\n      images: [{{url: \"{}\", sum: \"{sum}\"}}]\n      resources: {{cpu: 1, ram: 1, allow: {allow:?}}}\n      options:\n        kernel: {}\n        initrd: {}\n        append: \"console=ttyS0 quiet panic=-1 {extra}\"\n",
        image.display(),
        kernel.display(),
        initrd.display()
    )
}

fn app(name: &str, label: &str) -> String {
    format!(
        "---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}, metadata: {{FROM_APP: app-value}}}}\n"
    )
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

fn pid_of(app: &serde_json::Value) -> i32 {
    app["status"]["resource"]["identifier"].as_str().and_then(|p| p.parse().ok()).expect("pid identifier")
}

/// `fishctl logs NAME` until it contains `needle` (or the boot deadline passes).
async fn console_until(d: &TestDaemon, name: &str, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let out = d.fishctl(&["logs", "application", name]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < BOOT,
            "no {needle:?} on {name}'s console within {BOOT:?}:\n{text}\nstderr: {}\n--- fishd log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Copies the base image into the test's own directory, so its checksum is this test's.
fn own_base(d: &TestDaemon, base: &Path) -> (PathBuf, String) {
    let copy = d.data_dir().join("base.qcow2");
    std::fs::copy(base, &copy).unwrap();
    let sum = sha256(&copy);
    (copy, sum)
}

#[tokio::test]
async fn machine_reads_its_metadata_over_the_isolated_network_and_leaves_nothing() {
    let Some((kernel, initrd, base)) = guest() else { return };
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let (image, sum) = own_base(&d, &base);
    // A host service on every address: an isolated guest must not reach it (10.0.2.2 is
    // the host in QEMU's user network).
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // A host service the label allows through the node's proxy.
    let allowed = http_service("127.0.0.1:0", "allowed-target").await.port();
    let extra = format!("fish.disk=1 fish.probe=10.0.2.2:{port} fish.connect=localhost:{allowed},localhost:{port}");
    let allow = [format!("localhost:{allowed}")];
    let yaml = label_allowing("vm", &kernel, &initrd, &image, &sum, &extra, &allow) + &app("vm1", "vm");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    let a = d.wait_phase("vm1", "ALLOCATED").await.unwrap();
    let uid = a["metadata"]["uid"].as_str().unwrap().to_owned();
    let pid = pid_of(&a);
    let machine_dir = d.data_dir().join("qemu/qemu").join(&uid);
    assert!(machine_dir.join("overlay.qcow2").exists());

    let console = console_until(&d, "vm1", &format!("fish-proxy: localhost:{port} ")).await;
    let meta: String = console
        .split("fish-guest: metadata begin")
        .nth(1)
        .and_then(|r| r.split("fish-guest: metadata end").next())
        .unwrap_or_default()
        .to_owned();
    assert!(meta.contains("FISH_APPLICATION='vm1'"), "metadata not on the console:\n{console}");
    assert!(meta.contains("FROM_LABEL='label-value'") && meta.contains("FROM_APP='app-value'"), "{console}");
    assert!(console.contains(&format!("fish-probe: blocked 10.0.2.2:{port}")), "{console}");
    assert!(console.contains("fish-guest: wrote to /dev/vda"), "{console}");
    // The proxy, named in the metadata: the allowed target is reached, the host service
    // outside the allowance is refused.
    assert!(meta.contains("FISH_PROXY='10.0.2.101:3128'"), "{console}");
    let through = |target: String| {
        let prefix = format!("fish-proxy: {target} via 10.0.2.101:3128: ");
        console.lines().find(|l| l.starts_with(&prefix)).unwrap_or_default().to_owned()
    };
    let reached = through(format!("localhost:{allowed}"));
    assert!(reached.contains("HTTP/1.1 200") && reached.contains("allowed-target"), "{console}");
    assert!(through(format!("localhost:{port}")).contains("HTTP/1.1 403"), "{console}");
    assert!(d.log().contains("proxy refused"), "{}", d.log());
    let mut conn = listener.accept();
    assert!(
        matches!(&conn, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the isolated guest reached a host service: {conn:?}"
    );
    if let Ok((s, _)) = &mut conn {
        let _ = s.read(&mut [0u8; 1]);
    }

    assert_eq!(d.post("/api/v1/applications/vm1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("vm1", "DEALLOCATED").await.unwrap();
    assert!(!alive(pid), "QEMU {pid} survived deallocation");
    assert!(!machine_dir.exists(), "{} left behind", machine_dir.display());
    // The console outlives the machine, until the application is removed.
    let out = d.fishctl(&["logs", "application", "vm1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fish-guest: metadata end"), "console not kept: {out:?}");
    assert_eq!(sha256(&image), sum, "the base image changed");
    let cached = d.data_dir().join("qemu/images").join(format!("sha256-{}", sum.trim_start_matches("sha256:")));
    assert_eq!(sha256(&cached), sum, "the cached base changed");
}

#[tokio::test]
async fn machines_outlive_a_killed_fishd_and_orphans_are_killed() {
    let Some((kernel, initrd, base)) = guest() else { return };
    let mut d = TestDaemon::start(CONFIG).await.unwrap();
    let (image, sum) = own_base(&d, &base);
    let allowed = http_service("127.0.0.1:0", "allowed-target").await.port();
    let allow = [format!("localhost:{allowed}")];
    let yaml = label_allowing("vm", &kernel, &initrd, &image, &sum, "", &allow) + &app("m1", "vm") + &app("m2", "vm");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    let pids = [
        pid_of(&d.wait_phase("m1", "ALLOCATED").await.unwrap()),
        pid_of(&d.wait_phase("m2", "ALLOCATED").await.unwrap()),
    ];
    d.kill9();
    for pid in pids {
        assert!(alive(pid), "QEMU {pid} died with fishd");
    }
    // A machine of this node's naming whose application does not exist.
    let orphan_dir = d.data_dir().join("qemu/qemu").join("0190a0b0-0000-7000-8000-000000000016");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    let qmp = orphan_dir.join("qmp.sock");
    let mut orphan = Command::new("setsid")
        .args(["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-S", "-nodefaults", "-display", "none", "-m", "64"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-pidfile")
        .arg(orphan_dir.join("qemu.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !(orphan_dir.join("qemu.pid").exists() && qmp.exists()) {
        assert!(start.elapsed() < Duration::from_secs(30), "the orphan QEMU did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orphan_pid = orphan.id() as i32;

    d.start_again().await.unwrap();
    let start = Instant::now();
    while orphan.try_wait().unwrap().is_none() || orphan_dir.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "orphan QEMU {orphan_pid} not removed:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Adopted: the same machines, still running after a few inspections.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, pid) in ["m1", "m2"].iter().zip(pids) {
        let a = d.wait_phase(name, "ALLOCATED").await.unwrap();
        assert_eq!(pid_of(&a), pid);
        assert!(alive(pid));
    }
    // The adopted machines' metadata and proxy sockets are served again, each as its own
    // application: asked the way the guest's relay asks (QEMU's command line cannot change).
    for name in ["m1", "m2"] {
        console_until(&d, name, "fish-guest: ready").await;
        let a = d.application(name).await.unwrap();
        let dir = d.data_dir().join("qemu/qemu").join(a["metadata"]["uid"].as_str().unwrap());
        let meta = through_socket(&dir.join("meta.sock"), "GET /meta/v1/data?format=env HTTP/1.0\r\n\r\n").await;
        assert!(meta.contains(&format!("FISH_APPLICATION='{name}'")), "{meta}");
        assert!(meta.contains("FISH_PROXY='10.0.2.101:3128'"), "{meta}");
        let connect = format!("CONNECT localhost:{allowed} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n");
        let reply = through_socket(&dir.join("proxy.sock"), &connect).await;
        assert!(reply.contains("200 Connection established") && reply.contains("allowed-target"), "{reply}");
    }
    for name in ["m1", "m2"] {
        d.post(&format!("/api/v1/applications/{name}/deallocate"), None).await.unwrap();
    }
    for name in ["m1", "m2"] {
        d.wait_phase(name, "DEALLOCATED").await.unwrap();
    }
    for pid in pids {
        assert!(!alive(pid), "QEMU {pid} survived deallocation");
    }
}

#[tokio::test]
async fn a_guest_powering_off_ends_its_application_and_a_bad_sum_leaves_nothing() {
    let Some((kernel, initrd, base)) = guest() else { return };
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let (image, sum) = own_base(&d, &base);
    let bad = format!("sha256:{}", "0".repeat(64));
    let yaml = label("off", &kernel, &initrd, &image, &sum, "fish.poweroff=1")
        + &app("off1", "off")
        + &label("badsum", &kernel, &initrd, &image, &bad, "")
        + &app("bad1", "badsum");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);

    let start = Instant::now();
    let bad1 = loop {
        let a = d.application("bad1").await.unwrap();
        if a["status"]["phase"] == "ERROR" {
            break a;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "bad1 never failed: {:#}", a["status"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let msg = bad1["status"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("sha256 sum mismatch") && msg.contains(&bad), "{msg}");
    let uid = bad1["metadata"]["uid"].as_str().unwrap();
    assert!(!d.data_dir().join("qemu/qemu").join(uid).exists(), "a machine directory was left");
    let cache: Vec<String> = std::fs::read_dir(d.data_dir().join("qemu/images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(cache.iter().all(|f| !f.ends_with(".part") && !f.contains(&"0".repeat(64))), "{cache:?}");

    let a = d.wait_phase("off1", "ALLOCATED").await.unwrap();
    let pid = pid_of(&a);
    let start = Instant::now();
    let off1 = loop {
        let a = d.application("off1").await.unwrap();
        if a["status"]["phase"] != "ALLOCATED" {
            break a;
        }
        assert!(start.elapsed() < BOOT, "the guest did not power off within {BOOT:?}:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(off1["status"]["phase"], "DEALLOCATED", "{:#}", off1["status"]);
    let msg = off1["status"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("the guest powered off"), "{msg}");
    assert!(!alive(pid), "QEMU {pid} outlived its powered-off guest");
}

/// The TCP ports `pid` listens on, from its socket inodes and `/proc/net/tcp{,6}`.
fn listening_ports(pid: u32) -> Vec<(String, u16)> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let mut out = Vec::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") || !f.get(9).is_some_and(|i| inodes.contains(*i)) {
                continue;
            }
            let Some((addr, port)) = f[1].split_once(':') else { continue };
            let port = u16::from_str_radix(port, 16).unwrap();
            // Connect where it listens: loopback for the wildcard addresses.
            let host = match (v6, addr) {
                (false, "00000000") => "127.0.0.1".to_owned(),
                (false, a) => std::net::Ipv4Addr::from(u32::from_str_radix(a, 16).unwrap().to_le_bytes()).to_string(),
                (true, _) => "::1".to_owned(),
            };
            out.push((host, port));
        }
    }
    out
}

/// Review s4 H1: a machine's proxy identity is its 0700 unix socket, never a TCP port.
/// Once the guest has used the proxy, another local process connects to every TCP port
/// fishd listens on and asks, in both protocols, for the target only the machine may
/// reach: nothing answers as the machine (no relay, no refusal in its name).
#[tokio::test]
async fn no_local_connection_to_fishd_is_taken_for_a_machine() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((kernel, initrd, base)) = guest() else { return };
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let (image, sum) = own_base(&d, &base);
    let allowed = http_service("127.0.0.1:0", "allowed-target").await.port();
    let extra = format!("fish.connect=localhost:{allowed}");
    let allow = [format!("localhost:{allowed}")];
    let yaml = label_allowing("vm", &kernel, &initrd, &image, &sum, &extra, &allow) + &app("vm1", "vm");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    d.wait_phase("vm1", "ALLOCATED").await.unwrap();
    let console = console_until(&d, "vm1", "fish-proxy: ").await;
    assert!(console.contains("allowed-target"), "the guest did not reach its target through the proxy:\n{console}");
    let refusals_before = d.log().matches("proxy refused").count();

    let ports = listening_ports(d.pid().unwrap());
    assert!(!ports.is_empty(), "fishd listens on no TCP port?");
    let [hi, lo] = allowed.to_be_bytes();
    let socks: Vec<u8> = [&[5u8, 1, 0, 5, 1, 0, 3, 9][..], b"localhost", &[hi, lo], b"GET / HTTP/1.0\r\n\r\n"].concat();
    let http = format!("CONNECT localhost:{allowed} HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n").into_bytes();
    for (host, port) in &ports {
        for request in [&socks, &http] {
            let Ok(mut s) = tokio::net::TcpStream::connect((host.as_str(), *port)).await else { continue };
            let _ = s.write_all(request).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut answer)).await;
            let text = String::from_utf8_lossy(&answer);
            assert!(
                !text.contains("allowed-target") && !text.contains("200 Connection established"),
                "{host}:{port} relayed a local process as the machine: {text}"
            );
            if request == &socks {
                assert!(!answer.starts_with(&[5, 0, 5, 0]), "{host}:{port} granted a SOCKS5 request: {answer:?}");
            }
        }
    }
    // Whatever refused them refused an unknown client, not the machine.
    let log = d.log();
    let new: Vec<&str> = log.lines().filter(|l| l.contains("proxy refused")).skip(refusals_before).collect();
    assert!(new.iter().all(|l| !l.contains("vm1")), "refused in the machine's name: {new:?}");
    assert_eq!(d.post("/api/v1/applications/vm1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("vm1", "DEALLOCATED").await.unwrap();
}

/// The processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Review s4 H5: QEMU starts one relay per guest connection; a guest holding many open
/// meets its own `resources.pids` (QEMU's cgroup), not the host's process table, and
/// fishd keeps answering. `qemu.log` stays under its cap; deallocation leaves no relay.
#[tokio::test]
async fn a_guest_flooding_its_relays_meets_its_pids_limit_and_the_host_keeps_answering() {
    let Some((kernel, initrd, base)) = guest() else { return };
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let (image, sum) = own_base(&d, &base);
    let yaml = label_allowing("vm", &kernel, &initrd, &image, &sum, "fish.flood=150", &[])
        .replace("resources: {cpu: 1, ram: 1,", "resources: {cpu: 1, ram: 1, pids: 48,")
        + &app("vm1", "vm");
    assert!(yaml.contains("pids: 48"), "{yaml}");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    let a = d.wait_phase("vm1", "ALLOCATED").await.unwrap();
    let pid = pid_of(&a);
    let group = PathBuf::from(a["status"]["resource"]["details"]["cgroup"].as_str().expect("a pids cgroup"));
    assert_eq!(std::fs::read_to_string(group.join("pids.max")).unwrap().trim(), "48");
    let procs = std::fs::read_to_string(group.join("cgroup.procs")).unwrap();
    assert!(procs.lines().any(|l| l.trim() == pid.to_string()), "QEMU {pid} is not in {}: {procs}", group.display());
    console_until(&d, "vm1", "fish-flood: 150 connections").await;

    let uid = a["metadata"]["uid"].as_str().unwrap().to_owned();
    let machine_dir = d.data_dir().join("qemu/qemu").join(&uid);
    let relays = || processes_naming(&machine_dir.join("proxy.sock").display().to_string()).len();
    let current = || std::fs::read_to_string(group.join("pids.current")).unwrap().trim().parse::<u32>().unwrap();
    let (mut most, mut most_relays) = (0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let now = current();
        assert!(now <= 48, "{now} tasks over a limit of 48");
        most = most.max(now);
        most_relays = most_relays.max(relays());
        let t = Instant::now();
        assert_eq!(d.get("/healthz").await.unwrap().0, 200);
        assert!(t.elapsed() < Duration::from_secs(5), "fishd took {:?} to answer", t.elapsed());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(most >= 40, "the flood never pressed on the limit (at most {most} tasks, {most_relays} relays)");
    assert!(most_relays < 150, "{most_relays} relays at once: the limit held nothing");
    let log_len = std::fs::metadata(machine_dir.join("qemu.log")).map(|m| m.len()).unwrap_or(0);
    assert!(log_len <= 1 << 20, "qemu.log is {log_len} bytes");
    eprintln!(
        "flood: at most {most} tasks, {most_relays} relays; QEMU alive: {}; qemu.log {log_len} bytes",
        alive(pid)
    );

    assert_eq!(d.post("/api/v1/applications/vm1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("vm1", "DEALLOCATED").await.unwrap();
    assert!(!alive(pid), "QEMU {pid} survived deallocation");
    assert!(!group.exists(), "cgroup {} left behind", group.display());
    assert_eq!(relays(), 0, "relays outlived their machine");
}
