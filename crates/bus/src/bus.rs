//! The `Bus` trait and the types that cross it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_model::{Body, Envelope, SchemaRef, Sender, Timestamp, Topic, TopicRoot};

use crate::TopicPattern;

/// Why a bus operation failed. Callers treat `Unavailable` as "try again later".
#[derive(Clone, Debug, thiserror::Error)]
pub enum BusError {
    /// The backend cannot be reached or cannot write right now (disk full, broker down).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (bad queue name, bad pattern); retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The bus was shut down.
    #[error("bus closed")]
    Closed,
}

/// A message as a service hands it to the bus; the backend adds id, time, sequence and signature.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    /// Who publishes it; sequence numbers count per sender.
    pub sender: Sender,
    /// Where it goes.
    pub topic: Topic,
    /// Which body type it carries.
    pub schema: SchemaRef,
    /// The body.
    pub body: serde_json::Value,
}

impl Outgoing {
    /// `body` from `sender` under the deployment's topic `root`, for a writer that commits its
    /// messages in its own store's transaction (an outbox) rather than through a bus.
    pub fn of<B: Body>(root: &TopicRoot, sender: &Sender, body: &B) -> Result<Outgoing, BusError> {
        let topic = root.topic(&body.topic_suffix()).map_err(|e| BusError::Invalid(e.to_string()))?;
        let body = serde_json::to_value(body).map_err(|e| BusError::Invalid(e.to_string()))?;
        Ok(Outgoing { sender: sender.clone(), topic, schema: B::schema_ref(), body })
    }

    /// A message on a topic patchbay defines no body type for (`patchbay.json` v1, unchecked):
    /// what a service says beside its typed bodies (a skip, a base run, a refusal).
    pub fn free_form(root: &TopicRoot, sender: &Sender, suffix: &str, body: serde_json::Value) -> Result<Outgoing, BusError> {
        let topic = root.topic(suffix).map_err(|e| BusError::Invalid(e.to_string()))?;
        Ok(Outgoing { sender: sender.clone(), topic, schema: patchbay_model::free_form_schema(), body })
    }
}

/// A durable queue and the topic patterns bound to it.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    /// Queue name: 1-200 ASCII letters, digits, `.`, `_`, `-`. Consumers with the same name compete.
    pub name: String,
    /// Bindings; added to the queue's existing bindings, as AMQP does.
    pub patterns: Vec<TopicPattern>,
    /// How many deliveries this subscription may hold unsettled at once.
    pub prefetch: u16,
    /// Take a message from the broker only when `next` is called, holding none ahead: for
    /// consumers whose capacity is shared elsewhere (a runner's job slots across its queues),
    /// so a message waits where another consumer can take it. Backends that hand out on
    /// demand anyway (the embedded bus) ignore it.
    pub on_demand: bool,
}

impl QueueSpec {
    /// A queue bound to `patterns` with a prefetch of 16.
    pub fn new(name: impl Into<String>, patterns: Vec<TopicPattern>) -> Self {
        QueueSpec { name: name.into(), patterns, prefetch: 16, on_demand: false }
    }

    /// Takes messages on demand only (see [`QueueSpec::on_demand`]).
    pub fn on_demand(mut self, yes: bool) -> Self {
        self.on_demand = yes;
        self
    }

    /// Sets the prefetch.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Checks the name, which also names lock files and AMQP queues.
    pub fn validate(&self) -> Result<(), BusError> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 200
            && !self.name.starts_with('.')
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(BusError::Invalid(format!("queue name {:?} must be 1-200 ASCII letters, digits, '.', '_' or '-'", self.name)));
        }
        if self.patterns.is_empty() {
            return Err(BusError::Invalid(format!("queue {:?} has no topic patterns", self.name)));
        }
        Ok(())
    }
}

/// Settles one delivery; implemented by each backend.
#[async_trait]
pub trait Acker: Send {
    /// The message was handled and its effects are committed: remove it from the queue.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// Put it back on the queue, to be delivered again no sooner than `delay`.
    async fn retry(self: Box<Self>, delay: Duration, reason: String) -> Result<(), BusError>;
    /// Take it off the queue into the dead-letter store, with the reason.
    async fn dead_letter(self: Box<Self>, reason: String) -> Result<(), BusError>;
}

/// One message handed to one consumer, to be settled exactly once.
pub struct Delivery {
    /// The message, as published.
    pub envelope: Envelope,
    /// 1 for the first delivery; counts retries and redeliveries after crashes.
    pub attempt: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.envelope.id)
            .field("topic", &self.envelope.topic)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Delivery {
    /// Backends build deliveries with their own acker.
    pub fn new(envelope: Envelope, attempt: u32, acker: Box<dyn Acker>) -> Self {
        Delivery { envelope, attempt, acker }
    }

    /// See [`Acker::ack`].
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// See [`Acker::retry`].
    pub async fn retry(self, delay: Duration, reason: impl Into<String>) -> Result<(), BusError> {
        self.acker.retry(delay, reason.into()).await
    }

    /// See [`Acker::dead_letter`].
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), BusError> {
        self.acker.dead_letter(reason.into()).await
    }
}

