//! `gates:` in fish.yml (contract section 12). Unknown keys are errors naming their
//! path, like the rest of the configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use api_types::HumanDuration;
use serde::Deserialize;

/// Every configured gate, by system then name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatesConfig {
    #[serde(default)]
    pub github: BTreeMap<String, GithubConfig>,
}

/// One GitHub Actions gate.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GithubConfig {
    /// `https://api.github.com`; GHES: `https://HOST/api/v3`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// A PEM CA bundle trusted for `apiUrl` besides the system roots (GHES with a
    /// private CA; tests).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub auth: AuthConfig,
    pub scope: ScopeConfig,
    pub webhook: WebhookConfig,
    /// Repositories whose jobs the gate serves (globs on `owner/name`); empty: all.
    /// Not a guard against forks: a fork's pull request runs in the base repository
    /// and passes this filter (require approval for fork workflows at GitHub).
    #[serde(default)]
    pub repositories: Vec<String>,
    /// First match wins.
    pub routes: Vec<RouteConfig>,
    /// Runner names are `<prefix>-<12 hex of the application uid>`; default `fish-<gate>`.
    #[serde(default)]
    pub runner_name_prefix: Option<String>,
    /// A registered runner must be online by then, or it is replaced.
    #[serde(default = "default_register_timeout")]
    pub register_timeout: HumanDuration,
    /// An idle runner beyond demand is retired after this long.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// How often the gate lists its runners at GitHub and checks stale jobs.
    #[serde(default = "default_reconcile_every")]
    pub reconcile_every: HumanDuration,
    /// The lifetime of the gate's applications (at most the label's).
    #[serde(default)]
    pub job_lifetime: Option<HumanDuration>,
    /// A queued job older than this is checked at GitHub (it may have been cancelled
    /// or taken while a webhook was lost).
    #[serde(default = "default_stale_after")]
    pub stale_after: HumanDuration,
    /// API calls per hour the gate allows itself (GitHub's primary limit is 5000 for a
    /// token): below it, calls wait.
    #[serde(default)]
    pub api_budget: Option<ApiBudgetConfig>,
}

/// How the gate authenticates to GitHub.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub token: Option<FileRef>,
    #[serde(default)]
    pub app: Option<AppAuthConfig>,
}

/// `auth.app`: a GitHub App installation (repo and org scope).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppAuthConfig {
    /// The App's client id (`Iv1.…`, GitHub's recommended JWT issuer) ...
    #[serde(default)]
    pub client_id: Option<String>,
    /// ... or its numeric app id.
    #[serde(default)]
    pub app_id: Option<u64>,
    /// The installation on the org or repo (its settings URL ends with it).
    pub installation_id: u64,
    /// The App's private key, PEM as GitHub issues it.
    pub private_key_file: PathBuf,
}

/// A secret kept in a file (never inline in fish.yml).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileRef {
    pub file: PathBuf,
}

/// Where runners are registered.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeConfig {
    #[serde(default)]
    pub org: Option<String>,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub enterprise: Option<String>,
    /// Runner group name (org and enterprise scope); default: the Default group (id 1).
    #[serde(default)]
    pub runner_group: Option<String>,
}

/// The webhook listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    #[serde(default = "default_hook_path")]
    pub path: String,
    /// Any one matching is accepted, so a secret can be rotated without losing events.
    pub secrets: Vec<FileRef>,
    /// Replays deliveries that never reached the listener (GitHub never redelivers by
    /// itself): a `queued` lost while fishd was down still gets its runner.
    #[serde(default)]
    pub recover_deliveries: Option<RecoverConfig>,
    /// Bodies larger than this are refused with 413, on their `Content-Length` before
    /// anything is read. `workflow_job` payloads are tens of KiB: 1 MiB is plenty.
    #[serde(default = "default_hook_max_body")]
    pub max_body_bytes: usize,
    /// Open connections at once; more are closed as soon as they are accepted (the
    /// listener faces the internet, GitHub delivers a few at a time).
    #[serde(default = "default_hook_max_connections")]
    pub max_connections: usize,
    /// How long a client may take for its TLS handshake, to start a request, and to
    /// send each request's headers (slowloris).
    #[serde(default = "default_hook_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How long one request may take, body included (GitHub gives up after 10 s).
    #[serde(default = "default_hook_request_timeout")]
    pub request_timeout: HumanDuration,
}

