//! `fishctl diff -f FILE|DIR [-R] [--applyset NAME --prune]`: what `apply` would
//! change, as one unified diff per object.
//!
//! The server does the work: a dry-run apply (`?dryRun=true`) answers with every
//! object as it would be stored (its defaults, its next label version), which is
//! compared with the object stored now. Server bookkeeping that changes on every write
//! (`uid`, `createdAt`, `resourceVersion`) and `status` (never written by apply) are
//! left out. Users come from the API, which never returns passwords or tokens; a
//! password change shows as one comment line, not as a value.
//!
//! Exit codes are kubectl diff's: 0 no changes, 1 changes, 2 an error.

use anyhow::Result;
use api_types::{ApplyAction, ApplyResult};
use serde_json::Value;

use super::Env;
use super::apply::manifest_body;
use crate::cli::DiffArgs;
use crate::client::Client;
use crate::kind::Kind;

/// Lines of context around each change.
const CONTEXT: usize = 3;

/// The exit code of `diff` when there are changes; errors exit with 2.
pub const EXIT_CHANGES: u8 = 1;
/// The exit code of `diff` when it could not tell.
pub const EXIT_ERROR: u8 = 2;

/// Prints the diffs; returns whether anything would change.
pub async fn run(env: &Env, args: DiffArgs) -> Result<bool> {
    let m = &args.manifests;
    let body = manifest_body(m)?;
    let client = env.client()?;
    let resp = client.apply_with(body, true, m.applyset.as_deref(), m.prune).await?;
    let objects = resp.objects.unwrap_or_default();
    let mut changed = false;
    let mut out = String::new();
    for (i, r) in resp.results.iter().enumerate() {
        if r.action == ApplyAction::Unchanged {
            continue;
        }
        let after = objects.get(i).cloned().unwrap_or(Value::Null);
        let before = stored(&client, r).await?;
        let text = object_diff(r, before.as_ref(), after_or_none(after).as_ref());
        changed = true;
        out.push_str(&text);
    }
    super::out(&out)?;
    Ok(changed)
}

fn after_or_none(v: Value) -> Option<Value> {
    if v.is_null() { None } else { Some(v) }
}

/// The object stored now that result `r` is about (the latest version of a label).
async fn stored(client: &Client, r: &ApplyResult) -> Result<Option<Value>> {
    let kind = match r.kind.as_str() {
        "Label" => Kind::Label,
        "Application" => Kind::Application,
        "User" => Kind::User,
        _ => return Ok(None),
    };
    Ok(client.get_opt(kind, &r.name).await?)
}

/// What a diff compares: the object without bookkeeping and status, as YAML.
fn comparable(v: Option<&Value>) -> String {
    let Some(v) = v else { return String::new() };
    let mut v = v.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in ["uid", "createdAt", "resourceVersion"] {
                meta.remove(k);
            }
        }
    }
    serde_saphyr::to_string(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

/// The unified diff of one object, with `---`/`+++` headers naming it.
pub fn object_diff(r: &ApplyResult, before: Option<&Value>, after: Option<&Value>) -> String {
    let name = format!("{}/{}", r.kind.to_lowercase(), r.name);
    let (a, b) = (comparable(before), comparable(after));
    let old = if before.is_some() { format!("a/{name} (stored)") } else { "/dev/null".into() };
    let new = if after.is_some() { format!("b/{name} ({} by apply)", r.action) } else { "/dev/null".into() };
    let mut out = format!("--- {old}\n+++ {new}\n");
    if a == b {
        // Same visible object, yet the server changes it: a secret (a user's password).
        out.push_str(&format!("# {name}: secret fields change (not shown)\n"));
        return out;
    }
    out.push_str(&unified(&a, &b, CONTEXT));
    out
}

/// A unified diff of two texts by lines (LCS), `context` lines around each hunk.
pub fn unified(a: &str, b: &str, context: usize) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    // ops: (' ' | '-' | '+', line index in a or b)
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut ops: Vec<(char, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff(1) prints them.
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    let mut out = String::new();
    let mut k = 0;
    while k < ops.len() {
        if ops[k].0 == ' ' {
            k += 1;
            continue;
        }
        // A hunk: from `context` before this change to `context` after the last change
        // that is within 2*context of the previous one.
        let start = k.saturating_sub(context);
        let mut end = k;
        let mut last_change = k;
        while end < ops.len() {
            if ops[end].0 != ' ' {
                last_change = end;
            } else if end - last_change > 2 * context {
                break;
            }
            end += 1;
        }
        let end = (last_change + context + 1).min(ops.len());
        let hunk = &ops[start..end];
        let a_start = hunk.iter().find(|o| o.0 != '+').map(|o| o.1).unwrap_or(hunk[0].1);
        let b_start = hunk.iter().find(|o| o.0 != '-').map(|o| o.2).unwrap_or(hunk[0].2);
        let a_len = hunk.iter().filter(|o| o.0 != '+').count();
        let b_len = hunk.iter().filter(|o| o.0 != '-').count();
        let pos = |s: usize, len: usize| if len == 0 { s } else { s + 1 };
        out.push_str(&format!("@@ -{},{a_len} +{},{b_len} @@\n", pos(a_start, a_len), pos(b_start, b_len)));
        for &(op, ai, bj) in hunk {
            let line = if op == '+' { b[bj] } else { a[ai] };
            out.push(op);
            out.push_str(line);
            out.push('\n');
        }
        k = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unified_diff_has_hunks_with_context() {
        let a = "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n";
        let b = "a\nb\nc\nD\ne\nf\ng\nh\ni\nj\nk\n";
        assert_eq!(unified(a, b, 1), "@@ -3,3 +3,3 @@\n c\n-d\n+D\n e\n@@ -10,1 +10,2 @@\n j\n+k\n");
        assert_eq!(unified(a, a, 3), "");
        assert_eq!(unified("", "x\n", 3), "@@ -0,0 +1,1 @@\n+x\n");
    }

    #[test]
    fn object_diff_leaves_out_bookkeeping_and_names_the_object() {
        let r =
            ApplyResult { kind: "Label".into(), name: "l".into(), version: Some(2), action: ApplyAction::Configured };
        let before = serde_json::json!({"kind": "Label", "metadata": {"name": "l", "version": 1, "uid": "x", "resourceVersion": "4"},
            "spec": {"cpu": 1}});
        let after = serde_json::json!({"kind": "Label", "metadata": {"name": "l", "version": 2, "uid": "y", "resourceVersion": "9"},
            "spec": {"cpu": 2}});
        let d = object_diff(&r, Some(&before), Some(&after));
        assert!(d.starts_with("--- a/label/l (stored)\n+++ b/label/l (configured by apply)\n@@"), "{d}");
        assert!(d.contains("-  version: 1\n+  version: 2\n") && d.contains("-  cpu: 1\n+  cpu: 2\n"), "{d}");
        assert!(!d.contains("uid") && !d.contains("resourceVersion"), "{d}");
        let user =
            ApplyResult { kind: "User".into(), name: "u".into(), version: None, action: ApplyAction::Configured };
        let u = serde_json::json!({"kind": "User", "metadata": {"name": "u"}, "spec": {"roles": ["user"]}});
        assert!(object_diff(&user, Some(&u), Some(&u)).contains("secret fields change (not shown)"));
    }
}
