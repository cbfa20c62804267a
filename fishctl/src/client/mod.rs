//! A typed HTTPS client for fishd's REST API (CONTRACT.md section 3).
//!
//! TLS is always verified: against the context's `ca_cert` alone when it names one
//! (the CA fishd created), otherwise against the system roots. There is no switch that
//! turns verification off. Every failure becomes one [`ClientError`] whose `Display`
//! is the single line fishctl prints.

mod watch;

use std::time::Duration;

use api_types::{ApplyResponse, ErrorBody, List, Phase, User, WatchEvent};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::context::ResolvedContext;
use crate::kind::Kind;

pub use watch::{WatchUpdate, Watcher};

/// How long to wait for a TCP connection and TLS handshake; a live node answers in
/// milliseconds, a dead one should not hang the shell.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary (non-streaming) request may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest watch line accepted; objects are small, so this only stops a runaway stream.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// fishd answered with its JSON error body.
    #[error("{}", render_error_body(.0))]
    Api(ErrorBody),
    /// Something answered with an error status but no fishd error body (a proxy, say).
    #[error("{server} answered {status}: {snippet}")]
    Status { server: String, status: StatusCode, snippet: String },
    /// No answer: connection refused, TLS failure, timeout, dropped stream.
    #[error("cannot reach {server}: {cause}")]
    Connect { server: String, cause: String },
    /// The context's server is not an http(s) URL.
    #[error("context server {0:?} is not a URL such as https://127.0.0.1:8001")]
    BadServer(String),
    /// The context's CA file cannot be read or holds no certificate.
    #[error("cannot use CA certificate {path}: {message}")]
    Ca { path: String, message: String },
    /// fishd answered 2xx with something that is not what the contract says.
    #[error("unexpected answer from {url}: {message}")]
    Decode { url: String, message: String },
}

impl ClientError {
    /// Errors worth retrying after a pause: no connection, or a server that asked us to wait.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Api(b) => matches!(b.code, 429 | 502 | 503 | 504),
            ClientError::Status { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            _ => false,
        }
    }

    /// The HTTP status of an API error, if this is one.
    pub fn api_code(&self) -> Option<u16> {
        match self {
            ClientError::Api(b) => Some(b.code),
            ClientError::Status { status, .. } => Some(status.as_u16()),
            _ => None,
        }
    }
}

/// `message: field: problem; field: problem` — the server's field paths, on one line.
pub fn render_error_body(body: &ErrorBody) -> String {
    let mut s =
        if body.message.is_empty() { format!("{:?} ({})", body.reason, body.code) } else { body.message.clone() };
    for (i, d) in body.details.iter().enumerate() {
        s.push_str(if i == 0 { ": " } else { "; " });
        s.push_str(&d.to_string());
    }
    one_line(&s)
}

/// Collapses line breaks so that an error is always one line of stderr.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Filters of a list or watch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListQuery {
    /// Labels: only this name.
    pub name: Option<String>,
    /// Applications: only this phase.
    pub phase: Option<Phase>,
    /// Applications: only this label.
    pub label: Option<String>,
}

