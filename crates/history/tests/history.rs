//! History on a real embedded store: messages published through the bus are
//! indexed, found by every filter, come back byte for byte and still verify,
//! and a sender's range replays in sequence order.

use std::sync::Arc;

use patchbay_bus::{Bus, Outgoing, Sealer, SigningKey, TrustPolicy};
use patchbay_history::{Indexer, page_json, search};
use patchbay_model::Envelope;
use patchbay_store::EmbeddedBus;

mod common;
use common::{messages, out, q};

fn envelopes(page: &patchbay_history::Page) -> Vec<Envelope> {
    page.messages.iter().map(|m| Envelope::from_wire(m).unwrap()).collect()
}

#[tokio::test]
async fn every_filter_finds_what_it_should_and_messages_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::generate("test").unwrap());
    let bus = EmbeddedBus::open(dir.path(), Sealer::new(Some(key.clone()))).unwrap();
    let batch = messages();
    bus.publish(batch).await.unwrap();
    let indexer = Indexer::new(bus.db().clone());
    assert_eq!(indexer.catch_up().await.unwrap(), 122);
    assert_eq!(indexer.catch_up().await.unwrap(), 0, "nothing indexed twice");
    let find = |pairs: &'static [(&'static str, &'static str)]| {
        let bus = bus.clone();
        async move {
            let query = q(pairs);
            bus.db().read(move |c| search(c, &query)).await.unwrap()
        }
    };

    assert_eq!(find(&[]).await.total, 122);
    assert_eq!(find(&[("category", "ci")]).await.total, 61);
    assert_eq!(find(&[("not_category", "ci")]).await.total, 61);
    assert_eq!(find(&[("topic", "pb.dev.mail.message.received")]).await.total, 60);
    assert_eq!(find(&[("topic", "pb.*.ci.test.#")]).await.total, 60);
    assert_eq!(find(&[("topic", "*.dev.#")]).await.total, 122);
    assert_eq!(find(&[("not_topic", "pb.dev.ci.#")]).await.total, 61);
    assert_eq!(find(&[("series", "3")]).await.total, 6);
    assert_eq!(find(&[("series", "3"), ("series", "4")]).await.total, 12);
    assert_eq!(find(&[("project", "qemu")]).await.total, 30);
    assert_eq!(find(&[("not_project", "qemu")]).await.total, 92, "messages without a project are not qemu's");
    assert_eq!(find(&[("sender", "runner:r1")]).await.total, 20);
    assert_eq!(find(&[("sender", "runner")]).await.total, 60);
    assert_eq!(find(&[("not_sender", "runner:r2")]).await.total, 82);
    assert_eq!(find(&[("contains", "line"), ("project", "qemu")]).await.total, 30, "the body that spells qemu's token is not qemu's");
    assert_eq!(find(&[("contains", "zzp71656d75")]).await.total, 1, "yet its words are searchable");
    assert_eq!(find(&[("job", "12-v1-build-x86_64")]).await.total, 1);
    assert_eq!(find(&[("job", "12-v1-build-x86_64"), ("category", "mail")]).await.total, 0);
    assert_eq!(find(&[("contains", "FAILED")]).await.total, 1);
    assert_eq!(find(&[("contains", "mail 42")]).await.total, 1, "a phrase");
    assert_eq!(find(&[("contains", "mail"), ("contains", "PATCH")]).await.total, 60);
    assert_eq!(find(&[("category", "ci"), ("project", "linux"), ("sender", "runner:r1")]).await.total, 10);
    // Text with every other filter: answered inside the full-text index.
    assert_eq!(find(&[("contains", "log line"), ("category", "ci"), ("project", "qemu")]).await.total, 30);
    assert_eq!(find(&[("contains", "line"), ("not_sender", "runner:r1")]).await.total, 41);
    assert_eq!(find(&[("contains", "line"), ("topic", "pb.*.ci.#"), ("series", "3")]).await.total, 6);
    assert_eq!(find(&[("contains", "line"), ("topic", "nothing.like.this.#")]).await.total, 0);
    assert_eq!(find(&[("contains", "PATCH"), ("not_topic", "pb.dev.mail.#")]).await.total, 0);
    assert_eq!(find(&[("contains", "line"), ("end", "1000")]).await.total, 0);
    assert_eq!(find(&[("contains", "line"), ("delta", "3600")]).await.total, 61);
    let page = find(&[("contains", "line 1"), ("rows_per_page", "100")]).await;
    assert_eq!(page.total, 1);
    assert_eq!(envelopes(&page)[0].body["excerpt"], "log line 1");
    assert_eq!(find(&[("delta", "3600")]).await.total, 122);
    assert_eq!(find(&[("end", "1000")]).await.total, 0);

    // Paging, newest first by default.
    let p1 = find(&[("category", "mail"), ("rows_per_page", "25")]).await;
    let p3 = find(&[("category", "mail"), ("rows_per_page", "25"), ("page", "3")]).await;
    assert_eq!((p1.messages.len(), p3.messages.len()), (25, 10));
    // Newest first by default, in store order (the time kept is monotone in it).
    let desc = envelopes(&find(&[("category", "mail"), ("rows_per_page", "100")]).await);
    let mut asc = envelopes(&find(&[("category", "mail"), ("rows_per_page", "100"), ("order", "asc")]).await);
    assert_eq!(desc[0].body["subject"], "[PATCH] mail 59");
    asc.reverse();
    assert_eq!(asc.iter().map(|e| e.id).collect::<Vec<_>>(), desc.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(envelopes(&p1)[0].id, desc[0].id);

    // Byte for byte, and the signature still verifies.
    let mut policy = TrustPolicy::new(true);
    policy.trust(key.public());
    policy.allow("test", vec![patchbay_bus::TopicPattern::parse("#").unwrap()]);
    let all = find(&[("rows_per_page", "100")]).await;
    for m in &all.messages {
        let env = Envelope::from_wire(m).unwrap();
        policy.check(&env).expect("a message from history verifies");
        let id = env.id.to_string();
        let stored = bus.db().read(move |c| patchbay_history::message(c, &id)).await.unwrap().unwrap();
        assert_eq!(&stored, m);
    }
    // The check is real: a changed body does not verify.
    let mut tampered = Envelope::from_wire(&all.messages[0]).unwrap();
    tampered.body["tampered"] = serde_json::json!(true);
    assert!(policy.check(&tampered).is_err());
    let json: serde_json::Value = serde_json::from_str(&page_json(&q(&[("rows_per_page", "100")]), &all)).unwrap();
    assert_eq!(
        (json["total"].as_u64(), json["pages"].as_u64(), json["messages"].as_array().map(Vec::len)),
        (Some(122), Some(2), Some(100))
    );
}

