//! Issue 11, "the first hour": what a new user hit, each through the real binaries.
//! The quickstart test runs the README's script itself, twice, with its stop step between.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aquarium_e2e::{TestDaemon, WAIT, bin, eventually};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The `target/` the test binaries (and fishd, fishctl) were built in.
fn target_dir() -> PathBuf {
    bin("fishd").parent().and_then(Path::parent).unwrap().to_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every process whose working directory or command line is under `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() {
            continue;
        }
        let cwd = std::fs::read_link(entry.path().join("cwd")).map(|p| p.to_string_lossy().into_owned());
        let cmd = std::fs::read(entry.path().join("cmdline")).map(|c| String::from_utf8_lossy(&c).replace('\0', " "));
        let (cwd, cmd) = (cwd.unwrap_or_default(), cmd.unwrap_or_default());
        if cwd.starts_with(&dir) || cmd.contains(&dir) {
            found.push(format!("{pid}: {cmd} (cwd {cwd})"));
        }
    }
    found
}

/// What a child prints, chunk by chunk as it comes, from a reader thread.
fn chunks(mut out: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).is_err() {
                return;
            }
        }
    });
    rx
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The quickstart run in a temp dir on a free port. Dropping it stops whatever it left.
struct Quickstart {
    dir: tempfile::TempDir,
    api: String,
}

impl Quickstart {
    fn new() -> Quickstart {
        Quickstart { dir: tempfile::tempdir().unwrap(), api: format!("127.0.0.1:{}", free_port()) }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("fish-data")
    }

    /// `bash scripts/quickstart.sh [args]`, run from the temp dir as a user would from
    /// wherever they are, with the documented variables.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/quickstart.sh"))
            .args(args)
            .current_dir(self.dir.path())
            .env("FISH_DATA", "fish-data")
            .env("FISH_API", &self.api)
            .env("CARGO_TARGET_DIR", target_dir())
            .env("FISH_BUILD", "0")
            .env("NO_COLOR", "1");
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "quickstart {args:?} failed:\n{}\n{}\n--- fishd.log ---\n{}",
            stdout(&out),
            stderr(&out),
            std::fs::read_to_string(self.data().join("fishd.log")).unwrap_or_default()
        );
        out
    }

    fn fishctl(&self, args: &[&str]) -> Output {
        Command::new(bin("fishctl")).arg("--config").arg(self.data().join("fishctl.yaml")).args(args).output().unwrap()
    }

    fn fishd_pid(&self) -> i32 {
        std::fs::read_to_string(self.data().join("fishd.pid")).unwrap().trim().parse().unwrap()
    }

    /// The pid of quickstart-1's process, from its details.
    fn resource_pid(&self) -> i32 {
        let o = self.fishctl(&["get", "application", "quickstart-1", "-o", "json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["status"]["phase"], "ALLOCATED", "{v:#}");
        v["status"]["resource"]["details"]["pid"].as_i64().unwrap() as i32
    }
}

impl Drop for Quickstart {
    /// A failed test must not leave the quickstart's fishd (or its process) behind:
    /// SIGTERM drains and deallocates (fishd was started so), SIGKILL if it hangs.
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let pid = std::fs::read_to_string(self.data().join("fishd.pid")).ok().and_then(|p| p.trim().parse().ok());
        if let Some(pid) = pid.map(nix::unistd::Pid::from_raw) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            while kill(pid, None).is_ok() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
}

#[tokio::test]
async fn quickstart_runs_twice_with_its_stop_step_between_and_leaves_nothing_running() {
    let q = Quickstart::new();
    let mut seen = Vec::new();
    for round in 1..=2 {
        let out = q.run(&[]);
        let text = stdout(&out);
        assert!(text.contains("quickstart-1") && text.contains("ALLOCATED"), "round {round}:\n{text}");
        assert!(text.contains("bash scripts/quickstart.sh stop"), "the stop step is not shown:\n{text}");
        let (fishd, resource) = (q.fishd_pid(), q.resource_pid());
        assert!(alive(fishd) && alive(resource), "round {round}: fishd {fishd}, resource {resource}");
        assert!(!seen.contains(&resource), "round {round} reused the first run's process");
        seen.push(resource);

        let out = q.run(&["stop"]);
        assert!(stdout(&out).contains("nothing left running"), "{}", stdout(&out));
        assert!(!alive(fishd), "fishd {fishd} still runs after the stop step");
        assert!(!alive(resource), "the quickstart's process {resource} outlived the stop step");
        let left = processes_under(q.dir.path());
        assert!(left.is_empty(), "round {round}: still running after stop:\n{}", left.join("\n"));
        assert!(!q.data().join("fishd.pid").exists());
    }
    // Stopping twice is fine and says so.
    assert!(stdout(&q.run(&["stop"])).contains("not running"));
}

#[tokio::test]
async fn shutdown_says_how_many_resources_it_leaves_running() {
    let mut d = TestDaemon::start("drainAndDeallocate: false\n").await.unwrap();
    d.apply("kind: Label\nmetadata: {name: l}\nspec: {definitions: [{driver: test, resources: {cpu: 1}}]}\n---\nkind: Application\nmetadata: {name: kept-1}\nspec: {label: l}\n")
        .await
        .unwrap();
    d.wait_phase("kept-1", "ALLOCATED").await.unwrap();
    d.sigterm(WAIT).await.unwrap();
    let log = d.log();
    assert!(log.contains("1 resource(s) left running") && log.contains("adopts them"), "{log}");
    assert!(log.contains("kept-1"), "{log}");
}

#[tokio::test]
async fn a_busy_port_names_the_flag_that_moves_it() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin("fishd"))
        .args(["--api", &addr, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("--api") && err.contains("FISH_API"), "no way out named:\n{err}");
}

const LABEL: &str =
    "kind: Label\nmetadata: {name: small}\nspec: {definitions: [{driver: test, resources: {cpu: 2, ram: 1}}]}\n";

fn app(name: &str) -> String {
    format!("kind: Application\nmetadata: {{name: {name}}}\nspec: {{label: small}}\n")
}

#[tokio::test]
async fn deleting_a_finished_application_frees_its_name() {
    let d = TestDaemon::start("").await.unwrap();
    d.apply(&format!("{LABEL}---\n{}", app("again-1"))).await.unwrap();
    d.wait_phase("again-1", "ALLOCATED").await.unwrap();
    // An active application: delete asks for deallocation, as before.
    let o = d.fishctl(&["delete", "application", "again-1"]);
    assert!(o.status.success() && stdout(&o).contains("deallocation requested"), "{}{}", stdout(&o), stderr(&o));
    d.wait_phase("again-1", "DEALLOCATED").await.unwrap();
    let o = d.fishctl(&["delete", "app", "again-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "application/again-1 deleted\n");
    assert_eq!(d.get("/api/v1/applications/again-1").await.unwrap().0, 404);
    // The name is free: the same manifest makes a new application that is allocated.
    let (code, body) = d.apply(&app("again-1")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0]["action"], "created", "{body}");
    d.wait_phase("again-1", "ALLOCATED").await.unwrap();
}

#[tokio::test]
async fn node_usage_follows_the_applications_at_once() {
    let d = TestDaemon::start("capacity: {cpu: 8, ram: 8, slots: 8}\n").await.unwrap();
    let allocated = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["status"]["allocated"].clone()
    };
    d.apply(&format!("{LABEL}---\n{}", app("busy-1"))).await.unwrap();
    d.wait_phase("busy-1", "ALLOCATED").await.unwrap();
    // No waiting for the node's heartbeat (every 10 s): the view is the store's.
    let a = allocated(&d.fishctl(&["get", "node", "test-node", "-o", "json"]));
    assert_eq!((a["cpu"].as_u64(), a["applications"].as_u64()), (Some(2), Some(1)), "{a}");
    let o = d.fishctl(&["describe", "node", "test-node"]);
    let page = stdout(&o);
    assert!(page.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["cpu", "2", "8"]), "{page}");
    let list = d.fishctl(&["get", "nodes", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v["items"][0]["status"]["allocated"]["applications"], 1, "{v:#}");
    d.post("/api/v1/applications/busy-1/deallocate", None).await.unwrap();
    d.wait_phase("busy-1", "DEALLOCATED").await.unwrap();
    let a = allocated(&d.fishctl(&["get", "node", "test-node", "-o", "json"]));
    assert_eq!((a["cpu"].as_u64(), a["applications"].as_u64()), (Some(0), Some(0)), "{a}");
}

const ECHO: &str = "kind: Label\nmetadata: {name: echo}\nspec:\n  definitions:\n    - driver: process\n      resources: {cpu: 1, ram: 1}\n      options:\n        command: [sh, -c, 'sleep 1; echo hello from the log; trap \"exit 0\" TERM; while true; do sleep 0.2; done']\n";

#[tokio::test]
async fn logs_wait_for_output_and_outlive_deallocation_until_the_application_is_removed() {
    let d = TestDaemon::start("drivers:\n  process: {}\n").await.unwrap();
    d.apply(ECHO).await.unwrap();
    // `logs -f` (without a kind, as kubectl) started before the application exists yet
    // as a resource waits for its first output.
    d.apply("kind: Application\nmetadata: {name: echo-1}\nspec: {label: echo}\n").await.unwrap();
    let mut follow = Command::new(bin("fishctl"))
        .arg("--config")
        .arg(d.fishctl_config())
        .args(["logs", "echo-1", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rx = chunks(follow.stdout.take().unwrap());
    let app = d.wait_phase("echo-1", "ALLOCATED").await.unwrap();
    let uid = app["metadata"]["uid"].as_str().unwrap().to_owned();
    // The process writes a second after it starts; -f, started before, prints it.
    let mut printed = String::new();
    while !printed.contains("hello from the log") {
        match rx.recv_timeout(WAIT) {
            Ok(chunk) => printed.push_str(&chunk),
            Err(e) => panic!("logs -f printed {printed:?} and then {e}"),
        }
    }
    let o = d.fishctl(&["deallocate", "app", "echo-1", "--wait"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // -f ends when the application does.
    let status = tokio::time::timeout(WAIT, tokio::task::spawn_blocking(move || follow.wait()))
        .await
        .expect("logs -f did not end with the application")
        .unwrap()
        .unwrap();
    assert!(status.success(), "logs -f: {status}");
    // After deallocation the log is still there.
    let o = d.fishctl(&["logs", "echo-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("hello from the log"), "{}", stdout(&o));
    let kept = d.data_dir().join("logs").join(format!("{uid}.log"));
    assert!(kept.exists());
    // Removing the application removes its log.
    assert!(d.fishctl(&["delete", "application", "echo-1"]).status.success());
    let gone = kept.clone();
    eventually("the kept log to be removed", || {
        let gone = gone.clone();
        async move { !gone.exists() }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn kubectl_habits_work() {
    let d = TestDaemon::start("").await.unwrap();
    d.apply(&format!("{LABEL}---\n{}", app("habit-1"))).await.unwrap();
    d.wait_phase("habit-1", "ALLOCATED").await.unwrap();
    let o = d.fishctl(&["get", "all"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for want in ["labels:", "small", "applications:", "habit-1", "nodes:", "test-node"] {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    let o = d.fishctl(&["get", "all", "-o", "name"]);
    assert!(stdout(&o).contains("label/small\n") && stdout(&o).contains("application/habit-1\n"), "{}", stdout(&o));
    // `logs NAME` needs no kind; a kind other than application is a usage error.
    let o = d.fishctl(&["logs", "habit-1"]);
    assert!(!stderr(&o).contains("invalid value"), "{}", stderr(&o));
    let o = d.fishctl(&["logs", "node", "habit-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[tokio::test]
async fn deleting_a_label_in_use_says_how_many_applications_still_run_on_it() {
    let d = TestDaemon::start("").await.unwrap();
    d.apply(&format!("{LABEL}---\n{}---\n{}", app("pinned-1"), app("pinned-2"))).await.unwrap();
    d.wait_phase("pinned-1", "ALLOCATED").await.unwrap();
    d.wait_phase("pinned-2", "ALLOCATED").await.unwrap();
    let o = d.fishctl(&["delete", "label", "small"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "label/small deleted; 2 applications still run on it (they keep their pinned version)\n");
    assert_eq!(d.application("pinned-1").await.unwrap()["status"]["phase"], "ALLOCATED");
}

#[tokio::test]
async fn small_things() {
    let d = TestDaemon::start("").await.unwrap();
    // fishd's log is a file here: no colour codes in it.
    assert!(!d.log().contains('\u{1b}'), "ANSI codes in fishd.log:\n{}", d.log());

    // A YAML error says "error" once and its position once.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.yaml");
    std::fs::write(&bad, "kind: Label\nmetadata: {name: x\nspec: [\n").unwrap();
    let o = d.fishctl(&["apply", "-f", bad.to_str().unwrap()]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.matches("error").count(), 1, "{err}");
    assert_eq!(err.matches("line ").count(), 1, "{err}");

    // An error only the server can find names the file, as a local one does.
    let other = dir.path().join("other-driver.yaml");
    std::fs::write(
        &other,
        "kind: Label\nmetadata: {name: vm}\nspec: {definitions: [{driver: vmware, resources: {cpu: 1}}]}\n",
    )
    .unwrap();
    let o = d.fishctl(&["apply", "-f", bad.parent().unwrap().join("other-driver.yaml").to_str().unwrap()]);
    let err = stderr(&o);
    assert!(err.starts_with(&format!("error: {}: ", other.display())), "{err}");
    assert!(err.contains("spec.definitions[0].driver"), "{err}");
}

/// Every example manifest says its apiVersion, and every path a comment shows exists.
#[test]
fn example_manifests_are_complete_and_point_to_real_paths() {
    let mut dirs = vec![repo().join("manifests")];
    let mut checked = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in text.split("\n---\n").filter(|d| d.contains("kind:")) {
                assert!(
                    doc.contains("apiVersion: aquarium.fish/v1"),
                    "{}: a document lacks apiVersion",
                    path.display()
                );
            }
            for word in text.split_whitespace().filter(|w| w.starts_with("manifests/")) {
                let shown = word.trim_end_matches(['.', ',', ')', '`']);
                assert!(repo().join(shown).exists(), "{} points to {shown}, which does not exist", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 3);
}

