//! A local fake GitHub for the gate's tests: loopback HTTPS with its own test CA,
//! in memory, speaking the REST shapes of `github-gate.md` section 5.
//!
//! - Runners at repo, org and enterprise scope: `generate-jitconfig` (201; 409 when
//!   the name exists; 422 without group or labels), list (`name=`, pages), get,
//!   delete (204; 422 while busy; 404), runner groups, jobs, `/rate_limit`, and
//!   `x-ratelimit-*` on every answer. Calls need `Authorization: Bearer <token>`.
//! - Faults per call: a status, `retry-after`, or "commit and drop the response"
//!   (the change is made, the client sees a 502 as from a proxy that lost the answer).
//! - A job engine: [`FakeGithub::queue_job`] queues a job and sends `queued`; a fake
//!   runner connects with the blob the fake minted, takes the oldest queued job its
//!   labels cover (`in_progress`), and after `job_duration` the job is `completed`
//!   and the consumed registration deleted, as GitHub does.
//! - A webhook emitter: signed `workflow_job` and `ping` deliveries with the real
//!   headers, in order; with [`FakeGithub::hold`] they are kept for the test to
//!   deliver in any order, twice, or with a bad signature.
#![allow(clippy::unwrap_used)] // test support: a poisoned lock or a bad literal is a failed test

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// How a delivery is signed.
#[derive(Clone, Debug)]
pub enum Signature {
    /// With the hook's secret.
    Good,
    /// No header at all.
    Missing,
    /// With another secret.
    Wrong(String),
}

/// A fault injected into the next calls matching `method` and a path fragment.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer this status without doing anything.
    Status(u16),
    /// Do the change, then answer 502: the client never learns it happened.
    CommitAndDrop,
    /// 403 with `retry-after` (a secondary rate limit).
    RetryAfter(u64),
    /// 429 with `retry-after` (too many requests).
    TooMany(u64),
    /// Never answer and do nothing (a call stuck in a proxy): the client times out,
    /// or dies waiting.
    Stall,
    /// Do the change, then never answer.
    CommitAndStall,
}

#[derive(Clone, Debug)]
struct FaultRule {
    method: Method,
    fragment: String,
    fault: Fault,
    times: u32,
}

/// A runner registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRunner {
    pub id: u64,
    pub name: String,
    pub labels: Vec<String>,
    pub online: bool,
    pub busy: bool,
    pub job: Option<u64>,
    secret: String,
}

/// A job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeJob {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub labels: Vec<String>,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
    pub runner_name: Option<String>,
    /// How many runners were given this job (must stay ≤ 1).
    pub assignments: u32,
    pub queued_at: Option<Instant>,
    pub started_at: Option<Instant>,
}

/// One attempt to deliver a webhook, as GitHub's deliveries API lists it.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The delivery id (new for every attempt, redeliveries included).
    pub id: u64,
    pub guid: String,
    pub event: String,
    pub action: String,
    pub redelivery: bool,
    /// fishd's status; 502 when the delivery never reached it.
    pub status_code: u16,
    pub at: time::OffsetDateTime,
    pub body: Vec<u8>,
}

/// The hook id of the fake's one webhook (`/orgs/{org}/hooks/{id}`, `/repos/{o}/{r}/hooks/{id}`).
pub const HOOK_ID: u64 = 4567;

/// A webhook delivery, sent or held.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub guid: String,
    pub event: String,
    pub action: String,
    pub job: u64,
    pub body: Vec<u8>,
    /// fishd's answer (0: not sent, or no answer).
    pub status: u16,
    /// Sent again on request (`POST …/deliveries/{id}/attempts`), same GUID.
    pub redelivery: bool,
}

struct Hook {
    url: String,
    secret: String,
    client: reqwest::Client,
}

/// A GitHub App installed on the fake's org (see [`FakeGithub::enable_app`]).
#[derive(Clone, Debug)]
pub struct AppKey {
    pub app_id: u64,
    pub client_id: String,
    pub installation_id: u64,
    /// The App's private key, PKCS#1 PEM as GitHub issues it.
    pub key_path: PathBuf,
}

struct FakeApp {
    key: AppKey,
    /// DER `RSAPublicKey`: what GitHub keeps to check the App's JWTs.
    public_key: Vec<u8>,
    token_life: Duration,
    /// Installation tokens issued, and until when each is good.
    tokens: BTreeMap<String, Instant>,
    issued: u64,
    jwts_refused: u64,
}

#[derive(Default)]
struct World {
    app: Option<FakeApp>,
    /// Calls refused for a bad or expired token.
    unauthorized: u64,
    token: String,
    next_id: u64,
    runners: BTreeMap<u64, FakeRunner>,
    jobs: BTreeMap<u64, FakeJob>,
    hook: Option<Hook>,
    hold: bool,
    held: Vec<Delivery>,
    /// Deliveries to lose: (action, how many more).
    drops: Vec<(String, u32)>,
    /// Every attempt, oldest first (the deliveries API).
    attempts: Vec<Attempt>,
    /// While on, runners get no job.
    hold_jobs: bool,
    /// Calls stuck in a `Stall` fault right now.
    stalled: u64,
    sent: Vec<Delivery>,
    calls: BTreeMap<String, u64>,
    /// When each call of a route came, oldest first.
    call_times: BTreeMap<String, Vec<Instant>>,
    faults: Vec<FaultRule>,
    job_duration: Duration,
    assign_on_delete: bool,
    limit: u64,
    registrations_peak: usize,
}

