//! The end-to-end harness: real `fishd` processes in temp dirs on free ports, driven
//! over real HTTPS with the admin token fishd wrote to `fishctl.yaml`, and the real
//! `fishctl` binary.
//!
//! Every wait has a deadline; a daemon is killed when its [`TestDaemon`] drops, and
//! its log is printed if the test failed, so a red test explains itself.
#![allow(clippy::unwrap_used)]

pub mod browser;
pub mod netns;
pub mod slow;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The longest any single condition in these tests is waited for.
pub const WAIT: Duration = Duration::from_secs(30);

/// A built binary of this workspace (`fishd`, `fishctl`), next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run `cargo build --workspace --bins` first", path.display());
    path
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A running fishd.
pub struct TestDaemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    pub token: String,
    pub client: reqwest::Client,
    extra_config: String,
    port: u16,
    /// `(member HOST:PORT, join token)` for the first start of a joining node.
    join: Option<(String, String)>,
    /// A joined node writes no fishctl.yaml: it uses the cluster's admin token.
    joined_token: Option<String>,
    /// The network namespace fishd runs in (`ip netns exec`), if not the test's own.
    netns: Option<String>,
    /// The API's host address: 127.0.0.1, or the node's address in its namespace.
    host: String,
}

impl TestDaemon {
    /// Starts fishd with the test driver and `extra` appended to its fish.yml.
    pub async fn start(extra: &str) -> Result<TestDaemon> {
        install_crypto();
        let dir = tempfile::tempdir()?;
        let mut d = TestDaemon {
            child: None,
            dir,
            url: String::new(),
            token: String::new(),
            client: reqwest::Client::new(),
            extra_config: extra.to_owned(),
            port: 0,
            join: None,
            joined_token: None,
            netns: None,
            host: "127.0.0.1".into(),
        };
        d.spawn().await?;
        Ok(d)
    }

    /// Starts fishd in network namespace `ns`, its API on `ip` (see [`netns::Net`]);
    /// with `join`, it joins the cluster of that member with that token.
    pub async fn start_in_netns(
        ns: &str,
        ip: std::net::Ipv4Addr,
        join: Option<(&TestDaemon, &str)>,
        extra: &str,
    ) -> Result<TestDaemon> {
        install_crypto();
        let mut d = TestDaemon {
            child: None,
            dir: tempfile::tempdir()?,
            url: String::new(),
            token: String::new(),
            client: reqwest::Client::new(),
            extra_config: extra.to_owned(),
            // A namespace has its own ports: a fixed one keeps restarts simple.
            port: 8001,
            join: join.map(|(via, token)| (via.addr(), token.to_owned())),
            joined_token: join.map(|(via, _)| via.token.clone()),
            netns: Some(ns.to_owned()),
            host: ip.to_string(),
        };
        d.spawn().await?;
        d.join = None;
        Ok(d)
    }

    /// Starts a fishd that joins the cluster of `via` with `token` (made by an admin
    /// of that cluster), with `extra` appended to its fish.yml (give it a `nodeName:`).
    /// Ready once its API answers `/readyz` over TLS verified by the cluster CA.
    pub async fn start_joining(via: &TestDaemon, token: &str, extra: &str) -> Result<TestDaemon> {
        install_crypto();
        let dir = tempfile::tempdir()?;
        let mut d = TestDaemon {
            child: None,
            dir,
            url: String::new(),
            token: via.token.clone(),
            client: reqwest::Client::new(),
            extra_config: extra.to_owned(),
            port: 0,
            join: Some((via.url.trim_start_matches("https://").to_owned(), token.to_owned())),
            joined_token: Some(via.token.clone()),
            netns: None,
            host: "127.0.0.1".into(),
        };
        d.spawn().await?;
        // Restarts need no join settings: the data dir remembers.
        d.join = None;
        Ok(d)
    }

