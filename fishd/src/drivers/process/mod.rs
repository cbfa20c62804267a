//! The `process` driver: one local process per application.
//!
//! # Layout
//! Everything of an application lives in `<data_dir>/process/<instance>/<uid>/` (a `/` in
//! the instance name becomes `_`): `pid` (`<pid> <start time>`, written by fishd), `status`
//! (the exit status, written by the wrapper), `output.log`, and `work/`, the default working
//! directory (`options.workdir` may name another; an absolute one is the user's and is
//! not removed on deallocation). A root fishd, whose processes run as other users, puts
//! `work/` in `<workRoot>/<uid>/` instead, outside the 0700 data directory ([`work`]). The directory is named from the uid, so after a restart (even `kill -9`)
//! [`Driver::list_owned`] finds every application again, and the start time in `pid`
//! (field 22 of `/proc/<pid>/stat`) tells the process from a later one with its pid.
//!
//! # Lifetime
//! The process runs under an `sh` wrapper that is the leader of its own session and
//! process group, with stdio on files: it survives fishd. The wrapper records the exit
//! status, so `inspect` knows how the process ended whether or not fishd restarted
//! meanwhile (see [`launch`]). Deallocation sends SIGTERM to every process of the
//! session/group (found through `/proc`) and of the application's cgroup, SIGKILL after
//! the grace period (`gracePeriod`, default 5 s), waits until none is left, then removes
//! the cgroup and the directory.
//!
//! # Limits
//! Where fishd may create cgroup v2 groups, each application gets one (under
//! `cgroupParent`, default `<cgroup2 mount>/aquarium`): `cpu.max` of `resources.cpu` cores
//! and `memory.max` of `resources.ram` GiB when those controllers can be enabled. Without a
//! memory controller the wrapper sets `RLIMIT_DATA` (heap and private mappings, which
//! is what "RAM" means for most programs, unlike `RLIMIT_AS`, which counts reserved
//! address space and breaks runtimes such as Go or the JVM) per process; CPU has no rlimit
//! counterpart (`RLIMIT_CPU` kills, it does not throttle), so it is not limited then.
//!
//! # Output
//! stdout and stderr go to `output.log`, capped at `logLimit` bytes (default 10 MiB);
//! what comes after the cap is discarded. [`Driver::log_path`] returns the file. On
//! deallocation the log moves to fishd's kept logs ([`crate::logs`]), where it stays
//! until the application is removed.
//!
//! # Isolation
//! `network: ""` (the default) runs the process in a network namespace of its own that
//! reaches only the node's metadata endpoint and proxy ([`netns`]); that needs a root
//! fishd, and elsewhere such a definition can never fit (see [`Driver::supports`]).
//! `network: host` shares the host's network on purpose; `nat` is not offered.
//! When fishd runs as root and the definition names no `user`, the process runs as a
//! user made for the application and removed with it ([`users`]). Every resource's
//! tasks are capped by `pids.max` (`resources.pids`, default
//! [`cgroup::DEFAULT_PIDS`]) where a cgroup `pids` controller is available.
//!
//! # Environment
//! A fixed `PATH`, `HOME` (the working directory), then the definition's `env`, then the
//! merged metadata (strings as they are, other JSON values JSON-encoded), so the
//! `FISH_*` variables of the metadata always win. Nothing of fishd's own environment leaks.

pub(crate) mod cgroup;
pub(crate) mod launch;
pub mod netns;
mod options;
pub(crate) mod procfs;
pub mod users;
mod work;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::{Definition, FieldError, HumanDuration, Network};
use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::firewall::{Firewall, Policy};
use super::{AllocateRequest, Allocated, Driver, DriverError, NodeServices, OwnedResource, ResourceState};
use cgroup::{Cgroups, PidsV1};
use launch::{Launch, PidRecord};
pub use options::ProcessOptions;

