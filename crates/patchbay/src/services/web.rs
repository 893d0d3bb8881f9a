//! The HTTP edge's ports over the stores: what the dashboard and the API read (series, results,
//! reports, logs, history, runners), the re-run and re-send actions (the message as it was, from
//! the history, published again), and waivers. Reads go through the stores' ports; no SQL here.

use std::sync::Arc;

use patchbay_bus::{Bus, Outgoing};
use patchbay_history::HistoryStore;
use patchbay_ingest::SeriesStore;
use patchbay_model::view::Requeued;
use patchbay_model::{Envelope, Sender, ServiceName, TopicRoot};
use patchbay_report::ReportStore;
use patchbay_results::ResultsStore;
use patchbay_store::Db;
use patchbay_store_pg::PgStore;
use patchbay_web::dashboard::{PageFuture, RunnerRow, SeriesFilter, SeriesRow, SeriesView};

/// The stores' read ports, whichever store holds the tables.
#[derive(Clone)]
pub struct Ports {
    /// Series and mails (ingest's).
    pub series: Arc<dyn SeriesStore>,
    /// Results and verdicts (the aggregator's).
    pub results: Arc<dyn ResultsStore>,
    /// Reports (the reporter's).
    pub reports: Arc<dyn ReportStore>,
    /// The message history.
    pub history: Arc<dyn HistoryStore>,
}

impl Ports {
    /// Every port on the data directory's SQLite.
    pub fn embedded(db: &Db) -> Ports {
        Ports { series: Arc::new(db.clone()), results: Arc::new(db.clone()), reports: Arc::new(db.clone()), history: Arc::new(db.clone()) }
    }

    /// Every port on the shared PostgreSQL.
    pub fn postgres(store: &PgStore) -> Ports {
        Ports {
            series: Arc::new(store.clone()),
            results: Arc::new(store.clone()),
            reports: Arc::new(store.clone()),
            history: Arc::new(store.clone()),
        }
    }
}

/// The dashboard's view of the store.
pub struct StorePages {
    /// The store's ports.
    pub ports: Ports,
    /// Topics of this deployment (for the runners' heartbeats).
    pub root: TopicRoot,
}

fn text(e: patchbay_store::StoreError) -> String {
    e.to_string()
}

impl StorePages {
    /// `rows` with their verdicts, which the results store owns.
    async fn with_verdicts(&self, mut rows: Vec<SeriesRow>) -> Result<Vec<SeriesRow>, String> {
        let verdicts = self.ports.results.verdicts(rows.iter().map(|r| (r.id, r.version)).collect()).await.map_err(text)?;
        for (row, verdict) in rows.iter_mut().zip(verdicts) {
            row.verdict = verdict;
        }
        Ok(rows)
    }

    /// The re-tests asked for series `id` and their answers, from the history, oldest first.
    async fn rechecks(&self, id: i64) -> Result<Vec<patchbay_model::view::RecheckRow>, String> {
        let params: Vec<(String, String)> = vec![
            ("topic".into(), format!("{}.ci.job.recheck.*", self.root.as_str())),
            ("series".into(), id.to_string()),
            ("rows_per_page".into(), patchbay_model::messages::MAX_ROWS.to_string()),
        ];
        let q = patchbay_history::Query::from_params(&params, 0)?;
        let page = self.ports.history.search(q).await.map_err(text)?;
        let mut rows: Vec<patchbay_model::view::RecheckRow> = page
            .messages
            .iter()
            .filter_map(|w| Envelope::from_wire(w).ok())
            .map(|env| {
                let b = &env.body;
                let refused = env.topic.as_str().ends_with(".refused").then(|| b["reason"].as_str().unwrap_or_default().to_string());
                patchbay_model::view::RecheckRow {
                    at: env.sent_at.as_micros() / 1_000_000,
                    by: b["by"].as_str().unwrap_or_default().to_string(),
                    round: b["round"].as_u64().map(|r| r as u32),
                    recheck: b["recheck"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_string)).collect(),
                    refused,
                }
            })
            .collect();
        rows.reverse();
        Ok(rows)
    }
}

