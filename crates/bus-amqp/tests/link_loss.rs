//! A consumer loses its link to RabbitMQ while a handler runs (a TCP proxy between them
//! drops every connection and refuses new ones for 2 s): the handler's ack cannot land, the
//! broker gives the message back, the consumer reconnects by itself and handles it again,
//! and what is published afterwards is handled too. This is a runner losing the bus mid-job.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::message;
use patchbay_bus::{Bus, Sealer, TopicPattern, TrustPolicy};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_model::{Envelope, TopicRoot, Uuid};
use patchbay_runtime::{Handler, HandlerError, ServiceSpec};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:<its port> to `target` while `up` is true; when it turns false, every
/// forwarded connection is cut and new ones are refused until it is true again.
async fn proxy(target: String, up: watch::Receiver<bool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            if !*up.borrow() {
                drop(client); // refused, as a dead link would
                continue;
            }
            let (target, mut up) = (target.clone(), up.clone());
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&target).await else { return };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = up.wait_for(|u| !*u) => {} // the link goes down: both sockets are dropped
                }
            });
        }
    });
    port
}

/// Records each handling: started, finished.
struct Slow {
    log: Mutex<Vec<(u64, &'static str)>>,
}

#[async_trait]
impl Handler for Slow {
    async fn handle(&self, env: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        let n = env.body["n"].as_u64().unwrap();
        self.log.lock().unwrap().push((n, "started"));
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(3)).await; // a job; the link drops meanwhile
        }
        self.log.lock().unwrap().push((n, "finished"));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_loses_the_link_mid_handler_reconnects_and_handles_it_again() {
    tokio::time::timeout(Duration::from_secs(150), scenario(false)).await.expect("the link-loss test hung");
}

/// The same with shared slots, as a runner takes jobs (one `basic.get` per free slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_taking_jobs_on_demand_survives_losing_the_link_mid_job() {
    tokio::time::timeout(Duration::from_secs(150), scenario(true)).await.expect("the link-loss test hung");
}

async fn scenario(slots: bool) {
    let base = std::env::var("PATCHBAY_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let target = base.split('@').nth(1).and_then(|r| r.split('/').next()).unwrap().to_string();
    let (up_tx, up_rx) = watch::channel(true);
    let port = proxy(target.clone(), up_rx).await;
    let through_proxy = base.replace(&target, &format!("127.0.0.1:{port}"));
    let tmp = tempfile::tempdir().unwrap();
    let ns = format!("pbl{}", Uuid::now_v7().simple());
    let config = |url: String, dir: &str| {
        let mut c = AmqpConfig::new(url, tmp.path().join(dir));
        c.exchange = ns.clone();
        c.queue_expiry = Some(Duration::from_secs(600));
        c
    };
    // The consumer goes through the proxy; the test publishes directly.
    let consumer_bus: Arc<dyn Bus> =
        Arc::new(AmqpBus::connect(config(through_proxy, "c"), Sealer::default()).await.expect("RabbitMQ; run scripts/test"));
    let publisher: Arc<dyn Bus> = Arc::new(AmqpBus::connect(config(base.clone(), "p"), Sealer::default()).await.unwrap());
    let root = TopicRoot::new("pbtest", &ns).unwrap();
    let handler = Arc::new(Slow { log: Mutex::new(Vec::new()) });
    let mut spec = ServiceSpec::new(&format!("{ns}.jobs"), vec![TopicPattern::parse(&format!("pbtest.{ns}.#")).unwrap()]);
    spec.concurrency = 1;
    if slots {
        spec.slots = Some(Arc::new(tokio::sync::Semaphore::new(1)));
    }
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let service = {
        let (bus, handler) = (consumer_bus.clone(), handler.clone());
        tokio::spawn(async move {
            patchbay_runtime::run(bus, Arc::new(TrustPolicy::permissive()), spec, handler, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher.publish(vec![message(&root, 1)]).await.unwrap();
    let count = |n: u64, what: &str| handler.log.lock().unwrap().iter().filter(|(m, w)| *m == n && *w == what).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while count(1, "started") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Mid-job: the link goes down for 2 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = up_tx.send(false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = up_tx.send(true);
    // The job's ack was lost with the link: it comes back and runs to the end again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while count(1, "started") < 2 || count(1, "finished") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not come back after the link returned: {:?}",
            handler.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the consumer goes on with new work.
    publisher.publish(vec![message(&root, 2)]).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(2, "finished") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "nothing handled after the reconnect: {:?}", handler.log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let _ = service.await;
}
