//! Base images and the per-application disks made from them.
//!
//! An image is a local file used in place (`url` a path, no `sum`), or a file fetched
//! from `url` (http(s), or a path with a `sum`) into the cache, hashed while it is
//! written and kept as `sha256-<hex>` only if the sum matches, read-only from then on:
//! nothing unverified is ever booted, and one download serves every application. A
//! base is never written: each application boots a qcow2 overlay backed by it
//! (`qemu-img create -b`), and QEMU opens backing files read-only.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use api_types::Image;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::drivers::DriverError;

/// Read and hash in chunks of this size: few syscalls, gigabyte images never in memory.
const CHUNK: usize = 256 * 1024;
/// The first bytes of every qcow2 file.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// A disk image format QEMU is told explicitly (never probed: probing a raw image
/// lets a guest that writes a qcow2 header into it read host files).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Qcow2,
    Raw,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Qcow2 => "qcow2",
            Format::Raw => "raw",
        }
    }

    /// qcow2 by its magic, raw otherwise.
    pub fn detect(path: &Path) -> std::io::Result<Format> {
        let mut head = [0u8; 4];
        let mut f = std::fs::File::open(path)?;
        let n = std::io::Read::read(&mut f, &mut head)?;
        Ok(if n == 4 && &head == QCOW2_MAGIC { Format::Qcow2 } else { Format::Raw })
    }
}

/// A verified, read-only base image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    pub path: PathBuf,
    pub format: Format,
}

/// The cache of fetched images and the fetches in flight.
pub struct ImageCache {
    dir: PathBuf,
    /// One lock per sum: two allocations of one image fetch it once.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    downloads: AtomicU64,
    http: OnceLock<reqwest::Client>,
}

impl ImageCache {
    /// A cache in `dir`, created now.
    pub fn new(dir: PathBuf) -> Result<ImageCache, DriverError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError::with_source(format!("creating the image cache {}", dir.display()), e))?;
        Ok(ImageCache { dir, locks: Mutex::default(), downloads: AtomicU64::new(0), http: OnceLock::new() })
    }

    /// How many images were fetched into the cache (verified or not).
    pub fn downloads(&self) -> u64 {
        self.downloads.load(Ordering::Relaxed)
    }

    /// The base for `image`: the local file, or the verified cached copy.
    pub async fn resolve(&self, image: &Image) -> Result<Base, DriverError> {
        let url = image.url.as_deref().ok_or_else(|| DriverError::Invalid("images[0].url is required".into()))?;
        let local = local_path(url);
        let path = match (&image.sum, local) {
            (None, Some(path)) => {
                if !path.is_file() {
                    return Err(DriverError::Invalid(format!("image {url}: no such file on this node")));
                }
                path
            }
            (None, None) => return Err(DriverError::Invalid(format!("image {url}: a downloaded image needs a sum"))),
            (Some(sum), _) => {
                let hex = sum
                    .strip_prefix("sha256:")
                    .filter(|_| api_types::label::is_sha256_sum(sum))
                    .ok_or_else(|| DriverError::Invalid(format!("image sum {sum}: must be sha256:<64 hex digits>")))?
                    .to_ascii_lowercase();
                self.fetch(url, &hex).await?
            }
        };
        let format = Format::detect(&path)
            .map_err(|e| DriverError::with_source(format!("reading image {}", path.display()), e))?;
        Ok(Base { path, format })
    }

    fn lock_for(&self, hex: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(hex.to_owned()).or_default().clone()
    }

    /// The cached `sha256-<hex>`, fetched and verified first if missing.
    async fn fetch(&self, url: &str, hex: &str) -> Result<PathBuf, DriverError> {
        let dest = self.dir.join(format!("sha256-{hex}"));
        let lock = self.lock_for(hex);
        let _guard = lock.lock().await;
        if dest.is_file() {
            return Ok(dest);
        }
        self.downloads.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".sha256-{hex}.{}.part", uuid::Uuid::now_v7().simple()));
        let actual = match self.copy_hashed(url, &tmp).await {
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
        let cache_err = |e| DriverError::with_source(format!("caching {}", dest.display()), e);
        tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o444)).await.map_err(cache_err)?;
        tokio::fs::rename(&tmp, &dest).await.map_err(cache_err)?;
        tracing::info!(%url, sum = %hex, "image fetched and verified");
        Ok(dest)
    }

    async fn copy_hashed(&self, url: &str, tmp: &Path) -> Result<String, DriverError> {
        let mut out = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| DriverError::with_source(format!("creating {}", tmp.display()), e))?;
        let mut hasher = Sha256::new();
        let write_err = |e| DriverError::with_source(format!("writing {}", tmp.display()), e);
        if let Some(path) = local_path(url) {
            let mut input = tokio::fs::File::open(&path)
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
        } else {
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
        out.sync_all().await.map_err(write_err)?;
        Ok(hex::encode(hasher.finalize()))
    }

    fn http_client(&self) -> Result<&reqwest::Client, DriverError> {
        if let Some(client) = self.http.get() {
            return Ok(client);
        }
        // reqwest is built without a default crypto provider; fishd installs ring at start.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("fishd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| DriverError::with_source("building the HTTP client", e))?;
        Ok(self.http.get_or_init(|| client))
    }
}