impl patchbay_web::dashboard::Pages for StorePages {
    fn series_list(&self, filter: SeriesFilter, page: u32, per_page: u32) -> PageFuture<'_, (Vec<SeriesRow>, u64)> {
        Box::pin(async move {
            let (rows, total) = self.ports.series.list(filter, page, per_page).await.map_err(text)?;
            Ok((self.with_verdicts(rows).await?, total))
        })
    }

    fn series(&self, id: i64) -> PageFuture<'_, Option<SeriesView>> {
        Box::pin(async move {
            let Some(series) = self.ports.series.series(id).await.map_err(text)? else { return Ok(None) };
            let series = self.with_verdicts(vec![series]).await?.remove(0);
            let version = series.version;
            let patches = self.ports.series.patches(id).await.map_err(text)?;
            let versions = self.ports.series.versions(id).await.map_err(text)?;
            let cells = self.ports.results.cells(id, version).await.map_err(text)?;
            let report = self.ports.reports.report(id, version).await.map_err(text)?;
            let report_text = report.as_ref().and_then(|r| r.mail.as_ref().map(|m| String::from_utf8_lossy(m).into_owned()));
            let report = report.map(|r| (r.state, r.detail));
            let verdict_detail = self.ports.results.verdict_detail(id, version).await.map_err(text)?;
            // Best effort: the page shows without them when the history cannot answer.
            let rechecks = self.rechecks(id).await.unwrap_or_else(|error| {
                tracing::warn!(series = id, %error, "Re-tests not shown: the history did not answer.");
                Vec::new()
            });
            Ok(Some(SeriesView { series, patches, versions, cells, report, report_text, verdict_detail, rechecks }))
        })
    }

    fn raw_mail(&self, id: i64) -> PageFuture<'_, Option<Vec<u8>>> {
        Box::pin(async move { self.ports.series.raw_mail(id).await.map_err(text) })
    }

    fn series_mbox(&self, id: i64) -> PageFuture<'_, Option<Vec<u8>>> {
        // Ingest owns the series tables and the partial re-roll rule (slots taken from v1).
        Box::pin(async move { self.ports.series.mbox(id).await.map_err(text) })
    }

    fn sources(&self) -> PageFuture<'_, Vec<patchbay_model::view::SourceRow>> {
        Box::pin(async move {
            let since = patchbay_model::Timestamp::now().as_micros() - 30 * 86_400 * 1_000_000;
            let mut said: Vec<Envelope> = Vec::new();
            for suffix in [super::follow::FETCHED, super::follow::FAILED] {
                let topic = self.root.topic(suffix).map_err(|e| e.to_string())?;
                let wires = self.ports.history.latest(topic.as_str().to_string(), since, 1000).await.map_err(text)?;
                said.extend(wires.iter().filter_map(|w| Envelope::from_wire(w).ok()));
            }
            said.sort_by_key(|e| std::cmp::Reverse(e.sent_at.as_micros()));
            let mut rows: Vec<patchbay_model::view::SourceRow> = Vec::new();
            for env in &said {
                let b = &env.body;
                let repository = b["repository"].as_str().unwrap_or_default().to_string();
                let at = env.sent_at.as_micros() / 1_000_000;
                let ok = env.topic.as_str().ends_with(super::follow::FETCHED);
                match rows.iter_mut().find(|r| r.repository == repository) {
                    // Newest first: the first seen is the state; a later success is "last worked".
                    Some(row) => {
                        if ok && row.last_ok.is_none() {
                            row.last_ok = Some((at, b["stored"].as_u64().unwrap_or(0)));
                        }
                    }
                    None => rows.push(patchbay_model::view::SourceRow {
                        list_id: b["list_id"].as_str().unwrap_or_default().to_string(),
                        repository,
                        at,
                        error: (!ok).then(|| b["error"].as_str().unwrap_or_default().to_string()),
                        failures: b["failures"].as_u64().unwrap_or(0),
                        retry_in_secs: b["retry_in_secs"].as_u64().unwrap_or(0),
                        last_ok: ok.then(|| (at, b["stored"].as_u64().unwrap_or(0))),
                    }),
                }
            }
            rows.sort_by(|a, b| a.list_id.cmp(&b.list_id));
            Ok(rows)
        })
    }

    fn trend_data(&self, since: i64) -> PageFuture<'_, (Vec<patchbay_model::view::TrendRow>, Vec<patchbay_model::view::TestStats>)> {
        Box::pin(async move {
            let rows = self.ports.reports.trend_rows(since).await.map_err(text)?;
            let tests = self.ports.results.test_stats().await.map_err(text)?;
            Ok((rows, tests))
        })
    }

    fn tests(&self) -> PageFuture<'_, Vec<patchbay_model::view::TestStats>> {
        Box::pin(async move { self.ports.results.test_stats().await.map_err(text) })
    }

    fn runners(&self) -> PageFuture<'_, Vec<RunnerRow>> {
        Box::pin(async move {
            let topic = self.root.topic(<patchbay_model::RunnerHeartbeat as patchbay_model::Body>::TOPIC).map_err(|e| e.to_string())?;
            let since = patchbay_model::Timestamp::now().as_micros() - 10 * 60 * 1_000_000;
            let wires = self.ports.history.latest(topic.as_str().to_string(), since, 1000).await.map_err(text)?;
            let mut rows: Vec<RunnerRow> = Vec::new();
            for w in wires {
                let Ok(env) = Envelope::from_wire(&w) else { continue };
                if rows.iter().any(|r| r.instance == env.sender.instance) {
                    continue; // newest first: the first one seen is the latest
                }
                let Ok(beat) = serde_json::from_value::<patchbay_model::RunnerHeartbeat>(env.body.clone()) else { continue };
                rows.push(RunnerRow {
                    instance: env.sender.instance.clone(),
                    capabilities: beat.capabilities,
                    jobs: beat.jobs,
                    running: beat.running,
                    seen_at: env.sent_at.as_micros() / 1_000_000,
                });
            }
            rows.sort_by(|a, b| a.instance.cmp(&b.instance));
            Ok(rows)
        })
    }
}

