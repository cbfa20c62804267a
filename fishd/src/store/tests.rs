//! State machine tests: real redb in a temp dir, commands in, objects and events out.
#![allow(clippy::unwrap_used)]

use api_types::{ApplyAction, Format, Manifest, Phase, WatchEventType, parse_manifests};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;

/// A store in a temp dir (shared with `ops_tests`).
pub(super) async fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("fish.redb")).await.unwrap();
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
    let (_d, s) = store().await;
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
    let (_d, s) = store().await;
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
    let (_d, s) = store().await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let Response::Applied(r) = apply(&s, APP).await.unwrap() else { panic!() };
    assert_eq!(r[0].action, ApplyAction::Unchanged);
    let other = APP.replace("spec: {label: l}", "spec: {label: l, lifetime: 1h}");
    assert!(matches!(apply(&s, &other).await, Err(Rejection::Conflict(_))));
}

#[tokio::test]
async fn deallocate_before_allocation_ends_at_once_and_cas_protects_it() {
    let (_d, s) = store().await;
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
    let r = s
        .execute(Command::SetApplicationStatus { uid, expect: Phase::New, status: Box::new(st), expect_node: None })
        .await
        .unwrap();
    assert!(matches!(r, Err(Rejection::PhaseChanged { actual: Phase::Deallocated, .. })));
    // Deallocating again is idempotent.
    assert!(s.execute(Command::RequestDeallocate { uid, by: "alice".into(), now }).await.unwrap().is_ok());
    assert_eq!(s.uids_in_phase(Phase::Deallocated).unwrap(), vec![uid]);
    assert!(s.uids_in_phase(Phase::New).unwrap().is_empty());
}

#[tokio::test]
async fn watch_resumes_from_a_revision_and_expires_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_history(&dir.path().join("fish.redb"), 3).await.unwrap();
    let mut live = s.subscribe();
    apply(&s, LABEL).await.unwrap();
    apply(&s, APP).await.unwrap();
    let first = live.recv().await.unwrap();
    assert_eq!((first.kind, first.event_type), (Kind::Label, WatchEventType::Added));
    let (rev, events) = s.events_since(first.revision).unwrap().unwrap();
    assert!(rev > first.revision);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, Kind::Application);
    assert_eq!(events[0].object()["metadata"]["resourceVersion"], serde_json::json!(rev.to_string()));
    // Resuming from before both gets both, in order.
    let (_, events) = s.events_since(first.revision - 1).unwrap().unwrap();
    assert_eq!(events.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![Kind::Label, Kind::Application]);
    // Three more changes push the first two out of a history of three.
    for cpu in 2..5 {
        apply(&s, &LABEL.replace("cpu: 1", &format!("cpu: {cpu}"))).await.unwrap();
    }
    let expired = s.events_since(first.revision).unwrap().expect_err("a resume older than the history must expire");
    assert_eq!(expired.requested, first.revision);
    let (_, kept) = s.events_since(rev + 1).unwrap().unwrap();
    assert_eq!(kept.len(), 2, "the history keeps the newest three events");
}

#[tokio::test]
async fn objects_changed_by_one_command_share_its_log_index() {
    let (_d, s) = store().await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let label = s.get_label("l", None).unwrap().unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    assert_eq!(label.metadata.resource_version, app.metadata.resource_version);
    let rev = s.revision().unwrap();
    assert_eq!(app.metadata.resource_version, Some(rev.to_string()));
    // The revision is the Raft log index of the entry that made the change.
    assert_eq!(s.raft().metrics().borrow().last_applied.map(|l| l.index), Some(rev));
    let (_, events) = s.events_since(rev - 1).unwrap().unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.revision == rev));
}

#[tokio::test]
async fn old_revisions_expire_with_a_small_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with_history(&dir.path().join("fish.redb"), 2).await.unwrap();
    apply(&s, LABEL).await.unwrap();
    let first = s.revision().unwrap();
    for cpu in 2..6 {
        apply(&s, &LABEL.replace("cpu: 1", &format!("cpu: {cpu}"))).await.unwrap();
    }
    assert!(s.events_since(first).unwrap().is_err(), "a revision older than the history must expire");
    let now = s.revision().unwrap();
    assert!(s.events_since(now - 1).unwrap().is_ok());
}

