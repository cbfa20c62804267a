//! Handler tests: a real store in a temp dir, the real router (mostly through
//! `oneshot`), and one server over real HTTPS with a client trusting the made CA.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use api_types::{Definition, FieldError, Phase, ResourceStatus, Role, User, UserSpec};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use futures::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use uuid::Uuid;

use super::*;
use crate::auth::secrets;
use crate::drivers::{AllocateRequest, Allocated, Driver, DriverError, OwnedResource, ResourceState};
use crate::store::{ApplyItem, Command, UserRecord};

const T: Duration = Duration::from_secs(20);

/// A driver that only validates (`options.bad` is refused) and has logs in a dir.
struct FakeDriver {
    logs: PathBuf,
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &str {
        "test"
    }
    fn validate(&self, d: &Definition) -> Vec<FieldError> {
        if d.options.contains_key("bad") {
            vec![FieldError { field: "options.bad".into(), message: "is not an option of the test driver".into() }]
        } else {
            vec![]
        }
    }
    async fn available(&self) -> Result<(), String> {
        Ok(())
    }
    async fn allocate(&self, _: &AllocateRequest) -> Result<Allocated, DriverError> {
        Err(DriverError::failed("not in these tests"))
    }
    async fn inspect(&self, _: Uuid, _: &str) -> Result<ResourceState, DriverError> {
        Ok(ResourceState::Running)
    }
    async fn deallocate(&self, _: Uuid, _: &str) -> Result<(), DriverError> {
        Ok(())
    }
    async fn list_owned(&self) -> Result<Vec<OwnedResource>, DriverError> {
        Ok(vec![])
    }
    fn log_path(&self, uid: Uuid) -> Option<PathBuf> {
        Some(self.logs.join(format!("{uid}.log")))
    }
}

struct Fx {
    dir: tempfile::TempDir,
    state: AppState,
    admin: String,
    alice: String,
    bob: String,
}

async fn fixture_with(limits: ApiLimits) -> Fx {
    fixture_with_history(limits, crate::store::EVENT_HISTORY).await
}

async fn fixture_with_history(limits: ApiLimits, history: u64) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with_history(&dir.path().join("fish.redb"), history).await.unwrap();
    let mut drivers = crate::drivers::Drivers::new();
    drivers.insert("test".into(), Arc::new(FakeDriver { logs: dir.path().to_owned() }) as Arc<dyn Driver>);
    let state = AppState::new(
        store,
        "node-a".into(),
        Arc::new(drivers),
        MetaTokens::new([9; 32]),
        limits,
        CancellationToken::new(),
    );
    let mut tokens = Vec::new();
    let mut items = Vec::new();
    for (name, role, password) in
        [("admin", Role::Admin, None), ("alice", Role::User, Some("alice-password")), ("bob", Role::User, None)]
    {
        let token = secrets::new_token().unwrap();
        let user = User {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: api_types::ObjectMeta { name: name.parse().ok(), ..Default::default() },
            spec: UserSpec { roles: vec![role], password: None, rate_limit: None },
            status: Default::default(),
        };
        let password_hash = password.map(|p| secrets::hash_password(p).unwrap());
        items.push(ApplyItem::User {
            record: UserRecord { user, password_hash, token_digest: secrets::token_digest(&token) },
            uid: Uuid::now_v7(),
        });
        tokens.push(token);
    }
    state
        .store
        .execute(Command::Apply { items, owner: "test".into(), now: OffsetDateTime::now_utc() })
        .await
        .unwrap()
        .unwrap();
    let bob = tokens.pop().unwrap();
    let alice = tokens.pop().unwrap();
    let admin = tokens.pop().unwrap();
    Fx { dir, state, admin, alice, bob }
}

async fn fixture() -> Fx {
    fixture_with(ApiLimits::default()).await
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn send(state: &AppState, method: Method, uri: &str, auth: Option<&str>, body: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = auth {
        let value = if a.starts_with("Basic ") { a.to_owned() } else { format!("Bearer {a}") };
        req = req.header(header::AUTHORIZATION, value);
    }
    let req = req.body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default()).unwrap();
    let resp = tokio::time::timeout(T, router(state.clone()).oneshot(req)).await.expect("timeout").unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes =
        tokio::time::timeout(T, axum::body::to_bytes(resp.into_body(), usize::MAX)).await.expect("timeout").unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { status, headers, body }
}

fn basic(user: &str, secret: &str) -> String {
    use base64::Engine;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")))
}

const LABEL: &str = "kind: Label\nmetadata: {name: l}\nspec:\n  definitions: [{driver: test, resources: {cpu: 1, ram: 1}}]\n  metadata: {FROM_LABEL: x, OVER: label}\n";

fn app_yaml(name: &str) -> String {
    format!("kind: Application\nmetadata: {{name: {name}}}\nspec: {{label: l, metadata: {{OVER: app}}}}\n")
}

