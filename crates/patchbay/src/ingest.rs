//! `patchbay inject` (one mail on stdin, for MTA pipes), `patchbay import`
//! (mbox, maildir, public-inbox); its benchmark is `patchbay-bench ingest`.
//!
//! Both write the embedded store directly, whether or not `serve` runs:
//! SQLite's write lock serializes them with `serve` and with each other, and
//! every mail is stored and threaded inside one such transaction. `inject`
//! exits 0 only once the mail is durable, and 75 (EX_TEMPFAIL) when it could
//! not be stored, so the MTA keeps it queued.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use patchbay_config::Config;
use patchbay_ingest::archive::{self, Source};
use patchbay_ingest::{Consistency, Incoming, Ingest, Outcome, Project, Settings, TEST_ANYWAY_LIST};
use patchbay_store::EmbeddedBus;
use serde::Serialize;

use crate::Exit;

/// Options of `patchbay inject`.
#[derive(clap::Args)]
pub struct InjectArgs {
    /// A list id to record for the mail beyond its own List-Id header (for a pipe per list).
    #[arg(long = "list-id")]
    list_ids: Vec<String>,
    /// Print what became of the mail as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `patchbay import`.
#[derive(clap::Args, Clone)]
pub struct ImportArgs {
    /// mbox files, maildirs, or public-inbox archives (a bare epoch or a directory with git/N.git).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// A list id to record for every mail beyond its own List-Id header.
    #[arg(long = "list-id")]
    pub list_ids: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress bar, even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,
    /// public-inbox: read every commit again instead of only those after the recorded mark.
    #[arg(long)]
    pub full: bool,
    /// Test (and report) the series this import completes whatever their age; without it, series
    /// older than `dispatch.max_age_secs` are stored and shown but not tested.
    #[arg(long)]
    pub test: bool,
    /// Mails per transaction.
    #[arg(long, default_value_t = 512, hide = true)]
    pub batch: usize,
}

/// Builds the ingest service on the store the config names: the shared PostgreSQL of
/// `store.url` when set (`inject` and `import` from any host), else the data directory's.
/// PostgreSQL unreachable is a temporary failure (an MTA retries the delivery).
/// On SQLite, `queues` (the services', `services::queues`) are declared first where missing:
/// before `serve` first ran on this data directory they do not exist, and what the mail
/// announces would be routed nowhere.
pub async fn service_for(config: &Config, queues: Vec<patchbay_bus::QueueSpec>) -> Result<Ingest, Exit> {
    let Some(url) = config.store.url.as_deref() else {
        let bus = open_store(config)?;
        bus.declare_missing(queues).await.context("declaring the services' queues").map_err(Exit::tempfail)?;
        return Ok(service_on(config, bus));
    };
    let sealer =
        crate::keys::sealer(config, true).map_err(|e| if config.signing.key.is_some() { Exit::config(e) } else { Exit::tempfail(e) })?;
    match patchbay_store_pg::PgStore::connect_with(url, config.store.max_connections, config.store.ca.as_deref(), sealer).await {
        Ok(store) => Ok(on_postgres(config, store)),
        Err(e) if e.is_transient() => Err(Exit::tempfail(anyhow::anyhow!("{}: store.url: {e}", config.source_name()))),
        Err(e) => Err(Exit::config(anyhow::anyhow!("{}: store.url: {e}", config.source_name()))),
    }
}

/// Opens the embedded store in the data directory, with this instance's signing key.
pub fn open_store(config: &Config) -> Result<EmbeddedBus, Exit> {
    // A named key that is wrong is a config error; failing to create the default one means the
    // data directory cannot be written, which may pass: try again later.
    let sealer =
        crate::keys::sealer(config, true).map_err(|e| if config.signing.key.is_some() { Exit::config(e) } else { Exit::tempfail(e) })?;
    EmbeddedBus::open(&config.data_dir, sealer)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))
        .map_err(Exit::tempfail)
}

/// Builds the ingest service on a store that is already open (`serve` shares one).
pub fn service_on(config: &Config, bus: EmbeddedBus) -> Ingest {
    Ingest::new(bus, config.bus.root.clone(), &config.instance, settings(config))
}

