//! `patchbay run <service>`: one service of `serve` in a process of its own, on the bus and
//! the store the config names, with `/healthz`, `/readyz` and `/metrics` on `--http`. Each
//! reads the one config file and uses its own section; what it shares with the others is the
//! bus and the store, so a process can stop, crash or restart without the others noticing
//! more than a pause.
//!
//! On RabbitMQ every process declares the pipeline's shared queues at start
//! (`services::declare_queues`), so what it publishes waits for a service that has never run.
//! A queue of one instance (the SQLite history recorder's `serve-log.<instance>`) exists from
//! its process's first start on: start `run history` once before mail flows.
//!
//! The store is the data directory's SQLite database, whose processes run on one host, one of
//! each service per data directory; or, with `store.url`, the shared PostgreSQL, whose
//! processes run on any hosts, any number of each, every one relaying its own outbox (`run web`
//! keeps a local copy of the namespace's messages for its live stream). The runner is
//! neither: `run runner` is `patchbay runner`, on any machine. The threader runs inside
//! ingest's transaction (a design decision, see ARCHITECTURE.md), so `run ingest` is both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use patchbay_bus::Bus;
use patchbay_config::{BusBackend, Config};
use patchbay_store::EmbeddedBus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tasks::{closed, spawn_every};

/// A service `patchbay run` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// Mail in: LMTP (`ingest.lmtp_listen` or `--lmtp`), series assembly, the incomplete-series deadline.
    Ingest,
    /// Complete series in, one job per (test, arch) out.
    Dispatcher,
    /// Jobs in, results out: `patchbay runner` (no store, no `--http`).
    Runner,
    /// Results in, one verdict per series version out; the verdict deadline.
    Aggregator,
    /// Verdicts in, one report mail each.
    Reporter,
    /// `ci.test.log` chunks into the store.
    Logs,
    /// The message history: indexing, retention, and on RabbitMQ the copy of every message.
    History,
    /// On RabbitMQ: what the store's services commit goes on to the broker.
    Relay,
    /// Series found merged in their project's branch.
    Merged,
    /// The JSON API, the dashboard and the SSE stream.
    Web,
    /// Notifications by rule (`[[notify]]` and the admins'): webhooks and mail.
    Notify,
}

/// Options of `patchbay run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The service to run.
    #[arg(value_enum)]
    pub service: Service,
    /// Serve `/healthz`, `/readyz` and `/metrics` here (for `web`: everything; default `http.listen`).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// For `ingest`: accept LMTP here instead of the config's `ingest.lmtp_listen`.
    #[arg(long)]
    pub lmtp: Option<SocketAddr>,
    /// For `runner`: jobs at once (default: the config's `runner.jobs`).
    #[arg(long)]
    pub jobs: Option<u16>,
}

