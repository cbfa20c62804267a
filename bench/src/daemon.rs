//! A real release `fishd` in a temp dir on a free port, as the benchmarks drive it:
//! started and restarted with a clock on its readiness, and measured from the
//! outside (`/proc/<pid>`: resident memory, CPU time; the size of its redb file).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The longest a start may take before the suite gives up.
const START_LIMIT: Duration = Duration::from_secs(120);
/// How often readiness is polled while a start is timed: bounds the timing error.
const READY_POLL: Duration = Duration::from_millis(5);
/// Linux's USER_HZ: the unit of utime/stime in `/proc/<pid>/stat`.
const CLOCK_TICKS: f64 = 100.0;

/// Slots of every node the benchmarks start (cpu and ram are as large): out of the
/// way, unless a label's `slots` bound how many of its resources a node holds.
pub const SLOTS: u32 = 1_000_000;

/// tmpfs, for the simulated resources (see [`Daemon::resource_dir`]).
const SHM: &str = "/dev/shm";

/// Open API connections a bench node accepts (fishd's default is 512): the watch
/// fan-out holds 1,000 watchers, each on its own connection, next to the tracker's.
pub const MAX_CONNECTIONS: usize = 4096;

/// How a node joins a cluster on its first start, and the credentials it is driven
/// with: a joined node writes no `fishctl.yaml`, so the first node's admin token and
/// CA (one CA and one token across the cluster) are handed over.
#[derive(Clone)]
pub struct Join {
    /// `HOST:PORT` of a member.
    pub via: String,
    /// A join token made by an admin of that member.
    pub token: String,
    pub admin_token: String,
    pub ca: Vec<u8>,
}

/// A running fishd with the test driver and room for a million applications.
pub struct Daemon {
    child: Option<Child>,
    fishd: PathBuf,
    dir: PathBuf,
    /// Its `nodeName`.
    pub name: String,
    /// Join settings for the next start; cleared once it has joined (a restarted
    /// member needs no flags).
    join: Option<Join>,
    /// Set for a joined node: its API address comes from its `cluster.json`.
    joined: bool,
    pub url: String,
    pub token: String,
    /// The token the benchmark's applications are created, deallocated and watched
    /// with: a CI user's (see [`Daemon::use_ci_user`]), else the admin token.
    ci_token: Option<String>,
    ca: Vec<u8>,
    port: u16,
    /// One shared client (one HTTP/2 connection) for control requests.
    pub client: reqwest::Client,
}

impl Daemon {
    /// Starts a fresh fishd whose data lives under `dir`; returns it and how long it
    /// took from spawn to a successful `/readyz`.
    pub async fn start(fishd: &Path, dir: &Path) -> Result<(Daemon, Duration)> {
        Daemon::start_node(fishd, dir, "bench", None).await
    }

    /// Starts a fresh fishd named `name` under `dir`; with `join`, it joins that
    /// cluster on this first start. Returns it and the time from spawn to `/readyz`.
    pub async fn start_node(fishd: &Path, dir: &Path, name: &str, join: Option<Join>) -> Result<(Daemon, Duration)> {
        std::fs::create_dir_all(dir)?;
        let joined = join.is_some();
        let (token, ca) = join.as_ref().map(|j| (j.admin_token.clone(), j.ca.clone())).unwrap_or_default();
        let mut d = Daemon {
            child: None,
            fishd: fishd.to_owned(),
            dir: dir.to_owned(),
            name: name.to_owned(),
            join,
            joined,
            url: String::new(),
            token,
            ci_token: None,
            ca,
            port: 0,
            client: reqwest::Client::new(),
        };
        let took = d.spawn().await?;
        d.join = None;
        Ok((d, took))
    }

    /// Starts fishd again on `dir`, where a bench node ran before and stopped (its
    /// `fishctl.yaml` gives the port, token and CA; a seeded directory, see
    /// [`crate::seed`]). Returns it and the time from spawn to `/readyz`.
    pub async fn attach(fishd: &Path, dir: &Path) -> Result<(Daemon, Duration)> {
        let mut d = Daemon {
            child: None,
            fishd: fishd.to_owned(),
            dir: dir.to_owned(),
            name: "bench".into(),
            join: None,
            joined: false,
            url: String::new(),
            token: String::new(),
            ci_token: None,
            ca: Vec::new(),
            port: 0,
            client: reqwest::Client::new(),
        };
        d.read_fishctl_config()?;
        if d.url.is_empty() {
            bail!("{} holds no fishctl.yaml of a node that ran: nothing to attach to", dir.display());
        }
        let took = d.spawn().await?;
        Ok((d, took))
    }

