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
    #[error("{call}: the gate's API budget of {per_hour} calls per hour is spent for {} s", wait.as_secs())]
    Budget { call: String, per_hour: u32, wait: Duration },
}

/// When a failed call may be made again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// GitHub (or the gate's budget) said how long to wait.
    After(Duration),
    /// An outage, a timeout, a 5xx, or an answer we cannot use: back off and retry.
    Backoff,
    /// A definite refusal (a 4xx other than 408, 409 and 429): the same call fails the
    /// same way.
    Never,
}

impl GithubError {
    /// The HTTP status GitHub answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether and when the call may be tried again. Only a 4xx GitHub chose to
    /// answer (other than 408 timeout, 409 conflict, 429 too many) is definite:
    /// transport errors, 5xx, rate limits and a spent budget all pass.
    pub fn retry(&self) -> Retry {
        match self {
            GithubError::RateLimited { wait, .. } | GithubError::Budget { wait, .. } => Retry::After(*wait),
            GithubError::Http { .. } => Retry::Backoff,
            GithubError::Status { status: 400..=499, .. } if !matches!(self.status(), Some(408 | 409 | 429)) => {
                Retry::Never
            }
            // 5xx, 408/409/429 without a wait, a 2xx we cannot read, or a credential
            // that cannot be read or signed now (status 0).
            GithubError::Status { .. } => Retry::Backoff,
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

/// One attempt in a webhook's delivery log (`GET …/hooks/{id}/deliveries`).
#[derive(Clone, Debug, Deserialize)]
pub struct DeliveryItem {
    pub id: u64,
    pub guid: String,
    #[serde(default)]
    pub event: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub status_code: u16,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub delivered_at: Option<time::OffsetDateTime>,
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

/// How calls authenticate.
#[derive(Debug)]
pub enum Auth {
    /// A token read from this file at every call (so a rotated file takes effect).
    TokenFile(std::path::PathBuf),
    /// A GitHub App installation: installation tokens bought with the App's JWT.
    App(Box<super::app_auth::AppAuth>),
}

/// Which credential a call sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bearer {
    /// The token (PAT or installation token).
    Token,
    /// The App's own JWT (`/app/...` endpoints).
    AppJwt,
}

/// A GitHub client for one gate.
pub struct Github {
    http: reqwest::Client,
    base: String,
    auth: Auth,
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
        auth: Auth,
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
            auth,
            scope,
            per_hour,
            budget: Mutex::new(Budget::default()),
            mutations: tokio::sync::Mutex::new(()),
            metrics,
            gate: gate.to_owned(),
        })
    }

