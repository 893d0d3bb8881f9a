//! Notifications by rule (`[[notify]]`): the collector on every message of the namespace, and
//! the deliverer (webhooks, and mail through the reporter's transport). Embedded store only.

use std::sync::Arc;

use patchbay_bus::{Bus, TrustPolicy};
use patchbay_config::Config;
use patchbay_model::Sender;
use patchbay_runtime::ServiceSpec;
use patchbay_store::EmbeddedBus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tasks::spawn_service;

/// Starts the notifications when the config has rules; they stop when `closing` turns true.
pub fn start(
    config: &Config,
    store: EmbeddedBus,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    if config.notify.is_empty() {
        return Ok(Vec::new());
    }
    let rules = Arc::new(config.notify.clone());
    let collector = patchbay_notify::Collector::new(store.clone(), config.bus.root.clone(), rules.clone());
    let every = patchbay_model::TopicPattern::parse(&format!("{}.#", config.bus.root.as_str()))?;
    let mut spec = ServiceSpec::new("notify", vec![every]);
    spec.queue = "notify".into();
    // One at a time: what is kept keeps the bus's order (per series, a rule's deliveries follow it).
    spec.concurrency = 1;
    let deliverer = patchbay_notify::Deliverer::new(
        store,
        rules,
        super::reporter::transport(config)?,
        config.report.from.clone(),
        config.report.domain.clone(),
        // Not a role's name: it announces outside the roles' categories (`notify.#`).
        Sender::new("notify", &config.instance),
        config.bus.root.clone(),
    );
    tracing::info!(rules = config.notify.len(), "Notifications started.");
    Ok(vec![
        spawn_service(bus, policy, spec, Arc::new(collector), closing.clone(), "The notifications' collector"),
        tokio::spawn(deliverer.run(closing)),
    ])
}
