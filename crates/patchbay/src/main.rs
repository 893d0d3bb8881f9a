//! The `patchbay` binary: command-line glue only.
mod bench;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}
#[derive(clap::Subcommand)]
enum Cmd {
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}
#[derive(clap::Subcommand)]
enum BenchWhat {
    Bus(bench::BusBench),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Cmd::Bench { what: BenchWhat::Bus(o) } => rt.block_on(bench::run(o)),
    }
}
