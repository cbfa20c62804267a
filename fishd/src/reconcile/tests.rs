//! The control loops end to end on one node: a real store, the test driver, the
//! real queue and election, and no HTTP. Conditions are awaited with deadlines.
//!
//! Tests that wait on the loops' timers (backoff, lifetimes, retention, a slow
//! allocation) run with tokio's clock paused: a timer fires as soon as nothing else
//! can run, so a 1 s lifetime costs no second of wall time and no test depends on the
//! machine's speed. Deadlines of the waits themselves are on the wall clock, since
//! paused time would let them pass at once.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use api_types::{Application, Format, Manifest, NodeCapacity, Phase, parse_manifests};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::drivers::test::{TestConfig, TestDriver};
use crate::store::{ApplyItem, Command, Store};

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    /// Held for the test's length: the loops are the code under test.
    _controller: Controller,
}

async fn harness(capacity: NodeCapacity, config: ReconcileConfig) -> Harness {
    harness_with(capacity, config, None).await
}

/// [`harness`], with a secrets provider registered before the loops start.
async fn harness_with(
    capacity: NodeCapacity,
    config: ReconcileConfig,
    secrets: Option<Arc<dyn crate::metadata::SecretProvider>>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let mut drivers = crate::drivers::Drivers::new();
    let d: Arc<dyn crate::drivers::Driver> =
        Arc::new(TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap());
    drivers.insert("test".into(), d);
    let node = NodeIdentity { name: "host-a".into(), identifiers: vec!["linux".into()], capacity };
    let ctx = Ctx::new(store.clone(), Arc::new(drivers), node, config, crate::meta_token::MetaTokens::new([1; 32]));
    if let Some(p) = secrets {
        ctx.secrets.register(p);
    }
    let controller = Controller::start(ctx).await;
    Harness { _dir: dir, store, _controller: controller }
}

fn cap(cpu: u32, slots: u32) -> NodeCapacity {
    NodeCapacity { cpu, ram: 64, slots, applications: 0 }
}

async fn apply(store: &Store, yaml: &str) {
    let items = parse_manifests(yaml.as_bytes(), Format::Yaml)
        .unwrap()
        .into_iter()
        .map(|m| match m {
            Manifest::Label(label) => ApplyItem::Label { label, uid: Uuid::now_v7() },
            Manifest::Application(app) => ApplyItem::Application { app, uid: Uuid::now_v7() },
            Manifest::User(_) => unreachable!(),
        })
        .collect();
    store
        .execute(Command::Apply { items, owner: "admin".into(), now: OffsetDateTime::now_utc() })
        .await
        .unwrap()
        .unwrap();
}

