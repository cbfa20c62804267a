//! A fake GitHub Actions runner, run by the `process` driver (or as a container's
//! CMD) in the gate's tests.
//!
//! Like `run.sh --jitconfig`: it takes its config from `--jitconfig B64`, from
//! `ACTIONS_RUNNER_INPUT_JITCONFIG`, or (with `FAKE_RUNNER_SOURCE=meta`, or when the
//! variable is absent) from the metadata endpoint (`FISH_META_URL`, `FISH_META_TOKEN`,
//! `FISH_CA_CERT`); writes `.runner`, `.credentials` and `.credentials_rsaparams`
//! (mode 0600); connects to the fake GitHub (trusting `FAKE_GITHUB_CA`); takes one job;
//! waits for it to finish; removes its files and exits 0, as `run.sh` does whatever
//! happened. A registration deleted while it waits ends it with 0 too.
//!
//! Knobs (`FAKE_RUNNER_MODE`): `never-connect` (sleeps), `crash` (exits 1 before
//! connecting), `hang` (never exits after taking a job).
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

/// A line on stderr (the resource's log): this binary is a test fixture, not a service.
fn log(msg: &str) {
    eprintln!("fake-gh-runner: {msg}");
}

fn client(ca: Option<&str>) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
    if let Some(path) = ca {
        let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        b = b.tls_certs_only([reqwest::Certificate::from_pem(&pem)?]);
    }
    Ok(b.build()?)
}

async fn jitconfig() -> Result<String> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--jitconfig") {
        return args.get(i + 1).cloned().context("--jitconfig needs a value");
    }
    let from_meta = std::env::var("FAKE_RUNNER_SOURCE").is_ok_and(|s| s == "meta");
    if !from_meta && let Ok(v) = std::env::var("ACTIONS_RUNNER_INPUT_JITCONFIG") {
        return Ok(v);
    }
    let url = std::env::var("FISH_META_URL").context("no jitconfig and no FISH_META_URL")?;
    let token = std::env::var("FISH_META_TOKEN").context("no FISH_META_TOKEN")?;
    let ca = std::env::var("FISH_CA_CERT").ok();
    let data: Value =
        client(ca.as_deref())?.get(&url).bearer_auth(token).send().await?.error_for_status()?.json().await?;
    data.get("ACTIONS_RUNNER_INPUT_JITCONFIG")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .context("the metadata holds no ACTIONS_RUNNER_INPUT_JITCONFIG")
}

fn decode_file(blob: &Value, name: &str) -> Result<Vec<u8>> {
    let b64 = blob.get(name).and_then(Value::as_str).with_context(|| format!("the config has no {name}"))?;
    Ok(B64.decode(b64)?)
}

fn write_private(name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(name)?;
    f.write_all(bytes)?;
    Ok(())
}

fn clean() {
    for f in [".runner", ".credentials", ".credentials_rsaparams"] {
        let _ = std::fs::remove_file(f);
    }
}

async fn run() -> Result<()> {
    let mode = std::env::var("FAKE_RUNNER_MODE").unwrap_or_default();
    let encoded = jitconfig().await?;
    let blob: Value = serde_json::from_slice(&B64.decode(encoded.trim())?)?;
    let files = [".runner", ".credentials", ".credentials_rsaparams"].map(|n| (n, decode_file(&blob, n)));
    for (name, bytes) in &files {
        let bytes = bytes.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        write_private(name, bytes)?;
    }
    let settings: Value = serde_json::from_slice(&std::fs::read(".runner")?)?;
    let creds: Value = serde_json::from_slice(&std::fs::read(".credentials_rsaparams")?)?;
    let server = settings.get("ServerUrl").and_then(Value::as_str).context(".runner has no ServerUrl")?.to_owned();
    let id = settings.get("AgentId").and_then(Value::as_u64).context(".runner has no AgentId")?;
    let name = settings.get("AgentName").and_then(Value::as_str).unwrap_or("").to_owned();
    let secret = creds.get("secret").and_then(Value::as_str).unwrap_or("").to_owned();
    log(&format!("runner {name} (id {id}) configured for {server}"));
    match mode.as_str() {
        "crash" => bail!("crashing before connecting (FAKE_RUNNER_MODE=crash)"),
        "never-connect" => loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        },
        _ => {}
    }
    let http = client(std::env::var("FAKE_GITHUB_CA").ok().as_deref())?;
    let r = http
        .post(format!("{server}/_fake/runner/connect"))
        .json(&serde_json::json!({"id": id, "secret": secret}))
        .send()
        .await?;
    if r.status().as_u16() == 404 {
        log("the runner no longer exists on the server; exiting");
        clean();
        return Ok(());
    }
    r.error_for_status()?;
    log("connected; listening for jobs");
    let job = loop {
        let r = http.get(format!("{server}/_fake/runner/{id}/job?secret={secret}")).send().await?;
        match r.status().as_u16() {
            200 => break r.json::<Value>().await?.get("job").and_then(Value::as_u64).context("no job id")?,
            204 => continue,
            404 => {
                log("the registration was removed while idle; exiting");
                clean();
                return Ok(());
            }
            s => bail!("polling for a job: HTTP {s}"),
        }
    };
    log(&format!("running job {job}"));
    if mode == "hang" {
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    loop {
        let v: Value = http.get(format!("{server}/_fake/jobs/{job}")).send().await?.json().await?;
        if v.get("status").and_then(Value::as_str) == Some("completed") {
            log(&format!("job {job} completed ({})", v.get("conclusion").and_then(Value::as_str).unwrap_or("?")));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    clean();
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    match run().await {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            log(&format!("error: {e:#}"));
            // run.sh exits 0 for everything but its restart codes; "crash" mode is the
            // one way to see another code.
            let crash = std::env::var("FAKE_RUNNER_MODE").is_ok_and(|m| m == "crash");
            std::process::exit(if crash { 1 } else { 0 });
        }
    }
}
