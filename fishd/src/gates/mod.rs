//! Gates: CI systems create applications (contract section 12).
//!
//! A gate turns a CI system's demand into applications and hands each resource what
//! it needs to join that CI system. The first is GitHub Actions, stage A of
//! `github-gate.md`: webhooks plus REST just-in-time runners.
//!
//! Layering: a gate never touches drivers. It reads the store, submits the same
//! commands a user's request does (applications owned by `gate:github/<name>`), talks
//! to its CI system, and registers a [`crate::metadata::SecretProvider`] so the runner
//! config reaches exactly one resource. Its own state (delivery GUIDs, jobs, runner
//! registrations) lives in the store's gate tables ([`crate::store::gates`]).
//!
//! In a cluster the passes must run on the leader only (webhooks may arrive at any
//! node, since recording one is a command); single-node fishd runs them here.

pub mod app_auth;
pub mod config;
pub mod gate;
pub mod github;
pub mod metrics;
pub mod recover;
pub mod webhook;

use std::sync::Arc;

use api_types::{Application, Gate, Metadata};
use tokio_util::sync::CancellationToken;

pub use config::{GatesConfig, GithubConfig};
pub use gate::GithubGate;
pub use metrics::GateMetrics;

use crate::store::Store;

/// Every configured gate.
#[derive(Default)]
pub struct Gates {
    pub github: Vec<Arc<GithubGate>>,
}

impl Gates {
    /// Builds the configured gates (nothing runs yet).
    pub fn build(
        config: &GatesConfig,
        store: &Store,
        data_dir: &std::path::Path,
        metrics: &GateMetrics,
    ) -> Result<Gates, String> {
        let mut github = Vec::new();
        for (name, c) in &config.github {
            let g = GithubGate::new(name, c.clone(), store.clone(), data_dir, metrics.clone())
                .map_err(|e| format!("gates.github.{name}: {e}"))?;
            github.push(Arc::new(g));
        }
        Ok(Gates { github })
    }

    /// Starts the webhook listeners (TLS with the node's certificate) and the passes.
    pub fn start(&self, tls: Arc<rustls::ServerConfig>, stop: CancellationToken) -> Result<(), String> {
        if self.github.is_empty() {
            return Ok(());
        }
        webhook::serve(&self.github, tls, stop.clone())?;
        for g in &self.github {
            tokio::spawn(g.clone().run(stop.clone()));
        }
        Ok(())
    }

    /// Every gate's observed state, by name.
    pub fn list(&self) -> Vec<Gate> {
        let mut v: Vec<Gate> = self.github.iter().map(|g| g.view()).collect();
        v.sort_by(|a, b| a.metadata.name_str().cmp(b.metadata.name_str()));
        v
    }

    fn owner_of(&self, app: &Application) -> Option<&Arc<GithubGate>> {
        let owner = app.metadata.owner.as_deref()?;
        self.github.iter().find(|g| g.owner == owner)
    }
}

/// The gates' [`crate::metadata::SecretProvider`]: the JIT config of each gate
/// application, minted at allocation.
pub struct GateSecrets(pub Arc<Gates>);

#[async_trait::async_trait]
impl crate::metadata::SecretProvider for GateSecrets {
    fn owns(&self, app: &Application) -> bool {
        self.0.owner_of(app).is_some()
    }

    async fn mint(&self, app: &Application) -> Result<Metadata, crate::metadata::MintError> {
        match self.0.owner_of(app) {
            Some(g) => g.mint(app).await,
            None => Ok(Metadata::new()),
        }
    }

    fn hold(&self, app: &Application) -> Option<crate::metadata::Hold> {
        self.0.owner_of(app)?.hold()
    }

    fn current(&self, app: &Application) -> Metadata {
        self.0.owner_of(app).map(|g| g.current(app)).unwrap_or_default()
    }
}