/// Re-runs jobs: the job as it was queued, found in the history, published again.
pub struct Rerun {
    /// The store's ports (the history, the reports).
    pub ports: Ports,
    /// Where the copy goes.
    pub bus: Arc<dyn Bus>,
    /// Topics of this deployment.
    pub root: TopicRoot,
    /// This process's instance name, for the sender.
    pub instance: String,
}

fn unavailable(e: impl std::fmt::Display) -> patchbay_web::QueryError {
    patchbay_web::QueryError::Unavailable(e.to_string())
}

impl Rerun {
    /// Messages of the history matching `params` (newest first, at most 100).
    async fn history(&self, params: &[(&str, String)]) -> Result<Vec<Envelope>, patchbay_web::QueryError> {
        let mut params: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        params.push(("rows_per_page".into(), "100".into()));
        let q = patchbay_history::Query::from_params(&params, 0).map_err(patchbay_web::QueryError::Bad)?;
        let page = self.ports.history.search(q).await.map_err(unavailable)?;
        Ok(page.messages.iter().filter_map(|w| Envelope::from_wire(w).ok()).collect())
    }

    /// Publishes `original`'s body again on its topic, as the admin; returns the new message's id.
    async fn again(&self, original: &Envelope) -> Result<String, patchbay_web::QueryError> {
        let copy = Outgoing {
            sender: Sender::new(ServiceName::Admin.as_str(), &self.instance),
            topic: original.topic.clone(),
            schema: original.schema.clone(),
            body: original.body.clone(),
        };
        Ok(self.bus.publish(vec![copy]).await.map_err(unavailable)?[0].id.to_string())
    }
}

impl patchbay_web::TestJobs for Rerun {
    fn rerun(&self, job: String, by: String) -> patchbay_web::Answer<'_, Option<Requeued>> {
        Box::pin(async move {
            let found = self.history(&[("topic", format!("{}.ci.job.#", self.root.as_str())), ("job", job.clone())]).await?;
            // The job as the dispatcher queued it: its schema on a job topic, nothing that only mentions it.
            let queued_topic =
                |t: &str| t.strip_prefix(self.root.as_str()).is_some_and(|r| r.starts_with(".ci.job.") && r.ends_with(".queued"));
            let Some(queued) = found.into_iter().find(|e| {
                e.body["job"] == job.as_str()
                    && e.schema.name == <patchbay_model::TestJob as patchbay_model::Body>::SCHEMA
                    && queued_topic(e.topic.as_str())
            }) else {
                return Ok(None);
            };
            tracing::info!(%job, %by, "Job re-run by an admin.");
            let message = self.again(&queued).await?;
            Ok(Some(Requeued::job(job, by, message)))
        })
    }

    fn resend(&self, series: i64, version: u32, by: String) -> patchbay_web::Answer<'_, Option<Requeued>> {
        Box::pin(async move {
            let topic = self.root.topic(<patchbay_model::SeriesVerdict as patchbay_model::Body>::TOPIC).map_err(unavailable)?;
            let found = self.history(&[("topic", topic.as_str().to_string()), ("series", series.to_string())]).await?;
            // The version's first verdict: a re-test round's (`round`) has a report of its own.
            let Some(verdict) =
                found.into_iter().find(|e| e.body["series"]["version"] == serde_json::json!(version) && e.body.get("round").is_none())
            else {
                return Ok(None);
            };
            // The reporter acts on a report in `intent`: put it back there, then hand it the verdict again.
            let detail = format!("re-send asked by {by}");
            self.ports.reports.ask_resend(series, version, detail).await.map_err(unavailable)?;
            tracing::info!(series, version, %by, "Report re-send asked by an admin.");
            let message = self.again(&verdict).await?;
            Ok(Some(Requeued::report(series, version, by, message)))
        })
    }
}

