//! The joining node's side of a join, and the record of it kept in the data dir.
//!
//! # Steps
//! 1. Parse the token (`aqjoin1.<CA fingerprint>.<secret>`).
//! 2. Fetch the member's CA (`GET /cluster/join/ca`, public) and pin it: its SHA-256
//!    must equal the token's fingerprint, or nothing more is sent. The token never
//!    goes to a server that is not the cluster's.
//! 3. Make a node key and a CSR here (the key never leaves), and
//!    `POST /cluster/join` to the member over TLS verified by the pinned CA only.
//! 4. Before the call, `join.partial` and `node.key`; after it `ca.crt`, `ca.key`,
//!    `node.crt`, `node.sans`, then `cluster.json` (its presence means "joined") and
//!    the marker goes. A crash in between makes the next start join again with the
//!    same key, which the member accepts as a retry of the same node.
//!
//! # Guarantees
//! - A refused join leaves nothing behind, and its error is one line naming the problem.
//! - A data dir that already holds a node's state is never joined (it would mix two
//!   clusters' state): the error says to use an empty one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::{ErrorBody, JoinMember, JoinRequest, JoinResponse};
use serde::{Deserialize, Serialize};

use super::token::{JoinToken, Malformed};
use crate::errors::error_chain;
use crate::fsutil::write_private;
use crate::tls;

/// The record of a join in the data dir.
pub const STATE_FILE: &str = "cluster.json";
/// How long each join request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a node learnt when it joined; its presence in the data dir means the node is
/// a member and needs no join flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    pub cluster_id: String,
    pub node: String,
    pub advertise: String,
    /// The member the join went through.
    pub joined_via: String,
    /// The members when the node joined (the raft log has the current ones).
    pub members: Vec<JoinMember>,
}

