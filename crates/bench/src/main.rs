//! `patchbay-bench`: the benchmarks, apart from the production binary. Each
//! prints figures measured side by side in one run (our bus against raw lapin,
//! an import against the bound of its unskippable steps, the runner against
//! the same commands by hand) with the machine's load average where it
//! matters. `scripts/test` smoke-runs the small versions; the figures live in
//! the issue notes, never in assertions.
//!
//! - `bus`: publish + consume + ack throughput and publish-to-delivery latency
//!   on a scratch embedded bus (signed by default, `--verify`, `--unsigned`).
//! - `amqp`: raw lapin publishing the very messages our bus puts on the wire
//!   against our RabbitMQ bus (alternating rounds, medians, client CPU and
//!   context switches per message), bare 1 KiB bodies once (the envelope's
//!   cost), and the embedded bus on the same workload.
//! - `ingest`: `import` into a scratch store: mails/s, peak RSS, consistency,
//!   CPU per thread; `--stages` times the steps no design skips (read, parse,
//!   one signature, storing the raw mail) and the rate they bound here.
//! - `latency`: `serve::start` in-process with no runner and an SMTP sink: last
//!   mail over LMTP → jobs delivered, last result → report received (p50, p99,
//!   max).
//! - `history`: a million signed messages over a year, indexed, then every
//!   filter alone, negated and combined (p50, p99, max).
//! - `pipeline`: series through the whole pipeline as processes of the real binary, with a
//!   no-op test: `serve`, one `run` process of each service on RabbitMQ and PostgreSQL, and
//!   two of each; series/s and last mail → report (p50, p99, max) side by side.
//! - `runner`: the runner's own overhead on a 10-patch series against the same
//!   git and bubblewrap commands run by hand.
//!
//! Nothing depends on this crate and it uses no HTTP (tidy).

mod amqp;
mod bus;
mod history;
mod ingest;
mod latency;
mod pipeline;
mod runner;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// patchbay-bench: how fast patchbay's parts are, measured against their peers and bounds.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Durable publish + consume + ack throughput, and publish-to-delivery latency.
    Bus(bus::BusBench),
    /// The RabbitMQ bus against a raw lapin client, and against the embedded bus.
    Amqp(amqp::AmqpBench),
    /// Import + parse + series assembly into a fresh embedded store: mails/s and peak RSS.
    Ingest(ingest::IngestBench),
    /// The runner's overhead on a 10-patch series against the same commands run by hand.
    Runner(runner::RunnerBench),
    /// Every history filter against a million stored messages: p50/p99 per combination.
    History(history::HistoryBench),
    /// Reaction times over N series: last mail over LMTP -> jobs, last result -> report at SMTP.
    Latency(latency::LatencyBench),
    /// Series through the whole pipeline as processes: embedded, one of each service, two of each.
    Pipeline(pipeline::PipelineBench),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patchbay-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.what {
            What::Bus(opts) => bus::run(opts).await,
            What::Amqp(opts) => amqp::run(opts).await,
            What::Ingest(opts) => ingest::bench(opts).await,
            What::Runner(opts) => runner::run(opts).await,
            What::History(opts) => history::bench(opts).await,
            What::Latency(opts) => latency::run(opts).await,
            What::Pipeline(opts) => opts.run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("patchbay-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
