//! The service runtime: binds a [`Handler`] to topic patterns on a bus and
//! runs it with the delivery rules every patchbay service shares.
//!
//! - A message is acked only after the handler returned `Ok`, and a handler
//!   returns only after its effects are committed, so a crash at any point
//!   means redelivery, never loss. Handlers must therefore be idempotent.
//! - A transient error is retried with exponential backoff ([`RetryPolicy`]:
//!   `base × 2^(attempt-1)`, 500 ms doubling, capped at 300 s); after
//!   `max_attempts` (5) deliveries, crashes included, the message is
//!   dead-lettered with the last error. A permanent error is dead-lettered at
//!   once. A panic counts as a transient error.
//! - Messages the trust policy refuses never reach the handler.
//! - Shutdown is a future passed in (as mini-redis does): the runtime stops
//!   taking messages, lets running handlers finish within a grace period
//!   (30 s), and returns; anything unfinished returns to the queue.
//!
//! [`ServiceSpec`]: the queue is named after the service; concurrency 8.
//! Shared slots (`ServiceSpec::slots`, a runner's queues): a service takes a
//! message only while holding a slot, and a queue that waits [`SLOT_IDLE`]
//! (50 ms) with no message gives its slot back, so idle queues never starve
//! busy ones (`Subscription::next` is cancel-safe). Shared slots also make the
//! subscription `on_demand`, so on RabbitMQ the broker holds nothing ahead.
//!
//! Replay (`ServiceSpec::replay`, a [`Replay`] source of a sender's messages
//! by sequence range): [`Gaps`] tracks the highest sequence number seen per
//! sender and the ids a replay handled (100,000 kept). When a delivery's
//! sender jumps, the runtime fetches the missing range, handles in order what
//! matches its patterns (signatures checked, 3 brief attempts each), then the
//! delivery. Only a delivery a replay already handled is skipped; a replay
//! that fails leaves each message to its own delivery. `serve` uses the
//! history as the source for the aggregator and reporter on RabbitMQ.
//!
//! Handlers over one body type implement [`BodyHandler`] and run as [`Typed`]: the runtime
//! decodes the envelope ([`decode`]: a body that does not decode is permanent), and
//! [`pattern_of`] gives a body's topic pattern, so no service does either by hand.
//!
//! This crate knows no backend: it takes an `Arc<dyn Bus>` and an
//! `Arc<TrustPolicy>`, and does IO only through the bus.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::{Bus, BusError, Consumer, Delivery, QueueSpec, TopicPattern, TrustPolicy};
use patchbay_model::{Body, Envelope, TopicRoot};
use tokio::task::JoinSet;

/// What went wrong in a handler, and so what to do with the message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might work later (store busy, remote down): retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Can never work (malformed body): dead-letter at once.
    #[error("{0}")]
    Permanent(String),
}

/// One service's reaction to a message.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message; returns only once its effects are committed.
    async fn handle(&self, envelope: &Envelope, attempt: u32) -> Result<(), HandlerError>;
}

/// Decodes a delivery's body as `B`: a body that is not one can never be handled, so the
/// error is permanent (dead-lettered at once, naming the schema expected).
pub fn decode<B: Body>(envelope: &Envelope) -> Result<B, HandlerError> {
    serde_json::from_value(envelope.body.clone()).map_err(|e| HandlerError::Permanent(format!("not a {} body: {e}", B::SCHEMA)))
}

/// The pattern of exactly one topic under `root` (`suffix` as in [`Body::TOPIC`]), so no service
/// builds a topic pattern by hand.
pub fn pattern(root: &TopicRoot, suffix: &str) -> Result<TopicPattern, TopicSetupError> {
    let topic = root.topic(suffix).map_err(|e| TopicSetupError(format!("{suffix}: {e}")))?;
    TopicPattern::parse(topic.as_str()).map_err(|e| TopicSetupError(e.to_string()))
}

/// The pattern of `B`'s topic under `root`.
pub fn pattern_of<B: Body>(root: &TopicRoot) -> Result<TopicPattern, TopicSetupError> {
    pattern(root, B::TOPIC)
}

/// A topic suffix that makes no valid topic or pattern under the deployment's root: a
/// configuration error (a test or architecture name with a dot or a space, say).
#[derive(Debug, thiserror::Error)]
#[error("bad topic: {0}")]
pub struct TopicSetupError(String);