#[tokio::test]
async fn authentication_and_visibility() {
    let fx = fixture().await;
    let s = &fx.state;
    let r = send(s, Method::GET, "/api/v1/labels", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.body["reason"], "Unauthorized");
    assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(send(s, Method::GET, "/api/v1/labels", Some("fish_nope"), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&fx.alice), None).await.body["metadata"]["name"], "alice");
    // Basic with a token, with a password, with a wrong password, and a token under another name.
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&basic("bob", &fx.bob)), None).await.status, StatusCode::OK);
    let ok = send(s, Method::GET, "/api/v1/whoami", Some(&basic("alice", "alice-password")), None).await;
    assert_eq!((ok.status, ok.body["metadata"]["name"].clone()), (StatusCode::OK, json!("alice")));
    // Twice: the second is served from the verified-password cache.
    assert_eq!(
        send(s, Method::GET, "/api/v1/whoami", Some(&basic("alice", "alice-password")), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(s, Method::GET, "/api/v1/whoami", Some(&basic("alice", "wrong")), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(s, Method::GET, "/api/v1/whoami", Some(&basic("alice", &fx.bob)), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // Users may not create labels (403) but may create applications and read labels.
    let r = send(s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(LABEL)).await;
    assert_eq!((r.status, r.body["reason"].clone()), (StatusCode::FORBIDDEN, json!("Forbidden")));
    assert_eq!(send(s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await.status, StatusCode::OK);
    assert_eq!(send(s, Method::GET, "/api/v1/labels/l", Some(&fx.alice), None).await.status, StatusCode::OK);
    let r = send(s, Method::POST, "/api/v1/applications", Some(&fx.bob), Some(&app_yaml("bobs"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["metadata"]["owner"], "bob");
    assert_eq!(
        send(s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(&app_yaml("alices"))).await.status,
        StatusCode::OK
    );
    // Alice sees only her own: bob's answers 404, not 403, and is not listed.
    let r = send(s, Method::GET, "/api/v1/applications/bobs", Some(&fx.alice), None).await;
    assert_eq!((r.status, r.body["reason"].clone()), (StatusCode::NOT_FOUND, json!("NotFound")));
    assert_eq!(
        send(s, Method::POST, "/api/v1/applications/bobs/deallocate", Some(&fx.alice), None).await.status,
        StatusCode::NOT_FOUND
    );
    let list = send(s, Method::GET, "/api/v1/applications", Some(&fx.alice), None).await.body;
    assert_eq!(list["kind"], "ApplicationList");
    let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|a| a["metadata"]["name"].clone()).collect();
    assert_eq!(names, vec![json!("alices")]);
    assert_eq!(
        send(s, Method::GET, "/api/v1/applications", Some(&fx.admin), None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Admin-only routes.
    assert_eq!(send(s, Method::GET, "/api/v1/users", Some(&fx.alice), None).await.status, StatusCode::FORBIDDEN);
    assert_eq!(send(s, Method::DELETE, "/api/v1/labels/l", Some(&fx.alice), None).await.status, StatusCode::FORBIDDEN);
    // Probes need nothing.
    assert_eq!(send(s, Method::GET, "/healthz", None, None).await.status, StatusCode::OK);
    assert_eq!(send(s, Method::GET, "/readyz", None, None).await.status, StatusCode::OK);
    let m = send(s, Method::GET, "/metrics", None, None).await;
    assert!(m.body.as_str().unwrap().contains("fishd_http_requests_total"), "{:?}", m.body);
}

#[tokio::test]
async fn apply_actions_and_errors() {
    let fx = fixture().await;
    let s = &fx.state;
    let admin = fx.admin.clone();
    let apply = |body: String| {
        let admin = admin.clone();
        async move { send(s, Method::POST, "/api/v1/apply", Some(&admin), Some(&body)).await }
    };
    let r = apply(format!("{LABEL}---\n{}", app_yaml("a"))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["results"][0], json!({"kind": "Label", "name": "l", "version": 1, "action": "created"}));
    assert_eq!(r.body["results"][1]["action"], "created");
    assert_eq!(apply(LABEL.into()).await.body["results"][0]["action"], "unchanged");
    let r = apply(LABEL.replace("cpu: 1", "cpu: 2")).await;
    assert_eq!(
        (r.body["results"][0]["action"].clone(), r.body["results"][0]["version"].clone()),
        (json!("configured"), json!(2))
    );
    // JSON works too.
    let r = apply(r#"{"kind":"Application","metadata":{"name":"j"},"spec":{"label":"l:1"}}"#.into()).await;
    assert_eq!(r.body["results"][0]["action"], "created", "{:?}", r.body);

    // Bad syntax: 400 with the line.
    let r = apply("kind: Label\nmetadata: {name: x\n".into()).await;
    assert_eq!((r.status, r.body["reason"].clone()), (StatusCode::BAD_REQUEST, json!("BadRequest")));
    assert!(r.body["message"].as_str().unwrap().contains("line"), "{:?}", r.body);
    // Invalid: 422 with the field path, the document named when there are several.
    let r = apply(format!("{}---\n{}", app_yaml("ok"), LABEL.replace("cpu: 1", "cpux: 1"))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"][0]["field"], "spec.definitions[0].resources.cpux");
    assert!(r.body["message"].as_str().unwrap().starts_with("document 2"), "{:?}", r.body);
    // Drivers: unknown instance, and the driver's own validation.
    let r = apply(LABEL.replace("driver: test", "driver: docker")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["details"][0]["field"], "spec.definitions[0].driver");
    assert_eq!(r.body["details"][0]["message"], "no driver \"docker\" is configured on this node (configured: test)");
    let r = apply(LABEL.replace("ram: 1}", "ram: 1}, options: {bad: 1}")).await;
    assert_eq!(r.body["details"][0]["field"], "spec.definitions[0].options.bad", "{:?}", r.body);
    // A missing label: 422. A changed application: 409.
    let r = apply(app_yaml("m").replace("label: l", "label: nope")).await;
    assert_eq!(
        (r.status, r.body["details"][0]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("spec.label"))
    );
    let r = apply(app_yaml("a").replace("OVER: app", "OVER: other")).await;
    assert_eq!((r.status, r.body["reason"].clone()), (StatusCode::CONFLICT, json!("Conflict")));
    // Nothing of a rejected apply was written.
    assert_eq!(
        send(s, Method::GET, "/api/v1/applications/ok", Some(&fx.admin), None).await.status,
        StatusCode::NOT_FOUND
    );
    // Label versions by query.
    let r = send(s, Method::GET, "/api/v1/labels/l?version=1", Some(&fx.admin), None).await;
    assert_eq!(r.body["spec"]["definitions"][0]["resources"]["cpu"], 1);
    assert_eq!(send(s, Method::GET, "/api/v1/labels/l", Some(&fx.admin), None).await.body["metadata"]["version"], 2);
    assert_eq!(
        send(s, Method::GET, "/api/v1/labels?name=l", Some(&fx.admin), None).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        send(s, Method::DELETE, "/api/v1/labels/l?version=1", Some(&fx.admin), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        send(s, Method::GET, "/api/v1/labels/l?version=1", Some(&fx.admin), None).await.status,
        StatusCode::NOT_FOUND
    );
}

/// Reads newline-delimited JSON from a streaming body.
struct Lines {
    stream: axum::body::BodyDataStream,
    buf: Vec<u8>,
    /// Body chunks read so far.
    chunks: usize,
}

impl Lines {
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            match tokio::time::timeout(T, self.stream.next()).await.expect("watch timed out") {
                Some(chunk) => {
                    self.chunks += 1;
                    self.buf.extend_from_slice(&chunk.unwrap())
                }
                None => return None,
            }
        }
    }
}

async fn watch(state: &AppState, uri: &str, token: &str) -> Lines {
    let req = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap();
    let resp = tokio::time::timeout(T, router(state.clone()).oneshot(req)).await.expect("timeout").unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    Lines { stream: resp.into_body().into_data_stream(), buf: Vec::new(), chunks: 0 }
}

#[tokio::test]
async fn watch_added_modified_resume_and_expired() {
    // A short history (in revisions), so that expiring one takes a few writes.
    let fx = fixture_with_history(ApiLimits::default(), 8).await;
    let s = &fx.state;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(&app_yaml("a1"))).await;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.bob), Some(&app_yaml("b1"))).await;
    let mut w = watch(s, "/api/v1/applications?watch=true", &fx.alice).await;
    let first = w.next().await.unwrap();
    assert_eq!((first["type"].clone(), first["object"]["metadata"]["name"].clone()), (json!("ADDED"), json!("a1")));
    let rv: u64 = first["object"]["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    // Bob's changes are not Alice's to see; her deallocation arrives as MODIFIED.
    send(s, Method::POST, "/api/v1/applications/b1/deallocate", Some(&fx.bob), None).await;
    let r = send(s, Method::DELETE, "/api/v1/applications/a1", Some(&fx.alice), None).await;
    assert_eq!((r.status, r.body["status"]["phase"].clone()), (StatusCode::ACCEPTED, json!("DEALLOCATED")));
    // Asking again is idempotent (a second DELETE would now remove the finished application).
    assert_eq!(
        send(s, Method::POST, "/api/v1/applications/a1/deallocate", Some(&fx.alice), None).await.status,
        StatusCode::ACCEPTED,
        "idempotent"
    );
    let next = w.next().await.unwrap();
    assert_eq!((next["type"].clone(), next["object"]["metadata"]["name"].clone()), (json!("MODIFIED"), json!("a1")));
    assert_eq!(next["object"]["status"]["phase"], "DEALLOCATED");
    // Resume after the first event: exactly the later change of hers.
    let mut resumed = watch(s, &format!("/api/v1/applications?watch=true&resourceVersion={rv}"), &fx.alice).await;
    let e = resumed.next().await.unwrap();
    assert_eq!((e["type"].clone(), e["object"]["status"]["phase"].clone()), (json!("MODIFIED"), json!("DEALLOCATED")));
    // Labels watch with a name filter sees label events only.
    let mut lw = watch(s, "/api/v1/labels?watch=true&name=l", &fx.admin).await;
    assert_eq!(lw.next().await.unwrap()["object"]["kind"], "Label");

    // Push the history past its 8 revisions; resuming from revision 1 is then 410.
    for i in 0..10 {
        apply_labels(s, &format!("x{i}-"), 1).await;
    }
    let mut old = watch(s, "/api/v1/labels?watch=true&resourceVersion=1", &fx.admin).await;
    let e = old.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!((e["object"]["code"].clone(), e["object"]["reason"].clone()), (json!(410), json!("Expired")));
    assert!(old.next().await.is_none(), "the stream ends after the error");
    // Shutdown closes live watches.
    s.shutdown.cancel();
    while w.next().await.is_some() {}
}

/// A watch lives with the rights it was opened with only until they change: a
/// demotion, a token rotation or the user's deletion closes it (410: list again,
/// authenticated again). Other users' changes leave it open.
#[tokio::test]
async fn a_watch_ends_when_its_users_rights_change() {
    let fx = fixture().await;
    let s = &fx.state;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await;
    let closed = |e: Value, who: &str| {
        assert_eq!(e["type"], "ERROR", "{e}");
        assert_eq!((e["object"]["code"].clone(), e["object"]["reason"].clone()), (json!(410), json!("Expired")));
        assert!(e["object"]["message"].as_str().unwrap().contains(&format!("user \"{who}\" changed")), "{e}");
    };
    // A second admin, demoted while watching every application.
    let carol = secrets::new_token().unwrap();
    let user = |role: Role| User {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: api_types::ObjectMeta { name: "carol".parse().ok(), ..Default::default() },
        spec: UserSpec { roles: vec![role], password: None, rate_limit: None },
        status: Default::default(),
    };
    let record =
        |role| UserRecord { user: user(role), password_hash: None, token_digest: secrets::token_digest(&carol) };
    let apply_user = |role| Command::Apply {
        items: vec![ApplyItem::User { record: record(role), uid: Uuid::now_v7() }],
        owner: "admin".into(),
        now: OffsetDateTime::now_utc(),
    };
    s.store.execute(apply_user(Role::Admin)).await.unwrap().unwrap();
    let mut w = watch(s, "/api/v1/applications?watch=true", &carol).await;
    let mut alice_w = watch(s, "/api/v1/applications?watch=true", &fx.alice).await;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.bob), Some(&app_yaml("b1"))).await;
    assert_eq!(w.next().await.unwrap()["object"]["metadata"]["name"], "b1", "an admin sees bob's");
    s.store.execute(apply_user(Role::User)).await.unwrap().unwrap();
    closed(w.next().await.unwrap(), "carol");
    assert!(w.next().await.is_none(), "the stream ends after the error");
    // Watching again: with the rights carol has now.
    let mut w = watch(s, "/api/v1/applications?watch=true", &carol).await;
    // A token rotation (here by the user herself).
    let r = send(s, Method::POST, "/api/v1/users/carol/token", Some(&carol), None).await;
    assert_eq!(r.status, StatusCode::OK);
    closed(w.next().await.unwrap(), "carol");
    assert!(w.next().await.is_none());
    let carol = r.body["token"].as_str().unwrap().to_owned();
    // The deletion of the user.
    let mut w = watch(s, "/api/v1/applications?watch=true", &carol).await;
    let r = send(s, Method::DELETE, "/api/v1/users/carol", Some(&fx.admin), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    closed(w.next().await.unwrap(), "carol");
    assert!(w.next().await.is_none());
    // Alice's watch saw none of it, and goes on.
    send(s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(&app_yaml("a1"))).await;
    let e = alice_w.next().await.unwrap();
    assert_eq!((e["type"].clone(), e["object"]["metadata"]["name"].clone()), (json!("ADDED"), json!("a1")));
}

/// `n` labels named `<prefix>0`, `<prefix>1`, … to apply in one command.
/// Applies labels `<prefix>0..n` as the admin, in one command (one log entry: their
/// events come at once).
async fn apply_labels(state: &AppState, prefix: &str, n: u64) {
    let items = (0..n)
        .map(|i| {
            let label: api_types::Label =
                serde_saphyr::from_str(&LABEL.replace("name: l}", &format!("name: {prefix}{i}}}"))).unwrap();
            ApplyItem::Label { label, uid: Uuid::now_v7() }
        })
        .collect();
    state
        .store
        .execute(Command::Apply { items, owner: "admin".into(), now: OffsetDateTime::now_utc() })
        .await
        .unwrap()
        .unwrap();
}

/// Changes that are already waiting when a watcher is served go out together (fewer,
/// larger writes), whole lines, every one of them, in order.
#[tokio::test]
async fn waiting_events_go_out_together_in_order() {
    let fx = fixture().await;
    let s = &fx.state;
    let mut w = watch(s, "/api/v1/labels?watch=true", &fx.admin).await;
    apply_labels(s, "c", 300).await;
    for i in 0..300 {
        let e = w.next().await.expect("the stream ended early");
        assert_eq!(
            (e["type"].clone(), e["object"]["metadata"]["name"].clone()),
            (json!("ADDED"), json!(format!("c{i}")))
        );
    }
    assert!(w.chunks < 100, "300 waiting events took {} writes", w.chunks);
}

/// A watcher that does not keep up is told so (410) and closed, never silently skipped.
#[tokio::test]
async fn a_watcher_that_falls_behind_gets_410_and_is_closed() {
    let fx = fixture().await;
    let s = &fx.state;
    let mut slow = watch(s, "/api/v1/labels?watch=true", &fx.admin).await;
    // More changes at once than a watcher's buffer holds, while it reads nothing.
    apply_labels(s, "s", 5_000).await;
    // Events may still be flowing when it starts reading: it sees some, then the
    // error, never a silent gap.
    let mut delivered = 0;
    let e = loop {
        let e = slow.next().await.expect("the stream ended without an error");
        if e["type"] != "ADDED" {
            break e;
        }
        assert_eq!(e["object"]["metadata"]["name"], json!(format!("s{delivered}")), "a gap without an error");
        delivered += 1;
    };
    assert!(delivered < 5_000, "the watcher kept up after all");
    assert_eq!(e["type"], "ERROR", "{e}");
    assert_eq!((e["object"]["code"].clone(), e["object"]["reason"].clone()), (json!(410), json!("Expired")));
    assert!(e["object"]["message"].as_str().unwrap().contains("behind"), "{e}");
    assert!(slow.next().await.is_none(), "the stream ends after the error");
}

#[tokio::test]
async fn users_tokens_and_rate_limits() {
    let fx = fixture_with(ApiLimits { rate_limit_per_minute: 5, ..Default::default() }).await;
    let s = &fx.state;
    let r = send(
        s,
        Method::POST,
        "/api/v1/users",
        Some(&fx.admin),
        Some("metadata: {name: carol}\nspec: {roles: [user], password: carol-secret}"),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let carol = r.body["status"]["token"].as_str().unwrap().to_owned();
    assert!(r.body["spec"].get("password").is_none(), "never returned");
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&carol), None).await.body["metadata"]["name"], "carol");
    assert_eq!(
        send(s, Method::GET, "/api/v1/whoami", Some(&basic("carol", "carol-secret")), None).await.status,
        StatusCode::OK
    );
    assert!(
        send(s, Method::GET, "/api/v1/users/carol", Some(&fx.admin), None).await.body["status"].get("token").is_none()
    );
    assert_eq!(
        send(s, Method::POST, "/api/v1/users", Some(&fx.admin), Some("metadata: {name: carol}")).await.status,
        StatusCode::CONFLICT
    );
    // Rotation: the new token works, the old one is dead at once.
    let r = send(s, Method::POST, "/api/v1/users/carol/token", Some(&fx.admin), None).await;
    assert_eq!(r.body["user"], "carol");
    let new = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&carol), None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&new), None).await.status, StatusCode::OK);
    // carol has used 3 of her 5 requests this minute (two whoami + one with the new token).
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&new), None).await.status, StatusCode::OK);
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&new), None).await.status, StatusCode::OK);
    let r = send(s, Method::GET, "/api/v1/whoami", Some(&new), None).await;
    assert_eq!((r.status, r.body["reason"].clone()), (StatusCode::TOO_MANY_REQUESTS, json!("TooManyRequests")));
    let retry: u64 = r.headers[header::RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Admins are not limited.
    for _ in 0..10 {
        assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(&fx.admin), None).await.status, StatusCode::OK);
    }
    assert_eq!(
        send(s, Method::DELETE, "/api/v1/users/carol", Some(&fx.admin), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(send(s, Method::GET, "/api/v1/users/carol", Some(&fx.admin), None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_create_user_conflict_does_not_overwrite_the_winner() {
    let fx = fixture().await;
    let s = &fx.state;
    let body = |p: &str| format!("metadata: {{name: dave}}\nspec: {{roles: [user], password: {p}}}");
    let (one, two) = (body("password-one"), body("password-two"));
    let (a, b) = tokio::join!(
        send(s, Method::POST, "/api/v1/users", Some(&fx.admin), Some(&one)),
        send(s, Method::POST, "/api/v1/users", Some(&fx.admin), Some(&two)),
    );
    let (won, lost) = match (a.status, b.status) {
        (StatusCode::CREATED, StatusCode::CONFLICT) => (("password-one", a), "password-two"),
        (StatusCode::CONFLICT, StatusCode::CREATED) => (("password-two", b), "password-one"),
        other => panic!("one creation must win and one get 409: {other:?}"),
    };
    let token = won.1.body["status"]["token"].as_str().unwrap();
    assert_eq!(send(s, Method::GET, "/api/v1/whoami", Some(token), None).await.status, StatusCode::OK);
    assert_eq!(
        send(s, Method::GET, "/api/v1/whoami", Some(&basic("dave", won.0)), None).await.status,
        StatusCode::OK,
        "the winner's password must work"
    );
    assert_eq!(
        send(s, Method::GET, "/api/v1/whoami", Some(&basic("dave", lost)), None).await.status,
        StatusCode::UNAUTHORIZED,
        "the refused request overwrote the password"
    );
}

#[tokio::test]
async fn openapi_network_values_are_the_ones_serde_reads_and_writes() {
    let fx = fixture().await;
    let doc = send(&fx.state, Method::GET, "/api/v1/openapi.json", None, None).await.body;
    let values = doc["components"]["schemas"]["Network"]["enum"].as_array().cloned().unwrap_or_default();
    assert!(!values.is_empty(), "no Network enum in {:#}", doc["components"]["schemas"]["Network"]);
    for v in &values {
        assert!(
            serde_json::from_value::<api_types::Network>(v.clone()).is_ok(),
            "the schema offers {v}, serde refuses it"
        );
    }
    let written = serde_json::to_value(api_types::Network::default()).unwrap();
    assert!(values.contains(&written), "serde writes {written}, the schema allows only {values:?}");
    // What older clients send still means isolated.
    assert_eq!(serde_json::from_value::<api_types::Network>(json!("")).unwrap(), api_types::Network::Isolated);
}

#[tokio::test]
async fn the_document_s_examples_create_real_objects_and_its_links_lead_to_them() {
    let fx = fixture().await;
    let s = &fx.state;
    let doc = send(s, Method::GET, "/api/v1/openapi.json", None, None).await.body;
    // In this order: the application example names the label example.
    for path in ["/api/v1/labels", "/api/v1/applications", "/api/v1/users"] {
        let example = &doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"];
        assert!(example.is_object(), "{path} has no request example");
        let r = send(s, Method::POST, path, Some(&fx.admin), Some(&example.to_string())).await;
        assert_eq!(r.status, StatusCode::CREATED, "{path} example: {}", r.body);
    }
    // Links from a create to the operations on what it created, by the created name.
    let links = &doc["paths"]["/api/v1/applications"]["post"]["responses"]["201"]["links"];
    for op in ["get_application", "delete_application", "deallocate_application", "get_logs", "get_resource"] {
        assert_eq!(links[op]["operationId"], op, "{links:#}");
        assert_eq!(links[op]["parameters"]["name"], "$response.body#/metadata/name");
    }
    let list_links = &doc["paths"]["/api/v1/users"]["get"]["responses"]["200"]["links"];
    assert_eq!(list_links["rotate_token"]["parameters"]["name"], "$response.body#/items/0/metadata/name");
}

#[tokio::test]
async fn the_schemas_refuse_what_validation_refuses() {
    let fx = fixture().await;
    let doc = send(&fx.state, Method::GET, "/api/v1/openapi.json", None, None).await.body;
    let schemas = &doc["components"]["schemas"];
    // A label or user without a name is refused (422): the schema requires one.
    for kind in ["Label", "User"] {
        let required = schemas[kind]["required"].as_array().cloned().unwrap_or_default();
        assert!(required.contains(&json!("metadata")), "{kind}.metadata not required: {:#}", schemas[kind]);
        let meta = &schemas[kind]["properties"]["metadata"]["allOf"];
        assert!(meta.to_string().contains("\"required\":[\"name\"]"), "{kind}.metadata.name not required: {meta}");
    }
    // A label without definitions is refused: at least one.
    assert_eq!(schemas["LabelSpec"]["properties"]["definitions"]["minItems"], 1, "{:#}", schemas["LabelSpec"]);
    // Names: the parser's rules, not any string ("" and "-x" are refused).
    assert_eq!(schemas["Name"]["pattern"], api_types::name::NAME_PATTERN);
    assert_eq!(schemas["Name"]["minLength"], 1);
    assert_eq!(schemas["Name"]["maxLength"], api_types::name::MAX_NAME_LEN);
    assert!(schemas["LabelRef"]["pattern"].as_str().is_some_and(|p| p.ends_with("(:[0-9]{1,9})?$")));
}

#[tokio::test]
async fn openapi_document_lists_the_routes() {
    let fx = fixture().await;
    let r = send(&fx.state, Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = r.body["paths"].as_object().unwrap();
    for p in [
        "/api/v1/apply",
        "/api/v1/labels",
        "/api/v1/labels/{name}",
        "/api/v1/applications",
        "/api/v1/applications/{name}",
        "/api/v1/applications/{name}/deallocate",
        "/api/v1/applications/{name}/resource",
        "/api/v1/applications/{name}/logs",
        "/api/v1/nodes",
        "/api/v1/nodes/{name}/maintenance",
        "/api/v1/users",
        "/api/v1/users/{name}/token",
        "/api/v1/whoami",
        "/healthz",
        "/readyz",
        "/metrics",
        "/meta/v1/data",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys().collect::<Vec<_>>());
    }
    assert!(r.body["components"]["schemas"].get("Application").is_some());
}

/// Moves an application to ALLOCATED with a resource at `ip`, as a reconciler would.
async fn allocate(state: &AppState, name: &str, ip: &str) -> Uuid {
    let app = state.store.get_application(name).unwrap().unwrap();
    let mut status = app.status.clone();
    status.phase = Phase::Allocated;
    status.node = Some("node-a".into());
    status.definition = Some(0);
    status.resource = Some(ResourceStatus {
        driver: "test".into(),
        identifier: "r1".into(),
        ip_addr: Some(ip.into()),
        ..Default::default()
    });
    let uid = app.metadata.uid.unwrap();
    state
        .store
        .execute(Command::SetApplicationStatus { uid, expect: Phase::New, status: Box::new(status), expect_node: None })
        .await
        .unwrap()
        .unwrap();
    uid
}

#[tokio::test]
async fn meta_by_address_answers_a_request_made_before_the_allocation_is_recorded() {
    let fx = fixture().await;
    let s = &fx.state;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(&app_yaml("early"))).await;
    let peer = std::net::SocketAddr::from(([10, 9, 8, 7], 40000));
    let req = Request::get("/meta/v1/data").extension(axum::extract::ConnectInfo(peer)).body(Body::empty()).unwrap();
    let before = s.store.subscribers();
    let early = tokio::spawn(router(s.clone()).oneshot(req));
    // The container asked first: its request is waiting (or, before the fix, answered 404).
    let deadline = tokio::time::Instant::now() + T;
    while s.store.subscribers() == before && !early.is_finished() {
        assert!(tokio::time::Instant::now() < deadline, "the request neither waited nor answered");
        tokio::task::yield_now().await;
    }
    allocate(s, "early", "10.9.8.7").await;
    let resp = tokio::time::timeout(T, early).await.expect("timeout").unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "an early request from the resource's address got an error");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let data: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(data["FISH_APPLICATION"], "early");
}

#[tokio::test]
async fn resources_logs_meta_and_maintenance() {
    let fx = fixture().await;
    let s = &fx.state;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(&app_yaml("a1"))).await;
    assert_eq!(
        send(s, Method::GET, "/api/v1/applications/a1/resource", Some(&fx.alice), None).await.status,
        StatusCode::NOT_FOUND
    );
    let uid = allocate(s, "a1", "10.1.2.3").await;
    let r = send(s, Method::GET, &format!("/api/v1/applications/{uid}/resource"), Some(&fx.alice), None).await;
    assert_eq!((r.status, r.body["ipAddr"].clone()), (StatusCode::OK, json!("10.1.2.3")));
    // Logs.
    assert_eq!(
        send(s, Method::GET, "/api/v1/applications/a1/logs", Some(&fx.alice), None).await.status,
        StatusCode::NOT_FOUND
    );
    std::fs::write(fx.dir.path().join(format!("{uid}.log")), "hello\n").unwrap();
    let r = send(s, Method::GET, "/api/v1/applications/a1/logs", Some(&fx.alice), None).await;
    assert_eq!(r.body, json!("hello\n"));
    // Metadata by resource token: label's, overlaid by the application's, plus FISH_*.
    let token = s.meta_tokens.issue(uid);
    let r = send(s, Method::GET, "/meta/v1/data", Some(&token), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["FROM_LABEL"], "x");
    assert_eq!(r.body["OVER"], "app");
    assert_eq!(r.body["FISH_APPLICATION"], "a1");
    assert_eq!(r.body["FISH_APPLICATION_UID"], json!(uid.to_string()));
    assert_eq!(r.body["FISH_LABEL"], "l");
    assert_eq!(r.body["FISH_NODE"], "node-a");
    let env = send(s, Method::GET, "/meta/v1/data?format=env", Some(&token), None).await;
    assert!(env.body.as_str().unwrap().contains("FISH_APPLICATION='a1'\n"), "{:?}", env.body);
    let yaml = send(s, Method::GET, "/meta/v1/data?format=yaml", Some(&token), None).await;
    assert!(yaml.body.as_str().unwrap().contains("OVER: app"), "{:?}", yaml.body);
    // A forged token learns nothing, not even that it is malformed (see meta.rs).
    assert_eq!(send(s, Method::GET, "/meta/v1/data", Some("forged.token"), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(send(s, Method::GET, "/meta/v1/data", None, None).await.status, StatusCode::NOT_FOUND);
    // Maintenance.
    let node = api_types::Node {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: api_types::ObjectMeta {
            name: "node-a".parse().ok(),
            uid: Some(Uuid::now_v7()),
            ..Default::default()
        },
        status: Default::default(),
    };
    s.store.execute(Command::PutNode { node: Box::new(node) }).await.unwrap().unwrap();
    let r =
        send(s, Method::POST, "/api/v1/nodes/node-a/maintenance", Some(&fx.alice), Some(r#"{"enabled": true}"#)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r =
        send(s, Method::POST, "/api/v1/nodes/node-a/maintenance", Some(&fx.admin), Some(r#"{"enabled": true}"#)).await;
    assert_eq!((r.status, r.body["status"]["maintenance"].clone()), (StatusCode::OK, json!(true)));
    let r =
        send(s, Method::POST, "/api/v1/nodes/node-a/maintenance", Some(&fx.admin), Some(r#"{"enable": true}"#)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        send(s, Method::GET, "/api/v1/nodes", Some(&fx.alice), None).await.body["items"][0]["metadata"]["name"],
        "node-a"
    );
}

/// The real server: TLS from `tls::load_or_create`, a client trusting only its CA.
#[tokio::test]
async fn over_https_big_bodies_get_413_and_meta_by_address() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let fx = fixture().await;
    let s = fx.state.clone();
    send(&s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await;
    send(&s, Method::POST, "/api/v1/apply", Some(&fx.alice), Some(&app_yaml("a1"))).await;
    allocate(&s, "a1", "127.0.0.1").await;

    let tls = crate::tls::load_or_create(fx.dir.path(), "node-a", Some("127.0.0.1")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(s.clone(), listener, tls.server_config.clone(), shutdown.clone()));
    let ca = reqwest::Certificate::from_pem(tls.ca_cert_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder().tls_certs_only([ca]).timeout(T).build().unwrap();
    let base = format!("https://127.0.0.1:{}", addr.port());

    let r = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = client.get(format!("{base}/api/v1/whoami")).bearer_auth(&fx.admin).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["metadata"]["name"], "admin");
    // 11 MiB: the client gets a JSON 413, not a reset connection (HTTP/1.1 and HTTP/2).
    for http1 in [true, false] {
        let builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(tls.ca_cert_pem.as_bytes()).unwrap()])
            .timeout(T);
        let c = if http1 { builder.http1_only() } else { builder }.build().unwrap();
        let big = vec![b'#'; 11 * 1024 * 1024];
        let r = c.post(format!("{base}/api/v1/apply")).bearer_auth(&fx.admin).body(big).send().await.unwrap();
        assert_eq!(r.status(), 413, "http1={http1}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["reason"], "PayloadTooLarge");
    }
    // A container is known by its source address.
    let r = client.get(format!("{base}/meta/v1/data")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["FISH_APPLICATION"], "a1");
    // A client that does not trust the CA fails.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(rcgen_other_ca().as_bytes()).unwrap()])
        .build()
        .unwrap();
    assert!(untrusting.get(format!("{base}/healthz")).send().await.is_err());

    shutdown.cancel();
    tokio::time::timeout(T, server).await.expect("server stops").unwrap().unwrap();
}

fn rcgen_other_ca() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

/// The body and content type of a GET as sent.
async fn get_raw(state: &AppState, uri: &str, token: &str) -> (StatusCode, String, Vec<u8>) {
    let req = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {token}")).body(Body::empty()).unwrap();
    let resp = tokio::time::timeout(T, router(state.clone()).oneshot(req)).await.expect("timeout").unwrap();
    let status = resp.status();
    let ct = resp.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    (status, ct, bytes.to_vec())
}

#[tokio::test]
async fn objects_and_lists_sent_from_stored_json_are_what_serde_writes() {
    let fx = fixture().await;
    let s = &fx.state;
    send(s, Method::POST, "/api/v1/apply", Some(&fx.admin), Some(LABEL)).await;
    for (token, name) in [(&fx.alice, "a1"), (&fx.alice, "a2"), (&fx.bob, "b1")] {
        send(s, Method::POST, "/api/v1/apply", Some(token), Some(&app_yaml(name))).await;
    }
    send(s, Method::POST, "/api/v1/applications/a2/deallocate", Some(&fx.alice), None).await;
    let json = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
    // One object: the typed object's serialization, byte for byte.
    let a1 = s.store.get_application("a1").unwrap().unwrap();
    for who in [&fx.alice, &fx.admin] {
        let (status, ct, body) = get_raw(s, "/api/v1/applications/a1", who).await;
        assert_eq!((status, ct.as_str()), (StatusCode::OK, "application/json"));
        assert_eq!(json(&body), json(&serde_json::to_vec(&a1).unwrap()));
        let uri = format!("/api/v1/applications/{}", a1.metadata.uid.unwrap());
        assert_eq!(get_raw(s, &uri, who).await.2, body, "by uid");
    }
    assert_eq!(get_raw(s, "/api/v1/applications/a1", &fx.bob).await.0, StatusCode::NOT_FOUND, "not bob's");
    // Lists: `List::new(..)` of the typed objects, for each caller and filter.
    for (who, owner) in [(&fx.admin, None), (&fx.alice, Some("alice")), (&fx.bob, Some("bob"))] {
        for query in ["", "?label=l", "?phase=NEW", "?phase=DEALLOCATED&label=l", "?label=other"] {
            let (status, ct, body) = get_raw(s, &format!("/api/v1/applications{query}"), who).await;
            assert_eq!((status, ct.as_str()), (StatusCode::OK, "application/json"), "{query}");
            let filter = crate::store::AppFilter {
                phase: query
                    .contains("NEW")
                    .then_some(Phase::New)
                    .or(query.contains("DEALL").then_some(Phase::Deallocated)),
                label: query.contains("label=").then(|| if query.contains("other") { "other" } else { "l" }.to_owned()),
                owner: owner.map(str::to_owned),
            };
            let (rev, apps) = s.store.list_applications(&filter).unwrap();
            let expected = serde_json::to_vec(&api_types::List::new("Application", rev, apps)).unwrap();
            assert_eq!(json(&body), json(&expected), "{query} as {owner:?}");
            // And clients read it back into the same objects.
            let back: api_types::List<api_types::Application> = serde_json::from_slice(&body).unwrap();
            assert_eq!(serde_json::to_vec(&back).unwrap(), expected);
        }
    }
    // Labels: one version, the latest, every version.
    let label = s.store.get_label("l", None).unwrap().unwrap();
    for uri in ["/api/v1/labels/l", "/api/v1/labels/l?version=1"] {
        let (status, ct, body) = get_raw(s, uri, &fx.bob).await;
        assert_eq!((status, ct.as_str()), (StatusCode::OK, "application/json"));
        assert_eq!(json(&body), json(&serde_json::to_vec(&label).unwrap()), "{uri}");
    }
    let uri = format!("/api/v1/labels/{}", label.metadata.uid.unwrap());
    assert_eq!(get_raw(s, &uri, &fx.bob).await.2, serde_json::to_vec(&label).unwrap(), "by uid");
    assert_eq!(get_raw(s, "/api/v1/labels/l?version=9", &fx.bob).await.0, StatusCode::NOT_FOUND);
    let (rev, labels) = s.store.list_labels(None).unwrap();
    let expected = serde_json::to_vec(&api_types::List::new("Label", rev, labels)).unwrap();
    assert_eq!(json(&get_raw(s, "/api/v1/labels", &fx.bob).await.2), json(&expected));
    // A watch's initial ADDED lines: the WatchEvent serde writes, one per line.
    let (status, _, _) = get_raw(s, "/api/v1/applications/none", &fx.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let mut w = watch(s, "/api/v1/applications?watch=true&label=l", &fx.alice).await;
    for name in ["a1", "a2"] {
        let e = w.next().await.unwrap();
        let app = s.store.get_application(name).unwrap().unwrap();
        let expected = api_types::WatchEvent {
            event_type: api_types::WatchEventType::Added,
            object: serde_json::to_value(&app).unwrap(),
        };
        assert_eq!(e, serde_json::to_value(&expected).unwrap());
    }
    s.shutdown.cancel();
}