/// Runs `args.service` until `shutdown` resolves.
pub async fn run(config: Config, args: &RunArgs, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    if args.service == Service::Runner {
        // Runners run on any machine and never touch the store: `patchbay runner` itself.
        if args.http.is_some() {
            anyhow::bail!("--http: a runner keeps no store and serves no probes; run it without --http");
        }
        return crate::ci::runner(config, args.jobs, shutdown).await;
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let sealer = crate::keys::sealer(&config, true)?;
    let policy = Arc::new(crate::keys::trust_policy(&config)?);
    if args.service == Service::Relay && config.bus.backend != BusBackend::Amqp {
        anyhow::bail!(
            "{}: bus.backend: the relay carries the store's messages to RabbitMQ; on the embedded bus they are on the bus already",
            config.source_name()
        );
    }
    tokio::pin!(shutdown);
    if config.store.url.is_some() {
        return on_postgres(config, args, sealer, policy, shutdown).await;
    }
    let store = EmbeddedBus::open(&config.data_dir, sealer.clone())
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let bus: Arc<dyn Bus> = match config.bus.backend {
        // The embedded bus is the store itself: one writer for both.
        BusBackend::Embedded => Arc::new(store.clone()),
        BusBackend::Amqp => match crate::backend::bus_when_up(&config, sealer, &mut shutdown).await {
            Some(bus) => bus,
            None => return Ok(()),
        },
    };
    if config.bus.backend == BusBackend::Amqp {
        // Whatever this process publishes waits for services that have not started yet.
        crate::services::declare_queues(&config, bus.as_ref()).await;
    }
    // What this process commits to the store reaches RabbitMQ through the relay, which starts
    // at the end of the log the first time: its place is taken before anything is committed,
    // so nothing said before the first `run relay` is taken for old.
    if config.bus.backend == BusBackend::Amqp
        && matches!(args.service, Service::Ingest | Service::Aggregator | Service::Reporter | Service::Merged | Service::Notify)
    {
        crate::services::relay::Relay::new(store.db().clone(), bus.clone(), &config.instance)
            .mark()
            .await
            .context("reading the RabbitMQ relay's position in the store")?;
    }
    let (closing_tx, closing) = watch::channel(false);
    let tasks = start(&config, args, bus.clone(), store.clone(), policy, closing.clone()).await?;
    let probes = match (args.service, args.http) {
        (Service::Web, _) => None,
        (_, Some(addr)) => {
            let listener = crate::serve::listen(addr).with_context(|| format!("listening on {addr} (--http)"))?;
            println!("patchbay: {:?} answering /healthz, /readyz and /metrics on http://{}", args.service, listener.local_addr()?);
            let ready = Arc::new(crate::services::web::StoreReadiness { bus, db: store.db().clone() });
            let closing = closed(closing.clone());
            Some(tokio::spawn(async move {
                if let Err(error) = patchbay_web::serve_probes(listener, Some(ready), closing).await {
                    tracing::error!(%error, "The probes' HTTP server stopped.");
                }
            }))
        }
        (_, None) => None,
    };
    tracing::info!(service = ?args.service, data_dir = %config.data_dir.display(), topics = %config.bus.root.as_str(), backend = ?config.bus.backend, "Running.");
    shutdown.await;
    let _ = closing_tx.send(true);
    for t in tasks.into_iter().chain(probes) {
        let _ = t.await;
    }
    tracing::info!(service = ?args.service, "Stopped.");
    Ok(())
}

/// Runs `args.service` on the PostgreSQL `store.url` names and RabbitMQ: what it commits goes
/// to the store's outbox, which this process relays at once (and any `run relay` too).
async fn on_postgres(
    config: Config,
    args: &RunArgs,
    sealer: patchbay_bus::Sealer,
    policy: Arc<patchbay_bus::TrustPolicy>,
    mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> anyhow::Result<()> {
    let source = config.source_name();
    if config.bus.backend != BusBackend::Amqp {
        anyhow::bail!(
            "{source}: store.url: a PostgreSQL store is shared by processes on several hosts; they meet on RabbitMQ (bus.backend = \"amqp\")"
        );
    }
    let Some(bus) = crate::backend::bus_when_up(&config, sealer.clone(), &mut shutdown).await else { return Ok(()) };
    crate::services::declare_queues(&config, bus.as_ref()).await;
    let Some(store) = crate::backend::postgres_when_up(&config, sealer.clone(), &mut shutdown).await? else { return Ok(()) };
    let (closing_tx, closing) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(patchbay_store_pg::Relay::new(store.clone(), bus.clone()).run(closed(closing.clone())))];
    match args.service {
        Service::Aggregator => {
            let aggregator = crate::services::aggregator::aggregator_on_postgres(&config, store.clone(), bus.clone());
            tasks.extend(crate::services::aggregator::start(&config, aggregator, None, bus.clone(), policy, closing.clone())?);
        }
        Service::Logs => {
            let logs = patchbay_logs::LogStore::on_postgres(store.clone());
            tasks.push(crate::services::logs::start(&config, logs, bus.clone(), policy, closing.clone())?);
        }
        Service::History => {
            tasks.extend(crate::services::history::start_on_postgres(&config, store.clone(), bus.clone(), policy, closing.clone())?);
        }
        Service::Ingest => {
            tasks.extend(start_ingest(&config, args, crate::ingest::on_postgres(&config, store.clone()), bus.clone(), closing.clone())?)
        }
        Service::Web => {
            // The live stream reads a local copy of the namespace's messages, kept from the
            // broker as `run history` keeps it on the embedded store.
            let local = EmbeddedBus::open(&config.data_dir, sealer.clone())
                .with_context(|| format!("opening the stream's log in {}", config.data_dir.display()))?;
            tasks.push(crate::backend::recorder(&config, bus.clone(), local.clone(), policy, closed(closing.clone())).await?);
            // Kept no longer than the history keeps its messages (`history.keep_days`).
            tasks.extend(crate::services::history::start(&config, local.db().clone(), closing.clone()));
            tasks.push(
                start_web(&config, args, bus.clone(), Arc::new(local), crate::backend::Store::Postgres(store.clone()), closing.clone())
                    .await?,
            );
        }
        Service::Reporter => tasks.push(crate::services::reporter::start_reporter(
            &config,
            crate::backend::Store::Postgres(store.clone()),
            bus.clone(),
            policy,
            closing.clone(),
        )?),
        Service::Dispatcher => {
            tasks.push(start_dispatcher(&config, bus.clone(), policy, crate::ingest::on_postgres(&config, store.clone()), closing.clone())?)
        }
        Service::Merged => {
            tasks.extend(start_merged(&config, bus.clone(), policy, crate::ingest::on_postgres(&config, store.clone()), closing.clone())?)
        }
        Service::Notify => {
            let store = patchbay_notify::Store::Postgres(store.clone());
            tasks.extend(crate::services::notify::start(&config, store, bus.clone(), policy, closing.clone()).await?.0);
        }
        // The relay above is the whole of `run relay`.
        Service::Relay => {}
        Service::Runner => unreachable!("`run runner` is `patchbay runner`"),
    }
    if let Some(addr) = args.http.filter(|_| args.service != Service::Web) {
        let listener = crate::serve::listen(addr).with_context(|| format!("listening on {addr} (--http)"))?;
        println!("patchbay: {:?} answering /healthz, /readyz and /metrics on http://{}", args.service, listener.local_addr()?);
        let ready = Arc::new(crate::services::web::PgReadiness { bus, store });
        let closing = closed(closing.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(error) = patchbay_web::serve_probes(listener, Some(ready), closing).await {
                tracing::error!(%error, "The probes' HTTP server stopped.");
            }
        }));
    }
    tracing::info!(service = ?args.service, store = "postgres", topics = %config.bus.root.as_str(), "Running.");
    shutdown.await;
    let _ = closing_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!(service = ?args.service, "Stopped.");
    Ok(())
}

