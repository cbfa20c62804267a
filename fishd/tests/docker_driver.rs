//! The docker driver against the real Docker Engine of this machine.
//!
//! Each test works as its own node (`dt-<random>`), so the tests run in parallel without
//! seeing each other's containers, and a guard removes whatever a test labelled for its
//! node even when the test fails. Without an engine at all (no socket) they skip, or
//! fail under `CI=true` (see `aquarium_e2e::prerequisite`); an engine that is there but
//! broken fails them. The image
//! `aquarium-test/busybox:latest` is built by `.ci/docker-test-image.sh` when missing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use api_types::{Definition, Disk, Image, Resources};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, ExecConfig, VolumeCreateRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder};
use fishd::drivers::docker::{
    DEFAULT_SOCKET, DockerCapacity, DockerConfig, DockerDriver, LABEL_APPLICATION, LABEL_DRIVER, LABEL_NODE,
    container_name, detect, volume_name,
};
use fishd::drivers::{AllocateRequest, Driver, DriverError, ResourceState};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const IMAGE: &str = "aquarium-test/busybox:latest";
/// The whole of one test; a healthy engine needs a few seconds.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `body` under [`TEST_TIMEOUT`] with an engine, or skips when there is none.
async fn with_engine<F, Fut>(body: F)
where
    F: FnOnce(Docker) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let present = Path::new(DEFAULT_SOCKET).exists();
    if !aquarium_e2e::prerequisite("docker", present, &format!("no docker engine ({DEFAULT_SOCKET} does not exist)")) {
        return;
    }
    let run = async {
        let docker = Docker::connect_with_unix(DEFAULT_SOCKET, 120, bollard::API_DEFAULT_VERSION)?
            .negotiate_version()
            .await
            .context("the docker socket exists but the engine does not answer")?;
        ensure_test_image(&docker).await?;
        body(docker).await
    };
    match tokio::time::timeout(TEST_TIMEOUT, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:?}"),
        Err(_) => panic!("test timed out after {TEST_TIMEOUT:?}"),
    }
}

async fn ensure_test_image(docker: &Docker) -> Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if docker.inspect_image(IMAGE).await.is_ok() {
        return Ok(());
    }
    let result = tokio::task::spawn_blocking(|| {
        BUILT
            .get_or_init(|| {
                let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/docker-test-image.sh");
                let out = std::env::temp_dir().join("aquarium-docker-test-image/busybox.tar");
                let status = std::process::Command::new("bash").arg(script).arg(out).status();
                match status {
                    Ok(s) if s.success() => Ok(()),
                    other => Err(format!(".ci/docker-test-image.sh failed: {other:?}")),
                }
            })
            .clone()
    })
    .await?;
    result.map_err(anyhow::Error::msg)
}

/// One test's node: a unique name, a data dir, and cleanup of everything labelled for it.
/// The networks of these tests: their own, so the firewall chains fishd gives them never
/// touch the default networks other nodes of this host use.
const NETWORKS: &str = "fishd-driver-test";

struct TestNode {
    name: String,
    data: tempfile::TempDir,
    images: Vec<String>,
}

impl TestNode {
    fn new() -> TestNode {
        TestNode {
            name: format!("dt-{}", &Uuid::now_v7().simple().to_string()[20..]),
            data: tempfile::tempdir().expect("temp dir"),
            images: Vec::new(),
        }
    }

    async fn driver(&self, instance: &str) -> Result<DockerDriver> {
        let config = DockerConfig { network_prefix: NETWORKS.into(), ..DockerConfig::default() };
        Ok(DockerDriver::connect(instance.into(), config, self.name.clone(), self.data.path()).await?)
    }
}

impl Drop for TestNode {
    /// Removes every container, volume and image the test made, by label, with the CLI:
    /// `Drop` cannot await, and this must run when an assertion failed.
    fn drop(&mut self) {
        let filter = format!("label={LABEL_NODE}={}", self.name);
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect())
                .unwrap_or_else(|_| Vec::<String>::new())
        };
        let containers = docker(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            docker(&args);
        }
        let volumes = docker(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            docker(&args);
        }
        for image in &self.images {
            docker(&["rmi", image]);
        }
    }
}