impl World {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn take_fault(&mut self, method: &Method, path: &str) -> Option<Fault> {
        let i = self.faults.iter().position(|f| f.method == method && path.contains(&f.fragment))?;
        let f = self.faults[i].fault.clone();
        self.faults[i].times -= 1;
        if self.faults[i].times == 0 {
            self.faults.remove(i);
        }
        Some(f)
    }

    fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// The running fake.
pub struct FakeGithub {
    /// `https://127.0.0.1:<port>`: the gate's `apiUrl`.
    pub url: String,
    /// The test CA's PEM file (the gate's `caFile`, the runner's `FAKE_GITHUB_CA`).
    pub ca_path: PathBuf,
    /// The token the gate must send (write it to the gate's token file).
    pub token: String,
    world: Arc<Mutex<World>>,
    emit: tokio::sync::mpsc::UnboundedSender<Delivery>,
    _dir: tempfile::TempDir,
    handle: axum_server::Handle<SocketAddr>,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn test_tls(dir: &std::path::Path) -> Result<(PathBuf, rustls::ServerConfig)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "fake github test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
    leaf.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = leaf.signed_by(&key, &issuer)?;
    let ca_path = dir.join("fake-github-ca.crt");
    std::fs::write(&ca_path, ca_cert.pem())?;
    let chain = vec![cert.der().clone(), ca_cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((ca_path, config))
}

impl FakeGithub {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Result<FakeGithub> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir()?;
        let (ca_path, tls) = test_tls(dir.path())?;
        let token = format!("ghs_fake{}", uuid::Uuid::now_v7().simple());
        let world = Arc::new(Mutex::new(World {
            token: token.clone(),
            next_id: 1000,
            job_duration: Duration::from_millis(300),
            limit: 5000,
            ..Default::default()
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let url = format!("https://{addr}");
        let (emit, rx) = tokio::sync::mpsc::unbounded_channel();
        let state = Ctx { world: world.clone(), url: url.clone(), emit: emit.clone() };
        let app = Router::new().fallback(handle).with_state(state);
        let handle = axum_server::Handle::new();
        let server =
            axum_server::from_tcp_rustls(listener, axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls)))?
                .handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(app.into_make_service()).await;
        });
        tokio::spawn(emitter(world.clone(), rx));
        Ok(FakeGithub { url, ca_path, token, world, emit, _dir: dir, handle })
    }

