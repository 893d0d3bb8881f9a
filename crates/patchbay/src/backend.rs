//! Picks the bus the config names, for every command: the embedded bus in the
//! data directory, or RabbitMQ. With RabbitMQ, `serve` keeps a local log for
//! the HTTP stream: a recorder service copies every bus message, unchanged,
//! into the data directory's embedded log, so `tail` resumes by position on
//! either backend. And what the store's own services publish into that log
//! atomically with their writes (ingest's mail and series events, the
//! aggregator's results and verdicts, the reporter's report events) is
//! relayed to RabbitMQ by the [`Relay`]: the log is their outbox.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use patchbay_bus::{Bus, MessageLog, QueueSpec, Sealer, TopicPattern, TrustPolicy};
use patchbay_bus_amqp::{AmqpBus, AmqpConfig};
use patchbay_config::{BusBackend, Config};
use patchbay_model::{Envelope, Sender, ServiceName};
use patchbay_runtime::{Handler, HandlerError, ServiceSpec};
use patchbay_store::EmbeddedBus;

/// Connects to the bus the config names.
pub async fn bus(config: &Config, sealer: Sealer) -> anyhow::Result<Arc<dyn Bus>> {
    Ok(match config.bus.backend {
        BusBackend::Embedded => Arc::new(
            EmbeddedBus::open(&config.data_dir, sealer).with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
        ),
        BusBackend::Amqp => Arc::new(amqp(config, sealer).await?),
    })
}

async fn amqp(config: &Config, sealer: Sealer) -> anyhow::Result<AmqpBus> {
    let url = config.bus.url.clone().context("bus.url is required for the amqp backend")?;
    let mut amqp = AmqpConfig::new(url, config.data_dir.join("amqp"));
    amqp.exchange = config.bus.exchange.clone();
    amqp.queue_prefix = format!("{}.", config.bus.root.as_str());
    AmqpBus::connect(amqp, sealer).await.with_context(|| format!("{}: bus.url: cannot use RabbitMQ", config.source_name()))
}

/// Copies every message into the local log, exactly as received.
struct Recorder {
    log: EmbeddedBus,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        // publish_sealed ignores an id already in the log, so redeliveries record once.
        self.log.publish_sealed(vec![envelope.clone()]).await.map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// The services that publish into the store inside their own transactions (`publish_in`):
/// on RabbitMQ their messages exist only in the local log until the [`Relay`] sends them.
pub const STORE_PUBLISHERS: &[&str] =
    &[ServiceName::Ingest.as_str(), ServiceName::Threader.as_str(), ServiceName::Aggregator.as_str(), ServiceName::Reporter.as_str()];
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
        Relay { db, bus, senders: STORE_PUBLISHERS.iter().map(|s| Sender::new(*s, instance)).collect() }
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

/// What `serve` runs on: the bus, the log behind the HTTP stream, and a task to await at shutdown.
pub struct Served {
    /// Where publishes go.
    pub bus: Arc<dyn Bus>,
    /// What the stream reads.
    pub log: Arc<dyn MessageLog>,
    /// The recorder, on RabbitMQ.
    pub recorder: Option<tokio::task::JoinHandle<()>>,
    /// The embedded bus itself, when it is the bus: the store's one writer, for every service
    /// of `serve` to share (a second handle would commit unseen by this one's consumers).
    pub store: Option<EmbeddedBus>,
}

/// Opens the backend for `serve`; the recorder (RabbitMQ only) stops when `shutdown` resolves.
/// The recorder keeps only what `policy` accepts: a forged or off-role message is dead-lettered
/// with the reason (on `<queue>.dead`), never shown as history, on the live page or to `tail`.
pub async fn serve(
    config: &Config,
    sealer: Sealer,
    policy: Arc<TrustPolicy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Served> {
    match config.bus.backend {
        BusBackend::Embedded => {
            let bus = Arc::new(
                EmbeddedBus::open(&config.data_dir, sealer)
                    .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
            );
            Ok(Served { bus: bus.clone(), log: bus.clone(), recorder: None, store: Some((*bus).clone()) })
        }
        BusBackend::Amqp => {
            let bus: Arc<dyn Bus> = Arc::new(amqp(config, sealer).await?);
            let log = EmbeddedBus::open(&config.data_dir, Sealer::default())?;
            let spec = ServiceSpec::new(
                &format!("serve-log.{}", config.instance),
                vec![TopicPattern::parse(&format!("{}.#", config.bus.root.as_str()))?],
            );
            // Declare and bind the queue before `serve` answers anything: RabbitMQ drops what
            // matches no binding, so a publish right after start-up must find it in place.
            drop(bus.subscribe(QueueSpec::new(spec.queue.clone(), spec.patterns.clone())).await?);
            let handler = Arc::new(Recorder { log: log.clone() });
            let recorder_bus = bus.clone();
            let recorder = tokio::spawn(async move {
                if let Err(error) = patchbay_runtime::run(recorder_bus, policy, spec, handler, shutdown).await {
                    tracing::error!(%error, "The stream recorder stopped.");
                }
            });
            Ok(Served { bus, log: Arc::new(log), recorder: Some(recorder), store: None })
        }
    }
}

#[cfg(test)]
mod tests {
    /// Nobody may publish over HTTP under a name the relay sends on as the store's own.
    #[test]
    fn store_publishers_are_reserved_names() {
        for name in super::STORE_PUBLISHERS {
            assert!(patchbay_web::RESERVED_SERVICES.contains(name), "{name}");
        }
    }
}
