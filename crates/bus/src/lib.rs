//! The message bus as patchbay's services see it: the [`Bus`] trait, topic
//! patterns with AMQP semantics, signing and verification, and (behind the
//! `conformance` feature) the test suite every backend must pass.
//!
//! This crate knows nothing of SQLite or AMQP. Backends implement [`Bus`]
//! (the embedded one lives in `patchbay-store`, because a publish there joins
//! the store's transaction); callers hold an `Arc<dyn Bus>` and never learn
//! which backend they got.
//!
//! Delivery is at least once. A subscription names a durable queue; a message
//! stays on the queue until a consumer settles its delivery with `ack`,
//! `retry` (back on the queue after a delay) or `dead_letter` (set aside with a
//! reason). A delivery dropped unsettled goes back to the queue at once.

mod authority;
mod bus;
mod consumer;
mod pattern;
mod signing;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use authority::{Authority, DEFAULT_ROLES};
pub use bus::{Acker, Bus, BusError, DeadLetter, Delivery, LogEntry, MessageLog, Outgoing, Publisher, QueueSpec, Subscription};
pub use consumer::Consumer;
pub use pattern::{PatternError, TopicPattern};
pub use signing::{KeyError, PublicKey, Rejection, Sealer, SigningKey, TrustPolicy};