    /// Sends webhooks to `url` signed with `secret`, trusting `ca_pem_file` (fishd's CA).
    pub fn set_hook(&self, url: &str, secret: &str, ca_pem_file: &std::path::Path) -> Result<()> {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_pem_file)?)?;
        let client = reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(15)).build()?;
        self.world.lock().unwrap().hook = Some(Hook { url: url.to_owned(), secret: secret.to_owned(), client });
        Ok(())
    }

    /// Changes the secret deliveries are signed with (a rotation at GitHub).
    pub fn set_hook_secret(&self, secret: &str) {
        if let Some(h) = self.world.lock().unwrap().hook.as_mut() {
            h.secret = secret.to_owned();
        }
    }

    /// Keeps new deliveries for [`FakeGithub::held`] instead of sending them.
    pub fn hold(&self, on: bool) {
        self.world.lock().unwrap().hold = on;
    }

    /// Deliveries kept while holding, oldest first (taken).
    pub fn take_held(&self) -> Vec<Delivery> {
        std::mem::take(&mut self.world.lock().unwrap().held)
    }

    /// Deliveries sent so far, with fishd's answers.
    pub fn sent(&self) -> Vec<Delivery> {
        self.world.lock().unwrap().sent.clone()
    }

    /// Sends `d` now, signed as asked; returns fishd's status.
    pub async fn deliver(&self, d: &Delivery, sig: Signature) -> Result<u16> {
        let (url, secret, client) = {
            let w = self.world.lock().unwrap();
            let h = w.hook.as_ref().ok_or_else(|| anyhow::anyhow!("no hook set"))?;
            (h.url.clone(), h.secret.clone(), h.client.clone())
        };
        let status = send(&client, &url, &secret, d, &sig).await?;
        let mut sent = d.clone();
        sent.status = status;
        let mut w = self.world.lock().unwrap();
        log_attempt(&mut w, d, status, d.redelivery);
        w.sent.push(sent);
        Ok(status)
    }

    /// A `ping` delivery.
    pub fn ping(&self) -> Delivery {
        let body = serde_json::to_vec(&json!({"zen": "Keep it logically awesome.", "hook_id": 1})).unwrap();
        Delivery {
            guid: uuid::Uuid::now_v7().to_string(),
            event: "ping".into(),
            action: String::new(),
            job: 0,
            body,
            status: 0,
            redelivery: false,
        }
    }

    /// A raw `workflow_job` delivery for `job` with `action` (for hand-made orders).
    pub fn delivery(&self, job: u64, action: &str) -> Option<Delivery> {
        let w = self.world.lock().unwrap();
        let j = w.jobs.get(&job)?;
        Some(job_delivery(j, action))
    }

    /// Loses the next `times` deliveries of `action` (they never reach fishd; the
    /// deliveries API shows them failed).
    pub fn drop_deliveries(&self, action: &str, times: u32) {
        self.world.lock().unwrap().drops.push((action.to_owned(), times));
    }

    /// Every delivery attempt so far, oldest first.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.world.lock().unwrap().attempts.clone()
    }

    /// While on, runners get no job (they stay online and idle).
    pub fn hold_jobs(&self, on: bool) {
        self.world.lock().unwrap().hold_jobs = on;
    }

    /// GitHub removes an idle registration by itself (actions/runner#4726, or the
    /// one-day rule for offline ones); returns whether it was there and idle.
    pub fn remove_idle_runner(&self, name: &str) -> bool {
        let mut w = self.world.lock().unwrap();
        let Some(id) = w.runners.values().find(|r| r.name == name && !r.busy).map(|r| r.id) else { return false };
        w.runners.remove(&id);
        true
    }

    /// Installs a GitHub App: generates its RSA key (with the `openssl` command, as
    /// GitHub's is: ring cannot make RSA keys), keeps the public half to check JWTs,
    /// and from now on accepts only installation tokens the App bought, not the
    /// plain token. Installation tokens live `token_life` (GitHub: 1 h).
    pub fn enable_app(&self, token_life: Duration) -> Result<AppKey> {
        use rustls::pki_types::pem::PemObject;
        let key_path = self._dir.path().join("app-key.pem");
        let out = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&key_path)
            .arg("2048")
            .output()?;
        anyhow::ensure!(out.status.success(), "openssl genrsa: {}", String::from_utf8_lossy(&out.stderr));
        let pem = std::fs::read(&key_path)?;
        let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let rustls::pki_types::PrivateKeyDer::Pkcs1(pkcs1) = der else { anyhow::bail!("openssl made no PKCS#1 key") };
        let pair =
            ring::signature::RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()).map_err(|e| anyhow::anyhow!("{e}"))?;
        use ring::signature::KeyPair;
        let public_key = pair.public_key().as_ref().to_vec();
        let key = AppKey { app_id: 31337, client_id: "Iv1.fakeclient".into(), installation_id: 777, key_path };
        self.world.lock().unwrap().app = Some(FakeApp {
            key: key.clone(),
            public_key,
            token_life,
            tokens: BTreeMap::new(),
            issued: 0,
            jwts_refused: 0,
        });
        Ok(key)
    }

    /// Installation tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.world.lock().unwrap().app.as_ref().map_or(0, |a| a.issued)
    }

    /// JWTs refused (bad signature, issuer or times).
    pub fn jwts_refused(&self) -> u64 {
        self.world.lock().unwrap().app.as_ref().map_or(0, |a| a.jwts_refused)
    }

    /// Calls refused with 401 for a bad or expired token (JWT calls aside).
    pub fn unauthorized(&self) -> u64 {
        self.world.lock().unwrap().unauthorized
    }

    /// Revokes every installation token now (the next call with one gets 401).
    pub fn revoke_tokens(&self) {
        if let Some(a) = self.world.lock().unwrap().app.as_mut() {
            a.tokens.clear();
        }
    }

    /// Calls stuck in a `Stall` or `CommitAndStall` fault right now.
    pub fn stalled(&self) -> u64 {
        self.world.lock().unwrap().stalled
    }

    /// How long a taken job runs before it completes.
    pub fn set_job_duration(&self, d: Duration) {
        self.world.lock().unwrap().job_duration = d;
    }

    /// When on, idle runners get no job until the next `DELETE` of one, which first
    /// gives it a queued job it covers, so the delete answers 422: the race of a job
    /// assigned at that very moment. One-shot: the flag clears at that `DELETE`.
    pub fn set_assign_on_delete(&self, on: bool) {
        self.world.lock().unwrap().assign_on_delete = on;
    }

    /// Injects `fault` into the next `times` calls of `method` whose path contains `fragment`.
    pub fn fault(&self, method: &str, fragment: &str, fault: Fault, times: u32) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        self.world.lock().unwrap().faults.push(FaultRule { method, fragment: fragment.to_owned(), fault, times });
    }

    /// Queues a job in `repo` with `labels` and sends `queued`; returns its id.
    pub fn queue_job(&self, repo: &str, labels: &[&str]) -> u64 {
        let mut w = self.world.lock().unwrap();
        let id = w.id();
        let run_id = w.id();
        let job = FakeJob {
            id,
            run_id,
            repo: repo.to_owned(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            status: "queued".into(),
            conclusion: None,
            runner_name: None,
            assignments: 0,
            queued_at: Some(Instant::now()),
            started_at: None,
        };
        let d = job_delivery(&job, "queued");
        w.jobs.insert(id, job);
        dispatch(&mut w, &self.emit, d);
        id
    }

    /// Cancels a queued job: `completed` with conclusion `cancelled` and no runner.
    pub fn cancel_job(&self, id: u64) {
        let mut w = self.world.lock().unwrap();
        let Some(j) = w.jobs.get_mut(&id) else { return };
        if j.status != "queued" {
            return;
        }
        j.status = "completed".into();
        j.conclusion = Some("cancelled".into());
        let d = job_delivery(j, "completed");
        dispatch(&mut w, &self.emit, d);
    }

    /// One job.
    pub fn job(&self, id: u64) -> Option<FakeJob> {
        self.world.lock().unwrap().jobs.get(&id).cloned()
    }

    /// Every job.
    pub fn jobs(&self) -> Vec<FakeJob> {
        self.world.lock().unwrap().jobs.values().cloned().collect()
    }

    /// Current runner registrations.
    pub fn registrations(&self) -> Vec<FakeRunner> {
        self.world.lock().unwrap().runners.values().cloned().collect()
    }

    /// The most registrations held at once.
    pub fn registrations_peak(&self) -> usize {
        self.world.lock().unwrap().registrations_peak
    }

    /// Registers a runner directly (as a leftover of an earlier life would be).
    pub fn add_registration(&self, name: &str, labels: &[&str]) -> u64 {
        let mut w = self.world.lock().unwrap();
        let id = w.id();
        let r = FakeRunner {
            id,
            name: name.to_owned(),
            labels: labels.iter().map(|l| l.to_lowercase()).collect(),
            online: false,
            busy: false,
            job: None,
            secret: String::new(),
        };
        w.runners.insert(id, r);
        id
    }

    /// API calls per route (`POST generate-jitconfig`, `DELETE runners/{id}` ...).
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.world.lock().unwrap().calls.clone()
    }

    /// When each call of `route` came (`POST runners/generate-jitconfig`), oldest first.
    pub fn call_times(&self, route: &str) -> Vec<Instant> {
        self.world.lock().unwrap().call_times.get(route).cloned().unwrap_or_default()
    }

    /// Every API call (the fake's own `/_fake/` routes excluded).
    pub fn total_calls(&self) -> u64 {
        self.world.lock().unwrap().total_calls()
    }
}

