//! The [`Bus`] over RabbitMQ (AMQP 0.9.1, lapin 4, rustls with ring), for the
//! scale-out shape.
//!
//! Topology, all durable: a topic exchange (`exchange`, default `patchbay`)
//! that messages are published to with the topic as routing key; one queue
//! per [`QueueSpec`] bound with the same patterns (AMQP topic semantics are
//! ours already); per queue, wait queues `<queue>.retry.<ms>` (delays rounded
//! up to a fixed ladder) whose TTL dead-letters a retried message back into
//! the queue through the default exchange; and a direct exchange
//! `<exchange>.dead` routing to `<queue>.dead`, where dead letters wait with
//! `x-patchbay-reason`, `x-patchbay-attempts` and `x-patchbay-dead-at`.
//! Chosen over the delayed-message plugin (not in Debian's 3.10) and quorum
//! queues (their delivery count would count every crash redelivery).
//!
//! Publishes are persistent and confirmed, many in flight: `publish` seals
//! and sends under the sender's lock (per-sender order on the wire), collects
//! every confirm, then resends what was not confirmed, all within one
//! `publish_timeout`. Consumers ack manually after the handler committed.
//! Every settlement of a subscription goes through one task (`Settler`):
//! nacks first, then the contiguous run of acks at the bottom of what is
//! outstanding as one `multiple` ack; entries of a poisoned acker (a
//! reconnect) are purged so reused delivery tags are never confused. Retry and
//! dead-letter publish the copy (confirmed) before acking the original: a
//! crash in between delivers twice, never zero times. Attempts are
//! `x-patchbay-attempts` + 1, + 1 when the broker says `redelivered`.
//!
//! Connection loss is ours to handle, not lapin's (its auto-recovery sometimes
//! never finished after a node restart): the bus holds one numbered [`Link`]
//! (a connection and its publishing channel). Whoever finds it dead asks
//! `reconnect(generation)`; the first asker reconnects (100 ms doubling to
//! 2 s, each handshake bounded to 10 s) and re-declares the exchanges, later
//! askers of that generation get the new link. A confirm missing for 10 s
//! means a half-dead link, replaced too; subscriptions watch the link
//! generation, open a new channel with a new settler, re-declare, re-bind and
//! consume again, in a task kept across a cancelled `next`. Wait queues are
//! declared on a throwaway channel. An unreadable delivery is dead-lettered in
//! a task of its own. Every wait is bounded by `publish_timeout`: an outage
//! ends in a clear error, never a hang. (Adding lapin's `connection_timeout`
//! URI parameter broke its recovery here; don't.)
//!
//! `QueueSpec::on_demand` takes one message per `next()` by `basic.get`
//! instead of a pushing consumer, so the broker holds nothing ahead of shared
//! slots; a get in flight survives a cancelled `next()`.
//!
//! The envelope travels as its wire bytes, unchanged, so signatures verify
//! after the trip; AMQP properties mirror it (`message_id`, `timestamp`,
//! `content_type`, `type` = schema) for tools that look at them.
//!
//! Sequence numbers come from files under `state_dir` (`<data>/amqp/seq`),
//! reserved 1,024 at a time (see [`seq`]). This crate knows nothing of the
//! store or of services.

mod claim;
pub mod seq;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use patchbay_bus::{Acker, Bus, BusError, DeadLetter, Delivery, Outgoing, QueueSpec, Sealer, Subscription};
use patchbay_model::{Envelope, Timestamp};

pub use claim::{ClaimError, NamespaceClaim};

const H_ATTEMPTS: &str = "x-patchbay-attempts";
const H_REASON: &str = "x-patchbay-reason";
const H_DEAD_AT: &str = "x-patchbay-dead-at";
/// Retry delays are rounded up to one of these, so each queue has a bounded set of wait queues.
const DELAY_LADDER_MS: &[u64] =
    &[100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_800_000, 3_600_000, 21_600_000, 86_400_000];

/// How to reach and use the broker.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost` or `amqps://…`.
    pub url: String,
    /// The topic exchange messages are published to.
    pub exchange: String,
    /// Where per-sender sequence counters are kept.
    pub state_dir: PathBuf,
    /// How long a publish waits through a broker outage before failing.
    pub publish_timeout: Duration,
    /// How long `connect` keeps trying before giving up.
    pub connect_timeout: Duration,
    /// Delete queues unused for this long (`x-expires`); for tests on a shared broker.
    pub queue_expiry: Option<Duration>,
    /// Put before every queue name on the broker (`serve` uses its topic root, `<prefix>.<env>.`),
    /// so that two environments sharing a broker never take each other's messages.
    pub queue_prefix: String,
}