/// Waits (wall-clock deadline; time may be paused) until `name` is in `phase`.
async fn wait_phase(store: &Store, name: &str, phase: Phase) -> Application {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let app = store.get_application(name).unwrap().unwrap();
        if app.status.phase == phase {
            return app;
        }
        assert!(std::time::Instant::now() < deadline, "{name} never reached {phase}: {:#?}", app.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn deallocate(store: &Store, name: &str) {
    let uid = store.get_application(name).unwrap().unwrap().metadata.uid.unwrap();
    store
        .execute(Command::RequestDeallocate { uid, by: "test".into(), now: OffsetDateTime::now_utc() })
        .await
        .unwrap()
        .unwrap();
}

fn label(name: &str, defs: &str) -> String {
    format!("kind: Label\nmetadata: {{name: {name}}}\nspec: {{definitions: [{defs}]}}\n")
}

fn app(name: &str, label: &str) -> String {
    format!("---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}}}\n")
}

#[tokio::test(start_paused = true)]
async fn allocates_and_deallocates_with_history() {
    let h = harness(cap(4, 8), ReconcileConfig::default()).await;
    apply(&h.store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("a", "l"))).await;
    let a = wait_phase(&h.store, "a", Phase::Allocated).await;
    assert_eq!(a.status.node.as_deref(), Some("host-a"));
    assert!(a.status.resource.as_ref().unwrap().expires_at.is_some());
    deallocate(&h.store, "a").await;
    let a = wait_phase(&h.store, "a", Phase::Deallocated).await;
    let phases: Vec<Phase> = a.status.history.iter().map(|e| e.phase).collect();
    assert_eq!(phases, vec![Phase::New, Phase::Elected, Phase::Allocated, Phase::Deallocate, Phase::Deallocated]);
}

#[tokio::test(start_paused = true)]
async fn waits_for_capacity_and_keeps_creation_order() {
    let h = harness(cap(1, 8), ReconcileConfig::default()).await;
    let mut yaml = label("l", "{driver: test, resources: {cpu: 1}}");
    for i in 0..5 {
        yaml += &app(&format!("a{i}"), "l");
    }
    apply(&h.store, &yaml).await;
    wait_phase(&h.store, "a0", Phase::Allocated).await;
    let waiting = h.store.get_application("a1").unwrap().unwrap();
    assert_eq!(waiting.status.phase, Phase::New);
    assert!(waiting.status.message.contains("not enough cpu"), "{}", waiting.status.message);
    for i in 0..4 {
        deallocate(&h.store, &format!("a{i}")).await;
        wait_phase(&h.store, &format!("a{}", i + 1), Phase::Allocated).await;
        for j in i + 2..5 {
            assert_eq!(h.store.get_application(&format!("a{j}")).unwrap().unwrap().status.phase, Phase::New);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn falls_back_to_the_next_definition_then_gives_up() {
    let h = harness(cap(4, 8), ReconcileConfig::default()).await;
    let defs =
        "{driver: test, resources: {cpu: 1}, options: {failAllocations: 1}}, {driver: test, resources: {cpu: 1}}";
    apply(&h.store, &(label("two", defs) + &app("fallback", "two"))).await;
    let a = wait_phase(&h.store, "fallback", Phase::Allocated).await;
    assert_eq!(a.status.definition, Some(1));
    assert_eq!(a.status.attempts, 1);

    let bad = "{driver: test, resources: {cpu: 1}, options: {failAllocations: 3}}";
    apply(&h.store, &(label("bad", bad) + &app("doomed", "bad"))).await;
    let a = wait_phase(&h.store, "doomed", Phase::Error).await;
    let elected = a.status.history.iter().filter(|e| e.phase == Phase::Elected).count();
    assert_eq!(elected, 3, "{:#?}", a.status.history);
    let failures = a.status.history.iter().filter(|e| e.message.contains("simulated allocation failure")).count();
    assert_eq!(failures, 3);
}

#[tokio::test(start_paused = true)]
async fn lifetime_expiry_deallocates() {
    let h = harness(cap(4, 8), ReconcileConfig::default()).await;
    apply(&h.store, &(label("short", "{driver: test, resources: {cpu: 1, lifetime: 1s}}") + &app("s", "short"))).await;
    let a = wait_phase(&h.store, "s", Phase::Deallocated).await;
    assert!(a.status.message.contains("lifetime expired"), "{}", a.status.message);
}

#[tokio::test(start_paused = true)]
async fn deallocate_during_allocation_releases_the_resource() {
    let h = harness(cap(4, 8), ReconcileConfig::default()).await;
    apply(
        &h.store,
        &(label("slow", "{driver: test, resources: {cpu: 1}, options: {allocateDelay: 500ms}}") + &app("x", "slow")),
    )
    .await;
    wait_phase(&h.store, "x", Phase::Elected).await;
    deallocate(&h.store, "x").await;
    let a = wait_phase(&h.store, "x", Phase::Deallocated).await;
    // The allocation finished after the deallocation: its resource must be released.
    let uid = a.metadata.uid.unwrap();
    let file = h._dir.path().join("test/test").join(format!("{uid}.json"));
    until(&format!("the resource {} released", file.display()), || !file.exists()).await;
    assert_eq!(h.store.get_application("x").unwrap().unwrap().status.phase, Phase::Deallocated);
}

#[tokio::test(start_paused = true)]
async fn retention_purges_finished_applications() {
    let config = ReconcileConfig { history_retention: Duration::from_millis(200), ..Default::default() };
    let h = harness(cap(4, 8), config).await;
    apply(&h.store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("p", "l"))).await;
    wait_phase(&h.store, "p", Phase::Allocated).await;
    deallocate(&h.store, "p").await;
    until("p purged after its 200 ms retention", || h.store.get_application("p").unwrap().is_none()).await;
}

/// A test driver whose first `allocate` panics.
struct PanicOnce {
    inner: TestDriver,
    panicked: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl crate::drivers::Driver for PanicOnce {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn validate(&self, d: &api_types::Definition) -> Vec<api_types::FieldError> {
        self.inner.validate(d)
    }
    async fn available(&self) -> Result<(), String> {
        self.inner.available().await
    }
    async fn allocate(
        &self,
        req: &crate::drivers::AllocateRequest,
    ) -> Result<crate::drivers::Allocated, crate::drivers::DriverError> {
        if !self.panicked.swap(true, std::sync::atomic::Ordering::SeqCst) {
            panic!("driver bug");
        }
        self.inner.allocate(req).await
    }
    async fn inspect(&self, uid: Uuid, id: &str) -> Result<crate::drivers::ResourceState, crate::drivers::DriverError> {
        self.inner.inspect(uid, id).await
    }
    async fn deallocate(&self, uid: Uuid, id: &str) -> Result<(), crate::drivers::DriverError> {
        self.inner.deallocate(uid, id).await
    }
    async fn list_owned(&self) -> Result<Vec<crate::drivers::OwnedResource>, crate::drivers::DriverError> {
        self.inner.list_owned().await
    }
}

/// A context of node `host-a` with `capacity` over `drivers` (name → driver); its loops
/// are not started.
fn ctx_of(
    store: &Store,
    drivers: Vec<(&str, Arc<dyn crate::drivers::Driver>)>,
    capacity: NodeCapacity,
    config: ReconcileConfig,
) -> Arc<Ctx> {
    let drivers: crate::drivers::Drivers = drivers.into_iter().map(|(n, d)| (n.to_owned(), d)).collect();
    let node = NodeIdentity { name: "host-a".into(), identifiers: vec![], capacity };
    Ctx::new(store.clone(), Arc::new(drivers), node, config, crate::meta_token::MetaTokens::new([1; 32]))
}

/// A controller over `drivers` (name → driver) on a store in `dir`.
async fn start_with(
    store: &Store,
    drivers: Vec<(&str, Arc<dyn crate::drivers::Driver>)>,
    config: ReconcileConfig,
) -> (Arc<Ctx>, Controller) {
    let ctx = ctx_of(store, drivers, cap(8, 16), config);
    let controller = Controller::start(ctx.clone()).await;
    (ctx, controller)
}

fn test_driver(dir: &std::path::Path, name: &str) -> Arc<dyn crate::drivers::Driver> {
    Arc::new(TestDriver::new(name.into(), TestConfig::default(), dir).unwrap())
}

/// A context with no drivers, for tests of what the reconciler computes rather than allocates.
fn driverless_ctx(store: &Store) -> Arc<Ctx> {
    ctx_of(store, vec![], cap(8, 16), ReconcileConfig::default())
}

/// Waits, by the wall clock (time may be paused), until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn phase_of(store: &Store, name: &str) -> Application {
    store.get_application(name).unwrap().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_deallocation_during_allocation_whose_release_fails_is_retried_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let (_ctx, _c) =
        start_with(&store, vec![("test", test_driver(dir.path(), "test"))], ReconcileConfig::default()).await;
    let faults = dir.path().join("test/test/faults.json");
    // The allocation stalls (so the deallocation comes during it), then every release fails.
    std::fs::write(&faults, r#"{"allocate": {"stall": 1}, "deallocate": {"fail": 1}, "stallFor": "10s"}"#).unwrap();
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    until("ELECTED", || phase_of(&store, "x").status.phase == Phase::Elected).await;
    deallocate(&store, "x").await;
    until("a failed release shown on the application", || {
        let a = phase_of(&store, "x");
        a.status.phase == Phase::Deallocate && a.status.message.contains("injected deallocate failure")
    })
    .await;
    let uid = phase_of(&store, "x").metadata.uid.unwrap();
    let resource = dir.path().join(format!("test/test/{uid}.json"));
    assert!(resource.exists(), "the allocation made nothing, so nothing was at risk");
    // The driver recovers: the release is retried until it confirms.
    std::fs::write(&faults, "{}").unwrap();
    until("DEALLOCATED", || phase_of(&store, "x").status.phase == Phase::Deallocated).await;
    assert!(!resource.exists(), "resource leaked: {}", resource.display());
}

#[tokio::test(start_paused = true)]
async fn fail_allocations_fails_only_the_first_n_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let (_ctx, _c) =
        start_with(&store, vec![("test", test_driver(dir.path(), "test"))], ReconcileConfig::default()).await;
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}, options: {failAllocations: 2}}") + &app("x", "l")))
        .await;
    until("ALLOCATED or ERROR", || matches!(phase_of(&store, "x").status.phase, Phase::Allocated | Phase::Error)).await;
    let a = phase_of(&store, "x");
    assert_eq!(a.status.phase, Phase::Allocated, "{:#?}", a.status.history);
    assert_eq!(a.status.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn adoption_releases_a_resource_of_another_driver_than_the_applications() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let drivers = || vec![("test", test_driver(dir.path(), "test")), ("test/b", test_driver(dir.path(), "test/b"))];
    let (_ctx, c) = start_with(&store, drivers(), ReconcileConfig::default()).await;
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    until("ALLOCATED", || phase_of(&store, "x").status.phase == Phase::Allocated).await;
    assert!(c.shutdown(Duration::from_secs(10)).await);
    // What a failed attempt with another driver left behind for the same application.
    let uid = phase_of(&store, "x").metadata.uid.unwrap();
    let stray = dir.path().join(format!("test/test_b/{uid}.json"));
    std::fs::write(&stray, r#"{"identifier": "stray", "allocated": true}"#).unwrap();
    let kept = dir.path().join(format!("test/test/{uid}.json"));
    let (_ctx, _c) = start_with(&store, drivers(), ReconcileConfig::default()).await;
    until("the stray resource released", || !stray.exists()).await;
    assert!(kept.exists(), "the application's own resource was released");
    assert_eq!(phase_of(&store, "x").status.phase, Phase::Allocated);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_allocation_times_out_as_a_failed_attempt_with_that_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let timeouts: crate::drivers::CallTimeouts = serde_json::from_str(r#"{"allocate": "5s"}"#).unwrap();
    let config = ReconcileConfig {
        allocation_retry: 1,
        timeouts: [("test".to_owned(), timeouts)].into_iter().collect(),
        ..Default::default()
    };
    let (_ctx, _c) = start_with(&store, vec![("test", test_driver(dir.path(), "test"))], config).await;
    std::fs::write(dir.path().join("test/test/faults.json"), r#"{"allocate": {"stall": 1}, "stallFor": "1h"}"#)
        .unwrap();
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    until("ERROR", || phase_of(&store, "x").status.phase == Phase::Error).await;
    let a = phase_of(&store, "x");
    assert!(a.status.message.contains("allocate did not finish within 5s"), "{}", a.status.message);
    // The timed-out attempt's remains were released too.
    let uid = a.metadata.uid.unwrap();
    until("the half-made resource released", || !dir.path().join(format!("test/test/{uid}.json")).exists()).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_reconcile_is_recorded_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let mut events = store.subscribe();
    let d: Arc<dyn crate::drivers::Driver> = Arc::new(PanicOnce {
        inner: TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap(),
        panicked: Default::default(),
    });
    let (_ctx, _c) = start_with(&store, vec![("test", d)], ReconcileConfig::default()).await;
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    until("ALLOCATED", || phase_of(&store, "x").status.phase == Phase::Allocated).await;
    let mut recorded = false;
    while let Ok(e) = events.try_recv() {
        recorded |= e.object()["status"]["message"].as_str().is_some_and(|m| m.contains("driver bug"));
    }
    assert!(recorded, "the panic was not recorded on the application");
}

#[tokio::test(start_paused = true)]
async fn a_huge_default_lifetime_does_not_overflow_the_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    // `now + defaultLifetime` is past any representable time: it must saturate, not panic.
    let config = ReconcileConfig { default_lifetime: Duration::from_secs(u64::MAX / 4), ..Default::default() };
    let (_ctx, _c) = start_with(&store, vec![("test", test_driver(dir.path(), "test"))], config).await;
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    until("ALLOCATED", || phase_of(&store, "x").status.phase == Phase::Allocated).await;
    assert!(phase_of(&store, "x").status.resource.unwrap().expires_at.is_some());
}

/// Purges come from the store's index of finished applications, not from events:
/// one whose event was missed (a lagged channel) is purged all the same, and a look
/// reads only the due ones.
#[tokio::test]
async fn finished_applications_are_purged_from_the_index_without_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let yaml = label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l") + &app("y", "l");
    apply(&store, &yaml).await;
    deallocate(&store, "x").await;
    let config = ReconcileConfig { history_retention: Duration::from_secs(3600), ..Default::default() };
    let ctx = ctx_of(&store, vec![], cap(8, 16), config);
    let wait = retention::purge_due(&ctx).await.unwrap();
    assert!(wait > Duration::ZERO && wait <= ctx.config.resync, "{wait:?}");
    assert!(store.get_application("x").unwrap().is_some(), "purged before its retention");
    let config = ReconcileConfig { history_retention: Duration::ZERO, ..Default::default() };
    let ctx = ctx_of(&store, vec![], cap(8, 16), config);
    let reads = store.application_reads();
    retention::purge_due(&ctx).await.unwrap();
    assert!(store.get_application("x").unwrap().is_none(), "not purged");
    assert!(store.get_application("y").unwrap().is_some(), "an active application purged");
    assert_eq!(store.application_reads(), reads, "a purge pass reads no application");
}

#[tokio::test]
async fn the_resource_environment_and_the_meta_endpoint_agree_on_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    let a = phase_of(&store, "x");
    let uid = a.metadata.uid.unwrap();
    let label = store.application_label(uid).unwrap().unwrap();
    let ctx = driverless_ctx(&store);
    let env = request_metadata(&ctx, &a, &label, uid);
    let served = crate::metadata::merged(Some(&label), &a, "host-a");
    assert_eq!(env["FISH_LABEL"], serde_json::json!("l"));
    assert_eq!(env["FISH_LABEL_VERSION"], serde_json::json!("1"));
    for (k, v) in &served {
        assert_eq!(env.get(k), Some(v), "{k} differs between the environment and /meta/v1/data");
    }
}

/// A secrets provider for every application: "not now" for the first `not_now`
/// mints (holding its applications `hold` each time), then refusals for the next
/// `refuse`, then secrets.
struct Flaky {
    not_now: u32,
    refuse: u32,
    hold: Duration,
    mints: std::sync::Mutex<Vec<tokio::time::Instant>>,
    held: std::sync::Mutex<Option<crate::metadata::Hold>>,
}

impl Flaky {
    fn new(not_now: u32, refuse: u32, hold: Duration) -> Arc<Flaky> {
        Arc::new(Flaky { not_now, refuse, hold, mints: Default::default(), held: Default::default() })
    }
}

#[async_trait::async_trait]
impl crate::metadata::SecretProvider for Flaky {
    fn owns(&self, _app: &Application) -> bool {
        true
    }

    async fn mint(&self, _app: &Application) -> Result<api_types::Metadata, crate::metadata::MintError> {
        let now = tokio::time::Instant::now();
        let n = {
            let mut m = self.mints.lock().unwrap();
            m.push(now);
            m.len() as u32
        };
        if n <= self.not_now {
            let reason = format!("the CI system is down; retrying after hold {n}");
            *self.held.lock().unwrap() = Some(crate::metadata::Hold { reason: reason.clone(), until: now + self.hold });
            return Err(crate::metadata::MintError::NotNow(reason));
        }
        if n <= self.not_now + self.refuse {
            return Err(crate::metadata::MintError::Refused("bad credentials".into()));
        }
        Ok(api_types::Metadata::from_iter([("SECRET".to_owned(), serde_json::json!("s"))]))
    }

    fn hold(&self, _app: &Application) -> Option<crate::metadata::Hold> {
        self.held.lock().unwrap().clone()
    }

    fn current(&self, _app: &Application) -> api_types::Metadata {
        api_types::Metadata::new()
    }
}

#[tokio::test(start_paused = true)]
async fn secrets_that_cannot_be_minted_now_count_no_attempt_and_wait_for_the_hold() {
    let flaky = Flaky::new(5, 0, Duration::from_secs(30));
    let h = harness_with(cap(4, 8), ReconcileConfig::default(), Some(flaky.clone())).await;
    apply(&h.store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("a", "l"))).await;
    // Five outages in a row: more than allocationRetry (3), yet never ERROR.
    let a = wait_phase(&h.store, "a", Phase::Allocated).await;
    assert_eq!(a.status.attempts, 0, "{:#?}", a.status);
    assert!(a.status.history.iter().all(|e| e.phase != Phase::Error));
    let postponed: Vec<&str> = a
        .status
        .history
        .iter()
        .filter(|e| e.phase == Phase::New && e.message.contains("postponed"))
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(postponed.len(), 5, "{:#?}", a.status.history);
    assert!(postponed[0].contains("not counted as an attempt: the CI system is down"), "{}", postponed[0]);
    // Each retry came only once the hold was over, not at once.
    let mints = flaky.mints.lock().unwrap().clone();
    assert_eq!(mints.len(), 6);
    for w in mints.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_secs(30), "{:?}", w[1] - w[0]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_application_shows_why_it_waits() {
    let flaky = Flaky::new(1, 0, Duration::from_secs(600));
    let h = harness_with(cap(4, 8), ReconcileConfig::default(), Some(flaky.clone())).await;
    apply(&h.store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("a", "l"))).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let a = h.store.get_application("a").unwrap().unwrap();
        if a.status.phase == Phase::New && a.status.message == "the CI system is down; retrying after hold 1" {
            assert_eq!(a.status.attempts, 0);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never held: {:#?}", a.status);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(flaky.mints.lock().unwrap().len(), 1, "no mint while held");
}

#[tokio::test(start_paused = true)]
async fn refused_secrets_count_as_failed_attempts() {
    let flaky = Flaky::new(0, 5, Duration::ZERO);
    let h = harness_with(cap(4, 8), ReconcileConfig::default(), Some(flaky.clone())).await;
    apply(&h.store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("a", "l"))).await;
    let a = wait_phase(&h.store, "a", Phase::Error).await;
    assert_eq!(a.status.attempts, 3);
    assert!(
        a.status.message.contains("bad credentials") && a.status.message.contains("giving up"),
        "{}",
        a.status.message
    );
}

/// Puts application `name` (NEW, waiting) on `node` in `phase`, as another node's
/// reconciler or the leader would.
async fn move_to(store: &Store, name: &str, expect: Phase, phase: Phase, node: &str, message: &str) {
    let a = phase_of(store, name);
    let mut s = transition(&a.status, phase, message);
    s.node = Some(node.to_owned());
    let uid = a.metadata.uid.unwrap();
    store
        .execute(Command::SetApplicationStatus { uid, expect, status: Box::new(s), expect_node: None })
        .await
        .unwrap()
        .unwrap();
}

/// An application allocated here that stops being this node's while it runs (the
/// leader declared the node lost; the change arrives through the log) has its
/// resource released, and a restart releases what an ERROR application left.
#[tokio::test(start_paused = true)]
async fn a_resource_whose_application_is_no_longer_this_nodes_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let (_ctx, c) =
        start_with(&store, vec![("test", test_driver(dir.path(), "test"))], ReconcileConfig::default()).await;
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l") + &app("y", "l"))).await;
    until("x and y ALLOCATED", || {
        phase_of(&store, "x").status.phase == Phase::Allocated && phase_of(&store, "y").status.phase == Phase::Allocated
    })
    .await;
    let resource =
        |name: &str| dir.path().join(format!("test/test/{}.json", phase_of(&store, name).metadata.uid.unwrap()));
    assert!(resource("x").exists());
    move_to(&store, "x", Phase::Allocated, Phase::Error, "host-a", "node lost: host-a").await;
    until("x's resource released", || !resource("x").exists()).await;
    assert!(resource("y").exists(), "y is still this node's");

    // Stopped; y is moved on while the node is down; the next start releases it.
    assert!(c.shutdown(Duration::from_secs(5)).await);
    move_to(&store, "y", Phase::Allocated, Phase::Error, "host-a", "node lost: host-a").await;
    let (_ctx, _c) =
        start_with(&store, vec![("test", test_driver(dir.path(), "test"))], ReconcileConfig::default()).await;
    until("y's resource released at start", || !resource("y").exists()).await;
}

/// `--drain-and-deallocate` and the drain's wait look at this node's applications
/// only: another node's keep running, the pool's NEW ones keep waiting.
#[tokio::test(start_paused = true)]
async fn draining_deallocates_only_this_nodes_applications() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let (_ctx, c) =
        start_with(&store, vec![("test", test_driver(dir.path(), "test"))], ReconcileConfig::default()).await;
    let yaml = label("l", "{driver: test, resources: {cpu: 1}}")
        + "---\n"
        + &label("big", "{driver: test, resources: {cpu: 64}}")
        + &app("mine", "l")
        + &app("waiting", "big")
        + &app("theirs", "big");
    apply(&store, &yaml).await;
    until("mine ALLOCATED", || phase_of(&store, "mine").status.phase == Phase::Allocated).await;
    until("waiting has its reason", || !phase_of(&store, "theirs").status.message.is_empty()).await;
    move_to(&store, "theirs", Phase::New, Phase::Allocated, "host-b", "allocated on host-b").await;
    c.stop_accepting();
    assert!(c.has_active());
    c.deallocate_all().await;
    until("mine DEALLOCATED", || phase_of(&store, "mine").status.phase == Phase::Deallocated).await;
    until("nothing of this node active", || !c.has_active()).await;
    assert_eq!(phase_of(&store, "theirs").status.phase, Phase::Allocated);
    assert_eq!(phase_of(&store, "waiting").status.phase, Phase::New);
}

