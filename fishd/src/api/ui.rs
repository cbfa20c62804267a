//! The dashboard (contract section 11): static HTML, CSS and JavaScript modules from
//! `fishd/ui/`, embedded in the binary and served under `/ui/`.
//!
//! # Guarantees
//! - The dashboard has no privileges of its own: these routes serve files only, need
//!   no authentication and read no state. The page signs in with a user's token and
//!   does everything else through the public `/api/v1` routes, so it can do nothing
//!   the API would refuse that user.
//! - Every `/ui/` answer, 404s included, carries [`CSP`]: scripts, styles and
//!   connections from this origin only, no inline script or style, no framing.
//! - Nothing is fetched from anywhere else at build or run time (no CDN, no npm).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::AppState;

/// Content-Security-Policy of every `/ui/` response. `connect-src 'self'` is what
/// lets the page reach the API (and its watch streams) on the same origin; `img-src`
/// allows nothing but our own icon.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file: path under `/ui/`, content type, bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset { path: $path, content_type: $type, body: include_bytes!(concat!("../../ui/", $path)) }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `fishd/ui/` (a unit test checks this list against the directory).
/// A `static`, not a `const`: a const would be copied into every function using it.
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
    asset!("js/api.js", JS),
    asset!("js/app.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/live.js", JS),
    asset!("js/format.js", JS),
    asset!("js/pages/overview.js", JS),
    asset!("js/pages/applications.js", JS),
    asset!("js/pages/detail.js", JS),
    asset!("js/pages/labels.js", JS),
    asset!("js/pages/nodes.js", JS),
];

/// The `/ui` routes; they need no state of their own.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route("/ui/{*path}", get(|Path(path): Path<String>, headers: HeaderMap| async move { serve(&path, &headers) }))
}

/// A version tag of the embedded files: they change only with the binary.
fn etag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for a in ASSETS {
            h.update(a.path.as_bytes());
            h.update(a.body);
        }
        let digest = h.finalize();
        format!("\"{}\"", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>())
    })
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let mut resp = match ASSETS.iter().find(|a| a.path == path) {
        None => (StatusCode::NOT_FOUND, "no such file in the dashboard\n").into_response(),
        Some(_) if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag().as_bytes()) => {
            StatusCode::NOT_MODIFIED.into_response()
        }
        Some(a) => {
            let mut r = a.body.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
            r
        }
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidated on every load (a 304 when unchanged), so an upgraded fishd never
    // runs a mix of old and new modules.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(tag) = HeaderValue::from_str(etag()) {
        h.insert(header::ETAG, tag);
    }
    resp
}

/// Bytes of every embedded file together: what the dashboard adds to the binary,
/// besides this module's code.
pub fn embedded_bytes() -> usize {
    ASSETS.iter().map(|a| a.body.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.path().is_dir() {
                files_under(&e.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn every_file_of_the_ui_directory_is_embedded_and_nothing_else() {
        let mut on_disk = Vec::new();
        files_under(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui"), "", &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn assets_stay_small() {
        // The budget is 300 KB added to the binary; keep the files well inside.
        assert!(embedded_bytes() < 200 * 1024, "{} bytes", embedded_bytes());
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("<style"), "inline <style> would be refused by the CSP");
        assert!(!html.contains("style="), "inline style attributes would be refused by the CSP");
        for tag in html.split("<script").skip(1) {
            let open = tag.split('>').next().unwrap_or("");
            assert!(open.contains("src="), "inline <script> would be refused by the CSP: {open}");
        }
        let handler = html.split(" on").skip(1).find(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(handler.is_none(), "inline event handlers would be refused by the CSP: on{handler:?}");
    }

    #[test]
    fn unknown_files_are_404_with_the_csp_and_known_ones_revalidate() {
        let r = serve("nope.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let r = serve("js/app.js", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_TYPE], JS);
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, r.headers()[header::ETAG].clone());
        assert_eq!(serve("js/app.js", &h).status(), StatusCode::NOT_MODIFIED);
    }
}