/// A client bound to one context.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// Builds a client for `ctx`, trusting only its CA when it names one.
    pub fn new(ctx: &ResolvedContext) -> Result<Client, ClientError> {
        let base = Url::parse(&ctx.server)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some())
            .ok_or_else(|| ClientError::BadServer(ctx.server.clone()))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("fishctl/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &ctx.ca_cert {
            let ca_err = |message: String| ClientError::Ca { path: path.display().to_string(), message };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in the file".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http =
            builder.build().map_err(|e| ClientError::Connect { server: ctx.server.clone(), cause: error_chain(&e) })?;
        Ok(Client { http, base, token: ctx.token.clone() })
    }

    /// The server this client talks to, as the user wrote it.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `<server>/api/v1/<segments...>?<query>`, each segment percent-encoded.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let req = self.http.request(method, url);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req` and turns every non-2xx answer into a [`ClientError`].
    async fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.connect_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(ClientError::Api(body)),
            Err(_) => Err(ClientError::Status {
                server: self.server().to_owned(),
                status,
                snippet: one_line(&text.chars().take(200).collect::<String>()),
            }),
        }
    }

    fn connect_error(&self, e: &reqwest::Error) -> ClientError {
        let cause = if e.is_timeout() { "timed out".to_owned() } else { deepest_cause(e) };
        ClientError::Connect { server: self.server().to_owned(), cause }
    }

    async fn json<T: DeserializeOwned>(&self, resp: Response) -> Result<T, ClientError> {
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|e| self.connect_error(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode { url, message: e.to_string() })
    }

    /// `POST /api/v1/apply` with YAML documents; the server validates all before writing any.
    pub async fn apply(&self, yaml: String) -> Result<ApplyResponse, ClientError> {
        let req = self
            .request(Method::POST, self.url(&["apply"], &[]))
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .timeout(REQUEST_TIMEOUT)
            .body(yaml);
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// `POST /api/v1/apply` with options: `?dryRun=true` (nothing written; the answer
    /// carries the objects as they would be stored), `?applyset=NAME[&prune=true]`.
    pub async fn apply_with(
        &self,
        yaml: String,
        dry_run: bool,
        applyset: Option<&str>,
        prune: bool,
    ) -> Result<ApplyResponse, ClientError> {
        let mut query: Vec<(&str, String)> = Vec::new();
        if dry_run {
            query.push(("dryRun", "true".into()));
        }
        if let Some(set) = applyset {
            query.push(("applyset", set.to_owned()));
            if prune {
                query.push(("prune", "true".into()));
            }
        }
        let req = self
            .request(Method::POST, self.url(&["apply"], &query))
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .timeout(REQUEST_TIMEOUT)
            .body(yaml);
        let resp = self.send(req).await?;
        self.json(resp).await
    }

    /// `GET /api/v1/<kind>/<name>`, `None` on 404.
    pub async fn get_opt(&self, kind: Kind, name: &str) -> Result<Option<Value>, ClientError> {
        match self.get(kind, name).await {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api(body)) if body.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /api/v1/users/<name>/token`: a new token; the old one stops working.
    pub async fn rotate_token(&self, name: &str) -> Result<(String, String), ClientError> {
        #[derive(serde::Deserialize)]
        struct Rotated {
            user: String,
            token: String,
        }
        let url = self.url(&["users", name, "token"], &[]);
        let resp = self.send(self.request(Method::POST, url).timeout(REQUEST_TIMEOUT)).await?;
        let r: Rotated = self.json(resp).await?;
        Ok((r.user, r.token))
    }

    /// `GET /api/v1/backup`, as a raw byte stream (no overall timeout: a big store
    /// takes as long as it takes).
    pub async fn backup(&self) -> Result<ByteStream, ClientError> {
        let url = self.url(&["backup"], &[]);
        let resp = self.send(self.request(Method::GET, url)).await?;
        Ok(ByteStream { client: self.clone(), resp })
    }

    /// `GET /api/v1/<kind>`, items left untyped so that `-o json` shows every field the server sent.
    pub async fn list(&self, kind: Kind, query: &ListQuery) -> Result<List<Value>, ClientError> {
        let url = self.url(&[kind.plural()], &query_pairs(query));
        let resp = self.send(self.request(Method::GET, url).timeout(REQUEST_TIMEOUT)).await?;
        self.json(resp).await
    }

    /// `GET /api/v1/<kind>/<name>`.
    pub async fn get(&self, kind: Kind, name: &str) -> Result<Value, ClientError> {
        let url = self.url(&[kind.plural(), name], &[]);
        let resp = self.send(self.request(Method::GET, url).timeout(REQUEST_TIMEOUT)).await?;
        self.json(resp).await
    }

    /// `GET /api/v1/<kind>/<name>`, typed.
    pub async fn get_typed<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<T, ClientError> {
        let url = self.url(&[kind.plural(), name], &[]);
        let resp = self.send(self.request(Method::GET, url).timeout(REQUEST_TIMEOUT)).await?;
        self.json(resp).await
    }

    /// `DELETE /api/v1/<kind>/<name>[?version=N]`: the status (an application answers 200
    /// when removed, 202 when only asked to deallocate) and the JSON body, if any.
    pub async fn delete(&self, kind: Kind, name: &str, version: Option<u32>) -> Result<(u16, Value), ClientError> {
        let query: Vec<(&str, String)> = version.map(|v| ("version", v.to_string())).into_iter().collect();
        let url = self.url(&[kind.plural(), name], &query);
        let resp = self.send(self.request(Method::DELETE, url).timeout(REQUEST_TIMEOUT)).await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| self.connect_error(&e))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// `POST /api/v1/applications/<name>/deallocate`; idempotent.
    pub async fn deallocate(&self, name: &str) -> Result<(), ClientError> {
        let url = self.url(&["applications", name, "deallocate"], &[]);
        self.send(self.request(Method::POST, url).timeout(REQUEST_TIMEOUT)).await?;
        Ok(())
    }

    /// `POST /api/v1/users`; the answer carries the new user's token, once.
    pub async fn create_user(&self, user: &User) -> Result<User, ClientError> {
        let url = self.url(&["users"], &[]);
        let resp = self.send(self.request(Method::POST, url).json(user).timeout(REQUEST_TIMEOUT)).await?;
        self.json(resp).await
    }

    /// `POST /api/v1/cluster/join-tokens`; the answer carries the token, once.
    pub async fn create_join_token(
        &self,
        ttl: Option<api_types::HumanDuration>,
    ) -> Result<api_types::JoinToken, ClientError> {
        let url = self.url(&["cluster", "join-tokens"], &[]);
        let body = api_types::JoinTokenRequest { ttl };
        let resp = self.send(self.request(Method::POST, url).json(&body).timeout(REQUEST_TIMEOUT)).await?;
        self.json(resp).await
    }

    /// `POST /api/v1/nodes/<name>/maintenance`.
    pub async fn set_maintenance(&self, node: &str, enabled: bool) -> Result<(), ClientError> {
        let url = self.url(&["nodes", node, "maintenance"], &[]);
        let body = serde_json::json!({ "enabled": enabled });
        self.send(self.request(Method::POST, url).json(&body).timeout(REQUEST_TIMEOUT)).await?;
        Ok(())
    }

    /// `GET /api/v1/whoami`.
    pub async fn whoami(&self) -> Result<User, ClientError> {
        let url = self.url(&["whoami"], &[]);
        let resp = self.send(self.request(Method::GET, url).timeout(REQUEST_TIMEOUT)).await?;
        self.json(resp).await
    }

    /// Opens `GET /api/v1/<kind>?watch=true[&resourceVersion=N]`; see [`Watcher`] for
    /// the reconnecting loop built on it.
    pub async fn watch(
        &self,
        kind: Kind,
        query: &ListQuery,
        resource_version: Option<&str>,
    ) -> Result<EventStream, ClientError> {
        let mut pairs = query_pairs(query);
        pairs.push(("watch", "true".into()));
        if let Some(rv) = resource_version {
            pairs.push(("resourceVersion", rv.to_owned()));
        }
        let url = self.url(&[kind.plural()], &pairs);
        let resp = self.send(self.request(Method::GET, url)).await?;
        Ok(EventStream { client: self.clone(), resp, lines: LineBuffer::default() })
    }

    /// `GET /api/v1/applications/<name>/logs[?follow=true]`, as a raw byte stream.
    pub async fn logs(&self, name: &str, follow: bool) -> Result<ByteStream, ClientError> {
        let query: Vec<(&str, String)> = if follow { vec![("follow", "true".into())] } else { vec![] };
        let url = self.url(&["applications", name, "logs"], &query);
        let resp = self.send(self.request(Method::GET, url)).await?;
        Ok(ByteStream { client: self.clone(), resp })
    }
}

fn query_pairs(q: &ListQuery) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(n) = &q.name {
        pairs.push(("name", n.clone()));
    }
    if let Some(p) = q.phase {
        pairs.push(("phase", p.as_str().to_owned()));
    }
    if let Some(l) = &q.label {
        pairs.push(("label", l.clone()));
    }
    pairs
}

/// A stream of watch events, one JSON object a line.
#[derive(Debug)]
pub struct EventStream {
    client: Client,
    resp: Response,
    lines: LineBuffer,
}

impl EventStream {
    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        loop {
            match self.lines.next_line() {
                Ok(Some(line)) => return Some(self.parse(&line)),
                Ok(None) => {}
                Err(message) => return Some(Err(self.decode_error(message))),
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.lines.push(&chunk),
                Ok(None) => return self.lines.rest().map(|line| self.parse(&line)),
                Err(e) => return Some(Err(self.client.connect_error(&e))),
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<WatchEvent, ClientError> {
        serde_json::from_slice(line).map_err(|e| self.decode_error(format!("bad watch event: {e}")))
    }

    fn decode_error(&self, message: String) -> ClientError {
        ClientError::Decode { url: self.resp.url().to_string(), message }
    }
}

/// Splits a byte stream into non-empty lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
}

impl LineBuffer {
    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete non-blank line, without its end.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let line = line.trim_ascii();
            if !line.is_empty() {
                return Ok(Some(line.to_vec()));
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err(format!("a watch line is longer than {MAX_LINE} bytes"));
        }
        Ok(None)
    }

    /// What is left when the stream ends, if it is not blank.
    pub fn rest(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.buf);
        let rest = rest.trim_ascii();
        (!rest.is_empty()).then(|| rest.to_vec())
    }
}

/// The raw body of a streaming answer.
#[derive(Debug)]
pub struct ByteStream {
    client: Client,
    resp: Response,
}

impl ByteStream {
    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<bytes::Bytes, ClientError>> {
        match self.resp.chunk().await {
            Ok(Some(c)) => Some(Ok(c)),
            Ok(None) => None,
            Err(e) => Some(Err(self.client.connect_error(&e))),
        }
    }
}

/// Every message of an error's source chain, `: `-joined, without repeats.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        if !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        cur = err.source();
    }
    one_line(&parts.join(": "))
}

/// The innermost message of an error's chain: for a transport error that is the one
/// that says what went wrong ("Connection refused", "invalid peer certificate: UnknownIssuer").
pub fn deepest_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use api_types::{ErrorReason, FieldError};

    #[test]
    fn error_body_is_one_line_with_field_paths() {
        let body = ErrorBody {
            code: 422,
            reason: ErrorReason::Invalid,
            message: "label \"x\" is invalid".into(),
            details: vec![
                FieldError { field: "spec.definitions[0].resources.cpu".into(), message: "must be > 0".into() },
                FieldError { field: "spec.definitions[0].driver".into(), message: "unknown\ndriver".into() },
            ],
        };
        assert_eq!(
            ClientError::Api(body).to_string(),
            "label \"x\" is invalid: spec.definitions[0].resources.cpu: must be > 0; \
             spec.definitions[0].driver: unknown driver"
        );
        let plain = ErrorBody::new(ErrorReason::NotFound, "application \"b\" not found");
        assert_eq!(ClientError::Api(plain).to_string(), "application \"b\" not found");
    }

    #[test]
    fn line_buffer_splits_across_chunks() {
        let mut lb = LineBuffer::default();
        lb.push(b"{\"a\":1}\n\n{\"b\"");
        assert_eq!(lb.next_line().unwrap().as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(lb.next_line().unwrap(), None);
        lb.push(b":2}\r\n{\"c\":3}");
        assert_eq!(lb.next_line().unwrap().as_deref(), Some(&b"{\"b\":2}"[..]));
        assert_eq!(lb.next_line().unwrap(), None);
        assert_eq!(lb.rest().as_deref(), Some(&b"{\"c\":3}"[..]));
        assert_eq!(lb.rest(), None);
    }

    #[test]
    fn urls_are_encoded_under_api_v1() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ctx = ResolvedContext {
            name: "x".into(),
            server: "https://127.0.0.1:8001/".into(),
            ca_cert: None,
            user: None,
            token: None,
        };
        let c = Client::new(&ctx).unwrap();
        assert_eq!(c.server(), "https://127.0.0.1:8001");
        let u = c.url(&["applications", "a b/c", "deallocate"], &[("watch", "true".into())]);
        assert_eq!(u.as_str(), "https://127.0.0.1:8001/api/v1/applications/a%20b%2Fc/deallocate?watch=true");
    }

    #[test]
    fn bad_server_and_ca_are_clear() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut ctx = ResolvedContext {
            name: "x".into(),
            server: "127.0.0.1:8001".into(),
            ca_cert: None,
            user: None,
            token: None,
        };
        assert!(matches!(Client::new(&ctx), Err(ClientError::BadServer(_))));
        ctx.server = "https://127.0.0.1:8001".into();
        ctx.ca_cert = Some("/nonexistent/ca.crt".into());
        let e = Client::new(&ctx).unwrap_err().to_string();
        assert!(e.starts_with("cannot use CA certificate /nonexistent/ca.crt: "), "{e}");
    }
}