/// Several nodes on one store: each has its own controller, driver and capacity, as
/// in a cluster whose log is this store. `silent` nodes have a ready record but no
/// controller: they never vote.
struct Pool {
    _dir: tempfile::TempDir,
    store: Store,
    _controllers: Vec<Controller>,
}

async fn put_node(store: &Store, name: &str, ready: bool, maintenance: bool) {
    let mut node = api_types::Node {
        api_version: Default::default(),
        kind: Default::default(),
        metadata: api_types::ObjectMeta { name: name.parse().ok(), ..Default::default() },
        status: Default::default(),
    };
    node.status.ready = ready;
    store.execute(Command::PutNode { node: Box::new(node) }).await.unwrap().unwrap();
    store.execute(Command::SetMaintenance { node: name.into(), enabled: maintenance }).await.unwrap().unwrap();
}

async fn pool(nodes: &[(&str, NodeCapacity, Vec<&str>)], silent: &[&str], maintenance: &[&str]) -> Pool {
    pool_with_faulty(nodes, silent, maintenance, &[]).await
}

/// `faulty` nodes' test drivers fail every allocation.
async fn pool_with_faulty(
    nodes: &[(&str, NodeCapacity, Vec<&str>)],
    silent: &[&str],
    maintenance: &[&str],
    faulty: &[&str],
) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    for (name, _, _) in nodes {
        put_node(&store, name, true, maintenance.contains(name)).await;
    }
    for name in silent {
        put_node(&store, name, true, false).await;
    }
    let mut controllers = Vec::new();
    for (name, capacity, identifiers) in nodes {
        let mut drivers = crate::drivers::Drivers::new();
        let mut config = TestConfig::default();
        if faulty.contains(name) {
            config.faults = Some(crate::drivers::test::Faults {
                allocate: crate::drivers::test::Fault { fail: 1.0, stall: 0.0 },
                ..Default::default()
            });
        }
        let d: Arc<dyn crate::drivers::Driver> =
            Arc::new(TestDriver::new("test".into(), config, &dir.path().join(name)).unwrap());
        drivers.insert("test".into(), d);
        let node = NodeIdentity {
            name: name.to_string(),
            identifiers: identifiers.iter().map(|s| s.to_string()).collect(),
            capacity: *capacity,
        };
        let ctx = Ctx::new(
            store.clone(),
            Arc::new(drivers),
            node,
            ReconcileConfig::default(),
            crate::meta_token::MetaTokens::new([1; 32]),
        );
        controllers.push(Controller::start(ctx).await);
    }
    Pool { _dir: dir, store, _controllers: controllers }
}

