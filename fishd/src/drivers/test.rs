//! The `test` driver: simulated resources, for tests and demos.
//!
//! A resource is a JSON file `<data-dir>/test/<instance>/<uid>.json` (or under the
//! instance's `dir`), so simulated
//! resources survive a fishd restart and are adopted like real ones. Definitions
//! can script the paths a test needs to drive: `allocateDelay` (humantime) and
//! `failAllocations` (fail the first N attempts of each application; the count is
//! kept in `<uid>.attempts`, apart from the resource, so releasing a failed attempt's
//! leftovers does not reset it). Writing `{"ended": "message"}` into a resource file
//! makes it end by itself. `journal.log` gets one line per resource created, so a test
//! can check what ran.
//!
//! # Fault injection
//! `faults` in the driver's settings, or `faults.json` in its directory (read at every
//! call, so a test can change it on demand), makes `allocate`, `deallocate` and
//! `inspect` fail or stall at random: `{"allocate": {"fail": 0.3, "stall": 0.1},
//! "stallFor": "5s"}`. A stall waits `stallFor` and then does the call.
//!
//! # Files
//! A call's file work (a record of a few bytes, a journal line, `faults.json`) runs
//! inline on the runtime's thread, not through `tokio::fs`: each `tokio::fs` call is a
//! trip to the blocking pool (a thread woken through a futex, two context switches),
//! which cost more than the work itself. An allocation made eight such trips; in the
//! three-node cluster of the bench, where three fishd share two busy cores, those
//! trips took about a tenth of the cluster's CPU (issue 12). The files are small and
//! stay in the page cache (the bench keeps them on tmpfs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use api_types::{Definition, FieldError, HumanDuration, NodeCapacity};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{AllocateRequest, Allocated, Driver, DriverError, OwnedResource, ResourceState};

/// `drivers: {test: {...}}` in fish.yml.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TestConfig {
    /// This instance's own limit (cpu cores, ram GiB, slots); none by default.
    #[serde(default)]
    pub capacity: Option<NodeCapacity>,
    /// Report the driver unavailable with this reason (to test that path).
    #[serde(default)]
    pub unavailable: Option<String>,
    /// Faults to inject from the start (`faults.json` in the directory overrides).
    #[serde(default)]
    pub faults: Option<Faults>,
    /// Where the instance's resource files go (`<dir>/<instance>/`; default
    /// `<dataDir>/test/`). The bench puts them on tmpfs: on a disk, every simulated
    /// resource is a file created and deleted, and ext4 without a journal scans past
    /// every inode deleted in the last minutes to create one, so the file system, not
    /// fishd, set the pace of a burst.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// Which calls fail or stall, and how often.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Faults {
    #[serde(default)]
    pub allocate: Fault,
    #[serde(default)]
    pub deallocate: Fault,
    #[serde(default)]
    pub inspect: Fault,
    /// How long a stalled call waits before it goes on (default 1 h: "forever").
    #[serde(default)]
    pub stall_for: Option<HumanDuration>,
}

/// The chances (0 to 1) that one call fails, or stalls.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub fail: f64,
    #[serde(default)]
    pub stall: f64,
}

/// Definition options of the test driver.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestOptions {
    #[serde(default)]
    allocate_delay: Option<HumanDuration>,
    #[serde(default)]
    fail_allocations: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    /// False while an allocation is under way (or failed half-way): still owned.
    allocated: bool,
    #[serde(default)]
    ended: Option<String>,
}

/// A test driver instance.
#[derive(Debug)]
pub struct TestDriver {
    name: String,
    dir: PathBuf,
    config: TestConfig,
    /// Random state for fault injection (splitmix64).
    dice: AtomicU64,
}

impl TestDriver {
    /// An instance keeping its resources under `<data_dir>/test/<instance>/`.
    pub fn new(name: String, config: TestConfig, data_dir: &Path) -> Result<Self, DriverError> {
        let base = config.dir.clone().unwrap_or_else(|| data_dir.join("test"));
        let dir = base.join(name.replace('/', "_"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError::with_source("cannot create test driver directory", e))?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| DriverError::failed(format!("no random seed: {e}")))?;
        Ok(TestDriver { name, dir, config, dice: AtomicU64::new(u64::from_le_bytes(seed)) })
    }

