//! The `test` driver: simulated resources, for tests and demos.
//!
//! A resource is a JSON file `<data-dir>/test/<instance>/<uid>.json`, so simulated
//! resources survive a fishd restart and are adopted like real ones. Definitions
//! can script the paths a test needs to drive: `allocateDelay` (humantime) and
//! `failAllocations` (fail the first N attempts of each application).
//! Writing `{"ended": "message"}` into a resource file makes it end by itself.

use std::path::{Path, PathBuf};

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
    identifier: String,
    /// Allocation attempts seen for this application, failed or not.
    attempts: u32,
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
}

impl TestDriver {
    /// An instance keeping its resources under `<data_dir>/test/<instance>/`.
    pub fn new(name: String, config: TestConfig, data_dir: &Path) -> Result<Self, DriverError> {
        let dir = data_dir.join("test").join(name.replace('/', "_"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError::with_source("cannot create test driver directory", e))?;
        Ok(TestDriver { name, dir, config })
    }

    fn path(&self, uid: Uuid) -> PathBuf {
        self.dir.join(format!("{uid}.json"))
    }

    async fn read(&self, uid: Uuid) -> Result<Option<Record>, DriverError> {
        match tokio::fs::read(self.path(uid)).await {
            Ok(b) => {
                serde_json::from_slice(&b).map(Some).map_err(|e| DriverError::with_source("corrupt test resource", e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(DriverError::with_source("cannot read test resource", e)),
        }
    }

    async fn write(&self, uid: Uuid, r: &Record) -> Result<(), DriverError> {
        let bytes = serde_json::to_vec(r).map_err(|e| DriverError::with_source("cannot encode test resource", e))?;
        let tmp = self.dir.join(format!("{uid}.tmp"));
        tokio::fs::write(&tmp, bytes).await.map_err(|e| DriverError::with_source("cannot write test resource", e))?;
        tokio::fs::rename(&tmp, self.path(uid))
            .await
            .map_err(|e| DriverError::with_source("cannot write test resource", e))
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
        let mut rec = self.read(req.uid).await?.unwrap_or_default();
        if rec.allocated {
            return Ok(allocated(&rec));
        }
        rec.attempts += 1;
        rec.identifier = format!("test-{}", req.uid.simple());
        // Persisted before failing, so the count of failures survives a restart.
        self.write(req.uid, &rec).await?;
        if let Some(d) = opts.allocate_delay {
            tokio::time::sleep(d.get()).await;
        }
        if rec.attempts <= opts.fail_allocations {
            return Err(DriverError::failed(format!(
                "simulated allocation failure {} of {}",
                rec.attempts, opts.fail_allocations
            )));
        }
        rec.allocated = true;
        self.write(req.uid, &rec).await?;
        Ok(allocated(&rec))
    }

    async fn inspect(&self, uid: Uuid, _identifier: &str) -> Result<ResourceState, DriverError> {
        Ok(match self.read(uid).await? {
            Some(Record { allocated: true, ended: None, .. }) => ResourceState::Running,
            Some(Record { allocated: true, ended: Some(m), .. }) => ResourceState::Ended(m),
            _ => ResourceState::Lost("simulated resource is gone".into()),
        })
    }

    async fn deallocate(&self, uid: Uuid, _identifier: &str) -> Result<(), DriverError> {
        match tokio::fs::remove_file(self.path(uid)).await {
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
            if let Some(rec) = self.read(uid).await?
                && rec.allocated
            {
                out.push(OwnedResource { uid, identifier: rec.identifier });
            }
        }
        Ok(out)
    }
}

fn allocated(rec: &Record) -> Allocated {
    Allocated {
        identifier: rec.identifier.clone(),
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