/// How many applications in `phases` each node holds.
fn held(store: &Store, phases: &[Phase]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for p in phases {
        for uid in store.uids_in_phase(*p).unwrap() {
            let app = store.get_application_by_uid(uid).unwrap().unwrap();
            *out.entry(app.status.node.unwrap_or_default()).or_insert(0) += 1;
        }
    }
    out
}

/// A burst larger than the pool: every node fills to its capacity and no further,
/// the rest wait NEW with every node's reason, and the burst is spread (the tie-break)
/// rather than taken by the fastest node.
#[tokio::test(start_paused = true)]
async fn votes_fill_every_node_to_its_capacity_and_never_beyond() {
    let c = cap(8, 3);
    let p = pool(&[("a", c, vec![]), ("b", c, vec![]), ("c", c, vec![])], &[], &[]).await;
    let mut yaml = label("l", "{driver: test, resources: {cpu: 1}}");
    for i in 0..12 {
        yaml += &app(&format!("x{i}"), "l");
    }
    apply(&p.store, &yaml).await;
    until("9 allocated", || held(&p.store, &[Phase::Allocated]).values().sum::<usize>() == 9).await;
    let by_node = held(&p.store, &[Phase::Elected, Phase::Allocated]);
    assert_eq!(by_node, [("a", 3), ("b", 3), ("c", 3)].map(|(n, k)| (n.to_string(), k)).into());
    // Creation order: the three waiting are the last three.
    for i in 9..12 {
        let w = p.store.get_application(&format!("x{i}")).unwrap().unwrap();
        assert_eq!(w.status.phase, Phase::New);
        for n in ["node a:", "node b:", "node c:"] {
            assert!(w.status.message.contains(n), "{}", w.status.message);
        }
    }
    // Freeing one room elects the oldest waiting one, on the node that freed it.
    let freed = p.store.get_application("x0").unwrap().unwrap().status.node.unwrap();
    deallocate(&p.store, "x0").await;
    let x9 = wait_phase(&p.store, "x9", Phase::Allocated).await;
    assert_eq!(x9.status.node.as_deref(), Some(freed.as_str()));
}

