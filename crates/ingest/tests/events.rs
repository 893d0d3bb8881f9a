//! Each series transition publishes exactly one event, in the same
//! transaction as the change: `new`, `complete` (with the mbox in slot order
//! and the base hints), `incomplete` after the deadline, `superseded` by a
//! re-roll in either arrival order; mail of lists no project claims is stored
//! and threaded but announces no series.

mod common;

use patchbay_ingest::incoming;

const LIST: &str = "dev.lists.example.org";

fn mail(id: &str, subject: &str, reply_to: Option<&str>, body: &str) -> Vec<u8> {
    let threading = reply_to.map(|r| format!("In-Reply-To: {r}\nReferences: {r}\n")).unwrap_or_default();
    format!(
        "From: Dev <dev@example.org>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nSubject: {subject}\nMessage-ID: {id}\n{threading}List-Id: Dev <{LIST}>\n\n{body}"
    )
    .into_bytes()
}

fn patch_body(file: &str) -> String {
    format!(
        "Change {file}.\n\nSigned-off-by: Dev <dev@example.org>\n---\ndiff --git a/{file} b/{file}\n--- a/{file}\n+++ b/{file}\n@@ -1 +1 @@\n-a\n+b\n-- \n2.43.0\n"
    )
}

fn count(ev: &[(String, serde_json::Value)], topic: &str) -> usize {
    ev.iter().filter(|(t, _)| t == topic).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_announced_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = common::scratch(dir.path(), &[LIST]);
    let t = 1_700_000_000;
    // v1: cover, then patch 2 before patch 1; a redelivery of patch 2 changes nothing.
    let cover = mail("<c1@x>", "[PATCH 0/2] the work", None, "Cover.\n\nbase-commit: 0123456789abcdef\n");
    let p2 = mail("<p2@x>", "[PATCH 2/2] second", Some("<c1@x>"), &patch_body("b"));
    let p1 = mail("<p1@x>", "[PATCH 1/2] first", Some("<c1@x>"), &patch_body("a"));
    for (i, m) in [cover, p2.clone(), p2, p1].into_iter().enumerate() {
        ingest.accept(vec![incoming(m, vec![], t + i as i64)]).await.unwrap();
    }
    let ev = common::events(&ingest).await;
    assert_eq!(count(&ev, "mail.message.received"), 3, "the redelivered copy is not stored again");
    assert_eq!(count(&ev, "series.series.new"), 1);
    assert_eq!(count(&ev, "series.series.complete"), 1);
    let complete = &ev.iter().find(|(t, _)| t == "series.series.complete").unwrap().1;
    assert_eq!(complete["series"]["project"], "test");
    assert_eq!(complete["series"]["name"], "the work");
    assert_eq!(complete["cover"], "<c1@x>");
    assert_eq!(complete["base_commit"], "0123456789abcdef");
    let mbox = complete["mbox"].as_str().unwrap();
    let first = mbox.find("Message-ID: <p1@x>").unwrap();
    let second = mbox.find("Message-ID: <p2@x>").unwrap();
    assert!(first < second, "the mbox is in slot order");
    assert_eq!(patchbay_mail::MboxReader::new(mbox.as_bytes()).count(), 2, "patches only, no cover");
    let slots: Vec<i64> = complete["patches"].as_array().unwrap().iter().map(|p| p["slot"].as_i64().unwrap()).collect();
    assert_eq!(slots, vec![1, 2]);

    // v2 in reply to v1's cover, same titles: v1 superseded exactly once.
    let c2 = mail("<c2@x>", "[PATCH v2 0/2] the work", Some("<c1@x>"), "Cover v2.\n");
    let q1 = mail("<q1@x>", "[PATCH v2 1/2] first", Some("<c2@x>"), &patch_body("a"));
    let q2 = mail("<q2@x>", "[PATCH v2 2/2] second", Some("<c2@x>"), &patch_body("b"));
    for (i, m) in [c2, q1, q2].into_iter().enumerate() {
        ingest.accept(vec![incoming(m, vec![], t + 100 + i as i64)]).await.unwrap();
    }
    let ev = common::events(&ingest).await;
    assert_eq!(count(&ev, "series.series.new"), 2);
    assert_eq!(count(&ev, "series.series.complete"), 2);
    assert_eq!(count(&ev, "series.series.superseded"), 1);
    let sup = &ev.iter().find(|(t, _)| t == "series.series.superseded").unwrap().1;
    assert_eq!(sup["series"]["version"], 1);
    assert_eq!(sup["by_version"], 2);

    // An incomplete v1 of something else: the deadline sweep announces it once.
    let lone = mail("<r1@x>", "[PATCH 1/3] other: start", None, &patch_body("c"));
    ingest.accept(vec![incoming(lone, vec![], t + 200)]).await.unwrap();
    assert_eq!(ingest.sweep(t + 200 + 10, 3600).await.unwrap(), 0, "not yet");
    assert_eq!(ingest.sweep(t + 200 + 7200, 3600).await.unwrap(), 1);
    assert_eq!(ingest.sweep(t + 200 + 9000, 3600).await.unwrap(), 0, "once");
    let ev = common::events(&ingest).await;
    let inc: Vec<_> = ev.iter().filter(|(t, _)| t == "series.series.incomplete").collect();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].1["missing"], serde_json::json!([2, 3]));

    // A late part completes it after all: announced as complete then.
    for (i, n) in [2, 3].into_iter().enumerate() {
        let m = mail(&format!("<r{n}@x>"), &format!("[PATCH {n}/3] other: more"), Some("<r1@x>"), &patch_body(&format!("r{n}")));
        ingest.accept(vec![incoming(m, vec![], t + 300 + i as i64)]).await.unwrap();
    }
    assert_eq!(count(&common::events(&ingest).await, "series.series.complete"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_completing_after_its_v2_is_superseded_not_announced() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = common::scratch(dir.path(), &[LIST]);
    let t = 1_700_000_000;
    let v2 = [
        mail("<c2@x>", "[PATCH v2 0/2] the work", Some("<c1@x>"), "Cover v2.\n"),
        mail("<q1@x>", "[PATCH v2 1/2] first", Some("<c2@x>"), &patch_body("a")),
        mail("<q2@x>", "[PATCH v2 2/2] second", Some("<c2@x>"), &patch_body("b")),
    ];
    let v1 = [
        mail("<c1@x>", "[PATCH 0/2] the work", None, "Cover.\n"),
        mail("<p1@x>", "[PATCH 1/2] first", Some("<c1@x>"), &patch_body("a")),
        mail("<p2@x>", "[PATCH 2/2] second", Some("<c1@x>"), &patch_body("b")),
    ];
    for (i, m) in v2.into_iter().chain(v1).enumerate() {
        ingest.accept(vec![incoming(m, vec![], t + i as i64)]).await.unwrap();
    }
    let ev = common::events(&ingest).await;
    assert_eq!(count(&ev, "series.series.complete"), 1, "only v2 is announced complete");
    assert_eq!(count(&ev, "series.series.superseded"), 1);
    let series = common::all_series(&ingest).await;
    let v1 = series.iter().find(|s| s.version == 1).unwrap();
    assert_eq!(v1.state, "superseded");
    assert_eq!(v1.patches.len(), 2, "v1's mails still land in v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_no_project_claims_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ingest = common::scratch(dir.path(), &["other.lists.example.org"]);
    let m = mail("<solo@x>", "[PATCH] fix", None, &patch_body("a"));
    ingest.accept(vec![incoming(m, vec![], 1_700_000_000)]).await.unwrap();
    let ev = common::events(&ingest).await;
    assert_eq!(count(&ev, "mail.message.received"), 1);
    assert_eq!(ev.iter().filter(|(t, _)| t.starts_with("series.")).count(), 0);
    // Stored and threaded all the same.
    let series = common::all_series(&ingest).await;
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].state, "complete");
    // `--list-id` at delivery makes a project claim it.
    let dir = tempfile::tempdir().unwrap();
    let ingest = common::scratch(dir.path(), &["pipe.example.org"]);
    let m = mail("<solo@x>", "[PATCH] fix", None, &patch_body("a"));
    ingest.accept(vec![incoming(m, vec!["pipe.example.org".into()], 1_700_000_000)]).await.unwrap();
    assert_eq!(count(&common::events(&ingest).await, "series.series.complete"), 1);
}
