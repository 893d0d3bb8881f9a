//! `patchbay inject` (one mail on stdin, for MTA pipes), `patchbay import`
//! (mbox, maildir, public-inbox) and `patchbay bench ingest`.
//!
//! Both write the embedded store directly, whether or not `serve` runs:
//! SQLite's write lock serializes them with `serve` and with each other, and
//! every mail is stored and threaded inside one such transaction. `inject`
//! exits 0 only once the mail is durable, and 75 (EX_TEMPFAIL) when it could
//! not be stored, so the MTA keeps it queued.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use patchbay_config::Config;
use patchbay_ingest::archive::{self, Source};
use patchbay_ingest::{Incoming, Ingest, Outcome, Project, Rules, Settings};
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
    paths: Vec<PathBuf>,
    /// A list id to record for every mail beyond its own List-Id header.
    #[arg(long = "list-id")]
    list_ids: Vec<String>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No progress bar, even on a terminal.
    #[arg(long, short)]
    quiet: bool,
    /// public-inbox: read every commit again instead of only those after the recorded mark.
    #[arg(long)]
    full: bool,
    /// Test (and report) the series this import completes whatever their age; without it, series
    /// older than `dispatch.max_age_secs` are stored and shown but not tested.
    #[arg(long)]
    test: bool,
    /// Mails per transaction.
    #[arg(long, default_value_t = 512, hide = true)]
    batch: usize,
}

/// Builds the ingest service on the store in the data directory.
pub fn service(config: &Config) -> Result<Ingest, Exit> {
    // A named key that is wrong is a config error; failing to create the default one means the
    // data directory cannot be written, which may pass: try again later.
    let sealer =
        crate::keys::sealer(config, true).map_err(|e| if config.signing.key.is_some() { Exit::config(e) } else { Exit::tempfail(e) })?;
    let bus = EmbeddedBus::open(&config.data_dir, sealer)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))
        .map_err(Exit::tempfail)?;
    Ok(service_on(config, bus))
}

/// Builds the ingest service on a store that is already open (`serve` shares one).
pub fn service_on(config: &Config, bus: EmbeddedBus) -> Ingest {
    Ingest::new(bus, config.bus.root.clone(), &config.instance, settings(config))
}

/// Ingest settings from the config.
pub fn settings(config: &Config) -> Settings {
    Settings {
        rules: Rules { marker_window_secs: config.ingest.marker_window_secs },
        projects: config
            .projects
            .iter()
            .map(|p| Project { name: p.name.clone(), list_ids: p.list_ids.clone(), tag: p.tag.clone() })
            .collect(),
    }
}

