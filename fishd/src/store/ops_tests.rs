//! Tests of the operations on the store: dry runs, applysets, backup and restore.
#![allow(clippy::unwrap_used)]

use api_types::{ApplyAction, ApplyResult};
use redb::ReadableDatabase;
use time::OffsetDateTime;

use super::backup::{self, BackupError};
use super::tests::{items, store};
use super::*;

fn label(name: &str, cpu: u32) -> String {
    format!(
        "kind: Label\nmetadata: {{name: {name}}}\nspec: {{definitions: [{{driver: test, resources: {{cpu: {cpu}, ram: 1}}}}]}}\n"
    )
}

fn set(name: &str, prune: bool, yaml: &str) -> Command {
    Command::ApplySet {
        set: name.into(),
        prune,
        items: items(yaml),
        owner: "admin".into(),
        now: OffsetDateTime::now_utc(),
    }
}

fn plain(yaml: &str) -> Command {
    Command::Apply { items: items(yaml), owner: "admin".into(), now: OffsetDateTime::now_utc() }
}

fn applied(o: Outcome) -> Vec<ApplyResult> {
    match o {
        Ok(Response::Applied(r)) => r,
        other => panic!("not applied: {other:?}"),
    }
}

fn label_names(s: &Store) -> Vec<String> {
    let mut v: Vec<String> = s.list_labels(None).unwrap().1.iter().map(|l| l.metadata.name_str().to_owned()).collect();
    v.dedup();
    v
}

#[tokio::test]
async fn a_dry_run_answers_like_an_apply_and_writes_nothing() {
    let (_d, s) = store().await;
    let (outcome, objects) = s.dry_run(plain(&label("l", 1))).await.unwrap();
    let r = applied(outcome);
    assert_eq!((r[0].action, r[0].version), (ApplyAction::Created, Some(1)));
    assert_eq!(objects[0]["metadata"]["version"], 1);
    assert_eq!(s.revision().unwrap(), 0, "nothing written");
    assert!(s.list_labels(None).unwrap().1.is_empty());

    applied(s.execute(plain(&label("l", 1))).await.unwrap());
    let rev = s.revision().unwrap();
    let (outcome, objects) = s.dry_run(plain(&label("l", 2))).await.unwrap();
    let r = applied(outcome);
    assert_eq!((r[0].action, r[0].version), (ApplyAction::Configured, Some(2)));
    assert_eq!(objects[0]["spec"]["definitions"][0]["resources"]["cpu"], 2);
    assert_eq!(s.revision().unwrap(), rev);
    assert_eq!(s.list_labels(Some("l")).unwrap().1.len(), 1);
    // Rejections are the same as a real apply's.
    let bad = "kind: Application\nmetadata: {name: a}\nspec: {label: missing}\n";
    assert!(matches!(s.dry_run(plain(bad)).await.unwrap().0, Err(Rejection::Invalid { .. })));
}

#[tokio::test]
async fn a_prune_deletes_only_members_that_left_the_set() {
    let (_d, s) = store().await;
    let both = format!("{}---\n{}", label("a", 1), label("b", 1));
    applied(s.execute(set("team", false, &both)).await.unwrap());
    applied(s.execute(plain(&label("outside", 1))).await.unwrap());
    applied(s.execute(set("other", false, &label("theirs", 1))).await.unwrap());

    // A dry run shows the prune and deletes nothing.
    let (outcome, objects) = s.dry_run(set("team", true, &label("a", 1))).await.unwrap();
    let r = applied(outcome);
    assert_eq!(r.last().map(|r| (r.name.as_str(), r.action)), Some(("b", ApplyAction::Pruned)));
    assert_eq!(objects.last(), Some(&serde_json::Value::Null));
    assert_eq!(label_names(&s), ["a", "b", "outside", "theirs"]);

    let r = applied(s.execute(set("team", true, &label("a", 1))).await.unwrap());
    let pruned: Vec<_> = r.iter().filter(|r| r.action == ApplyAction::Pruned).map(|r| r.name.as_str()).collect();
    assert_eq!(pruned, ["b"]);
    assert_eq!(label_names(&s), ["a", "outside", "theirs"]);
    // Pruned once: a second run prunes nothing.
    let r = applied(s.execute(set("team", true, &label("a", 1))).await.unwrap());
    assert!(r.iter().all(|r| r.action == ApplyAction::Unchanged), "{r:?}");
}

