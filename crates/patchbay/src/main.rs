//! The `patchbay` binary: command-line glue. It parses arguments, loads the
//! config, picks the backends and calls into the library crates; `main` alone
//! turns errors into exit codes.

mod backend;
mod bench;
mod bench_amqp;
mod bench_latency;
mod bench_runner;
mod ci;
mod client;
mod demo;
mod history;
mod ingest;
mod keys;
mod pages;
mod serve;
mod tasks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use patchbay_config::{Config, LogFormat};

/// patchbay: automated testing of patch series posted to mailing lists.
#[derive(Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Config file (default: ./patchbay.toml when present, else built-in defaults).
    #[arg(long, global = true, env = "PATCHBAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory, overriding the config's `data_dir` (default ./patchbay-data).
    #[arg(long, global = true, env = "PATCHBAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in one process on the embedded bus, with the HTTP listener.
    Serve(serve::ServeArgs),
    /// Try it offline: a sample project, a good and a broken series posted over LMTP, tested, reported.
    Demo(demo::DemoArgs),
    /// Publish one message from a shell script (like fedmsg-logger).
    Publish(client::PublishArgs),
    /// Print messages as they are published (like fedmsg-tail); resumes after disconnects.
    Tail(client::TailArgs),
    /// Search the message history (the filters of GET /api/v1/messages), as text or --json.
    Query(history::QueryArgs),
    /// Store one mail from stdin (for procmail, Postfix pipe(8), .forward); exit 75 to make the MTA retry.
    Inject(ingest::InjectArgs),
    /// Import mbox files, maildirs and public-inbox archives (incrementally), with progress.
    Import(ingest::ImportArgs),
    /// Run test jobs from the bus: apply series with git and test them in a sandbox.
    Runner(ci::RunnerArgs),
    /// Waive a failed result with a comment; an undecided verdict no longer counts it.
    Waive(ci::WaiveArgs),
    /// Write a new ed25519 signing key pair.
    Keygen(keys::KeygenArgs),
    /// Show what consumers set aside and why: refused senders and signatures, failing handlers.
    DeadLetters(keys::DeadLettersArgs),
    /// Check the config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the JSON Schemas of the envelope and of every message body.
    Schema(SchemaArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Load and validate the config and the keys it names; every error names file, key and reason.
    Check {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Durable publish + consume + ack throughput, and publish-to-delivery latency.
    Bus(bench::BusBench),
    /// The RabbitMQ bus against a raw lapin client, and against the embedded bus.
    Amqp(bench_amqp::AmqpBench),
    /// Import + parse + series assembly into a fresh embedded store: mails/s and peak RSS.
    Ingest(ingest::IngestBench),
    /// The runner's overhead on a 10-patch series against the same commands run by hand.
    Runner(bench_runner::RunnerBench),
    /// Every history filter against a million stored messages: p50/p99 per combination.
    History(history::HistoryBench),
    /// Reaction times over N series: last mail over LMTP -> jobs, last result -> report at SMTP.
    Latency(bench_latency::LatencyBench),
}

#[derive(clap::Args)]
struct SchemaArgs {
    /// Write one `<name>.v<version>.schema.json` file per schema into this directory instead.
    #[arg(long)]
    out: Option<PathBuf>,
}

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("patchbay: {:#}", exit.error);
            ExitCode::from(exit.code)
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Exit> {
    let mut config = Config::load(cli.config.as_deref()).map_err(Exit::config)?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| Exit::from(anyhow::Error::from(e)))
}

fn run(cli: Cli) -> Result<(), Exit> {
    match &cli.command {
        Command::Schema(args) => schema(args).map_err(Exit::from),
        Command::Bench { what: BenchWhat::Bus(opts) } => runtime()?.block_on(bench::run(opts.clone())).map_err(Exit::from),
        Command::Bench { what: BenchWhat::Amqp(opts) } => runtime()?.block_on(bench_amqp::run(opts.clone())).map_err(Exit::from),
        Command::Bench { what: BenchWhat::Runner(opts) } => runtime()?.block_on(bench_runner::run(opts.clone())).map_err(Exit::from),
        Command::Bench { what: BenchWhat::History(opts) } => runtime()?.block_on(history::bench(opts.clone())).map_err(Exit::from),
        Command::Bench { what: BenchWhat::Latency(opts) } => runtime()?.block_on(bench_latency::run(opts.clone())).map_err(Exit::from),
        Command::Bench { what: BenchWhat::Ingest(opts) } => runtime()?.block_on(ingest::bench(opts.clone())).map_err(Exit::from),
        Command::Demo(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(demo::demo(args)).map_err(Exit::from)
        }
        Command::DeadLetters(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(keys::dead_letters(&config, args))
        }
        Command::Waive(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(ci::waive(&config, args))
        }
        Command::Runner(args) => {
            let config = load_config(&cli)?;
            init_logging(&config);
            runtime()?.block_on(ci::runner(config, args)).map_err(Exit::from)
        }
        Command::Inject(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(ingest::inject(&config, args))
        }
        Command::Import(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(ingest::import(&config, args))
        }
        Command::Config { action: ConfigAction::Check { json } } => {
            keys::config_check(cli.config.as_deref(), cli.data_dir.as_deref(), *json)
        }
        Command::Keygen(args) => {
            let config = load_config(&cli)?;
            keys::keygen(&config, args).map_err(Exit::from)
        }
        Command::Serve(args) => {
            let config = load_config(&cli)?;
            init_logging(&config);
            runtime()?.block_on(serve::serve(config, args, serve::shutdown_signal())).map_err(Exit::from)
        }
        Command::Publish(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(client::publish(&config, args))
        }
        Command::Query(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(history::query(&config, args))
        }
        Command::Tail(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(client::tail(&config, args))
        }
    }
}

/// Short-lived commands log warnings only, unless RUST_LOG says otherwise.
fn init_logging_quiet(config: &Config) {
    let mut quiet = config.clone();
    quiet.log_level = "warn".into();
    init_logging(&quiet);
}

fn schema(args: &SchemaArgs) -> anyhow::Result<()> {
    let bodies = patchbay_model::body_schemas();
    match &args.out {
        None => {
            let all = serde_json::json!({ "envelope": patchbay_model::envelope_schema(), "bodies": bodies });
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        Some(dir) => {
            use anyhow::Context as _;
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let write = |name: String, value: &serde_json::Value| -> anyhow::Result<()> {
                let path = dir.join(name);
                std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
                Ok(())
            };
            write("envelope.schema.json".into(), &patchbay_model::envelope_schema())?;
            for b in &bodies {
                let mut schema = b.schema.clone();
                schema["x-patchbay-topic"] = serde_json::json!(b.topic);
                write(format!("{}.v{}.schema.json", b.name, b.version), &schema)?;
            }
        }
    }
    Ok(())
}
