//! Issue 5's benchmark: time from creating an application to ALLOCATED with the
//! docker driver, next to a plain `docker run -d` of the same image in the same run.
//!
//! The fishd figure is read from the application's own history (the NEW and
//! ALLOCATED timestamps fishd recorded), so client polling does not inflate it.
//! Run with release binaries:
//!   cargo build --release --bins && cargo run --release -p aquarium-e2e --example docker_start
//! Writes bench/results/docker-start.json.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use aquarium_e2e::TestDaemon;
use time::OffsetDateTime;

const IMAGE: &str = "aquarium-test/busybox:latest";
const RUNS: usize = 15;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn docker(args: &[&str]) -> Result<()> {
    let o = Command::new("docker").args(args).output()?;
    if !o.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

fn at(entry: &serde_json::Value) -> Result<OffsetDateTime> {
    let s = entry["at"].as_str().context("history entry without time")?;
    Ok(OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)?)
}

#[tokio::main]
async fn main() -> Result<()> {
    let node = format!("bench-{}", std::process::id());
    let d = TestDaemon::start(&format!("nodeName: {node}\ndrivers:\n  docker: {{}}\n")).await?;
    let label = "kind: Label\nmetadata: {name: bench}\nspec:\n  definitions:\n    - driver: docker\n      images: [{name: aquarium-test/busybox, tag: latest}]\n      resources: {cpu: 1, ram: 1}\n      options: {command: [sleep, \"3600\"]}\n";
    let (code, body) = d.apply(label).await?;
    if code != 200 {
        bail!("label: {code} {body}");
    }
    let mut fishd_ms = Vec::new();
    for i in 0..=RUNS {
        let name = format!("b{i}");
        let (code, body) =
            d.apply(&format!("kind: Application\nmetadata: {{name: {name}}}\nspec: {{label: bench}}\n")).await?;
        if code != 200 {
            bail!("application: {code} {body}");
        }
        let app = d.wait_phase(&name, "ALLOCATED").await?;
        let h = app["status"]["history"].as_array().context("history")?;
        let new = h.iter().find(|e| e["phase"] == "NEW").context("NEW")?;
        let allocated = h.iter().find(|e| e["phase"] == "ALLOCATED").context("ALLOCATED")?;
        let ms = (at(allocated)? - at(new)?).as_seconds_f64() * 1000.0;
        if i > 0 {
            // The first run creates the network: a one-off, not the steady state.
            fishd_ms.push(ms);
        }
        d.post(&format!("/api/v1/applications/{name}/deallocate"), None).await?;
        d.wait_phase(&name, "DEALLOCATED").await?;
    }
    let mut plain_ms = Vec::new();
    let mut limited_ms = Vec::new();
    for i in 0..RUNS {
        for (args, out) in [
            (vec!["run", "-d", "--name"], &mut plain_ms),
            (
                vec![
                    "run",
                    "-d",
                    "--init",
                    "--network",
                    "aquarium-isolated",
                    "--cpus",
                    "1",
                    "--memory",
                    "1g",
                    "--name",
                ],
                &mut limited_ms,
            ),
        ] {
            let name = format!("plain-bench-{}-{i}", std::process::id());
            let mut a = args.clone();
            a.extend([name.as_str(), IMAGE, "sleep", "3600"]);
            let start = Instant::now();
            docker(&a)?;
            out.push(start.elapsed().as_secs_f64() * 1000.0);
            docker(&["rm", "-f", &name])?;
        }
    }
    let (f, p, l) = (median(fishd_ms.clone()), median(plain_ms.clone()), median(limited_ms.clone()));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let result = serde_json::json!({
        "runs": RUNS,
        "fishd_create_to_allocated_ms_median": f,
        "docker_run_d_ms_median": p,
        "docker_run_d_same_limits_and_network_ms_median": l,
        "overhead_vs_plain_pct": (f / p - 1.0) * 100.0,
        "overhead_vs_same_limits_pct": (f / l - 1.0) * 100.0,
        "samples_ms": {"fishd": fishd_ms, "plain": plain_ms, "limited": limited_ms},
        "loadavg": load.trim(),
    });
    let path = format!("{}/../bench/results/docker-start.json", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(format!("{}/../bench/results", env!("CARGO_MANIFEST_DIR")))?;
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;
    println!("create→ALLOCATED (fishd, docker driver) median {f:.1} ms");
    println!("docker run -d                          median {p:.1} ms");
    println!("docker run -d, same limits and network median {l:.1} ms");
    println!(
        "overhead: {:+.1}% vs plain, {:+.1}% vs same limits (load {})",
        (f / p - 1.0) * 100.0,
        (f / l - 1.0) * 100.0,
        load.trim()
    );
    println!("written to {path}");
    Ok(())
}