fn job_delivery(j: &FakeJob, action: &str) -> Delivery {
    let (owner, _) = j.repo.split_once('/').unwrap_or((&j.repo, ""));
    let runner = if action == "queued" || action == "waiting" { Value::Null } else { json!(j.runner_name) };
    let body = json!({
        "action": action,
        "workflow_job": {
            "id": j.id, "run_id": j.run_id, "run_attempt": 1, "labels": j.labels,
            "status": if action == "completed" { "completed" } else if action == "in_progress" { "in_progress" } else { "queued" },
            "conclusion": j.conclusion, "runner_name": runner, "runner_id": Value::Null,
            "runner_group_name": Value::Null, "workflow_name": "ci", "html_url": format!("https://github.com/{}/actions/runs/{}", j.repo, j.run_id),
        },
        "repository": {"full_name": j.repo},
        "organization": {"login": owner},
    });
    Delivery {
        guid: uuid::Uuid::now_v7().to_string(),
        event: "workflow_job".into(),
        action: action.to_owned(),
        job: j.id,
        body: serde_json::to_vec(&body).unwrap(),
        status: 0,
        redelivery: false,
    }
}

async fn send(client: &reqwest::Client, url: &str, secret: &str, d: &Delivery, sig: &Signature) -> Result<u16> {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", &d.event)
        .header("x-github-delivery", &d.guid)
        .header("x-github-hook-id", "1")
        .header("x-github-hook-installation-target-type", "organization")
        .header("user-agent", "GitHub-Hookshot/fake");
    match sig {
        Signature::Good => req = req.header("x-hub-signature-256", sign(secret, &d.body)),
        Signature::Wrong(other) => req = req.header("x-hub-signature-256", sign(other, &d.body)),
        Signature::Missing => {}
    }
    Ok(req.body(d.body.clone()).send().await?.status().as_u16())
}

/// Holds `d` (while holding) or queues it for the emitter, in the order of changes.
fn dispatch(w: &mut World, emit: &tokio::sync::mpsc::UnboundedSender<Delivery>, d: Delivery) {
    if w.hold {
        w.held.push(d);
    } else {
        let _ = emit.send(d);
    }
}

/// Sends deliveries in order; GitHub never redelivers by itself.
async fn emitter(world: Arc<Mutex<World>>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Delivery>) {
    while let Some(d) = rx.recv().await {
        let target = world.lock().unwrap().hook.as_ref().map(|h| (h.url.clone(), h.secret.clone(), h.client.clone()));
        let Some((url, secret, client)) = target else { continue };
        let lost = {
            let mut w = world.lock().unwrap();
            match w.drops.iter().position(|(a, _)| *a == d.action) {
                Some(i) => {
                    w.drops[i].1 -= 1;
                    if w.drops[i].1 == 0 {
                        w.drops.remove(i);
                    }
                    // GitHub tried and failed (fishd down, a network fault): it shows
                    // in the deliveries API, and is never redelivered by itself.
                    log_attempt(&mut w, &d, 502, d.redelivery);
                    true
                }
                None => false,
            }
        };
        if lost {
            continue;
        }
        let status = send(&client, &url, &secret, &d, &Signature::Good).await.unwrap_or(0);
        let mut sent = d;
        sent.status = status;
        let mut w = world.lock().unwrap();
        let redelivery = sent.redelivery;
        log_attempt(&mut w, &sent, if status == 0 { 502 } else { status }, redelivery);
        w.sent.push(sent);
    }
}

fn log_attempt(w: &mut World, d: &Delivery, status_code: u16, redelivery: bool) {
    let id = w.id();
    w.attempts.push(Attempt {
        id,
        guid: d.guid.clone(),
        event: d.event.clone(),
        action: d.action.clone(),
        redelivery,
        status_code,
        at: time::OffsetDateTime::now_utc(),
        body: d.body.clone(),
    });
}

fn status_text(code: u16) -> String {
    match code {
        502 => "failed to connect to host".into(),
        c if (200..300).contains(&c) => "OK".into(),
        c => format!("Invalid HTTP Response: {c}"),
    }
}

