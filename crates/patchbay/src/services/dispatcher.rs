//! The dispatcher service: `[[project]]` and `[[project.test]]` (and `dispatch.max_age_secs`)
//! in, a `Dispatcher` bound to `series.series.complete` out, with every job queue declared.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use patchbay_bus::{Bus, Publisher, TrustPolicy};
use patchbay_ci::{Dependencies, Dispatcher, MailDates, ProjectTests, SeriesDates, TestDef, job_queue, job_topic};
use patchbay_config::Config;
use patchbay_model::{Sender, SeriesComplete, ServiceName, TestLimits};
use patchbay_runtime::ServiceSpec;

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
                        retries: t.retries,
                        baseline: t.baseline,
                        per_patch: t.per_patch,
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
        let age = self.0.series_store().age(id).await.map_err(|e| e.to_string())?;
        Ok(age.map(|a| MailDates { newest: a.newest, test_anyway: a.test_anyway }))
    }
}

/// The dispatcher's queue: every complete series.
pub fn spec(config: &Config) -> anyhow::Result<ServiceSpec> {
    let pattern = patchbay_runtime::pattern_of::<SeriesComplete>(&config.bus.root)?;
    Ok(ServiceSpec::new(ServiceName::Dispatcher.as_str(), vec![pattern]))
}

/// One queue per (test, arch) the projects run, the apply test's included.
pub fn job_queues(config: &Config) -> anyhow::Result<Vec<patchbay_bus::QueueSpec>> {
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
    Ok(declared)
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
    let ports = ingest.as_ref().and_then(|i| {
        let (history, results): (Arc<dyn patchbay_history::HistoryStore>, Arc<dyn patchbay_results::ResultsStore>) =
            match (i.embedded(), i.postgres()) {
                (Some(bus), _) => (Arc::new(bus.db().clone()), Arc::new(bus.db().clone())),
                (None, Some(store)) => (Arc::new(store.clone()), Arc::new(store.clone())),
                (None, None) => return None,
            };
        Some(crate::services::recheck::Sources { series: i.series_store(), history, results })
    });
    let mut dispatcher = Dispatcher::new(projects, publisher, deps);
    // Without the store there are no dates to go by: every series is tested.
    if let Some(i) = ingest {
        dispatcher = dispatcher.with_max_age(
            config.dispatch.max_age(),
            Arc::new(StoreDates(i)),
            Sender::new(ServiceName::Dispatcher.as_str(), &config.instance),
        );
    }
    let handler = patchbay_runtime::Typed::new(dispatcher);
    let spec = spec(config)?;
    // Re-tests asked on the list, beside it: it reads the store the dispatcher reads.
    let (recheck_stop, mut recheck_stopped) = tokio::sync::watch::channel(false);
    let recheck = match &ports {
        Some(ports) => crate::services::recheck::start(config, ports.clone(), bus.clone(), policy.clone(), async move {
            let _ = recheck_stopped.wait_for(|s| *s).await;
        })?,
        None => None,
    };
    let shutdown = async move {
        shutdown.await;
        let _ = recheck_stop.send(true);
    };
    // Every job queue exists before the first job is published: jobs then wait for a runner
    // instead of being dropped because none has subscribed yet.
    let declared = job_queues(config)?;
    Ok(Some(tokio::spawn(async move {
        for q in declared {
            if let Err(error) = bus.declare(q.clone()).await {
                tracing::error!(queue = %q.name, %error, "Cannot declare a job queue; its jobs may be lost until a runner subscribes.");
            }
        }
        if let Err(error) = patchbay_runtime::run(bus, policy, spec, handler, shutdown).await {
            tracing::error!(%error, "The dispatcher stopped.");
        }
        if let Some(recheck) = recheck {
            let _ = recheck.await;
        }
    })))
}
