//! The `options`, images and network of a `qemu` definition, checked field by field so
//! that a user sees every mistake at once, each at its path in the definition.

use api_types::{Definition, FieldError, Network};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Keys a `qemu` definition's options may have.
const KNOWN: [&str; 5] = ["kernel", "initrd", "append", "accel", "cloudInit"];

/// Which accelerator a definition asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM where it works on this host, else TCG.
    #[default]
    Auto,
    /// KVM or fail: for labels that would be unusably slow emulated.
    Kvm,
    /// Software emulation, always available.
    Tcg,
}

/// A definition's options, once valid.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QemuOptions {
    /// Direct boot: the kernel on the host (absolute path).
    #[serde(default)]
    pub kernel: Option<String>,
    /// Direct boot: the initrd on the host (absolute path); needs `kernel`.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Direct boot: the kernel command line; needs `kernel`.
    #[serde(default)]
    pub append: Option<String>,
    #[serde(default)]
    pub accel: AccelChoice,
    /// Attach a NoCloud seed (meta-data, user-data) for cloud images.
    #[serde(default)]
    pub cloud_init: bool,
}

impl QemuOptions {
    /// Parses the options of a definition already checked by [`validate`].
    pub fn parse(options: &Map<String, Value>) -> Result<QemuOptions, String> {
        serde_json::from_value(Value::Object(options.clone())).map_err(|e| format!("options: {e}"))
    }
}

/// Every problem with a `qemu` definition, paths relative to the definition.
pub fn validate(def: &Definition) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut push = |field: String, message: &str| errors.push(FieldError { field, message: message.to_string() });
    let options = &def.options;
    for key in options.keys() {
        if !KNOWN.contains(&key.as_str()) {
            push(
                format!("options.{key}"),
                "unknown option of the qemu driver (known: kernel, initrd, append, accel, cloudInit)",
            );
        }
    }
    for key in ["kernel", "initrd"] {
        match options.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) if p.starts_with('/') && !p.contains('\0') => {}
            Some(_) => push(format!("options.{key}"), "must be an absolute path on the node"),
        }
    }
    match options.get("append") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if !s.contains('\0') => {}
        Some(_) => push("options.append".into(), "must be a string (the kernel command line)"),
    }
    let has_kernel = options.get("kernel").is_some_and(|v| !v.is_null());
    for key in ["initrd", "append"] {
        if options.get(key).is_some_and(|v| !v.is_null()) && !has_kernel {
            push(format!("options.{key}"), "needs options.kernel (direct boot)");
        }
    }
    match options.get("accel") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) if matches!(a.as_str(), "auto" | "kvm" | "tcg") => {}
        Some(_) => push("options.accel".into(), "must be auto, kvm or tcg"),
    }
    match options.get("cloudInit") {
        None | Some(Value::Null) | Some(Value::Bool(_)) => {}
        Some(_) => push("options.cloudInit".into(), "must be true or false"),
    }
    if def.images.len() > 1 {
        push("images".into(), "the qemu driver boots one image (more disks: resources.disks)");
    }
    if def.images.is_empty() && !has_kernel {
        push("images".into(), "needs an image to boot, or options.kernel for a diskless direct boot");
    }
    for (i, image) in def.images.iter().enumerate() {
        match image.url.as_deref() {
            None => push(format!("images[{i}].url"), "is required: a path on the node or an http(s) url"),
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                if image.sum.is_none() {
                    push(format!("images[{i}].sum"), "is required for a downloaded image: sha256:<64 hex digits>");
                }
            }
            Some(url) if url.starts_with('/') || url.starts_with("file:///") => {}
            Some(_) => push(format!("images[{i}].url"), "must be an absolute path, file:///path or http(s)://"),
        }
        if let Some(sum) = &image.sum
            && !api_types::label::is_sha256_sum(sum)
        {
            push(format!("images[{i}].sum"), "must be sha256:<64 hex digits>");
        }
    }
    if !matches!(def.resources.network, Network::Isolated | Network::Nat) {
        push("resources.network".into(), "the qemu driver offers \"\" (isolated) and \"nat\"");
    }
    for name in def.resources.disks.keys() {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            push(format!("resources.disks.{name}"), "a disk name is letters, digits, '-' and '_'");
        }
    }
    errors
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(mut v: Value) -> Definition {
        v.as_object_mut().unwrap().entry("resources").or_insert(json!({}));
        serde_json::from_value(v).unwrap()
    }

    fn fields(v: Value) -> Vec<String> {
        validate(&def(v)).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn good_definitions_pass() {
        let d = json!({"driver": "qemu", "images": [{"url": "/var/lib/img.qcow2"}],
            "options": {"kernel": "/boot/vmlinuz", "initrd": "/boot/initrd", "append": "console=ttyS0",
                        "accel": "tcg", "cloudInit": true}});
        assert!(fields(d.clone()).is_empty());
        let o = QemuOptions::parse(&def(d).options).unwrap();
        assert_eq!(o.accel, AccelChoice::Tcg);
        assert!(o.cloud_init);
        let sum = format!("sha256:{}", "a".repeat(64));
        assert!(fields(json!({"driver": "qemu", "images": [{"url": "https://h/i.qcow2", "sum": sum}]})).is_empty());
        assert!(fields(json!({"driver": "qemu", "options": {"kernel": "/k"}})).is_empty());
    }

    #[test]
    fn bad_definitions_name_their_field() {
        assert_eq!(fields(json!({"driver": "qemu"})), ["images"]);
        assert_eq!(fields(json!({"driver": "qemu", "options": {"kernel": "k"}})), ["options.kernel"]);
        assert_eq!(
            fields(json!({"driver": "qemu", "images": [{"url": "/i"}], "options": {"append": "x", "accel": "hvf"}})),
            ["options.append", "options.accel"]
        );
        assert_eq!(fields(json!({"driver": "qemu", "images": [{"url": "https://h/i"}]})), ["images[0].sum"]);
        assert_eq!(
            fields(json!({"driver": "qemu", "images": [{"url": "i.qcow2", "sum": "md5:x"}]})),
            ["images[0].url", "images[0].sum"]
        );
        assert_eq!(
            fields(json!({"driver": "qemu", "images": [{"url": "/i"}], "options": {"colour": 1}})),
            ["options.colour"]
        );
        assert_eq!(
            fields(json!({"driver": "qemu", "images": [{"url": "/i"}], "resources": {"disks": {"a b": {"size": 1}}}})),
            ["resources.disks.a b"]
        );
    }
}
