//! The GitHub REST calls a gate makes (reference section 1): just-in-time runner
//! registration, runner list/delete, job lookups, runner groups.
//!
//! # Guarantees
//! - Every call goes through [`Github::send`], which refuses to call while GitHub
//!   said to wait (`retry-after`, `x-ratelimit-remaining: 0` until `x-ratelimit-reset`)
//!   or while the gate's own hourly budget is spent, and records the rate-limit
//!   headers of every answer.
//! - Mutating calls are serialized (GitHub's secondary limits punish concurrency).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::config::Scope;
use super::metrics::GateMetrics;

/// How long one GitHub call may take: GitHub answers in well under a second; a call
/// stuck longer is treated as failed (its outcome unknown, which the callers handle).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Back-off after a secondary-limit answer without `retry-after` (GitHub's advice: at least a minute).
const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);

/// Why a call did not give an answer we can use.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("{call}: HTTP {status}: {message}")]
    Status { call: String, status: u16, message: String },
    #[error("{call}: {source}")]
    Http {
        call: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{call}: GitHub asked to wait {} s (rate limit)", wait.as_secs())]
    RateLimited { call: String, wait: Duration },
    #[error("{call}: the gate's API budget of {per_hour} calls per hour is spent")]
    Budget { call: String, per_hour: u32 },
}

impl GithubError {
    /// The HTTP status GitHub answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A runner as GitHub lists it.
#[derive(Clone, Debug, Deserialize)]
pub struct Runner {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub busy: bool,
}

/// A just-in-time registration.
#[derive(Clone, Debug)]
pub struct JitConfig {
    pub runner: Runner,
    pub encoded: String,
}

/// What a `DELETE` of a runner found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deleted {
    /// 204: removed now.
    Removed,
    /// 404: already gone.
    Gone,
    /// 422: it is running a job; keep it.
    Busy,
}

/// Rate-limit figures and the gate's own budget.
#[derive(Debug, Default)]
struct Budget {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    wait_until: Option<Instant>,
    recent: VecDeque<Instant>,
    calls: u64,
}

/// A GitHub client for one gate.
pub struct Github {
    http: reqwest::Client,
    base: String,
    token_file: std::path::PathBuf,
    pub scope: Scope,
    per_hour: Option<u32>,
    budget: Mutex<Budget>,
    mutations: tokio::sync::Mutex<()>,
    metrics: GateMetrics,
    gate: String,
}

/// The figures `GET /api/v1/gates` shows.
pub fn budget_view(g: &Github) -> api_types::ApiBudget {
    let b = g.budget.lock().unwrap_or_else(|e| e.into_inner());
    api_types::ApiBudget { limit: b.limit, remaining: b.remaining, reset: b.reset, calls: b.calls }
}

impl Github {
    /// A client for `base` (no trailing slash), trusting `ca` besides the system roots.
    pub fn new(
        gate: &str,
        base: &str,
        ca: Option<&std::path::Path>,
        token_file: std::path::PathBuf,
        scope: Scope,
        per_hour: Option<u32>,
        metrics: GateMetrics,
    ) -> Result<Github, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("fishd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(CALL_TIMEOUT);
        if let Some(path) = ca {
            let pem = std::fs::read(path).map_err(|e| format!("caFile {}: {e}", path.display()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("caFile {}: {e}", path.display()))?;
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Github {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token_file,
            scope,
            per_hour,
            budget: Mutex::new(Budget::default()),
            mutations: tokio::sync::Mutex::new(()),
            metrics,
            gate: gate.to_owned(),
        })
    }

    fn token(&self) -> Result<String, GithubError> {
        std::fs::read_to_string(&self.token_file).map(|t| t.trim().to_owned()).map_err(|e| GithubError::Status {
            call: "reading the token".into(),
            status: 0,
            message: format!("{}: {e}", self.token_file.display()),
        })
    }

    /// Whether a call may go now; counts it against the hourly budget.
    fn admit(&self, call: &str) -> Result<(), GithubError> {
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some(until) = b.wait_until {
            if until > now {
                return Err(GithubError::RateLimited { call: call.into(), wait: until - now });
            }
            b.wait_until = None;
        }
        if let Some(per_hour) = self.per_hour {
            while b.recent.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(3600)) {
                b.recent.pop_front();
            }
            if b.recent.len() >= per_hour as usize {
                return Err(GithubError::Budget { call: call.into(), per_hour });
            }
            b.recent.push_back(now);
        }
        b.calls += 1;
        Ok(())
    }

    /// Records the rate-limit headers of an answer; a limit answer makes later calls wait.
    fn observe(&self, status: u16, headers: &reqwest::header::HeaderMap) -> Option<Duration> {
        let num = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = num("x-ratelimit-limit") {
            b.limit = Some(l);
        }
        if let Some(r) = num("x-ratelimit-remaining") {
            b.remaining = Some(r);
            self.metrics.api_remaining(&self.gate, r as i64);
        }
        if let Some(r) = num("x-ratelimit-reset") {
            b.reset = Some(r);
        }
        let limited = matches!(status, 403 | 429);
        let wait = if let Some(s) = num("retry-after").filter(|_| limited) {
            Some(Duration::from_secs(s))
        } else if limited && b.remaining == Some(0) {
            let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
            Some(Duration::from_secs(b.reset.unwrap_or(now + 60).saturating_sub(now).max(1)))
        } else if status == 429 {
            Some(DEFAULT_BACKOFF)
        } else {
            None
        };
        if let Some(w) = wait {
            b.wait_until = Some(Instant::now() + w);
        }
        wait
    }

