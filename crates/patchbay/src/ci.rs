//! `patchbay runner` (a runner on its own, on the bus the config names) and `patchbay waive`.
//! The services themselves are in `services`.

use crate::services::aggregator::aggregator;
use crate::services::runner::start_runner;
use std::sync::Arc;

use patchbay_bus::Bus;
use patchbay_config::Config;
use patchbay_runner::Isolation;

/// Options of `patchbay runner`.
#[derive(clap::Args)]
pub struct RunnerArgs {
    /// Jobs at once (default: the config's `runner.jobs`).
    #[arg(long)]
    pub jobs: Option<u16>,
}

/// `patchbay runner` (and `patchbay run runner`): runs `jobs` at once (default `runner.jobs`)
/// from the bus the config names until `shutdown`. It never opens the store.
pub async fn runner(config: Config, jobs: Option<u16>, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let sealer = crate::keys::sealer(&config, true)?;
    let policy = Arc::new(crate::keys::trust_policy(&config)?);
    // Refuse at once what can never work (no bubblewrap), before waiting for the bus.
    if config.runner.isolation == Isolation::Bubblewrap {
        patchbay_runner::Sandbox::new(patchbay_runner::Isolation::Bubblewrap)
            .map_err(|e| anyhow::anyhow!("{}: runner.isolation: {e}", config.source_name()))?;
    }
    tokio::pin!(shutdown);
    let Some(bus) = crate::backend::bus_when_up(&config, sealer, &mut shutdown).await else { return Ok(()) };
    if config.bus.backend == patchbay_config::BusBackend::Amqp {
        // The results this runner publishes wait for an aggregator that has never started.
        crate::services::declare_queues(&config, bus.as_ref()).await;
    }
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let tasks = start_runner(&config, jobs.unwrap_or(config.runner.jobs), bus, policy, closing_rx)?;
    shutdown.await;
    let _ = closing_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// Options of `patchbay waive`.
#[derive(clap::Args)]
pub struct WaiveArgs {
    /// The result's id (from `GET /api/v1/results`).
    result: i64,
    /// Why: recorded and published with the waiver.
    #[arg(long, short)]
    comment: String,
    /// Who waives it (default: $USER).
    #[arg(long)]
    by: Option<String>,
}

/// `patchbay waive`: waives a result in the store (whether or not `serve` runs).
pub async fn waive(config: &Config, args: &WaiveArgs) -> Result<(), crate::Exit> {
    let store = crate::ingest::open_store(config)?;
    let bus: Arc<dyn Bus> = Arc::new(store.clone());
    let by = args.by.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "cli".into());
    match aggregator(config, store, bus).waive(args.result, args.comment.clone(), by).await {
        Ok(Some(w)) => {
            println!("waived result {} ({} {}/{} of series {} v{})", w.result, w.job, w.test, w.arch, w.series, w.version);
            Ok(())
        }
        Ok(None) => Err(crate::Exit::data(anyhow::anyhow!("no result {}", args.result))),
        Err(e) => Err(crate::Exit::tempfail(e)),
    }
}
