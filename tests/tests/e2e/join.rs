//! Joining a cluster through the real binaries: join tokens, the certificate a new
//! node gets, what it keeps for restarts, how a bad token stops it, and the
//! node-to-node peer check on the API listener.

use std::process::Output;
use std::time::Duration;

use aquarium_e2e::{TestDaemon, bin, eventually};
use serde_json::{Value, json};

/// A join token made with `fishctl create join-token`, checked to be printed alone.
pub(crate) fn join_token(a: &TestDaemon, ttl: &str) -> String {
    let out = a.fishctl(&["create", "join-token", "--ttl", ttl]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "the token alone: {text:?}");
    let token = text.trim().to_owned();
    assert!(token.starts_with("aqjoin1."), "{token}");
    token
}

/// Runs a fishd that tries to join `via` with `token` and must exit; returns its output.
async fn failed_join(via: &TestDaemon, token: &str) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("fish.yml");
    std::fs::write(
        &config,
        format!("dataDir: {}\napi: 127.0.0.1:0\nnodeName: node-x\ndrivers: {{test: {{}}}}\n", data.display()),
    )
    .unwrap();
    let child = tokio::process::Command::new(bin("fishd"))
        .arg("--config")
        .arg(&config)
        .args(["--join", &via.addr(), "--join-token", token])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child).await.expect("fishd exits").unwrap();
    (out, dir)
}

