//! The merged metadata of an application: the label's metadata, overlaid by the
//! application's, plus the `FISH_*` facts fishd adds.
//!
//! One builder for both ways a resource gets it (its environment at allocation, and
//! `GET /meta/v1/data`), so the two always agree.

use api_types::{Application, Label, Metadata};

/// The merged metadata of `app`, whose pinned label is `label`, elected on `node`
/// (used when the application records no node).
pub fn merged(label: Option<&Label>, app: &Application, node: &str) -> Metadata {
    let mut m = Metadata::new();
    if let Some(l) = label {
        m.extend(l.spec.metadata.clone());
    }
    m.extend(app.spec.metadata.clone());
    let s = |v: &str| serde_json::Value::String(v.to_owned());
    m.insert("FISH_APPLICATION".into(), s(app.metadata.name_str()));
    if let Some(uid) = app.metadata.uid {
        m.insert("FISH_APPLICATION_UID".into(), s(&uid.to_string()));
    }
    m.insert("FISH_NODE".into(), s(app.status.node.as_deref().unwrap_or(node)));
    m.insert("FISH_LABEL".into(), s(app.spec.label.name.as_str()));
    if let Some(v) = app.status.label_version.or_else(|| label.and_then(|l| l.metadata.version)) {
        m.insert("FISH_LABEL_VERSION".into(), s(&v.to_string()));
    }
    m
}

/// `KEY='value'` lines, sorted by key, each value quoted for a POSIX shell.
pub fn to_env(data: &Metadata) -> String {
    let mut out = String::new();
    for (k, v) in data {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push_str(k);
        out.push('=');
        out.push_str(&shell_quote(&text));
        out.push('\n');
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Why a provider could not mint the secrets of an allocation attempt.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// Not now: the system behind the provider is unreachable, failing (5xx), or rate
    /// limits us. Not the application's fault: the attempt is not counted, the
    /// application goes back to NEW, and the election waits for the provider's
    /// [`SecretProvider::hold`]. The message says why and when it retries.
    #[error("{0}")]
    NotNow(String),
    /// A definite refusal (bad credentials, a missing permission, a malformed
    /// request): the attempt failed and counts against `allocationRetry`.
    #[error("{0}")]
    Refused(String),
}

/// Why a provider's applications must not be elected yet, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    /// For the waiting application's message; stable for the whole hold (it names
    /// the wall-clock time of the retry, not a countdown), so passes do not rewrite it.
    pub reason: String,
    /// When the election may place them again.
    pub until: tokio::time::Instant,
}

/// Supplies per-application secrets that must never be in `spec.metadata` (which is
/// listed, watched and kept): a gate's just-in-time runner config, for example.
///
/// # Guarantees the reconciler and the metadata endpoint give
/// - [`SecretProvider::mint`] is called on the elected node at every allocation
///   attempt of an application the provider owns, before the driver runs, and what it
///   returns goes into that resource's environment only. [`MintError::NotNow`]
///   returns the application to NEW without counting the attempt.
/// - [`SecretProvider::hold`] is asked by every election pass for each NEW application
///   the provider owns; while it holds, the application waits with its reason, and
///   the election runs again when the hold ends.
/// - [`SecretProvider::current`] is asked on every `GET /meta/v1/data` of that
///   application's resource (found by its own token or address), and nowhere else.
#[async_trait::async_trait]
pub trait SecretProvider: Send + Sync {
    /// Whether this provider supplies `app`'s secrets.
    fn owns(&self, app: &Application) -> bool;
    /// The secrets of a new allocation attempt.
    async fn mint(&self, app: &Application) -> Result<Metadata, MintError>;
    /// Whether `app` must wait before it is elected (its provider cannot mint now).
    fn hold(&self, _app: &Application) -> Option<Hold> {
        None
    }
    /// What the resource of `app` may still read now (empty once it must not).
    fn current(&self, app: &Application) -> Metadata;
}

type Providers = std::sync::Arc<std::sync::RwLock<Vec<std::sync::Arc<dyn SecretProvider>>>>;

/// The registered providers; cheap to clone, shared by the reconciler and the API.
#[derive(Clone, Default)]
pub struct SecretProviders {
    providers: Providers,
    /// Notified when a hold seen by an election has ended.
    ended: std::sync::Arc<tokio::sync::Notify>,
    /// The end of a hold a timer already waits for.
    timer: std::sync::Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl std::fmt::Debug for SecretProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretProviders(..)")
    }
}

impl SecretProviders {
    /// Adds a provider.
    pub fn register(&self, p: std::sync::Arc<dyn SecretProvider>) {
        self.providers.write().unwrap_or_else(|e| e.into_inner()).push(p);
    }

    fn owner_of(&self, app: &Application) -> Option<std::sync::Arc<dyn SecretProvider>> {
        self.providers.read().unwrap_or_else(|e| e.into_inner()).iter().find(|p| p.owns(app)).cloned()
    }

    /// The secrets of a new allocation attempt of `app` (none when no provider owns it).
    pub async fn mint(&self, app: &Application) -> Result<Metadata, MintError> {
        match self.owner_of(app) {
            Some(p) => p.mint(app).await,
            None => Ok(Metadata::new()),
        }
    }

    /// Why `app` must wait before it is elected, if its provider holds it; then
    /// [`SecretProviders::hold_ended`] fires when the hold is over.
    pub fn hold(&self, app: &Application) -> Option<String> {
        let hold = self.owner_of(app)?.hold(app)?;
        if hold.until <= tokio::time::Instant::now() {
            return None;
        }
        self.wake_at(hold.until);
        Some(hold.reason)
    }

    /// Resolves when a hold that made an application wait has ended.
    pub async fn hold_ended(&self) {
        self.ended.notified().await;
    }

    /// Arms one timer for the earliest hold's end (a later hold re-arms at that pass).
    fn wake_at(&self, until: tokio::time::Instant) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let mut armed = self.timer.lock().unwrap_or_else(|e| e.into_inner());
        if armed.is_some_and(|t| t <= until && t > tokio::time::Instant::now()) {
            return;
        }
        *armed = Some(until);
        let ended = self.ended.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(until).await;
            ended.notify_one();
        });
    }

    /// What `app`'s resource may read now.
    pub fn current(&self, app: &Application) -> Metadata {
        self.owner_of(app).map(|p| p.current(app)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines_are_sorted_and_quoted() {
        let mut m = Metadata::new();
        m.insert("B".into(), serde_json::json!("it's"));
        m.insert("A".into(), serde_json::json!(3));
        assert_eq!(to_env(&m), "A='3'\nB='it'\\''s'\n");
    }
}
