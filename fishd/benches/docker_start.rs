//! How much the docker driver adds to starting a container, against the real engine.
//!
//! Compares, over `RUNS` runs each (median, min, max):
//! - `docker run -d` of the test image (default bridge), as a user would;
//! - `docker run -d --init --network aquarium-isolated`, then with the same limits
//!   (`--cpus 1 --memory 1g --memory-swap 1g`): the container the driver makes, without fishd;
//! - `DockerDriver::allocate` until it returns (the container is running and inspected).
//!
//! Needs the engine and `aquarium-test/busybox:latest` (`.ci/docker-test-image.sh`).
//! Run: `cargo bench -p fishd --bench docker_start` (RUNS=20 to change the count).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use api_types::{Definition, Image, Resources};
use fishd::drivers::docker::{DockerConfig, DockerDriver};
use fishd::drivers::{AllocateRequest, Driver};
use serde_json::json;
use uuid::Uuid;

const IMAGE: &str = "aquarium-test/busybox:latest";

fn docker_cli(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output().context("running the docker CLI")?;
    ensure!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn summary(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort();
    let median = samples[samples.len() / 2];
    println!(
        "{name:<52} median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   (n={})",
        median.as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
        samples.len()
    );
    median
}

fn plain_run(extra: &[&str], runs: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..=runs {
        let mut args = vec!["run", "-d", "--label", "aquarium.fish/bench=true"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sleep", "3600"]);
        let started = Instant::now();
        let id = docker_cli(&args)?;
        samples.push(started.elapsed());
        docker_cli(&["rm", "-f", &id])?;
    }
    samples.remove(0); // the first run warms caches
    Ok(samples)
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(10);
    docker_cli(&["image", "inspect", IMAGE]).context("build the test image first: .ci/docker-test-image.sh")?;
    let data = tempfile::tempdir()?;
    let node = format!("bench-{}", &Uuid::now_v7().simple().to_string()[24..]);
    let driver = DockerDriver::connect("docker".into(), DockerConfig::default(), node.clone(), data.path()).await?;
    driver.available().await.map_err(anyhow::Error::msg)?;
    driver.meta_listen_addrs(8001).await?; // networks exist before anything is timed

    let definition = Definition {
        driver: "docker".into(),
        images: vec![Image { name: Some(IMAGE.into()), tag: None, url: None, sum: None }],
        resources: Resources { cpu: 1, ram: 1, ..Default::default() },
        options: json!({"command": ["sleep", "3600"]}).as_object().cloned().unwrap_or_default(),
    };
    let mut allocations = Vec::with_capacity(runs);
    for _ in 0..=runs {
        let uid = Uuid::now_v7();
        let req = AllocateRequest {
            uid,
            name: "bench".into(),
            definition: definition.clone(),
            metadata: [("FISH_APPLICATION".to_owned(), json!(uid.to_string()))].into(),
            node: node.clone(),
        };
        let started = Instant::now();
        let allocated = driver.allocate(&req).await?;
        allocations.push(started.elapsed());
        driver.deallocate(uid, &allocated.identifier).await?;
    }
    allocations.remove(0);

    let plain = plain_run(&[], runs)?;
    let same_network = plain_run(&["--init", "--network", "aquarium-isolated"], runs)?;
    let same_setup = plain_run(
        &["--init", "--network", "aquarium-isolated", "--cpus", "1", "--memory", "1g", "--memory-swap", "1g"],
        runs,
    )?;

    println!("container start, {runs} runs each, after one warm-up run:");
    let plain = summary("docker run -d", &mut plain.clone());
    summary("docker run -d --init --network aquarium-isolated", &mut same_network.clone());
    let same = summary("  ... --cpus 1 --memory 1g --memory-swap 1g", &mut same_setup.clone());
    let driver_median = summary("DockerDriver::allocate (create+start+inspect)", &mut allocations);
    let overhead = |base: Duration| (driver_median.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
    println!("driver vs docker run -d: {:+.1}%; vs the same setup: {:+.1}%", overhead(plain), overhead(same));
    Ok(())
}
