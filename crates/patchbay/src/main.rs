//! The `patchbay` binary: the command line over the `patchbay` library. It
//! parses arguments and calls the library; `main` alone turns errors into exit
//! codes.

use patchbay::{
    Exit, admin, ci, client, demo, history, ingest, init_logging, init_logging_quiet, keys, move_store, run as run_service, runtime, serve,
};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use patchbay_config::Config;

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
    /// Run one service in a process of its own (ingest, dispatcher, runner, aggregator, reporter, logs, history, relay, merged, web).
    Run(run_service::RunArgs),
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
    DeadLetters(admin::DeadLettersArgs),
    /// Move the data directory's embedded store into the empty PostgreSQL of store.url (stop serve first).
    MoveStore(move_store::MoveStoreArgs),
    /// Check the config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the JSON Schemas of the envelope and of every message body.
    Schema(SchemaArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) for `source` or a completions directory.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page patchbay(1), or write it and one page per command with --out.
    Man {
        /// Write `patchbay.1` and `patchbay-<command>.1` into this directory (such as ~/.local/share/man/man1).
        #[arg(long)]
        out: Option<PathBuf>,
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

#[derive(clap::Args)]
struct SchemaArgs {
    /// Write one `<name>.v<version>.schema.json` file per schema into this directory instead.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("patchbay: {:#}", exit.error());
            ExitCode::from(exit.code())
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Exit> {
    patchbay::load_config(cli.config.as_deref(), cli.data_dir.as_deref())
}

fn run(cli: Cli) -> Result<(), Exit> {
    match &cli.command {
        Command::Schema(args) => schema(args).map_err(Exit::from),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "patchbay", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => man(out.as_deref()).map_err(Exit::from),
        Command::Demo(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(demo::demo(args)).map_err(Exit::from)
        }
        Command::DeadLetters(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(admin::dead_letters(&config, args))
        }
        Command::MoveStore(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(move_store::move_store(&config, args))
        }
        Command::Waive(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            runtime()?.block_on(ci::waive(&config, args))
        }
        Command::Runner(args) => {
            let config = load_config(&cli)?;
            init_logging(&config);
            runtime()?.block_on(ci::runner(config, args.jobs, patchbay::tasks::shutdown_signal())).map_err(Exit::from)
        }
        Command::Inject(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            let queues = patchbay::services::queues(&config).map_err(Exit::config)?;
            runtime()?.block_on(ingest::inject(&config, args, queues))
        }
        Command::Import(args) => {
            let config = load_config(&cli)?;
            init_logging_quiet(&config);
            let queues = patchbay::services::queues(&config).map_err(Exit::config)?;
            runtime()?.block_on(ingest::import(&config, args, queues))
        }
        Command::Config { action: ConfigAction::Check { json } } => {
            admin::config_check(cli.config.as_deref(), cli.data_dir.as_deref(), *json)
        }
        Command::Keygen(args) => {
            let config = load_config(&cli)?;
            keys::keygen(&config, args).map_err(Exit::from)
        }
        Command::Serve(args) => {
            let config = load_config(&cli)?;
            init_logging(&config);
            runtime()?.block_on(serve::serve(config, args, patchbay::tasks::shutdown_signal())).map_err(Exit::from)
        }
        Command::Run(args) => {
            let config = load_config(&cli)?;
            init_logging(&config);
            runtime()?.block_on(run_service::run(config, args, patchbay::tasks::shutdown_signal())).map_err(Exit::from)
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

/// The manual pages, rendered by clap_mangen from the same definitions as `--help`: to stdout
/// (patchbay(1) alone), or into `out` with one page per command, named as `man` finds them.
fn man(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let command = <Cli as clap::CommandFactory>::command();
    let Some(dir) = out else {
        clap_mangen::Man::new(command).render(&mut std::io::stdout())?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: String, page: clap::Command| -> anyhow::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut bytes = Vec::new();
        clap_mangen::Man::new(page).title(name.to_uppercase()).render(&mut bytes)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
        Ok(())
    };
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("patchbay-{}", sub.get_name());
        // A one-shot command: leaking the few names clap wants as `&'static str` costs nothing.
        let page = sub.clone().name(&*Box::leak(name.clone().into_boxed_str()));
        write(name, page)?;
    }
    write("patchbay".into(), command)
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
