//! The `qemu` driver: one virtual machine per application.
//!
//! # Layout
//! Everything of an application lives in `<data_dir>/qemu/<instance>/<uid>/` (a `/` in
//! the instance name becomes `_`): the overlay (`overlay.qcow2`, backed by the read-only
//! base), extra disks (`disk-<name>.qcow2`), the cloud-init seed, QEMU's pid file and
//! QMP socket, the metadata socket, `console.log` and `qemu.log` (see [`machine`]).
//! Verified images are cached in `<data_dir>/qemu/images/` ([`image`]). The directory is
//! named from the uid, so after a restart (even `kill -9`) [`Driver::list_owned`] finds
//! every machine again: the reconciler adopts those of live applications and
//! deallocates the others (orphans).
//!
//! # Lifetime
//! QEMU runs detached from fishd (its own session) and keeps running when fishd stops.
//! `-no-shutdown` keeps it alive after the guest powers off, so `inspect` tells the two
//! endings apart: QMP status `shutdown` is the guest powering off by itself (the
//! application is DEALLOCATED with that message); a QEMU process that is gone crashed or
//! was killed (ERROR, with its exit status and last messages). Deallocation presses the
//! ACPI power button (QMP `system_powerdown`), waits up to the grace period for the
//! guest to power off, then quits QEMU, SIGKILLs whatever is left, keeps the console log
//! until the application is removed ([`crate::logs`]), and removes the directory. All of
//! it fits in [`Driver::deallocate_time`], which the node checks against the
//! `timeouts.deallocate` deadline at start.
//!
//! # Network
//! QEMU user networking: `network: ""` (isolated) with `restrict=on`, so the guest has
//! no route out (not the host, not the internet, not other machines), except its
//! metadata at `http://10.0.2.100/meta/v1/data`, forwarded to the node ([`meta`]), and
//! the node's proxy at `10.0.2.101:3128` ([`proxy`]), which lets it reach its
//! definition's `resources.allow`; `nat` without `restrict`, so outbound connections
//! are made by QEMU on the host.
//!
//! # Limits
//! QEMU runs in a pids cgroup of the application's own (`resources.pids`, default 1024;
//! v2 where its `pids` controller can be enabled, else v1), joined by its wrapper before
//! QEMU starts: QEMU runs one relay process per guest connection to the metadata and
//! proxy addresses, so a guest connecting in a loop meets its own limit (its new
//! connections fail) instead of filling the host's process table. Deallocation kills
//! what is left in the group (the relays run in sessions of their own) and removes it.
//! `qemu.log` (QEMU's and the relays' messages) is capped at 1 MiB like the console.
//!
//! # Accelerator
//! `accel: auto` uses KVM when `/dev/kvm` opens and the CPU reports `vmx`/`svm`
//! ([`machine::kvm_usable`]), else TCG; the node reports which in its driver status.

mod cloudinit;
mod image;
mod machine;
mod meta;
mod options;
mod proxy;
mod qmp;

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::{Definition, FieldError, HumanDuration, NodeCapacity};
use async_trait::async_trait;
use nix::sys::signal::Signal;
use serde::Deserialize;
use tokio::time::Instant;
use uuid::Uuid;

use super::process::cgroup::{self, PidsGroups};
use super::process::procfs;
use super::{AllocateRequest, Allocated, Driver, DriverError, NodeServices, OwnedResource, ResourceState};
use machine::Accel;
pub use meta::MetaServer;
use options::{AccelChoice, QemuOptions};

/// Between the ACPI power button and SIGKILL on deallocation: a real OS shuts down in
/// seconds, a busy one may need more; the test guest needs well under one.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Enough for a boot log and a build's console, small enough not to fill a disk.
const DEFAULT_LOG_LIMIT: u64 = 10 << 20;
/// How long a QEMU process may take to create its pid file and QMP socket: it does so
/// before the guest runs, in well under a second even on a loaded host.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// One QMP exchange on a local socket; a QEMU that cannot answer in this is stuck.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);
/// After `quit` or SIGKILL, how long QEMU may take to vanish.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// After `quit`, how long before SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(3);
/// How often deallocation and start look again.
const POLL: Duration = Duration::from_millis(100);
/// The QEMU binary unless configured.
const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The `qemu` section of the fishd config (`drivers: {qemu: {...}}`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QemuConfig {
    /// Between the ACPI power-off request and SIGKILL (default 30s).
    #[serde(default)]
    pub grace_period: Option<HumanDuration>,
    /// Cap of each machine's `console.log`, in bytes (default 10 MiB).
    #[serde(default)]
    pub log_limit: Option<u64>,
    /// The QEMU binary (default `qemu-system-x86_64` from the system path).
    #[serde(default)]
    pub qemu: Option<PathBuf>,
    /// Limits of this instance; the node's capacity applies on top.
    #[serde(default)]
    pub capacity: Option<QemuCapacity>,
}

/// A configured limit of the instance; each part is optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QemuCapacity {
    pub cpu: Option<u32>,
    pub ram: Option<u32>,
    pub slots: Option<u32>,
}