impl AmqpConfig {
    /// Defaults for everything but the URL and the state directory.
    pub fn new(url: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        AmqpConfig {
            url: url.into(),
            exchange: "patchbay".into(),
            state_dir: state_dir.into(),
            publish_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(60),
            queue_expiry: None,
            queue_prefix: String::new(),
        }
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("RabbitMQ: {what}: {e}"))
}

/// The RabbitMQ bus; cheap to clone.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

/// One connection to the broker and the channel publishes go through. Replaced as a whole
/// when it dies; `generation` tells askers whether someone already replaced it.
struct Link {
    generation: u64,
    conn: Connection,
    publisher: Channel,
}

struct Inner {
    config: AmqpConfig,
    link: std::sync::RwLock<Arc<Link>>,
    /// Held while a new link is made, so that one task reconnects and the others wait for it.
    reconnecting: tokio::sync::Mutex<()>,
    /// The current link's generation, watched by subscriptions: a consumer on a link we gave
    /// up on may never hear of it from lapin (a half-dead TCP connection), so it moves on when
    /// this changes.
    generation: tokio::sync::watch::Sender<u64>,
    /// Sealing and sending under the sender's lock keeps its messages in sequence order on the wire.
    seqs: seq::FileSeqs,
    sealer: Sealer,
    wait_queues: std::sync::Mutex<HashSet<String>>,
}

fn queue_args(config: &AmqpConfig) -> FieldTable {
    let mut args = FieldTable::default();
    if let Some(expiry) = config.queue_expiry {
        args.insert("x-expires".into(), AMQPValue::LongUInt(expiry.as_millis().min(u32::MAX as u128) as u32));
    }
    args
}

/// Longest wait between two reconnect attempts: a restarted broker is found within this.
const RECONNECT_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A broker that accepts TCP but never finishes the handshake is given up on after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and sets up the publishing channel: confirm mode, both exchanges declared.
async fn open_link(config: &AmqpConfig, generation: u64) -> Result<Link, lapin::Error> {
    let props = ConnectionProperties::default().with_connection_name("patchbay".into());
    let connecting = tokio::time::timeout(HANDSHAKE_TIMEOUT, Connection::connect(&config.url, props)).await;
    let conn = connecting.unwrap_or_else(|_| Err(lapin::Error::from(std::io::Error::from(std::io::ErrorKind::TimedOut))))?;
    let publisher = conn.create_channel().await?;
    publisher.confirm_select(ConfirmSelectOptions::default()).await?;
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    publisher.exchange_declare(config.exchange.as_str().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    publisher.exchange_declare(format!("{}.dead", config.exchange).into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
    Ok(Link { generation, conn, publisher })
}

/// Opens a link, retrying with backoff (and saying so) until `deadline`.
async fn open_link_until(config: &AmqpConfig, generation: u64, deadline: Instant) -> Result<Link, BusError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match open_link(config, generation).await {
            Ok(link) => return Ok(link),
            Err(e) if Instant::now() + backoff < deadline => {
                tracing::warn!(error = %e, retry_in = ?backoff, "Cannot reach RabbitMQ; retrying.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX_BACKOFF);
            }
            Err(e) => return Err(unavailable("connect", e)),
        }
    }
}

impl AmqpBus {
    /// Connects (retrying with backoff until `connect_timeout`), declares the exchanges.
    pub async fn connect(config: AmqpConfig, sealer: Sealer) -> Result<Self, BusError> {
        let link = open_link_until(&config, 0, Instant::now() + config.connect_timeout).await?;
        Ok(AmqpBus {
            inner: Arc::new(Inner {
                seqs: seq::FileSeqs::new(&config.state_dir.join("seq")),
                config,
                link: std::sync::RwLock::new(Arc::new(link)),
                reconnecting: tokio::sync::Mutex::new(()),
                generation: tokio::sync::watch::Sender::new(0),
                sealer,
                wait_queues: std::sync::Mutex::new(HashSet::new()),
            }),
        })
    }
}

impl AmqpBus {
    /// Claims this bus's namespace (exchange and queue prefix) for the one process keeping its
    /// store, `holder` saying who that is; see `claim.rs`. Held while the value lives.
    pub async fn claim_namespace(&self, holder: &str) -> Result<NamespaceClaim, ClaimError> {
        claim::claim(&self.inner.config, holder).await
    }

    /// The heartbeat interval negotiated with the broker, in seconds (0: none).
    pub fn heartbeat_secs(&self) -> u16 {
        self.inner.link().conn.configuration().heartbeat()
    }
}

/// Where a message goes and what it is: everything a send (and a resend) needs.
#[derive(Clone, Copy)]
struct Outbound<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    wire: &'a [u8],
    props: &'a BasicProperties,
}

