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

/// A write that publishes as it goes ([`patchbay_store::SealStream`]): messages keep their push
/// order and rising sequence numbers, verify, commit with the write or not at all, and are sealed
/// again when another process (a second bus on the same file) took their numbers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seal_stream_publishes_in_order_with_its_write() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(patchbay_bus::SigningKey::generate("stream").unwrap());
    let mut keys = patchbay_bus::TrustPolicy::new(true);
    keys.trust(key.public());
    keys.allow("stream", vec![TopicPattern::parse("pbtest.tx.#").unwrap()]);
    let bus = EmbeddedBus::open(dir.path(), Sealer::new(Some(key.clone()))).unwrap();
    let other = EmbeddedBus::open(dir.path(), Sealer::new(Some(key))).unwrap();
    let mut sub = bus.subscribe(QueueSpec::new("dispatcher", vec![TopicPattern::parse("pbtest.tx.#").unwrap()])).await.unwrap();

    let sealed = stream_write(bus.clone(), 0, false).await.unwrap();
    assert_eq!(sealed.len(), 100);
    assert!(stream_write(bus.clone(), 1000, true).await.is_err());

    // Another process publishes as the same sender, past the numbers this bus hands out next
    // (it skipped those of the failed write): the stream's claim fails and it seals again.
    let dyn_other: Arc<dyn Bus> = Arc::new(other.clone());
    let taken = dyn_other.publish((500..650).map(announce).collect()).await.unwrap();
    let again = stream_write(bus.clone(), 200, false).await.unwrap();
    assert_eq!(again.len(), 100);
    assert!(again[0].seq > taken.last().unwrap().seq, "sealed again after the numbers taken");

    let log = bus.read_after(0, 1000).await.unwrap();
    let envelopes: Vec<patchbay_model::Envelope> = log.iter().map(|e| patchbay_model::Envelope::from_wire(&e.wire).unwrap()).collect();
    let bodies: Vec<i64> = envelopes.iter().map(|e| e.body["series"].as_i64().unwrap()).collect();
    let expected: Vec<i64> = (0..100).chain(500..650).chain(200..300).collect();
    assert_eq!(bodies, expected, "the failed write's messages are not in the log; the rest keep their order");
    let seqs: Vec<u64> = envelopes.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequence numbers rise in log order: {seqs:?}");
    for e in &log {
        let envelope = patchbay_model::Envelope::from_wire(&e.wire).unwrap();
        keys.check(&envelope).unwrap();
        assert_eq!(envelope.to_wire(), &e.wire[..], "the stored wire is the envelope's canonical form");
    }
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert_eq!(first.envelope.body["series"], 0);
}

/// Publishes 100 messages from `from` on in one write, pushed in pieces past the size that
/// starts the sealing thread; `fail` fails the write after pushing.
async fn stream_write(bus: EmbeddedBus, from: i64, fail: bool) -> Result<Vec<patchbay_model::Envelope>, StoreError> {
    let b = bus.clone();
    bus.db()
        .write(move |tx| {
            let mut stream = b.seal_stream();
            for chunk in (from..from + 100).collect::<Vec<_>>().chunks(7) {
                stream.push(tx, chunk.iter().map(|n| announce(*n)).collect())?;
            }
            if fail {
                return Err(StoreError::Setup("the write failed after pushing".into()));
            }
            stream.finish(tx)
        })
        .await
}
