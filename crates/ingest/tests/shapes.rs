//! The shapes real lists post that issue 16 names, one regression test each: series built
//! from mails made here, checked for members, slots, version, state and events.

mod common;

use patchbay_bus::MessageLog;
use patchbay_ingest::{Ingest, incoming};

const LIST: &str = "dev.lists.example.org";
const T: i64 = 1_700_000_000;

/// One mail: `from`, a Date `minute` minutes after 10:00, threading to `reply_to` (nearest last).
fn mail_from(from: &str, minute: u32, id: &str, subject: &str, reply_to: &[&str], body: &str) -> Vec<u8> {
    let threading = match reply_to.last() {
        Some(parent) => format!("In-Reply-To: {parent}\nReferences: {}\n", reply_to.join(" ")),
        None => String::new(),
    };
    format!(
        "From: Dev <{from}>\nDate: Mon, 1 Jan 2024 10:{minute:02}:00 +0000\nSubject: {subject}\nMessage-ID: {id}\n{threading}List-Id: Dev <{LIST}>\n\n{body}"
    )
    .into_bytes()
}

fn mail(id: &str, subject: &str, reply_to: &[&str], body: &str) -> Vec<u8> {
    mail_from("dev@example.org", 0, id, subject, reply_to, body)
}

fn patch_body(file: &str) -> String {
    format!(
        "Change {file}.\n\nSigned-off-by: Dev <dev@example.org>\n---\ndiff --git a/{file} b/{file}\n--- a/{file}\n+++ b/{file}\n@@ -1 +1 @@\n-a\n+b\n-- \n2.43.0\n"
    )
}

async fn deliver(ingest: &Ingest, mails: Vec<Vec<u8>>) {
    for (i, m) in mails.into_iter().enumerate() {
        ingest.accept(vec![incoming(m, vec![], T + i as i64)]).await.unwrap();
    }
}

/// Every published message as (topic suffix, body).
async fn events(ingest: &Ingest) -> Vec<(String, serde_json::Value)> {
    let bus = ingest.bus().clone();
    let (mut out, mut after) = (Vec::new(), 0);
    loop {
        let batch = bus.read_after(after, 1000).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        for e in batch {
            after = e.position;
            let env = patchbay_model::Envelope::from_wire(&e.wire).unwrap();
            out.push((env.topic.as_str().trim_start_matches("pbtest.ingest.").to_string(), env.body));
        }
    }
}

fn count(ev: &[(String, serde_json::Value)], topic: &str) -> usize {
    ev.iter().filter(|(t, _)| t == topic).count()
}

/// (cover, patch ids in slot order, version, state) of every series holding a mail.
async fn shape(ingest: &Ingest) -> Vec<(Option<String>, Vec<String>, u32, String)> {
    common::all_series(ingest)
        .await
        .into_iter()
        .filter(|s| s.cover.is_some() || !s.patches.is_empty())
        .map(|s| (s.cover, s.patches.into_iter().map(|(_, id)| id).collect(), s.version, s.state))
        .collect()
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A range-diff as `git format-patch --range-diff` writes it into the cover letter.
const COVER_WITH_DIFF: &str = "This reworks foo.\n\nRange-diff against v1:\n1:  1234567 ! 1:  89abcde foo: one\n    @@ foo.c\n\nConflict walkthrough:\n\ndiff --git a/foo.c b/foo.c\n--- a/foo.c\n+++ b/foo.c\n@@ -1 +1 @@\n-x\n+y\n-- \n2.43.0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape2_a_cover_with_a_diff_is_the_cover_in_any_order() {
    let cover = || mail("<c@x>", "[PATCH v2 0/2] foo: rework", &[], COVER_WITH_DIFF);
    let p1 = || mail("<p1@x>", "[PATCH v2 1/2] foo: one", &["<c@x>"], &patch_body("a"));
    let p2 = || mail("<p2@x>", "[PATCH v2 2/2] foo: two", &["<c@x>"], &patch_body("b"));
    for (n, order) in [vec![cover(), p1(), p2()], vec![p2(), cover(), p1()], vec![p1(), p2(), cover()]].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let ingest = common::scratch(dir.path(), &[LIST]);
        deliver(&ingest, order).await;
        assert_eq!(shape(&ingest).await, vec![(Some("<c@x>".into()), ids(&["<p1@x>", "<p2@x>"]), 2, "complete".into())]);
        assert_eq!(common::kinds(&ingest).await.get("cover"), Some(&1));
        let ev = events(&ingest).await;
        assert_eq!(count(&ev, "series.series.complete"), 1);
        let complete = &ev.iter().find(|(t, _)| t == "series.series.complete").unwrap().1;
        if n < 2 {
            assert_eq!(complete["cover"], "<c@x>", "the cover arrived before completion");
        }
        assert_eq!(complete["patches"].as_array().unwrap().len(), 2, "the cover's diff is not tested as a patch");
    }
}