/// A message sent and not yet confirmed, with what it takes to send it again.
struct Unconfirmed {
    confirm: lapin::PublisherConfirm,
    /// The generation of the link it went out on.
    link: u64,
    wire: Vec<u8>,
    props: BasicProperties,
    topic: String,
}

/// What became of one publish.
enum Confirmed {
    Ack,
    Nack,
    Error(lapin::Error),
    /// No answer within the attempt's time: the connection may have died with it in flight.
    Lost,
}

/// Waits for a confirm, at most 10 s per attempt and never past `deadline`, so a confirm
/// lost with a connection leads to a resend instead of a publish that never returns.
async fn confirmed(confirm: lapin::PublisherConfirm, deadline: Instant) -> Confirmed {
    let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(10));
    match tokio::time::timeout(wait, confirm).await {
        Ok(Ok(c)) if c.is_ack() => Confirmed::Ack,
        Ok(Ok(_)) => Confirmed::Nack,
        Ok(Err(e)) => Confirmed::Error(e),
        Err(_) => Confirmed::Lost,
    }
}

fn properties(env: &Envelope, headers: FieldTable) -> BasicProperties {
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(env.id.to_string().into())
        .with_timestamp((env.sent_at.as_micros() / 1_000_000).max(0) as u64)
        .with_type(format!("{}.v{}", env.schema.name, env.schema.version).into());
    // An empty table still costs the broker encoding and storage on every message.
    if headers.inner().is_empty() { props } else { props.with_headers(headers) }
}

impl Inner {
    /// The current link.
    fn link(&self) -> Arc<Link> {
        self.link.read().unwrap().clone()
    }

