//! The message bus as patchbay's services see it: the [`Bus`] trait, topic
//! patterns with AMQP semantics, signing and verification, the trust policy,
//! authority over topics ([`Authority`]), and (behind the `conformance`
//! feature) the test suite every backend must pass.
//!
//! This crate knows nothing of SQLite or AMQP. Backends implement [`Bus`]
//! (the embedded one lives in `patchbay-store`, because a publish there joins
//! the store's transaction; RabbitMQ in `patchbay-bus-amqp`); callers hold an
//! `Arc<dyn Bus>` and never learn which backend they got.
//!
//! Delivery is at least once. A subscription names a durable queue;
//! subscriptions with the same queue name compete, and every queue bound to a
//! topic gets every message. A message stays on the queue until a consumer
//! settles its delivery exactly once: `ack` (the handler's effects are
//! committed), `retry(delay, reason)` (back on the queue no sooner than
//! `delay`) or `dead_letter(reason)` (set aside with the reason and the attempt
//! count, listed by `Bus::dead_letters`). A delivery dropped unsettled goes
//! back to the queue at once, as a closed AMQP channel would do. `prefetch`
//! bounds unsettled deliveries per subscription; `Delivery::attempt` is 1 on
//! first delivery. `BusError::Unavailable` means try again later, `Invalid`
//! that the request is wrong.
//!
//! Trust: [`TrustPolicy::check`] first (when `require_signatures` is on)
//! refuses unsigned messages, unknown key ids, bad signatures and topics
//! outside a key's allow patterns; then, signed or not, [`Authority`] holds
//! each of patchbay's services to its role's topics and keeps every other
//! sender out of the categories roles own ([`DEFAULT_ROLES`]). [`Consumer`]
//! wraps any backend's subscription and dead-letters refused messages with the
//! reason before a handler sees them, so every backend enforces it alike.

mod authority;
mod bus;
mod consumer;
mod signing;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use authority::{Authority, DEFAULT_ROLES};
pub use bus::{Acker, Bus, BusError, DeadLetter, Delivery, LogEntry, MessageLog, Outgoing, Publisher, QueueSpec, Subscription};
pub use consumer::Consumer;
pub use patchbay_model::{PatternError, TopicPattern};
pub use signing::{KeyError, PublicKey, Rejection, Sealer, SigningKey, TrustPolicy};
