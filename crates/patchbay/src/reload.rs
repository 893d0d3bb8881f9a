//! Reloading `serve`'s config without a restart (`SIGHUP`, or `POST /api/v1/reload` by an
//! admin): projects, their lists, repositories and tests, the report and verdict settings,
//! `dispatch.max_age_secs` and the assembly rules take effect at once; the services that
//! follow them (dispatcher, aggregator, reporter, the incomplete-series sweep) are stopped
//! and started again with the new config, and ingest assembles the next mail by it.
//! Listeners, the bus, the store, keys, the runner and the HTTP settings stay as they are
//! until a restart, and the answer names each of those that changed. A config that does not
//! load leaves the running one in place, and the error says why.
//!
//! Stopping a service hands its unsettled deliveries back to its queue (at-least-once), so a
//! message in flight during a reload is handled again by the new service, never lost.

use std::sync::Arc;

use anyhow::Context as _;
use patchbay_bus::{Bus, TrustPolicy};
use patchbay_config::Config;
use patchbay_ingest::Ingest;
use patchbay_store::EmbeddedBus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::tasks::{closed, spawn_every};

/// What a reload did (the HTTP edge's answer too).
pub use patchbay_model::view::Reloaded;

/// The services that follow the projects and the report settings, under a stop signal of
/// their own that the process's shutdown also pulls.
struct Followers {
    stop: Arc<watch::Sender<bool>>,
    forward: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Followers {
    async fn stop(self) {
        let _ = self.stop.send(true);
        self.forward.abort();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// What the followers are built from, besides the config.
#[derive(Clone)]
struct Parts {
    bus: Arc<dyn Bus>,
    store: EmbeddedBus,
    policy: Arc<TrustPolicy>,
    ingest: Ingest,
    closing: watch::Receiver<bool>,
}

/// Starts the followers for `config`: the dispatcher when a project has a repository, then the
/// aggregator and the reporter, and the incomplete-series sweep.
fn start(config: &Config, parts: &Parts) -> anyhow::Result<Followers> {
    let (stop, stop_rx) = watch::channel(false);
    let stop = Arc::new(stop);
    let forward = {
        let (stop, mut closing) = (stop.clone(), parts.closing.clone());
        tokio::spawn(async move {
            let _ = closing.wait_for(|c| *c).await;
            let _ = stop.send(true);
        })
    };
    let mut tasks = Vec::new();
    let dispatcher = crate::services::dispatcher::start_dispatcher(
        config,
        parts.bus.clone(),
        parts.policy.clone(),
        Some(parts.ingest.clone()),
        closed(stop_rx.clone()),
    )?;
    if let Some(d) = dispatcher {
        tasks.push(d);
        tasks.extend(crate::services::aggregator::start_aggregator(
            config,
            parts.store.clone(),
            parts.bus.clone(),
            parts.policy.clone(),
            stop_rx.clone(),
        )?);
        tasks.push(crate::services::reporter::start_reporter(
            config,
            crate::backend::Store::Embedded(parts.store.clone()),
            parts.bus.clone(),
            parts.policy.clone(),
            stop_rx.clone(),
        )?);
    }
    let (ingest, incomplete_after) = (parts.ingest.clone(), config.ingest.incomplete_after_secs);
    tasks.push(spawn_every(
        std::time::Duration::from_secs(30),
        stop_rx,
        "Series past their deadline marked incomplete.",
        "Deadline sweep failed; will retry.",
        move || {
            let ingest = ingest.clone();
            async move { ingest.sweep(patchbay_ingest::now(), incomplete_after).await }
        },
    ));
    Ok(Followers { stop, forward, tasks })
}

/// Holds the running config and its followers; one reload at a time.
pub struct Reloader {
    state: tokio::sync::Mutex<(Config, Option<Followers>)>,
    parts: Parts,
}

impl Reloader {
    /// Starts the followers of `config` and keeps what a reload needs to start them again.
    pub(crate) fn start(
        config: Config,
        bus: Arc<dyn Bus>,
        store: EmbeddedBus,
        policy: Arc<TrustPolicy>,
        ingest: Ingest,
        closing: watch::Receiver<bool>,
    ) -> anyhow::Result<Arc<Reloader>> {
        let parts = Parts { bus, store, policy, ingest, closing };
        let followers = start(&config, &parts)?;
        Ok(Arc::new(Reloader { state: tokio::sync::Mutex::new((config, Some(followers))), parts }))
    }

    /// Re-reads the config file the running config came from and applies what can change.
    pub async fn reload(&self) -> anyhow::Result<Reloaded> {
        let mut state = self.state.lock().await;
        let old = &state.0;
        let file = old.source_name();
        let mut new = Config::load(old.source.as_deref()).with_context(|| format!("{file} was not reloaded; the running config stays"))?;
        // `--data-dir` and the like came from the command line, not the file.
        new.data_dir = old.data_dir.clone();
        crate::services::reporter::report_template(&new).with_context(|| format!("{file} was not reloaded; the running config stays"))?;
        let (effective, reloaded) = merge(old, new, file);
        if reloaded.applied.is_empty() {
            return Ok(reloaded);
        }
        // The new followers start before anything is torn down would be nicer, but two
        // dispatchers on one queue compete: stop first, then start; deliveries wait meanwhile.
        if let Some(f) = state.1.take() {
            f.stop().await;
        }
        self.parts.ingest.set_settings(crate::ingest::settings(&effective));
        match start(&effective, &self.parts) {
            Ok(f) => {
                state.1 = Some(f);
                state.0 = effective;
                tracing::info!(applied = ?reloaded.applied, needs_restart = ?reloaded.needs_restart, "Config reloaded.");
                Ok(reloaded)
            }
            Err(error) => {
                // The old config's followers come back rather than none at all.
                let old = state.0.clone();
                self.parts.ingest.set_settings(crate::ingest::settings(&old));
                state.1 = Some(start(&old, &self.parts)?);
                Err(error.context("the reloaded config could not start its services; the running config stays"))
            }
        }
    }

    /// Stops the followers (the process's shutdown stops them too; this waits for them).
    pub async fn stop(&self) {
        if let Some(f) = self.state.lock().await.1.take() {
            f.stop().await;
        }
    }
}

/// The config to run: the new file's reloadable parts over the old one's restart-only parts,
/// and what changed on each side.
fn merge(old: &Config, new: Config, file: String) -> (Config, Reloaded) {
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut applied = Vec::new();
    for (name, changed) in [
        ("projects", !same(&old.projects, &new.projects)),
        ("report", !same(&old.report, &new.report)),
        ("results", !same(&old.results, &new.results)),
        ("dispatch", !same(&old.dispatch, &new.dispatch)),
        (
            "ingest rules",
            !same(
                &(old.ingest.marker_window_secs, old.ingest.incomplete_after_secs),
                &(new.ingest.marker_window_secs, new.ingest.incomplete_after_secs),
            ),
        ),
    ] {
        if changed {
            applied.push(name);
        }
    }
    let mut needs_restart = Vec::new();
    for (name, changed) in [
        ("bus", !same(&old.bus, &new.bus)),
        ("identity.instance", old.instance != new.instance),
        ("signing", !same(&old.signing, &new.signing)),
        ("authority", !same(&old.authority, &new.authority)),
        ("http", !same(&(old.http_listen, &old.http_publish, &old.connections), &(new.http_listen, &new.http_publish, &new.connections))),
        ("http.admin_tokens", old.admin_tokens != new.admin_tokens),
        ("ingest.lmtp_listen", old.ingest.lmtp_listen != new.ingest.lmtp_listen),
        ("ingest.max_mail_bytes", old.ingest.max_mail_bytes != new.ingest.max_mail_bytes),
        ("runner", !same(&old.runner, &new.runner)),
        ("history", !same(&old.history, &new.history)),
        ("log", !same(&(&old.log_level, old.log_format), &(&new.log_level, new.log_format))),
        ("notify (rules over HTTP apply at once)", !same(&old.notify, &new.notify)),
        ("source", !same(&old.sources, &new.sources)),
    ] {
        if changed {
            needs_restart.push(name);
        }
    }
    // `serve` starts its own runner only when some project is tested at start.
    if crate::services::dispatcher::project_tests(old).is_empty() && !crate::services::dispatcher::project_tests(&new).is_empty() {
        needs_restart.push("runner (serve's own starts with the first tested project)");
    }
    let mut effective = old.clone();
    effective.projects = new.projects;
    effective.report = new.report;
    effective.results = new.results;
    effective.dispatch = new.dispatch;
    effective.ingest.marker_window_secs = new.ingest.marker_window_secs;
    effective.ingest.incomplete_after_secs = new.ingest.incomplete_after_secs;
    let (applied, needs_restart) = (applied.into_iter().map(String::from).collect(), needs_restart.into_iter().map(String::from).collect());
    (effective, Reloaded { file, applied, needs_restart })
}

impl patchbay_web::ConfigReload for Reloader {
    fn reload(&self, by: String) -> patchbay_web::Answer<'_, Reloaded> {
        Box::pin(async move {
            tracing::info!(%by, "Config reload asked over HTTP.");
            match Reloader::reload(self).await {
                Ok(r) => Ok(r),
                Err(error) => Err(patchbay_web::QueryError::Bad(format!("{error:#}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, std::path::Path::new("/etc/patchbay/patchbay.toml")).unwrap()
    }

    #[test]
    fn reloadable_parts_apply_and_the_rest_waits_for_a_restart() {
        let old = config("[http]\nlisten = \"127.0.0.1:8025\"\n[[project]]\nname = \"a\"\nlist_ids = [\"a.example.org\"]\n");
        let new = config(
            "[http]\nlisten = \"127.0.0.1:9000\"\n[report]\nonly_on_failure = true\n\
             [[project]]\nname = \"a\"\nlist_ids = [\"a.example.org\"]\n[[project]]\nname = \"b\"\nlist_ids = [\"b.example.org\"]\n",
        );
        let (effective, r) = merge(&old, new, "x".into());
        assert_eq!(r.applied, vec!["projects", "report"]);
        assert_eq!(r.needs_restart, vec!["http"]);
        assert_eq!(effective.projects.len(), 2);
        assert!(effective.report.only_on_failure);
        assert_eq!(effective.http_listen.port(), 8025, "the listener stays until a restart");
        let (_, same) = merge(&old, old.clone(), "x".into());
        assert!(same.applied.is_empty() && same.needs_restart.is_empty());
        let ruled = config(
            "[http]\nlisten = \"127.0.0.1:8025\"\n[[project]]\nname = \"a\"\nlist_ids = [\"a.example.org\"]\n\
             [[notify]]\nname = \"n\"\nemail = \"m@example.org\"\n",
        );
        let (_, r) = merge(&old, ruled, "x".into());
        assert_eq!(r.needs_restart, vec!["notify (rules over HTTP apply at once)"], "said, not silently ignored");
    }
}
