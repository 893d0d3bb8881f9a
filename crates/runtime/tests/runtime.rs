//! The runtime against the embedded bus: ack after success, retry with
//! backoff, dead-letter with the error, panics contained, graceful shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use patchbay_bus::{Bus, Outgoing, Sealer, TopicPattern, TrustPolicy};
use patchbay_model::{Envelope, SchemaRef, Sender, TopicRoot};
use patchbay_runtime::{Handler, HandlerError, RetryPolicy, ServiceSpec, run};
use patchbay_store::EmbeddedBus;

/// Fails each message `fail_times` times (per body "mode"), records attempts and times.
struct Script {
    seen: Mutex<HashMap<u64, Vec<(u32, Instant)>>>,
    slow: Duration,
}

#[async_trait]
impl Handler for Script {
    async fn handle(&self, env: &Envelope, attempt: u32) -> Result<(), HandlerError> {
        let n = env.body["n"].as_u64().unwrap();
        self.seen.lock().unwrap().entry(n).or_default().push((attempt, Instant::now()));
        tokio::time::sleep(self.slow).await;
        match env.body["mode"].as_str().unwrap() {
            "ok" => Ok(()),
            "flaky" if attempt < 3 => Err(HandlerError::Transient(format!("flaky attempt {attempt}"))),
            "flaky" => Ok(()),
            "broken" => Err(HandlerError::Transient("disk on fire".into())),
            "poison" => Err(HandlerError::Permanent("body makes no sense".into())),
            "panic" => panic!("handler bug"),
            other => panic!("unknown mode {other}"),
        }
    }
}

fn root() -> TopicRoot {
    TopicRoot::new("rt", "test").unwrap()
}

fn msg(n: u64, mode: &str) -> Outgoing {
    Outgoing {
        sender: Sender::new("test", "1"),
        topic: root().topic("job.item.new").unwrap(),
        schema: SchemaRef { name: "test".into(), version: 1 },
        body: serde_json::json!({ "n": n, "mode": mode }),
    }
}

