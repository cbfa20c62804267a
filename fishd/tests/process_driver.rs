//! The `process` driver against real processes: real signals, checked through `/proc`.
//!
//! Each test has its own data directory; every wait has a deadline and every test runs
//! under a timeout.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_types::{Definition, Metadata};
use fishd::drivers::process::{ProcessConfig, ProcessDriver};
use fishd::drivers::{AllocateRequest, Allocated, Driver, ResourceState};
use serde_json::{Value, json};
use uuid::Uuid;

/// Any single test: process starts and stops take milliseconds, grace periods 1 s.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Any single wait for a condition.
const WAIT: Duration = Duration::from_secs(15);

async fn timeout<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f).await.expect("test timed out");
}

/// Polls `cond` until it holds; panics with `what` at the deadline.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(extra: Value) -> ProcessConfig {
    let mut base = json!({"gracePeriod": "1s"});
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    serde_json::from_value(base).expect("config")
}

/// A driver whose work root (used when root) is inside `data`, so the test's temporary
/// directory takes it along.
fn driver(data: &Path) -> ProcessDriver {
    ProcessDriver::new("process".into(), config(json!({"workRoot": data.join("work")})), data).expect("driver")
}

fn definition(options: Value) -> Definition {
    serde_json::from_value(json!({"driver": "process", "resources": {"cpu": 1, "ram": 1}, "options": options}))
        .expect("definition")
}

fn request(uid: Uuid, script: &str, metadata: Value) -> AllocateRequest {
    let metadata: Metadata = serde_json::from_value(metadata).expect("metadata");
    AllocateRequest {
        uid,
        name: "app".into(),
        definition: definition(json!({"command": ["sh", "-c", script]})),
        metadata,
        node: "node-1".into(),
    }
}

fn workdir(a: &Allocated) -> PathBuf {
    PathBuf::from(a.details["workdir"].as_str().expect("workdir detail"))
}

fn pid(a: &Allocated) -> i32 {
    a.identifier.parse().expect("pid identifier")
}

/// `(state, pgrp, session)` of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?))
}

/// Whether a process runs (a zombie does not).
fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

/// Live processes whose group or session is `leader`.
fn group_members(leader: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| proc_stat(p).is_some_and(|(s, g, sid)| s != 'Z' && (g == leader || sid == leader)))
        .collect()
}

/// How many `sleep` processes run in the group or session of `leader`.
fn sleeps_in_group(leader: i32) -> usize {
    group_members(leader).into_iter().filter(|p| read(Path::new(&format!("/proc/{p}/comm"))).trim() == "sleep").count()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_ended(d: &ProcessDriver, uid: Uuid, a: &Allocated) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match d.inspect(uid, &a.identifier).await.expect("inspect") {
            ResourceState::Ended(msg) => return msg,
            ResourceState::Running => {}
            lost => panic!("unexpected {lost:?}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "process did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn environment_reaches_the_process_and_deallocation_cleans_up() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let script = r#"echo "$FISH_APPLICATION $COLOR $COUNT $HOME" > env.txt; exec sleep 1000"#;
        let meta = json!({"FISH_APPLICATION": "app-1", "COLOR": "blue", "COUNT": 5});
        let a = d.allocate(&request(uid, script, meta)).await.expect("allocate");
        let env_file = workdir(&a).join("env.txt");
        wait_for("env.txt", || read(&env_file).ends_with('\n')).await;
        assert_eq!(read(&env_file), format!("app-1 blue 5 {}\n", workdir(&a).display()));
        assert_eq!(d.inspect(uid, &a.identifier).await.expect("inspect"), ResourceState::Running);
        let leader = pid(&a);
        assert!(!group_members(leader).is_empty());

        d.deallocate(uid, &a.identifier).await.expect("deallocate");
        assert_eq!(group_members(leader), Vec::<i32>::new());
        assert!(!d.app_dir(uid).exists());
        // Twice is fine, and so is a resource that is already gone.
        d.deallocate(uid, &a.identifier).await.expect("second deallocate");
        assert!(matches!(d.inspect(uid, &a.identifier).await.expect("inspect"), ResourceState::Lost(_)));
    })
    .await;
}

#[tokio::test]
async fn deallocation_kills_grandchildren() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let a = d.allocate(&request(uid, "sleep 1000 & echo $! > child.pid; wait", json!({}))).await.expect("allocate");
        let pid_file = workdir(&a).join("child.pid");
        wait_for("child.pid", || read(&pid_file).ends_with('\n')).await;
        let grandchild: i32 = read(&pid_file).trim().parse().expect("grandchild pid");
        assert!(alive(grandchild));

        d.deallocate(uid, &a.identifier).await.expect("deallocate");
        assert!(!alive(grandchild), "grandchild {grandchild} survived");
        assert_eq!(group_members(pid(&a)), Vec::<i32>::new());
    })
    .await;
}

