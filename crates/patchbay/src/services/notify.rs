//! Notifications by rule (`[[notify]]`): the collector on every message of the namespace, and
//! the deliverer (webhooks, and mail through the reporter's transport), and the admins' rules.
//! On either store: `serve` runs them, or `patchbay run notify` (several on PostgreSQL, one delivering).

use std::sync::Arc;

use patchbay_bus::{Bus, TrustPolicy};
use patchbay_config::Config;
use patchbay_model::Sender;
use patchbay_runtime::ServiceSpec;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tasks::spawn_service;

/// Starts the notifications: the rules of the config and those admins added over HTTP (the
/// returned [`patchbay_notify::Admin`] serves them). The collector starts with the first rule in
/// force, and everything stops when `closing` turns true.
pub async fn start(
    config: &Config,
    store: patchbay_notify::Store,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<JoinHandle<()>>, patchbay_notify::Admin)> {
    // Not a role's name: it announces outside the roles' categories (`notify.#`).
    let sender = Sender::new("notify", &config.instance);
    let admin = patchbay_notify::Admin::load(store.clone(), config.notify.clone(), config.bus.root.clone(), sender.clone()).await?;
    let rules = admin.rules().clone();
    let collector = patchbay_notify::Collector::new(store.clone(), config.bus.root.clone(), rules.clone());
    let every = patchbay_model::TopicPattern::parse(&format!("{}.#", config.bus.root.as_str()))?;
    let mut spec = ServiceSpec::new("notify", vec![every]);
    spec.queue = "notify".into();
    // One at a time: what is kept keeps the bus's order (per series, a rule's deliveries follow it).
    spec.concurrency = 1;
    let deliverer = patchbay_notify::Deliverer::new(
        store,
        rules.clone(),
        super::reporter::transport(config)?,
        config.report.from.clone(),
        config.report.domain.clone(),
        sender,
        config.bus.root.clone(),
    );
    let n = rules.current().len();
    if n > 0 {
        tracing::info!(rules = n, "Notifications started.");
    }
    // A queue of every message costs a write per message: it exists from the first rule on.
    let mut stop = closing.clone();
    let collecting = closing.clone();
    let collector_task = tokio::spawn(async move {
        let first_rule = tokio::select! {
            _ = stop.wait_for(|c| *c) => false,
            () = rules.any() => true,
        };
        if first_rule {
            let _ = spawn_service(bus, policy, spec, Arc::new(collector), collecting, "The notifications' collector").await;
        }
    });
    // Rules an admin added through another process (`run web`) come into force here too.
    let refreshing = {
        let (admin, mut stop) = (admin.clone(), closing.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.wait_for(|c| *c) => return,
                    () = tokio::time::sleep(REFRESH) => {}
                }
                if let Err(error) = admin.refresh().await {
                    tracing::warn!(%error, "Notifications: cannot read the rules added over HTTP; will try again.");
                }
            }
        })
    };
    Ok((vec![collector_task, refreshing, tokio::spawn(deliverer.run(closing))], admin))
}

/// How soon a rule added or removed through another process is in force here.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(3);

/// The admins' side alone (`patchbay run web`): rules added there are in force in the
/// notifying processes within [`REFRESH`].
pub async fn admin(config: &Config, store: patchbay_notify::Store) -> anyhow::Result<patchbay_notify::Admin> {
    Ok(patchbay_notify::Admin::load(store, config.notify.clone(), config.bus.root.clone(), Sender::new("notify", &config.instance)).await?)
}
