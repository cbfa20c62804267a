//! First start: the `admin` user and the `fishctl.yaml` that lets its owner in.
//!
//! # Guarantees
//! - The admin token exists in plain text only in `<data-dir>/fishctl.yaml` (mode 0600).
//! - A later start keeps the user and the file, rewriting only `server:` when the API
//!   address changed.
//! - A data directory made by `fishd restore` keeps every token of the backup: without
//!   the file, nothing is rotated.
//! - Otherwise, if the file is lost while `admin` exists, the admin token is rotated and a new
//!   file written (the old token is unrecoverable anyway; this is the way back in for
//!   whoever can read the data directory).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use api_types::{ObjectMeta, Role, User, UserSpec};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::secrets;
use crate::store::backup::RESTORED_MARKER;
use crate::store::{ApplyItem, Command, Store, StoreError, UserRecord};

/// The name of the user made on first start.
pub const ADMIN: &str = "admin";
/// The client configuration file written in the data directory.
pub const CONFIG_FILE: &str = "fishctl.yaml";

/// Why bootstrap failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("storage failed")]
    Store(#[from] StoreError),
    #[error("the store refused the admin user: {0}")]
    Rejected(String),
    #[error("cannot make a token")]
    Secret(#[from] secrets::SecretError),
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {0}")]
    Yaml(String),
}

/// `fishctl.yaml`: the same format fishctl reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientConfig {
    pub current_context: String,
    pub contexts: BTreeMap<String, ClientContext>,
}

/// One context of [`ClientConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientContext {
    pub server: String,
    pub ca_cert: PathBuf,
    pub user: String,
    pub token: String,
}

/// What bootstrap did, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// First start: `admin` created and the file written.
    Created,
    /// Both were there; the file was rewritten only if `server` changed.
    Kept { server_changed: bool },
    /// `admin` existed without the file: its token was rotated into a new file.
    Recovered,
    /// Users exist but no `admin` and no file: nothing to do.
    NoAdmin,
    /// A data directory made by `fishd restore`, without the file: every token of the
    /// backup is kept (rotating admin's would break the promise of the restore).
    Restored,
}

/// The URL clients use for an API bound to `addr`: an unspecified address becomes
/// the loopback one of its family.
pub fn server_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