#[tokio::test]
async fn the_cgroup_catches_a_grandchild_that_left_the_session() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let script = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' & sleep 1000";
        let a = d.allocate(&request(uid, script, json!({}))).await.expect("allocate");
        let has_cgroup = a.details.contains_key("cgroup");
        if !has_cgroup {
            // A process that calls setsid escapes without one, as documented.
            d.deallocate(uid, &a.identifier).await.expect("deallocate");
        }
        if !aquarium_e2e::prerequisite("cgroup", has_cgroup, "no writable cgroup v2 controller for the process driver")
        {
            return;
        }
        let pid_file = workdir(&a).join("escaped.pid");
        wait_for("escaped.pid", || read(&pid_file).ends_with('\n')).await;
        let escaped: i32 = read(&pid_file).trim().parse().expect("escaped pid");
        assert!(alive(escaped));
        assert!(!group_members(pid(&a)).contains(&escaped), "setsid did not leave the session");

        d.deallocate(uid, &a.identifier).await.expect("deallocate");
        assert!(!alive(escaped), "escaped grandchild {escaped} survived");
    })
    .await;
}

#[tokio::test]
async fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let a = d.allocate(&request(uid, "trap '' TERM; touch ready; sleep 1000", json!({}))).await.expect("allocate");
        let ready = workdir(&a).join("ready");
        wait_for("ready", || ready.exists()).await;
        let started = std::time::Instant::now();
        d.deallocate(uid, &a.identifier).await.expect("deallocate");
        assert!(started.elapsed() >= Duration::from_secs(1), "SIGKILL came before the grace period");
        assert_eq!(group_members(pid(&a)), Vec::<i32>::new());
    })
    .await;
}

#[tokio::test]
async fn exit_codes_and_signals_are_reported() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let a = d.allocate(&request(uid, "exit 3", json!({}))).await.expect("allocate");
        assert_eq!(wait_ended(&d, uid, &a).await, "exited with code 3");
        // A new driver (fishd restarted) reads the same status.
        assert_eq!(
            driver(data.path()).inspect(uid, &a.identifier).await.expect("inspect"),
            ResourceState::Ended("exited with code 3".into())
        );
        d.deallocate(uid, &a.identifier).await.expect("deallocate");

        let uid = Uuid::now_v7();
        let a = d.allocate(&request(uid, "kill -KILL $$", json!({}))).await.expect("allocate");
        assert_eq!(wait_ended(&d, uid, &a).await, "killed by signal 9 (SIGKILL)");
        d.deallocate(uid, &a.identifier).await.expect("deallocate");
    })
    .await;
}

#[tokio::test]
async fn a_restarted_driver_adopts_running_processes() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let uid = Uuid::now_v7();
        let req = request(uid, "touch ready; exec sleep 1000", json!({}));
        let a = {
            let first = driver(data.path());
            first.allocate(&req).await.expect("allocate")
            // Dropped here, as fishd is when it is killed.
        };
        let leader = pid(&a);
        wait_for("the sleep", || sleeps_in_group(leader) == 1).await;
        assert!(alive(leader), "the process must outlive its driver");

        let second = driver(data.path());
        let owned = second.list_owned().await.expect("list_owned");
        assert!(owned.iter().any(|o| o.uid == uid && o.identifier == a.identifier), "{owned:?}");
        assert_eq!(second.inspect(uid, &a.identifier).await.expect("inspect"), ResourceState::Running);
        // allocate is idempotent: the same process comes back, and nothing new starts.
        assert_eq!(second.allocate(&req).await.expect("allocate again").identifier, a.identifier);
        assert_eq!(sleeps_in_group(leader), 1);

        // An orphan (no application in the store) is removed by uid alone.
        second.deallocate(uid, "").await.expect("deallocate");
        assert!(!alive(leader));
        assert_eq!(group_members(leader), Vec::<i32>::new());
        assert!(second.list_owned().await.expect("list_owned").is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_reused_pid_is_not_adopted() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        // A process that is not ours, whose pid a stale pid file names.
        let mut stranger = std::process::Command::new("sleep");
        std::os::unix::process::CommandExt::process_group(&mut stranger, 0);
        let mut stranger = stranger.arg("1000").spawn().expect("spawn sleep");
        let stranger_pid = i32::try_from(stranger.id()).expect("pid");
        let uid = Uuid::now_v7();
        let dir = d.app_dir(uid);
        std::fs::create_dir_all(&dir).expect("app dir");
        std::fs::write(dir.join("pid"), format!("{stranger_pid} 1\n")).expect("pid file");

        let state = d.inspect(uid, &stranger_pid.to_string()).await.expect("inspect");
        assert!(matches!(&state, ResourceState::Lost(_)), "{state:?}");
        d.deallocate(uid, "").await.expect("deallocate");
        assert!(alive(stranger_pid), "deallocation killed a process that was not ours");
        assert!(!dir.exists());
        stranger.kill().expect("kill sleep");
        stranger.wait().expect("reap sleep");
    })
    .await;
}

