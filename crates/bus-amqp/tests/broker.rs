//! RabbitMQ failure modes: the broker restarts under a running publisher and
//! consumer, and a handler runs longer than two heartbeat intervals.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use patchbay_bus::{Bus, Outgoing, QueueSpec, Sealer, TopicPattern};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::{SchemaRef, Sender, TopicRoot, Uuid};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rabbitmq")
}

fn node(action: &str, dir: &Path) -> String {
    let out = std::process::Command::new(script()).arg(action).arg(dir).output().expect("run scripts/rabbitmq");
    assert!(out.status.success(), "scripts/rabbitmq {action} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

struct Node(PathBuf);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script()).arg("stop").arg(&self.0).output();
    }
}

fn message(root: &TopicRoot, n: u64) -> Outgoing {
    Outgoing {
        sender: Sender::new("restart-test", "1"),
        topic: root.topic("item.thing.new").unwrap(),
        schema: SchemaRef { name: "test".into(), version: 1 },
        body: serde_json::json!({ "n": n }),
    }
}

/// Stop and start the node while a publisher and a consumer run: every publish that
/// returned success is delivered and acked afterwards, and the consumer resumed by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart() {
    tokio::time::timeout(Duration::from_secs(300), restart()).await.expect("the broker restart test hung");
}

async fn restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let url = node("start", &dir);
    let _node = Node(dir.clone());
    let mut config = AmqpConfig::new(url, tmp.path().join("state"));
    config.exchange = "restart".into();
    config.publish_timeout = Duration::from_secs(60);
    let bus: Arc<dyn Bus> = Arc::new(AmqpBus::connect(config, Sealer::default()).await.unwrap());
    let root = TopicRoot::new("pbtest", "restart").unwrap();
    let mut sub = bus
        .subscribe(QueueSpec::new("restart.consumer", vec![TopicPattern::parse("pbtest.restart.#").unwrap()]).prefetch(32))
        .await
        .unwrap();

    let seen: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    let consumer = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                let d = sub.next().await.expect("the consumer keeps going");
                let id = d.envelope.id;
                // An ack lost with the connection means a redelivery, which is fine.
                if d.ack().await.is_ok() {
                    seen.lock().unwrap().insert(id);
                }
            }
        })
    };
    let accepted: Arc<Mutex<Vec<(Uuid, Instant)>>> = Arc::default();
    let failed = Arc::new(Mutex::new(0usize));
    // Publishing goes on until well after the restart, however long the node takes to come back.
    let stop_publishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (bus, accepted, failed, stop) = (bus.clone(), accepted.clone(), failed.clone(), stop_publishing.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                match bus.publish(vec![message(&root, n)]).await {
                    Ok(sealed) => accepted.lock().unwrap().push((sealed[0].id, Instant::now())),
                    Err(e) => {
                        eprintln!("publish {n} failed: {e}");
                        *failed.lock().unwrap() += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || node("stop", &dir2)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || node("start", &dir2)).await.unwrap();
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop_publishing.store(true, std::sync::atomic::Ordering::SeqCst);
    publisher.await.unwrap();

    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.iter().any(|(_, at)| *at > restarted + Duration::from_secs(1)), "no publish succeeded after the restart");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<Uuid> = {
            let seen = seen.lock().unwrap();
            accepted.iter().map(|(id, _)| *id).filter(|id| !seen.contains(id)).collect()
        };
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted messages never delivered after the restart, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consumer.abort();
    eprintln!("broker restart: {} publishes accepted and delivered, {} failed cleanly", accepted.len(), failed.lock().unwrap());
}

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