    fn path(&self, uid: Uuid) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    fn attempts_path(&self, uid: Uuid) -> PathBuf {
        self.dir.join(format!("{uid}.attempts"))
    }

    /// The faults in force: `faults.json` if there is one, else the settings'.
    fn faults(&self) -> Option<Faults> {
        read_faults(&self.dir.join("faults.json"), &self.name, self.config.faults.clone())
    }

    /// A number in [0, 1).
    fn roll(&self) -> f64 {
        let mut z = self.dice.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Stalls or fails the call `op` as the faults in force say.
    async fn inject(&self, op: &str, pick: impl Fn(&Faults) -> Fault) -> Result<(), DriverError> {
        let Some(faults) = self.faults() else { return Ok(()) };
        let fault = pick(&faults);
        if fault.stall > 0.0 && self.roll() < fault.stall {
            let d = faults.stall_for.map(|d| d.get()).unwrap_or(Duration::from_secs(3600));
            tracing::info!(driver = %self.name, op, stall = ?d, "injected stall");
            tokio::time::sleep(d).await;
        }
        if fault.fail > 0.0 && self.roll() < fault.fail {
            return Err(DriverError::failed(format!("injected {op} failure")));
        }
        Ok(())
    }
}

fn encode(r: &Record) -> Result<Vec<u8>, DriverError> {
    serde_json::to_vec(r).map_err(|e| DriverError::with_source("cannot encode test resource", e))
}

fn read_record(path: &Path) -> Result<Option<Record>, DriverError> {
    match std::fs::read(path) {
        // Created and not yet written (see `write_in_place`): nothing there yet.
        Ok(b) if b.trim_ascii().is_empty() => Ok(None),
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| DriverError::with_source("corrupt test resource", e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DriverError::with_source("cannot read test resource", e)),
    }
}

/// Writes `bytes` over the file at `path` in place: one write at offset 0, padded
/// with spaces (valid JSON whitespace) to at least the file's length, so no old
/// tail survives. Not by a temporary file and a rename: that took a fresh inode
/// per write, and ext4 without a journal (this project's CI disk) scans past every
/// inode deleted in the last minutes to allocate one, so each burst of simulated
/// allocations ran slower than the one before (a third of the samples in a
/// profile of the fifth burst). The write is under a page: a killed fishd leaves
/// the old record or the new one.
fn write_in_place(path: &Path, mut bytes: Vec<u8>) -> Result<(), DriverError> {
    let mut write = || {
        let f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
        let len = f.metadata()?.len() as usize;
        bytes.resize(bytes.len().max(len), b' ');
        std::os::unix::fs::FileExt::write_all_at(&f, &bytes, 0)
    };
    write().map_err(|e| DriverError::with_source("cannot write test resource", e))
}

/// Counts one more allocation attempt in the file at `path`; returns the count.
fn count_attempt(path: &Path) -> Result<u32, DriverError> {
    let n = match std::fs::read_to_string(path) {
        Ok(s) => s.trim().parse::<u32>().unwrap_or(0),
        Err(_) => 0,
    } + 1;
    write_in_place(path, n.to_string().into_bytes())?;
    Ok(n)
}

fn journal(path: &Path, line: &str) -> Result<(), DriverError> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DriverError::with_source("cannot open the journal", e))?;
    std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes())
        .map_err(|e| DriverError::with_source("cannot journal", e))
}

/// `faults.json` at `path` if it is there (read at every call, so a test can change it
/// on demand), else `configured`.
fn read_faults(path: &Path, driver: &str, configured: Option<Faults>) -> Option<Faults> {
    match std::fs::read(path) {
        Ok(b) => match serde_json::from_slice(&b) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(driver, error = %e, "faults.json is not valid; no faults injected");
                None
            }
        },
        Err(_) => configured,
    }
}