#[tokio::test]
async fn output_is_captured_up_to_the_cap() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = ProcessDriver::new(
            "process/logs".into(),
            config(json!({"logLimit": 1000, "workRoot": data.path().join("work")})),
            data.path(),
        )
        .expect("driver");
        let uid = Uuid::now_v7();
        let script = "echo out; echo err >&2; head -c 100000 /dev/zero | tr '\\0' x; exit 0";
        let a = d.allocate(&request(uid, script, json!({}))).await.expect("allocate");
        // Output past the cap is drained, so the process is never blocked on a full pipe.
        assert_eq!(wait_ended(&d, uid, &a).await, "exited with code 0");
        let log = d.log_path(uid).expect("log path");
        assert!(log.starts_with(data.path()));
        wait_for("a full log", || read(&log).len() == 1000).await;
        let text = read(&log);
        assert!(text.starts_with("out\nerr\nxxx"), "{text:.40}");
        d.deallocate(uid, &a.identifier).await.expect("deallocate");
    })
    .await;
}

#[tokio::test]
async fn runs_as_the_configured_user_when_root() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let mut req = request(uid, "", json!({}));
        req.definition = definition(json!({
            "command": ["sh", "-c", "id -u > id.txt; echo $VIA_ENV >> id.txt"],
            "user": "nobody",
            "env": {"VIA_ENV": "set"},
            "workdir": "w-{name}",
        }));
        let a = d.allocate(&req).await.expect("allocate");
        assert!(workdir(&a).ends_with(format!("{uid}/w-app")), "{}", workdir(&a).display());
        assert_eq!(wait_ended(&d, uid, &a).await, "exited with code 0");
        let nobody = nix::unistd::User::from_name("nobody").expect("lookup").expect("nobody exists");
        assert_eq!(read(&workdir(&a).join("id.txt")), format!("{}\nset\n", nobody.uid));
        d.deallocate(uid, &a.identifier).await.expect("deallocate");
    })
    .await;
}

/// A process running as another user (a root fishd's default) reaches its work directory
/// by absolute path (`cd $HOME`), while fishd's data directory stays closed to it: the
/// work directories live under the default work root next to the data directory.
#[tokio::test]
async fn a_process_of_another_user_reaches_its_work_directory_but_not_the_data_directory() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    timeout(async {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // A parent others may pass, as /var/lib is; the data directory is 0700 as fishd makes it.
        let outer =
            tempfile::Builder::new().permissions(std::fs::Permissions::from_mode(0o711)).tempdir().expect("tempdir");
        let data = outer.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let d = ProcessDriver::new("process".into(), config(json!({})), &data).expect("driver");
        let uid = Uuid::now_v7();
        let mut req = request(uid, "", json!({}));
        let script = format!(
            r#"cd / && cd "$HOME" && pwd > "$HOME/home.txt" && echo ok > "$HOME/written.txt"
ls {data} >/dev/null 2>&1 && echo listed >> home.txt || echo closed >> home.txt
cat {data}/process/process/{uid}/pid >/dev/null 2>&1 && echo read >> home.txt || echo closed >> home.txt"#,
            data = data.display()
        );
        req.definition = definition(json!({"command": ["sh", "-c", script], "user": "nobody"}));
        let a = d.allocate(&req).await.expect("allocate");
        let work = workdir(&a);
        assert!(work.starts_with(outer.path().join("data-work/process")), "{}", work.display());
        assert_eq!(
            wait_ended(&d, uid, &a).await,
            "exited with code 0",
            "log: {}",
            read(&d.app_dir(uid).join("output.log"))
        );
        assert_eq!(read(&work.join("home.txt")), format!("{}\nclosed\nclosed\n", work.display()));
        let nobody = nix::unistd::User::from_name("nobody").expect("lookup").expect("nobody exists");
        let meta = |p: &Path| std::fs::metadata(p).expect("metadata");
        assert_eq!(meta(&work.join("written.txt")).uid(), nobody.uid.as_raw());
        // Nothing was opened: the data directory is still its owner's alone, the work root
        // is passable but not listable, the application's directory its user's alone.
        assert_eq!(meta(&data).mode() & 0o777, 0o700);
        let root = outer.path().join("data-work/process");
        assert_eq!(meta(&root).mode() & 0o777, 0o711);
        let base = root.join(uid.to_string());
        assert_eq!((meta(&base).mode() & 0o777, meta(&base).uid()), (0o700, nobody.uid.as_raw()));
        d.deallocate(uid, &a.identifier).await.expect("deallocate");
        assert!(!base.exists(), "{} left behind", base.display());
    })
    .await;
}