fn definition(images: Vec<Image>, options: serde_json::Value) -> Definition {
    Definition {
        driver: "docker".into(),
        images,
        resources: Resources { cpu: 1, ram: 1, ..Default::default() },
        options: options.as_object().cloned().unwrap_or_default(),
    }
}

fn named(name: &str) -> Image {
    Image { name: Some(name.into()), tag: None, url: None, sum: None }
}

fn request(node: &TestNode, definition: Definition) -> AllocateRequest {
    let uid = Uuid::now_v7();
    AllocateRequest {
        uid,
        name: format!("app-{}", &uid.simple().to_string()[24..]),
        definition,
        metadata: [
            ("FISH_APPLICATION".to_owned(), json!(uid.to_string())),
            ("FISH_NODE".to_owned(), json!(node.name)),
            ("GREETING".to_owned(), json!("hello world")),
            ("COUNT".to_owned(), json!(3)),
        ]
        .into(),
        node: node.name.clone(),
    }
}

/// Runs `cmd` in a container; returns its exit code and combined output.
async fn exec(docker: &Docker, container: &str, cmd: &[&str]) -> Result<(i64, String)> {
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    };
    let id = docker.create_exec(container, config).await?.id;
    let mut text = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } = docker.start_exec(&id, None).await? {
        while let Some(chunk) = output.next().await {
            text.push_str(&chunk?.to_string());
        }
    }
    let code = docker.inspect_exec(&id).await?.exit_code.unwrap_or(-1);
    Ok((code, text))
}