/// `webhook.recoverDeliveries`: where GitHub keeps the hook's delivery log.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoverConfig {
    /// The id of the repository or organization webhook (the scope's), as in
    /// `/orgs/{org}/hooks/{hookId}/deliveries`. Needs Webhooks: read
    /// (classic PAT: `admin:org_hook` / `admin:repo_hook`).
    #[serde(default)]
    pub hook_id: Option<u64>,
    /// The GitHub App's own webhook (`/app/hook/deliveries`, with the App's JWT):
    /// needs `auth.app`.
    #[serde(default)]
    pub app: bool,
    /// How often the delivery log is read (one call when nothing was missed).
    #[serde(default = "default_recover_every")]
    pub every: HumanDuration,
}

/// One route: jobs whose labels it covers get applications of `label`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(rename = "match")]
    pub labels: Vec<String>,
    pub label: String,
    pub max: u32,
}

/// `apiBudget`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiBudgetConfig {
    pub per_hour: u32,
}

fn default_api_url() -> String {
    "https://api.github.com".into()
}
fn default_hook_path() -> String {
    "/hooks/github".into()
}
fn default_hook_max_body() -> usize {
    1024 * 1024
}
fn default_hook_max_connections() -> usize {
    128
}
fn default_hook_header_read_timeout() -> HumanDuration {
    HumanDuration(crate::defaults::HEADER_READ_TIMEOUT)
}
fn default_hook_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_register_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_reconcile_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(120))
}
fn default_recover_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_stale_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}

/// Labels that say nothing about which runner a job wants: a job naming only these
/// is not taken (a bare `runs-on: self-hosted` must not grab our runners).
pub const GENERIC_LABELS: [&str; 7] = ["self-hosted", "linux", "windows", "macos", "x64", "arm64", "arm"];

/// Where runners live, as API path and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Repo(String),
    Org(String),
    Enterprise(String),
}

impl Scope {
    /// `/repos/o/r`, `/orgs/o` or `/enterprises/e`.
    pub fn path(&self) -> String {
        match self {
            Scope::Repo(r) => format!("/repos/{r}"),
            Scope::Org(o) => format!("/orgs/{o}"),
            Scope::Enterprise(e) => format!("/enterprises/{e}"),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Repo(r) => write!(f, "repo {r}"),
            Scope::Org(o) => write!(f, "org {o}"),
            Scope::Enterprise(e) => write!(f, "enterprise {e}"),
        }
    }
}

impl GithubConfig {
    /// The scope, checked: exactly one of repo, org, enterprise.
    pub fn scope(&self) -> Result<Scope, String> {
        match (&self.scope.repo, &self.scope.org, &self.scope.enterprise) {
            (Some(r), None, None) if r.split('/').count() == 2 && !r.starts_with('/') && !r.ends_with('/') => {
                Ok(Scope::Repo(r.clone()))
            }
            (Some(r), None, None) => Err(format!("scope.repo {r:?} must be OWNER/NAME")),
            (None, Some(o), None) if !o.is_empty() => Ok(Scope::Org(o.clone())),
            (None, None, Some(e)) if !e.is_empty() => Ok(Scope::Enterprise(e.clone())),
            _ => Err("scope: give exactly one of repo, org or enterprise".into()),
        }
    }

    /// The runner name prefix.
    pub fn prefix(&self, gate: &str) -> String {
        self.runner_name_prefix.clone().unwrap_or_else(|| format!("fish-{gate}"))
    }