    /// Replaces link `failed` by a new connection, unless another task already did; waits for
    /// the broker with backoff until `deadline`.
    async fn reconnect(&self, failed: u64, deadline: Instant) -> Result<Arc<Link>, BusError> {
        let _one = tokio::time::timeout_at(deadline.into(), self.reconnecting.lock())
            .await
            .map_err(|_| BusError::Unavailable("RabbitMQ: no connection within publish_timeout".into()))?;
        let old = self.link();
        if old.generation != failed {
            return Ok(old);
        }
        tracing::warn!(link = failed, "RabbitMQ connection lost; reconnecting.");
        // The old connection may be half alive (a confirm that never came): close it for good,
        // so that its consumers notice and move to the new link too.
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), old.conn.close(320, "patchbay reconnects".into())).await;
        });
        let link = Arc::new(open_link_until(&self.config, failed + 1, deadline).await?);
        *self.link.write().unwrap() = link.clone();
        self.generation.send_replace(link.generation);
        self.wait_queues.lock().unwrap().clear();
        tracing::info!(link = link.generation, "Reconnected to RabbitMQ.");
        Ok(link)
    }

    /// Sends one message and returns the confirm future and the link it went out on,
    /// reconnecting through an outage if needed.
    async fn send(&self, out: Outbound<'_>, deadline: Instant) -> Result<(lapin::PublisherConfirm, u64), BusError> {
        let Outbound { exchange, routing_key, wire, props } = out;
        loop {
            let link = self.link();
            let remaining = deadline.saturating_duration_since(Instant::now());
            let publish =
                link.publisher.basic_publish(exchange.into(), routing_key.into(), BasicPublishOptions::default(), wire, props.clone());
            let sent = tokio::time::timeout(remaining, publish).await.map_err(|_| {
                BusError::Unavailable(format!("RabbitMQ: publish: not sent within publish_timeout ({:?})", self.config.publish_timeout))
            })?;
            match sent {
                Ok(confirm) => return Ok((confirm, link.generation)),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "RabbitMQ publish failed; reconnecting.");
                    self.reconnect(link.generation, deadline).await?;
                }
                Err(e) => return Err(unavailable("publish", e)),
            }
        }
    }

    /// Sends one envelope to the exchange under its topic; the confirm is awaited by [`Inner::confirm_all`].
    async fn send_envelope(&self, env: &Envelope, deadline: Instant) -> Result<Unconfirmed, BusError> {
        let wire = env.to_wire();
        let props = properties(env, FieldTable::default());
        let out = Outbound { exchange: &self.config.exchange, routing_key: env.topic.as_str(), wire: &wire, props: &props };
        let (confirm, link) = self.send(out, deadline).await?;
        Ok(Unconfirmed { confirm, link, wire, props, topic: env.topic.to_string() })
    }

    /// Waits for every confirm of messages sent in flight; what the broker did not confirm is
    /// resent (same id: consumers are idempotent) until confirmed or out of time.
    async fn confirm_all(&self, pending: Vec<Unconfirmed>, deadline: Instant) -> Result<(), BusError> {
        // Every confirm first, then the resends: one slow confirm must not turn the others
        // into resends of messages the broker has.
        let mut unconfirmed = Vec::new();
        for Unconfirmed { confirm, link, wire, props, topic } in pending {
            match confirmed(confirm, deadline).await {
                Confirmed::Ack => {}
                outcome => unconfirmed.push((outcome, link, wire, props, topic)),
            }
        }
        for (outcome, link, wire, props, topic) in unconfirmed {
            self.after_unconfirmed(&outcome, link, deadline).await?;
            let out = Outbound { exchange: &self.config.exchange, routing_key: &topic, wire: &wire, props: &props };
            self.publish_confirmed_until(out, deadline).await?;
        }
        Ok(())
    }

    /// After a publish on link `link` went unconfirmed: a confirm that never came means the
    /// link is half dead (TCP up, broker gone), which lapin may not notice for minutes, so it
    /// is replaced; a nack or an error needs nothing before the resend.
    async fn after_unconfirmed(&self, outcome: &Confirmed, link: u64, deadline: Instant) -> Result<(), BusError> {
        if matches!(outcome, Confirmed::Lost) && Instant::now() < deadline {
            tracing::warn!(link, "RabbitMQ did not answer a publish in time; replacing the connection.");
            self.reconnect(link, deadline).await?;
        }
        Ok(())
    }

    /// Publishes and waits for the broker's confirm, resending through outages for up to
    /// `publish_timeout`.
    async fn publish_confirmed(&self, exchange: &str, routing_key: &str, wire: &[u8], props: &BasicProperties) -> Result<(), BusError> {
        let out = Outbound { exchange, routing_key, wire, props };
        self.publish_confirmed_until(out, Instant::now() + self.config.publish_timeout).await
    }

    /// Publishes and waits for the broker's confirm, resending through outages until `deadline`.
    async fn publish_confirmed_until(&self, out: Outbound<'_>, deadline: Instant) -> Result<(), BusError> {
        let routing_key = out.routing_key;
        loop {
            let (confirm, link) = self.send(out, deadline).await?;
            let outcome = confirmed(confirm, deadline).await;
            match outcome {
                Confirmed::Ack => return Ok(()),
                // A publish errors when its link died: `send` reconnects on the next round.
                Confirmed::Nack | Confirmed::Lost | Confirmed::Error(_) if Instant::now() < deadline => {
                    tracing::warn!(routing_key, "RabbitMQ did not confirm a publish; resending.");
                    self.after_unconfirmed(&outcome, link, deadline).await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Confirmed::Error(e) => return Err(unavailable("confirm", e)),
                Confirmed::Nack | Confirmed::Lost => {
                    return Err(BusError::Unavailable(format!(
                        "RabbitMQ: no confirm within publish_timeout ({:?})",
                        self.config.publish_timeout
                    )));
                }
            }
        }
    }

    async fn declare_wait_queue(&self, queue: &str, ms: u64) -> Result<String, BusError> {
        let name = format!("{queue}.retry.{ms}");
        if self.wait_queues.lock().unwrap().contains(&name) {
            return Ok(name);
        }
        let mut args = queue_args(&self.config);
        args.insert("x-message-ttl".into(), AMQPValue::LongUInt(ms as u32));
        args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(queue.into()));
        // On a channel of its own: a refusal (a queue of that name with other arguments) closes
        // the channel it came on, and the publishing channel must not go with it.
        let channel = self.link().conn.create_channel().await.map_err(|e| unavailable("open a channel", e))?;
        let declared = channel.queue_declare(name.as_str().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args).await;
        let _ = channel.close(200, "declared".into()).await;
        declared.map_err(|e| unavailable("declare a wait queue", e))?;
        self.wait_queues.lock().unwrap().insert(name.clone());
        Ok(name)
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn ready(&self) -> Result<(), BusError> {
        if self.inner.link().conn.status().connected() {
            Ok(())
        } else {
            Err(BusError::Unavailable("RabbitMQ: the link is down; reconnecting".into()))
        }
    }

    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<Envelope>, BusError> {
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let mut sealed = Vec::with_capacity(messages.len());
        let mut pending = Vec::with_capacity(messages.len());
        for out in messages {
            let mut guard = self.inner.seqs.lock(&out.sender).await.map_err(|e| unavailable("sequence numbers", e))?;
            let seq = guard.as_mut().expect("loaded by lock").take().map_err(|e| unavailable("sequence numbers", e))?;
            let env = self.inner.sealer.seal(out, seq);
            pending.push(self.inner.send_envelope(&env, deadline).await?);
            sealed.push(env);
        }
        self.inner.confirm_all(pending, deadline).await?;
        Ok(sealed)
    }

    async fn publish_sealed(&self, envelopes: Vec<Envelope>) -> Result<(), BusError> {
        // Sent one after another, confirmed together: a relay of many messages is not a round
        // trip per message.
        let deadline = Instant::now() + self.inner.config.publish_timeout;
        let mut pending = Vec::with_capacity(envelopes.len());
        for env in &envelopes {
            pending.push(self.inner.send_envelope(env, deadline).await?);
        }
        self.inner.confirm_all(pending, deadline).await
    }

    async fn subscribe(&self, mut spec: QueueSpec) -> Result<Box<dyn Subscription>, BusError> {
        spec.validate()?;
        spec.name = format!("{}{}", self.inner.config.queue_prefix, spec.name);
        if spec.name.len() > 200 {
            return Err(BusError::Invalid(format!("queue name {:?} is too long for its retry queues", spec.name)));
        }
        let spec = Arc::new(spec);
        // The first setup fails to the caller; later ones (after a lost link) retry in `next`.
        let deadline = Instant::now() + self.inner.config.connect_timeout;
        let channel = SubChannel::open(&self.inner, &spec, deadline).await?;
        Ok(Box::new(AmqpSubscription {
            bus: self.inner.clone(),
            queue: spec.name.clone(),
            spec,
            channel: Some(channel),
            reopen: None,
            fetch: None,
            idle: POLL_MIN,
            generation: self.inner.generation.subscribe(),
        }))
    }

    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError> {
        // Peek: take without acking, then close the channel so they all return, in order.
        let channel = self.inner.link().conn.create_channel().await.map_err(|e| unavailable("open a channel", e))?;
        let dead = format!("{}{queue}.dead", self.inner.config.queue_prefix);
        let mut out = Vec::new();
        while out.len() < limit {
            let got = match channel.basic_get(dead.as_str().into(), BasicGetOptions { no_ack: false }).await {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) if e.is_amqp_soft_error() => break, // no such queue: no dead letters
                Err(e) => return Err(unavailable("read dead letters", e)),
            };
            let d = got.delivery;
            let headers = d.properties.headers().clone().unwrap_or_default();
            let Ok(envelope) = Envelope::from_wire(&d.data) else { continue };
            out.push(DeadLetter {
                envelope,
                queue: queue.to_string(),
                attempts: header_u32(&headers, H_ATTEMPTS),
                reason: header_string(&headers, H_REASON).unwrap_or_default(),
                at: Timestamp::from_micros(header_i64(&headers, H_DEAD_AT)),
            });
        }
        let _ = channel.close(200, "peeked".into()).await;
        Ok(out)
    }
}