fn attempt_json(a: &Attempt, full: bool) -> Value {
    let mut v = json!({
        "id": a.id, "guid": a.guid, "delivered_at": a.at.format(&time::format_description::well_known::Rfc3339).unwrap(),
        "redelivery": a.redelivery, "duration": 0.01, "status": status_text(a.status_code), "status_code": a.status_code,
        "event": a.event, "action": if a.action.is_empty() { Value::Null } else { json!(a.action) },
        "installation_id": Value::Null, "repository_id": 1,
    });
    if full {
        let payload: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
        v["url"] = json!("https://fishd.example/hooks/github");
        v["request"] = json!({"headers": {"X-GitHub-Event": a.event, "X-GitHub-Delivery": a.guid}, "payload": payload});
        v["response"] = json!({"headers": {}, "payload": status_text(a.status_code)});
    }
    v
}

#[derive(Clone)]
struct Ctx {
    world: Arc<Mutex<World>>,
    url: String,
    emit: tokio::sync::mpsc::UnboundedSender<Delivery>,
}

fn reply(status: StatusCode, body: Value, w: &World) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    let h = r.headers_mut();
    let used = w.total_calls();
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    h.insert("x-ratelimit-limit", HeaderValue::from(w.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(w.limit.saturating_sub(used)));
    h.insert("x-ratelimit-used", HeaderValue::from(used));
    h.insert("x-ratelimit-reset", HeaderValue::from(now + 3600));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    r
}

fn msg(m: &str) -> Value {
    json!({"message": m, "documentation_url": "https://docs.github.com/rest"})
}

fn runner_json(r: &FakeRunner) -> Value {
    json!({"id": r.id, "name": r.name, "os": "linux", "status": if r.online { "online" } else { "offline" },
        "busy": r.busy, "labels": r.labels.iter().enumerate().map(|(i, l)| json!({"id": i + 1, "name": l, "type": "custom"})).collect::<Vec<_>>()})
}

/// Gives `runner` the oldest queued job its labels cover; returns the `in_progress` delivery.
fn assign(w: &mut World, runner: u64) -> Option<Delivery> {
    let r = w.runners.get(&runner)?.clone();
    if r.busy {
        return None;
    }
    let job = w
        .jobs
        .values()
        .filter(|j| j.status == "queued" && j.labels.iter().all(|l| r.labels.contains(&l.to_lowercase())))
        .map(|j| j.id)
        .next()?;
    let j = w.jobs.get_mut(&job)?;
    j.status = "in_progress".into();
    j.runner_name = Some(r.name.clone());
    j.assignments += 1;
    j.started_at = Some(Instant::now());
    let d = job_delivery(j, "in_progress");
    let rr = w.runners.get_mut(&runner)?;
    rr.busy = true;
    rr.job = Some(job);
    Some(d)
}

/// Ends `job` (success) after its duration: `completed`, and the consumed
/// registration of its runner deleted.
fn finish_later(ctx: Ctx, runner: u64, job: u64, d: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let mut w = ctx.world.lock().unwrap();
        let Some(j) = w.jobs.get_mut(&job) else { return };
        j.status = "completed".into();
        j.conclusion = Some("success".into());
        let d = job_delivery(j, "completed");
        w.runners.remove(&runner);
        dispatch(&mut w, &ctx.emit, d);
    });
}

async fn handle(State(ctx): State<Ctx>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let query: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    if seg.first() == Some(&"_fake") {
        return fake_route(&ctx, &method, &seg[1..], &query, &body).await;
    }
    match respond(&ctx, &method, &headers, &path, &seg, &query, &body) {
        Some(r) => r,
        None => stall(ctx.world.clone()).await,
    }
}

