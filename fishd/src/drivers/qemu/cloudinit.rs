//! The NoCloud seed of `cloudInit: true`: an ISO9660 volume labelled `cidata` with
//! `meta-data` and `user-data`, which cloud-init in a cloud image reads at first boot.
//!
//! `meta-data` names the instance after the application (uid, name). `user-data` is the
//! metadata's `cloudInitUserData` string when the label or application gives one (the
//! user's own cloud-config or script); otherwise a `#cloud-config` that writes the
//! merged metadata to `/etc/fish/metadata.env` (mode 0600) for the guest's programs.
//! The guest can always ask `http://10.0.2.100/meta/v1/data` too. The seed is built
//! with `genisoimage` (or `mkisofs`/`xorrisofs`, whichever the node has).

use std::path::Path;

use api_types::Metadata;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::drivers::DriverError;

/// The metadata key whose string value becomes `user-data` verbatim.
pub const USER_DATA_KEY: &str = "cloudInitUserData";

/// The `meta-data` document.
pub fn meta_data(uid: Uuid, name: &str) -> String {
    let host: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).take(63).collect();
    // JSON strings are valid YAML scalars, so no value can break the document.
    format!("instance-id: {}\nlocal-hostname: {}\n", json!(uid.to_string()), json!(host))
}

/// The `user-data` document.
pub fn user_data(metadata: &Metadata) -> String {
    if let Some(Value::String(own)) = metadata.get(USER_DATA_KEY) {
        return own.clone();
    }
    let env = crate::metadata::to_env(metadata);
    let doc = json!({
        "write_files": [{"path": "/etc/fish/metadata.env", "permissions": "0600", "content": env}]
    });
    // JSON is YAML: the document needs no YAML writer and cannot be mis-quoted.
    format!("#cloud-config\n{doc}\n")
}

/// Writes `seed.iso` in `dir` with the two documents.
pub async fn write_seed(dir: &Path, uid: Uuid, name: &str, metadata: &Metadata) -> Result<(), DriverError> {
    let tool =
        ["genisoimage", "mkisofs", "xorrisofs"].into_iter().find(|t| super::find_program(t).is_some()).ok_or_else(
            || DriverError::Invalid("options.cloudInit: no genisoimage on this node to build the seed".into()),
        )?;
    let files = dir.join("seed");
    let io = |what: String| move |e| DriverError::with_source(what, e);
    tokio::fs::create_dir_all(&files).await.map_err(io(format!("creating {}", files.display())))?;
    tokio::fs::write(files.join("meta-data"), meta_data(uid, name)).await.map_err(io("writing meta-data".into()))?;
    tokio::fs::write(files.join("user-data"), user_data(metadata)).await.map_err(io("writing user-data".into()))?;
    let out = tokio::process::Command::new(tool)
        .args([
            "-quiet",
            "-output",
            "seed.iso",
            "-volid",
            "cidata",
            "-joliet",
            "-rock",
            "seed/meta-data",
            "seed/user-data",
        ])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io(format!("running {tool}")))?;
    let _ = tokio::fs::remove_dir_all(&files).await;
    if !out.status.success() {
        return Err(DriverError::failed(format!(
            "{tool} failed to build the cloud-init seed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_the_metadata() {
        let mut m = Metadata::new();
        m.insert("SECRET".into(), json!("it's \"quoted\""));
        let ud = user_data(&m);
        assert!(ud.starts_with("#cloud-config\n"));
        let doc: Value = serde_json::from_str(ud.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(doc["write_files"][0]["content"], "SECRET='it'\\''s \"quoted\"'\n");
        m.insert(USER_DATA_KEY.into(), json!("#!/bin/sh\necho hi\n"));
        assert_eq!(user_data(&m), "#!/bin/sh\necho hi\n");
        assert!(meta_data(Uuid::nil(), "build 1").contains("local-hostname: \"build-1\""));
    }

    #[tokio::test]
    async fn seed_is_an_iso_named_cidata() {
        if super::super::find_program("genisoimage").is_none() {
            assert!(std::env::var_os("CI").is_none(), "genisoimage is missing in CI (scripts/install-deps.sh)");
            eprintln!("SKIPPED outside CI: genisoimage is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        write_seed(dir.path(), Uuid::nil(), "vm", &Metadata::new()).await.unwrap();
        let iso = std::fs::read(dir.path().join("seed.iso")).unwrap();
        // The primary volume descriptor at sector 16: type 1, "CD001", volume id at 40.
        assert_eq!(&iso[32768 + 1..32768 + 6], b"CD001");
        assert_eq!(&iso[32768 + 40..32768 + 46], b"cidata");
        assert!(!dir.path().join("seed").exists());
    }
}
