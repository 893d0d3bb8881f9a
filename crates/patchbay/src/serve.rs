//! `patchbay serve`: the embedded shape. One process, the embedded bus in the
//! data directory, the HTTP listener, and (as later issues add them) every
//! service, all stopped by one shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use patchbay_config::Config;

use crate::tasks::closed;

/// Options of `patchbay serve`.
#[derive(clap::Args, Default)]
pub struct ServeArgs {
    /// Listen on this address instead of the config's `http.listen`.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Accept LMTP on this address instead of the config's `ingest.lmtp_listen`.
    #[arg(long)]
    pub lmtp: Option<SocketAddr>,
    /// Run no test jobs in this process (runners run elsewhere: `patchbay runner`).
    #[arg(long)]
    pub no_runner: bool,
}

/// A running `serve`: its bus and addresses, and what to stop.
pub struct Running {
    /// The bus every service of this process uses (the benchmarks publish and consume on it).
    pub bus: Arc<dyn patchbay_bus::Bus>,
    /// Where LMTP is accepted, when it is.
    pub lmtp: Option<SocketAddr>,
    closing: tokio::sync::watch::Sender<bool>,
    http_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    lmtp_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    reloader: Arc<crate::reload::Reloader>,
    /// On RabbitMQ, the namespace claim, let go when this is dropped.
    _claim: Option<patchbay_bus_amqp::NamespaceClaim>,
}

impl Running {
    /// Re-reads the config file and applies what can change without a restart (see reload.rs).
    pub async fn reload(&self) -> anyhow::Result<crate::reload::Reloaded> {
        self.reloader.reload().await
    }

    /// Stops every service and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.closing.send(true);
        self.reloader.stop().await;
        self.http_task.await.context("HTTP server task")?.context("HTTP server")?;
        if let Some(lmtp) = self.lmtp_task {
            lmtp.await.context("LMTP task")?.context("LMTP listener")?;
        }
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("Stopped.");
        Ok(())
    }
}

/// A listening socket with a backlog of 4,096 (the kernel caps it at `net.core.somaxconn`):
/// tokio's 1,024 overflows when a burst of clients (an MTA's queue run, a flood of idle
/// sockets) arrives faster than `accept` runs, and a dropped SYN costs a newcomer a 1 s retry.
pub(crate) fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Runs until `shutdown` resolves; `SIGHUP` reloads the config (what cannot change without a
/// restart is named in the log, and a config that does not load leaves the running one).
pub async fn serve(config: Config, args: &ServeArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let running = start(config, args).await?;
    tokio::pin!(shutdown);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("listening for SIGHUP")?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = hangup.recv() => match running.reload().await {
                Ok(r) if r.applied.is_empty() && r.needs_restart.is_empty() => tracing::info!(file = %r.file, "SIGHUP: the config has not changed."),
                Ok(r) if r.needs_restart.is_empty() => tracing::info!(file = %r.file, applied = ?r.applied, "SIGHUP: config reloaded."),
                Ok(r) => tracing::warn!(file = %r.file, applied = ?r.applied, needs_restart = ?r.needs_restart, "SIGHUP: config reloaded; some changes apply only after a restart."),
                Err(error) => tracing::error!(error = format!("{error:#}"), "SIGHUP: config not reloaded."),
            },
        }
    }
    running.stop().await
}

/// Says at start when nothing, or some project, will never be tested: a config without a
/// `[[project]]` (or one without a repository or tests) starts fine and then stays silent.
fn say_what_will_be_tested(config: &Config) {
    let file = config.source_name();
    if config.projects.is_empty() {
        tracing::warn!(
            config = %file,
            "No [[project]] in the config: mail is stored and shown, but no series will be tested or reported. \
             Add a [[project]] with list_ids, a repository and [[project.test]] tables."
        );
        return;
    }
    for p in &config.projects {
        if p.repository.is_none() {
            tracing::warn!(config = %file, project = %p.name, "This project has no repository: its series are shown but never tested.");
        } else if p.tests.is_empty() {
            tracing::info!(config = %file, project = %p.name, "This project has no [[project.test]]: its series are only checked to apply.");
        }
    }
}