/// The REST API proper; `None`: the call stalls (a `Stall` fault). Synchronous, so
/// the world's lock is never held across an await.
fn respond(
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    path: &str,
    seg: &[&str],
    query: &BTreeMap<String, String>,
    body: &Value,
) -> Option<Response> {
    let mut w = ctx.world.lock().unwrap();
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let bearer = auth.strip_prefix("Bearer ").unwrap_or("");
    if let ["app", rest @ ..] = seg {
        return Some(app_route(ctx, &mut w, method, rest, bearer, path, query));
    }
    let authorized = match w.app.as_mut() {
        Some(app) => {
            let now = Instant::now();
            app.tokens.retain(|_, until| *until > now);
            app.tokens.contains_key(bearer)
        }
        None => bearer == w.token,
    };
    if !authorized {
        w.unauthorized += 1;
        return Some(reply(StatusCode::UNAUTHORIZED, msg("Bad credentials"), &w));
    }
    // The scope prefix: /repos/o/r, /orgs/o, /enterprises/e.
    let (rest, repo) = match seg {
        ["repos", o, r, rest @ ..] => (rest, Some(format!("{o}/{r}"))),
        ["orgs", _, rest @ ..] | ["enterprises", _, rest @ ..] => (rest, None),
        ["rate_limit"] => (seg, None),
        _ => return Some(reply(StatusCode::NOT_FOUND, msg("Not Found"), &w)),
    };
    let route = match (method.as_str(), rest) {
        ("POST", ["actions", "runners", "generate-jitconfig"]) => "POST runners/generate-jitconfig",
        ("GET", ["actions", "runners"]) => "GET runners",
        ("GET", ["actions", "runners", _]) => "GET runners/{id}",
        ("DELETE", ["actions", "runners", _]) => "DELETE runners/{id}",
        ("GET", ["actions", "runner-groups"]) => "GET runner-groups",
        ("GET", ["actions", "jobs", _]) => "GET jobs/{id}",
        ("GET", ["rate_limit"]) => "GET rate_limit",
        ("GET", ["hooks", _, "deliveries"]) => "GET hooks/deliveries",
        ("GET", ["hooks", _, "deliveries", _]) => "GET hooks/deliveries/{id}",
        ("POST", ["hooks", _, "deliveries", _, "attempts"]) => "POST hooks/deliveries/{id}/attempts",
        _ => return Some(reply(StatusCode::NOT_FOUND, msg("Not Found"), &w)),
    };
    *w.calls.entry(route.to_owned()).or_default() += 1;
    w.call_times.entry(route.to_owned()).or_default().push(Instant::now());
    let fault = w.take_fault(method, path);
    match fault {
        Some(Fault::Status(s)) => {
            return Some(reply(
                StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                msg("injected"),
                &w,
            ));
        }
        Some(Fault::RetryAfter(secs)) => {
            let mut r = reply(StatusCode::FORBIDDEN, msg("You have exceeded a secondary rate limit."), &w);
            r.headers_mut().insert("retry-after", HeaderValue::from(secs));
            return Some(r);
        }
        Some(Fault::TooMany(secs)) => {
            let mut r = reply(StatusCode::TOO_MANY_REQUESTS, msg("Too many requests."), &w);
            r.headers_mut().insert("retry-after", HeaderValue::from(secs));
            return Some(r);
        }
        Some(Fault::Stall) => {
            w.stalled += 1;
            drop(w);
            return None;
        }
        _ => {}
    }
    let mut link = None;
    let (status, out) = match (route, rest) {
        ("POST runners/generate-jitconfig", _) => {
            let name = body.get("name").and_then(Value::as_str).unwrap_or("").to_owned();
            let labels: Vec<String> = body
                .get("labels")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_lowercase).collect())
                .unwrap_or_default();
            if body.get("runner_group_id").and_then(Value::as_u64).is_none() || labels.is_empty() || name.is_empty() {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    msg("Invalid request: runner_group_id, name and labels are required"),
                )
            } else if w.runners.values().any(|r| r.name == name) {
                (StatusCode::CONFLICT, msg("Already exists - A runner with the same name already exists"))
            } else {
                let id = w.id();
                let secret = uuid::Uuid::now_v7().simple().to_string();
                let r = FakeRunner {
                    id,
                    name: name.clone(),
                    labels,
                    online: false,
                    busy: false,
                    job: None,
                    secret: secret.clone(),
                };
                let runner = runner_json(&r);
                w.runners.insert(id, r);
                w.registrations_peak = w.registrations_peak.max(w.runners.len());
                let file = |v: Value| B64.encode(serde_json::to_vec(&v).unwrap());
                let blob = json!({
                    ".runner": file(json!({"AgentId": id, "AgentName": name, "PoolId": 1, "ServerUrl": ctx.url,
                        "GitHubUrl": ctx.url, "WorkFolder": "_work", "Ephemeral": true, "DisableUpdate": false})),
                    ".credentials": file(json!({"scheme": "OAuth", "data": {"clientId": secret.clone(), "authorizationUrl": format!("{}/_fake/token", ctx.url)}})),
                    ".credentials_rsaparams": file(json!({"secret": secret})),
                });
                let encoded = B64.encode(serde_json::to_vec(&blob).unwrap());
                (StatusCode::CREATED, json!({"runner": runner, "encoded_jit_config": encoded}))
            }
        }
        ("GET runners", _) => {
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30).clamp(1, 100);
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
            let all: Vec<Value> = w
                .runners
                .values()
                .filter(|r| query.get("name").is_none_or(|n| &r.name == n))
                .map(runner_json)
                .collect();
            let items: Vec<Value> = all.iter().skip((page - 1) * per_page).take(per_page).cloned().collect();
            (StatusCode::OK, json!({"total_count": all.len(), "runners": items}))
        }
        ("GET runners/{id}", [_, _, id]) => match id.parse::<u64>().ok().and_then(|i| w.runners.get(&i)) {
            Some(r) => (StatusCode::OK, runner_json(r)),
            None => (StatusCode::NOT_FOUND, msg("Not Found")),
        },
        ("DELETE runners/{id}", [_, _, id]) => {
            let id: u64 = id.parse().unwrap_or(0);
            if w.assign_on_delete && w.runners.get(&id).is_some_and(|r| r.online && !r.busy) {
                w.assign_on_delete = false;
                if let Some(d) = assign(&mut w, id) {
                    let job = d.job;
                    dispatch(&mut w, &ctx.emit, d);
                    finish_later(ctx.clone(), id, job, w.job_duration);
                }
            }
            match w.runners.get(&id) {
                None => (StatusCode::NOT_FOUND, msg("Not Found")),
                Some(r) if r.busy => {
                    (StatusCode::UNPROCESSABLE_ENTITY, msg("Bad request - Runner \"busy\" is still running a job"))
                }
                Some(_) => {
                    w.runners.remove(&id);
                    (StatusCode::NO_CONTENT, Value::Null)
                }
            }
        }
        ("GET runner-groups", _) => (
            StatusCode::OK,
            json!({"total_count": 2, "runner_groups": [{"id": 1, "name": "Default", "default": true, "visibility": "all"},
                {"id": 2, "name": "fish", "default": false, "visibility": "all"}]}),
        ),
        ("GET jobs/{id}", [_, _, id]) => {
            match id
                .parse::<u64>()
                .ok()
                .and_then(|i| w.jobs.get(&i))
                .filter(|j| repo.as_deref() == Some(j.repo.as_str()))
            {
                Some(j) => (
                    StatusCode::OK,
                    json!({"id": j.id, "run_id": j.run_id, "status": j.status, "conclusion": j.conclusion,
                        "labels": j.labels, "runner_name": j.runner_name, "run_attempt": 1}),
                ),
                None => (StatusCode::NOT_FOUND, msg("Not Found")),
            }
        }
        (
            "GET hooks/deliveries" | "GET hooks/deliveries/{id}" | "POST hooks/deliveries/{id}/attempts",
            [_, hook, tail @ ..],
        ) => {
            if *hook != HOOK_ID.to_string() {
                (StatusCode::NOT_FOUND, msg("Not Found"))
            } else {
                let (status, body, next) = hook_log(ctx, &mut w, tail, path, query);
                link = next;
                (status, body)
            }
        }
        ("GET rate_limit", _) => {
            let used = w.total_calls();
            (
                StatusCode::OK,
                json!({"resources": {"core": {"limit": w.limit, "used": used, "remaining": w.limit.saturating_sub(used)}}}),
            )
        }
        _ => (StatusCode::NOT_FOUND, msg("Not Found")),
    };
    if matches!(fault, Some(Fault::CommitAndDrop)) {
        return Some(reply(StatusCode::BAD_GATEWAY, msg("the answer was lost"), &w));
    }
    if matches!(fault, Some(Fault::CommitAndStall)) {
        w.stalled += 1;
        drop(w);
        return None;
    }
    if status == StatusCode::NO_CONTENT {
        return Some(reply(status, Value::Null, &w).into_response().map(|_| axum::body::Body::empty()));
    }
    let mut r = reply(status, out, &w);
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert("link", l);
    }
    Some(r)
}

