//! Issue 15's global identity: a series' public id is derived from its mails, so two stores
//! that saw the same mails, in any order, name every series alike; and a store from before
//! public ids keeps the numbers its old series were announced under.

mod common;

use patchbay_ingest::incoming;

const LIST: &str = "dev.lists.example.org";
const T: i64 = 1_700_000_000;

fn mail(id: &str, minute: u32, subject: &str, reply_to: &[&str], body: &str) -> Vec<u8> {
    let threading = match reply_to.last() {
        Some(parent) => format!("In-Reply-To: {parent}\nReferences: {}\n", reply_to.join(" ")),
        None => String::new(),
    };
    format!(
        "From: Dev <dev@example.org>\nDate: Mon, 1 Jan 2024 10:{minute:02}:00 +0000\nSubject: {subject}\nMessage-ID: {id}\n{threading}List-Id: Dev <{LIST}>\n\n{body}"
    )
    .into_bytes()
}

fn patch(file: &str) -> String {
    format!("Change {file}.\n\n---\ndiff --git a/{file} b/{file}\n--- a/{file}\n+++ b/{file}\n@@ -1 +1 @@\n-a\n+b\n-- \n2.43.0\n")
}

/// Postings of several shapes: threaded under a cover, deep-threaded, unthreaded, a v2 in
/// reply to v1's cover, and a RESEND of one patch in reply to itself.
fn postings() -> Vec<Vec<u8>> {
    vec![
        mail("<a0@x>", 0, "[PATCH 0/2] foo: thing", &[], "Cover.\n"),
        mail("<a1@x>", 0, "[PATCH 1/2] foo: one", &["<a0@x>"], &patch("a1")),
        mail("<a2@x>", 0, "[PATCH 2/2] foo: two", &["<a0@x>"], &patch("a2")),
        mail("<b0@x>", 30, "[PATCH v2 0/2] foo: thing", &["<a0@x>"], "Cover v2.\n"),
        mail("<b1@x>", 30, "[PATCH v2 1/2] foo: one", &["<a0@x>", "<b0@x>"], &patch("b1")),
        mail("<b2@x>", 30, "[PATCH v2 2/2] foo: two", &["<a0@x>", "<b0@x>"], &patch("b2")),
        mail("<c1@x>", 5, "[PATCH 1/3] bar: one", &[], &patch("c1")),
        mail("<c2@x>", 5, "[PATCH 2/3] bar: two", &["<c1@x>"], &patch("c2")),
        mail("<c3@x>", 5, "[PATCH 3/3] bar: three", &["<c1@x>", "<c2@x>"], &patch("c3")),
        mail("<d1@x>", 10, "[PATCH 1/2] baz: one", &[], &patch("d1")),
        mail("<d2@x>", 10, "[PATCH 2/2] baz: two", &[], &patch("d2")),
        mail("<e1@x>", 12, "[PATCH] qux: fix", &[], &patch("e1")),
        mail("<f1@x>", 50, "[PATCH RESEND] qux: fix", &["<e1@x>"], &patch("f1")),
    ]
}

/// Every series' patch Message-IDs and its public id, as the store holds them.
async fn named(ingest: &patchbay_ingest::Ingest) -> Vec<(Vec<String>, i64)> {
    let mut out: Vec<(Vec<String>, i64)> =
        common::all_series(ingest).await.into_iter().map(|s| (s.patches.into_iter().map(|p| p.1).collect(), s.id)).collect();
    out.sort();
    out
}

/// Each complete series' patch Message-IDs and the id its `complete` event carried.
async fn completed(ingest: &patchbay_ingest::Ingest) -> Vec<(Vec<String>, i64)> {
    let mut out: Vec<(Vec<String>, i64)> = common::events(ingest)
        .await
        .into_iter()
        .filter(|(t, _)| t == "series.series.complete")
        .map(|(_, b)| {
            let ids = b["patches"].as_array().unwrap().iter().map(|p| p["message_id"].as_str().unwrap().to_string()).collect();
            (ids, b["series"]["id"].as_i64().unwrap())
        })
        .collect();
    out.sort();
    out
}