/// A `qemu` driver instance.
pub struct QemuDriver {
    name: String,
    data_dir: PathBuf,
    root: PathBuf,
    images: image::ImageCache,
    grace: Duration,
    log_limit: u64,
    capacity: Option<QemuCapacity>,
    qemu: Option<PathBuf>,
    socat: Option<PathBuf>,
    setsid: Option<PathBuf>,
    /// Whether KVM works here, and why not; probed once.
    kvm: Result<(), String>,
    /// Where each machine's pids cgroup goes (`resources.pids`), when the host has one.
    pids: Option<PidsGroups>,
    meta: meta::MetaSockets,
    proxy: proxy::ProxySockets,
}

impl std::fmt::Debug for QemuDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuDriver").field("name", &self.name).field("root", &self.root).finish_non_exhaustive()
    }
}

impl QemuDriver {
    /// Prepares `<data_dir>/qemu/<instance>` and the image cache, and probes the host.
    /// Succeeds without QEMU installed: the driver then says it is unavailable.
    pub fn new(instance_name: String, config: QemuConfig, data_dir: &Path) -> Result<QemuDriver, DriverError> {
        let root = data_dir.join("qemu").join(instance_name.replace('/', "_"));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| DriverError::with_source(format!("cannot create {}", root.display()), e))?;
        let images = image::ImageCache::new(data_dir.join("qemu").join("images"))?;
        let qemu = match config.qemu {
            Some(p) if p.is_absolute() => Some(p),
            Some(p) => find_program(&p.display().to_string()),
            None => find_program(DEFAULT_QEMU),
        };
        let kvm = machine::kvm_usable();
        let pids = PidsGroups::detect(&instance_name.replace('/', "_"));
        if pids.is_none() {
            tracing::warn!("no pids cgroup: a guest's relays (one process per connection) are not capped");
        }
        let driver = QemuDriver {
            name: instance_name,
            data_dir: data_dir.to_owned(),
            root,
            images,
            grace: config.grace_period.map_or(DEFAULT_GRACE, HumanDuration::get),
            log_limit: config.log_limit.unwrap_or(DEFAULT_LOG_LIMIT).max(1),
            capacity: config.capacity,
            qemu,
            socat: find_program("socat"),
            setsid: find_program("setsid"),
            kvm,
            pids,
            meta: meta::MetaSockets::default(),
            proxy: proxy::ProxySockets::default(),
        };
        tracing::info!(driver = %driver.name, accel = %driver.info(), "qemu driver ready");
        Ok(driver)
    }

    /// Hands in the server of the metadata endpoint, and serves every running machine
    /// (those adopted after a restart included). After [`Driver::attach`], so the
    /// guests' metadata names the proxy when there is one.
    pub fn set_meta_server(&self, server: MetaServer) {
        self.meta.set_server(server);
        for dir in self.machine_dirs() {
            if let (Some(uid), Some(_)) = (uid_of(&dir), machine::qemu_pid(&dir))
                && let Err(e) = self.serve_machine(uid, &dir)
            {
                tracing::warn!(%uid, error = %e, "cannot serve metadata to an adopted machine");
            }
        }
    }

    /// Serves a machine's metadata and proxy sockets, unless already done (each is a
    /// no-op until the runtime handed in the server or the proxy).
    fn serve_machine(&self, uid: Uuid, dir: &Path) -> io::Result<()> {
        let vars = if self.proxy.enabled() { proxy::guest_environment() } else { Default::default() };
        self.meta.serve(uid, &dir.join(machine::META_SOCKET), vars)?;
        self.proxy.serve(uid, &dir.join(machine::PROXY_SOCKET))
    }

    /// How many images were fetched into the cache.
    pub fn image_downloads(&self) -> u64 {
        self.images.downloads()
    }

    /// The directory of one application's machine.
    pub fn app_dir(&self, uid: Uuid) -> PathBuf {
        self.root.join(uid.to_string())
    }

    fn machine_dirs(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(&self.root) else { return Vec::new() };
        entries.flatten().map(|e| e.path()).filter(|p| uid_of(p).is_some()).collect()
    }

    fn accel(&self, choice: AccelChoice) -> Result<Accel, DriverError> {
        match (choice, &self.kvm) {
            (AccelChoice::Tcg, _) | (AccelChoice::Auto, Err(_)) => Ok(Accel::Tcg),
            (AccelChoice::Kvm | AccelChoice::Auto, Ok(())) => Ok(Accel::Kvm),
            (AccelChoice::Kvm, Err(why)) => {
                Err(DriverError::Invalid(format!("options.accel: kvm is not usable here: {why}")))
            }
        }
    }

    fn allocated(&self, uid: Uuid, pid: i32) -> Allocated {
        let dir = self.app_dir(uid);
        let mut details = serde_json::Map::new();
        details.insert("pid".into(), pid.into());
        details.insert("console".into(), dir.join(machine::CONSOLE_FILE).display().to_string().into());
        details.insert("qmp".into(), dir.join(machine::QMP_SOCKET).display().to_string().into());
        if let Ok(accel) = fs::read_to_string(dir.join("accel")) {
            details.insert("accel".into(), accel.trim().into());
        }
        if self.proxy.enabled() {
            details.insert("proxy".into(), format!("{} (in the guest)", proxy::GUEST_PROXY).into());
        }
        if let Some(groups) = &self.pids {
            details.insert("cgroup".into(), groups.path(uid).display().to_string().into());
        }
        Allocated { identifier: pid.to_string(), ip_addr: None, hw_addr: Some(machine::mac_of(uid)), details }
    }

    /// Makes the disks and starts QEMU in the (new) directory `dir`.
    async fn start(&self, req: &AllocateRequest, opts: &QemuOptions, dir: &Path) -> Result<i32, DriverError> {
        let (qemu, socat) = match (&self.qemu, &self.socat) {
            (Some(q), Some(s)) => (q, s),
            _ => return Err(DriverError::Unavailable(self.missing().unwrap_or_default())),
        };
        machine::check_socket_paths(dir).map_err(DriverError::Invalid)?;
        let accel = self.accel(opts.accel)?;
        // Resolved before the directory exists: a bad sum leaves nothing behind.
        let base = match req.definition.images.first() {
            Some(img) => Some(self.images.resolve(img).await?),
            None => None,
        };
        let io_err = |what: String| move |e: io::Error| DriverError::with_source(format!("{what}: {e}"), e);
        fs::DirBuilder::new().mode(0o700).create(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        let overlay = dir.join("overlay.qcow2");
        if let Some(base) = &base {
            image::create_overlay(base, &overlay).await?;
        }
        let mut disks = Vec::new();
        for (name, disk) in &req.definition.resources.disks {
            let file = dir.join(format!("disk-{name}.qcow2"));
            image::create_disk(&file, disk.size).await?;
            disks.push((name.clone(), file));
        }
        let seed = dir.join("seed.iso");
        if opts.cloud_init {
            cloudinit::write_seed(dir, req.uid, &req.name, &req.metadata).await?;
        }
        fs::write(dir.join("accel"), accel.as_str()).map_err(io_err("cannot record the accelerator".into()))?;
        self.serve_machine(req.uid, dir).map_err(io_err("cannot listen on the machine's sockets".into()))?;
        let relay = meta::relay_command(socat, &dir.join(machine::META_SOCKET));
        let proxy_relay = meta::relay_command(socat, &dir.join(machine::PROXY_SOCKET));
        let spec = machine::Spec {
            dir,
            uid: req.uid,
            accel,
            cpu: req.definition.resources.cpu,
            ram_gib: req.definition.resources.ram,
            root: base.is_some().then_some(overlay.as_path()),
            disks: &disks,
            seed: opts.cloud_init.then_some(seed.as_path()),
            kernel: opts.kernel.as_deref(),
            initrd: opts.initrd.as_deref(),
            append: opts.append.as_deref(),
            network: req.definition.resources.network,
            relay: &relay,
            proxy_relay: &proxy_relay,
        };
        let args = machine::args(&spec);
        // QEMU and every relay it starts for the guest count against `resources.pids`: a
        // guest opening connections in a loop meets its limit, not the host's.
        let pids = req.definition.resources.pids.unwrap_or(cgroup::DEFAULT_PIDS);
        let group = match &self.pids {
            Some(groups) => Some(groups.create(req.uid, pids).map_err(io_err("cannot create the pids cgroup".into()))?),
            None => None,
        };
        let wrapper = machine::spawn(dir, qemu, &args, self.log_limit, group.as_deref(), self.setsid.as_deref())
            .map_err(io_err(format!("cannot start {}", qemu.display())))?;
        // QEMU writes its pid file and opens QMP before the guest runs; a bad option or
        // a missing kernel makes it exit at once instead.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(pid) = machine::qemu_pid(dir)
                && dir.join(machine::QMP_SOCKET).exists()
            {
                tracing::info!(uid = %req.uid, pid, accel = accel.as_str(), "machine started");
                return Ok(pid);
            }
            let wrapper_alive = wrapper.is_running().unwrap_or(false);
            if !wrapper_alive || Instant::now() >= deadline {
                let why = if wrapper_alive {
                    format!("qemu did not start within {START_TIMEOUT:?}")
                } else {
                    machine::death(dir)
                };
                return Err(DriverError::failed(why));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Why the driver cannot start machines, if it cannot.
    fn missing(&self) -> Option<String> {
        if self.qemu.is_none() {
            return Some(format!("{DEFAULT_QEMU} not found (install qemu-system-x86)"));
        }
        if self.socat.is_none() {
            return Some("socat not found: guests could not reach their metadata (install socat)".into());
        }
        if find_program("qemu-img").is_none() {
            return Some("qemu-img not found (install qemu-utils)".into());
        }
        None
    }

    /// Asks the guest to power off and waits for it, up to the grace period; whether it did.
    async fn power_off(&self, qmp: &Path, dir: &Path) -> bool {
        if let Err(e) = qmp::run(qmp, "system_powerdown", QMP_TIMEOUT).await {
            tracing::debug!(error = %e, "system_powerdown failed");
        }
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if machine::qemu_pid(dir).is_none() {
                return true;
            }
            if let Ok(v) = qmp::run(qmp, "query-status", QMP_TIMEOUT).await
                && v["status"] == "shutdown"
            {
                return true;
            }
            tokio::time::sleep(POLL).await;
        }
        false
    }

    /// Waits until QEMU is gone; whether it went before `timeout`.
    async fn gone_within(dir: &Path, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while machine::qemu_pid(dir).is_some() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }
}

#[async_trait]
impl Driver for QemuDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, definition: &Definition) -> Vec<FieldError> {
        options::validate(definition)
    }

    async fn available(&self) -> Result<(), String> {
        match self.missing() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn info(&self) -> String {
        match &self.kvm {
            Ok(()) => "accel: kvm".into(),
            Err(why) => format!("accel: tcg (kvm not usable: {why})"),
        }
    }

    /// The node's proxy, for the guests' proxy sockets.
    fn attach(&self, services: &NodeServices) {
        if let Some(proxy) = &services.proxy {
            self.proxy.set_proxy(proxy.clone());
        }
    }

    fn capacity(&self) -> Option<NodeCapacity> {
        let c = self.capacity?;
        Some(NodeCapacity {
            cpu: c.cpu.unwrap_or(u32::MAX),
            ram: c.ram.unwrap_or(u32::MAX),
            slots: c.slots.unwrap_or(u32::MAX),
            applications: 0,
        })
    }

    async fn allocate(&self, req: &AllocateRequest) -> Result<Allocated, DriverError> {
        let errors = options::validate(&req.definition);
        if !errors.is_empty() {
            return Err(DriverError::Invalid(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")));
        }
        let opts = QemuOptions::parse(&req.definition.options).map_err(DriverError::Invalid)?;
        let dir = self.app_dir(req.uid);
        if dir.exists() {
            if let Some(pid) = machine::qemu_pid(&dir) {
                tracing::info!(uid = %req.uid, pid, "machine already running; adopting it");
                let _ = self.serve_machine(req.uid, &dir);
                return Ok(self.allocated(req.uid, pid));
            }
            // A crash between creating the directory and starting QEMU: start over.
            self.deallocate(req.uid, "").await?;
        }
        let pid = self.start(req, &opts, &dir).await?;
        Ok(self.allocated(req.uid, pid))
    }

    async fn inspect(&self, uid: Uuid, _identifier: &str) -> Result<ResourceState, DriverError> {
        let dir = self.app_dir(uid);
        if !dir.exists() {
            return Ok(ResourceState::Lost(format!("its directory {} is gone", dir.display())));
        }
        if machine::qemu_pid(&dir).is_none() {
            return Ok(ResourceState::Lost(machine::death(&dir)));
        }
        // Adopted after a restart: the guest's metadata and proxy sockets need a server again.
        if let Err(e) = self.serve_machine(uid, &dir) {
            tracing::warn!(%uid, error = %e, "cannot serve metadata to the machine");
        }
        match qmp::run(&dir.join(machine::QMP_SOCKET), "query-status", QMP_TIMEOUT).await {
            Ok(v) if v["status"] == "shutdown" => Ok(ResourceState::Ended("the guest powered off".into())),
            Ok(_) => Ok(ResourceState::Running),
            // It may have died between the two looks.
            Err(_) if machine::qemu_pid(&dir).is_none() => Ok(ResourceState::Lost(machine::death(&dir))),
            Err(e) => Err(DriverError::with_source("cannot ask QEMU for the machine's state", e)),
        }
    }

    async fn deallocate(&self, uid: Uuid, _identifier: &str) -> Result<(), DriverError> {
        let dir = self.app_dir(uid);
        let qmp = dir.join(machine::QMP_SOCKET);
        if machine::qemu_pid(&dir).is_some() && !self.power_off(&qmp, &dir).await {
            tracing::info!(%uid, grace = ?self.grace, "the guest did not power off; stopping QEMU");
        }
        if machine::qemu_pid(&dir).is_some() {
            let _ = qmp::run(&qmp, "quit", QMP_TIMEOUT).await;
            if !Self::gone_within(&dir, QUIT_WAIT).await
                && let Some(pid) = machine::qemu_pid(&dir)
            {
                procfs::signal(pid, Signal::SIGKILL);
            }
        }
        if !Self::gone_within(&dir, EXIT_TIMEOUT).await {
            return Err(DriverError::failed(format!("QEMU of {uid} survived SIGKILL")));
        }
        // The wrapper, console pipe and metadata relays: gone with QEMU, or now.
        if let Some(w) = machine::wrapper(&dir)
            && w.is_running().unwrap_or(false)
        {
            procfs::signal_group(w.pid, Signal::SIGKILL);
        }
        // The relays QEMU started for the guest run in sessions of their own: the cgroup
        // is what still finds them.
        if let Some(groups) = &self.pids {
            let path = groups.path(uid);
            let deadline = Instant::now() + EXIT_TIMEOUT;
            loop {
                cgroup::kill(&path);
                match cgroup::remove(&path) {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(DriverError::with_source(format!("cannot remove cgroup {}", path.display()), e));
                    }
                    Err(_) => tokio::time::sleep(POLL).await,
                }
            }
        }
        self.meta.stop(uid);
        self.proxy.stop(uid);
        // The console outlives the machine: kept until the application is removed.
        if let Err(e) = crate::logs::keep(&self.data_dir, uid, &dir.join(machine::CONSOLE_FILE)) {
            tracing::warn!(%uid, error = %e, "cannot keep the machine's console log; it is removed with its directory");
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(DriverError::with_source(format!("cannot remove {}", dir.display()), e)),
        }
        tracing::info!(%uid, "machine deallocated");
        Ok(())
    }

    async fn list_owned(&self) -> Result<Vec<OwnedResource>, DriverError> {
        fs::read_dir(&self.root)
            .map_err(|e| DriverError::with_source(format!("cannot list {}", self.root.display()), e))?;
        let mut owned: Vec<OwnedResource> = self
            .machine_dirs()
            .into_iter()
            .filter_map(|dir| {
                let uid = uid_of(&dir)?;
                let identifier = machine::qemu_pid(&dir).map(|p| p.to_string()).unwrap_or_default();
                Some(OwnedResource { uid, identifier })
            })
            .collect();
        owned.sort_by_key(|o| o.uid);
        Ok(owned)
    }

    fn log_path(&self, uid: Uuid) -> Option<PathBuf> {
        let live = self.app_dir(uid).join(machine::CONSOLE_FILE);
        Some(if live.exists() { live } else { crate::logs::kept_path(&self.data_dir, uid) })
    }

    /// `system_powerdown`, the grace period and a last look, then `quit`, its wait and
    /// SIGKILL's, then the relays' cgroup emptied: each QMP exchange may take its whole
    /// timeout on a stuck QEMU.
    fn deallocate_time(&self) -> Duration {
        self.grace + QMP_TIMEOUT * 3 + QUIT_WAIT + EXIT_TIMEOUT * 2
    }
}

fn uid_of(dir: &Path) -> Option<Uuid> {
    dir.file_name().and_then(|n| n.to_str()).and_then(|n| Uuid::parse_str(n).ok())
}

/// The first `name` in the usual system directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