/// The grace period between SIGTERM and SIGKILL, as the contract says.
const DEFAULT_GRACE: Duration = Duration::from_secs(5);
/// Enough for a test suite's or build's output, small enough not to fill a disk.
const DEFAULT_LOG_LIMIT: u64 = 10 << 20;
/// How long SIGKILLed processes may take to vanish before deallocation reports failure
/// (it is retried): they leave at once unless stuck in uninterruptible I/O.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often deallocation looks at /proc while it waits.
const POLL: Duration = Duration::from_millis(50);
/// `PATH` of every process; fishd's own is not handed on.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `process` section of the fishd config (`drivers: {process: {...}}`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProcessConfig {
    /// Between SIGTERM and SIGKILL on deallocation (default 5s).
    #[serde(default)]
    pub grace_period: Option<HumanDuration>,
    /// Cap of each application's `output.log`, in bytes (default 10 MiB).
    #[serde(default)]
    pub log_limit: Option<u64>,
    /// Whether to use cgroup v2 when the host allows it (default true).
    #[serde(default = "yes")]
    pub cgroups: bool,
    /// Where this driver's cgroups go (default `<cgroup2 mount>/aquarium`).
    #[serde(default)]
    pub cgroup_parent: Option<PathBuf>,
    /// Where work directories go when processes may run as users of their own (a root
    /// fishd): `<workRoot>/<uid>/`. Default `<dataDir>-work/<instance>`. See [`work`].
    #[serde(default)]
    pub work_root: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig { grace_period: None, log_limit: None, cgroups: true, cgroup_parent: None, work_root: None }
    }
}

/// A `process` driver instance.
#[derive(Debug)]
pub struct ProcessDriver {
    name: String,
    root: PathBuf,
    /// Where work directories go, when not in the application's directory ([`work`]).
    work_root: Option<PathBuf>,
    /// fishd's data directory, where logs of released processes are kept.
    data_dir: PathBuf,
    grace: Duration,
    log_limit: u64,
    cgroups: Option<Cgroups>,
    /// The v1 `pids` hierarchy, when the v2 cgroups cannot limit tasks.
    pids_v1: Option<PidsV1>,
    setsid: Option<PathBuf>,
    is_root: bool,
    /// What the runtime bound: metadata and proxy ports on the process gateway.
    services: std::sync::Mutex<Endpoints>,
    /// Serializes namespace addresses and user creation.
    setup: tokio::sync::Mutex<()>,
    firewall: Firewall,
}

/// The node's services as isolated processes reach them.
#[derive(Clone, Copy, Debug, Default)]
struct Endpoints {
    meta_port: u16,
    proxy_port: u16,
    gateway: Option<std::net::IpAddr>,
}

/// How one allocation is isolated, decided before anything is made.
struct Isolation {
    netns: bool,
    /// A user made for the application (not named by the definition).
    own_user: bool,
}

impl ProcessDriver {
    /// Prepares `<data_dir>/process/<instance>` and detects cgroup v2 support.
    pub fn new(instance_name: String, config: ProcessConfig, data_dir: &Path) -> Result<ProcessDriver, DriverError> {
        let dir_name = instance_name.replace('/', "_");
        let root = data_dir.join("process").join(&dir_name);
        fs::create_dir_all(&root)
            .map_err(|e| DriverError::with_source(format!("cannot create {}", root.display()), e))?;
        let cgroups = if config.cgroups { Cgroups::detect(config.cgroup_parent.as_deref(), &dir_name) } else { None };
        let pids_v1 = match &cgroups {
            Some(cg) if cg.limits_pids() => None,
            _ if config.cgroups => PidsV1::detect(&dir_name),
            _ => None,
        };
        let is_root = nix::unistd::geteuid().is_root();
        let work_root = if is_root {
            let root = config.work_root.clone().unwrap_or_else(|| work::default_root(data_dir).join(&dir_name));
            work::prepare_root(&root)?;
            Some(root)
        } else {
            None
        };
        let setsid = find_program("setsid");
        if setsid.is_none() {
            tracing::warn!("no setsid program: processes get their own process group but share fishd's session");
        }
        Ok(ProcessDriver {
            name: instance_name,
            root,
            work_root,
            data_dir: data_dir.to_owned(),
            grace: config.grace_period.map_or(DEFAULT_GRACE, HumanDuration::get),
            log_limit: config.log_limit.unwrap_or(DEFAULT_LOG_LIMIT).max(1),
            cgroups,
            pids_v1,
            setsid,
            is_root,
            services: std::sync::Mutex::new(Endpoints::default()),
            setup: tokio::sync::Mutex::new(()),
            firewall: Firewall::default(),
        })
    }

