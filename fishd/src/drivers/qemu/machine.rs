//! One QEMU process: the accelerator choice, the command line, the start that lets it
//! outlive fishd, and the files that let a later fishd find it again.
//!
//! QEMU runs under a small `sh` wrapper that leads its own session (`setsid`), with
//! stdio on files, never on pipes to fishd. The serial console is QEMU's stdout, piped
//! through `head -c` into `console.log` (capped, then drained); QEMU's own messages go
//! to `qemu.log`; the wrapper writes QEMU's exit status to `status`. QEMU writes its
//! pid to `qemu.pid` and serves QMP on `qmp.sock`. `-no-shutdown` keeps QEMU alive when
//! the guest powers off, so a power-off (QMP status `shutdown`) is told apart from QEMU
//! dying (the process is gone), whether or not fishd watched it happen.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use api_types::Network;
use uuid::Uuid;

use super::super::process::launch::{self, PidRecord};
use super::super::process::procfs;

/// QEMU's pid, written by QEMU (`-pidfile`).
pub const QEMU_PID_FILE: &str = "qemu.pid";
/// QEMU's exit status, written by the wrapper.
pub const STATUS_FILE: &str = "status";
/// The serial console.
pub const CONSOLE_FILE: &str = "console.log";
/// QEMU's own stderr.
pub const QEMU_LOG_FILE: &str = "qemu.log";
/// QMP.
pub const QMP_SOCKET: &str = "qmp.sock";
/// Where the guest's metadata connections arrive (see `meta`).
pub const META_SOCKET: &str = "meta.sock";
/// The guest sees its metadata endpoint here (port 80).
pub const META_GUEST_ADDR: &str = "10.0.2.100";
/// Where the guest's proxy connections arrive (see `proxy`).
pub const PROXY_SOCKET: &str = "proxy.sock";
/// The longest unix socket path the kernel accepts (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `$1` status file, `$2` console cap in bytes, `$3` QEMU's stderr log, `$4` its cap in
/// bytes, `$5` the pids cgroup to join or empty; then QEMU's argv. QEMU's stdout (the
/// console) and stderr (its messages, and those of every relay it starts) each go
/// through `head -c` into their file, then to `/dev/null`: neither file grows past its
/// cap, and neither writer ever blocks.
const WRAPPER: &str = r#"status=$1 limit=$2 errlog=$3 errlimit=$4 cg=$5
shift 5
if [ -n "$cg" ] && ! echo $$ > "$cg/cgroup.procs"; then
  echo "fishd: cannot enter cgroup $cg" >>"$errlog"; echo 125 > "$status"; exit 125
fi
{
  {
    "$@" </dev/null 2>&1 1>&3 3>&-
    echo $? > "$status"
  } | { stdbuf -o0 head -c "$errlimit" >>"$errlog"; exec cat >/dev/null; } 3>&-
} 3>&1 | { stdbuf -o0 head -c "$limit"; exec cat >/dev/null; }
"#;

/// Cap of `qemu.log`: QEMU's own messages are a few lines; past this it is a guest
/// making every relay fail (each failure writes a line), which the tail shows anyway.
pub const QEMU_LOG_LIMIT: u64 = 1 << 20;

/// The accelerator a machine runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Whether KVM works here: `/dev/kvm` opens read-write AND the CPU reports `vmx` or
/// `svm`. Both are needed: a host can expose `/dev/kvm` without virtualisation
/// extensions, and a KVM guest then hangs early in boot. `Err` says why not.
pub fn kvm_usable() -> Result<(), String> {
    fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").map_err(|e| format!("/dev/kvm: {e}"))?;
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    let has_flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if has_flag { Ok(()) } else { Err("the CPU reports no vmx/svm flag".into()) }
}

/// What QEMU is asked to run.
pub struct Spec<'a> {
    pub dir: &'a Path,
    pub uid: Uuid,
    pub accel: Accel,
    pub cpu: u32,
    pub ram_gib: u32,
    /// The boot disk (the overlay), qcow2.
    pub root: Option<&'a Path>,
    /// Extra disks: `(name, qcow2 path)`.
    pub disks: &'a [(String, PathBuf)],
    /// The NoCloud seed, raw ISO.
    pub seed: Option<&'a Path>,
    pub kernel: Option<&'a str>,
    pub initrd: Option<&'a str>,
    pub append: Option<&'a str>,
    pub network: Network,
    /// The per-connection command behind the guest's metadata address.
    pub relay: &'a str,
    /// The per-connection command behind the guest's proxy address.
    pub proxy_relay: &'a str,
}

