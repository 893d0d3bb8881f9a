//! The re-test service: `mail.message.received` in, a re-test round's jobs (or a refusal) out,
//! as the dispatcher (`patchbay_ci::recheck`). Its ports read the store's mails and series,
//! the history's jobs, and claim rounds in the results store; `[[project]] maintainers` and
//! `dispatch.max_rechecks` say who may ask and how often.

use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::{Bus, Publisher, TrustPolicy};
use patchbay_ci::recheck::{Accepted, AskingMail, RecheckProject};
use patchbay_ci::{RecheckPorts, Rechecker};
use patchbay_config::Config;
use patchbay_model::{Body, Envelope, MailReceived, Sender, SeriesHead, ServiceName, TestJob, TopicRoot};
use patchbay_runtime::ServiceSpec;

/// Where the rechecker reads: the series store and the message history.
#[derive(Clone)]
pub struct Sources {
    /// Mails and series (ingest's).
    pub series: Arc<dyn patchbay_ingest::SeriesStore>,
    /// The message history: the jobs to run again.
    pub history: Arc<dyn patchbay_history::HistoryStore>,
    /// Verdicts, where a round is claimed.
    pub results: Arc<dyn patchbay_results::ResultsStore>,
}

/// The rechecker's view of the store and the history.
struct StoreRechecks {
    ports: Sources,
    root: TopicRoot,
}

impl StoreRechecks {
    /// The messages on `topic` (a pattern under the root) about series `id`, every page.
    async fn about(&self, topic: &str, id: i64) -> Result<Vec<Envelope>, String> {
        let mut out = Vec::new();
        for page in 1..=20u32 {
            let params: Vec<(String, String)> = vec![
                ("topic".into(), format!("{}.{topic}", self.root.as_str())),
                ("series".into(), id.to_string()),
                ("rows_per_page".into(), patchbay_model::messages::MAX_ROWS.to_string()),
                ("page".into(), page.to_string()),
            ];
            let q = patchbay_history::Query::from_params(&params, 0)?;
            let found = self.ports.history.search(q).await.map_err(|e| e.to_string())?;
            let n = found.messages.len();
            out.extend(found.messages.iter().filter_map(|w| Envelope::from_wire(w).ok()));
            if n < patchbay_model::messages::MAX_ROWS as usize {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl RecheckPorts for StoreRechecks {
    async fn mail(&self, id: i64) -> Result<Option<AskingMail>, String> {
        let Some(raw) = self.ports.series.raw_mail(id).await.map_err(|e| e.to_string())? else { return Ok(None) };
        let parsed = patchbay_mail::parse(&raw);
        let mut answers: Vec<String> = parsed.in_reply_to.clone();
        for id in parsed.references.iter().rev() {
            if !answers.contains(id) {
                answers.push(id.clone());
            }
        }
        Ok(Some(AskingMail { from: parsed.from_email, text: parsed.message, answers }))
    }

    async fn series_of_mail(&self, message_id: &str) -> Result<Option<i64>, String> {
        self.ports.series.series_of_mail(message_id.to_string()).await.map_err(|e| e.to_string())
    }

    async fn jobs(&self, id: i64) -> Result<Vec<TestJob>, String> {
        let mut jobs: Vec<TestJob> = Vec::new();
        for env in self.about("ci.job.#", id).await? {
            if env.schema.name != TestJob::SCHEMA || !env.topic.as_str().ends_with(".queued") {
                continue;
            }
            let Ok(job) = serde_json::from_value::<TestJob>(env.body) else { continue };
            // The version's first testing, each job once (an admin's re-run publishes it again).
            if job.round == 0 && !jobs.iter().any(|j| j.job == job.job) {
                jobs.push(job);
            }
        }
        jobs.sort_by(|a, b| a.job.cmp(&b.job));
        Ok(jobs)
    }

    async fn rounds(&self, head: &SeriesHead) -> Result<Vec<Accepted>, String> {
        let rounds = self.ports.results.rounds(head.id, head.version).await.map_err(|e| e.to_string())?;
        Ok(rounds.into_iter().map(|(round, recheck, mail)| Accepted { round, recheck, mail: mail.unwrap_or_default() }).collect())
    }

    async fn claim(&self, head: &SeriesHead, round: u32, recheck: &[String], mail: &str) -> Result<bool, String> {
        self.ports.results.claim_round(head.clone(), round, recheck.to_vec(), mail.to_string()).await.map_err(|e| e.to_string())
    }
}

/// Starts the rechecker on `bus` over `ports`, unless `dispatch.max_rechecks` is 0 or no
/// project is tested; it stops when `shutdown` resolves.
pub fn start(
    config: &Config,
    ports: Sources,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.dispatch.max_rechecks == 0 {
        return Ok(None);
    }
    let projects: Vec<RecheckProject> = config
        .projects
        .iter()
        .filter(|p| p.repository.is_some() && !p.tests.is_empty())
        .map(|p| RecheckProject { name: p.name.clone(), list_ids: p.list_ids.clone(), maintainers: p.maintainers.clone() })
        .collect();
    if projects.is_empty() {
        return Ok(None);
    }
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Dispatcher.as_str(), &config.instance));
    let ports = Arc::new(StoreRechecks { ports, root: config.bus.root.clone() });
    let rechecker = Rechecker::new(ports, projects, publisher, config.dispatch.max_rechecks, config.report.domain.clone());
    let pattern = patchbay_runtime::pattern_of::<MailReceived>(&config.bus.root)?;
    let mut spec = ServiceSpec::new(ServiceName::Dispatcher.as_str(), vec![pattern]);
    spec.queue = "dispatcher-recheck".into();
    let handler = patchbay_runtime::Typed::new(rechecker);
    Ok(Some(tokio::spawn(async move {
        if let Err(error) = patchbay_runtime::run(bus, policy, spec, handler, shutdown).await {
            tracing::error!(%error, "The re-test service stopped.");
        }
    })))
}
