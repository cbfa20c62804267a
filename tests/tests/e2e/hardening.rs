//! Hostile input and abuse, against a real fishd over real TLS: every attack is
//! refused quickly while an honest client, running at the same time, keeps being
//! served; limits answer 429 with a `Retry-After` that is true; secrets stay out of
//! the log and out of other users' reach; every mutation leaves an audit line.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aquarium_e2e::slow::{End, dribble_until_closed};
use aquarium_e2e::{TestDaemon, eventually};
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Every hostile body must be answered within this.
const FAST: Duration = Duration::from_secs(2);

/// A client trusting this daemon's CA, with its own connections.
fn client(d: &TestDaemon) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(d.data_dir().join("ca.crt")).unwrap()).unwrap();
    reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(10)).build().unwrap()
}

/// What the honest client saw while an attack ran.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    failures: Vec<String>,
    slowest: Duration,
}

/// An honest client: `GET /healthz` and an authenticated list, in a loop, on its own
/// connections, until stopped.
struct Honest {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Seen>,
}

impl Honest {
    fn start(d: &TestDaemon) -> Honest {
        let stop = Arc::new(AtomicBool::new(false));
        let (c, url, token, flag) = (client(d), d.url.clone(), d.token.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seen = Seen::default();
            while !flag.load(Ordering::Relaxed) {
                for (path, auth) in [("/healthz", false), ("/api/v1/applications", true)] {
                    let mut req = c.get(format!("{url}{path}"));
                    if auth {
                        req = req.bearer_auth(&token);
                    }
                    let started = Instant::now();
                    match req.send().await {
                        Ok(r) if r.status().is_success() => seen.ok += 1,
                        Ok(r) => seen.failures.push(format!("{path}: {}", r.status())),
                        Err(e) => seen.failures.push(format!("{path}: {e}")),
                    }
                    seen.slowest = seen.slowest.max(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        Honest { stop, task }
    }

    /// Stops the client and checks it was served throughout, each answer within `bound`.
    async fn finish(self, bound: Duration) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let seen = tokio::time::timeout(Duration::from_secs(20), self.task).await.unwrap().unwrap();
        assert!(seen.failures.is_empty(), "the honest client failed: {:?}", seen.failures);
        assert!(seen.ok >= 4, "the honest client was barely served: {seen:?}");
        assert!(seen.slowest < bound, "the honest client waited {:?} (bound {bound:?})", seen.slowest);
        seen
    }
}

/// POSTs `body` to /api/v1/apply; the status, the error body and how long it took.
async fn post_apply(d: &TestDaemon, content_type: &str, body: reqwest::Body) -> (u16, Value, Duration) {
    let started = Instant::now();
    let r = d
        .client
        .post(format!("{}/api/v1/apply", d.url))
        .bearer_auth(&d.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let body = r.json().await.unwrap_or(Value::Null);
    (code, body, started.elapsed())
}

/// The billion laughs: nine aliases of nine aliases, nine levels deep (9^9 strings).
fn alias_bomb() -> String {
    let mut y = String::from(
        "kind: Label\nmetadata: {name: bomb}\nl0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..=9 {
        let p = i - 1;
        y.push_str(&format!("l{i}: &l{i} [*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p},*l{p}]\n"));
    }
    y
}

#[tokio::test]
async fn hostile_bodies_are_refused_fast_while_an_honest_client_is_served() {
    let d = TestDaemon::start("").await.unwrap();
    let honest = Honest::start(&d);
    let deep_yaml = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_json = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        ("alias bomb", "application/yaml", alias_bomb().into_bytes()),
        ("YAML nested 10,000 deep", "application/yaml", deep_yaml.into_bytes()),
        ("JSON nested 10,000 deep", "application/json", deep_json.into_bytes()),
        (
            "duplicate keys",
            "application/yaml",
            b"kind: Label\nmetadata: {name: dup}\nmetadata: {name: dup2}\nspec: {definitions: []}\n".to_vec(),
        ),
        ("invalid UTF-8", "application/yaml", b"kind: Label\nmetadata: {name: \"\xff\xfe\"}\n".to_vec()),
    ];
    for (what, content_type, body) in cases {
        let (code, err, took) = post_apply(&d, content_type, body.into()).await;
        assert_eq!(code, 400, "{what}: {err}");
        assert_eq!(err["reason"], "BadRequest", "{what}: {err}");
        assert!(took < FAST, "{what} took {took:?}");
    }

    // 50 MB in one scalar, streamed (chunked: no Content-Length to refuse it by).
    let head = b"kind: Label\nmetadata: {name: big}\nspec: \"".to_vec();
    let chunk = bytes::Bytes::from(vec![b'a'; 64 * 1024]);
    let chunks = (50 * 1024 * 1024) / chunk.len();
    let stream = futures::stream::iter(
        std::iter::once(bytes::Bytes::from(head))
            .chain(std::iter::repeat_n(chunk, chunks))
            .map(Ok::<_, std::io::Error>),
    );
    let (code, err, took) = post_apply(&d, "application/yaml", reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(code, 413, "{err}");
    assert_eq!(err["reason"], "PayloadTooLarge", "{err}");
    assert!(took < FAST, "the 50 MB body took {took:?}");

    let seen = honest.finish(FAST).await;
    eprintln!("honest client: {} answers, slowest {:?}", seen.ok, seen.slowest);
    // Nothing was written.
    let (_, labels) = d.get("/api/v1/labels").await.unwrap();
    assert_eq!(labels["items"], json!([]));
}

/// A TLS client of this daemon (HTTP/1.1 by ALPN) over `tcp`.
async fn tls(d: &TestDaemon, tcp: TcpStream) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    aquarium_e2e::slow::tls(&d.data_dir().join("ca.crt"), tcp).await
}

fn addr(d: &TestDaemon) -> String {
    d.url.trim_start_matches("https://").to_owned()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_at_once_not_after_the_read_deadline() {
    let d = TestDaemon::start("").await.unwrap();
    let mut s = tls(&d, TcpStream::connect(addr(&d)).await.unwrap()).await.unwrap();
    let request = format!(
        "POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/yaml\r\nContent-Length: 99999999999\r\n\r\nkind: x\n",
        d.token
    );
    let started = Instant::now();
    s.write_all(request.as_bytes()).await.unwrap();
    // The client sends nothing more: the answer must not wait for the rest.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            other => panic!("no answer: {other:?} after {:?}", started.elapsed()),
        }
    }
    let took = started.elapsed();
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(took < FAST, "413 came only after {took:?}");
}

#[tokio::test]
async fn slow_clients_are_cut_at_the_header_timeout_while_others_are_served() {
    let d = TestDaemon::start("headerReadTimeout: 2s\n").await.unwrap();
    let honest = Honest::start(&d);
    let within = Duration::from_secs(8);
    let mut slow = Vec::new();
    // Slowloris proper: TLS done, then the request line one byte a second.
    for _ in 0..4 {
        let started = Instant::now();
        let s = tls(&d, TcpStream::connect(addr(&d)).await.unwrap()).await.unwrap();
        slow.push((
            "headers 1 B/s",
            tokio::spawn(async move {
                dribble_until_closed(
                    s,
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaa\r\n\r\n",
                    started,
                    within,
                )
                .await
            }),
        ));
    }
    // TLS done, then silence (hyper's own header timer has not started yet).
    for _ in 0..2 {
        let started = Instant::now();
        let s = tls(&d, TcpStream::connect(addr(&d)).await.unwrap()).await.unwrap();
        slow.push(("silent after TLS", tokio::spawn(dribble_until_closed(s, b"", started, within))));
    }
    // Not even TLS: a ClientHello-looking byte a second.
    for _ in 0..2 {
        let started = Instant::now();
        let s = TcpStream::connect(addr(&d)).await.unwrap();
        slow.push(("TLS handshake 1 B/s", tokio::spawn(dribble_until_closed(s, &[0x16; 32], started, within))));
    }
    for (what, task) in slow {
        match tokio::time::timeout(within + Duration::from_secs(5), task).await.unwrap().unwrap() {
            End::Closed(after) => {
                eprintln!("{what}: cut after {after:?}");
                assert!(after >= Duration::from_millis(1500), "{what}: cut after {after:?}, before its time");
                assert!(after < Duration::from_secs(5), "{what}: cut only after {after:?}");
            }
            End::Open => panic!("{what}: still connected after {within:?}"),
        }
    }
    honest.finish(FAST).await;
}

/// A client or peer that vanished without closing (cut off, powered down) must not keep
/// its connection, and with it a watch slot or a Raft stream, until TCP gives up (for
/// an idle connection: never). An HTTP/2 client that answers nothing after its
/// preface, not even the server's pings, is closed.
#[tokio::test]
async fn an_http2_connection_whose_pings_go_unanswered_is_closed() {
    let d = TestDaemon::start("http2KeepAlive: 1s\n").await.unwrap();
    let honest = Honest::start(&d);
    let started = Instant::now();
    let tcp = TcpStream::connect(addr(&d)).await.unwrap();
    let mut s = aquarium_e2e::slow::tls_alpn(&d.data_dir().join("ca.crt"), tcp, b"h2").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the server should speak HTTP/2");
    // The preface and an empty SETTINGS frame (RFC 9113 sections 3.4, 6.5), then silence.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    s.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    s.flush().await.unwrap();
    match dribble_until_closed(s, b"", started, Duration::from_secs(15)).await {
        End::Closed(after) => {
            eprintln!("closed after {after:?}");
            // One interval to the ping, one more for its answer.
            assert!(after >= Duration::from_millis(1500), "closed after {after:?}, before a ping went unanswered");
        }
        End::Open => panic!("still connected after 15 s with its pings unanswered"),
    }
    honest.finish(FAST).await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
    let d = TestDaemon::start("headerReadTimeout: 3s\nmaxConnections: 4\n").await.unwrap();
    // Idle sockets take every slot (the harness's own pooled connection may hold one).
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(addr(&d)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(FAST, async { tls(&d, TcpStream::connect(addr(&d)).await?).await }).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "a connection beyond the cap should be closed at once, got {:?}",
        refused.map(|r| r.map(|_| ()))
    );
    // The idle sockets time out (TLS handshake deadline) and free their slots.
    let fresh = client(&d);
    eventually("a slot to come back", || async {
        fresh.get(format!("{}/healthz", d.url)).send().await.is_ok_and(|r| r.status().is_success())
    })
    .await
    .unwrap();
    drop(idle);
}

/// Creates a user; its token.
async fn create_user(d: &TestDaemon, name: &str, spec: Value) -> String {
    let (code, body) =
        d.post("/api/v1/users", Some(json!({"kind": "User", "metadata": {"name": name}, "spec": spec}))).await.unwrap();
    assert_eq!(code, 201, "{body}");
    body["status"]["token"].as_str().unwrap().to_owned()
}

fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a numeric Retry-After: {:?}", r.headers()))
}

#[tokio::test]
async fn a_users_rate_limit_answers_429_with_a_true_retry_after() {
    let d = TestDaemon::start("").await.unwrap();
    let token = create_user(&d, "limited", json!({"roles": ["user"], "rateLimit": 5})).await;
    let list = || d.client.get(format!("{}/api/v1/applications", d.url)).bearer_auth(&token).send();
    for i in 0..5 {
        assert_eq!(list().await.unwrap().status(), 200, "request {i}");
    }
    let r = list().await.unwrap();
    assert_eq!(r.status(), 429);
    let wait = retry_after(&r);
    // 5 a minute: one earned back every 12 s.
    assert!((1..=12).contains(&wait), "Retry-After {wait}");
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "TooManyRequests");
    // The admin is not limited, and other users have their own budget.
    assert_eq!(d.get("/api/v1/applications").await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(list().await.unwrap().status(), 200, "after waiting Retry-After ({wait} s)");
}

#[tokio::test]
async fn failed_logins_are_limited_per_address_but_valid_tokens_pass() {
    let d = TestDaemon::start("authFailureLimit: 5\n").await.unwrap();
    create_user(&d, "guessed", json!({"roles": ["user"], "password": "correct-horse-battery"})).await;
    let basic = |user: &str, secret: &str| {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}")))
    };
    let whoami = |auth: String| d.client.get(format!("{}/api/v1/whoami", d.url)).header("authorization", auth).send();
    assert_eq!(whoami(basic("guessed", "correct-horse-battery")).await.unwrap().status(), 200);
    for i in 0..5 {
        let r = whoami(basic("guessed", &format!("guess-{i}"))).await.unwrap();
        assert_eq!(r.status(), 401, "guess {i}");
    }
    let r = whoami("Bearer not-a-token".into()).await.unwrap();
    assert_eq!(r.status(), 429);
    let wait = retry_after(&r);
    assert!((1..=12).contains(&wait), "Retry-After {wait}");
    // Even the right password is refused now: the guesser learns nothing more.
    assert_eq!(whoami(basic("guessed", "correct-horse-battery")).await.unwrap().status(), 429);
    // A valid token still works from the same address.
    assert_eq!(d.get("/api/v1/whoami").await.unwrap().0, 200);
    // Unauthenticated routes are not affected.
    assert_eq!(d.client.get(format!("{}/healthz", d.url)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn watches_are_capped_per_user() {
    let d = TestDaemon::start("maxWatchesPerUser: 3\n").await.unwrap();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(d.watch("/api/v1/applications?watch=true").await.unwrap());
    }
    let over = || {
        d.client
            .get(format!("{}/api/v1/labels?watch=true", d.url))
            .bearer_auth(&d.token)
            .timeout(Duration::from_secs(5))
            .send()
    };
    let r = over().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(retry_after(&r) >= 1);
    // Per user: another user still watches.
    let token = create_user(&d, "watcher", json!({"roles": ["user"]})).await;
    let r = d
        .client
        .get(format!("{}/api/v1/applications?watch=true", d.url))
        .bearer_auth(&token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    // Closing one frees its slot.
    open.pop();
    eventually("a watch slot to be freed", || async { over().await.is_ok_and(|r| r.status() == 200) }).await.unwrap();
}

#[tokio::test]
async fn secrets_stay_out_of_the_log_and_key_files_are_private() {
    let d = TestDaemon::start("").await.unwrap();
    let password = "p4ss-w0rd-never-logged";
    let first = create_user(&d, "secretive", json!({"roles": ["user"], "password": password})).await;
    let (code, rotated) = d.post("/api/v1/users/secretive/token", None).await.unwrap();
    assert_eq!(code, 200, "{rotated}");
    let second = rotated["token"].as_str().unwrap().to_owned();
    let whoami = |auth: String| d.client.get(format!("{}/api/v1/whoami", d.url)).header("authorization", auth).send();
    let basic_pw = base64::engine::general_purpose::STANDARD.encode(format!("secretive:{password}"));
    assert_eq!(whoami(format!("Basic {basic_pw}")).await.unwrap().status(), 200);
    assert_eq!(whoami(format!("Bearer {second}")).await.unwrap().status(), 200);
    assert_eq!(whoami(format!("Bearer {first}")).await.unwrap().status(), 401, "the old token is dead");
    // A user never sees a password (hashed or not) or a token in an answer.
    let (_, me) = d.get("/api/v1/users/secretive").await.unwrap();
    assert!(me["spec"].get("password").is_none() && me["status"].get("token").is_none(), "{me}");
    assert!(!me.to_string().contains("argon2"), "{me}");

    let log = d.log();
    for (what, secret) in [
        ("admin token", d.token.as_str()),
        ("first token", first.as_str()),
        ("rotated token", second.as_str()),
        ("password", password),
        ("Basic credentials", basic_pw.as_str()),
    ] {
        assert!(!log.contains(secret), "the {what} is in fishd's log");
    }

    let data = d.data_dir();
    for file in ["ca.key", "node.key", "fishctl.yaml", "meta.secret"] {
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the data directory is {mode:o}");
}

/// fishd's log without terminal colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn mutations_leave_an_audit_trail() {
    let d = TestDaemon::start("").await.unwrap();
    let label = "kind: Label\nmetadata: {name: audited}\nspec:\n  definitions:\n    - driver: test\n      resources: {cpu: 1, ram: 1}\n---\nkind: Application\nmetadata: {name: audited-1}\nspec: {label: audited}\n";
    assert_eq!(d.apply(label).await.unwrap().0, 200);
    assert_eq!(d.post("/api/v1/applications/audited-1/deallocate", None).await.unwrap().0, 202);
    create_user(&d, "audited-user", json!({"roles": ["user"]})).await;
    let (code, _) = d.post("/api/v1/users/nobody-here/token", None).await.unwrap();
    assert_eq!(code, 404);
    let expect = [
        ("apply", "Label", "audited", "created"),
        ("apply", "Application", "audited-1", "created"),
        ("deallocate", "Application", "audited-1", "accepted"),
        ("create", "User", "audited-user", "created"),
        ("rotate-token", "User", "nobody-here", "rejected"),
    ];
    let mut log = String::new();
    eventually("every audit line", || {
        log = plain(&d.log());
        let log = log.clone();
        async move {
            expect.iter().all(|(action, kind, name, outcome)| {
                log.lines().any(|l| {
                    l.contains(" audit: ")
                        && l.contains("user=admin")
                        && l.contains(&format!("action=\"{action}\""))
                        && l.contains(&format!("kind=\"{kind}\""))
                        && l.contains(&format!("name=\"{name}\""))
                        && l.contains(&format!("outcome=\"{outcome}\""))
                })
            })
        }
    })
    .await
    .unwrap_or_else(|e| {
        let audit: Vec<&str> = log.lines().filter(|l| l.contains(" audit: ")).collect();
        panic!("{e}: audit lines:\n{}", audit.join("\n"))
    });
}