/// A MAC address for the machine, stable per application (QEMU's local prefix).
pub fn mac_of(uid: Uuid) -> String {
    let b = uid.as_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[13], b[14], b[15])
}

/// QEMU options are comma-separated: a comma inside a value is written twice.
fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// QEMU's argv (without the program).
pub fn args(spec: &Spec<'_>) -> Vec<String> {
    let dir = spec.dir;
    let path = |name: &str| dir.join(name).display().to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| (*s).to_owned()));
    let name = format!("fish-{}", spec.uid);
    push(&["-name", &opt(&name), "-M", "q35", "-accel", spec.accel.as_str()]);
    if spec.accel == Accel::Kvm {
        push(&["-cpu", "host"]);
    }
    push(&["-smp", &spec.cpu.max(1).to_string(), "-m", &format!("{}G", spec.ram_gib.max(1))]);
    push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-shutdown"]);
    push(&["-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console"]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", opt(&path(QMP_SOCKET)))]);
    push(&["-pidfile", &path(QEMU_PID_FILE)]);
    if let Some(root) = spec.root {
        push(&["-drive", &format!("file={},if=virtio,format=qcow2,discard=unmap", opt(&root.display().to_string()))]);
    }
    for (i, (disk, file)) in spec.disks.iter().enumerate() {
        let id = format!("disk{i}");
        push(&[
            "-drive",
            &format!("file={},if=none,id={id},format=qcow2,discard=unmap", opt(&file.display().to_string())),
        ]);
        // virtio-blk serials are at most 20 bytes: the guest finds the disk by it
        // (/dev/disk/by-id/virtio-<name>).
        let serial: String = disk.chars().take(20).collect();
        push(&["-device", &format!("virtio-blk-pci,drive={id},serial={serial}")]);
    }
    if let Some(seed) = spec.seed {
        push(&["-drive", &format!("file={},if=virtio,format=raw,readonly=on", opt(&seed.display().to_string()))]);
    }
    if let Some(k) = spec.kernel {
        push(&["-kernel", k]);
    }
    if let Some(i) = spec.initrd {
        push(&["-initrd", i]);
    }
    if let Some(ap) = spec.append {
        push(&["-append", ap]);
    }
    let restrict = if spec.network == Network::Nat { "off" } else { "on" };
    // The proxy's forward is always there: QEMU's command line is fixed for the machine's
    // life, while the node may turn its proxy on by the time it adopts the machine.
    let netdev = format!(
        "user,id=net0,restrict={restrict},guestfwd=tcp:{META_GUEST_ADDR}:80-cmd:{},guestfwd=tcp:{}-cmd:{}",
        opt(spec.relay),
        super::proxy::GUEST_PROXY,
        opt(spec.proxy_relay)
    );
    push(&["-netdev", &netdev, "-device", &format!("virtio-net-pci,netdev=net0,mac={}", mac_of(spec.uid))]);
    a
}

/// Fails when a socket path in `dir` would be too long for the kernel.
pub fn check_socket_paths(dir: &Path) -> Result<(), String> {
    for name in [QMP_SOCKET, META_SOCKET, PROXY_SOCKET] {
        let p = dir.join(name);
        if p.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "{} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes): use a shorter dataDir",
                p.display()
            ));
        }
    }
    Ok(())
}