#[tokio::test]
async fn a_senders_range_replays_in_sequence_order() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::new(None)).unwrap();
    for i in 0..30 {
        bus.publish(vec![out("dispatcher", "main", "pb.dev.ci.job.build.x86_64.queued", serde_json::json!({"n": i}))]).await.unwrap();
        bus.publish(vec![out("other", "main", "pb.dev.ci.job.build.x86_64.queued", serde_json::json!({"n": i}))]).await.unwrap();
    }
    Indexer::new(bus.db().clone()).catch_up().await.unwrap();
    let all = bus.db().read(|c| search(c, &q(&[("sender", "dispatcher:main"), ("order", "asc"), ("rows_per_page", "100")]))).await.unwrap();
    let seqs: Vec<u64> = envelopes(&all).iter().map(|e| e.seq).collect();
    let (from, to) = (seqs[9], seqs[19]);
    let query = q(&[("sender", "dispatcher:main"), ("seq_from", &from.to_string()), ("seq_to", &to.to_string()), ("order", "asc")]);
    // The strings above must live as long as the query; it owns its values.
    let page = bus.db().read(move |c| search(c, &query)).await.unwrap();
    let got: Vec<u64> = envelopes(&page).iter().map(|e| e.seq).collect();
    assert_eq!(got, seqs[9..=19].to_vec());
    assert!(envelopes(&page).iter().all(|e| e.sender.service == "dispatcher"));
}

/// An indexer with nothing to do writes nothing: its own commits would wake it again and it
/// would spin (it did: 150% CPU on an idle `serve`).
#[tokio::test]
async fn an_idle_indexer_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::new(None)).unwrap();
    bus.publish(vec![out("a", "1", "pb.dev.mail.message.received", serde_json::json!({}))]).await.unwrap();
    let commits = bus.db().commits();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(Indexer::new(bus.db().clone()).run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let settled = *commits.borrow();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(*commits.borrow(), settled, "commits while idle");
    let _ = stop_tx.send(true);
    run.await.unwrap();
    let indexed = bus.db().read(|c| Ok(c.query_row("SELECT count(*) FROM history", [], |r| r.get::<_, i64>(0))?)).await.unwrap();
    assert_eq!(indexed, 1);
}