    /// The token of the benchmark's applications (see [`Daemon::use_ci_user`]).
    pub fn client_token(&self) -> &str {
        self.ci_token.as_deref().unwrap_or(&self.token)
    }

    /// Creates the non-admin user `name`, without a rate limit, and makes it the one
    /// the benchmark's applications are created, deallocated and watched as. Its
    /// watch carries its own applications only, as a CI server's does; an admin watch
    /// carries everyone's, so on a cluster with a watch per node every event would
    /// reach the load generator once per node and cost every node its delivery.
    pub async fn use_ci_user(&mut self, name: &str) -> Result<()> {
        let body = json!({"apiVersion": "aquarium.fish/v1", "kind": "User", "metadata": {"name": name},
                          "spec": {"roles": ["user"], "rateLimit": 0}});
        let (code, v) = self.post("/api/v1/users", &body).await?;
        if code != 201 {
            bail!("creating the user {name} on {}: {code} {v}", self.name);
        }
        self.ci_token = Some(v["status"]["token"].as_str().context("a new user without a token")?.to_owned());
        Ok(())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Where the test driver keeps its simulated resources: on tmpfs when there is one
    /// (named after the node's directory, so a restart finds them). On this machine's
    /// journal-less ext4, a file created per resource and deleted at its release made
    /// every burst slower than the last (the kernel's inode allocator skips inodes
    /// deleted in the last minutes, one by one), which measured the disk, not fishd.
    pub fn resource_dir(&self) -> PathBuf {
        let shm = Path::new(SHM);
        if shm.is_dir() {
            shm.join(format!("fish-bench{}", self.dir.display().to_string().replace('/', "_")))
        } else {
            self.data_dir().join("test")
        }
    }

    fn write_config(&self) -> Result<PathBuf> {
        // The capacity is out of the way on purpose: these benchmarks measure the
        // control plane, not the admission of work.
        let mut yml = format!(
            "nodeName: {}\ndataDir: {}\napi: 127.0.0.1:{}\n\
             capacity: {{cpu: 1000000, ram: 1000000, slots: {SLOTS}}}\n\
             maxConnections: {MAX_CONNECTIONS}\n\
             drivers:\n  test: {{dir: {}}}\n",
            self.name,
            self.data_dir().display(),
            self.port,
            self.resource_dir().display()
        );
        if let Some(j) = &self.join {
            yml.push_str(&format!("cluster: {{join: \"{}\", joinToken: \"{}\"}}\n", j.via, j.token));
        }
        let path = self.dir.join("fish.yml");
        std::fs::write(&path, yml)?;
        Ok(path)
    }

    async fn spawn(&mut self) -> Result<Duration> {
        let config = self.write_config()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("fishd.log"))?;
        let started = Instant::now();
        let child = Command::new(&self.fishd)
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.fishd.display()))?;
        self.child = Some(child);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("fishd exited during start ({status}):\n{}", self.log_tail());
            }
            if self.url.is_empty() {
                if self.joined {
                    self.read_cluster_json()?;
                } else {
                    self.read_fishctl_config()?;
                }
            }
            if !self.url.is_empty() && self.ready().await {
                return Ok(started.elapsed());
            }
            if started.elapsed() > START_LIMIT {
                bail!("fishd was not ready within {START_LIMIT:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Reads server, token and CA from the `fishctl.yaml` fishd wrote, once it exists.
    fn read_fishctl_config(&mut self) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(self.data_dir().join("fishctl.yaml")) else { return Ok(()) };
        let Ok(v) = serde_saphyr::from_str::<Value>(&text) else { return Ok(()) };
        let Some(current) = v["current_context"].as_str() else { return Ok(()) };
        let c = &v["contexts"][current];
        let (Some(server), Some(token), Some(ca)) = (c["server"].as_str(), c["token"].as_str(), c["ca_cert"].as_str())
        else {
            return Ok(());
        };
        let port = server.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
        if port == 0 {
            return Ok(());
        }
        self.ca = std::fs::read(ca).with_context(|| format!("cannot read {ca}"))?;
        self.url = server.to_owned();
        self.token = token.to_owned();
        self.port = port;
        self.client = self.new_client()?;
        Ok(())
    }

    /// Reads the API address a joined node advertises from its `cluster.json`
    /// (written last by the join), once it exists; token and CA are the cluster's.
    fn read_cluster_json(&mut self) -> Result<()> {
        let Ok(text) = std::fs::read_to_string(self.data_dir().join("cluster.json")) else { return Ok(()) };
        let Ok(v) = serde_json::from_str::<Value>(&text) else { return Ok(()) };
        let Some(advertise) = v["advertise"].as_str() else { return Ok(()) };
        let port = advertise.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
        if port == 0 {
            return Ok(());
        }
        self.url = format!("https://{advertise}");
        self.port = port;
        self.client = self.new_client()?;
        Ok(())
    }

    /// `HOST:PORT` of the API (what `--join` takes).
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("https://").to_owned()
    }

    /// The cluster CA's certificate (PEM), as this node's clients trust it.
    pub fn ca_pem(&self) -> Vec<u8> {
        self.ca.clone()
    }

    async fn ready(&self) -> bool {
        self.client.get(format!("{}/readyz", self.url)).send().await.is_ok_and(|r| r.status().is_success())
    }

    /// A new client trusting this node's CA: its own connection, as a separate
    /// program (a CI server, a load generator worker) would have.
    pub fn new_client(&self) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&self.ca)?;
        Ok(reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(120)).build()?)
    }

    /// Like [`Daemon::new_client`], with every request given up after `timeout`.
    pub fn client_with_timeout(&self, timeout: Duration) -> Result<reqwest::Client> {
        let ca = reqwest::Certificate::from_pem(&self.ca)?;
        Ok(reqwest::Client::builder().tls_certs_only([ca]).timeout(timeout).build()?)
    }

    /// `<url><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Stops fishd with SIGTERM (as an operator would) and starts it again on the
    /// same data and port; returns the time from spawn to ready.
    pub async fn restart(&mut self) -> Result<Duration> {
        self.stop().await?;
        self.spawn().await
    }

    /// SIGKILL, as a crash would; returns the instant just before the signal went out.
    pub fn kill9(&mut self) -> Result<Instant> {
        let mut c = self.child.take().context("fishd is not running")?;
        let at = Instant::now();
        c.kill()?;
        c.wait()?;
        Ok(at)
    }

    /// Starts a stopped fishd again on the same data dir and port, with no join
    /// settings; returns the time from spawn to ready.
    pub async fn start_again(&mut self) -> Result<Duration> {
        self.spawn().await
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 30 s).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while c.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                bail!("fishd did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The fishd process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn status_field(&self, field: &str) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = text.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Resident memory now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// Peak resident memory since start, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_field("VmHWM:")
    }

    /// CPU time (user + system, all threads) used so far, in seconds.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid()?))
    }

    /// Bytes of the redb file.
    pub fn store_bytes(&self) -> u64 {
        std::fs::metadata(self.data_dir().join("fish.redb")).map(|m| m.len()).unwrap_or(0)
    }

    /// The last lines of fishd's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("fishd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// GET with the admin token; status and JSON body.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self.client.get(self.url(path)).bearer_auth(&self.token).send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// POST a JSON body with the admin token; status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.post_with(&self.token, path, body).await
    }

    /// [`Daemon::post`] as the benchmark's client user ([`Daemon::client_token`]).
    pub async fn post_as_client(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        self.post_with(self.client_token(), path, body).await
    }

    async fn post_with(&self, token: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self.client.post(self.url(path)).bearer_auth(token).json(body).send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// POST a YAML manifest to `/api/v1/apply`; fails unless it is accepted.
    pub async fn apply(&self, yaml: &str) -> Result<Value> {
        let r = self
            .client
            .post(self.url("/api/v1/apply"))
            .bearer_auth(&self.token)
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await?;
        let code = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if !code.is_success() {
            bail!("apply failed: {code} {v}");
        }
        Ok(v)
    }

    /// The store revision now (from a list that is empty or small).
    pub async fn revision(&self) -> Result<u64> {
        let (code, v) = self.get("/api/v1/applications?phase=ELECTED").await?;
        if code != 200 {
            bail!("list failed: {code} {v}");
        }
        v["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["metadata"]["resourceVersion"].as_u64())
            .context("list without resourceVersion")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.resource_dir().starts_with(SHM) {
            let _ = std::fs::remove_dir_all(self.resource_dir());
        }
    }
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
pub fn cpu_seconds_of(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; fields after its closing parenthesis are fixed.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS)
}

/// This process's CPU time so far, in seconds (the load generator's share).
pub fn own_cpu_seconds() -> Option<f64> {
    cpu_seconds_of("/proc/self/stat")
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|s| s.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}