#[tokio::test]
async fn a_retried_proposal_is_applied_once() {
    let (_d, s) = store().await;
    apply(&s, LABEL).await.unwrap();
    let p = Proposal::new(&Command::Apply { items: items(APP), owner: "admin".into(), now: OffsetDateTime::now_utc() })
        .unwrap();
    let a = s.propose(p.clone()).await.unwrap();
    let b = s.propose(p).await.unwrap();
    // The second is answered with the first answer (same index), and nothing changed.
    assert_eq!(a.index, b.index);
    assert_eq!(a.outcome, b.outcome);
    let app = s.get_application("a").unwrap().unwrap();
    assert_eq!(app.metadata.resource_version, Some(a.index.to_string()));
    assert_eq!(s.revision().unwrap(), a.index);
}

/// Two writes of one proposal at once (a forwarded write retried while the first is
/// still in flight): the second wait on its id replaces the first in `answers`, and the
/// first is answered by openraft instead; both get the one answer, nothing is applied twice.
#[tokio::test]
async fn one_proposal_written_twice_at_once_is_answered_twice_and_applied_once() {
    let (_d, s) = store().await;
    apply(&s, LABEL).await.unwrap();
    let p = Proposal::new(&Command::Apply { items: items(APP), owner: "admin".into(), now: OffsetDateTime::now_utc() })
        .unwrap();
    let (a, b) = tokio::join!(s.write_as_leader(&p), s.write_as_leader(&p));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.index, b.index);
    assert_eq!(a.outcome, b.outcome);
    assert_eq!(s.revision().unwrap(), a.index);
    assert!(s.answers.lock_is_empty(), "no waiter is left behind");
}

/// A retried status write is answered with the application as stored (its answer is
/// remembered by uid, see `dedup`), and an answer an older fishd stored (`Applied` JSON)
/// still reads.
#[tokio::test]
async fn a_retried_status_write_is_answered_with_the_application_and_old_answers_read() {
    let (_d, s) = store().await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let uid = s.get_application("a").unwrap().unwrap().metadata.uid.unwrap();
    let mut st = s.get_application("a").unwrap().unwrap().status;
    st.message = "first".into();
    let p = Proposal::new(&Command::SetApplicationStatus {
        uid,
        expect: Phase::New,
        status: Box::new(st),
        expect_node: None,
    })
    .unwrap();
    let a = s.propose(p.clone()).await.unwrap();
    let b = s.propose(p).await.unwrap();
    assert_eq!(a.index, b.index);
    assert_eq!(a.outcome, b.outcome);
    let Ok(Response::Application(app)) = b.outcome else { panic!("{:?}", b.outcome) };
    assert_eq!(app.status.message, "first");
    assert_eq!(app.metadata.resource_version, Some(a.index.to_string()));
    // An answer in the old format, as an older fishd left it in the table.
    let id = Uuid::now_v7();
    let old = Applied { index: 1, outcome: Err(Rejection::NotFound("gone".into())) };
    {
        let txn = s.db.begin_write().unwrap();
        let bytes = serde_json::to_vec(&old).unwrap();
        assert_eq!(bytes.first(), Some(&b'{'));
        txn.open_table(DEDUP).unwrap().insert(id.as_u128(), bytes.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let retried = Proposal { id, command: CommandText::encode(&Command::PurgeApplication { uid }).unwrap() };
    let r = s.propose(retried).await.unwrap();
    assert_eq!((r.index, r.outcome), (1, Err(Rejection::NotFound("gone".into()))));
    assert!(s.get_application("a").unwrap().is_some(), "a remembered command was applied again");
}

/// Application events copy the object's stored bytes into the watch history and the
/// watch line: both read back as the object the event carries.
#[tokio::test]
async fn the_history_and_watch_line_of_a_write_hold_the_object_as_stored() {
    let (_d, s) = store().await;
    apply(&s, LABEL).await.unwrap();
    let before = s.revision().unwrap();
    let mut live = s.subscribe();
    apply(&s, APP).await.unwrap();
    let uid = s.get_application("a").unwrap().unwrap().metadata.uid.unwrap();
    let now = OffsetDateTime::now_utc();
    s.execute(Command::RequestDeallocate { uid, by: "alice".into(), now }).await.unwrap().unwrap();
    s.execute(Command::PurgeApplication { uid }).await.unwrap().unwrap();
    let (_, history) = s.events_since(before).unwrap().unwrap();
    let types: Vec<_> = history.iter().map(|e| e.event_type).collect();
    assert_eq!(types, vec![WatchEventType::Added, WatchEventType::Modified, WatchEventType::Deleted]);
    for kept in &history {
        let e = live.recv().await.unwrap();
        assert_eq!(e.has_stored_bytes(), e.event_type != WatchEventType::Deleted);
        assert_eq!((kept.revision, kept.kind, kept.event_type), (e.revision, e.kind, e.event_type));
        assert_eq!((kept.object(), &kept.owner), (e.object(), &e.owner));
        let line: serde_json::Value = serde_json::from_slice(&e.watch_line()).unwrap();
        let wire = serde_json::to_value(api_types::WatchEvent { event_type: e.event_type, object: e.object().clone() });
        assert_eq!(line, wire.unwrap());
    }
}

/// A forwarded command the leader cannot read (a newer fishd's, or garbage) is refused
/// at the door; in the log it would fail every node's apply and stop the state machine.
#[tokio::test]
async fn a_forwarded_command_the_leader_cannot_read_is_refused_and_the_store_goes_on() {
    let (_d, s) = store().await;
    for text in [r#"{"NoSuchCommand":{}}"#, "not json"] {
        let bad: Proposal = serde_json::from_value(serde_json::json!({"id": Uuid::now_v7(), "command": text})).unwrap();
        let e = s.write_as_leader(&bad).await.unwrap_err();
        assert!(e.starts_with("unreadable command"), "{text}: {e}");
    }
    apply(&s, LABEL).await.unwrap();
    assert!(s.get_label("l", None).unwrap().is_some(), "the store stopped taking writes");
}

fn user_record(name: &str, password_hash: &str, token_digest: &str) -> UserRecord {
    let user: api_types::User =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {"roles": ["user"]}})).unwrap();
    UserRecord { user, password_hash: Some(password_hash.into()), token_digest: token_digest.into() }
}