    fn endpoints(&self) -> Endpoints {
        *self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn isolation(&self, req: &AllocateRequest, opts: &ProcessOptions) -> Result<Isolation, DriverError> {
        let netns = match req.definition.resources.network {
            Network::Host => false,
            Network::Isolated if self.is_root => true,
            Network::Isolated => return Err(DriverError::Invalid(NEEDS_ROOT.into())),
            Network::Nat => return Err(DriverError::Invalid(NO_NAT.into())),
        };
        Ok(Isolation { netns, own_user: self.is_root && opts.user.is_none() })
    }

    /// Makes the namespace (and its firewall chain) and the user of an allocation.
    async fn prepare(
        &self,
        req: &AllocateRequest,
        isolation: &Isolation,
        workdir: &Path,
    ) -> Result<(Option<std::net::Ipv4Addr>, Option<(String, u32, u32)>), DriverError> {
        let _serial = self.setup.lock().await;
        let uid = req.uid;
        let addr = if isolation.netns {
            let addr = tokio::task::spawn_blocking(move || netns::create(uid))
                .await
                .map_err(|e| DriverError::failed(format!("network namespace setup panicked: {e}")))??;
            self.firewall.ensure(&self.policy(uid)).await?;
            Some(addr)
        } else {
            None
        };
        let user = if isolation.own_user {
            let home = workdir.to_owned();
            let user = tokio::task::spawn_blocking(move || users::ensure(uid, &home))
                .await
                .map_err(|e| DriverError::failed(format!("user setup panicked: {e}")))??;
            Some(user)
        } else {
            None
        };
        Ok((addr, user))
    }

    /// The firewall policy of an isolated process's host-side veth: only the gateway's
    /// metadata and proxy ports.
    fn policy(&self, uid: Uuid) -> Policy {
        let ep = self.endpoints();
        Policy {
            bridge: netns::host_iface(uid),
            gateway: Some(std::net::IpAddr::V4(netns::GATEWAY)),
            isolated: true,
            ports: vec![ep.meta_port, ep.proxy_port],
        }
    }

    /// The directory of one application.
    pub fn app_dir(&self, uid: Uuid) -> PathBuf {
        self.root.join(uid.to_string())
    }

    fn workdir(&self, req: &AllocateRequest, opts: &ProcessOptions) -> Result<PathBuf, DriverError> {
        let template = opts.workdir.as_deref().unwrap_or("work");
        let filled = options::render_workdir(template, &req.uid.to_string(), &req.name, &req.node)
            .map_err(|e| DriverError::Invalid(format!("options.workdir: {e}")))?;
        Ok(self.work_base(req.uid).join(filled))
    }

    /// What relative work directories are in: the application's own directory, or its
    /// directory under the work root.
    fn work_base(&self, uid: Uuid) -> PathBuf {
        match &self.work_root {
            Some(root) => root.join(uid.to_string()),
            None => self.app_dir(uid),
        }
    }

    fn allocated(&self, req: &AllocateRequest, record: PidRecord, workdir: &Path) -> Allocated {
        let mut details = serde_json::Map::new();
        let resources = &req.definition.resources;
        details.insert("network".into(), resources.network.as_str().into());
        let ip_addr = (resources.network == Network::Isolated)
            .then(|| PidRecord::read_addr(&self.app_dir(req.uid)))
            .flatten()
            .map(|a| a.to_string());
        let ep = self.endpoints();
        if resources.network == Network::Isolated
            && let Some(gw) = ep.gateway
            && ep.proxy_port != 0
        {
            details.insert("proxy".into(), std::net::SocketAddr::new(gw, ep.proxy_port).to_string().into());
            if !resources.allow.is_empty() {
                details.insert("allow".into(), resources.allow.join(", ").into());
            }
        }
        let runs_as = match ProcessOptions::parse(&req.definition.options).ok().and_then(|o| o.user) {
            Some(u) => u,
            None if self.is_root => users::user_name(req.uid),
            None => nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name),
        };
        details.insert("user".into(), runs_as.into());
        details.insert("pid".into(), record.pid.into());
        details.insert("workdir".into(), workdir.display().to_string().into());
        details.insert("log".into(), self.app_dir(req.uid).join(launch::LOG_FILE).display().to_string().into());
        if let Some(cg) = &self.cgroups {
            details.insert("cgroup".into(), cg.path(req.uid).display().to_string().into());
        }
        Allocated { identifier: record.pid.to_string(), ip_addr, hw_addr: None, details }
    }