/// The one line fishd ends with; checks the exit code and that nothing was joined.
fn exit_line(out: &Output, dir: &tempfile::TempDir) -> String {
    assert!(!out.status.success(), "fishd must fail: {out:?}");
    assert!(!dir.path().join("data/cluster.json").exists(), "a refused join writes nothing");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("fishd: "), "{stderr}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_shares_the_ca_and_restarts_without_flags() {
    let a = TestDaemon::start("nodeName: node-a\n").await.unwrap();
    let token = join_token(&a, "10m");
    let mut b = TestDaemon::start_joining(&a, &token, "nodeName: node-b\n").await.unwrap();

    // One ca_cert: A's client (trusting only A's ca.crt) verifies B's API.
    let ca = |d: &TestDaemon| std::fs::read_to_string(d.data_dir().join("ca.crt")).unwrap();
    assert_eq!(ca(&a), ca(&b));
    let r = a.client.get(format!("{}/readyz", b.url)).send().await.unwrap();
    assert!(r.status().is_success());
    let joined: Value =
        serde_json::from_str(&std::fs::read_to_string(b.data_dir().join("cluster.json")).unwrap()).unwrap();
    assert_eq!(joined["node"], "node-b");
    assert_eq!(joined["advertise"], b.addr());
    assert!(joined["members"].as_array().unwrap().iter().any(|m| m["name"] == "node-a"), "{joined}");
    assert!(joined["clusterId"].as_str().unwrap().starts_with("aq-"));

    // Restart with no join settings in fish.yml: the data dir remembers.
    b.restart().await.unwrap();
    assert!(!std::fs::read_to_string(b.config_path()).unwrap().contains("cluster:"));
    assert_eq!(ca(&a), ca(&b), "still the cluster CA after a restart");
    let r = a.client.get(format!("{}/readyz", b.url)).send().await.unwrap();
    assert!(r.status().is_success());

    // fishctl get nodes shows ROLE and READY.
    let out = a.fishctl(&["get", "nodes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(header.contains("ROLE") && header.contains("READY"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("node-a") && l.contains("leader")), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_join_tokens_stop_fishd_with_one_line() {
    let a = TestDaemon::start("nodeName: node-a\n").await.unwrap();
    let (status, body) = a.post("/api/v1/cluster/join-tokens", Some(json!({"ttl": "10m"}))).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert!(body["expiresAt"].is_string(), "{body}");
    let _b = TestDaemon::start_joining(&a, &token, "nodeName: node-b\n").await.unwrap();

    let (out, dir) = failed_join(&a, &token).await;
    let line = exit_line(&out, &dir);
    assert!(line.contains("join token") && line.contains("already used"), "reused: {line}");

    let fp = token.split('.').nth(1).unwrap();
    let forged = format!("aqjoin1.{fp}.{}", "0123456789abcdef".repeat(4));
    let (out, dir) = failed_join(&a, &forged).await;
    let line = exit_line(&out, &dir);
    assert!(line.contains("join token") && line.contains("not known"), "forged: {line}");

    let other = TestDaemon::start("nodeName: node-o\n").await.unwrap();
    let foreign = join_token(&other, "10m");
    let (out, dir) = failed_join(&a, &foreign).await;
    let line = exit_line(&out, &dir);
    assert!(line.contains("join token does not belong to the cluster"), "another cluster's: {line}");

    let (out, dir) = failed_join(&a, "fish_0123").await;
    let line = exit_line(&out, &dir);
    assert!(line.contains("join token is malformed"), "malformed: {line}");

    let (status, body) = a.post("/api/v1/cluster/join-tokens", Some(json!({"ttl": "1s"}))).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let expires = time::OffsetDateTime::parse(
        body["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    eventually("the token to expire", || async { time::OffsetDateTime::now_utc() > expires }).await.unwrap();
    let (out, dir) = failed_join(&a, body["token"].as_str().unwrap()).await;
    let line = exit_line(&out, &dir);
    assert!(line.contains("join token") && line.contains("expired"), "expired: {line}");

    // Only admins make tokens, and the ttl is checked.
    let (status, body) = a.post("/api/v1/cluster/join-tokens", Some(json!({"ttl": "30d"}))).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["details"][0]["field"], "ttl");
    let (status, user) = a
        .post(
            "/api/v1/users",
            Some(json!({"kind": "User", "metadata": {"name": "carol"}, "spec": {"roles": ["user"]}})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{user}");
    let r = a
        .client
        .post(format!("{}/api/v1/cluster/join-tokens", a.url))
        .bearer_auth(user["status"]["token"].as_str().unwrap())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// A client trusting `ca_pem` and presenting `cert_pem` + `key_pem`.
fn client_with_cert(ca_pem: &str, cert_pem: &str, key_pem: &str) -> reqwest::Client {
    let identity = reqwest::Identity::from_pem(format!("{cert_pem}\n{key_pem}").as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .identity(identity)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A certificate for `cn`, signed with the CA key in `data_dir` (as PEM cert, key).
fn cert_signed_by(data_dir: &std::path::Path, cn: &str) -> (String, String) {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(data_dir.join("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(data_dir.join("ca.crt")).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_routes_take_only_member_certificates() {
    let a = TestDaemon::start("nodeName: node-a\n").await.unwrap();
    let token = join_token(&a, "10m");
    let b = TestDaemon::start_joining(&a, &token, "nodeName: node-b\n").await.unwrap();
    let read = |d: &TestDaemon, f: &str| std::fs::read_to_string(d.data_dir().join(f)).unwrap();
    let ca = read(&a, "ca.crt");
    let peer = format!("{}/cluster/peer", a.url);

    // A member's certificate is accepted and named.
    let member = client_with_cert(&ca, &read(&b, "node.crt"), &read(&b, "node.key"));
    let r = member.get(&peer).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["node"], "node-b");

    // The forwarded-write routes: a member reaches them (an empty body is no proposal).
    let writes = ["/cluster/write", "/cluster/write-batch"].map(|p| format!("{}{p}", a.url));
    for w in &writes {
        let r = member.post(w).send().await.unwrap();
        assert_eq!(r.status(), 400, "{w}");
    }
    // The peer stream: a member opens it (an empty body is a stream of no frames).
    let stream = format!("{}/raft/stream", a.url);
    let r = member.post(&stream).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().is_empty(), "no frames in, no answers out");
    let writes = [writes[0].clone(), writes[1].clone(), stream];

    // A plain user token (even the admin's) is not a node.
    let r = a.client.get(&peer).bearer_auth(&a.token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    for w in &writes {
        let r = a.client.post(w).bearer_auth(&a.token).send().await.unwrap();
        assert_eq!(r.status(), 403, "{w}");
    }

    // A certificate of the cluster CA for a node that is not a member.
    let (cert, key) = cert_signed_by(&a.data_dir(), "intruder");
    let intruder = client_with_cert(&ca, &cert, &key);
    let r = intruder.get(&peer).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("not a member"), "{body}");
    for w in &writes {
        let r = intruder.post(w).send().await.unwrap();
        assert_eq!(r.status(), 403, "{w}");
    }

    // A certificate of another CA fails the TLS handshake.
    let other = TestDaemon::start("nodeName: node-b\n").await.unwrap();
    let foreign = client_with_cert(&ca, &read(&other, "node.crt"), &read(&other, "node.key"));
    let r = foreign.get(&peer).send().await;
    assert!(r.is_err(), "a foreign CA's certificate must be refused: {r:?}");
    for w in &writes {
        let r = foreign.post(w).send().await;
        assert!(r.is_err(), "{w}: a foreign CA's certificate must be refused: {r:?}");
    }
    // ...while users without a certificate still reach the user API.
    let (status, _) = a.get("/api/v1/whoami").await.unwrap();
    assert_eq!(status, 200);
}
