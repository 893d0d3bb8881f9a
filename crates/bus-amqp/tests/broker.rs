//! RabbitMQ failure modes: a handler runs longer than two heartbeat intervals; a namespace
//! has one store keeper.
//! (The broker-restart test is `broker_restart.rs`, with a node of its own.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::message;
use patchbay_bus::{Bus, QueueSpec, Sealer, TopicPattern};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::{TopicRoot, Uuid};

/// A handler that holds a delivery for longer than two heartbeat intervals keeps its
/// connection: heartbeats run on the connection's own task, not the handler's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_connection() {
    tokio::time::timeout(Duration::from_secs(120), long_handler()).await.expect("the heartbeat test hung");
}

async fn long_handler() {
    let base = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let url = format!("{base}{}heartbeat=1", if base.contains('?') { '&' } else { '?' });
    let tmp = tempfile::tempdir().unwrap();
    let ns = format!("pbh{}", Uuid::now_v7().simple());
    let mut config = AmqpConfig::new(url, tmp.path());
    config.exchange = ns.clone();
    config.queue_expiry = Some(Duration::from_secs(600));
    let amqp = AmqpBus::connect(config, Sealer::default()).await.expect("RabbitMQ; run scripts/test");
    assert_eq!(amqp.heartbeat_secs(), 1, "the test needs a 1 s heartbeat to mean anything");
    let bus: Arc<dyn Bus> = Arc::new(amqp);
    let root = TopicRoot::new("pbtest", &ns).unwrap();
    let queue = format!("{ns}.slow");
    let mut sub = bus.subscribe(QueueSpec::new(&queue, vec![TopicPattern::parse(&format!("pbtest.{ns}.#")).unwrap()])).await.unwrap();
    let id = bus.publish(vec![message(&root, 1)]).await.unwrap()[0].id;
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.unwrap().unwrap();
    assert_eq!(d.envelope.id, id);
    // A busy handler that does not even yield: it blocks its worker thread for well over two
    // heartbeat intervals (as a synchronous build step would).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(d.attempt, 1);
    d.ack().await.expect("the channel survived the long handler");
    // Nothing comes back: the ack landed on the same, living channel.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), sub.next()).await.is_err(),
        "the message was redelivered: the connection had died"
    );
}

/// On demand, a subscriber holds nothing ahead: while it works on one message, a second
/// consumer of the queue takes the others. With the broker pushing (prefetch), the first
/// holds them all and the second waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_consumers_hold_nothing_ahead() {
    tokio::time::timeout(Duration::from_secs(120), on_demand()).await.expect("the on-demand test hung");
}

async fn on_demand() {
    let base = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let tmp = tempfile::tempdir().unwrap();
    let ns = format!("pbo{}", Uuid::now_v7().simple());
    let mut config = AmqpConfig::new(base, tmp.path());
    config.exchange = ns.clone();
    config.queue_expiry = Some(Duration::from_secs(600));
    let bus: Arc<dyn Bus> = Arc::new(AmqpBus::connect(config, Sealer::default()).await.expect("RabbitMQ; run scripts/test"));
    let root = TopicRoot::new("pbtest", &ns).unwrap();
    for (mode, on_demand) in [("pull", true), ("push", false)] {
        let queue = format!("{ns}.{mode}");
        let pattern = TopicPattern::parse(&format!("pbtest.{ns}.{mode}.#")).unwrap();
        let spec = QueueSpec::new(&queue, vec![pattern]).prefetch(16).on_demand(on_demand);
        let mut first = bus.subscribe(spec.clone()).await.unwrap();
        let mut msgs = Vec::new();
        for n in 0..3 {
            let mut m = message(&root, n);
            m.topic = root.topic(&format!("{mode}.item.new")).unwrap();
            msgs.push(m);
        }
        bus.publish(msgs).await.unwrap();
        let held = tokio::time::timeout(Duration::from_secs(10), first.next()).await.unwrap().unwrap();
        // Let a pushing broker fill the first consumer's prefetch.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut second = bus.subscribe(spec).await.unwrap();
        let mut got = 0;
        while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(2), second.next()).await {
            d.ack().await.unwrap();
            got += 1;
        }
        if on_demand {
            assert_eq!(got, 2, "on demand: the second consumer takes the two the first did not ask for");
        } else {
            assert_eq!(got, 0, "pushed: the first consumer holds them all (the contrast that makes the test mean something)");
        }
        held.ack().await.unwrap();
        drop(first);
    }
}

/// A namespace has one store keeper: a second claim is refused and told who holds it; a claim
/// let go (dropped) can be taken again; another namespace is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_has_one_store_keeper() {
    tokio::time::timeout(Duration::from_secs(120), one_keeper()).await.expect("the claim test hung");
}

async fn one_keeper() {
    let base = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let tmp = tempfile::tempdir().unwrap();
    let ns = format!("pbc{}", Uuid::now_v7().simple());
    let bus_for = |prefix: &str| {
        let mut config = AmqpConfig::new(base.clone(), tmp.path());
        config.exchange = ns.clone();
        config.queue_prefix = format!("{prefix}.");
        config.queue_expiry = Some(Duration::from_secs(600));
        AmqpBus::connect(config, Sealer::default())
    };
    let (a, b) = (bus_for(&ns).await.expect("RabbitMQ; run scripts/test"), bus_for(&ns).await.unwrap());
    let held = a.claim_namespace("serve A on host a").await.expect("the first claim");
    match b.claim_namespace("serve B on host b").await {
        Err(patchbay_bus_amqp::ClaimError::Held { holder }) => assert_eq!(holder, "serve A on host a"),
        Err(other) => panic!("refused for the wrong reason: {other}"),
        Ok(_) => panic!("two keepers on one namespace"),
    }
    let other = bus_for(&format!("{ns}-other")).await.unwrap();
    let _elsewhere = other.claim_namespace("serve C").await.expect("another namespace is free");
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match b.claim_namespace("serve B on host b").await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "not free 10 s after it was let go: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
