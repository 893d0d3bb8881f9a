//! The services `serve` composes, one module each: every module turns its sections of the
//! config into a `ServiceSpec` and a handler (or a task), and nothing here imports `serve`.
//!
//! | module | service | config |
//! |---|---|---|
//! | `dispatcher` | series in, jobs out | `[[project]]`, `[[project.test]]`, `[[project.tree]]`, `dispatch.*` |
//! | `runner` | jobs in, results out | `runner.*` |
//! | `aggregator` | results in, one verdict per series version | `results.*`, required tests |
//! | `reporter` | verdicts in, one mail each | `report.*` |
//! | `logs` | `ci.test.log` chunks into the store | none |
//! | `history` | the indexer and retention | `history.keep_days` |
//! | `follow` | public-inbox archives fetched and imported | `[[source]]` |
//! | `merged` | branches followed, series found merged | `merged.*` |
//! | `notify` | every message in, notifications by rule out (webhooks, mail, digests) | `[[notify]]` |
//! | `recheck` | replies asking for a re-test in, a round's jobs out | `[[project]] maintainers`, `dispatch.max_rechecks` |
//! | `relay` | the store's log on to RabbitMQ | `bus.*` |
//! | `web` | the HTTP edge's ports over the stores | `http.*` |
//!
//! Ingest (with LMTP) is `crate::ingest` and `patchbay_ingest::lmtp`: its service is built by
//! `ingest::service_on`, shared by `serve`, `inject` and `import`.

pub mod aggregator;
pub mod dispatcher;
pub mod follow;
pub mod history;
pub mod logs;
pub mod merged;
pub mod notify;
pub mod recheck;
pub mod relay;
pub mod reporter;
pub mod runner;
pub mod web;

use std::sync::Arc;

/// The pipeline's shared queues: the dispatcher's, the aggregator's, the reporter's, the log
/// recorder's, one per (test, arch), and on PostgreSQL the history recorder's. Queues of one instance (a runner's cancellations and
/// base runs heard, the history recorder's copy) are left to their process.
pub fn queues(config: &patchbay_config::Config) -> anyhow::Result<Vec<patchbay_bus::QueueSpec>> {
    let specs = [dispatcher::spec(config)?, aggregator::results_queue(config)?, reporter::spec(config)?, logs::spec(config)?];
    let mut out: Vec<patchbay_bus::QueueSpec> =
        specs.into_iter().map(|s| patchbay_bus::QueueSpec::new(s.queue, s.patterns).on_demand(true)).collect();
    out.extend(dispatcher::job_queues(config)?.into_iter().map(|q| q.on_demand(true)));
    if config.store.url.is_some() {
        // On PostgreSQL the history is one shared queue's; on SQLite each store records its own.
        let h = history::pg_spec(config)?;
        out.push(patchbay_bus::QueueSpec::new(h.queue, h.patterns).on_demand(true));
    }
    Ok(out)
}

/// Declares every queue of [`queues`] on `bus`, so that what a process publishes before a
/// service's first start waits in its queue (RabbitMQ drops what no queue is bound for).
/// Failures are logged, not fatal: each service declares its own queue again when it starts.
pub async fn declare_queues(config: &patchbay_config::Config, bus: &dyn patchbay_bus::Bus) {
    let queues = match queues(config) {
        Ok(queues) => queues,
        Err(error) => return tracing::error!(error = format!("{error:#}"), "Cannot name the services' queues."),
    };
    let n = queues.len();
    for q in queues {
        if let Err(error) = bus.declare(q.clone()).await {
            tracing::warn!(queue = %q.name, %error, "Cannot declare a service's queue; it is declared when its service starts.");
        }
    }
    tracing::info!(queues = n, "Every service's queue declared.");
}

use async_trait::async_trait;
use patchbay_config::Config;
use patchbay_model::Sender;

/// Missed messages fetched from the history in the data directory's store (its recorder copies
/// every message there): a sender's range, indexing first when the range is not all there yet,
/// so nothing just recorded is missed.
pub struct HistoryReplay(pub patchbay_store::Db);

impl std::fmt::Debug for HistoryReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistoryReplay")
    }
}

impl HistoryReplay {
    async fn fetch(&self, sender: &Sender, from: u64, to: u64) -> Result<Vec<patchbay_model::Envelope>, String> {
        let mut out = Vec::new();
        for page in 1..=100 {
            let params: Vec<(String, String)> = vec![
                ("sender".into(), format!("{}:{}", sender.service, sender.instance)),
                ("seq_from".into(), from.to_string()),
                ("seq_to".into(), to.to_string()),
                ("order".into(), "asc".into()),
                ("rows_per_page".into(), "100".into()),
                ("page".into(), page.to_string()),
            ];
            let q = patchbay_history::Query::from_params(&params, 0)?;
            let got = patchbay_history::HistoryStore::search(&self.0, q).await.map_err(|e| e.to_string())?;
            let n = got.messages.len();
            for w in got.messages {
                out.push(patchbay_model::Envelope::from_wire(&w).map_err(|e| e.to_string())?);
            }
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl patchbay_runtime::Replay for HistoryReplay {
    async fn range(&self, sender: &Sender, from: u64, to: u64) -> Result<Vec<patchbay_model::Envelope>, String> {
        // Usually the range is all there (a sender's other topics); index first only when not.
        let got = self.fetch(sender, from, to).await?;
        if got.len() as u64 > to.saturating_sub(from) {
            return Ok(got);
        }
        patchbay_history::Indexer::new(self.0.clone()).catch_up().await.map_err(|e| e.to_string())?;
        self.fetch(sender, from, to).await
    }
}

/// Gap detection for a service on RabbitMQ (a durable embedded queue loses nothing).
fn replay_for(config: &Config, store: &patchbay_store::EmbeddedBus) -> Option<Arc<dyn patchbay_runtime::Replay>> {
    (config.bus.backend == patchbay_config::BusBackend::Amqp)
        .then(|| Arc::new(HistoryReplay(store.db().clone())) as Arc<dyn patchbay_runtime::Replay>)
}
