//! The fishctl binary against a real fishd (issue 3).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aquarium_e2e::{TestDaemon, WAIT, bin};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn applying_a_directory_twice_changes_nothing_the_second_time() {
    let d = TestDaemon::start("").await.unwrap();
    let first = d.fishctl(&["apply", "-f", &repo("manifests/test")]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = stdout(&first);
    assert!(out.contains("label/test-small created (version 1)"), "{out}");
    let second = d.fishctl(&["apply", "-f", &repo("manifests/test")]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = stdout(&second);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l.contains("unchanged")), "{lines:#?}");
}

#[tokio::test]
async fn get_json_parses_and_invalid_manifests_name_the_field() {
    let d = TestDaemon::start("").await.unwrap();
    assert!(d.fishctl(&["apply", "-f", &repo("manifests/test/test-label.yaml")]).status.success());
    let o = d.fishctl(&["get", "labels", "-o", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["kind"], "LabelList");
    assert_eq!(v["items"][0]["metadata"]["name"], "test-small");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: Label\nmetadata: {name: bad}\nspec: {definitions: [{driver: test, resources: {cpu: many}}]}\n",
    )
    .unwrap();
    let o = d.fishctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("spec.definitions[0].resources.cpu"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");

    // A driver this node does not have is caught by the server, with its field path.
    std::fs::write(
        &bad,
        "kind: Label\nmetadata: {name: bad}\nspec: {definitions: [{driver: vmware, resources: {cpu: 1}}]}\n",
    )
    .unwrap();
    let o = d.fishctl(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("spec.definitions[0].driver"), "{}", stderr(&o));
}

#[tokio::test]
async fn watch_prints_the_transitions_to_deallocated() {
    let d = TestDaemon::start("").await.unwrap();
    assert!(d.fishctl(&["apply", "-f", &repo("manifests/test/test-label.yaml")]).status.success());
    let mut child = Command::new(bin("fishctl"))
        .arg("--config")
        .arg(d.fishctl_config())
        .args(["get", "applications", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let o = d.fishctl(&["apply", "-f", &repo("manifests/test/test-app.yaml"), "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.fishctl(&["deallocate", "application", "test-app-1", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut seen = Vec::new();
    let start = Instant::now();
    while !seen.iter().any(|l: &String| l.contains("test-app-1") && l.contains("DEALLOCATED")) {
        assert!(start.elapsed() < WAIT, "watch printed: {seen:#?}");
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let joined = seen.join("\n");
    for phase in ["ELECTED", "ALLOCATED", "DEALLOCATE", "DEALLOCATED"] {
        assert!(joined.contains(phase), "no {phase} in:\n{joined}");
    }
}

#[tokio::test]
async fn wait_fails_for_an_application_that_ends_in_error() {
    let d = TestDaemon::start("allocationRetry: 1\n").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("doomed.yaml");
    std::fs::write(
        &f,
        "kind: Label\nmetadata: {name: doomed}\nspec: {definitions: [{driver: test, resources: {cpu: 1}, options: {failAllocations: 3}}]}\n---\nkind: Application\nmetadata: {name: doomed-1}\nspec: {label: doomed}\n",
    )
    .unwrap();
    let o = d.fishctl(&["apply", "-f", f.to_str().unwrap(), "--wait", "--timeout", "30s"]);
    assert!(!o.status.success(), "--wait succeeded for an ERROR application: {}", stdout(&o));
    assert!(stderr(&o).contains("ERROR"), "{}", stderr(&o));
}
