//! Issue 16's benchmark: a virtual machine through fishd, next to QEMU started by hand.
//!
//! fishd (qemu driver, TCG here): create→ALLOCATED, read from the application's own
//! history (fishd's timestamps, so polling adds nothing), and create→the guest's first
//! metadata request, read from fishd's log line for that request. The reference is the
//! same guest started by hand (`qemu-system-x86_64` with the same kernel, initramfs,
//! overlay and network), timed to its QMP socket (the process is up) and to the
//! guest's first connection to a unix socket the benchmark listens on (the metadata
//! relay). Median of 5 each. Run on a machine as quiet as you can (the guest's boot under
//! TCG dominates, so a debug fishd is fine):
//!   cargo build --workspace --bins --examples && target/debug/examples/qemu_start
//! Writes bench/results/qemu-start.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aquarium_e2e::TestDaemon;
use time::OffsetDateTime;

const RUNS: usize = 5;
/// A TCG boot is seconds; a loaded machine makes it tens.
const DEADLINE: Duration = Duration::from_secs(180);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn parse_time(s: &str) -> Result<OffsetDateTime> {
    Ok(OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?)
}

/// The time of fishd's first "metadata requested" line for `uid`.
fn first_meta_request(log: &str, uid: &str) -> Option<OffsetDateTime> {
    log.lines()
        .find(|l| l.contains("metadata requested through the machine's socket") && l.contains(uid))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| parse_time(t).ok())
}

/// QEMU started by hand: (ms to its QMP socket, ms to the guest's first metadata connection).
async fn bare_qemu(dir: &Path, kernel: &Path, initrd: &Path, base: &Path) -> Result<(f64, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let overlay = dir.join("overlay.qcow2");
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(&overlay)
        .status()?
        .success();
    if !ok {
        bail!("qemu-img create failed");
    }
    let meta = dir.join("meta.sock");
    let listener = tokio::net::UnixListener::bind(&meta)?;
    let qmp = dir.join("qmp.sock");
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "q35", "-accel", "tcg", "-smp", "1", "-m", "1G", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-shutdown", "-serial", "null"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .arg("-netdev")
        .arg(format!(
            "user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:socat -t 30 - UNIX-CONNECT:{}",
            meta.display()
        ))
        .args(["-device", "virtio-net-pci,netdev=net0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    while !qmp.exists() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            bail!("bare QEMU never opened QMP");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let up = start.elapsed().as_secs_f64() * 1000.0;
    let accepted = tokio::time::timeout(DEADLINE, listener.accept()).await;
    let first = start.elapsed().as_secs_f64() * 1000.0;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
    accepted.context("the bare guest never asked for metadata")??;
    Ok((up, first))
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace")?.to_owned();
    let out = root.join("target/qemu-test");
    if !Command::new("bash").arg(root.join("scripts/qemu-test-guest.sh")).arg(&out).status()?.success() {
        bail!("scripts/qemu-test-guest.sh failed");
    }
    let (kernel, initrd, base): (PathBuf, PathBuf, PathBuf) =
        (out.join("vmlinuz"), out.join("initramfs.cpio.gz"), out.join("base.qcow2"));

    let d = TestDaemon::start("drivers:\n  qemu: {gracePeriod: 10s}\n").await?;
    let label = format!(
        "kind: Label\nmetadata: {{name: bench}}\nspec:\n  definitions:\n    - driver: qemu\n      images: [{{url: \"{}\"}}]\n      resources: {{cpu: 1, ram: 1}}\n      options: {{kernel: \"{}\", initrd: \"{}\", append: \"console=ttyS0 quiet panic=-1\"}}\n",
        base.display(),
        kernel.display(),
        initrd.display()
    );
    let (code, body) = d.apply(&label).await?;
    if code != 200 {
        bail!("label: {code} {body}");
    }
    let (mut allocated_ms, mut meta_ms) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let name = format!("q{i}");
        let (code, body) =
            d.apply(&format!("kind: Application\nmetadata: {{name: {name}}}\nspec: {{label: bench}}\n")).await?;
        if code != 200 {
            bail!("application: {code} {body}");
        }
        let app = d.wait_phase(&name, "ALLOCATED").await?;
        let uid = app["metadata"]["uid"].as_str().context("uid")?.to_owned();
        let h = app["status"]["history"].as_array().context("history")?;
        let at = |phase: &str| -> Result<OffsetDateTime> {
            let e = h.iter().find(|e| e["phase"] == phase).with_context(|| phase.to_owned())?;
            parse_time(e["at"].as_str().context("at")?)
        };
        let created = at("NEW")?;
        allocated_ms.push((at("ALLOCATED")? - created).as_seconds_f64() * 1000.0);
        let start = Instant::now();
        let asked = loop {
            if let Some(t) = first_meta_request(&d.log(), &uid) {
                break t;
            }
            if start.elapsed() > DEADLINE {
                bail!("{name} never asked for its metadata:\n{}", d.log());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        meta_ms.push((asked - created).as_seconds_f64() * 1000.0);
        d.post(&format!("/api/v1/applications/{name}/deallocate"), None).await?;
        d.wait_phase(&name, "DEALLOCATED").await?;
        eprintln!("run {i}: allocated {:.0} ms, metadata {:.0} ms", allocated_ms[i], meta_ms[i]);
    }
    let (mut bare_up, mut bare_meta) = (Vec::new(), Vec::new());
    let scratch = tempfile::tempdir()?;
    for i in 0..RUNS {
        let (up, first) = bare_qemu(&scratch.path().join("bare"), &kernel, &initrd, &base).await?;
        eprintln!("bare {i}: up {up:.0} ms, metadata {first:.0} ms");
        bare_up.push(up);
        bare_meta.push(first);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = serde_json::json!({
        "benchmark": "qemu-start",
        "accel": "tcg",
        "runs": RUNS,
        "loadavg_at_end": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "fishd_create_to_allocated_ms": {"median": median(allocated_ms.clone()), "samples": allocated_ms},
        "fishd_create_to_first_metadata_request_ms": {"median": median(meta_ms.clone()), "samples": meta_ms},
        "bare_qemu_start_to_qmp_ms": {"median": median(bare_up.clone()), "samples": bare_up},
        "bare_qemu_start_to_first_metadata_request_ms": {"median": median(bare_meta.clone()), "samples": bare_meta},
    });
    let path = root.join("bench/results/qemu-start.json");
    std::fs::write(&path, serde_json::to_string_pretty(&result)? + "\n")?;
    println!("{}", serde_json::to_string_pretty(&result)?);
    println!("written to {}", path.display());
    Ok(())
}
