//! The history indexer (every message in the data directory's log, indexed for queries as it
//! commits) and retention (`history.keep_days`: hourly, what is older leaves the log and the
//! history). On PostgreSQL (`store.url`) it is the recorder instead: every message of the
//! namespace from one shared RabbitMQ queue into the shared `history` table.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::{Bus, TrustPolicy};
use patchbay_model::Envelope;
use patchbay_runtime::{Handler, HandlerError, ServiceSpec};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use patchbay_config::Config;

use crate::tasks::{closed, spawn_every};

/// The recorder's queue on PostgreSQL: every message under `<prefix>.<env>`, one queue that
/// any number of recorders share (the table keeps each message once).
pub fn pg_spec(config: &Config) -> anyhow::Result<ServiceSpec> {
    Ok(ServiceSpec::new("history", vec![patchbay_bus::TopicPattern::parse(&format!("{}.#", config.bus.root.as_str()))?]))
}

/// Keeps each message it is handed in PostgreSQL's history, exactly as received.
struct PgRecorder(patchbay_store_pg::PgStore);

#[async_trait]
impl Handler for PgRecorder {
    async fn handle(&self, envelope: &Envelope, _attempt: u32) -> Result<(), HandlerError> {
        patchbay_history::record_in_postgres(&self.0, std::slice::from_ref(envelope))
            .await
            .map(|_| ())
            .map_err(|e| HandlerError::Transient(e.to_string()))
    }
}

/// Starts the recorder into PostgreSQL and, with `history.keep_days`, the hourly pruning,
/// until `closing`.
pub fn start_on_postgres(
    config: &Config,
    store: patchbay_store_pg::PgStore,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    closing: watch::Receiver<bool>,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let recorder = Arc::new(PgRecorder(store.clone()));
    let mut tasks = vec![crate::tasks::spawn_service(bus, policy, pg_spec(config)?, recorder, closing.clone(), "The history recorder")];
    tasks.extend(prune_hourly(config, closing, move |keep| {
        let store = store.clone();
        async move { patchbay_history::prune_postgres(&store, keep).await.map(|n| n as usize) }
    }));
    Ok(tasks)
}

/// With `history.keep_days`, `prune(keep)` every hour until `closing`; without, nothing.
fn prune_hourly<F, Fut>(config: &Config, closing: watch::Receiver<bool>, prune: F) -> Option<JoinHandle<()>>
where
    F: Fn(std::time::Duration) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<usize, patchbay_store::StoreError>> + Send,
{
    (config.history.keep_days > 0).then(|| {
        let keep = std::time::Duration::from_secs(config.history.keep_days as u64 * 86_400);
        spawn_every(
            std::time::Duration::from_secs(3600),
            closing,
            "Pruned messages past history.keep_days.",
            "Pruning the history failed; will retry.",
            move || prune(keep),
        )
    })
}

/// Starts the indexer and, with `history.keep_days`, the hourly pruning, until `closing`.
pub fn start(config: &Config, db: patchbay_store::Db, closing: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let indexer = patchbay_history::Indexer::new(db.clone());
    let mut tasks = vec![tokio::spawn(indexer.run(closed(closing.clone())))];
    tasks.extend(prune_hourly(config, closing, move |keep| {
        let db = db.clone();
        async move { patchbay_history::prune(&db, keep).await }
    }));
    tasks
}
