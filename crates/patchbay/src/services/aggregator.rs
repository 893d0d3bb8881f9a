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

/// The aggregator for this config: the required tests of every project.
pub fn aggregator(config: &Config, store: patchbay_store::EmbeddedBus, bus: Arc<dyn Bus>) -> patchbay_results::Aggregator {
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
    patchbay_results::Aggregator::new(store, publisher, verdicts)
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
    let mut patterns = vec![patchbay_runtime::pattern_of::<patchbay_model::TestFinished>(&config.bus.root)?];
    if config.results.close_superseded {
        patterns.push(patchbay_runtime::pattern_of::<patchbay_model::SeriesSuperseded>(&config.bus.root)?);
    }
    let mut spec = ServiceSpec::new(ServiceName::Aggregator.as_str(), patterns);
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
