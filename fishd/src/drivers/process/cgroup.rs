//! cgroup v2 for process resources: one cgroup per application, for limits and for a
//! kill that reaches every descendant, even one that left the session.
//!
//! fishd uses cgroups only where it may create them: it needs a cgroup2 mount it can
//! write (root, or a delegated subtree). The `cpu` and `memory` controllers are used when
//! they can be enabled down to the driver's cgroup; on a hybrid host (cgroup v1 controllers,
//! an empty v2 hierarchy, as in many containers) the cgroup still tracks and kills the
//! processes, and memory falls back to an rlimit (see the parent module).
//!
//! The number of tasks is limited by `pids.max` (`resources.pids`, default
//! [`DEFAULT_PIDS`]): in the v2 cgroup where the `pids` controller can be enabled there,
//! else in a group of the v1 `pids` hierarchy ([`PidsV1`]) that the process joins too.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// `cpu.max` period: the kernel's default, 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

/// Tasks a process resource may run at once unless `resources.pids` says: a parallel
/// build uses a few hundred, a fork bomb reaches it in milliseconds.
pub const DEFAULT_PIDS: u32 = 1024;

/// The driver instance's cgroup, under which each application gets its own.
#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
    cpu: bool,
    memory: bool,
    pids: bool,
}

/// What one application's cgroup enforces.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    pub cpu: bool,
    pub memory: bool,
    pub pids: bool,
}

impl Cgroups {
    /// Prepares `<parent>/<dir_name>` (parent defaults to `<cgroup2 mount>/aquarium`) and
    /// enables what controllers it can; `None` when this host gives us no cgroup v2.
    pub fn detect(parent: Option<&Path>, dir_name: &str) -> Option<Cgroups> {
        let mount = cgroup2_mount()?;
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(|| mount.join("aquarium"));
        let root = parent.join(dir_name);
        if let Err(e) = fs::create_dir_all(&root) {
            tracing::info!(path = %root.display(), error = %e, "no cgroup v2: cannot create the cgroup");
            return None;
        }
        // Each level from the mount down must delegate a controller to its children.
        let mut levels = vec![root.clone()];
        let mut at = root.as_path();
        while let Some(up) = at.parent() {
            if !up.starts_with(&mount) {
                break;
            }
            levels.push(up.to_path_buf());
            at = up;
        }
        levels.reverse();
        let enable = |ctl: &str| {
            levels.iter().all(|dir| {
                let already = fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .is_ok_and(|s| s.split_whitespace().any(|c| c == ctl));
                already || fs::write(dir.join("cgroup.subtree_control"), format!("+{ctl}")).is_ok()
            })
        };
        let cgroups = Cgroups { cpu: enable("cpu"), memory: enable("memory"), pids: enable("pids"), root };
        tracing::info!(
            path = %cgroups.root.display(), cpu = cgroups.cpu, memory = cgroups.memory, pids = cgroups.pids,
            "resources get a cgroup v2"
        );
        Some(cgroups)
    }

    /// The cgroup of one application (whether or not it exists).
    pub fn path(&self, uid: Uuid) -> PathBuf {
        self.root.join(uid.to_string())
    }

    /// Whether these cgroups enforce `pids.max`.
    pub fn limits_pids(&self) -> bool {
        self.pids
    }

    /// Creates the application's cgroup with its limits: `cpu` cores and `ram` GiB, 0 for
    /// none, and at most `pids` tasks.
    pub fn create(&self, uid: Uuid, cpu: u32, ram: u32, pids: u32) -> io::Result<(PathBuf, Applied)> {
        let path = self.path(uid);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let mut applied = Applied::default();
        if self.cpu && cpu > 0 {
            fs::write(path.join("cpu.max"), format!("{} {CPU_PERIOD_US}", u64::from(cpu) * CPU_PERIOD_US))?;
            applied.cpu = true;
        }
        if self.memory && ram > 0 {
            fs::write(path.join("memory.max"), (u64::from(ram) << 30).to_string())?;
            // Swap would let the process run past its limit, only slower.
            let _ = fs::write(path.join("memory.swap.max"), "0");
            applied.memory = true;
        }
        if self.pids {
            fs::write(path.join("pids.max"), pids.to_string())?;
            applied.pids = true;
        }
        Ok((path, applied))
    }
}

