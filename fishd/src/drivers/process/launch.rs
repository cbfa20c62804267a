//! Starting a process so that it outlives fishd, and the files that let a later fishd
//! find it again and learn how it ended.
//!
//! The process is started through a small `sh` wrapper, the leader of a new session and
//! process group (`setsid`), with its stdio on files, never on pipes to fishd. The
//! wrapper, not fishd, waits for the command, so it can write the exit status into the
//! application's directory whether or not fishd is still its parent; it also pipes the
//! command's output through `head -c` into the log, then keeps draining it to
//! `/dev/null`, so a chatty process never blocks and the log never passes its cap.
//! `stdbuf -o0` makes `head` write each chunk as it reads it: its stdio buffer would
//! otherwise hold a quiet agent's first lines back from the log (and `fishctl logs`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::procfs;

/// Written by fishd after the spawn: `<pid> <start time>`.
pub const PID_FILE: &str = "pid";
/// Written by the wrapper when the command ends: its `$?`.
pub const STATUS_FILE: &str = "status";
/// The command's stdout and stderr, interleaved, at most `logLimit` bytes.
pub const LOG_FILE: &str = "output.log";
/// The address of the application's network namespace, when it has one.
pub const ADDR_FILE: &str = "addr";

/// `$1` status file, `$2` log cap in bytes, `$3` cgroup directory or empty, `$4` data
/// rlimit in KiB or empty, `$5` a v1 pids cgroup directory or empty; the rest is the
/// command.
const WRAPPER: &str = r#"status=$1 limit=$2 cg=$3 data=$4 pcg=$5
shift 5
if [ -n "$cg" ] && ! echo $$ > "$cg/cgroup.procs"; then
  echo "fishd: cannot enter cgroup $cg" >&2; echo 125 > "$status"; exit 125
fi
if [ -n "$pcg" ] && ! echo $$ > "$pcg/cgroup.procs"; then
  echo "fishd: cannot enter cgroup $pcg" >&2; echo 125 > "$status"; exit 125
fi
{
  if [ -n "$data" ] && ! ulimit -d "$data"; then echo 125 > "$status"; exit 125; fi
  "$@" </dev/null
  echo $? > "$status"
} 2>&1 | { stdbuf -o0 head -c "$limit"; exec cat >/dev/null; }
"#;

/// A process identified for good: its pid and when it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidRecord {
    pub pid: i32,
    pub start_time: u64,
}

impl PidRecord {
    /// Reads the pid file of an application directory; `None` when missing or torn.
    pub fn read(dir: &Path) -> Option<PidRecord> {
        let text = fs::read_to_string(dir.join(PID_FILE)).ok()?;
        let (pid, start) = text.trim().split_once(' ')?;
        Some(PidRecord { pid: pid.parse().ok()?, start_time: start.parse().ok()? })
    }

    /// Writes the pid file atomically, so a crash never leaves half of it.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let tmp = dir.join(format!("{PID_FILE}.tmp"));
        fs::write(&tmp, format!("{} {}\n", self.pid, self.start_time))?;
        fs::rename(tmp, dir.join(PID_FILE))
    }

    /// Records the namespace address, so an adopted resource reports it again.
    pub fn write_addr(dir: &Path, addr: std::net::Ipv4Addr) -> io::Result<()> {
        fs::write(dir.join(ADDR_FILE), addr.to_string())
    }

    /// The recorded namespace address.
    pub fn read_addr(dir: &Path) -> Option<std::net::Ipv4Addr> {
        fs::read_to_string(dir.join(ADDR_FILE)).ok()?.trim().parse().ok()
    }

    /// Whether this very process still runs (not a later one with the same pid).
    pub fn is_running(&self) -> io::Result<bool> {
        Ok(procfs::stat(self.pid)?.is_some_and(|st| st.start_time == self.start_time && st.alive()))
    }
}

/// How the command ended, if the wrapper recorded it.
pub fn read_status(dir: &Path) -> Option<String> {
    let code: u32 = fs::read_to_string(dir.join(STATUS_FILE)).ok()?.trim().parse().ok()?;
    Some(describe_status(code))
}

/// `$?` as words. Shells report a death by signal S as 128+S, so a status in 129..=192
/// is read as a signal: a program that itself exits with such a code is reported wrongly.
pub fn describe_status(code: u32) -> String {
    match code {
        129..=192 => format!("killed by signal {}", signal_name(code - 128)),
        _ => format!("exited with code {code}"),
    }
}

fn signal_name(n: u32) -> String {
    i32::try_from(n)
        .ok()
        .and_then(|n| nix::sys::signal::Signal::try_from(n).ok())
        .map_or_else(|| n.to_string(), |s| format!("{n} ({})", s.as_str()))
}

/// What to start and how.
pub struct Launch<'a> {
    pub dir: &'a Path,
    pub workdir: &'a Path,
    pub argv: &'a [String],
    pub env: BTreeMap<String, String>,
    pub log_limit: u64,
    pub cgroup: Option<PathBuf>,
    pub data_limit_kib: Option<u64>,
    /// A v1 `pids` group to join as well.
    pub pids_cgroup: Option<PathBuf>,
    /// Run in this network namespace (an `nsenter --net=` argument).
    pub netns: Option<String>,
    /// `(name, uid, gid)` to switch to, through `setpriv`.
    pub user: Option<(String, u32, u32)>,
    /// The `setsid` program; without it the wrapper only gets its own process group.
    pub setsid: Option<&'a Path>,
}

