//! The relay: on RabbitMQ, what the store's own services commit into the data directory's log
//! (ingest's mail and series events, the aggregator's results and verdicts, the reporter's
//! report events) goes on to the broker, unchanged and in log order; the log is their outbox.

use std::future::Future;
use std::sync::Arc;

use patchbay_bus::Bus;
use patchbay_model::{Envelope, Sender, ServiceName};

/// The services that publish into the store inside their own transactions (`publish_in`):
/// on RabbitMQ their messages exist only in the local log until the [`Relay`] sends them.
/// Service names, so nobody publishes over HTTP under them (`web::RESERVED_SERVICES` is
/// `ServiceName::NAMES`).
pub const STORE_PUBLISHERS: [ServiceName; 4] = [ServiceName::Ingest, ServiceName::Threader, ServiceName::Aggregator, ServiceName::Reporter];
/// Where the relay's position in the log is kept (`bus_meta`).
const RELAY_MARK: &str = "amqp_relay_pos";
/// Messages read from the log per relay step.
const RELAY_BATCH: i64 = 500;

/// Sends what this instance's store publishers committed into the local log to RabbitMQ,
/// unchanged (same id, same signature), in log order, and then records how far it got: a
/// crash in between sends some again, which consumers ignore by id. Messages the recorder
/// copied in from RabbitMQ are not ours to send (other senders) or are there already (ours,
/// coming back), so they are skipped. The first start on a data directory begins at the end
/// of its log: turning RabbitMQ on does not re-announce old series.
pub struct Relay {
    db: patchbay_store::Db,
    bus: Arc<dyn Bus>,
    senders: Vec<Sender>,
}

impl Relay {
    /// A relay of `instance`'s store publishers from `db` to `bus`.
    pub fn new(db: patchbay_store::Db, bus: Arc<dyn Bus>, instance: &str) -> Self {
        Relay { db, bus, senders: STORE_PUBLISHERS.iter().map(|s| Sender::new(s.as_str(), instance)).collect() }
    }

    /// Where the relay stands, starting at the end of the log the first time. `serve` asks
    /// before it accepts mail, so that nothing arriving at the first start is taken for old.
    pub async fn mark(&self) -> Result<i64, patchbay_store::StoreError> {
        self.db.log_mark(RELAY_MARK).await
    }

    /// Relays one batch after `mark`; returns the new mark and how many messages were sent.
    async fn step(&self, mark: i64) -> anyhow::Result<(i64, usize)> {
        let rows = self.db.log_after(mark, RELAY_BATCH).await?;
        let Some(&(last, _)) = rows.last() else { return Ok((mark, 0)) };
        // The sender alone is read first: most of the log (the recorder's copies, big bodies
        // such as series mboxes) is not ours, and needs no full parse.
        #[derive(serde::Deserialize)]
        struct SenderOnly {
            sender: Sender,
        }
        let ours: Vec<Envelope> = rows
            .iter()
            .filter(|(_, wire)| serde_json::from_slice::<SenderOnly>(wire).is_ok_and(|f| self.senders.contains(&f.sender)))
            .filter_map(|(_, wire)| Envelope::from_wire(wire).ok())
            .collect();
        let sent = ours.len();
        if sent > 0 {
            self.bus.publish_sealed(ours).await?;
        }
        self.db.set_log_mark(RELAY_MARK, last).await?;
        Ok((last, sent))
    }

    /// Relays from `mark` (see [`Relay::mark`]) as messages are committed (by this process or
    /// another one on the same data directory, such as `inject`), until `shutdown` resolves;
    /// failures are retried with backoff.
    pub async fn run(self, mut mark: i64, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut commits = self.db.commits();
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            // A step waits for the broker as long as `publish_timeout`: shutdown must not.
            let stepped = tokio::select! {
                () = &mut shutdown => return,
                stepped = self.step(mark) => stepped,
            };
            let full = match stepped {
                Ok((to, sent)) => {
                    let moved = to != mark;
                    mark = to;
                    backoff = std::time::Duration::from_millis(100);
                    if sent > 0 {
                        tracing::debug!(sent, to, "Relayed to RabbitMQ.");
                    }
                    moved
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), retry_in = ?backoff, "Relaying the store's messages to RabbitMQ failed; retrying.");
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
                    false
                }
            };
            if full {
                continue; // there may be more right behind
            }
            tokio::select! {
                () = &mut shutdown => return,
                // Commits by this process wake it at once; other processes' (inject) by the timer.
                _ = commits.changed() => {}
                () = tokio::time::sleep(backoff.max(std::time::Duration::from_millis(250))) => {}
            }
        }
    }
}

/// Starts the relay from where it stands (the end of the log the first time), until `closing`.
/// `serve` calls it before it accepts mail, so that nothing arriving at the first start is
/// taken for old.
pub async fn start(
    config: &patchbay_config::Config,
    db: patchbay_store::Db,
    bus: Arc<dyn Bus>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context as _;
    let relay = Relay::new(db, bus, &config.instance);
    let mark = relay.mark().await.context("reading the RabbitMQ relay's position in the store")?;
    Ok(tokio::spawn(relay.run(mark, crate::tasks::closed(closing))))
}