/// The host path of a `file:///…` or absolute-path url; `None` for http(s).
fn local_path(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    path.starts_with('/').then(|| PathBuf::from(path))
}

/// Runs `qemu-img` with `args`; its stderr in the error.
async fn qemu_img(args: &[&str]) -> Result<(), DriverError> {
    let out = tokio::process::Command::new("qemu-img")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| DriverError::with_source("cannot run qemu-img (install qemu-utils)", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(DriverError::failed(format!(
        "qemu-img {} failed: {}",
        args.first().copied().unwrap_or(""),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Creates `dest` as a qcow2 overlay of `base` (written to a temporary name first, so a
/// crash never leaves a half-made overlay under the real name).
pub async fn create_overlay(base: &Base, dest: &Path) -> Result<(), DriverError> {
    let tmp = dest.with_extension("part");
    let (b, t) = (base.path.display().to_string(), tmp.display().to_string());
    qemu_img(&["create", "-q", "-f", "qcow2", "-F", base.format.as_str(), "-b", &b, &t]).await?;
    tokio::fs::rename(&tmp, dest).await.map_err(|e| DriverError::with_source(format!("renaming {}", tmp.display()), e))
}

/// Creates an empty (sparse) qcow2 disk of `gib` GiB at `dest`.
pub async fn create_disk(dest: &Path, gib: u32) -> Result<(), DriverError> {
    let tmp = dest.with_extension("part");
    let t = tmp.display().to_string();
    qemu_img(&["create", "-q", "-f", "qcow2", &t, &format!("{gib}G")]).await?;
    tokio::fs::rename(&tmp, dest).await.map_err(|e| DriverError::with_source(format!("renaming {}", tmp.display()), e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sum_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    fn image(url: &str, sum: Option<String>) -> Image {
        Image { name: None, tag: None, url: Some(url.to_owned()), sum }
    }

    #[tokio::test]
    async fn verified_images_are_cached_once_and_bad_sums_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("disk.raw");
        std::fs::write(&src, b"raw disk bytes").unwrap();
        let cache = ImageCache::new(dir.path().join("cache")).unwrap();
        let url = format!("file://{}", src.display());
        let a = cache.resolve(&image(&url, Some(sum_of(b"raw disk bytes")))).await.unwrap();
        let b = cache.resolve(&image(&url, Some(sum_of(b"raw disk bytes")))).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.format, Format::Raw);
        assert_eq!(cache.downloads(), 1);
        assert!(std::fs::metadata(&a.path).unwrap().permissions().readonly());

        let err = cache.resolve(&image(&url, Some(sum_of(b"other")))).await.unwrap_err();
        assert!(matches!(err, DriverError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("sum mismatch"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache")).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the good image stays: {left:?}");
    }

    #[tokio::test]
    async fn local_images_are_used_in_place_and_detected() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a.qcow2");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let cache = ImageCache::new(dir.path().join("cache")).unwrap();
        let base = cache.resolve(&image(q.to_str().unwrap(), None)).await.unwrap();
        assert_eq!(base, Base { path: q, format: Format::Qcow2 });
        let missing = cache.resolve(&image("/nonexistent/x.img", None)).await.unwrap_err();
        assert!(matches!(missing, DriverError::Invalid(_)));
    }
}