/// A hook's delivery log: `tail` is `[deliveries]`, `[deliveries, id]` or
/// `[deliveries, id, attempts]` (POST: redeliver). Newest first, `cursor` paging with
/// a `Link` header as GitHub does; returns the next page's link.
fn hook_log(
    ctx: &Ctx,
    w: &mut World,
    tail: &[&str],
    path: &str,
    query: &BTreeMap<String, String>,
) -> (StatusCode, Value, Option<String>) {
    match tail {
        ["deliveries"] => {
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30).clamp(1, 100);
            let from: u64 = query
                .get("cursor")
                .and_then(|c| c.strip_prefix("v1_"))
                .and_then(|c| c.parse().ok())
                .unwrap_or(u64::MAX);
            let newest_first: Vec<&Attempt> = w.attempts.iter().rev().filter(|a| a.id <= from).collect();
            let link = newest_first
                .get(per_page)
                .map(|next| format!("<{}{path}?per_page={per_page}&cursor=v1_{}>; rel=\"next\"", ctx.url, next.id));
            let page = newest_first.iter().take(per_page).map(|a| attempt_json(a, false)).collect();
            (StatusCode::OK, Value::Array(page), link)
        }
        ["deliveries", id] => match id.parse::<u64>().ok().and_then(|i| w.attempts.iter().find(|a| a.id == i)) {
            Some(a) => (StatusCode::OK, attempt_json(a, true), None),
            None => (StatusCode::NOT_FOUND, msg("Not Found"), None),
        },
        ["deliveries", id, "attempts"] => {
            match id.parse::<u64>().ok().and_then(|i| w.attempts.iter().find(|a| a.id == i)).cloned() {
                Some(a) => {
                    let d = Delivery {
                        guid: a.guid,
                        event: a.event,
                        action: a.action,
                        job: 0,
                        body: a.body,
                        status: 0,
                        redelivery: true,
                    };
                    let _ = ctx.emit.send(d);
                    (StatusCode::ACCEPTED, json!({}), None)
                }
                None => (StatusCode::NOT_FOUND, msg("Not Found"), None),
            }
        }
        _ => (StatusCode::NOT_FOUND, msg("Not Found"), None),
    }
}