#[tokio::test]
async fn deleted_events_carry_the_deletion_revision_so_a_resume_replays_nothing() {
    let (_d, s) = store().await;
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
        let rv = e.object()["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap();
        assert_eq!(rv, e.revision, "{:?} was deleted with a stale resourceVersion", e.kind);
        // A client resuming from the revision it saw on the deletion gets only later changes.
        let (_, replay) = s.events_since(rv).unwrap().unwrap();
        assert!(replay.iter().all(|r| r.revision > rv), "resuming from {rv} replayed {replay:?}");
    }
}

#[tokio::test]
async fn create_user_refuses_a_concurrent_duplicate_and_keeps_the_first() {
    let (_d, s) = store().await;
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
    let rev = {
        let s = Store::open(&path).await.unwrap();
        apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
        let rev = s.revision().unwrap();
        s.close().await;
        rev
    };
    let s = Store::open(&path).await.unwrap();
    assert!(s.get_application("a").unwrap().is_some());
    assert_eq!(s.revision().unwrap(), rev);
    // The one-member cluster elects itself again and takes writes.
    apply(&s, &LABEL.replace("cpu: 1", "cpu: 2")).await.unwrap();
    assert!(s.revision().unwrap() > rev);
}

#[tokio::test]
async fn an_application_lifetime_longer_than_its_labels_is_refused_naming_both() {
    let (_d, s) = store().await;
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

#[tokio::test]
async fn concurrent_writes_share_log_entries_and_each_gets_its_own_answer() {
    let (_d, s) = store().await;
    apply(&s, LABEL).await.unwrap();
    let before = s.raft().metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    let writes = (0..50).map(|i| {
        let s = s.clone();
        async move { apply(&s, &APP.replace("name: a", &format!("name: a{i}"))).await }
    });
    let answers = futures::future::join_all(writes).await;
    for (i, a) in answers.iter().enumerate() {
        let Ok(Response::Applied(r)) = a else { panic!("write {i}: {a:?}") };
        assert_eq!(r[0].name, format!("a{i}"));
    }
    let after = s.raft().metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
    assert!(after - before < 10, "50 concurrent writes took {} log entries (group commit)", after - before);
    assert_eq!(s.list_applications(&AppFilter::default()).unwrap().1.len(), 50);
}

/// Compare-and-set on phase AND node: a node whose view is stale cannot move an
/// application that was elected to another node since.
#[tokio::test]
async fn a_status_write_for_another_node_is_refused() {
    let (_d, s) = store().await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    let uid = app.metadata.uid.unwrap();
    let mut on_b = app.status.clone();
    on_b.phase = Phase::Elected;
    on_b.node = Some("b".into());
    s.execute(Command::SetApplicationStatus {
        uid,
        expect: Phase::New,
        status: Box::new(on_b.clone()),
        expect_node: None,
    })
    .await
    .unwrap()
    .unwrap();
    // Node a still believes it is a's: its ALLOCATED write is refused, naming both nodes.
    let mut by_a = on_b.clone();
    by_a.phase = Phase::Allocated;
    by_a.node = Some("a".into());
    let r = s
        .execute(Command::SetApplicationStatus {
            uid,
            expect: Phase::Elected,
            status: Box::new(by_a),
            expect_node: Some("a".into()),
        })
        .await
        .unwrap();
    assert!(matches!(&r, Err(Rejection::NodeChanged { actual: Some(n), .. }) if n == "b"), "{r:?}");
    assert_eq!(s.get_application("a").unwrap().unwrap().status.node.as_deref(), Some("b"));
    // b's own write goes through.
    let mut by_b = on_b;
    by_b.phase = Phase::Allocated;
    let r = s
        .execute(Command::SetApplicationStatus {
            uid,
            expect: Phase::Elected,
            status: Box::new(by_b),
            expect_node: Some("b".into()),
        })
        .await
        .unwrap();
    assert!(r.is_ok(), "{r:?}");
}

/// A node removed from the cluster takes its votes with it: a round it voted in can
/// never elect it, even when the leader closes the round at its deadline.
#[tokio::test]
async fn a_removed_nodes_votes_never_elect_it() {
    use super::ballots::{BallotVote, Room, Vote};
    let (_d, s) = store().await;
    ready_nodes(&s, &["a", "b"]).await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let uid = s.get_application("a").unwrap().unwrap().metadata.uid.unwrap();
    let now = OffsetDateTime::now_utc();
    let fit = Vote::Fit { definition: 0, order: 0, driver: "test".into(), free: Room { slots: 9, cpu: 9, ram: 9 } };
    let votes = vec![BallotVote { uid, round: 0, vote: fit }];
    s.execute(Command::Vote { node: "b".into(), votes: votes.clone(), now }).await.unwrap().unwrap();
    s.execute(Command::DeleteNode { node: "b".into() }).await.unwrap().unwrap();
    assert!(s.ballots(&[uid]).unwrap()[0].votes.is_empty(), "b's vote must go with b");
    // A late vote of the removed node is not counted either.
    s.execute(Command::Vote { node: "b".into(), votes, now }).await.unwrap().unwrap();
    s.execute(Command::CloseRounds { uids: vec![uid], now, heard: None }).await.unwrap().unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    assert_eq!(app.status.phase, Phase::New, "{:#?}", app.status);
}

/// A round closed at its deadline elects only among the nodes the leader hears: a node
/// that voted and then died is not elected before it is declared lost.
#[tokio::test]
async fn a_deadline_close_elects_only_nodes_the_leader_hears() {
    use super::ballots::{BallotVote, Room, Vote};
    let (_d, s) = store().await;
    ready_nodes(&s, &["a", "b"]).await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let uid = s.get_application("a").unwrap().unwrap().metadata.uid.unwrap();
    let now = OffsetDateTime::now_utc();
    let fit = Vote::Fit { definition: 0, order: 0, driver: "test".into(), free: Room { slots: 9, cpu: 9, ram: 9 } };
    s.execute(Command::Vote { node: "b".into(), votes: vec![BallotVote { uid, round: 0, vote: fit }], now })
        .await
        .unwrap()
        .unwrap();
    let close = |heard: Vec<&str>| Command::CloseRounds {
        uids: vec![uid],
        now,
        heard: Some(heard.into_iter().map(String::from).collect()),
    };
    assert!(s.overdue_rounds(now + time::Duration::seconds(5), Some(&["a".to_string()])).unwrap().is_empty());
    s.execute(close(vec!["a"])).await.unwrap().unwrap();
    assert_eq!(s.get_application("a").unwrap().unwrap().status.phase, Phase::New, "b is not heard");
    assert_eq!(s.overdue_rounds(now + time::Duration::seconds(5), None).unwrap(), vec![uid]);
    s.execute(close(vec!["a", "b"])).await.unwrap().unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    assert_eq!((app.status.phase, app.status.node.as_deref()), (Phase::Elected, Some("b")));
}

/// Ballots and remembered answers are stored as postcard; a snapshot (the backup dump)
/// holds them as JSON and loads back to the same bytes, and a ballot an older fishd
/// stored as JSON still reads and goes through.
#[tokio::test]
async fn ballots_and_answers_go_through_a_snapshot_and_old_json_ballots_read() {
    use super::ballots::{Ballot, BallotVote, Room, Vote};
    let (_d, s) = store().await;
    ready_nodes(&s, &["a", "b"]).await;
    apply(&s, &format!("{LABEL}---\n{APP}---\n{}", APP.replace("{name: a}", "{name: b}"))).await.unwrap();
    let uid = s.get_application("a").unwrap().unwrap().metadata.uid.unwrap();
    let other = s.get_application("b").unwrap().unwrap().metadata.uid.unwrap();
    let now = OffsetDateTime::now_utc();
    let fit = Vote::Fit { definition: 0, order: 0, driver: "test".into(), free: Room { slots: 9, cpu: 9, ram: 9 } };
    s.execute(Command::Vote { node: "b".into(), votes: vec![BallotVote { uid, round: 0, vote: fit.clone() }], now })
        .await
        .unwrap()
        .unwrap();
    // `other`'s ballot as an older fishd wrote it.
    let old = Ballot {
        round: 2,
        opened: Some(now),
        votes: [("a".to_string(), fit)].into(),
        returned: [("b".to_string(), 1)].into(),
    };
    {
        let txn = s.db.begin_write().unwrap();
        txn.open_table(ballots::BALLOTS)
            .unwrap()
            .insert(other.as_u128(), serde_json::to_vec(&old).unwrap().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let read = s.ballots(&[uid, other]).unwrap();
    assert_eq!(read[1], old);
    assert_eq!(read[0].votes.len(), 1);
    let table = |db: &Database, def: redb::TableDefinition<u128, &[u8]>| -> Vec<(u128, Vec<u8>)> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(def).unwrap();
        t.iter().unwrap().map(|e| e.unwrap()).map(|(k, v)| (k.value(), v.value().to_vec())).collect()
    };
    let mut dump = Vec::new();
    backup::dump_for(&s.db.begin_read().unwrap(), &mut dump, backup::Purpose::Snapshot).unwrap();
    let text = String::from_utf8(dump.clone()).unwrap();
    let line = text.lines().find(|l| l.contains(r#""t":"ballots""#) && l.contains(&uid.to_string())).unwrap();
    let line: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(serde_json::from_value::<Ballot>(line["v"].clone()).unwrap(), read[0], "a ballot is JSON in a dump");
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("copy.redb")).unwrap();
    state::init(&db).unwrap();
    let txn = db.begin_write().unwrap();
    backup::load(&txn, dump.as_slice()).unwrap();
    txn.commit().unwrap();
    let answers = table(&s.db, DEDUP);
    assert!(!answers.is_empty());
    assert_eq!(table(&db, DEDUP), answers, "remembered answers load back as they were");
    let loaded = table(&db, ballots::BALLOTS);
    assert_eq!(
        loaded.iter().find(|(k, _)| *k == uid.as_u128()),
        table(&s.db, ballots::BALLOTS).iter().find(|(k, _)| *k == uid.as_u128())
    );
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(ballots::BALLOTS).unwrap();
    assert_eq!(ballots::read(&t, other).unwrap(), old, "the old ballot went through (now stored as postcard)");
}

/// Records `names` as ready nodes, as their own status reports would.
async fn ready_nodes(s: &Store, names: &[&str]) {
    for name in names {
        let mut node = api_types::Node {
            api_version: Default::default(),
            kind: Default::default(),
            metadata: api_types::ObjectMeta { name: name.parse().ok(), ..Default::default() },
            status: Default::default(),
        };
        node.status.ready = true;
        s.execute(Command::PutNode { node: Box::new(node) }).await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_rotated_or_deleted_token_stops_working_at_once() {
    let (_d, s) = store().await;
    let now = OffsetDateTime::now_utc();
    let record = user_record("carol", "hash", "digest-1");
    s.execute(Command::CreateUser { record: Box::new(record), uid: Uuid::now_v7(), now }).await.unwrap().unwrap();
    // Twice: the second answer comes from the cache.
    for _ in 0..2 {
        assert_eq!(s.token_user("digest-1").unwrap().unwrap().metadata.name_str(), "carol");
    }
    assert!(s.token_user("digest-x").unwrap().is_none());
    s.execute(Command::SetUserToken { name: "carol".into(), token_digest: "digest-2".into() }).await.unwrap().unwrap();
    assert!(s.token_user("digest-1").unwrap().is_none(), "the rotated token still works");
    assert!(s.token_user("digest-2").unwrap().is_some());
    // A change of the user (roles) is seen at once too.
    let admin = "kind: User\nmetadata: {name: carol}\nspec: {roles: [admin]}\n";
    let Response::Applied(r) = apply(&s, admin).await.unwrap() else { panic!() };
    assert_eq!(r[0].action, ApplyAction::Configured);
    assert!(s.token_user(&s.get_user("carol").unwrap().unwrap().token_digest).unwrap().unwrap().is_admin());
    s.execute(Command::DeleteUser { name: "carol".into() }).await.unwrap().unwrap();
    assert!(s.token_user("digest-2").unwrap().is_none(), "the deleted user's token still works");
}

#[tokio::test]
async fn stored_json_is_what_serializing_the_typed_object_gives() {
    struct Collect(u64, Vec<Vec<u8>>);
    impl JsonSink for Collect {
        fn revision(&mut self, revision: u64) {
            self.0 = revision;
        }
        fn object(&mut self, json: &[u8]) {
            self.1.push(json.to_vec());
        }
    }
    let (_d, s) = store().await;
    apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    let uid = app.metadata.uid.unwrap();
    s.execute(Command::RequestDeallocate { uid, by: "alice".into(), now: OffsetDateTime::now_utc() })
        .await
        .unwrap()
        .unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    let typed = serde_json::to_vec(&app).unwrap();
    assert_eq!(s.application_json("a", None).unwrap(), Some(typed.clone()));
    assert_eq!(s.application_json(&uid.to_string(), None).unwrap(), Some(typed.clone()));
    // Owned by "admin" (see `apply`): nobody else gets it.
    assert_eq!(s.application_json("a", Some("admin")).unwrap(), Some(typed.clone()));
    assert_eq!(s.application_json("a", Some("alice")).unwrap(), None);
    assert_eq!(s.application_json("nope", None).unwrap(), None);
    let label = s.get_label("l", None).unwrap().unwrap();
    assert_eq!(s.label_json("l", None).unwrap(), Some(serde_json::to_vec(&label).unwrap()));
    assert_eq!(s.label_json("l", Some(1)).unwrap(), Some(serde_json::to_vec(&label).unwrap()));
    assert_eq!(s.label_json("l", Some(2)).unwrap(), None);

    // Lists: the typed list's items, for every combination of filters.
    let (rev, _) = s.list_applications(&AppFilter::default()).unwrap();
    for phase in [None, Some(Phase::Deallocated), Some(Phase::New)] {
        for label in [None, Some("l"), Some("m")] {
            for owner in [None, Some("admin"), Some("alice")] {
                let filter = AppFilter { phase, label: label.map(str::to_owned), owner: owner.map(str::to_owned) };
                let mut got = Collect(0, Vec::new());
                s.applications_json(&filter, &mut got).unwrap();
                let expected: Vec<Application> = [&app]
                    .into_iter()
                    .filter(|a| phase.is_none_or(|p| a.status.phase == p))
                    .filter(|a| label.is_none_or(|l| a.spec.label.name.as_str() == l))
                    .filter(|a| owner.is_none_or(|o| a.metadata.owner.as_deref() == Some(o)))
                    .cloned()
                    .collect();
                assert_eq!(s.list_applications(&filter).unwrap().1, expected, "{filter:?}");
                let expected: Vec<Vec<u8>> = expected.iter().map(|a| serde_json::to_vec(a).unwrap()).collect();
                assert_eq!((got.0, got.1), (rev, expected), "{filter:?}");
            }
        }
    }
    let mut got = Collect(0, Vec::new());
    s.labels_json(Some("l"), &mut got).unwrap();
    assert_eq!(got.1, vec![serde_json::to_vec(&label).unwrap()]);
}

#[tokio::test]
async fn a_watch_line_is_the_watch_event_serde_writes_encoded_once() {
    let (_d, s) = store().await;
    let mut live = s.subscribe();
    apply(&s, LABEL).await.unwrap();
    let e = live.recv().await.unwrap();
    let expected = api_types::WatchEvent { event_type: e.event_type, object: e.object().clone() };
    let mut expected = serde_json::to_vec(&expected).unwrap();
    expected.push(b'\n');
    let (first, second) = (e.watch_line(), e.watch_line());
    assert_eq!(first, expected);
    assert_eq!(first.as_ptr(), second.as_ptr(), "encoded again");
    // What every other watcher of the event gets: the same bytes, not a copy.
    let shared = std::sync::Arc::clone(&e);
    assert_eq!(shared.watch_line().as_ptr(), first.as_ptr());
}

/// Writes every stored application again as a `Value` writes it (another key order:
/// as an older writer may have left them) and removes the format mark.
fn untype_applications(db: &Database) -> usize {
    let txn = db.begin_write().unwrap();
    let n;
    {
        let mut t = txn.open_table(APPS).unwrap();
        let entries: Vec<(u128, Vec<u8>)> = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect();
        n = entries.len();
        for (k, v) in entries {
            let other = serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&v).unwrap()).unwrap();
            assert_ne!(other, v, "the test changes nothing");
            t.insert(k, other.as_slice()).unwrap();
        }
        txn.open_table(LOCAL_META).unwrap().remove("object_format").unwrap();
    }
    txn.commit().unwrap();
    n
}

/// How many stored applications are not what their type writes.
fn untyped_applications(db: &Database) -> usize {
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(APPS).unwrap();
    t.iter()
        .unwrap()
        .filter(|e| {
            let v = e.as_ref().unwrap().1.value().to_vec();
            serde_json::to_vec(&serde_json::from_slice::<Application>(&v).unwrap()).unwrap() != v
        })
        .count()
}

fn object_format_mark(db: &Database) -> Option<u64> {
    db.begin_read().unwrap().open_table(LOCAL_META).unwrap().get("object_format").unwrap().map(|v| v.value())
}

#[tokio::test]
async fn objects_written_in_an_older_format_are_rewritten_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fish.redb");
    {
        let s = Store::open(&path).await.unwrap();
        apply(&s, &format!("{LABEL}---\n{APP}")).await.unwrap();
        s.close().await;
    }
    untype_applications(&Database::create(&path).unwrap());
    let s = Store::open(&path).await.unwrap();
    let app = s.get_application("a").unwrap().unwrap();
    assert_eq!(s.application_json("a", None).unwrap().unwrap(), serde_json::to_vec(&app).unwrap());
}

#[tokio::test]
async fn the_format_upgrade_commits_in_batches_and_marks_the_format_last() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fish.redb");
    {
        let s = Store::open(&path).await.unwrap();
        let apps: Vec<String> =
            (0..25).map(|i| format!("kind: Application\nmetadata: {{name: a{i}}}\nspec: {{label: l}}\n")).collect();
        apply(&s, &format!("{LABEL}---\n{}", apps.join("---\n"))).await.unwrap();
        s.close().await;
    }
    let db = Database::create(&path).unwrap();
    assert_eq!(untype_applications(&db), 25);
    // A start cut short after the applications (here: a node record no type reads).
    {
        let txn = db.begin_write().unwrap();
        txn.open_table(NODES).unwrap().insert("bad", br#"{"kind":"Label"}"#.as_slice()).unwrap();
        txn.commit().unwrap();
    }
    assert!(json::upgrade_in_batches(&db, 7).is_err());
    assert_eq!(untyped_applications(&db), 0, "the batches before the failure are committed");
    assert_eq!(object_format_mark(&db), None, "marked before every object was rewritten");
    {
        let txn = db.begin_write().unwrap();
        txn.open_table(NODES).unwrap().remove("bad").unwrap();
        txn.commit().unwrap();
    }
    // A batch size that divides the count: the last batch reads nothing.
    untype_applications(&db);
    json::upgrade_in_batches(&db, 5).unwrap();
    assert_eq!(untyped_applications(&db), 0);
    assert!(object_format_mark(&db).is_some());
    drop(db);
    let s = Store::open(&path).await.unwrap();
    let app = s.get_application("a24").unwrap().unwrap();
    assert_eq!(s.application_json("a24", None).unwrap().unwrap(), serde_json::to_vec(&app).unwrap());
}

/// Moves application `name` from phase `from` to `to` on `node` (`None`: nobody's).
async fn move_app(s: &Store, name: &str, from: Phase, to: Phase, node: Option<&str>) -> Uuid {
    let app = s.get_application(name).unwrap().unwrap();
    let uid = app.metadata.uid.unwrap();
    let mut status = app.status.clone();
    status.phase = to;
    status.node = node.map(str::to_owned);
    s.execute(Command::SetApplicationStatus { uid, expect: from, status: Box::new(status), expect_node: None })
        .await
        .unwrap()
        .unwrap();
    uid
}

/// What an election pass reads (NEW, their ballots, what a node holds) follows the
/// phases and nodes the state machine writes, and is the same after the store opens again.
#[tokio::test]
async fn the_election_view_follows_elections_deallocations_purges_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fish.redb");
    let s = Store::open(&path).await.unwrap();
    let apps: String = ["a", "b", "c", "d"]
        .iter()
        .map(|n| APP.replace("{name: a}", &format!("{{name: {n}}}")))
        .collect::<Vec<_>>()
        .join("---\n");
    apply(&s, &format!("{LABEL}---\n{apps}")).await.unwrap();
    let uid = |n: &str| s.get_application(n).unwrap().unwrap().metadata.uid.unwrap();
    let (a, b, c, d) = (uid("a"), uid("b"), uid("c"), uid("d"));
    // NEW (in creation order) and held (sorted here) as the view gives them.
    let sorted = |v: ElectionView| {
        assert_eq!(v.ballots.len(), v.new.len());
        let mut held = v.held;
        held.sort();
        (v.new, held)
    };
    assert_eq!(sorted(s.election_view("n1").unwrap()), (vec![a, b, c, d], vec![]));
    move_app(&s, "a", Phase::New, Phase::Elected, Some("n1")).await;
    move_app(&s, "b", Phase::New, Phase::Elected, Some("n2")).await;
    move_app(&s, "c", Phase::New, Phase::Elected, Some("n1")).await;
    assert_eq!(sorted(s.election_view("n1").unwrap()), (vec![d], vec![a, c]));
    assert_eq!(sorted(s.election_view("n2").unwrap()), (vec![d], vec![b]));
    // Allocated and being released: still held. Released, failed back to NEW, purged: not.
    move_app(&s, "a", Phase::Elected, Phase::Allocated, Some("n1")).await;
    move_app(&s, "a", Phase::Allocated, Phase::Deallocate, Some("n1")).await;
    assert_eq!(sorted(s.election_view("n1").unwrap()), (vec![d], vec![a, c]));
    move_app(&s, "a", Phase::Deallocate, Phase::Deallocated, Some("n1")).await;
    move_app(&s, "c", Phase::Elected, Phase::New, None).await;
    assert_eq!(sorted(s.election_view("n1").unwrap()), (vec![c, d], vec![]));
    s.execute(Command::PurgeApplication { uid: b }).await.unwrap().unwrap();
    assert_eq!(sorted(s.election_view("n2").unwrap()), (vec![c, d], vec![]));
    move_app(&s, "d", Phase::New, Phase::Elected, Some("n2")).await;
    s.close().await;
    drop(s);
    let s = Store::open(&path).await.unwrap();
    assert_eq!(sorted(s.election_view("n2").unwrap()), (vec![c], vec![d]));
    assert_eq!(sorted(s.election_view("n1").unwrap()), (vec![c], vec![]));
}