async fn container_exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_container(name, None).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn volume_exists(docker: &Docker, name: &str) -> Result<bool> {
    match docker.inspect_volume(name).await {
        Ok(_) => Ok(true),
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A plain HTTP server on `ip` answering every request with the caller's address, the way
/// the metadata endpoint identifies a container. Returns its port.
async fn who_am_i_server(ip: IpAddr) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let body = format!("caller={}\n", peer.ip());
                let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_limits_labels_isolates_and_deallocates() {
    with_engine(|docker| async move {
        let node = TestNode::new();
        let driver = node.driver("docker").await?;
        driver.available().await.map_err(anyhow::Error::msg)?;

        // The runtime's part: learn the gateways, listen there, tell the driver the port.
        let gateways = driver.meta_listen_addrs(0).await?;
        ensure!(gateways.len() == 2, "one gateway per aquarium network: {gateways:?}");
        let gateway = gateways[0].ip();
        let port = who_am_i_server(gateway).await?;
        let addrs = driver.meta_listen_addrs(port).await?;
        ensure!(addrs[0] == SocketAddr::new(gateway, port), "{addrs:?}");

        let mut def = definition(vec![named("aquarium-test/busybox")], json!({"command": ["sleep", "3600"]}));
        def.resources.disks.insert("data".into(), Disk { size: 1 });
        let req = request(&node, def);
        let allocated = driver.allocate(&req).await?;
        let ip = allocated.ip_addr.clone().context("no ip address")?;

        let inspect = docker.inspect_container(&allocated.identifier, None).await?;
        ensure!(inspect.name.as_deref() == Some(&format!("/{}", container_name(req.uid))[..]));
        ensure!(inspect.state.as_ref().and_then(|s| s.running) == Some(true), "not running: {:?}", inspect.state);
        let host = inspect.host_config.clone().context("no host config")?;
        ensure!(host.nano_cpus == Some(1_000_000_000), "NanoCpus {:?}", host.nano_cpus);
        ensure!(host.memory == Some(1 << 30), "Memory {:?}", host.memory);
        ensure!(host.privileged == Some(false));
        let config = inspect.config.clone().context("no config")?;
        let labels = config.labels.clone().unwrap_or_default();
        ensure!(labels.get(LABEL_APPLICATION) == Some(&req.uid.to_string()), "{labels:?}");
        ensure!(labels.get(LABEL_NODE) == Some(&node.name), "{labels:?}");
        ensure!(labels.get(LABEL_DRIVER).map(String::as_str) == Some("docker"), "{labels:?}");
        let env = config.env.clone().unwrap_or_default();
        for want in [
            "GREETING=hello world".to_owned(),
            "COUNT=3".to_owned(),
            format!("FISH_APPLICATION={}", req.uid),
            format!("FISH_META_URL=http://{gateway}:{port}/meta/v1/data"),
        ] {
            ensure!(env.contains(&want), "{want} missing from {env:?}");
        }
        let networks = inspect.network_settings.and_then(|s| s.networks).unwrap_or_default();
        let isolated = format!("{NETWORKS}-isolated");
        ensure!(networks.contains_key(&isolated), "{:?}", networks.keys());
        let net = docker.inspect_network(&isolated, None).await?;
        ensure!(net.internal == Some(true));
        let volume = volume_name(req.uid, "data");
        ensure!(volume_exists(&docker, &volume).await?);
        let (code, out) =
            exec(&docker, &allocated.identifier, &["sh", "-c", "echo x > /mnt/data/f && cat /mnt/data/f"]).await?;
        ensure!(code == 0 && out.trim() == "x", "disk not writable: {code} {out}");

        // No route out: an outside address (TEST-NET-1) fails at once on engines that give
        // internal networks no default route, or is refused by the network's firewall
        // chain (a TCP reset) where the engine keeps the route (Docker 20.10).
        let started = Instant::now();
        let (code, out) = exec(&docker, &allocated.identifier, &["nc", "-w", "3", "192.0.2.1", "80"]).await?;
        let took = started.elapsed();
        eprintln!("outside connect: code {code} after {took:?}: {}", out.trim());
        ensure!(code != 0, "reached 192.0.2.1: {out}");
        ensure!(
            out.contains("unreachable") || out.contains("timed out") || out.contains("refused"),
            "unexpected failure: {out}"
        );
        ensure!(took < Duration::from_secs(10), "outside connect took {took:?}");

        // The node's endpoint at the gateway answers and sees the container's own address.
        let url = format!("http://{gateway}:{port}/meta/v1/data");
        let (code, out) = exec(&docker, &allocated.identifier, &["wget", "-q", "-O", "-", &url]).await?;
        ensure!(code == 0, "gateway unreachable: {out}");
        ensure!(out.trim() == format!("caller={ip}"), "identified as {out:?}, container ip {ip}");

        ensure!(driver.inspect(req.uid, &allocated.identifier).await? == ResourceState::Running);
        driver.deallocate(req.uid, &allocated.identifier).await?;
        ensure!(!container_exists(&docker, &allocated.identifier).await?, "container left");
        ensure!(!volume_exists(&docker, &volume).await?, "volume left");
        driver.deallocate(req.uid, &allocated.identifier).await.context("a second deallocate must succeed")?;
        ensure!(
            driver.inspect(req.uid, &allocated.identifier).await?
                == ResourceState::Lost("container disappeared".into())
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_after_restart_and_removes_orphans() {
    with_engine(|docker| async move {
        let node = TestNode::new();
        let req = request(&node, definition(vec![named(IMAGE)], json!({"command": ["sleep", "3600"]})));
        let first = {
            let driver = node.driver("docker").await?;
            driver.allocate(&req).await?
        };

        // A new driver object, as after a fishd restart.
        let driver = node.driver("docker").await?;
        let owned = driver.list_owned().await?;
        ensure!(owned.iter().any(|o| o.uid == req.uid && o.identifier == first.identifier), "{owned:?}");
        ensure!(driver.inspect(req.uid, &first.identifier).await? == ResourceState::Running);
        let again = driver.allocate(&req).await?;
        ensure!(again.identifier == first.identifier, "a retried allocate made a second container");
        ensure!(again.ip_addr == first.ip_addr);

        // Another instance on the same engine and node owns none of it.
        let dev = node.driver("docker/dev").await?;
        ensure!(dev.list_owned().await?.is_empty(), "docker/dev sees docker's containers");

        // An orphan container and an orphan volume (their applications are unknown).
        let orphan_uid = Uuid::now_v7();
        let labels = HashMap::from([
            (LABEL_APPLICATION.to_owned(), orphan_uid.to_string()),
            (LABEL_NODE.to_owned(), node.name.clone()),
            (LABEL_DRIVER.to_owned(), "docker".to_owned()),
        ]);
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            cmd: Some(vec!["sleep".into(), "3600".into()]),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&format!("orphan-{orphan_uid}")).build();
        let orphan = docker.create_container(Some(options), body).await?.id;
        docker.start_container(&orphan, None).await?;
        let lonely_uid = Uuid::now_v7();
        let mut volume_labels = labels.clone();
        volume_labels.insert(LABEL_APPLICATION.into(), lonely_uid.to_string());
        let lonely_volume = volume_name(lonely_uid, "data");
        docker
            .create_volume(VolumeCreateRequest {
                name: Some(lonely_volume.clone()),
                labels: Some(volume_labels),
                ..Default::default()
            })
            .await?;

        let owned = driver.list_owned().await?;
        let found = owned.iter().find(|o| o.uid == orphan_uid).context("orphan container not listed")?;
        ensure!(found.identifier == orphan);
        let lonely = owned.iter().find(|o| o.uid == lonely_uid).context("orphan volume not listed")?;
        driver.deallocate(orphan_uid, &found.identifier).await?;
        driver.deallocate(lonely_uid, &lonely.identifier).await?;
        ensure!(!container_exists(&docker, &orphan).await?, "orphan container left");
        ensure!(!volume_exists(&docker, &lonely_volume).await?, "orphan volume left");

        driver.deallocate(req.uid, &first.identifier).await?;
        ensure!(driver.list_owned().await?.is_empty());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_is_reported_with_its_code() {
    with_engine(|_docker| async move {
        let node = TestNode::new();
        let driver = node.driver("docker").await?;
        let req = request(&node, definition(vec![named(IMAGE)], json!({"command": ["sh", "-c", "exit 3"]})));
        let allocated = driver.allocate(&req).await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match driver.inspect(req.uid, &allocated.identifier).await? {
                ResourceState::Running if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                ResourceState::Ended(message) => {
                    ensure!(message == "exited with code 3", "{message}");
                    break;
                }
                other => bail!("unexpected state {other:?}"),
            }
        }
        driver.deallocate(req.uid, &allocated.identifier).await?;
        Ok(())
    })
    .await;
}

/// Saves `IMAGE` under a fresh tag to a tarball and removes the tag, so the engine has to
/// load it. Returns (reference, path, sum).
async fn saved_image(docker: &Docker, node: &mut TestNode) -> Result<(String, PathBuf, String)> {
    let repo = format!("aquarium-test/busybox-{}", node.name);
    let reference = format!("{repo}:v1");
    docker.tag_image(IMAGE, Some(TagImageOptionsBuilder::default().repo(&repo).tag("v1").build())).await?;
    node.images.push(reference.clone());
    let path = node.data.path().join("saved.tar");
    let mut file = tokio::fs::File::create(&path).await?;
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut stream = docker.export_image(&reference);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        sha2::Digest::update(&mut hasher, &chunk);
        file.write_all(&chunk).await?;
    }
    file.sync_all().await?;
    let sum = format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher)));
    docker.remove_image(&reference, Some(RemoveImageOptionsBuilder::default().noprune(true).build()), None).await?;
    Ok((reference, path, sum))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_load_from_url_once_verified() {
    with_engine(|docker| async move {
        let mut node = TestNode::new();
        let (reference, path, sum) = saved_image(&docker, &mut node).await?;
        let driver = node.driver("docker").await?;
        let url = format!("file://{}", path.display());
        let image = |sum: &str| Image {
            name: Some(reference.clone()),
            tag: None,
            url: Some(url.clone()),
            sum: Some(sum.to_owned()),
        };
        let options = json!({"command": ["sleep", "3600"]});

        let wrong = format!("sha256:{}", "0".repeat(64));
        let mut def = definition(vec![image(&wrong)], options.clone());
        def.resources.disks.insert("data".into(), Disk { size: 1 });
        let bad = request(&node, def);
        match driver.allocate(&bad).await {
            Err(DriverError::Invalid(message)) => {
                ensure!(message.contains(&wrong) && message.contains(&sum), "sums not in: {message}");
            }
            other => bail!("a wrong sum must be Invalid, got {other:?}"),
        }
        ensure!(docker.inspect_image(&reference).await.is_err(), "an unverified image was loaded");
        ensure!(!container_exists(&docker, &container_name(bad.uid)).await?);
        ensure!(!volume_exists(&docker, &volume_name(bad.uid, "data")).await?);
        ensure!(driver.list_owned().await?.is_empty());

        let good = request(&node, definition(vec![image(&sum)], options.clone()));
        let first = driver.allocate(&good).await?;
        ensure!(driver.image_stats().loads == 1, "{:?}", driver.image_stats());
        let second = request(&node, definition(vec![image(&sum)], options.clone()));
        let other = driver.allocate(&second).await?;
        // Only a url: the cached tarball's loaded image is still in the engine.
        let url_only = Image { name: None, ..image(&sum) };
        let third = request(&node, definition(vec![url_only], options));
        let third_allocated = driver.allocate(&third).await?;
        let stats = driver.image_stats();
        ensure!(stats.loads == 1 && stats.downloads == 2, "the cache was not used: {stats:?}");

        for (req, allocated) in [(&good, &first), (&second, &other), (&third, &third_allocated)] {
            driver.deallocate(req.uid, &allocated.identifier).await?;
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_the_bad_fields() {
    let node = TestNode::new();
    let driver =
        tokio::time::timeout(TEST_TIMEOUT, node.driver("docker")).await.expect("connect timed out").expect("connect");
    let bad_sum = Image { sum: Some("sha256:abc".into()), url: Some("file:///x.tar".into()), ..named(IMAGE) };
    let errors = driver.validate(&definition(vec![bad_sum], json!({"foo": 1, "privileged": true})));
    let mut fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, ["images[0].sum", "options.foo"], "{errors:?}");
    assert!(driver.validate(&definition(vec![named(IMAGE)], json!({"env": {"A": "b"}}))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_engine_is_unavailable() {
    let node = TestNode::new();
    let config = DockerConfig { socket: "/nonexistent/docker.sock".into(), ..DockerConfig::default() };
    let run = async {
        let driver = DockerDriver::connect("docker".into(), config, node.name.clone(), node.data.path()).await?;
        ensure!(!detect(Path::new("/nonexistent/docker.sock")).await);
        let reason = driver.available().await.err().context("a missing socket must be unavailable")?;
        ensure!(reason.contains("/nonexistent/docker.sock"), "{reason}");
        ensure!(driver.capacity().is_none());
        match driver.allocate(&request(&node, definition(vec![named(IMAGE)], json!({})))).await {
            Err(DriverError::Unavailable(_)) => Ok(()),
            other => bail!("expected Unavailable, got {other:?}"),
        }
    };
    tokio::time::timeout(TEST_TIMEOUT, run).await.expect("timed out").unwrap_or_else(|e| panic!("{e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_comes_from_config_then_engine() {
    with_engine(|_docker| async move {
        let node = TestNode::new();
        ensure!(detect(Path::new(DEFAULT_SOCKET)).await);
        let config = DockerConfig {
            capacity: Some(DockerCapacity { cpu: Some(2), ram: None, slots: Some(3) }),
            ..Default::default()
        };
        let driver = DockerDriver::connect("docker".into(), config, node.name.clone(), node.data.path()).await?;
        let capacity = driver.capacity().context("no capacity")?;
        ensure!(capacity.cpu == 2 && capacity.slots == 3, "{capacity:?}");
        ensure!(capacity.ram > 0 && capacity.ram < u32::MAX, "ram from the engine: {capacity:?}");
        let plain = node.driver("docker").await?;
        let engine = plain.capacity().context("no engine capacity")?;
        ensure!(engine.cpu > 0 && engine.cpu < u32::MAX, "{engine:?}");
        Ok(())
    })
    .await;
}
