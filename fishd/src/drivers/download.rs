//! Fetching a file into a cache by url, verified by its sha256 sum: the docker driver's
//! image tarballs and the qemu driver's disk images.
//!
//! # Guarantees
//! - The file is hashed while it is written and appears under its final name only if
//!   the sum matches (a `.sha256-<hex>.<uuid>.part` file is renamed), read-only: nothing
//!   unverified is ever used.
//! - [`Downloads::lock`] gives one lock per sum, so concurrent allocations of one image
//!   fetch it once.
//! - A failed or abandoned attempt removes its temporary file, also when its future is
//!   dropped (a driver-call deadline) rather than failing.
//!
//! # Assumptions
//! - The cache directory is this driver's alone.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::drivers::DriverError;

/// Read and hash in chunks of this size: few syscalls, gigabyte images never in memory.
pub const CHUNK: usize = 256 * 1024;

/// Where a file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
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

/// The hex digits of a `sha256:<64 hex digits>` sum, lower-cased.
pub fn sum_hex(sum: &str) -> Result<String, DriverError> {
    sum.strip_prefix("sha256:")
        .filter(|_| api_types::label::is_sha256_sum(sum))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| DriverError::Invalid(format!("image sum {sum}: must be sha256:<64 hex digits>")))
}

/// A cache directory, the fetches in flight and the HTTP client they share.
#[derive(Debug)]
pub struct Downloads {
    dir: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    count: AtomicU64,
    http: OnceLock<reqwest::Client>,
}

impl Downloads {
    /// A cache in `dir`, created now.
    pub fn new(dir: PathBuf) -> Result<Downloads, DriverError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError::with_source(format!("creating the image cache {}", dir.display()), e))?;
        Ok(Downloads { dir, locks: Mutex::default(), count: AtomicU64::new(0), http: OnceLock::new() })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many files were fetched (verified or not).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Holds the lock of sum `hex` (fetch, then whatever the caller does with the file).
    pub async fn lock(&self, hex: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(hex.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Fetches `url` to `dest` (in the cache) if its sha256 is `hex`; on a mismatch
    /// nothing is left. Call under [`Downloads::lock`].
    pub async fn fetch(&self, url: &str, hex: &str, dest: &Path) -> Result<(), DriverError> {
        let source = Source::parse(url).map_err(|m| DriverError::Invalid(format!("image url {url}: {m}")))?;
        self.count.fetch_add(1, Ordering::Relaxed);
        let part = PartFile(self.dir.join(format!(".sha256-{hex}.{}.part", uuid::Uuid::now_v7().simple())));
        let actual = self.copy_hashed(&source, url, &part.0).await?;
        if actual != hex {
            return Err(DriverError::Invalid(format!(
                "image {url}: sha256 sum mismatch: expected sha256:{hex}, got sha256:{actual}"
            )));
        }
        let cache_err = |e| DriverError::with_source(format!("caching {}", dest.display()), e);
        tokio::fs::set_permissions(&part.0, std::fs::Permissions::from_mode(0o444)).await.map_err(cache_err)?;
        tokio::fs::rename(&part.0, dest).await.map_err(cache_err)?;
        std::mem::forget(part);
        tracing::info!(%url, sum = %hex, "image fetched and verified");
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
        // startup, and this makes the drivers work on their own too (tests, benches).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("fishd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| DriverError::with_source("building the HTTP client", e))?;
        Ok(self.http.get_or_init(|| client))
    }
}

/// A temporary file removed when dropped: on an error, and when the fetching future is
/// dropped mid-way. Forgotten once renamed into place.
struct PartFile(PathBuf);

impl Drop for PartFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
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

    #[tokio::test]
    async fn a_fetch_abandoned_midway_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A "server" that accepts and never answers: the fetch is dropped by a deadline.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x", listener.local_addr().unwrap());
        let d = Downloads::new(dir.path().join("cache")).unwrap();
        let dest = dir.path().join("cache/sha256-x");
        let hex = "0".repeat(64);
        let fetch = d.fetch(&url, &hex, &dest);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(300), fetch).await.is_err());
        let left: Vec<_> = std::fs::read_dir(d.dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        drop(listener);
    }
}