/// Starts every service of the embedded shape; they run until [`Running::stop`].
pub async fn start(config: Config, args: &ServeArgs) -> anyhow::Result<Running> {
    if config.store.url.is_some() {
        anyhow::bail!(
            "{}: store.url: serve is the embedded shape, on the data directory's SQLite; on PostgreSQL, run each service \
             with `patchbay run <service>` (docs/deploy.md)",
            config.source_name()
        );
    }
    say_what_will_be_tested(&config);
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let sealer = crate::keys::sealer(&config, true)?;
    // Built now so a bad trust setup stops `serve` at start.
    let policy = Arc::new(crate::keys::trust_policy(&config)?);
    let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
    let served = crate::backend::serve(&config, sealer, policy.clone(), closed(closing_rx.clone())).await?;
    let mut tasks = Vec::new();
    tasks.extend(served.recorder);

    // One handle on the store for ingest, logs, results and reports; on the embedded backend
    // it is the bus itself, so a commit by one service wakes the others at once.
    let store = match served.store.clone() {
        Some(store) => store,
        None => crate::ingest::open_store(&config).map_err(|e| e.error)?,
    };
    let ingest = crate::ingest::service_on(&config, store.clone());
    // Full test logs: recorded from `ci.test.log` into the store, served over HTTP.
    let logs = patchbay_logs::LogStore::new(store.db().clone());
    tasks.push(crate::services::logs::start(&config, logs, served.bus.clone(), policy.clone(), closing_rx.clone())?);
    let reloader = crate::reload::Reloader::start(
        config.clone(),
        served.bus.clone(),
        store.clone(),
        policy.clone(),
        ingest.clone(),
        closing_rx.clone(),
    )?;
    let addr = args.http.unwrap_or(config.http_listen);
    let listener = listen(addr).with_context(|| format!("listening on {addr} (http.listen)"))?;
    let local = listener.local_addr()?;
    // Notifications by rule (`[[notify]]`, and the admins' over HTTP).
    let (notify_tasks, notify) = crate::services::notify::start(
        &config,
        patchbay_notify::Store::Embedded(store.clone()),
        served.bus.clone(),
        policy.clone(),
        closing_rx.clone(),
    )
    .await?;
    tasks.extend(notify_tasks);
    let state = crate::services::web::state(
        &config,
        served.bus.clone(),
        served.log.clone(),
        crate::backend::Store::Embedded(store.clone()),
        Some(reloader.clone()),
        Some(notify),
        closing_rx.clone(),
    )?;
    // RabbitMQ: what the store's services commit into the local log goes on to the broker.
    if served.store.is_none() {
        tasks.push(crate::services::relay::start(&config, store.db().clone(), served.bus.clone(), closing_rx.clone()).await?);
    }
    // History: every message indexed as it commits; retention (`history.keep_days`).
    tasks.extend(crate::services::history::start(&config, store.db().clone(), closing_rx.clone()));
    // Public-inbox archives followed without an MTA (`[[source]]`).
    tasks.extend(crate::services::follow::start(&config, ingest.clone(), served.bus.clone(), closing_rx.clone()));
    // Merged series (`merged.interval_secs`, and at once on `git.branch.updated`).
    tasks.extend(crate::services::merged::start(&config, ingest.clone(), served.bus.clone(), policy.clone(), closing_rx.clone())?);
    let http_closing = closed(closing_rx.clone());
    let (http_limits, lmtp_limits) = (http_limits(&config), lmtp_limits(&config));
    tracing::info!(http = http_limits.max_connections, lmtp = lmtp_limits.max_connections, "Connection caps set.");
    let http_task =
        tokio::spawn(async move { patchbay_web::serve(listener, state, http_limits, http_closing).await.map_err(anyhow::Error::from) });
    // Mail in: LMTP and the incomplete-series deadline, on the store in the data directory.
    let mut lmtp_task = None;
    let mut lmtp = None;
    if let Some(addr) = args.lmtp.or(config.ingest.lmtp_listen) {
        let listener = listen(addr).with_context(|| format!("listening on {addr} (ingest.lmtp_listen)"))?;
        let local_lmtp = listener.local_addr()?;
        lmtp = Some(local_lmtp);
        println!("patchbay: accepting LMTP on {local_lmtp}");
        let (ingest, lmtp_closing) = (ingest.clone(), closed(closing_rx.clone()));
        lmtp_task = Some(tokio::spawn(async move {
            patchbay_ingest::lmtp::serve(listener, ingest, lmtp_limits, lmtp_closing).await.map_err(anyhow::Error::from)
        }));
    }
    // Tests: a runner in this process (embedded shape) when some project is tested; the
    // dispatcher, aggregator, reporter and deadline sweep follow the config (see reload.rs).
    let dispatching = !crate::services::dispatcher::project_tests(&config).is_empty();
    if dispatching && !args.no_runner {
        match crate::services::runner::start_runner(&config, config.runner.jobs, served.bus.clone(), policy.clone(), closing_rx.clone()) {
            Ok(runners) => tasks.extend(runners),
            // Jobs wait on their queues for a runner that can run them safely.
            Err(error) => tracing::error!(%error, "No runner in this process; test jobs wait for `patchbay runner` elsewhere."),
        }
    }
    println!("patchbay: serving http://{local} with data in {}", config.data_dir.display());
    tracing::info!(%local, data_dir = %config.data_dir.display(), topics = %config.bus.root.as_str(), backend = ?config.bus.backend, "Serving.");
    Ok(Running { bus: served.bus, lmtp, closing: closing_tx, http_task, lmtp_task, tasks, reloader, _claim: served.claim })
}

/// The HTTP listener's limits (`[connections]`).
pub(crate) fn http_limits(config: &Config) -> patchbay_web::limits::Limits {
    let limits = &config.connections;
    patchbay_web::limits::Limits {
        request_timeout: std::time::Duration::from_secs(limits.http_request_timeout_secs),
        ..patchbay_web::limits::Limits::new(limits.http_max_connections.unwrap_or(default_connection_cap()))
    }
}

/// The LMTP listener's limits (`[connections]`, `ingest.max_mail_bytes`).
pub(crate) fn lmtp_limits(config: &Config) -> patchbay_ingest::lmtp::Limits {
    let limits = &config.connections;
    patchbay_ingest::lmtp::Limits {
        max_bytes: config.ingest.max_mail_bytes,
        max_connections: limits.lmtp_max_connections.unwrap_or(default_connection_cap()),
        idle: std::time::Duration::from_secs(limits.lmtp_idle_secs),
    }
}

/// The default cap on LMTP and on HTTP connections: a quarter of the open-file limit each
/// (half stays for the store, git, test jobs and their pipes), at most 1,024 (beyond that
/// the cap guards memory more than descriptors), at least 16.
fn default_connection_cap() -> usize {
    // `/proc/self/limits` rather than getrlimit: no unsafe code, and Linux is what serve runs on.
    let soft = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let soft = line["Max open files".len()..].split_whitespace().next()?;
        Some(if soft == "unlimited" { usize::MAX } else { soft.parse().ok()? })
    });
    (soft.unwrap_or(1024) / 4).clamp(16, 1024)
}