fn header_u32(h: &FieldTable, key: &str) -> u32 {
    match h.inner().get(key) {
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => (*n).max(0) as u32,
        Some(AMQPValue::LongLongInt(n)) => (*n).clamp(0, u32::MAX as i64) as u32,
        _ => 0,
    }
}

fn header_i64(h: &FieldTable, key: &str) -> i64 {
    match h.inner().get(key) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongUInt(n)) => *n as i64,
        _ => 0,
    }
}

fn header_string(h: &FieldTable, key: &str) -> Option<String> {
    match h.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_string()),
        _ => None,
    }
}

struct AmqpSubscription {
    bus: Arc<Inner>,
    spec: Arc<QueueSpec>,
    queue: String,
    /// `None` once its link died, until `reopen` made a new one.
    channel: Option<SubChannel>,
    /// Re-subscribing after a lost link, kept across a cancelled `next` so that a channel
    /// that starts consuming is never left behind unread.
    reopen: Option<tokio::task::JoinHandle<Result<SubChannel, BusError>>>,
    /// On demand: the `basic.get` in flight, kept across a cancelled `next` so a message the
    /// broker handed over is never dropped on the floor.
    fetch: Option<tokio::task::JoinHandle<Result<Option<lapin::message::BasicGetMessage>, lapin::Error>>>,
    /// On demand: how long to wait before asking an empty queue again.
    idle: std::time::Duration,
    /// The bus's link generation: when it passes the channel's, the channel is on a link we
    /// gave up on, and is left for one on the new link.
    generation: tokio::sync::watch::Receiver<u64>,
}

/// A subscription's channel on one link, with the consumer (`None` on demand) and the
/// settler of its deliveries (delivery tags are per channel).
struct SubChannel {
    /// The generation of the link it is on.
    link: u64,
    channel: Channel,
    consumer: Option<lapin::Consumer>,
    settler: Arc<Settler>,
}