fn options(def: &Definition) -> Result<TestOptions, Vec<FieldError>> {
    api_types::manifest::typed::<TestOptions>(serde_json::Value::Object(def.options.clone())).map_err(|errs| {
        errs.into_iter()
            .map(|e| FieldError {
                field: if e.field.is_empty() { "options".into() } else { format!("options.{}", e.field) },
                message: e.message,
            })
            .collect()
    })
}

#[async_trait]
impl Driver for TestDriver {
    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self, definition: &Definition) -> Vec<FieldError> {
        options(definition).err().unwrap_or_default()
    }

    async fn available(&self) -> Result<(), String> {
        match &self.config.unavailable {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }

    fn capacity(&self) -> Option<NodeCapacity> {
        self.config.capacity
    }

    async fn allocate(&self, req: &AllocateRequest) -> Result<Allocated, DriverError> {
        let opts = options(&req.definition).map_err(|e| DriverError::Invalid(format!("{}", e[0])))?;
        let path = self.path(req.uid);
        let mut rec = read_record(&path)?.unwrap_or_default();
        if rec.allocated {
            return Ok(allocated(req.uid));
        }
        // Counted apart from the resource and before anything can fail, so neither a
        // restart nor the release of a failed attempt's leftovers resets it.
        // (Only when failures are asked for: otherwise the count decides nothing.)
        let counted = opts.fail_allocations > 0;
        let attempt = if counted { count_attempt(&self.attempts_path(req.uid))? } else { 1 };
        // Half-made: owned (listed, released) from here on.
        write_in_place(&path, encode(&rec)?)?;
        self.inject("allocate", |f| f.allocate).await?;
        if let Some(d) = opts.allocate_delay {
            tokio::time::sleep(d.get()).await;
        }
        if attempt <= opts.fail_allocations {
            return Err(DriverError::failed(format!(
                "simulated allocation failure {attempt} of {}",
                opts.fail_allocations
            )));
        }
        rec.allocated = true;
        write_in_place(&path, encode(&rec)?)?;
        journal(&self.dir.join("journal.log"), &format!("allocated {}", req.uid))?;
        // Allocated: later calls return this resource, so the count has done its job.
        if counted {
            let _ = std::fs::remove_file(self.attempts_path(req.uid));
        }
        Ok(allocated(req.uid))
    }

    async fn inspect(&self, uid: Uuid, _identifier: &str) -> Result<ResourceState, DriverError> {
        self.inject("inspect", |f| f.inspect).await?;
        Ok(match read_record(&self.path(uid))? {
            Some(Record { allocated: true, ended: None, .. }) => ResourceState::Running,
            Some(Record { allocated: true, ended: Some(m), .. }) => ResourceState::Ended(m),
            _ => ResourceState::Lost("simulated resource is gone".into()),
        })
    }

    async fn deallocate(&self, uid: Uuid, _identifier: &str) -> Result<(), DriverError> {
        self.inject("deallocate", |f| f.deallocate).await?;
        match std::fs::remove_file(self.path(uid)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::with_source("cannot remove test resource", e)),
        }
    }

    async fn list_owned(&self) -> Result<Vec<OwnedResource>, DriverError> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(|e| DriverError::with_source("cannot list test resources", e))?;
        while let Some(entry) = dir.next_entry().await.map_err(|e| DriverError::with_source("cannot list", e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(uid) = name.strip_suffix(".json").and_then(|u| Uuid::try_parse(u).ok()) else { continue };
            // Half-made resources are owned too (a crash or a failed release may leave
            // them), even one whose file was created and never written: the identifier
            // follows from the uid, so the record need not be read.
            out.push(OwnedResource { uid, identifier: identifier(uid) });
        }
        Ok(out)
    }
}

/// A resource's identifier: it follows from the uid, so no record needs to hold it.
fn identifier(uid: Uuid) -> String {
    format!("test-{}", uid.simple())
}

