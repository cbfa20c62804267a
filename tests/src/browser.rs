//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), for the dashboard's end-to-end tests.
//!
//! chromedriver listens on a loopback port of its own and is killed when the
//! [`Browser`] drops. The browser trusts fishd's test CA only through WebDriver's
//! `acceptInsecureCerts` capability, which exists for exactly this and lives only in
//! this session. Under `CI=true` a missing chromium or chromedriver is a failure;
//! elsewhere [`Browser::start`] answers `None` and says why.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// How long a page condition is waited for.
pub const PAGE_WAIT: Duration = Duration::from_secs(15);

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

/// A chromedriver process and one browser session in it.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

/// The browser's console log (`goog:loggingPrefs`), read through chromedriver's
/// `se/log` endpoint: every message since the last read.
#[derive(Debug)]
struct ConsoleLog;

impl WebDriverCompatibleCommand for ConsoleLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}

/// A Chrome DevTools command through chromedriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp(Value);

impl WebDriverCompatibleCommand for Cdp {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/goog/cdp/execute", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.0.to_string()))
    }
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; `None` (with a note on stderr)
    /// when they are not installed and this is not CI.
    pub async fn start() -> Result<Option<Browser>> {
        let (Some(chromium), Some(chromedriver)) = (which("chromium"), which("chromedriver")) else {
            // Fails under CI=true; skips, saying so, elsewhere (or when opted out).
            crate::prerequisite(
                "chromium",
                false,
                "chromium or chromedriver is not installed (Debian: chromium chromium-driver; scripts/install-deps.sh)",
            );
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the drop takes Chromium's processes with it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", chromedriver.display()))?;
        let mut browser_caps = Capabilities::new();
        browser_caps.insert("browserName".into(), json!("chrome"));
        browser_caps.insert("acceptInsecureCerts".into(), json!(true));
        browser_caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        browser_caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                // --no-sandbox: tests run as root, where Chromium's sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--no-first-run", "--disable-extensions",
                         "--disable-background-networking", "--disable-component-update"],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let mut driver = Some(driver);
        let client = loop {
            match ClientBuilder::new(connector.clone()).capabilities(browser_caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if start.elapsed() > PAGE_WAIT => {
                    if let Some(d) = driver.take() {
                        kill_group(d);
                    }
                    bail!("no WebDriver session from chromedriver within {PAGE_WAIT:?}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let driver = driver.take().context("chromedriver handle")?;
        Ok(Some(Browser { client, driver }))
    }

    /// Makes the page's viewport exactly `width`×`height` CSS pixels at scale 1
    /// (`mobile` adds touch and the phone's viewport rules).
    pub async fn viewport(&self, width: u32, height: u32, mobile: bool) -> Result<()> {
        self.client
            .issue_cmd(Cdp(json!({"cmd": "Emulation.setDeviceMetricsOverride",
                "params": {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}})))
            .await?;
        Ok(())
    }

    /// Cuts the page off the network (or back on), as a lost connection would.
    pub async fn offline(&self, offline: bool) -> Result<()> {
        self.client.issue_cmd(Cdp(json!({"cmd": "Network.enable", "params": {}}))).await?;
        self.client
            .issue_cmd(Cdp(json!({"cmd": "Network.emulateNetworkConditions",
                "params": {"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}})))
            .await?;
        Ok(())
    }

    /// Waits for the first element matching `css`.
    pub async fn find(&self, css: &str) -> Result<fantoccini::elements::Element> {
        self.client
            .wait()
            .at_most(PAGE_WAIT)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("no element {css:?} within {PAGE_WAIT:?}"))
    }

    /// Runs `script` in the page and returns its value.
    pub async fn js(&self, script: &str) -> Result<Value> {
        Ok(self.client.execute(script, vec![]).await?)
    }

    /// Waits until `script` returns true in the page. A script that throws counts as
    /// "not yet": right after a navigation the element it reads may not exist (a
    /// `null` property read), and failing then made the tests flaky. The last error
    /// is reported if the wait times out.
    pub async fn wait_js(&self, what: &str, script: &str) -> Result<Duration> {
        let start = Instant::now();
        let mut last_error = None;
        loop {
            match self.js(script).await {
                Ok(Value::Bool(true)) => return Ok(start.elapsed()),
                Ok(_) => {}
                Err(e) => last_error = Some(format!("{e:#}")),
            }
            if start.elapsed() > PAGE_WAIT {
                let body = self.js("return document.body.innerText").await.unwrap_or_default();
                let error = last_error.map(|e| format!(" (the script last failed: {e})")).unwrap_or_default();
                bail!("timed out waiting for {what}{error}; the page shows:\n{}", body.as_str().unwrap_or(""));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Console messages since the last call, as (level, message).
    pub async fn console(&self) -> Result<Vec<(String, String)>> {
        let v = self.client.issue_cmd(ConsoleLog).await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (e["level"].as_str().unwrap_or("").to_owned(), e["message"].as_str().unwrap_or("").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Fails if the console holds any error (SEVERE) since the last read.
    ///
    /// `net::ERR_NETWORK_CHANGED` is not the page's fault: Chromium aborts in-flight requests
    /// whenever the host's interfaces change, and tests running beside this one create them
    /// (network namespaces, veth pairs, the metadata address). The dashboard's watches
    /// reconnect after it, which the callers go on to check through the page's content.
    pub async fn assert_no_console_errors(&self) -> Result<()> {
        let errors: Vec<_> = self
            .console()
            .await?
            .into_iter()
            .filter(|(level, m)| level == "SEVERE" && !m.contains("net::ERR_NETWORK_CHANGED"))
            .collect();
        if !errors.is_empty() {
            bail!("the browser console has errors: {errors:#?}");
        }
        Ok(())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>> {
        Ok(self.client.screenshot().await?)
    }
}

fn kill_group(mut child: Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver, Chromium and its helpers: the whole process group.
        let pgid = nix::unistd::Pid::from_raw(self.driver.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.driver.wait();
    }
}

/// Width and height of a PNG, from its IHDR chunk.
pub fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    if png.len() < 24 || &png[..8] != b"\x89PNG\r\n\x1a\n" || &png[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(png[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(png[20..24].try_into().ok()?);
    Some((w, h))
}
