//! Who a proxy client is: the application behind a source address, a resource token or
//! a per-resource listener, and what its definition allows.
//!
//! The proxy asks a [`Directory`] so it knows nothing of the store; [`StoreDirectory`]
//! answers from the store (the application's pinned label version and the definition
//! it was allocated with) and the node's resource-token secret.

use std::net::IpAddr;

use api_types::{AllowRule, Application, Phase};
use uuid::Uuid;

use crate::meta_token::MetaTokens;
use crate::store::Store;

/// A resource the proxy serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub uid: Uuid,
    /// The application's name, for logs.
    pub name: String,
    /// The label's name, for the metrics.
    pub label: String,
    /// The definition's `resources.allow`.
    pub allow: Vec<AllowRule>,
}

/// Finds the resource behind a connection.
pub trait Directory: Send + Sync {
    /// The running resource whose address is `ip` (containers, processes in their own
    /// network namespace).
    fn by_addr(&self, ip: IpAddr) -> Option<Client>;
    /// The running resource holding `token`.
    fn by_token(&self, token: &str) -> Option<Client>;
    /// The running resource `uid` (a listener opened for it).
    fn by_uid(&self, uid: Uuid) -> Option<Client>;
}

/// The store's view: running applications and their pinned label versions.
#[derive(Clone)]
pub struct StoreDirectory {
    store: Store,
    tokens: MetaTokens,
}

impl StoreDirectory {
    /// Answers from `store`, checking tokens with `tokens`.
    pub fn new(store: Store, tokens: MetaTokens) -> Self {
        StoreDirectory { store, tokens }
    }

    fn client(&self, app: &Application) -> Option<Client> {
        let uid = app.metadata.uid?;
        let label = self.store.application_label(uid).ok().flatten();
        let definition = app.status.definition.and_then(|i| label.as_ref()?.spec.definitions.get(i));
        let allow = definition
            .map(|d| {
                d.resources
                    .allow
                    .iter()
                    .filter_map(|r| match r.parse() {
                        Ok(rule) => Some(rule),
                        Err(e) => {
                            tracing::warn!(application = app.metadata.name_str(), error = %e, "allow rule ignored");
                            None
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Client {
            uid,
            name: app.metadata.name_str().to_owned(),
            label: app.spec.label.name.as_str().to_owned(),
            allow,
        })
    }

    fn running(&self, uid: Uuid) -> Option<Client> {
        let app = self.store.get_application_by_uid(uid).ok().flatten()?;
        matches!(app.status.phase, Phase::Elected | Phase::Allocated).then(|| self.client(&app)).flatten()
    }
}

impl Directory for StoreDirectory {
    fn by_addr(&self, ip: IpAddr) -> Option<Client> {
        let ip = ip.to_canonical();
        for uid in self.store.uids_in_phase(Phase::Allocated).ok()? {
            let Some(app) = self.store.get_application_by_uid(uid).ok().flatten() else { continue };
            let matches = app
                .status
                .resource
                .as_ref()
                .and_then(|r| r.ip_addr.as_deref())
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| a.to_canonical() == ip);
            if matches {
                return self.client(&app);
            }
        }
        None
    }

    fn by_token(&self, token: &str) -> Option<Client> {
        self.running(self.tokens.verify(token)?)
    }

    fn by_uid(&self, uid: Uuid) -> Option<Client> {
        self.running(uid)
    }
}
