//! A user of its own for each application, when fishd runs as root and the definition
//! names none: created before the process starts, removed with the application.
//!
//! The name comes from the uid (`fish-<last 16 hex digits>`, the random part of a v7
//! uid), so a retried allocate reuses it and a deallocation after a restart finds it.
//! The user has no home of its own (its `HOME` is the work directory), no password and
//! no login shell; its group is its own.

use std::process::Command;
use std::time::Duration;

use uuid::Uuid;

use crate::drivers::DriverError;

/// `useradd`/`userdel` lock the user database; another writer makes them fail at once.
const LOCK_RETRIES: u32 = 20;
const LOCK_PAUSE: Duration = Duration::from_millis(100);

/// The user of an application.
pub fn user_name(uid: Uuid) -> String {
    format!("fish-{}", &uid.simple().to_string()[16..])
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..LOCK_RETRIES {
        let out = Command::new(program).args(args).output().map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // Exit 10 (userdel) / 1 (useradd): the database is locked by another writer.
        if !last.contains("lock") {
            break;
        }
        std::thread::sleep(LOCK_PAUSE);
    }
    Err(format!("{program} {}: {last}", args.join(" ")))
}

/// The application's user, created if missing: `(name, uid, gid)`.
pub fn ensure(uid: Uuid, home: &std::path::Path) -> Result<(String, u32, u32), DriverError> {
    let name = user_name(uid);
    if let Some(found) = lookup(&name)? {
        return Ok(found);
    }
    let home = home.display().to_string();
    run(
        "useradd",
        &["--system", "--user-group", "--no-create-home", "--home-dir", &home, "--shell", "/usr/sbin/nologin", &name],
    )
    .map_err(|e| DriverError::failed(format!("cannot create the application's user {name}: {e}")))?;
    lookup(&name)?.ok_or_else(|| DriverError::failed(format!("user {name} vanished right after it was created")))
}

fn lookup(name: &str) -> Result<Option<(String, u32, u32)>, DriverError> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| DriverError::with_source(format!("cannot look up user {name}"), e))?;
    Ok(user.map(|u| (u.name, u.uid.as_raw(), u.gid.as_raw())))
}

/// Removes the application's user (and its group); fine when there is none.
pub fn remove(uid: Uuid) -> Result<(), DriverError> {
    let name = user_name(uid);
    if lookup(&name)?.is_none() {
        return Ok(());
    }
    run("userdel", &[&name])
        .map_err(|e| DriverError::failed(format!("cannot remove the application's user {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_from_the_random_part() {
        let a = Uuid::now_v7();
        let b = Uuid::now_v7();
        assert_eq!(user_name(a).len(), 21);
        assert_ne!(user_name(a), user_name(b));
    }
}
