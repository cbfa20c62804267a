//! Operations and GitOps (issue 14) through the real fishctl against real fishd nodes:
//! diff, dry runs, applyset prune, backup under load and restore, token rotation,
//! queue metrics and the monitoring files.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aquarium_e2e::{TestDaemon, WAIT, bin, eventually};
use serde_json::Value;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn label(name: &str, cpu: u32) -> String {
    format!(
        "kind: Label\nmetadata: {{name: {name}}}\nspec:\n  definitions:\n    - driver: test\n      resources: {{cpu: {cpu}, ram: 1}}\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) -> String {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Names (and versions) of the stored labels.
async fn labels(d: &TestDaemon) -> BTreeSet<(String, u64)> {
    let (code, v) = d.get("/api/v1/labels").await.unwrap();
    assert_eq!(code, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["metadata"]["name"].as_str().unwrap().to_owned(), l["metadata"]["version"].as_u64().unwrap()))
        .collect()
}

async fn revision(d: &TestDaemon) -> String {
    let (_, v) = d.get("/api/v1/labels").await.unwrap();
    v["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn diff_dry_run_and_applyset_prune_through_fishctl() {
    let d = TestDaemon::start("").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let a = write(&repo, "a.yaml", &label("a", 1));
    write(&repo, "b.yaml", &label("b", 1));
    let repo_s = repo.display().to_string();

    let o = d.fishctl(&["apply", "-f", &repo_s, "--applyset", "team", "--prune"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("label/a created (version 1)") && stdout(&o).contains("label/b created"),
        "{}",
        stdout(&o)
    );
    // Applied outside the set: a prune of the set never touches it.
    let outside = write(tmp.path(), "outside.yaml", &label("outside", 1));
    assert!(d.fishctl(&["apply", "-f", &outside]).status.success());
    // An application pinned to b keeps running when b is pruned.
    let app = write(tmp.path(), "app.yaml", "kind: Application\nmetadata: {name: on-b}\nspec: {label: b}\n");
    assert!(d.fishctl(&["apply", "-f", &app]).status.success());
    d.wait_phase("on-b", "ALLOCATED").await.unwrap();

    // Unchanged: exit 0, nothing printed.
    let o = d.fishctl(&["diff", "-f", &a]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "");

    // Changed: exit 1, a unified diff of what the server would store (its next version).
    std::fs::write(&a, label("a", 2)).unwrap();
    let before = revision(&d).await;
    let o = d.fishctl(&["diff", "-f", &a]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("--- a/label/a (stored)\n+++ b/label/a (configured by apply)\n@@"), "{text}");
    let has = |sign: char, what: &str| text.lines().any(|l| l.starts_with(sign) && l.contains(what));
    assert!(has('-', "cpu: 1") && has('+', "cpu: 2") && has('-', "version: 1") && has('+', "version: 2"), "{text}");

    // A dry-run apply prints the same results and writes nothing.
    let o = d.fishctl(&["apply", "-f", &repo_s, "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("label/a configured (version 2) (dry run)"), "{}", stdout(&o));
    assert_eq!(revision(&d).await, before, "a dry run wrote something");
    assert!(labels(&d).await.contains(&("a".to_owned(), 1)));
    assert!(!labels(&d).await.contains(&("a".to_owned(), 2)));

    // Secrets never appear in a diff.
    let user = write(
        tmp.path(),
        "user.yaml",
        "kind: User\nmetadata: {name: carol}\nspec: {roles: [user], password: s3cret-Pa55word}\n",
    );
    assert!(d.fishctl(&["apply", "-f", &user]).status.success());
    let o = d.fishctl(&["diff", "-f", &user]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("secret fields change (not shown)"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("s3cret") && !stderr(&o).contains("s3cret"));
    // An error is exit 2, kubectl's "> 1".
    let bad =
        write(tmp.path(), "bad.yaml", "kind: Label\nmetadata: {name: x}\nspec: {definitions: [{driver: nope}]}\n");
    let o = d.fishctl(&["diff", "-f", &bad]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));

    // b leaves the repository: the dry run and the diff show the prune, nothing goes yet.
    std::fs::remove_file(repo.join("b.yaml")).unwrap();
    let o = d.fishctl(&["apply", "-f", &repo_s, "--applyset", "team", "--prune", "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("label/b pruned (dry run)"), "{}", stdout(&o));
    let o = d.fishctl(&["diff", "-f", &repo_s, "--applyset", "team", "--prune"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("--- a/label/b (stored)\n+++ /dev/null\n"), "{}", stdout(&o));
    assert!(labels(&d).await.contains(&("b".to_owned(), 1)));

    let o = d.fishctl(&["apply", "-f", &repo_s, "--applyset", "team", "--prune"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("label/b pruned") && out.contains("label/a configured (version 2)"), "{out}");
    assert_eq!(out.matches("pruned").count(), 1, "{out}");
    let names: BTreeSet<String> = labels(&d).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, BTreeSet::from(["a".to_owned(), "outside".to_owned()]), "exactly b went");
    let (code, _) = d.get("/api/v1/users/carol").await.unwrap();
    assert_eq!(code, 200, "a user applied outside the set survives");
    let app = d.application("on-b").await.unwrap();
    assert_eq!((app["status"]["phase"].as_str(), app["status"]["labelVersion"].as_u64()), (Some("ALLOCATED"), Some(1)));
}

#[tokio::test]
async fn rotate_token_invalidates_the_old_token_at_once() {
    let d = TestDaemon::start("").await.unwrap();
    let whoami = |token: String| {
        let (client, url) = (d.client.clone(), format!("{}/api/v1/whoami", d.url));
        async move { client.get(url).bearer_auth(token).send().await.unwrap().status().as_u16() }
    };
    let old = d.token.clone();
    let o = d.fishctl(&["rotate", "token"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let new = stdout(&o).trim().to_owned();
    assert!(new.len() >= 32 && new != old, "{new}");
    assert_eq!(whoami(old).await, 401, "the old token still works");
    assert_eq!(whoami(new.clone()).await, 200);
    let config = std::fs::read_to_string(d.fishctl_config()).unwrap();
    assert!(config.contains(&new), "fishctl.yaml was not updated:\n{config}");
    let o = d.fishctl(&["whoami"]);
    assert!(o.status.success() && stdout(&o).contains("admin"), "{}", stderr(&o));

    // An admin rotates another user's token: printed, the config keeps its own.
    let o = d.fishctl(&["create", "user", "dave"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dave_old = stdout(&o).split_whitespace().find(|w| w.len() >= 32).unwrap_or_default().to_owned();
    assert_eq!(whoami(dave_old.clone()).await, 200, "{}", stdout(&o));
    let o = d.fishctl(&["rotate", "token", "dave"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dave_new = stdout(&o).trim().to_owned();
    assert_eq!(whoami(dave_old).await, 401);
    assert_eq!(whoami(dave_new).await, 200);
    assert!(std::fs::read_to_string(d.fishctl_config()).unwrap().contains(&new));
}

/// (table, key) of every entry of a backup file for the kinds a restore must keep.
fn backup_objects(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| matches!(v["t"].as_str(), Some("labels" | "applications" | "users" | "tokens")))
        .map(|v| (v["t"].as_str().unwrap_or_default().to_owned(), v["k"].to_string()))
        .collect()
}

#[tokio::test]
async fn a_backup_under_load_restores_every_object_and_old_tokens_work() {
    let d = TestDaemon::start("").await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let m = write(tmp.path(), "m.yaml", &format!("{}---\n{}", label("ci", 1), label("other", 1)));
    assert!(d.fishctl(&["apply", "-f", &m]).status.success());
    std::fs::write(&m, label("ci", 2)).unwrap();
    assert!(d.fishctl(&["apply", "-f", &m]).status.success());
    let o = d.fishctl(&["create", "user", "erin"]);
    let erin = stdout(&o).split_whitespace().find(|w| w.len() >= 32).unwrap_or_default().to_owned();
    assert!(o.status.success() && !erin.is_empty(), "{}", stderr(&o));

    // Writes keep running while the backup streams.
    let stop = tokio_util_free_flag();
    let load = {
        let (client, url, token, stop) = (d.client.clone(), d.url.clone(), d.token.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = format!("kind: Application\nmetadata: {{name: load-{n}}}\nspec: {{label: ci}}\n");
                let r = client
                    .post(format!("{url}/api/v1/apply"))
                    .bearer_auth(&token)
                    .header("content-type", "application/yaml")
                    .body(body)
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    n += 1;
                }
            }
            n
        })
    };
    eventually("the load to run", || async {
        let (_, v) = d.get("/api/v1/applications").await.unwrap();
        v["items"].as_array().is_some_and(|a| a.len() >= 5)
    })
    .await
    .unwrap();
    let file = tmp.path().join("backup.jsonl");
    let (fishctl, config, out) = (bin("fishctl"), d.fishctl_config(), file.clone());
    let o = tokio::task::spawn_blocking(move || {
        Command::new(fishctl).arg("--config").arg(config).args(["backup", "-o"]).arg(out).output().unwrap()
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, during) = d.get("/api/v1/applications").await.unwrap();
    let after_backup = during["items"].as_array().map(Vec::len).unwrap_or(0);
    eventually("writes to go on after the backup", || async {
        let (_, v) = d.get("/api/v1/applications").await.unwrap();
        v["items"].as_array().is_some_and(|a| a.len() > after_backup)
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = tokio::time::timeout(WAIT, load).await.unwrap().unwrap();
    assert!(written > 5);

    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().last().is_some_and(|l| l.starts_with("{\"end\"")), "no end line");
    let saved = backup_objects(&text);
    assert!(saved.contains(&("users".to_owned(), "\"erin\"".to_owned())));
    assert!(saved.iter().filter(|(t, _)| t == "applications").count() >= 5);

    // Restore into a new data directory; a non-empty one is refused.
    let d2 = TestDaemon::prepared("").unwrap();
    let restore =
        |dir: &Path| Command::new(bin("fishd")).arg("restore").arg("--data-dir").arg(dir).arg(&file).output().unwrap();
    let o = restore(&d2.data_dir());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("restored revision "), "{}", stdout(&o));
    let o = restore(&d2.data_dir());
    assert!(!o.status.success() && stderr(&o).contains("not empty"), "{}", stderr(&o));
    // What an operator copies besides the backup: the CA (so clients' ca_cert still
    // verifies the node) and the client config.
    for f in ["ca.crt", "ca.key", "fishctl.yaml"] {
        std::fs::copy(d.data_dir().join(f), d2.data_dir().join(f)).unwrap();
    }
    let mut d2 = d2;
    d2.start_again().await.unwrap();
    assert_eq!(d2.token, d.token, "the admin token of the backup");

    // Every object of the backup is there.
    let (_, v) = d2.get("/api/v1/labels").await.unwrap();
    let got_labels: BTreeSet<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("[{},{}]", l["metadata"]["name"], l["metadata"]["version"]))
        .collect();
    let (_, v) = d2.get("/api/v1/applications").await.unwrap();
    let got_apps: BTreeSet<String> =
        v["items"].as_array().unwrap().iter().map(|a| a["metadata"]["uid"].to_string()).collect();
    let (_, v) = d2.get("/api/v1/users").await.unwrap();
    let got_users: BTreeSet<String> =
        v["items"].as_array().unwrap().iter().map(|u| u["metadata"]["name"].to_string()).collect();
    for (table, key) in &saved {
        let found = match table.as_str() {
            "labels" => got_labels.contains(&key.replace(' ', "")),
            "applications" => got_apps.contains(key),
            "users" => got_users.contains(key),
            _ => true,
        };
        assert!(found, "{table} {key} of the backup is missing after restore");
    }
    // Old tokens work against the restored node: the admin's through fishctl, erin's directly.
    let o = d2.fishctl(&["get", "labels"]);
    assert!(o.status.success() && stdout(&o).contains("ci"), "{}", stderr(&o));
    let r = d2.client.get(format!("{}/api/v1/whoami", d2.url)).bearer_auth(&erin).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// A stop flag shared with a spawned task.
fn tokio_util_free_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

/// The value of the sample `name` (exactly, labels included) in a Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// Metric names a monitoring file refers to: `aquarium_*` and `fishd_*` words.
fn referenced_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["aquarium_", "fishd_"] {
        for (i, _) in text.match_indices(prefix) {
            let before_ok = i == 0 || !text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
            let name: String =
                text[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            if before_ok {
                out.insert(name);
            }
        }
    }
    out
}

#[tokio::test]
async fn queue_metrics_count_a_burst_and_monitoring_files_name_real_metrics() {
    let d = TestDaemon::start("").await.unwrap();
    // The first definition fails its attempt; the retry takes the second.
    let flaky = "kind: Label\nmetadata: {name: flaky}\nspec:\n  definitions:\n    - driver: test\n      resources: {cpu: 1, ram: 1}\n      options: {failAllocations: 1}\n    - driver: test\n      resources: {cpu: 1, ram: 1}\n";
    let mut body = format!("{}---\n{flaky}", label("burst", 1));
    const N: usize = 20;
    for i in 0..N {
        body.push_str(&format!("---\nkind: Application\nmetadata: {{name: burst-{i}}}\nspec: {{label: burst}}\n"));
    }
    body.push_str("---\nkind: Application\nmetadata: {name: flaky-1}\nspec: {label: flaky}\n");
    let (code, v) = d.apply(&body).await.unwrap();
    assert_eq!(code, 200, "{v}");
    let start = Instant::now();
    loop {
        let (_, v) = d.get("/api/v1/applications").await.unwrap();
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let waiting: Vec<&Value> = items.iter().filter(|a| a["status"]["phase"] != "ALLOCATED").collect();
        if items.len() == N + 1 && waiting.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "not ALLOCATED: {:#?}",
            waiting.iter().map(|a| &a["status"]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics = |d: &TestDaemon| {
        let (client, url) = (d.client.clone(), format!("{}/metrics", d.url));
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let text = metrics(&d).await;
    assert_eq!(sample(&text, "aquarium_queue_seconds_count{label=\"burst\"}"), Some(N as f64), "{text}");
    assert_eq!(sample(&text, "aquarium_queue_seconds_count{label=\"flaky\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "aquarium_allocation_seconds_count{driver=\"test\"}"), Some(N as f64 + 1.0));
    assert_eq!(sample(&text, "aquarium_allocation_failures_total{driver=\"test\"}"), Some(1.0), "{text}");
    let inf = text
        .lines()
        .find(|l| {
            l.starts_with("aquarium_queue_seconds_bucket{")
                && l.contains("label=\"burst\"")
                && l.contains("le=\"+Inf\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(inf, Some(N as f64), "{text}");

    // The gauges are set from the store within a few seconds.
    let start = Instant::now();
    let mut text = metrics(&d).await;
    while sample(&text, "aquarium_applications{phase=\"ALLOCATED\"}") != Some(N as f64 + 1.0)
        || sample(&text, "aquarium_node_ready{node=\"test-node\"}").is_none()
    {
        assert!(start.elapsed() < WAIT, "gauges never set:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = metrics(&d).await;
    }
    assert_eq!(sample(&text, "aquarium_node_capacity{node=\"test-node\",resource=\"slots\"}"), Some(256.0));

    // Every metric the shipped dashboard and alert rules use is one fishd exports.
    let exported: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    let dir = format!("{}/../manifests/monitoring", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for file in ["grafana-dashboard.json", "alerts.yaml"] {
        let body = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<Value>(&body).unwrap();
        } else {
            serde_saphyr::from_str::<Value>(&body).unwrap();
        }
        let names = referenced_metrics(&body);
        assert!(!names.is_empty(), "{file} names no metric");
        for name in names {
            assert!(exported.contains(&name), "{file} uses {name}, which /metrics does not export:\n{exported:#?}");
            checked += 1;
        }
    }
    assert!(checked >= 8);

    // `fishctl top nodes` shows the node's use, once its heartbeat reported it.
    eventually("top nodes to show the allocations", || async {
        let o = d.fishctl(&["top", "nodes"]);
        let t = stdout(&o);
        o.status.success()
            && t.contains("test-node")
            && t.contains("21/256")
            && t.contains("waiting for a node (NEW): 0")
    })
    .await
    .unwrap();
}