    /// One call: `route` names it in metrics (`POST runners/generate-jitconfig`).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        route: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), GithubError> {
        self.admit(route)?;
        self.metrics.api_call(&self.gate, route);
        let token = self.token()?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| GithubError::Http { call: route.into(), source })?;
        let status = resp.status().as_u16();
        let wait = self.observe(status, resp.headers());
        let text = resp.text().await.map_err(|source| GithubError::Http { call: route.into(), source })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(wait) = wait {
            return Err(GithubError::RateLimited { call: route.into(), wait });
        }
        if status >= 400 {
            let message = value.get("message").and_then(Value::as_str).unwrap_or(text.trim()).to_owned();
            let message = if status == 403 { format!("{message} ({})", self.permission_hint(route)) } else { message };
            return Err(GithubError::Status { call: route.into(), status, message });
        }
        Ok((status, value))
    }

    /// The permission a 403 most likely lacks, named for the person fixing it.
    fn permission_hint(&self, route: &str) -> String {
        let runners = match self.scope {
            Scope::Repo(_) => "the token needs Repository Administration: write (classic PAT: repo)",
            Scope::Org(_) => {
                "the token needs Organization Self-hosted runners: write (organization_self_hosted_runners; classic PAT: admin:org)"
            }
            Scope::Enterprise(_) => "the token needs manage_runners:enterprise (classic PAT)",
        };
        if route.contains("jobs") { "the token needs Repository Actions: read".into() } else { runners.into() }
    }

    /// `POST {S}/actions/runners/generate-jitconfig`.
    pub async fn generate_jitconfig(
        &self,
        name: &str,
        group: u64,
        labels: &[String],
    ) -> Result<JitConfig, GithubError> {
        let _one = self.mutations.lock().await;
        let path = format!("{}/actions/runners/generate-jitconfig", self.scope.path());
        let body = json!({"name": name, "runner_group_id": group, "labels": labels, "work_folder": "_work"});
        let (_, v) = self.send(reqwest::Method::POST, &path, "POST runners/generate-jitconfig", Some(body)).await?;
        let bad = |what: &str| GithubError::Status {
            call: "POST runners/generate-jitconfig".into(),
            status: 201,
            message: format!("answer without {what}"),
        };
        let runner: Runner =
            serde_json::from_value(v.get("runner").cloned().unwrap_or(Value::Null)).map_err(|_| bad("runner"))?;
        let encoded = v.get("encoded_jit_config").and_then(Value::as_str).ok_or_else(|| bad("encoded_jit_config"))?;
        Ok(JitConfig { runner, encoded: encoded.to_owned() })
    }

    /// Every runner whose name starts with `prefix` (`GET {S}/actions/runners`, all pages).
    pub async fn list_runners(&self, prefix: &str) -> Result<Vec<Runner>, GithubError> {
        let mut out = Vec::new();
        for page in 1..=100 {
            let path = format!("{}/actions/runners?per_page=100&page={page}", self.scope.path());
            let (_, v) = self.send(reqwest::Method::GET, &path, "GET runners", None).await?;
            let runners: Vec<Runner> =
                serde_json::from_value(v.get("runners").cloned().unwrap_or(Value::Array(vec![]))).unwrap_or_default();
            let n = runners.len();
            out.extend(runners.into_iter().filter(|r| r.name.starts_with(prefix)));
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// The runner named `name`, if registered (`GET {S}/actions/runners?name=`).
    pub async fn runner_by_name(&self, name: &str) -> Result<Option<Runner>, GithubError> {
        let path = format!("{}/actions/runners?name={name}", self.scope.path());
        let (_, v) = self.send(reqwest::Method::GET, &path, "GET runners?name", None).await?;
        let runners: Vec<Runner> =
            serde_json::from_value(v.get("runners").cloned().unwrap_or(Value::Array(vec![]))).unwrap_or_default();
        Ok(runners.into_iter().find(|r| r.name == name))
    }

    /// `DELETE {S}/actions/runners/{id}`.
    pub async fn delete_runner(&self, id: u64) -> Result<Deleted, GithubError> {
        let _one = self.mutations.lock().await;
        let path = format!("{}/actions/runners/{id}", self.scope.path());
        match self.send(reqwest::Method::DELETE, &path, "DELETE runners/{id}", None).await {
            Ok(_) => Ok(Deleted::Removed),
            Err(e) if e.status() == Some(404) => Ok(Deleted::Gone),
            Err(e) if e.status() == Some(422) => Ok(Deleted::Busy),
            Err(e) => Err(e),
        }
    }

    /// A job's status (`GET /repos/{repo}/actions/jobs/{id}`): `None` when GitHub no longer has it.
    pub async fn job_status(&self, repo: &str, id: u64) -> Result<Option<String>, GithubError> {
        let path = format!("/repos/{repo}/actions/jobs/{id}");
        match self.send(reqwest::Method::GET, &path, "GET jobs/{id}", None).await {
            Ok((_, v)) => Ok(v.get("status").and_then(Value::as_str).map(str::to_owned)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The id of runner group `name` (org and enterprise scope; repos have only 1).
    pub async fn runner_group_id(&self, name: &str) -> Result<u64, GithubError> {
        let path = match &self.scope {
            Scope::Repo(_) => return Ok(1),
            s => format!("{}/actions/runner-groups?per_page=100", s.path()),
        };
        let (_, v) = self.send(reqwest::Method::GET, &path, "GET runner-groups", None).await?;
        v.get("runner_groups")
            .and_then(Value::as_array)
            .and_then(|gs| gs.iter().find(|g| g.get("name").and_then(Value::as_str) == Some(name)))
            .and_then(|g| g.get("id").and_then(Value::as_u64))
            .ok_or_else(|| GithubError::Status {
                call: "GET runner-groups".into(),
                status: 404,
                message: format!("no runner group named {name:?} in {}", self.scope),
            })
    }
}