/// Checks an App JWT as GitHub does: RS256 under the App's public key, `iss` the app
/// id or client id, issued no later than a minute from now, expiring in the future
/// but at most 10 minutes ahead.
fn jwt_ok(app: &FakeApp, jwt: &str) -> Result<(), String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else { return Err("not a JWT".into()) };
    let header: Value =
        serde_json::from_slice(&B64URL.decode(h).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let sig = B64URL.decode(sig).map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &app.public_key)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| "bad signature".to_owned())?;
    let claims: Value =
        serde_json::from_slice(&B64URL.decode(c).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let iss_ok = claims["iss"] == json!(app.key.app_id) || claims["iss"] == json!(app.key.client_id);
    if !iss_ok {
        return Err(format!("iss {}", claims["iss"]));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (iat, exp) = (claims["iat"].as_i64().unwrap_or(i64::MAX), claims["exp"].as_i64().unwrap_or(0));
    if iat > now + 60 || exp <= now || exp > now + 600 {
        return Err(format!(
            "iat {iat} exp {exp} now {now}: 'Expiration time' claim ('exp') is too far in the future or past"
        ));
    }
    Ok(())
}

/// `/app/...`: the calls made with the App's JWT.
fn app_route(
    ctx: &Ctx,
    w: &mut World,
    method: &Method,
    rest: &[&str],
    jwt: &str,
    path: &str,
    query: &BTreeMap<String, String>,
) -> Response {
    let checked = match w.app.as_ref() {
        None => Err("no app".to_owned()),
        Some(app) => jwt_ok(app, jwt),
    };
    if let Err(why) = checked {
        if let Some(app) = w.app.as_mut() {
            app.jwts_refused += 1;
        }
        return reply(StatusCode::UNAUTHORIZED, msg(&format!("A JSON web token could not be decoded ({why})")), w);
    }
    match (method.as_str(), rest) {
        ("POST", ["installations", id, "access_tokens"]) => {
            *w.calls.entry("POST app/installations/{id}/access_tokens".into()).or_default() += 1;
            let Some(app) = w.app.as_mut() else { return reply(StatusCode::NOT_FOUND, msg("Not Found"), w) };
            if *id != app.key.installation_id.to_string() {
                return reply(StatusCode::NOT_FOUND, msg("Not Found"), w);
            }
            let token = format!("ghs_{}", uuid::Uuid::now_v7().simple());
            let life = app.token_life;
            app.tokens.insert(token.clone(), Instant::now() + life);
            app.issued += 1;
            let expires = (time::OffsetDateTime::now_utc() + life).replace_nanosecond(0).unwrap();
            let body = json!({"token": token,
                "expires_at": expires.format(&time::format_description::well_known::Rfc3339).unwrap(),
                "permissions": {"organization_self_hosted_runners": "write", "metadata": "read"},
                "repository_selection": "all"});
            reply(StatusCode::CREATED, body, w)
        }
        (_, ["hook", tail @ ..]) if tail.first() == Some(&"deliveries") => {
            let route = match (method.as_str(), tail.len()) {
                ("GET", 1) => "GET hooks/deliveries",
                ("GET", 2) => "GET hooks/deliveries/{id}",
                ("POST", 3) => "POST hooks/deliveries/{id}/attempts",
                _ => return reply(StatusCode::NOT_FOUND, msg("Not Found"), w),
            };
            *w.calls.entry(route.into()).or_default() += 1;
            let (status, body, link) = hook_log(ctx, w, tail, path, query);
            let mut r = reply(status, body, w);
            if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
                r.headers_mut().insert("link", l);
            }
            r
        }
        _ => reply(StatusCode::NOT_FOUND, msg("Not Found"), w),
    }
}

/// Never answers; counted in `stalled` until the client goes away (its connection
/// closes and the server drops this future).
async fn stall(world: Arc<Mutex<World>>) -> Response {
    struct Stalled(Arc<Mutex<World>>);
    impl Drop for Stalled {
        fn drop(&mut self) {
            let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
            w.stalled = w.stalled.saturating_sub(1);
        }
    }
    let _counted = Stalled(world);
    std::future::pending().await
}

/// The runner side: `POST /_fake/runner/connect`, `GET /_fake/runner/{id}/job` (long
/// poll), `GET /_fake/jobs/{id}`.
async fn fake_route(
    ctx: &Ctx,
    method: &Method,
    seg: &[&str],
    query: &BTreeMap<String, String>,
    body: &Value,
) -> Response {
    let plain = |s: StatusCode, v: Value| (s, axum::Json(v)).into_response();
    match (method.as_str(), seg) {
        ("POST", ["runner", "connect"]) => {
            let id = body.get("id").and_then(Value::as_u64).unwrap_or(0);
            let secret = body.get("secret").and_then(Value::as_str).unwrap_or("");
            let mut w = ctx.world.lock().unwrap();
            match w.runners.get_mut(&id) {
                Some(r) if r.secret == secret && !secret.is_empty() => {
                    r.online = true;
                    plain(StatusCode::OK, json!({"id": id, "name": r.name}))
                }
                Some(_) => plain(StatusCode::UNAUTHORIZED, msg("bad runner credentials")),
                None => plain(StatusCode::NOT_FOUND, msg("The runner no longer exists on the server")),
            }
        }
        ("GET", ["runner", id, "job"]) => {
            let id: u64 = id.parse().unwrap_or(0);
            let secret = query.get("secret").cloned().unwrap_or_default();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                {
                    let mut w = ctx.world.lock().unwrap();
                    let Some(r) = w.runners.get(&id) else {
                        return plain(StatusCode::NOT_FOUND, msg("The runner no longer exists on the server"));
                    };
                    if r.secret != secret {
                        return plain(StatusCode::UNAUTHORIZED, msg("bad runner credentials"));
                    }
                    if let Some(job) = r.job {
                        return plain(StatusCode::OK, json!({"job": job}));
                    }
                    if w.assign_on_delete || w.hold_jobs {
                        // Jobs wait for the DELETE race (see `set_assign_on_delete`).
                    } else if let Some(d) = assign(&mut w, id) {
                        let job = d.job;
                        dispatch(&mut w, &ctx.emit, d);
                        let took = w.job_duration;
                        drop(w);
                        finish_later(ctx.clone(), id, job, took);
                        return plain(StatusCode::OK, json!({"job": job}));
                    }
                }
                if Instant::now() > deadline {
                    return StatusCode::NO_CONTENT.into_response();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        ("GET", ["jobs", id]) => {
            let w = ctx.world.lock().unwrap();
            match id.parse::<u64>().ok().and_then(|i| w.jobs.get(&i)) {
                Some(j) => plain(StatusCode::OK, json!({"id": j.id, "status": j.status, "conclusion": j.conclusion})),
                None => plain(StatusCode::NOT_FOUND, msg("Not Found")),
            }
        }
        _ => plain(StatusCode::NOT_FOUND, msg("Not Found")),
    }
}
