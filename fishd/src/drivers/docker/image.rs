//! Images: found in the engine, or downloaded, verified and loaded from a tarball.
//!
//! A definition's image is either a `name[:tag]` the engine already has, or a `url` to a
//! `docker save` tarball with its `sha256` sum (or both: the url is used only when the
//! engine lacks the name). A tarball is downloaded once into the cache directory, hashed
//! while it is written, and kept (as `sha256-<hex>.tar`) only if its sum matches, so
//! nothing unverified ever reaches the engine and one download serves every application.
//! The reference a tarball loaded is remembered beside it, so a url-only image is not
//! loaded again while the engine still has it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use api_types::Image;
use bollard::Docker;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{engine_error, is_not_found};
use crate::drivers::DriverError;

/// Read and hash in chunks of this size: large enough to keep syscalls few, small
/// enough to stream gigabyte images without holding them in memory.
const CHUNK: usize = 256 * 1024;

/// Where an image tarball comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Http(String),
    File(PathBuf),
}

impl Source {
    /// `http(s)://…`, `file:///abs/path` (or `file://localhost/…`) or an absolute path.
    pub fn parse(url: &str) -> Result<Source, String> {
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Source::Http(url.to_owned()));
        }
        let path = match url.strip_prefix("file://") {
            Some(rest) => rest.strip_prefix("localhost").unwrap_or(rest),
            None if url.contains("://") => return Err("must be http(s)://, file:// or an absolute path".into()),
            None => url,
        };
        if path.starts_with('/') {
            Ok(Source::File(PathBuf::from(path)))
        } else {
            Err("must be http(s)://, file:///absolute/path or an absolute path".into())
        }
    }
}

/// How often tarballs were downloaded and loaded, so tests and metrics can see the cache work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageStats {
    /// Tarballs fetched from their url into the cache (verified or not).
    pub downloads: u64,
    /// Tarballs sent to the engine (`docker load`).
    pub loads: u64,
}

/// The tarball cache and the loads in flight.
pub(super) struct ImageStore {
    cache_dir: PathBuf,
    /// One lock per sum, so two allocations of one image download and load it once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    downloads: AtomicU64,
    loads: AtomicU64,
    http: OnceLock<reqwest::Client>,
}