/// Builds the ingest service on the shared PostgreSQL store (`store.url`); what it commits
/// waits in the store's outbox for a relay (every `patchbay run` process relays).
pub fn on_postgres(config: &Config, store: patchbay_store_pg::PgStore) -> Ingest {
    Ingest::on_postgres(store, config.bus.root.clone(), &config.instance, settings(config))
}

/// Ingest settings from the config.
pub fn settings(config: &Config) -> Settings {
    Settings {
        rules: config.ingest.rules(),
        projects: config
            .projects
            .iter()
            .map(|p| Project { name: p.name.clone(), list_ids: p.list_ids.clone(), tag: p.tag.clone() })
            .collect(),
    }
}

/// `patchbay inject`.
pub async fn inject(config: &Config, args: &InjectArgs, queues: Vec<patchbay_bus::QueueSpec>) -> Result<(), Exit> {
    let limit = config.ingest.max_mail_bytes;
    let raw = archive::read_limited(std::io::stdin().lock(), limit)
        .context("reading the mail from stdin")
        .map_err(Exit::tempfail)?
        .ok_or_else(|| Exit::data(anyhow::anyhow!("the mail is larger than ingest.max_mail_bytes ({limit} bytes)")))?;
    if raw.is_empty() {
        return Err(Exit::data(anyhow::anyhow!("no mail on stdin")));
    }
    let ingest = service_for(config, queues).await?;
    let lists = args.list_ids.clone();
    let mail = tokio::task::spawn_blocking(move || patchbay_ingest::incoming(raw, lists, patchbay_ingest::now()))
        .await
        .context("parsing")
        .map_err(Exit::tempfail)?;
    let message_id = mail.parsed.message_id.clone();
    let outcome = ingest.accept(vec![mail]).await.context("storing the mail").map_err(Exit::tempfail)?;
    if args.json {
        let o = serde_json::json!({ "message_id": message_id, "result": outcome.first() });
        println!("{o}");
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Mails read from the sources.
    pub read: u64,
    /// Newly stored.
    pub stored: u64,
    /// Already stored before (same content).
    pub duplicates: u64,
    /// Stored and marked as malformed.
    pub malformed: u64,
    /// Stored with a Message-ID that another, different mail had first.
    pub conflicts: u64,
    /// public-inbox commits without a mail (deletions), skipped.
    pub skipped: u64,
    /// Wall time.
    pub seconds: f64,
    /// Mails per second.
    pub rate: f64,
    /// Series by state after the import (whole store).
    pub series: std::collections::BTreeMap<String, u64>,
    /// Consistency of the store after the import.
    pub consistency: Consistency,
}

fn progress_line(done: u64, total: Option<u64>, mails: u64, started: Instant, unit_bytes: bool) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = mails as f64 / secs;
    match total.filter(|&t| t > 0) {
        Some(t) => {
            let frac = (done as f64 / t as f64).min(1.0);
            let width = 30;
            let filled = (frac * width as f64) as usize;
            let eta = if frac > 0.0 { secs / frac - secs } else { 0.0 };
            let what =
                if unit_bytes { format!("{:.0}/{:.0} MiB", done as f64 / 1048576.0, t as f64 / 1048576.0) } else { format!("{done}/{t}") };
            format!(
                "\r[{}{}] {:>3.0}% {mails} mails {rate:.0}/s {what} ETA {}:{:02} ",
                "#".repeat(filled),
                "-".repeat(width - filled),
                frac * 100.0,
                eta as u64 / 60,
                eta as u64 % 60
            )
        }
        None => format!("\r{mails} mails {rate:.0}/s "),
    }
}

/// `patchbay import`.
pub async fn import(config: &Config, args: &ImportArgs, queues: Vec<patchbay_bus::QueueSpec>) -> Result<(), Exit> {
    let ingest = service_for(config, queues).await?;
    let summary = import_with_deadline(&ingest, args, config.ingest.incomplete_after_secs).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary).map_err(|e| Exit::from(anyhow::Error::from(e)))?);
    } else {
        println!(
            "imported {} mails in {:.1} s ({:.0}/s): {} stored ({} malformed, {} Message-ID conflicts), {} already stored, {} deletions skipped",
            summary.read,
            summary.seconds,
            summary.rate,
            summary.stored,
            summary.malformed,
            summary.conflicts,
            summary.duplicates,
            summary.skipped
        );
        let states: Vec<String> = summary.series.iter().map(|(k, v)| format!("{v} {k}")).collect();
        println!("series: {}", states.join(", "));
        let c = &summary.consistency;
        println!(
            "consistency: {} of {} numbered mails at their slot, {} unplaced (flagged), {} misplaced, {} complete series with gaps",
            c.placed_at_their_slot, c.numbered, c.unplaced, c.misplaced, c.complete_with_gaps
        );
    }
    Ok(())
}

