//! The `patchbay` library: the services composed into `serve`, the commands
//! behind the binary (`inject`, `import`, `publish`, `tail`, `query`, `runner`,
//! `demo`, …) and the backends they pick from the config. The binary
//! (`main.rs`) is only the command line over it; demos, benchmarks and tests
//! call it directly.

pub mod admin;
pub mod backend;
pub mod ci;
pub mod client;
pub mod demo;
pub mod history;
pub mod ingest;
pub mod keys;
pub mod pages;
pub mod reload;
pub mod serve;
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