#[tokio::test]
async fn a_prune_never_deletes_the_user_applying_it() {
    let (_d, s) = store().await;
    let admin = "kind: User\nmetadata: {name: admin}\nspec: {roles: [admin]}\n";
    applied(s.execute(set("people", false, &format!("{admin}---\n{}", label("l", 1)))).await.unwrap());
    let outcome = s.execute(set("people", true, &label("l", 2))).await.unwrap();
    assert!(matches!(outcome, Err(Rejection::Conflict(ref m)) if m.contains("admin")), "{outcome:?}");
    assert_eq!(s.get_label("l", None).unwrap().unwrap().metadata.version, Some(1), "nothing of the apply kept");
    assert!(s.get_user("admin").unwrap().is_some());
}

#[tokio::test]
async fn a_backup_is_one_snapshot_and_restores_whole() {
    let (_d, s) = store().await;
    let people = "kind: User\nmetadata: {name: alice}\nspec: {roles: [user]}\n";
    let app = "kind: Application\nmetadata: {name: build-1}\nspec: {label: l}\n";
    applied(s.execute(set("git", false, &format!("{}---\n{people}---\n{app}", label("l", 1)))).await.unwrap());
    applied(s.execute(plain(&label("l", 2))).await.unwrap());
    let now = OffsetDateTime::now_utc();
    let join = |digest: &str, node: &str| Command::ConsumeJoinToken {
        digest: digest.into(),
        node: node.into(),
        key: "k".into(),
        now,
    };
    for digest in ["used", "fresh"] {
        let create = Command::CreateJoinToken {
            digest: digest.into(),
            expires_at: now + time::Duration::hours(1),
            created_by: "admin".into(),
            now,
        };
        s.execute(create).await.unwrap().unwrap();
    }
    s.execute(join("used", "node-b")).await.unwrap().unwrap();

    // The snapshot is taken, then writes go on: none of them is in the dump.
    let snapshot = s.db.begin_read().unwrap();
    applied(s.execute(plain(&label("later", 1))).await.unwrap());
    let mut buf = Vec::new();
    let sum = backup::dump(&snapshot, &mut buf).unwrap();
    assert_eq!((sum.labels, sum.applications, sum.users), (2, 1, 1));

    let target = tempfile::tempdir().unwrap();
    let dir = target.path().join("restored");
    let restored = backup::restore(&dir, buf.as_slice()).unwrap();
    assert_eq!(restored, Summary { ..sum.clone() });
    let r = Store::open(&dir.join("fish.redb")).await.unwrap();
    assert_eq!(r.revision().unwrap(), sum.revision);
    assert_eq!(label_names(&r), ["l"]);
    assert_eq!(r.list_labels(Some("l")).unwrap().1, s.list_labels(Some("l")).unwrap().1);
    let alice = s.get_user("alice").unwrap().unwrap();
    assert_eq!(r.user_by_token_digest(&alice.token_digest).unwrap(), Some(alice));
    let a = s.get_application("build-1").unwrap().unwrap();
    assert_eq!(r.get_application("build-1").unwrap(), Some(a.clone()));
    let uid = a.metadata.uid.unwrap();
    assert_eq!(r.application_label(uid).unwrap(), s.application_label(uid).unwrap());
    let f = AppFilter { phase: Some(api_types::Phase::New), ..Default::default() };
    assert_eq!(r.list_applications(&f).unwrap().1.len(), 1, "indexes restored");
    // The applyset came along: a prune in the restored store knows its members.
    let out = applied(r.execute(set("git", true, app)).await.unwrap());
    let pruned: Vec<_> = out.iter().filter(|x| x.action == ApplyAction::Pruned).map(|x| x.name.as_str()).collect();
    assert_eq!(pruned, ["l", "alice"]);
    // Join tokens came along: a used one stays used, an unused one still works once.
    assert!(matches!(r.execute(join("used", "node-c")).await.unwrap(), Err(Rejection::Conflict(_))));
    r.execute(join("fresh", "node-c")).await.unwrap().unwrap();
    assert!(matches!(r.execute(join("fresh", "node-d")).await.unwrap(), Err(Rejection::Conflict(_))));

    // Refuses a non-empty directory; a cut or altered file leaves nothing behind.
    assert!(matches!(backup::restore(&dir, buf.as_slice()), Err(BackupError::NotEmpty(_))));
    let cut = &buf[..buf.len() - 20];
    let dir2 = target.path().join("cut");
    assert!(backup::restore(&dir2, cut).is_err());
    assert!(!dir2.exists());
    let text = String::from_utf8(buf.clone()).unwrap().replace("build-1", "build-2");
    let e = backup::restore(&dir2, text.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert!(!dir2.exists());
}