/// The history names the node of every attempt; an application that failed on one
/// node is elected to another next, not to the node that failed it.
#[tokio::test(start_paused = true)]
async fn a_failed_attempt_is_retried_on_another_node() {
    let c = cap(8, 8);
    let p = pool_with_faulty(&[("a", c, vec![]), ("b", c, vec![])], &[], &[], &["a"]).await;
    let mut yaml = label("l", "{driver: test, resources: {cpu: 1}}");
    for i in 0..6 {
        yaml += &app(&format!("f{i}"), "l");
    }
    apply(&p.store, &yaml).await;
    let mut tried_a = 0;
    for i in 0..6 {
        let f = wait_phase(&p.store, &format!("f{i}"), Phase::Allocated).await;
        assert_eq!(f.status.node.as_deref(), Some("b"), "{:#?}", f.status.history);
        let elected: Vec<&str> = f
            .status
            .history
            .iter()
            .filter(|e| e.phase == Phase::Elected)
            .map(|e| e.message.split_whitespace().nth(2).unwrap())
            .collect();
        // At most one attempt on the failing node, and it is named in the history.
        match elected.as_slice() {
            ["b"] => {}
            ["a", "b"] => {
                tried_a += 1;
                assert!(
                    f.status.history.iter().any(|e| e.message.contains("failed on node a")),
                    "{:#?}",
                    f.status.history
                );
            }
            other => panic!("elected {other:?}: {:#?}", f.status.history),
        }
    }
    // The tie-break spreads a burst over equal nodes, so some went to a first.
    assert!(tried_a > 0, "no application was tried on a: the retry path was not exercised");
}