/// Imports every path into `ingest` and reports, with the default deadline (24 h) for series
/// still missing patches.
pub async fn import_into(ingest: &Ingest, args: &ImportArgs) -> Result<Summary, Exit> {
    import_with_deadline(ingest, args, 86_400).await
}

/// Imports every path into `ingest`, marks series still missing patches `incomplete_after` seconds
/// after their first mail's Date (the archive's clock: its newest Date, not the wall clock), and
/// reports.
async fn import_with_deadline(ingest: &Ingest, args: &ImportArgs, incomplete_after: i64) -> Result<Summary, Exit> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let show = !args.quiet && !args.json && std::io::stderr().is_terminal();
    for path in &args.paths {
        let kind = archive::detect(path).map_err(Exit::data)?;
        let source: Box<dyn Source> = match kind {
            archive::Kind::Mbox => archive::mbox(path).map_err(Exit::data)?,
            archive::Kind::Maildir => archive::maildir(path).map_err(Exit::data)?,
            archive::Kind::PublicInbox => {
                let mut epochs = Vec::new();
                for dir in archive::epochs(path).map_err(Exit::data)? {
                    let mark = if args.full { None } else { ingest.mark(&dir.display().to_string()).await.map_err(Exit::tempfail)? };
                    epochs.push((dir, mark));
                }
                archive::public_inbox(epochs).map_err(Exit::data)?
            }
        };
        run_source(ingest, source, kind == archive::Kind::Mbox, args, &mut summary, show).await?;
    }
    if show {
        eprintln!();
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.rate = summary.read as f64 / summary.seconds.max(0.001);
    ingest.sweep_by_mail_dates(patchbay_ingest::now(), incomplete_after).await.map_err(Exit::tempfail)?;
    report(ingest, &mut summary).await.map_err(Exit::tempfail)?;
    Ok(summary)
}

