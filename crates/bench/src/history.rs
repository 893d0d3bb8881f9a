//! `patchbay-bench history`: a million signed messages over a year into a scratch store,
//! indexed, then every filter (alone, negated, combined) measured: p50/p99/max.

use patchbay_history::{Indexer, Query};
use patchbay_store::EmbeddedBus;
use std::time::Instant;

/// Options of `patchbay-bench history`.
#[derive(Clone, Debug, clap::Args)]
pub struct HistoryBench {
    /// Messages stored before querying.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Queries per filter combination.
    #[arg(long, default_value_t = 50)]
    queries: usize,
    /// Keep the scratch store here (reused when it already holds the messages) instead of a temporary one.
    #[arg(long)]
    scratch: Option<std::path::PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

const TOPICS: &[(&str, &str)] = &[
    ("mail.message.received", "ingest"),
    ("series.series.new", "ingest"),
    ("series.series.complete", "ingest"),
    ("ci.job.build.x86_64.queued", "dispatcher"),
    ("ci.test.started", "runner"),
    ("ci.test.log", "runner"),
    ("ci.test.finished", "runner"),
    ("ci.result.recorded", "aggregator"),
    ("ci.series.verdict", "aggregator"),
    ("report.email.sent", "reporter"),
];
const PROJECTS: &[&str] = &["qemu", "linux", "libguestfs", "dpdk", "buildroot"];
const WORDS: &[&str] = &["hwmon", "sensor", "driver", "regulator", "thermal", "pinctrl", "clock", "memory", "timeout", "warning"];

/// A small, seeded, repeatable generator: the same store and the same queries every run.
fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// How long the stored history spans: a year of a busy deployment.
const SPAN_MICROS: i64 = 365 * 86_400 * 1_000_000;

/// A realistic mix: mostly mail and CI traffic, series ids over a wide range, a few
/// words in each body for `contains`, sent over a year, signed, stored as recorded.
async fn fill(store: &EmbeddedBus, n: usize, key: &patchbay_bus::SigningKey) -> anyhow::Result<()> {
    let root = patchbay_model::TopicRoot::new("patchbay", "prod")?;
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let begin = patchbay_model::Timestamp::now().as_micros() - SPAN_MICROS;
    let mut seqs: std::collections::HashMap<(&str, &str), u64> = std::collections::HashMap::new();
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut done = 0;
    while done < n {
        let mut batch = Vec::new();
        for _ in 0..2000.min(n - done) {
            let (suffix, service) = TOPICS[(next() % TOPICS.len() as u64) as usize];
            let instance = if next().is_multiple_of(2) { "a" } else { "b" };
            let series = (next() % 50_000) as i64;
            let project = PROJECTS[(series % PROJECTS.len() as i64) as usize];
            let words: Vec<&str> = (0..3).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
            let seq = seqs.entry((service, instance)).or_insert(0);
            *seq += 1;
            let mut env = patchbay_model::Envelope {
                id: patchbay_model::Uuid::now_v7(),
                topic: root.topic(suffix)?,
                sent_at: patchbay_model::Timestamp::from_micros(begin + (SPAN_MICROS / n as i64) * (done + batch.len()) as i64),
                sender: patchbay_model::Sender::new(service, instance),
                seq: *seq,
                schema: patchbay_model::SchemaRef { name: "patchbay.json".into(), version: 1 },
                body: serde_json::json!({
                    "series": {"id": series, "project": project, "name": format!("{} {} series", words[0], words[1]), "version": 1, "total": 3, "submitter": "dev@example.org"},
                    "note": format!("{} in {} {}", words[2], project, next() % 1000),
                }),
                signature: None,
            };
            key.sign(&mut env);
            batch.push(env);
        }
        done += batch.len();
        patchbay_bus::Bus::publish_sealed(store, batch).await?;
        if tty {
            eprint!("\rstoring {done}/{n} messages, {:.0}/s ", done as f64 / started.elapsed().as_secs_f64());
        }
    }
    if tty {
        eprint!("\r\x1b[K");
    }
    Ok(())
}

/// The filter combinations measured: each filter alone, negations, and combinations.
fn combinations() -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let p = |k: &'static str, v: &str| (k, v.to_string());
    vec![
        ("none", vec![]),
        ("topic", vec![p("topic", "patchbay.prod.ci.test.finished")]),
        ("topic pattern", vec![p("topic", "patchbay.prod.ci.#")]),
        ("topic pattern, no prefix", vec![p("topic", "*.prod.report.#")]),
        ("category", vec![p("category", "series")]),
        ("series", vec![p("series", "SERIES")]),
        ("project", vec![p("project", "dpdk")]),
        ("sender", vec![p("sender", "aggregator:a")]),
        ("delta 1 day", vec![p("delta", "86400")]),
        ("start/end", vec![p("start", "START"), p("end", "END")]),
        ("contains", vec![p("contains", "regulator")]),
        ("contains phrase", vec![p("contains", "thermal in qemu")]),
        ("not_category", vec![p("not_category", "ci")]),
        ("not_topic", vec![p("not_topic", "patchbay.prod.ci.#")]),
        ("not_project + category", vec![p("not_project", "linux"), p("category", "report")]),
        ("category + project", vec![p("category", "ci"), p("project", "qemu")]),
        ("series + category", vec![p("series", "SERIES"), p("category", "ci")]),
        ("project + sender + delta", vec![p("project", "qemu"), p("sender", "runner"), p("delta", "604800")]),
        ("contains + category + project", vec![p("contains", "timeout"), p("category", "ci"), p("project", "linux")]),
        (
            "topic + not_sender + start/end",
            vec![p("topic", "patchbay.prod.mail.#"), p("not_sender", "ingest:b"), p("start", "START"), p("end", "END")],
        ),
        ("page 40, order asc", vec![p("category", "ci"), p("page", "40"), p("order", "asc")]),
        ("replay: sender + seq range", vec![p("sender", "reporter:a"), p("seq_from", "SEQ"), p("seq_to", "SEQ_TO"), p("order", "asc")]),
    ]
}

