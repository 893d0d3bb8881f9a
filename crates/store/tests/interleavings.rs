//! Property: under any interleaving of publish, consume, ack, retry, drop
//! (unsettled) and crash (everything in memory dropped, the store reopened),
//! no message whose publish returned success is lost, no acked message comes
//! back, and nothing is delivered that the model does not expect.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, Delivery, Outgoing, QueueSpec, Sealer, Subscription, TopicPattern};
use patchbay_model::{SchemaRef, Sender, TopicRoot, Uuid};
use patchbay_store::EmbeddedBus;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Publish(u8),
    Take,
    Ack(usize),
    Retry(usize),
    Drop(usize),
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..4).prop_map(Op::Publish),
        4 => Just(Op::Take),
        2 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Retry),
        1 => any::<usize>().prop_map(Op::Drop),
        1 => Just(Op::Crash),
    ]
}

fn spec() -> QueueSpec {
    QueueSpec::new("prop", vec![TopicPattern::parse("pbtest.prop.#").unwrap()]).prefetch(1000)
}

async fn open(dir: &std::path::Path) -> (Arc<dyn Bus>, Box<dyn Subscription>) {
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(dir, Sealer::default()).unwrap());
    let sub = bus.subscribe(spec()).await.unwrap();
    (bus, sub)
}

async fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let root = TopicRoot::new("pbtest", "prop").unwrap();
    let (mut bus, mut sub) = open(tmp.path()).await;
    let mut accepted: HashSet<Uuid> = HashSet::new();
    let mut acked: HashSet<Uuid> = HashSet::new();
    let mut held: Vec<Delivery> = Vec::new();
    let mut n = 0u64;
    for op in ops {
        let available = accepted.len() - acked.len() - held.len();
        match op {
            Op::Publish(k) => {
                let msgs = (0..k)
                    .map(|_| {
                        n += 1;
                        Outgoing {
                            sender: Sender::new("prop", "1"),
                            topic: root.topic("item.thing.new").unwrap(),
                            schema: SchemaRef { name: "prop".into(), version: 1 },
                            body: serde_json::json!({ "n": n }),
                        }
                    })
                    .collect();
                accepted.extend(bus.publish(msgs).await.unwrap().iter().map(|e| e.id));
            }
            Op::Take if available > 0 => {
                let d = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
                let d = d.map_err(|_| TestCaseError::fail(format!("{available} available but nothing delivered")))?.unwrap();
                prop_assert!(accepted.contains(&d.envelope.id), "delivered a message never published");
                prop_assert!(!acked.contains(&d.envelope.id), "delivered a message after its ack");
                prop_assert!(!held.iter().any(|h| h.envelope.id == d.envelope.id), "delivered a message already held");
                held.push(d);
            }
            Op::Take => {
                // Nothing should come; the cancelled wait must lose nothing either.
                let d = tokio::time::timeout(Duration::from_millis(20), sub.next()).await;
                prop_assert!(d.is_err(), "delivered a message the model does not expect: {:?}", d.map(|d| d.map(|d| d.envelope.id)));
            }
            Op::Ack(i) if !held.is_empty() => {
                let d = held.remove(i % held.len());
                let id = d.envelope.id;
                d.ack().await.unwrap();
                acked.insert(id);
            }
            Op::Retry(i) if !held.is_empty() => {
                let d = held.remove(i % held.len());
                d.retry(Duration::ZERO, "retry").await.unwrap();
            }
            Op::Drop(i) if !held.is_empty() => {
                drop(held.remove(i % held.len()));
            }
            Op::Crash => {
                held.clear();
                drop(sub);
                drop(bus);
                (bus, sub) = open(tmp.path()).await;
            }
            Op::Ack(_) | Op::Retry(_) | Op::Drop(_) => {}
        }
    }
    held.clear();
    drop(sub);
    drop(bus);
    let (_bus, mut sub) = open(tmp.path()).await;
    let mut drained: HashSet<Uuid> = HashSet::new();
    while let Ok(d) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        let d = d.unwrap();
        prop_assert!(!acked.contains(&d.envelope.id), "an acked message came back after restart");
        prop_assert!(drained.insert(d.envelope.id), "delivered twice while draining");
        d.ack().await.unwrap();
    }
    let settled: HashSet<Uuid> = acked.union(&drained).copied().collect();
    prop_assert_eq!(settled, accepted, "accepted messages lost");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn no_accepted_message_is_lost(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(check(ops))?;
    }
}
