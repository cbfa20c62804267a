//! The dashboard (issue 18) in a real headless Chromium against a real fishd over
//! HTTPS: sign-in with a token, a live table fed by the watch API, Deallocate from
//! the detail view, a user seeing only their own applications, the CSP header, a
//! console free of errors, and screenshots at desktop and phone sizes.
//!
//! Screenshots go to the test's temp dir; with `AQ_UPDATE_SCREENSHOTS=1` they
//! replace the ones committed under `docs/screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aquarium_e2e::TestDaemon;
use aquarium_e2e::browser::{Browser, png_size};
use fantoccini::key::Key;
use serde_json::{Value, json};

const CONFIG: &str = "nodeName: pool-a\ndrivers:\n  test: {}\n  process: {gracePeriod: 1s}\n";

const LABELS: &str = "---
kind: Label
metadata: {name: ubuntu-ci}
spec:
  definitions:
    - driver: test
      resources: {cpu: 2, ram: 4}
    - driver: test
      resources: {cpu: 1, ram: 2, slots: 1, lifetime: 2h}
---
kind: Label
metadata: {name: builder}
spec:
  definitions:
    - driver: process
      resources: {cpu: 1, ram: 1}
      options:
        command: [sh, -c, 'i=0; while true; do i=$((i+1)); echo \"build step $i: compiling module-$i\"; sleep 0.2; done']
";

fn app(name: &str, label: &str) -> String {
    format!("---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}}}\n")
}

