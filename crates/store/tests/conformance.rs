//! The bus conformance suite against the embedded SQLite bus.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::conformance::Harness;
use patchbay_bus::{Bus, Sealer};
use patchbay_model::TopicRoot;
use patchbay_store::EmbeddedBus;

struct Embedded {
    dir: tempfile::TempDir,
}

async fn embedded() -> Embedded {
    Embedded { dir: tempfile::tempdir().unwrap() }
}

#[async_trait]
impl Harness for Embedded {
    async fn open(&self, sealer: Sealer) -> Arc<dyn Bus> {
        Arc::new(EmbeddedBus::open(self.dir.path(), sealer).unwrap())
    }
    fn root(&self) -> TopicRoot {
        TopicRoot::new("pbtest", "conformance").unwrap()
    }
    fn queue(&self, name: &str) -> String {
        name.to_string()
    }
}

patchbay_bus::conformance_tests!(embedded);

/// Deliveries are counted durably, so a message that keeps taking its consumer down
/// with it is eventually dead-lettered by attempt count rather than retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_survive_restarts() {
    use patchbay_bus::{Outgoing, QueueSpec, TopicPattern};
    use patchbay_model::{SchemaRef, Sender};
    let h = embedded().await;
    let spec = || QueueSpec::new("attempts", vec![TopicPattern::parse("pbtest.conformance.#").unwrap()]);
    let out = Outgoing {
        sender: Sender::new("t", "1"),
        topic: h.root().topic("a.b.c").unwrap(),
        schema: SchemaRef { name: "t".into(), version: 1 },
        body: serde_json::json!({}),
    };
    let mut seen = Vec::new();
    for round in 0..3 {
        let bus = h.open(Sealer::default()).await;
        let mut sub = bus.subscribe(spec()).await.unwrap();
        if round == 0 {
            bus.publish(vec![out.clone()]).await.unwrap();
        }
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
        seen.push(d.attempt);
        // The consumer "crashes": nothing is settled. Give the background count a commit to land in.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(d);
        drop(sub);
        drop(bus);
    }
    assert_eq!(seen, [1, 2, 3], "attempts must count deliveries across restarts");
}

/// Rows only loaded into a consumer's buffer are not counted as attempts: restarting a consumer
/// of a long queue must not age messages it never handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_do_not_age_messages_never_handed_out() {
    use patchbay_bus::{Outgoing, QueueSpec, TopicPattern};
    use patchbay_model::{SchemaRef, Sender};
    let h = embedded().await;
    let spec = || QueueSpec::new("aging", vec![TopicPattern::parse("pbtest.conformance.#").unwrap()]).prefetch(1);
    let out = |n: u64| Outgoing {
        sender: Sender::new("t", "1"),
        topic: h.root().topic("a.b.c").unwrap(),
        schema: SchemaRef { name: "t".into(), version: 1 },
        body: serde_json::json!({ "n": n }),
    };
    for round in 0..4 {
        let bus = h.open(Sealer::default()).await;
        let mut sub = bus.subscribe(spec()).await.unwrap();
        if round == 0 {
            bus.publish((0..50).map(out).collect()).await.unwrap();
        }
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
        if round < 3 {
            // Handed out and then lost in a "crash": the first message's count rises.
            assert_eq!(d.envelope.body["n"], 0);
            assert_eq!(d.attempt, round + 1);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        } else {
            d.ack().await.unwrap();
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
            assert_eq!(next.envelope.body["n"], 1);
            assert_eq!(next.attempt, 1, "loaded three times, never handed out: still a first attempt");
            next.ack().await.unwrap();
        }
    }
}