fn allocated(uid: Uuid) -> Allocated {
    Allocated {
        identifier: identifier(uid),
        ip_addr: Some("127.0.0.1".into()),
        hw_addr: None,
        details: serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn def(options: serde_json::Value) -> Definition {
        serde_json::from_value(serde_json::json!({"driver": "test", "resources": {"cpu": 1}, "options": options}))
            .unwrap()
    }

    fn req(uid: Uuid, d: Definition) -> AllocateRequest {
        AllocateRequest { uid, name: "a".into(), definition: d, metadata: Default::default(), node: "n".into() }
    }

    #[tokio::test]
    async fn fails_the_first_n_attempts_then_allocates_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let d = TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap();
        let uid = Uuid::now_v7();
        let r = req(uid, def(serde_json::json!({"failAllocations": 2})));
        assert!(d.allocate(&r).await.is_err());
        assert!(d.allocate(&r).await.is_err());
        let a = d.allocate(&r).await.unwrap();
        assert_eq!(d.allocate(&r).await.unwrap(), a);
        assert_eq!(d.inspect(uid, &a.identifier).await.unwrap(), ResourceState::Running);
        // A new instance on the same directory (a restart) finds it.
        let d2 = TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap();
        assert_eq!(d2.list_owned().await.unwrap(), vec![OwnedResource { uid, identifier: a.identifier.clone() }]);
        d2.deallocate(uid, &a.identifier).await.unwrap();
        d2.deallocate(uid, &a.identifier).await.unwrap();
        assert!(matches!(d2.inspect(uid, &a.identifier).await.unwrap(), ResourceState::Lost(_)));
    }

    #[tokio::test]
    async fn fail_allocations_counts_attempts_across_the_release_of_failed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let d = TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap();
        let uid = Uuid::now_v7();
        let r = req(uid, def(serde_json::json!({"failAllocations": 1})));
        assert!(d.allocate(&r).await.is_err());
        // The reconciler releases what a failed attempt left; that must not reset the count.
        assert_eq!(d.list_owned().await.unwrap().len(), 1, "a half-made resource is owned");
        d.deallocate(uid, "").await.unwrap();
        assert!(d.list_owned().await.unwrap().is_empty());
        d.allocate(&r).await.expect("the second attempt must succeed with failAllocations: 1");
        let journal = std::fs::read_to_string(dir.path().join("test/test/journal.log")).unwrap();
        assert_eq!(journal.lines().count(), 1, "{journal}");
    }

    #[tokio::test(start_paused = true)]
    async fn injected_faults_fail_and_stall_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let d = TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap();
        let uid = Uuid::now_v7();
        let r = req(uid, def(serde_json::json!({})));
        let faults = dir.path().join("test/test/faults.json");
        std::fs::write(&faults, r#"{"allocate": {"fail": 1}, "deallocate": {"fail": 1}, "inspect": {"fail": 1}}"#)
            .unwrap();
        assert!(d.allocate(&r).await.unwrap_err().to_string().contains("injected allocate failure"));
        assert!(d.inspect(uid, "").await.unwrap_err().to_string().contains("injected inspect failure"));
        assert!(d.deallocate(uid, "").await.unwrap_err().to_string().contains("injected deallocate failure"));
        std::fs::write(&faults, r#"{"deallocate": {"stall": 1}, "stallFor": "10m"}"#).unwrap();
        let stalled = tokio::time::timeout(Duration::from_secs(60), d.deallocate(uid, "")).await;
        assert!(stalled.is_err(), "a stall of 10 minutes answered within a minute");
        std::fs::write(&faults, "{}").unwrap();
        d.deallocate(uid, "").await.unwrap();
        assert!(d.list_owned().await.unwrap().is_empty());
        d.allocate(&r).await.unwrap();
    }

    #[test]
    fn validates_options_with_field_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap();
        let errs = d.validate(&def(serde_json::json!({"bogus": 1})));
        assert!(errs[0].field.starts_with("options"), "{errs:?}");
        assert!(d.validate(&def(serde_json::json!({"allocateDelay": "1s"}))).is_empty());
        let errs = d.validate(&def(serde_json::json!({"allocateDelay": "soon"})));
        assert_eq!(errs[0].field, "options.allocateDelay");
    }
}
