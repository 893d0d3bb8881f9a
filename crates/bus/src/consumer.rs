//! The consumer side of the trust policy: a subscription wrapper that hands a
//! handler only messages the policy accepts and dead-letters the rest with the
//! reason. It sits above the backends so every backend enforces it alike.

use std::sync::Arc;

use crate::{BusError, Delivery, Subscription, TrustPolicy};

/// A subscription that enforces a [`TrustPolicy`].
pub struct Consumer {
    subscription: Box<dyn Subscription>,
    policy: Arc<TrustPolicy>,
}

impl Consumer {
    /// Wraps a subscription.
    pub fn new(subscription: Box<dyn Subscription>, policy: Arc<TrustPolicy>) -> Self {
        Consumer { subscription, policy }
    }

    /// The next delivery the policy accepts; refused ones are dead-lettered on the way.
    /// Cancel-safe like [`Subscription::next`], except that a refusal in progress may
    /// be cut short, in which case the message returns to the queue and is refused again.
    pub async fn next(&mut self) -> Result<Delivery, BusError> {
        loop {
            let delivery = self.subscription.next().await?;
            match self.policy.check(&delivery.envelope) {
                Ok(()) => return Ok(delivery),
                Err(rejection) => {
                    tracing::warn!(id = %delivery.envelope.id, topic = %delivery.envelope.topic, %rejection, "Refused message, dead-lettered.");
                    delivery.dead_letter(format!("refused: {rejection}")).await?;
                }
            }
        }
    }
}
