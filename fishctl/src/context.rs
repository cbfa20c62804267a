//! The config file and its contexts: which server to talk to, which CA to trust, and
//! which token to present.
//!
//! The format is the one fishd writes to `<data-dir>/fishctl.yaml` on first start, so
//! a fresh node's file works as it is. Where the file is found is decided by
//! [`config_path`] alone: `--config`, else `$FISHCTL_CONFIG`, else
//! `~/.config/fishctl/config.yaml`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "FISHCTL_CONFIG";

/// A whole config file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The context used when `--context` is not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One server and the credentials to use there.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// `https://host:port` of a fishd node.
    pub server: String,
    /// PEM file of the CA that signed the server's certificate; relative paths are
    /// taken from the config file's directory. Without it, the system roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A context picked from a file, with its CA path made absolute.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedContext {
    pub name: String,
    pub server: String,
    pub ca_cert: Option<PathBuf>,
    pub user: Option<String>,
    pub token: Option<String>,
}

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no config file: pass --config FILE or set ${CONFIG_ENV} (fishd writes one to <data-dir>/fishctl.yaml)")]
    NoHome,
    #[error(
        "no config file at {}: pass --config FILE or set ${CONFIG_ENV} (fishd writes one to <data-dir>/fishctl.yaml)",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("cannot read config {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {} is invalid: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config {} has no current_context: pass --context NAME (contexts: {available})", path.display())]
    NoCurrent { path: PathBuf, available: String },
    #[error("context {name:?} is not in {} (contexts: {available})", path.display())]
    UnknownContext { path: PathBuf, name: String, available: String },
    #[error("cannot write config {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the config file is: the flag, else the environment, else under `home`.
pub fn config_path(
    flag: Option<&Path>,
    env: Option<std::ffi::OsString>,
    home: Option<PathBuf>,
) -> Result<PathBuf, ContextError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    home.map(|h| h.join(".config").join("fishctl").join("config.yaml")).ok_or(ContextError::NoHome)
}

/// [`config_path`] with this process's environment.
pub fn default_config_path(flag: Option<&Path>) -> Result<PathBuf, ContextError> {
    config_path(flag, std::env::var_os(CONFIG_ENV), std::env::home_dir())
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ContextError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ContextError::Missing(path.into())),
            Err(source) => return Err(ContextError::Read { path: path.into(), source }),
        };
        Config::parse(&text).map_err(|message| ContextError::Parse { path: path.into(), message })
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string().lines().next().unwrap_or("").trim().to_owned())
    }

    /// The context named `name`, else the current one, with `ca_cert` made absolute
    /// relative to the directory of `path`.
    pub fn resolve(&self, name: Option<&str>, path: &Path) -> Result<ResolvedContext, ContextError> {
        let available = || {
            if self.contexts.is_empty() {
                "none".to_owned()
            } else {
                self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        let name = match name.or(self.current_context.as_deref()) {
            Some(n) => n,
            None => return Err(ContextError::NoCurrent { path: path.into(), available: available() }),
        };
        let ctx = self.contexts.get(name).ok_or_else(|| ContextError::UnknownContext {
            path: path.into(),
            name: name.to_owned(),
            available: available(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(ResolvedContext {
            name: name.to_owned(),
            server: ctx.server.clone(),
            ca_cert: ctx.ca_cert.as_ref().map(|c| if c.is_relative() { base.join(c) } else { c.clone() }),
            user: ctx.user.clone(),
            token: ctx.token.clone(),
        })
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str, path: &Path) -> Result<(), ContextError> {
        if !self.contexts.contains_key(name) {
            return Err(ContextError::UnknownContext {
                path: path.into(),
                name: name.to_owned(),
                available: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        self.current_context = Some(name.to_owned());
        Ok(())
    }

    /// Writes the config back atomically (a temporary file renamed over it), owner-only
    /// readable because it holds tokens.
    pub fn save(&self, path: &Path) -> Result<(), ContextError> {
        let err = |source| ContextError::Write { path: path.into(), source };
        let text = serde_saphyr::to_string(self).map_err(|e| err(std::io::Error::other(e.to_string())))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FISHD_WRITES: &str = "\
current_context: host-a
contexts:
  host-a:
    server: https://127.0.0.1:8001
    ca_cert: /var/lib/fish/ca.crt
    user: admin
    token: secret-a
  host-b:
    server: https://10.0.0.2:8001
    ca_cert: certs/ca.crt
    user: alice
    token: secret-b
";

    #[test]
    fn path_prefers_flag_then_env_then_home() {
        let flag = Path::new("/f.yaml");
        let env = Some("/e.yaml".into());
        let home = Some(PathBuf::from("/home/u"));
        assert_eq!(config_path(Some(flag), env.clone(), home.clone()).unwrap(), flag);
        assert_eq!(config_path(None, env, home.clone()).unwrap(), Path::new("/e.yaml"));
        assert_eq!(
            config_path(None, Some("".into()), home.clone()).unwrap(),
            Path::new("/home/u/.config/fishctl/config.yaml")
        );
        assert!(matches!(config_path(None, None, None), Err(ContextError::NoHome)));
    }

    #[test]
    fn resolves_current_and_named_contexts() {
        let cfg = Config::parse(FISHD_WRITES).unwrap();
        let path = Path::new("/etc/fish/fishctl.yaml");
        let cur = cfg.resolve(None, path).unwrap();
        assert_eq!(cur.name, "host-a");
        assert_eq!(cur.server, "https://127.0.0.1:8001");
        assert_eq!(cur.ca_cert.as_deref(), Some(Path::new("/var/lib/fish/ca.crt")));
        assert_eq!(cur.token.as_deref(), Some("secret-a"));
        let b = cfg.resolve(Some("host-b"), path).unwrap();
        assert_eq!(b.user.as_deref(), Some("alice"));
        // Relative CA paths are relative to the config file, not to the working directory.
        assert_eq!(b.ca_cert.as_deref(), Some(Path::new("/etc/fish/certs/ca.crt")));
    }

    #[test]
    fn unknown_or_missing_context_names_the_choices() {
        let cfg = Config::parse(FISHD_WRITES).unwrap();
        let e = cfg.resolve(Some("nope"), Path::new("c.yaml")).unwrap_err().to_string();
        assert_eq!(e, "context \"nope\" is not in c.yaml (contexts: host-a, host-b)");
        let mut no_current = cfg.clone();
        no_current.current_context = None;
        let e = no_current.resolve(None, Path::new("c.yaml")).unwrap_err().to_string();
        assert!(e.contains("no current_context") && e.contains("host-a, host-b"), "{e}");
    }

    #[test]
    fn missing_file_says_where_to_find_one() {
        let dir = tempfile::tempdir().unwrap();
        let e = Config::load(&dir.path().join("none.yaml")).unwrap_err().to_string();
        assert!(e.starts_with("no config file at ") && e.contains("--config"), "{e}");
    }

    #[test]
    fn invalid_file_is_one_line() {
        let e = Config::parse("contexts: [1, 2]").unwrap_err();
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn use_context_saves_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fishctl.yaml");
        std::fs::write(&path, FISHD_WRITES).unwrap();
        let mut cfg = Config::load(&path).unwrap();
        assert!(cfg.use_context("nope", &path).is_err());
        cfg.use_context("host-b", &path).unwrap();
        cfg.save(&path).unwrap();
        let back = Config::load(&path).unwrap();
        assert_eq!(back.current_context.as_deref(), Some("host-b"));
        assert_eq!(back.contexts, cfg.contexts);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