/// Imports what is new in the public-inbox archive at `path` (after its epochs' commit marks),
/// each mail recorded as come through `list_id`: the follower of a `[[source]]`. No progress
/// bar, deadline sweep or census (`serve`'s own sweep runs on the wall clock).
pub async fn follow_into(ingest: &Ingest, path: &Path, list_id: &str) -> Result<Summary, Exit> {
    if archive::detect(path).map_err(Exit::data)? != archive::Kind::PublicInbox {
        return Err(Exit::data(anyhow::anyhow!("{} is not a public-inbox archive (a bare git epoch, or git/N.git)", path.display())));
    }
    let args = ImportArgs {
        paths: vec![path.to_path_buf()],
        list_ids: vec![list_id.to_string()],
        json: false,
        quiet: true,
        full: false,
        test: false,
        batch: 512,
    };
    let mut epochs = Vec::new();
    for dir in archive::epochs(path).map_err(Exit::data)? {
        let mark = ingest.mark(&dir.display().to_string()).await.map_err(Exit::tempfail)?;
        epochs.push((dir, mark));
    }
    let started = Instant::now();
    let mut summary = Summary::default();
    run_source(ingest, archive::public_inbox(epochs).map_err(Exit::data)?, false, &args, &mut summary, false).await?;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// One batch read from a source.
struct Batch {
    raws: Vec<Vec<u8>>,
    mark: Option<(String, String)>,
    skipped: u64,
}

/// Reads batches on a thread of its own, so reading, parsing (all cores) and committing (the
/// writer thread) overlap; at most two batches wait in each stage, so memory stays bounded.
async fn run_source(
    ingest: &Ingest,
    mut source: Box<dyn Source>,
    unit_bytes: bool,
    args: &ImportArgs,
    summary: &mut Summary,
    show: bool,
) -> Result<(), Exit> {
    let started = Instant::now();
    let mut last_shown = Instant::now() - Duration::from_secs(1);
    let progress = std::sync::Arc::new(std::sync::Mutex::new(source.progress()));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Batch, patchbay_ingest::IngestError>>(2);
    let batch_size = args.batch;
    let shared = progress.clone();
    let reader = std::thread::spawn(move || {
        loop {
            let mut batch = Batch { raws: Vec::with_capacity(batch_size), mark: None, skipped: 0 };
            let mut bytes = 0;
            while batch.raws.len() < batch_size && bytes < 64 << 20 {
                match source.next_item() {
                    None => break,
                    Some(Err(e)) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                    Some(Ok(item)) => {
                        if item.mark.is_some() {
                            batch.mark = item.mark;
                        }
                        match item.raw {
                            Some(raw) => {
                                bytes += raw.len();
                                batch.raws.push(raw);
                            }
                            None => batch.skipped += 1,
                        }
                    }
                }
            }
            *shared.lock().unwrap() = source.progress();
            let last = batch.raws.is_empty() && batch.mark.is_none();
            if last || tx.blocking_send(Ok(batch)).is_err() {
                return;
            }
        }
    });
    let mut lists = args.list_ids.clone();
    if args.test {
        // The wish travels with the mails: the dispatcher reads it from the store.
        lists.push(TEST_ANYWAY_LIST.to_string());
    }
    let mut parsing = std::collections::VecDeque::new();
    let mut committing = std::collections::VecDeque::new();
    let mut input_done = false;
    loop {
        while !input_done && parsing.len() < 2 {
            match rx.recv().await {
                None => input_done = true,
                Some(Err(e)) => return Err(Exit::data(e)),
                Some(Ok(batch)) => {
                    summary.read += batch.raws.len() as u64;
                    summary.skipped += batch.skipped;
                    let (lists, now) = (lists.clone(), patchbay_ingest::now());
                    let Batch { raws, mark, .. } = batch;
                    parsing.push_back(tokio::task::spawn_blocking(move || (parse_parallel(raws, &lists, now), mark)));
                }
            }
        }
        let Some(next) = parsing.pop_front() else { break };
        let (mails, mark) = next.await.map_err(|e| Exit::from(anyhow::Error::from(e)))?;
        committing.push_back(ingest.submit(mails, mark).map_err(Exit::tempfail)?);
        if committing.len() > 2 {
            count(summary, committing.pop_front().expect("non-empty").await.map_err(Exit::tempfail)?);
        }
        if show && last_shown.elapsed() > Duration::from_millis(200) {
            let p = *progress.lock().unwrap();
            eprint!("{}", progress_line(p.done, p.total, summary.read, started, unit_bytes));
            let _ = std::io::stderr().flush();
            last_shown = Instant::now();
        }
    }
    while let Some(f) = committing.pop_front() {
        count(summary, f.await.map_err(Exit::tempfail)?);
    }
    if reader.join().is_err() {
        return Err(Exit::from(anyhow::anyhow!("reading the source failed unexpectedly (the reader thread panicked)")));
    }
    if show {
        let p = *progress.lock().unwrap();
        eprint!("{}", progress_line(p.total.unwrap_or(p.done), p.total, summary.read, started, unit_bytes));
    }
    Ok(())
}

fn count(summary: &mut Summary, outcomes: Vec<Outcome>) {
    for o in outcomes {
        match o {
            Outcome::Stored { malformed, conflict, .. } => {
                summary.stored += 1;
                summary.malformed += malformed as u64;
                summary.conflicts += conflict as u64;
            }
            Outcome::Duplicate { .. } => summary.duplicates += 1,
        }
    }
}

/// Parses on two threads (this machine's cores); order is kept.
fn parse_parallel(raws: Vec<Vec<u8>>, lists: &[String], now: i64) -> Vec<Incoming> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let chunk = raws.len().div_ceil(threads).max(1);
    let mut chunks: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut it = raws.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(chunk).collect());
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(|raw| patchbay_ingest::incoming(raw, lists.to_vec(), now)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("parsing never panics")).collect()
    })
}

async fn report(ingest: &Ingest, summary: &mut Summary) -> Result<(), patchbay_store::StoreError> {
    let (series, consistency) = ingest.series_store().census().await?;
    summary.series = series;
    summary.consistency = consistency;
    Ok(())
}