/// nodeFilter, maintenance, and a node that never votes: the filter pins, a node in
/// maintenance takes nothing, and a silent node holds a round only until the leader's
/// deadline.
#[tokio::test(start_paused = true)]
async fn filters_maintenance_and_a_silent_node() {
    let c = cap(8, 8);
    let p = pool(&[("a", c, vec!["gpu"]), ("b", c, vec![]), ("m", c, vec!["gpu"])], &["silent"], &["m"]).await;
    let mut yaml = label("gpu", "{driver: test, resources: {cpu: 1, nodeFilter: [gpu]}}");
    yaml += "---\n";
    yaml += &label("any", "{driver: test, resources: {cpu: 1}}");
    for i in 0..4 {
        yaml += &app(&format!("g{i}"), "gpu");
        yaml += &app(&format!("n{i}"), "any");
    }
    apply(&p.store, &yaml).await;
    for i in 0..4 {
        let g = wait_phase(&p.store, &format!("g{i}"), Phase::Allocated).await;
        assert_eq!(g.status.node.as_deref(), Some("a"), "nodeFilter [gpu] matches a (and m, in maintenance)");
        let n = wait_phase(&p.store, &format!("n{i}"), Phase::Allocated).await;
        assert!(matches!(n.status.node.as_deref(), Some("a" | "b")), "{:?}", n.status.node);
    }
    // The silent node was waited for, then the rounds closed at the deadline.
    let g0 = p.store.get_application("g0").unwrap().unwrap();
    let created = g0.status.history[0].at;
    let elected = g0.status.history.iter().find(|e| e.phase == Phase::Elected).unwrap().at;
    assert!(elected - created >= crate::reconcile::election::VOTE_DEADLINE, "{created} → {elected}");

    // Only the node in maintenance can run it: it waits, saying so.
    apply(&p.store, &(label("monly", "{driver: test, resources: {cpu: 1, nodeFilter: [m]}}") + &app("mo", "monly")))
        .await;
    until("mo says why it waits", || {
        let m = p.store.get_application("mo").unwrap().unwrap().status.message;
        m.contains("node m: node m is in maintenance") && m.contains("node a: ") && m.contains("not yet voted: silent")
    })
    .await;
    assert_eq!(p.store.get_application("mo").unwrap().unwrap().status.phase, Phase::New);
}

