//! Cluster routes: join tokens for admins (`/api/v1/cluster/join-tokens`), the join
//! call a new node makes (`/cluster/join`, authorised by a join token), and the
//! node-to-node peer check every other `/cluster/*` and `/raft/*` route uses.
//!
//! # The peer check
//! The TLS acceptor asks every client for a certificate, optionally, and fails the
//! handshake for one that does not chain to the cluster CA; it hands the verified
//! leaf to the request as a [`PeerCert`]. [`PeerNode`] then accepts the request only
//! if that certificate's common name is a current member. A user token is not a
//! node identity: without a member's certificate the answer is 403 whatever the
//! `Authorization` header says.

use std::path::PathBuf;
use std::sync::Arc;

use api_types::{JoinRequest, JoinResponse, JoinToken as JoinTokenBody, JoinTokenRequest};
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use time::OffsetDateTime;

use super::error::{ApiError, ApiResult};
use super::extract::read_body;
use super::{AppState, audit};
use crate::auth::AuthUser;
use crate::cluster::membership::{LocalMembership, Membership};
use crate::cluster::token::JoinToken;
use crate::store::Command;

/// Default life of a join token.
const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Longest life of a join token: it is a credential that adds nodes.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Largest join request: a token, two names and a CSR fit in a few KiB.
const MAX_JOIN_BODY: usize = 64 * 1024;

/// The cluster side of the API state.
pub struct ClusterCtx {
    /// Who the members are: the Raft log's membership on a running node.
    pub membership: Arc<dyn Membership>,
    /// PEM of the cluster CA, and its fingerprint (join tokens carry it).
    pub ca_cert_pem: String,
    pub ca_fingerprint: String,
    /// Where `ca.key` lives, read when a join is signed.
    pub data_dir: PathBuf,
}

impl ClusterCtx {
    /// The cluster as `membership` sees it, with the TLS material in `data_dir`.
    pub fn new(membership: Arc<dyn Membership>, tls: &crate::tls::TlsMaterial, data_dir: PathBuf) -> Self {
        ClusterCtx {
            membership,
            ca_cert_pem: tls.ca_cert_pem.clone(),
            ca_fingerprint: tls.ca_fingerprint.clone(),
            data_dir,
        }
    }

    /// A context with no CA: joins are refused (API unit tests).
    pub fn none(node: &str) -> Self {
        ClusterCtx {
            membership: Arc::new(LocalMembership::new(String::new(), node, "")),
            ca_cert_pem: String::new(),
            ca_fingerprint: String::new(),
            data_dir: PathBuf::new(),
        }
    }
}

pub use crate::listener::PeerCert;

/// A request from a current member, named by its certificate. Extract it in every
/// node-to-node handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNode(pub String);

impl FromRequestParts<AppState> for PeerNode {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(peer) = parts.extensions.get::<PeerCert>().filter(|p| p.cert.is_some()) else {
            return Err(ApiError::Forbidden(
                "node-to-node route: only a member node's certificate is accepted, not a user's credentials".into(),
            ));
        };
        let Some(name) = peer.common_name.as_deref() else {
            return Err(ApiError::Forbidden("the client certificate has no common name".into()));
        };
        if !state.cluster.membership.is_member(name) {
            tracing::warn!(peer = %name, "refused a node-to-node request from a non-member");
            return Err(ApiError::Forbidden(format!("node {name:?} is not a member of this cluster")));
        }
        Ok(PeerNode(name.to_owned()))
    }
}

/// Make a join token (admin, 201): usable once, until `expiresAt`.
#[utoipa::path(
    post, path = "/api/v1/cluster/join-tokens", tag = "cluster",
    request_body(content = JoinTokenRequest, description = "`ttl` defaults to 1h, at most 7d"),
    responses((status = 201, body = JoinTokenBody, description = "the token, shown once"),
        (status = 403, body = api_types::ErrorBody)),
    security(("bearer" = []), ("basic" = []))
)]
pub async fn create_join_token(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    user.require_admin("create join tokens")?;
    let bytes = read_body(&headers, body, MAX_JOIN_BODY).await?;
    let req: JoinTokenRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        JoinTokenRequest::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("join token request: {e}")))?
    };
    let ttl = req.ttl.map(|d| d.get()).unwrap_or(DEFAULT_TTL);
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(ApiError::invalid_field(
            "join token request is invalid",
            "ttl",
            "must be more than 0 and at most 7d",
        ));
    }
    if state.cluster.ca_fingerprint.is_empty() {
        return Err(ApiError::Unavailable("this node has no cluster CA".into()));
    }
    let token = JoinToken::generate(&state.cluster.ca_fingerprint).map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = OffsetDateTime::now_utc();
    let expires_at = now + ttl;
    let cmd = Command::CreateJoinToken { digest: token.digest(), expires_at, created_by: user.name.clone(), now };
    state.store.execute(cmd).await??;
    audit(&user, "create", "JoinToken", "", "created");
    let body = JoinTokenBody { token: token.reveal().to_owned(), expires_at };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The cluster CA certificate (public): a joining node fetches it and checks it
