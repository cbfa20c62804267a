//! The core promise: a label and an application in, an allocated resource out,
//! and nothing lost or doubled across a crash.

use aquarium_e2e::{TestDaemon, eventually};

const LABEL: &str = "kind: Label\nmetadata: {name: small}\nspec:\n  definitions:\n    - driver: test\n      resources: {cpu: 1, ram: 1}\n";

fn app(name: &str, label: &str) -> String {
    format!("---\nkind: Application\nmetadata: {{name: {name}}}\nspec: {{label: {label}}}\n")
}

#[tokio::test]
async fn application_is_allocated_and_deallocated_seen_through_a_watch() {
    let d = TestDaemon::start("").await.unwrap();
    let mut watch = d.watch("/api/v1/applications?watch=true").await.unwrap();
    let (code, body) = d.apply(&format!("{LABEL}{}", app("build-1", "small"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["results"][0]["action"], "created");
    assert_eq!(body["results"][1]["action"], "created");

    let phase_of = |ev: &serde_json::Value, p: &str| {
        ev["object"]["status"]["phase"] == p && ev["object"]["metadata"]["name"] == "build-1"
    };
    let added = watch.until("ADDED build-1", |e| e["type"] == "ADDED").await.unwrap();
    assert_eq!(added["object"]["status"]["phase"], "NEW");
    let allocated = watch.until("ALLOCATED", |e| phase_of(e, "ALLOCATED")).await.unwrap();
    assert_eq!(allocated["object"]["status"]["node"], "test-node");
    assert!(allocated["object"]["status"]["resource"]["identifier"].is_string());

    let (code, _) = d.post("/api/v1/applications/build-1/deallocate", None).await.unwrap();
    assert_eq!(code, 202);
    let done = watch.until("DEALLOCATED", |e| phase_of(e, "DEALLOCATED")).await.unwrap();
    let phases: Vec<&str> =
        done["object"]["status"]["history"].as_array().unwrap().iter().map(|h| h["phase"].as_str().unwrap()).collect();
    assert_eq!(phases, ["NEW", "ELECTED", "ALLOCATED", "DEALLOCATE", "DEALLOCATED"]);
    // Deallocating again is idempotent.
    assert_eq!(d.post("/api/v1/applications/build-1/deallocate", None).await.unwrap().0, 202);
}

#[tokio::test]
async fn application_for_a_missing_label_is_refused() {
    let d = TestDaemon::start("").await.unwrap();
    let (code, body) = d.apply(&app("orphan", "nope")).await.unwrap();
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["details"][0]["field"], "spec.label");
}

#[tokio::test]
async fn kill9_mid_allocation_resumes_without_allocating_twice() {
    let mut d = TestDaemon::start("").await.unwrap();
    let slow = LABEL
        .replace("name: small", "name: slow")
        .replace("{cpu: 1, ram: 1}", "{cpu: 1, ram: 1}\n      options: {allocateDelay: 2s}");
    let (code, body) = d.apply(&format!("{slow}{}", app("crash-1", "slow"))).await.unwrap();
    assert_eq!(code, 200, "{body}");
    d.wait_phase("crash-1", "ELECTED").await.unwrap();
    d.kill9();
    d.start_again().await.unwrap();
    let app = d.wait_phase("crash-1", "ALLOCATED").await.unwrap();
    // What ran: the test driver journals every resource it creates; one for this uid.
    let uid = app["metadata"]["uid"].as_str().unwrap();
    let journal = std::fs::read_to_string(d.data_dir().join("test/test/journal.log")).unwrap();
    let created = journal.lines().filter(|l| *l == format!("allocated {uid}")).count();
    assert_eq!(created, 1, "{journal}");
    let elected = app["status"]["history"].as_array().unwrap().iter().filter(|h| h["phase"] == "ELECTED").count();
    assert_eq!(elected, 1, "{:#}", app["status"]["history"]);
}

#[tokio::test]
async fn acknowledged_objects_survive_kill9() {
    let mut d = TestDaemon::start("").await.unwrap();
    let mut yaml = LABEL.to_string();
    for i in 0..20 {
        yaml.push_str(&app(&format!("keep-{i}"), "small"));
    }
    assert_eq!(d.apply(&yaml).await.unwrap().0, 200);
    d.kill9();
    d.start_again().await.unwrap();
    let (code, list) = d.get("/api/v1/applications").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 20);
    for i in 0..20 {
        d.wait_phase(&format!("keep-{i}"), "ALLOCATED").await.unwrap();
    }
    eventually("a node object", || async {
        d.get("/api/v1/nodes/test-node").await.map(|(c, _)| c == 200).unwrap_or(false)
    })
    .await
    .unwrap();
}
