//! Images: found in the engine, or downloaded, verified and loaded from a tarball.
//!
//! A definition's image is either a `name[:tag]` the engine already has, or a `url` to a
//! `docker save` tarball with its `sha256` sum (or both: the url is used only when the
//! engine lacks the name). A tarball is downloaded once into the cache directory, hashed
//! while it is written, and kept (as `sha256-<hex>.tar`) only if its sum matches, so
//! nothing unverified ever reaches the engine and one download serves every application.
//! The reference a tarball loaded is remembered beside it, so a url-only image is not
//! loaded again while the engine still has it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use api_types::Image;
use bollard::Docker;
use bollard::query_parameters::ImportImageOptionsBuilder;
use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use tokio::io::AsyncReadExt;

use super::{engine_error, is_not_found};
use crate::drivers::DriverError;
use crate::drivers::download::{CHUNK, Downloads, Source, sum_hex};

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
    /// The verified tarballs; its lock per sum is held across download and load, so
    /// two allocations of one image download and load it once.
    files: Downloads,
    loads: AtomicU64,
}

impl ImageStore {
    /// A store caching tarballs in `cache_dir`, which is created now.
    pub fn new(cache_dir: PathBuf) -> Result<Self, DriverError> {
        Ok(ImageStore { files: Downloads::new(cache_dir)?, loads: AtomicU64::new(0) })
    }

    pub fn stats(&self) -> ImageStats {
        ImageStats { downloads: self.files.count(), loads: self.loads.load(Ordering::Relaxed) }
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
        Source::parse(url).map_err(|m| DriverError::Invalid(format!("image url {url}: {m}")))?;
        let hex = sum_hex(sum)?;

        let _guard = self.files.lock(&hex).await;
        let tarball = self.files.dir().join(format!("sha256-{hex}.tar"));
        let loaded_file = self.files.dir().join(format!("sha256-{hex}.loaded"));
        if !tarball.exists() {
            self.files.fetch(url, &hex, &tarball).await?;
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
    fn references_default_to_latest() {
        assert_eq!(reference("busybox", None), "busybox:latest");
        assert_eq!(reference("busybox", Some("1")), "busybox:1");
        assert_eq!(reference("busybox:2", None), "busybox:2");
        assert_eq!(reference("localhost:5000/busybox", None), "localhost:5000/busybox:latest");
    }
}
