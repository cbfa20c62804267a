//! The docker driver through a real fishd and the real Docker Engine (issue 5).
//! Each test is its own node (unique name), so orphan removal at one daemon's start
//! never touches another test's containers. Skipped only where no engine answers.

use std::process::Command;
use std::time::Duration;

use aquarium_e2e::{TestDaemon, eventually};

const IMAGE: &str = "aquarium-test/busybox:latest";

/// Whether the Docker engine answers; its absence fails the test under `CI=true`.
fn engine() -> bool {
    let ok = Command::new("docker").arg("info").output().is_ok_and(|o| o.status.success());
    aquarium_e2e::prerequisite("docker", ok, "no Docker engine answers here (`docker info` failed)")
}

fn docker(args: &[&str]) -> (bool, String) {
    let o = Command::new("docker").args(args).output().unwrap();
    (o.status.success(), String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

fn node_name() -> String {
    format!("dk-{}", std::process::id() as u64 * 1000 + rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % 1000)
        .unwrap_or(0)
}

/// Networks of their own: the firewall chains fishd gives its networks never touch the
/// default ones other nodes of this host use.
fn config(node: &str) -> String {
    format!("nodeName: {node}\ndrivers:\n  docker: {{networkPrefix: aquarium-e2e}}\n")
}

fn label(name: &str, command: &str, extra: &str) -> String {
    format!(
        "---\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  metadata: {{FROM_LABEL: label-value}}\n  definitions:\n    - driver: docker\n      images: [{{name: aquarium-test/busybox, tag: latest}}]\n      resources: {{cpu: 1, ram: 1, disks: {{ws: {{size: 1}}}}}}\n      options: {{command: [sh, -c, {command:?}]}}\n{extra}"
    )
}

fn app(name: &str, label: &str) -> String {
    format!("---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}}}\n")
}

fn container_of(app: &serde_json::Value) -> String {
    format!("fish-{}", app["metadata"]["uid"].as_str().unwrap())
}

#[tokio::test]
async fn container_runs_with_limits_reads_its_metadata_is_isolated_and_leaves_nothing() {
    if !engine() {
        return;
    }
    let node = node_name();
    let d = TestDaemon::start(&config(&node)).await.unwrap();
    // One request, at once: the endpoint answers a container that asks before its
    // allocation is recorded (no retry loop to hide a 404).
    let cmd = "wget -q -O /tmp/m \"$FISH_META_URL\" && mv /tmp/m /tmp/meta.json; sleep 3600";
    let (code, body) = d.apply(&(label("bb", cmd, "") + &app("box", "bb"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("box", "ALLOCATED").await.unwrap();
    let c = container_of(&a);

    let (_, limits) = docker(&["inspect", "-f", "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}", &c]);
    assert_eq!(limits, format!("1000000000 {}", 1u64 << 30));
    let (_, labels) = docker(&["inspect", "-f", "{{index .Config.Labels \"aquarium.fish/node\"}}", &c]);
    assert_eq!(labels, node);

    // The container found the metadata endpoint on its network's gateway and was
    // identified there by its address.
    eventually("the metadata file", || async { docker(&["exec", &c, "test", "-s", "/tmp/meta.json"]).0 })
        .await
        .unwrap();
    let (_, meta) = docker(&["exec", &c, "cat", "/tmp/meta.json"]);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["FROM_LABEL"], "label-value");
    assert_eq!(meta["FISH_APPLICATION"], "box");

    // No route out of the isolated network (TEST-NET-1, never a real host).
    let start = std::time::Instant::now();
    let (reached, _) = docker(&["exec", &c, "nc", "-w", "3", "192.0.2.1", "80"]);
    assert!(!reached, "the container reached an outside address");
    assert!(start.elapsed() < Duration::from_secs(10));

    assert_eq!(d.post("/api/v1/applications/box/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("box", "DEALLOCATED").await.unwrap();
    assert!(!docker(&["inspect", &c]).0, "container {c} left behind");
    assert!(!docker(&["volume", "inspect", &format!("{c}-ws")]).0, "volume left behind");
}

#[tokio::test]
async fn metadata_endpoint_is_bound_when_the_engine_answers_after_start() {
    if !engine() {
        return;
    }
    // The engine is "down" at start: the configured socket does not exist yet.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let node = node_name();
    let d = TestDaemon::start(&format!("nodeName: {node}\ndrivers:\n  docker: {{socket: {}}}\n", socket.display()))
        .await
        .unwrap();
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let cmd = "wget -q -O /tmp/m \"$FISH_META_URL\" && mv /tmp/m /tmp/meta.json; sleep 3600";
    let (code, body) = d.apply(&(label("late", cmd, "") + &app("late-box", "late"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("late-box", "ALLOCATED").await.unwrap();
    let c = container_of(&a);
    eventually("the metadata file", || async { docker(&["exec", &c, "test", "-s", "/tmp/meta.json"]).0 })
        .await
        .unwrap();
    let (_, meta) = docker(&["exec", &c, "cat", "/tmp/meta.json"]);
    let meta: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(meta["FISH_APPLICATION"], "late-box");
    assert_eq!(d.post("/api/v1/applications/late-box/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("late-box", "DEALLOCATED").await.unwrap();
}

#[tokio::test]
async fn restart_adopts_running_containers_and_removes_orphans() {
    if !engine() {
        return;
    }
    let node = node_name();
    let mut d = TestDaemon::start(&config(&node)).await.unwrap();
    let (code, body) = d.apply(&(label("keep", "sleep 3600", "") + &app("kept", "keep"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("kept", "ALLOCATED").await.unwrap();
    let c = container_of(&a);
    let (_, id_before) = docker(&["inspect", "-f", "{{.Id}}", &c]);
    d.kill9();

    // A container labelled for this node and driver, whose application fishd never had.
    let orphan = format!("fish-orphan-{}", rand_suffix());
    let stray_uid = "0193c0de-0000-7000-8000-000000000001";
    let (ok, _) = docker(&[
        "run",
        "-d",
        "--name",
        &orphan,
        "--label",
        &format!("aquarium.fish/application={stray_uid}"),
        "--label",
        &format!("aquarium.fish/node={node}"),
        "--label",
        "aquarium.fish/driver=docker",
        "--label",
        "aquarium.fish/managed=true",
        IMAGE,
        "sleep",
        "3600",
    ]);
    assert!(ok, "could not start the orphan");

    d.start_again().await.unwrap();
    eventually("the orphan to be removed", || async { !docker(&["inspect", &orphan]).0 }).await.unwrap();
    let a = d.wait_phase("kept", "ALLOCATED").await.unwrap();
    assert_eq!(container_of(&a), c);
    let (_, id_after) = docker(&["inspect", "-f", "{{.Id}}", &c]);
    assert_eq!(id_before, id_after, "the container was replaced, not adopted");
    d.post("/api/v1/applications/kept/deallocate", None).await.unwrap();
    d.wait_phase("kept", "DEALLOCATED").await.unwrap();
    assert!(!docker(&["inspect", &c]).0);
}

#[tokio::test]
async fn a_container_that_stops_ends_its_application_with_the_exit_code() {
    if !engine() {
        return;
    }
    let d = TestDaemon::start(&config(&node_name())).await.unwrap();
    assert_eq!(d.apply(&(label("quits", "sleep 1; exit 3", "") + &app("quitter", "quits"))).await.unwrap().0, 200);
    let a = d.wait_phase("quitter", "ALLOCATED").await.unwrap();
    let c = container_of(&a);
    eventually("quitter to end", || async {
        d.application("quitter").await.unwrap()["status"]["phase"] == "DEALLOCATED"
    })
    .await
    .unwrap();
    let a = d.application("quitter").await.unwrap();
    assert!(a["status"]["message"].as_str().unwrap().contains("exited with code 3"), "{:#}", a["status"]);
    assert!(!docker(&["inspect", &c]).0, "stopped container not cleaned up");
}

#[tokio::test]
async fn a_bad_sum_fails_clearly_and_leaves_nothing() {
    if !engine() {
        return;
    }
    let d = TestDaemon::start(&format!("{}allocationRetry: 1\n", config(&node_name()))).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("busybox.tar");
    let (ok, _) = docker(&["save", "-o", tar.to_str().unwrap(), IMAGE]);
    assert!(ok);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let yaml = format!(
        "---\nkind: Label\nmetadata: {{name: badsum}}\nspec:\n  definitions:\n    - driver: docker\n      images: [{{name: aquarium-test/never-loaded, tag: x, url: \"file://{}\", sum: \"{wrong}\"}}]\n      resources: {{cpu: 1, ram: 1}}\n{}",
        tar.display(),
        app("bad", "badsum")
    );
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    eventually("bad to end in ERROR", || async { d.application("bad").await.unwrap()["status"]["phase"] == "ERROR" })
        .await
        .unwrap();
    let a = d.application("bad").await.unwrap();
    let msg = a["status"]["message"].as_str().unwrap();
    assert!(msg.contains("sum") && msg.contains(&wrong), "{msg}");
    assert!(!docker(&["inspect", &container_of(&a)]).0, "container left behind");
    assert!(!docker(&["image", "inspect", "aquarium-test/never-loaded:x"]).0, "an unverified image was loaded");
}

/// Two fishd starting together can both create a network of one name (the engine checks
/// names, but not atomically) and the engine then starts no container on that name: the
/// node settles on one network, removes the others, and its containers start.
#[tokio::test]
async fn a_duplicate_network_left_by_a_race_is_removed_and_containers_start() {
    if !engine() {
        return;
    }
    let node = node_name();
    let prefix = format!("aquarium-e2e-{node}");
    let name = format!("{prefix}-isolated");
    let racers: Vec<_> = (0..4)
        .map(|_| {
            let name = name.clone();
            std::thread::spawn(move || {
                let args = ["network", "create", "--internal", "--label", "aquarium.fish/managed=true", &name];
                docker(&args).0
            })
        })
        .collect();
    let created = racers.into_iter().map(|r| r.join().is_ok_and(|ok| ok)).filter(|&ok| ok).count();
    let of_name = || {
        let (_, ids) = docker(&["network", "ls", "-q", "--no-trunc", "--filter", &format!("name=^{name}$")]);
        ids.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert!(created >= 2, "{created} of 4 racing creations went through: this test cannot set up the race");

    let config = format!("nodeName: {node}\ndrivers:\n  docker: {{networkPrefix: {prefix}}}\n");
    let d = TestDaemon::start(&config).await.unwrap();
    let (code, body) = d.apply(&(label("dup", "sleep 3600", "") + &app("dup-1", "dup"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("dup-1", "ALLOCATED").await.unwrap();
    let left = of_name();
    assert_eq!(left.len(), 1, "duplicates are left: {left:?}");
    let format = "{{range $k, $v := .NetworkSettings.Networks}}{{$v.NetworkID}}{{end}}";
    let (_, on) = docker(&["inspect", "-f", format, &container_of(&a)]);
    assert_eq!(on, left[0], "the container is not on the network that is left");

    d.post("/api/v1/applications/dup-1/deallocate", None).await.unwrap();
    d.wait_phase("dup-1", "DEALLOCATED").await.unwrap();
    drop(d);
    // Both networks of the test's prefix (the node makes the nat one at start).
    let (_, ours) = docker(&["network", "ls", "-q", "--filter", &format!("name=^{prefix}-")]);
    for id in ours.lines() {
        assert!(docker(&["network", "rm", id]).0, "could not remove the test's network {id}");
    }
}