/// `patchbay inject`.
pub async fn inject(config: &Config, args: &InjectArgs) -> Result<(), Exit> {
    let limit = config.ingest.max_mail_bytes;
    let raw = archive::read_limited(std::io::stdin().lock(), limit)
        .context("reading the mail from stdin")
        .map_err(Exit::tempfail)?
        .ok_or_else(|| Exit::data(anyhow::anyhow!("the mail is larger than ingest.max_mail_bytes ({limit} bytes)")))?;
    if raw.is_empty() {
        return Err(Exit::data(anyhow::anyhow!("no mail on stdin")));
    }
    let ingest = service(config)?;
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

/// Whether every numbered patch sits in exactly one series at its slot.
#[derive(Debug, Default, Serialize)]
pub struct Consistency {
    /// Patch and cover mails with an `n/N` subject.
    pub numbered: u64,
    /// Of those, placed in a series at slot n of a series of N.
    pub placed_at_their_slot: u64,
    /// Numbered mails in no series, with the reason (strays, conflicting ids).
    pub unplaced: u64,
    /// Placed somewhere other than their slot or total (must be 0).
    pub misplaced: u64,
    /// Series with a missing slot but state `complete` (must be 0).
    pub complete_with_gaps: u64,
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
pub async fn import(config: &Config, args: &ImportArgs) -> Result<(), Exit> {
    let ingest = service(config)?;
    let summary = import_into(&ingest, args).await?;
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

/// Imports every path into `ingest` and reports.
pub async fn import_into(ingest: &Ingest, args: &ImportArgs) -> Result<Summary, Exit> {
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
    report(ingest, &mut summary).await.map_err(Exit::tempfail)?;
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
        lists.push(crate::ci::TEST_ANYWAY_LIST.to_string());
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
    let (series, consistency) = ingest
        .bus()
        .db()
        .read(|c| {
            let mut series = std::collections::BTreeMap::new();
            let mut stmt = c.prepare("SELECT state, count(*) FROM series GROUP BY state")?;
            for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (k, v) = row?;
                series.insert(k, v as u64);
            }
            let mut cons = Consistency::default();
            let mut stmt = c.prepare(
                "SELECT m.subject, m.kind, m.conflicts_with IS NOT NULL, sm.slot, s.total
                 FROM mails m LEFT JOIN series_mails sm ON sm.mail_id = m.id LEFT JOIN series s ON s.id = sm.series_id
                 WHERE m.kind IN ('patch', 'cover')",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, Option<u32>>(3)?,
                    r.get::<_, Option<u32>>(4)?,
                ))
            })?;
            for row in rows {
                let (subject, kind, _conflict, slot, total) = row?;
                let s = patchbay_mail::subject::parse(&subject);
                let Some((n, t)) = s.counter else { continue };
                if kind == "patch" && n == 0 {
                    continue;
                }
                cons.numbered += 1;
                match (slot, total) {
                    (Some(slot), Some(total)) if slot == n && total == t => cons.placed_at_their_slot += 1,
                    (Some(_), _) => cons.misplaced += 1,
                    (None, _) => cons.unplaced += 1,
                }
            }
            cons.complete_with_gaps = c.query_row::<i64, _, _>(
                "SELECT count(*) FROM series s WHERE s.state = 'complete'
                 AND (SELECT count(*) FROM series_mails sm WHERE sm.series_id = s.id AND sm.slot BETWEEN 1 AND s.total) < s.total",
                [],
                |r| r.get(0),
            )? as u64;
            Ok((series, cons))
        })
        .await?;
    summary.series = series;
    summary.consistency = consistency;
    Ok(())
}

/// Options of `patchbay bench ingest`.
#[derive(clap::Args, Clone)]
pub struct IngestBench {
    /// The mbox (or maildir, or public-inbox archive) to import.
    path: PathBuf,
    /// Scratch data directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    scratch: Option<PathBuf>,
    /// Publish unsigned events, to see what signing costs.
    #[arg(long)]
    unsigned: bool,
    /// Also time the steps no design can skip (read, parse, one signature per mail, storing the
    /// raw mail), each alone on one thread, and the rate they bound on this machine's cores.
    #[arg(long)]
    stages: bool,
}

/// `patchbay bench ingest`: import + parse + assembly into a fresh embedded store.
pub async fn bench(opts: IngestBench) -> anyhow::Result<()> {
    let tmp = tempfile_dir(opts.scratch.clone())?;
    let key = if opts.unsigned { None } else { Some(std::sync::Arc::new(patchbay_bus::SigningKey::generate("bench")?)) };
    let bus = EmbeddedBus::open(&tmp, patchbay_bus::Sealer::new(key))?;
    let root = patchbay_model::TopicRoot::new("patchbay", "bench")?;
    let settings = Settings {
        rules: Rules::default(),
        projects: vec![Project { name: "bench".into(), list_ids: vec!["linux-hwmon.vger.kernel.org".into()], tag: None }],
    };
    let ingest = Ingest::new(bus, root, "bench", settings);
    let args =
        ImportArgs { paths: vec![opts.path.clone()], list_ids: vec![], json: true, quiet: true, full: false, test: false, batch: 512 };
    let summary = import_into(&ingest, &args).await.map_err(|e| anyhow::anyhow!("{:#}", e.error))?;
    let rss = peak_rss_kib();
    let threads = thread_cpu_seconds();
    let stages = if opts.stages { Some(stages(&opts.path, &tmp)?) } else { None };
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "stages": stages,
            "thread_cpu_seconds": threads,
            "file": opts.path,
            "mails": summary.read,
            "seconds": summary.seconds,
            "mails_per_second": summary.rate,
            "signed": !opts.unsigned,
            "peak_rss_mib": rss.map(|k| k as f64 / 1024.0),
            "series": summary.series,
            "consistency": summary.consistency,
        }))?
    );
    if opts.scratch.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// The steps every mail must go through whatever the design, each timed alone on one thread:
/// reading and splitting the mbox, parsing, sealing one signed `mail.message.received`, and
/// storing the raw mail (batches of 512, WAL, synchronous=FULL, checkpointed). Their sum over
/// the cores bounds the rate of any import here; storing (one SQLite writer) bounds it alone too.
fn stages(path: &std::path::Path, scratch: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let t = Instant::now();
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    let raws = patchbay_mail::MboxReader::new(file).map(|m| m.map(|m| m.raw)).collect::<Result<Vec<_>, _>>()?;
    let read = t.elapsed();
    let n = raws.len().max(1) as f64;

    let t = Instant::now();
    let mails: Vec<Incoming> = raws.into_iter().map(|raw| patchbay_ingest::incoming(raw, vec![], 0)).collect();
    let parse = t.elapsed();

    let sealer = patchbay_bus::Sealer::new(Some(std::sync::Arc::new(patchbay_bus::SigningKey::generate("bench")?)));
    let topic = patchbay_model::TopicRoot::new("patchbay", "bench")?.topic("mail.message.received")?;
    let t = Instant::now();
    for (i, m) in mails.iter().enumerate() {
        let body = serde_json::json!({
            "mail": i, "message_id": m.parsed.message_id, "subject": m.parsed.subject_line, "from": m.parsed.from_email,
            "lists": m.parsed.list_ids, "kind": m.parsed.kind.as_str(), "problems": [], "series": null,
        });
        let out = patchbay_bus::Outgoing {
            sender: patchbay_model::Sender::new("ingest", "bench"),
            topic: topic.clone(),
            schema: patchbay_model::SchemaRef { name: "patchbay.mail.received".into(), version: 1 },
            body,
        };
        std::hint::black_box(sealer.seal(out, i as u64 + 1).to_wire());
    }
    let sign = t.elapsed();

    let db = scratch.join("stages.sqlite");
    let mut conn = rusqlite::Connection::open(&db)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, content_hash BLOB NOT NULL UNIQUE, raw BLOB NOT NULL)", [])?;
    let t = Instant::now();
    for chunk in mails.chunks(512) {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT OR IGNORE INTO raw (content_hash, raw) VALUES (?1, ?2)")?;
            for m in chunk {
                insert.execute(rusqlite::params![&m.parsed.content_hash[..], &m.raw])?;
            }
        }
        tx.commit()?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let store = t.elapsed();

    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let per_mail = |d: Duration| d.as_secs_f64() * 1e6 / n;
    let total = read + parse + sign + store;
    Ok(serde_json::json!({
        "read_us_per_mail": per_mail(read),
        "parse_us_per_mail": per_mail(parse),
        "sign_us_per_mail": per_mail(sign),
        "store_raw_us_per_mail": per_mail(store),
        "cores": cores,
        "bound_all_cores_mails_per_second": n / (total.as_secs_f64() / cores),
        "bound_one_writer_mails_per_second": n / store.as_secs_f64(),
    }))
}

fn tempfile_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = given.unwrap_or_else(|| std::env::temp_dir().join(format!("patchbay-bench-ingest-{}", std::process::id())));
    if dir.exists() {
        anyhow::bail!("{} exists; give an empty scratch directory", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// CPU seconds (user + system) of this process's live threads by name: which one is the
/// bottleneck (the store's single writer, usually).
fn thread_cpu_seconds() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        *by_name.entry(stat[open + 1..close].to_string()).or_insert(0.0) += crate::bench::stat_cpu_seconds(&stat);
    }
    by_name
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