/// The v1 `pids` hierarchy, for hosts whose v2 hierarchy has no `pids` controller.
#[derive(Clone, Debug)]
pub struct PidsV1 {
    root: PathBuf,
}

impl PidsV1 {
    /// Prepares `<pids mount>/aquarium/<dir_name>`; `None` without a writable v1 `pids`.
    pub fn detect(dir_name: &str) -> Option<PidsV1> {
        let mount = v1_mount("pids")?;
        let root = mount.join("aquarium").join(dir_name);
        if let Err(e) = fs::create_dir_all(&root) {
            tracing::info!(path = %root.display(), error = %e, "no v1 pids cgroup");
            return None;
        }
        tracing::info!(path = %root.display(), "resources get a v1 pids cgroup");
        Some(PidsV1 { root })
    }

    /// The group of one application (whether or not it exists).
    pub fn path(&self, uid: Uuid) -> PathBuf {
        self.root.join(uid.to_string())
    }

    /// Creates the application's group with `pids.max` = `pids`.
    pub fn create(&self, uid: Uuid, pids: u32) -> io::Result<PathBuf> {
        let path = self.path(uid);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        fs::write(path.join("pids.max"), pids.to_string())?;
        Ok(path)
    }
}

/// A group per application that only caps its tasks (`pids.max`), for drivers whose
/// resource is one host program that starts others on the guest's behalf (QEMU runs a
/// relay per guest connection): in the v2 hierarchy where its `pids` controller can be
/// enabled, else in the v1 `pids` hierarchy.
#[derive(Clone, Debug)]
pub enum PidsGroups {
    V2(Cgroups),
    V1(PidsV1),
}

impl PidsGroups {
    /// `<v2 mount>/aquarium/<dir_name>` or `<v1 pids mount>/aquarium/<dir_name>`; `None`
    /// where neither can limit tasks (not root, no `pids` controller).
    pub fn detect(dir_name: &str) -> Option<PidsGroups> {
        match Cgroups::detect(None, dir_name) {
            Some(cg) if cg.limits_pids() => Some(PidsGroups::V2(cg)),
            _ => PidsV1::detect(dir_name).map(PidsGroups::V1),
        }
    }

    /// The group of one application (whether or not it exists).
    pub fn path(&self, uid: Uuid) -> PathBuf {
        match self {
            PidsGroups::V2(cg) => cg.path(uid),
            PidsGroups::V1(v1) => v1.path(uid),
        }
    }

    /// Creates the application's group with `pids.max` = `pids` (and no other limit).
    pub fn create(&self, uid: Uuid, pids: u32) -> io::Result<PathBuf> {
        match self {
            PidsGroups::V2(cg) => cg.create(uid, 0, 0, pids).map(|(path, _)| path),
            PidsGroups::V1(v1) => v1.create(uid, pids),
        }
    }
}

/// Where the v1 hierarchy with `controller` is mounted.
fn v1_mount(controller: &str) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let options = r.nth(1)?;
        options.split(',').any(|o| o == controller).then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The pids in a cgroup (empty when it does not exist).
pub fn procs(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills everything in a cgroup: `cgroup.kill` (Linux 5.14) or SIGKILL to each member.
pub fn kill(path: &Path) {
    if fs::write(path.join("cgroup.kill"), "1").is_err() {
        for pid in procs(path) {
            super::procfs::signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Removes an empty cgroup; `Ok` when it is gone.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where the cgroup2 hierarchy is mounted, from `/proc/self/mountinfo`.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}