#[test]
fn validate_names_the_bad_field() {
    let data = tempfile::tempdir().expect("tempdir");
    let d = driver(data.path());
    let fields = |options: Value| -> BTreeMap<String, String> {
        d.validate(&definition(options)).into_iter().map(|e| (e.field, e.message)).collect()
    };
    assert!(fields(json!({"command": ["true"]})).is_empty());
    assert!(fields(json!({})).contains_key("options.command"));
    assert!(fields(json!({"command": "sleep 1"})).contains_key("options.command"));
    let unknown = fields(json!({"command": ["true"], "colour": "red"}));
    assert!(unknown.get("options.colour").is_some_and(|m| m.contains("unknown")), "{unknown:?}");
}

#[test]
fn the_example_manifest_is_valid() {
    let text = include_str!("../../manifests/quickstart/process-sleep.yaml");
    let docs = api_types::parse_manifests(text.as_bytes(), api_types::Format::Yaml).expect("valid manifest");
    assert_eq!(docs.len(), 2);
    let data = tempfile::tempdir().expect("tempdir");
    let d = driver(data.path());
    let api_types::Manifest::Label(label) = &docs[0] else { panic!("first document is not a label") };
    for def in &label.spec.definitions {
        assert_eq!(d.validate(def), Vec::new());
    }
}

/// Not a test of its own: the fishd stand-in of `processes_survive_a_sigkilled_fishd`,
/// run in a child process. Allocates, writes the pid, then waits to be killed.
#[tokio::test]
#[ignore = "helper process of processes_survive_a_sigkilled_fishd"]
async fn helper_allocate_then_hang() {
    let (Ok(data), Ok(uid)) = (std::env::var("FISH_TEST_DATA"), std::env::var("FISH_TEST_UID")) else { return };
    let uid: Uuid = uid.parse().expect("uid");
    let d = driver(Path::new(&data));
    let a = d.allocate(&request(uid, "exec sleep 1000", json!({}))).await.expect("allocate");
    std::fs::write(Path::new(&data).join("allocated"), &a.identifier).expect("marker");
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn processes_survive_a_sigkilled_fishd() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let uid = Uuid::now_v7();
        let mut fishd = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "helper_allocate_then_hang", "--ignored"])
            .env("FISH_TEST_DATA", data.path())
            .env("FISH_TEST_UID", uid.to_string())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn helper");
        let marker = data.path().join("allocated");
        wait_for("the helper's allocation", || !read(&marker).is_empty()).await;
        let leader: i32 = read(&marker).parse().expect("pid");
        wait_for("the sleep", || sleeps_in_group(leader) == 1).await;
        fishd.kill().expect("SIGKILL the helper");
        fishd.wait().expect("reap the helper");

        assert!(alive(leader), "the process died with fishd");
        let d = driver(data.path());
        assert_eq!(d.inspect(uid, &leader.to_string()).await.expect("inspect"), ResourceState::Running);
        d.deallocate(uid, &leader.to_string()).await.expect("deallocate");
        assert_eq!(group_members(leader), Vec::<i32>::new());
    })
    .await;
}

/// An agent's first lines must be readable while it runs (`fishctl logs -f`), not only
/// once 4 KiB have piled up or it exits.
#[tokio::test]
async fn output_reaches_the_log_while_the_process_runs() {
    timeout(async {
        let data = tempfile::tempdir().expect("tempdir");
        let d = driver(data.path());
        let uid = Uuid::now_v7();
        let a = d.allocate(&request(uid, "echo agent started; sleep 1000", json!({}))).await.expect("allocate");
        let log = d.log_path(uid).expect("log path");
        wait_for("the first line in the log", || read(&log) == "agent started\n").await;
        d.deallocate(uid, &a.identifier).await.expect("deallocate");
    })
    .await;
}
