//! What `/proc` says about processes: identity against pid reuse, and the members of a
//! process group or session.
//!
//! A pid alone names a process only while it lives; `(pid, start time)` names it for good,
//! because the kernel never starts two processes with one pid at the same clock tick.

use std::fs;
use std::io;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The fields of `/proc/<pid>/stat` the driver needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// `Z` for a zombie: it has exited and only waits to be reaped.
    pub state: char,
    pub pgrp: i32,
    pub session: i32,
    /// Field 22: clock ticks after boot when the process started.
    pub start_time: u64,
}

impl Stat {
    /// Whether the process still runs code (zombies are dead, just not reaped yet).
    pub fn alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// Reads `/proc/<pid>/stat`; `None` when no such process exists.
pub fn stat(pid: i32) -> io::Result<Option<Stat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => Ok(parse_stat(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // ESRCH: the process ended while we read.
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses one `stat` line. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    // rest: " S ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    //         cutime cstime priority nice num_threads itrealvalue starttime ..."
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        pid,
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Every live process whose process group or session is `leader`. Errors reading one
/// process are skipped: it ended while the scan ran.
pub fn members(leader: i32) -> io::Result<Vec<Stat>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Ok(Some(st)) = stat(pid)
            && st.alive()
            && (st.pgrp == leader || st.session == leader)
        {
            found.push(st);
        }
    }
    Ok(found)
}

/// Sends `signal` to one process, ignoring one that is already gone.
pub fn signal(pid: i32, signal: Signal) {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pid, %signal, error = %e, "cannot signal process"),
    }
}

/// Sends `signal` to a whole process group, ignoring one that is already empty.
pub fn signal_group(pgrp: i32, signal: Signal) {
    match nix::sys::signal::killpg(Pid::from_raw(pgrp), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgrp, %signal, error = %e, "cannot signal process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = "4242 (a b) (c)) S 1 4242 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let st = parse_stat(line).expect("parses");
        assert_eq!(st, Stat { pid: 4242, state: 'S', pgrp: 4242, session: 4240, start_time: 987654 });
    }

    #[test]
    fn reads_own_stat() {
        let me = std::process::id() as i32;
        let st = stat(me).expect("readable").expect("exists");
        assert_eq!(st.pid, me);
        assert!(st.alive());
        assert!(st.start_time > 0);
    }
}
