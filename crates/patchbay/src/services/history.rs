//! The history indexer (every message in the data directory's log, indexed for queries as it
//! commits) and retention (`history.keep_days`: hourly, what is older leaves the log and the
//! history).

use tokio::sync::watch;
use tokio::task::JoinHandle;

use patchbay_config::Config;

use crate::tasks::{closed, spawn_every};

/// Starts the indexer and, with `history.keep_days`, the hourly pruning, until `closing`.
pub fn start(config: &Config, db: patchbay_store::Db, closing: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let indexer = patchbay_history::Indexer::new(db.clone());
    let mut tasks = vec![tokio::spawn(indexer.run(closed(closing.clone())))];
    if config.history.keep_days > 0 {
        let keep = std::time::Duration::from_secs(config.history.keep_days as u64 * 86_400);
        tasks.push(spawn_every(
            std::time::Duration::from_secs(3600),
            closing,
            "Pruned messages past history.keep_days.",
            "Pruning the history failed; will retry.",
            move || {
                let db = db.clone();
                async move { patchbay_history::prune(&db, keep).await }
            },
        ));
    }
    tasks
}