/// POSTs `yaml` to /api/v1/apply with `token`.
async fn apply_as(d: &TestDaemon, token: &str, yaml: &str) -> (u16, Value) {
    let r = d
        .client
        .post(format!("{}/api/v1/apply", d.url))
        .bearer_auth(token)
        .header("content-type", "application/yaml")
        .body(yaml.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Opens the dashboard and signs in with `token`.
async fn sign_in(b: &Browser, d: &TestDaemon, token: &str) {
    b.client.goto(&format!("{}/ui/", d.url)).await.unwrap();
    // The console check can fail: an error logged now is read back (and cleared).
    b.js("console.error('aquarium console probe'); return true").await.unwrap();
    let log = b.console().await.unwrap();
    assert!(log.iter().any(|(level, m)| level == "SEVERE" && m.contains("aquarium console probe")), "{log:?}");
    b.wait_js("the sign-in form", "return !document.getElementById('sign-in').hidden").await.unwrap();
    b.find("#token").await.unwrap().send_keys(token).await.unwrap();
    b.find("#sign-in-form button[type=submit]").await.unwrap().click().await.unwrap();
    b.wait_js("the navigation after sign-in", "return !document.getElementById('nav').hidden").await.unwrap();
}

/// Where screenshots go: the committed ones when asked to update them.
fn shot_dir(tmp: &tempfile::TempDir) -> PathBuf {
    if std::env::var("AQ_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots")
    } else {
        tmp.path().to_owned()
    }
}

async fn shoot(b: &Browser, dir: &std::path::Path, name: &str, (w, h): (u32, u32)) {
    let png = b.screenshot().await.unwrap();
    assert_eq!(png_size(&png), Some((w, h)), "{name}: the screenshot is not the viewport size");
    std::fs::write(dir.join(format!("{name}-{w}x{h}.png")), png).unwrap();
}

/// The maintenance switch of the test node.
const SWITCH: &str = "button[role=switch][data-node=pool-a]";

/// Elements reaching past the right edge of the viewport (outside scrolling boxes).
const OVERFLOWING: &str = "const w = document.documentElement.clientWidth; \
    return [...document.querySelectorAll('body *')].filter(e => !e.closest('pre, .table-wrap')) \
    .filter(e => { const r = e.getBoundingClientRect(); return r.width > 0 && r.right > w + 1; }) \
    .slice(0, 5).map(e => `${e.tagName}.${e.className} right=${e.getBoundingClientRect().right}`)";

const SIZES: [(u32, u32, bool); 2] = [(1280, 800, false), (390, 844, true)];

#[tokio::test]
async fn dashboard_shows_live_applications_deallocates_and_has_a_clean_console() {
    let Some(b) = Browser::start().await.unwrap() else { return };
    let d = TestDaemon::start(CONFIG).await.unwrap();

    // The CSP is on every /ui/ answer, the page and a module alike.
    for path in ["/ui/", "/ui/js/app.js", "/ui/no-such-file"] {
        let r = d.client.get(format!("{}{path}", d.url)).send().await.unwrap();
        let csp = r.headers().get("content-security-policy").map(|v| v.to_str().unwrap().to_owned());
        let csp = csp.unwrap_or_else(|| panic!("{path}: no Content-Security-Policy"));
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{path}: {csp}");
    }

    let (code, body) = d.apply(LABELS).await.unwrap();
    assert_eq!(code, 200, "{body}");
    // Some history for the overview: allocated, deallocated, and a resource with a log.
    let mut yaml = String::new();
    for i in 1..=4 {
        yaml.push_str(&app(&format!("ci-job-{i}"), "ubuntu-ci"));
    }
    yaml.push_str(&app("nightly-build", "builder"));
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    for i in 1..=4 {
        d.wait_phase(&format!("ci-job-{i}"), "ALLOCATED").await.unwrap();
    }
    d.wait_phase("nightly-build", "ALLOCATED").await.unwrap();
    assert_eq!(d.post("/api/v1/applications/ci-job-1/deallocate", None).await.unwrap().0, 202);
    d.wait_phase("ci-job-1", "DEALLOCATED").await.unwrap();

    sign_in(&b, &d, &d.token).await;
    b.wait_js("the node on the overview", "return document.body.innerText.includes('pool-a')").await.unwrap();

    // The live table: an application created through the API appears without a reload.
    b.client.goto(&format!("{}/ui/#/applications", d.url)).await.unwrap();
    b.wait_js("the table", "return !!document.querySelector('#apps-table tr[data-name=\"ci-job-4\"]')").await.unwrap();
    b.js("window.aqNoReload = true; return true").await.unwrap();
    let (code, body) = d.apply(&app("live-1", "ubuntu-ci")).await.unwrap();
    assert_eq!(code, 200, "{body}");
    let created = Instant::now();
    b.wait_js("live-1 in the table", "return !!document.querySelector('#apps-table tr[data-name=\"live-1\"]')")
        .await
        .unwrap();
    let seen_after = created.elapsed();
    assert!(seen_after < Duration::from_secs(2), "live-1 appeared after {seen_after:?}");
    assert_eq!(b.js("return window.aqNoReload === true").await.unwrap(), json!(true), "the page was reloaded");
    d.wait_phase("live-1", "ALLOCATED").await.unwrap();

    // Filters: by phase, then back to everything.
    b.js("const s = document.getElementById('filter-phase'); s.value = 'DEALLOCATED'; s.dispatchEvent(new Event('change')); return true").await.unwrap();
    b.wait_js(
        "only DEALLOCATED rows",
        "const rows = [...document.querySelectorAll('#apps-table tbody tr')]; \
         return rows.length === 1 && rows[0].dataset.name === 'ci-job-1'",
    )
    .await
    .unwrap();
    b.js("const s = document.getElementById('filter-phase'); s.value = ''; s.dispatchEvent(new Event('change')); return true").await.unwrap();

    // The detail view and its Deallocate button, with the confirmation dialog.
    b.find("#apps-table tr[data-name=\"live-1\"] a").await.unwrap().click().await.unwrap();
    b.wait_js(
        "live-1 ALLOCATED in the detail",
        "return document.querySelector('.title-row .phase')?.textContent === 'ALLOCATED'",
    )
    .await
    .unwrap();
    // By keyboard: Enter opens the dialog with Cancel focused, Escape closes it and changes nothing.
    let key = |k: Key| char::from(k).to_string();
    b.find("#deallocate").await.unwrap().send_keys(&key(Key::Enter)).await.unwrap();
    b.wait_js("the confirmation dialog", "return document.getElementById('confirm').open").await.unwrap();
    let focused = b.js("return document.activeElement.textContent").await.unwrap();
    assert_eq!(focused, json!("Cancel"), "the dialog should focus Cancel");
    b.client.active_element().await.unwrap().send_keys(&key(Key::Escape)).await.unwrap();
    b.wait_js("the dialog to close", "return !document.getElementById('confirm').open").await.unwrap();
    assert_eq!(b.js("return document.activeElement.id").await.unwrap(), json!("deallocate"), "focus returns");
    assert_eq!(d.application("live-1").await.unwrap()["status"]["phase"], "ALLOCATED", "deallocated though cancelled");
    b.find("#deallocate").await.unwrap().click().await.unwrap();
    b.wait_js("the confirmation dialog", "return document.getElementById('confirm').open").await.unwrap();
    assert_eq!(d.application("live-1").await.unwrap()["status"]["phase"], "ALLOCATED", "deallocated before confirming");
    b.find("#confirm-ok").await.unwrap().click().await.unwrap();
    d.wait_phase("live-1", "DEALLOCATED").await.unwrap();
    b.wait_js(
        "DEALLOCATED in the detail",
        "return document.querySelector('.title-row .phase')?.textContent === 'DEALLOCATED' \
         && document.getElementById('deallocate').disabled",
    )
    .await
    .unwrap();
    let timeline = b.js("return document.getElementById('history').innerText").await.unwrap();
    let timeline = timeline.as_str().unwrap();
    for want in ["NEW", "ELECTED", "attempt 1", "node pool-a", "ALLOCATED", "DEALLOCATE", "DEALLOCATED"] {
        assert!(timeline.contains(want), "the timeline lacks {want:?}: {timeline}");
    }

    // A process resource's log tail follows while it grows.
    b.client.goto(&format!("{}/ui/#/applications/nightly-build", d.url)).await.unwrap();
    b.wait_js("the log tail", "return document.getElementById('log').textContent.includes('build step 3')")
        .await
        .unwrap();
    let lines = b.js("return document.getElementById('log').textContent.split('\\n').length").await.unwrap();
    b.wait_js(
        "the log to grow",
        &format!(
            "return document.getElementById('log').textContent.split('\\n').length > {}",
            lines.as_u64().unwrap() + 2
        ),
    )
    .await
    .unwrap();

    // Labels and nodes pages render, with the admin's maintenance switch.
    b.client.goto(&format!("{}/ui/#/labels", d.url)).await.unwrap();
    b.wait_js("both labels", "return !!document.querySelector('[data-label=\"builder\"]') && !!document.querySelector('[data-label=\"ubuntu-ci\"]')").await.unwrap();
    b.client.goto(&format!("{}/ui/#/nodes", d.url)).await.unwrap();
    b.find(SWITCH).await.unwrap();
    // Clicked from the page in one step: a heartbeat re-renders the card (and its switch)
    // at any moment, which would make an element found a moment earlier stale.
    b.js(&format!("document.querySelector('{SWITCH}').click(); return true")).await.unwrap();
    b.wait_js(
        "maintenance on",
        "return document.querySelector('button[role=switch]')?.getAttribute('aria-checked') === 'true'",
    )
    .await
    .unwrap();
    assert_eq!(d.get("/api/v1/nodes/pool-a").await.unwrap().1["status"]["maintenance"], true);
    b.find(SWITCH).await.unwrap();
    // Clicked from the page in one step: a heartbeat re-renders the card (and its switch)
    // at any moment, which would make an element found a moment earlier stale.
    b.js(&format!("document.querySelector('{SWITCH}').click(); return true")).await.unwrap();
    b.wait_js(
        "maintenance off",
        "return document.querySelector('button[role=switch]')?.getAttribute('aria-checked') === 'false'",
    )
    .await
    .unwrap();

    // Screenshots: the overview (with one application waiting) and a detail, at both sizes.
    let mut pending = String::new();
    for i in 1..=2 {
        pending.push_str(&app(&format!("queued-{i}"), "ubuntu-ci"));
    }
    let big = "---\nkind: Label\nmetadata: {name: huge}\nspec:\n  definitions:\n    - driver: test\n      resources: {cpu: 64, ram: 256}\n";
    assert_eq!(d.apply(&format!("{big}{}", app("waits-for-room", "huge"))).await.unwrap().0, 200);
    assert_eq!(d.apply(&pending).await.unwrap().0, 200);
    d.wait_phase("queued-2", "ALLOCATED").await.unwrap();
    // The node reports what it holds with its heartbeat: wait for it, for the bars.
    aquarium_e2e::eventually("the node to report its allocations", || async {
        d.get("/api/v1/nodes/pool-a").await.is_ok_and(|(_, n)| n["status"]["allocated"]["slots"].as_u64() >= Some(6))
    })
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = shot_dir(&tmp);
    std::fs::create_dir_all(&dir).unwrap();
    for (w, h, mobile) in SIZES {
        b.viewport(w, h, mobile).await.unwrap();
        b.client.goto(&format!("{}/ui/#/overview", d.url)).await.unwrap();
        b.wait_js("the overview's figures", "return document.getElementById('queue-length')?.textContent === '1' && document.body.innerText.includes('pool-a')").await.unwrap();
        shoot(&b, &dir, "overview", (w, h)).await;
        assert_eq!(b.js(OVERFLOWING).await.unwrap(), json!([]), "{w}x{h}: elements wider than the screen");
        b.client.goto(&format!("{}/ui/#/applications/nightly-build", d.url)).await.unwrap();
        b.wait_js("the detail's log", "return document.getElementById('log').textContent.includes('build step')")
            .await
            .unwrap();
        b.js("const l = document.getElementById('log'); l.scrollTop = l.scrollHeight; return true").await.unwrap();
        shoot(&b, &dir, "application", (w, h)).await;
        assert_eq!(b.js(OVERFLOWING).await.unwrap(), json!([]), "{w}x{h}: elements wider than the screen");
    }

    b.assert_no_console_errors().await.unwrap();
}

#[tokio::test]
async fn dashboard_user_sees_only_their_own_applications() {
    let Some(b) = Browser::start().await.unwrap() else { return };
    let d = TestDaemon::start(CONFIG).await.unwrap();
    let (code, body) = d
        .post("/api/v1/users", Some(json!({"kind": "User", "metadata": {"name": "bob"}, "spec": {"roles": ["user"]}})))
        .await
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let bob = body["status"]["token"].as_str().unwrap().to_owned();
    assert_eq!(d.apply(LABELS).await.unwrap().0, 200);
    assert_eq!(d.apply(&app("admins-1", "ubuntu-ci")).await.unwrap().0, 200);
    assert_eq!(apply_as(&d, &bob, &app("bobs-1", "ubuntu-ci")).await.0, 200);

    sign_in(&b, &d, &bob).await;
    b.client.goto(&format!("{}/ui/#/applications", d.url)).await.unwrap();
    b.wait_js("bobs-1", "return !!document.querySelector('#apps-table tr[data-name=\"bobs-1\"]')").await.unwrap();
    // Live: the admin's next application is created before bob's next one; once bob's
    // has arrived through the watch, the admin's would have too, had it been sent.
    assert_eq!(d.apply(&app("admins-2", "ubuntu-ci")).await.unwrap().0, 200);
    assert_eq!(apply_as(&d, &bob, &app("bobs-2", "ubuntu-ci")).await.0, 200);
    b.wait_js("bobs-2", "return !!document.querySelector('#apps-table tr[data-name=\"bobs-2\"]')").await.unwrap();
    let names = b
        .js("return [...document.querySelectorAll('#apps-table tbody tr')].map(r => r.dataset.name).sort()")
        .await
        .unwrap();
    assert_eq!(names, json!(["bobs-1", "bobs-2"]));
    // Nor by address: the detail of another's application is not found.
    b.client.goto(&format!("{}/ui/#/applications/admins-1", d.url)).await.unwrap();
    b.wait_js("not found", "return document.body.innerText.includes('No such application')").await.unwrap();
    // A user gets no maintenance switch (the API would refuse it).
    b.client.goto(&format!("{}/ui/#/nodes", d.url)).await.unwrap();
    b.wait_js("the node card", "return !!document.querySelector('[data-node-card=\"pool-a\"]')").await.unwrap();
    assert_eq!(b.js("return document.querySelectorAll('button[role=switch]').length").await.unwrap(), json!(0));
    assert!(
        b.js("return document.getElementById('who-name').textContent")
            .await
            .unwrap()
            .as_str()
            .unwrap()
            .contains("bob (user)")
    );

    b.assert_no_console_errors().await.unwrap();
}

/// How many times the page listed applications (the watches carry a query).
const LIST_REQUESTS: &str = "return performance.getEntriesByType('resource') \
    .filter(e => new URL(e.name).pathname === '/api/v1/applications' && new URL(e.name).search === '').length";
#[tokio::test]
async fn dashboard_resumes_its_watch_after_a_restart_and_lists_again_after_410() {
    let Some(b) = Browser::start().await.unwrap() else { return };
    // A short watch history, so that an outage with enough changes expires the page's revision.
    let mut d = TestDaemon::start(&format!("{CONFIG}watchHistory: 20\n")).await.unwrap();
    assert_eq!(d.apply(LABELS).await.unwrap().0, 200);
    assert_eq!(d.apply(&app("before", "ubuntu-ci")).await.unwrap().0, 200);
    sign_in(&b, &d, &d.token).await;
    b.client.goto(&format!("{}/ui/#/applications", d.url)).await.unwrap();
    b.wait_js("before", "return !!document.querySelector('#apps-table tr[data-name=\"before\"]')").await.unwrap();
    b.js("window.aqNoReload = true; return true").await.unwrap();
    let lists = || b.js(LIST_REQUESTS);
    let listed = lists().await.unwrap();

    // A restart ends the stream; the page resumes from the revision it saw, without listing.
    d.restart().await.unwrap();
    assert_eq!(d.apply(&app("after-restart", "ubuntu-ci")).await.unwrap().0, 200);
    b.wait_js("after-restart", "return !!document.querySelector('#apps-table tr[data-name=\"after-restart\"]')")
        .await
        .unwrap();
    // Its old stream died with fishd, so it watched again: from its revision, not a new list.
    assert_eq!(lists().await.unwrap(), listed, "the page listed again instead of resuming");

    // While the page is offline, more changes than the history keeps: its revision
    // expires (410), and it lists again.
    b.offline(true).await.unwrap();
    d.restart().await.unwrap();
    let mut many = String::new();
    for i in 0..25 {
        many.push_str(&app(&format!("burst-{i}"), "ubuntu-ci"));
    }
    assert_eq!(d.apply(&many).await.unwrap().0, 200);
    for i in 0..25 {
        d.wait_phase(&format!("burst-{i}"), "ALLOCATED").await.unwrap();
    }
    b.offline(false).await.unwrap();
    b.wait_js("burst-24", "return !!document.querySelector('#apps-table tr[data-name=\"burst-24\"]')").await.unwrap();
    // At least once more: on a slow machine the allocations can outrun the history
    // again between the new list and its watch, and the page rightly lists again.
    let relisted = lists().await.unwrap().as_u64().unwrap();
    assert!(relisted > listed.as_u64().unwrap(), "after 410 the page did not list again ({relisted} lists)");
    let rows = b.js("return document.querySelectorAll('#apps-table tbody tr').length").await.unwrap();
    assert_eq!(rows, json!(27));
    assert_eq!(b.js("return window.aqNoReload === true").await.unwrap(), json!(true), "the page was reloaded");

    // The only errors are the outage's failed connections.
    let errors: Vec<_> = b
        .console()
        .await
        .unwrap()
        .into_iter()
        .filter(|(level, m)| level == "SEVERE" && !m.contains("net::ERR_"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}