async fn deliver(ingest: &patchbay_ingest::Ingest, mails: impl IntoIterator<Item = Vec<u8>>) {
    for (i, m) in mails.into_iter().enumerate() {
        ingest.accept(vec![incoming(m, vec![], T + i as i64)]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_fed_the_same_mails_in_other_orders_name_every_series_alike() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (common::scratch(da.path(), &[LIST]), common::scratch(db.path(), &[LIST]));
    let mails = postings();
    deliver(&a, mails.clone()).await;
    // The other store: reversed, then a different interleaving of the last few.
    let mut other: Vec<Vec<u8>> = mails.iter().rev().cloned().collect();
    other.swap(0, 5);
    other.swap(2, 9);
    deliver(&b, other).await;

    let (ca, cb) = (named(&a).await, named(&b).await);
    assert_eq!(ca.len(), 6, "v1, v2, the deep, the unthreaded, the patch and its RESEND: {ca:#?}");
    assert_eq!(ca, cb, "the same series under the same ids in both stores");
    // What was announced complete (v1 only where it came before v2) carries those ids.
    for c in completed(&a).await.into_iter().chain(completed(&b).await) {
        assert!(ca.contains(&c), "{c:?}");
    }
    let mut distinct: Vec<i64> = ca.iter().map(|c| c.1).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), ca.len(), "every series its own id (the RESEND too): {ca:#?}");
    for (patches, id) in &ca {
        assert!(*id >= 1 << 52, "{id}");
        // The read port answers to the public id, in both stores alike.
        let (ra, rb) = (a.series_store().series(*id).await.unwrap(), b.series_store().series(*id).await.unwrap());
        assert_eq!(ra.as_ref().map(|r| (r.id, r.version, r.total)), rb.as_ref().map(|r| (r.id, r.version, r.total)));
        assert_eq!(ra.unwrap().id, *id);
        let got: Vec<String> =
            a.series_store().patches(*id).await.unwrap().into_iter().filter(|p| p.slot > 0).map(|p| p.message_id).collect();
        assert_eq!(&got, patches);
        assert_eq!(a.series_store().mbox(*id).await.unwrap(), b.series_store().mbox(*id).await.unwrap());
    }
    // The v2 names v1 by its public id, in both stores.
    let sup = |ev: Vec<(String, serde_json::Value)>| {
        ev.into_iter()
            .filter(|(t, b)| t == "series.series.complete" && b["series"]["version"] == 2)
            .map(|(_, b)| b["supersedes"].as_i64())
            .collect::<Vec<_>>()
    };
    let v1 = ca.iter().find(|c| c.0[0] == "<a1@x>").unwrap().1;
    assert_eq!(sup(common::events(&a).await), vec![Some(v1)]);
    // In the reversed store v1 completes after v2 and is superseded at once, naming v2; the
    // RESEND replaces the patch it re-posts.
    let id_of = |first: &str| ca.iter().find(|c| c.0[0] == first).unwrap().1;
    let mut by: Vec<i64> = common::events(&b)
        .await
        .into_iter()
        .filter(|(t, _)| t == "series.series.superseded")
        .map(|(_, b)| b["by"].as_i64().unwrap())
        .collect();
    by.sort();
    let mut want = vec![id_of("<b1@x>"), id_of("<f1@x>")];
    want.sort();
    assert_eq!(by, want);
    // A mail's announcement names its series by the public id too.
    let received: Vec<i64> = common::events(&a)
        .await
        .into_iter()
        .filter(|(t, b)| t == "mail.message.received" && b["message_id"] == "<c3@x>")
        .map(|(_, b)| b["series"].as_i64().unwrap())
        .collect();
    assert_eq!(received, vec![ca.iter().find(|c| c.0[0] == "<c1@x>").unwrap().1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_before_public_ids_keeps_old_numbers_and_names_new_series_by_their_mails() {
    let dir = tempfile::tempdir().unwrap();
    let old = common::scratch(dir.path(), &[LIST]);
    let mails = postings();
    // v1 complete; its v2 and the deep-threaded series each missing their last patch.
    deliver(&old, [0, 1, 2, 3, 4, 6, 7].map(|i| mails[i].clone())).await;
    // As migration 10 leaves a store: every series under its local number, no key, and mails
    // stored without their thread root.
    old.embedded()
        .unwrap()
        .db()
        .write(|tx| {
            tx.execute_batch("UPDATE series SET uid = id, uid_key = NULL; UPDATE mails SET hints = json_remove(hints, '$.root');")?;
            Ok(())
        })
        .await
        .unwrap();
    let v1 = old.series_store().list(Default::default(), 1, 50).await.unwrap().0;
    let v1 = v1.iter().find(|s| s.name == "foo: thing" && s.version == 1).unwrap().id;
    // The v2's lowest patch was stored before: its root is read from the mail itself.
    deliver(&old, [5, 8].map(|i| mails[i].clone())).await;

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = common::scratch(fresh_dir.path(), &[LIST]);
    deliver(&fresh, mails[..9].iter().cloned()).await;
    let id_of = |c: &[(Vec<String>, i64)], first: &str| c.iter().find(|c| c.0[0] == first).unwrap().1;
    let (o, f) = (completed(&old).await, completed(&fresh).await);
    for first in ["<b1@x>", "<c1@x>"] {
        assert_eq!(id_of(&o, first), id_of(&f, first), "{first}: a series completing after the upgrade gets its derived id");
    }
    // The v2 names v1 by the number v1 was announced under.
    let sup: Vec<_> = common::events(&old)
        .await
        .into_iter()
        .filter(|(t, b)| t == "series.series.complete" && b["series"]["version"] == 2)
        .map(|(_, b)| b["supersedes"].as_i64())
        .collect();
    assert_eq!(sup, vec![Some(v1)]);
    // The old series is still found under the number its jobs and reports carry.
    let row = old.series_store().series(v1).await.unwrap().unwrap();
    assert_eq!((row.id, row.state.as_str()), (v1, "superseded"));
    assert_eq!(old.series_store().patches(v1).await.unwrap().len(), 3);
    assert_eq!(old.series_store().versions(v1).await.unwrap(), vec![(v1, 1), (id_of(&o, "<b1@x>"), 2)]);
}