/// Starts QEMU under the wrapper and records the wrapper's pid file (`pid`:
/// `<pid> <start time>`, as the process driver writes it).
pub fn spawn(
    dir: &Path,
    qemu: &Path,
    args: &[String],
    console_limit: u64,
    pids_cgroup: Option<&Path>,
    setsid: Option<&Path>,
) -> io::Result<PidRecord> {
    let console = fs::File::create(dir.join(CONSOLE_FILE))?;
    let mut cmd = match setsid {
        Some(setsid) => {
            let mut c = tokio::process::Command::new(setsid);
            c.arg("sh");
            c
        }
        None => {
            let mut c = tokio::process::Command::new("sh");
            c.process_group(0);
            c
        }
    };
    cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").current_dir(dir);
    cmd.arg("-c").arg(WRAPPER).arg("fish-qemu");
    cmd.arg(dir.join(STATUS_FILE)).arg(console_limit.to_string()).arg(dir.join(QEMU_LOG_FILE));
    cmd.arg(QEMU_LOG_LIMIT.to_string()).arg(pids_cgroup.unwrap_or(Path::new("")));
    cmd.arg(qemu).args(args);
    cmd.stdin(Stdio::null()).stdout(console.try_clone()?).stderr(console);
    // The machine outlives fishd, as a process resource does.
    launch::spawn_recorded(&mut cmd, dir)
}

/// QEMU's pid, if it runs and is this directory's machine: its command line names this
/// directory's QMP socket, so a recycled pid is never taken for it.
pub fn qemu_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(dir.join(QEMU_PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let qmp = dir.join(QMP_SOCKET);
    let needle = qmp.as_os_str().as_encoded_bytes();
    let mine = cmdline.windows(needle.len()).any(|w| w == needle);
    let alive = procfs::stat(pid).ok().flatten().is_some_and(|s| s.alive());
    (mine && alive).then_some(pid)
}

/// The wrapper's pid record, if written.
pub fn wrapper(dir: &Path) -> Option<PidRecord> {
    PidRecord::read(dir)
}

/// Why QEMU is gone: its exit status and the last lines it wrote.
pub fn death(dir: &Path) -> String {
    let status = fs::read_to_string(dir.join(STATUS_FILE)).ok().and_then(|s| s.trim().parse::<u32>().ok());
    let how = match status {
        Some(code) => format!("qemu {}", super::super::process::launch::describe_status(code)),
        None => "the qemu process is gone".to_owned(),
    };
    let log = tail(&dir.join(QEMU_LOG_FILE), 16 << 10);
    let tail: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() { how } else { format!("{how}: {tail}") }
}

/// The last `max` bytes of a file (lossy UTF-8; empty when unreadable).
fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = f.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn command_line_isolates_and_forwards_metadata() {
        let dir = Path::new("/data/qemu/qemu/x,y");
        let uid = Uuid::nil();
        let disks = vec![("ws".to_owned(), dir.join("disk-ws.qcow2"))];
        let spec = Spec {
            dir,
            uid,
            accel: Accel::Tcg,
            cpu: 2,
            ram_gib: 1,
            root: Some(&dir.join("overlay.qcow2")),
            disks: &disks,
            seed: None,
            kernel: Some("/boot/vmlinuz"),
            initrd: None,
            append: Some("console=ttyS0"),
            network: Network::Isolated,
            relay: "socat - UNIX-CONNECT:/m.sock",
            proxy_relay: "socat - UNIX-CONNECT:/p.sock",
        };
        let a = args(&spec).join(" ");
        assert!(a.contains("-accel tcg"), "{a}");
        assert!(a.contains("-smp 2 -m 1G"), "{a}");
        assert!(a.contains("restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:socat - UNIX-CONNECT:/m.sock,"), "{a}");
        assert!(a.contains(",guestfwd=tcp:10.0.2.101:3128-cmd:socat - UNIX-CONNECT:/p.sock"), "{a}");
        assert!(a.contains("unix:/data/qemu/qemu/x,,y/qmp.sock,server=on"), "commas doubled: {a}");
        assert!(a.contains("virtio-blk-pci,drive=disk0,serial=ws"), "{a}");
        assert!(a.contains("-no-shutdown"), "{a}");
        let nat = Spec { network: Network::Nat, ..spec };
        assert!(args(&nat).join(" ").contains("restrict=off"));
    }

    #[test]
    fn long_socket_paths_are_refused() {
        assert!(check_socket_paths(Path::new("/d")).is_ok());
        assert!(check_socket_paths(&Path::new("/").join("d".repeat(120))).is_err());
    }

    #[test]
    fn macs_are_local_and_stable() {
        let uid = Uuid::now_v7();
        assert_eq!(mac_of(uid), mac_of(uid));
        assert!(mac_of(uid).starts_with("52:54:00:"));
    }
}