/// `history.keep_days`: what is older than the cutoff leaves the log, the history and the
/// full-text index together, except a message still waiting in a queue; the rest stays
/// searchable, nothing is indexed twice afterwards, and new messages are indexed as before.
#[tokio::test]
async fn pruning_drops_old_messages_but_never_one_still_queued() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    // A queue nobody reads, bound to one old message's topic: that message must stay.
    let _held = bus
        .subscribe(patchbay_bus::QueueSpec::new("held", vec![patchbay_bus::TopicPattern::parse("pb.dev.held.#").unwrap()]))
        .await
        .unwrap();
    let sealer = Sealer::default();
    let ten_days_ago = patchbay_model::Timestamp::from_micros(patchbay_model::Timestamp::now().as_micros() - 10 * 86_400 * 1_000_000);
    let mut old = Vec::new();
    for i in 0..10u64 {
        let topic = if i == 3 { "pb.dev.held.thing.said" } else { "pb.dev.old.thing.said" };
        let mut env = sealer.seal(out("shell", "x", topic, serde_json::json!({"note": format!("ancient words {i}")})), i + 1);
        env.sent_at = ten_days_ago;
        old.push(env);
    }
    bus.publish_sealed(old).await.unwrap();
    let recent: Vec<Outgoing> =
        (0..5).map(|i| out("shell", "y", "pb.dev.new.thing.said", serde_json::json!({"note": format!("fresh words {i}")}))).collect();
    bus.publish(recent).await.unwrap();
    let indexer = Indexer::new(bus.db().clone());
    assert_eq!(indexer.catch_up().await.unwrap(), 15);

    // A reader that must see every message (the RabbitMQ relay) has got to position 7 of 15.
    let mark = |pos: i64| {
        bus.db().write(move |tx| {
            tx.execute(
                "INSERT INTO bus_meta (key, value) VALUES ('test_relay_pos', ?1) ON CONFLICT (key) DO UPDATE SET value = ?1",
                [pos],
            )?;
            Ok(())
        })
    };
    mark(7).await.unwrap();
    let keep = std::time::Duration::from_secs(2 * 86_400);
    assert_eq!(patchbay_history::prune(bus.db(), keep).await.unwrap(), 6, "old messages 1-7, but 4 is still queued");
    mark(15).await.unwrap();
    assert_eq!(patchbay_history::prune(bus.db(), keep).await.unwrap(), 3, "8-10, once the reader has passed them");
    assert_eq!(patchbay_history::prune(bus.db(), keep).await.unwrap(), 0);
    let count = |sql: &'static str| bus.db().read(move |c| Ok(c.query_row(sql, [], |r| r.get::<_, i64>(0))?));
    assert_eq!(count("SELECT count(*) FROM bus_messages").await.unwrap(), 6);
    assert_eq!(count("SELECT count(*) FROM history").await.unwrap(), 6);
    let find = |pairs: &'static [(&'static str, &'static str)]| {
        let bus = bus.clone();
        async move {
            let query = q(pairs);
            bus.db().read(move |c| search(c, &query)).await.unwrap()
        }
    };
    let indexed_text = count("SELECT count(*) FROM history_text WHERE history_text MATCH 'ancient'").await.unwrap();
    assert_eq!(indexed_text, 1, "the full-text rows went with the messages");
    let ancient = find(&[("contains", "ancient")]).await;
    assert_eq!(ancient.total, 1, "only the queued one is left to find");
    assert_eq!(envelopes(&ancient)[0].body["note"], "ancient words 3");
    assert_eq!(find(&[("contains", "fresh")]).await.total, 5);
    assert_eq!(indexer.catch_up().await.unwrap(), 0, "nothing indexed again after pruning");
    bus.publish(vec![out("shell", "y", "pb.dev.new.thing.said", serde_json::json!({"note": "later"}))]).await.unwrap();
    assert_eq!(indexer.catch_up().await.unwrap(), 1);

    // A total by topics alone is a sum of the topics' counts, kept by indexing and pruning: it
    // agrees with counting the rows.
    let drift = "SELECT count(*) FROM history_topics t WHERE n != (SELECT count(*) FROM history h WHERE h.topic = t.topic)";
    assert_eq!(count(drift).await.unwrap(), 0);
    assert_eq!(find(&[]).await.total, 7);
    assert_eq!(find(&[("topic", "pb.dev.#")]).await.total, 7);
    assert_eq!(find(&[("topic", "pb.dev.new.thing.said")]).await.total, 6);
    assert_eq!(find(&[("not_topic", "pb.dev.new.#")]).await.total, 1, "the queued old one");
    assert_eq!(find(&[("topic", "pb.dev.old.#")]).await.total, 0, "a topic whose messages all went");
    assert_eq!(find(&[("topic", "pb.dev.none.#")]).await.total, 0, "a pattern no topic matches");
}