/// A consumer's handle on a queue.
#[async_trait]
pub trait Subscription: Send {
    /// Waits for the next delivery. Cancel-safe: dropping the future loses nothing.
    /// Waits while `prefetch` deliveries are unsettled.
    async fn next(&mut self) -> Result<Delivery, BusError>;
}

/// A message set aside after failing, with why.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The message as it was delivered.
    pub envelope: Envelope,
    /// The queue it was taken from.
    pub queue: String,
    /// How many times it was delivered.
    pub attempts: u32,
    /// Why it was set aside: the handler's error or the signature check's verdict.
    pub reason: String,
    /// When it was set aside.
    pub at: Timestamp,
}

/// A message bus: durable topic publish, durable named queues, at-least-once delivery.
#[async_trait]
pub trait Bus: Send + Sync {
    /// Seals and publishes messages, in order; returns only once they are durable
    /// (fsynced, or confirmed by the broker), with the envelopes as sealed.
    async fn publish(&self, messages: Vec<Outgoing>) -> Result<Vec<Envelope>, BusError>;

    /// Publishes envelopes sealed elsewhere, unchanged (relays, replays, tests of forged messages).
    async fn publish_sealed(&self, envelopes: Vec<Envelope>) -> Result<(), BusError>;

    /// Declares the queue durably, adds its bindings, and starts consuming from it.
    async fn subscribe(&self, spec: QueueSpec) -> Result<Box<dyn Subscription>, BusError>;
    /// Creates the queue and its bindings without consuming, so that what is published from
    /// now on waits there for a consumer (a queue only sees what comes after its bindings).
    async fn declare(&self, spec: QueueSpec) -> Result<(), BusError> {
        drop(self.subscribe(spec).await?);
        Ok(())
    }

    /// The dead letters of a queue, oldest first, at most `limit`.
    async fn dead_letters(&self, queue: &str, limit: usize) -> Result<Vec<DeadLetter>, BusError>;

    /// Whether the bus can take work now (`/readyz`): on RabbitMQ, the broker link up.
    async fn ready(&self) -> Result<(), BusError> {
        Ok(())
    }
}

/// One entry of an ordered message log, as served by `GET /api/v1/stream`.
#[derive(Clone, Debug)]
pub struct LogEntry {
    /// Position in the log: strictly increasing in commit order, the SSE event id.
    pub position: u64,
    /// The topic, for filtering without parsing.
    pub topic: String,
    /// The envelope's wire bytes exactly as stored, so they still verify.
    pub wire: Arc<[u8]>,
}

/// An ordered, resumable log of every published message.
#[async_trait]
pub trait MessageLog: Send + Sync {
    /// Entries after `position`, oldest first, at most `limit`.
    async fn read_after(&self, position: u64, limit: usize) -> Result<Vec<LogEntry>, BusError>;
    /// The latest position (0 when empty), to start a stream "from now".
    async fn head(&self) -> Result<u64, BusError>;
    /// Returns when entries after `position` may exist, or after `timeout`.
    async fn wait_after(&self, position: u64, timeout: Duration);
}

/// A service's way to publish typed bodies under its own name and the deployment's topic root.
#[derive(Clone)]
pub struct Publisher {
    bus: Arc<dyn Bus>,
    root: TopicRoot,
    sender: Sender,
}

impl Publisher {
    /// Binds a bus to a sender identity and a topic root.
    pub fn new(bus: Arc<dyn Bus>, root: TopicRoot, sender: Sender) -> Self {
        Publisher { bus, root, sender }
    }

    /// Builds the outgoing message for a typed body without publishing it.
    pub fn outgoing<B: Body>(&self, body: &B) -> Result<Outgoing, BusError> {
        Outgoing::of(&self.root, &self.sender, body)
    }

    /// Builds a free-form message (see [`Outgoing::free_form`]) without publishing it.
    pub fn free_form(&self, suffix: &str, body: serde_json::Value) -> Result<Outgoing, BusError> {
        Outgoing::free_form(&self.root, &self.sender, suffix, body)
    }

    /// Publishes one typed body and returns its envelope once durable.
    pub async fn publish<B: Body>(&self, body: &B) -> Result<Envelope, BusError> {
        let out = self.outgoing(body)?;
        let mut sealed = self.bus.publish(vec![out]).await?;
        sealed.pop().ok_or_else(|| BusError::Unavailable("backend returned no envelope".into()))
    }

    /// Who it publishes as.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The topic root this publisher writes under.
    pub fn root(&self) -> &TopicRoot {
        &self.root
    }

    /// The bus, to publish several built messages at once.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }
}