    /// The credential for a call: the token file's content, the App's JWT, or an
    /// installation token (bought now if none is cached or it is due for refresh).
    async fn credential(&self, bearer: Bearer) -> Result<String, GithubError> {
        let app = match (&self.auth, bearer) {
            (Auth::TokenFile(path), _) => {
                return std::fs::read_to_string(path).map(|t| t.trim().to_owned()).map_err(|e| GithubError::Status {
                    call: "reading the token".into(),
                    status: 0,
                    message: format!("{}: {e}", path.display()),
                });
            }
            (Auth::App(app), Bearer::AppJwt) => {
                return app.jwt(time::OffsetDateTime::now_utc()).map_err(|message| GithubError::Status {
                    call: "signing the App JWT".into(),
                    status: 0,
                    message,
                });
            }
            (Auth::App(app), Bearer::Token) => app,
        };
        if let Some(t) = app.current(time::OffsetDateTime::now_utc()) {
            return Ok(t);
        }
        let _one = app.refresh.lock().await;
        let now = time::OffsetDateTime::now_utc();
        if let Some(t) = app.current(now) {
            return Ok(t);
        }
        const CALL: &str = "POST app/installations/{id}/access_tokens";
        let path = format!("/app/installations/{}/access_tokens", app.installation_id);
        // Boxed: `call` asks for a credential, which may make this call.
        let (_, v, _) = Box::pin(self.call(reqwest::Method::POST, &path, CALL, None, Bearer::AppJwt)).await?;
        let bad = |what: &str| GithubError::Status {
            call: CALL.into(),
            status: 201,
            message: format!("answer without {what}"),
        };
        let token = v.get("token").and_then(Value::as_str).ok_or_else(|| bad("token"))?.to_owned();
        let expires_at = v
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|s| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok())
            .ok_or_else(|| bad("expires_at"))?;
        tracing::info!(gate = %self.gate, installation = app.installation_id, expires_at = %expires_at, "got a GitHub App installation token");
        app.keep(token.clone(), expires_at, now);
        Ok(token)
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
                // Free again when the oldest call of the window is an hour old.
                let wait = b
                    .recent
                    .front()
                    .map(|t| Duration::from_secs(3600).saturating_sub(now.duration_since(*t)))
                    .unwrap_or(DEFAULT_BACKOFF)
                    .max(Duration::from_secs(1));
                return Err(GithubError::Budget { call: call.into(), per_hour, wait });
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
        self.send_full(method, path, route, body).await.map(|(s, v, _)| (s, v))
    }

    /// [`Github::send`], with the answer's headers. `/app/...` paths carry the App's
    /// JWT; with App auth, a 401 drops the installation token and the call is made
    /// once more with a fresh one.
    async fn send_full(
        &self,
        method: reqwest::Method,
        path: &str,
        route: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value, reqwest::header::HeaderMap), GithubError> {
        let bearer = if path.starts_with("/app/") { Bearer::AppJwt } else { Bearer::Token };
        let retry_401 = matches!(self.auth, Auth::App(_)) && bearer == Bearer::Token;
        match self.call(method.clone(), path, route, body.clone(), bearer).await {
            Err(GithubError::Status { status: 401, .. }) if retry_401 => {
                tracing::info!(gate = %self.gate, call = route, "GitHub refused the installation token (401); getting a new one");
                self.call(method, path, route, body, bearer).await
            }
            r => r,
        }
    }

    /// One HTTP exchange.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        route: &str,
        body: Option<Value>,
        bearer: Bearer,
    ) -> Result<(u16, Value, reqwest::header::HeaderMap), GithubError> {
        let token = self.credential(bearer).await?;
        self.admit(route)?;
        self.metrics.api_call(&self.gate, route);
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|source| GithubError::Http { call: route.into(), source })?;
        let status = resp.status().as_u16();
        let wait = self.observe(status, resp.headers());
        let headers = resp.headers().clone();
        let text = resp.text().await.map_err(|source| GithubError::Http { call: route.into(), source })?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(wait) = wait {
            return Err(GithubError::RateLimited { call: route.into(), wait });
        }
        if status >= 400 {
            let message = value.get("message").and_then(Value::as_str).unwrap_or(text.trim()).to_owned();
            let message = if status == 403 { format!("{message} ({})", self.permission_hint(route)) } else { message };
            if status == 401
                && bearer == Bearer::Token
                && let Auth::App(app) = &self.auth
            {
                app.invalidate(&token);
            }
            return Err(GithubError::Status { call: route.into(), status, message });
        }
        Ok((status, value, headers))
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
        if route.contains("jobs") {
            "the token needs Repository Actions: read".into()
        } else if route.contains("deliveries") {
            "the token needs Webhooks: read (classic PAT: admin:org_hook or admin:repo_hook)".into()
        } else {
            runners.into()
        }
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

    /// One page of a hook's delivery log, newest first, and the cursor of the next
    /// page (from the `Link` header). `hook` is `/orgs/o/hooks/1` or `/app/hook`.
    pub async fn list_deliveries(
        &self,
        hook: &str,
        cursor: Option<&str>,
    ) -> Result<(Vec<DeliveryItem>, Option<String>), GithubError> {
        let mut path = format!("{hook}/deliveries?per_page=100");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (_, v, headers) = self.send_full(reqwest::Method::GET, &path, "GET hooks/deliveries", None).await?;
        let items: Vec<DeliveryItem> = serde_json::from_value(v).map_err(|e| GithubError::Status {
            call: "GET hooks/deliveries".into(),
            status: 200,
            message: format!("unexpected answer: {e}"),
        })?;
        let next = headers
            .get("link")
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split(',').find(|p| p.contains("rel=\"next\"")))
            .and_then(|p| p.split(['?', '&', '>']).find_map(|kv| kv.strip_prefix("cursor=")))
            .map(str::to_owned);
        Ok((items, next))
    }

    /// The payload of one delivery (`GET …/deliveries/{id}`, `request.payload`).
    pub async fn delivery_payload(&self, hook: &str, id: u64) -> Result<Value, GithubError> {
        let path = format!("{hook}/deliveries/{id}");
        let (_, v) = self.send(reqwest::Method::GET, &path, "GET hooks/deliveries/{id}", None).await?;
        Ok(v.pointer("/request/payload").cloned().unwrap_or(Value::Null))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn status(status: u16) -> GithubError {
        GithubError::Status { call: "POST runners/generate-jitconfig".into(), status, message: "m".into() }
    }

    fn client(per_hour: Option<u32>) -> Github {
        let auth = Auth::TokenFile("/nonexistent/token".into());
        Github::new("acme", "https://127.0.0.1:1", None, auth, Scope::Org("acme".into()), per_hour, Default::default())
            .unwrap()
    }

    #[test]
    fn only_a_definite_4xx_refuses_a_call_for_good() {
        for s in [400, 401, 403, 404, 422] {
            assert_eq!(status(s).retry(), Retry::Never, "{s}");
        }
        // An outage, a timeout or a conflict that may clear, and answers we cannot
        // use: back off and try again.
        for s in [0, 201, 408, 409, 429, 500, 502, 503, 504] {
            assert_eq!(status(s).retry(), Retry::Backoff, "{s}");
        }
        let wait = Duration::from_secs(7);
        assert_eq!(GithubError::RateLimited { call: "c".into(), wait }.retry(), Retry::After(wait));
        assert_eq!(GithubError::Budget { call: "c".into(), per_hour: 1, wait }.retry(), Retry::After(wait));
    }

    #[tokio::test]
    async fn a_transport_error_is_not_a_refusal() {
        // Nothing listens on port 1: connection refused, as from a GitHub that is down.
        let e = client(None).http.get("http://127.0.0.1:1/").send().await.unwrap_err();
        let e = GithubError::Http { call: "POST runners/generate-jitconfig".into(), source: e };
        assert_eq!(e.retry(), Retry::Backoff);
    }

    #[test]
    fn rate_limit_answers_make_later_calls_wait() {
        let gh = client(None);
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        // 429 with retry-after: exactly that wait, and the next call is refused before it goes out.
        assert_eq!(gh.observe(429, &headers(&[("retry-after", "30")])), Some(Duration::from_secs(30)));
        match gh.admit("GET runners") {
            Err(e @ GithubError::RateLimited { .. }) => match e.retry() {
                Retry::After(w) => assert!(w > Duration::from_secs(28) && w <= Duration::from_secs(30), "{w:?}"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // A primary limit: 403 with remaining 0 waits for the reset.
        let gh = client(None);
        let reset = (time::OffsetDateTime::now_utc().unix_timestamp() + 120).to_string();
        let wait = gh.observe(403, &headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &reset)]));
        assert!(wait.is_some_and(|w| w > Duration::from_secs(100) && w <= Duration::from_secs(120)), "{wait:?}");
        // A 403 with quota left is a permission problem: no wait, the caller sees the 403.
        let gh = client(None);
        assert_eq!(gh.observe(403, &headers(&[("x-ratelimit-remaining", "4000")])), None);
        assert!(gh.admit("GET runners").is_ok());
    }

    #[test]
    fn a_spent_budget_says_when_the_next_call_is_free() {
        let gh = client(Some(2));
        assert!(gh.admit("a").is_ok() && gh.admit("b").is_ok());
        match gh.admit("c") {
            Err(e @ GithubError::Budget { .. }) => match e.retry() {
                Retry::After(w) => assert!(w > Duration::from_secs(3590) && w <= Duration::from_secs(3600), "{w:?}"),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }
}