    /// Checks what serde cannot; errors name the field under `gates.github.<name>`.
    pub fn validate(&self, name: &str) -> Result<(), String> {
        let at = |m: String| format!("gates.github.{name}.{m}");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') || name.len() > 30 {
            return Err(format!("gates.github.{name:?}: a gate name is 1-30 letters, digits or '-'"));
        }
        self.scope().map_err(at)?;
        match (&self.auth.token, &self.auth.app) {
            (Some(_), None) => {}
            (None, Some(app)) => {
                if matches!(self.scope(), Ok(Scope::Enterprise(_))) {
                    return Err(at(
                        "auth.app: a GitHub App cannot manage enterprise runners; use auth.token (a classic PAT with manage_runners:enterprise)".into(),
                    ));
                }
                match (&app.client_id, app.app_id) {
                    (Some(c), None) if !c.is_empty() => {}
                    (None, Some(_)) => {}
                    _ => return Err(at("auth.app: give exactly one of clientId or appId".into())),
                }
            }
            _ => {
                return Err(at(
                    "auth: give exactly one of token: {file: PATH} or app: {clientId, installationId, privateKeyFile}"
                        .into(),
                ));
            }
        }
        if !self.api_url.starts_with("https://") {
            return Err(at(format!("apiUrl {:?} must be https://", self.api_url)));
        }
        if self.webhook.secrets.is_empty() {
            return Err(at("webhook.secrets: at least one secret file".into()));
        }
        let hook = &self.webhook;
        if hook.max_body_bytes == 0 || hook.max_body_bytes > 25 * 1024 * 1024 {
            return Err(at("webhook.maxBodyBytes must be between 1 and 26214400 (GitHub's 25 MiB)".into()));
        }
        if hook.max_connections == 0 {
            return Err(at("webhook.maxConnections must be at least 1".into()));
        }
        for (field, d) in [("headerReadTimeout", hook.header_read_timeout), ("requestTimeout", hook.request_timeout)] {
            if d.get().is_zero() || d.get() > Duration::from_secs(3600) {
                return Err(at(format!("webhook.{field} must be between 1s and 1h")));
            }
        }
        if !self.webhook.path.starts_with('/') {
            return Err(at(format!("webhook.path {:?} must start with /", self.webhook.path)));
        }
        if let Some(r) = &self.webhook.recover_deliveries {
            match (r.hook_id, r.app) {
                (Some(_), false) if self.scope().is_ok_and(|s| matches!(s, Scope::Enterprise(_))) => {
                    return Err(at("webhook.recoverDeliveries.hookId: GitHub has no delivery log API for enterprise hooks; use app: true".into()));
                }
                (Some(_), false) => {}
                (None, true) if self.auth.app.is_none() => {
                    return Err(at(
                        "webhook.recoverDeliveries.app: needs auth.app (the App's JWT reads its hook's deliveries)"
                            .into(),
                    ));
                }
                (None, true) => {}
                _ => return Err(at("webhook.recoverDeliveries: give exactly one of hookId or app: true".into())),
            }
            if r.every.get() < Duration::from_secs(1) || r.every.get() > Duration::from_secs(24 * 3600) {
                return Err(at("webhook.recoverDeliveries.every must be between 1s and 24h".into()));
            }
        }
        if self.routes.is_empty() {
            return Err(at("routes: at least one route".into()));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.labels.is_empty() || r.labels.len() > 100 {
                return Err(at(format!("routes[{i}].match: 1 to 100 labels")));
            }
            if r.labels.iter().all(|l| GENERIC_LABELS.contains(&l.to_lowercase().as_str())) {
                return Err(at(format!(
                    "routes[{i}].match: name at least one label beyond {GENERIC_LABELS:?}, or every self-hosted job would match"
                )));
            }
            if r.label.is_empty() {
                return Err(at(format!("routes[{i}].label: required")));
            }
        }
        for p in &self.repositories {
            glob::Pattern::new(p).map_err(|e| at(format!("repositories: {p:?}: {e}")))?;
        }
        let prefix = self.prefix(name);
        if prefix.is_empty() || prefix.len() > 50 {
            return Err(at("runnerNamePrefix: 1 to 50 characters (runner names are at most 64)".into()));
        }
        for (field, d) in [
            ("registerTimeout", self.register_timeout),
            ("idleTimeout", self.idle_timeout),
            ("reconcileEvery", self.reconcile_every),
            ("staleAfter", self.stale_after),
        ] {
            if d.get().is_zero() || d.get() > Duration::from_secs(7 * 24 * 3600) {
                return Err(at(format!("{field} must be more than 0 and at most 7 days")));
            }
        }
        Ok(())
    }
}

