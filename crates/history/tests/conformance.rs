//! The history port answers alike on both stores: the same messages kept in the embedded
//! SQLite store (published, then indexed) and in PostgreSQL (recorded as the RabbitMQ recorder
//! does), then every filter asked of both. Totals, pages and their order must be equal, and
//! equal to what the filters mean. Needs a real PostgreSQL (`PATCHBAY_TEST_PG_URL`, which
//! `scripts/test` sets); fails, never skips, without one.

use std::sync::Arc;

use patchbay_bus::{Bus, MessageLog, Sealer};
use patchbay_history::{HistoryStore, Indexer};
use patchbay_model::Envelope;
use patchbay_store::EmbeddedBus;
use patchbay_store_pg::PgStore;

mod common;
use common::{messages, q};

/// (query, total it must find)
const CASES: &[(&[(&str, &str)], u64)] = &[
    (&[], 123),
    (&[("category", "ci")], 61),
    (&[("not_category", "ci")], 62),
    (&[("topic", "pb.dev.mail.message.received")], 60),
    (&[("topic", "pb.*.ci.test.#")], 60),
    (&[("topic", "*.dev.#")], 123),
    (&[("topic", "nothing.like.this.#")], 0),
    (&[("not_topic", "pb.dev.ci.#")], 62),
    (&[("series", "3")], 6),
    (&[("series", "3"), ("series", "4")], 12),
    (&[("not_series", "3")], 117),
    (&[("project", "qemu")], 30),
    (&[("not_project", "qemu")], 93),
    (&[("sender", "runner:r1")], 20),
    (&[("sender", "runner")], 60),
    (&[("not_sender", "runner:r2")], 83),
    (&[("contains", "line"), ("project", "qemu")], 30),
    (&[("contains", "zzp71656d75")], 1),
    (&[("job", "12-v1-build-x86_64")], 1),
    (&[("job", "12-v1-build-x86_64"), ("category", "mail")], 0),
    (&[("contains", "FAILED")], 1),
    (&[("contains", "mail 42")], 1),
    (&[("contains", "mail"), ("contains", "PATCH")], 60),
    (&[("category", "ci"), ("project", "linux"), ("sender", "runner:r1")], 10),
    (&[("contains", "log line"), ("category", "ci"), ("project", "qemu")], 30),
    (&[("contains", "line"), ("not_sender", "runner:r1")], 41),
    (&[("contains", "line"), ("topic", "pb.*.ci.#"), ("series", "3")], 6),
    (&[("contains", "PATCH"), ("not_topic", "pb.dev.mail.#")], 0),
    (&[("contains", "line"), ("end", "1000")], 0),
    (&[("contains", "line"), ("delta", "3600")], 61),
    (&[("contains", "line 1"), ("rows_per_page", "100")], 1),
    // Words as FTS5's unicode61 splits them: inside a path, a file name and an address, and
    // after a NUL (which PostgreSQL's TEXT cannot hold).
    (&[("contains", "foo")], 1),
    (&[("contains", "drivers net")], 1),
    (&[("contains", "example org")], 1),
    (&[("contains", "Maintainer")], 1),
    (&[("contains", "after nul")], 1),
    (&[("delta", "3600")], 123),
    (&[("end", "1000")], 0),
    (&[("category", "mail"), ("rows_per_page", "25")], 60),
    (&[("category", "mail"), ("rows_per_page", "25"), ("page", "3")], 60),
    (&[("category", "mail"), ("rows_per_page", "100"), ("order", "asc")], 60),
    (&[("rows_per_page", "100")], 123),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_stores_answer_every_filter_alike() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    let mut batch = messages();
    batch.push(common::out(
        "shell",
        "y",
        "pb.dev.other.build.said",
        serde_json::json!({"note": "compiling drivers/net/foo.c for dev@example.org; Maintainer\u{0}after NUL"}),
    ));
    bus.publish(batch).await.unwrap();
    Indexer::new(bus.db().clone()).catch_up().await.unwrap();
    let sqlite: Arc<dyn HistoryStore> = Arc::new(bus.db().clone());

    let admin = std::env::var("PATCHBAY_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let url = patchbay_store_pg::testing::scratch_database(&admin)
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL at {admin} ({e}); run scripts/test, or set PATCHBAY_TEST_PG_URL"));
    let store = PgStore::connect(&url, 4, Sealer::default()).await.unwrap();
    // The recorder's way in: the very envelopes, in the order the broker delivered them, some
    // twice (a redelivery) and in two batches (two recorders' turns).
    let log: Vec<Envelope> = bus.read_after(0, 1000).await.unwrap().iter().map(|e| Envelope::from_wire(&e.wire).unwrap()).collect();
    assert_eq!(log.len(), 123);
    let (first, rest) = log.split_at(50);
    assert_eq!(patchbay_history::record_in_postgres(&store, first).await.unwrap(), (50, 25));
    assert_eq!(patchbay_history::record_in_postgres(&store, &log[40..60]).await.unwrap().0, 10, "only the ten new ones");
    patchbay_history::record_in_postgres(&store, &rest[10..]).await.unwrap();
    let postgres: Arc<dyn HistoryStore> = Arc::new(store.clone());

    for (pairs, total) in CASES {
        let (a, b) = (sqlite.search(q(pairs)).await.unwrap(), postgres.search(q(pairs)).await.unwrap());
        assert_eq!(a.total, *total, "SQLite, {pairs:?}");
        assert_eq!(b.total, *total, "PostgreSQL, {pairs:?}");
        assert_eq!(a.messages, b.messages, "the same page, byte for byte and in order: {pairs:?}");
    }
    // Replay by a sender's sequence numbers, in sequence order.
    let seqs: Vec<u64> = log.iter().filter(|e| e.sender.instance == "r2").map(|e| e.seq).collect();
    let (from, to) = (seqs[5].to_string(), seqs[15].to_string());
    let replay = [("sender", "runner:r2"), ("seq_from", from.as_str()), ("seq_to", to.as_str()), ("order", "asc")];
    let (a, b) = (sqlite.search(q(&replay)).await.unwrap(), postgres.search(q(&replay)).await.unwrap());
    assert_eq!((a.total, b.total), (11, 11));
    assert_eq!(a.messages, b.messages);
    // One message by id; the latest on a topic.
    let id = log[7].id.to_string();
    assert_eq!(postgres.message(id.clone()).await.unwrap(), sqlite.message(id).await.unwrap());
    assert_eq!(postgres.message("no-such-id".into()).await.unwrap(), None);
    let (a, b) = (
        sqlite.latest("pb.dev.mail.message.received".into(), 0, 5).await.unwrap(),
        postgres.latest("pb.dev.mail.message.received".into(), 0, 5).await.unwrap(),
    );
    assert_eq!(a.len(), 5);
    assert_eq!(a, b);

    // Retention on PostgreSQL: nothing is old enough at a day, everything but the newest at zero.
    assert_eq!(patchbay_history::prune_postgres(&store, std::time::Duration::from_secs(86_400)).await.unwrap(), 0);
    assert_eq!(patchbay_history::prune_postgres(&store, std::time::Duration::ZERO).await.unwrap(), 122);
    assert_eq!(postgres.search(q(&[])).await.unwrap().total, 1);
}