/// Ingest (and the threader inside it): the LMTP listener when one is configured, and the
/// deadline sweep.
fn start_ingest(
    config: &Config,
    args: &RunArgs,
    ingest: patchbay_ingest::Ingest,
    bus: Arc<dyn Bus>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let incomplete_after = config.ingest.incomplete_after_secs;
    // The archives followed without an MTA (`[[source]]`).
    let following = crate::services::follow::start(config, ingest.clone(), bus, closing.clone());
    let sweeping = ingest.clone();
    let mut tasks = vec![spawn_every(
        Duration::from_secs(30),
        closing.clone(),
        "Series past their deadline marked incomplete.",
        "Deadline sweep failed; will retry.",
        move || {
            let ingest = sweeping.clone();
            async move { ingest.sweep(patchbay_ingest::now(), incomplete_after).await }
        },
    )];
    match args.lmtp.or(config.ingest.lmtp_listen) {
        Some(addr) => {
            let listener = crate::serve::listen(addr).with_context(|| format!("listening on {addr} (ingest.lmtp_listen)"))?;
            println!("patchbay: accepting LMTP on {}", listener.local_addr()?);
            let (limits, stop) = (crate::serve::lmtp_limits(config), closed(closing));
            tasks.push(tokio::spawn(async move {
                if let Err(error) = patchbay_ingest::lmtp::serve(listener, ingest, limits, stop).await {
                    tracing::error!(%error, "The LMTP listener stopped.");
                }
            }));
        }
        None => tracing::info!("No LMTP listener (ingest.lmtp_listen is empty): mail comes by `patchbay inject` and `import`."),
    }
    tasks.extend(following);
    Ok(tasks)
}

/// The dispatcher, reading series (their mails' age, `Based-on:` dependencies) through `ingest`.
fn start_dispatcher(
    config: &Config,
    bus: Arc<dyn Bus>,
    policy: Arc<patchbay_bus::TrustPolicy>,
    ingest: patchbay_ingest::Ingest,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    let d = crate::services::dispatcher::start_dispatcher(config, bus, policy, Some(ingest), closed(closing))?;
    d.ok_or_else(|| {
        anyhow::anyhow!("{}: no [[project]] has a repository, so no series is tested: nothing to dispatch", config.source_name())
    })
}