impl SubChannel {
    /// Opens a channel on the current link (reconnecting when it is dead), declares and binds
    /// the queue and its dead-letter queue, and starts consuming; retries until `deadline`.
    async fn open(bus: &Inner, spec: &QueueSpec, deadline: Instant) -> Result<SubChannel, BusError> {
        loop {
            let link = bus.link();
            match Self::open_on(bus, &link, spec).await {
                Ok(channel) => return Ok(channel),
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(queue = %spec.name, error = %e, "Cannot subscribe; reconnecting.");
                    if link.conn.status().connected() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    } else {
                        bus.reconnect(link.generation, deadline).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open_on(bus: &Inner, link: &Link, spec: &QueueSpec) -> Result<SubChannel, BusError> {
        let channel = link.conn.create_channel().await.map_err(|e| unavailable("open a channel", e))?;
        channel.basic_qos(spec.prefetch, BasicQosOptions::default()).await.map_err(|e| unavailable("set prefetch", e))?;
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        channel
            .queue_declare(spec.name.as_str().into(), durable, queue_args(&bus.config))
            .await
            .map_err(|e| unavailable("declare the queue", e))?;
        for pattern in &spec.patterns {
            channel
                .queue_bind(
                    spec.name.as_str().into(),
                    bus.config.exchange.as_str().into(),
                    pattern.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| unavailable("bind the queue", e))?;
        }
        let dead = format!("{}.dead", spec.name);
        channel
            .queue_declare(dead.as_str().into(), durable, queue_args(&bus.config))
            .await
            .map_err(|e| unavailable("declare the dead-letter queue", e))?;
        channel
            .queue_bind(
                dead.as_str().into(),
                format!("{}.dead", bus.config.exchange).into(),
                spec.name.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable("bind the dead-letter queue", e))?;
        // On demand: no consumer, so the broker pushes nothing ahead; `next` asks for one message.
        let consumer = if spec.on_demand {
            None
        } else {
            Some(
                channel
                    .basic_consume(spec.name.as_str().into(), ShortString::from(""), BasicConsumeOptions::default(), FieldTable::default())
                    .await
                    .map_err(|e| unavailable("consume", e))?,
            )
        };
        Ok(SubChannel { link: link.generation, channel, consumer, settler: Settler::start() })
    }
}

/// On demand, an empty queue is asked again after this, doubling up to [`POLL_MAX`].
const POLL_MIN: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest wait between asks of an empty queue.
const POLL_MAX: std::time::Duration = std::time::Duration::from_millis(500);

impl AmqpSubscription {
    /// The next message, pushed by the consumer or (on demand) asked for, with the settler of
    /// its channel; moves to a new channel (and link) when the old one died.
    async fn raw_next(&mut self) -> Result<(lapin::message::Delivery, Arc<Settler>), BusError> {
        loop {
            let Some(sub) = self.channel.as_mut() else {
                let reopen = self.reopen.get_or_insert_with(|| {
                    let (bus, spec) = (self.bus.clone(), self.spec.clone());
                    let deadline = Instant::now() + bus.config.publish_timeout;
                    tokio::spawn(async move { SubChannel::open(&bus, &spec, deadline).await })
                });
                let reopened = reopen.await;
                self.reopen = None;
                // A failure goes to the caller, whose runtime retries with backoff and says so.
                self.channel = Some(reopened.map_err(|e| unavailable("subscribe again", e))??);
                tracing::info!(queue = %self.queue, "Consuming again after a lost link.");
                continue;
            };
            let on = sub.link;
            let replaced = self.generation.wait_for(move |g| *g > on);
            if let Some(consumer) = sub.consumer.as_mut() {
                tokio::select! {
                    next = consumer.next() => match next {
                        Some(Ok(d)) => return Ok((d, sub.settler.clone())),
                        Some(Err(e)) => tracing::warn!(queue = %self.queue, error = %e, "Consumer lost its channel; subscribing again."),
                        None => tracing::warn!(queue = %self.queue, "Consumer ended; subscribing again."),
                    },
                    _ = replaced => tracing::warn!(queue = %self.queue, "The connection was replaced; subscribing again."),
                }
                self.channel = None;
                continue;
            }
            let fetch = self.fetch.get_or_insert_with(|| {
                let (channel, queue) = (sub.channel.clone(), self.queue.clone());
                tokio::spawn(async move { channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await })
            });
            let got = tokio::select! {
                got = fetch => got,
                _ = replaced => {
                    // The old channel closes with the old link, and the broker takes back what it held.
                    tracing::warn!(queue = %self.queue, "The connection was replaced; subscribing again.");
                    self.fetch = None;
                    self.channel = None;
                    continue;
                }
            };
            self.fetch = None;
            match got {
                Ok(Ok(Some(m))) => {
                    self.idle = POLL_MIN;
                    return Ok((m.delivery, sub.settler.clone()));
                }
                Ok(Ok(None)) => {
                    tokio::time::sleep(self.idle).await;
                    self.idle = (self.idle * 2).min(POLL_MAX);
                }
                Ok(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "Lost the channel; subscribing again.");
                    self.channel = None;
                }
                Err(e) => return Err(unavailable("get", e)),
            }
        }
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let (d, settler) = self.raw_next().await?;
            let headers = d.properties.headers().clone().unwrap_or_default();
            let prior = header_u32(&headers, H_ATTEMPTS);
            let attempt = prior + 1 + u32::from(d.redelivered);
            // Known to the settler before anything else: a `multiple` ack must never cover it
            // unless it was really settled.
            settler.delivered(d.delivery_tag);
            let envelope = match Envelope::from_wire(&d.data) {
                Ok(env) => env,
                Err(e) => {
                    // Not ours or corrupt: set it aside rather than fail every consumer on it.
                    tracing::warn!(queue = %self.queue, error = %e, "Unreadable message; dead-lettered.");
                    let mut h = FieldTable::default();
                    h.insert(H_REASON.into(), AMQPValue::LongString(format!("unreadable envelope: {e}").into()));
                    h.insert(H_ATTEMPTS.into(), AMQPValue::LongUInt(attempt));
                    h.insert(H_DEAD_AT.into(), AMQPValue::LongLongInt(Timestamp::now().as_micros()));
                    let props = BasicProperties::default().with_delivery_mode(2).with_headers(h);
                    let (bus, queue, settler, tag) = (self.bus.clone(), self.queue.clone(), settler.clone(), d.delivery_tag);
                    // In a task of its own, because `next` may be cancelled: the delivery still
                    // ends as a dead letter, or back in its queue, never half settled.
                    tokio::spawn(async move {
                        let dead = bus.publish_confirmed(&format!("{}.dead", bus.config.exchange), &queue, &d.data, &props).await;
                        let request = match dead {
                            Ok(()) => SettleRequest::Ack(tag, d.acker, tokio::sync::oneshot::channel().0),
                            Err(error) => {
                                tracing::warn!(%queue, %error, "Could not set an unreadable message aside; it goes back to its queue.");
                                SettleRequest::Nack(tag, d.acker)
                            }
                        };
                        let _ = settler.requests.send(request);
                    });
                    continue;
                }
            };
            let acker = AmqpAcker {
                bus: self.bus.clone(),
                queue: self.queue.clone(),
                settler,
                tag: d.delivery_tag,
                acker: Some(d.acker),
                wire: d.data,
                attempt,
                properties: d.properties,
            };
            return Ok(Delivery::new(envelope, attempt, Box::new(acker)));
        }
    }
}

struct AmqpAcker {
    bus: Arc<Inner>,
    queue: String,
    settler: Arc<Settler>,
    tag: u64,
    acker: Option<lapin::Acker>,
    wire: Vec<u8>,
    attempt: u32,
    /// The delivery's own properties, reused (with new headers) when it is retried or set aside.
    properties: BasicProperties,
}

impl AmqpAcker {
    async fn ack_original(&mut self) -> Result<(), BusError> {
        let acker = self.acker.take().expect("a delivery is settled once");
        let (done, result) = tokio::sync::oneshot::channel();
        if self.settler.requests.send(SettleRequest::Ack(self.tag, acker, done)).is_err() {
            return Err(BusError::Closed);
        }
        result.await.map_err(|_| BusError::Closed)?
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.ack_original().await
    }

