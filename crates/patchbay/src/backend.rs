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
use patchbay_model::Envelope;
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

/// Connects to the bus the config names, retrying with backoff while it cannot (a broker that
/// is down now may be up soon) and saying so; `None` when `shutdown` resolves first.
pub async fn bus_when_up(config: &Config, sealer: Sealer, shutdown: &mut (impl Future<Output = ()> + Unpin)) -> Option<Arc<dyn Bus>> {
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match bus(config, sealer.clone()).await {
            Ok(bus) => return Some(bus),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "Cannot reach the bus; retrying.");
                tokio::select! {
                    () = &mut *shutdown => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
        }
    }
}

/// The store a service keeps its tables in.
pub enum Store {
    /// The data directory's SQLite, whose log is also the embedded bus.
    Embedded(patchbay_store::EmbeddedBus),
    /// The shared PostgreSQL of `store.url`.
    Postgres(patchbay_store_pg::PgStore),
}

/// The PostgreSQL store `store.url` names, connected and migrated, retried with backoff while
/// it is unreachable (and said so); `Ok(None)` if `shutdown` came first. A wrong URL or a
/// schema newer than this build is an error at once: waiting would not mend it.
pub async fn postgres_when_up(
    config: &Config,
    sealer: Sealer,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<patchbay_store_pg::PgStore>> {
    let url = config.store.url.as_deref().context("store.url is not set")?;
    let mut backoff = std::time::Duration::from_millis(500);
    loop {
        match patchbay_store_pg::PgStore::connect_with(url, config.store.max_connections, config.store.ca.as_deref(), sealer.clone()).await
        {
            Ok(store) => return Ok(Some(store)),
            Err(error) if error.is_transient() => {
                tracing::warn!(%error, retry_in = ?backoff, "Cannot reach the PostgreSQL store; retrying.");
                tokio::select! {
                    () = &mut *shutdown => return Ok(None),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(30));
            }
            Err(error) => return Err(anyhow::anyhow!("{}: store.url: {error}", config.source_name())),
        }
    }
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
    /// On RabbitMQ, this process's claim on the namespace as its one store keeper; held for
    /// as long as `serve` runs.
    pub claim: Option<patchbay_bus_amqp::NamespaceClaim>,
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
            Ok(Served { bus: bus.clone(), log: bus.clone(), recorder: None, store: Some((*bus).clone()), claim: None })
        }
        BusBackend::Amqp => {
            let amqp = amqp(config, sealer).await?;
            // This process keeps the store for the namespace: a second one would assemble the
            // same series under other local ids and corrupt jobs, verdicts and reports.
            let host = patchbay_runner::hostname();
            let me = format!("patchbay serve, instance {}, on host {host:?}, data in {}", config.instance, config.data_dir.display());
            let claim = amqp.claim_namespace(&me).await.map_err(|e| match e {
                patchbay_bus_amqp::ClaimError::Held { holder } => anyhow::anyhow!(
                    "{}: bus: another serve already keeps its own store for this RabbitMQ namespace (exchange {:?}, topics {}.#): {holder}. \
                     Two stores on one namespace would give the same series two ids and corrupt jobs, verdicts and reports. \
                     Run one serve per namespace (other machines run `patchbay runner`), or give this one its own bus.prefix or bus.env.",
                    config.source_name(),
                    config.bus.exchange,
                    config.bus.root.as_str()
                ),
                other => anyhow::Error::from(other),
            })?;
            let bus: Arc<dyn Bus> = Arc::new(amqp);
            let log = EmbeddedBus::open(&config.data_dir, Sealer::default())?;
            let recorder = recorder(config, bus.clone(), log.clone(), policy, shutdown).await?;
            Ok(Served { bus, log: Arc::new(log), recorder: Some(recorder), store: None, claim: Some(claim) })
        }
    }
}

/// On RabbitMQ, the recorder: every message of the namespace copied into `log` (the data
/// directory's), for the stream, the history and replay; its queue is the instance's own
/// (`serve-log.<instance>`), so every instance keeping a log gets every message.
pub async fn recorder(
    config: &Config,
    bus: Arc<dyn Bus>,
    log: EmbeddedBus,
    policy: Arc<TrustPolicy>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let spec =
        ServiceSpec::new(&format!("serve-log.{}", config.instance), vec![TopicPattern::parse(&format!("{}.#", config.bus.root.as_str()))?]);
    // Declare and bind the queue before anything is answered: RabbitMQ drops what matches no
    // binding, so a publish right after start-up must find it in place.
    drop(bus.subscribe(QueueSpec::new(spec.queue.clone(), spec.patterns.clone())).await?);
    let handler = Arc::new(Recorder { log });
    Ok(tokio::spawn(async move {
        if let Err(error) = patchbay_runtime::run(bus, policy, spec, handler, shutdown).await {
            tracing::error!(%error, "The stream recorder stopped.");
        }
    }))
}