/// The web edge's view of the stored test logs.
pub struct StoreLogs(pub patchbay_logs::LogStore);

impl patchbay_web::TestLogs for StoreLogs {
    fn get(&self, job: String) -> patchbay_web::LogFuture<'_> {
        Box::pin(async move { self.0.read(&job).await.map(|l| l.map(|l| (l.text, l.complete))).map_err(|e| e.to_string()) })
    }
}

/// The web edge's view of the message history.
pub struct StoreHistory(pub Arc<dyn HistoryStore>);

impl patchbay_web::MessageHistory for StoreHistory {
    fn query(&self, q: patchbay_history::Query) -> patchbay_web::PageFuture<'_> {
        Box::pin(async move { self.0.search(q).await.map_err(|e| patchbay_web::QueryError::Unavailable(e.to_string())) })
    }

    fn message(&self, id: String) -> patchbay_web::MessageFuture<'_> {
        Box::pin(async move { self.0.message(id).await.map_err(|e| patchbay_web::QueryError::Unavailable(e.to_string())) })
    }
}

/// The web edge's view of the stored results.
pub struct StoreResults {
    /// The results' port.
    pub results: Arc<dyn ResultsStore>,
    /// For waivers.
    pub aggregator: patchbay_results::Aggregator,
}

impl patchbay_web::TestResults for StoreResults {
    fn waive(&self, id: i64, comment: String, by: String) -> patchbay_web::Answer<'_, Option<patchbay_model::ResultWaived>> {
        Box::pin(
            async move { self.aggregator.waive(id, comment, by).await.map_err(|e| patchbay_web::QueryError::Unavailable(e.to_string())) },
        )
    }

    fn query(&self, q: patchbay_results::Query) -> patchbay_web::ResultsFuture<'_> {
        Box::pin(async move { self.results.query(q).await.map_err(|e| patchbay_web::QueryError::Unavailable(e.to_string())) })
    }
}

/// `/readyz` over this process's bus and store: the broker link (on RabbitMQ) and a read of the
/// store (opened, so migrated, at start) must both answer.
pub struct StoreReadiness {
    /// The bus services publish and consume on.
    pub bus: Arc<dyn Bus>,
    /// The store.
    pub db: Db,
}

impl patchbay_web::Readiness for StoreReadiness {
    fn check(&self) -> patchbay_web::ReadyFuture<'_> {
        Box::pin(async move {
            let bus = self.bus.ready().await.err().map(|e| e.to_string());
            let store = self.db.read(|_| Ok(())).await.err().map(|e| e.to_string());
            vec![("bus".to_string(), bus), ("store".to_string(), store)]
        })
    }
}

/// Readiness of a process on PostgreSQL (`store.url`): the bus, and one round trip to the store
/// (whose schema was migrated when the process connected).
pub struct PgReadiness {
    /// The bus services publish and consume on.
    pub bus: Arc<dyn Bus>,
    /// The shared store.
    pub store: patchbay_store_pg::PgStore,
}

impl patchbay_web::Readiness for PgReadiness {
    fn check(&self) -> patchbay_web::ReadyFuture<'_> {
        Box::pin(async move {
            let bus = self.bus.ready().await.err().map(|e| e.to_string());
            let store = self.store.ping().await.err().map(|e| e.to_string());
            vec![("bus".to_string(), bus), ("store".to_string(), store)]
        })
    }
}