/// Overbooking: cpu may go past the total when the definition allows it, slots never.
#[tokio::test(start_paused = true)]
async fn overbooked_cpu_fits_more_but_slots_still_bound() {
    let p = pool(&[("a", cap(2, 4), vec![]), ("b", cap(2, 4), vec![])], &[], &[]).await;
    let mut yaml = label("ob", "{driver: test, resources: {cpu: 2, cpuOverbook: true}}");
    for i in 0..10 {
        yaml += &app(&format!("o{i}"), "ob");
    }
    apply(&p.store, &yaml).await;
    until("8 allocated", || held(&p.store, &[Phase::Allocated]).values().sum::<usize>() == 8).await;
    let by_node = held(&p.store, &[Phase::Elected, Phase::Allocated]);
    assert_eq!(by_node, [("a", 4), ("b", 4)].map(|(n, k)| (n.to_string(), k)).into());
    assert!(p.store.get_application("o9").unwrap().unwrap().status.message.contains("slots"));
}

/// A change that came without an event (a snapshot installed after a partition) is
/// found by the resync: a resource this node still runs for an application that is no
/// longer its own is released.
#[tokio::test(start_paused = true)]
async fn the_resync_releases_a_resource_whose_application_moved_on_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let (ctx, c) =
        start_with(&store, vec![("test", test_driver(dir.path(), "test"))], ReconcileConfig::default()).await;
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("x", "l"))).await;
    until("x ALLOCATED", || phase_of(&store, "x").status.phase == Phase::Allocated).await;
    let resource = dir.path().join(format!("test/test/{}.json", phase_of(&store, "x").metadata.uid.unwrap()));
    assert!(resource.exists());
    // The loops stop, so the change below reaches no trigger.
    assert!(c.shutdown(Duration::from_secs(5)).await);
    move_to(&store, "x", Phase::Allocated, Phase::Error, "host-a", "node lost: host-a").await;
    let work = ctx.clone();
    let (queue, _h) =
        queue::start(4, tokio_util::task::TaskTracker::new(), tokio_util::sync::CancellationToken::new(), move |uid| {
            application::reconcile(work.clone(), uid)
        });
    resync(&ctx, &queue);
    until("x's resource released by the resync", || !resource.exists()).await;
}

