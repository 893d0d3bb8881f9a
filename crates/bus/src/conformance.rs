//! The conformance suite every [`Bus`] backend must pass, written once.
//!
//! A backend's test file implements [`Harness`] and expands
//! [`conformance_tests!`](crate::conformance_tests) with a function that makes
//! a fresh harness; each check below becomes one `#[tokio::test]`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use patchbay_model::{SchemaRef, Sender, TopicRoot, Uuid};

use crate::{Bus, Consumer, Delivery, Outgoing, QueueSpec, Sealer, SigningKey, Subscription, TopicPattern, TrustPolicy};

/// What a backend provides to the suite.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Opens the bus under test. Opening again after every earlier handle, subscription
    /// and delivery was dropped is a restart: state must survive it.
    async fn open(&self, sealer: Sealer) -> Arc<dyn Bus>;
    /// A topic root unique to this harness, so tests sharing a broker do not see each other.
    fn root(&self) -> TopicRoot;
    /// A queue name unique to this harness.
    fn queue(&self, name: &str) -> String;
}

/// Expands to one `#[tokio::test]` per conformance check; `$make` is an async fn returning a harness.
#[macro_export]
macro_rules! conformance_tests {
    ($make:path) => {
        $crate::conformance_tests!(@each $make;
            patterns_follow_amqp_rules, competing_consumers_share_a_queue, every_bound_queue_gets_every_message,
            acked_messages_are_gone, unsettled_deliveries_return, retry_waits_for_its_delay,
            dead_letters_keep_the_reason, sequence_numbers_increase_across_restarts, signatures_are_enforced,
            prefetch_bounds_unsettled_deliveries, one_publisher_is_delivered_in_order, unacked_deliveries_return_after_restart,
            later_acks_never_settle_an_earlier_delivery);
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $make().await;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

const QUIET: Duration = Duration::from_millis(400);
const PATIENCE: Duration = Duration::from_secs(20);

fn sender(name: &str) -> Sender {
    Sender::new(name, "conformance")
}

fn out(root: &TopicRoot, from: &str, suffix: &str, n: u64) -> Outgoing {
    Outgoing {
        sender: sender(from),
        topic: root.topic(suffix).expect("test topics are valid"),
        schema: SchemaRef { name: "conformance".into(), version: 1 },
        body: serde_json::json!({ "n": n, "pad": "x".repeat(64) }),
    }
}

fn pattern(root: &TopicRoot, suffix: &str) -> TopicPattern {
    TopicPattern::parse(&format!("{}.{suffix}", root.as_str())).expect("test patterns are valid")
}

async fn sub(bus: &Arc<dyn Bus>, queue: String, patterns: Vec<TopicPattern>, prefetch: u16) -> Box<dyn Subscription> {
    bus.subscribe(QueueSpec::new(queue, patterns).prefetch(prefetch)).await.expect("subscribe")
}

async fn recv(sub: &mut Box<dyn Subscription>, within: Duration) -> Option<Delivery> {
    match tokio::time::timeout(within, sub.next()).await {
        Ok(d) => Some(d.expect("next delivery")),
        Err(_) => None,
    }
}

/// Receives and acks until the queue is quiet, returning the topics (suffixes) seen.
async fn drain_topics(root: &TopicRoot, sub: &mut Box<dyn Subscription>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    while let Some(d) = recv(sub, QUIET).await {
        seen.insert(root.suffix_of(d.envelope.topic.as_str()).unwrap().to_string());
        d.ack().await.unwrap();
    }
    seen
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `*` matches one word, `#` zero or more, literals themselves.
pub async fn patterns_follow_amqp_rules(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut star = sub(&bus, h.queue("star"), vec![pattern(&root, "a.*.c")], 8).await;
    let mut hash = sub(&bus, h.queue("hash"), vec![pattern(&root, "a.#")], 8).await;
    let mut exact = sub(&bus, h.queue("exact"), vec![pattern(&root, "a.b.c")], 8).await;
    let mut tail = sub(&bus, h.queue("tail"), vec![TopicPattern::parse("#.d").unwrap()], 8).await;
    let mut two = sub(&bus, h.queue("two"), vec![pattern(&root, "a.b.c"), pattern(&root, "z.*.d")], 8).await;
    let topics = ["a.b.c", "a.x.c", "a.b.c.d", "z.y.d", "a.b.x", "b.b.c"];
    let msgs = topics.iter().enumerate().map(|(i, t)| out(&root, "pat", t, i as u64)).collect();
    bus.publish(msgs).await.unwrap();
    assert_eq!(drain_topics(&root, &mut star).await, set(&["a.b.c", "a.x.c"]));
    assert_eq!(drain_topics(&root, &mut hash).await, set(&["a.b.c", "a.x.c", "a.b.c.d", "a.b.x"]));
    assert_eq!(drain_topics(&root, &mut exact).await, set(&["a.b.c"]));
    assert_eq!(drain_topics(&root, &mut tail).await, set(&["a.b.c.d", "z.y.d"]));
    assert_eq!(drain_topics(&root, &mut two).await, set(&["a.b.c", "z.y.d"]));
}

/// Two consumers of one queue: each message goes to exactly one of them.
pub async fn competing_consumers_share_a_queue(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let q = h.queue("work");
    let subs = [
        sub(&bus, q.clone(), vec![pattern(&root, "work.item.*")], 2).await,
        sub(&bus, q.clone(), vec![pattern(&root, "work.item.*")], 2).await,
    ];
    const N: u64 = 200;
    let published: HashSet<Uuid> =
        bus.publish((0..N).map(|i| out(&root, "work", "work.item.new", i)).collect()).await.unwrap().iter().map(|e| e.id).collect();
    let seen = Arc::new(Mutex::new(Vec::<(usize, Uuid)>::new()));
    let mut tasks = Vec::new();
    for (worker, mut s) in subs.into_iter().enumerate() {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + PATIENCE;
            while seen.lock().unwrap().len() < N as usize && Instant::now() < deadline {
                if let Some(d) = recv(&mut s, Duration::from_millis(200)).await {
                    seen.lock().unwrap().push((worker, d.envelope.id));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    d.ack().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    let ids: Vec<Uuid> = seen.iter().map(|(_, id)| *id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(ids.len(), N as usize, "every message delivered exactly once across both consumers");
    assert_eq!(unique, published);
    for worker in 0..2 {
        assert!(seen.iter().any(|(w, _)| *w == worker), "consumer {worker} got no work: they do not compete");
    }
}

/// Two queues bound to the same topic each get every message.
pub async fn every_bound_queue_gets_every_message(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut a = sub(&bus, h.queue("fan-a"), vec![pattern(&root, "fan.out.*")], 16).await;
    let mut b = sub(&bus, h.queue("fan-b"), vec![pattern(&root, "fan.out.*")], 16).await;
    let ids: BTreeSet<Uuid> =
        bus.publish((0..50).map(|i| out(&root, "fan", "fan.out.go", i)).collect()).await.unwrap().iter().map(|e| e.id).collect();
    for s in [&mut a, &mut b] {
        let mut got = BTreeSet::new();
        while let Some(d) = recv(s, QUIET).await {
            assert!(got.insert(d.envelope.id), "duplicate delivery");
            d.ack().await.unwrap();
        }
        assert_eq!(got, ids);
    }
}

/// An acked message is never delivered again, even to a new subscription.
pub async fn acked_messages_are_gone(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let q = h.queue("acked");
    let mut s = sub(&bus, q.clone(), vec![pattern(&root, "ack.me.*")], 4).await;
    bus.publish((0..10).map(|i| out(&root, "ack", "ack.me.now", i)).collect()).await.unwrap();
    for _ in 0..10 {
        recv(&mut s, PATIENCE).await.expect("a message").ack().await.unwrap();
    }
    drop(s);
    let mut again = sub(&bus, q, vec![pattern(&root, "ack.me.*")], 4).await;
    assert!(recv(&mut again, QUIET).await.is_none(), "an acked message came back");
}

/// A delivery dropped without being settled comes back, counted as a second attempt.
pub async fn unsettled_deliveries_return(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut s = sub(&bus, h.queue("drop"), vec![pattern(&root, "drop.me.*")], 4).await;
    let id = bus.publish(vec![out(&root, "drop", "drop.me.now", 1)]).await.unwrap()[0].id;
    let first = recv(&mut s, PATIENCE).await.expect("first delivery");
    assert_eq!((first.envelope.id, first.attempt), (id, 1));
    drop(first);
    let second = recv(&mut s, PATIENCE).await.expect("redelivery");
    assert_eq!((second.envelope.id, second.attempt), (id, 2));
    second.ack().await.unwrap();
}

/// `retry` puts a message back, delivered again only after the delay.
pub async fn retry_waits_for_its_delay(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut s = sub(&bus, h.queue("retry"), vec![pattern(&root, "retry.me.*")], 4).await;
    let id = bus.publish(vec![out(&root, "retry", "retry.me.now", 1)]).await.unwrap()[0].id;
    let d = recv(&mut s, PATIENCE).await.expect("first delivery");
    let delay = Duration::from_millis(700);
    let asked = Instant::now();
    d.retry(delay, "transient failure").await.unwrap();
    assert!(recv(&mut s, Duration::from_millis(200)).await.is_none(), "redelivered before its delay");
    let again = recv(&mut s, PATIENCE).await.expect("redelivery after the delay");
    assert!(asked.elapsed() >= delay, "redelivered after {:?}, delay was {delay:?}", asked.elapsed());
    assert_eq!((again.envelope.id, again.attempt), (id, 2));
    // Backoff: a second retry with a longer delay waits longer again.
    let asked = Instant::now();
    again.retry(delay * 2, "still failing").await.unwrap();
    let third = recv(&mut s, PATIENCE).await.expect("third delivery");
    assert!(asked.elapsed() >= delay * 2);
    assert_eq!(third.attempt, 3);
    third.ack().await.unwrap();
}

/// `dead_letter` takes a message off the queue and keeps it with the reason.
pub async fn dead_letters_keep_the_reason(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let q = h.queue("dead");
    let mut s = sub(&bus, q.clone(), vec![pattern(&root, "dead.me.*")], 4).await;
    let id = bus.publish(vec![out(&root, "dead", "dead.me.now", 1)]).await.unwrap()[0].id;
    let d = recv(&mut s, PATIENCE).await.expect("delivery");
    d.dead_letter("handler exploded: no such file").await.unwrap();
    assert!(recv(&mut s, QUIET).await.is_none(), "a dead letter was redelivered");
    let dead = bus.dead_letters(&q, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].envelope.id, id);
    assert_eq!(dead[0].reason, "handler exploded: no such file");
    assert_eq!(dead[0].attempts, 1);
    assert_eq!(dead[0].queue, q);
}

/// Sequence numbers rise strictly per sender, and keep rising after a restart.
pub async fn sequence_numbers_increase_across_restarts(h: &impl Harness) {
    let root = h.root();
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for round in 0..3u64 {
        let bus = h.open(Sealer::default()).await;
        for i in 0..3 {
            for who in ["alpha", "beta"] {
                let env = bus.publish(vec![out(&root, who, "seq.test.sent", round * 10 + i)]).await.unwrap().remove(0);
                assert_eq!(env.sender, sender(who));
                seqs.entry(who.to_string()).or_default().push(env.seq);
            }
        }
        let batch = bus.publish((0..4).map(|i| out(&root, "alpha", "seq.test.sent", 100 + i)).collect()).await.unwrap();
        seqs.get_mut("alpha").unwrap().extend(batch.iter().map(|e| e.seq));
        drop(bus);
    }
    for (who, s) in &seqs {
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{who}: sequence not strictly increasing: {s:?}");
    }
}

/// With signatures required, only messages signed by a trusted key allowed on the topic reach a handler.
pub async fn signatures_are_enforced(h: &impl Harness) {
    let root = h.root();
    let trusted = Arc::new(SigningKey::generate("ingest").unwrap());
    let stranger = Arc::new(SigningKey::generate("stranger").unwrap());
    let mut policy = TrustPolicy::new(true);
    policy.trust(trusted.public());
    policy.allow("ingest", vec![pattern(&root, "mail.#")]);
    let policy = Arc::new(policy);

    let bus = h.open(Sealer::new(Some(trusted.clone()))).await;
    let q = h.queue("signed");
    let mut consumer = Consumer::new(sub(&bus, q.clone(), vec![pattern(&root, "#")], 8).await, policy);

    let good = bus.publish(vec![out(&root, "ingest", "mail.message.received", 1)]).await.unwrap().remove(0);
    let mut tampered = Sealer::new(Some(trusted.clone())).seal(out(&root, "ingest", "mail.message.received", 2), 1);
    tampered.body["n"] = serde_json::json!(3);
    let unknown = Sealer::new(Some(stranger)).seal(out(&root, "ingest", "mail.message.received", 4), 1);
    let wrong_topic = Sealer::new(Some(trusted)).seal(out(&root, "ingest", "ci.test.finished", 5), 2);
    let unsigned = Sealer::default().seal(out(&root, "ingest", "mail.message.received", 6), 3);
    bus.publish_sealed(vec![tampered.clone(), unknown.clone(), wrong_topic.clone(), unsigned.clone()]).await.unwrap();
    let also_good = bus.publish(vec![out(&root, "ingest", "mail.message.received", 7)]).await.unwrap().remove(0);

    let mut handled = Vec::new();
    while let Ok(Ok(d)) = tokio::time::timeout(QUIET * 2, consumer.next()).await {
        handled.push(d.envelope.id);
        d.ack().await.unwrap();
    }
    assert_eq!(handled, vec![good.id, also_good.id], "only the properly signed messages reach the handler");

    let dead: BTreeMap<Uuid, String> = bus.dead_letters(&q, 10).await.unwrap().into_iter().map(|d| (d.envelope.id, d.reason)).collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead[&tampered.id].contains("bad signature"), "{dead:?}");
    assert!(dead[&unknown.id].contains("unknown signing key"), "{dead:?}");
    assert!(dead[&wrong_topic.id].contains("may not publish"), "{dead:?}");
    assert!(dead[&unsigned.id].contains("unsigned"), "{dead:?}");
}

/// A subscription never holds more than `prefetch` unsettled deliveries.
pub async fn prefetch_bounds_unsettled_deliveries(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut s = sub(&bus, h.queue("prefetch"), vec![pattern(&root, "pre.fetch.*")], 2).await;
    bus.publish((0..3).map(|i| out(&root, "pre", "pre.fetch.it", i)).collect()).await.unwrap();
    let first = recv(&mut s, PATIENCE).await.expect("first");
    let second = recv(&mut s, PATIENCE).await.expect("second");
    assert!(recv(&mut s, QUIET).await.is_none(), "a third delivery while two are unsettled");
    first.ack().await.unwrap();
    let third = recv(&mut s, PATIENCE).await.expect("third after an ack");
    second.ack().await.unwrap();
    third.ack().await.unwrap();
}

/// One publisher's messages reach a single consumer in publish order.
pub async fn one_publisher_is_delivered_in_order(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut s = sub(&bus, h.queue("fifo"), vec![pattern(&root, "fifo.order.*")], 1).await;
    let mut expected: Vec<Uuid> =
        bus.publish((0..50).map(|i| out(&root, "fifo", "fifo.order.kept", i)).collect()).await.unwrap().iter().map(|e| e.id).collect();
    for i in 50..100 {
        expected.push(bus.publish(vec![out(&root, "fifo", "fifo.order.kept", i)]).await.unwrap()[0].id);
    }
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let d = recv(&mut s, PATIENCE).await.expect("a message");
        got.push(d.envelope.id);
        d.ack().await.unwrap();
    }
    assert_eq!(got, expected);
}

/// Acking later deliveries (all at once, as a batching backend would coalesce them) never
/// settles an earlier one still being handled: dropped unsettled, it comes back.
pub async fn later_acks_never_settle_an_earlier_delivery(h: &impl Harness) {
    let root = h.root();
    let bus = h.open(Sealer::default()).await;
    let mut s = sub(&bus, h.queue("held"), vec![pattern(&root, "held.item.*")], 32).await;
    let ids: Vec<Uuid> =
        bus.publish((0..20).map(|i| out(&root, "held", "held.item.new", i)).collect()).await.unwrap().iter().map(|e| e.id).collect();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(recv(&mut s, PATIENCE).await.expect("a delivery"));
    }
    assert_eq!(got.iter().map(|d| d.envelope.id).collect::<Vec<_>>(), ids);
    let held = got.remove(0);
    let retried = got.remove(4);
    let acks: Vec<_> = got.into_iter().map(|d| tokio::spawn(d.ack())).collect();
    for a in acks {
        a.await.unwrap().unwrap();
    }
    retried.retry(Duration::from_millis(100), "again").await.unwrap();
    drop(held);
    let mut back = BTreeSet::new();
    while let Some(d) = recv(&mut s, Duration::from_secs(3)).await {
        back.insert(d.envelope.id);
        d.ack().await.unwrap();
    }
    assert_eq!(back, BTreeSet::from([ids[0], ids[5]]), "the held and the retried delivery come back, and nothing else");
}

/// Deliveries not acked before the consumer went away are delivered again after a restart.
pub async fn unacked_deliveries_return_after_restart(h: &impl Harness) {
    let root = h.root();
    let q = h.queue("restart");
    let ids: BTreeSet<Uuid>;
    {
        let bus = h.open(Sealer::default()).await;
        let mut s = sub(&bus, q.clone(), vec![pattern(&root, "re.start.*")], 8).await;
        ids = bus.publish((0..5).map(|i| out(&root, "re", "re.start.now", i)).collect()).await.unwrap().iter().map(|e| e.id).collect();
        let held = [recv(&mut s, PATIENCE).await.unwrap(), recv(&mut s, PATIENCE).await.unwrap()];
        // The consumer goes away without settling anything.
        drop(held);
        drop(s);
        drop(bus);
    }
    let bus = h.open(Sealer::default()).await;
    let mut s = sub(&bus, q, vec![pattern(&root, "re.start.*")], 8).await;
    let mut got = BTreeSet::new();
    while got.len() < ids.len() {
        let d = recv(&mut s, PATIENCE).await.expect("every message again after the restart");
        got.insert(d.envelope.id);
        d.ack().await.unwrap();
    }
    assert_eq!(got, ids);
    assert!(recv(&mut s, QUIET).await.is_none());
}

/// The SIGKILL crash test, shared by every backend. A backend's `harness = false`
/// test binary runs [`crash::parent`] and, when re-executed as the child,
/// [`crash::child`]; only how the child opens the bus differs per backend.
pub mod crash {
    use std::collections::{HashMap, HashSet};
    use std::io::Write as _;
    use std::path::Path;
    use std::process::Child;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use patchbay_model::Uuid;

    use super::{Harness, out, pattern};
    use crate::{Bus, QueueSpec, Sealer};

    /// The queue the crash test consumes.
    pub fn spec(h: &impl Harness) -> QueueSpec {
        QueueSpec::new(h.queue("crash"), vec![pattern(&h.root(), "crash.#")]).prefetch(64)
    }

    /// The consumer: logs `D id attempt` on delivery and `A id` once the ack returned; exits when
    /// idle for 2 s. Every tenth message takes 100 ms, so a kill always finds some in flight.
    pub async fn child(bus: Arc<dyn Bus>, spec: QueueSpec, log: &Path) {
        let mut sub = bus.subscribe(spec).await.expect("subscribe");
        let log = Arc::new(std::sync::Mutex::new(std::fs::OpenOptions::new().append(true).create(true).open(log).unwrap()));
        // One write per line on an O_APPEND file: a kill never leaves half a line.
        let write = |log: &std::sync::Mutex<std::fs::File>, line: String| log.lock().unwrap().write_all(line.as_bytes()).unwrap();
        let mut acks = tokio::task::JoinSet::new();
        while let Ok(d) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            let d = d.expect("delivery");
            let (id, attempt) = (d.envelope.id, d.attempt);
            let slow = d.envelope.body["n"].as_u64().unwrap_or(0) % 10 == 0;
            write(&log, format!("D {id} {attempt}\n"));
            let log = log.clone();
            acks.spawn(async move {
                tokio::time::sleep(Duration::from_millis(if slow { 100 } else { 1 })).await;
                d.ack().await.expect("ack");
                write(&log, format!("A {id}\n"));
            });
            while acks.try_join_next().is_some() {}
        }
        while acks.join_next().await.is_some() {}
    }

    fn count_acks(log: &Path) -> usize {
        std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.starts_with("A ")).count()
    }

    async fn publish(h: &impl Harness, from: u64, n: u64) -> Vec<Uuid> {
        let bus = h.open(Sealer::default()).await;
        let mut ids = Vec::new();
        for chunk in (from..from + n).collect::<Vec<_>>().chunks(50) {
            let msgs = chunk.iter().map(|i| out(&h.root(), "crash-test", "crash.item.new", *i)).collect();
            ids.extend(bus.publish(msgs).await.expect("publish accepted").iter().map(|e| e.id));
        }
        ids
    }

    async fn wait_for_exit(child: &mut Child, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "the restarted consumer failed: {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the restarted consumer did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes, lets a child consume, SIGKILLs it mid-stream, publishes more, restarts it,
    /// and checks its log: everything accepted delivered, nothing acked twice, nothing
    /// delivered after its ack, nothing left on the queue. `spawn` starts the child logging to the path.
    pub async fn parent(h: &impl Harness, spawn: impl Fn(&Path) -> Child) {
        let tmp = std::env::temp_dir().join(format!("patchbay-crash-{}", Uuid::now_v7()));
        std::fs::create_dir_all(&tmp).unwrap();
        let log = tmp.join("consumer.log");
        // Declare the queue, then let go of it so the child can consume it.
        {
            let bus = h.open(Sealer::default()).await;
            drop(bus.subscribe(spec(h)).await.unwrap());
        }
        let mut accepted = publish(h, 0, 3000).await;

        let mut child = spawn(&log);
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_acks(&log) < 800 {
            assert!(Instant::now() < deadline, "the consumer made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().expect("SIGKILL the consumer");
        child.wait().unwrap();
        let acked_before_kill = count_acks(&log);
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"K\n").unwrap();
        assert!(acked_before_kill < 3000, "killed too late to be mid-stream");

        accepted.extend(publish(h, 3000, 1000).await);
        let mut child = spawn(&log);
        wait_for_exit(&mut child, Duration::from_secs(120)).await;

        let text = std::fs::read_to_string(&log).unwrap();
        let mut delivered: HashSet<Uuid> = HashSet::new();
        let mut acked: HashMap<Uuid, usize> = HashMap::new();
        let mut delivered_before_kill: HashSet<Uuid> = HashSet::new();
        let (mut redelivered, mut after_kill) = (0, false);
        for line in text.lines() {
            if line == "K" {
                after_kill = true;
                continue;
            }
            let mut words = line.split(' ');
            let (kind, id) = (words.next().unwrap(), words.next().expect("well-formed log line"));
            let id: Uuid = id.parse().unwrap();
            match kind {
                "D" => {
                    assert!(!acked.contains_key(&id), "{id} was delivered again after its ack returned");
                    let attempt: u32 = words.next().and_then(|a| a.parse().ok()).expect("attempt");
                    // Seen before, or sent to the killed consumer (the backend counts that attempt).
                    if !delivered.insert(id) || attempt > 1 {
                        redelivered += 1;
                    }
                    if !after_kill {
                        delivered_before_kill.insert(id);
                    }
                }
                "A" => *acked.entry(id).or_default() += 1,
                other => panic!("unexpected log line kind {other}"),
            }
        }
        for id in &accepted {
            assert!(delivered.contains(id), "{id} was accepted but never delivered: lost");
            assert!(acked.get(id).copied().unwrap_or(0) <= 1, "{id} acked twice");
        }
        // An ack that committed just before the kill may not have reached the log; such a
        // message was in flight at the kill and must not have come back (checked above).
        let unlogged: Vec<&Uuid> = accepted.iter().filter(|id| !acked.contains_key(*id)).collect();
        for id in &unlogged {
            assert!(delivered_before_kill.contains(*id), "{id} has no ack and was not in flight at the kill");
        }
        assert!(unlogged.len() <= 64, "{} messages without a logged ack: more than the prefetch", unlogged.len());
        assert!(redelivered > 0, "nothing was in flight at the kill: the test did not crash mid-stream");
        // Nothing is left on the queue, and nothing was set aside.
        let bus = h.open(Sealer::default()).await;
        let mut sub = bus.subscribe(spec(h)).await.unwrap();
        assert!(super::recv(&mut sub, Duration::from_secs(1)).await.is_none(), "deliveries left on the queue");
        assert!(bus.dead_letters(&spec(h).name, 10).await.unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&tmp);
        eprintln!(
            "crash test: {} accepted, {acked_before_kill} acked before the SIGKILL, {redelivered} redelivered after it, {} acks unlogged",
            accepted.len(),
            unlogged.len()
        );
    }

    /// The `main` of a backend's crash test binary: `$0` runs the test, `$0 child LOG ARGS...`
    /// is the consumer. `child_args` are what the child needs to open the same bus.
    pub fn main<H: Harness>(make: impl Fn(&[String]) -> H, child_args: impl Fn(&H) -> Vec<String>) {
        let args: Vec<String> = std::env::args().collect();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        if args.get(1).map(String::as_str) == Some("child") {
            let h = make(&args[3..]);
            rt.block_on(async {
                let bus = h.open(Sealer::default()).await;
                child(bus, spec(&h), Path::new(&args[2])).await;
            });
            return;
        }
        if args.iter().any(|a| a == "--list") {
            if !args.iter().any(|a| a == "--ignored") {
                println!("crash_kill_mid_stream: test");
            }
            return;
        }
        // `cargo test FILTER`: run only when the filter matches this test's name.
        let filters: Vec<&String> = args.iter().skip(1).filter(|a| !a.starts_with('-')).collect();
        if !filters.is_empty() && !filters.iter().any(|f| "crash_kill_mid_stream".contains(f.as_str())) {
            println!("test result: ok. 0 passed (filtered out)");
            return;
        }
        let h = make(&[]);
        let extra = child_args(&h);
        rt.block_on(parent(&h, |log| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .arg("child")
                .arg(log)
                .args(&extra)
                .spawn()
                .expect("spawn the consumer")
        }));
        println!("test crash_kill_mid_stream ... ok");
    }
}
