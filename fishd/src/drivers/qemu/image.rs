//! Base images and the per-application disks made from them.
//!
//! An image is a local file used in place (`url` a path, no `sum`), or a file fetched
//! from `url` (http(s), or a path with a `sum`) into the cache, hashed while it is
//! written and kept as `sha256-<hex>` only if the sum matches, read-only from then on:
//! nothing unverified is ever booted, and one download serves every application. A
//! base is never written: each application boots a qcow2 overlay backed by it
//! (`qemu-img create -b`), and QEMU opens backing files read-only.

use std::path::{Path, PathBuf};

use api_types::Image;

use crate::drivers::DriverError;
use crate::drivers::download::{Downloads, sum_hex};
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
    files: Downloads,
}

impl ImageCache {
    /// A cache in `dir`, created now.
    pub fn new(dir: PathBuf) -> Result<ImageCache, DriverError> {
        Ok(ImageCache { files: Downloads::new(dir)? })
    }

    /// How many images were fetched into the cache (verified or not).
    pub fn downloads(&self) -> u64 {
        self.files.count()
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
            (Some(sum), _) => self.fetch(url, &sum_hex(sum)?).await?,
        };
        let format = Format::detect(&path)
            .map_err(|e| DriverError::with_source(format!("reading image {}", path.display()), e))?;
        Ok(Base { path, format })
    }

    /// The cached `sha256-<hex>`, fetched and verified first if missing.
    async fn fetch(&self, url: &str, hex: &str) -> Result<PathBuf, DriverError> {
        let dest = self.files.dir().join(format!("sha256-{hex}"));
        let _guard = self.files.lock(hex).await;
        if !dest.is_file() {
            self.files.fetch(url, hex, &dest).await?;
        }
        Ok(dest)
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
    use sha2::{Digest, Sha256};

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
