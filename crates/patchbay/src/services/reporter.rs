//! The reporter service: `[report]` in (recipients, SMTP or the outbox, the template), the
//! reporter bound to `ci.series.verdict` out; and beside it the Patchwork checks on
//! `ci.result.recorded` for projects with `[project.patchwork]`.

use super::replay_for;
use crate::tasks::spawn_service;
use std::sync::Arc;
use std::time::Duration;

use patchbay_bus::{Bus, Publisher, TrustPolicy};
use patchbay_config::Config;
use patchbay_model::{Sender, ServiceName};
use patchbay_runtime::{RetryPolicy, ServiceSpec};

/// The maintainer's report template (`report.template`), compiled and tried on a sample.
pub fn report_template(config: &Config) -> anyhow::Result<Option<patchbay_report::compose::Template>> {
    match (&config.report.template, &config.report.template_text) {
        (Some(path), Some(text)) => patchbay_report::compose::Template::new(text.clone())
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: report.template: {}: {e}", config.source_name(), path.display())),
        _ => Ok(None),
    }
}

/// The reporter's queue: every verdict.
pub fn spec(config: &Config) -> anyhow::Result<ServiceSpec> {
    let pattern = patchbay_runtime::pattern_of::<patchbay_model::SeriesVerdict>(&config.bus.root)?;
    Ok(ServiceSpec::new(ServiceName::Reporter.as_str(), vec![pattern]))
}

/// How mail goes out (`report.smtp_url`, else the outbox maildir): the reporter's, and the
/// notifications'.
pub fn transport(config: &Config) -> anyhow::Result<patchbay_report::Transport> {
    Ok(match &config.report.smtp_url {
        None => patchbay_report::Transport::Outbox(config.data_dir.join("outbox")),
        Some(url) => patchbay_report::Transport::Smtp(
            patchbay_report::smtp::Smtp::new(&patchbay_report::smtp::SmtpSettings {
                url: url.clone(),
                credentials: config.report.smtp_credentials(),
                ca_pem: config.report.smtp_ca.clone(),
            })
            .map_err(|e| anyhow::anyhow!("{}: report.smtp_url: {e}", config.source_name()))?,
        ),
    })
}

/// Starts the reporter: one mail per verdict into `<data>/outbox` (a maildir), exactly once.
pub fn start_reporter(
    config: &Config,
    store: crate::backend::Store,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use patchbay_report::compose::Settings;
    let settings =
        Settings { from: config.report.from.clone(), domain: config.report.domain.clone(), recipients: config.report.recipients };
    let link = config.report.link.clone().or_else(|| Some(format!("http://{}", config.http_listen)));
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Reporter.as_str(), &config.instance));
    let transport = transport(config)?;
    let checks = start_checks(config, &store, bus.clone(), policy.clone(), shutdown.clone(), link.clone())?;
    let (replay, reporter) = match store {
        crate::backend::Store::Embedded(store) => {
            (replay_for(config, &store), patchbay_report::Reporter::new(store, publisher, settings, transport, link))
        }
        // No sequence-gap replay on PostgreSQL: reporters on several hosts compete for one
        // queue, so what one of them sees has gaps by design; RabbitMQ redelivers after a crash.
        crate::backend::Store::Postgres(store) => {
            (None, patchbay_report::Reporter::on_postgres(store, publisher, settings, transport, link))
        }
    };
    let reporter = reporter
        .template(report_template(config)?.map(Arc::new))
        .skipping(patchbay_report::Skip { passed: config.report.only_on_failure, superseded: config.report.skip_superseded })
        .lists(config.projects.iter().filter_map(|p| Some((p.name.clone(), p.list_address.clone()?))).collect())
        .projects(config.projects.iter().map(|p| (p.name.clone(), p.report)).collect())
        .scripts(
            config.projects.iter().flat_map(|p| p.tests.iter().map(|t| ((p.name.clone(), t.name.clone()), t.script.clone()))).collect(),
        );
    let mut spec = spec(config)?;
    spec.replay = replay;
    // An SMTP server may be down for hours: keep trying, at most a minute apart.
    spec.retry = RetryPolicy { max_attempts: 10_000, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(60) };
    let reporter = spawn_service(bus, policy, spec, patchbay_runtime::Typed::new(reporter), shutdown, "The reporter");
    Ok(match checks {
        None => reporter,
        Some(checks) => tokio::spawn(async move {
            let _ = reporter.await;
            let _ = checks.await;
        }),
    })
}

/// Starts the Patchwork checks beside the reporter (same sender, its own queue on every
/// recorded result) when a project names a Patchwork instance.
fn start_checks(
    config: &Config,
    store: &crate::backend::Store,
    bus: Arc<dyn Bus>,
    policy: Arc<TrustPolicy>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    link: Option<String>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let projects: std::collections::HashMap<String, patchbay_patchwork::PatchworkSettings> =
        config.projects.iter().filter_map(|p| Some((p.name.clone(), p.patchwork.clone()?))).collect();
    if projects.is_empty() {
        return Ok(None);
    }
    let publisher = Publisher::new(bus.clone(), config.bus.root.clone(), Sender::new(ServiceName::Reporter.as_str(), &config.instance));
    let checks = match store {
        crate::backend::Store::Embedded(store) => patchbay_patchwork::Checks::new(store.clone(), publisher, projects, link),
        crate::backend::Store::Postgres(store) => patchbay_patchwork::Checks::on_postgres(store.clone(), publisher, projects, link),
    };
    let pattern = patchbay_runtime::pattern_of::<patchbay_model::ResultRecorded>(&config.bus.root)?;
    let mut spec = ServiceSpec::new(ServiceName::Reporter.as_str(), vec![pattern]);
    spec.queue = "reporter-checks".into();
    // A Patchwork that is down for hours loses nothing: keep trying, at most a minute apart.
    spec.retry = RetryPolicy { max_attempts: 10_000, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(60) };
    Ok(Some(spawn_service(bus, policy, spec, patchbay_runtime::Typed::new(checks), shutdown, "The Patchwork checks")))
}