/// A queue longer than one vote command holds is voted for in several, all elected.
#[tokio::test(start_paused = true)]
async fn a_queue_longer_than_one_vote_command_is_elected_in_full() {
    let p = pool(&[("a", cap(1000, 1000), vec![]), ("b", cap(1000, 1000), vec![])], &[], &[]).await;
    let mut yaml = label("many", "{driver: test, resources: {cpu: 1}}");
    for i in 0..700 {
        yaml += &app(&format!("q{i}"), "many");
    }
    apply(&p.store, &yaml).await;
    until("700 allocated", || held(&p.store, &[Phase::Allocated]).values().sum::<usize>() == 700).await;
}

/// Start-up and the loops after it read the active applications, not the finished
/// ones (100,000 of them may be stored): none is queued, timed or read before its purge.
#[tokio::test(start_paused = true)]
async fn start_up_reads_active_applications_only() {
    const FINISHED: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let yaml: String = (0..FINISHED).map(|i| app(&format!("done-{i}"), "l")).collect();
    apply(&store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &yaml)).await;
    let now = OffsetDateTime::now_utc();
    let finishing = (0..FINISHED).map(|i| {
        let uid = store.get_application(&format!("done-{i}")).unwrap().unwrap().metadata.uid.unwrap();
        store.execute(Command::RequestDeallocate { uid, by: "test".into(), now })
    });
    for r in futures::future::join_all(finishing).await {
        r.unwrap().unwrap();
    }
    assert_eq!(store.count_in_phase(Phase::Deallocated).unwrap(), FINISHED as u64);
    let before = store.application_reads();
    let ctx = ctx_of(&store, vec![("test", test_driver(dir.path(), "test"))], cap(4, 8), ReconcileConfig::default());
    let _controller = Controller::start(ctx).await;
    // An active one goes through while they stay stored.
    apply(&store, &app("live", "l")).await;
    wait_phase(&store, "live", Phase::Allocated).await;
    // A resync and the purge loop's look (retention: a day) pass too.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let reads = store.application_reads() - before;
    assert!(reads < 50, "{reads} applications read with {FINISHED} finished ones stored");
    assert_eq!(store.count_in_phase(Phase::Deallocated).unwrap(), FINISHED as u64);
}

/// The election's ledger never reads the applications active on other nodes, ELECTED
/// ones too; one that comes back to NEW and is then elected here (by this node's vote)
/// is reserved by the next pass all the same.
#[tokio::test(start_paused = true)]
async fn the_ledger_reads_no_application_of_other_nodes_and_reserves_one_elected_here_later() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    // No loops: the passes are run here, one at a time.
    let ctx = ctx_of(&store, vec![("test", test_driver(dir.path(), "test"))], cap(8, 16), ReconcileConfig::default());
    let mut yaml = label("l", "{driver: test, resources: {cpu: 1}}");
    for i in 0..6 {
        yaml += &app(&format!("e{i}"), "l");
    }
    apply(&store, &yaml).await;
    for i in 0..3 {
        move_to(&store, &format!("e{i}"), Phase::New, Phase::Elected, "host-b", "elected node host-b").await;
    }
    for i in 3..6 {
        move_to(&store, &format!("e{i}"), Phase::New, Phase::Allocated, "host-b", "allocated on node host-b").await;
    }
    let reads = store.application_reads();
    election::pass(&ctx).await.unwrap();
    assert_eq!(ctx.ledger().node.applications, 0);
    assert_eq!(store.application_reads(), reads, "a pass reads no application of another node");

    // e0 fails on host-b and comes back to NEW; this node's pass votes for it and, the
    // only voter, is elected at once.
    let e0 = phase_of(&store, "e0");
    let mut s = transition(&e0.status, Phase::New, "allocation attempt 1 failed on node host-b; retrying");
    s.node = None;
    s.attempts = 1;
    let uid = e0.metadata.uid.unwrap();
    store
        .execute(Command::SetApplicationStatus { uid, expect: Phase::Elected, status: Box::new(s), expect_node: None })
        .await
        .unwrap()
        .unwrap();
    election::pass(&ctx).await.unwrap();
    let e0 = phase_of(&store, "e0");
    assert_eq!((e0.status.phase, e0.status.node.as_deref()), (Phase::Elected, Some("host-a")));
    // The next pass reserves it: it was not left remembered as host-b's.
    election::pass(&ctx).await.unwrap();
    assert_eq!(ctx.ledger().node.applications, 1);
    assert_eq!(ctx.ledger().node.cpu, 1);
    // And from then on it is reserved from the cache, still without reads.
    let reads = store.application_reads();
    election::pass(&ctx).await.unwrap();
    assert_eq!(store.application_reads(), reads);
    assert_eq!(ctx.ledger().node.cpu, 1);
}