/// Ensures the admin user and `<data_dir>/fishctl.yaml` exist; `api_addr` is the
/// address the API is really bound to, `ca_cert` the CA clients must trust.
pub async fn bootstrap(
    store: &Store,
    data_dir: &Path,
    node_name: &str,
    api_addr: SocketAddr,
    ca_cert: &Path,
) -> Result<Bootstrapped, BootstrapError> {
    let path = data_dir.join(CONFIG_FILE);
    let server = server_url(api_addr);
    let ca_cert = std::path::absolute(ca_cert).map_err(|source| BootstrapError::Io { path: ca_cert.into(), source })?;
    let (_, users) = store.list_users()?;
    let admin = store.get_user(ADMIN)?;
    if users.is_empty() {
        let token = secrets::new_token()?;
        let mut user = User {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: ObjectMeta { name: ADMIN.parse().ok(), ..Default::default() },
            spec: UserSpec { roles: vec![Role::Admin], password: None, rate_limit: None },
            status: Default::default(),
        };
        user.status.token = None;
        let record = UserRecord { user, password_hash: None, token_digest: secrets::token_digest(&token) };
        let items = vec![ApplyItem::User { record, uid: Uuid::now_v7() }];
        store
            .execute(Command::Apply { items, owner: "fishd".into(), now: OffsetDateTime::now_utc() })
            .await?
            .map_err(|r| BootstrapError::Rejected(r.to_string()))?;
        write_config(&path, node_name, &server, &ca_cert, &token)?;
        tracing::info!(target: "audit", user = "fishd", action = "create", kind = "User", name = ADMIN, outcome = "created");
        tracing::info!(config = %path.display(), "first start: created user admin; its token is in the config file");
        return Ok(Bootstrapped::Created);
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut config: ClientConfig =
                serde_saphyr::from_str(&text).map_err(|e| BootstrapError::Yaml(e.to_string()))?;
            let mut changed = false;
            for ctx in config.contexts.values_mut() {
                if ctx.server != server {
                    ctx.server = server.clone();
                    changed = true;
                }
            }
            if changed {
                save(&path, &config)?;
                tracing::info!(config = %path.display(), server, "API address changed: updated the config file");
            }
            Ok(Bootstrapped::Kept { server_changed: changed })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && data_dir.join(RESTORED_MARKER).exists() => {
            tracing::warn!(
                config = %path.display(),
                "restored data directory without {CONFIG_FILE}: every token of the backup still works; \
                 copy your fishctl.yaml here (or point it at this node) to use it"
            );
            Ok(Bootstrapped::Restored)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match admin {
            Some(_) => {
                let token = secrets::new_token()?;
                store
                    .execute(Command::SetUserToken { name: ADMIN.into(), token_digest: secrets::token_digest(&token) })
                    .await?
                    .map_err(|r| BootstrapError::Rejected(r.to_string()))?;
                write_config(&path, node_name, &server, &ca_cert, &token)?;
                tracing::warn!(config = %path.display(), "the config file was missing: rotated the admin token into a new one");
                Ok(Bootstrapped::Recovered)
            }
            None => Ok(Bootstrapped::NoAdmin),
        },
        Err(source) => Err(BootstrapError::Io { path, source }),
    }
}

fn write_config(path: &Path, node_name: &str, server: &str, ca_cert: &Path, token: &str) -> Result<(), BootstrapError> {
    let ctx = ClientContext {
        server: server.to_owned(),
        ca_cert: ca_cert.to_owned(),
        user: ADMIN.into(),
        token: token.to_owned(),
    };
    let config =
        ClientConfig { current_context: node_name.to_owned(), contexts: BTreeMap::from([(node_name.to_owned(), ctx)]) };
    save(path, &config)
}

fn save(path: &Path, config: &ClientConfig) -> Result<(), BootstrapError> {
    let text = serde_saphyr::to_string(config).map_err(|e| BootstrapError::Yaml(e.to_string()))?;
    crate::fsutil::write_private(path, text.as_bytes())
        .map_err(|source| BootstrapError::Io { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn first_start_creates_admin_and_later_starts_keep_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("fish.redb")).expect("store");
        let ca = dir.path().join("ca.crt");
        let addr: SocketAddr = "127.0.0.1:8001".parse().expect("addr");
        let run = |addr| bootstrap(&store, dir.path(), "node-a", addr, &ca);
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), run(addr)).await.expect("timeout");
        assert_eq!(r.expect("bootstrap"), Bootstrapped::Created);
        let path = dir.path().join(CONFIG_FILE);
        assert_eq!(std::fs::metadata(&path).expect("file").permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        let config: ClientConfig = serde_saphyr::from_str(&text).expect("parse");
        assert_eq!(config.current_context, "node-a");
        let ctx = &config.contexts["node-a"];
        assert_eq!(ctx.server, "https://127.0.0.1:8001");
        assert!(ctx.ca_cert.is_absolute());
        let rec = store.user_by_token_digest(&secrets::token_digest(&ctx.token)).expect("lookup").expect("admin");
        assert!(rec.user.is_admin());

        let again = tokio::time::timeout(std::time::Duration::from_secs(10), run(addr)).await.expect("timeout");
        assert_eq!(again.expect("bootstrap"), Bootstrapped::Kept { server_changed: false });
        let moved: SocketAddr = "0.0.0.0:9001".parse().expect("addr");
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), run(moved)).await.expect("timeout");
        assert_eq!(r.expect("bootstrap"), Bootstrapped::Kept { server_changed: true });
        let config2: ClientConfig =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("read")).expect("parse");
        assert_eq!(config2.contexts["node-a"].server, "https://127.0.0.1:9001");
        assert_eq!(config2.contexts["node-a"].token, ctx.token, "the token is kept");
    }
}
