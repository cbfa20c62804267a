//! fishctl's integration tests: the binary's surface (help, completions, exit codes,
//! error lines), the example manifests, and the client against a small HTTPS fake of
//! fishd's API with its own CA, so that TLS verification is exercised for real.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use api_types::{Format, Manifest, WatchEventType};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fishctl::client::{Client, ListQuery, WatchUpdate, Watcher};
use fishctl::context::ResolvedContext;
use fishctl::kind::Kind;
use serde_json::{Value, json};

/// Every await in these tests ends within this.
const TIMEOUT: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------- binary surface

/// Runs the fishctl binary with a config that does not exist and a private HOME, so
/// that nothing from the developer's machine leaks in.
async fn fishctl(args: &[&str], config: Option<&Path>) -> std::process::Output {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fishctl"));
    cmd.args(args)
        .env("HOME", home.path())
        .env("RUST_BACKTRACE", "0")
        .env_remove("FISHCTL_LOG")
        .env("FISHCTL_CONFIG", config.unwrap_or(&home.path().join("none.yaml")))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(TIMEOUT, cmd.output()).await.expect("fishctl timed out").expect("run fishctl")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn help_lists_every_verb() {
    let o = fishctl(&["--help"], None).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let help = stdout(&o);
    for verb in [
        "apply",
        "get",
        "describe",
        "deallocate",
        "delete",
        "create",
        "maintenance",
        "logs",
        "whoami",
        "version",
        "completions",
        "config",
    ] {
        assert!(help.lines().any(|l| l.trim_start().starts_with(&format!("{verb} "))), "{verb} missing:\n{help}");
    }
}

#[tokio::test]
async fn version_and_completions_need_no_config() {
    let o = fishctl(&["version"], None).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("fishctl {}\n", env!("CARGO_PKG_VERSION")));
    let o = fishctl(&["completions", "fish"], None).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("complete -c fishctl"));
}

#[tokio::test]
async fn missing_config_is_one_line_and_exit_1() {
    let o = fishctl(&["get", "apps"], None).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: no config file at ") && err.contains("none.yaml"), "{err}");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let o = fishctl(&["get", "pods"], None).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid value 'pods'"), "{}", stderr(&o));
    let o = fishctl(&["get", "nodes", "--phase", "NEW"], None).await;
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "error: --phase and --label apply to applications only\n");
}

/// The checked-in completions must match what the binary generates. To regenerate:
/// `UPDATE_COMPLETIONS=1 cargo test -p fishctl --test cli completions_are_current`.
#[test]
fn completions_are_current() {
    use fishctl::cli::ShellArg;
    let dir = workspace_root().join("completions");
    let update = std::env::var_os("UPDATE_COMPLETIONS").is_some();
    let mut stale = Vec::new();
    for (shell, file) in
        [(ShellArg::Bash, "fishctl.bash"), (ShellArg::Zsh, "_fishctl"), (ShellArg::Fish, "fishctl.fish")]
    {
        let want = fishctl::commands::completions::generate(shell);
        let path = dir.join(file);
        if update {
            std::fs::create_dir_all(&dir).expect("create completions/");
            std::fs::write(&path, &want).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        } else if std::fs::read(&path).ok().as_deref() != Some(&want[..]) {
            stale.push(format!("completions/{file}"));
        }
    }
    assert!(
        stale.is_empty(),
        "{} out of date with the CLI; regenerate with:\n  UPDATE_COMPLETIONS=1 cargo test -p fishctl --test cli completions_are_current",
        stale.join(", ")
    );
}