/// The merge follower, recording what it finds through `ingest`.
fn start_merged(
    config: &Config,
    bus: Arc<dyn Bus>,
    policy: Arc<patchbay_bus::TrustPolicy>,
    ingest: patchbay_ingest::Ingest,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let started = crate::services::merged::start(config, ingest, bus, policy, closing)?;
    if started.is_empty() {
        anyhow::bail!("{}: merged.interval_secs is 0 or no project follows a branch: nothing to follow", config.source_name());
    }
    Ok(started)
}

/// Starts the service's tasks; they stop when `closing` turns true.
async fn start(
    config: &Config,
    args: &RunArgs,
    bus: Arc<dyn Bus>,
    store: EmbeddedBus,
    policy: Arc<patchbay_bus::TrustPolicy>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    match args.service {
        Service::Ingest => tasks.extend(start_ingest(config, args, crate::ingest::service_on(config, store), bus, closing)?),
        Service::Dispatcher => tasks.push(start_dispatcher(config, bus, policy, crate::ingest::service_on(config, store), closing)?),
        Service::Runner => unreachable!("`run runner` is `patchbay runner`"),
        Service::Aggregator => tasks.extend(crate::services::aggregator::start_aggregator(config, store, bus, policy, closing)?),
        Service::Reporter => {
            tasks.push(crate::services::reporter::start_reporter(config, crate::backend::Store::Embedded(store), bus, policy, closing)?)
        }
        Service::Logs => {
            let logs = patchbay_logs::LogStore::new(store.db().clone());
            tasks.push(crate::services::logs::start(config, logs, bus, policy, closing)?);
        }
        Service::History => {
            if config.bus.backend == BusBackend::Amqp {
                tasks.push(crate::backend::recorder(config, bus, store.clone(), policy, closed(closing.clone())).await?);
            }
            tasks.extend(crate::services::history::start(config, store.db().clone(), closing));
        }
        Service::Relay => tasks.push(crate::services::relay::start(config, store.db().clone(), bus, closing).await?),
        Service::Merged => tasks.extend(start_merged(config, bus, policy, crate::ingest::service_on(config, store), closing)?),
        Service::Web => {
            let log: Arc<dyn patchbay_bus::MessageLog> = Arc::new(store.clone());
            tasks.push(start_web(config, args, bus, log, crate::backend::Store::Embedded(store), closing).await?);
        }
        Service::Notify => {
            tasks.extend(crate::services::notify::start(config, patchbay_notify::Store::Embedded(store), bus, policy, closing).await?.0)
        }
    }
    Ok(tasks)
}

/// The web edge (API, dashboard, stream) on `--http` or `http.listen`, reading `store`; the
/// live stream follows `log`.
async fn start_web(
    config: &Config,
    args: &RunArgs,
    bus: Arc<dyn Bus>,
    log: Arc<dyn patchbay_bus::MessageLog>,
    store: crate::backend::Store,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<()>> {
    // The notification rules' admin API; `run notify` puts what it changes in force.
    let notify = match &store {
        crate::backend::Store::Embedded(s) => patchbay_notify::Store::Embedded(s.clone()),
        crate::backend::Store::Postgres(s) => patchbay_notify::Store::Postgres(s.clone()),
    };
    let notify = crate::services::notify::admin(config, notify).await?;
    let state = crate::services::web::state(config, bus, log, store, None, Some(notify), closing.clone())?;
    let addr = args.http.unwrap_or(config.http_listen);
    let listener = crate::serve::listen(addr).with_context(|| format!("listening on {addr} (http.listen)"))?;
    println!("patchbay: serving http://{} with data in {}", listener.local_addr()?, config.data_dir.display());
    let (limits, stop) = (crate::serve::http_limits(config), closed(closing));
    Ok(tokio::spawn(async move {
        if let Err(error) = patchbay_web::serve(listener, state, limits, stop).await {
            tracing::error!(%error, "The HTTP server stopped.");
        }
    }))
}