/// Item 9: `get apps -w` on a terminal redraws its table as the AGE column changes,
/// with no event in between. Run under `script`, which gives fishctl a pty.
#[tokio::test]
async fn the_watch_table_s_age_column_ticks_between_events_on_a_terminal() {
    let has_script = Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success());
    if !aquarium_e2e::prerequisite("script", has_script, "script (util-linux) gives fishctl a terminal") {
        return;
    }
    let d = TestDaemon::start("").await.unwrap();
    d.apply(&format!("{LABEL}---\n{}", app("tick-1"))).await.unwrap();
    // ALLOCATED: from here on the application does not change, so any redraw is the tick.
    d.wait_phase("tick-1", "ALLOCATED").await.unwrap();
    let line = format!("{} --config {} get apps -w", bin("fishctl").display(), d.fishctl_config().display());
    let mut child = Command::new("script")
        .args(["-qfec", &line, "/dev/null"])
        .env("NO_COLOR", "1")
        // Held open: `script` ends when its stdin does.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx = chunks(child.stdout.take().unwrap());
    let _stop = Terminate(child);
    // Each redraw moves the cursor up and clears (ESC [ n F, ESC [ J) before the table.
    let mut printed = String::new();
    let ages = |printed: &str| -> std::collections::BTreeSet<String> {
        printed
            .split("\u{1b}[J")
            .filter_map(|frame| frame.lines().find(|l| l.contains("tick-1")).map(str::to_owned))
            // AGE is the first cell that is a number and a unit (NAME LABEL PHASE NODE AGE MESSAGE).
            .filter_map(|l| {
                l.split_whitespace()
                    .find(|c| {
                        c.len() > 1 && c.ends_with(['s', 'm']) && c[..c.len() - 1].bytes().all(|b| b.is_ascii_digit())
                    })
                    .map(str::to_owned)
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while ages(&printed).len() < 3 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => printed.push_str(&chunk),
            Err(e) => panic!("{e}: the table was not redrawn with three ages; fishctl printed {printed:?}"),
        }
    }
    let seen = ages(&printed);
    assert!(seen.iter().all(|a| a.ends_with('s')), "ages {seen:?}");
}