/// A service's reaction to one body type: the runtime decodes the envelope (see [`Typed`]).
#[async_trait]
pub trait BodyHandler<B: Body>: Send + Sync + 'static {
    /// Handles one `body` (from `envelope`); returns only once its effects are committed.
    async fn handle_body(&self, envelope: &Envelope, body: B, attempt: u32) -> Result<(), HandlerError>;
}

/// Adapts a [`BodyHandler`] to a [`Handler`]: a body that does not decode is dead-lettered.
pub struct Typed<B, H> {
    inner: H,
    body: std::marker::PhantomData<fn() -> B>,
}

impl<B: Body, H: BodyHandler<B>> Typed<B, H> {
    /// `inner`, taking envelopes.
    pub fn new(inner: H) -> Arc<Self> {
        Arc::new(Typed { inner, body: std::marker::PhantomData })
    }

    /// The wrapped handler.
    pub fn inner(&self) -> &H {
        &self.inner
    }
}

#[async_trait]
impl<B: Body + Send + 'static, H: BodyHandler<B>> Handler for Typed<B, H> {
    async fn handle(&self, envelope: &Envelope, attempt: u32) -> Result<(), HandlerError> {
        let body = decode::<B>(envelope)?;
        self.inner.handle_body(envelope, body, attempt).await
    }
}

/// How hard to retry.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Deliveries after which a failing message is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the second delivery; doubles each attempt.
    pub base_delay: Duration,
    /// Upper bound of the delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// The delay after failed attempt `attempt` (1-based): base × 2^(attempt-1), capped.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// A service: a name, a queue, the topics it listens to and how it runs.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// The service name, for logs.
    pub name: String,
    /// The durable queue; instances of one service share it and compete.
    pub queue: String,
    /// Topic patterns bound to the queue.
    pub patterns: Vec<TopicPattern>,
    /// How many messages are handled at once (the subscription's prefetch).
    pub concurrency: u16,
    /// Retry and dead-letter policy.
    pub retry: RetryPolicy,
    /// How long running handlers may take to finish after shutdown is signalled.
    pub grace: Duration,
    /// Slots shared with other services (a runner's `--jobs` across its queues): a message is
    /// taken from the queue only while a slot is free, so nothing waits in this process that
    /// another process could be running. An idle queue gives its slot back every
    /// [`SLOT_IDLE`], so queues sharing slots take turns instead of starving each other.
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Where missed messages are fetched from: when a sender's sequence jumps, the runtime asks
    /// for the range in between and handles what matches this service's patterns first, in
    /// order, each message once. `None`: no gap detection (a durable queue never loses).
    pub replay: Option<Arc<dyn Replay>>,
}

/// A source of a sender's messages by sequence range (the history).
#[async_trait]
pub trait Replay: Send + Sync + std::fmt::Debug {
    /// The sender's messages with `from <= seq <= to`, in sequence order.
    async fn range(&self, sender: &patchbay_model::Sender, from: u64, to: u64) -> Result<Vec<Envelope>, String>;
}

/// Per sender, the highest sequence number seen, and the ids taken care of out of band
/// (bounded): what tells a gap, and what keeps a replayed message from being handled twice
/// when its own delivery comes late.
#[derive(Default)]
pub struct Gaps {
    last: std::collections::HashMap<patchbay_model::Sender, u64>,
    seen: std::collections::HashSet<patchbay_model::Uuid>,
    order: std::collections::VecDeque<patchbay_model::Uuid>,
}

/// Message ids remembered as handled.
const SEEN_KEPT: usize = 100_000;

impl Gaps {
    /// Notes `seq` from `sender`; returns the range missed before it, if any. The first message
    /// of a sender only sets where it stands.
    pub fn observe(&mut self, sender: &patchbay_model::Sender, seq: u64) -> Option<(u64, u64)> {
        let gap = match self.last.get(sender) {
            Some(&last) if seq > last + 1 => Some((last + 1, seq - 1)),
            _ => None,
        };
        let last = self.last.entry(sender.clone()).or_insert(seq);
        *last = (*last).max(seq);
        gap
    }

    /// Remembers that a replay handled `id`.
    pub fn mark_replayed(&mut self, id: patchbay_model::Uuid) {
        self.first_time(id);
    }

    /// Whether a replay handled `id`.
    pub fn was_replayed(&self, id: patchbay_model::Uuid) -> bool {
        self.seen.contains(&id)
    }

