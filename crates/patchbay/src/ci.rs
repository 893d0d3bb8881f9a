//! `patchbay runner`, and the dispatcher and runner services inside `serve`:
//! config in, services bound to the bus out.

use crate::tasks::{spawn_every, spawn_service};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use patchbay_bus::{Bus, Publisher, TrustPolicy};
use patchbay_ci::{Dependencies, Dispatcher, MailDates, ProjectTests, RunnerService, SeriesDates, TestDef, job_queue, job_topic};
use patchbay_config::{Config, Isolation};
use patchbay_model::{Sender, SeriesComplete, ServiceName, TestLimits};
use patchbay_runtime::{RetryPolicy, ServiceSpec};

/// Options of `patchbay runner`.
#[derive(clap::Args)]
pub struct RunnerArgs {
    /// Jobs at once (default: the config's `runner.jobs`).
    #[arg(long)]
    jobs: Option<u16>,
}

/// The projects that have a repository, with their tests, as the dispatcher sees them.
pub fn project_tests(config: &Config) -> Vec<ProjectTests> {
    config
        .projects
        .iter()
        .filter_map(|p| {
            Some(ProjectTests {
                name: p.name.clone(),
                repository: p.repository.clone()?,
                branch: p.branch.clone(),
                tests: p
                    .tests
                    .iter()
                    .map(|t| TestDef {
                        name: t.name.clone(),
                        script: t.script.clone(),
                        arches: t.arches.clone(),
                        limits: TestLimits {
                            wall_secs: t.time_limit_secs,
                            memory_mib: t.memory_mib,
                            processes: t.processes,
                            file_size_mib: 4096,
                            output_kib: config.runner.output_kib,
                        },
                        required: t.required,
                        capabilities: t.capabilities.clone(),
                    })
                    .collect(),
                trees: p
                    .trees
                    .iter()
                    .map(|t| patchbay_ci::Tree {
                        tags: t.tags.clone(),
                        paths: t.paths.clone(),
                        repository: t.repository.clone(),
                        branch: t.branch.clone(),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The (test, arch) queues this runner can serve: `apply` always, and every test whose arch and
/// capabilities it has.
pub fn queues(config: &Config) -> Vec<(String, String)> {
    let caps = &config.runner.capabilities;
    let mut out = vec![(patchbay_model::APPLY_TEST.to_string(), patchbay_ci::ANY_ARCH.to_string())];
    for p in project_tests(config) {
        for t in &p.tests {
            for arch in &t.arches {
                if caps.contains(arch) && t.capabilities.iter().all(|c| caps.contains(c)) && !out.contains(&(t.name.clone(), arch.clone()))
                {
                    out.push((t.name.clone(), arch.clone()));
                }
            }
        }
    }
    out
}

/// Dependencies looked up in the embedded store.
struct StoreDependencies(patchbay_ingest::Ingest);

#[async_trait]
impl Dependencies for StoreDependencies {
    async fn mbox(&self, reference: &str) -> Option<String> {
        // `Based-on: <id>` or a URL ending in the id (lore, patchew); take what looks like an id.
        let id = reference.trim().rsplit('/').find(|s| s.contains('@')).unwrap_or(reference.trim());
        self.0.complete_series_mbox(id).await.ok().flatten()
    }
}

/// The dates of a series' mails, read from the embedded store.
struct StoreDates(patchbay_ingest::Ingest);

#[async_trait]
impl SeriesDates for StoreDates {
    async fn dates(&self, id: i64) -> Result<Option<MailDates>, String> {
        use patchbay_ingest::SeriesStore as _;
        let age = self.0.bus().db().age(id).await.map_err(|e| e.to_string())?;
        Ok(age.map(|a| MailDates { newest: a.newest, test_anyway: a.test_anyway }))
    }
}

/// Starts the dispatcher on `bus`; it stops when `shutdown` resolves.
pub fn start_dispatcher(
    config: &Config,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    ingest: Option<patchbay_ingest::Ingest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let projects = project_tests(config);
    if projects.is_empty() {
        return Ok(None);
    }
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Dispatcher.as_str(), &config.instance));
    let deps: Arc<dyn Dependencies> = match &ingest {
        Some(i) => Arc::new(StoreDependencies(i.clone())),
        None => Arc::new(patchbay_ci::NoDependencies),
    };
    let mut dispatcher = Dispatcher::new(projects, publisher, deps);
    // Without the store there are no dates to go by: every series is tested.
    if let Some(i) = ingest {
        dispatcher = dispatcher.with_max_age(
            config.dispatch_max_age_secs,
            Arc::new(StoreDates(i)),
            Sender::new(ServiceName::Dispatcher.as_str(), &config.instance),
        );
    }
    let handler = patchbay_runtime::Typed::new(dispatcher);
    let pattern = patchbay_runtime::pattern_of::<SeriesComplete>(&config.bus.root)?;
    let spec = ServiceSpec::new(ServiceName::Dispatcher.as_str(), vec![pattern]);
    // Every job queue exists before the first job is published: jobs then wait for a runner
    // instead of being dropped because none has subscribed yet.
    let mut queues = vec![(patchbay_model::APPLY_TEST.to_string(), patchbay_ci::ANY_ARCH.to_string())];
    for p in project_tests(config) {
        for t in &p.tests {
            for arch in &t.arches {
                queues.push((t.name.clone(), arch.clone()));
            }
        }
    }
    let mut declared = Vec::new();
    for (test, arch) in queues {
        let pattern = patchbay_runtime::pattern(&config.bus.root, &job_topic(&test, &arch))?;
        declared.push(patchbay_bus::QueueSpec::new(job_queue(&test, &arch), vec![pattern]));
    }
    Ok(Some(tokio::spawn(async move {
        for q in declared {
            if let Err(error) = bus.declare(q.clone()).await {
                tracing::error!(queue = %q.name, %error, "Cannot declare a job queue; its jobs may be lost until a runner subscribes.");
            }
        }
        if let Err(error) = patchbay_runtime::run(bus, policy, spec, handler, shutdown).await {
            tracing::error!(%error, "The dispatcher stopped.");
        }
    })))
}

/// How often a runner says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Starts one runner service per queue this runner serves; they stop when `shutdown` resolves.
pub fn start_runner(
    config: &Config,
    jobs: u16,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let isolation = match config.runner.isolation {
        Isolation::Bubblewrap => patchbay_runner::Isolation::Bubblewrap,
        Isolation::None => {
            tracing::warn!("runner.isolation = \"none\": test scripts run unconfined; use this for trusted jobs only.");
            patchbay_runner::Isolation::None
        }
    };
    let sandbox =
        patchbay_runner::Sandbox::new(isolation).map_err(|e| anyhow::anyhow!("{}: runner.isolation: {e}", config.source_name()))?;
    let sandbox = sandbox
        .with_disk_quota(config.runner.disk_mib << 20)
        .with_etc_extra(&config.runner.etc_extra)
        .map_err(|e| anyhow::anyhow!("{}: runner.etc_extra: {e}", config.source_name()))?;
    let work = config.runner.work_dir.clone().unwrap_or_else(|| config.data_dir.join("runner"));
    let runner = patchbay_runner::Runner::new(&work, sandbox, Duration::from_secs(config.runner.fetch_interval_secs));
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Runner.as_str(), &config.instance));
    let handler = Arc::new(RunnerService::new(runner, publisher, jobs, config.runner.max_attempts));
    let mut tasks = Vec::new();
    // A heartbeat at start and every 30 s: what this runner can run and what it runs now.
    {
        let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Runner.as_str(), &config.instance));
        let (handler, capabilities) = (handler.clone(), config.runner.capabilities.clone());
        let mut stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let beat = patchbay_model::RunnerHeartbeat {
                    capabilities: capabilities.clone(),
                    jobs: u32::from(jobs),
                    running: handler.running(),
                };
                if let Err(error) = publisher.publish(&beat).await {
                    tracing::debug!(%error, "Heartbeat not published.");
                }
                tokio::select! {
                    _ = stop.wait_for(|c| *c) => return,
                    () = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        }));
    }
    if config.runner.cancel_superseded {
        // A queue of this runner's own: every runner hears of every supersession and merge.
        let patterns = patchbay_ci::SupersededListener::TOPICS
            .iter()
            .map(|t| patchbay_runtime::pattern(&config.bus.root, t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut spec = ServiceSpec::new(ServiceName::Runner.as_str(), patterns);
        spec.queue = format!("runner-superseded.{}", config.instance);
        let listener = Arc::new(handler.superseded_listener());
        tasks.push(spawn_service(bus.clone(), policy.clone(), spec, listener, shutdown.clone(), "The runner's supersession listener"));
    }
    for (test, arch) in queues(config) {
        let pattern = patchbay_runtime::pattern(&config.bus.root, &job_topic(&test, &arch))?;
        let mut spec = ServiceSpec::new(ServiceName::Runner.as_str(), vec![pattern]);
        spec.queue = job_queue(&test, &arch);
        spec.concurrency = jobs;
        // A job that keeps killing runners comes back with a rising attempt count; the handler
        // reports it and dead-letters it after runner.max_attempts. Handler errors retry as usual.
        spec.retry = RetryPolicy { max_attempts: config.runner.max_attempts + 1, ..RetryPolicy::default() };
        spec.grace = Duration::from_secs(5);
        spec.slots = Some(handler.slots());
        tasks.push(spawn_service(bus.clone(), policy.clone(), spec, handler.clone(), shutdown.clone(), "A runner queue"));
    }
    tracing::info!(jobs, queues = tasks.len(), "Runner started.");
    Ok(tasks)
}

/// `patchbay runner`: runs jobs from the bus the config names until Ctrl-C or SIGTERM.
pub async fn runner(config: Config, args: &RunnerArgs) -> anyhow::Result<()> {
    let sealer = crate::keys::sealer(&config, true)?;
    let policy = Arc::new(crate::keys::trust_policy(&config)?);
    // Refuse at once what can never work (no bubblewrap), before waiting for the bus.
    if config.runner.isolation == Isolation::Bubblewrap {
        patchbay_runner::Sandbox::new(patchbay_runner::Isolation::Bubblewrap)
            .map_err(|e| anyhow::anyhow!("{}: runner.isolation: {e}", config.source_name()))?;
    }
    // A broker that is down now may be up soon: retry with backoff, and say so.
    let shutdown = crate::tasks::shutdown_signal();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(500);
    let bus = loop {
        match crate::backend::bus(&config, sealer.clone()).await {
            Ok(bus) => break bus,
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?backoff, "Cannot reach the bus; retrying.");
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    };
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let tasks = start_runner(&config, args.jobs.unwrap_or(config.runner.jobs), bus, policy, closing_rx)?;
    shutdown.await;
    let _ = closing_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

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

/// Missed messages fetched from the history in the data directory's store (its recorder copies
/// every message there): a sender's range, indexed first so nothing just recorded is missed.
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
    if config.close_superseded {
        patterns.push(patchbay_runtime::pattern_of::<patchbay_model::SeriesSuperseded>(&config.bus.root)?);
    }
    let mut spec = ServiceSpec::new(ServiceName::Aggregator.as_str(), patterns);
    spec.replay = replay;
    let service = spawn_service(bus, policy, spec, Arc::new(aggregator.clone()), shutdown.clone(), "The aggregator");
    let deadline = config.verdict_deadline_secs;
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

/// The maintainer's report template (`report.template`), compiled and tried on a sample.
pub fn report_template(config: &Config) -> anyhow::Result<Option<patchbay_report::compose::Template>> {
    match &config.report.template {
        None => Ok(None),
        Some((path, text)) => patchbay_report::compose::Template::new(text.clone())
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: report.template: {}: {e}", config.source_name(), path.display())),
    }
}

/// Starts the reporter: one mail per verdict into `<data>/outbox` (a maildir), exactly once.
pub fn start_reporter(
    config: &Config,
    store: patchbay_store::EmbeddedBus,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use patchbay_report::compose::{Recipients as R, Settings};
    let recipients = match config.report.recipients {
        patchbay_config::Recipients::Submitter => R::Submitter,
        patchbay_config::Recipients::List => R::List,
        patchbay_config::Recipients::Both => R::Both,
    };
    let settings = Settings { from: config.report.from.clone(), domain: config.report.domain.clone(), recipients };
    let link = config.report.link.clone().or_else(|| Some(format!("http://{}", config.http_listen)));
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Reporter.as_str(), &config.instance));
    let transport = match &config.report.smtp_url {
        None => patchbay_report::Transport::Outbox(config.data_dir.join("outbox")),
        Some(url) => patchbay_report::Transport::Smtp(
            patchbay_report::smtp::Smtp::new(&patchbay_report::smtp::SmtpSettings {
                url: url.clone(),
                credentials: config.report.smtp_credentials.clone(),
                ca_pem: config.report.smtp_ca.clone(),
            })
            .map_err(|e| anyhow::anyhow!("{}: report.smtp_url: {e}", config.source_name()))?,
        ),
    };
    let replay = replay_for(config, &store);
    let reporter = patchbay_report::Reporter::new(store, publisher, settings, transport, link)
        .template(report_template(config)?.map(Arc::new))
        .skipping(patchbay_report::Skip { passed: config.report.only_on_failure, superseded: config.report.skip_superseded })
        .lists(config.projects.iter().filter_map(|p| Some((p.name.clone(), p.list_address.clone()?))).collect())
        .scripts(
            config.projects.iter().flat_map(|p| p.tests.iter().map(|t| ((p.name.clone(), t.name.clone()), t.script.clone()))).collect(),
        );
    let pattern = patchbay_runtime::pattern_of::<patchbay_model::SeriesVerdict>(&config.bus.root)?;
    let mut spec = ServiceSpec::new(ServiceName::Reporter.as_str(), vec![pattern]);
    spec.replay = replay;
    // An SMTP server may be down for hours: keep trying, at most a minute apart.
    spec.retry = RetryPolicy { max_attempts: 10_000, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(60) };
    Ok(spawn_service(bus, policy, spec, patchbay_runtime::Typed::new(reporter), shutdown, "The reporter"))
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
    let ingest = crate::ingest::service(config)?;
    let store = ingest.bus().clone();
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