/// against its token's fingerprint before sending the token.
pub async fn join_ca(State(state): State<AppState>) -> ApiResult<Response> {
    if state.cluster.ca_cert_pem.is_empty() {
        return Err(ApiError::Unavailable("this node has no cluster CA".into()));
    }
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], state.cluster.ca_cert_pem.clone())
        .into_response())
}

/// A new node joins: the token is checked and used (a replicated command), the
/// node's CSR signed, the node added to the membership; the answer carries its
/// certificate, the CA and the cluster's facts.
pub async fn join(State(state): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Json<JoinResponse>> {
    let bytes = read_body(&headers, body, MAX_JOIN_BODY).await?;
    let req: JoinRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("join request: {e}")))?;
    let token: JoinToken =
        req.token.parse().map_err(|e: crate::cluster::token::Malformed| ApiError::BadRequest(e.to_string()))?;
    let cluster = &state.cluster;
    if cluster.ca_fingerprint.is_empty() {
        return Err(ApiError::Unavailable("this node has no cluster CA".into()));
    }
    if token.ca_fingerprint() != cluster.ca_fingerprint {
        return Err(ApiError::Forbidden("join token was made for another cluster (its CA fingerprint differs)".into()));
    }
    req.node
        .parse::<api_types::Name>()
        .map_err(|e| ApiError::invalid_field("join request is invalid", "node", e.to_string()))?;
    if req.advertise.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
        return Err(ApiError::invalid_field("join request is invalid", "advertise", "must be HOST:PORT"));
    }
    let key = crate::tls::csr_key_digest(&req.csr)
        .map_err(|e| ApiError::invalid_field("join request is invalid", "csr", e.to_string()))?;
    // Read first: a token this cluster never made is refused without a replicated write.
    let now = OffsetDateTime::now_utc();
    let record = state.store.join_token(&token.digest())?.ok_or_else(crate::store::unknown_join_token)?;
    if let Some(refusal) = record.refusal(&req.node, &key, now) {
        tracing::warn!(node = %req.node, reason = %refusal, "refused a join");
        return Err(refusal.into());
    }
    // A token must not mint a second certificate for an existing member's name, unless
    // this is the same node (same key) retrying a join whose answer it never got.
    if cluster.membership.is_member(&req.node) && !record.is_retry_of(&req.node, &key) {
        return Err(ApiError::Conflict(format!(
            "a node named {:?} is already a member; join with another name, or remove it first",
            req.node
        )));
    }
    let consume = Command::ConsumeJoinToken { digest: token.digest(), node: req.node.clone(), key, now };
    if let Err(rejection) = state.store.execute(consume).await? {
        tracing::warn!(node = %req.node, reason = %rejection, "refused a join");
        return Err(rejection.into());
    }
    let key_path = cluster.data_dir.join("ca.key");
    let ca_key = std::fs::read_to_string(&key_path)
        .map_err(|e| ApiError::Internal(format!("cannot read {}: {e}", key_path.display())))?;
    let certificate = crate::tls::sign_csr(&ca_key, &req.csr, &req.node).map_err(|e| match e {
        crate::tls::SignError::Sign(e) => ApiError::Internal(format!("cannot sign: {e}")),
        e => ApiError::invalid_field("join request is invalid", "csr", e.to_string()),
    })?;
    cluster
        .membership
        .add_member(&req.node, &req.advertise)
        .await
        .map_err(|e| ApiError::Unavailable(format!("cannot add node {:?} to the cluster: {e}", req.node)))?;
    tracing::info!(target: "audit", user = "join-token", action = "join", kind = "Node", name = %req.node, outcome = "joined");
    Ok(Json(JoinResponse {
        cluster_id: cluster.membership.cluster_id(),
        certificate,
        ca_cert: cluster.ca_cert_pem.clone(),
        ca_key,
        members: cluster.membership.members(),
    }))
}

/// Who the calling member is: the smallest node-to-node route, proving the peer check.
pub async fn peer_whoami(peer: PeerNode) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "node": peer.0 }))
}

/// Largest node-to-node body: a batch of log entries or a snapshot piece (64 KiB),
/// with room for entries that each hold a group of commands.
const MAX_PEER_BODY: usize = 64 * 1024 * 1024;

/// Raft RPCs, forwarded writes and membership changes, for members only: every
/// request must carry a member's certificate ([`PeerNode`]), whatever its route.
pub fn peer_routes(state: &AppState) -> axum::Router<AppState> {
    crate::cluster::peer_routes(state.store.clone())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), only_members))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_PEER_BODY))
}

/// Lets members through, and hands a stream ([`crate::cluster::peer_stream`]) what it
/// needs to check the member again for each frame and to end on shutdown.
async fn only_members(
    State(state): State<AppState>,
    peer: PeerNode,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let membership = state.cluster.membership.clone();
    let name = peer.0.clone();
    request.extensions_mut().insert(crate::cluster::peer_stream::PeerSession {
        peer: peer.0,
        still_member: Arc::new(move || membership.is_member(&name)),
        shutdown: state.shutdown.clone(),
    });
    next.run(request).await
}

/// The join routes and the peer check's own route (not in the OpenAPI document:
/// they are not for users).
pub fn cluster_routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/cluster/join/ca", get(join_ca))
        .route("/cluster/join", post(join))
        .route("/cluster/peer", get(peer_whoami))
}
