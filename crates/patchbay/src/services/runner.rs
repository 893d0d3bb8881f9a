//! The runner service: `[runner]` in, one runner service per (test, arch) queue this machine
//! can serve out, with its heartbeat and its supersession (and merge) listener. `serve` runs
//! one unless `--no-runner`; `patchbay runner` runs one on its own.

use super::dispatcher::project_tests;
use crate::tasks::spawn_service;
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, Publisher, TrustPolicy};
use patchbay_ci::{RunnerService, job_queue, job_topic};
use patchbay_config::Config;
use patchbay_model::{Sender, ServiceName};
use patchbay_runner::Isolation;
use patchbay_runtime::{RetryPolicy, ServiceSpec};

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
    let isolation = config.runner.isolation;
    if isolation == Isolation::None {
        tracing::warn!("runner.isolation = \"none\": test scripts run unconfined; use this for trusted jobs only.");
    }
    let sandbox =
        patchbay_runner::Sandbox::new(isolation).map_err(|e| anyhow::anyhow!("{}: runner.isolation: {e}", config.source_name()))?;
    let sandbox = sandbox
        .with_disk_quota(config.runner.disk_mib << 20)
        .with_etc_extra(&config.runner.etc_extra)
        .map_err(|e| anyhow::anyhow!("{}: runner.etc_extra: {e}", config.source_name()))?;
    let work = config.runner.work_dir.clone().unwrap_or_else(|| config.data_dir.join("runner"));
    let runner = patchbay_runner::Runner::new(&work, sandbox, Duration::from_secs(config.runner.fetch_interval_secs));
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Runner.as_str(), &config.instance));
    let scripts = project_tests(config)
        .iter()
        .flat_map(|p| p.tests.iter().map(|t| ((p.name.clone(), t.name.clone()), Some(t.script.clone()))))
        .collect();
    let handler = Arc::new(RunnerService::new(runner, publisher, jobs, config.runner.max_attempts).scripts(scripts));
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
    let served = queues(config);
    let baseline: Vec<(String, String)> = project_tests(config)
        .iter()
        .flat_map(|p| p.tests.iter().filter(|t| t.baseline).flat_map(|t| t.arches.iter().map(|a| (t.name.clone(), a.clone()))))
        .filter(|queue| served.contains(queue))
        .collect();
    if !baseline.is_empty() {
        // A queue of this runner's own, only when a test it serves has `baseline = true`: every
        // runner of a queue hears the base runs of the others, so each base and test definition
        // is run once among them.
        let pattern = patchbay_runtime::pattern(&config.bus.root, patchbay_ci::BASELINE_TOPIC)?;
        let mut spec = ServiceSpec::new(ServiceName::Runner.as_str(), vec![pattern]);
        spec.queue = format!("runner-baseline.{}", config.instance);
        let listener = Arc::new(handler.baseline_listener(baseline));
        tasks.push(spawn_service(bus.clone(), policy.clone(), spec, listener, shutdown.clone(), "The runner's base-run listener"));
    }
    for (test, arch) in served {
        // Jobs from the dispatcher, and re-runs of failures (`retries`) from runners.
        let patterns = vec![
            patchbay_runtime::pattern(&config.bus.root, &job_topic(&test, &arch))?,
            patchbay_runtime::pattern(&config.bus.root, &patchbay_model::retry_topic(&test, &arch))?,
        ];
        let mut spec = ServiceSpec::new(ServiceName::Runner.as_str(), patterns);
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