/// Every example under manifests/ (ours and the other drivers') must parse and validate.
#[test]
fn every_manifest_parses() {
    let root = workspace_root().join("manifests");
    let dir = root.join("test");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read manifests/") {
            let p = e.expect("dir entry").path();
            // manifests/monitoring holds Prometheus and Grafana files, not Aquarium manifests.
            if p.is_dir() && p.file_name().is_some_and(|n| n == "monitoring") {
                continue;
            } else if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("test-label.yaml")), "{files:?}");
    for f in &files {
        let text = std::fs::read(f).expect("read manifest");
        let docs = api_types::parse_manifests(&text, Format::Yaml).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        assert!(!docs.is_empty(), "{}", f.display());
    }
    let label = std::fs::read(dir.join("test-label.yaml")).expect("read");
    let docs = api_types::parse_manifests(&label, Format::Yaml).expect("parse");
    let [Manifest::Label(l)] = &docs[..] else { panic!("test-label.yaml: {docs:?}") };
    assert_eq!(l.metadata.name_str(), "test-small");
    assert_eq!(l.spec.definitions[0].driver, "test");
    assert_eq!((l.spec.definitions[0].resources.cpu, l.spec.definitions[0].resources.ram), (1, 1));
    let app = std::fs::read(dir.join("test-app.yaml")).expect("read");
    let docs = api_types::parse_manifests(&app, Format::Yaml).expect("parse");
    let [Manifest::Application(a)] = &docs[..] else { panic!("test-app.yaml: {docs:?}") };
    assert_eq!(a.spec.label.name.as_str(), "test-small");
}

// ---------------------------------------------------------------- a fake fishd over HTTPS

const TOKEN: &str = "test-token";

#[derive(Default)]
struct Fake {
    watch_calls: AtomicUsize,
    watch_queries: Mutex<Vec<String>>,
    applied: Mutex<Vec<(String, String)>>,
}

fn app_json(name: &str, rv: u64, phase: &str) -> Value {
    json!({"apiVersion": "aquarium.fish/v1", "kind": "Application",
           "metadata": {"name": name, "resourceVersion": rv.to_string(), "createdAt": "2026-11-21T10:00:00Z"},
           "spec": {"label": "test-small"}, "status": {"phase": phase, "node": "host-a"}})
}

fn error(code: u16, reason: &str, message: &str, details: Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"code": code, "reason": reason, "message": message, "details": details})))
        .into_response()
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {TOKEN}"))
}

fn lines(events: &[Value]) -> Response {
    let body: String = events.iter().map(|e| e.to_string() + "\n").collect();
    Response::new(Body::from(body))
}

async fn applications(State(f): State<Arc<Fake>>, Query(q): Query<HashMap<String, String>>, h: HeaderMap) -> Response {
    if !authorized(&h) {
        return error(401, "Unauthorized", "missing or invalid credentials", json!([]));
    }
    if q.get("watch").map(String::as_str) != Some("true") {
        return axum::Json(json!({"apiVersion": "aquarium.fish/v1", "kind": "ApplicationList",
                                 "metadata": {"resourceVersion": "10"}, "items": [app_json("b", 9, "NEW")]}))
        .into_response();
    }
    let mut keys: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    keys.sort();
    f.watch_queries.lock().expect("lock").push(keys.join("&"));
    // A scripted server: each connection ends early, as a restarting fishd would.
    match f.watch_calls.fetch_add(1, Ordering::SeqCst) {
        0 => lines(&[json!({"type": "ADDED", "object": app_json("a", 5, "NEW")})]),
        1 => lines(&[
            json!({"type": "MODIFIED", "object": app_json("a", 6, "ALLOCATED")}),
            json!({"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old"}}),
        ]),
        _ => lines(&[json!({"type": "DELETED", "object": app_json("a", 11, "DEALLOCATED")})]),
    }
}

async fn application(UrlPath(name): UrlPath<String>, h: HeaderMap) -> Response {
    if !authorized(&h) {
        return error(401, "Unauthorized", "missing or invalid credentials", json!([]));
    }
    if name == "test-app-1" {
        return axum::Json(app_json(&name, 3, "ALLOCATED")).into_response();
    }
    error(404, "NotFound", &format!("application {name:?} not found"), json!([]))
}

async fn label(UrlPath(name): UrlPath<String>) -> Response {
    error(
        422,
        "Invalid",
        &format!("label {name:?} is invalid"),
        json!([{"field": "spec.definitions[0].resources.cpu", "message": "must be > 0"},
               {"field": "spec.definitions[0].driver", "message": "no node has driver \"vm\""}]),
    )
}

async fn apply(State(f): State<Arc<Fake>>, h: HeaderMap, body: String) -> Response {
    let ct = h.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    f.applied.lock().expect("lock").push((ct, body.clone()));
    let docs = match api_types::parse_manifests(body.as_bytes(), Format::Yaml) {
        Ok(d) => d,
        Err(e) => return error(422, "Invalid", &e.to_string(), json!([])),
    };
    let results: Vec<Value> = docs
        .iter()
        .map(|d| match d {
            Manifest::Label(l) => {
                json!({"kind": "Label", "name": l.metadata.name_str(), "version": 1, "action": "created"})
            }
            other => json!({"kind": other.kind(), "name": other.metadata().name_str(), "action": "unchanged"}),
        })
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}