/// The HTTP edge, every port in place: `serve`'s, with its config `reload`, and `patchbay run
/// web`'s, without (it follows no services to restart). `log` feeds the live stream.
pub fn state(
    config: &patchbay_config::Config,
    bus: Arc<dyn Bus>,
    log: Arc<dyn patchbay_bus::MessageLog>,
    store: crate::backend::Store,
    reload: Option<Arc<dyn patchbay_web::ConfigReload>>,
    notify: Option<patchbay_notify::Admin>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Arc<patchbay_web::AppState>> {
    let (ports, logs, aggregator, ready): (Ports, _, _, Arc<dyn patchbay_web::Readiness>) = match store {
        crate::backend::Store::Embedded(store) => {
            let db = store.db().clone();
            (
                Ports::embedded(&db),
                patchbay_logs::LogStore::new(db.clone()),
                crate::services::aggregator::aggregator(config, store, bus.clone()),
                Arc::new(StoreReadiness { bus: bus.clone(), db }),
            )
        }
        crate::backend::Store::Postgres(store) => (
            Ports::postgres(&store),
            patchbay_logs::LogStore::on_postgres(store.clone()),
            crate::services::aggregator::aggregator_on_postgres(config, store.clone(), bus.clone()),
            Arc::new(PgReadiness { bus: bus.clone(), store }),
        ),
    };
    Ok(Arc::new(patchbay_web::AppState {
        bus: bus.clone(),
        log,
        root: config.bus.root.clone(),
        authority: config.authority.clone(),
        publishing: patchbay_web::Publishing {
            loopback_without_token: config.http_publish.loopback_without_token,
            allowed_origins: config.http_publish.allowed_origins.clone(),
            local_tokens: crate::keys::local_publish_token(&config.data_dir, true)?.map(|t| ("local".to_string(), t)).into_iter().collect(),
        },
        instance: config.instance.clone(),
        closing,
        logs: Some(Arc::new(StoreLogs(logs))),
        results: Some(Arc::new(StoreResults { results: ports.results.clone(), aggregator })),
        admin_tokens: config.admin_tokens.clone(),
        history: Some(Arc::new(StoreHistory(ports.history.clone()))),
        pages: Some(Arc::new(StorePages { ports: ports.clone(), root: config.bus.root.clone() })),
        jobs: Some(Arc::new(Rerun { ports, bus, root: config.bus.root.clone(), instance: config.instance.clone() })),
        reload,
        ready: Some(ready),
        notify: notify.map(|a| Arc::new(NotifyAdmin(a)) as Arc<dyn patchbay_web::Notifications>),
    }))
}

/// The notifications' admin API over the notify crate.
struct NotifyAdmin(patchbay_notify::Admin);

fn notify_error(e: patchbay_notify::AdminError) -> patchbay_web::QueryError {
    match e {
        patchbay_notify::AdminError::Invalid(key, why) => patchbay_web::QueryError::Bad(format!("{key}: {why}")),
        patchbay_notify::AdminError::Conflict(why) => patchbay_web::QueryError::Conflict(why),
        patchbay_notify::AdminError::Store(e) => unavailable(e),
    }
}

impl patchbay_web::Notifications for NotifyAdmin {
    fn rules(&self) -> patchbay_web::Answer<'_, Vec<patchbay_model::view::NotifyRule>> {
        Box::pin(async move { self.0.list().await.map_err(unavailable) })
    }

    fn add(&self, rule: serde_json::Value, by: String) -> patchbay_web::Answer<'_, patchbay_model::view::NotifyRule> {
        Box::pin(async move {
            let raw: patchbay_notify::RawRule =
                serde_json::from_value(rule).map_err(|e| patchbay_web::QueryError::Bad(format!("body: {e}")))?;
            self.0.add(raw, &by).await.map_err(notify_error)
        })
    }

    fn remove(&self, name: String, by: String) -> patchbay_web::Answer<'_, bool> {
        Box::pin(async move { self.0.remove(&name, &by).await.map_err(notify_error) })
    }

    fn dead(&self, rule: Option<String>, limit: u32) -> patchbay_web::Answer<'_, Vec<patchbay_model::view::NotifyDead>> {
        Box::pin(async move { self.0.dead(rule, limit).await.map_err(unavailable) })
    }

    fn retry(&self, rule: String, message_id: String, by: String) -> patchbay_web::Answer<'_, bool> {
        Box::pin(async move { self.0.retry(&rule, &message_id, &by).await.map_err(unavailable) })
    }
}