/// Why a join failed. Each message is one line, naming the token problem if any.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("cannot join through {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error(
        "join token does not belong to the cluster at {addr}: the token pins CA {token}…, the member serves CA {actual}… (a token of another cluster, or a forged one)"
    )]
    WrongCa { addr: String, token: String, actual: String },
    #[error("join token refused by {addr}: {message}")]
    Refused { addr: String, message: String },
    #[error("{addr} answered the join with something unreadable: {reason}")]
    BadAnswer { addr: String, reason: String },
    #[error("cannot join into {dir}: it already holds a node's state (use an empty data directory to join)")]
    NotEmpty { dir: PathBuf },
    #[error("cannot make the node's key and certificate request")]
    Tls(#[from] tls::TlsError),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Joined {
    /// The join record of `data_dir`, if the node joined a cluster.
    pub fn load(data_dir: &Path) -> Result<Option<Joined>, JoinError> {
        let path = data_dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| JoinError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(JoinError::Io { path, source }),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<(), JoinError> {
        let path = data_dir.join(STATE_FILE);
        let text = serde_json::to_vec_pretty(self)
            .map_err(|e| JoinError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        write_private(&path, &text).map_err(|source| JoinError::Io { path, source })
    }
}

/// The files a node's own state lives in: any of them means "not empty".
const STATE_FILES: [&str; 4] = ["fish.redb", "ca.key", "node.key", STATE_FILE];
/// Present while a join is under way: a start that finds it resumes the join (with
/// the same node key, so the member accepts the retry) instead of refusing a data dir
/// half-written by a crash.
const PARTIAL: &str = "join.partial";
/// The files a join writes, removed again when a half-done join is resumed.
const JOIN_FILES: [&str; 5] = ["ca.crt", "ca.key", "node.crt", "node.sans", STATE_FILE];
/// Largest CA certificate the probe reads (before the CA is pinned, nothing it sends
/// is trusted, so nothing it sends is read without bound).
const MAX_CA_PEM: usize = 64 * 1024;

/// Joins the cluster through the member at `addr` (`HOST:PORT`) with `token`, as
/// `node` reachable at `advertise`, with a certificate for `names`. See the module docs.
pub async fn join(
    data_dir: &Path,
    addr: &str,
    token: &str,
    node: &str,
    advertise: &str,
    names: Vec<String>,
) -> Result<Joined, JoinError> {
    let token: JoinToken = token.parse()?;
    let partial = data_dir.join(PARTIAL);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| JoinError::Io { path, source }
    };
    let resumed_key = if partial.exists() {
        tracing::info!("resuming a join that was interrupted");
        for f in JOIN_FILES {
            match std::fs::remove_file(data_dir.join(f)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&data_dir.join(f))(e)),
                _ => {}
            }
        }
        std::fs::read_to_string(data_dir.join("node.key")).ok()
    } else {
        if let Some(f) = STATE_FILES.iter().find(|f| data_dir.join(f).exists()) {
            tracing::debug!(file = f, "data dir is not empty");
            return Err(JoinError::NotEmpty { dir: data_dir.to_owned() });
        }
        None
    };
    let unreachable = |e: reqwest::Error| JoinError::Unreachable { addr: addr.to_owned(), reason: error_chain(&e) };
    let bad = |reason: String| JoinError::BadAnswer { addr: addr.to_owned(), reason };

    // 2. Fetch and pin the CA. Any certificate is accepted for this one public read:
    // what it returns is checked against the token before anything is trusted.
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let resp = probe.get(format!("https://{addr}/cluster/join/ca")).send().await.map_err(unreachable)?;
    if !resp.status().is_success() {
        return Err(bad(format!("GET /cluster/join/ca: HTTP {}", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n > MAX_CA_PEM as u64) {
        return Err(bad("GET /cluster/join/ca: the answer is too large for a CA certificate".into()));
    }
    let mut ca_pem = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
        ca_pem.extend_from_slice(&chunk);
        if ca_pem.len() > MAX_CA_PEM {
            return Err(bad("GET /cluster/join/ca: the answer is too large for a CA certificate".into()));
        }
    }
    let ca_pem = String::from_utf8(ca_pem).map_err(|_| bad("its CA is not text".into()))?;
    let actual = tls::fingerprint(&ca_pem).map_err(|e| bad(format!("its CA is not a PEM certificate: {e}")))?;
    if actual != token.ca_fingerprint() {
        return Err(JoinError::WrongCa {
            addr: addr.to_owned(),
            token: token.ca_fingerprint()[..16].to_owned(),
            actual: actual[..16].to_owned(),
        });
    }

    // 3. CSR, then the join call over TLS that trusts the pinned CA only.
    let (key_pem, csr) = match &resumed_key {
        Some(key) => tls::node_csr_for_key(key, node, names.clone())?,
        None => tls::node_csr(node, names.clone())?,
    };
    // The key is kept from here on, with the marker, so a crash before the join is
    // recorded resumes with the key the member may already have seen.
    write_private(&partial, b"").map_err(io(&partial))?;
    let key_path = data_dir.join("node.key");
    write_private(&key_path, key_pem.as_bytes()).map_err(io(&key_path))?;
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).map_err(unreachable)?;
    let client =
        reqwest::Client::builder().tls_certs_only([ca]).timeout(REQUEST_TIMEOUT).build().map_err(unreachable)?;
    let body =
        JoinRequest { token: token.reveal().to_owned(), node: node.to_owned(), advertise: advertise.to_owned(), csr };
    let resp = client.post(format!("https://{addr}/cluster/join")).json(&body).send().await.map_err(unreachable)?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(unreachable)?;
    if !status.is_success() {
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => b.message,
            Err(_) => format!("HTTP {status}"),
        };
        // A refusal is definite: nothing of this join is kept (only an unknown outcome,
        // a lost answer, leaves the marker and key for a retry).
        for f in [&partial, &key_path] {
            let _ = std::fs::remove_file(f);
        }
        return Err(JoinError::Refused { addr: addr.to_owned(), message });
    }
    let answer: JoinResponse = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if tls::fingerprint(&answer.ca_cert).ok().as_deref() != Some(token.ca_fingerprint()) {
        return Err(bad("the CA in the answer is not the pinned one".into()));
    }

    // 4. Persist; cluster.json last.
    let write = |name: &str, text: &str, private: bool| {
        let path = data_dir.join(name);
        let r = if private { write_private(&path, text.as_bytes()) } else { std::fs::write(&path, text) };
        r.map_err(|source| JoinError::Io { path, source })
    };
    write("ca.crt", &answer.ca_cert, false)?;
    write("ca.key", &answer.ca_key, true)?;
    write("node.crt", &answer.certificate, false)?;
    write("node.sans", &names.join("\n"), false)?;
    let joined = Joined {
        cluster_id: answer.cluster_id,
        node: node.to_owned(),
        advertise: advertise.to_owned(),
        joined_via: addr.to_owned(),
        members: answer.members,
    };
    joined.save(data_dir)?;
    std::fs::remove_file(&partial).map_err(io(&partial))?;
    tracing::info!(cluster = %joined.cluster_id, via = addr, members = joined.members.len(), "joined the cluster");
    Ok(joined)
}