/// Parses `gates:` from fish.yml, errors naming the path.
pub fn parse(value: &serde_json::Value) -> Result<GatesConfig, String> {
    let config: GatesConfig =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| format!("gates.{}: {}", e.path(), e.inner()))?;
    for (name, g) in &config.github {
        g.validate(name)?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> serde_json::Value {
        serde_json::json!({"github": {"acme": {
            "auth": {"token": {"file": "/x"}},
            "scope": {"org": "acme"},
            "webhook": {"listen": "127.0.0.1:0", "secrets": [{"file": "/y"}]},
            "routes": [{"match": ["self-hosted", "linux", "ubuntu-ci"], "label": "ubuntu-ci", "max": 2}]
        }}})
    }

    #[test]
    fn a_minimal_gate_parses_and_bad_fields_are_named() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.github["acme"].scope().unwrap(), Scope::Org("acme".into()));
        let mut v = base();
        v["github"]["acme"]["routes"][0]["match"] = serde_json::json!(["self-hosted", "linux"]);
        assert!(parse(&v).unwrap_err().contains("routes[0].match"));
        let mut v = base();
        v["github"]["acme"]["scope"] = serde_json::json!({"org": "a", "repo": "a/b"});
        assert!(parse(&v).unwrap_err().contains("scope"));
        let mut v = base();
        v["github"]["acme"]["routez"] = serde_json::json!([]);
        assert!(parse(&v).unwrap_err().contains("routez"));
        let mut v = base();
        v["github"]["acme"]["auth"] =
            serde_json::json!({"app": {"appId": 1, "clientId": "Iv1.x", "installationId": 2, "privateKeyFile": "/k"}});
        assert!(parse(&v).unwrap_err().contains("auth.app"));
        v["github"]["acme"]["auth"] =
            serde_json::json!({"app": {"appId": 1, "installationId": 2, "privateKeyFile": "/k"}});
        assert!(parse(&v).is_ok());
        v["github"]["acme"]["scope"] = serde_json::json!({"enterprise": "e"});
        assert!(parse(&v).unwrap_err().contains("enterprise"));
        let mut v = base();
        v["github"]["acme"]["webhook"]["recoverDeliveries"] = serde_json::json!({"app": true});
        assert!(parse(&v).unwrap_err().contains("recoverDeliveries.app"));
        v["github"]["acme"]["webhook"]["recoverDeliveries"] = serde_json::json!({"hookId": 7, "every": "1m"});
        assert!(parse(&v).is_ok());
        // The listener's limits: defaults well below GitHub's 25 MB, and bad values named.
        let hook = &parse(&base()).unwrap().github["acme"].webhook;
        assert_eq!((hook.max_body_bytes, hook.max_connections), (1024 * 1024, 128));
        assert_eq!((hook.header_read_timeout.get().as_secs(), hook.request_timeout.get().as_secs()), (10, 10));
        let mut v = base();
        v["github"]["acme"]["webhook"]["maxBodyBytes"] = serde_json::json!(0);
        assert!(parse(&v).unwrap_err().contains("webhook.maxBodyBytes"));
        let mut v = base();
        v["github"]["acme"]["webhook"]["maxConnections"] = serde_json::json!(0);
        assert!(parse(&v).unwrap_err().contains("webhook.maxConnections"));
        let mut v = base();
        v["github"]["acme"]["webhook"]["requestTimeout"] = serde_json::json!("0s");
        assert!(parse(&v).unwrap_err().contains("webhook.requestTimeout"));
    }
}