    /// Resolves `options.user` to `(name, uid, gid)`; `None` runs as fishd's user.
    fn user(&self, opts: &ProcessOptions) -> Result<Option<(String, u32, u32)>, DriverError> {
        let Some(name) = &opts.user else { return Ok(None) };
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| DriverError::with_source(format!("cannot look up user {name:?}"), e))?
            .ok_or_else(|| DriverError::Invalid(format!("options.user: no user {name:?} on this node")))?;
        if self.is_root {
            return Ok(Some((user.name, user.uid.as_raw(), user.gid.as_raw())));
        }
        if user.uid == nix::unistd::geteuid() {
            return Ok(None);
        }
        Err(DriverError::Invalid(format!("options.user: fishd does not run as root, so it cannot run as {name:?}")))
    }

    /// The live processes of an application: its session/group members and its cgroup's.
    fn members(&self, uid: Uuid, leader: Option<i32>) -> io::Result<Vec<i32>> {
        let mut pids: Vec<i32> = match leader {
            Some(l) => procfs::members(l)?.into_iter().map(|s| s.pid).collect(),
            None => Vec::new(),
        };
        if let Some(cg) = &self.cgroups {
            for pid in cgroup::procs(&cg.path(uid)) {
                if procfs::stat(pid)?.is_some_and(|s| s.alive()) {
                    pids.push(pid);
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Signals every process of the application until none is left or `deadline` passes;
    /// whether none is left.
    async fn stop(&self, uid: Uuid, leader: Option<i32>, signal: Signal, deadline: Instant) -> io::Result<bool> {
        let mut signalled = Vec::new();
        loop {
            let pids = self.members(uid, leader)?;
            if pids.is_empty() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            if signal == Signal::SIGKILL
                && let Some(cg) = &self.cgroups
            {
                cgroup::kill(&cg.path(uid));
            }
            if let Some(l) = leader
                && !signalled.contains(&l)
            {
                procfs::signal_group(l, signal);
                signalled.push(l);
            }
            for pid in pids {
                if !signalled.contains(&pid) {
                    procfs::signal(pid, signal);
                    signalled.push(pid);
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, definition: &Definition) -> Vec<FieldError> {
        let mut errors = options::validate(&definition.options);
        if definition.resources.network == Network::Nat {
            errors.push(FieldError { field: "resources.network".into(), message: NO_NAT.into() });
        }
        errors
    }

    fn supports(&self, definition: &Definition) -> Result<(), String> {
        match definition.resources.network {
            Network::Host => Ok(()),
            Network::Nat => Err(NO_NAT.into()),
            Network::Isolated if !self.is_root => Err(NEEDS_ROOT.into()),
            Network::Isolated => Ok(()),
        }
    }

    fn attach(&self, services: &NodeServices) {
        *self.services.lock().unwrap_or_else(|e| e.into_inner()) = Endpoints {
            meta_port: services.meta_port,
            proxy_port: services.proxy_port,
            gateway: services.process_gateway,
        };
    }

    async fn available(&self) -> Result<(), String> {
        Ok(())
    }

    /// Re-ensures the chain of every isolated process this instance owns whose veth
    /// exists (a flushed table or a deleted jump comes back), then deletes the chains of
    /// veths that are gone (a deallocation whose removal failed), also on a node with no
    /// docker driver. Under the setup lock: a namespace being made or removed is never
    /// looked at half-way.
    async fn enforce(&self) -> Result<(), DriverError> {
        if !self.is_root {
            return Ok(());
        }
        let _serial = self.setup.lock().await;
        let mut first_error = None;
        for owned in self.list_owned().await? {
            let iface = netns::host_iface(owned.uid);
            if !Path::new("/sys/class/net").join(&iface).exists() {
                continue;
            }
            if let Err(e) = self.firewall.ensure(&self.policy(owned.uid)).await {
                tracing::warn!(uid = %owned.uid, error = %e, "cannot repair an isolated process's firewall chain");
                first_error.get_or_insert(e);
            }
        }
        self.firewall.collect().await?;
        first_error.map_or(Ok(()), Err)
    }

    async fn allocate(&self, req: &AllocateRequest) -> Result<Allocated, DriverError> {
        let opts = ProcessOptions::parse(&req.definition.options).map_err(DriverError::Invalid)?;
        let dir = self.app_dir(req.uid);
        let workdir = self.workdir(req, &opts)?;
        if dir.exists() {
            if let Some(record) = PidRecord::read(&dir) {
                tracing::debug!(uid = %req.uid, pid = record.pid, "process already allocated");
                return Ok(self.allocated(req, record, &workdir));
            }
            // A crash between creating the directory and writing the pid file: start over.
            self.deallocate(req.uid, "").await?;
        }
        let isolation = self.isolation(req, &opts)?;
        let named_user = self.user(&opts)?;
        let io_err = |what: &str, e: io::Error| DriverError::with_source(format!("{what}: {e}"), e);
        fs::create_dir_all(&dir).map_err(|e| io_err(&format!("cannot create {}", dir.display()), e))?;
        let base = self.work_base(req.uid);
        if self.work_root.is_some() {
            work::create_private(&base).map_err(|e| io_err(&format!("cannot create {}", base.display()), e))?;
        }
        fs::create_dir_all(&workdir).map_err(|e| io_err(&format!("cannot create {}", workdir.display()), e))?;
        let (addr, own_user) = self.prepare(req, &isolation, &workdir).await?;
        if let Some(addr) = addr {
            PidRecord::write_addr(&dir, addr).map_err(|e| io_err("cannot record the namespace address", e))?;
        }
        let user = named_user.or(own_user);
        if let Some((_, uid, gid)) = &user {
            // Its own base (0700) and work directory are the user's; nothing above them.
            let own = (self.work_root.is_some() && workdir.starts_with(&base)).then_some(&base);
            for d in own.into_iter().chain([&workdir]) {
                std::os::unix::fs::chown(d, Some(*uid), Some(*gid))
                    .map_err(|e| io_err(&format!("cannot chown {}", d.display()), e))?;
            }
        }
        let (cpu, ram) = (req.definition.resources.cpu, req.definition.resources.ram);
        let pids = req.definition.resources.pids.unwrap_or(cgroup::DEFAULT_PIDS);
        let (cgroup, applied) = match &self.cgroups {
            Some(cg) => {
                let (path, applied) =
                    cg.create(req.uid, cpu, ram, pids).map_err(|e| io_err("cannot create the cgroup", e))?;
                (Some(path), applied)
            }
            None => (None, cgroup::Applied::default()),
        };
        let pids_cgroup = match &self.pids_v1 {
            Some(v1) if !applied.pids => {
                Some(v1.create(req.uid, pids).map_err(|e| io_err("cannot create the pids cgroup", e))?)
            }
            _ => None,
        };
        let data_limit_kib = (ram > 0 && !applied.memory).then(|| u64::from(ram) << 20);
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), PATH.to_string());
        env.insert("HOME".to_string(), workdir.display().to_string());
        env.extend(opts.env.clone());
        for (k, v) in &req.metadata {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.insert(k.clone(), value);
        }
        if isolation.netns {
            let ep = self.endpoints();
            let gw = std::net::IpAddr::V4(netns::GATEWAY);
            if ep.meta_port != 0 {
                let url = format!("http://{}/meta/v1/data", std::net::SocketAddr::new(gw, ep.meta_port));
                env.insert("FISH_META_URL".into(), url);
            }
            if ep.proxy_port != 0 {
                let token = req.metadata.get("FISH_META_TOKEN").and_then(Value::as_str);
                env.extend(crate::proxy::environment(std::net::SocketAddr::new(gw, ep.proxy_port), token));
            }
        }
        let record = launch::spawn(Launch {
            dir: &dir,
            workdir: &workdir,
            argv: &opts.command,
            env,
            log_limit: self.log_limit,
            cgroup,
            data_limit_kib,
            pids_cgroup,
            netns: isolation.netns.then(|| netns::nsenter_arg(req.uid)),
            user,
            setsid: self.setsid.as_deref(),
        })
        .map_err(|e| io_err(&format!("cannot start {:?}", opts.command[0]), e))?;
        tracing::info!(uid = %req.uid, pid = record.pid, command = ?opts.command, "process started");
        Ok(self.allocated(req, record, &workdir))
    }

    async fn inspect(&self, uid: Uuid, _identifier: &str) -> Result<ResourceState, DriverError> {
        let dir = self.app_dir(uid);
        if !dir.exists() {
            return Ok(ResourceState::Lost(format!("its directory {} is gone", dir.display())));
        }
        if let Some(ended) = launch::read_status(&dir) {
            return Ok(ResourceState::Ended(ended));
        }
        let Some(record) = PidRecord::read(&dir) else {
            return Ok(ResourceState::Lost("no pid file: the process was never fully started".into()));
        };
        let running = record.is_running().map_err(|e| DriverError::with_source("cannot read /proc", e))?;
        if running {
            return Ok(ResourceState::Running);
        }
        // It may have written its status between the two reads.
        Ok(match launch::read_status(&dir) {
            Some(ended) => ResourceState::Ended(ended),
            None => ResourceState::Lost(format!("process {} is gone without recording an exit status", record.pid)),
        })
    }

    async fn deallocate(&self, uid: Uuid, _identifier: &str) -> Result<(), DriverError> {
        let dir = self.app_dir(uid);
        // A group or session id is never reused while a process still carries it, so when
        // the leader is gone its leftovers are still ours; when its pid runs another
        // process, our group is empty and that process is not ours to signal.
        let leader = match PidRecord::read(&dir) {
            Some(rec) => match procfs::stat(rec.pid).map_err(|e| DriverError::with_source("cannot read /proc", e))? {
                Some(st) if st.start_time != rec.start_time => None,
                _ => Some(rec.pid),
            },
            None => None,
        };
        let proc_err = |e: io::Error| DriverError::with_source("cannot read /proc", e);
        let term_deadline = Instant::now() + self.grace;
        if !self.stop(uid, leader, Signal::SIGTERM, term_deadline).await.map_err(proc_err)? {
            tracing::info!(%uid, grace = ?self.grace, "process ignored SIGTERM, sending SIGKILL");
            if !self.stop(uid, leader, Signal::SIGKILL, Instant::now() + KILL_TIMEOUT).await.map_err(proc_err)? {
                return Err(DriverError::failed(format!("processes of {uid} still alive after SIGKILL")));
            }
        }
        if let Some(cg) = &self.cgroups {
            let path = cg.path(uid);
            let deadline = Instant::now() + KILL_TIMEOUT;
            while let Err(e) = cgroup::remove(&path) {
                if Instant::now() >= deadline {
                    return Err(DriverError::with_source(format!("cannot remove cgroup {}", path.display()), e));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if let Some(v1) = &self.pids_v1 {
            let path = v1.path(uid);
            let deadline = Instant::now() + KILL_TIMEOUT;
            while let Err(e) = cgroup::remove(&path) {
                if Instant::now() >= deadline {
                    return Err(DriverError::with_source(format!("cannot remove cgroup {}", path.display()), e));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        if self.is_root {
            let _serial = self.setup.lock().await;
            tokio::task::spawn_blocking(move || {
                netns::remove(uid)?;
                users::remove(uid)
            })
            .await
            .map_err(|e| DriverError::failed(format!("cleanup panicked: {e}")))??;
            self.firewall.remove(&netns::host_iface(uid)).await?;
        }
        // The output outlives the process: kept until the application is removed.
        if let Err(e) = crate::logs::keep(&self.data_dir, uid, &dir.join(launch::LOG_FILE)) {
            tracing::warn!(%uid, error = %e, "cannot keep the process's log; it is removed with its directory");
        }
        let base = self.work_base(uid);
        for d in [&base, &dir] {
            match fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(DriverError::with_source(format!("cannot remove {}", d.display()), e)),
            }
        }
        tracing::info!(%uid, "process deallocated");
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<OwnedResource>, DriverError> {
        let entries = fs::read_dir(&self.root)
            .map_err(|e| DriverError::with_source(format!("cannot list {}", self.root.display()), e))?;
        let mut owned = Vec::new();
        for entry in entries.flatten() {
            let Some(uid) = entry.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()) else { continue };
            let identifier = PidRecord::read(&entry.path()).map(|r| r.pid.to_string()).unwrap_or_default();
            owned.push(OwnedResource { uid, identifier });
        }
        owned.sort_by_key(|o| o.uid);
        Ok(owned)
    }

    fn log_path(&self, uid: Uuid) -> Option<PathBuf> {
        let live = self.app_dir(uid).join(launch::LOG_FILE);
        Some(if live.exists() { live } else { crate::logs::kept_path(&self.data_dir, uid) })
    }

    /// SIGTERM's grace period, SIGKILL's wait and the cgroup's removal.
    fn deallocate_time(&self) -> Duration {
        self.grace + KILL_TIMEOUT * 2
    }
}

/// Why an isolated process cannot run here.
const NEEDS_ROOT: &str = "network \"\" (isolated) runs a process in a network namespace of its own, which only a \
    root fishd can make; run fishd as root, or use network: host to share the host's network on purpose";
/// Why `nat` is refused.
const NO_NAT: &str = "the process driver offers network \"\" (isolated) or \"host\", not \"nat\"";

/// The first `name` in the usual system directories.
fn find_program(name: &str) -> Option<PathBuf> {
    PATH.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}