/// `patchbay-bench history`.
pub async fn bench(opts: HistoryBench) -> anyhow::Result<()> {
    let (dir, temporary) = match &opts.scratch {
        Some(d) => (d.clone(), false),
        None => (crate::bus::tempfile_dir()?, true),
    };
    let key = patchbay_bus::SigningKey::generate("bench")?;
    let store = EmbeddedBus::open(&dir, patchbay_bus::Sealer::default())?;
    let have: i64 = store.db().read(|c| Ok(c.query_row("SELECT count(*) FROM bus_messages", [], |r| r.get(0))?)).await?;
    let fill_started = Instant::now();
    if (have as usize) < opts.messages {
        fill(&store, opts.messages - have as usize, &key).await?;
    }
    let filled = fill_started.elapsed();
    let index_started = Instant::now();
    let indexed = Indexer::new(store.db().clone()).catch_up().await?;
    let index_time = index_started.elapsed();
    store.db().write(|tx| Ok(tx.execute_batch("ANALYZE")?)).await?;
    let (min_ts, max_ts, max_seq): (i64, i64, i64) = store
        .db()
        .read(|c| {
            Ok(c.query_row(
                "SELECT min(ts), max(ts), (SELECT max(seq) FROM history WHERE service = 'reporter' AND instance = 'a') FROM history",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .await?;
    let total: i64 = store.db().read(|c| Ok(c.query_row("SELECT count(*) FROM history", [], |r| r.get(0))?)).await?;
    let mut next = xorshift(42);
    let mut rows = Vec::new();
    let mut worst = 0.0f64;
    for (name, template) in combinations() {
        let mut samples = Vec::with_capacity(opts.queries);
        let mut matched = 0u64;
        for _ in 0..opts.queries {
            let span = (max_ts - min_ts).max(1);
            let start = min_ts + (next() % span as u64) as i64;
            let end = start + span / 20;
            let seq = 1 + next() % (max_seq.max(2) as u64 - 1);
            let params: Vec<(String, String)> = template
                .iter()
                .map(|(k, v)| {
                    let v = match v.as_str() {
                        "SERIES" => (next() % 50_000).to_string(),
                        "START" => format!("{:.6}", start as f64 / 1e6),
                        "END" => format!("{:.6}", end as f64 / 1e6),
                        "SEQ" => seq.to_string(),
                        "SEQ_TO" => (seq + 200).to_string(),
                        other => other.to_string(),
                    };
                    (k.to_string(), v)
                })
                .collect();
            let q = Query::from_params(&params, max_ts).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let began = Instant::now();
            let page = store.db().read(move |c| patchbay_history::search(c, &q)).await?;
            samples.push(began.elapsed());
            matched += page.total;
        }
        samples.sort_unstable();
        let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1].as_secs_f64() * 1e3;
        worst = worst.max(pct(0.99));
        rows.push(serde_json::json!({"filter": name, "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0), "mean_matches": matched / opts.queries as u64}));
    }
    if opts.json {
        println!(
            "{}",
            serde_json::json!({"messages": total, "indexed_now": indexed, "index_seconds": index_time.as_secs_f64(), "combinations": rows, "worst_p99_ms": worst})
        );
    } else {
        println!(
            "history of {total} messages (stored in {:.1} s, indexed {indexed} in {:.1} s); {} queries per filter:",
            filled.as_secs_f64(),
            index_time.as_secs_f64(),
            opts.queries
        );
        for r in &rows {
            println!(
                "  {:<34} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ~{} matches",
                r["filter"].as_str().unwrap_or(""),
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0),
                r["mean_matches"]
            );
        }
        println!("worst p99 {worst:.2} ms (target < 50 ms, issue 20: {})", if worst < 50.0 { "met" } else { "NOT met" });
    }
    drop(store);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
