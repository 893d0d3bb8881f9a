//! The `patchbay` library: the services composed into `serve`, the commands
//! behind the binary and the backends they pick from the config. The binary
//! (`main.rs`) is only the command line over it; demos, benchmarks
//! (`patchbay-bench`) and tests call it directly. It is the only library that
//! uses `anyhow` and the only one that picks a concrete bus; nothing but
//! `crates/bench` depends on it, and its modules import no cycle (tidy).
//!
//! Modules, one concern each:
//! - `serve`: [`serve::start`] returns a [`serve::Running`] (its bus, its LMTP
//!   address, `reload()`, `stop()`). It only composes: on the embedded backend
//!   every service shares one `EmbeddedBus`, so a commit wakes consumers at
//!   once. It generates the `<host>-<instance>` key on first start, listens with a 4,096
//!   backlog, starts the `services` (the dispatcher, aggregator, reporter and
//!   sweeps through `reload`), and a runner unless `--no-runner`; `SIGHUP`
//!   reloads the config.
//! - `services`: one module per service, each turning its config sections
//!   into a `ServiceSpec` and a handler: `dispatcher`, `runner`, `aggregator`,
//!   `reporter`, `logs`, `history` (indexer, retention), `merged` (branches
//!   followed), `relay`, `web` (the HTTP edge's ports over the stores).
//! - `backend`: the bus the config names. On RabbitMQ, a recorder copies every
//!   message unchanged into the data directory's log (so the HTTP stream,
//!   history and `tail` work alike, under the same trust policy), and the
//!   `services::relay` sends what the store's publishers commit into
//!   that log on to RabbitMQ in log order, then records its position
//!   (`bus_meta` `amqp_relay_pos`; at-least-once). The first start begins at
//!   the end of the log, and mail injected while `serve` is down is relayed
//!   when it returns. Queue names carry the topic root. `serve` claims its
//!   namespace on RabbitMQ (`AmqpBus::claim_namespace`): a second `serve`
//!   keeping its own store there refuses to start, naming the first.
//! - `reload`: `SIGHUP` or `POST /api/v1/reload` reads the config again;
//!   projects, lists, tests, report, verdict and dispatch settings and the
//!   assembly rules apply at once (the services that follow them are stopped
//!   and started again, unsettled deliveries going back to their queues); what
//!   needs a restart is named; a config that does not load changes nothing.
//! - `tasks`: `spawn_service`, `spawn_every`, `closed`, and `shutdown_signal`
//!   (Ctrl-C or SIGTERM).
//! - `ci`: `patchbay runner` and `waive`.
//! - `ingest`: `inject` (0 once durable, 75 to make the MTA retry, 65 too
//!   large) and `import` (a reader thread, parsing on all cores and the
//!   store's writer overlapping; `--test` records the list id
//!   `test-anyway.import.patchbay.invalid`; a consistency report).
//! - `client`: `publish` (falls back to the store when the daemon is down,
//!   with the same sender and topic checks) and `tail` (SSE, resumes; one line
//!   per message, `time topic service:instance#seq summary`; heartbeats only
//!   with `--heartbeats`).
//! - `history`: `query`.
//! - `keys`: `keygen`, the sealer, the trust policy (roles, trusted keys,
//!   `signing.allow`) and this host's `<data>/publish.token`.
//! - `admin`: `config check` and `dead-letters`. `demo`: `patchbay demo`
//!   (dashboard on port 8035, or the next free one).
//!
//! [`Exit`] carries a sysexits code: 65 bad input, 69 unavailable, 75 try
//! again, 78 bad config; any other error exits 1. No module writes SQL: the
//! stores are read through the ports of the crates that own their tables.

pub mod admin;
pub mod backend;
pub mod ci;
pub mod client;
pub mod demo;
pub mod history;
pub mod ingest;
pub mod keys;
pub mod move_store;
pub mod reload;
pub mod run;
pub mod serve;
pub mod services;
pub mod tasks;

use std::path::Path;

use patchbay_config::{Config, LogFormat};

/// An error with the exit code it should produce (sysexits.h, for MTAs and scripts).
#[derive(Debug)]
pub struct Exit {
    code: u8,
    error: anyhow::Error,
}

impl Exit {
    /// The input was wrong (65, EX_DATAERR).
    pub fn data(error: impl Into<anyhow::Error>) -> Self {
        Exit { code: 65, error: error.into() }
    }
    /// The service is not there (69, EX_UNAVAILABLE).
    pub fn unavailable(error: impl Into<anyhow::Error>) -> Self {
        Exit { code: 69, error: error.into() }
    }
    /// Try again later (75, EX_TEMPFAIL).
    pub fn tempfail(error: impl Into<anyhow::Error>) -> Self {
        Exit { code: 75, error: error.into() }
    }
    /// The configuration is wrong (78, EX_CONFIG).
    pub fn config(error: impl Into<anyhow::Error>) -> Self {
        Exit { code: 78, error: error.into() }
    }
}

impl From<anyhow::Error> for Exit {
    fn from(error: anyhow::Error) -> Self {
        Exit { code: 1, error }
    }
}

impl Exit {
    /// The exit code (sysexits.h).
    pub fn code(&self) -> u8 {
        self.code
    }

    /// What went wrong.
    pub fn error(&self) -> &anyhow::Error {
        &self.error
    }
}

/// Loads the config (`--config`, else `./patchbay.toml`, else the defaults) and applies `--data-dir`.
pub fn load_config(path: Option<&Path>, data_dir: Option<&Path>) -> Result<Config, Exit> {
    let mut config = Config::load(path).map_err(Exit::config)?;
    if let Some(dir) = data_dir {
        config.data_dir = dir.to_path_buf();
    }
    Ok(config)
}

/// Logs to stderr at the config's level and format, unless `RUST_LOG` says otherwise; colours
/// only on a terminal, so log files and journald get plain text.
pub fn init_logging(config: &Config) {
    use std::io::IsTerminal as _;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Short-lived commands log warnings only, unless RUST_LOG says otherwise.
pub fn init_logging_quiet(config: &Config) {
    let mut quiet = config.clone();
    quiet.log_level = "warn".into();
    init_logging(&quiet);
}

/// The multi-threaded runtime every command runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Exit::from(anyhow::Error::from(e)))
}