    async fn retry(mut self: Box<Self>, delay: Duration, reason: String) -> Result<(), BusError> {
        let ms = delay.as_millis() as u64;
        let bucket = DELAY_LADDER_MS.iter().copied().find(|&b| b >= ms).unwrap_or(*DELAY_LADDER_MS.last().unwrap());
        let wait = self.bus.declare_wait_queue(&self.queue, bucket).await?;
        let mut h = FieldTable::default();
        h.insert(H_ATTEMPTS.into(), AMQPValue::LongUInt(self.attempt));
        h.insert(H_REASON.into(), AMQPValue::LongString(reason.into()));
        // The copy goes to the wait queue before the original is acked: a crash in between
        // delivers twice, never zero times.
        self.bus.publish_confirmed("", &wait, &self.wire, &self.properties.clone().with_headers(h)).await?;
        self.ack_original().await
    }

    async fn dead_letter(mut self: Box<Self>, reason: String) -> Result<(), BusError> {
        let mut h = FieldTable::default();
        h.insert(H_ATTEMPTS.into(), AMQPValue::LongUInt(self.attempt));
        h.insert(H_REASON.into(), AMQPValue::LongString(reason.into()));
        h.insert(H_DEAD_AT.into(), AMQPValue::LongLongInt(Timestamp::now().as_micros()));
        self.bus
            .publish_confirmed(
                &format!("{}.dead", self.bus.config.exchange),
                &self.queue,
                &self.wire,
                &self.properties.clone().with_headers(h),
            )
            .await?;
        self.ack_original().await
    }
}

impl Drop for AmqpSubscription {
    fn drop(&mut self) {
        // A `basic.get` still in flight may yet hand us a message nobody will take: give it back.
        if let (Some(fetch), Ok(rt)) = (self.fetch.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move {
                if let Ok(Ok(Some(m))) = fetch.await {
                    let _ = m.delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                }
            });
        }
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        if let Some(acker) = self.acker.take() {
            // Unsettled: back to the queue now, as the Bus contract says.
            let _ = self.settler.requests.send(SettleRequest::Nack(self.tag, acker));
        }
    }
}

