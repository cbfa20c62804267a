//! State machine tests: real redb in a temp dir, commands in, objects and events out.
#![allow(clippy::unwrap_used)]

use api_types::{ApplyAction, Format, Manifest, Phase, WatchEventType, parse_manifests};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

/// A store in a temp dir (shared with `ops_tests`).
pub(super) fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("fish.redb")).unwrap();
    (dir, s)
}

/// The documents of `yaml` as apply items with fresh uids (shared with `ops_tests`).
pub(super) fn items(yaml: &str) -> Vec<ApplyItem> {
    parse_manifests(yaml.as_bytes(), Format::Yaml)
        .unwrap()
        .into_iter()
        .map(|m| match m {
            Manifest::Label(label) => ApplyItem::Label { label, uid: Uuid::now_v7() },
            Manifest::Application(app) => ApplyItem::Application { app, uid: Uuid::now_v7() },
            Manifest::User(user) => ApplyItem::User {
                record: UserRecord { user, password_hash: None, token_digest: format!("digest-{}", Uuid::now_v7()) },
                uid: Uuid::now_v7(),
            },
        })
        .collect()
}

async fn apply(s: &Store, yaml: &str) -> Outcome {
    s.execute(Command::Apply { items: items(yaml), owner: "admin".into(), now: OffsetDateTime::now_utc() })
        .await
        .unwrap()
}

const LABEL: &str =
    "kind: Label\nmetadata: {name: l}\nspec: {definitions: [{driver: test, resources: {cpu: 1, ram: 1}}]}\n";
const APP: &str = "kind: Application\nmetadata: {name: a}\nspec: {label: l}\n";

#[tokio::test]
async fn label_versions_follow_spec_changes() {
    let (_d, s) = store();
    let r = apply(&s, LABEL).await.unwrap();
    let Response::Applied(r) = r else { panic!() };
    assert_eq!((r[0].action, r[0].version), (ApplyAction::Created, Some(1)));
    let Response::Applied(r) = apply(&s, LABEL).await.unwrap() else { panic!() };
    assert_eq!((r[0].action, r[0].version), (ApplyAction::Unchanged, Some(1)));
    let Response::Applied(r) = apply(&s, &LABEL.replace("cpu: 1", "cpu: 2")).await.unwrap() else { panic!() };
    assert_eq!((r[0].action, r[0].version), (ApplyAction::Configured, Some(2)));
    // Naming an existing version with another spec is a conflict.
    let explicit = LABEL.replace("{name: l}", "{name: l, version: 1}").replace("cpu: 1", "cpu: 3");
    assert!(matches!(apply(&s, &explicit).await, Err(Rejection::Conflict(_))));
    assert_eq!(s.get_label("l", None).unwrap().unwrap().metadata.version, Some(2));
    assert_eq!(s.list_labels(Some("l")).unwrap().1.len(), 2);
}

#[tokio::test]
async fn apply_is_all_or_nothing() {
    let (_d, s) = store();
    let bad = format!("{LABEL}---\nkind: Application\nmetadata: {{name: a}}\nspec: {{label: missing}}\n");
    match apply(&s, &bad).await {
        Err(Rejection::Invalid { errors, .. }) => assert_eq!(errors[0].field, "spec.label"),
        other => panic!("{other:?}"),
    }
    assert!(s.get_label("l", None).unwrap().is_none(), "the label of a rejected apply was written");
    // A label and an application using it in one apply.
    let Response::Applied(r) = apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap() else { panic!() };
    assert_eq!(r.len(), 2);
    let app = s.get_application("a").unwrap().unwrap();
    assert_eq!(app.status.phase, Phase::New);
    assert_eq!(app.status.label_version, Some(1));
    assert_eq!(app.status.history.len(), 1);
}

#[tokio::test]
async fn applications_are_immutable_and_names_unique() {
    let (_d, s) = store();
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let Response::Applied(r) = apply(&s, APP).await.unwrap() else { panic!() };
    assert_eq!(r[0].action, ApplyAction::Unchanged);
    let other = APP.replace("spec: {label: l}", "spec: {label: l, lifetime: 1h}");
    assert!(matches!(apply(&s, &other).await, Err(Rejection::Conflict(_))));
}

#[tokio::test]
async fn deallocate_before_allocation_ends_at_once_and_cas_protects_it() {
    let (_d, s) = store();
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    let uid = app.metadata.uid.unwrap();
    let now = OffsetDateTime::now_utc();
    let Response::Application(a) =
        s.execute(Command::RequestDeallocate { uid, by: "alice".into(), now }).await.unwrap().unwrap()
    else {
        panic!()
    };
    assert_eq!(a.status.phase, Phase::Deallocated);
    // A late reconciler write expecting NEW is refused.
    let mut st = app.status.clone();
    st.phase = Phase::Elected;
    let r = s.execute(Command::SetApplicationStatus { uid, expect: Phase::New, status: Box::new(st) }).await.unwrap();
    assert!(matches!(r, Err(Rejection::PhaseChanged { actual: Phase::Deallocated, .. })));
    // Deallocating again is idempotent.
    assert!(s.execute(Command::RequestDeallocate { uid, by: "alice".into(), now }).await.unwrap().is_ok());
    assert_eq!(s.uids_in_phase(Phase::Deallocated).unwrap(), vec![uid]);
    assert!(s.uids_in_phase(Phase::New).unwrap().is_empty());
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_expires_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_history(&dir.path().join("fish.redb"), 3).unwrap();
    let mut live = s.subscribe();
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let first = live.recv().await.unwrap();
    assert_eq!((first.kind, first.event_type), (Kind::Label, WatchEventType::Added));
    let (rev, events) = s.events_since(first.revision).unwrap().unwrap();
    assert_eq!(rev, first.revision + 1);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, Kind::Application);
    assert_eq!(events[0].object["metadata"]["resourceVersion"], serde_json::json!(rev.to_string()));
    // Three more changes push the first two out of a history of three.
    for cpu in 2..5 {
        apply(&s, &LABEL.replace("cpu: 1", &format!("cpu: {cpu}"))).await.unwrap();
    }
    let expired = s.events_since(first.revision).unwrap().expect_err("a resume older than the history must expire");
    assert_eq!(expired.requested, first.revision);
    let (_, kept) = s.events_since(rev + 1).unwrap().unwrap();
    assert_eq!(kept.len(), 2, "the history keeps the newest three revisions");
}