fn spec() -> ServiceSpec {
    let mut spec = ServiceSpec::new("worker", vec![TopicPattern::parse("rt.test.job.#").unwrap()]);
    spec.retry = RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(2) };
    spec.concurrency = 4;
    spec
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_retries_and_dead_letters_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap());
    let handler = Arc::new(Script { seen: Mutex::default(), slow: Duration::ZERO });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(bus.clone(), Arc::new(TrustPolicy::permissive()), spec(), handler.clone(), async {
        let _ = stop_rx.await;
    }));
    // Let the queue be declared before publishing.
    wait_for("queue", || std::fs::metadata(dir.path().join("locks/worker.lock")).is_ok()).await;
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    dyn_bus.publish(vec![msg(1, "ok"), msg(2, "flaky"), msg(3, "broken"), msg(4, "poison"), msg(5, "panic")]).await.unwrap();

    wait_for("every message settled", || {
        let seen = handler.seen.lock().unwrap();
        seen.get(&3).is_some_and(|v| v.len() == 4)
            && seen.get(&5).is_some_and(|v| v.len() == 4)
            && seen.get(&2).is_some_and(|v| v.len() == 3)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen[&1].len(), 1, "ok is handled once");
    assert_eq!(seen[&4].len(), 1, "poison is not retried");
    let attempts: Vec<u32> = seen[&3].iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    // Backoff: the gaps between attempts grow (100, 200, 400 ms).
    let gaps: Vec<Duration> = seen[&3].windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        gaps[0] >= Duration::from_millis(100) && gaps[1] >= Duration::from_millis(200) && gaps[2] >= Duration::from_millis(400),
        "{gaps:?}"
    );

    let dead = dyn_bus.dead_letters("worker", 10).await.unwrap();
    let reasons: HashMap<u64, String> = dead.iter().map(|d| (d.envelope.body["n"].as_u64().unwrap(), d.reason.clone())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[&3], "gave up after 4 attempts: disk on fire");
    assert_eq!(reasons[&4], "permanent failure: body makes no sense");
    assert!(reasons[&5].contains("panicked"), "{reasons:?}");
    assert_eq!(bus.pending("worker").await.unwrap(), 0);

    stop_tx.send(()).unwrap();
    service.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap());
    let handler = Arc::new(Script { seen: Mutex::default(), slow: Duration::from_millis(500) });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(run(bus.clone(), Arc::new(TrustPolicy::permissive()), spec(), handler.clone(), async {
        let _ = stop_rx.await;
    }));
    wait_for("queue", || std::fs::metadata(dir.path().join("locks/worker.lock")).is_ok()).await;
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    dyn_bus.publish(vec![msg(1, "ok"), msg(2, "ok")]).await.unwrap();
    wait_for("handlers running", || handler.seen.lock().unwrap().len() == 2).await;
    let asked = Instant::now();
    stop_tx.send(()).unwrap();
    service.await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(5));
    // Both finished and were acked before run() returned.
    assert_eq!(bus.pending("worker").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_leaves_new_messages_queued() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap());
    let handler = Arc::new(Script { seen: Mutex::default(), slow: Duration::ZERO });
    run(bus.clone(), Arc::new(TrustPolicy::permissive()), spec(), handler.clone(), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
    })
    .await
    .unwrap();
    let dyn_bus: Arc<dyn Bus> = bus.clone();
    dyn_bus.publish(vec![msg(1, "ok")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(handler.seen.lock().unwrap().is_empty());
    assert_eq!(bus.pending("worker").await.unwrap(), 1, "the queue outlives its consumer");
}

/// Counts handlers running at once.
struct Gauge {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Handler for Gauge {
    async fn handle(&self, _env: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(n, SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.now.fetch_sub(1, SeqCst);
        self.done.fetch_add(1, SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_sharing_slots_take_turns_and_never_exceed_them() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(dir.path(), Sealer::default()).unwrap());
    let slots = Arc::new(tokio::sync::Semaphore::new(2));
    let gauge = Arc::new(Gauge { now: Default::default(), max: Default::default(), done: Default::default() });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for q in ["a", "b", "c"] {
        let mut spec = ServiceSpec::new(&format!("q-{q}"), vec![TopicPattern::parse(&format!("rt.test.job.{q}.*")).unwrap()]);
        spec.concurrency = 2;
        spec.slots = Some(slots.clone());
        let (bus, gauge, mut stop) = (bus.clone(), gauge.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            run(bus, Arc::new(TrustPolicy::permissive()), spec, gauge, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Queue c alone gets work while a and b sit idle holding nothing: it must not starve.
    let out = |q: &str, n: u64| Outgoing { topic: root().topic(&format!("job.{q}.new")).unwrap(), ..msg(n, "ok") };
    let started = Instant::now();
    bus.publish(vec![out("c", 1)]).await.unwrap();
    wait_for("queue c's message", || gauge.done.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    // Many messages on every queue: never more than the 2 shared slots at once.
    bus.publish((0..6).flat_map(|n| ["a", "b", "c"].map(|q| out(q, n))).collect()).await.unwrap();
    wait_for("all messages", || gauge.done.load(std::sync::atomic::Ordering::SeqCst) == 19).await;
    assert_eq!(gauge.max.load(std::sync::atomic::Ordering::SeqCst), 2);
    let _ = stop_tx.send(true);
    for t in tasks {
        t.await.unwrap();
    }
}

/// A bus that loses some messages on the way to consumers (acked, never delivered), as a
/// broker without a durable queue would.
struct Lossy {
    inner: EmbeddedBus,
    lose: std::ops::RangeInclusive<u64>,
}

struct LossySubscription {
    inner: Box<dyn patchbay_bus::Subscription>,
    lose: std::ops::RangeInclusive<u64>,
}

#[async_trait]
impl patchbay_bus::Subscription for LossySubscription {
    async fn next(&mut self) -> Result<patchbay_bus::Delivery, patchbay_bus::BusError> {
        loop {
            let d = self.inner.next().await?;
            match d.envelope.body["n"].as_u64() {
                Some(n) if self.lose.contains(&n) => d.ack().await?,
                _ => return Ok(d),
            }
        }
    }
}

#[async_trait]
impl Bus for Lossy {
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<Envelope>, patchbay_bus::BusError> {
        self.inner.publish(messages).await
    }
    async fn publish_sealed(&self, envelopes: Vec<Envelope>) -> Result<(), patchbay_bus::BusError> {
        self.inner.publish_sealed(envelopes).await
    }
    async fn subscribe(&self, spec: patchbay_bus::QueueSpec) -> Result<Box<dyn patchbay_bus::Subscription>, patchbay_bus::BusError> {
        Ok(Box::new(LossySubscription { inner: self.inner.subscribe(spec).await?, lose: self.lose.clone() }))
    }
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<patchbay_bus::DeadLetter>, patchbay_bus::BusError> {
        self.inner.dead_letters(queue, limit).await
    }
}

/// The history of the store, by sender and sequence range.
struct History(patchbay_store::Db);

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("History")
    }
}

#[async_trait]
impl patchbay_runtime::Replay for History {
    async fn range(&self, sender: &Sender, from: u64, to: u64) -> Result<Vec<Envelope>, String> {
        patchbay_history::Indexer::new(self.0.clone()).catch_up().await.map_err(|e| e.to_string())?;
        let params: Vec<(String, String)> = [
            ("sender", format!("{}:{}", sender.service, sender.instance)),
            ("seq_from", from.to_string()),
            ("seq_to", to.to_string()),
            ("order", "asc".into()),
            ("rows_per_page", "100".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let q = patchbay_history::Query::from_params(&params, 0)?;
        let page = self.0.read(move |c| patchbay_history::search(c, &q)).await.map_err(|e| e.to_string())?;
        page.messages.iter().map(|w| Envelope::from_wire(w).map_err(|e| e.to_string())).collect()
    }
}

/// Records the order of what it handles; message 25 fails its first attempt.
struct Order(Mutex<Vec<u64>>);

#[async_trait]
impl Handler for Order {
    async fn handle(&self, env: &Envelope, attempt: u32) -> Result<(), HandlerError> {
        let n = env.body["n"].as_u64().unwrap();
        if n == 25 && attempt == 1 {
            return Err(HandlerError::Transient("not yet".into()));
        }
        self.0.lock().unwrap().push(n);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_lost_on_the_way_are_fetched_and_handled_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedBus::open(dir.path(), Sealer::default()).unwrap();
    let bus: Arc<dyn Bus> = Arc::new(Lossy { inner: store.clone(), lose: 10..=19 });
    let order = Arc::new(Order(Mutex::new(Vec::new())));
    let mut spec = spec();
    spec.concurrency = 1;
    spec.replay = Some(Arc::new(History(store.db().clone())));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let service = {
        let (bus, handler) = (bus.clone(), order.clone());
        tokio::spawn(async move {
            run(bus, Arc::new(TrustPolicy::permissive()), spec, handler, async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // 1..=30 on the service's topic, with messages on a topic it does not want in between
    // (the same sender's sequence jumps over those without anything being lost).
    for n in 1..=30u64 {
        bus.publish(vec![msg(n, "ok")]).await.unwrap();
        if n % 7 == 0 {
            let mut other = msg(1000 + n, "ok");
            other.topic = root().topic("other.item.new").unwrap();
            bus.publish(vec![other]).await.unwrap();
        }
    }
    wait_for("all 30 handled", || order.0.lock().unwrap().len() >= 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(true);
    service.await.unwrap().unwrap();
    let seen = order.0.lock().unwrap().clone();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, (1..=30).collect::<Vec<u64>>(), "each once (a retried message too), the lost ten fetched from history: {seen:?}");
    let lost: Vec<u64> = seen.iter().copied().filter(|n| (10..=19).contains(n)).collect();
    assert_eq!(lost, (10..=19).collect::<Vec<u64>>(), "the lost ones in order");
    let at = |n: u64| seen.iter().position(|&x| x == n).unwrap();
    assert!(at(9) < at(10) && at(19) < at(20), "and before what came after them: {seen:?}");
}
