//! A state change and the messages announcing it commit together or not at all:
//! `EmbeddedBus::publish_in` inside `Db::write`.

use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, MessageLog, Outgoing, QueueSpec, Sealer, TopicPattern};
use patchbay_model::{SchemaRef, Sender, TopicRoot};
use patchbay_store::{EmbeddedBus, StoreError};

fn announce(n: i64) -> Outgoing {
    Outgoing {
        sender: Sender::new("threader", "1"),
        topic: TopicRoot::new("pbtest", "tx").unwrap().topic("series.series.complete").unwrap(),
        schema: SchemaRef { name: "test".into(), version: 1 },
        body: serde_json::json!({ "series": n }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_messages_commit_or_roll_back_together() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    let mut sub = bus.subscribe(QueueSpec::new("dispatcher", vec![TopicPattern::parse("pbtest.tx.#").unwrap()])).await.unwrap();
    bus.db().write(|tx| Ok(tx.execute_batch("CREATE TABLE demo_series (id INTEGER PRIMARY KEY, state TEXT NOT NULL)")?)).await.unwrap();

    // Committed: the row and the message both exist.
    let b = bus.clone();
    let sealed = bus
        .db()
        .write(move |tx| {
            tx.execute("INSERT INTO demo_series (id, state) VALUES (1, 'complete')", [])?;
            b.publish_in(tx, vec![announce(1)])
        })
        .await
        .unwrap();
    assert_eq!(sealed.len(), 1);

    // Failed after publishing: neither the row nor the message survives.
    let b = bus.clone();
    let failed = bus
        .db()
        .write(move |tx| {
            tx.execute("INSERT INTO demo_series (id, state) VALUES (2, 'complete')", [])?;
            b.publish_in(tx, vec![announce(2)])?;
            Err::<(), _>(StoreError::Setup("the handler found a conflict".into()))
        })
        .await;
    assert!(failed.is_err());

    let rows: Vec<i64> = bus
        .db()
        .read(|c| Ok(c.prepare("SELECT id FROM demo_series ORDER BY id")?.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?))
        .await
        .unwrap();
    assert_eq!(rows, [1]);
    let log = bus.read_after(0, 100).await.unwrap();
    assert_eq!(log.len(), 1, "the rolled-back message is not in the log");
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert_eq!(d.envelope.body["series"], 1);
    d.ack().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(400), sub.next()).await.is_err(), "the rolled-back message was delivered");

    // The sequence keeps rising; the rolled-back publish may leave a gap, which consumers tolerate.
    let dyn_bus: Arc<dyn Bus> = Arc::new(bus.clone());
    let next = dyn_bus.publish(vec![announce(3)]).await.unwrap().remove(0);
    assert!(next.seq > sealed[0].seq);
}