struct Server {
    url: String,
    dir: tempfile::TempDir,
    fake: Arc<Fake>,
    _handle: axum_server::Handle<std::net::SocketAddr>,
}

impl Server {
    /// A config file for this server; `ca` picks which CA file the context trusts.
    fn config(&self, ca: &Path, token: &str) -> PathBuf {
        let path = self.dir.path().join(format!("fishctl-{token}.yaml"));
        let text = format!(
            "current_context: fake\ncontexts:\n  fake:\n    server: {}\n    ca_cert: {}\n    user: admin\n    token: {token}\n",
            self.url,
            ca.display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    fn client(&self) -> Client {
        Client::new(&ResolvedContext {
            name: "fake".into(),
            server: self.url.clone(),
            ca_cert: Some(self.ca()),
            user: None,
            token: Some(TOKEN.into()),
        })
        .expect("client")
    }
}

fn make_ca() -> (rcgen::CertificateParams, rcgen::KeyPair, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "fishctl test CA");
    let key = rcgen::KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("ca cert");
    (params, key, cert.pem())
}

async fn start() -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_params, ca_key, ca_pem) = make_ca();
    std::fs::write(dir.path().join("ca.crt"), &ca_pem).expect("write ca");
    std::fs::write(dir.path().join("other-ca.crt"), make_ca().2).expect("write other ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let tls =
        axum_server::tls_rustls::RustlsConfig::from_pem(cert.pem().into_bytes(), key.serialize_pem().into_bytes())
            .await
            .expect("tls config");

    let fake = Arc::new(Fake::default());
    let router = Router::new()
        .route("/api/v1/applications", get(applications))
        .route("/api/v1/applications/{name}", get(application))
        .route("/api/v1/labels/{name}", get(label))
        .route("/api/v1/apply", post(apply))
        .with_state(fake.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let handle = axum_server::Handle::new();
    let server = axum_server::from_tcp_rustls(listener, tls).expect("server").handle(handle.clone());
    tokio::spawn(async move { server.serve(router.into_make_service()).await });
    Server { url: format!("https://127.0.0.1:{}", addr.port()), dir, fake, _handle: handle }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_drops_and_relists_on_410() {
    let srv = start().await;
    let mut w = Watcher::new(srv.client(), Kind::Application, ListQuery::default());
    let mut next = async || tokio::time::timeout(TIMEOUT, w.next()).await.expect("watch timed out").expect("watch");
    let WatchUpdate::Event(WatchEventType::Added, a) = next().await else { panic!("expected ADDED") };
    assert_eq!(a["metadata"]["resourceVersion"], "5");
    // The server closed the stream; the watcher resumes from revision 5.
    let WatchUpdate::Event(WatchEventType::Modified, a) = next().await else { panic!("expected MODIFIED") };
    assert_eq!(a["status"]["phase"], "ALLOCATED");
    // 410: list again, hand the list over whole.
    let WatchUpdate::Resync(items) = next().await else { panic!("expected a resync") };
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "b");
    let WatchUpdate::Event(WatchEventType::Deleted, _) = next().await else { panic!("expected DELETED") };
    drop(w);
    let queries = srv.fake.watch_queries.lock().expect("lock").clone();
    assert_eq!(queries[..3], ["watch=true", "resourceVersion=5&watch=true", "resourceVersion=10&watch=true"]);
}

/// `get -w` piped: the list as a table, then one line per change, surviving the
/// server closing the stream and expiring the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_one_line_per_change() {
    use tokio::io::AsyncBufReadExt;
    let srv = start().await;
    let cfg = srv.config(&srv.ca(), TOKEN);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_fishctl"))
        .args(["get", "apps", "-w"])
        .env("FISHCTL_CONFIG", &cfg)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|l: &String| l.starts_with("DELETED")) {
        let line = tokio::time::timeout(TIMEOUT, out.next_line()).await.expect("watch output timed out");
        seen.push(line.expect("read").expect("fishctl ended early"));
    }
    child.kill().await.expect("kill");
    assert_eq!(seen[0].split_whitespace().collect::<Vec<_>>(), ["NAME", "LABEL", "PHASE", "NODE", "AGE", "MESSAGE"]);
    assert!(seen[1].starts_with("b "), "{seen:?}");
    assert_eq!(
        seen[2..],
        [
            "ADDED application/a NEW node=host-a",
            "MODIFIED application/a ALLOCATED node=host-a",
            // The 410 relist no longer has "a": the watcher says so instead of going quiet.
            "DELETED application/a ALLOCATED node=host-a",
        ]
    );
    let queries = srv.fake.watch_queries.lock().expect("lock").clone();
    assert_eq!(queries[..2], ["resourceVersion=10&watch=true", "resourceVersion=5&watch=true"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_renders_a_table_over_verified_tls() {
    let srv = start().await;
    let cfg = srv.config(&srv.ca(), TOKEN);
    let o = fishctl(&["get", "apps"], Some(&cfg)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("NAME   LABEL        PHASE   NODE     AGE"), "{out}");
    assert!(out.contains("\nb      test-small   NEW     host-a"), "{out}");
    let o = fishctl(&["get", "app", "-o", "name"], Some(&cfg)).await;
    assert_eq!(stdout(&o), "application/b\n");
    let o = fishctl(&["get", "applications", "-o", "json"], Some(&cfg)).await;
    let list: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(list["kind"], "ApplicationList");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_sends_one_request_and_waits() {
    let srv = start().await;
    let cfg = srv.config(&srv.ca(), TOKEN);
    let label = workspace_root().join("manifests/test/test-label.yaml");
    let app = workspace_root().join("manifests/test/test-app.yaml");
    let (label, app) = (label.to_str().expect("utf8"), app.to_str().expect("utf8"));
    let o = fishctl(&["apply", "-f", label, "-f", app, "--wait", "--timeout", "20s"], Some(&cfg)).await;
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("label/test-small created (version 1)\napplication/test-app-1 unchanged\n"), "{out}");
    assert!(out.contains("application/test-app-1 ALLOCATED node=host-a"), "{out}");
    let applied = srv.fake.applied.lock().expect("lock").clone();
    assert_eq!(applied.len(), 1, "one request for all documents");
    assert_eq!(applied[0].0, "application/yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line() {
    let srv = start().await;
    let cfg = srv.config(&srv.ca(), TOKEN);

    let o = fishctl(&["describe", "label", "x"], Some(&cfg)).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "error: label \"x\" is invalid: spec.definitions[0].resources.cpu: must be > 0; \
         spec.definitions[0].driver: no node has driver \"vm\"\n"
    );

    let o = fishctl(&["describe", "app", "nope"], Some(&cfg)).await;
    assert_eq!(stderr(&o), "error: application \"nope\" not found\n");

    let bad_token = srv.config(&srv.ca(), "wrong");
    let o = fishctl(&["get", "apps"], Some(&bad_token)).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "error: missing or invalid credentials\n");

    // A server whose certificate is not signed by the context's CA is refused.
    let wrong_ca = srv.config(&srv.other_ca(), TOKEN);
    let o = fishctl(&["get", "apps"], Some(&wrong_ca)).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: cannot reach {}: ", srv.url)), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let dead = srv.dir.path().join("dead.yaml");
    std::fs::write(&dead, format!("current_context: d\ncontexts:\n  d: {{server: https://127.0.0.1:{closed}}}\n"))
        .expect("write");
    let o = fishctl(&["get", "nodes"], Some(&dead)).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: cannot reach https://127.0.0.1:{closed}: ")), "{err}");

    // A manifest error names the file and the field, before anything is sent.
    let bad = srv.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Label\nmetadata: {name: x}\nspec: {definitions: [{driver: test, resources: {cpu: one}}]}\n",
    )
    .expect("write");
    let o = fishctl(&["apply", "-f", bad.to_str().expect("utf8")], Some(&cfg)).await;
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("bad.yaml: document 1 (Label \"x\") is invalid: spec.definitions[0].resources.cpu: "),
        "{err}"
    );
    assert!(srv.fake.applied.lock().expect("lock").is_empty());
}