    /// `HOST:PORT` of the API.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("https://").to_owned()
    }

    /// The fish.yml of this daemon.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("fish.yml")
    }

    /// A daemon not started yet, its port chosen: the test prepares its data directory
    /// (`fishd restore` into [`TestDaemon::data_dir`]), then calls
    /// [`TestDaemon::start_again`].
    pub fn prepared(extra: &str) -> Result<TestDaemon> {
        install_crypto();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Ok(TestDaemon {
            child: None,
            dir: tempfile::tempdir()?,
            url: String::new(),
            token: String::new(),
            client: reqwest::Client::new(),
            extra_config: extra.to_owned(),
            port,
            join: None,
            joined_token: None,
            netns: None,
            host: "127.0.0.1".into(),
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The fishctl config fishd wrote.
    pub fn fishctl_config(&self) -> PathBuf {
        self.data_dir().join("fishctl.yaml")
    }

    fn write_config(&self) -> Result<PathBuf> {
        let mut yml = format!("dataDir: {}\napi: {}:{}\n", self.data_dir().display(), self.host, self.port);
        if !self.extra_config.contains("nodeName:") {
            yml.push_str("nodeName: test-node\n");
        }
        // Room for many applications unless the test is about capacity.
        if !self.extra_config.contains("capacity:") {
            yml.push_str("capacity: {cpu: 64, ram: 256, slots: 256}\n");
        }
        // Whatever a test leaves allocated (processes, containers) is released when its
        // daemon is dropped: the drop drains with deallocation first.
        if !self.extra_config.contains("drainAndDeallocate:") {
            yml.push_str("drainAndDeallocate: true\n");
        }
        if !self.extra_config.contains("drivers:") {
            yml.push_str("drivers:\n  test: {}\n");
        }
        yml.push_str(&self.extra_config);
        if let Some((via, token)) = &self.join {
            let join = format!("join: \"{via}\", joinToken: \"{token}\"");
            // A test's own `cluster: {...}` line (e.g. a short nodeTimeout) gets the join
            // settings added, not a second `cluster:` key.
            match yml.find("\ncluster: {") {
                Some(at) => yml.insert_str(at + "\ncluster: {".len(), &format!("{join}, ")),
                None => yml.push_str(&format!("cluster: {{{join}}}\n")),
            }
        }
        let path = self.dir.path().join("fish.yml");
        std::fs::write(&path, yml)?;
        Ok(path)
    }

    async fn spawn(&mut self) -> Result<()> {
        install_crypto();
        let config = self.write_config()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("fishd.log"))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("fishd"));
                c
            }
            None => Command::new(bin("fishd")),
        };
        let child = cmd
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,fishd=debug")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start fishd")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("fishd exited during start ({status}):\n{}", self.log());
            }
            let found = match &self.joined_token {
                None => std::fs::read_to_string(self.fishctl_config()).ok().as_deref().and_then(parse_fishctl_config),
                Some(token) => std::fs::read_to_string(self.data_dir().join("cluster.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .and_then(|v| v["advertise"].as_str().map(|a| format!("https://{a}")))
                    .map(|url| (url, token.clone(), self.data_dir().join("ca.crt"))),
            };
            if let Some((url, token, ca)) = found {
                {
                    let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).unwrap_or(0);
                    if self.port == 0 || port == self.port {
                        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca)?)?;
                        self.client =
                            reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(30)).build()?;
                        self.url = url;
                        self.token = token;
                        self.port = port;
                        if self
                            .client
                            .get(format!("{}/readyz", self.url))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success())
                        {
                            return Ok(());
                        }
                    }
                }
            }
            if started.elapsed() > WAIT {
                bail!("fishd did not become ready in {WAIT:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// fishd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("fishd.log")).unwrap_or_default()
    }

    /// The fishd process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the fishd process has not exited (a zombie counts as exited).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit; returns the exit status and how long it took.
    pub async fn sigterm(&mut self, within: Duration) -> Result<(std::process::ExitStatus, Duration)> {
        let mut c = self.child.take().context("not running")?;
        let start = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM)?;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok((status, start.elapsed()));
            }
            if start.elapsed() > within {
                let _ = c.kill();
                bail!("fishd did not exit within {within:?} of SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts fishd again on the same data dir and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.spawn().await
    }

    /// Starts a stopped fishd again (after [`TestDaemon::sigterm`] or [`TestDaemon::kill9`]).
    pub async fn start_again(&mut self) -> Result<()> {
        self.spawn().await
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token)
    }

    /// GET with the admin token; the status and JSON body.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let r = self.req(reqwest::Method::GET, path).send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// POST a YAML body to `/api/v1/apply`.
    pub async fn apply(&self, yaml: &str) -> Result<(u16, Value)> {
        let r = self
            .req(reqwest::Method::POST, "/api/v1/apply")
            .header("content-type", "application/yaml")
            .body(yaml.to_owned())
            .send()
            .await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// POST with a JSON body (or none).
    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut r = self.req(reqwest::Method::POST, path);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// One application as JSON.
    pub async fn application(&self, name: &str) -> Result<Value> {
        let (code, v) = self.get(&format!("/api/v1/applications/{name}")).await?;
        if code != 200 {
            bail!("GET application {name}: {code} {v}");
        }
        Ok(v)
    }

    /// Waits until application `name` is in `phase`; fails early if it ends elsewhere.
    pub async fn wait_phase(&self, name: &str, phase: &str) -> Result<Value> {
        let start = Instant::now();
        loop {
            let app = self.application(name).await?;
            let now = app["status"]["phase"].as_str().unwrap_or("").to_owned();
            if now == phase {
                return Ok(app);
            }
            let terminal = now == "DEALLOCATED" || now == "ERROR";
            if terminal || start.elapsed() > WAIT {
                bail!(
                    "application {name} is {now}, waited for {phase}: {:#}\n--- fishd log ---\n{}",
                    app["status"],
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `resourceVersion` of label `name` as this node serves it, if it has it.
    pub async fn label_version(&self, name: &str) -> Option<String> {
        match self.get(&format!("/api/v1/labels/{name}")).await {
            Ok((200, l)) => l["metadata"]["resourceVersion"].as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// The node's name (`nodeName:` of its config, else fishd's test default).
    pub fn node_name(&self) -> String {
        self.extra_config
            .lines()
            .find_map(|l| l.strip_prefix("nodeName:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "test-node".into())
    }

    /// Runs fishctl against this node with another node's credentials and CA (`via`'s
    /// fishctl.yaml with this node's address): one token and one CA for the cluster.
    pub fn fishctl_with(&self, via: &TestDaemon, args: &[&str]) -> Output {
        let config = self.dir.path().join("fishctl-via.yaml");
        let yaml = format!(
            "current_context: c\ncontexts:\n  c:\n    server: {}\n    ca_cert: {}\n    user: admin\n    token: {}\n",
            self.url,
            via.data_dir().join("ca.crt").display(),
            via.token
        );
        std::fs::write(&config, yaml).unwrap();
        Command::new(bin("fishctl"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }

    /// Runs `fishctl --config <this node's fishctl.yaml> args...`.
    pub fn fishctl(&self, args: &[&str]) -> Output {
        Command::new(bin("fishctl"))
            .arg("--config")
            .arg(self.fishctl_config())
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        // SIGTERM first: the daemon deallocates what the test left and exits; a
        // daemon that does not within its grace period is killed. Our idle keep-alive
        // connections would hold the API's graceful shutdown: drop them first.
        self.client = reqwest::Client::new();
        if let Some(mut c) = self.child.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- fishd log ({}) ---\n{}", self.dir.path().display(), self.log());
        }
    }
}

/// (server, token, ca_cert) of the current context.
fn parse_fishctl_config(text: &str) -> Option<(String, String, PathBuf)> {
    let v: Value = serde_saphyr::from_str(text).ok()?;
    let current = v["current_context"].as_str()?;
    let c = &v["contexts"][current];
    Some((c["server"].as_str()?.to_owned(), c["token"].as_str()?.to_owned(), PathBuf::from(c["ca_cert"].as_str()?)))
}

/// Waits for `cond` to hold, polling, up to [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        if start.elapsed() > WAIT {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A watch stream: newline-delimited JSON events.
pub struct Watch {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: Vec<u8>,
}

impl Watch {
    /// The next event, or an error after `within`.
    pub async fn next(&mut self, within: Duration) -> Result<Value> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                return Ok(serde_json::from_slice(&line)?);
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => bail!("no watch event within {within:?}"),
                Ok(None) => bail!("watch stream ended"),
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk?),
            }
        }
    }

    /// Skips events until one satisfies `pred`; returns it.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next(left).await.with_context(|| format!("waiting for {what}"))?;
            if pred(&ev) {
                return Ok(ev);
            }
        }
    }
}

impl TestDaemon {
    /// Opens a watch on `path` (e.g. `/api/v1/applications?watch=true`).
    pub async fn watch(&self, path: &str) -> Result<Watch> {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(3600))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("watch {path}: {}", r.status());
        }
        Ok(Watch { body: Box::pin(r.bytes_stream()), buf: Vec::new() })
    }
}

/// Whether a test's prerequisite (`what`: `docker`, `cgroup`...) is here. When it is
/// not, the test fails under `CI=true`: CI must not report green for what it did not
/// test. Elsewhere the test is skipped, saying so. `AQUARIUM_SKIP=docker,cgroup` opts
/// out explicitly (in CI too).
pub fn prerequisite(what: &str, present: bool, why_missing: &str) -> bool {
    if present {
        return true;
    }
    let opted_out = std::env::var("AQUARIUM_SKIP").is_ok_and(|v| v.split(',').any(|s| s.trim() == what));
    if opted_out {
        eprintln!("SKIP ({what} opted out by AQUARIUM_SKIP): {why_missing}");
        return false;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("prerequisite {what} is missing under CI=true: {why_missing} (AQUARIUM_SKIP={what} opts out)");
    }
    eprintln!("SKIP (not in CI; set CI=true to fail instead): {why_missing}");
    false
}

/// A host HTTP service on `bind` answering every request with `marker` (HTTP/1.0, then
/// close), until the test ends; for tests of what a resource can reach.
pub async fn http_service(bind: &str, marker: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(bind).await.expect("binding the test HTTP service");
    let addr = listener.local_addr().expect("a bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
                let body = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{marker}", marker.len());
                let _ = s.write_all(body.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}
