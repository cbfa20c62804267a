//! The control loops end to end on one node: a real store, the test driver, the
//! real queue and election, and no HTTP. Conditions are awaited with deadlines.
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
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("fish.redb")).await.unwrap();
    let mut drivers = crate::drivers::Drivers::new();
    let d: Arc<dyn crate::drivers::Driver> =
        Arc::new(TestDriver::new("test".into(), TestConfig::default(), dir.path()).unwrap());
    drivers.insert("test".into(), d);
    let node = NodeIdentity { name: "host-a".into(), identifiers: vec!["linux".into()], capacity };
    let ctx = Ctx::new(store.clone(), Arc::new(drivers), node, config, crate::meta_token::MetaTokens::new([1; 32]));
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

async fn wait_phase(store: &Store, name: &str, phase: Phase) -> Application {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let app = store.get_application(name).unwrap().unwrap();
        if app.status.phase == phase {
            return app;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} never reached {phase}: {:#?}", app.status);
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

#[tokio::test]
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

#[tokio::test]
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

#[tokio::test]
async fn falls_back_to_the_next_definition_then_gives_up() {
    let h = harness(cap(4, 8), ReconcileConfig::default()).await;
    let defs =
        "{driver: test, resources: {cpu: 1}, options: {failAllocations: 9}}, {driver: test, resources: {cpu: 1}}";
    apply(&h.store, &(label("two", defs) + &app("fallback", "two"))).await;
    let a = wait_phase(&h.store, "fallback", Phase::Allocated).await;
    assert_eq!(a.status.definition, Some(1));
    assert_eq!(a.status.attempts, 1);

    let bad = "{driver: test, resources: {cpu: 1}, options: {failAllocations: 9}}";
    apply(&h.store, &(label("bad", bad) + &app("doomed", "bad"))).await;
    let a = wait_phase(&h.store, "doomed", Phase::Error).await;
    let elected = a.status.history.iter().filter(|e| e.phase == Phase::Elected).count();
    assert_eq!(elected, 3, "{:#?}", a.status.history);
    let failures = a.status.history.iter().filter(|e| e.message.contains("simulated allocation failure")).count();
    assert_eq!(failures, 3);
}

#[tokio::test]
async fn lifetime_expiry_deallocates() {
    let h = harness(cap(4, 8), ReconcileConfig::default()).await;
    apply(&h.store, &(label("short", "{driver: test, resources: {cpu: 1, lifetime: 1s}}") + &app("s", "short"))).await;
    let a = wait_phase(&h.store, "s", Phase::Deallocated).await;
    assert!(a.status.message.contains("lifetime expired"), "{}", a.status.message);
}

#[tokio::test]
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "resource leaked: {}", file.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.store.get_application("x").unwrap().unwrap().status.phase, Phase::Deallocated);
}

#[tokio::test]
async fn retention_purges_finished_applications() {
    let config = ReconcileConfig { history_retention: Duration::from_millis(200), ..Default::default() };
    let h = harness(cap(4, 8), config).await;
    apply(&h.store, &(label("l", "{driver: test, resources: {cpu: 1}}") + &app("p", "l"))).await;
    wait_phase(&h.store, "p", Phase::Allocated).await;
    deallocate(&h.store, "p").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.store.get_application("p").unwrap().is_some() {
        assert!(tokio::time::Instant::now() < deadline, "not purged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
