//! `patchbay-bench ingest`: `import` into a scratch store (mails/s, peak RSS, consistency, CPU
//! per thread), and with `--stages` the steps no design can skip, each timed alone, and the
//! rate they bound on this machine's cores.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use patchbay::ingest::{ImportArgs, import_into};
use patchbay_ingest::{Incoming, Ingest, Project, Rules, Settings};
use patchbay_store::EmbeddedBus;

/// Options of `patchbay-bench ingest`.
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
    /// raw mail), each alone on one thread, and the rate they bound on this machine's cores;
    /// and, beside them, sealing and storing the series' events the import published.
    #[arg(long)]
    stages: bool,
}

/// `patchbay-bench ingest`: import + parse + assembly into a fresh embedded store.
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
    let cpu_before = cpu_seconds("/proc/self");
    let summary = import_into(&ingest, &args).await.map_err(|e| anyhow::anyhow!("{:#}", e.error()))?;
    let import_cpu = cpu_seconds("/proc/self") - cpu_before;
    let rss = peak_rss_kib();
    let threads = thread_cpu_seconds();
    let mut stages = if opts.stages { Some(stages(&opts.path, &tmp)?) } else { None };
    if let Some(s) = stages.as_mut() {
        // However well the import's work were spread over the cores, its CPU time caps its share
        // of the bound at the bound's CPU time over the import's.
        let bound_cpu = s["alone_seconds"].as_f64().unwrap_or(0.0);
        s["best_share_at_the_import_cpu"] = serde_json::json!(bound_cpu / import_cpu.max(1e-9));
        // What the import publishes beyond the bound's one small message per mail (the series'
        // events, `complete` carrying the series' mbox), sealed and stored alone the same way.
        let events = events_stage(&tmp, summary.read.max(1) as f64)?;
        let events_cpu = events["cpu_seconds"].as_f64().unwrap_or(0.0);
        s["events"] = events;
        s["share_of_the_bound_with_events_added"] = serde_json::json!(bound_cpu / (bound_cpu + events_cpu).max(1e-9));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "stages": stages,
            "thread_cpu_seconds": threads,
            "import_cpu_seconds": import_cpu,
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

    let mut conn = durable_db(
        &scratch.join("stages.sqlite"),
        "CREATE TABLE raw (id INTEGER PRIMARY KEY, content_hash BLOB NOT NULL UNIQUE, raw BLOB NOT NULL)",
    )?;
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
        // Wall time of the steps, each alone on one thread: their CPU, plus the store's fsyncs.
        "alone_seconds": total.as_secs_f64(),
        "bound_all_cores_mails_per_second": n / (total.as_secs_f64() / cores),
        "bound_one_writer_mails_per_second": n / store.as_secs_f64(),
    }))
}

/// Seals again and stores, alone on one thread, every message the import published other than
/// `mail.message.received` (which the bound counts already): batches of 512, WAL,
/// synchronous=FULL, checkpointed, as the bound stores the raw mail.
fn events_stage(scratch: &std::path::Path, mails: f64) -> anyhow::Result<serde_json::Value> {
    let store = rusqlite::Connection::open(scratch.join(patchbay_store::DB_FILE))?;
    let mut outgoing = Vec::new();
    let mut bytes = 0usize;
    {
        let mut stmt = store.prepare("SELECT wire FROM bus_messages WHERE topic NOT LIKE '%.mail.message.received' ORDER BY pos")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let wire: Vec<u8> = row.get(0)?;
            bytes += wire.len();
            let e = patchbay_model::Envelope::from_wire(&wire)?;
            outgoing.push(patchbay_bus::Outgoing { sender: e.sender, topic: e.topic, schema: e.schema, body: e.body });
        }
    }
    let n = outgoing.len();
    let sealer = patchbay_bus::Sealer::new(Some(std::sync::Arc::new(patchbay_bus::SigningKey::generate("bench")?)));
    let mut conn = durable_db(&scratch.join("events.sqlite"), "CREATE TABLE events (id INTEGER PRIMARY KEY, wire BLOB NOT NULL)")?;
    let (t, cpu) = (Instant::now(), cpu_seconds("/proc/thread-self"));
    let mut seq = 0u64;
    let mut it = outgoing.into_iter().peekable();
    while it.peek().is_some() {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO events (wire) VALUES (?1)")?;
            for out in it.by_ref().take(512) {
                seq += 1;
                let (_, wire) = sealer.seal_to_wire(out, seq);
                insert.execute([&wire])?;
            }
        }
        tx.commit()?;
    }
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let (took, cpu) = (t.elapsed(), cpu_seconds("/proc/thread-self") - cpu);
    Ok(serde_json::json!({
        "messages": n,
        "wire_bytes": bytes,
        "seconds": took.as_secs_f64(),
        "cpu_seconds": cpu,
        "cpu_us_per_mail": cpu * 1e6 / mails,
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
        *by_name.entry(stat[open + 1..close].to_string()).or_insert(0.0) += crate::bus::stat_cpu_seconds(&stat);
    }
    by_name
}

/// User and system CPU time so far (10 ms ticks) of `/proc/thread-self` (the calling thread)
/// or `/proc/self` (the whole process, threads that ended included).
fn cpu_seconds(of: &str) -> f64 {
    std::fs::read_to_string(format!("{of}/stat")).map(|stat| crate::bus::stat_cpu_seconds(&stat)).unwrap_or(0.0)
}

/// A scratch database in `path` that commits as the store does (WAL, synchronous=FULL), with
/// `table` created.
fn durable_db(path: &std::path::Path, table: &str) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute(table, [])?;
    Ok(conn)
}

/// Peak resident set size of this process (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
