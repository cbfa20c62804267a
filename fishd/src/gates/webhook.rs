//! The webhook listener: GitHub delivers `workflow_job` events here.
//!
//! # Guarantees
//! - The signature (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body) is checked
//!   against every configured secret in constant time before anything is parsed; a
//!   missing or wrong one is 401 and nothing is stored.
//! - `workflow_job` is answered 202 only after its command committed, so a crash
//!   after the answer loses nothing; processing (applications, runners) is
//!   asynchronous. `ping` is 200; other events are 202 and ignored.
//! - A body over `webhook.maxBodyBytes` (1 MiB by default; `workflow_job` payloads
//!   are tens of KiB) is 413: on its `Content-Length` before a byte of it is read,
//!   or as soon as a body without one grows past the limit. Only a body within the
//!   limit is buffered, for the signature check over its raw bytes.
//! - The listener has the API's connection-level defences (see [`crate::listener`]):
//!   at most `webhook.maxConnections` open connections (more are closed on accept),
//!   and `webhook.headerReadTimeout` for the TLS handshake, the first bytes and each
//!   request's headers. A whole request, body included, gets `webhook.requestTimeout`
//!   (408 after it). Gates sharing an address share one listener, with the largest
//!   of their limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use futures::StreamExt;

use super::gate::GithubGate;
use crate::listener::GuardedAcceptor;
use crate::store::gates::{GateJobEvent, rank};

/// The limits of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    /// The limits of a listener shared by `gates` (the largest of each).
    pub fn of<'a>(gates: impl IntoIterator<Item = &'a GithubGate>) -> Limits {
        let mut l = Limits {
            max_body: 0,
            max_connections: 0,
            header_read_timeout: Duration::ZERO,
            request_timeout: Duration::ZERO,
        };
        for g in gates {
            let h = &g.config.webhook;
            l.max_body = l.max_body.max(h.max_body_bytes);
            l.max_connections = l.max_connections.max(h.max_connections);
            l.header_read_timeout = l.header_read_timeout.max(h.header_read_timeout.get());
            l.request_timeout = l.request_timeout.max(h.request_timeout.get());
        }
        l
    }
}

/// Reads a body of at most `limit` bytes. `None`: it is larger (declared or sent).
/// A declared length over the limit is refused before anything is read.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Option<Bytes>, axum::Error> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

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

/// The gates served on one address, by path, and the listener's limits.
struct Served {
    routes: BTreeMap<String, Arc<GithubGate>>,
    limits: Limits,
}

async fn receive(State(served): State<Arc<Served>>, uri: axum::http::Uri, headers: HeaderMap, body: Body) -> Response {
    let limit = served.limits.request_timeout;
    let path = uri.path().to_owned();
    match tokio::time::timeout(limit, handle(&served, uri, headers, body)).await {
        Ok(r) => r,
        Err(_) => {
            warn!(%path, timeout_s = limit.as_secs(), "webhook request took too long: closed");
            (StatusCode::REQUEST_TIMEOUT, [(axum::http::header::CONNECTION, "close")], "request took too long\n")
                .into_response()
        }
    }
}

async fn handle(served: &Served, uri: axum::http::Uri, headers: HeaderMap, body: Body) -> Response {
    let Some(gate) = served.routes.get(uri.path()) else {
        return (StatusCode::NOT_FOUND, "no gate here\n").into_response();
    };
    let max = served.limits.max_body;
    let body = match read_limited(&headers, body, max).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            warn!(gate = %gate.name, max, "webhook refused: body larger than webhook.maxBodyBytes");
            // Closed after the answer: the rest of the body is never read.
            let close = [(axum::http::header::CONNECTION, "close")];
            return (StatusCode::PAYLOAD_TOO_LARGE, close, format!("body larger than {max} bytes\n")).into_response();
        }
        Err(e) => return (StatusCode::BAD_REQUEST, format!("reading the body failed: {e}\n")).into_response(),
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
        let limits = Limits::of(routes.values().map(|g| g.as_ref()));
        // The body is read (bounded) by the handler itself.
        let router = Router::new()
            .fallback(axum::routing::post(receive))
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::new(Served { routes, limits }));
        let acceptor = GuardedAcceptor::new(
            axum_server::tls_rustls::RustlsAcceptor::new(axum_server::tls_rustls::RustlsConfig::from_config(
                tls.clone(),
            )),
            limits.max_connections,
            limits.header_read_timeout,
        );
        let handle = axum_server::Handle::new();
        let mut server =
            axum_server::from_tcp(listener).map_err(|e| e.to_string())?.acceptor(acceptor).handle(handle.clone());
        server
            .http_builder()
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        server.http_builder().http2().timer(hyper_util::rt::TokioTimer::new());
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
        info!(addr = %local, max_body = limits.max_body, max_connections = limits.max_connections, "gate webhook listener");
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

    fn length(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::CONTENT_LENGTH, n.into());
        h
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_without_reading() {
        // A body that never comes: reading it would hang.
        let never = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let read = tokio::time::timeout(Duration::from_secs(5), read_limited(&length(1025), never, 1024)).await;
        assert!(matches!(read, Ok(Ok(None))), "{read:?}");
    }

    #[tokio::test]
    async fn an_undeclared_body_is_cut_at_the_limit_and_one_within_it_is_read_whole() {
        let chunks = |n: usize| {
            let parts: Vec<Result<Bytes, std::io::Error>> = (0..n).map(|_| Ok(Bytes::from(vec![b'a'; 100]))).collect();
            Body::from_stream(futures::stream::iter(parts))
        };
        let none = HeaderMap::new();
        assert!(read_limited(&none, chunks(11), 1000).await.unwrap().is_none());
        assert_eq!(read_limited(&none, chunks(10), 1000).await.unwrap().map(|b| b.len()), Some(1000));
        assert_eq!(read_limited(&length(500), chunks(5), 1000).await.unwrap().map(|b| b.len()), Some(500));
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
