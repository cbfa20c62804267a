//! Where a root fishd puts work directories: outside its 0700 data directory, so that a
//! process running as a user of its own can reach its work directory (its `HOME`) by
//! absolute path, without that user, or anyone, being let into the data directory.
//!
//! Layout: `<workRoot>/<uid>/` is the application's (mode 0700, owned by the user the
//! process runs as), holding its work directory (`work` unless `options.workdir` says
//! otherwise). The work root itself is 0711: every user may pass through it to a directory
//! whose name it knows, none may list it, so an application learns no other uid and
//! enters no other application's directory. Its ancestors must be passable by all (as
//! `/var/lib` is); fishd warns at start when one is not.
//!
//! A fishd that is not root runs every process as itself, and keeps work directories in
//! the application's directory inside the data directory, as before.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::drivers::DriverError;

/// Mode of the work root: passable by all, listable by none but root.
const ROOT_MODE: u32 = 0o711;
/// Mode of an application's directory under it: its user's alone.
const APP_MODE: u32 = 0o700;

/// `<dataDir>-work`: next to the data directory (on the same file system, usually), and
/// plainly fishd's.
pub fn default_root(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().map(ToOwned::to_owned).unwrap_or_else(|| "fish-data".into());
    name.push("-work");
    data_dir.with_file_name(name)
}

/// Creates the work root (0711) if missing, sets that mode on it, and warns when a
/// directory above it keeps other users out.
pub fn prepare_root(root: &Path) -> Result<(), DriverError> {
    let err = |what: &str, e: io::Error| DriverError::with_source(format!("{what} {}: {e}", root.display()), e);
    fs::DirBuilder::new().recursive(true).mode(ROOT_MODE).create(root).map_err(|e| err("cannot create", e))?;
    fs::set_permissions(root, fs::Permissions::from_mode(ROOT_MODE)).map_err(|e| err("cannot set the mode of", e))?;
    let absolute = root.canonicalize().map_err(|e| err("cannot resolve", e))?;
    if let Some(closed) = absolute.ancestors().skip(1).find(|d| !passable(d)) {
        tracing::warn!(
            work_root = %absolute.display(),
            closed = %closed.display(),
            "processes running as users of their own cannot reach their work directories by absolute path: \
             a directory above drivers.process.workRoot is not passable (o+x) by other users"
        );
    }
    Ok(())
}

/// Creates an application's directory under the work root, 0700 (the caller hands it to
/// the application's user).
pub fn create_private(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(APP_MODE).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn passable(dir: &Path) -> bool {
    fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_root_is_next_to_the_data_directory() {
        assert_eq!(default_root(Path::new("/var/lib/aquarium")), Path::new("/var/lib/aquarium-work"));
        assert_eq!(default_root(Path::new("fish-data")), Path::new("fish-data-work"));
    }

    #[test]
    fn the_root_is_passable_and_unlistable_and_an_application_directory_is_private() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("a/b-work");
        prepare_root(&root).expect("prepare");
        prepare_root(&root).expect("prepare again");
        let mode = |p: &Path| fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&root), 0o711);
        let app = root.join("some-uid");
        create_private(&app).expect("create");
        create_private(&app).expect("create again");
        assert_eq!(mode(&app), 0o700);
    }
}
