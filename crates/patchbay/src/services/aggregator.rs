//! The aggregator service: `[results]` and each project's required tests in, the aggregator
//! bound to `ci.test.finished` (and supersessions) out, with its deadline sweep.

use super::dispatcher::project_tests;
use super::replay_for;
use crate::tasks::{spawn_every, spawn_service};
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, Publisher, TrustPolicy};
use patchbay_config::Config;
use patchbay_model::{Sender, ServiceName};
use patchbay_runtime::ServiceSpec;

/// The aggregator for this config on the data directory's store: the required tests of every project.
pub fn aggregator(config: &Config, store: patchbay_store::EmbeddedBus, bus: Arc<dyn Bus>) -> patchbay_results::Aggregator {
    let (publisher, verdicts) = parts(config, bus);
    patchbay_results::Aggregator::new(store, publisher, verdicts)
}

/// The aggregator for this config on PostgreSQL (`store.url`).
pub fn aggregator_on_postgres(config: &Config, store: patchbay_store_pg::PgStore, bus: Arc<dyn Bus>) -> patchbay_results::Aggregator {
    let (publisher, verdicts) = parts(config, bus);
    patchbay_results::Aggregator::on_postgres(store, publisher, verdicts)
}

/// Who the aggregator publishes as, and what each project requires.
fn parts(config: &Config, bus: Arc<dyn Bus>) -> (Publisher, patchbay_results::Policy) {
    let mut verdicts = patchbay_results::Policy::default();
    for p in project_tests(config) {
        let required = p
            .tests
            .iter()
            .filter(|t| t.required)
            .flat_map(|t| t.arches.iter().map(|a| patchbay_verdict::Required { test: t.name.clone(), arch: a.clone() }))
            .collect();
        verdicts.required.insert(p.name.clone(), required);
    }
    let publisher = Publisher::new(bus, config.bus.root.clone(), Sender::new(ServiceName::Aggregator.as_str(), &config.instance));
    (publisher, verdicts)
}

/// Starts the aggregator (results and verdicts, in the store) and its deadline sweep.
pub fn start_aggregator(
    config: &Config,
    store: patchbay_store::EmbeddedBus,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let replay = replay_for(config, &store);
    let aggregator = aggregator(config, store, bus.clone());
    start(config, aggregator, replay, bus, policy, shutdown)
}

/// The aggregator's queue: results, and supersessions when `results.close_superseded`.
pub fn spec(config: &Config) -> anyhow::Result<ServiceSpec> {
    let mut spec = results_queue(config)?;
    if config.results.close_superseded {
        spec.patterns.push(patchbay_runtime::pattern_of::<patchbay_model::SeriesSuperseded>(&config.bus.root)?);
    }
    Ok(spec)
}

/// The aggregator's queue bound to results alone, which every config agrees on: what other
/// processes declare for it (bindings add up on RabbitMQ, so the optional one is the
/// aggregator's own to add).
pub fn results_queue(config: &Config) -> anyhow::Result<ServiceSpec> {
    Ok(ServiceSpec::new(
        ServiceName::Aggregator.as_str(),
        vec![patchbay_runtime::pattern_of::<patchbay_model::TestFinished>(&config.bus.root)?],
    ))
}

/// Starts `aggregator`, on whichever store, bound to its topics, and its deadline sweep;
/// `replay` fills sequence gaps from the history where the store keeps one.
pub fn start(
    config: &Config,
    aggregator: patchbay_results::Aggregator,
    replay: Option<Arc<dyn patchbay_runtime::Replay>>,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut spec = spec(config)?;
    spec.replay = replay;
    let service = spawn_service(bus, policy, spec, Arc::new(aggregator.clone()), shutdown.clone(), "The aggregator");
    let deadline = config.results.verdict_deadline_secs;
    let sweep = spawn_every(
        Duration::from_secs(30),
        shutdown,
        "Verdicts past their deadline issued.",
        "Verdict sweep failed; will retry.",
        move || {
            let aggregator = aggregator.clone();
            async move { aggregator.sweep(patchbay_ingest::now(), deadline).await }
        },
    );
    Ok(vec![service, sweep])
}