/// Starts the wrapper, records its pid file, and leaves a task that reaps it while fishd
/// is its parent.
pub fn spawn(l: Launch<'_>) -> io::Result<PidRecord> {
    let log = fs::File::create(l.dir.join(LOG_FILE))?;
    // setsid and nsenter exec what follows, so the pid recorded is the wrapper's.
    let mut prefix: Vec<std::ffi::OsString> = Vec::new();
    if let Some(setsid) = l.setsid {
        prefix.push(setsid.into());
    }
    if let Some(ns) = &l.netns {
        prefix.push("nsenter".into());
        prefix.push(ns.into());
        prefix.push("--".into());
    }
    prefix.push("sh".into());
    let mut cmd = tokio::process::Command::new(&prefix[0]);
    cmd.args(&prefix[1..]);
    if l.setsid.is_none() {
        cmd.process_group(0);
    }
    cmd.env_clear().envs(&l.env).current_dir(l.workdir);
    cmd.arg("-c").arg(WRAPPER).arg("fish-process");
    cmd.arg(l.dir.join(STATUS_FILE)).arg(l.log_limit.to_string());
    cmd.arg(l.cgroup.as_deref().unwrap_or(Path::new("")));
    cmd.arg(l.data_limit_kib.map(|k| k.to_string()).unwrap_or_default());
    cmd.arg(l.pids_cgroup.as_deref().unwrap_or(Path::new("")));
    if let Some((name, uid, gid)) = &l.user {
        cmd.args(["setpriv", &format!("--reuid={uid}"), &format!("--regid={gid}"), "--init-groups", "--"]);
        cmd.env("USER", name).env("LOGNAME", name);
    }
    cmd.args(l.argv);
    cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    spawn_recorded(&mut cmd, l.dir)
}

/// Spawns `cmd` so that it outlives fishd, writes its [`PidRecord`] into `dir`, and
/// reaps it in the background (the qemu driver starts its machines the same way).
pub fn spawn_recorded(cmd: &mut tokio::process::Command, dir: &Path) -> io::Result<PidRecord> {
    // The process must outlive fishd: never kill it when the handle drops.
    cmd.kill_on_drop(false);
    no_inherited_descriptors(cmd);
    let mut child = cmd.spawn()?;
    let pid =
        child.id().and_then(|p| i32::try_from(p).ok()).ok_or_else(|| io::Error::other("spawned without a pid"))?;
    // Not reaped yet, so /proc/<pid> is there even if it already exited.
    let st = procfs::stat(pid)?.ok_or_else(|| io::Error::other(format!("process {pid} has no /proc entry")))?;
    let record = PidRecord { pid, start_time: st.start_time };
    let written = record.write(dir);
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    written.map(|()| record)
}

/// Makes the started process keep no file descriptor of fishd's. Rust opens its own
/// with `O_CLOEXEC`, but fishd may have inherited open ones from whatever started it (a
/// shell's redirections, `flock(1)`'s lock, a supervisor's sockets), and a resource
/// would otherwise hold them, and the lock or socket behind them, for as long as it
/// runs: a sandbox leak, and a lock nobody can take until the resource ends (seen: an
/// agent left by a test kept the lock its test runner was started under).
fn no_inherited_descriptors(cmd: &mut tokio::process::Command) {
    use nix::libc;
    let mark = || {
        // Every descriptor from 3 up becomes close-on-exec (std's own error pipe already
        // is, so exec failures are still reported). Kernels before 5.11 lack the flag:
        // then the descriptors below a generous bound are marked one by one.
        // SAFETY (for both calls): plain system calls on integers, async-signal-safe.
        #[allow(unsafe_code)]
        let marked = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) } == 0;
        if !marked {
            for fd in 3..FALLBACK_FD_BOUND {
                #[allow(unsafe_code)]
                unsafe {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec; it only makes system
    // calls that are async-signal-safe, allocates nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(mark);
    }
}

/// Descriptors marked one by one where `close_range` is missing.
const FALLBACK_FD_BOUND: i32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_started_process_keeps_no_descriptor_fishd_inherited() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        // An inherited descriptor: open, and not close-on-exec.
        let held = fs::File::create(dir.path().join("held")).unwrap();
        nix::fcntl::fcntl(&held, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let out = dir.path().join("seen");
        let script = format!(
            "if [ -e /proc/$$/fd/{fd} ]; then echo inherited; else echo closed; fi > {out}.tmp && mv {out}.tmp {out}",
            fd = held.as_raw_fd(),
            out = out.display()
        );
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(script);
        spawn_recorded(&mut cmd, dir.path()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = loop {
            if let Ok(s) = fs::read_to_string(&out) {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "the process wrote nothing");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(seen.trim(), "closed");
    }

    #[test]
    fn describes_statuses() {
        assert_eq!(describe_status(3), "exited with code 3");
        assert_eq!(describe_status(137), "killed by signal 9 (SIGKILL)");
    }
}