/// Settles one subscription's deliveries. Every ack and nack of a channel goes through one
/// task, in order, so that acks can be coalesced into one `multiple` ack (far less work
/// for the broker) without ever covering a message that was meant to be requeued:
///
/// - nacks are sent first, one by one;
/// - acks of the lowest outstanding deliveries form a contiguous run and go as one
///   `multiple` ack through the run's highest acker; acks above a delivery still being
///   handled go one by one, at once. Nothing is held back, so an ack that returned
///   was sent, as the `Bus` contract wants;
/// - a settler belongs to one channel: after a lost link the new channel has a new one,
///   so delivery tags reused by the new channel are never confused with the old ones.
struct Settler {
    outstanding: std::sync::Mutex<Outstanding>,
    requests: tokio::sync::mpsc::UnboundedSender<SettleRequest>,
}

/// Deliveries handed out and not yet settled, by delivery tag.
type Outstanding = std::collections::BTreeSet<u64>;

enum SettleRequest {
    Ack(u64, lapin::Acker, tokio::sync::oneshot::Sender<Result<(), BusError>>),
    Nack(u64, lapin::Acker),
}

fn ack_result(r: lapin::Result<bool>) -> Result<(), BusError> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(BusError::Unavailable("RabbitMQ: the channel closed before the ack; the message will be delivered again".into())),
        Err(e) => Err(unavailable("ack (the message will be delivered again)", e)),
    }
}

impl Settler {
    fn start() -> Arc<Settler> {
        let (requests, mut rx) = tokio::sync::mpsc::unbounded_channel::<SettleRequest>();
        let settler = Arc::new(Settler { outstanding: std::sync::Mutex::new(Outstanding::default()), requests });
        let weak = Arc::downgrade(&settler);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, 4096).await > 0 {
                let Some(settler) = weak.upgrade() else { break };
                settler.settle(std::mem::take(&mut batch)).await;
            }
        });
        settler
    }

    /// Records a delivery handed to a consumer.
    fn delivered(&self, tag: u64) {
        self.outstanding.lock().unwrap().insert(tag);
    }

    async fn settle(&self, batch: Vec<SettleRequest>) {
        let mut acks = std::collections::BTreeMap::new();
        for request in batch {
            match request {
                SettleRequest::Nack(tag, acker) => {
                    let _ = acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    self.outstanding.lock().unwrap().remove(&tag);
                }
                SettleRequest::Ack(tag, acker, done) => {
                    if acker.poisoned() {
                        let _ = done.send(ack_result(Ok(false)));
                    } else {
                        acks.insert(tag, (acker, done));
                    }
                }
            }
        }
        // The contiguous run of acked deliveries at the bottom of what is outstanding.
        let run: Vec<u64> = {
            let outstanding = self.outstanding.lock().unwrap();
            outstanding.iter().copied().take_while(|tag| acks.contains_key(tag)).collect()
        };
        if run.len() > 1 {
            let highest = *run.last().expect("not empty");
            let (acker, _) = &acks[&highest];
            let result = ack_result(acker.ack(BasicAckOptions { multiple: true }).await);
            let mut outstanding = self.outstanding.lock().unwrap();
            for tag in run {
                outstanding.remove(&tag);
                if let Some((_, done)) = acks.remove(&tag) {
                    let _ = done.send(result.clone());
                }
            }
        }
        for (tag, (acker, done)) in acks {
            let result = ack_result(acker.ack(BasicAckOptions::default()).await);
            self.outstanding.lock().unwrap().remove(&tag);
            let _ = done.send(result);
        }
    }
}