fn user_record(name: &str, password_hash: &str, token_digest: &str) -> UserRecord {
    let user: api_types::User =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {"roles": ["user"]}})).unwrap();
    UserRecord { user, password_hash: Some(password_hash.into()), token_digest: token_digest.into() }
}

#[tokio::test]
async fn deleted_events_carry_the_deletion_revision_so_a_resume_replays_nothing() {
    let (_d, s) = store();
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let uid = s.get_application("a").unwrap().unwrap().metadata.uid.unwrap();
    let now = OffsetDateTime::now_utc();
    s.execute(Command::RequestDeallocate { uid, by: "alice".into(), now }).await.unwrap().unwrap();
    let record = user_record("u", "hash", "digest");
    s.execute(Command::CreateUser { record: Box::new(record), uid: Uuid::now_v7(), now }).await.unwrap().unwrap();
    let before = s.revision().unwrap();
    s.execute(Command::PurgeApplication { uid }).await.unwrap().unwrap();
    s.execute(Command::DeleteLabel { name: "l".into(), version: None }).await.unwrap().unwrap();
    s.execute(Command::DeleteUser { name: "u".into() }).await.unwrap().unwrap();
    let (_, deleted) = s.events_since(before).unwrap().unwrap();
    assert_eq!(deleted.len(), 3);
    for e in &deleted {
        assert_eq!(e.event_type, WatchEventType::Deleted);
        let rv = e.object["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
        assert_eq!(rv, e.revision, "{:?} was deleted with a stale resourceVersion", e.kind);
        // A client resuming from the revision it saw on the deletion gets only later changes.
        let (_, replay) = s.events_since(rv).unwrap().unwrap();
        assert!(replay.iter().all(|r| r.revision > rv), "resuming from {rv} replayed {replay:?}");
    }
}

#[tokio::test]
async fn create_user_refuses_a_concurrent_duplicate_and_keeps_the_first() {
    let (_d, s) = store();
    let now = OffsetDateTime::now_utc();
    let create = |hash: &str, digest: &str| {
        let record = user_record("carol", hash, digest);
        s.execute(Command::CreateUser { record: Box::new(record), uid: Uuid::now_v7(), now })
    };
    // Both go to the writer at once (one batch): the check and the write are one step.
    let (a, b) = tokio::join!(create("hash-a", "digest-a"), create("hash-b", "digest-b"));
    let (a, b) = (a.unwrap(), b.unwrap());
    let (winner, loser) = match (&a, &b) {
        (Ok(_), Err(r)) => ("a", r),
        (Err(r), Ok(_)) => ("b", r),
        other => panic!("exactly one creation must win: {other:?}"),
    };
    assert!(matches!(loser, Rejection::Conflict(m) if m.contains("already exists")), "{loser:?}");
    let stored = s.get_user("carol").unwrap().unwrap();
    assert_eq!(
        stored.password_hash.as_deref(),
        Some(format!("hash-{winner}").as_str()),
        "the refused one overwrote it"
    );
    assert_eq!(stored.token_digest, format!("digest-{winner}"));
    let loser_digest = if winner == "a" { "digest-b" } else { "digest-a" };
    assert!(s.user_by_token_digest(loser_digest).unwrap().is_none(), "the refused token works");
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fish.redb");
    {
        let s = Store::open(&path).unwrap();
        apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    }
    // The writer thread holds the database until its channel closes; wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let s = loop {
        match Store::open(&path) {
            Ok(s) => break s,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(s.get_application("a").unwrap().is_some());
    assert_eq!(s.revision().unwrap(), 2);
}

#[tokio::test]
async fn an_application_lifetime_longer_than_its_labels_is_refused_naming_both() {
    let (_d, s) = store();
    apply(&s, &LABEL.replace("ram: 1}", "ram: 1, lifetime: 1h}")).await.unwrap();
    let long = APP.replace("spec: {label: l}", "spec: {label: l, lifetime: 2h}");
    match apply(&s, &long).await {
        Err(Rejection::Invalid { errors, .. }) => {
            assert_eq!(errors[0].field, "spec.lifetime");
            assert!(errors[0].message.contains("2h") && errors[0].message.contains("1h"), "{}", errors[0].message);
        }
        other => panic!("{other:?}"),
    }
    let short = APP.replace("spec: {label: l}", "spec: {label: l, lifetime: 30m}");
    assert!(apply(&s, &short).await.is_ok());
}