    /// Whether `id` is new (and remembers it): for readers that show each message once (`tail`).
    pub fn first_time(&mut self, id: patchbay_model::Uuid) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN_KEPT
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// How long a queue holds a shared slot while no message comes.
pub const SLOT_IDLE: Duration = Duration::from_millis(50);

impl ServiceSpec {
    /// A service named `name` on a queue of the same name.
    pub fn new(name: &str, patterns: Vec<TopicPattern>) -> Self {
        ServiceSpec {
            name: name.to_string(),
            queue: name.to_string(),
            patterns,
            concurrency: 8,
            retry: RetryPolicy::default(),
            grace: Duration::from_secs(30),
            slots: None,
            replay: None,
        }
    }
}

/// Why a service stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The bus refused the service's queue: a configuration error.
    #[error("service {service}: {source}")]
    Bus {
        /// The service.
        service: String,
        /// The bus's error.
        source: BusError,
    },
}

const RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Runs `handler` for `spec` until `shutdown` resolves.
pub async fn run(
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    spec: ServiceSpec,
    handler: Arc<dyn Handler>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    tokio::pin!(shutdown);
    // With shared slots, take a message only while holding one: nothing waits here that
    // another consumer could be running.
    let queue = QueueSpec::new(spec.queue.clone(), spec.patterns.clone()).prefetch(spec.concurrency).on_demand(spec.slots.is_some());
    let mut backoff = Duration::from_millis(200);
    let mut consumer = loop {
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            sub = bus.subscribe(queue.clone()) => match sub {
                Ok(sub) => break Consumer::new(sub, policy.clone()),
                Err(source @ BusError::Invalid(_)) => return Err(RuntimeError::Bus { service: spec.name.clone(), source }),
                Err(error) => {
                    tracing::warn!(service = %spec.name, %error, retry_in = ?backoff, "Cannot reach the bus; retrying.");
                    tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    };
    tracing::info!(service = %spec.name, queue = %spec.queue, "Service started.");
    let counts = Arc::new(Counts::of(&spec.name));
    let spec = Arc::new(spec);
    let mut running: JoinSet<()> = JoinSet::new();
    let mut backoff = Duration::from_millis(200);
    let mut slot: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut gaps = Gaps::default();
    loop {
        let shared = spec.slots.is_some();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            permit = acquire(spec.slots.clone()), if shared && slot.is_none() => slot = permit,
            // `next` is cancel-safe, so giving the slot back while waiting loses nothing.
            () = tokio::time::sleep(SLOT_IDLE), if shared && slot.is_some() => slot = None,
            next = consumer.next(), if !shared || slot.is_some() => match next {
                Ok(delivery) => {
                    backoff = Duration::from_millis(200);
                    if let Some(replay) = &spec.replay
                        && !catch_up(&spec, replay.as_ref(), &policy, &handler, &mut gaps, &delivery.envelope).await
                    {
                        // Handled already, by a replay: settle it and move on.
                        if let Err(error) = delivery.ack().await {
                            tracing::warn!(service = %spec.name, %error, "Could not settle a replayed delivery.");
                        }
                        continue;
                    }
                    let held = slot.take();
                    let (spec, handler, counts) = (spec.clone(), handler.clone(), counts.clone());
                    running.spawn(async move {
                        handle_one(spec, handler, delivery, &counts).await;
                        drop(held);
                    });
                }
                Err(BusError::Closed) => break,
                Err(error) => {
                    tracing::warn!(service = %spec.name, %error, retry_in = ?backoff, "Lost the bus; retrying.");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }
    tracing::info!(service = %spec.name, running = running.len(), "Service stopping; letting running handlers finish.");
    let drained = tokio::time::timeout(spec.grace, async { while running.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(service = %spec.name, unfinished = running.len(), "Grace period over; unfinished messages return to the queue.");
        running.shutdown().await;
    }
    tracing::info!(service = %spec.name, "Service stopped.");
    Ok(())
}

/// Before `current` is handled: fetches what its sender published since the last message seen,
/// and handles (in order, once) what this service subscribes to. Returns whether `current`
/// itself still needs handling.
async fn catch_up(
    spec: &ServiceSpec,
    replay: &dyn Replay,
    policy: &TrustPolicy,
    handler: &Arc<dyn Handler>,
    gaps: &mut Gaps,
    current: &Envelope,
) -> bool {
    if let Some((from, to)) = gaps.observe(&current.sender, current.seq) {
        match replay.range(&current.sender, from, to).await {
            Err(error) => {
                tracing::warn!(service = %spec.name, sender = %current.sender.service, from, to, %error, "Missed messages could not be fetched.")
            }
            Ok(missed) => {
                for env in missed {
                    if !spec.patterns.iter().any(|p| p.matches(&env.topic)) || gaps.was_replayed(env.id) {
                        continue;
                    }
                    if let Err(error) = policy.check(&env) {
                        tracing::warn!(service = %spec.name, id = %env.id, ?error, "A replayed message failed its signature check; skipped.");
                        continue;
                    }
                    tracing::info!(service = %spec.name, id = %env.id, seq = env.seq, "Handling a message missed on the way (replay).");
                    for attempt in 1..=REPLAY_ATTEMPTS {
                        let (h, e) = (handler.clone(), env.clone());
                        // Its own task, so a panic is contained as in `handle_one`.
                        let result = match tokio::spawn(async move { h.handle(&e, attempt).await }).await {
                            Ok(r) => r,
                            Err(_) => Err(HandlerError::Transient("handler panicked".into())),
                        };
                        match result {
                            Ok(()) => {
                                gaps.mark_replayed(env.id);
                                break;
                            }
                            Err(HandlerError::Transient(error)) if attempt < REPLAY_ATTEMPTS => {
                                tracing::info!(service = %spec.name, id = %env.id, %error, "Replayed message failed; retrying.");
                                tokio::time::sleep(spec.retry.delay(attempt).min(Duration::from_secs(2))).await;
                            }
                            Err(error) => {
                                // Not marked: if its own delivery ever comes, it is handled then, with the
                                // queue's retries and dead-lettering.
                                tracing::warn!(service = %spec.name, id = %env.id, %error, "Replayed message failed; left for its own delivery.");
                                break;
                            }
                        }
                    }
                }
            }
        }
    }
    // Only a message a replay handled is skipped; retries and redeliveries of the rest are handled.
    !gaps.was_replayed(current.id)
}

/// Attempts at a replayed message, briefly: the consumer loop waits for them.
const REPLAY_ATTEMPTS: u32 = 3;

async fn acquire(slots: Option<Arc<tokio::sync::Semaphore>>) -> Option<tokio::sync::OwnedSemaphorePermit> {
    match slots {
        Some(s) => s.acquire_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// Aborts the handler's task when the runtime gives up on it (grace period over),
/// so a handler never runs on after its message went back to the queue.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A service's handles into the process's metrics, resolved once when it starts.
struct Counts {
    handled: patchbay_metrics::Counter,
    retried: patchbay_metrics::Counter,
    dead_lettered: patchbay_metrics::Counter,
    seconds: patchbay_metrics::Histogram,
}

impl Counts {
    fn of(service: &str) -> Counts {
        let m = patchbay_metrics::metrics();
        let label = m.service(service);
        Counts {
            handled: m.handled.get_or_create(&label).clone(),
            retried: m.retried.get_or_create(&label).clone(),
            dead_lettered: m.dead_lettered.get_or_create(&label).clone(),
            seconds: m.handler_seconds.get_or_create(&label).clone(),
        }
    }
}

async fn handle_one(spec: Arc<ServiceSpec>, handler: Arc<dyn Handler>, delivery: Delivery, counts: &Counts) {
    let envelope = Arc::new(delivery.envelope.clone());
    let attempt = delivery.attempt;
    let started = std::time::Instant::now();
    let outcome = {
        let envelope = envelope.clone();
        // Its own task, so a panic is caught and counted instead of unwinding through the runtime.
        let mut task = AbortOnDrop(tokio::spawn(async move { handler.handle(&envelope, attempt).await }));
        match (&mut task.0).await {
            Ok(result) => result,
            Err(join) => Err(HandlerError::Transient(if join.is_panic() { "handler panicked".into() } else { "handler cancelled".into() })),
        }
    };
    counts.seconds.observe(started.elapsed().as_secs_f64());
    let (id, topic, service) = (envelope.id, &envelope.topic, &spec.name);
    let settled = match outcome {
        Ok(()) => {
            tracing::debug!(%service, %id, %topic, attempt, "Handled.");
            counts.handled.inc();
            delivery.ack().await
        }
        Err(HandlerError::Permanent(error)) => {
            tracing::warn!(%service, %id, %topic, attempt, %error, "Handler failed permanently; dead-lettered.");
            counts.dead_lettered.inc();
            delivery.dead_letter(format!("permanent failure: {error}")).await
        }
        Err(HandlerError::Transient(error)) if attempt >= spec.retry.max_attempts => {
            tracing::warn!(%service, %id, %topic, attempt, %error, "Handler kept failing; dead-lettered.");
            counts.dead_lettered.inc();
            delivery.dead_letter(format!("gave up after {attempt} attempts: {error}")).await
        }
        Err(HandlerError::Transient(error)) => {
            let delay = spec.retry.delay(attempt);
            tracing::info!(%service, %id, %topic, attempt, %error, retry_in = ?delay, "Handler failed; will retry.");
            counts.retried.inc();
            delivery.retry(delay, error).await
        }
    };
    if let Err(error) = settled {
        tracing::warn!(%service, %id, %error, "Could not settle the delivery; it will be delivered again.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_told_per_sender_and_ids_once() {
        let (a, b) = (patchbay_model::Sender::new("a", "1"), patchbay_model::Sender::new("b", "1"));
        let mut g = Gaps::default();
        assert_eq!(g.observe(&a, 5), None, "the first message only sets where a sender stands");
        assert_eq!(g.observe(&a, 6), None);
        assert_eq!(g.observe(&a, 9), Some((7, 8)));
        assert_eq!(g.observe(&b, 100), None, "senders are apart");
        assert_eq!(g.observe(&a, 8), None, "late arrivals open no gap");
        assert_eq!(g.observe(&a, 10), None);
        let id = patchbay_model::Uuid::now_v7();
        assert!(!g.was_replayed(id), "a delivery nobody replayed is handled, however often it comes");
        g.mark_replayed(id);
        assert!(g.was_replayed(id));
        let other = patchbay_model::Uuid::now_v7();
        assert!(g.first_time(other));
        assert!(!g.first_time(other));
    }

    fn envelope(schema: &str, body: serde_json::Value) -> Envelope {
        Envelope {
            id: patchbay_model::Uuid::now_v7(),
            topic: TopicRoot::new("patchbay", "test").unwrap().topic(patchbay_model::TestLog::TOPIC).unwrap(),
            sent_at: patchbay_model::Timestamp::now(),
            sender: patchbay_model::Sender::new("runner", "1"),
            seq: 1,
            schema: patchbay_model::SchemaRef { name: schema.into(), version: 1 },
            body,
            signature: None,
        }
    }

    struct Count(std::sync::atomic::AtomicU32);

    #[async_trait]
    impl BodyHandler<patchbay_model::TestLog> for Count {
        async fn handle_body(&self, _: &Envelope, log: patchbay_model::TestLog, _: u32) -> Result<(), HandlerError> {
            self.0.fetch_add(log.index, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
    }

    #[tokio::test]
    async fn typed_handlers_get_bodies_and_bad_bodies_are_permanent() {
        let handler = Typed::new(Count(0.into()));
        let good = serde_json::json!({"job": "j", "run": "r", "index": 3, "last": true, "text": "ok"});
        let bad = serde_json::json!({"job": 7});
        let as_handler: Arc<dyn Handler> = handler.clone();
        if let Err(e) = as_handler.handle(&envelope(patchbay_model::TestLog::SCHEMA, good.clone()), 1).await {
            panic!("a good body is handled: {e} (body {good}, fields as in TestLog?)");
        }
        assert_eq!(handler.inner().0.load(std::sync::atomic::Ordering::SeqCst), 3);
        match as_handler.handle(&envelope(patchbay_model::TestLog::SCHEMA, bad), 1).await {
            Err(HandlerError::Permanent(m)) => assert!(m.contains(patchbay_model::TestLog::SCHEMA), "{m}"),
            other => panic!("a body that is not a TestLog is permanent, got {other:?}"),
        }
        assert_eq!(handler.inner().0.load(std::sync::atomic::Ordering::SeqCst), 3, "the handler never saw it");
        let p = pattern_of::<patchbay_model::TestLog>(&TopicRoot::new("patchbay", "test").unwrap()).unwrap();
        assert!(p.matches(&TopicRoot::new("patchbay", "test").unwrap().topic(patchbay_model::TestLog::TOPIC).unwrap()));
        assert!(pattern(&TopicRoot::new("patchbay", "test").unwrap(), "ci.job.has space.queued").is_err(), "a bad suffix is a setup error");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy { max_attempts: 9, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1) };
        let delays: Vec<u128> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(1));
    }
}