impl ImageStore {
    /// A store caching tarballs in `cache_dir`, which is created now.
    pub fn new(cache_dir: PathBuf) -> Result<Self, DriverError> {
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| DriverError::with_source(format!("creating the image cache {}", cache_dir.display()), e))?;
        Ok(ImageStore {
            cache_dir,
            locks: Mutex::default(),
            downloads: AtomicU64::new(0),
            loads: AtomicU64::new(0),
            http: OnceLock::new(),
        })
    }

    pub fn stats(&self) -> ImageStats {
        ImageStats { downloads: self.downloads.load(Ordering::Relaxed), loads: self.loads.load(Ordering::Relaxed) }
    }

    /// The reference to create the container from: the image's name when the engine has
    /// it, else whatever its verified tarball loads.
    pub async fn resolve(&self, docker: &Docker, image: &Image) -> Result<String, DriverError> {
        let reference = image.name.as_deref().map(|name| reference(name, image.tag.as_deref()));
        if let Some(reference) = &reference
            && image_exists(docker, reference).await?
        {
            return Ok(reference.clone());
        }
        let (Some(url), Some(sum)) = (&image.url, &image.sum) else {
            return Err(DriverError::Invalid(format!(
                "image {} is not in the engine and the definition has no url and sum to load it from",
                reference.as_deref().unwrap_or("(unnamed)")
            )));
        };
        let source = Source::parse(url).map_err(|m| DriverError::Invalid(format!("image url {url}: {m}")))?;
        let hex = sum
            .strip_prefix("sha256:")
            .filter(|_| api_types::label::is_sha256_sum(sum))
            .ok_or_else(|| DriverError::Invalid(format!("image sum {sum}: must be sha256:<64 hex digits>")))?
            .to_ascii_lowercase();

        let lock = self.lock_for(&hex);
        let _guard = lock.lock().await;
        let tarball = self.cache_dir.join(format!("sha256-{hex}.tar"));
        let loaded_file = self.cache_dir.join(format!("sha256-{hex}.loaded"));
        if !tarball.exists() {
            self.download(&source, url, &hex, &tarball).await?;
        }
        // A url-only image: the tarball may have been loaded before and still be there.
        if reference.is_none()
            && let Ok(previous) = tokio::fs::read_to_string(&loaded_file).await
        {
            let previous = previous.trim();
            if !previous.is_empty() && image_exists(docker, previous).await? {
                return Ok(previous.to_owned());
            }
        }
        let loaded = self.load(docker, &tarball).await?;
        if let Some(first) = loaded.first()
            && let Err(e) = tokio::fs::write(&loaded_file, first).await
        {
            tracing::warn!(path = %loaded_file.display(), error = %e, "cannot remember the loaded image");
        }
        match reference {
            Some(reference) if image_exists(docker, &reference).await? => Ok(reference),
            Some(reference) => Err(DriverError::Invalid(format!(
                "the tarball at {url} does not contain {reference} (it loaded: {})",
                if loaded.is_empty() { "nothing".to_owned() } else { loaded.join(", ") }
            ))),
            None => loaded
                .into_iter()
                .next()
                .ok_or_else(|| DriverError::Invalid(format!("the tarball at {url} loaded no image"))),
        }
    }

    fn lock_for(&self, hex: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(hex.to_owned()).or_default().clone()
    }

    /// Copies the tarball into the cache while hashing it; keeps it only if the sum matches.
    async fn download(&self, source: &Source, url: &str, hex: &str, dest: &Path) -> Result<(), DriverError> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let tmp = self.cache_dir.join(format!(".sha256-{hex}.{}.part", uuid::Uuid::now_v7().simple()));
        let result = self.copy_hashed(source, url, &tmp).await;
        let actual = match result {
            Ok(actual) => actual,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
        };
        if actual != hex {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(DriverError::Invalid(format!(
                "image {url}: sha256 sum mismatch: expected sha256:{hex}, got sha256:{actual}"
            )));
        }
        tokio::fs::rename(&tmp, dest)
            .await
            .map_err(|e| DriverError::with_source(format!("caching {}", dest.display()), e))?;
        tracing::info!(%url, sum = %hex, "image tarball downloaded and verified");
        Ok(())
    }

    async fn copy_hashed(&self, source: &Source, url: &str, tmp: &Path) -> Result<String, DriverError> {
        let mut out = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| DriverError::with_source(format!("creating {}", tmp.display()), e))?;
        let mut hasher = Sha256::new();
        let write_err = |e| DriverError::with_source(format!("writing {}", tmp.display()), e);
        match source {
            Source::File(path) => {
                let mut input = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| DriverError::Invalid(format!("image {url}: cannot open {}: {e}", path.display())))?;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = input
                        .read(&mut buf)
                        .await
                        .map_err(|e| DriverError::with_source(format!("reading {}", path.display()), e))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n]).await.map_err(write_err)?;
                }
            }
            Source::Http(_) => {
                let response = self
                    .http_client()?
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| DriverError::with_source(format!("downloading image {url}"), e))?;
                let mut body = response.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| DriverError::with_source(format!("downloading image {url}"), e))?;
                    hasher.update(&chunk);
                    out.write_all(&chunk).await.map_err(write_err)?;
                }
            }
        }
        out.sync_all().await.map_err(write_err)?;
        Ok(hex::encode(hasher.finalize()))
    }

    fn http_client(&self) -> Result<&reqwest::Client, DriverError> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        // reqwest is built without a default crypto provider; fishd installs ring at
        // startup, and this makes the driver work on its own too (tests, benches).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("fishd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| DriverError::with_source("building the HTTP client", e))?;
        Ok(self.http.get_or_init(|| client))
    }

    /// `docker load` of a verified tarball; returns what the engine says it loaded.
    async fn load(&self, docker: &Docker, tarball: &Path) -> Result<Vec<String>, DriverError> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let file = tokio::fs::File::open(tarball)
            .await
            .map_err(|e| DriverError::with_source(format!("opening {}", tarball.display()), e))?;
        let options = ImportImageOptionsBuilder::default().quiet(true).build();
        let infos: Vec<_> = docker
            .import_image_stream(options, file_stream(file), None)
            .try_collect()
            .await
            .map_err(|e| engine_error("loading the image", e))?;
        let loaded: Vec<String> = infos
            .iter()
            .filter_map(|info| info.stream.as_deref())
            .flat_map(str::lines)
            .filter_map(|line| {
                let line = line.trim();
                line.strip_prefix("Loaded image: ").or_else(|| line.strip_prefix("Loaded image ID: "))
            })
            .map(str::to_owned)
            .collect();
        tracing::info!(tarball = %tarball.display(), ?loaded, "image tarball loaded");
        Ok(loaded)
    }
}

/// `name:tag`, with `latest` when neither the name nor `tag` has one.
pub(super) fn reference(name: &str, tag: Option<&str>) -> String {
    match tag {
        Some(tag) => format!("{name}:{tag}"),
        None if super::options::has_tag_or_digest(name) => name.to_owned(),
        None => format!("{name}:latest"),
    }
}

async fn image_exists(docker: &Docker, reference: &str) -> Result<bool, DriverError> {
    match docker.inspect_image(reference).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(engine_error("inspecting the image", e)),
    }
}

/// A file as a stream of chunks, without loading it whole.
fn file_stream(file: tokio::fs::File) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    futures::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; CHUNK];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok::<_, std::io::Error>(Some((Bytes::from(buf), file)))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(Source::parse("file:///tmp/x.tar"), Ok(Source::File("/tmp/x.tar".into())));
        assert_eq!(Source::parse("file://localhost/tmp/x.tar"), Ok(Source::File("/tmp/x.tar".into())));
        assert_eq!(Source::parse("/tmp/x.tar"), Ok(Source::File("/tmp/x.tar".into())));
        assert_eq!(Source::parse("https://h/x.tar"), Ok(Source::Http("https://h/x.tar".into())));
        assert!(Source::parse("x.tar").is_err());
        assert!(Source::parse("ftp://h/x.tar").is_err());
        assert!(Source::parse("file://host/x.tar").is_err());
    }

    #[test]
    fn references_default_to_latest() {
        assert_eq!(reference("busybox", None), "busybox:latest");
        assert_eq!(reference("busybox", Some("1")), "busybox:1");
        assert_eq!(reference("busybox:2", None), "busybox:2");
        assert_eq!(reference("localhost:5000/busybox", None), "localhost:5000/busybox:latest");
    }
}
