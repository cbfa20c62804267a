//! The process driver through a real fishd (issue 4): metadata from the meta
//! endpoint, nothing left after deallocation, adoption after SIGKILL, exit codes,
//! and tokens that open only their own application's metadata.

use std::path::Path;
use std::time::Duration;

use aquarium_e2e::{TestDaemon, eventually};

const CONFIG: &str = "drivers:\n  process: {gracePeriod: 2s}\n  test: {}\n";

/// A process label on the host's network, run as fishd's own user: these tests are
/// about the driver's lifecycle, and their scripts write into the test's data directory
/// (the sandbox has its own tests in `sandbox.rs`).
fn label(name: &str, script: &str) -> String {
    let script = script.replace('\n', "\n            ");
    let user = if nix::unistd::geteuid().is_root() { "\n        user: root" } else { "" };
    format!(
        "---\nkind: Label\nmetadata: {{name: {name}}}\nspec:\n  metadata: {{FROM_LABEL: label-value}}\n  definitions:\n    - driver: process\n      resources: {{cpu: 1, ram: 1, network: host}}\n      options:{user}\n        command:\n          - sh\n          - -c\n          - |\n            {script}\n"
    )
}

fn app(name: &str, label: &str) -> String {
    format!(
        "---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}, metadata: {{FROM_APP: app-value}}}}\n"
    )
}

fn pid_of(app: &serde_json::Value) -> i32 {
    app["status"]["resource"]["identifier"].as_str().and_then(|p| p.parse().ok()).expect("pid identifier")
}

fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.trim_start().starts_with('Z')))
}

/// Every live process whose environment names this application.
fn processes_of(uid: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let mine = format!("FISH_APPLICATION_UID={uid}");
        if env.split(|b| *b == 0).any(|kv| kv == mine.as_bytes()) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test]
async fn process_reads_its_metadata_and_leaves_nothing_behind() {
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let out = d.data_dir().join("meta-out.json");
    let script = format!(
        "curl -sf --cacert \"$FISH_CA_CERT\" -H \"Authorization: Bearer $FISH_META_TOKEN\" \"$FISH_META_URL\" > {0}.tmp && mv {0}.tmp {0}\n(sleep 1000) &\nwait",
        out.display()
    );
    let (code, body) = d.apply(&(label("meta", &script) + &app("reader", "meta"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let a = d.wait_phase("reader", "ALLOCATED").await.unwrap();
    let uid = a["metadata"]["uid"].as_str().unwrap().to_owned();
    eventually("the metadata file", || async { out.exists() }).await.unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(meta["FROM_LABEL"], "label-value");
    assert_eq!(meta["FROM_APP"], "app-value");
    assert_eq!(meta["FISH_APPLICATION"], "reader");
    let workdir = a["status"]["resource"]["details"]["workdir"].as_str().map(str::to_owned);
    let procs = processes_of(&uid);
    assert!(procs.len() >= 2, "expected the shell and its grandchild, found {procs:?}");

    assert_eq!(d.post("/api/v1/applications/reader/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("reader", "DEALLOCATED").await.unwrap();
    assert!(processes_of(&uid).is_empty(), "processes survived: {:?}", processes_of(&uid));
    for pid in procs {
        assert!(!alive(pid), "pid {pid} survived");
    }
    if let Some(w) = workdir {
        assert!(!Path::new(&w).exists(), "working directory {w} left behind");
    }
    assert!(!d.data_dir().join("process/process").join(&uid).exists());
}

#[tokio::test]
async fn exit_code_is_reported_and_grandchildren_die_with_the_application() {
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let yaml = label("exit3", "sleep 1\nexit 3")
        + &app("three", "exit3")
        + &label("forker", "(sleep 1000) &\n(sh -c 'sleep 1001') &\nwait")
        + &app("forks", "forker");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    eventually("three to end by itself", || async {
        d.application("three").await.unwrap()["status"]["phase"] == "DEALLOCATED"
    })
    .await
    .unwrap();
    let three = d.application("three").await.unwrap();
    assert!(three["status"]["message"].as_str().unwrap().contains("exited with code 3"), "{:#}", three["status"]);

    let forks = d.wait_phase("forks", "ALLOCATED").await.unwrap();
    let uid = forks["metadata"]["uid"].as_str().unwrap().to_owned();
    eventually("the grandchildren to start", || async { processes_of(&uid).len() >= 3 }).await.unwrap();
    let family = processes_of(&uid);
    d.post("/api/v1/applications/forks/deallocate", None).await.unwrap();
    d.wait_phase("forks", "DEALLOCATED").await.unwrap();
    for pid in family {
        assert!(!alive(pid), "pid {pid} outlived its application");
    }
}

#[tokio::test]
async fn sigkilled_fishd_adopts_its_processes_on_restart() {
    let mut d = TestDaemon::start(CONFIG).await.unwrap();
    let mut yaml = label("sleeper", "while true; do sleep 1; done");
    for i in 0..3 {
        yaml += &app(&format!("s{i}"), "sleeper");
    }
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    let mut pids = Vec::new();
    for i in 0..3 {
        pids.push(pid_of(&d.wait_phase(&format!("s{i}"), "ALLOCATED").await.unwrap()));
    }
    d.kill9();
    for pid in &pids {
        assert!(alive(*pid), "pid {pid} died with fishd");
    }
    d.start_again().await.unwrap();
    // Adopted: still ALLOCATED with the same pids, and still running after a few inspections.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, pid) in pids.iter().enumerate() {
        let a = d.wait_phase(&format!("s{i}"), "ALLOCATED").await.unwrap();
        assert_eq!(pid_of(&a), *pid);
        assert!(alive(*pid));
    }
    for i in 0..3 {
        d.post(&format!("/api/v1/applications/s{i}/deallocate"), None).await.unwrap();
    }
    for i in 0..3 {
        d.wait_phase(&format!("s{i}"), "DEALLOCATED").await.unwrap();
    }
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived deallocation");
    }
}

#[tokio::test]
async fn a_token_opens_only_its_own_metadata() {
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let dir = d.data_dir();
    let script = |n: &str| {
        format!(
            "printf %s \"$FISH_META_TOKEN\" > {}/token-{n}.tmp && mv {0}/token-{n}.tmp {0}/token-{n}\nwhile true; do sleep 1; done",
            dir.display()
        )
    };
    let yaml = label("ta", &script("a")) + &app("app-a", "ta") + &label("tb", &script("b")) + &app("app-b", "tb");
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    d.wait_phase("app-a", "ALLOCATED").await.unwrap();
    d.wait_phase("app-b", "ALLOCATED").await.unwrap();
    eventually("both tokens", || async { dir.join("token-a").exists() && dir.join("token-b").exists() }).await.unwrap();
    let token_a = std::fs::read_to_string(dir.join("token-a")).unwrap();
    let meta = |t: String| {
        let d = &d;
        async move {
            let r = d.client.get(format!("{}/meta/v1/data", d.url)).bearer_auth(t).send().await.unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
        }
    };
    let (code, m) = meta(token_a.clone()).await;
    assert_eq!(code, 200);
    assert_eq!(m["FISH_APPLICATION"], "app-a");
    // Another application's uid with A's signature: refused, and no hint that B exists.
    let b_uid = d.application("app-b").await.unwrap()["metadata"]["uid"].as_str().unwrap().replace('-', "");
    let forged = format!("{b_uid}.{}", token_a.split_once('.').unwrap().1);
    assert_eq!(meta(forged).await.0, 404);
    assert_eq!(meta("garbage".into()).await.0, 404);
}
