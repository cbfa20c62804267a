//! The webhook listener: GitHub delivers `workflow_job` events here.
//!
//! # Guarantees
//! - The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body) is checked
//!   against every configured secret in constant time before anything is parsed; a
//!   missing or wrong one is 401 and nothing is stored.
//! - `workflow_job` is answered 202 only after its command committed, so a crash
//!   after the answer loses nothing; processing (applications, runners) is
//!   asynchronous. `ping` is 200; other events are 202 and ignored.
//! - Bodies over 25 MiB (GitHub's own cap) are 413.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::gate::GithubGate;
use crate::store::gates::{GateJobEvent, rank};

/// GitHub caps payloads at 25 MB.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

/// Whether `signature` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under one of `secrets`.
pub fn signature_ok(secrets: &[Vec<u8>], body: &[u8], signature: Option<&str>) -> bool {
    let Some(hex_sig) = signature.and_then(|s| s.trim().strip_prefix("sha256=")) else { return false };
    let Ok(tag) = hex::decode(hex_sig) else { return false };
    secrets.iter().any(|secret| {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else { return false };
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&tag).is_ok()
    })
}

/// The job event a `workflow_job` payload carries; `None` if it is malformed.
pub fn parse_job(body: &Value) -> Option<(String, GateJobEvent)> {
    let action = body.get("action")?.as_str()?.to_owned();
    let job = body.get("workflow_job")?;
    let rank = match action.as_str() {
        "waiting" => rank::WAITING,
        "queued" => rank::QUEUED,
        "in_progress" => rank::IN_PROGRESS,
        "completed" => rank::COMPLETED,
        _ => return None,
    };
    let labels =
        job.get("labels")?.as_array()?.iter().filter_map(Value::as_str).map(str::to_lowercase).collect::<Vec<_>>();
    // `runner_*` are null while queued (octokit's example fills them in wrongly).
    let runner_name = if rank >= rank::IN_PROGRESS {
        job.get("runner_name").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
    } else {
        None
    };
    Some((
        action,
        GateJobEvent {
            id: job.get("id")?.as_u64()?,
            repo: body.pointer("/repository/full_name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            run_id: job.get("run_id").and_then(Value::as_u64).unwrap_or(0),
            labels,
            rank,
            runner_name,
            conclusion: job.get("conclusion").and_then(Value::as_str).map(str::to_owned),
        },
    ))
}

/// The gates served on one address, by path.
type Routes = Arc<BTreeMap<String, Arc<GithubGate>>>;

async fn receive(State(routes): State<Routes>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let Some(gate) = routes.get(uri.path()) else {
        return (StatusCode::NOT_FOUND, "no gate here\n").into_response();
    };
    let secrets = gate.hook_secrets();
    let sig = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    if !signature_ok(&secrets, &body, sig) {
        warn!(gate = %gate.name, "webhook refused: missing or wrong X-Hub-Signature-256");
        gate.note_error("a webhook delivery had a missing or wrong signature (check webhook.secrets)");
        return (StatusCode::UNAUTHORIZED, "bad signature\n").into_response();
    }
    let event = headers.get("x-github-event").and_then(|v| v.to_str().ok()).unwrap_or("");
    let guid = headers.get("x-github-delivery").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    match event {
        "ping" => {
            info!(gate = %gate.name, "webhook ping");
            (StatusCode::OK, "pong\n").into_response()
        }
        "workflow_job" => {
            let Ok(value) = serde_json::from_slice::<Value>(&body) else {
                return (StatusCode::BAD_REQUEST, "the body is not JSON\n").into_response();
            };
            let Some((action, job)) = parse_job(&value) else {
                return (StatusCode::BAD_REQUEST, "not a workflow_job payload\n").into_response();
            };
            match gate.record(&guid, &action, job).await {
                Ok(()) => (StatusCode::ACCEPTED, "accepted\n").into_response(),
                Err(e) => {
                    warn!(gate = %gate.name, error = %e, "could not record a webhook delivery");
                    (StatusCode::SERVICE_UNAVAILABLE, "cannot record the event now; redeliver it\n").into_response()
                }
            }
        }
        _ => (StatusCode::ACCEPTED, "ignored\n").into_response(),
    }
}

/// Serves the webhook endpoints of `gates` (grouped by listen address) over TLS
/// until `stop`.
pub fn serve(
    gates: &[Arc<GithubGate>],
    tls: Arc<rustls::ServerConfig>,
    stop: CancellationToken,
) -> Result<Vec<SocketAddr>, String> {
    let mut by_addr: BTreeMap<SocketAddr, BTreeMap<String, Arc<GithubGate>>> = BTreeMap::new();
    for g in gates {
        let (addr, path) = (g.config.webhook.listen, g.config.webhook.path.clone());
        if by_addr.entry(addr).or_default().insert(path.clone(), g.clone()).is_some() {
            return Err(format!("two gates listen on {addr}{path}"));
        }
    }
    let mut bound = Vec::new();
    for (addr, routes) in by_addr {
        let listener = std::net::TcpListener::bind(addr).map_err(|e| format!("webhook listener {addr}: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| format!("webhook listener {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        bound.push(local);
        for g in routes.values() {
            *g.bound.lock().unwrap_or_else(|e| e.into_inner()) = Some(local);
        }
        let router = Router::new()
            .fallback(axum::routing::post(receive))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(Arc::new(routes));
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp(listener)
            .map_err(|e| e.to_string())?
            .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(axum_server::tls_rustls::RustlsConfig::from_config(
                tls.clone(),
            )))
            .handle(handle.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            handle.graceful_shutdown(Some(std::time::Duration::from_secs(2)));
        });
        tokio::spawn(async move {
            if let Err(e) = server.serve(router.into_make_service()).await {
                warn!(addr = %local, error = %e, "webhook listener failed");
            }
        });
        info!(addr = %local, "gate webhook listener");
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_test_vector_verifies() {
        let secrets = vec![b"It's a Secret to Everybody".to_vec()];
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(signature_ok(&secrets, b"Hello, World!", Some(sig)));
        assert!(!signature_ok(&secrets, b"Hello, World?", Some(sig)));
        assert!(!signature_ok(&secrets, b"Hello, World!", None));
        assert!(!signature_ok(&[b"other".to_vec()], b"Hello, World!", Some(sig)));
        // A rotated secret: any one of them matches.
        assert!(signature_ok(&[b"new".to_vec(), secrets[0].clone()], b"Hello, World!", Some(sig)));
    }

    #[test]
    fn queued_payloads_ignore_runner_fields() {
        let body = serde_json::json!({"action": "queued", "repository": {"full_name": "acme/app"},
            "workflow_job": {"id": 7, "run_id": 3, "labels": ["Self-Hosted", "ubuntu-ci"], "runner_name": "someone"}});
        let (action, job) = parse_job(&body).expect("parses");
        assert_eq!(action, "queued");
        assert_eq!(job.labels, vec!["self-hosted", "ubuntu-ci"]);
        assert_eq!(job.runner_name, None);
    }
}