/// Ends `script` (which ends what runs on its terminal) with SIGTERM when dropped, also
/// when the test fails: a SIGKILL would leave fishctl running on an orphaned pty.
struct Terminate(std::process::Child);

impl Drop for Terminate {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

/// Item 7: completion offers object names from the server where a name goes, as
/// kubectl does, through the checked-in bash script and the real binary.
#[tokio::test]
async fn completion_offers_object_names_from_the_server() {
    let d = TestDaemon::start("").await.unwrap();
    d.apply(&format!("{LABEL}---\n{}---\n{}", app("complete-me-1"), app("other-2"))).await.unwrap();
    // The hidden command the scripts call.
    let o = d.fishctl(&["__complete", "--", "get", "apps"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let names: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert!(names.contains(&"complete-me-1".into()) && names.contains(&"other-2".into()), "{names:?}");
    assert_eq!(stdout(&d.fishctl(&["__complete", "--", "get"])), "", "a kind goes there, not a name");

    // bash, as a user's Tab would run it: `fishctl --config C <words> <cur>`.
    let complete = |words: &[&str]| -> Vec<String> {
        let config = d.fishctl_config();
        let mut line: Vec<String> = vec!["fishctl".into(), "--config".into(), config.display().to_string()];
        line.extend(words.iter().map(|w| w.to_string()));
        let script = "source \"$1\"; shift; COMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1)); \
                      _fishctl_names fishctl \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"; \
                      printf '%s\\n' \"${COMPREPLY[@]}\"";
        let path =
            format!("{}:{}", bin("fishctl").parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        let o = Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("bash")
            .arg(repo().join("completions/fishctl.bash"))
            .args(&line)
            .env("PATH", path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o).lines().filter(|l| !l.is_empty()).map(String::from).collect()
    };
    assert_eq!(complete(&["describe", "app", "comp"]), ["complete-me-1"]);
    let all = complete(&["logs", ""]);
    assert!(all.contains(&"complete-me-1".into()) && all.contains(&"other-2".into()), "{all:?}");
    assert_eq!(complete(&["delete", "label", "sm"]), ["small"]);
    // Elsewhere, clap's completion of verbs and kinds still answers.
    assert!(complete(&["descr"]).contains(&"describe".into()), "{:?}", complete(&["descr"]));
    assert!(complete(&["get", "appl"]).contains(&"applications".into()), "{:?}", complete(&["get", "appl"]));
}
